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


# The TaskResp fields the exporter reads, fetched in one C-level pass: tuple(map(d.get, KEYS)).
_STR_KEYS = ("name", "group_id", "group_type", "task_type", "task_priority")
_NUM_KEYS = ("progress", "migrate_speed", "total_num", "successful_num", "failed_num", "skipped_num",
             "total_size", "complete_size", "real_size", "start_time", "total_time", "left_time")
_KEYS = ("id", "status", *_STR_KEYS, *_NUM_KEYS, "src_node", "dst_node", "bandwidth_policy", "error_reason")
_N_STR = len(_STR_KEYS)
_Fields = tuple[Any, ...]


def _num(v: Any, key: str) -> int | float | None:
    # bool is an int subclass in Python, but `true` is never a count.
    if v is None or type(v) is int or type(v) is float:
        return v
    raise MalformedTask(f"field {key!r} should be a number, got {type(v).__name__}")


def _str(v: Any, key: str) -> str:
    if type(v) is str:
        return v
    if v is None:
        return ""
    raise MalformedTask(f"field {key!r} should be a string, got {type(v).__name__}")


def _node(v: Any, key: str) -> dict[str, Any]:
    if type(v) is dict:
        return v
    if v is None:
        return {}
    raise MalformedTask(f"field {key!r} should be an object, got {type(v).__name__}")


def _bandwidth(v: Any) -> tuple[BandwidthWindow, ...]:
    if v is None:
        return ()
    if type(v) is not list:
        raise MalformedTask("field 'bandwidth_policy' should be an array")
    out = []
    for item in v:
        if type(item) is not dict:
            raise MalformedTask("bandwidth_policy entries should be objects")
        out.append(BandwidthWindow(_str(item.get("start"), "start"), _str(item.get("end"), "end"),
                                   _num(item.get("max_bandwidth"), "max_bandwidth")))
    return tuple(out)


def _error(v: Any) -> tuple[str, str]:
    # The API documents error_reason as "an empty string if the task is not in the Failed
    # state", so a string is legal here; a non-empty one carries only a message.
    if v is None or v == "":
        return "", ""
    if type(v) is str:
        return "", v
    if type(v) is dict:
        return _str(v.get("error_code"), "error_code"), _str(v.get("error_msg"), "error_msg")
    raise MalformedTask("field 'error_reason' should be an object")


def _fields(d: Any) -> _Fields:
    if type(d) is not dict:
        raise MalformedTask(f"task record should be an object, got {type(d).__name__}")
    return tuple(map(d.get, _KEYS))


def _from_fields(f: _Fields) -> Task:
    task_id, status = f[0], f[1]
    if type(task_id) is not int or task_id < 0:
        raise MalformedTask("task record has no usable integer 'id'")
    if status is not None and type(status) is not int:
        raise MalformedTask("field 'status' should be an integer")
    strs = [_str(v, k) for v, k in zip(f[2:2 + _N_STR], _STR_KEYS)]
    nums = [_num(v, k) for v, k in zip(f[2 + _N_STR:-4], _NUM_KEYS)]
    src, dst = _node(f[-4], "src_node"), _node(f[-3], "dst_node")
    error_code, error_msg = _error(f[-1])
    return Task(
        task_id, *strs,
        _str(src.get("cloud_type"), "cloud_type"), _str(src.get("region"), "region"),
        _str(src.get("bucket"), "bucket"), _str(dst.get("region"), "region"), _str(dst.get("bucket"), "bucket"),
        status, *nums, _bandwidth(f[-2]), error_code, error_msg,
    )


def parse_task(d: Any) -> Task:
    """Parse one TaskResp object; raise MalformedTask when it cannot be read."""
    return _from_fields(_fields(d))


class TaskParser:
    """parse_task with memory: a record whose fields equal last listing's is not parsed again.

    Most tasks do not change between scrapes (finished ones stay listed for good), so this
    keeps parsing cost proportional to what changed. Reusing the same Task object also lets
    the encoder reuse the text it rendered for it.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[_Fields, Task]] = {}
        self._current: dict[int, tuple[_Fields, Task]] = {}

    def begin(self) -> None:
        """Start a listing; tasks not seen again until end() are forgotten."""
        self._current = {}

    def end(self) -> None:
        self._last, self._current = self._current, {}

    def parse(self, d: Any) -> Task:
        f = _fields(d)
        seen = self._last.get(f[0]) if type(f[0]) is int else None
        if seen is not None and seen[0] == f:
            task = seen[1]
        else:
            task = _from_fields(f)
        self._current[task.id] = (f, task)
        return task
