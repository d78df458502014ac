"""OMS and IAM over HTTP: one request path, typed errors, bounded retries within a deadline.

`Http.request` sends every request of the exporter, to OMS and to IAM: it keeps to the
scrape deadline, never follows a redirect, counts OMS requests in the exporter's own
metrics and turns transport failures into `OmsError`s. `OmsClient` asks one project's
OMS API through it, with the credentials of `auth`, retries and pauses; it returns the
answers' bytes, which the lister parses. Every failure is one `OmsError` subclass whose
`reason` is a label value of `oms_scrape_errors_total`; messages never hold credentials.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from ssl import SSLContext
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import msgspec
from yarl import URL

from oms_exporter.clock import Clock
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Target

if TYPE_CHECKING:
    from oms_exporter.auth import Auth

log = logging.getLogger(__name__)

USER_AGENT = "oms-exporter"


class OmsError(Exception):
    reason = "network"


class Timeout(OmsError):
    reason = "timeout"


class Throttled(OmsError):
    reason = "throttled"


class AuthFailed(OmsError):
    """The credentials were refused (by OMS or IAM): a verdict on them, which pauses the target."""

    reason = "auth"


class ServerError(OmsError):
    reason = "http_5xx"


class RequestRejected(OmsError):
    reason = "http_4xx"

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # the answer's error code (OMS.0064, APIGW.0101, ...), when it had one


class BadPayload(OmsError):
    reason = "bad_payload"


class Redirected(OmsError):
    """A 3xx: not followed (credentials must not travel to another location), and no answer."""

    reason = "http_3xx"


class NetworkError(OmsError):
    reason = "network"


class TooLarge(Exception):
    """An answer beyond --oms.max-response-size (a BadPayload once counted)."""


class Incomplete(OmsError):
    reason = "incomplete"


class InternalError(OmsError):
    reason = "internal"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def describe(self) -> str:
        """`HTTP 401 APIGW.0301`: the status, and the error code when the body has one of the documented shape."""
        code = error_code(self.body)
        return f"HTTP {self.status} {code}" if code else f"HTTP {self.status}"


def error_code(body: bytes) -> str:
    """The error code of an OMS (`error_code`) or IAM (`error.code`) error answer, or "".

    Only a code of the documented shape (a short word of letters, digits and dots, such as
    OMS.0064 or APIGW.0301) is returned: a body that echoes something else there (a token,
    an HTML page) must not reach the logs.
    """
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return ""
    if type(doc) is not dict:
        return ""
    code = doc.get("error_code")
    if code is None and type(doc.get("error")) is dict:
        code = doc["error"].get("code")
    code = str(code) if type(code) in (str, int) else ""
    return code if _ERROR_CODE.fullmatch(code) else ""


# OMS.0064, APIGW.0301, IAM.0001 (a service word, a dot, digits), or an HTTP status (IAM's `code`).
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9]{1,11}\.[0-9]{1,6}|[0-9]{3}", re.ASCII)


class Http:
    """Sends every request of the exporter: deadline-bound, no redirects, OMS requests counted."""

    CHUNK = 64 * 1024  # bytes decompressed per step, with a turn of the event loop between steps
    MAX_BODY = 8 * 1024**2  # the default of --oms.max-response-size

    def __init__(self, session: aiohttp.ClientSession, clock: Clock, stats: SelfMetrics,
                 ssl: SSLContext | bool = True, *, max_body: int = MAX_BODY) -> None:
        # The session must not decompress by itself (auto_decompress=False): `_read` does,
        # within max_body, a step at a time.
        self._session = session
        self._clock = clock
        self._stats = stats
        self._ssl = ssl
        self._max_body = max_body

    async def request(self, method: str, url: URL, *, headers: Mapping[str, str], deadline: float,
                      body: bytes = b"", project_id: str | None = None) -> Answer:
        """One request, answered before `deadline` (`Clock.monotonic()` time) or a Timeout.

        With `project_id` the request counts in `oms_api_requests_total` and the duration
        histogram of that project (requests to OMS; IAM's are not).
        """
        remaining = self._clock.remaining(deadline)
        if remaining <= 0:
            raise Timeout("scrape deadline reached before the request was sent")
        started = self._clock.monotonic()
        status = 0
        try:
            # No redirects: credentials must not follow a request to another host.
            async with self._session.request(method, url, headers={"Accept-Encoding": "gzip, deflate", **headers},
                                             data=body or None, ssl=self._ssl, allow_redirects=False,
                                             timeout=aiohttp.ClientTimeout(total=remaining)) as resp:
                status = resp.status
                answer = Answer(status, await self._read(resp, url), resp.headers)
        except TooLarge as exc:
            self._count(project_id, str(status))
            raise BadPayload(str(exc)) from None
        except TimeoutError:
            self._count(project_id, "timeout")
            raise Timeout(f"{url.host} did not answer before the scrape deadline") from None
        except aiohttp.ClientPayloadError:
            self._count(project_id, "network")
            raise BadPayload(f"the answer of {url.host} was cut short") from None
        except (aiohttp.ClientError, OSError) as exc:
            self._count(project_id, "network")
            raise NetworkError(f"cannot reach {url.host}: {type(exc).__name__}") from None
        if project_id is not None:
            self._stats.api_request_duration.labels(project_id).observe(self._clock.monotonic() - started)
        self._count(project_id, str(answer.status))
        if 300 <= answer.status < 400:
            raise Redirected(f"{url.host} answered HTTP {answer.status} (a redirect, not followed)")
        return answer

    async def _read(self, resp: aiohttp.ClientResponse, url: URL) -> bytes:
        """The answer's body, decompressed; TooLarge beyond max_body (compressed or not), BadPayload if unreadable.

        Read as it arrives and decompressed a step at a time: a body that never ends, or a
        small one that unpacks to gigabytes, costs at most max_body of memory and a few
        steps of the event loop before it is refused.
        """
        limit = self._max_body
        if resp.content_length is not None and resp.content_length > limit:
            raise TooLarge(f"the answer of {url.host} announces {resp.content_length} bytes, more than "
                           f"--oms.max-response-size ({limit})")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        inflate: Any
        if encoding in ("gzip", "x-gzip"):
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            inflate = _Deflate()  # zlib-wrapped or raw: told by the first two bytes
        elif encoding in ("identity", ""):
            inflate = None
        else:
            raise BadPayload(f"the answer of {url.host} has a Content-Encoding it was not offered: {encoding[:20]!r}")
        parts: list[bytes] = []
        received = produced = 0
        too_large = TooLarge(f"the answer of {url.host} is larger than --oms.max-response-size ({limit} bytes)")
        async for chunk in resp.content.iter_chunked(self.CHUNK):
            received += len(chunk)
            if received > limit:
                raise too_large
            if inflate is None:
                parts.append(chunk)
                continue
            data = chunk
            while data:
                try:
                    # At most what is left of the limit (plus one byte, to tell "over"), a step at a time.
                    piece = inflate.decompress(data, min(self.CHUNK, limit - produced + 1))
                except zlib.error:
                    raise BadPayload(f"the answer of {url.host} is not valid {encoding}") from None
                produced += len(piece)
                if produced > limit:
                    raise too_large
                parts.append(piece)
                data = inflate.unconsumed_tail
                if data:
                    await asyncio.sleep(0)
        if inflate is not None:
            parts.append(inflate.flush())  # what zlib still holds of fully read input (< its window)
            if not inflate.eof:
                raise BadPayload(f"the {encoding} answer of {url.host} was cut short")
            if produced + len(parts[-1]) > limit:
                raise too_large
        return b"".join(parts)

    def _count(self, project_id: str | None, code: str) -> None:
        if project_id is not None:
            self._stats.api_requests.labels(project_id, code).inc()


class OmsClient:
    """Asks one target's OMS API: credentials, retries, and the pauses OMS asks for."""

    RETRIES = 2  # extra attempts after a 5xx, 429 or network error, deadline permitting
    BACKOFF = 0.2  # first backoff; doubles per attempt, with full jitter
    # After an authentication failure, wait this long (doubling, capped) before trying
    # again: an AK/SK is locked after more than 5 consecutive failures.
    AUTH_BACKOFF = 30.0
    AUTH_BACKOFF_MAX = 900.0
    PROBE_WAIT = 2.0  # seconds the other requests wait for a credentials probe before going on

    def __init__(self, http: Http, target: Target, auth: Auth, clock: Clock, *, max_concurrency: int = 8) -> None:
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
        # Every request of the target holds a slot of its API area, retries and their backoff
        # included: the tasks' pages and ShowTask share `max_concurrency` slots; task groups
        # and sync tasks have a few of their own, so that a slow area never starves another.
        self._slots = {
            "tasks": asyncio.Semaphore(max_concurrency),
            "taskgroups": asyncio.Semaphore(max(1, max_concurrency // 4)),
            "sync-tasks": asyncio.Semaphore(min(2, max_concurrency)),
        }

    # --- the OMS API paths ---------------------------------------------------------------
    async def list_tasks(self, *, offset: int, limit: int, deadline: float, status: int | None = None,
                         group_id: str | None = None) -> bytes:
        """ListTasks: one page of tasks, newest first, and `count`."""
        query = {"limit": str(limit), "offset": str(offset)}
        if status is not None:
            query["status"] = str(status)
        if group_id is not None:
            query["group_id"] = group_id
        return (await self.get("tasks", query, deadline)).body

    async def list_task_groups(self, *, offset: int, limit: int, deadline: float, status: int | None = None) -> bytes:
        """ListTaskGroup: one page of task groups and `count`."""
        query = {"limit": str(limit), "offset": str(offset)}
        if status is not None:
            query["status"] = str(status)
        return (await self.get("taskgroups", query, deadline)).body

    async def list_sync_tasks(self, *, offset: int, limit: int, deadline: float) -> bytes:
        """ListSyncTasks: one page of synchronization tasks and `count`."""
        return (await self.get("sync-tasks", {"limit": str(limit), "offset": str(offset)}, deadline)).body

    async def show_sync_task(self, sync_task_id: str, query_time_ms: int, deadline: float) -> bytes:
        """ShowSyncTask: one synchronization task, with the counters of the month holding `query_time_ms`."""
        return (await self.get(f"sync-tasks/{quote(sync_task_id, safe='')}", {"query_time": str(query_time_ms)},
                               deadline)).body

    async def show_task(self, task_id: int, deadline: float) -> bytes | None:
        """ShowTask: the task's TaskResp, or None when OMS does not know it (404: deleted)."""
        try:
            return (await self.get(f"tasks/{task_id}", {}, deadline)).body
        except RequestRejected as exc:
            if exc.status == 404:
                return None
            raise

    # --- the one way to ask OMS ----------------------------------------------------------
    async def get(self, path: str, query: Mapping[str, str], deadline: float) -> Answer:
        """GET `path` (below /v2/{project_id}/) with retries; a 200 answer, or an OmsError."""
        url = URL(self._base + path).with_query(query)
        slots = self._slots[path.partition("/")[0]]
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
                    await asyncio.wait([probe], timeout=self.PROBE_WAIT)
                except asyncio.CancelledError:
                    probe.cancel()
                    raise
                if probe.done():
                    return probe.result()
        if probe is None:
            return await self._slotted(slots, url, deadline)
        return await probe  # cancelling this request cancels the probe too

    async def _slotted(self, slots: asyncio.Semaphore, url: URL, deadline: float) -> Answer:
        async with slots:
            return await self._get(url, deadline)

    async def _get(self, url: URL, deadline: float) -> Answer:
        clock = self._clock
        now = clock.monotonic()
        if now < self._auth_blocked_until:
            raise AuthFailed(f"authentication failed recently; next attempt in "
                             f"{self._auth_blocked_until - now:.0f}s")
        if now < self._throttled_until:
            # OMS asked for a pause longer than the last scrape could wait: keep to it.
            raise Throttled(f"OMS asked to wait; next attempt in {self._throttled_until - now:.0f}s")
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
            failure: OmsError
            try:
                answer = await self._http.request("GET", url, headers=headers, deadline=deadline,
                                                  project_id=self._target.project_id)
            except Timeout:
                raise
            except (NetworkError, BadPayload) as exc:
                failure, wait = exc, self._backoff(attempt)
            else:
                status = answer.status
                if status == 200:
                    self._auth_failures, self._auth_proven = 0, True
                    return answer
                if status == 401:
                    if not renewed and await self._auth.unauthorized(headers):
                        renewed = True
                        continue
                    self._auth_failed()
                    raise AuthFailed(f"OMS refused the credentials ({answer.describe()})")
                if status == 429:
                    retry_after = _retry_after(answer.headers.get("Retry-After"), clock.time())
                    failure = Throttled(f"OMS throttled the request ({answer.describe()})")
                    wait = retry_after if retry_after is not None else self._backoff(attempt)
                elif status >= 500:
                    failure, wait = ServerError(f"OMS failed ({answer.describe()})"), self._backoff(attempt)
                else:
                    # Past authentication: the credentials were accepted (a 404 of ShowTask, say).
                    self._auth_failures, self._auth_proven = 0, True
                    raise RequestRejected(f"OMS rejected the request ({answer.describe()})", status,
                                          error_code(answer.body))
            if attempt >= self.RETRIES or clock.monotonic() + wait >= deadline:
                if isinstance(failure, Throttled) and retry_after:
                    # Capped like the auth pause: a bogus header must not silence a project for days.
                    pause = min(retry_after, self.AUTH_BACKOFF_MAX)
                    self._throttled_until = max(self._throttled_until, clock.monotonic() + pause)
                raise failure
            attempt += 1
            await clock.sleep(wait)

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


class _Deflate:
    """`Content-Encoding: deflate` as servers send it: zlib-wrapped (RFC 1950) or raw (RFC 1951).

    A zlib header is two bytes whose first says method 8 and which, read as a big-endian
    number, divide by 31; the stream is raw deflate otherwise (what browsers accept too).
    """

    def __init__(self) -> None:
        self._head = b""
        self._z: Any = None
        self.unconsumed_tail = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._z is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            b0, b1 = self._head[0], self._head[1]
            wrapped = b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0
            self._z = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        out: bytes = self._z.decompress(data, max_length)
        self.unconsumed_tail = self._z.unconsumed_tail
        return out

    def flush(self) -> bytes:
        return b"" if self._z is None else bytes(self._z.flush())

    @property
    def eof(self) -> bool:
        return self._z is not None and bool(self._z.eof)


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
