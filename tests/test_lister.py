"""Paging through every task (--oms.listing=full): counts, concurrency bound, de-duplication, offset caps."""

import logging

import pytest

from oms_exporter.simulator import make_task, make_tasks
from tests.conftest import PROJECT, scrape, target_for, value, values, wait_until


@pytest.fixture
def exporter(exporter):
    """These tests page through every task: --oms.listing=full unless a test says otherwise."""
    async def make(*args, **options):
        options.setdefault("listing", "full")
        return await exporter(*args, **options)

    return make


def _offsets(sim, **filters):
    out = []
    for _, qs in sim.requests:
        q = dict(p.split("=", 1) for p in qs.split("&"))
        if all(q.get(k) == str(v) for k, v in filters.items()):
            out.append(int(q["offset"]))
    return sorted(out)


async def test_pages_with_limit_100_and_uses_count(sim, exporter):
    sim.add_project(PROJECT, make_tasks(1000, seed=5, first_id=1000))  # 1,250 tasks in all
    s = await scrape(await exporter(finished_task_max_age=0))
    assert len(values(s, "oms_task_info")) == 1250
    assert _offsets(sim) == list(range(0, 1248, 98))  # pages overlap by two records
    assert all("limit=100" in qs for _, qs in sim.requests)


async def test_second_scrape_starts_every_page_at_once_from_last_count(sim, exporter):
    client = await exporter()
    await scrape(client)
    assert sim.api_peak_in_flight["tasks"] == 1  # the first listing had to wait for the first page's count
    sim.requests.clear()
    sim.latency = 0.05
    await scrape(client)
    # 3 pages, all in flight together: one round trip, not two.
    assert sim.api_peak_in_flight["tasks"] == 3
    assert _offsets(sim) == [0, 98, 196]


async def test_requests_in_flight_are_bounded(sim, exporter):
    sim.add_project(PROJECT, make_tasks(1000, seed=5, first_id=1000))
    sim.latency = 0.01
    client = await exporter(max_concurrency=3)
    for _ in range(2):
        s = await scrape(client)
        assert value(s, "oms_up", project_id=PROJECT) == 1
    # The target's bound for the tasks' requests; task groups and sync tasks have their own few.
    assert sim.api_peak_in_flight["tasks"] == 3
    assert sim.api_peak_in_flight["taskgroups"] <= 1 and sim.api_peak_in_flight["sync-tasks"] <= 2
    assert sim.peak_in_flight <= 3 + 1 + 2


async def test_tasks_created_during_listing_are_not_lost_or_doubled(sim, exporter):
    # Newest first: each task created mid-listing pushes every later page down by one,
    # so the first item of a page repeats the last of the previous one, and the oldest
    # tasks move past the count the first page announced.
    sim.add_project(PROJECT, make_tasks(50, seed=9, first_id=251))  # 300 tasks: every page is full
    created = iter(range(5000, 5100))

    def create_some(request):
        if request.query.get("offset") != "0":
            sim.put_task(PROJECT, make_task(__import__("random").Random(1), next(created), 0, status=2))

    client = await exporter(max_concurrency=1)
    sim.on_list = create_some
    s = await scrape(client)
    sim.on_list = None
    ids = {dict(lab)["task_id"] for lab in values(s, "oms_task_info")}
    originals = {str(i) for i in range(1, 301)}
    assert originals <= ids, f"lost {sorted(originals - ids)}"
    assert value(s, "oms_up", project_id=PROJECT) == 1


async def test_offset_cap_lists_per_status(sim, oms, exporter):
    sim.max_offset = 300  # an API edition that refuses larger offsets
    rng = __import__("random").Random(8)
    sim.add_project(PROJECT, [make_task(rng, 1000 + i, 0, status=1 + i % 7) for i in range(600)])  # 850 tasks
    client = await exporter(targets=[target_for(oms, max_offset=300)], finished_task_max_age=0)
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert len(values(s, "oms_task_info")) == 850
    assert sum(values(s, "oms_tasks").values()) == 850
    assert max(_offsets(sim)) <= 300
    assert {int(dict(p.split("=") for p in qs.split("&")).get("status", 0)) for _, qs in sim.requests} == set(range(8))


async def test_offset_cap_unreachable_even_per_status_is_oms_up_0(sim, oms, exporter, caplog):
    sim.max_offset = 100
    sim.add_project(PROJECT, [make_task(__import__("random").Random(i), 2000 + i, 0, status=5) for i in range(300)])
    client = await exporter(targets=[target_for(oms, max_offset=100)])
    with caplog.at_level(logging.WARNING):
        s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="incomplete") == 1
    assert values(s, "oms_task_info") == {} and values(s, "oms_tasks") == {}
    assert any("max_offset" in r.getMessage() or "max_offset" in str(getattr(r, "error", ""))
               for r in caplog.records)


async def test_status_and_group_filters(sim, oms, exporter):
    some_group = next(t["group_id"] for t in sim.projects[PROJECT].values() if t["group_id"])
    client = await exporter(targets=[target_for(oms, statuses=[2, 4], group_ids=[some_group])],
                            finished_task_max_age=0)
    s = await scrape(client)
    want = {str(t["id"]) for t in sim.projects[PROJECT].values()
            if t["status"] in (2, 4) and t["group_id"] == some_group}
    assert {dict(lab)["task_id"] for lab in values(s, "oms_task_info")} == want
    assert all(f"group_id={some_group}" in qs for _, qs in sim.requests)


async def test_empty_project(sim, exporter):
    sim.clear(PROJECT)
    s = await scrape(await exporter())
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert sum(values(s, "oms_tasks").values()) == 0


async def test_a_task_deleted_mid_listing_does_not_hide_a_live_one(sim, exporter):
    # Deleting the newest task while later pages are fetched shifts them left by one: the
    # task at the page boundary would be skipped without the second pass.
    deleted = []

    def delete_newest(request):
        if request.query.get("offset") == "98" and not deleted:
            newest = max(sim.projects[PROJECT])
            sim.remove_task(PROJECT, newest)
            deleted.append(newest)

    client = await exporter(max_concurrency=1, finished_task_max_age=0)
    sim.on_list = delete_newest
    s = await scrape(client)
    sim.on_list = None
    ids = {int(dict(lab)["task_id"]) for lab in values(s, "oms_task_info")}
    live = set(sim.projects[PROJECT])
    assert live <= ids, f"live tasks missing: {sorted(live - ids)}"
    assert value(s, "oms_up", project_id=PROJECT) == 1


async def test_a_list_that_shifts_mid_listing_reads_again_only_around_the_shift(sim, exporter):
    """Pages overlap: a deletion between two pages' fetches shifts the list, and only the head is
    read again (the count changed: what came first), not every page (issue 24)."""
    sim.add_project(PROJECT, make_tasks(1000, seed=5, first_id=1000))  # 1,250 tasks: 13 pages
    deleted = []

    def delete_one(request):
        if request.query.get("offset") == "588" and not deleted:
            deleted.append(sorted(sim.projects[PROJECT], reverse=True)[300])  # on a page already read
            sim.remove_task(PROJECT, deleted[0])

    client = await exporter(max_concurrency=1, finished_task_max_age=0, listing="full")
    sim.on_list = delete_one
    s = await scrape(client)
    sim.on_list = None
    ids = {int(dict(lab)["task_id"]) for lab in values(s, "oms_task_info")}
    assert set(sim.projects[PROJECT]) <= ids and value(s, "oms_up", project_id=PROJECT) == 1
    assert 13 < len(sim.requests) <= 13 + 4, sim.requests  # not 26: no second pass


async def test_steady_creation_at_the_head_reads_the_head_again_not_every_page(sim, exporter):
    """A task group creating tasks while a long list is paged (20 per request, more than a page a pass):
    the head is read again, page after page, until what began the list is found (from a review)."""
    sim.add_project(PROJECT, make_tasks(1000, seed=5, first_id=1000))  # 1,250 tasks
    created = iter(range(50_000, 50_600))

    def create(request):
        for tid in [next(created, None) for _ in range(20)]:
            if tid is not None:
                sim.put_task(PROJECT, make_task(__import__("random").Random(tid), tid, 0, status=1))

    client = await exporter(max_concurrency=1, finished_task_max_age=0, listing="full")
    sim.on_list = create
    s = await scrape(client)
    sim.on_list = None
    ids = {int(dict(lab)["task_id"]) for lab in values(s, "oms_task_info")}
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert {tid for tid in sim.projects[PROJECT] if tid < 50_000} <= ids


async def test_two_deletions_behind_the_pages_read_are_relinked(sim, exporter):
    """Two tasks deleted at once on a page read long before: every later page shifts by two, more than
    two neighbours share. The pages below the broken link are read again in runs that double (1, 2, 4)
    until they reach before the deletions: fewer requests than a second pass (from a review)."""
    sim.add_project(PROJECT, make_tasks(1000, seed=5, first_id=1000))  # 1,250 tasks: 13 pages
    deleted = []

    def delete_two(request):
        if request.query.get("offset") == "686" and not deleted:
            deleted.extend(sorted(sim.projects[PROJECT], reverse=True)[100:102])  # on the second page
            for tid in deleted:
                sim.remove_task(PROJECT, tid)

    client = await exporter(max_concurrency=1, finished_task_max_age=0, listing="full")
    sim.on_list = delete_two
    s = await scrape(client)
    sim.on_list = None
    ids = {int(dict(lab)["task_id"]) for lab in values(s, "oms_task_info")}
    assert value(s, "oms_up", project_id=PROJECT) == 1 and set(sim.projects[PROJECT]) <= ids
    assert len(sim.requests) < 2 * 13, sim.requests


async def test_a_task_entering_a_status_list_behind_the_pages_read_is_found(sim, oms, exporter):
    """statuses=[5], the full listing: a task finishing mid-listing enters the succeeded list at its place
    by id (not at the head), on a page already read. The count grew and the head did not: the distinct
    tasks do not add up to it, so every page is read a second time (from a review)."""
    rng = __import__("random").Random(1)
    x = 10_850  # at offset 149 of the succeeded list once it finished: a page read before
    for tid in range(10_000, 11_000):
        sim.put_task(PROJECT, make_task(rng, tid, 0, status=2 if tid == x else 5))
    moved = []

    def finish(request):
        if request.query.get("status") == "5" and int(request.query.get("offset", 0)) >= 300 and not moved:
            sim.patch_task(PROJECT, x, status=5)
            moved.append(x)

    client = await exporter(targets=[target_for(oms, statuses=[5])], listing="full", max_concurrency=1,
                            finished_task_max_age=0)
    sim.on_list = finish
    s = await scrape(client)
    sim.on_list = None
    assert moved and value(s, "oms_up", project_id=PROJECT) == 1
    assert x in {int(dict(lab)["task_id"]) for lab in values(s, "oms_task_info")}


async def test_tasks_deleted_before_every_request_cost_no_more_than_two_passes_and_more(sim, exporter):
    """Two tasks deleted before every request: links break all the time; reading runs again stops once
    it would cost more than a second pass (from a review: 439 requests for 51 pages, then 149)."""
    sim.add_project(PROJECT, make_tasks(4750, seed=5, first_id=1000))  # 5,000 tasks: 52 pages
    rng = __import__("random").Random(7)

    def delete_two(request):
        for _ in range(2):
            ids = sorted(sim.projects[PROJECT])
            sim.remove_task(PROJECT, rng.choice(ids[: len(ids) - 50]))  # not among the newest

    client = await exporter(max_concurrency=1, finished_task_max_age=0, listing="full", per_task_series=False)
    sim.on_list = delete_two
    s = await scrape(client)
    sim.on_list = None
    assert len(sim.requests) <= 3 * 52 + 10, len(sim.requests)
    if value(s, "oms_up", project_id=PROJECT) == 1:
        assert sum(values(s, "oms_tasks").values()) >= len(sim.projects[PROJECT])


async def test_per_status_listing_that_misses_tasks_is_incomplete(sim, oms, exporter):
    sim.max_offset = 100
    sim.patch_task(PROJECT, 10, status=None)  # matches no status filter
    client = await exporter(targets=[target_for(oms, max_offset=100)])
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="incomplete") == 1


async def test_a_list_that_keeps_growing_is_incomplete_not_truncated(sim, exporter):
    rng = __import__("random").Random(4)
    next_id = iter(range(10_000, 20_000))

    def flood(request):
        for _ in range(150):
            sim.put_task(PROJECT, make_task(rng, next(next_id), 0, status=1))

    client = await exporter(max_concurrency=1)
    sim.on_list = flood
    s = await scrape(client)
    sim.on_list = None
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="incomplete") == 1


async def test_a_scrape_that_gives_up_on_a_shared_listing_is_counted(sim, exporter, clock):
    import asyncio

    client = await exporter()
    sim.gate = asyncio.Event()  # OMS answers nothing until the short scrape has given up
    slow = asyncio.ensure_future(client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"}))
    await wait_until(lambda: sim.in_flight, "the slow scrape's listing waits for OMS")
    short = asyncio.ensure_future(scrape(client, **{"X-Prometheus-Scrape-Timeout-Seconds": "0.8"}))
    await wait_until(lambda: any(d < clock.monotonic() + 0.8 for d in clock.deadlines()),
                     "the short scrape waits for the shared listing")
    clock.advance(0.8)  # past the short scrape's deadline, not the slow one's
    s = await short
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="timeout") == 1
    sim.gate.set()
    resp = await slow
    assert resp.status == 200


async def test_shutdown_with_a_listing_in_flight_is_quiet(sim, oms, caplog):
    import asyncio
    import logging

    from aiohttp.test_utils import TestClient
    from aiohttp.test_utils import TestServer as Server

    from oms_exporter.settings import Options, Settings
    from oms_exporter.web import make_app

    sim.gate = asyncio.Event()  # never set: the listing is in flight when the exporter stops
    client = TestClient(Server(make_app(Settings(options=Options(), targets=[target_for(oms)]))))
    await client.start_server()
    pending = asyncio.ensure_future(client.get("/metrics"))
    await wait_until(lambda: sim.in_flight, "the listing waits for OMS")
    with caplog.at_level(logging.WARNING):
        await client.close()
        pending.cancel()
        await asyncio.sleep(0.1)  # let a listing that outlived its session fail, if it does
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_task_changing_status_during_a_per_status_listing_is_not_lost(sim, oms, exporter):
    sim.max_offset = 100
    for tid, t in sim.projects[PROJECT].items():
        t["status"] = 2 if tid > 100 else 5  # 150 migrating, 100 succeeded
    moved = []

    def finish_one(request):
        if request.query.get("status") == "2" and request.query.get("offset") == "100" and not moved:
            sim.patch_task(PROJECT, 150, status=5)  # already past the succeeded list? then both miss it
            moved.append(150)

    client = await exporter(targets=[target_for(oms, max_offset=100)], max_concurrency=1, finished_task_max_age=0)
    sim.on_list = finish_one
    s = await scrape(client)
    sim.on_list = None
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert values(s, "oms_task_info", task_id="150")
    assert sum(values(s, "oms_tasks").values()) == 250


async def test_a_malformed_record_is_counted_once(sim, oms, exporter):
    sim.max_offset = 100  # per-status listing: the record is seen on two different pages
    sim.patch_task(PROJECT, 7, progress="bad")
    s = await scrape(await exporter(targets=[target_for(oms, max_offset=100)]))
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert value(s, "oms_malformed_tasks", project_id=PROJECT) == 1


# --- issue 12: no default offset cap; a cap OMS does not announce is learned -------------------------

def _many(n, status, first_id=100_000):
    rng = __import__("random").Random(12)
    return [make_task(rng, first_id + i, 0, status=status) for i in range(n)]


@pytest.mark.parametrize("listing", ["liveness", "full"])  # liveness: the default
async def test_12000_tasks_in_one_state_are_listed_with_default_settings(sim, exporter, listing):
    sim.add_project(PROJECT, _many(12_000, status=5))
    # oms_tasks counts distinct listed tasks: complete without parsing 300,000 per-task lines here.
    s = await scrape(await exporter(per_task_series=False, max_concurrency=50, listing=listing))
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert sum(values(s, "oms_tasks").values()) == 12_250
    assert value(s, "oms_tasks", project_id=PROJECT, status="succeeded") == 12_000 + sum(
        1 for t in sim.projects[PROJECT].values() if t["status"] == 5 and t["id"] < 100_000)
    assert max(_offsets(sim)) >= 12_000  # no cap assumed


async def test_a_stray_400_past_the_first_page_is_not_taken_for_an_offset_cap(sim, exporter, caplog):
    """A 400 on one page while later offsets answer: that scrape fails as http_4xx, nothing is learned."""
    from tests.standin import json_fault
    sim.add_project(PROJECT, _many(450, status=5))  # 700 tasks
    client = await exporter(per_task_series=False)
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    sim.inject(json_fault(400, {"error_code": "OMS.0064", "error_msg": "Invalid request parameters."},
                          times=1, match=lambda r: r.query.get("offset") == "196"))
    with caplog.at_level(logging.INFO):
        s = await scrape(client)
        assert value(s, "oms_up", project_id=PROJECT) == 0
        assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="http_4xx") == 1
        s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 1 and sum(values(s, "oms_tasks").values()) == 700
    assert not [r for r in caplog.records if "refused an offset" in r.getMessage()]


@pytest.mark.parametrize("listing", ["full", "liveness"])
async def test_an_unannounced_offset_cap_is_learned_and_survived(sim, exporter, caplog, listing):
    """The full listing meets the cap (12,250 tasks unfiltered) and learns it; listing by
    liveness lists per state from the start, where no state reaches the cap."""
    sim.max_offset = 10_000  # refuses larger offsets with 400 OMS.0064; the exporter is not told
    sim.add_project(PROJECT, _many(6_000, status=5) + _many(6_000, status=4, first_id=200_000))
    client = await exporter(per_task_series=False, max_concurrency=50, listing=listing)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            sim.requests.clear()
            s = await scrape(client)
            assert value(s, "oms_up", project_id=PROJECT) == 1
            assert sum(values(s, "oms_tasks").values()) == 12_250
            assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="http_4xx") == 0
    learned = [r for r in caplog.records if "refused an offset" in r.getMessage()]
    assert max(_offsets(sim)) <= 10_000
    if listing == "liveness":
        assert learned == []
        return
    assert len(learned) == 1 and learned[0].learned_max_offset == 9_996
    # From then on: one unfiltered page for the count, then per status, never beyond the cap.
    unfiltered = [qs for _, qs in sim.requests if "status=" not in qs]
    assert unfiltered == ["limit=100&offset=0"]
