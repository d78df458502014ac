"""Listing by liveness (the default): exact on every scrape, at the cost of what changed.

Each test changes the stand-in's account between scrapes the way owners of real accounts do
and checks the scrape against the stand-in's own truth: every task with its current status
and values, deleted tasks gone, `oms_tasks` per state exact; and what it cost in requests.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from oms_exporter.model import STATUS_NAMES
from oms_exporter.simulator import make_task, make_tasks
from tests.conftest import PROJECT, Exporter, ManualClock, Samples, scrape, target_for, value, values
from tests.standin import StandIn, json_fault
from tests.test_contract import TOTALS

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
    assert not [r for r in requests(account) if r.startswith("show") or "offset=100" in r]  # no follow, no relisting


async def test_a_deleted_finished_task_makes_its_state_listed_again(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    old = min(t for t, task in account.projects[PROJECT].items() if task["status"] == 5)
    account.remove_task(PROJECT, old)
    s = await scrape_exact(client, account)
    assert not values(s, "oms_task_info", task_id=str(old))
    assert "limit=100&offset=100&status=5" in requests(account)  # succeeded listed again in full


async def test_a_task_created_and_finished_between_two_scrapes_is_on_the_first_page(
        account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    account.put_task(PROJECT, make_task(random.Random(6), 6000, 0, status=5))
    await scrape_exact(client, account)
    assert len(requests(account)) == 8  # the first page of succeeded brought it: nothing more


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
    both). Without a target filter the state counts then exceed the total and every task is
    listed; with one (no total to compare with), the task seen twice is followed."""
    scopes = {"all": {}, "filtered": {"statuses": [1, 2]}}
    for scope, extra in scopes.items():
        client = await exporter(targets=[target_for(oms, **extra)], finished_task_max_age=0)
        statuses = tuple(extra.get("statuses", STATUS_NAMES))
        await scrape(client)
        tid = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 1)
        moved: list[int] = []

        def move(request: Any, moved: list[int] = moved, tid: int = tid) -> None:
            if not moved and request.query.get("status") == ("1" if when == "before" else "2"):
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
        if when == "between":
            assert (everything, followed) == ((True, False) if scope == "all" else (False, True))


async def test_the_finished_states_are_listed_in_full_every_refresh_interval(
        account: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    client = await exporter(finished_task_max_age=0, finished_refresh_interval=REFRESH)
    first = await scrape_exact(client, account)
    listed = value(first, "oms_finished_tasks_listed_timestamp_seconds", project_id=PROJECT)
    clock.advance(REFRESH - 1)
    s = await scrape_exact(client, account)
    assert value(s, "oms_finished_tasks_listed_timestamp_seconds", project_id=PROJECT) == listed
    assert "limit=100&offset=100&status=5" not in requests(account)
    # A change no count shows (a finished task's record edited in place) waits for the refresh.
    done = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 5)
    account.patch_task(PROJECT, done, name="renamed-in-place")
    clock.advance(2)
    s = await scrape_exact(client, account)
    assert "limit=100&offset=100&status=5" in requests(account)
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


@pytest.mark.parametrize("seed", range(4))
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


async def test_the_full_listing_mode_is_still_there(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0, listing="full")
    for _ in range(2):
        await scrape_exact(client, account)
    assert sorted(requests(account)) == sorted(f"limit=100&offset={o}" for o in (0, 100, 200))


async def test_an_upstream_fault_on_a_follow_up_is_counted_as_its_reason(account: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    await scrape_exact(client, account)
    tid = next(t for t, task in account.projects[PROJECT].items() if task["status"] == 2)
    account.patch_task(PROJECT, tid, status=5)
    account.inject(json_fault(403, {"error_code": "OMS.0206", "error_msg": "Insufficient permissions."},
                              match=lambda r: "/tasks/" in r.path))
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="http_4xx") == 1
    await scrape_exact(client, account)
