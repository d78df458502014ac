"""Every metric family the exporter serves, in one table, and the exporter's own metrics.

`FAMILIES` declares, in output order, each OMS family: its name, help, labels, and how its
series are read from a project's listing or from one record. The encoder
(`exposition.py`), the reference collector (`collector.py`), the README's metrics table
and the tests all read this table, so a new family is one entry here. `SelfMetrics` holds
the counters of the exporter's own work (requests, failures, listings, encodes).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from oms_exporter import __version__
from oms_exporter.model import GROUP_STATUS_NAMES, STATUS_NAMES, SYNC_STATUS_NAMES, Task

if TYPE_CHECKING:
    from oms_exporter.lister import Listing

Series = Iterable[tuple[Sequence[str], float]]  # (label values after the owner's ids, value)


@dataclass(frozen=True, slots=True)
class Kind:
    """What a per-record family reads one instance of: its records are keyed by `id_label`."""

    name: str
    id_label: str


TASK = Kind("task", "task_id")
GROUP = Kind("task_group", "group_id")
SYNC = Kind("sync_task", "sync_task_id")


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family (all gauges): name, help, labels, and how its series are read.

    A project family (`kind` None) reads a `Listing`: `series(listing)`. A record family
    reads the record `fields` of one record of `kind`: `series(read(record))`, where `read`
    gives the field's value, or a tuple of them for several; its labels start with
    `project_id` and the record's id label. The encoder re-renders a record's family only
    when what it reads changed (`strict`: numbers inside what it reads are compared by how
    they are written too, since 0.0 == -0.0).
    """

    name: str
    help: str
    labels: tuple[str, ...]  # label names after project_id and the record's id label
    kind: Kind | None
    series: Callable[[Any], Series]
    fields: tuple[str, ...] = ()  # the record fields a record family reads
    divisor: float = 1.0  # a gauge of one numeric field: the value divided by this (ms -> s: 1000)
    strict: bool = False
    source: str = ""  # README: where the value comes from
    example: str = ""  # README: a PromQL example

    @property
    def label_names(self) -> tuple[str, ...]:
        return ("project_id", *((self.kind.id_label,) if self.kind else ()), *self.labels)

    @property
    def read(self) -> Callable[[Any], Any]:
        return attrgetter(*self.fields) if self.fields else (lambda listing: listing)

    @property
    def gauge(self) -> bool:
        """A gauge of one numeric record field, no labels of its own (the encoder's fast path)."""
        return (self.kind is not None and len(self.fields) == 1 and not self.labels
                and (self.series, self.divisor) in _GAUGE_SERIES)


def _scalar(v: float | None) -> Series:
    return () if v is None else (((), v),)


def _milliseconds(v: float | None) -> Series:
    # Divided, not multiplied by 0.001: 1764000000123 ms is 1764000000.123 s, not ...0.1230001.
    return () if v is None else (((), v / MS),)


MS = 1000.0  # milliseconds per second
_GAUGE_SERIES = ((_scalar, 1.0), (_milliseconds, MS))  # what the encoder writes as value / divisor


def gauge(name: str, help_text: str, field: str, *, kind: Kind = TASK, ms: bool = False,
          source: str = "", example: str = "") -> Family:
    """A record's numeric field (`ms`: milliseconds, served as seconds); no series when the field
    is absent or null (never an invented 0)."""
    return Family(name, help_text, (), kind, _milliseconds if ms else _scalar, (field,), MS if ms else 1.0,
                  source=source, example=example)


def record(name: str, help_text: str, labels: tuple[str, ...], fields: tuple[str, ...],
           series: Callable[[Any], Series], *, kind: Kind = TASK, strict: bool = False,
           source: str = "", example: str = "") -> Family:
    return Family(name, help_text, labels, kind, series, fields, strict=strict, source=source, example=example)


def project(name: str, help_text: str, labels: tuple[str, ...], series: Callable[[Listing], Series], *,
            source: str = "", example: str = "") -> Family:
    return Family(name, help_text, labels, None, series, source=source, example=example)


def _clipped(records: Iterable[Any]) -> int:
    return sum(map(_is_clipped, records))


_is_clipped = attrgetter("clipped")


def _when_up(series: Callable[[Listing], Series]) -> Callable[[Listing], Series]:
    """Series only for a listing that succeeded: a failed one never passes partial data off as whole."""
    return lambda listing: series(listing) if listing.up else ()


def _state_set(names: Mapping[Any, str]) -> Callable[[Any], Series]:
    """One series per state: 1 for the one the record is in; none while it reports no state."""
    def series(status: Any) -> Series:
        return () if status is None else [((name,), 1 if code == status else 0) for code, name in names.items()]
    return series


def _records_per_state(records: Callable[[Listing], Sequence[Any] | None], names: Mapping[Any, str]
                       ) -> Callable[[Listing], Series]:
    def series(listing: Listing) -> Series:
        found = records(listing)
        if found is None:
            return ()
        n = collections.Counter(r.status for r in found)
        return [((name,), n[code]) for code, name in names.items()]
    return series


def _per_state(pick: Callable[[Listing], Mapping[int, float]]) -> Callable[[Listing], Series]:
    return _when_up(lambda listing: [((STATUS_NAMES[code],), n) for code, n in pick(listing).items()])


SYNC_RESULTS = ("requested", "succeeded", "failed", "skipped")  # oms_sync_task_monthly_objects{result}
TASK_INFO_LABELS = (  # (label, Task attribute) in label order
    ("name", "name"), ("group_id", "group_id"), ("group_type", "group_type"), ("task_type", "task_type"),
    ("priority", "priority"), ("src_cloud", "src_cloud"), ("src_region", "src_region"),
    ("src_bucket", "src_bucket"), ("dst_region", "dst_region"), ("dst_bucket", "dst_bucket"),
)
# (family, TaskResp field, help) of the per-project, per-state sums over every listed task.
TASK_TOTALS = (
    ("oms_tasks_size_bytes", "total_size", "bytes to migrate"),
    ("oms_tasks_completed_bytes", "complete_size", "bytes processed"),
    ("oms_tasks_migrated_bytes", "real_size", "bytes migrated, skipped objects excluded"),
    ("oms_tasks_objects", "total_num", "objects to migrate"),
    ("oms_tasks_objects_succeeded", "successful_num", "objects migrated"),
    ("oms_tasks_objects_failed", "failed_num", "objects that failed"),
    ("oms_tasks_objects_skipped", "skipped_num", "objects skipped"),
    ("oms_tasks_speed_bytes_per_second", "migrate_speed", "bytes per second"),
)
TASK_TOTAL_FIELDS = tuple(field for _, field, _ in TASK_TOTALS)


def _total(i: int) -> Callable[[Listing], Series]:
    return _per_state(lambda listing: {code: sums[i] for code, sums in listing.totals.items()})


FAMILIES: tuple[Family, ...] = (
    # --- per project -------------------------------------------------------------------------
    project("oms_up", "1 when the last listing of every task of the project succeeded, 0 otherwise.", (),
            lambda listing: (((), 1 if listing.up else 0),),
            source="per project: 1 when the whole listing succeeded", example="`oms_up == 0`"),
    project("oms_scrape_duration_seconds", "How long listing the project's tasks took.", (),
            lambda listing: (((), listing.duration),),
            source="per project: listing time", example="`max_over_time(oms_scrape_duration_seconds[1h])`"),
    project("oms_tasks", "Number of tasks of the project in each state, from the full listing.", ("status",),
            _per_state(lambda listing: listing.counts),
            source="per project: tasks per state, all 7 always present", example="`sum by (status) (oms_tasks)`"),
    *(project(name, f"Sum of {field} ({what}) of every task of the project in each state, from the full "
                    "listing, whatever the per-task series filters (absent values count as 0).",
              ("status",), _total(i),
              source=f"per project and state: the sum of `{field}` over **every** listed task",
              example=f"`sum by (project_id) ({name})`")
      for i, (name, field, what) in enumerate(TASK_TOTALS)),
    project("oms_malformed_tasks", "Task records in the last listing that could not be read and were skipped.", (),
            _when_up(lambda listing: (((), listing.malformed),)),
            source="per project: records skipped in the last listing", example="`oms_malformed_tasks > 0`"),
    project("oms_clipped_records", "Records of the last listing (tasks, task groups, sync tasks) with a value cut "
            "to the exporter's limits: label values to 1024 characters, error messages to 512, bandwidth windows "
            "to 5 per task.", (),
            _when_up(lambda listing: (((), _clipped(listing.tasks) + _clipped(listing.groups or ())
                                       + _clipped(listing.sync_tasks or ())),)),
            source="per project: records with a value cut to the exporter's limits (see *Failure modes*)",
            example="`oms_clipped_records > 0`"),
    project("oms_finished_tasks_listed_timestamp_seconds",
            "Unix time the project's finished tasks (failed, succeeded) were last listed in full. Between full "
            "listings they are kept exact by their counts and by following the tasks that leave the live states, "
            "and listed in full again when a count does not add up, and at least every "
            "--oms.finished-refresh-interval (default 15m). With --oms.listing=full: the listing's start.", (),
            _when_up(lambda listing: () if listing.finished_listed_at is None
                     else (((), listing.finished_listed_at),)),
            source="per project: when the finished tasks were last listed in full (with `--oms.listing=liveness`, "
                   "at least every `--oms.finished-refresh-interval`)",
            example="`time() - oms_finished_tasks_listed_timestamp_seconds > 1200`"),
    project("oms_listing_timestamp_seconds",
            "Unix time the listing these series come from was started. With --oms.min-interval a listing "
            "younger than that interval is served again instead of asking OMS: time() - this is how old "
            "the data is.", (), _when_up(lambda listing: (((), listing.taken_at),)),
            source="per project: when the served listing was started (with `--oms.min-interval` a listing is "
                   "served again until it is that old)",
            example="`time() - oms_listing_timestamp_seconds`"),
    # --- per task ----------------------------------------------------------------------------
    record("oms_task_info", "Static facts of an OMS migration task; the value is always 1.",
           tuple(label for label, _ in TASK_INFO_LABELS), tuple(attr for _, attr in TASK_INFO_LABELS),
           lambda facts: ((facts, 1),), source="static facts, value 1", example='`oms_task_info{src_cloud="AWS"}`'),
    record("oms_task_status", "Current state of an OMS task: 1 for the state it is in, 0 for the other six.",
           ("status",), ("status",), _state_set(STATUS_NAMES),
           source="`status`: one series per state (waiting, migrating, paused, failed, succeeded, retrying, "
                  "pausing), 1 for the current", example='`oms_task_status{status="failed"} == 1`'),
    record("oms_task_status_code", "Raw OMS task status code: 1 waiting, 2 migrating, 3 paused, 4 failed, "
                                   "5 succeeded, 6 retrying, 7 pausing.", (), ("status",), _scalar,
           source="`status` (1..7)", example="`oms_task_status_code` (Grafana state timeline)"),
    gauge("oms_task_progress_ratio", "Task progress from 0 to 1 (TaskResp.progress).", "progress",
          source="`progress` (0..1)",
          example="`oms_task_progress_ratio * on(project_id, task_id) group_left(name) oms_task_info`"),
    gauge("oms_task_speed_bytes_per_second", "Current migration speed in bytes per second (migrate_speed).",
          "migrate_speed", source="`migrate_speed`",
          example="`sum by (project_id) (oms_task_speed_bytes_per_second)`"),
    gauge("oms_task_objects", "Objects the task has to migrate (total_num).", "total_num",
          source="`total_num`", example="`sum(oms_task_objects)`"),
    gauge("oms_task_objects_succeeded", "Objects migrated successfully (successful_num).", "successful_num",
          source="`successful_num`", example="`oms_task_objects_succeeded / oms_task_objects`"),
    gauge("oms_task_objects_failed", "Objects that failed to migrate (failed_num).", "failed_num",
          source="`failed_num`", example="`increase(oms_task_objects_failed[30m]) > 0`"),
    gauge("oms_task_objects_skipped", "Objects skipped, e.g. already present at the destination (skipped_num).",
          "skipped_num", source="`skipped_num`", example="`topk(10, oms_task_objects_skipped)`"),
    gauge("oms_task_size_bytes", "Bytes the task has to migrate (total_size).", "total_size",
          source="`total_size`", example="`sum by (project_id) (oms_task_size_bytes)`"),
    gauge("oms_task_completed_bytes", "Bytes of objects processed so far (complete_size).", "complete_size",
          source="`complete_size`", example="`oms_task_completed_bytes / oms_task_size_bytes`"),
    gauge("oms_task_migrated_bytes", "Bytes actually migrated, skipped objects excluded (real_size).", "real_size",
          source="`real_size`", example="`rate(oms_task_migrated_bytes[5m])`"),
    gauge("oms_task_start_timestamp_seconds", "Unix time the task started (start_time).", "start_time_ms",
          ms=True, source="`start_time` (ms → s)", example="`time() - (oms_task_start_timestamp_seconds > 0)`"),
    gauge("oms_task_elapsed_seconds", "Time the task has run so far (total_time).", "total_time_ms",
          ms=True, source="`total_time` (ms → s)", example="`oms_task_elapsed_seconds / 3600`"),
    gauge("oms_task_remaining_seconds", "Estimated time left (left_time).", "left_time_ms",
          ms=True, source="`left_time` (ms → s)", example="`max(oms_task_remaining_seconds) by (project_id)`"),
    record("oms_task_bandwidth_limit_bytes_per_second",
           "Bandwidth limit of one traffic-limiting window of the task (bandwidth_policy), bytes per second.",
           ("start", "end"), ("bandwidth",), lambda windows: [((w.start, w.end), w.max_bandwidth) for w in windows],
           strict=True, source="`bandwidth_policy[]`, one series per window",
           example="`max by (project_id, task_id) (oms_task_bandwidth_limit_bytes_per_second)`"),
    record("oms_task_error_info",
           "Why the task failed (error_reason); present only when OMS reports an error, value 1.",
           ("error_code", "error_msg"), ("error_code", "error_msg"),
           lambda err: ((err, 1),) if err[0] or err[1] else (),
           source="`error_reason`, only when non-empty", example="`count by (error_code) (oms_task_error_info)`"),
    # --- the API areas of a project ------------------------------------------------------------
    project("oms_collector_success",
            "1 when the collector (API area: tasks, task_groups, sync_tasks) listed the project in the last "
            "scrape, 0 when that failed (its reason is in oms_scrape_errors_total). Only collectors switched on.",
            ("collector",), lambda listing: [((c,), 0 if e is not None else 1) for c, e in listing.collectors.items()],
            source="per project and collector (`tasks`, `task_groups`, `sync_tasks`): 1 when that API area was "
                   "listed; a region without sync tasks counts as listed",
            example='`oms_collector_success{collector="task_groups"} == 0`'),
    # --- task groups ---------------------------------------------------------------------------
    project("oms_task_groups", "Number of task groups of the project in each state.", ("status",),
            _records_per_state(lambda listing: listing.groups, GROUP_STATUS_NAMES),
            source="per project: task groups per state, all 10 always present",
            example="`sum by (status) (oms_task_groups)`"),
    record("oms_task_group_info", "Static facts of an OMS task group; the value is always 1.",
           ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket", "task_type"),
           ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket", "task_type"),
           lambda facts: ((facts, 1),), kind=GROUP, source="static facts of a group, value 1",
           example='`oms_task_group_info{src_cloud="AWS"}`'),
    record("oms_task_group_status", "Current state of an OMS task group: 1 for the state it is in, 0 for the "
           "other nine.", ("status",), ("status",), _state_set(GROUP_STATUS_NAMES), kind=GROUP,
           source="`status`: one series per state (waiting, creating, migrating, paused, create_failed, failed, "
                  "succeeded, pausing, delete_pending, deleting), 1 for the current",
           example='`oms_task_group_status{status=~"create_failed|failed"} == 1`'),
    record("oms_task_group_status_code", "Raw OMS task group status code: 0 waiting, 1 creating, 2 migrating, "
           "3 paused, 4 create_failed, 5 failed, 6 succeeded, 7 pausing, 8 delete_pending, 9 deleting.",
           (), ("status",), _scalar, kind=GROUP, source="`status` (0..9)", example="`oms_task_group_status_code`"),
    gauge("oms_task_group_progress_ratio", "complete_size / total_size of the group, 0 to 1; no series while "
          "total_size is 0 or absent.", "progress", kind=GROUP, source="`complete_size / total_size`",
          example="`oms_task_group_progress_ratio`"),
    *(gauge(name, f"{what} ({field}).", field, kind=GROUP, source=f"`{field}`", example=f"`{name}`")
      for name, field, what in (
          ("oms_task_group_tasks", "total_task_num", "Tasks of the group"),
          ("oms_task_group_tasks_created", "create_task_num", "Tasks of the group created so far"),
          ("oms_task_group_tasks_migrating", "executing_task_num", "Tasks of the group migrating now"),
          ("oms_task_group_tasks_waiting", "waiting_task_num", "Tasks of the group waiting to run"),
          ("oms_task_group_tasks_paused", "paused_task_num", "Tasks of the group paused"),
          ("oms_task_group_tasks_failed", "failed_task_num", "Tasks of the group that failed"),
          ("oms_task_group_tasks_succeeded", "complete_task_num", "Tasks of the group that succeeded"),
          ("oms_task_group_objects", "total_num", "Objects the group has to migrate"),
          ("oms_task_group_objects_created", "create_complete_num", "Objects covered by the tasks created so far"),
          ("oms_task_group_objects_succeeded", "success_num", "Objects of the group migrated successfully"),
          ("oms_task_group_objects_failed", "fail_num", "Objects of the group that failed"),
          ("oms_task_group_objects_skipped", "skip_num", "Objects of the group skipped"),
          ("oms_task_group_size_bytes", "total_size", "Bytes the group has to migrate"),
          ("oms_task_group_created_bytes", "create_complete_size", "Bytes covered by the tasks created so far"),
          ("oms_task_group_completed_bytes", "complete_size", "Bytes of the group processed so far"),
          ("oms_task_group_speed_bytes_per_second", "migrate_speed", "Migration speed of the group, bytes per second"),
      )),
    gauge("oms_task_group_start_timestamp_seconds", "Unix time the group started (start_time).", "start_time_ms",
          kind=GROUP, ms=True, source="`start_time` (ms → s)",
          example="`time() - (oms_task_group_start_timestamp_seconds > 0)`"),
    gauge("oms_task_group_elapsed_seconds", "Time the group has run so far (total_time).", "total_time_ms",
          kind=GROUP, ms=True, source="`total_time` (ms → s)", example="`oms_task_group_elapsed_seconds / 3600`"),
    record("oms_task_group_error_info",
           "Why the task group failed (error_reason); present only when OMS reports an error, value 1.",
           ("error_code", "error_msg"), ("error_code", "error_msg"),
           lambda err: ((err, 1),) if err[0] or err[1] else (), kind=GROUP,
           source="`error_reason`, only when non-empty", example="`oms_task_group_error_info`"),
    # --- synchronization tasks -------------------------------------------------------------------
    project("oms_sync_tasks", "Number of synchronization tasks of the project in each state.", ("status",),
            _records_per_state(lambda listing: listing.sync_tasks, SYNC_STATUS_NAMES),
            source="per project: sync tasks per state (synchronizing, stopped); none where the region has no "
                   "sync tasks", example="`sum by (status) (oms_sync_tasks)`"),
    record("oms_sync_task_info", "Static facts of an OMS synchronization task; the value is always 1.",
           ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket"),
           ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket"),
           lambda facts: ((facts, 1),), kind=SYNC, source="static facts of a sync task, value 1",
           example="`oms_sync_task_info`"),
    record("oms_sync_task_status", "Current state of a synchronization task: 1 for the state it is in, 0 for "
           "the other.", ("status",), ("status",), _state_set(SYNC_STATUS_NAMES), kind=SYNC,
           source="`status`: synchronizing, stopped", example='`oms_sync_task_status{status="stopped"} == 1`'),
    gauge("oms_sync_task_last_start_timestamp_seconds", "Unix time the sync task was last started "
          "(last_start_time).", "last_start_time_ms", kind=SYNC, ms=True, source="`last_start_time` (ms → s)",
          example="`time() - (oms_sync_task_last_start_timestamp_seconds > 0)`"),
    record("oms_sync_task_monthly_objects",
           "Objects of the sync task this month, by result: requested, succeeded, failed, skipped "
           "(monthly_acceptance_request, monthly_success_object, monthly_failure_object, monthly_skip_object). "
           "Month to date: they start again from 0 when a month begins.", ("result",),
           ("monthly_requested", "monthly_succeeded", "monthly_failed", "monthly_skipped"),
           lambda counts: [((result,), n) for result, n in zip(SYNC_RESULTS, counts) if n is not None],
           kind=SYNC, strict=True,
           source="`monthly_acceptance_request`, `monthly_success_object`, `monthly_failure_object`, "
                  "`monthly_skip_object` as `result` requested, succeeded, failed, skipped (month to date)",
           example='`oms_sync_task_monthly_objects{result="failed"}`'),
    gauge("oms_sync_task_monthly_bytes", "Bytes the sync task synchronized this month (monthly_size). Month to "
          "date: it starts again from 0 when a month begins.", "monthly_bytes", kind=SYNC,
          source="`monthly_size` (month to date)", example="`oms_sync_task_monthly_bytes`"),
)

PROJECT_FAMILIES = tuple(f for f in FAMILIES if f.kind is None)
GROUP_FAMILIES = tuple(f for f in FAMILIES if f.kind is GROUP)
SYNC_FAMILIES = tuple(f for f in FAMILIES if f.kind is SYNC)
TASK_FAMILIES = tuple(f for f in FAMILIES if f.kind is TASK)


def task_totals(tasks: Iterable[Task]) -> tuple[dict[int, int], dict[int, tuple[float, ...]]]:
    """Per state: how many tasks, and the sum of each TASK_TOTALS field (absent values count as 0)."""
    by_status: dict[int | None, list[Task]] = {code: [] for code in STATUS_NAMES}
    for t in tasks:
        by_status.setdefault(t.status, []).append(t)
    counts = {code: len(by_status[code]) for code in STATUS_NAMES}
    totals = {code: state_totals(by_status[code]) for code in STATUS_NAMES}
    return counts, totals


def state_totals(tasks: Collection[Task]) -> tuple[float, ...]:
    """The sum of each TASK_TOTALS field over `tasks` (absent values count as 0)."""
    return tuple(sum(filter(None, map(getter, tasks))) for getter in _TOTAL_GETTERS)


_TOTAL_GETTERS = tuple(attrgetter(field) for field in TASK_TOTAL_FIELDS)


# --- the exporter's own metrics --------------------------------------------------------------

# Fixed set of `reason` label values of oms_scrape_errors_total.
ERROR_REASONS = ("timeout", "throttled", "auth", "http_3xx", "http_4xx", "http_5xx", "bad_payload", "network",
                 "incomplete", "internal")
# `code` values of oms_api_requests_total exported (at 0) from the start: the HTTP statuses the
# OMS API documents, and the two for requests without an answer. Others appear when first seen.
KNOWN_API_CODES = ("200", "400", "401", "403", "404", "429", "500", "503", "timeout", "network")


@dataclass(frozen=True, slots=True)
class SelfFamily:
    """One of the exporter's own metrics (README row and prometheus_client object from one place)."""

    name: str  # as served (counters with _total)
    type: str
    help: str
    labels: tuple[str, ...]
    source: str
    example: str


SELF_FAMILIES = (
    SelfFamily("oms_exporter_build_info", "gauge", "Version of oms-exporter; the value is always 1.", ("version",),
               "the exporter's version", "`count by (version) (oms_exporter_build_info)`"),
    SelfFamily("oms_api_requests_total", "counter", "Requests sent to the OMS API, by HTTP status code "
               "(or 'timeout' / 'network' when no answer came).", ("project_id", "code"),
               "OMS requests by HTTP code (`timeout`, `network` when no answer); the codes OMS documents "
               "(200, 400, 401, 403, 404, 429, 500, 503) and `timeout`/`network` are exported at 0 from the "
               "start, others appear when first seen",
               "`sum by (code) (rate(oms_api_requests_total[5m]))`"),
    SelfFamily("oms_api_request_duration_seconds", "histogram",
               "Time from sending an OMS API request to reading its whole answer.", ("project_id",),
               "histogram of OMS request time",
               "`histogram_quantile(0.9, sum by (le) (rate(oms_api_request_duration_seconds_bucket[5m])))`"),
    SelfFamily("oms_scrape_errors_total", "counter",
               "Project listings in which an API area failed, by reason (areas failing for one reason count once).",
               ("project_id", "reason"),
               "failed listings by reason: " + ", ".join(ERROR_REASONS) + "; every reason of every target "
               "at 0 from the first scrape", "`increase(oms_scrape_errors_total[1h]) > 0`"),
    SelfFamily("oms_listings_total", "counter", "Listings of the project started upstream (concurrent scrapes "
               "share one; with --oms.min-interval a young listing is served again).", ("project_id",),
               "listings asked of OMS; fewer than scrapes when scrapes share them",
               "`rate(oms_listings_total[5m])`"),
    SelfFamily("oms_exporter_config_last_reload_successful", "gauge",
               "1 when the last reading of --config.file and --web.config.file (at start or on SIGHUP) succeeded.",
               (), "1 when the last (re)load of the files succeeded, 0 when a reload was refused (the settings "
               "in force stay)", "`oms_exporter_config_last_reload_successful == 0`"),
    SelfFamily("oms_exporter_config_last_reload_success_timestamp_seconds", "gauge",
               "Unix time of the last successful reading of the configuration files.", (),
               "when the files were last (re)loaded successfully",
               "`time() - oms_exporter_config_last_reload_success_timestamp_seconds`"),
    SelfFamily("oms_exporter_encodes_total", "counter", "Response bodies encoded (concurrent scrapes of the "
               "same listings in the same format share one).", (),
               "bodies encoded", "`rate(oms_exporter_encodes_total[5m])`"),
    SelfFamily("oms_exporter_encoded_records_total", "counter", "Records written by the encoder: 'reused' "
               "when the record had not changed since the last encode (its lines were kept), 'rendered' "
               "when its lines were written anew.", ("kind", "result"),
               "records encoded, by whether their cached lines were reused",
               '`rate(oms_exporter_encoded_records_total{result="rendered"}[5m])`'),
)

ALL_METRIC_NAMES: frozenset[str] = frozenset(
    [f.name for f in FAMILIES] + [f.name for f in SELF_FAMILIES if f.type != "histogram"]
    + [f.name + s for f in SELF_FAMILIES if f.type == "histogram" for s in ("_bucket", "_sum", "_count")])


class SelfMetrics:
    """The exporter's own metrics, in a registry owned by one web app (not a global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        made: dict[str, Any] = {}
        for f in SELF_FAMILIES:
            if f.type == "counter":
                made[f.name] = Counter(f.name.removesuffix("_total"), f.help, f.labels, registry=self.registry)
            elif f.type == "histogram":
                made[f.name] = Histogram(f.name, f.help, f.labels, registry=self.registry,
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
            else:
                made[f.name] = Gauge(f.name, f.help, f.labels, registry=self.registry)
        made["oms_exporter_build_info"].labels(__version__).set(1)
        self.api_requests: Counter = made["oms_api_requests_total"]
        self.api_request_duration: Histogram = made["oms_api_request_duration_seconds"]
        self.scrape_errors: Counter = made["oms_scrape_errors_total"]
        self.listings: Counter = made["oms_listings_total"]
        self.encodes: Counter = made["oms_exporter_encodes_total"]
        self.encoded_records: Counter = made["oms_exporter_encoded_records_total"]
        self.reload_successful: Gauge = made["oms_exporter_config_last_reload_successful"]
        self.reload_success_time: Gauge = made["oms_exporter_config_last_reload_success_timestamp_seconds"]
        for kind in (TASK, GROUP, SYNC):
            for result in ("rendered", "reused"):
                self.encoded_records.labels(kind.name, result)

    def add_project(self, project_id: str) -> None:
        """Export every label set of `project_id` known in advance, at 0, from the first scrape on.

        A counter series that appears only with its first increment hides that increment
        from increase() and rate(), and leaves rules that name it without data.
        """
        for reason in ERROR_REASONS:
            self.scrape_errors.labels(project_id, reason)
        for code in KNOWN_API_CODES:
            self.api_requests.labels(project_id, code)
        self.api_request_duration.labels(project_id)
        self.listings.labels(project_id)

    def remove_project(self, project_id: str) -> None:
        """Drop every series of `project_id` (no longer configured after a reload)."""
        for metric in (self.scrape_errors, self.api_requests, self.api_request_duration, self.listings):
            names = metric._labelnames
            for labels in {tuple(s.labels.get(n, "") for n in names) for fam in metric.collect()
                           for s in fam.samples}:
                if labels[0] == project_id:
                    metric.remove(*labels)

    def config_loaded(self, ok: bool, at: float) -> None:
        """The outcome of reading the configuration files (at start, or a reload) at Unix time `at`."""
        self.reload_successful.set(1 if ok else 0)
        if ok:
            self.reload_success_time.set(at)
