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

from oms_exporter.auth import AkSkAuth, IamPasswordAuth, TokenAuth, make_auth
from oms_exporter.client import OmsClient
from oms_exporter.errors import AuthFailed, NetworkError
from oms_exporter.http import Http
from oms_exporter.metrics import SelfMetrics
from oms_exporter.model import page
from oms_exporter.simulator import Credential
from tests.conftest import AK, PROJECT, SK, TOKEN, Exporter, ManualClock, scrape, target_for, value, values
from tests.standin import Fault, StandIn

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
def accounts(sim: StandIn) -> None:
    sim.credentials[TEMP_AK] = Credential(TEMP_SK, security_token=SECURITY_TOKEN)
    sim.iam_users[(DOMAIN, USER)] = PASSWORD


def auth_errors(samples: Any) -> float:
    """oms_scrape_errors_total{reason="auth"} (absent until the first one)."""
    return sum(values(samples, "oms_scrape_errors_total", project_id=PROJECT, reason="auth").values())


def revoke_all_tokens(sim: StandIn) -> None:
    for token in sim.tokens:
        sim.tokens[token] = 0.0


# --- each mode end to end ------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
async def test_each_mode_lists_every_task(mode: str, sim: StandIn, oms: TestServer, exporter: Exporter) -> None:
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
        assert type(make_auth(target_for(oms, **MODES[mode](oms)), None, ManualClock())) is kind  # type: ignore[arg-type]


async def test_aksk_headers() -> None:
    from yarl import URL
    clock = ManualClock()
    clock.advance(-clock.time())  # 1970-01-01T00:00:00Z
    auth = AkSkAuth(TEMP_AK, TEMP_SK, PROJECT, SECURITY_TOKEN, clock=clock)
    headers = await auth.headers("GET", URL("https://oms.cn-north-4.myhuaweicloud.com/v2/p/tasks?limit=1"), 0)
    assert headers["X-Sdk-Date"] == "19700101T000000Z"
    assert headers["X-Project-Id"] == PROJECT
    assert headers["Host"] == "oms.cn-north-4.myhuaweicloud.com"
    assert headers["X-Security-Token"] == SECURITY_TOKEN
    assert headers["Authorization"].startswith(
        f"SDK-HMAC-SHA256 Access={TEMP_AK}, SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token, ")


# --- IAM token: obtained, reused, renewed ---------------------------------------------------

@pytest.fixture
async def http(clock: ManualClock) -> Any:
    async with aiohttp.ClientSession() as s:
        yield Http(s, clock, SelfMetrics().request)


def iam_auth(oms: TestServer, http: Http, clock: ManualClock, **extra: Any) -> IamPasswordAuth:
    target = target_for(oms, **{**MODES["iam"](oms), **extra})
    return IamPasswordAuth(http, target, clock, project_id=target.project_id, iam_url=target.iam_url, name=target.name)


async def token(auth: IamPasswordAuth, clock: ManualClock) -> str:
    return (await auth.headers("GET", None, clock.monotonic() + 5))["X-Auth-Token"]  # type: ignore[arg-type]


@pytest.mark.parametrize("lifetime, renew_after", [(86400.0, 82800.0), (3600.0, 1800.0), (600.0, 300.0)],
                         ids=["24h", "1h", "10min"])
async def test_iam_token_renewed_before_expiry(sim: StandIn, oms: TestServer, http: Http, clock: ManualClock,
                                               lifetime: float, renew_after: float) -> None:
    """Renewed an hour before expiry, or at half the lifetime of tokens shorter than two hours."""
    sim.token_lifetime = lifetime
    auth = iam_auth(oms, http, clock)
    first = await token(auth, clock)
    assert first in sim.tokens and sim.iam_logins == 1
    start = clock.offset
    for t in (1.0, renew_after / 2, renew_after - 1):
        clock.offset = start + t
        assert await token(auth, clock) == first
    assert sim.iam_logins == 1
    clock.offset = start + renew_after + 1
    second = await token(auth, clock)
    assert second != first and sim.iam_logins == 2
    assert clock.time() < sim.tokens[first]  # renewed while the old one was still valid


async def test_iam_one_renewal_in_flight(sim: StandIn, oms: TestServer, http: Http, clock: ManualClock) -> None:
    sim.token_lifetime = 3600.0
    auth = iam_auth(oms, http, clock)
    got = await asyncio.gather(*(token(auth, clock) for _ in range(50)))
    assert set(got) == {next(iter(sim.tokens.keys() - {TOKEN}))}
    assert sim.iam_logins == 1
    clock.advance(3600.0)  # expired: all ask at once, one renews
    got = await asyncio.gather(*(token(auth, clock) for _ in range(50)))
    assert len(set(got)) == 1
    assert sim.iam_logins == 2


async def test_iam_401_renews_once_for_many_concurrent_requests(
        sim: StandIn, oms: TestServer, http: Http, clock: ManualClock) -> None:
    auth = iam_auth(oms, http, clock)
    client = OmsClient(http, target_for(oms, **MODES["iam"](oms)), auth, clock, slots={"tasks": 25})

    async def pages() -> None:
        deadline = clock.monotonic() + 10
        got = await asyncio.gather(*(client.get("tasks", "tasks", {"offset": str(o), "limit": "10"}, deadline)
                                     for o in range(0, 250, 10)))
        assert sum(len(page(p.body)[0]) for p in got) == 250

    await pages()
    assert sim.iam_logins == 1
    revoke_all_tokens(sim)  # e.g. the user's password changed: IAM revokes the token early
    sent = len(sim.requests)
    await pages()
    assert sim.iam_logins == 2
    assert sim.auth_failures == 25  # each page refused once ...
    assert len(sim.requests) - sent == 50  # ... and retried once


async def test_iam_token_renewed_on_401_and_request_retried(
        sim: StandIn, oms: TestServer, exporter: Exporter) -> None:
    # The full listing: its 31 pages (10 records each, two shared by neighbours) go out at once from
    # the second scrape on.
    client = await exporter([target_for(oms, **MODES["iam"](oms))], page_limit=10, listing="full")
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 1 and sim.iam_logins == 1
    revoke_all_tokens(sim)
    samples = await scrape(client)  # all 31 pages at once (the count is known): one renewal
    assert value(samples, "oms_up", project_id=PROJECT) == 1
    assert sim.iam_logins == 2
    assert sim.auth_failures == 33  # the 31 pages, the task-group page, the sync-task page: each refused once
    assert auth_errors(samples) == 0


async def test_iam_token_renewed_in_time_by_the_exporter(
        sim: StandIn, oms: TestServer, exporter: Exporter, clock: ManualClock) -> None:
    """Short-lived tokens: renewed at half their 2.4 s life, never used expired."""
    sim.token_lifetime = 2.4
    client = await exporter([target_for(oms, **MODES["iam"](oms))], page_limit=25)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    assert sim.iam_logins == 1
    clock.advance(1.3)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    assert sim.iam_logins == 2
    assert sim.auth_failures == 0


async def test_iam_renews_only_once_when_oms_keeps_refusing(
        sim: StandIn, oms: TestServer, exporter: Exporter) -> None:
    client = await exporter([target_for(oms, **MODES["iam"](oms))])
    sim.inject(Fault(status=401, body=b'{"error_code":"APIGW.0301","error_msg":"Incorrect IAM authentication"}',
                     headers={"Content-Type": "application/json"}, times=100))
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 0
    assert auth_errors(samples) == 1
    assert sim.iam_logins == 2  # the first token, then one renewal
    assert len(sim.requests) == 2  # the request, then one retry


async def test_renewal_failure_is_an_auth_error(sim: StandIn, oms: TestServer, http: Http,
                                                clock: ManualClock) -> None:
    bad = iam_auth(oms, http, clock, iam_password="wrong-password")
    with pytest.raises(AuthFailed, match=r"IAM refused the password login for user 'oms-reader' \(HTTP 401 IAM.0101\)"):
        await token(bad, clock)
    unreachable = iam_auth(oms, http, clock, iam_endpoint="http://127.0.0.1:9")
    with pytest.raises(NetworkError, match="cannot reach 127.0.0.1"):
        await token(unreachable, clock)


# --- failed authentication: oms_up 0, counted, backed off ---------------------------------

BAD = {
    "token": lambda oms: {"auth_token": "not-a-valid-token"},
    "aksk-wrong-sk": lambda oms: {"ak": AK, "sk": SK + "x"},
    "aksk-missing-security-token": lambda oms: {"ak": TEMP_AK, "sk": TEMP_SK},
    "iam-wrong-password": lambda oms: {**MODES["iam"](oms), "iam_password": "wrong-password"},
}


@pytest.mark.parametrize("mode", list(BAD))
async def test_failed_auth_is_reported_and_backed_off(
        mode: str, sim: StandIn, oms: TestServer, exporter: Exporter, monkeypatch: pytest.MonkeyPatch) -> None:
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
        sim: StandIn, oms: TestServer, exporter: Exporter, clock: ManualClock) -> None:
    client = await exporter([target_for(oms, auth_token="revoked-soon")], page_limit=10)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 0
    assert sim.auth_failures == 1
    clock.advance(30.1)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 0
    assert sim.auth_failures == 2  # tried again once the 30 s pause was over ...
    clock.advance(30.1)
    await scrape(client)
    assert sim.auth_failures == 2  # ... and now waits twice as long
    sim.tokens["revoked-soon"] = float("inf")  # credentials fixed
    clock.advance(30)
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 1
    assert auth_errors(samples) == 3


async def test_failing_burst_counts_once_and_then_one_request_probes(
        sim: StandIn, oms: TestServer, exporter: Exporter, clock: ManualClock) -> None:
    sim.credentials["ROTATEDAK"] = Credential("old-sk")
    client = await exporter([target_for(oms, ak="ROTATEDAK", sk="old-sk")], page_limit=10, listing="full")
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    sim.credentials["ROTATEDAK"] = Credential("new-sk")
    # The next listing sends its 31 pages at once (the count is known): all are refused ...
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 0 and auth_errors(samples) == 1
    assert sim.auth_failures == 33  # with the task-group and sync-task pages
    # ... but count as one failure: the pause is the first one (30 s), not 2**26 times it.
    clock.advance(30.1)
    sent = len(sim.calls)
    samples = await scrape(client)
    assert auth_errors(samples) == 2
    # After a failure, one request (of any API area) tries the credentials before the others may go.
    assert len(sim.calls) - sent == 1 and sim.auth_failures == 34
    sim.credentials["ROTATEDAK"] = Credential("old-sk")  # rotated back
    clock.advance(60.1)
    samples = await scrape(client)
    assert value(samples, "oms_up", project_id=PROJECT) == 1
    assert sim.auth_failures == 34


async def test_client_raises_auth_failed_during_backoff(sim: StandIn, oms: TestServer, http: Http,
                                                        clock: ManualClock) -> None:
    target = target_for(oms, auth_token="bad")
    client = OmsClient(http, target, TokenAuth("bad"), clock, slots={"tasks": 8})
    deadline = clock.monotonic() + 5
    with pytest.raises(AuthFailed, match=r"OMS refused the credentials \(HTTP 401 APIGW.0301\)"):
        await client.get("tasks", "tasks", {"offset": "0", "limit": "10"}, deadline)
    with pytest.raises(AuthFailed, match="authentication failed recently; next attempt in"):
        await client.get("tasks", "tasks", {"offset": "0", "limit": "10"}, deadline)
    assert len(sim.requests) == 1


async def test_iam_failed_renewal_is_not_repeated_by_the_waiters(
        sim: StandIn, oms: TestServer, http: Http, clock: ManualClock) -> None:
    bad = iam_auth(oms, http, clock, iam_password="wrong-password")
    got = await asyncio.gather(*(token(bad, clock) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(g, AuthFailed) for g in got)
    assert sim.auth_failures == 1  # one password login tried, not twenty
    with pytest.raises(AuthFailed):
        await token(bad, clock)
    assert sim.auth_failures == 2  # a later call tries again (the client's backoff spaces them)


@pytest.mark.parametrize("iam_endpoint, reason", [("unreachable", "network"), ("503", "http_5xx"),
                                                   ("302", "http_3xx"), ("307", "http_3xx")])
async def test_iam_outage_is_not_an_auth_failure(iam_endpoint: str, reason: str, sim: StandIn, oms: TestServer,
                                                 aiohttp_server: Any, exporter: Exporter) -> None:
    """IAM being down (or sending the login elsewhere) says nothing about the credentials: no auth
    pause, counted as what it is."""
    from aiohttp import web

    if iam_endpoint == "unreachable":
        url = "http://127.0.0.1:9"
    else:
        async def busy(request: web.Request) -> web.Response:
            return web.Response(status=int(iam_endpoint), text="<html>elsewhere</html>",
                                headers={"Location": "http://127.0.0.1:9/v3/auth/tokens"})

        down = web.Application()
        down.router.add_post("/v3/auth/tokens", busy)
        url = endpoint(await aiohttp_server(down))
    client = await exporter([target_for(oms, **{**MODES["iam"](oms), "iam_endpoint": url})])
    for n in (1, 2):
        samples = await scrape(client)
        assert value(samples, "oms_up", project_id=PROJECT) == 0
        assert value(samples, "oms_scrape_errors_total", project_id=PROJECT, reason=reason) == n
        assert auth_errors(samples) == 0  # and the second scrape tried IAM again: no pause
