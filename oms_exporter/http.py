"""The one request path of the exporter: every request to OMS and to IAM goes through `Http.request`.

It keeps to the scrape deadline, never follows a redirect, reports each OMS request to the
observer it was given (the exporter's own metrics) and turns transport failures into
`OmsError`s. Answers are read within --oms.max-response-size, decompressed a step at a time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from oms_exporter.clock import Clock
from oms_exporter.errors import BadPayload, NetworkError, Redirected, RequestTimeout, Timeout, TooLarge

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)  # the clock keeps every deadline (Clock.timeout_at)
# (project_id, HTTP status or "timeout"/"network", seconds or None when no answer came)
RequestObserver = Callable[[str, str, "float | None"], None]


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

    def __init__(self, session: aiohttp.ClientSession, clock: Clock, observe: RequestObserver | None = None,
                 ssl: SSLContext | bool = True, *, max_body: int = MAX_BODY, request_timeout: float | None = None,
                 proxies: Proxies | None = None) -> None:
        # The session must not decompress by itself (auto_decompress=False): `_read` does,
        # within max_body, a step at a time.
        self._session = session
        self._clock = clock
        self._observe = observe
        self._ssl = ssl
        self._max_body = max_body
        # Each request's own bound (--oms.request-timeout), within the scrape's deadline: a request
        # that hangs is given up (and retried) without holding the listing to the longest deadline.
        self._request_timeout = request_timeout
        self._proxies = proxies or Proxies({})

    async def request(self, method: str, url: URL, *, headers: Mapping[str, str], deadline: float,
                      body: bytes = b"", project_id: str | None = None) -> Answer:
        """One request, answered before `deadline` (`Clock.monotonic()` time) or a Timeout
        (RequestTimeout: not within the request timeout, before the deadline).

        With `project_id` the request is reported to the observer (OMS requests; IAM's are not):
        its HTTP status, or "timeout"/"network" when no answer came, and how long the answer took.
        """
        if self._clock.remaining(deadline) <= 0:
            raise Timeout("scrape deadline reached before the request was sent")
        started = self._clock.monotonic()
        until = deadline if self._request_timeout is None else min(deadline, started + self._request_timeout)
        status = 0
        proxy, proxy_auth = self._proxies.for_url(url)
        try:
            async with self._clock.timeout_at(until):
                # No redirects: credentials must not follow a request to another host.
                async with self._session.request(method, url, headers={"Accept-Encoding": "gzip, deflate", **headers},
                                                 data=body or None, ssl=self._ssl, allow_redirects=False,
                                                 timeout=_NO_TIMEOUT, proxy=proxy, proxy_auth=proxy_auth) as resp:
                    status = resp.status
                    answer = Answer(status, await self._read(resp, url), resp.headers)
        except TooLarge as exc:
            self._count(project_id, str(status))
            raise BadPayload(str(exc)) from None
        except TimeoutError:
            self._count(project_id, "timeout")
            if until < deadline:
                raise RequestTimeout(f"{url.host} did not answer within --oms.request-timeout "
                                     f"({self._request_timeout:g}s)") from None
            raise Timeout(f"{url.host} did not answer before the scrape deadline") from None
        except aiohttp.ClientPayloadError:
            self._count(project_id, "network")
            raise BadPayload(f"the answer of {url.host} was cut short") from None
        except (aiohttp.ClientError, OSError) as exc:
            self._count(project_id, "network")
            raise NetworkError(f"cannot reach {url.host}: {type(exc).__name__}") from None
        self._count(project_id, str(answer.status), self._clock.monotonic() - started)
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
        body = _Body(resp.headers.get("Content-Encoding", "identity"), limit, str(url.host), self.CHUNK)
        received = 0
        async for chunk in resp.content.iter_chunked(self.CHUNK):
            received += len(chunk)
            if received > limit:
                raise body.too_large
            await body.add(chunk)
        return body.done()

    def _count(self, project_id: str | None, code: str, seconds: float | None = None) -> None:
        if project_id is not None and self._observe is not None:
            self._observe(project_id, code, seconds)


class Proxies:
    """HTTP_PROXY, HTTPS_PROXY and NO_PROXY (or their lower-case forms), read once: the proxy of each URL.

    What aiohttp's `trust_env` does, without its two thread hops per request (one to read ~/.netrc,
    one to read the environment): the exporter sends thousands of requests a scrape.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        source = os.environ if env is None else env
        self._proxies = {k: v for k, v in _proxies_of(source).items() if v}
        self._cache: dict[tuple[str, str, int | None], tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    def for_url(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The proxy to send a request for `url` through (None: directly), and its credentials."""
        key = (url.scheme, url.host or "", url.port)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._choose(url)
        return found

    def _choose(self, url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        proxy = self._proxies.get(url.scheme)
        if not proxy or not url.host:
            return None, None
        if _bypassed(url.host, url.port, self._proxies.get("no", "")):
            return None, None
        purl = URL(proxy if "://" in proxy else "http://" + proxy)
        auth = aiohttp.BasicAuth(purl.user or "", purl.password or "") if purl.user else None
        return purl.with_user(None), auth


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether NO_PROXY names `host` (as curl and Go read it: `*`, a host, a domain and its
    subdomains written `example.com`, `.example.com` or `*.example.com`, each optionally with
    `:port`; an IP address (`[::1]:443` with a port) or a CIDR block holding an IP host)."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*" or _in_block(host, entry):
            return True
        name, want = _split_port(entry)
        if want and (not want.isdigit() or int(want) != port):
            continue
        name = name.removeprefix("*").lstrip(".")
        if host == name or host.endswith("." + name) or _in_block(host, name):
            return True
    return False


def _split_port(entry: str) -> tuple[str, str]:
    """(host, port) of a NO_PROXY entry: `name:443`, `[::1]:443`; an IPv6 address alone has no port."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, rest.removeprefix(":")
    if entry.count(":") == 1:
        name, _, want = entry.partition(":")
        return name, want
    return entry, ""


def _in_block(host: str, entry: str) -> bool:
    """Whether `host` is an IP address inside the address or CIDR block `entry`."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:  # a name, or an entry that is no address
        return False


def _proxies_of(env: Mapping[str, str]) -> dict[str, str]:
    """{"http": ..., "https": ..., "no": ...} of an environment, the lower-case names first (as urllib reads them)."""
    out: dict[str, str] = {}
    for scheme in ("http", "https", "no"):
        value = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
        if value:
            out[scheme] = value.strip()
    return out


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


class _Body:
    """An answer's body as it arrives, decompressed a step at a time within `limit` bytes."""

    def __init__(self, content_encoding: str, limit: int, host: str, step: int) -> None:
        self.encoding = content_encoding.strip().lower()
        self.inflate: Any
        if self.encoding in ("gzip", "x-gzip"):
            self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self.inflate = _Deflate()  # zlib-wrapped or raw: told by the first two bytes
        elif self.encoding in ("identity", ""):
            self.inflate = None
        else:
            raise BadPayload(f"the answer of {host} has a Content-Encoding it was not offered: {self.encoding[:20]!r}")
        self.limit, self.host, self.step = limit, host, step
        self.parts: list[bytes] = []
        self.produced = 0
        self.too_large = TooLarge(f"the answer of {host} is larger than --oms.max-response-size ({limit} bytes)")

    async def add(self, chunk: bytes) -> None:
        if self.inflate is None:
            self.parts.append(chunk)
            return
        data = chunk
        while data:
            try:
                # At most what is left of the limit (plus one byte, to tell "over"), a step at a time.
                piece = self.inflate.decompress(data, min(self.step, self.limit - self.produced + 1))
            except zlib.error:
                raise BadPayload(f"the answer of {self.host} is not valid {self.encoding}") from None
            self.produced += len(piece)
            if self.produced > self.limit:
                raise self.too_large
            self.parts.append(piece)
            data = self.inflate.unconsumed_tail
            if data:
                await asyncio.sleep(0)

    def done(self) -> bytes:
        if self.inflate is not None:
            self.parts.append(self.inflate.flush())  # what zlib still holds of fully read input (< its window)
            if not self.inflate.eof:
                raise BadPayload(f"the {self.encoding} answer of {self.host} was cut short")
            if self.produced + len(self.parts[-1]) > self.limit:
                raise self.too_large
        return b"".join(self.parts)
