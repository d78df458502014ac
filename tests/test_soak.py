"""Load and soak: many scrapes at once share one upstream listing; thousands in a row leak nothing.

The figures (time, RSS, file descriptors) are printed; run with `-s` to see them.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import resource
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from oms_exporter.simulator import Evolution, make_tasks
from oms_exporter.web import TIMEOUT_HEADER
from tests.conftest import PROJECT, Exporter, mib, open_fds, parse_metrics, rss_bytes, scrape, target_for, value
from tests.standin import StandIn

pytestmark = pytest.mark.slow  # thousands of scrapes


async def test_200_concurrent_scrapes_share_one_listing(sim: StandIn, exporter: Exporter) -> None:
    sim.latency = 0.5  # the listing is in flight while all 200 scrapes arrive
    client = await exporter(listing="full")  # three pages: one listing's requests are easy to tell
    gc.collect()
    rss_before = rss_bytes()
    up_line = f'oms_up{{project_id="{PROJECT}"}} 1.0'
    # A connector without a connection limit: the 200 scrapes are really concurrent.
    # Answers are read as Prometheus gets them (gzip) and only the first one is unpacked, so
    # that RSS measures the exporter rather than 200 decoded copies held by the test.
    bodies: list[bytes] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False) as session:
        async def one() -> tuple[int, bool]:
            async with session.get(client.make_url("/metrics"),
                                   headers={TIMEOUT_HEADER: "10", "Accept-Encoding": "gzip"}) as resp:
                body = await resp.read()
                if not bodies:
                    bodies.append(gzip.decompress(body))
                return resp.status, resp.headers.get("Content-Encoding") == "gzip"

        started = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(200)))
        elapsed = time.monotonic() - started
    gc.collect()
    rss_after = rss_bytes()
    s = parse_metrics(bodies[0].decode())
    listings = value(s, "oms_listings_total", project_id=PROJECT)
    print(f"\n200 concurrent scrapes: {elapsed:.2f}s, upstream listings {listings:g}, "
          f"ListTasks requests {len(sim.requests)}, RSS {mib(rss_before)} -> {mib(rss_after)} "
          f"(+{mib(rss_after - rss_before)}), "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    assert results == [(200, True)] * 200
    assert up_line in bodies[0].decode()
    assert listings == 1
    assert len(sim.requests) == 3  # 250 tasks, 100 per page: one listing's pages, once
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert sum(v for (n, _), v in s.items() if n == "oms_tasks") == 250
    # One encoded body is shared by all 200 answers (~1 MB each if each scrape built its own).
    assert rss_after - rss_before < 40 * 2**20


SOAK_PROJECT = "p00000000000000000000000000soak1"
SOAK_SCRAPES = 2000
SOAK_TASKS = 25
WARMUP = 300


async def test_2000_scrapes_in_a_row_leak_neither_memory_nor_fds(
        sim: StandIn, oms: TestServer, exporter: Exporter) -> None:
    """Scrapes against tasks that keep moving, with a fault now and then to exercise the error paths."""
    sim.add_project(SOAK_PROJECT, make_tasks(SOAK_TASKS, seed=11))
    evolution = Evolution(sim, SOAK_PROJECT, seed=5)
    client: TestClient = await exporter(targets=[target_for(oms, name="soak", project_id=SOAK_PROJECT)])
    up_line = f'oms_up{{project_id="{SOAK_PROJECT}"}}'
    outcomes = {"1.0": 0, "0.0": 0}

    async def scrape(i: int) -> None:
        # Tasks move, new ones appear and the oldest go away: series come and go, the size stays.
        evolution.advance(1.0)
        tasks = sim.projects[SOAK_PROJECT]
        while len(tasks) > SOAK_TASKS:
            sim.remove_task(SOAK_PROJECT, min(tasks))
        sim.faults.clear()
        if i % 50 == 17:
            sim.inject(status=503, times=1000)
        elif i % 50 == 33:
            sim.inject(reset=True, times=1000)
        async with session.get(url, headers={TIMEOUT_HEADER: "5", "Accept-Encoding": "gzip"}) as resp:
            text = await resp.text()
            assert resp.status == 200
        line = text[text.index(up_line):].split("\n", 1)[0]
        outcomes[line.rsplit(" ", 1)[1]] += 1

    # A plain session: the test client keeps every response until it closes.
    session = aiohttp.ClientSession()
    url = client.make_url("/metrics")
    started = time.monotonic()
    for i in range(WARMUP):
        await scrape(i)
    gc.collect()
    rss0, fds0, t0 = rss_bytes(), open_fds(), time.monotonic()
    fd_counts = []
    for i in range(WARMUP, SOAK_SCRAPES):
        await scrape(i)
        if i % 100 == 0:
            fd_counts.append(len(open_fds()))
    gc.collect()
    rss1, fds1, t1 = rss_bytes(), open_fds(), time.monotonic()
    async with session.get(url) as resp:
        s = parse_metrics(await resp.text())
    await session.close()
    per_scrape = (t1 - t0) / (SOAK_SCRAPES - WARMUP)
    print(f"\nsoak: {SOAK_SCRAPES} scrapes in {t1 - started:.1f}s ({per_scrape * 1000:.1f} ms each after warm-up), "
          f"up {outcomes['1.0']} / down {outcomes['0.0']}, tasks now {len(sim.projects[SOAK_PROJECT])}; "
          f"RSS after {WARMUP} scrapes {mib(rss0)}, after {SOAK_SCRAPES} {mib(rss1)} "
          f"({(rss1 - rss0) / rss0:+.1%}); open fds {len(fds0)} -> {len(fds1)} (every 100 scrapes: "
          f"{min(fd_counts)}..{max(fd_counts)})")
    assert t1 - started < 60, "2,000 scrapes took over a minute"
    assert outcomes["0.0"] == 2 * SOAK_SCRAPES // 50 and outcomes["1.0"] == SOAK_SCRAPES - outcomes["0.0"]
    assert value(s, "oms_scrape_errors_total", project_id=SOAK_PROJECT, reason="http_5xx") == SOAK_SCRAPES // 50
    assert value(s, "oms_scrape_errors_total", project_id=SOAK_PROJECT, reason="network") == SOAK_SCRAPES // 50
    assert abs(rss1 - rss0) <= 0.10 * rss0, f"RSS moved {(rss1 - rss0) / rss0:+.1%} over {SOAK_SCRAPES} scrapes"
    # Keep-alive pools hold zero or one connection per hop at any moment (both ends of a
    # loopback connection are this process): one pair of sockets either way, no more.
    assert max(fd_counts + [len(fds1)]) <= len(fds0) + 2, (fds0, fds1, fd_counts)


async def test_gc_policy_is_the_command_line_s_and_is_undone_after(
        oms: TestServer, aiohttp_client: Any) -> None:
    """The app factory changes nothing process-wide; cli.main's gc_policy (start-up objects
    frozen, a larger young generation) holds while the app runs and is undone at stop."""
    from oms_exporter.cli import GC_YOUNG_THRESHOLD, gc_policy
    from oms_exporter.metrics import SelfMetrics
    from oms_exporter.settings import Options, Settings
    from oms_exporter.web import make_app

    before = gc.get_threshold()
    assert before[0] != GC_YOUNG_THRESHOLD and gc.get_freeze_count() == 0
    settings = Settings(options=Options(), targets=[target_for(oms)])
    client = await aiohttp_client(make_app(settings, stats=SelfMetrics()))
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    await client.close()
    app = make_app(settings, stats=SelfMetrics())
    app.cleanup_ctx.append(gc_policy)
    client = await aiohttp_client(app)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() > 10_000
    assert value(await scrape(client), "oms_up", project_id=PROJECT) == 1
    await client.close()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
