"""Discovery (issue 23): one credential, every project of the account in every OMS region.

The stand-in serves IAM's project list and OMS for several projects; every "region" is the
same stand-in, reached through the entry's `endpoints`. Over HTTP: each state of a project,
projects appearing and vanishing, IAM failing and recovering, an empty answer, per-project
IAM tokens, a proxy, /discovery and /probe of a discovered target.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from oms_exporter.catalog import switches
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import DiscoveryEntry, Options, Settings
from oms_exporter.simulator import Credential, make_tasks
from oms_exporter.web import LIVE, make_app, reload
from tests.conftest import AK, SK, ManualClock, Samples, parse_metrics, target_for, value, values, wait_until
from tests.standin import Fault, StandIn

NORTH, EAST, TEAM, FORBIDDEN = "e" * 31 + "1", "e" * 31 + "2", "e" * 31 + "3", "e" * 31 + "4"
FAR = "e" * 31 + "5"  # a region without a built-in OMS endpoint, reached through an override


@pytest.fixture
def account(clock: ManualClock) -> StandIn:
    """Three projects with OMS (two regions, one sub-project), one forbidden (OMS answers 403), MOS,
    a disabled project, a region without OMS, and a region reached through an endpoint override."""
    sim = StandIn(credentials={AK: Credential(SK)}, clock=clock.time)
    for pid, n in ((NORTH, 30), (EAST, 20), (TEAM, 10), (FAR, 5)):
        sim.add_project(pid, make_tasks(n, seed=len(pid) + n))
    sim.add_iam_project("cn-north-4", NORTH)
    sim.add_iam_project("cn-east-3", EAST)
    sim.add_iam_project("cn-north-4_team", TEAM, parent_id=NORTH)
    sim.add_iam_project("cn-east-3_legacy", FORBIDDEN)  # no project in OMS: 403 OMS.0206
    sim.add_iam_project("MOS")
    sim.add_iam_project("cn-south-1_old", enabled=False)
    sim.add_iam_project("cn-north-2")  # IAM has it, OMS does not publish there
    sim.add_iam_project("xx-far-1", FAR)
    return sim


@pytest.fixture
async def iam(account: StandIn, aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(account.app())


def entry(server: TestServer, **extra: Any) -> DiscoveryEntry:
    url = str(server.make_url("")).rstrip("/")
    return DiscoveryEntry.model_validate({
        "ak": AK, "sk": SK, "iam_endpoint": url,
        "endpoints": {"cn-north-4": url, "cn-east-3": url, "xx-far-1": url}, **extra})


@pytest.fixture
def discovering(iam: TestServer, clock: ManualClock, aiohttp_client: Any) -> Any:
    """`await discovering(entries=None, targets=(), **options)` -> a client of an exporter that discovers."""
    async def make(entries: list[DiscoveryEntry] | None = None, targets: Any = (), **options: Any) -> TestClient:
        settings = Settings(options=Options(**options), targets=list(targets), discovery=entries or [entry(iam)],
                            switches=switches())
        return await aiohttp_client(make_app(settings, stats=SelfMetrics(), clock=clock))
    return make


async def metrics(client: TestClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_metrics(await resp.text())


def states(s: Samples, discovery: str = "default") -> dict[str, float]:
    return {dict(lab)["state"]: v for lab, v in values(s, "oms_discovery_projects", discovery=discovery).items()}


def targets(s: Samples) -> dict[str, str]:
    """project_id -> project_name of every target, from oms_project_info."""
    return {dict(lab)["project_id"]: dict(lab)["project_name"] for lab in values(s, "oms_project_info")}


async def test_every_state_is_counted_and_only_projects_with_oms_are_targets(discovering: Any) -> None:
    s = await metrics(await discovering())
    assert states(s) == {"scraped": 4, "forbidden": 1, "not_offered": 1, "disabled": 1, "excluded": 1}
    assert targets(s) == {NORTH: "cn-north-4", EAST: "cn-east-3", TEAM: "cn-north-4_team", FAR: "xx-far-1"}
    for pid in (NORTH, EAST, TEAM, FAR):
        assert value(s, "oms_up", project_id=pid) == 1
    assert {dict(lab)["region"] for lab in values(s, "oms_project_info")} == {"cn-north-4", "cn-east-3", "xx-far-1"}
    assert value(s, "oms_discovery_success", discovery="default") == 1
    assert value(s, "oms_discovery_last_success_timestamp_seconds", discovery="default") > 0
    assert sum(values(s, "oms_discovery_errors_total", discovery="default").values()) == 0
    assert len(values(s, "oms_discovery_errors_total", discovery="default")) == 10  # every reason at 0


async def test_an_api_the_region_does_not_publish_is_not_offered(discovering: Any, account: StandIn,
                                                                 iam: TestServer) -> None:
    account.inject(Fault(status=404, times=100, api="tasks", match=lambda r: EAST in r.path,
                         body=b'{"error_code": "APIGW.0101", "error_msg": "not published"}',
                         headers={"Content-Type": "application/json"}))
    s = await metrics(await discovering())
    assert states(s)["not_offered"] == 2 and EAST not in targets(s)


async def test_the_entry_lists_narrow_what_is_scraped(discovering: Any, iam: TestServer) -> None:
    narrowed = entry(iam, regions=["cn-north-4", "xx-far-1"], exclude_projects=[".*_team"])
    s = await metrics(await discovering([narrowed]))
    assert targets(s) == {NORTH: "cn-north-4", FAR: "xx-far-1"}
    # Excluded: cn-east-3, its sub-project, the team sub-project, MOS and cn-north-2 (outside the regions).
    assert states(s) == {"scraped": 2, "forbidden": 0, "not_offered": 0, "disabled": 1, "excluded": 5}
    s = await metrics(await discovering([entry(iam, projects=["cn-.*_team"])]))
    assert targets(s) == {TEAM: "cn-north-4_team"}


async def test_a_project_added_or_removed_is_a_target_added_or_removed(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock) -> None:
    client = await discovering([entry(iam, refresh_interval="1s")])
    s = await metrics(client)
    assert EAST in targets(s) and values(s, "oms_task_info", project_id=EAST)
    # The account gets a project, and loses one.
    late = "e" * 31 + "6"
    account.add_project(late, make_tasks(3, seed=9))
    account.add_iam_project("cn-east-3_new", late)
    account.iam_projects = [p for p in account.iam_projects if p["id"] != EAST]
    await _refreshed(client, clock, account)
    s = await metrics(client)
    assert late in targets(s) and value(s, "oms_up", project_id=late) == 1
    assert EAST not in targets(s)
    assert not [k for k in s if dict(k[1]).get("project_id") == EAST], "a vanished project keeps no series"
    assert (await client.get("/probe?target=cn-east-3")).status == 400


async def test_a_vanished_project_cancels_its_background_listing(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock) -> None:
    from oms_exporter.web import LIVE
    from tests.conftest import wait_until

    client = await discovering([entry(iam, refresh_interval="1s")])
    await metrics(client)
    release = asyncio.Event()  # never set: OMS holds every request of cn-east-3
    account.on_list = lambda request: release.wait() if EAST in request.path else None
    pending = asyncio.ensure_future(client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"}))
    await wait_until(lambda: account.in_flight and clock.deadlines(), "cn-east-3's listing waits for OMS")
    await clock.quiet()
    clock.advance(1.45)
    s = parse_metrics(await (await pending).text())
    assert value(s, "oms_up", project_id=EAST) == 0 and value(s, "oms_listing_in_progress", project_id=EAST) == 1
    runs = list(client.server.app[LIVE].generation.snapshots._projects["cn-east-3"]._running.values())
    assert runs and not any(run.done() for run in runs)
    account.iam_projects = [p for p in account.iam_projects if p["id"] != EAST]
    await _refreshed(client, clock, account)
    await wait_until(lambda: all(run.done() for run in runs), "cn-east-3's listing cancelled")
    assert all(run.cancelled() for run in runs)
    assert EAST not in targets(await metrics(client))


async def _refreshed(client: TestClient, clock: ManualClock, account: StandIn) -> None:
    """Move the clock past the refresh interval and wait for the next refresh to end."""
    before = account.iam_calls
    clock.advance(1.5)
    for _ in range(200):
        if account.iam_calls > before:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)


async def test_iam_failing_keeps_the_last_list_and_recovery_refreshes_it(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock) -> None:
    client = await discovering([entry(iam, refresh_interval="1s")])
    account.inject(Fault(status=503, times=1, api="iam"))
    await _refreshed(client, clock, account)
    s = await metrics(client)
    assert value(s, "oms_discovery_success", discovery="default") == 0
    assert value(s, "oms_discovery_errors_total", discovery="default", reason="http_5xx") == 1
    assert len(targets(s)) == 4 and value(s, "oms_up", project_id=NORTH) == 1  # the last good list stays
    await _refreshed(client, clock, account)
    s = await metrics(client)
    assert value(s, "oms_discovery_success", discovery="default") == 1


async def test_an_empty_answer_after_projects_is_a_failure_not_no_projects(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock) -> None:
    client = await discovering([entry(iam, refresh_interval="1s")])
    kept = account.iam_projects
    account.iam_projects = []
    await _refreshed(client, clock, account)
    s = await metrics(client)
    assert value(s, "oms_discovery_success", discovery="default") == 0
    assert value(s, "oms_discovery_errors_total", discovery="default", reason="incomplete") == 1
    assert len(targets(s)) == 4
    account.iam_projects = kept


async def test_password_credentials_get_one_token_per_project(account: StandIn, iam: TestServer,
                                                              discovering: Any) -> None:
    """The account token lists the projects; each project is listed with a token of its own (the
    stand-in refuses a token of another project)."""
    account.iam_users[("acme", "ops")] = "pw-123"
    url = str(iam.make_url("")).rstrip("/")
    e = DiscoveryEntry.model_validate({"iam_username": "ops", "iam_password": "pw-123", "iam_domain": "acme",
                                       "iam_endpoint": url, "endpoints": {"cn-north-4": url, "cn-east-3": url,
                                                                          "xx-far-1": url}})
    s = await metrics(await discovering([e]))
    assert states(s)["scraped"] == 4 and value(s, "oms_up", project_id=TEAM) == 1
    scopes = list(account.token_scopes.values())
    assert scopes.count(None) == 1  # the account's token, for the list
    assert sorted(p for p in scopes if p) == sorted([NORTH, EAST, TEAM, FAR, FORBIDDEN])


async def test_a_project_both_configured_and_discovered_is_listed_once(
        discovering: Any, iam: TestServer) -> None:
    configured = target_for(iam, name="north", project_id=NORTH, ak=AK, sk=SK, labels={"team": "data"})
    client = await discovering([entry(iam, labels={"env": "prod"})], targets=[configured])
    s = await metrics(client)
    assert len(values(s, "oms_up", project_id=NORTH)) == 1
    info = {dict(lab)["project_id"]: dict(lab) for lab in values(s, "oms_project_info")}
    assert info[NORTH]["project_name"] == "north" and info[NORTH]["team"] == "data" and info[NORTH]["env"] == ""
    assert info[EAST]["env"] == "prod" and info[EAST]["team"] == ""
    groups = await (await client.get("/discovery")).json()
    assert [g["labels"]["__param_target"] for g in groups].count("north") == 1
    assert "cn-north-4" not in [g["labels"]["__param_target"] for g in groups]


async def test_discovery_serves_http_sd_groups_and_probe_serves_a_discovered_target(discovering: Any) -> None:
    client = await discovering()
    resp = await client.get("/discovery")
    assert resp.status == 200 and resp.content_type == "application/json"
    groups = await resp.json()
    host = f"{client.server.host}:{client.server.port}"
    assert {g["labels"]["__param_target"]: g["labels"]["region"] for g in groups} == {
        "cn-north-4": "cn-north-4", "cn-east-3": "cn-east-3", "cn-north-4_team": "cn-north-4", "xx-far-1": "xx-far-1"}
    assert all(g["targets"] == [host] and len(g["labels"]["project_id"]) == 32 for g in groups)
    probe = parse_metrics(await (await client.get("/probe?target=cn-north-4_team")).text())
    assert value(probe, "oms_up", project_id=TEAM) == 1 and not values(probe, "oms_up", project_id=NORTH)
    assert value(probe, "oms_project_info", project_id=TEAM, region="cn-north-4") == 1


async def test_discovery_uses_the_external_url_when_given(discovering: Any) -> None:
    client = await discovering(web_external_url="https://oms-exporter.example.com:9443/")
    groups = await (await client.get("/discovery")).json()
    assert {tuple(g["targets"]) for g in groups} == {("oms-exporter.example.com:9443",)}


async def test_named_entries_prefix_their_targets(discovering: Any, iam: TestServer) -> None:
    s = await metrics(await discovering([entry(iam, name="acme", regions=["cn-east-3"])]))
    assert set(dict(lab)["discovery"] for lab in values(s, "oms_discovery_success")) == {"acme"}
    assert targets(s) == {EAST: "cn-east-3"}
    assert value(s, "oms_up", project_id=EAST) == 1


# --- a proxy ------------------------------------------------------------------------------------------

class ForwardProxy:
    """A plain HTTP forward proxy (absolute-form request lines), counting what it forwards."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *headers = head.decode("latin-1").split("\r\n")
                method, url, version = line.split(" ")
                self.forwarded.append(url)
                from yarl import URL
                target = URL(url)
                length = 0
                for h in headers:
                    if h.lower().startswith("content-length:"):
                        length = int(h.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                up_r, up_w = await asyncio.open_connection(target.host, target.port)
                kept = [h for h in headers if h and not h.lower().startswith(("proxy-", "connection"))]
                up_w.write(f"{method} {target.raw_path_qs} {version}\r\n".encode("latin-1")
                           + "\r\n".join([*kept, "Connection: close"]).encode("latin-1") + b"\r\n\r\n" + body)
                await up_w.drain()
                answer = await up_r.read()
                up_w.close()
                answer = answer.replace(b"Connection: close", b"Connection: keep-alive", 1)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[ForwardProxy, int]]:
    p = ForwardProxy()
    server = await asyncio.start_server(p.handle, "127.0.0.1", 0)
    yield p, server.sockets[0].getsockname()[1]
    server.close()


async def test_requests_go_through_http_proxy_unless_no_proxy_says_otherwise(
        discovering: Any, proxy: tuple[ForwardProxy, int], monkeypatch: pytest.MonkeyPatch,
        iam: TestServer) -> None:
    forward, port = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    s = await metrics(await discovering())
    assert states(s)["scraped"] == 4 and value(s, "oms_up", project_id=NORTH) == 1
    assert any(u.endswith("/v3/auth/projects") for u in forward.forwarded)
    assert any(f"/v2/{NORTH}/tasks" in u for u in forward.forwarded)
    forward.forwarded.clear()
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    s = await metrics(await discovering())
    assert value(s, "oms_up", project_id=NORTH) == 1 and forward.forwarded == []


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("OMS_", "CLOUD_SDK_"))}
    return subprocess.run([sys.executable, "-m", "oms_exporter", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("host", "port", "no_proxy", "direct"), [
    ("oms.cn-north-4.myhuaweicloud.com", 443, "*", True),
    ("oms.cn-north-4.myhuaweicloud.com", 443, "myhuaweicloud.com", True),
    ("oms.cn-north-4.myhuaweicloud.com", 443, ".myhuaweicloud.com", True),
    ("oms.cn-north-4.myhuaweicloud.com", 443, "huaweicloud.com", False),  # a suffix is not a domain
    ("oms.cn-north-4.myhuaweicloud.com", 443, "myhuaweicloud.com:8443", False),
    ("oms.cn-north-4.myhuaweicloud.com", 443, " other.example , myhuaweicloud.com:443", True),
    ("10.20.30.40", 443, "10.0.0.0/8", True),
    ("11.20.30.40", 443, "10.0.0.0/8", False),
    ("10.20.30.40", 443, "10.20.30.40", True),
    ("::1", 443, "::1/128", True),
    ("oms.internal", 443, "10.0.0.0/8", False),
])
def test_no_proxy_names_hosts_domains_ports_and_address_blocks(host: str, port: int, no_proxy: str,
                                                               direct: bool) -> None:
    from yarl import URL

    from oms_exporter.http import Proxies
    proxies = Proxies({"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": no_proxy})
    proxy, _ = proxies.for_url(URL.build(scheme="https", host=host, port=port, path="/v3/auth/projects"))
    assert (proxy is None) == direct


def test_a_static_token_cannot_discover_in_one_line() -> None:
    res = run_cli("--check-config", env={"OMS_AUTH_TOKEN": "t0k3n"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "oms-exporter: error: discovery default: a static token cannot discover projects (it is scoped to one "
        "project): use ak + sk, or iam_username + iam_password + iam_domain"]


def test_an_https_proxy_is_refused_in_one_line() -> None:
    res = run_cli("--check-config", env={"OMS_AK": "a", "OMS_SK": "s", "HTTPS_PROXY": "https://proxy:3128"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "oms-exporter: error: HTTPS_PROXY: an https:// proxy is not supported (requests cannot speak TLS to the "
        "proxy itself): give its http:// URL"]


def test_credentials_alone_discover_with_the_defaults() -> None:
    res = run_cli("--check-config", "--discovery.regions=cn-north-4,cn-east-3", env={"OMS_AK": "a", "OMS_SK": "s"})
    assert res.returncode == 0, res.stderr
    assert "discovery default: IAM https://iam.myhuaweicloud.com every 10m, regions cn-north-4, cn-east-3" \
        in res.stdout, res.stdout


def test_the_stand_in_project_list_reads_back_with_the_official_sdk(account: StandIn) -> None:
    """KeystoneListAuthProjectsRequest of huaweicloudsdkiam, signed with AK/SK, reads every field."""
    from huaweicloudsdkcore.auth.credentials import GlobalCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkiam.v3 import IamClient, KeystoneListAuthProjectsRequest

    async def serve() -> None:
        runner = web.AppRunner(account.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            config = HttpConfig.get_default_config()
            config.ignore_ssl_verification = True
            client = (IamClient.new_builder().with_http_config(config)
                      .with_credentials(GlobalCredentials(AK, SK)).with_endpoints([f"http://127.0.0.1:{port}"])
                      .build())
            resp = await asyncio.to_thread(client.keystone_list_auth_projects, KeystoneListAuthProjectsRequest())
        finally:
            await runner.cleanup()
        got = {p.name: (p.id, p.enabled, p.parent_id, p.is_domain, p.domain_id) for p in resp.projects}
        want = {p["name"]: (p["id"], p["enabled"], p["parent_id"], p["is_domain"], p["domain_id"])
                for p in account.iam_projects}
        assert got == want and resp.links._self.endswith("/v3/auth/projects")
        assert all(p.links._self.endswith(p.id) for p in resp.projects)

    asyncio.run(serve())


# --- at the edges: what a review found -------------------------------------------------------

async def test_a_project_renamed_in_iam_is_served_under_its_new_name(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock) -> None:
    client = await discovering([entry(iam, refresh_interval="1s")])
    await metrics(client)
    for p in account.iam_projects:
        if p["id"] == TEAM:
            p["name"] = "cn-north-4_team2"  # same id, new name
    await _refreshed(client, clock, account)
    s = await metrics(client)
    assert targets(s)[TEAM] == "cn-north-4_team2" and value(s, "oms_up", project_id=TEAM) == 1
    assert (await client.get("/probe?target=cn-north-4_team2")).status == 200
    assert (await client.get("/probe?target=cn-north-4_team")).status == 400


async def test_a_project_vanishing_during_a_scrape_costs_that_project_only(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock) -> None:
    client = await discovering([entry(iam, refresh_interval="1s")])
    await metrics(client)
    hold = asyncio.Event()
    account.on_list = lambda request: hold.wait() if EAST in request.path else None
    scrape = asyncio.ensure_future(client.get("/metrics"))
    await wait_until(lambda: account.api_in_flight["tasks"], "cn-east-3's listing held upstream")
    account.iam_projects = [p for p in account.iam_projects if p["id"] != EAST]
    await _refreshed(client, clock, account)
    hold.set()
    resp = await asyncio.wait_for(scrape, 10)
    assert resp.status == 200
    s = parse_metrics(await resp.text())
    assert value(s, "oms_up", project_id=NORTH) == 1 and not values(s, "oms_up", project_id=EAST)


async def test_a_discovered_project_named_like_a_configured_one_is_left_out_with_a_warning(
        discovering: Any, iam: TestServer, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    other = "f" * 32  # another project (of another account, say) the user named "cn-east-3"
    configured = target_for(iam, name="cn-east-3", project_id=other, ak=AK, sk=SK)
    s = await metrics(await discovering(targets=[configured]))
    assert targets(s)[other] == "cn-east-3" and EAST not in targets(s)
    warned = [r for r in caplog.records if r.getMessage() == "a discovered project has the name of another target: "
              "not scraped"]
    assert len(warned) == 1 and warned[0].__dict__["project_id"] == EAST
    assert warned[0].__dict__["taken_by"] == other


async def test_probes_leave_no_series_of_projects_that_are_no_targets(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock) -> None:
    client = await discovering([entry(iam, refresh_interval="1s")])
    s = await metrics(client)
    assert FORBIDDEN not in targets(s)
    assert not [k for k in s if dict(k[1]).get("project_id") == FORBIDDEN]  # probed, never a target
    account.iam_projects = [p for p in account.iam_projects if p["id"] != FORBIDDEN]
    await _refreshed(client, clock, account)
    assert not [k for k in await metrics(client) if dict(k[1]).get("project_id") == FORBIDDEN]


async def test_a_reload_while_iam_fails_keeps_the_list_and_its_counts(
        discovering: Any, account: StandIn, iam: TestServer) -> None:
    client = await discovering()
    s = await metrics(client)
    assert states(s)["scraped"] == 4
    account.inject(Fault(status=503, times=1000, api="iam"))
    app = client.server.app
    await reload(app, app[LIVE].settings)  # a SIGHUP, the same settings
    s = await metrics(client)
    assert len(values(s, "oms_up")) == 4 and states(s)["scraped"] == 4
    # An entry edited (a label added) is the same account: its last list stays too, with the label.
    await reload(app, app[LIVE].settings.model_copy(update={"discovery": [entry(iam, labels={"team": "data"})]}))
    s = await metrics(client)
    assert len(values(s, "oms_up")) == 4
    assert {dict(lab).get("team") for lab in values(s, "oms_project_info")} == {"data"}
    assert value(s, "oms_discovery_success", discovery="default") == 0  # and IAM's failure is told


async def test_a_project_id_no_target_can_have_is_excluded_and_discovery_goes_on(
        discovering: Any, account: StandIn, iam: TestServer, clock: ManualClock, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    client = await discovering([entry(iam, refresh_interval="1s")])
    await metrics(client)
    account.add_iam_project("cn-north-4_odd", "x" * 65)  # longer than a project id may be
    await _refreshed(client, clock, account)
    s = await metrics(client)
    assert states(s)["excluded"] == 2 and value(s, "oms_discovery_success", discovery="default") == 1
    late = "e" * 31 + "6"
    account.add_project(late, make_tasks(3, seed=9))
    account.add_iam_project("cn-east-3_new", late)
    await _refreshed(client, clock, account)
    await _refreshed(client, clock, account)
    assert late in targets(await metrics(client))
    assert len([r for r in caplog.records if "no OMS project id" in r.getMessage()]) == 1  # once, not per refresh


async def test_discovery_behind_a_reverse_proxy_keeps_the_external_urls_brackets_scheme_and_path(
        discovering: Any) -> None:
    groups = await (await (await discovering(web_external_url="http://[fd00::10]:10066/")).get("/discovery")).json()
    assert {tuple(g["targets"]) for g in groups} == {("[fd00::10]:10066",)}
    assert all(g["labels"]["__scheme__"] == "http" and "__metrics_path__" not in g["labels"] for g in groups)
    client = await discovering(web_external_url="https://proxy.example.com/oms-exporter/")
    groups = await (await client.get("/discovery")).json()
    assert {tuple(g["targets"]) for g in groups} == {("proxy.example.com",)}
    assert {(g["labels"]["__scheme__"], g["labels"]["__metrics_path__"]) for g in groups} == {
        ("https", "/oms-exporter/probe")}


def _password_entry(account: StandIn, iam: TestServer, **extra: Any) -> DiscoveryEntry:
    account.iam_users[("acme", "ops")] = "pw-123"
    url = str(iam.make_url("")).rstrip("/")
    return DiscoveryEntry.model_validate({
        "iam_username": "ops", "iam_password": "pw-123", "iam_domain": "acme", "iam_endpoint": url,
        "endpoints": {"cn-north-4": url, "cn-east-3": url, "xx-far-1": url}, **extra})


async def test_a_revoked_account_token_is_renewed(
        account: StandIn, iam: TestServer, discovering: Any, clock: ManualClock) -> None:
    client = await discovering([_password_entry(account, iam, refresh_interval="1s")])
    assert value(await metrics(client), "oms_discovery_success", discovery="default") == 1
    logins = account.iam_logins
    for token, scope in list(account.token_scopes.items()):
        if scope is None:  # the account-scoped token: IAM revokes it (a permission change)
            account.tokens.pop(token, None)
    await _refreshed(client, clock, account)
    s = await metrics(client)
    assert value(s, "oms_discovery_success", discovery="default") == 1
    assert account.iam_logins == logins + 1  # one new token, at once


async def test_refused_discovery_credentials_back_off_as_a_targets_do(
        account: StandIn, iam: TestServer, discovering: Any, clock: ManualClock) -> None:
    bad = entry(iam, refresh_interval="1s").model_copy(update={"sk": SecretStr("wrong")})
    client = await discovering([bad])
    s = await metrics(client)
    assert value(s, "oms_discovery_errors_total", discovery="default", reason="auth") == 1
    calls = account.iam_calls
    for seconds in (1.5, 1.5, 20.0):  # within the first pause (30 s): IAM is not asked again
        clock.advance(seconds)
        await clock.quiet()
    assert account.iam_calls == calls
    clock.advance(8.0)  # past it: asked again, refused again, and the next pause is 60 s
    await wait_until(lambda: account.iam_calls == calls + 1, "the refresh after the pause")
    # Let IAM's answer reach the exporter before the clock moves on: moved past the request's timeout
    # while the answer is on its way, the refresh fails as a timeout instead (and no auth pause follows).
    for _ in range(1000):
        if value(await metrics(client), "oms_discovery_errors_total", discovery="default", reason="auth") == 2:
            break
        await asyncio.sleep(0.001)
    else:
        raise AssertionError("the second refusal was not counted")
    clock.advance(31.0)
    await clock.quiet()
    assert account.iam_calls == calls + 1


async def test_a_project_that_never_answers_costs_its_probe_not_the_refresh(
        account: StandIn, iam: TestServer, discovering: Any, clock: ManualClock) -> None:
    account.sleep = partial(clock.sleep, settled=account.settled)
    account.add_iam_project("cn-north-4_dead", "d" * 32)  # its region answers nothing (a firewall)
    account.inject(Fault(status=200, delay=600, times=10**6, api="tasks", match=lambda r: "d" * 32 in r.path))
    # A request timeout as long as the old refresh timeout: one hung probe used to fail the refresh.
    s = await metrics(await discovering(request_timeout=30, scrape_timeout=60, listing_budget=0))
    assert value(s, "oms_discovery_success", discovery="default") == 1
    assert {NORTH, EAST, TEAM} <= targets(s).keys()
    assert "d" * 32 in targets(s)  # unanswered: a target, whose failure oms_up shows
    assert value(s, "oms_up", project_id="d" * 32) == 0
