"""Listings -> metric families, with prometheus_client's own types: the reference output.

Pure: no I/O, no clock, no state between scrapes; built fresh for every scrape, so a task
that vanished upstream vanishes from /metrics. The fast encoder (`exposition.py`) must write
exactly what prometheus_client writes for this collector; the tests compare the two. For one
project `p` with one migrating task 7 named "a", it yields lines such as:

    oms_up{project_id="p"} 1.0
    oms_tasks{project_id="p",status="migrating"} 1.0
    oms_task_info{project_id="p",task_id="7",name="a",...} 1.0
    oms_task_status{project_id="p",task_id="7",status="migrating"} 1.0
    oms_task_progress_ratio{project_id="p",task_id="7"} 0.52
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter, ge
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oms_exporter.lister import Listing
from oms_exporter.metrics import FAMILIES, GROUP, SYNC, TASK, Kind
from oms_exporter.model import FAILED, SUCCEEDED, Task

_ended = attrgetter("ended_ms")
_status = attrgetter("status")


@dataclass(frozen=True, slots=True)
class SeriesPolicy:
    """Which tasks get per-task series (all of them still count in oms_tasks and the oms_tasks_* totals).

    A succeeded task that ended more than `finished_task_max_age` ago has none. A failed task
    keeps its series while it is failed (OmsTaskFailed reads them), unless `failed_task_max_age`
    is set too. 0 turns a rule off.
    """

    per_task_series: bool = True
    finished_task_max_age: float = 7 * 86400.0  # seconds, for succeeded tasks
    failed_task_max_age: float = 0.0  # seconds, for failed tasks

    def exported(self, listing: Listing) -> Sequence[Task]:
        if not self.per_task_series or not listing.up:
            return []
        limits = {SUCCEEDED: self.finished_task_max_age, FAILED: self.failed_task_max_age}
        if not any(limits.values()):
            return listing.tasks
        now_ms = listing.taken_at * 1000
        # The oldest end a task in each state may have (-inf: no limit); in C, task by task.
        oldest = defaultdict(lambda: -math.inf, {code: now_ms - age * 1000 for code, age in limits.items() if age})
        tasks = listing.tasks
        return list(compress(tasks, map(ge, map(_ended, tasks), map(oldest.__getitem__, map(_status, tasks)))))

    def records(self, listing: Listing, kind: Kind) -> Sequence[Any] | None:
        """The records of `kind` of a listing that get series; None when that area was not listed
        (failed, switched off, not offered), which serves none and keeps what the encoder cached."""
        if kind is TASK:
            return self.exported(listing) if listing.up else None
        if kind is GROUP:
            return listing.groups
        if kind is SYNC:
            return listing.sync_tasks
        raise ValueError(f"no records of kind {kind.name}")


class SnapshotCollector(Collector):
    """Yields the OMS metric families of a list of project listings, in the order of FAMILIES."""

    def __init__(self, listings: Sequence[Listing], policy: SeriesPolicy) -> None:
        self._listings = listings
        self._policy = policy

    def collect(self) -> Iterator[Metric]:
        records: dict[tuple[int, Kind], Sequence[Any] | None] = {}
        for family in FAMILIES:
            fam = GaugeMetricFamily(family.name, family.help, labels=list(family.label_names))
            read = family.read
            for listing in self._listings:
                pid = listing.target.project_id
                if family.kind is None:
                    for labels, value in family.series(listing):
                        fam.add_metric([pid, *labels], value)
                    continue
                key = (id(listing), family.kind)
                if key not in records:
                    records[key] = self._policy.records(listing, family.kind)
                for record in records[key] or ():
                    for labels, value in family.series(read(record)):
                        fam.add_metric([pid, str(record.id), *labels], value)
            yield fam
