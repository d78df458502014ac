"""The exporter in each authentication mode against the stand-in, over HTTP.

Token, AK/SK (with and without a security token) and IAM password: credentials accepted,
the IAM token obtained once, reused, renewed before expiry and once after a 401, never by
two renewals at once; and a refused credential shows as `oms_up 0` plus
`oms_scrape_errors_total{reason="auth"}` and pauses further attempts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from oms_exporter.auth import AkSkAuth, AuthError, IamPasswordAuth, TokenAuth, make_auth
from oms_exporter.client import AuthFailed, OmsClient
from oms_exporter.metrics import SelfMetrics
from oms_exporter.simulator import Credential, Fault, Simulator
from tests.conftest import AK, PROJECT, SK, TOKEN, Exporter, scrape, target_for, value, values

DOMAIN, USER, PASSWORD = "acme-account", "oms-reader", "iam-password-51c9e2"
TEMP_AK, TEMP_SK, SECURITY_TOKEN = "TEMPAK00000000002", "temp-secret-key-a81f", "security-token-0c44e1"

# The exporter's modes, as Target keyword arguments (the IAM endpoint is the stand-in).
MODES: dict[str, Any] = {
    "token": lambda oms: {"auth_token": TOKEN},
    "aksk": lambda oms: {"ak": AK, "sk": SK},
    "aksk+security_token": lambda oms: {"ak": TEMP_AK, "sk": TEMP_SK, "security_token": SECURITY_TOKEN},
    "iam": lambda oms: {"iam_username": USER, "iam_password": PASSWORD, "iam_domain": DOMAIN,
                        "iam_endpoint": endpoint(oms)},
}


def endpoint(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture(autouse=True)
def accounts(sim: Simulator) -> None:
    sim.credentials[TEMP_AK] = Credential(TEMP_SK, security_token=SECURITY_TOKEN)
    sim.iam_users[(DOMAIN, USER)] = PASSWORD


def auth_errors(samples: Any) -> float:
    """oms_scrape_errors_total{reason="auth"} (absent until the first one)."""
    return sum(values(samples, "oms_scrape_errors_total", project_id=PROJECT, reason="auth").values())


def revoke_all_tokens(sim: Simulator) -> None:
    for token in sim.tokens:
        sim.tokens[token] = 0.0


# --- each mode end to end ------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
async def test_each_mode_lists_every_task(mode: str, sim: Simulator, oms: TestServer, exporter: Exporter) -> None:
    client = await exporter([target_for(oms, **MODES[mode](oms))])
    for _ in range(2):
        samples = await scrape(client)
        assert value(samples, "oms_up", project_id=PROJECT) == 1
        assert value(samples, "oms_tasks", project_id=PROJECT, status="succeeded") >= 1
    assert sim.auth_failures == 0
    assert sim.iam_logins == (1 if mode == "iam" else 0)  # the IAM token is reused


def test_make_auth_picks_the_mode(oms: TestServer) -> None:
    kinds = {"token": TokenAuth, "aksk": AkSkAuth, "aksk+security_token": AkSkAuth, "iam": IamPasswordAuth}
    for mode, kind in kinds.items():
        assert type(make_auth(target_for(oms, **MODES[mode](oms)), session=None)) is kind  # type: ignore[arg-type]


async def test_aksk_headers() -> None:
    from yarl import URL
    auth = AkSkAuth(TEMP_AK, TEMP_SK, PROJECT, SECURITY_TOKEN, clock=lambda: 0.0)
    headers = await auth.headers("GET", URL("https://oms.cn-north-4.myhuaweicloud.com/v2/p/tasks?limit=1"))
    assert headers["X-Sdk-Date"] == "19700101T000000Z"
    assert headers["X-Project-Id"] == PROJECT
    assert headers["Host"] == "oms.cn-north-4.myhuaweicloud.com"
    assert headers["X-Security-Token"] == SECURITY_TOKEN
    assert headers["Authorization"].startswith(
        f"SDK-HMAC-SHA256 Access={TEMP_AK}, SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token, ")


# --- IAM token: obtained, reused, renewed ---------------------------------------------------

class Clock:
    """A clock shared by the stand-in and the exporter's IAM auth."""

    def __init__(self) -> None:
        self.now = 1_763_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def iam_auth(oms: TestServer, session: aiohttp.ClientSession, clock: Clock, **extra: Any) -> IamPasswordAuth:
    return IamPasswordAuth(session, target_for(oms, **{**MODES["iam"](oms), **extra}), clock=clock)


async def login_count_after(auth: IamPasswordAuth, sim: Simulator) -> int:
    await auth.headers("GET", None)  # type: ignore[arg-type]
    return sim.iam_logins


@pytest.mark.parametrize("lifetime, renew_after", [(86400.0, 82800.0), (3600.0, 1800.0), (600.0, 300.0)],
                         ids=["24h", "1h", "10min"])
async def test_iam_token_renewed_before_expiry(sim: Simulator, oms: TestServer, session: aiohttp.ClientSession,
                                               lifetime: float, renew_after: float) -> None:
    """Renewed an hour before expiry, or at half the lifetime of tokens shorter than two hours."""
    clock = Clock()
    sim.clock, sim.token_lifetime = clock, lifetime
    auth = iam_auth(oms, session, clock)
    first = (await auth.headers("GET", None))["X-Auth-Token"]  # type: ignore[arg-type]
    assert first in sim.tokens and sim.iam_logins == 1
    start = clock.now
    for t in (1.0, renew_after / 2, renew_after - 1):
        clock.now = start + t
        assert (await auth.headers("GET", None))["X-Auth-Token"] == first  # type: ignore[arg-type]
    assert sim.iam_logins == 1
    clock.now = start + renew_after + 1
    second = (await auth.headers("GET", None))["X-Auth-Token"]  # type: ignore[arg-type]
    assert second != first and sim.iam_logins == 2
    assert clock.now < sim.tokens[first]  # renewed while the old one was still valid


async def test_iam_one_renewal_in_flight(sim: Simulator, oms: TestServer, session: aiohttp.ClientSession) -> None:
    clock = Clock()
    sim.clock, sim.token_lifetime = clock, 3600.0
    auth = iam_auth(oms, session, clock)
    got = await asyncio.gather(*(auth.headers("GET", None) for _ in range(50)))  # type: ignore[arg-type]
    assert {h["X-Auth-Token"] for h in got} == {next(iter(sim.tokens.keys() - {TOKEN}))}
    assert sim.iam_logins == 1
    clock.now += 3600.0  # expired: all ask at once, one renews
    got = await asyncio.gather(*(auth.headers("GET", None) for _ in range(50)))  # type: ignore[arg-type]
    assert len({h["X-Auth-Token"] for h in got}) == 1
    assert sim.iam_logins == 2


async def test_iam_401_renews_once_for_many_concurrent_requests(
        sim: Simulator, oms: TestServer, session: aiohttp.ClientSession) -> None:
    auth = iam_auth(oms, session, Clock())
    sim.clock = Clock()
    client = OmsClient(session, target_for(oms, **MODES["iam"](oms)), auth, SelfMetrics())
    loop = asyncio.get_running_loop()

    async def pages() -> None:
        deadline = loop.time() + 10
        got = await asyncio.gather(*(client.list_tasks(offset=o, limit=10, deadline=deadline)
                                     for o in range(0, 250, 10)))
        assert sum(len(p.tasks) for p in got) == 250

    await pages()
    assert sim.iam_logins == 1
    revoke_all_tokens(sim)  # e.g. the user's password changed: IAM revokes the token early
    sent = len(sim.requests)
    await pages()
    assert sim.iam_logins == 2
    assert sim.auth_failures == 25  # each page refused once ...
    assert len(sim.requests) - sent == 50  # ... and retried once


async def test_iam_token_renewed_on_401_and_request_retried(
        sim: Simulator, oms: TestServer, exporter: Exporter) -> None:
    client = await exporter([target_for(oms, **MODES["iam"](oms))], page_limit=10)
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 1 and sim.iam_logins == 1
    revoke_all_tokens(sim)
    samples = await scrape(client)  # all 25 pages at once (the count is known): one renewal
    assert value(samples, "oms_up", project_id=PROJECT) == 1
    assert sim.iam_logins == 2
    assert sim.auth_failures == 25
    assert auth_errors(samples) == 0


async def test_iam_token_renewed_in_time_by_the_exporter(
        sim: Simulator, oms: TestServer, exporter: Exporter) -> None:
    """Real time, short-lived tokens: renewed at half their 2.4 s life, never used expired."""
    sim.token_lifetime = 2.4
    client = await exporter([target_for(oms, **MODES["iam"](oms))], page_limit=25)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    assert sim.iam_logins == 1
    await asyncio.sleep(1.3)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    assert sim.iam_logins == 2
    assert sim.auth_failures == 0


async def test_iam_renews_only_once_when_oms_keeps_refusing(
        sim: Simulator, oms: TestServer, exporter: Exporter) -> None:
    client = await exporter([target_for(oms, **MODES["iam"](oms))])
    sim.inject(Fault(status=401, body=b'{"error_code":"APIGW.0301","error_msg":"Incorrect IAM authentication"}',
                     headers={"Content-Type": "application/json"}, times=100))
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 0
    assert auth_errors(samples) == 1
    assert sim.iam_logins == 2  # the first token, then one renewal
    assert len(sim.requests) == 2  # the request, then one retry


async def test_renewal_failure_is_an_auth_error(sim: Simulator, oms: TestServer,
                                                session: aiohttp.ClientSession) -> None:
    bad = iam_auth(oms, session, Clock(), iam_password="wrong-password")
    with pytest.raises(AuthError, match="IAM refused the password login for user 'oms-reader': HTTP 401 IAM.0101"):
        await bad.headers("GET", None)  # type: ignore[arg-type]
    unreachable = iam_auth(oms, session, Clock(), iam_endpoint="http://127.0.0.1:9")
    with pytest.raises(AuthError, match="cannot reach IAM"):
        await unreachable.headers("GET", None)  # type: ignore[arg-type]


# --- failed authentication: oms_up 0, counted, backed off ---------------------------------

BAD = {
    "token": lambda oms: {"auth_token": "not-a-valid-token"},
    "aksk-wrong-sk": lambda oms: {"ak": AK, "sk": SK + "x"},
    "aksk-missing-security-token": lambda oms: {"ak": TEMP_AK, "sk": TEMP_SK},
    "iam-wrong-password": lambda oms: {**MODES["iam"](oms), "iam_password": "wrong-password"},
}


@pytest.mark.parametrize("mode", list(BAD))
async def test_failed_auth_is_reported_and_backed_off(
        mode: str, sim: Simulator, oms: TestServer, exporter: Exporter, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await exporter([target_for(oms, **BAD[mode](oms))])
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 0
    assert auth_errors(samples) == 1
    assert sim.auth_failures == 1
    attempts = len(sim.requests) + sim.iam_logins
    for n in range(2, 6):
        samples = await scrape(client)
        assert value(samples, "oms_up", project_id=PROJECT) == 0
        assert auth_errors(samples) == n
    # Within the backoff nothing reaches OMS or IAM: no lock-out after 5 failures.
    assert sim.auth_failures == 1
    assert len(sim.requests) + sim.iam_logins == attempts


async def test_auth_backoff_expires_doubles_and_resets(
        sim: Simulator, oms: TestServer, exporter: Exporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OmsClient, "AUTH_BACKOFF", 0.2)
    client = await exporter([target_for(oms, auth_token="revoked-soon")], page_limit=10)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 0
    assert sim.auth_failures == 1
    await asyncio.sleep(0.25)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 0
    assert sim.auth_failures == 2  # tried again once the pause was over ...
    await asyncio.sleep(0.25)
    await scrape(client)
    assert sim.auth_failures == 2  # ... and now waits twice as long
    sim.tokens["revoked-soon"] = float("inf")  # credentials fixed
    await asyncio.sleep(0.2)
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 1
    assert auth_errors(samples) == 3


async def test_failing_burst_counts_once_and_then_one_request_probes(
        sim: Simulator, oms: TestServer, exporter: Exporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OmsClient, "AUTH_BACKOFF", 0.2)
    sim.credentials["ROTATEDAK"] = Credential("old-sk")
    client = await exporter([target_for(oms, ak="ROTATEDAK", sk="old-sk")], page_limit=10)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    sim.credentials["ROTATEDAK"] = Credential("new-sk")
    # The next listing sends its 25 pages at once (the count is known): all are refused ...
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 0 and auth_errors(samples) == 1
    assert sim.auth_failures == 25
    # ... but count as one failure: the pause is the first one, not 2**24 times it.
    await asyncio.sleep(0.25)
    sent = len(sim.requests)
    samples = await scrape(client)
    assert auth_errors(samples) == 2
    # After a failure, one request tries the credentials before the others may go.
    assert len(sim.requests) - sent == 1 and sim.auth_failures == 26
    sim.credentials["ROTATEDAK"] = Credential("old-sk")  # rotated back
    await asyncio.sleep(0.45)
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 1
    assert sim.auth_failures == 26


async def test_client_raises_auth_failed_during_backoff(sim: Simulator, oms: TestServer,
                                                        session: aiohttp.ClientSession) -> None:
    target = target_for(oms, auth_token="bad")
    client = OmsClient(session, target, TokenAuth("bad"), SelfMetrics())
    deadline = asyncio.get_running_loop().time() + 5
    with pytest.raises(AuthFailed, match=r"OMS refused the credentials \(HTTP 401 APIGW.0301\)"):
        await client.list_tasks(offset=0, limit=10, deadline=deadline)
    with pytest.raises(AuthFailed, match="authentication failed recently; next attempt in"):
        await client.list_tasks(offset=0, limit=10, deadline=deadline)
    assert len(sim.requests) == 1


async def test_iam_failed_renewal_is_not_repeated_by_the_waiters(
        sim: Simulator, oms: TestServer, session: aiohttp.ClientSession) -> None:
    bad = iam_auth(oms, session, Clock(), iam_password="wrong-password")
    got = await asyncio.gather(*(bad.headers("GET", None) for _ in range(20)),  # type: ignore[arg-type]
                               return_exceptions=True)
    assert all(isinstance(g, AuthError) for g in got)
    assert sim.auth_failures == 1  # one password login tried, not twenty
    with pytest.raises(AuthError):
        await bad.headers("GET", None)  # type: ignore[arg-type]
    assert sim.auth_failures == 2  # a later call tries again (the client's backoff spaces them)


@pytest.mark.parametrize("iam_endpoint, reason", [("unreachable", "network"), ("503", "http_5xx")])
async def test_iam_outage_is_not_an_auth_failure(iam_endpoint: str, reason: str, sim: Simulator, oms: TestServer,
                                                 aiohttp_server: Any, exporter: Exporter) -> None:
    """IAM being down says nothing about the credentials: no auth pause, counted as what it is."""
    from aiohttp import web

    if iam_endpoint == "unreachable":
        url = "http://127.0.0.1:9"
    else:
        async def busy(request: web.Request) -> web.Response:
            return web.Response(status=503, text="<html>busy</html>")

        down = web.Application()
        down.router.add_post("/v3/auth/tokens", busy)
        url = endpoint(await aiohttp_server(down))
    client = await exporter([target_for(oms, **{**MODES["iam"](oms), "iam_endpoint": url})])
    for n in (1, 2):
        samples = await scrape(client)
        assert value(samples, "oms_up", project_id=PROJECT) == 0
        assert value(samples, "oms_scrape_errors_total", project_id=PROJECT, reason=reason) == n
        assert auth_errors(samples) == 0  # and the second scrape tried IAM again: no pause
