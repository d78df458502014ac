"""Memory per kept task (issue 24, item 2): a finished task that gets no series is kept with what the
counts, the sums and the listing's decisions read of it, nothing more.

Measured with tracemalloc (Python's own allocations, attributed to the exporter's modules: the
records, the parser's memory of them, the listing's view), after two scrapes over HTTP of an
account of old succeeded tasks. The bound is about twice what is measured when written (514 B
per task; 647 B when a bare task was a Task, 1,505 B before finished tasks were kept bare): a
change that doubles it fails.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from typing import Any

import msgspec
import pytest

from oms_exporter.model import FAILED, SUCCEEDED, Task, bare, parse_task
from oms_exporter.simulator import make_task
from tests.conftest import PROJECT, scrape, value, values
from tests.standin import StandIn

N = 5000
BOUND = 1100  # bytes per kept finished task


def _old_account(sim: StandIn, n: int, status: int = SUCCEEDED) -> None:
    rng = random.Random(1)
    created = int((time.time() - 30 * 86400) * 1000)  # a month ago: no series by default (7 days)
    sim.clear(PROJECT)
    for i in range(n):
        sim.put_task(PROJECT, make_task(rng, i + 1, created - i * 60_000, status=status))


def _exporter_bytes() -> int:
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(True, "*/oms_exporter/*"), tracemalloc.Filter(False, "*/oms_exporter/simulator.py")])
    return sum(stat.size for stat in snap.statistics("filename"))


async def test_a_kept_finished_task_costs_at_most_about_a_kilobyte(sim: StandIn, exporter: Any) -> None:
    _old_account(sim, N)
    client = await exporter()
    tracemalloc.start()
    try:
        for _ in range(2):
            s = await scrape(client)
        per_task = _exporter_bytes() / N
    finally:
        tracemalloc.stop()
    assert value(s, "oms_tasks", project_id=PROJECT, status="succeeded") == N  # counted, summed
    assert not values(s, "oms_task_info")  # and no series, as before
    assert per_task <= BOUND, f"{per_task:.0f} bytes per kept finished task"


@pytest.mark.parametrize("options", [{}, {"per_task_series": False}, {"failed_task_max_age": 86400}],
                         ids=["succeeded", "no per-task series", "failed, with an age"])
async def test_bare_tasks_serve_the_same_figures_as_whole_ones(sim: StandIn, exporter: Any,
                                                               options: dict[str, Any]) -> None:
    """A listing of bare tasks serves what one of whole tasks (no task kept bare) serves."""
    _old_account(sim, 300, status=FAILED if "failed_task_max_age" in options else SUCCEEDED)
    bare = await scrape(await exporter(**options))
    whole_options = {**options, "finished_task_max_age": 0, "failed_task_max_age": 0, "per_task_series": True}
    whole = await scrape(await exporter(**whole_options))
    project = {k: v for k, v in bare.items() if k[0].startswith("oms_tasks")}
    assert project and project == {k: v for k, v in whole.items() if k[0].startswith("oms_tasks")}
    assert value(bare, "oms_clipped_records", project_id=PROJECT) == value(whole, "oms_clipped_records",
                                                                           project_id=PROJECT)


def test_a_bare_task_reads_as_the_task_it_keeps_for_every_field() -> None:
    """What a bare task keeps is the task's; every other field reads as a Task's default."""
    rng = random.Random(3)
    whole = parse_task(msgspec.json.encode(make_task(rng, 7, 1_700_000_000_000, status=FAILED)))
    kept, empty = bare(whole), Task(id=0)
    for name in Task.__struct_fields__:
        want = True if name == "bare" else getattr(whole if name in type(kept).__struct_fields__ else empty, name)
        assert getattr(kept, name) == want, name
    assert type(kept).__struct_fields__ != Task.__struct_fields__ and kept.ended_ms != empty.ended_ms
