"""`--web.config.file`: TLS and basic auth for the exporter's own endpoint.

The file has the format of the Prometheus exporter-toolkit, which node_exporter and
Prometheus itself read, so an existing file can be reused:

    tls_server_config:
      cert_file: /etc/oms-exporter/tls.crt
      key_file: /etc/oms-exporter/tls.key
      client_auth_type: RequireAndVerifyClientCert   # needs client_ca_file
      client_ca_file: /etc/oms-exporter/clients-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...   # bcrypt hash, e.g. from `htpasswd -nBC 10 prometheus`

Settings that Python's TLS cannot honour (accepting a client certificate without verifying
it, cipher or curve choices, SAN allow-lists) are refused rather than silently ignored:
ignoring a security setting would look like protection that is not there. `load()` reports
every problem at once as a `SettingsError`, one line each.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from oms_exporter.settings import SettingsError, _lines, _loc

log = logging.getLogger(__name__)

FLAG = "--web.config.file"

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit values that would accept a client certificate without verifying it:
# Python's ssl module has no such mode.
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
UNSUPPORTED = "is an exporter-toolkit setting that oms-exporter does not support; remove it"
_BCRYPT = re.compile(r"^\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}$")


class _TlsServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    client_auth_type: Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                              "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"] = "NoClientCert"
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"
    # Known exporter-toolkit keys without an equivalent here.
    cert: Any = None
    key: Any = None
    cipher_suites: Any = None
    curve_preferences: Any = None
    prefer_server_cipher_suites: Any = None
    client_allowed_sans: Any = None

    @field_validator("cert", "key", "cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
                     "client_allowed_sans", mode="before")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        raise ValueError(UNSUPPORTED)


class _HttpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    http2: bool = True  # accepted for compatibility; aiohttp serves HTTP/1.1
    headers: Any = None

    @field_validator("headers", mode="before")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        raise ValueError(UNSUPPORTED)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tls_server_config: _TlsServerConfig | None = None
    http_server_config: _HttpServerConfig | None = None
    basic_auth_users: dict[str, str] | None = None


@dataclass(frozen=True)
class WebConfig:
    """What the server needs: a TLS context (None: plain HTTP) and bcrypt hashes by user name."""

    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    client_auth: str = "NoClientCert"
    min_version: str = ""
    files: tuple[str, str, str] = ("", "", "")  # cert_file, key_file, client_ca_file

    def describe(self) -> dict[str, object]:
        return {"tls": self.ssl_context is not None, "tls_min_version": self.min_version or None,
                "client_auth": self.client_auth if self.ssl_context else None,
                "basic_auth_users": len(self.users)}


def load(path: Path) -> WebConfig:
    """Read and check the web config file; raise SettingsError with one line per problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError([f"{FLAG}: cannot read {path}: {exc.strerror}"]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SettingsError([f"{FLAG}: {path}{where} is not valid YAML"]) from None
    try:
        doc = _File.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise SettingsError(_lines(exc, lambda loc: f"{path}: {_loc(loc) or 'file'}")) from None

    errors: list[str] = []
    context = None
    tls = doc.tls_server_config
    if tls is not None:
        context = _ssl_context(tls, lambda key, msg: errors.append(f"{path}: tls_server_config.{key}: {msg}"))
    users: dict[str, bytes] = {}
    for name, hashed in (doc.basic_auth_users or {}).items():
        where = f"{path}: basic_auth_users.{name}"
        if not name or ":" in name:
            errors.append(f"{where}: a user name must be non-empty and without ':'")
        elif not _BCRYPT.match(hashed):
            # Never echo the value: it may be a plain password written by mistake.
            errors.append(f"{where}: is not a bcrypt hash (make one with `htpasswd -nBC 10 {name}`)")
        else:
            users[name] = hashed.encode()
    if errors:
        raise SettingsError(errors)
    return WebConfig(context, users, tls.client_auth_type if tls else "NoClientCert",
                     tls.min_version if tls else "",
                     (tls.cert_file, tls.key_file, tls.client_ca_file) if tls else ("", "", ""))


def _ssl_context(tls: _TlsServerConfig, error: Callable[[str, str], None]) -> ssl.SSLContext | None:
    ok = True

    def fail(key: str, msg: str) -> None:
        nonlocal ok
        ok = False
        error(key, msg)

    _check_tls_keys(tls, fail)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated, but the toolkit format allows them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    if tls.cert_file and tls.key_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except FileNotFoundError as exc:
            fail("cert_file" if exc.filename in (None, tls.cert_file) else "key_file",
                 f"cannot read {exc.filename or tls.cert_file}: {exc.strerror}")
        except OSError as exc:  # ssl.SSLError is an OSError
            fail("cert_file", f"cannot load the certificate and key ({tls.cert_file}, {tls.key_file}): "
                 f"{_ssl_reason(exc)}")
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except OSError as exc:
            fail("client_ca_file", f"cannot load {tls.client_ca_file}: {_ssl_reason(exc)}")
    if tls.client_auth_type in VERIFY_MODES:
        ctx.verify_mode = VERIFY_MODES[tls.client_auth_type]
    return ctx if ok else None


def _check_tls_keys(tls: _TlsServerConfig, fail: Callable[[str, str], None]) -> None:
    """The keys of tls_server_config that must go together, or must not."""
    if not tls.cert_file:
        fail("cert_file", "is required when tls_server_config is given")
    if not tls.key_file:
        fail("key_file", "is required when tls_server_config is given")
    if tls.client_auth_type in UNVERIFIED_CLIENT_AUTH:
        fail("client_auth_type", f"{tls.client_auth_type} (a client certificate taken without verifying "
             "it) is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file")
    elif tls.client_auth_type != "NoClientCert" and not tls.client_ca_file:
        fail("client_ca_file", f"is required with client_auth_type {tls.client_auth_type}")
    elif tls.client_auth_type == "NoClientCert" and tls.client_ca_file:
        fail("client_auth_type", "client_ca_file is set but client_auth_type is NoClientCert; "
             "set RequireAndVerifyClientCert or VerifyClientCertIfGiven")
    if TLS_VERSIONS[tls.min_version] > TLS_VERSIONS[tls.max_version]:
        fail("min_version", f"{tls.min_version} is above max_version {tls.max_version}")


def _ssl_reason(exc: OSError) -> str:
    return getattr(exc, "reason", None) or exc.strerror or type(exc).__name__


# --- basic auth ------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="oms-exporter", charset="UTF-8"'}


class BasicAuth:
    """Basic auth of every path: a user of `basic_auth_users` and its password.

    bcrypt is slow on purpose (~50-200 ms), so that unauthenticated load cannot delay a
    scraper that has proved its password:
    - checks run in worker threads (bcrypt releases the GIL), at most CONCURRENT_CHECKS at a
      time, and at most MAX_WAITING more wait for a place: beyond that a request with
      credentials not seen before gets 429 at once instead of queueing;
    - passwords that checked out are remembered (an HMAC of user, password and hash, under
      a key made at start: the password itself is never kept), in an LRU of their own, so a
      scraper that proved its password skips bcrypt and every queue, and a flood of wrong
      passwords cannot push it out;
    - wrong ones are remembered in a separate, smaller LRU, so a client sending the same
      wrong password on every scrape costs one check, not one per scrape.
    """

    CACHE_SIZE = 256  # credentials that checked out
    FAILED_CACHE_SIZE = 64
    CONCURRENT_CHECKS = 2
    MAX_WAITING = 16

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        # Checked when the user is unknown, at the cost of the real hashes, so that the
        # answer takes as long as for a known user (no user enumeration by timing).
        cost = max((int(h.split(b"$")[2]) for h in self._users.values()), default=10)
        self._dummy = bcrypt.hashpw(b"oms-exporter-dummy", bcrypt.gensalt(rounds=min(max(cost, 4), 31)))
        self._key = secrets.token_bytes(32)
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._checks: asyncio.Semaphore | None = None
        self._waiting = 0

    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """`handler`'s answer when the request holds a user's password; else 401 (or 429)."""
        ok = await self.authorized(request.headers.get("Authorization", ""))
        if ok is None:
            return web.Response(status=429, text="Too many password checks at once; try again\n",
                                headers={"Retry-After": "1"})
        if not ok:
            return web.Response(status=401, text="Unauthorized\n", headers=_CHALLENGE)
        return await handler(request)

    async def authorized(self, header: str) -> bool | None:
        """Whether `header` holds a user's password; None: too many checks waiting to tell."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or len(encoded) > 4096:
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        hashed = self._users.get(user)
        key = hmac.new(self._key, b"\0".join([user.encode(), password.encode(), hashed or b""]),
                       hashlib.sha256).digest()
        for cache, result in ((self._good, True), (self._bad, False)):
            if key in cache:
                cache.move_to_end(key)
                return result
        if self._checks is None:
            self._checks = asyncio.Semaphore(self.CONCURRENT_CHECKS)
        if self._checks.locked() and self._waiting >= self.MAX_WAITING:
            return None
        self._waiting += 1
        try:
            await self._checks.acquire()
        finally:
            self._waiting -= 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                None, _check, password.encode(), hashed or self._dummy)
        finally:
            self._checks.release()
        ok = ok and hashed is not None
        cache, size = (self._good, self.CACHE_SIZE) if ok else (self._bad, self.FAILED_CACHE_SIZE)
        cache[key] = None
        if len(cache) > size:
            cache.popitem(last=False)
        return ok


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes, or a hash bcrypt cannot read
        return False


class _Served:
    """The web config in force and its basic auth (None: none), swapped by `swap`."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.auth = BasicAuth(config.users) if config.users else None


SERVED = web.AppKey("web_config", _Served)


def install(app: web.Application, config: WebConfig) -> None:
    """Put basic auth in front of every route of `app` (TLS is the server's: see `ssl_context`)."""
    app[SERVED] = served = _Served(config)

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        auth = served.auth  # read once: a reload may swap it while this request waits
        if auth is None:
            return await handler(request)
        return await auth.guard(request, handler)

    app.middlewares.insert(0, basic_auth)
    _warn_clear_text(config)


def _warn_clear_text(config: WebConfig) -> None:
    if config.users and config.ssl_context is None:
        log.warning("basic auth without tls_server_config: passwords cross the network in clear text")


def reload_errors(app: web.Application, new: WebConfig) -> list[str]:
    """Why `new` cannot replace the web config in force without a restart (empty: it can)."""
    old = app[SERVED].config
    if (old.ssl_context is None) != (new.ssl_context is None):
        return [f"{FLAG}: tls_server_config: turning TLS on or off takes a restart"]
    if old.files[2] != new.files[2]:
        return [f"{FLAG}: tls_server_config.client_ca_file: changing it takes a restart "
                "(a CA cannot be taken out of a running server)"]
    return []


def swap(app: web.Application, new: WebConfig) -> None:
    """Serve `new` from the next request (users) and the next TLS handshake (certificate, versions).

    The server keeps its TLS context: the new certificate and key, versions and client
    verification are loaded into it; a client CA file is read again (renewed CAs are added).
    """
    served = app[SERVED]
    live = served.config.ssl_context
    if live is not None and new.ssl_context is not None:
        cert, key, ca = new.files
        live.load_cert_chain(cert, key)
        live.minimum_version, live.maximum_version = new.ssl_context.minimum_version, new.ssl_context.maximum_version
        if ca:
            live.load_verify_locations(cafile=ca)
        live.verify_mode = new.ssl_context.verify_mode
        new = WebConfig(live, new.users, new.client_auth, new.min_version, new.files)
    if new.users != served.config.users:
        served.auth = BasicAuth(new.users) if new.users else None
    served.config = new
    _warn_clear_text(new)
