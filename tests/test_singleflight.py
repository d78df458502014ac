"""Concurrent scrapes share one upstream listing and, per content type and encoding, one body."""

from __future__ import annotations

import asyncio
import gzip

import pytest
from aiohttp.test_utils import TestClient

from oms_exporter.web import TIMEOUT_HEADER, WRITE_PIECE
from tests.conftest import PROJECT, Exporter, ManualClock, Samples, parse_metrics, scrape, value, wait_until
from tests.standin import StandIn

OM = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"
PAGES = 3  # 250 tasks of the `sim` fixture, 100 per page


def listings(s: Samples) -> float:
    return value(s, "oms_listings_total", project_id=PROJECT)


def encodes(s: Samples) -> float:
    return value(s, "oms_exporter_encodes_total")


async def burst(client: TestClient, n: int, **headers: str) -> list[tuple[bytes, dict[str, str]]]:
    async def one() -> tuple[bytes, dict[str, str]]:
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 200
        return await resp.read(), dict(resp.headers)

    return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("listing", ["liveness", "full"])
async def test_fifty_concurrent_scrapes_one_listing_one_body(sim: StandIn, exporter: Exporter, listing: str) -> None:
    client = await exporter(finished_task_max_age=0, listing=listing)
    await scrape(client)  # warm-up: the lister learns the counts
    sim.requests.clear()
    first = await scrape(client)
    one_listing = len(sim.requests)  # what one listing asks OMS, once warm
    assert one_listing == (PAGES if listing == "full" else 8)  # liveness: 5 live states, 2 finished, the total
    sim.requests.clear()
    sim.latency = 0.2  # long enough that every scrape arrives while the listing is in flight

    results = await burst(client, 50, **{"Accept-Encoding": "identity"})

    assert len(sim.requests) == one_listing
    bodies = {body for body, _ in results}
    # Each body counts what was done for it: one more listing and one more encode than before.
    shared = parse_metrics(next(iter(bodies)).decode())
    assert listings(shared) == listings(first) + 1 and encodes(shared) == encodes(first) + 1
    assert len(bodies) == 1
    # Written in pieces, taking turns with the other scrapes: each arrives whole, with its length.
    assert len(next(iter(bodies))) > 3 * WRITE_PIECE
    assert all(int(headers["Content-Length"]) == len(body) for body, headers in results)
    samples = parse_metrics(bodies.pop().decode())
    assert value(samples, "oms_up") == 1
    assert sum(v for (n, _), v in samples.items() if n == "oms_tasks") == 250


async def test_one_body_per_content_type_and_encoding(sim: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0, listing="full")
    first = await scrape(client)
    sim.requests.clear()
    sim.latency = 0.2

    text, om, zipped = await asyncio.gather(
        burst(client, 10, **{"Accept-Encoding": "identity"}),
        burst(client, 10, Accept=OM, **{"Accept-Encoding": "identity"}),
        burst(client, 10, **{"Accept-Encoding": "gzip"}))

    assert len(sim.requests) == PAGES
    sim.latency = 0
    after = await scrape(client)  # one listing and one encode of its own
    assert listings(after) == listings(first) + 2
    assert encodes(after) == encodes(first) + 3 + 1
    for group in (text, om, zipped):
        assert len({body for body, _ in group}) == 1
    assert text[0][1]["Content-Type"].startswith("text/plain; version=0.0.4")
    assert om[0][1]["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om[0][0].endswith(b"# EOF\n")
    # aiohttp's client undoes the gzip; the header says it was there.
    assert zipped[0][1].get("Content-Encoding") == "gzip"
    # Same OMS text (the exporter's own metrics after it move on between the two encodes).
    assert zipped[0][0].split(b"# HELP process_")[0] == text[0][0].split(b"# HELP process_")[0]


async def test_gzip_on_the_wire(sim: StandIn, exporter: Exporter) -> None:
    client = await exporter()
    resp = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    raw = await resp.read()
    assert resp.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(raw).decode()
    assert value(parse_metrics(text), "oms_up") == 1
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers


async def test_a_scrape_that_goes_away_does_not_break_the_others(sim: StandIn, exporter: Exporter) -> None:
    client = await exporter()
    first = await scrape(client)
    sim.latency = 0.2

    leaver = asyncio.create_task(client.get("/metrics"))
    stayers = asyncio.create_task(burst(client, 5))
    await asyncio.sleep(0.05)
    leaver.cancel()
    results = await stayers

    assert all(value(parse_metrics(body.decode()), "oms_up") == 1 for body, _ in results)
    assert {listings(parse_metrics(body.decode())) for body, _ in results} == {listings(first) + 1}


async def test_sequential_scrapes_list_again(sim: StandIn, exporter: Exporter) -> None:
    """Sharing is for scrapes in flight together: the next scrape sees fresh data."""
    client = await exporter()
    first = await scrape(client)
    live = next(tid for tid, t in sim.projects[PROJECT].items() if t["status"] == 2)
    sim.patch_task(PROJECT, live, name="renamed")
    resp = await client.get("/metrics")
    text = await resp.text()
    assert 'name="renamed"' in text
    assert listings(parse_metrics(text)) == listings(first) + 1


async def test_head_sends_the_headers_only(sim: StandIn, exporter: Exporter) -> None:
    """HEAD: the length of the body GET would send, no body; the connection stays usable."""
    client = await exporter(finished_task_max_age=0, min_interval=60)  # one listing for both
    get = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    body = await get.read()
    head = await client.head("/metrics", headers={"Accept-Encoding": "identity"})
    assert head.status == 200 and await head.read() == b""
    # The same listing; only the exporter's own metrics (process CPU, ...) may differ by a few bytes.
    assert abs(int(head.headers["Content-Length"]) - len(body)) < 1000 and len(body) > 3 * WRITE_PIECE
    again = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert value(parse_metrics((await again.read()).decode()), "oms_up") == 1


async def test_a_short_deadline_never_fails_a_scrape_that_has_time_left(sim: StandIn, exporter: Exporter,
                                                                       clock: ManualClock) -> None:
    """Deadline poisoning: a client asking for 0.6 s starts the listing; a scrape with 10 s that
    joins it gets a listing of its own time when the shared one fails at the short deadline."""
    client = await exporter(timeout_offset=0.1)
    warm = listings(await scrape(client))
    sim.gate = asyncio.Event()  # OMS answers nothing until the short deadline has passed
    short = asyncio.create_task(client.get("/metrics", headers={TIMEOUT_HEADER: "0.6"}))
    await wait_until(lambda: sim.in_flight, "the short scrape's listing waits for OMS")
    joined = asyncio.create_task(scrape(client, **{TIMEOUT_HEADER: "10"}))
    await wait_until(lambda: max(clock.deadlines(), default=0) > clock.monotonic() + 5,
                     "the 10 s scrape joins the listing")
    clock.advance(0.6)  # past the short deadline: the shared listing fails for want of time
    await wait_until(short.done, "the short scrape is answered")
    sim.gate.set()
    normal = await joined
    assert value(normal, "oms_up", project_id=PROJECT) == 1
    assert sum(v for (n, _), v in normal.items() if n == "oms_tasks") == 250
    failed = parse_metrics(await (await short).text())
    assert value(failed, "oms_up", project_id=PROJECT) == 0
    # The short scrape's failure is counted once; the scrape that had time listed again.
    assert value(normal, "oms_scrape_errors_total", project_id=PROJECT, reason="timeout") == 1
    assert listings(normal) == warm + 2


async def test_a_shared_listing_that_failed_upstream_is_not_listed_again(sim: StandIn, exporter: Exporter,
                                                                        clock: ManualClock) -> None:
    """Only a failure for want of time is listed again for a later deadline: a 503 is OMS's
    answer, and asking again at once would double the load on it."""
    client = await exporter(timeout_offset=0.1)
    warm = listings(await scrape(client))
    sim.gate = asyncio.Event()  # OMS answers nothing until the later scrape has joined
    sim.inject(status=503, times=100_000, api="*")
    first = asyncio.create_task(client.get("/metrics", headers={TIMEOUT_HEADER: "3"}))
    await wait_until(lambda: sim.in_flight, "the first scrape's listing waits for OMS")
    joined = asyncio.create_task(scrape(client, **{TIMEOUT_HEADER: "10"}))
    await wait_until(lambda: max(clock.deadlines(), default=0) > clock.monotonic() + 5,
                     "the later scrape joins the listing")
    sim.gate.set()
    later = await joined
    assert value(later, "oms_up", project_id=PROJECT) == 0
    assert value(parse_metrics(await (await first).text()), "oms_up", project_id=PROJECT) == 0
    assert listings(later) == warm + 1
