"""The task record the rest of the exporter reads.

A `TaskResp` object from `GET /v2/{project_id}/tasks` is parsed here, into a frozen `Task`
(with msgspec, from its JSON text; a record whose text did not change since the last
listing is not parsed again). Parsing is strict about types (a string where a number belongs makes the
record malformed) and lenient about presence (absent or null fields stay `None`, unknown
fields are ignored), because newer API editions add fields and any field may be missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from operator import is_
from typing import Annotated, Any, cast

import msgspec
from msgspec.structs import force_setattr
from xxhash import xxh3_128_intdigest

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
FAILED, SUCCEEDED = 4, 5
FINISHED_STATUSES = frozenset({FAILED, SUCCEEDED})


log = logging.getLogger(__name__)


class MalformedTask(ValueError):
    """A task record that cannot be read (wrong type for a known field, no usable id)."""


# Records are frozen msgspec Structs: built ~9x faster than frozen dataclasses, and with
# gc=False (they hold only strings, numbers and other such records) the cyclic garbage
# collector never scans the ~10,000 of them a big project keeps.
class BandwidthWindow(msgspec.Struct, frozen=True, gc=False):
    start: str
    end: str
    max_bandwidth: int | float | None


class Task(msgspec.Struct, frozen=True, gc=False):
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

    def __post_init__(self) -> None:
        # Only windows with a limit, and the first of each start/end: two would be one
        # series twice. Done here so that every encoder reads the same windows.
        if self.bandwidth:
            kept: dict[tuple[str, str], BandwidthWindow] = {}
            for w in self.bandwidth:
                if w.max_bandwidth is not None:
                    kept.setdefault((w.start, w.end), w)
            if len(kept) != len(self.bandwidth):
                force_setattr(self, "bandwidth", tuple(kept.values()))

    def finished_at_ms(self) -> float | None:
        """When a succeeded/failed task ended (start + total time), else None."""
        # start_time 0 means "not started" (waiting tasks carry it), not 1970.
        if self.status not in FINISHED_STATUSES or not self.start_time_ms:
            return None
        return self.start_time_ms + (self.total_time_ms or 0)


Num = int | float


class _Node(msgspec.Struct):
    cloud_type: str | None = None
    region: str | None = None
    bucket: str | None = None


class _Window(msgspec.Struct):
    start: str | None = None
    end: str | None = None
    max_bandwidth: Num | None = None


class _Error(msgspec.Struct):
    error_code: str | None = None
    error_msg: str | None = None


class _Wire(msgspec.Struct):
    """The TaskResp fields the exporter reads, with their JSON types; others are skipped unread."""

    id: Annotated[int, msgspec.Meta(ge=0)]
    status: int | None = None
    name: str | None = None
    group_id: str | None = None
    group_type: str | None = None
    task_type: str | None = None
    task_priority: str | None = None
    src_node: _Node | None = None
    dst_node: _Node | None = None
    progress: Num | None = None
    migrate_speed: Num | None = None
    total_num: Num | None = None
    successful_num: Num | None = None
    failed_num: Num | None = None
    skipped_num: Num | None = None
    total_size: Num | None = None
    complete_size: Num | None = None
    real_size: Num | None = None
    start_time: Num | None = None
    total_time: Num | None = None
    left_time: Num | None = None
    bandwidth_policy: list[_Window] | None = None
    # The API documents error_reason as "an empty string if the task is not in the Failed
    # state", so a string is legal here; a non-empty one carries only a message.
    error_reason: _Error | str | None = None


_decode = msgspec.json.Decoder(_Wire).decode
_NO_NODE = _Node()


def _task(w: _Wire) -> Task:
    src, dst = w.src_node or _NO_NODE, w.dst_node or _NO_NODE
    err = w.error_reason
    if isinstance(err, _Error):
        error_code, error_msg = err.error_code or "", err.error_msg or ""
    else:
        error_code, error_msg = "", err or ""
    return Task(
        w.id, w.name or "", w.group_id or "", w.group_type or "", w.task_type or "", w.task_priority or "",
        src.cloud_type or "", src.region or "", src.bucket or "", dst.region or "", dst.bucket or "",
        w.status, w.progress, w.migrate_speed, w.total_num, w.successful_num, w.failed_num, w.skipped_num,
        w.total_size, w.complete_size, w.real_size, w.start_time, w.total_time, w.left_time,
        tuple([BandwidthWindow(b.start or "", b.end or "", b.max_bandwidth) for b in w.bandwidth_policy])
        if w.bandwidth_policy else (),
        error_code, error_msg,
    )


def parse_task(d: Any) -> Task:
    """Parse one TaskResp object (already decoded JSON); raise MalformedTask when it cannot be read."""
    try:
        return _task(msgspec.convert(d, _Wire))
    except msgspec.ValidationError as exc:
        raise MalformedTask(str(exc)) from None


def parse_task_json(raw: bytes | msgspec.Raw) -> Task:
    """Parse one TaskResp object from its JSON text; raise MalformedTask when it cannot be read."""
    try:
        return _task(_decode(raw))
    except msgspec.ValidationError as exc:
        raise MalformedTask(str(exc)) from None


class TaskParser:
    """parse_task_json with memory: a record whose JSON text equals last listing's is not parsed again.

    Most tasks do not change between scrapes (finished ones stay listed for good), so this
    keeps parsing cost proportional to what changed. Reusing the same Task object also lets
    the encoder reuse the text it rendered for it.

    Records are remembered by a 128-bit XXH3 digest of their text, not the text itself:
    ~80 bytes per task instead of ~1.2 KB (12 MB at 10,000 tasks, twice while a listing
    replaces the last), hashed straight from the page buffer at ~7 GB/s (SHA-256 took 7x
    longer, a fifth of a scrape's parsing). XXH3 is not a cryptographic hash, so the seed is
    a per-process secret: a task name cannot be chosen to collide with another record.
    """

    def __init__(self, on_fresh: Callable[[list[Task]], None] | None = None) -> None:
        # Called with each page's records that were parsed anew (changed since the last listing).
        self._on_fresh = on_fresh
        self._seed = int.from_bytes(os.urandom(8), "little")
        self._last: dict[int, Task] = {}
        self._current: dict[int, Task] = {}
        # Malformed records of this listing, each once however many pages repeat it.
        self.malformed: set[int] = set()

    def begin(self) -> None:
        """Start a listing; records not seen again until end() are forgotten."""
        self._current = {}
        self.malformed = set()

    def end(self) -> None:
        self._last, self._current = self._current, {}

    def parse_all(self, raws: Sequence[bytes | msgspec.Raw]) -> tuple[list[Task], int]:
        """The readable records of one page, and how many were malformed."""
        seed, last, current = self._seed, self._last, self._current
        # Hashing and looking up a page's records in C (map), not one Python step per record:
        # most records are unchanged, and this runs for every record of every listing.
        keys = list(map(xxh3_128_intdigest, raws, repeat(seed, len(raws))))
        tasks: list[Task | None] = list(map(last.get, keys))
        fresh: list[Task] = []
        malformed = 0
        for i in compress(range(len(tasks)), map(is_, tasks, repeat(None))):
            # Not in the last listing: seen earlier in this one (a second pass, a page
            # repeated), or new or changed.
            key = keys[i]
            task = current.get(key)
            if task is None:
                try:
                    task = parse_task_json(raws[i])
                except MalformedTask:
                    self.malformed.add(key)
                    malformed += 1
                    continue
                fresh.append(task)
                current[key] = task  # the same record again in this page: the same object
            tasks[i] = task
        if malformed:
            keys = [k for k, t in zip(keys, tasks) if t is not None]
            tasks = [t for t in tasks if t is not None]
        readable = cast(list[Task], tasks)  # no None left
        current.update(zip(keys, readable))
        if fresh and self._on_fresh is not None:
            try:
                self._on_fresh(fresh)
            except Exception:  # an optimisation must not cost the listing
                log.exception("rendering changed tasks ahead failed")
        return readable, malformed
