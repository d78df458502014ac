"""Task groups: OMS splits one migration into many tasks and runs them as one group.

`ListTaskGroup` (`GET /v2/{project_id}/taskgroups`) is paged like the tasks, every page of
100 (`pager.PagedLister`). A target scoped to some groups (`group_ids`) serves those only.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from oms_exporter.area import Area
from oms_exporter.metrics import Family, Kind, _records_per_state, _scalar, _state_set, gauge, project, record
from oms_exporter.model import GROUP_STATUS_NAMES, TaskGroup
from oms_exporter.pager import PagedLister

GROUP = Kind("task_group", "group_id")
group_gauge, group_record = partial(gauge, kind=GROUP), partial(record, kind=GROUP)

FAMILIES: tuple[Family, ...] = (
    project("oms_task_groups", "Number of task groups of the project in each state.", ("status",),
            _records_per_state(lambda listing: listing.records("task_groups"), GROUP_STATUS_NAMES),
            source="per project: task groups per state, all 10 always present",
            example="`sum by (status) (oms_task_groups)`"),
    group_record("oms_task_group_info", "Static facts of an OMS task group; the value is always 1.",
           ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket", "task_type"),
           ("src.cloud_type", "src.region", "src.bucket", "dst.region", "dst.bucket", "task_type"),
           lambda facts: ((facts, 1),), source="static facts of a group, value 1",
           example='`oms_task_group_info{src_cloud="AWS"}`'),
    group_record("oms_task_group_status", "Current state of an OMS task group: 1 for the state it is in, 0 for the "
           "other nine.", ("status",), ("status",), _state_set(GROUP_STATUS_NAMES),
           source="`status`: one series per state (waiting, creating, migrating, paused, create_failed, failed, "
                  "succeeded, pausing, delete_pending, deleting), 1 for the current",
           example='`oms_task_group_status{status=~"create_failed|failed"} == 1`'),
    group_record("oms_task_group_status_code", "Raw OMS task group status code: 0 waiting, 1 creating, 2 migrating, "
           "3 paused, 4 create_failed, 5 failed, 6 succeeded, 7 pausing, 8 delete_pending, 9 deleting.",
           (), ("status",), _scalar, source="`status` (0..9)", example="`oms_task_group_status_code`"),
    group_gauge("oms_task_group_progress_ratio", "complete_size / total_size of the group, 0 to 1; no series while "
          "total_size is 0 or absent.", "progress", source="`complete_size / total_size`",
          example="`oms_task_group_progress_ratio`"),
    *(group_gauge(name, f"{what} ({field}).", field, source=f"`{field}`", example=f"`{name}`")
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
    group_gauge("oms_task_group_start_timestamp_seconds", "Unix time the group started (start_time).", "start_time_ms",
          ms=True, source="`start_time` (ms → s)",
          example="`time() - (oms_task_group_start_timestamp_seconds > 0)`"),
    group_gauge("oms_task_group_elapsed_seconds", "Time the group has run so far (total_time).", "total_time_ms",
          ms=True, source="`total_time` (ms → s)", example="`oms_task_group_elapsed_seconds / 3600`"),
    group_record("oms_task_group_error_info",
           "Why the task group failed (error_reason); present only when OMS reports an error, value 1.",
           ("error_code", "error_msg"), ("error_code", "error_msg"),
           lambda err: ((err, 1),) if err[0] or err[1] else (),
           source="`error_reason`, only when non-empty", example="`oms_task_group_error_info`"),
)


class GroupLister(PagedLister):
    """Every task group of the target, or of its `group_ids` only."""

    def _scoped(self, found: dict[Any, Any]) -> list[Any]:
        wanted = self.target.group_ids
        return sorted(found) if not wanted else sorted(set(wanted) & found.keys())


TASK_GROUPS = Area(
    name="task_groups", what="task groups", api="ListTaskGroup", path="taskgroups", records_key="taskgroups",
    record=TaskGroup, kind=GROUP, families=FAMILIES, lister=GroupLister,
    slots=lambda max_concurrency: max(1, max_concurrency // 4))
