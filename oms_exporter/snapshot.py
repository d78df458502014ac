"""Takes listings of the configured projects, shared by every scrape that asks at the same time.

One listing per project is in flight at any moment: concurrent scrapes (an HA Prometheus
pair, a dashboard refresh storm) wait for the same one. With `min_interval`, a listing
younger than that is served again instead of asking OMS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from oms_exporter.client import InternalError, Timeout
from oms_exporter.clock import Clock
from oms_exporter.lister import Lister, Listing
from oms_exporter.metrics import SelfMetrics

log = logging.getLogger(__name__)


class Snapshots:
    def __init__(self, listers: dict[str, Lister], stats: SelfMetrics, clock: Clock,
                 min_interval: float = 0.0) -> None:
        self._listers = listers
        self._stats = stats
        self._clock = clock
        self._min_interval = min_interval
        # target name -> (the listing in flight, its deadline)
        self._inflight: dict[str, tuple[asyncio.Task[Listing], float]] = {}
        self._last: dict[str, tuple[float, Listing]] = {}  # target name -> (monotonic time, last listing)

    async def get(self, names: Sequence[str], deadline: float) -> list[Listing]:
        """Listings of the named targets, each finished or failed by `deadline` (`Clock.monotonic()` time)."""
        return list(await asyncio.gather(*(self._one(n, deadline) for n in names)))

    async def _one(self, name: str, deadline: float) -> Listing:
        clock = self._clock
        last = self._last.get(name)
        if self._min_interval and last and clock.monotonic() - last[0] < self._min_interval:
            return last[1]
        entry = self._inflight.get(name)
        if entry is None:
            entry = (asyncio.get_running_loop().create_task(self._list(name, deadline)), deadline)
            self._inflight[name] = entry
        fut, listing_deadline = entry
        try:
            # shield: a scrape that gives up must not cancel the listing others wait for.
            return await asyncio.wait_for(asyncio.shield(fut), clock.remaining(deadline))
        except TimeoutError:
            lister = self._listers[name]
            if deadline < listing_deadline:
                # The shared listing goes on for the scrape that started it; this earlier
                # deadline is a failed listing of its own, as far as this scrape can tell.
                self._stats.scrape_errors.labels(lister.target.project_id, "timeout").inc()
                log.info("scrape deadline reached while a shared listing was still running",
                         extra={"target": name})
            return Listing(lister.target, taken_at=clock.time(),
                           error=Timeout("listing still running at this scrape's deadline"))

    async def aclose(self) -> None:
        """Cancel listings still running (at shutdown, before their HTTP session closes)."""
        pending = [fut for fut, _ in self._inflight.values()]
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _list(self, name: str, deadline: float) -> Listing:
        lister = self._listers[name]
        pid = lister.target.project_id
        self._stats.listings.labels(pid).inc()
        try:
            listing = await lister.run(deadline)
        except Exception:  # a bug must cost one scrape's data, not the exporter
            log.exception("listing failed unexpectedly", extra={"target": name})
            listing = Listing(lister.target, taken_at=self._clock.time(),
                              error=InternalError("internal error, see the exporter's log"))
        finally:
            self._inflight.pop(name, None)
        if listing.error is not None:
            self._stats.scrape_errors.labels(pid, listing.error.reason).inc()
            log.warning("listing failed", extra={
                "target": name, "reason": listing.error.reason, "error": str(listing.error),
                "requests": listing.requests, "duration_seconds": round(listing.duration, 3)})
        elif listing.malformed:
            log.warning("skipped malformed task records", extra={"target": name, "count": listing.malformed})
        self._last[name] = (self._clock.monotonic(), listing)
        return listing
