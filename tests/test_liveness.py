"""Listing by liveness (the default): exact on every scrape, at the cost of what changed.

Each test changes the stand-in's account between scrapes the way owners of real accounts do
and checks the scrape against the stand-in's own truth: every task with its current status
and values, deleted tasks gone, `oms_tasks` per state exact; and what it cost in requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import zlib
from typing import Any

import pytest

from oms_exporter.model import STATUS_NAMES
from oms_exporter.simulator import make_task, make_tasks
from tests.conftest import (
    PROJECT,
    TOTALS,
    Exporter,
    ManualClock,
    Samples,
    parse_metrics,
    scrape,
    target_for,
    value,
    values,
)
from tests.standin import StandIn, json_fault

LIVE = (1, 2, 3, 6, 7)
REFRESH = 900.0


def truth(sim: StandIn, project: str = PROJECT, statuses: tuple[int, ...] = tuple(STATUS_NAMES),
          group: str | None = None) -> dict[int, dict[str, Any]]:
    return {tid: t for tid, t in sim.projects[project].items()
            if t.get("status") in statuses and (group is None or t.get("group_id") == group)}


def assert_exact(s: Samples, sim: StandIn, project: str = PROJECT, **scope: Any) -> None:
    """The scrape shows exactly the stand-in's tasks: ids, states, progress, and counts per state."""
    want = truth(sim, project, **scope)
    assert value(s, "oms_up", project_id=project) == 1
    got = {int(dict(lab)["task_id"]): dict(lab)["status"]
           for lab, v in values(s, "oms_task_status", project_id=project).items() if v == 1}
    assert got == {tid: STATUS_NAMES[t["status"]] for tid, t in want.items()}
    progress = {int(dict(lab)["task_id"]): v
                for lab, v in values(s, "oms_task_progress_ratio", project_id=project).items()}
    assert progress == {tid: t["progress"] for tid, t in want.items() if t.get("progress") is not None}
    counts = {dict(lab)["status"]: v for lab, v in values(s, "oms_tasks", project_id=project).items()}
    assert counts == {name: sum(1 for t in want.values() if t["status"] == code) for code, name in STATUS_NAMES.items()}
    for family, field in TOTALS.items():
        sums = {dict(lab)["status"]: v for lab, v in values(s, family, project_id=project).items()}
        assert sums == {name: sum(t.get(field) or 0 for t in want.values() if t["status"] == code)
                        for code, name in STATUS_NAMES.items()}, family


def requests(sim: StandIn) -> list[str]:
    """The query strings of the OMS requests since the last clear (ShowTask: "show <id>")."""
    return [qs if path.endswith("/tasks") else "show " + path.rsplit("/", 1)[1] for path, qs in sim.requests]


@pytest.fixture
def account(sim: StandIn) -> StandIn:
    """250 tasks, a fifth of them live; progress fields set."""
    return sim


async def scrape_exact(client: Any, sim: StandIn) -> Samples:
    sim.requests.clear()
    s = await scrape(client)
    assert_exact(s, sim)
    return s


# What assert_exact reads, and the fallback counter: a project of thousands of tasks parses in a
# fraction of the time when the other families are left out.
EXACT_FAMILIES = frozenset({"oms_up", "oms_task_status", "oms_task_progress_ratio", "oms_tasks", *TOTALS,
                            "oms_listing_fallbacks_total"})


async def scrape_exact_lean(client: Any, sim: StandIn) -> Samples:
    """scrape_exact, parsing only the families it checks (and the fallback counter)."""
    sim.requests.clear()
    resp = await client.get("/metrics")
    assert resp.status == 200
    lines = [line for line in (await resp.text()).split("\n")
             if line and (line.split(None, 3)[2] if line.startswith("#") else re.split(r"[{ ]", line, maxsplit=1)[0])
             in EXACT_FAMILIES]
    s = parse_metrics("\n".join(lines) + "\n")
    assert_exact(s, sim)
    return s


def progress_live(sim: StandIn, rng: random.Random) -> None:
    for tid, t in sim.projects[PROJECT].items():
        if t["status"] in (2, 6):
            sim.patch_task(PROJECT, tid, progress=round(min(1.0, t["progress"] + rng.uniform(0, 0.01)), 4),
                           complete_size=t["complete_size"] + rng.randint(1, 10**6))


async def test_a_steady_account_costs_one_page_per_state_and_the_total(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)  # the first listing lists every state in full
    rng = random.Random(1)
    for _ in range(3):
        progress_live(account, rng)
        await scrape_exact(client, account)
        # 5 live states (one page each here), the first page of failed and succeeded, the total.
        assert sorted(requests(account)) == sorted(
            [f"limit=100&offset=0&status={s}" for s in (1, 2, 3, 4, 5, 6, 7)] + ["limit=1&offset=0"])


async def test_a_task_that_finishes_is_followed_with_one_request(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    tid = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 2)
    account.patch_task(PROJECT, tid, status=5, progress=1)
    await scrape_exact(client, account)
    assert f"show {tid}" in requests(account) and len(requests(account)) == 9
    other = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 1)
    account.patch_task(PROJECT, other, status=4, error_reason={"error_code": "OMS.1", "error_msg": "x"})
    s = await scrape_exact(client, account)
    assert values(s, "oms_task_error_info", task_id=str(other))


async def test_a_failed_task_restarted_and_a_new_task_are_seen(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    failed = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 4)
    account.patch_task(PROJECT, failed, status=1, progress=0.0, error_reason="")
    account.put_task(PROJECT, make_task(random.Random(5), 5000, 0, status=1))
    await scrape_exact(client, account)
    assert not [r for r in requests(account) if r.startswith("show") or "offset=98" in r]  # no follow, no relisting


async def test_a_deleted_finished_task_makes_its_state_listed_again(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    old = min(t for t, task in account.projects[PROJECT].items() if task["status"] == 5)
    account.remove_task(PROJECT, old)
    s = await scrape_exact(client, account)
    assert not values(s, "oms_task_info", task_id=str(old))
    assert "limit=100&offset=98&status=5" in requests(account)  # succeeded listed again in full


async def test_a_task_created_and_finished_between_two_scrapes_is_on_the_first_page(
        account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    account.put_task(PROJECT, make_task(random.Random(6), 6000, 0, status=5))
    await scrape_exact(client, account)
    # The first page of succeeded brought it: nothing more but the total asked again, since a
    # task new to the lister may have been created while the states were listed.
    assert len(requests(account)) == 9 and requests(account).count("limit=1&offset=0") == 2


async def test_a_deleted_live_task_and_one_moving_between_live_states(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    live = [t for t, task in account.projects[PROJECT].items() if task["status"] == 2]
    account.remove_task(PROJECT, live[0])  # followed: 404, gone
    account.patch_task(PROJECT, live[1], status=3)  # listed as paused now: no follow needed
    s = await scrape_exact(client, account)
    assert not values(s, "oms_task_info", task_id=str(live[0]))
    assert [r for r in requests(account) if r.startswith("show")] == [f"show {live[0]}"]


@pytest.mark.parametrize("when", ["before", "between"])
async def test_a_task_moving_while_the_states_are_listed_is_not_lost_or_doubled(
        account: StandIn, oms: Any, exporter: Exporter, when: str) -> None:
    """A task moves from waiting to migrating while the states are listed: "before" the waiting
    page is answered (it is listed once, as migrating) or "between" the two pages (listed in
    both). The task seen twice is followed, and counted once when the counts are checked
    against the total (or, with a filter, the total less the states outside it)."""
    scopes = {"all": {}, "filtered": {"statuses": [1, 2]}}
    for extra in scopes.values():
        client = await exporter(targets=[target_for(oms, **extra)], finished_task_max_age=0)
        statuses = tuple(extra.get("statuses", STATUS_NAMES))
        await scrape(client)
        tid = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 1)
        moved: list[int] = []
        waiting_listed = asyncio.Event()

        async def move(request: Any, moved: list[int] = moved, tid: int = tid,
                       waiting_listed: asyncio.Event = waiting_listed) -> None:
            status = request.query.get("status")
            if status == "1":
                waiting_listed.set()  # its page is written as soon as this returns
            if moved or status != ("1" if when == "before" else "2"):
                return
            if when == "between":
                await waiting_listed.wait()  # the requests of two states race: the waiting one first
            moved.append(tid)
            account.patch_task(PROJECT, tid, status=2)

        account.on_list = move
        account.requests.clear()
        s = await scrape(client)
        account.on_list = None
        assert moved
        assert_exact(s, account, statuses=statuses)
        followed = f"show {tid}" in requests(account)
        everything = "limit=100&offset=0" in requests(account)
        if when == "between":  # listed twice: followed, and counted once in the check
            assert (everything, followed) == (False, True)


async def test_the_finished_states_are_listed_in_full_every_refresh_interval(
        account: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    client = await exporter(finished_task_max_age=0, finished_refresh_interval=REFRESH)
    first = await scrape_exact(client, account)
    listed = value(first, "oms_finished_tasks_listed_timestamp_seconds", project_id=PROJECT)
    clock.advance(REFRESH - 1)
    s = await scrape_exact(client, account)
    assert value(s, "oms_finished_tasks_listed_timestamp_seconds", project_id=PROJECT) == listed
    assert "limit=100&offset=98&status=5" not in requests(account)
    # A change no count shows (a finished task's record edited in place) waits for the refresh.
    done = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 5)
    account.patch_task(PROJECT, done, name="renamed-in-place")
    clock.advance(2)
    s = await scrape_exact(client, account)
    assert "limit=100&offset=98&status=5" in requests(account)
    assert value(s, "oms_finished_tasks_listed_timestamp_seconds", project_id=PROJECT) > listed
    assert dict(next(iter(values(s, "oms_task_info", task_id=str(done)))))["name"] == "renamed-in-place"


@pytest.mark.parametrize("retrying", [0, 3])
async def test_an_api_that_refuses_status_6_is_learned_once_and_stays_exact(
        account: StandIn, exporter: Exporter, caplog: pytest.LogCaptureFixture, retrying: int) -> None:
    account.status_filters = frozenset({1, 2, 3, 4, 5, 7})  # the reference's table of filter values
    for tid, t in list(account.projects[PROJECT].items()):
        if t["status"] == 6:
            account.patch_task(PROJECT, tid, status=2)
    for tid in [t for t, task in account.projects[PROJECT].items() if task["status"] == 2][:retrying]:
        account.patch_task(PROJECT, tid, status=6)
    client = await exporter(finished_task_max_age=0)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            await scrape_exact(client, account)
    assert len([r for r in caplog.records if "status=6" in r.getMessage()]) == 1
    unfiltered_pages = [r for r in requests(account) if "status=" not in r and r != "limit=1&offset=0"]
    if retrying:
        assert unfiltered_pages  # retrying tasks are only reachable unfiltered: every task is listed
    else:
        assert not unfiltered_pages and "limit=100&offset=0&status=6" not in requests(account)


async def test_a_task_in_a_state_oms_added_is_not_lost(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    account.put_task(PROJECT, {"id": 7777, "status": 8, "name": "state eight"})
    sim_requests = requests
    s = await scrape(client)
    assert values(s, "oms_task_info", task_id="7777")  # the counts did not add up: every task listed
    assert sum(values(s, "oms_tasks").values()) == len(account.projects[PROJECT]) - 1  # 8 is in no state
    assert [r for r in sim_requests(account) if "status=" not in r and r.startswith("limit=100")]


async def test_a_failed_step_never_serves_a_half_listing(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    tid = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 2)
    account.patch_task(PROJECT, tid, status=5)
    account.inject(status=503, times=100, match=lambda r: r.path.endswith(f"/tasks/{tid}"))
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 0 and not values(s, "oms_task_info")
    account.faults.clear()
    await scrape_exact(client, account)  # the next one starts from the last complete view


async def test_many_tasks_finishing_at_once_list_the_finished_states_again_instead(
        sim: StandIn, exporter: Exporter) -> None:
    sim.add_project(PROJECT, make_tasks(3000, seed=8, first_id=1000))
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, sim)
    done = [t for t, task in sim.projects[PROJECT].items() if task["status"] == 2][:200]
    for tid in done:
        sim.patch_task(PROJECT, tid, status=5, progress=1)
    await scrape_exact(client, sim)
    assert not [r for r in requests(sim) if r.startswith("show")]
    assert len(requests(sim)) < len(done)


async def test_filters_projects_and_probe(sim: StandIn, oms: Any, exporter: Exporter) -> None:
    other = "p0000000000000000000000000000002"
    sim.add_project(other, make_tasks(120, seed=21))
    group = next(t["group_id"] for t in sim.projects[PROJECT].values() if t["group_id"])
    client = await exporter(targets=[target_for(oms, statuses=[2, 4], group_ids=[group]),
                                     target_for(oms, name="two", project_id=other)], finished_task_max_age=0)
    rng = random.Random(3)
    for _ in range(3):
        s = await scrape(client)
        assert_exact(s, sim, statuses=(2, 4), group=group)
        assert_exact(s, sim, other)
        s = await scrape(client, "/probe?target=two")
        assert_exact(s, sim, other)
        members = [tid for tid, t in sim.projects[PROJECT].items() if t["group_id"] == group]
        sim.patch_task(PROJECT, rng.choice(members), status=rng.choice([2, 3, 4, 5]))


@pytest.mark.parametrize("seed", [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in (2, 3))])  # 2, 3: slow
async def test_any_sequence_of_account_changes_stays_exact(sim: StandIn, exporter: Exporter,
                                                           clock: ManualClock, seed: int) -> None:
    """Random owners: tasks progress, finish, fail, are restarted, created, deleted, paused; now and
    then the refresh interval passes. Every scrape equals the account."""
    rng = random.Random(seed)
    client = await exporter(finished_task_max_age=0, finished_refresh_interval=REFRESH)
    next_id = 10_000
    for _ in range(15):
        for _ in range(rng.randint(0, 6)):
            tasks = sim.projects[PROJECT]
            tid = rng.choice(list(tasks))
            change = rng.choice(["progress", "finish", "fail", "restart", "create", "create_done", "delete",
                                 "pause", "retry"])
            if change == "progress":
                progress_live(sim, rng)
            elif change in ("finish", "fail", "pause", "retry") and tasks[tid]["status"] in LIVE:
                sim.patch_task(PROJECT, tid, status={"finish": 5, "fail": 4, "pause": 3, "retry": 6}[change])
            elif change == "restart" and tasks[tid]["status"] in (4, 5):
                sim.patch_task(PROJECT, tid, status=1)
            elif change in ("create", "create_done"):
                sim.put_task(PROJECT, make_task(rng, next_id, 0, status=5 if change == "create_done" else 1))
                next_id += 1
            elif change == "delete":
                sim.remove_task(PROJECT, tid)
        if rng.random() < 0.2:
            clock.advance(REFRESH)
        await scrape_exact(client, sim)


# --- deletions placed by probing the kept order ---------------------------------------------------

FALLBACK_REASONS = ("no_order", "contradicted", "unexplained", "cheaper", "no_showtask")


@pytest.fixture
def tidy(sim: StandIn) -> StandIn:
    """6,000 tasks as an account is after months: the newest 60 live, the others finished (a sixth failed)."""
    sim.clear(PROJECT)
    rng = random.Random(4)
    for i in range(6000):
        status = rng.choice((1, 2, 2, 3)) if i >= 5940 else 4 if rng.random() < 1 / 6 else 5
        sim.put_task(PROJECT, make_task(rng, i + 1, 0, status=status))
    return sim


def fallbacks(s: Samples) -> dict[str, float]:
    return {reason: value(s, "oms_listing_fallbacks_total", project_id=PROJECT, reason=reason)
            for reason in FALLBACK_REASONS}


def succeeded(sim: StandIn) -> list[int]:
    return sorted(t for t, task in sim.projects[PROJECT].items() if task["status"] == 5)


async def test_deleted_finished_tasks_are_placed_by_probing_not_by_listing_the_state_again(
        tidy: StandIn, exporter: Exporter) -> None:
    """1-5 succeeded tasks deleted between scrapes, anywhere in the list: found in O(d log n) requests."""
    client = await exporter(finished_task_max_age=0)
    await scrape_exact_lean(client, tidy)
    await scrape_exact_lean(client, tidy)
    steady = len(requests(tidy))
    pages = len(succeeded(tidy)) // 100 + 1
    rng = random.Random(7)
    for d in (1, 2, 3, 4, 5):
        gone = rng.sample(succeeded(tidy), d)
        for tid in gone:
            tidy.remove_task(PROJECT, tid)
        s = await scrape_exact_lean(client, tidy)
        asked = requests(tidy)
        # Each gap followed once (ShowTask confirms it is gone). The probes: the last page, then per gap
        # three records per level of a search in four down to four pages, and those pages (docs/listing.md);
        # fewer than the pages of a listing in full.
        assert sorted(r for r in asked if r.startswith("show")) == sorted(f"show {tid}" for tid in gone)
        probes = len(asked) - steady - d
        assert probes <= min(1 + d * (3 * math.ceil(math.log(pages / 4, 4)) + 4), pages - 1), (d, probes)
        assert fallbacks(s) == dict.fromkeys(FALLBACK_REASONS, 0)


async def test_old_finished_tasks_deleted_cost_the_last_page_and_a_showtask_each(
        tidy: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact_lean(client, tidy)
    await scrape_exact_lean(client, tidy)
    steady = sorted(requests(tidy))
    for d in (1, 3, 5):
        gone = succeeded(tidy)[:d]  # the oldest: the last ones OMS lists
        for tid in gone:
            tidy.remove_task(PROJECT, tid)
        n = len(succeeded(tidy))
        s = await scrape_exact_lean(client, tidy)
        assert sorted(requests(tidy)) == sorted([*steady, f"limit=100&offset={n - 100}&status=5",
                                                 *(f"show {tid}" for tid in gone)])
        assert fallbacks(s) == dict.fromkeys(FALLBACK_REASONS, 0)


async def test_a_stand_in_that_reorders_makes_the_state_listed_again_and_the_scrape_stays_exact(
        tidy: StandIn, exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    """The order of the last listing is recorded, never assumed: when OMS lists in another order, what
    the probes read contradicts it, the state is listed in full (counted, logged at debug level) and
    the order it lists now is the one kept."""
    client = await exporter(finished_task_max_age=0)
    await scrape_exact_lean(client, tidy)
    tidy.reorder_old(PROJECT, seed=1)
    tidy.remove_task(PROJECT, succeeded(tidy)[len(succeeded(tidy)) // 2])
    with caplog.at_level(logging.DEBUG, logger="oms_exporter.liveness"):
        s = await scrape_exact_lean(client, tidy)
    # Both finished states: OMS reordered every old task, so the first pages of the failed state do not
    # hold what its kept order says either (an arrival there could hide a deletion).
    assert fallbacks(s) == {**dict.fromkeys(FALLBACK_REASONS, 0), "contradicted": 2}
    assert "limit=100&offset=980&status=5" in requests(tidy)  # listed in full
    assert [r.__dict__.get("reason") for r in caplog.records if "instead of probing" in r.getMessage()] == [
        "contradicted", "contradicted"]
    # The next deletion is placed in the order OMS lists now.
    gone = succeeded(tidy)[:3]
    for tid in gone:
        tidy.remove_task(PROJECT, tid)
    s = await scrape_exact_lean(client, tidy)
    assert fallbacks(s)["contradicted"] == 2 and len(requests(tidy)) < 40


async def test_the_full_listing_mode_is_still_there(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0, listing="full")
    for _ in range(2):
        await scrape_exact(client, account)
    assert sorted(requests(account)) == sorted(f"limit=100&offset={o}" for o in (0, 98, 196))


async def test_an_upstream_fault_on_a_follow_up_is_counted_as_its_reason(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    tid = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 2)
    account.patch_task(PROJECT, tid, status=5)
    account.inject(status=503, times=3, match=lambda r: "/tasks/" in r.path)  # every retry too
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="http_5xx") == 1
    await scrape_exact(client, account)


async def test_showtask_refused_for_good_lists_the_finished_states_again_instead(
        account: StandIn, exporter: Exporter, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    """A policy that grants oms:task:list but not oms:task:get: exact all the same, at more cost."""
    client = await exporter(finished_task_max_age=0, finished_refresh_interval=REFRESH)
    await scrape_exact(client, account)
    refused = account.inject(json_fault(403, {"error_code": "OMS.0206", "error_msg": "Insufficient permissions."},
                                        times=10**6, match=lambda r: "/tasks/" in r.path))
    live = [t for t, task in account.projects[PROJECT].items() if task["status"] == 2]
    account.remove_task(PROJECT, live[0])  # a deleted live task ...
    account.patch_task(PROJECT, live[1], status=5, progress=1)  # ... and one that finished
    with caplog.at_level(logging.WARNING):
        s = await scrape_exact(client, account)
        assert "limit=100&offset=98&status=5" in requests(account)  # succeeded listed again instead
        account.patch_task(PROJECT, live[2], status=5, progress=1)  # once learnt, no ShowTask is tried
        clock.advance(10)
        s = await scrape_exact(client, account)
        assert not [r for r in requests(account) if r.startswith("show")]
        clock.advance(10)
        await scrape_exact(client, account)  # nothing left: the usual cost
        assert len(requests(account)) == 8
    assert len([r for r in caplog.records if "oms:task:get" in r.getMessage()]) == 1
    assert not values(s, "oms_task_info", task_id=str(live[0]))
    # Granted meanwhile: ShowTask is tried again after the refresh interval, and used.
    refused.times = 0
    clock.advance(REFRESH)
    await scrape_exact(client, account)
    tid = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 2)
    account.patch_task(PROJECT, tid, status=5, progress=1)  # not on the first page of succeeded
    await scrape_exact(client, account)
    assert f"show {tid}" in requests(account)


# --- counts that could hide a change: each case once broke exactness --------------------------

def _states_of(s: Samples, tid: int) -> set[str]:
    return {dict(lab)["status"] for lab, v in values(s, "oms_task_status", task_id=str(tid)).items() if v == 1}


async def test_status_6_refused_with_a_filter_holding_6_is_exact_from_the_first_scrape(
        sim: StandIn, oms: Any, exporter: Exporter) -> None:
    sim.status_filters = frozenset({1, 2, 3, 4, 5, 7})
    assert [t for t in sim.projects[PROJECT].values() if t["status"] == 6]
    client = await exporter(targets=[target_for(oms, statuses=[2, 6])], finished_task_max_age=0)
    assert_exact(await scrape(client), sim, statuses=(2, 6))


async def test_status_6_refused_with_a_filter_holding_6_and_no_retrying_task_lists_per_state(
        sim: StandIn, oms: Any, exporter: Exporter) -> None:
    sim.status_filters = frozenset({1, 2, 3, 4, 5, 7})
    for tid, t in list(sim.projects[PROJECT].items()):
        if t["status"] == 6:
            sim.patch_task(PROJECT, tid, status=2)
    client = await exporter(targets=[target_for(oms, statuses=[1, 2, 3, 6, 7])], finished_task_max_age=0)
    await scrape(client)
    for _ in range(2):
        sim.requests.clear()
        assert_exact(await scrape(client), sim, statuses=(1, 2, 3, 6, 7))
        # The retrying tasks are what the total leaves: none, so no task is listed unfiltered.
        assert not [r for r in requests(sim) if r.startswith("limit=100") and "status=" not in r]


@pytest.mark.parametrize("scope", ["all", "filtered"])
async def test_a_new_task_moving_while_the_states_are_listed_is_not_lost(
        sim: StandIn, oms: Any, exporter: Exporter, scope: str) -> None:
    """A task created since the last scrape (so not followed) moves from one live state to another
    after the second was answered and before the first was: it is in neither answer. Another task
    moving the other way is in both, so that the counts alone would add up."""
    extra = {"statuses": [1, 2]} if scope == "filtered" else {}
    client = await exporter(targets=[target_for(oms, **extra)], finished_task_max_age=0)
    await scrape(client)
    rng = random.Random(9)
    sim.put_task(PROJECT, make_task(rng, 90001, 0, status=1))
    sim.put_task(PROJECT, make_task(rng, 90002, 0, status=2))
    old = {s: next(t for t, task in sim.projects[PROJECT].items() if task["status"] == s and t < 90000)
           for s in (1, 2)}
    answered: list[str] = []

    def hook(request: Any) -> None:
        status = request.query.get("status")
        if status not in ("1", "2") or len(answered) > 1:
            return
        if answered:  # the other state was answered first: move a task each way
            gone = 90002 if status == "2" else 90001
            sim.patch_task(PROJECT, gone, status=1 if status == "2" else 2)
            sim.patch_task(PROJECT, old[int(answered[0])], status=int(status))
        answered.append(status)

    sim.on_list = hook
    s = await scrape(client)
    sim.on_list = None
    assert len(answered) == 2
    assert_exact(s, sim, **({"statuses": (1, 2)} if extra else {}))


async def test_a_creation_does_not_make_up_for_a_task_missed_while_listed(sim: StandIn, exporter: Exporter) -> None:
    """A new task missed while moving (-1) and a task created after the total was answered (+1):
    the total is asked again once new tasks are seen."""
    client = await exporter(finished_task_max_age=0)
    await scrape(client)
    rng = random.Random(9)
    sim.put_task(PROJECT, make_task(rng, 90001, 0, status=1))
    sim.put_task(PROJECT, make_task(rng, 90002, 0, status=2))
    order: list[str] = []
    done: list[str] = []

    def hook(request: Any) -> None:
        status = request.query.get("status") or ("total" if request.query.get("limit") == "1" else "?")
        order.append(status)
        if status in ("1", "2") and not done and {"1", "2"} & set(order[:-1]) and "total" in order[:-1]:
            done.append(status)
            mover, new_status = (90001, 2) if status == "1" else (90002, 1)
            sim.patch_task(PROJECT, mover, status=new_status)
            sim.put_task(PROJECT, make_task(rng, 90003, 0, status=int(status)))

    sim.on_list = hook
    s = await scrape(client)
    sim.on_list = None
    assert done, order
    assert_exact(s, sim)


async def test_a_finished_task_restarted_and_finished_elsewhere_with_a_deletion_there(
        sim: StandIn, exporter: Exporter) -> None:
    """Failed X restarted and succeeded between two scrapes (never seen live), succeeded W deleted:
    succeeded's count is unchanged, failed's is one less. X, gone from failed, is followed."""
    client = await exporter(finished_task_max_age=0)
    assert_exact(await scrape(client), sim)
    tasks = sim.projects[PROJECT]
    x = min(t for t, task in tasks.items() if task["status"] == 4)
    w = min(t for t, task in tasks.items() if task["status"] == 5)
    sim.patch_task(PROJECT, x, status=5, progress=1)
    sim.remove_task(PROJECT, w)
    s = await scrape(client)
    assert_exact(s, sim)
    assert _states_of(s, x) == {"succeeded"} and not _states_of(s, w)


async def test_two_finished_tasks_swapping_states_and_a_deletion(sim: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    assert_exact(await scrape(client), sim)
    tasks = sim.projects[PROJECT]
    x = min(t for t, task in tasks.items() if task["status"] == 4)
    y, w = sorted(t for t, task in tasks.items() if task["status"] == 5)[:2]
    sim.patch_task(PROJECT, x, status=5)
    sim.patch_task(PROJECT, y, status=4)
    sim.remove_task(PROJECT, w)
    assert_exact(await scrape(client), sim)


async def test_a_task_leaving_a_live_state_out_of_scope_for_a_finished_one_in_scope(
        sim: StandIn, oms: Any, exporter: Exporter) -> None:
    """statuses [1, 2, 4, 5, 7]: a paused task (out of scope) fails while a failed one is deleted."""
    scope = (1, 2, 4, 5, 7)
    client = await exporter(targets=[target_for(oms, statuses=list(scope))], finished_task_max_age=0)
    assert_exact(await scrape(client), sim, statuses=scope)
    tasks = sim.projects[PROJECT]
    paused = min(t for t, task in tasks.items() if task["status"] == 3)
    failed = min(t for t, task in tasks.items() if task["status"] == 4)
    sim.patch_task(PROJECT, paused, status=4)
    sim.remove_task(PROJECT, failed)
    assert_exact(await scrape(client), sim, statuses=scope)


async def test_a_showtask_answer_for_another_task_is_skipped(sim: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    assert_exact(await scrape(client), sim)
    x, y = [t for t, task in sim.projects[PROJECT].items() if task["status"] == 2][:2]
    sim.patch_task(PROJECT, x, status=5)
    sim.inject(json_fault(200, {**sim.projects[PROJECT][y], "status": 5}, match=lambda r: r.path.endswith(f"/{x}")))
    text = await (await client.get("/metrics")).text()
    s = parse_metrics(text)  # one series per task: no record under two ids
    assert value(s, "oms_up", project_id=PROJECT) == 1 and value(s, "oms_malformed_tasks", project_id=PROJECT) == 1
    assert _states_of(s, y) == {"migrating"}


async def test_a_live_only_scope_does_not_follow_the_tasks_that_finish(sim: StandIn, oms: Any,
                                                                       exporter: Exporter) -> None:
    live = (1, 2, 3, 6, 7)
    client = await exporter(targets=[target_for(oms, statuses=list(live))], finished_task_max_age=0)
    assert_exact(await scrape(client), sim, statuses=live)
    for tid in [t for t, task in sim.projects[PROJECT].items() if task["status"] == 2][:30]:
        sim.patch_task(PROJECT, tid, status=5, progress=1)
    sim.requests.clear()
    assert_exact(await scrape(client), sim, statuses=live)
    # Every state in scope listed in full and the counts checked: gone from scope, not followed.
    assert not [r for r in requests(sim) if r.startswith("show")]


async def test_a_state_or_group_named_twice_is_listed_once(sim: StandIn, oms: Any, exporter: Exporter) -> None:
    group = next(t["group_id"] for t in sim.projects[PROJECT].values() if t["group_id"])
    client = await exporter(targets=[target_for(oms, group_ids=[group, group], statuses=[2, 2, 5])],
                            finished_task_max_age=0)
    await scrape(client)
    sim.requests.clear()
    await scrape(client)
    assert len(requests(sim)) == len(set(requests(sim)))


def _change(sim: StandIn, rng: random.Random, next_id: list[int]) -> None:
    """One change an OMS user (or OMS) makes: progress, a state change, a creation, a deletion."""
    tasks = sim.projects[PROJECT]
    tid = rng.choice(list(tasks))
    status = tasks[tid]["status"]
    kind = rng.choice(["progress", "finish", "fail", "restart", "create", "create_done", "delete", "pause",
                       "retry", "resume"])
    if kind == "progress" and status in (2, 6):
        sim.patch_task(PROJECT, tid, complete_size=tasks[tid]["complete_size"] + rng.randint(1, 1000),
                       progress=round(rng.random(), 3))
    elif kind in ("finish", "fail", "pause", "retry") and status not in (4, 5):
        sim.patch_task(PROJECT, tid, status={"finish": 5, "fail": 4, "pause": 3, "retry": 6}[kind])
    elif kind == "resume" and status not in (4, 5):
        sim.patch_task(PROJECT, tid, status=rng.choice((1, 2, 3, 6, 7)))
    elif kind == "restart" and status in (4, 5):
        sim.patch_task(PROJECT, tid, status=1)
    elif kind in ("create", "create_done"):
        task = make_task(rng, next_id[0], 0, status=5 if kind == "create_done" else rng.choice((1, 2, 3, 6, 7)))
        task["group_id"] = rng.choice([tasks[tid]["group_id"], ""])
        next_id[0] += 1
        sim.put_task(PROJECT, task)
    elif kind == "delete":
        sim.remove_task(PROJECT, tid)


@pytest.mark.parametrize("scope", ["all", "statuses", "groups"])
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])  # seed 1: 40 scrapes more, each scope
async def test_random_changes_between_and_during_scrapes_stay_exact(
        sim: StandIn, oms: Any, exporter: Exporter, clock: ManualClock, seed: int, scope: str) -> None:
    """Changes between scrapes and while a scrape lists, faults, refreshes: a scrape that is up is
    exact whenever nothing changed while it listed; one that changed it settles by the next."""
    rng = random.Random(seed)
    sim.clear(PROJECT)
    for t in make_tasks(600, seed=seed):
        if t["status"] == 5 and rng.random() < 0.4:
            t["status"] = 4
        sim.put_task(PROJECT, t)
    group = sorted({t["group_id"] for t in sim.projects[PROJECT].values() if t["group_id"]})[0]
    extra, want = {"all": ({}, {}), "statuses": ({"statuses": [1, 2, 4, 5, 7]}, {"statuses": (1, 2, 4, 5, 7)}),
                   "groups": ({"group_ids": [group]}, {"group": group})}[scope]
    client = await exporter(targets=[target_for(oms, **extra)], finished_task_max_age=0,
                            finished_refresh_interval=900)
    next_id = [50_000]
    for _ in range(40):
        for _ in range(rng.randint(0, 4)):
            _change(sim, rng, next_id)
        during = rng.random() < 0.3
        budget = [rng.randint(1, 3) if during else 0]

        def hook(request: Any, budget: list[int] = budget) -> None:
            if budget[0] > 0 and rng.random() < 0.3:
                budget[0] -= 1
                _change(sim, rng, next_id)

        sim.on_list = hook
        fault = rng.random() < 0.15
        if fault:
            bucket = rng.randint(0, 9)
            sim.inject(status=503, times=3, match=lambda r, n=bucket: zlib.crc32(r.query_string.encode()) % 10 == n)
        if rng.random() < 0.1:
            clock.advance(900)
        s = await scrape(client)
        sim.on_list = None
        sim.faults.clear()
        if not during and not fault:
            assert_exact(s, sim, **want)


async def test_a_listing_in_full_while_tasks_move_is_checked_not_listed_again(
        account: StandIn, exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24: tasks finish, get deleted and get created while a large finished state is listed in
    full, so the first round's counts never add up. What it listed becomes the view the next (cheap)
    rounds check, as a served view is: the first scrape is exact, without a second pass over the
    finished state or a listing of every task (before: listed again, then everything, every time)."""
    rng = random.Random(3)
    for tid in range(1000, 2500):  # 16 pages of succeeded tasks
        account.put_task(PROJECT, make_task(rng, tid, 0, status=5))
    moves = iter(range(3))

    def move(request: Any) -> None:
        if request.query.get("status") != "5" or request.query.get("offset") not in ("490", "980", "1470"):
            return
        if next(moves, None) is None:
            return
        sim = account
        migrating = [tid for tid, t in sim.projects[PROJECT].items() if t["status"] == 2]
        sim.patch_task(PROJECT, rng.choice(migrating), status=5, progress=1)  # finishes mid-list
        succeeded = sorted(tid for tid, t in sim.projects[PROJECT].items() if t["status"] == 5)
        sim.remove_task(PROJECT, succeeded[len(succeeded) // 3])  # on a page already read
        sim.put_task(PROJECT, make_task(rng, 90_000 + len(sim.projects[PROJECT]), 0, status=1))

    client = await exporter(finished_task_max_age=0, max_concurrency=1)
    account.on_list = move
    with caplog.at_level(logging.DEBUG, logger="oms_exporter"):
        s = await scrape_exact(client, account)
    account.on_list = None
    sent = requests(account)
    assert not [r for r in sent if "status" not in r and not r.startswith(("limit=1&", "show"))]  # not everything
    succeeded_pages = [r for r in sent if r.endswith("status=5") and r.startswith("limit=100&")]
    assert len(succeeded_pages) < 2 * 17, "the finished state was listed twice"
    assert any("checking what was listed in full" in r.getMessage() for r in caplog.records)
    assert value(s, "oms_up", project_id=PROJECT) == 1
    await scrape_exact(client, account)


async def test_an_oms_that_ignores_the_status_6_filter_is_learnt_as_refusing_it(
        account: StandIn, exporter: Exporter) -> None:
    """The reference's filter table leaves out 6: an OMS may ignore `status=6` (answer every task) instead
    of refusing it with 400. A page of status=6 holding other states is taken as that refusal, not as a
    listing that fails for good (from a review)."""
    plain = account.tasks_page

    def tasks_page(pid: str, offset: int, limit: int, status: int | None = None, group_id: str | None = None) -> Any:
        return plain(pid, offset, limit, None if status == 6 else status, group_id)

    account.tasks_page = tasks_page  # type: ignore[method-assign]
    client = await exporter(finished_task_max_age=0)
    for _ in range(2):
        s = await scrape(client)
        assert value(s, "oms_up", project_id=PROJECT) == 1
