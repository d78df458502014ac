"""One project's OMS API: credentials, retries within the deadline, and the pauses OMS asks for.

`OmsClient.get` is the one way to ask OMS: every API area's lister calls it with its own
path (below `/v2/{project_id}/`), and it sends through `http.Http`, the exporter's one
request path. It returns the answers, which the listers parse.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from yarl import URL

from oms_exporter.auth import Auth
from oms_exporter.clock import Clock
from oms_exporter.errors import (
    AuthFailed,
    BadPayload,
    NetworkError,
    OmsError,
    RequestRejected,
    RequestTimeout,
    ServerError,
    Throttled,
)
from oms_exporter.http import Answer, Http, error_code
from oms_exporter.settings import Target

log = logging.getLogger(__name__)

USER_AGENT = "oms-exporter"


class OmsClient:
    """Asks one target's OMS API: credentials, retries, and the pauses OMS asks for."""

    RETRIES = 2  # extra attempts after a 5xx, 429 or network error, deadline permitting
    BACKOFF = 0.2  # first backoff; doubles per attempt, with full jitter
    # The longest Retry-After a listing waits out (within its deadline, which a listing going on in
    # the background stretches to --oms.listing-budget); a longer one ends it as throttled, paused.
    MAX_RETRY_AFTER = 30.0
    # After an authentication failure, wait this long (doubling, capped) before trying
    # again: an AK/SK is locked after more than 5 consecutive failures.
    AUTH_BACKOFF = 30.0
    AUTH_BACKOFF_MAX = 900.0
    PROBE_WAIT = 2.0  # seconds the other requests wait for a credentials probe before going on

    def __init__(self, http: Http, target: Target, auth: Auth, clock: Clock, *, slots: Mapping[str, int]) -> None:
        self._http = http
        self._target = target
        self._auth = auth
        self._clock = clock
        self._base = f"{target.oms_endpoint}/v2/{target.project_id}/"
        self._auth_failures = 0
        self._auth_proven = False  # a request has been accepted with these credentials
        self._auth_blocked_until = 0.0
        self._throttled_until = 0.0  # monotonic time before which OMS asked not to be called
        self._auth_probe = asyncio.Lock()
        # Every request of the target holds a slot of its API area (area name -> slots), retries
        # and their backoff included, so that a slow area never starves another.
        self._slots = {area: asyncio.Semaphore(n) for area, n in slots.items()}

    async def get(self, area: str, path: str, query: Mapping[str, str], deadline: float) -> Answer:
        """GET `path` (below /v2/{project_id}/) in a slot of `area`, with retries; a 200 answer, or an OmsError."""
        url = URL(self._base + path).with_query(query)
        slots = self._slots[area]
        if not (self._auth_failures or not self._auth_proven):
            async with slots:
                return await self._get(url, deadline)
        # Credentials not proven yet, or failed last time: one request tries them, the others
        # wait for its outcome, so that a listing's concurrent requests are not a burst of
        # failed logins (an AK/SK is locked after more than 5 in a row). A probe that hangs
        # hands on after PROBE_WAIT: the others then try on their own.
        probe: asyncio.Future[Answer] | None = None
        async with self._auth_probe:
            if self._auth_failures or not self._auth_proven:  # this request is the probe
                probe = asyncio.ensure_future(self._slotted(slots, url, deadline))
                try:
                    async with self._clock.timeout_at(self._clock.monotonic() + self.PROBE_WAIT):
                        return await asyncio.shield(probe)
                except TimeoutError:
                    pass  # the probe hangs: the others try on their own
                except asyncio.CancelledError:
                    probe.cancel()
                    raise
        if probe is None:
            return await self._slotted(slots, url, deadline)
        return await probe  # cancelling this request cancels the probe too

    async def _slotted(self, slots: asyncio.Semaphore, url: URL, deadline: float) -> Answer:
        async with slots:
            return await self._get(url, deadline)

    async def _get(self, url: URL, deadline: float) -> Answer:
        clock = self._clock
        self._check_pauses()
        attempt = 0
        renewed = False
        while True:
            try:
                headers = await self._auth.headers("GET", url, deadline)
            except AuthFailed:
                self._auth_failed()
                raise
            headers["User-Agent"] = USER_AGENT
            retry_after: float | None = None
            failure: OmsError | None
            try:
                answer = await self._http.request("GET", url, headers=headers, deadline=deadline,
                                                  project_id=self._target.project_id)
            except (NetworkError, BadPayload, RequestTimeout) as exc:
                failure, wait = exc, self._backoff(attempt)
            else:
                if answer.status == 401 and not renewed and await self._auth.unauthorized(headers):
                    renewed = True
                    continue
                failure, wait, retry_after = self._judge(answer, attempt)
                if failure is None:
                    return answer
            if (attempt >= self.RETRIES or clock.monotonic() + wait >= deadline
                    or (retry_after or 0.0) > self.MAX_RETRY_AFTER):
                if isinstance(failure, Throttled) and retry_after:
                    # Capped like the auth pause: a bogus header must not silence a project for days.
                    pause = min(retry_after, self.AUTH_BACKOFF_MAX)
                    self._throttled_until = max(self._throttled_until, clock.monotonic() + pause)
                raise failure
            attempt += 1
            await clock.sleep(wait)

    def _check_pauses(self) -> None:
        """AuthFailed or Throttled while a pause (after refused credentials, or asked by OMS) lasts."""
        now = self._clock.monotonic()
        if now < self._auth_blocked_until:
            raise AuthFailed(f"authentication failed recently; next attempt in "
                             f"{self._auth_blocked_until - now:.0f}s")
        if now < self._throttled_until:
            # OMS asked for a pause longer than the last scrape could wait: keep to it.
            raise Throttled(f"OMS asked to wait; next attempt in {self._throttled_until - now:.0f}s")

    def _judge(self, answer: Answer, attempt: int) -> tuple[OmsError | None, float, float | None]:
        """What an answer means: (None, ...) for a 200; (the failure to retry, the wait before the next
        attempt, Retry-After's seconds or None); AuthFailed or RequestRejected raised, not retried."""
        status = answer.status
        if status == 200:
            self._auth_failures, self._auth_proven = 0, True
            return None, 0.0, None
        if status == 401:
            self._auth_failed()
            raise AuthFailed(f"OMS refused the credentials ({answer.describe()})")
        if status == 429:
            retry_after = _retry_after(answer.headers.get("Retry-After"), self._clock.time())
            wait = retry_after if retry_after is not None else self._backoff(attempt)
            return Throttled(f"OMS throttled the request ({answer.describe()})"), wait, retry_after
        if status >= 500:
            return ServerError(f"OMS failed ({answer.describe()})"), self._backoff(attempt), None
        # Past authentication: the credentials were accepted (a 404 of ShowTask, say).
        self._auth_failures, self._auth_proven = 0, True
        raise RequestRejected(f"OMS rejected the request ({answer.describe()})", status, error_code(answer.body))

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, self.BACKOFF * (2 ** attempt))

    def _auth_failed(self) -> None:
        now = self._clock.monotonic()
        if now < self._auth_blocked_until:
            return  # a concurrent request of the same listing failed too: one failure, one pause
        self._auth_failures += 1
        pause = min(self.AUTH_BACKOFF * 2 ** (self._auth_failures - 1), self.AUTH_BACKOFF_MAX)
        self._auth_blocked_until = now + pause
        log.warning("authentication failed; pausing attempts",
                    extra={"target": self._target.name, "consecutive_failures": self._auth_failures,
                           "pause_seconds": pause})


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    # NaN would make the deadline comparison false and sleep forever.
    return max(seconds, 0.0) if math.isfinite(seconds) else None
