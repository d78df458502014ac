"""Authentication to OMS behind one small interface: static token, AK/SK signing, IAM password.

Every request the client sends goes through `Auth.headers()`; a 401 goes through
`Auth.unauthorized()`, which says whether one retry with fresh credentials makes sense.
Refused credentials raise `AuthFailed` (the client then pauses the target); IAM being
unreachable raises the `OmsError` of what happened, which does not. The SDK-HMAC-SHA256
canonical form lives here too, so that the OMS stand-in verifies signatures with the very
code that makes them (and the tests check both against the official SDK's signer).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from urllib.parse import quote, unquote

import msgspec
from yarl import URL

from oms_exporter.clock import Clock
from oms_exporter.errors import AuthFailed, BadPayload, OmsError, ServerError, Throttled
from oms_exporter.http import Http
from oms_exporter.settings import Credentials, DiscoveryEntry, Target

log = logging.getLogger(__name__)

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Auth(ABC):
    """How a request to OMS proves who sends it."""

    @abstractmethod
    async def headers(self, method: str, url: URL, deadline: float) -> dict[str, str]:
        """Headers to add to a bodiless request for `url` (which already carries its query)."""

    async def unauthorized(self, sent: Mapping[str, str]) -> bool:
        """OMS answered 401 to a request sent with `sent` headers: retry once with new ones?"""
        return False


class TokenAuth(Auth):
    """A static IAM token, sent as X-Auth-Token."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def headers(self, method: str, url: URL, deadline: float) -> dict[str, str]:
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

    def __init__(self, ak: str, sk: str, project_id: str | None, security_token: str | None = None,
                 clock: Clock | None = None) -> None:
        """`project_id` None: no X-Project-Id (an account-wide call: IAM's project list)."""
        self._ak, self._sk, self._project_id = ak, sk, project_id
        self._security_token = security_token
        self._clock = clock or Clock()

    async def headers(self, method: str, url: URL, deadline: float) -> dict[str, str]:
        return self.sign(method, url)

    def sign(self, method: str, url: URL, body: bytes = b"", extra: Mapping[str, str] | None = None) -> dict[str, str]:
        sdk_date = time.strftime(DATE_FORMAT, time.gmtime(self._clock.time()))
        headers = {
            "Content-Type": "application/json",
            "Host": host_header(url),
            "X-Sdk-Date": sdk_date,
            **(extra or {}),
        }
        if self._project_id:
            headers["X-Project-Id"] = self._project_id
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
    """Obtains a token from IAM with a user's password, scoped to one project (or to the account, for
    IAM's project list), and renews it in time."""

    # Renew this long before expiry (or at half the lifetime for short-lived tokens).
    RENEW_MARGIN = 3600.0

    def __init__(self, http: Http, creds: Credentials, clock: Clock, *, project_id: str | None, iam_url: str,
                 name: str) -> None:
        self._http = http
        self._creds = creds
        self._scope = {"project": {"id": project_id}} if project_id else {"domain": {"name": creds.iam_domain}}
        self._iam_url = iam_url
        self._name = name  # the target or discovery entry: log lines
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0  # Unix time
        self._lock = asyncio.Lock()
        self._renewals = 0  # renewals finished, well or not
        self._failed: OmsError | None = None  # how the last renewal failed

    async def headers(self, method: str, url: URL, deadline: float) -> dict[str, str]:
        return {"X-Auth-Token": await self._current(deadline)}

    async def unauthorized(self, sent: Mapping[str, str]) -> bool:
        async with self._lock:
            if self._token is not None and sent.get("X-Auth-Token") == self._token:
                log.info("IAM token refused by OMS, renewing", extra={"target": self._name})
                self._token = None
        return True

    async def _current(self, deadline: float) -> str:
        token = self._token
        if token is not None and self._clock.time() < self._renew_at:
            return token
        renewals = self._renewals
        async with self._lock:  # one renewal in flight; the others wait for its token
            if self._renewals != renewals and self._failed is not None:
                # The renewal this call waited for failed: trying the password again at once
                # would only add failed logins (IAM locks users after repeated failures).
                failed = self._failed
                raise type(failed)(str(failed))
            if self._token is None or self._clock.time() >= self._renew_at:
                try:
                    await self._renew(deadline)
                except OmsError as exc:
                    self._failed = exc
                    raise
                else:
                    self._failed = None
                finally:
                    self._renewals += 1
            assert self._token is not None
            return self._token

    async def _renew(self, deadline: float) -> None:
        t = self._creds
        assert t.iam_password is not None
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "domain": {"name": t.iam_domain}, "name": t.iam_username,
                "password": t.iam_password.get_secret_value()}}},
            "scope": self._scope,
        }}
        url = URL(self._iam_url + "/v3/auth/tokens").with_query(nocatalog="true")
        # Not an OMS request: not counted in oms_api_requests_total. Transport failures
        # (timeout, network) say IAM could not be asked: no verdict on the password.
        answer = await self._http.request("POST", url, deadline=deadline, body=msgspec.json.encode(body),
                                          headers={"Content-Type": "application/json;charset=utf8"})
        who = f"user {t.iam_username!r}"
        if answer.status == 429:
            raise Throttled(f"IAM throttled the login of {who} ({answer.describe()})")
        if answer.status >= 500:
            raise ServerError(f"IAM could not log in {who} ({answer.describe()})")
        if answer.status != 201:
            raise AuthFailed(f"IAM refused the password login for {who} ({answer.describe()})")
        token = answer.headers.get("X-Subject-Token")
        expires = _expires_at(answer.body)
        if not token or expires is None:
            raise BadPayload("IAM answered without X-Subject-Token or token.expires_at")
        now = self._clock.time()
        lifetime = max(expires - now, 0.0)
        self._token = token
        # A 24 h token is renewed after 23 h; one shorter than twice the margin at half its life
        # (min() here would renew a 1 h token before every request).
        self._renew_at = now + max(lifetime - self.RENEW_MARGIN, lifetime / 2)
        log.info("IAM token obtained", extra={"target": self._name, "expires_in_seconds": round(lifetime)})


def _expires_at(raw: bytes) -> float | None:
    try:
        text = msgspec.json.decode(raw)["token"]["expires_at"]
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (msgspec.DecodeError, RecursionError, KeyError, TypeError, ValueError, AttributeError):
        return None


def make_auth(target: Target, http: Http, clock: Clock) -> Auth:
    mode = target.auth_mode
    if mode == "token":
        assert target.auth_token is not None
        return TokenAuth(target.auth_token.get_secret_value())
    if mode == "aksk":
        assert target.ak is not None and target.sk is not None
        return AkSkAuth(target.ak.get_secret_value(), target.sk.get_secret_value(), target.project_id,
                        target.security_token.get_secret_value() if target.security_token else None, clock)
    return IamPasswordAuth(http, target, clock, project_id=target.project_id, iam_url=target.iam_url, name=target.name)


def account_auth(entry: DiscoveryEntry, http: Http, clock: Clock) -> Auth:
    """How a discovery entry asks IAM for the account's projects: signed with its AK/SK, or with a token
    scoped to the account (a static token cannot: settings refuse it)."""
    if entry.auth_mode == "aksk":
        assert entry.ak is not None and entry.sk is not None
        return AkSkAuth(entry.ak.get_secret_value(), entry.sk.get_secret_value(), None,
                        entry.security_token.get_secret_value() if entry.security_token else None, clock)
    return IamPasswordAuth(http, entry, clock, project_id=None, iam_url=entry.iam_url, name=f"discovery {entry.name}")
