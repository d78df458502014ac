"""Time as the exporter reads it, in one object that the client, auth and lister share.

Deadlines and pauses are measured on `monotonic()`, timestamps on `time()`, waits go through
`sleep()` and every deadline is kept by `timeout_at()`: tests hand in a clock they drive, so
a test of a 10 s deadline takes no 10 s.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """The real clocks."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: deadlines, back-off, pauses."""
        return time.monotonic()

    def time(self) -> float:
        """Unix time: listing timestamps, task ages, request signatures, token expiry."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def sleep_until(self, when: float) -> None:
        """A background task's wait for a `monotonic()` time (a schedule, not a pause within a request:
        a test clock ends it when it is moved there, and does not move for it)."""
        await asyncio.sleep(self.remaining(when))

    def remaining(self, deadline: float) -> float:
        """Seconds left until `deadline` (a `monotonic()` time), never negative."""
        return max(deadline - self.monotonic(), 0.0)

    def timeout_at(self, deadline: float) -> asyncio.Timeout:
        """`async with clock.timeout_at(deadline)`: TimeoutError when the block runs past `deadline`
        (a `monotonic()` time)."""
        return asyncio.timeout(self.remaining(deadline))
