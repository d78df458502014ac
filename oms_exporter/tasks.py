"""The tasks: the API area every target lists, and the one `oms_up` follows.

`ListTasks` (`GET /v2/{project_id}/tasks`, every page of 100) and `ShowTask` (`GET
.../tasks/{task_id}`), listed in full on every scrape (`--oms.listing=full`,
`tasklister.FullLister`) or by liveness (the default, `liveness.LiveLister`). Its families:
the per-project counts and sums per state, and one set of series per task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from oms_exporter.area import Area, AreaLister, Context
from oms_exporter.listing import Listing
from oms_exporter.liveness import LiveLister
from oms_exporter.metrics import (
    CLIPPED,
    LISTED_AT,
    Family,
    Kind,
    Series,
    _scalar,
    _state_set,
    _when_up,
    gauge,
    project,
    record,
)
from oms_exporter.model import STATUS_NAMES, TOTAL_FIELDS, Task
from oms_exporter.tasklister import FullLister

TASK = Kind("task", "task_id")
task_gauge, task_record = partial(gauge, kind=TASK), partial(record, kind=TASK)

TASK_INFO_LABELS = (  # (label, Task attribute) in label order
    ("name", "name"), ("group_id", "group_id"), ("group_type", "group_type"), ("task_type", "task_type"),
    ("priority", "priority"), ("src_cloud", "src.cloud_type"), ("src_region", "src.region"),
    ("src_bucket", "src.bucket"), ("dst_region", "dst.region"), ("dst_bucket", "dst.bucket"),
)
# (family, what) of the per-project, per-state sums of model.TOTAL_FIELDS over every listed task.
TASK_TOTALS = tuple(zip((
    ("oms_tasks_size_bytes", "bytes to migrate"),
    ("oms_tasks_completed_bytes", "bytes processed"),
    ("oms_tasks_migrated_bytes", "bytes migrated, skipped objects excluded"),
    ("oms_tasks_objects", "objects to migrate"),
    ("oms_tasks_objects_succeeded", "objects migrated"),
    ("oms_tasks_objects_failed", "objects that failed"),
    ("oms_tasks_objects_skipped", "objects skipped"),
    ("oms_tasks_speed_bytes_per_second", "bytes per second"),
), TOTAL_FIELDS, strict=True))


def _per_state(pick: Callable[[Listing], Mapping[int, float]]) -> Callable[[Listing], Series]:
    return _when_up(lambda listing: [((STATUS_NAMES[code],), n) for code, n in pick(listing).items()])


def _total(i: int) -> Callable[[Listing], Series]:
    return _per_state(lambda listing: {code: sums[i] for code, sums in listing.totals.items()})


FAMILIES: tuple[Family, ...] = (
    project("oms_tasks", "Number of tasks of the project in each state, from the full listing.", ("status",),
            _per_state(lambda listing: listing.counts),
            source="per project: tasks per state, all 7 always present", example="`sum by (status) (oms_tasks)`"),
    *(project(name, f"Sum of {field} ({what}) of every task of the project in each state, from the full "
                    "listing, whatever the per-task series filters (absent values count as 0).",
              ("status",), _total(i),
              source=f"per project and state: the sum of `{field}` over **every** listed task",
              example=f"`sum by (project_id) ({name})`")
      for i, ((name, what), field) in enumerate(TASK_TOTALS)),
    project("oms_malformed_tasks", "Task records in the last listing that could not be read and were skipped.", (),
            _when_up(lambda listing: (((), listing.malformed),)),
            source="per project: records skipped in the last listing", example="`oms_malformed_tasks > 0`"),
    # The listing's own families, where they always were in the output (see catalog.families).
    CLIPPED,
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
    LISTED_AT,
    # --- per task ----------------------------------------------------------------------------
    task_record("oms_task_info", "Static facts of an OMS migration task; the value is always 1.",
           tuple(label for label, _ in TASK_INFO_LABELS), tuple(attr for _, attr in TASK_INFO_LABELS),
           lambda facts: ((facts, 1),), source="static facts, value 1", example='`oms_task_info{src_cloud="AWS"}`'),
    task_record("oms_task_status", "Current state of an OMS task: 1 for the state it is in, 0 for the other six.",
           ("status",), ("status",), _state_set(STATUS_NAMES),
           source="`status`: one series per state (waiting, migrating, paused, failed, succeeded, retrying, "
                  "pausing), 1 for the current", example='`oms_task_status{status="failed"} == 1`'),
    task_record("oms_task_status_code", "Raw OMS task status code: 1 waiting, 2 migrating, 3 paused, 4 failed, "
                                   "5 succeeded, 6 retrying, 7 pausing.", (), ("status",), _scalar,
           source="`status` (1..7)", example="`oms_task_status_code` (Grafana state timeline)"),
    task_gauge("oms_task_progress_ratio", "Task progress from 0 to 1 (TaskResp.progress).", "progress",
          source="`progress` (0..1)",
          example="`oms_task_progress_ratio * on(project_id, task_id) group_left(name) oms_task_info`"),
    task_gauge("oms_task_speed_bytes_per_second", "Current migration speed in bytes per second (migrate_speed).",
          "migrate_speed", source="`migrate_speed`",
          example="`sum by (project_id) (oms_task_speed_bytes_per_second)`"),
    task_gauge("oms_task_objects", "Objects the task has to migrate (total_num).", "total_num",
          source="`total_num`", example="`sum(oms_task_objects)`"),
    task_gauge("oms_task_objects_succeeded", "Objects migrated successfully (successful_num).", "successful_num",
          source="`successful_num`", example="`oms_task_objects_succeeded / oms_task_objects`"),
    task_gauge("oms_task_objects_failed", "Objects that failed to migrate (failed_num).", "failed_num",
          source="`failed_num`", example="`increase(oms_task_objects_failed[30m]) > 0`"),
    task_gauge("oms_task_objects_skipped", "Objects skipped, e.g. already present at the destination (skipped_num).",
          "skipped_num", source="`skipped_num`", example="`topk(10, oms_task_objects_skipped)`"),
    task_gauge("oms_task_size_bytes", "Bytes the task has to migrate (total_size).", "total_size",
          source="`total_size`", example="`sum by (project_id) (oms_task_size_bytes)`"),
    task_gauge("oms_task_completed_bytes", "Bytes of objects processed so far (complete_size).", "complete_size",
          source="`complete_size`", example="`oms_task_completed_bytes / oms_task_size_bytes`"),
    task_gauge("oms_task_migrated_bytes", "Bytes actually migrated, skipped objects excluded (real_size).", "real_size",
          source="`real_size`", example="`rate(oms_task_migrated_bytes[5m])`"),
    task_gauge("oms_task_start_timestamp_seconds", "Unix time the task started (start_time).", "start_time_ms",
          ms=True, source="`start_time` (ms → s)", example="`time() - (oms_task_start_timestamp_seconds > 0)`"),
    task_gauge("oms_task_elapsed_seconds", "Time the task has run so far (total_time).", "total_time_ms",
          ms=True, source="`total_time` (ms → s)", example="`oms_task_elapsed_seconds / 3600`"),
    task_gauge("oms_task_remaining_seconds", "Estimated time left (left_time).", "left_time_ms",
          ms=True, source="`left_time` (ms → s)", example="`max(oms_task_remaining_seconds) by (project_id)`"),
    task_record("oms_task_bandwidth_limit_bytes_per_second",
           "Bandwidth limit of one traffic-limiting window of the task (bandwidth_policy), bytes per second.",
           ("start", "end"), ("bandwidth",), lambda windows: [((w.start, w.end), w.max_bandwidth) for w in windows],
           strict=True, source="`bandwidth_policy[]`, one series per window",
           example="`max by (project_id, task_id) (oms_task_bandwidth_limit_bytes_per_second)`"),
    task_record("oms_task_error_info",
           "Why the task failed (error_reason); present only when OMS reports an error, value 1.",
           ("error_code", "error_msg"), ("error_code", "error_msg"),
           lambda err: ((err, 1),) if err[0] or err[1] else (),
           source="`error_reason`, only when non-empty", example="`count by (error_code) (oms_task_error_info)`"),
)


def _lister(ctx: Context) -> AreaLister:
    return FullLister(ctx) if ctx.options.listing == "full" else LiveLister(ctx)


TASKS = Area(name="tasks", what="tasks", api="ListTasks", path="tasks", records_key="tasks", record=Task,
             kind=TASK, families=FAMILIES, lister=_lister, optional=False)
