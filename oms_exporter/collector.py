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

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oms_exporter.area import Area
from oms_exporter.catalog import AREAS, families, select
from oms_exporter.listing import Listing
from oms_exporter.snapshot import SeriesPolicy


class SnapshotCollector(Collector):
    """Yields the OMS metric families of a list of project listings, in catalog order."""

    def __init__(self, listings: Sequence[Listing], policy: SeriesPolicy, areas: Sequence[Area] = AREAS,
                 allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        """`allow`, `deny`: --metric-allowlist and --metric-denylist (catalog.select)."""
        self._listings = listings
        self._policy = policy
        self._areas = areas
        self._table = select(families(areas, tuple(sorted({k for lst in listings for k in lst.target.labels}))),
                             allow, deny)

    def collect(self) -> Iterator[Metric]:
        area_of = {area.kind: area.name for area in self._areas}
        records: dict[tuple[int, str], Sequence[Any] | None] = {}
        for family in self._table:
            fam = GaugeMetricFamily(family.name, family.help, labels=list(family.label_names))
            read = family.read
            for listing in self._listings:
                pid = listing.target.project_id
                if family.kind is None:
                    for labels, value in family.series(listing):
                        fam.add_metric([pid, *labels], value)
                    continue
                key = (id(listing), area_of[family.kind])
                if key not in records:
                    records[key] = self._policy.records(listing, key[1])
                for record in records[key] or ():
                    for labels, value in family.series(read(record)):
                        fam.add_metric([pid, str(record.id), *labels], value)
            yield fam
