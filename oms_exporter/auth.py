"""Authentication to OMS behind one small interface: static token, AK/SK signing, IAM password.

Every request the client sends goes through `Auth.headers()`; a 401 goes through
`Auth.unauthorized()`, which says whether one retry with fresh credentials makes sense.
The SDK-HMAC-SHA256 canonical form lives here too, so that the OMS stand-in verifies
signatures with the very code that makes them (and the tests check both against the
official SDK's signer).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from ssl import SSLContext
from urllib.parse import quote, unquote

import aiohttp
import msgspec
from yarl import URL

from oms_exporter.settings import Target

log = logging.getLogger(__name__)

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class AuthError(Exception):
    """Credentials were refused or no token could be obtained; the message holds no secret."""


class IamUnavailable(AuthError):
    """IAM could not be asked (network, 5xx, 429, broken answer): not a verdict on the credentials.

    `reason` is the oms_scrape_errors_total reason it counts as.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Auth(ABC):
    """How a request to OMS proves who sends it."""

    @abstractmethod
    async def headers(self, method: str, url: URL, body: bytes = b"") -> dict[str, str]:
        """Headers to add to a request for `url` (which already carries its query)."""

    async def unauthorized(self, sent: Mapping[str, str]) -> bool:
        """OMS answered 401 to a request sent with `sent` headers: retry once with new ones?"""
        return False


class TokenAuth(Auth):
    """A static IAM token, sent as X-Auth-Token."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def headers(self, method: str, url: URL, body: bytes = b"") -> dict[str, str]:
        return {"X-Auth-Token": self._token}


# --- AK/SK -------------------------------------------------------------------------------

def _enc(s: str) -> str:
    return quote(s, safe="~")


@lru_cache(maxsize=64)  # a client signs the same path on every page
def canonical_uri(path: str) -> str:
    uri = "/".join(_enc(seg) for seg in unquote(path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(pairs))


def string_to_sign(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed: list[str],
    body: bytes,
    sdk_date: str,
) -> str:
    """The SDK-HMAC-SHA256 string to sign; `headers` keys must be lower-case."""
    canonical_headers = "".join(f"{h}:{headers[h].strip()}\n" for h in signed)
    payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    canonical = "\n".join([
        method.upper(), canonical_uri(path), canonical_query(query),
        canonical_headers, ";".join(signed), payload_hash,
    ])
    return f"{ALGORITHM}\n{sdk_date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def signature(sk: str, to_sign: str) -> str:
    return hmac.digest(sk.encode(), to_sign.encode(), "sha256").hex()


def host_header(url: URL) -> str:
    return url.host if url.is_default_port() else f"{url.host}:{url.port}"  # type: ignore[return-value]


class AkSkAuth(Auth):
    """Signs each request with an access key pair (optionally temporary, with a security token)."""

    def __init__(self, ak: str, sk: str, project_id: str, security_token: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._ak, self._sk, self._project_id = ak, sk, project_id
        self._security_token = security_token
        self._clock = clock

    async def headers(self, method: str, url: URL, body: bytes = b"") -> dict[str, str]:
        return self.sign(method, url, body)

    def sign(self, method: str, url: URL, body: bytes = b"", extra: Mapping[str, str] | None = None) -> dict[str, str]:
        sdk_date = time.strftime(DATE_FORMAT, time.gmtime(self._clock()))
        headers = {
            "Content-Type": "application/json",
            "Host": host_header(url),
            "X-Project-Id": self._project_id,
            "X-Sdk-Date": sdk_date,
            **(extra or {}),
        }
        if self._security_token:
            headers["X-Security-Token"] = self._security_token
        lower = {k.lower(): v for k, v in headers.items()}
        signed = sorted(k for k in lower if "_" not in k)
        to_sign = string_to_sign(method, url.raw_path, url.query.items(), lower, signed, body, sdk_date)
        headers["Authorization"] = (
            f"{ALGORITHM} Access={self._ak}, SignedHeaders={';'.join(signed)}, "
            f"Signature={signature(self._sk, to_sign)}"
        )
        return headers


# --- IAM password token ------------------------------------------------------------------

class IamPasswordAuth(Auth):
    """Obtains a project-scoped token from IAM with a user's password and renews it in time."""

    # Renew this long before expiry (or at half the lifetime for short-lived tokens).
    RENEW_MARGIN = 3600.0

    def __init__(self, session: aiohttp.ClientSession, target: Target, ssl: SSLContext | bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self._session = session
        self._target = target
        self._ssl = ssl
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self._renewals = 0  # renewals finished, well or not
        self._failed: AuthError | None = None  # how the last renewal failed

    async def headers(self, method: str, url: URL, body: bytes = b"") -> dict[str, str]:
        return {"X-Auth-Token": await self._current()}

    async def unauthorized(self, sent: Mapping[str, str]) -> bool:
        async with self._lock:
            if self._token is not None and sent.get("X-Auth-Token") == self._token:
                log.info("IAM token refused by OMS, renewing", extra={"target": self._target.name})
                self._token = None
        return True

    async def _current(self) -> str:
        token = self._token
        if token is not None and self._clock() < self._renew_at:
            return token
        renewals = self._renewals
        async with self._lock:  # one renewal in flight; the others wait for its token
            if self._renewals != renewals and self._failed is not None:
                # The renewal this call waited for failed: trying the password again at once
                # would only add failed logins (IAM locks users after repeated failures).
                failed = self._failed
                if isinstance(failed, IamUnavailable):
                    raise IamUnavailable(str(failed), failed.reason)
                raise AuthError(str(failed))
            if self._token is None or self._clock() >= self._renew_at:
                try:
                    await self._renew()
                except AuthError as exc:
                    self._failed = exc
                    raise
                else:
                    self._failed = None
                finally:
                    self._renewals += 1
            assert self._token is not None
            return self._token

    async def _renew(self) -> None:
        t = self._target
        assert t.iam_password is not None
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "domain": {"name": t.iam_domain}, "name": t.iam_username,
                "password": t.iam_password.get_secret_value()}}},
            "scope": {"project": {"id": t.project_id}},
        }}
        url = URL(t.iam_url + "/v3/auth/tokens").with_query(nocatalog="true")
        try:
            async with self._session.post(url, data=msgspec.json.encode(body), ssl=self._ssl,
                                          headers={"Content-Type": "application/json;charset=utf8"},
                                          timeout=aiohttp.ClientTimeout(total=10)) as resp:
                raw = await resp.read()
                if resp.status == 429 or resp.status >= 500:
                    raise IamUnavailable(f"IAM could not log in user {t.iam_username!r}: "
                                         f"HTTP {resp.status} {_error_code(raw)}".rstrip(),
                                         "throttled" if resp.status == 429 else "http_5xx")
                if resp.status != 201:
                    raise AuthError(f"IAM refused the password login for user {t.iam_username!r}: "
                                    f"HTTP {resp.status} {_error_code(raw)}".rstrip())
                token = resp.headers.get("X-Subject-Token")
                expires = _expires_at(raw)
        except asyncio.TimeoutError:
            raise IamUnavailable(f"IAM at {t.iam_url} did not answer in time", "timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise IamUnavailable(f"cannot reach IAM at {t.iam_url}: {type(exc).__name__}", "network") from None
        if not token or expires is None:
            raise IamUnavailable("IAM answered without X-Subject-Token or token.expires_at", "bad_payload")
        now = self._clock()
        lifetime = max(expires - now, 0.0)
        self._token = token
        # A 24 h token is renewed after 23 h; one shorter than twice the margin at half its life
        # (min() here would renew a 1 h token before every request).
        self._renew_at = now + max(lifetime - self.RENEW_MARGIN, lifetime / 2)
        log.info("IAM token obtained", extra={"target": t.name, "expires_in_seconds": round(lifetime)})


def _error_code(raw: bytes) -> str:
    try:
        doc = msgspec.json.decode(raw)
        code = doc.get("error_code") or (doc.get("error") or {}).get("code")
        return str(code) if code else ""
    except (msgspec.DecodeError, AttributeError):
        return ""


def _expires_at(raw: bytes) -> float | None:
    try:
        text = msgspec.json.decode(raw)["token"]["expires_at"]
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def make_auth(target: Target, session: aiohttp.ClientSession, ssl: SSLContext | bool = True) -> Auth:
    mode = target.auth_mode
    if mode == "token":
        assert target.auth_token is not None
        return TokenAuth(target.auth_token.get_secret_value())
    if mode == "aksk":
        assert target.ak is not None and target.sk is not None
        return AkSkAuth(target.ak.get_secret_value(), target.sk.get_secret_value(), target.project_id,
                        target.security_token.get_secret_value() if target.security_token else None)
    return IamPasswordAuth(session, target, ssl=ssl)
