"""The task record the rest of the exporter reads.

A `TaskResp` object from `GET /v2/{project_id}/tasks` is parsed exactly once, here, into a
frozen `Task`. Parsing is strict about types (a string where a number belongs makes the
record malformed) and lenient about presence (absent or null fields stay `None`, unknown
fields are ignored), because newer API editions add fields and any field may be missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Task status codes of TaskResp.status, in code order (1..7).
STATUS_NAMES: dict[int, str] = {
    1: "waiting",
    2: "migrating",
    3: "paused",
    4: "failed",
    5: "succeeded",
    6: "retrying",
    7: "pausing",
}
FINISHED_STATUSES = frozenset({4, 5})


class MalformedTask(ValueError):
    """A task record that cannot be read (wrong type for a known field, no usable id)."""


@dataclass(frozen=True, slots=True)
class BandwidthWindow:
    start: str
    end: str
    max_bandwidth: int | float | None


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    name: str
    group_id: str
    group_type: str
    task_type: str
    priority: str
    src_cloud: str
    src_region: str
    src_bucket: str
    dst_region: str
    dst_bucket: str
    status: int | None
    progress: float | None
    migrate_speed: float | None
    total_num: float | None
    successful_num: float | None
    failed_num: float | None
    skipped_num: float | None
    total_size: float | None
    complete_size: float | None
    real_size: float | None
    start_time_ms: float | None
    total_time_ms: float | None
    left_time_ms: float | None
    bandwidth: tuple[BandwidthWindow, ...]
    error_code: str
    error_msg: str

    @property
    def status_name(self) -> str | None:
        return STATUS_NAMES.get(self.status) if self.status is not None else None

    def finished_at_ms(self) -> float | None:
        """When a succeeded/failed task ended (start + total time), else None."""
        if self.status not in FINISHED_STATUSES or self.start_time_ms is None:
            return None
        return self.start_time_ms + (self.total_time_ms or 0)


def _num(d: dict[str, Any], key: str) -> int | float | None:
    v = d.get(key)
    if v is None:
        return None
    # bool is an int subclass in Python, but `true` is never a count.
    if type(v) is int or type(v) is float:
        return v
    raise MalformedTask(f"field {key!r} should be a number, got {type(v).__name__}")


def _str(d: dict[str, Any] | None, key: str) -> str:
    if d is None:
        return ""
    v = d.get(key)
    if v is None:
        return ""
    if type(v) is str:
        return v
    raise MalformedTask(f"field {key!r} should be a string, got {type(v).__name__}")


def _obj(d: dict[str, Any], key: str) -> dict[str, Any] | None:
    v = d.get(key)
    if v is None:
        return None
    if type(v) is dict:
        return v
    raise MalformedTask(f"field {key!r} should be an object, got {type(v).__name__}")


def _bandwidth(d: dict[str, Any]) -> tuple[BandwidthWindow, ...]:
    v = d.get("bandwidth_policy")
    if v is None:
        return ()
    if type(v) is not list:
        raise MalformedTask("field 'bandwidth_policy' should be an array")
    out = []
    for item in v:
        if type(item) is not dict:
            raise MalformedTask("bandwidth_policy entries should be objects")
        out.append(BandwidthWindow(_str(item, "start"), _str(item, "end"), _num(item, "max_bandwidth")))
    return tuple(out)


def _error(d: dict[str, Any]) -> tuple[str, str]:
    v = d.get("error_reason")
    # The API documents error_reason as "an empty string if the task is not in the Failed
    # state", so a string is legal here; a non-empty one carries only a message.
    if v is None or v == "":
        return "", ""
    if type(v) is str:
        return "", v
    if type(v) is dict:
        return _str(v, "error_code"), _str(v, "error_msg")
    raise MalformedTask("field 'error_reason' should be an object")


def parse_task(d: Any) -> Task:
    """Parse one TaskResp object; raise MalformedTask when it cannot be read."""
    if type(d) is not dict:
        raise MalformedTask(f"task record should be an object, got {type(d).__name__}")
    task_id = d.get("id")
    if type(task_id) is not int or task_id < 0:
        raise MalformedTask("task record has no usable integer 'id'")
    status = d.get("status")
    if status is not None and type(status) is not int:
        raise MalformedTask("field 'status' should be an integer")
    src = _obj(d, "src_node")
    dst = _obj(d, "dst_node")
    error_code, error_msg = _error(d)
    return Task(
        id=task_id,
        name=_str(d, "name"),
        group_id=_str(d, "group_id"),
        group_type=_str(d, "group_type"),
        task_type=_str(d, "task_type"),
        priority=_str(d, "task_priority"),
        src_cloud=_str(src, "cloud_type"),
        src_region=_str(src, "region"),
        src_bucket=_str(src, "bucket"),
        dst_region=_str(dst, "region"),
        dst_bucket=_str(dst, "bucket"),
        status=status,
        progress=_num(d, "progress"),
        migrate_speed=_num(d, "migrate_speed"),
        total_num=_num(d, "total_num"),
        successful_num=_num(d, "successful_num"),
        failed_num=_num(d, "failed_num"),
        skipped_num=_num(d, "skipped_num"),
        total_size=_num(d, "total_size"),
        complete_size=_num(d, "complete_size"),
        real_size=_num(d, "real_size"),
        start_time_ms=_num(d, "start_time"),
        total_time_ms=_num(d, "total_time"),
        left_time_ms=_num(d, "left_time"),
        bandwidth=_bandwidth(d),
        error_code=error_code,
        error_msg=error_msg,
    )
