"""Snapshot -> metric families. Pure: no I/O, no clock, no state between scrapes.

Built fresh for every scrape, so a task that vanished upstream vanishes from /metrics.
For one project `p` with one migrating task 7 named "a", it yields lines such as:

    oms_up{project_id="p"} 1.0
    oms_tasks{project_id="p",status="migrating"} 1.0
    oms_task_info{project_id="p",task_id="7",name="a",...} 1.0
    oms_task_status{project_id="p",task_id="7",status="migrating"} 1.0
    oms_task_progress_ratio{project_id="p",task_id="7"} 0.52
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oms_exporter import metrics as m
from oms_exporter.lister import Listing
from oms_exporter.model import FAILED, STATUS_NAMES, SUCCEEDED, Task


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

    def exported(self, listing: Listing) -> list[Task]:
        if not self.per_task_series or not listing.up:
            return []
        limits = {SUCCEEDED: self.finished_task_max_age, FAILED: self.failed_task_max_age}
        if not any(limits.values()):
            return listing.tasks
        now_ms = listing.taken_at * 1000
        oldest = {code: now_ms - age * 1000 for code, age in limits.items() if age}
        out = []
        for t in listing.tasks:
            ended = t.finished_at_ms()
            if ended is None or t.status not in oldest or ended >= oldest[t.status]:
                out.append(t)
        return out


def _g(name: str, help_text: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, labels=list(labels))


class SnapshotCollector(Collector):
    """Yields the OMS metric families of a list of project listings."""

    def __init__(self, listings: Sequence[Listing], policy: SeriesPolicy) -> None:
        self._listings = listings
        self._policy = policy

    def collect(self) -> Iterator[Metric]:
        up = _g(m.UP, m.UP_HELP, m.PROJECT_LABELS)
        duration = _g(m.SCRAPE_DURATION, m.SCRAPE_DURATION_HELP, m.PROJECT_LABELS)
        counts = _g(m.TASKS, m.TASKS_HELP, ("project_id", "status"))
        malformed = _g(m.MALFORMED_TASKS, m.MALFORMED_TASKS_HELP, m.PROJECT_LABELS)
        taken = _g(m.LISTING_TIMESTAMP, m.LISTING_TIMESTAMP_HELP, m.PROJECT_LABELS)
        totals = [_g(t.name, t.help, ("project_id", "status")) for t in m.TASK_TOTALS]
        for listing in self._listings:
            pid = listing.target.project_id
            up.add_metric([pid], 1 if listing.up else 0)
            duration.add_metric([pid], listing.duration)
            if listing.up:
                for code, n in listing.status_counts().items():
                    counts.add_metric([pid, STATUS_NAMES[code]], n)
                malformed.add_metric([pid], listing.malformed)
                taken.add_metric([pid], listing.taken_at)
                for code, sums in listing.status_totals().items():
                    for fam, total in zip(totals, sums):
                        fam.add_metric([pid, STATUS_NAMES[code]], total)
        yield from (up, duration, counts, malformed, taken, *totals)

        exported = [(lst.target.project_id, self._policy.exported(lst)) for lst in self._listings]
        yield self._info(exported)
        yield from self._status(exported)
        for gauge in m.TASK_GAUGES:
            fam = _g(gauge.name, gauge.help, m.TASK_LABELS)
            for pid, tasks in exported:
                for t in tasks:
                    v = getattr(t, gauge.attr)
                    if v is not None:
                        fam.add_metric([pid, str(t.id)], v * gauge.scale if gauge.scale != 1 else v)
            yield fam
        yield from self._bandwidth_and_errors(exported)

    @staticmethod
    def _info(exported: list[tuple[str, list[Task]]]) -> Metric:
        fam = _g(m.TASK_INFO, m.TASK_INFO_HELP, m.TASK_LABELS + tuple(n for n, _ in m.TASK_INFO_LABELS))
        for pid, tasks in exported:
            for t in tasks:
                fam.add_metric([pid, str(t.id)] + [getattr(t, a) for _, a in m.TASK_INFO_LABELS], 1)
        return fam

    @staticmethod
    def _status(exported: list[tuple[str, list[Task]]]) -> Iterator[Metric]:
        status = _g(m.TASK_STATUS, m.TASK_STATUS_HELP, ("project_id", "task_id", "status"))
        code = _g(m.TASK_STATUS_CODE, m.TASK_STATUS_CODE_HELP, m.TASK_LABELS)
        for pid, tasks in exported:
            for t in tasks:
                if t.status is None:
                    continue
                tid = str(t.id)
                for c, name in STATUS_NAMES.items():
                    status.add_metric([pid, tid, name], 1 if c == t.status else 0)
                code.add_metric([pid, tid], t.status)
        yield status
        yield code

    @staticmethod
    def _bandwidth_and_errors(exported: list[tuple[str, list[Task]]]) -> Iterator[Metric]:
        bw = _g(m.TASK_BANDWIDTH, m.TASK_BANDWIDTH_HELP, m.TASK_BANDWIDTH_LABELS)
        err = _g(m.TASK_ERROR_INFO, m.TASK_ERROR_INFO_HELP, m.TASK_ERROR_INFO_LABELS)
        for pid, tasks in exported:
            for t in tasks:
                tid = str(t.id)
                for w in t.bandwidth:
                    assert w.max_bandwidth is not None  # Task.__post_init__ keeps only windows with a limit
                    bw.add_metric([pid, tid, w.start, w.end], w.max_bandwidth)
                if t.error_code or t.error_msg:
                    err.add_metric([pid, tid, t.error_code, t.error_msg], 1)
        yield bw
        yield err
