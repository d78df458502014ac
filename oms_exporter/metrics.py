"""Every metric the exporter produces: names, help texts and label sets, in one place.

The dashboards, alert rules and tests read these names from here (a test fails if
`grafana/` names a metric that is not listed in `ALL_METRIC_NAMES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from oms_exporter import __version__

# Counters without `_created` series: they double the sample count and nobody graphs them.
prometheus_client.disable_created_metrics()

PROJECT_LABELS = ("project_id",)
TASK_LABELS = ("project_id", "task_id")

TASK_INFO = "oms_task_info"
TASK_INFO_HELP = "Static facts of an OMS migration task; the value is always 1."
# (label name, Task attribute) in label order.
TASK_INFO_LABELS = (
    ("name", "name"),
    ("group_id", "group_id"),
    ("group_type", "group_type"),
    ("task_type", "task_type"),
    ("priority", "priority"),
    ("src_cloud", "src_cloud"),
    ("src_region", "src_region"),
    ("src_bucket", "src_bucket"),
    ("dst_region", "dst_region"),
    ("dst_bucket", "dst_bucket"),
)

TASK_STATUS = "oms_task_status"
TASK_STATUS_HELP = "Current state of an OMS task: 1 for the state it is in, 0 for the other six."
TASK_STATUS_CODE = "oms_task_status_code"
TASK_STATUS_CODE_HELP = (
    "Raw OMS task status code: 1 waiting, 2 migrating, 3 paused, 4 failed, 5 succeeded, "
    "6 retrying, 7 pausing."
)


@dataclass(frozen=True, slots=True)
class TaskGauge:
    """A per-task gauge read straight from one numeric TaskResp field."""

    name: str
    help: str
    attr: str  # attribute of model.Task
    scale: float = 1.0  # multiplier applied to the raw value (ms -> s)


MS = 0.001
TASK_GAUGES: tuple[TaskGauge, ...] = (
    TaskGauge("oms_task_progress_ratio", "Task progress from 0 to 1 (TaskResp.progress).", "progress"),
    TaskGauge("oms_task_speed_bytes_per_second", "Current migration speed in bytes per second (migrate_speed).", "migrate_speed"),
    TaskGauge("oms_task_objects", "Objects the task has to migrate (total_num).", "total_num"),
    TaskGauge("oms_task_objects_succeeded", "Objects migrated successfully (successful_num).", "successful_num"),
    TaskGauge("oms_task_objects_failed", "Objects that failed to migrate (failed_num).", "failed_num"),
    TaskGauge("oms_task_objects_skipped", "Objects skipped, e.g. already present at the destination (skipped_num).", "skipped_num"),
    TaskGauge("oms_task_size_bytes", "Bytes the task has to migrate (total_size).", "total_size"),
    TaskGauge("oms_task_completed_bytes", "Bytes of objects processed so far (complete_size).", "complete_size"),
    TaskGauge("oms_task_migrated_bytes", "Bytes actually migrated, skipped objects excluded (real_size).", "real_size"),
    TaskGauge("oms_task_start_timestamp_seconds", "Unix time the task started (start_time).", "start_time_ms", MS),
    TaskGauge("oms_task_elapsed_seconds", "Time the task has run so far (total_time).", "total_time_ms", MS),
    TaskGauge("oms_task_remaining_seconds", "Estimated time left (left_time).", "left_time_ms", MS),
)

TASK_BANDWIDTH = "oms_task_bandwidth_limit_bytes_per_second"
TASK_BANDWIDTH_HELP = "Bandwidth limit of one traffic-limiting window of the task (bandwidth_policy), bytes per second."
TASK_BANDWIDTH_LABELS = ("project_id", "task_id", "start", "end")

TASK_ERROR_INFO = "oms_task_error_info"
TASK_ERROR_INFO_HELP = "Why the task failed (error_reason); present only when OMS reports an error, value 1."
TASK_ERROR_INFO_LABELS = ("project_id", "task_id", "error_code", "error_msg")

UP = "oms_up"
UP_HELP = "1 when the last listing of every task of the project succeeded, 0 otherwise."
SCRAPE_DURATION = "oms_scrape_duration_seconds"
SCRAPE_DURATION_HELP = "How long listing the project's tasks took."
TASKS = "oms_tasks"
TASKS_HELP = "Number of tasks of the project in each state, from the full listing."
MALFORMED_TASKS = "oms_malformed_tasks"
MALFORMED_TASKS_HELP = "Task records in the last listing that could not be read and were skipped."



@dataclass(frozen=True, slots=True)
class TaskTotal:
    """A per-project, per-state sum of one numeric TaskResp field over every listed task."""

    name: str
    help: str
    attr: str  # attribute of model.Task; absent (None) counts as 0


_TOTAL_HELP = (" of every task of the project in each state, from the full listing, whatever the "
               "per-task series filters (absent values count as 0).")
TASK_TOTALS: tuple[TaskTotal, ...] = (
    TaskTotal("oms_tasks_size_bytes", "Sum of total_size (bytes to migrate)" + _TOTAL_HELP, "total_size"),
    TaskTotal("oms_tasks_completed_bytes", "Sum of complete_size (bytes processed)" + _TOTAL_HELP, "complete_size"),
    TaskTotal("oms_tasks_migrated_bytes", "Sum of real_size (bytes migrated, skipped objects excluded)"
              + _TOTAL_HELP, "real_size"),
    TaskTotal("oms_tasks_objects", "Sum of total_num (objects to migrate)" + _TOTAL_HELP, "total_num"),
    TaskTotal("oms_tasks_objects_succeeded", "Sum of successful_num" + _TOTAL_HELP, "successful_num"),
    TaskTotal("oms_tasks_objects_failed", "Sum of failed_num" + _TOTAL_HELP, "failed_num"),
    TaskTotal("oms_tasks_objects_skipped", "Sum of skipped_num" + _TOTAL_HELP, "skipped_num"),
    TaskTotal("oms_tasks_speed_bytes_per_second", "Sum of migrate_speed (bytes per second)" + _TOTAL_HELP,
              "migrate_speed"),
)

LISTING_TIMESTAMP = "oms_listing_timestamp_seconds"
LISTING_TIMESTAMP_HELP = (
    "Unix time the listing these series come from was started. With --oms.min-interval a "
    "listing younger than that interval is served again instead of asking OMS: "
    "time() - this is how old the data is.")

BUILD_INFO = "oms_exporter_build_info"
API_REQUESTS = "oms_api_requests"  # counter, exposed as oms_api_requests_total
API_REQUEST_DURATION = "oms_api_request_duration_seconds"
SCRAPE_ERRORS = "oms_scrape_errors"  # counter, exposed as oms_scrape_errors_total

# Fixed set of `reason` label values of oms_scrape_errors_total.
ERROR_REASONS = ("timeout", "throttled", "auth", "http_5xx", "http_4xx", "bad_payload", "network", "incomplete",
                 "internal")
# `code` values of oms_api_requests_total exported (at 0) from the start: the HTTP statuses the
# OMS API documents, and the two for requests without an answer. Others appear when first seen.
KNOWN_API_CODES = ("200", "400", "401", "403", "404", "429", "500", "503", "timeout", "network")

ALL_METRIC_NAMES: frozenset[str] = frozenset(
    [TASK_INFO, TASK_STATUS, TASK_STATUS_CODE, TASK_BANDWIDTH, TASK_ERROR_INFO]
    + [g.name for g in TASK_GAUGES]
    + [UP, SCRAPE_DURATION, TASKS, MALFORMED_TASKS, LISTING_TIMESTAMP, BUILD_INFO]
    + [t.name for t in TASK_TOTALS]
    + [API_REQUESTS + "_total", SCRAPE_ERRORS + "_total"]
    + [API_REQUEST_DURATION + s for s in ("_bucket", "_sum", "_count")]
)


class SelfMetrics:
    """The exporter's own metrics, in a registry owned by one web app (not a global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Gauge(BUILD_INFO, "Version of oms-exporter; the value is always 1.", ["version"],
              registry=self.registry).labels(__version__).set(1)
        self.api_requests = Counter(
            API_REQUESTS, "Requests sent to the OMS API, by HTTP status code "
            "(or 'timeout' / 'network' when no answer came).",
            ["project_id", "code"], registry=self.registry)
        self.api_request_duration = Histogram(
            API_REQUEST_DURATION, "Time from sending an OMS API request to reading its whole answer.",
            ["project_id"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.scrape_errors = Counter(
            SCRAPE_ERRORS, "Project listings that failed, by reason.",
            ["project_id", "reason"], registry=self.registry)

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
