"""The fault matrix of issue 6: each row is a fault injected into the OMS stand-in.

Every test scrapes the exporter over HTTP and asserts on parsed /metrics: `oms_up`,
`oms_scrape_errors_total{reason}`, `oms_api_requests_total{code}`, that the answer came
before the scrape deadline, and that a broken listing never serves task series.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
import trustme
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from oms_exporter import logs
from oms_exporter.client import OmsClient
from oms_exporter.logs import LogfmtFormatter
from oms_exporter.simulator import Credential, make_tasks
from oms_exporter.web import CLOCK, LIVE, STATS, TIMEOUT_HEADER
from tests.conftest import (
    AK,
    PROJECT,
    SK,
    TOKEN,
    Exporter,
    ManualClock,
    Samples,
    parse_metrics,
    target_for,
    value,
    values,
)
from tests.standin import StandIn

# Prometheus' scrape timeout as sent in the header; the exporter keeps 0.5 s back.
SCRAPE_TIMEOUT = 2.0
OFFSET = 0.5
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


async def timed_scrape(client: TestClient, path: str = "/metrics",
                       timeout: float = SCRAPE_TIMEOUT) -> tuple[Samples, float]:
    """Scrape as Prometheus does; assert the answer came within the scrape timeout, on the exporter's
    clock (the test's: a stand-in that hangs moves it, so no test waits out a deadline in real time)."""
    clock = client.server.app[CLOCK]
    started = clock.monotonic()
    resp = await client.get(path, headers={TIMEOUT_HEADER: str(timeout)})
    text = await resp.text()
    elapsed = clock.monotonic() - started
    assert resp.status == 200, text
    assert elapsed < timeout, f"answered after {elapsed:.2f}s, scrape timeout {timeout}s"
    return parse_metrics(text), elapsed


def up(s: Samples, project: str = PROJECT) -> float:
    return value(s, "oms_up", project_id=project)


def errors(s: Samples, reason: str, project: str = PROJECT) -> float:
    found = values(s, "oms_scrape_errors_total", project_id=project, reason=reason)
    return next(iter(found.values()), 0.0)


def requests(s: Samples, code: str, project: str = PROJECT) -> float:
    found = values(s, "oms_api_requests_total", project_id=project, code=code)
    return next(iter(found.values()), 0.0)


def task_ids(s: Samples, project: str = PROJECT) -> set[str]:
    return {dict(lab)["task_id"] for lab in values(s, "oms_task_info", project_id=project)}


def assert_down(s: Samples, reason: str, project: str = PROJECT, *, counted: bool = True) -> None:
    """The project is down for `reason`; `counted=False` when the error counter may lag (see settled_errors)."""
    assert up(s, project) == 0
    if counted:
        assert errors(s, reason, project) == 1, {k: v for k, v in s.items() if k[0] == "oms_scrape_errors_total"}
    # A broken listing serves no task data at all: nothing stale passes as fresh.
    assert not values(s, "oms_task_info", project_id=project)
    assert not values(s, "oms_tasks", project_id=project)


async def settled_errors(client: TestClient, reason: str, project: str = PROJECT) -> float:
    """oms_scrape_errors_total once every listing has finished, after a scrape that hit its deadline.

    The shared listing and the scrape waiting for it reach the same deadline together, so
    the listing may record its timeout just after that scrape was answered.
    """
    await client.server.app[CLOCK].settle()
    return errors(parse_metrics(generate_latest(client.app[STATS].registry).decode()), reason, project)


@pytest.fixture
def no_error_logs(caplog: pytest.LogCaptureFixture):
    """Yields; then fails if anything was logged at ERROR or with a traceback."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# --- 429 -------------------------------------------------------------------------------------

THROTTLED = msgspec.json.encode({"error_code": "APIGW.0308",
                                 "error_msg": "policy user over ratelimit, limit:20, time:1 minute",
                          "request_id": "4a1c"})


async def test_429_retry_after_is_waited_when_the_deadline_allows(sim: StandIn, exporter: Exporter,
                                                                   clock: ManualClock, no_error_logs: Any) -> None:
    sim.inject(status=429, body=THROTTLED, headers={"Content-Type": "application/json", "Retry-After": "1"})
    client = await exporter()
    s, elapsed = await timed_scrape(client)
    assert up(s) == 1 and len(task_ids(s)) == 250
    assert requests(s, "429") == 1 and requests(s, "200") == len(sim.calls) - 1
    assert clock.slept == [1.0], "Retry-After: 1 was not honoured"
    assert errors(s, "throttled") == 0


async def test_429_retry_after_beyond_the_deadline_gives_up_at_once(sim: StandIn, exporter: Exporter,
                                                                     clock: ManualClock, no_error_logs: Any) -> None:
    sim.inject(status=429, body=THROTTLED, headers={"Content-Type": "application/json", "Retry-After": "60"})
    client = await exporter()
    s, elapsed = await timed_scrape(client)
    assert_down(s, "throttled")
    assert requests(s, "429") == 1
    assert clock.slept == [] and elapsed < 1.0, "waited for a Retry-After that could not fit in the scrape"
    # The next scrapes keep to the pause OMS asked for: nothing is sent before it ends.
    sent = len(sim.requests)
    s, elapsed = await timed_scrape(client)
    assert up(s) == 0 and errors(s, "throttled") == 2
    assert len(sim.requests) == sent and elapsed < 1.0


async def test_429_without_retry_after_backs_off_then_reports_throttled(sim: StandIn, exporter: Exporter) -> None:
    sim.inject(status=429, body=THROTTLED, headers={"Content-Type": "application/json"}, times=100)
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert_down(s, "throttled")
    assert requests(s, "429") == OmsClient.RETRIES + 1


@pytest.mark.parametrize("header", ["nan", "-5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "1e999"])
async def test_429_with_a_nonsense_retry_after_still_answers_in_time(sim: StandIn, exporter: Exporter,
                                                                     header: str) -> None:
    sim.inject(status=429, body=THROTTLED, headers={"Content-Type": "application/json", "Retry-After": header},
               times=100)
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert_down(s, "throttled")


# --- 5xx with an HTML body -------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_html_is_retried_a_bounded_number_of_times(sim: StandIn, exporter: Exporter, status: int,
                                                              clock: ManualClock, no_error_logs: Any) -> None:
    sim.inject(status=status, body=HTML_502, times=1000)
    client = await exporter(listing="full")  # one request at a time: the first page
    s, _ = await timed_scrape(client)
    assert_down(s, "http_5xx")
    assert requests(s, str(status)) == OmsClient.RETRIES + 1 == len(sim.requests)
    # Jittered exponential backoff: the n-th wait is at most BACKOFF * 2**n.
    assert len(clock.slept) == OmsClient.RETRIES
    for n, wait in enumerate(clock.slept):
        assert 0 <= wait <= OmsClient.BACKOFF * 2 ** n
    assert "<html" not in no_error_logs.text


async def test_a_transient_5xx_is_absorbed_by_a_retry(sim: StandIn, exporter: Exporter) -> None:
    sim.inject(status=503, body=HTML_502, times=1)
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert up(s) == 1 and len(task_ids(s)) == 250
    assert requests(s, "503") == 1 and errors(s, "http_5xx") == 0


async def test_5xx_retries_stop_inside_the_deadline(sim: StandIn, exporter: Exporter, clock: ManualClock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Far more retries than fit: the deadline, not RETRIES, must end them, as a 5xx error.
    monkeypatch.setattr(OmsClient, "RETRIES", 1000)
    monkeypatch.setattr(OmsClient, "BACKOFF", 0.3)
    sim.inject(status=502, body=HTML_502, times=10_000)
    client = await exporter(timeout_offset=OFFSET, listing_budget=0)  # the listing ends at the scrape's deadline
    s, elapsed = await timed_scrape(client)
    assert_down(s, "http_5xx")
    assert sum(clock.slept) < SCRAPE_TIMEOUT - OFFSET  # every wait fitted before the deadline
    assert 2 <= requests(s, "502") < 1000


# --- network failures ------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("endpoint", [
    pytest.param(lambda: f"http://127.0.0.1:{_closed_port()}", id="refused"),
    pytest.param(lambda: "http://oms.cn-north-4.does-not-exist.invalid", id="dns"),
])
async def test_unreachable_api_is_network_without_a_traceback(
        oms: TestServer, exporter: Exporter, no_error_logs: Any,
        endpoint: Callable[[], str]) -> None:
    url = endpoint()
    client = await exporter(targets=[target_for(oms).model_copy(update={"endpoint": url})])
    # 10 s, not 2: the test clock moves by each sleeper's wait in turn, so the three areas' jittered
    # backoffs (up to 0.6 s each) add up on it, and in 1.5 s the last retry of one sometimes did not fit.
    s, _ = await timed_scrape(client, timeout=10.0)
    assert_down(s, "network")
    assert errors(s, "network") == 1  # one failed listing, though each of its three areas failed
    assert requests(s, "network") == 3 * (OmsClient.RETRIES + 1)  # tasks, task groups, sync tasks
    warnings = [r for r in no_error_logs.records if r.getMessage() == "listing failed"]
    assert {r.__dict__["collector"] for r in warnings} == {"tasks", "task_groups", "sync_tasks"}
    assert all(r.levelno == logging.WARNING for r in warnings) and len(warnings) == 3
    assert "Traceback" not in no_error_logs.text


async def test_connection_reset_is_network(sim: StandIn, exporter: Exporter,
                                           no_error_logs: Any) -> None:
    sim.inject(reset=True, times=1000)
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert_down(s, "network")
    assert requests(s, "network") == OmsClient.RETRIES + 1


async def test_a_single_reset_is_absorbed_by_a_retry(sim: StandIn, exporter: Exporter) -> None:
    sim.inject(reset=True, times=1)
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert up(s) == 1 and len(task_ids(s)) == 250


# --- the API hangs ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["first page", "later page"])
async def test_a_hanging_api_still_gets_an_answer_before_the_deadline(
        sim: StandIn, exporter: Exporter, no_error_logs: Any, where: str) -> None:
    answered = []  # the first request is answered, every later one hangs

    def later(request: Any) -> bool:
        answered.append(1)
        return len(answered) > 1

    sim.inject(delay=60, status=200, times=1000, match=None if where == "first page" else later)
    client = await exporter(timeout_offset=OFFSET)
    s, elapsed = await timed_scrape(client)
    assert_down(s, "timeout", counted=False)
    assert SCRAPE_TIMEOUT - OFFSET - 0.2 < elapsed < SCRAPE_TIMEOUT, elapsed
    # The listing goes on past the scrape (--oms.listing-budget): its requests time out on their own.
    assert value(s, "oms_listing_in_progress", project_id=PROJECT) == 1
    assert await settled_errors(client, "timeout") == 1
    registry = parse_metrics(generate_latest(client.app[STATS].registry).decode())
    assert value(registry, "oms_api_requests_total", project_id=PROJECT, code="timeout") >= 1


async def test_the_scrape_timeout_header_sets_the_deadline(sim: StandIn, exporter: Exporter) -> None:
    sim.inject(delay=60, status=200, times=1000)
    client = await exporter(timeout_offset=0.25, scrape_timeout=30)
    s, elapsed = await timed_scrape(client, timeout=1.5)
    assert_down(s, "timeout", counted=False)
    assert 1.0 < elapsed < 1.5


@pytest.mark.parametrize("header", [
    "nan", "inf", "1e999", pytest.param("1" * 400, id="huge"), "-1", "0", "ten", ""])
async def test_a_hostile_scrape_timeout_header_cannot_hold_the_scrape(
        sim: StandIn, exporter: Exporter, header: str, caplog: pytest.LogCaptureFixture) -> None:
    sim.inject(delay=60, status=200, times=1000)
    client = await exporter(scrape_timeout=1, timeout_offset=OFFSET)
    clock = client.server.app[CLOCK]
    started = clock.monotonic()
    resp = await asyncio.wait_for(client.get("/metrics", headers={TIMEOUT_HEADER: header}), 2)
    assert resp.status == 200
    assert clock.monotonic() - started < 1.5  # the --oms.scrape-timeout of 1 s, on the exporter's clock
    assert_down(parse_metrics(await resp.text()), "timeout", counted=False)
    assert await settled_errors(client, "internal") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- broken payloads -------------------------------------------------------------------------

BROKEN_PAGES = {
    "not json": b"<html>OK</html>",
    "malformed json": b'{"tasks": [{"id": 1}, "count": 1',
    "empty body": b"",
    "json array": b"[]",
    "tasks missing": b'{"count": 3}',
    "tasks null": b'{"tasks": null, "count": 3}',
    "tasks an object": b'{"tasks": {"id": 1}, "count": 1}',
    "count a string": b'{"tasks": [], "count": "250"}',
    "count missing": b'{"tasks": []}',
    "count negative": b'{"tasks": [], "count": -1}',
    "count a float": b'{"tasks": [], "count": 2.5}',
    "NaN": b'{"tasks": [{"id": 1, "progress": NaN}], "count": 1}',
}


@pytest.mark.parametrize("body", BROKEN_PAGES.values(), ids=BROKEN_PAGES.keys())
@pytest.mark.parametrize("page", ["first", "second"])
async def test_a_broken_page_is_bad_payload(sim: StandIn, exporter: Exporter, no_error_logs: Any,
                                            body: bytes, page: str) -> None:
    offset = "0" if page == "first" else "98"
    sim.inject(status=200, body=body, headers={"Content-Type": "application/json"}, times=1000,
               match=lambda r: r.query.get("offset") == offset)
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert_down(s, "bad_payload")
    assert requests(s, "200") >= 1


async def test_a_truncated_body_is_bad_payload(sim: StandIn, exporter: Exporter,
                                               no_error_logs: Any) -> None:
    sim.inject(status=200, body=b'{"tasks": [{"id": 1, "name": "a"', truncate=True, times=1000,
               headers={"Content-Type": "application/json"})
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert_down(s, "bad_payload")


async def test_one_bad_task_record_is_skipped_and_counted(sim: StandIn, exporter: Exporter) -> None:
    sim.put_task(PROJECT, {"id": 9001, "name": "bad", "progress": "half", "status": 2})
    sim.put_task(PROJECT, {"id": 9002, "name": "worse", "src_node": "aws"})
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert up(s) == 1
    assert value(s, "oms_malformed_tasks", project_id=PROJECT) == 2
    ids = task_ids(s)
    assert len(ids) == 250 and "9001" not in ids and "9002" not in ids
    assert sum(values(s, "oms_tasks", project_id=PROJECT).values()) == 250


async def test_data_of_a_failed_scrape_is_not_served_later_as_fresh(sim: StandIn, exporter: Exporter) -> None:
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert up(s) == 1 and len(task_ids(s)) == 250
    sim.inject(status=503, body=HTML_502, times=1000)
    s, _ = await timed_scrape(client)
    assert_down(s, "http_5xx")


# --- paging shifts -----------------------------------------------------------------------------

async def test_tasks_created_mid_listing_are_deduplicated(sim: StandIn, exporter: Exporter) -> None:
    def grow(request: Any) -> None:
        # Tasks created while page 0 is on the wire push 60 tasks of page 0 onto page 1
        # and the count beyond the pages the first answer announced.
        if request.query.get("offset") == "0" and len(sim.projects[PROJECT]) == 250:
            for t in make_tasks(60, seed=9, first_id=1001):
                sim.put_task(PROJECT, t)

    sim.on_list = grow
    client = await exporter()
    s, _ = await timed_scrape(client)  # parse_metrics fails on a duplicate series
    assert up(s) == 1
    ids = task_ids(s)
    assert {str(i) for i in range(1, 251)} <= ids, "a task that existed all along was missed"
    assert sum(values(s, "oms_tasks", project_id=PROJECT).values()) == len(ids)


async def test_pages_repeating_records_short_of_the_count_are_incomplete(sim: StandIn, exporter: Exporter,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    ids = sorted(sim.projects[PROJECT], reverse=True)
    page0 = msgspec.json.encode({"tasks": [sim.projects[PROJECT][i] for i in ids[:100]], "count": 250})
    # The second page repeats the first one, on every pass: 150 distinct tasks for a count of 250.
    sim.inject(status=200, body=page0, headers={"Content-Type": "application/json"}, times=1000,
               match=lambda r: r.query.get("offset") == "98")
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert up(s) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="incomplete") == 1
    assert not task_ids(s)
    errors = [str(r.__dict__.get("error")) for r in caplog.records]
    assert any("distinct records" in e or "for status=" in e for e in errors)


async def test_a_page_with_more_records_than_asked_for_is_incomplete(sim: StandIn, exporter: Exporter) -> None:
    """A page of 103 records for a limit of 100 (three of them repeated) is no page OMS writes: the
    listing is incomplete, not served as whole (issue 22: before, such a page was taken)."""
    ids = sorted(sim.projects[PROJECT], reverse=True)
    records = [sim.projects[PROJECT][i] for i in ids[100:200]]
    page1 = msgspec.json.encode({"tasks": records + records[:3], "count": 250})
    sim.inject(status=200, body=page1, headers={"Content-Type": "application/json"}, times=1000,
               match=lambda r: r.query.get("offset") == "98" and "status" not in r.query)
    s, _ = await timed_scrape(await exporter(listing="full"))
    assert_down(s, "incomplete", counted=False)


async def test_count_shrinking_between_pages_is_not_an_error(sim: StandIn, exporter: Exporter) -> None:
    def shrink(request: Any) -> None:
        if request.query.get("offset") == "0":
            for tid in range(1, 101):
                if tid in sim.projects[PROJECT]:
                    sim.remove_task(PROJECT, tid)

    sim.on_list = shrink
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert up(s) == 1
    assert len(task_ids(s)) == sum(values(s, "oms_tasks", project_id=PROJECT).values())


# --- authentication ----------------------------------------------------------------------------

async def test_an_iam_token_expiring_mid_listing_is_renewed_once(sim: StandIn, oms: TestServer,
                                                                 exporter: Exporter) -> None:
    sim.iam_users[("acme", "ops")] = "iam-password-Secr3t"
    expired = False

    def expire(request: Any) -> None:
        nonlocal expired
        if not expired and request.query.get("offset") == "0":
            expired = True  # revoke every token once page 0 is authenticated
            for t in sim.tokens:
                sim.tokens[t] = 0.0

    sim.on_list = expire
    target = target_for(oms, iam_username="ops", iam_password="iam-password-Secr3t", iam_domain="acme",
                        iam_endpoint=str(oms.make_url("")).rstrip("/"))
    client = await exporter(targets=[target])
    s, _ = await timed_scrape(client)
    assert expired and up(s) == 1 and len(task_ids(s)) == 250
    assert sim.iam_logins == 2
    assert requests(s, "401") >= 1
    assert errors(s, "auth") == 0


async def test_a_refused_token_is_auth_and_pauses_the_target(sim: StandIn, oms: TestServer,
                                                             exporter: Exporter) -> None:
    client = await exporter(targets=[target_for(oms, auth_token="revoked-token")])
    s, _ = await timed_scrape(client)
    assert_down(s, "auth")
    assert requests(s, "401") == 1
    before = len(sim.requests)
    s, _ = await timed_scrape(client)
    assert up(s) == 0 and errors(s, "auth") == 2
    assert len(sim.requests) == before, "a refused credential was tried again within the auth backoff"


# --- several projects ----------------------------------------------------------------------------

P2 = "p0000000000000000000000000000002"
P3 = "p0000000000000000000000000000003"


@pytest.mark.parametrize("fault", [
    {"status": 503, "body": HTML_502},
    {"status": 200, "body": b"{"},
    {"delay": 60, "status": 200},
    {"reset": True},
], ids=["5xx", "bad_payload", "hang", "reset"])
async def test_one_failing_project_does_not_take_the_others_down(
        sim: StandIn, oms: TestServer, exporter: Exporter, fault: dict[str, Any]) -> None:
    sim.add_project(P2, make_tasks(30, seed=5))
    sim.add_project(P3, make_tasks(40, seed=6))
    sim.inject(times=10_000, match=lambda r: P2 in r.path, **fault)
    client = await exporter(targets=[target_for(oms), target_for(oms, name="two", project_id=P2),
                                     target_for(oms, name="three", project_id=P3)], timeout_offset=OFFSET)
    s, _ = await timed_scrape(client)
    assert up(s, P2) == 0 and not task_ids(s, P2)
    assert up(s) == 1 and len(task_ids(s)) == 250
    assert up(s, P3) == 1 and len(task_ids(s, P3)) == 40
    assert not any(values(s, "oms_scrape_errors_total", project_id=PROJECT).values())
    assert not any(values(s, "oms_scrape_errors_total", project_id=P3).values())
    await client.server.app[CLOCK].settle()  # a hang is counted as the deadline passes (see settled_errors)
    s2 = parse_metrics(generate_latest(client.app[STATS].registry).decode())
    assert sum(values(s2, "oms_scrape_errors_total", project_id=P2).values()) == 1
    # /probe of a healthy project is not held up by the broken one.
    s, _ = await timed_scrape(client, "/probe?target=three")
    assert up(s, P3) == 1 and not values(s, "oms_up", project_id=P2)


# --- hostile requests to the exporter --------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "target=nope", "target=", "", "target=http://169.254.169.254/latest", "target=main&target=x" + "y" * 300,
    "target=" + "a" * 300, "target=%00%ff", "target=<script>alert(1)</script>",
])
async def test_probe_refuses_unknown_targets_without_contacting_anyone(sim: StandIn, exporter: Exporter,
                                                                       query: str) -> None:
    client = await exporter()
    resp = await client.get("/probe?" + query)
    assert resp.status == 400
    text = await resp.text()
    assert len(text) < 600 and resp.content_type == "text/plain"
    assert sim.requests == []


# --- outbound TLS --------------------------------------------------------------------------------

@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def https_oms(sim: StandIn, ca: trustme.CA,
                    aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return await aiohttp_server(sim.app(), ssl=ctx)


async def test_outbound_tls_is_verified_by_default(https_oms: TestServer, exporter: Exporter) -> None:
    client = await exporter(targets=[target_for(https_oms)])
    assert target_for(https_oms).oms_endpoint.startswith("https://")
    s, _ = await timed_scrape(client)
    assert_down(s, "network")


async def test_outbound_tls_with_a_ca_file(https_oms: TestServer, exporter: Exporter, ca: trustme.CA,
                                           tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    caplog.set_level(logging.WARNING)
    client = await exporter(targets=[target_for(https_oms)], ca_file=ca_file)
    s, _ = await timed_scrape(client)
    assert up(s) == 1 and len(task_ids(s)) == 250
    assert "VERIFICATION" not in caplog.text


async def test_skipping_outbound_tls_verification_is_logged_loudly(
        https_oms: TestServer, exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    client = await exporter(targets=[target_for(https_oms)], insecure_skip_verify=True)
    s, _ = await timed_scrape(client)
    assert up(s) == 1
    loud = [r for r in caplog.records if "TLS VERIFICATION" in r.getMessage()]
    assert loud and loud[0].levelno >= logging.WARNING


# --- secrets ---------------------------------------------------------------------------------------

async def test_secrets_never_reach_logs_metrics_or_errors(
        sim: StandIn, oms: TestServer, aiohttp_client: Callable[..., Awaitable[TestClient]],
        caplog: pytest.LogCaptureFixture) -> None:
    from oms_exporter.metrics import SelfMetrics
    from oms_exporter.settings import Options, Settings
    from oms_exporter.web import make_app

    caplog.set_level(logging.DEBUG)
    iam_pw, bad_sk, sts = "iam-Pa55word-zq81", "wrong-secret-key-77fh2", "security-token-ab12cd"
    sim.iam_users[("acme", "ops")] = iam_pw
    sim.add_project(P2, make_tasks(5, seed=1))
    sim.add_project(P3, make_tasks(5, seed=2))
    url = str(oms.make_url("")).rstrip("/")
    targets = [
        target_for(oms, ak=AK, sk=SK),
        target_for(oms, name="bad-sk", project_id=P2, ak=AK, sk=bad_sk, security_token=sts),
        target_for(oms, name="iam", project_id=P3, iam_username="ops", iam_password=iam_pw, iam_domain="acme",
                   iam_endpoint=url),
        target_for(oms, name="bad-iam", project_id="p4", iam_username="ops", iam_password=iam_pw + "x",
                   iam_domain="acme", iam_endpoint=url),
    ]
    sim.credentials[AK] = Credential(SK)
    sim.inject(status=502, body=HTML_502, times=2, match=lambda r: P3 in r.path)
    settings = Settings(options=Options(log_level="debug"), targets=targets)
    client = await aiohttp_client(make_app(settings, stats=SelfMetrics()))
    texts = []
    for _ in range(3):
        resp = await client.get("/metrics")
        texts.append(await resp.text())
        resp = await client.get("/probe?target=bad-iam")
        texts.append(await resp.text())
    s = parse_metrics(texts[0])
    assert up(s) == 1 and up(s, P2) == 0 and up(s, "p4") == 0
    fmt = LogfmtFormatter()
    logged = "\n".join(fmt.format(r) for r in caplog.records)
    generation = client.app[LIVE].generation
    assert generation is not None
    errors_text = " ".join(repr(listing.error) for _, listing in generation.snapshots._last.values())
    assert "auth" in errors_text.lower() or "IAM" in errors_text
    for secret in (SK, bad_sk, sts, iam_pw, TOKEN):
        for where, text in (("logs", logged), ("metrics", "".join(texts)), ("errors", errors_text)):
            assert secret not in text, f"{secret!r} appears in the {where}"
    for tok in sim.tokens:  # IAM tokens obtained at run time are secrets too
        assert tok not in logged and tok not in "".join(texts)


async def test_a_huge_retry_after_pauses_no_longer_than_the_cap(sim: StandIn, exporter: Exporter,
                                                                clock: ManualClock) -> None:
    sim.inject(status=429, body=THROTTLED, headers={"Content-Type": "application/json", "Retry-After": "315360000"})
    client = await exporter()
    s, _ = await timed_scrape(client)
    assert_down(s, "throttled")
    clock.advance(OmsClient.AUTH_BACKOFF_MAX - 1)
    s, _ = await timed_scrape(client)
    assert up(s) == 0 and errors(s, "throttled") == 2  # still paused ...
    clock.advance(2)
    s, _ = await timed_scrape(client)
    assert up(s) == 1  # ... but for 15 minutes at most


# --- bad requests to the exporter ------------------------------------------------------------

@pytest.fixture
def logged() -> Any:
    """`logged(level)`: logs.setup(level) into a buffer, as the CLI does; undone afterwards."""
    root, server = logging.getLogger(), logging.getLogger("aiohttp.server")
    saved = root.handlers[:], root.level, server.filters[:]
    buf = io.StringIO()

    def setup(level: str) -> io.StringIO:
        logs.setup(level, "logfmt", buf)
        return buf

    yield setup
    root.handlers[:], server.filters[:] = saved[0], saved[2]
    root.setLevel(saved[1])


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_oversized_request_headers_are_a_debug_line_not_an_error(exporter: Exporter, logged: Any,
                                                                      level: str) -> None:
    buf = logged(level)
    client = await exporter()
    async with client.get("/metrics", headers={"X-Padding": "a" * 9000}) as resp:
        assert resp.status == 400
    async with client.get("/metrics") as resp:  # the exporter goes on serving
        assert resp.status == 200
    lines = buf.getvalue().splitlines()
    assert not [ln for ln in lines if "level=error" in ln or "Traceback" in ln], lines
    refused = [ln for ln in lines if 'msg="bad HTTP request refused"' in ln]
    if level == "debug":
        assert len(refused) == 1 and "level=debug" in refused[0] and "status=400" in refused[0]
        assert "reason=LineTooLong" in refused[0] and "peer=127.0.0.1" in refused[0] and "aaaa" not in refused[0]
    else:
        assert refused == []
