"""A listing that outlives its scrape goes on in the background (issue 24, item 1).

The stand-in holds OMS's answers (`gate`, or one API's answers through `on_list`) until the
test lets them go; the test moves the clock past a scrape's deadline instead of waiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from oms_exporter.simulator import add_groups_and_syncs
from oms_exporter.web import LIVE, RENDERER, STATS
from tests.conftest import PROJECT, ManualClock, scrape, value, values, wait_until
from tests.standin import StandIn

SHORT = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}  # 1.5 s after the offset: shorter than a request's 5 s


async def _cut(client: TestClient, clock: ManualClock, sim: StandIn) -> dict[Any, float]:
    """A scrape whose deadline passes while OMS holds its answers."""
    pending = asyncio.ensure_future(scrape(client, **SHORT))
    await wait_until(lambda: sim.in_flight and clock.deadlines(), "the scrape's listing waits for OMS")
    await clock.quiet()
    clock.advance(1.45)  # past its listing's deadline (0.1 s before the scrape's), not the scrape's
    return await pending


async def test_a_listing_cut_by_the_deadline_goes_on_and_the_next_scrape_serves_it(
        sim: StandIn, exporter: Any, clock: ManualClock) -> None:
    client = await exporter()
    sim.gate = asyncio.Event()
    s = await _cut(client, clock, sim)
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="timeout") == 1
    assert value(s, "oms_listing_in_progress", project_id=PROJECT) == 1
    page = await (await client.get("/")).text()
    assert "a listing goes on in the background" in page
    sim.gate.set()  # OMS answers: the listing finishes with no scrape waiting for it
    await wait_until(lambda: not client.server.app[LIVE].generation.snapshots.in_progress("main"),
                     "the background listing to finish")
    sent = len(sim.calls)
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert value(s, "oms_listing_in_progress", project_id=PROJECT) == 0
    assert sum(v for (name, _), v in s.items() if name == "oms_tasks") == 250
    assert len(sim.calls) == sent  # served what the background listing found, as soon as it was whole
    s = await scrape(client)  # and the next one lists again (by liveness: what is live)
    assert value(s, "oms_up", project_id=PROJECT) == 1 and len(sim.calls) > sent


async def test_a_listing_whole_in_the_background_is_rendered_before_the_next_scrape(
        sim: StandIn, exporter: Any, clock: ManualClock) -> None:
    """The next scrape serves it without rendering its tasks itself (at 1,000,000 tasks that took
    longer than a scrape's timeout)."""
    client = await exporter()
    sim.gate = asyncio.Event()
    await _cut(client, clock, sim)
    registry = client.server.app[STATS].registry

    def rendered() -> float:
        return registry.get_sample_value("oms_exporter_encoded_records_total",
                                         {"kind": "task", "result": "rendered"}) or 0.0

    before = rendered()
    renderer = client.server.app[RENDERER]
    with renderer.serving():  # a scrape in flight (of another target, say): the render ahead waits for its answer
        sim.gate.set()
        await wait_until(lambda: renderer._warming, "the background listing whole, its render ahead waiting")
        for _ in range(20):
            await asyncio.sleep(0)  # turns of the loop, not time
        assert rendered() == before
    await wait_until(lambda: rendered() > before, "the background listing rendered with no scrape in flight")
    ahead = rendered()
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert sum(v for (name, _), v in s.items() if name == "oms_tasks") == 250
    assert values(s, "oms_task_info") and rendered() == ahead  # served from the lines rendered ahead


async def test_a_render_past_the_deadline_answers_in_time_and_the_next_scrape_serves_it(
        sim: StandIn, exporter: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing whole just before the deadline whose render is not done by then: the scrape answers
    at its deadline (`timeout`, not a late body), the render goes on, and the next scrape is up."""
    client = await exporter()
    renderer = client.server.app[RENDERER]
    release, encode = threading.Event(), renderer._encode

    def slow(listings: Any, *args: Any, **kwargs: Any) -> bytes:
        if any(lst.up for lst in listings):
            release.wait(30)  # the render of a first listing of a million tasks
        return encode(listings, *args, **kwargs)

    monkeypatch.setattr(renderer, "_encode", slow)
    pending = asyncio.ensure_future(scrape(client, **SHORT))
    await wait_until(lambda: renderer._inflight, "the listing whole, its render running")
    clock.advance(1.6)  # past the scrape's deadline (1.5 s after the offset)
    s = await pending
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="timeout") == 1
    assert not values(s, "oms_task_info")
    release.set()
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert sum(v for (name, _), v in s.items() if name == "oms_tasks") == 250


async def test_a_scrape_joins_the_listing_going_on_instead_of_starting_one(
        sim: StandIn, exporter: Any, clock: ManualClock) -> None:
    client = await exporter()
    sim.gate = asyncio.Event()
    await _cut(client, clock, sim)
    runs = dict(client.server.app[LIVE].generation.snapshots._projects["main"]._running)
    s = await _cut(client, clock, sim)  # OMS still holds everything: the same listing goes on
    assert client.server.app[LIVE].generation.snapshots._projects["main"]._running == runs
    assert len(sim.requests) == 1  # the tasks' first request, held since the first scrape
    assert value(s, "oms_up", project_id=PROJECT) == 0 and value(s, "oms_listing_in_progress", project_id=PROJECT)
    assert value(s, "oms_listings_total", project_id=PROJECT) == 2
    pending = asyncio.ensure_future(scrape(client))
    await wait_until(lambda: clock.deadlines(), "the third scrape waits")
    sim.gate.set()  # answered while a scrape waits: that scrape serves it
    s = await pending
    assert value(s, "oms_up", project_id=PROJECT) == 1


async def test_task_groups_and_sync_tasks_go_on_too(sim: StandIn, exporter: Any, clock: ManualClock) -> None:
    from oms_exporter.simulator import add_groups_and_syncs

    add_groups_and_syncs(sim, PROJECT)
    release = asyncio.Event()

    def hold_groups(request: Any) -> Any:
        return release.wait() if "/taskgroups" in request.path else None

    sim.on_list = hold_groups
    client = await exporter()
    pending = asyncio.ensure_future(scrape(client, **SHORT))
    await wait_until(lambda: sim.api_in_flight["taskgroups"] and clock.deadlines(), "the groups are held")
    runs = client.server.app[LIVE].generation.snapshots._projects["main"]._running
    await wait_until(lambda: runs["tasks"].done() and runs["sync_tasks"].done(), "the tasks and sync tasks listed")
    clock.advance(1.45)
    s = await pending
    assert value(s, "oms_up", project_id=PROJECT) == 1  # the tasks were whole
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 0
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 1
    assert value(s, "oms_listing_in_progress", project_id=PROJECT) == 1
    release.set()
    await wait_until(lambda: not sim.api_in_flight["taskgroups"], "the groups answered")
    await clock.quiet()
    s = await scrape(client)
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 1
    assert value(s, "oms_listing_in_progress", project_id=PROJECT) == 0


async def test_the_budget_ends_a_listing_that_never_finishes(sim: StandIn, exporter: Any, clock: ManualClock) -> None:
    client = await exporter(listing_budget=12)
    sim.gate = asyncio.Event()  # never set: every request hangs until its own timeout (5 s)
    await _cut(client, clock, sim)
    snapshots = client.server.app[LIVE].generation.snapshots
    assert snapshots.in_progress("main")
    await clock.sleep(13)  # past the budget: the listing has given up, with no scrape waiting
    await wait_until(lambda: not snapshots.in_progress("main"), "the listing to end at its budget")
    sim.gate.set()
    s = await scrape(client)  # its failure is old news: this scrape lists afresh
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert value(s, "oms_listing_in_progress", project_id=PROJECT) == 0


async def test_a_target_gone_on_reload_cancels_its_background_listing(
        sim: StandIn, exporter: Any, clock: ManualClock) -> None:
    from oms_exporter.settings import Options, Settings
    from oms_exporter.web import reload

    client = await exporter()
    sim.gate = asyncio.Event()
    await _cut(client, clock, sim)
    app = client.server.app
    project = app[LIVE].generation.snapshots._projects["main"]
    runs = list(project._running.values())
    assert runs and not any(r.done() for r in runs)
    await reload(app, Settings(options=Options(), targets=[]))
    await wait_until(lambda: all(r.done() for r in runs), "the background runs cancelled")
    assert all(r.cancelled() for r in runs)


async def test_an_area_listing_to_the_deadline_leaves_the_render_its_time(
        sim: StandIn, exporter: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Task groups still listing at the deadline: the listing returns just before it, and the render
    (0.3 s here, a steady one at 300,000 tasks takes more) still has the timeout offset's time: the
    tasks are served up, and the groups' timeout is counted once."""
    add_groups_and_syncs(sim, PROJECT)
    release = asyncio.Event()
    sim.on_list = lambda r: release.wait() if "/taskgroups" in r.path else None
    client = await exporter()
    renderer = client.server.app[RENDERER]
    encode = renderer._encode

    def slow(listings: Any, *args: Any, **kwargs: Any) -> bytes:
        if any(lst.up for lst in listings):
            time.sleep(0.3)
        return encode(listings, *args, **kwargs)

    monkeypatch.setattr(renderer, "_encode", slow)
    pending = asyncio.ensure_future(scrape(client, **SHORT))
    await wait_until(lambda: sim.api_in_flight["taskgroups"] and clock.deadlines(), "the groups held")
    runs = client.server.app[LIVE].generation.snapshots._projects["main"]._running
    await wait_until(lambda: runs["tasks"].done() and runs["sync_tasks"].done(), "the tasks listed")
    clock.advance(1.45)  # to the listing's deadline (SETTLE before the scrape's)
    s = await pending
    release.set()
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="timeout") == 1


async def test_a_run_a_waiting_scrape_takes_is_not_rendered_ahead(
        sim: StandIn, exporter: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The background run ends while a scrape waits for it: that scrape renders it; no render ahead."""
    client = await exporter()
    sim.gate = asyncio.Event()
    await _cut(client, clock, sim)
    renderer = client.server.app[RENDERER]
    ahead: list[Any] = []
    warm = renderer._warm
    monkeypatch.setattr(renderer, "_warm", lambda lst, *args: (ahead.append(lst), warm(lst, *args))[1])
    pending = asyncio.ensure_future(scrape(client))  # joins the background run
    await wait_until(lambda: clock.deadlines(), "the second scrape waiting for the run")
    sim.gate.set()
    s = await pending
    assert value(s, "oms_up", project_id=PROJECT) == 1
    await wait_until(lambda: not renderer._warming, "no render ahead pending")
    assert not ahead

