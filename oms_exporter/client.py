"""OMS HTTP client: one ListTasks page per call, typed errors, bounded retries within a deadline.

Every failure becomes one `OmsError` subclass whose `reason` is a label value of
`oms_scrape_errors_total`. Messages never contain credentials.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from ssl import SSLContext
from typing import Annotated

import aiohttp
import msgspec
from yarl import URL

from oms_exporter.auth import Auth, AuthError, IamUnavailable
from oms_exporter.metrics import SelfMetrics
from oms_exporter.model import Task, TaskParser
from oms_exporter.settings import Target

log = logging.getLogger(__name__)

USER_AGENT = "oms-exporter"


class OmsError(Exception):
    reason = "network"


class Timeout(OmsError):
    reason = "timeout"


class Throttled(OmsError):
    reason = "throttled"


class AuthFailed(OmsError):
    reason = "auth"


class ServerError(OmsError):
    reason = "http_5xx"


class RequestRejected(OmsError):
    reason = "http_4xx"

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class BadPayload(OmsError):
    reason = "bad_payload"


class NetworkError(OmsError):
    reason = "network"


class Incomplete(OmsError):
    reason = "incomplete"


class InternalError(OmsError):
    reason = "internal"


_BY_REASON: dict[str, type[OmsError]] = {
    cls.reason: cls for cls in (Timeout, Throttled, ServerError, BadPayload, NetworkError)}


@dataclass(slots=True)
class Page:
    tasks: list[Task]
    count: int
    malformed: int


class _PageWire(msgspec.Struct):
    # Raw: each task's JSON text, checked for syntax but decoded only when it changed.
    tasks: list[msgspec.Raw]
    count: Annotated[int, msgspec.Meta(ge=0)]


_decode_page = msgspec.json.Decoder(_PageWire).decode


def parse_page(raw: bytes, parser: TaskParser | None = None) -> Page:
    """Parse a ListTasks answer; a broken page raises BadPayload, a broken task is counted."""
    try:
        doc = _decode_page(raw)
    except msgspec.ValidationError as exc:
        raise BadPayload(f"answer does not have the ListTasks shape: {exc}") from None
    except msgspec.DecodeError:
        raise BadPayload("answer is not valid JSON") from None
    parsed, malformed = (parser or TaskParser()).parse_all(doc.tasks)
    return Page(parsed, doc.count, malformed)


def _answer(status: int, raw: bytes) -> str:
    """`HTTP 401 APIGW.0301`: the status and OMS error code of an error answer, if it has one."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        doc = None
    code = doc.get("error_code") if type(doc) is dict else None
    if type(code) is str and 0 < len(code) <= 32 and code.replace(".", "").isalnum():
        return f"HTTP {status} {code}"
    return f"HTTP {status}"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    # NaN would make the deadline comparison false and sleep forever.
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class OmsClient:
    """Lists task pages of one target's project."""

    RETRIES = 2  # extra attempts after a 5xx, 429 or network error, deadline permitting
    BACKOFF = 0.2  # first backoff; doubles per attempt, with full jitter
    # After an authentication failure, wait this long (doubling, capped) before trying
    # again: an AK/SK is locked after more than 5 consecutive failures.
    AUTH_BACKOFF = 30.0
    AUTH_BACKOFF_MAX = 900.0

    def __init__(self, session: aiohttp.ClientSession, target: Target, auth: Auth,
                 stats: SelfMetrics, ssl: SSLContext | bool = True) -> None:
        self._session = session
        self._target = target
        self._auth = auth
        self._stats = stats
        self._ssl = ssl
        self._url = URL(f"{target.oms_endpoint}/v2/{target.project_id}/tasks")
        self._auth_failures = 0
        self._auth_blocked_until = 0.0
        self._throttled_until = 0.0  # monotonic time before which OMS asked not to be called
        self._auth_probe = asyncio.Lock()
        self._parse_turn = asyncio.Lock()

    async def list_tasks(self, *, offset: int, limit: int, deadline: float, status: int | None = None,
                         group_id: str | None = None, parser: TaskParser | None = None) -> Page:
        query = {"limit": str(limit), "offset": str(offset)}
        if status is not None:
            query["status"] = str(status)
        if group_id is not None:
            query["group_id"] = group_id
        url = self._url.with_query(query)
        raw = await self._get(url, deadline)
        # Parsed on the event loop, one page per loop iteration (about a millisecond each):
        # pages that arrive together neither hold the loop for long nor pay for a thread hop
        # and fight the event loop for the GIL, as they did in a worker thread.
        async with self._parse_turn:
            try:
                return parse_page(raw, parser)
            finally:
                await asyncio.sleep(0)

    async def _get(self, url: URL, deadline: float) -> bytes:
        if self._auth_failures:
            # Credentials failed last time: one request tries them, the others wait for its
            # outcome, so that a listing's concurrent pages are not a burst of failed logins.
            async with self._auth_probe:
                if self._auth_failures:  # still failing: this request is the probe
                    return await self._get_once(url, deadline)
        return await self._get_once(url, deadline)

    async def _get_once(self, url: URL, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if now < self._auth_blocked_until:
            raise AuthFailed(f"authentication failed recently; next attempt in "
                             f"{self._auth_blocked_until - now:.0f}s")
        if now < self._throttled_until:
            # OMS asked for a pause longer than the last scrape could wait: keep to it.
            raise Throttled(f"OMS asked to wait; next attempt in {self._throttled_until - now:.0f}s")
        attempt = 0
        renewed = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout("scrape deadline reached before OMS answered")
            try:
                headers = await self._auth.headers("GET", url)
            except IamUnavailable as exc:
                # IAM is down, not the credentials wrong: no auth pause, counted as what it is.
                raise _BY_REASON.get(exc.reason, NetworkError)(str(exc)) from None
            except AuthError as exc:
                self._auth_failed()
                raise AuthFailed(str(exc)) from None
            headers["User-Agent"] = USER_AGENT
            status, raw, retry_after, err = await self._send(url, headers, remaining)
            if err is None and status == 200:
                self._auth_failures = 0
                return raw
            # Decide whether one more attempt is worth it.
            wait: float | None = None
            failure: OmsError
            if err is not None:
                failure = err
                if not isinstance(err, Timeout):
                    wait = self._backoff(attempt)
            elif status == 401:
                if not renewed and await self._auth.unauthorized(headers):
                    renewed = True
                    continue
                self._auth_failed()
                raise AuthFailed(f"OMS refused the credentials ({_answer(status, raw)})")
            elif status == 429:
                failure = Throttled(f"OMS throttled the request ({_answer(status, raw)})")
                wait = retry_after if retry_after is not None else self._backoff(attempt)
            elif status >= 500:
                failure = ServerError(f"OMS failed ({_answer(status, raw)})")
                wait = self._backoff(attempt)
            else:
                raise RequestRejected(f"OMS rejected the request ({_answer(status, raw)})", status)
            if wait is None or attempt >= self.RETRIES or loop.time() + wait >= deadline:
                if isinstance(failure, Throttled) and retry_after:
                    # Capped like the auth pause: a bogus header must not silence a project for days.
                    pause = min(retry_after, self.AUTH_BACKOFF_MAX)
                    self._throttled_until = max(self._throttled_until, time.monotonic() + pause)
                raise failure
            attempt += 1
            await asyncio.sleep(wait)

    async def _send(self, url: URL, headers: dict[str, str], remaining: float
                    ) -> tuple[int, bytes, float | None, OmsError | None]:
        pid = self._target.project_id
        started = time.perf_counter()
        try:
            # No redirects: credentials must not follow OMS to another host.
            async with self._session.get(url, headers=headers, ssl=self._ssl, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=remaining)) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            self._stats.api_requests.labels(pid, "timeout").inc()
            return 0, b"", None, Timeout("OMS did not answer before the scrape deadline")
        except aiohttp.ClientPayloadError:
            self._stats.api_requests.labels(pid, "network").inc()
            return 0, b"", None, BadPayload("OMS answer was cut short")
        except (aiohttp.ClientError, OSError) as exc:
            self._stats.api_requests.labels(pid, "network").inc()
            return 0, b"", None, NetworkError(f"cannot reach OMS at {url.host}: {type(exc).__name__}")
        self._stats.api_request_duration.labels(pid).observe(time.perf_counter() - started)
        self._stats.api_requests.labels(pid, str(status)).inc()
        return status, raw, retry_after, None

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, self.BACKOFF * (2 ** attempt))

    def _auth_failed(self) -> None:
        if time.monotonic() < self._auth_blocked_until:
            return  # a concurrent request of the same listing failed too: one failure, one pause
        self._auth_failures += 1
        pause = min(self.AUTH_BACKOFF * 2 ** (self._auth_failures - 1), self.AUTH_BACKOFF_MAX)
        self._auth_blocked_until = time.monotonic() + pause
        log.warning("authentication failed; pausing attempts",
                    extra={"target": self._target.name, "consecutive_failures": self._auth_failures,
                           "pause_seconds": pause})
