"""Issue 22, the third red-team round: a lying stand-in and hostile clients, row by row.

Rows 1 (clients that do not read), 8 (a bad CA bundle) and 13 (/probe names no target) are in
tests/test_server.py, tests/test_settings.py and tests/test_reload.py, and tests/test_web.py.
Each test here failed before its fix.
"""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from typing import Any

import pytest
from aiohttp import web

from oms_exporter.simulator import make_task, make_tasks
from oms_exporter.web import CLOCK, TIMEOUT_HEADER
from tests.conftest import PROJECT, Exporter, ManualClock, Samples, parse_metrics, scrape, target_for, value, values
from tests.standin import Fault, StandIn

LIVE = (1, 2, 3, 6, 7)


def up(s: Samples, project: str = PROJECT) -> float:
    return value(s, "oms_up", project_id=project)


def requests_of(s: Samples, project: str = PROJECT) -> float:
    return sum(values(s, "oms_api_requests_total", project_id=project).values())


def collector(s: Samples, name: str) -> float:
    return value(s, "oms_collector_success", project_id=PROJECT, collector=name)


def reason_count(s: Samples, reason: str) -> float:
    return value(s, "oms_scrape_errors_total", project_id=PROJECT, reason=reason)


def is_tasks_list(request: web.Request) -> bool:
    return request.path == f"/v2/{PROJECT}/tasks"


@pytest.fixture
def thousand(sim: StandIn) -> StandIn:
    """1,000 tasks, a tenth of them live."""
    sim.clear(PROJECT)
    for t in make_tasks(1000, seed=9):
        t["status"] = t["status"] if t["id"] % 10 == 0 else (5 if t["id"] % 7 else 4)
        sim.put_task(PROJECT, t)
    return sim


# --- row 2: a count that implies more pages than can be fetched ---------------------------------

async def test_a_count_of_two_billion_fails_at_once_in_bounded_memory(thousand: StandIn, exporter: Exporter,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Row 2: before, the pager scheduled count/limit requests at once (20 million): the loop froze and
    RSS passed 3.5 GB. Now the count is beyond --oms.max-records: bad_payload at once, logged with it."""
    def lie(request: web.Request, doc: Any) -> Any:
        return {**doc, "count": 2_000_000_000} if "tasks" in doc else doc

    thousand.rewrite = lie
    client = await exporter(listing="full")
    tracemalloc.start()
    try:
        s = await scrape(client)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert up(s) == 0 and reason_count(s, "bad_payload") == 1
    assert requests_of(s) < 10, requests_of(s)
    assert peak < 50 * 2**20, f"peak Python heap {peak / 2**20:.0f} MiB"
    assert any("2000000000" in r.__dict__.get("error", "") and "--oms.max-records" in r.__dict__.get("error", "")
               for r in caplog.records)
    assert (await client.get("/healthz")).status == 200


async def test_a_count_of_300000_on_1000_tasks_costs_a_few_pages_not_thousands(
        thousand: StandIn, exporter: Exporter) -> None:
    """Row 2: the same count on a 1,000-task account made 78,000 requests in one scrape. Now the pages
    asked at once never exceed the request slots, a page short of its count ends the walk, and
    the listing fails as incomplete after a bounded number of requests."""
    def lie(request: web.Request, doc: Any) -> Any:
        return {**doc, "count": 300_000} if is_tasks_list(request) and "status" not in request.query else doc

    thousand.rewrite = lie
    client = await exporter(listing="full", max_concurrency=8)
    s = await scrape(client)
    assert up(s) == 0 and reason_count(s, "incomplete") == 1
    assert requests_of(s) < 150, requests_of(s)
    assert thousand.api_peak_in_flight["tasks"] <= 8
    # The next listing asks no more than this one did (row 11's rule).
    before = len(thousand.calls)
    s = await scrape(client)
    assert up(s) == 0 and len(thousand.calls) - before <= requests_of(s) / 2 + 3


# --- row 3: a lying task-group count does not take the tasks down ---------------------------------

async def test_a_group_count_of_ten_million_fails_the_groups_only(thousand: StandIn, exporter: Exporter) -> None:
    def lie(request: web.Request, doc: Any) -> Any:
        return {**doc, "count": 10_000_000} if "taskgroups" in doc else doc

    thousand.rewrite = lie
    client = await exporter()
    clock = client.server.app[CLOCK]
    started = clock.monotonic()
    s = await scrape(client)
    assert clock.monotonic() - started < 2.0
    assert up(s) == 1 and collector(s, "tasks") == 1 and len(values(s, "oms_task_info")) > 0
    assert collector(s, "task_groups") == 0 and reason_count(s, "bad_payload") == 1


# --- row 4: a total too low is never a smaller listing served as whole -----------------------------

async def test_a_total_150_too_low_is_incomplete_not_900_tasks(thousand: StandIn, exporter: Exporter) -> None:
    """Row 4: the states' counts add up to 1,000, the unfiltered count says 850. Before, the exporter
    paged through "everything" by that count and served 900 tasks with oms_up 1."""
    def lie(request: web.Request, doc: Any) -> Any:
        if is_tasks_list(request) and "status" not in request.query:
            return {**doc, "count": doc["count"] - 150}
        return doc

    thousand.rewrite = lie
    s = await scrape(await exporter(finished_task_max_age=0))
    assert up(s) == 0 and reason_count(s, "incomplete") == 1
    assert values(s, "oms_task_info") == {}


# --- row 5: pages with more records than asked for ----------------------------------------------------

@pytest.mark.parametrize("listing", ["liveness", "full"])
async def test_pages_with_20_records_more_than_the_limit_are_incomplete(
        thousand: StandIn, exporter: Exporter, listing: str) -> None:
    """Row 5: each page carried 20 fresh records beyond its limit: 1,300 tasks served for 1,000,
    oms_tasks{succeeded} beyond OMS's own count, oms_up 1, in both modes."""
    fresh = iter(range(10**7, 2 * 10**7))

    def lie(request: web.Request, doc: Any) -> Any:
        if is_tasks_list(request) and request.query.get("limit") != "1" and doc.get("tasks"):
            extra = [make_task(__import__("random").Random(1), next(fresh), 0, status=5) for _ in range(20)]
            return {**doc, "tasks": doc["tasks"] + extra}
        return doc

    thousand.rewrite = lie
    s = await scrape(await exporter(listing=listing, finished_task_max_age=0))
    assert up(s) == 0 and reason_count(s, "incomplete") == 1
    assert values(s, "oms_task_info") == {}


# --- row 6: any Accept, the fast encoder ------------------------------------------------------------

@pytest.mark.parametrize("accept", ["application/openmetrics-text;version=2.0.0",
                                    "application/openmetrics-text;version=2.0.17;escaping=values",
                                    "text/plain;version=3.0.0"])
async def test_an_accept_for_a_version_not_written_gets_the_fast_encoder(
        thousand: StandIn, exporter: Exporter, accept: str) -> None:
    """Row 6: such a header fell to prometheus_client's own encoder: seconds at 10k tasks, and 12
    such clients made a normal scrape take 30 s. Now it is text 0.0.4 from the fast encoder."""
    client = await exporter(finished_task_max_age=0, min_interval=60)  # both answers of one listing
    plain = await client.get("/probe?target=main")
    resp = await client.get("/probe?target=main", headers={"Accept": accept})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert await resp.read() == await plain.read()
    s = parse_metrics(await (await client.get("/metrics")).text())
    # The fast encoder counts what it reused; prometheus_client's never did.
    assert value(s, "oms_exporter_encoded_records_total", kind="task", result="reused") >= 1000


# --- row 7: a long deadline does not hold short ones on a hanging request ---------------------------

async def test_a_120s_scrape_and_a_hanging_request_leave_a_10s_scrape_up(
        thousand: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    """Row 7: before, the listing a 120 s scrape started waited on a request that hung, and the 10 s
    scrapes that shared it failed (7 of 7). Each request now has its own timeout (and a retry)."""
    thousand.inject(Fault(delay=3600, status=200, times=1, match=lambda r: r.query.get("offset") == "0"))
    client = await exporter()
    long = asyncio.create_task(client.get("/metrics", headers={TIMEOUT_HEADER: "120"}))
    await asyncio.sleep(0.05)
    normal = await scrape(client, **{TIMEOUT_HEADER: "10"})
    assert up(normal) == 1
    assert up(parse_metrics(await (await long).text())) == 1


# --- row 9: arrivals beyond the first page while old ones are deleted ---------------------------------

async def test_arrivals_beyond_the_first_page_and_deletions_are_seen_at_once(
        thousand: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    """Row 9: 120 tasks straight to succeeded (beyond the first page of that state) while 20 old
    succeeded ones were deleted: the counts matched, deleted tasks were served and the new ones
    missing until the 15-minute refresh. Now a first page of arrivals only is paged on."""
    client = await exporter(finished_task_max_age=0)
    await scrape(client)
    rng = __import__("random").Random(3)
    old = sorted(t for t, x in thousand.projects[PROJECT].items() if x["status"] == 5)[:20]
    for tid in old:
        thousand.remove_task(PROJECT, tid)
    for i in range(120):
        thousand.put_task(PROJECT, make_task(rng, 50_000 + i, int(clock.time() * 1000), status=5))
    clock.advance(15)
    s = await scrape(client)
    served = {int(dict(lab)["task_id"]) for lab in values(s, "oms_task_info")}
    assert served == set(thousand.projects[PROJECT])
    assert value(s, "oms_tasks", project_id=PROJECT, status="succeeded") == sum(
        1 for x in thousand.projects[PROJECT].values() if x["status"] == 5)


# --- row 10: task groups in states outside the enum ---------------------------------------------------

async def test_groups_in_unknown_states_are_malformed_counted_and_logged_once(
        sim: StandIn, exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    """Row 10: groups with status codes outside 0..9 were served and counted in no state, silently."""
    for i in range(6):
        sim.put_group(PROJECT, {"group_id": f"g-{i}", "status": 12 if i % 2 else 2})
    caplog.set_level(logging.DEBUG)
    client = await exporter()
    for _ in range(2):
        s = await scrape(client)
    assert collector(s, "task_groups") == 1
    served = {dict(lab)["group_id"] for lab in values(s, "oms_task_group_info")}
    assert {"g-0", "g-2", "g-4"} <= served and not served & {"g-1", "g-3", "g-5"}
    assert sum(values(s, "oms_task_groups", project_id=PROJECT).values()) == len(served)
    lines = [r for r in caplog.records if r.getMessage() == "skipped malformed records"
             and r.__dict__.get("collector") == "task_groups"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.DEBUG] and lines[0].__dict__["count"] == 3


# --- row 11: a list that lies forever costs no more and more ------------------------------------------

async def test_a_growing_group_count_is_incomplete_at_a_flat_cost(sim: StandIn, exporter: Exporter) -> None:
    """Row 11: the same page forever with a growing count: incomplete, but requests per scrape grew
    201 -> 1,005 -> 5,025. Now no listing after a failed one asks more than it did and one round
    of the area's concurrent requests (the task groups': 8)."""
    for i in range(100):
        sim.put_group(PROJECT, {"group_id": f"g-{i:03}", "status": 2})
    grown = [0]

    first_page: list[Any] = []

    def lie(request: web.Request, doc: Any) -> Any:
        if "taskgroups" in doc:
            grown[0] += 1
            first_page[:] = first_page or doc["taskgroups"]
            return {"taskgroups": first_page, "count": 100 + 50 * grown[0]}  # the same page at every offset
        return doc

    sim.rewrite = lie
    client = await exporter()
    costs = []
    for _ in range(3):
        before = sum(1 for p, _ in sim.calls if p.endswith("/taskgroups"))
        s = await scrape(client)
        assert collector(s, "task_groups") == 0
        costs.append(sum(1 for p, _ in sim.calls if p.endswith("/taskgroups")) - before)
    assert costs[1] <= costs[0] + 8 and costs[2] <= costs[0] + 8, costs


async def test_one_incomplete_listing_does_not_lock_out_a_costlier_honest_one(
        sim: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    """The budget after an incomplete listing (row 11's rule) bounds one listing: a full listing of
    the finished states falling due right after it (costlier than any cheap round) fails once at
    most, then lists again in full, instead of failing on every scrape until a restart."""
    sim.clear(PROJECT)
    for t in make_tasks(800, seed=9):
        sim.put_task(PROJECT, {**t, "status": t["status"] if t["id"] % 50 == 0 else 5})
    client = await exporter(page_limit=10, max_concurrency=4, finished_task_max_age=0)
    assert up(await scrape(client)) == 1  # the first listing: every state in full (~80 pages)
    assert up(await scrape(client)) == 1  # a cheap round: what is live, a page of each finished state
    once = [True]

    def lie(request: web.Request, doc: Any) -> Any:  # one page, once, with a record too many
        if once[0] and request.path.endswith("/tasks") and doc.get("tasks"):
            once[0] = False
            return {**doc, "tasks": doc["tasks"] + [dict(doc["tasks"][0], id=10**9)]}
        return doc

    sim.rewrite = lie
    assert up(await scrape(client)) == 0  # incomplete, as it should be
    sim.rewrite = None  # OMS is honest from now on
    clock.advance(900)  # the finished states are due to be listed in full: ~80 pages, over the budget
    ups = []
    for _ in range(3):
        clock.advance(15)
        ups.append(up(await scrape(client)))
    assert ups[1:] == [1, 1], ups


# --- row 12: repeated failures, one warning --------------------------------------------------------------

async def test_broken_targets_warn_once_not_every_scrape(sim: StandIn, oms: Any, exporter: Exporter,
                                                         caplog: pytest.LogCaptureFixture,
                                                         clock: ManualClock) -> None:
    """Row 12: 195 broken targets of 200 wrote 585 warning lines on every scrape."""
    targets = [target_for(oms)] + [target_for(oms, name=f"broken{i}", project_id=f"b{i:031}") for i in range(15)]
    client = await exporter(targets=targets)
    caplog.set_level(logging.DEBUG)
    await scrape(client)
    first = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(first) == 15 * 3  # each broken target: its three collectors, once
    caplog.clear()
    await scrape(client)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len([r for r in caplog.records if r.getMessage() == "listing failed"]) == 15 * 3  # at debug
    clock.advance(601)  # still broken ten minutes later: said again, once
    caplog.clear()
    await scrape(client)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 15 * 3
