"""Golden output: the same upstream gives the same /probe bytes, scrape after scrape, release after release.

A deterministic stand-in (fixed seeds, a frozen wall clock) is scraped through the whole
app in several rounds (the account moves between them, so the encoder's caches are
exercised), in both listing modes and in each format Prometheus asks for. The bodies are
compared with tests/golden/probe.json.gz, written by the commit before a structural change:

    OMS_GOLDEN_WRITE=1 python -m pytest tests/test_golden.py

Only `oms_scrape_duration_seconds` (a measured time) is masked.
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from oms_exporter.clock import Clock
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Options, Settings
from oms_exporter.simulator import Evolution, add_groups_and_syncs, make_task, make_tasks
from oms_exporter.web import make_app
from tests.conftest import PROJECT, TOKEN, target_for
from tests.standin import StandIn

GOLDEN = Path(__file__).parent / "golden" / "probe.json.gz"
NOW = 1_765_000_000.0  # 2025-12-06: the frozen wall clock
ACCEPTS = {
    "text": "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "openmetrics": "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
    "text-dots": "text/plain;version=1.0.0;escaping=dots",
}
ROUNDS = 4
_DURATION = re.compile(rb"^(oms_+scrape_+duration_+seconds\{[^}]*\}) \S+$", re.M)


class FrozenWall(Clock):
    """Real monotonic time (deadlines work), a wall clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = NOW

    def time(self) -> float:
        return self.now


def _account(sim: StandIn, clock: FrozenWall) -> None:
    tasks = make_tasks(150, seed=21, now_ms=int(NOW * 1000) - 86_400_000 * 10)
    tasks[3]["name"] = 'quote "q" \\ line\nbreak'
    tasks[4]["bandwidth_policy"] = [{"start": "00:00", "end": "06:00", "max_bandwidth": 1.5e9},
                                    {"start": "06:00", "end": "23:00", "max_bandwidth": 0.0}]
    tasks[5]["progress"] = -0.0
    tasks[6]["total_size"] = 12345678901234567
    sim.add_project(PROJECT, tasks)
    add_groups_and_syncs(sim, PROJECT, now_ms=int(NOW * 1000))


def _move(sim: StandIn, evolution: Evolution, clock: FrozenWall, step: int) -> None:
    clock.now += 15
    evolution.advance(15)
    ids = sorted(sim.projects[PROJECT])
    sim.remove_task(PROJECT, ids[10 + step])  # a finished or live task deleted
    sim.put_task(PROJECT, make_task(random.Random(step), ids[-1] + 1, int(clock.now * 1000), status=5))


async def _bodies(aiohttp_client: Any, listing: str) -> dict[str, str]:
    clock = FrozenWall()
    sim = StandIn(tokens={TOKEN}, clock=clock.time)
    _account(sim, clock)
    evolution = Evolution(sim, PROJECT, seed=5)
    server = TestServer(sim.app())
    await server.start_server()
    try:
        # Full listing with every finished task's series: the largest body; liveness with the defaults.
        options = Options(listing=listing, finished_task_max_age=0 if listing == "full" else 7 * 86400.0)
        settings = Settings(options=options, targets=[target_for(server)])
        client = await aiohttp_client(make_app(settings, stats=SelfMetrics(), clock=clock))
        out = {}
        for step in range(ROUNDS):
            for style, accept in ACCEPTS.items():
                resp = await client.get("/probe?target=main", headers={"Accept": accept})
                assert resp.status == 200
                body = _DURATION.sub(rb"\1 MASKED", await resp.read())
                out[f"{listing}/{step}/{style}"] = body.decode()
            _move(sim, evolution, clock, step)
        return out
    finally:
        await server.close()


async def test_probe_bodies_are_the_golden_ones(aiohttp_client: Any) -> None:
    bodies: dict[str, str] = {}
    for listing in ("liveness", "full"):
        bodies.update(await _bodies(aiohttp_client, listing))
    assert "oms_task_group_info{" in bodies["liveness/0/text"] and "oms_sync_task_info{" in bodies["full/3/text"]
    if os.environ.get("OMS_GOLDEN_WRITE") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(gzip.compress(json.dumps(bodies, sort_keys=True, indent=0).encode(), mtime=0))
        pytest.skip(f"wrote {GOLDEN}")
    golden: dict[str, str] = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    assert sorted(bodies) == sorted(golden)
    for key in sorted(golden):
        if bodies[key] != golden[key]:
            diff = difflib.unified_diff(golden[key].splitlines(), bodies[key].splitlines(), "golden", "now",
                                        lineterm="", n=1)
            pytest.fail(f"{key} differs from the golden body:\n" + "\n".join(list(diff)[:40]))


def test_the_clock_is_frozen() -> None:
    clock = FrozenWall()
    before = clock.time()
    time.sleep(0.01)
    assert clock.time() == before == NOW
