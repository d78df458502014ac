"""The records the rest of the exporter reads, parsed from OMS's JSON.

A `TaskResp` object from `GET /v2/{project_id}/tasks` becomes a frozen `Task`. Parsing is
strict about types (a string where a number belongs makes the record malformed) and lenient
about presence (absent or null fields stay `None`, unknown fields are ignored), because
newer API editions add fields and any field may be missing. `RecordParser` remembers the
records of the last listing by a digest of their JSON text, so an unchanged record is
neither decoded again nor a new object: the encoder keys its cached lines on that identity.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, KeysView, Sequence
from itertools import compress, repeat
from operator import is_
from typing import Annotated, Any, Generic, TypeVar, cast

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


# What one record may add to /metrics (a hostile or broken upstream must not turn one record
# into megabytes of labels or thousands of series). Beyond these a value is cut, and the
# record counts in oms_clipped_records.
LABEL_MAX = 1024  # characters of a label value (OMS names are at most 255)
MESSAGE_MAX = 512  # characters of an error message
WINDOWS_MAX = 5  # bandwidth windows of a task (the API allows 5)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class MalformedRecord(ValueError):
    """A record that cannot be read (wrong type for a known field, no usable id)."""


class BadPage(ValueError):
    """A page that does not have the documented shape (not JSON, items or count missing, ...)."""


# Records are frozen msgspec Structs: built ~9x faster than frozen dataclasses, and with
# gc=False (they hold only strings, numbers and other such records) the cyclic garbage
# collector never scans the ~10,000 of them a big project keeps.
class BandwidthWindow(msgspec.Struct, frozen=True, gc=False):
    start: str
    end: str
    max_bandwidth: int | float | None  # None only before __post_init__ drops the window


class Task(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    id: int
    name: str = ""
    group_id: str = ""
    group_type: str = ""
    task_type: str = ""
    priority: str = ""
    src_cloud: str = ""
    src_region: str = ""
    src_bucket: str = ""
    dst_region: str = ""
    dst_bucket: str = ""
    status: int | None = None
    progress: float | None = None
    migrate_speed: float | None = None
    total_num: float | None = None
    successful_num: float | None = None
    failed_num: float | None = None
    skipped_num: float | None = None
    total_size: float | None = None
    complete_size: float | None = None
    real_size: float | None = None
    start_time_ms: float | None = None
    total_time_ms: float | None = None
    left_time_ms: float | None = None
    bandwidth: tuple[BandwidthWindow, ...] = ()
    error_code: str = ""
    error_msg: str = ""
    # When a succeeded/failed task ended (start + total time, ms); +inf for any other task.
    ended_ms: float = float("inf")
    clipped: bool = False  # a value was cut to LABEL_MAX/MESSAGE_MAX/WINDOWS_MAX

    def __post_init__(self) -> None:
        # start_time 0 means "not started" (waiting tasks carry it), not 1970.
        if self.status in FINISHED_STATUSES and self.start_time_ms:
            force_setattr(self, "ended_ms", self.start_time_ms + (self.total_time_ms or 0))
        # Only windows with a limit, and the first of each start/end: two would be one
        # series twice. Done here so that every encoder reads the same windows.
        if self.bandwidth:
            kept: dict[tuple[str, str], BandwidthWindow] = {}
            for w in self.bandwidth:
                if w.max_bandwidth is not None:
                    kept.setdefault((w.start, w.end), w)
            if len(kept) > WINDOWS_MAX:
                kept = dict(list(kept.items())[:WINDOWS_MAX])
                force_setattr(self, "clipped", True)
            if len(kept) != len(self.bandwidth):
                force_setattr(self, "bandwidth", tuple(kept.values()))

    def finished_at_ms(self) -> float | None:
        """When a succeeded/failed task ended (start + total time), else None."""
        return None if self.ended_ms == float("inf") else self.ended_ms


# A number field: an integer within int64 (a larger one is no count OMS can mean, and would
# overflow float arithmetic), or a finite float. Anything else makes the record malformed.
Num = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | float


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


class _TaskWire(msgspec.Struct):
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


_NO_NODE = _Node()


def _task(w: _TaskWire) -> Task:
    src, dst = w.src_node or _NO_NODE, w.dst_node or _NO_NODE
    err = w.error_reason
    if isinstance(err, _Error):
        error_code, error_msg = err.error_code or "", err.error_msg or ""
    else:
        error_code, error_msg = "", err or ""
    labels = [w.name or "", w.group_id or "", w.group_type or "", w.task_type or "", w.task_priority or "",
              src.cloud_type or "", src.region or "", src.bucket or "", dst.region or "", dst.bucket or "",
              error_code]
    clipped = max(map(len, labels)) > LABEL_MAX or len(error_msg) > MESSAGE_MAX
    if clipped:
        labels = [_clip(v, LABEL_MAX) for v in labels]
        error_msg = _clip(error_msg, MESSAGE_MAX)
    name, group_id, group_type, task_type, priority, src_cloud, src_region, src_bucket, dst_region, dst_bucket, \
        error_code = labels
    windows = w.bandwidth_policy or []
    if len(windows) > 4 * WINDOWS_MAX:  # Task keeps WINDOWS_MAX of them: build no more than a few
        windows, clipped = windows[:4 * WINDOWS_MAX], True
    return Task(
        id=w.id, name=name, group_id=group_id, group_type=group_type, task_type=task_type, priority=priority,
        src_cloud=src_cloud, src_region=src_region, src_bucket=src_bucket, dst_region=dst_region,
        dst_bucket=dst_bucket, clipped=clipped,
        status=w.status, progress=w.progress, migrate_speed=w.migrate_speed, total_num=w.total_num,
        successful_num=w.successful_num, failed_num=w.failed_num, skipped_num=w.skipped_num,
        total_size=w.total_size, complete_size=w.complete_size, real_size=w.real_size,
        start_time_ms=w.start_time, total_time_ms=w.total_time, left_time_ms=w.left_time,
        bandwidth=tuple(BandwidthWindow(_clip(b.start or "", LABEL_MAX), _clip(b.end or "", LABEL_MAX),
                                        b.max_bandwidth) for b in windows),
        error_code=error_code, error_msg=error_msg,
    )


_decode_task = msgspec.json.Decoder(_TaskWire).decode


def parse_task(raw: bytes | msgspec.Raw) -> Task:
    """One TaskResp object from its JSON text; MalformedRecord when it cannot be read."""
    try:
        return _task(_decode_task(raw))
    except _UNREADABLE as exc:
        raise MalformedRecord(_why(exc)) from None


# Every way one record's text can be unreadable: a wrong type, invalid UTF-8 inside a string
# (the page's syntax check does not look inside strings), nesting deeper than the decoder goes.
_UNREADABLE = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def _why(exc: Exception) -> str:
    return "nested too deep" if isinstance(exc, RecursionError) else str(exc)


# --- task groups and synchronization tasks --------------------------------------------------

# Task group status codes of TaskGroupResp.status (0..9).
GROUP_STATUS_NAMES: dict[int, str] = {
    0: "waiting",
    1: "creating",
    2: "migrating",
    3: "paused",
    4: "create_failed",
    5: "failed",
    6: "succeeded",
    7: "pausing",
    8: "delete_pending",
    9: "deleting",
}
# Synchronization task states (SyncTaskInfo.status), as OMS spells them, and as served.
SYNC_STATUS_NAMES: dict[str, str] = {"SYNCHRONIZING": "synchronizing", "STOPPED": "stopped"}


class TaskGroup(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A task group (TaskGroupResp): OMS splits one migration into many tasks and runs them as one."""

    id: str  # group_id
    status: int | None = None
    src_cloud: str = ""
    src_region: str = ""
    src_bucket: str = ""
    dst_region: str = ""
    dst_bucket: str = ""
    task_type: str = ""
    total_task_num: float | None = None
    create_task_num: float | None = None
    executing_task_num: float | None = None
    waiting_task_num: float | None = None
    paused_task_num: float | None = None
    failed_task_num: float | None = None
    complete_task_num: float | None = None
    total_num: float | None = None
    create_complete_num: float | None = None
    success_num: float | None = None
    fail_num: float | None = None
    skip_num: float | None = None
    total_size: float | None = None
    create_complete_size: float | None = None
    complete_size: float | None = None
    migrate_speed: float | None = None
    start_time_ms: float | None = None
    total_time_ms: float | None = None
    progress: float | None = None  # complete_size / total_size; None when total_size is 0 or absent
    error_code: str = ""
    error_msg: str = ""
    clipped: bool = False  # a value was cut to LABEL_MAX/MESSAGE_MAX


class SyncTask(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A synchronization task (ShowSyncTask): keeps a destination bucket in step with a source."""

    id: str  # sync_task_id
    status: str | None = None  # SYNCHRONIZING, STOPPED
    src_cloud: str = ""
    src_region: str = ""
    src_bucket: str = ""
    dst_region: str = ""
    dst_bucket: str = ""
    last_start_time_ms: float | None = None
    # Month to date (the month holding the query time): they start again from 0 every month.
    monthly_requested: float | None = None
    monthly_succeeded: float | None = None
    monthly_failed: float | None = None
    monthly_skipped: float | None = None
    monthly_bytes: float | None = None
    clipped: bool = False  # a value was cut to LABEL_MAX


class _GroupWire(msgspec.Struct):
    group_id: Annotated[str, msgspec.Meta(min_length=1, max_length=LABEL_MAX)]  # a key: never cut
    status: int | None = None
    task_type: str | None = None
    src_node: _Node | None = None
    dst_node: _Node | None = None
    total_task_num: Num | None = None
    create_task_num: Num | None = None
    executing_task_num: Num | None = None
    waiting_task_num: Num | None = None
    paused_task_num: Num | None = None
    failed_task_num: Num | None = None
    complete_task_num: Num | None = None
    total_num: Num | None = None
    create_complete_num: Num | None = None
    success_num: Num | None = None
    fail_num: Num | None = None
    skip_num: Num | None = None
    total_size: Num | None = None
    create_complete_size: Num | None = None
    complete_size: Num | None = None
    migrate_speed: Num | None = None
    start_time: Num | None = None
    total_time: Num | None = None
    error_reason: _Error | str | None = None


class _SyncWire(msgspec.Struct):
    sync_task_id: Annotated[str, msgspec.Meta(min_length=1, max_length=LABEL_MAX)]  # a key: never cut
    status: str | None = None
    src_cloud_type: str | None = None
    src_region: str | None = None
    src_bucket: str | None = None
    dst_region: str | None = None
    dst_bucket: str | None = None
    last_start_time: Num | None = None
    monthly_acceptance_request: Num | None = None
    monthly_success_object: Num | None = None
    monthly_failure_object: Num | None = None
    monthly_skip_object: Num | None = None
    monthly_size: Num | None = None


def _group(w: _GroupWire) -> TaskGroup:
    src, dst = w.src_node or _NO_NODE, w.dst_node or _NO_NODE
    err = w.error_reason
    error_code, error_msg = (err.error_code or "", err.error_msg or "") if isinstance(err, _Error) else ("", err or "")
    progress = w.complete_size / w.total_size if w.total_size and w.complete_size is not None else None
    labels = [src.cloud_type or "", src.region or "", src.bucket or "", dst.region or "",
              dst.bucket or "", w.task_type or "", error_code]
    clipped = max(map(len, labels)) > LABEL_MAX or len(error_msg) > MESSAGE_MAX
    if clipped:
        labels = [_clip(v, LABEL_MAX) for v in labels]
        error_msg = _clip(error_msg, MESSAGE_MAX)
    src_cloud, src_region, src_bucket, dst_region, dst_bucket, task_type, error_code = labels
    return TaskGroup(
        id=w.group_id, status=w.status, src_cloud=src_cloud, src_region=src_region, src_bucket=src_bucket,
        dst_region=dst_region, dst_bucket=dst_bucket, task_type=task_type, clipped=clipped,
        total_task_num=w.total_task_num, create_task_num=w.create_task_num,
        executing_task_num=w.executing_task_num, waiting_task_num=w.waiting_task_num,
        paused_task_num=w.paused_task_num, failed_task_num=w.failed_task_num, complete_task_num=w.complete_task_num,
        total_num=w.total_num, create_complete_num=w.create_complete_num, success_num=w.success_num,
        fail_num=w.fail_num, skip_num=w.skip_num, total_size=w.total_size,
        create_complete_size=w.create_complete_size, complete_size=w.complete_size, migrate_speed=w.migrate_speed,
        start_time_ms=w.start_time, total_time_ms=w.total_time, progress=progress,
        error_code=error_code, error_msg=error_msg)


def _sync(w: _SyncWire) -> SyncTask:
    labels = [w.src_cloud_type or "", w.src_region or "", w.src_bucket or "", w.dst_region or "", w.dst_bucket or ""]
    clipped = max(map(len, labels)) > LABEL_MAX
    if clipped:
        labels = [_clip(v, LABEL_MAX) for v in labels]
    src_cloud, src_region, src_bucket, dst_region, dst_bucket = labels
    return SyncTask(
        # The two states are documented upper case; read them whatever the case.
        id=w.sync_task_id, status=w.status.upper() if w.status else None, src_cloud=src_cloud, src_region=src_region,
        src_bucket=src_bucket, dst_region=dst_region, dst_bucket=dst_bucket, clipped=clipped,
        last_start_time_ms=w.last_start_time, monthly_requested=w.monthly_acceptance_request,
        monthly_succeeded=w.monthly_success_object, monthly_failed=w.monthly_failure_object,
        monthly_skipped=w.monthly_skip_object, monthly_bytes=w.monthly_size)


_decode_group = msgspec.json.Decoder(_GroupWire).decode
_decode_sync = msgspec.json.Decoder(_SyncWire).decode


def parse_group(raw: bytes | msgspec.Raw) -> TaskGroup:
    """One TaskGroupResp from its JSON text; MalformedRecord when it cannot be read."""
    try:
        return _group(_decode_group(raw))
    except _UNREADABLE as exc:
        raise MalformedRecord(_why(exc)) from None


def parse_sync(raw: bytes | msgspec.Raw) -> SyncTask:
    """One ShowSyncTask answer (or SyncTaskInfo) from its JSON text; MalformedRecord when it cannot be read."""
    try:
        return _sync(_decode_sync(raw))
    except _UNREADABLE as exc:
        raise MalformedRecord(_why(exc)) from None


# --- pages -----------------------------------------------------------------------------------

class _TaskPage(msgspec.Struct):
    # Raw: each record's JSON text, checked for syntax but decoded only when it changed.
    tasks: list[msgspec.Raw]
    count: Annotated[int, msgspec.Meta(ge=0)]


class _GroupPage(msgspec.Struct):
    taskgroups: list[msgspec.Raw]
    count: Annotated[int, msgspec.Meta(ge=0)]


_PAGES: dict[str, Callable[[bytes], msgspec.Struct]] = {
    "ListTasks": msgspec.json.Decoder(_TaskPage).decode, "ListTaskGroup": msgspec.json.Decoder(_GroupPage).decode,
    "ListSyncTasks": msgspec.json.Decoder(_TaskPage).decode}


_RECORDS_KEY = {"ListTasks": b"tasks", "ListTaskGroup": b"taskgroups", "ListSyncTasks": b"tasks"}


def page(raw: bytes, api: str = "ListTasks") -> tuple[list[msgspec.Raw], int]:
    """The records (as JSON text) and `count` of a list answer of `api`; BadPage when it is not that shape."""
    try:
        doc = _PAGES[api](raw)
    except msgspec.ValidationError as exc:
        raise BadPage(f"answer does not have the {api} shape: {exc}") from None
    except msgspec.DecodeError:
        raise BadPage("answer is not valid JSON") from None
    except RecursionError:
        # Something nests deeper than the decoder goes: if it is inside one record, that record
        # is malformed and the others are read; anywhere else the page is unreadable.
        return _split_page(raw, _RECORDS_KEY[api], api)
    if isinstance(doc, _GroupPage):
        return doc.taskgroups, doc.count
    assert isinstance(doc, _TaskPage)
    return doc.tasks, doc.count


# A JSON string, or one structural character: enough to find the records of a page without
# decoding them (and without recursion, whatever the nesting).
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*("?)|[\[\]{},:]')  # `("?)`: an unterminated string ends the scan at once
_SPLIT_MAX = 512 * 1024  # bytes of a page the flat scan reads (one Python step per token: ~0.5 s at most)


class _Skeleton(msgspec.Struct):
    records: list[int]
    count: Annotated[int, msgspec.Meta(ge=0)]


def _split_page(raw: bytes, key: bytes, api: str) -> tuple[list[msgspec.Raw], int]:
    """`page` for a page holding something nested too deep: each record's text found by a flat scan.

    The page must be valid JSON around its records (checked on a copy with each record
    replaced by 0), and each record must be valid JSON syntax but may nest too deep (it is
    then malformed when parsed). Slow (a Python step per token), and only for such pages.
    """
    if len(raw) > _SPLIT_MAX:
        raise BadPage(f"answer nests deeper than it can be read (and is over {_SPLIT_MAX} bytes to split)")
    depth = 0
    name = b""  # the last string seen in the top-level object (its key, before ':')
    in_records = False
    start = name_at = key_at = 0
    spans: list[tuple[int, int]] = []
    for m in _TOKEN.finditer(raw):
        tok = m.group()
        if tok[0] == 0x22:  # a string
            if not m.group(1):
                raise BadPage("answer is not valid JSON")
            if depth == 1:
                name, name_at = tok[1:-1], m.start()
        elif tok in b"[{":
            depth += 1
            if depth == 2 and tok == b"[" and name == key and not spans and not in_records:
                in_records, start, key_at = True, m.end(), name_at
        elif tok in b"]}":
            if in_records and depth == 2:
                if raw[start:m.start()].strip():
                    spans.append((start, m.start()))
                in_records = False
            depth -= 1
        elif tok == b"," and in_records and depth == 2:
            spans.append((start, m.start()))
            start = m.end()
    if not spans and not in_records:
        raise BadPage("answer nests deeper than it can be read")
    skeleton, last = [], 0
    for a, b in spans:
        skeleton += [raw[last:a], b"0"]
        last = b
    skeleton.append(raw[last:])
    text = b"".join(skeleton)  # the records' key is before them: at the same place as in `raw`
    try:
        doc = msgspec.json.decode(text[:key_at] + b'"records"' + text[key_at + len(key) + 2:], type=_Skeleton)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise BadPage(f"answer does not have the {api} shape, or nests deeper than it can be read") from None
    return [one_record(raw[a:b].strip()) for a, b in spans], doc.count


def one_record(raw: bytes) -> msgspec.Raw:
    """The JSON text of one record (a ShowTask or ShowSyncTask answer, a record of a split page);
    BadPage when it is not JSON."""
    try:
        msgspec.json.decode(raw, type=msgspec.Raw)  # syntax only
    except msgspec.DecodeError:
        raise BadPage("answer is not valid JSON") from None
    except RecursionError:
        pass  # too deep to check: malformed when parsed
    return msgspec.Raw(raw)


def task_page(raw: bytes) -> tuple[list[msgspec.Raw], int]:
    """The records (as JSON text) and `count` of a ListTasks answer; BadPage when it is not that shape."""
    return page(raw, "ListTasks")


# --- parsing with memory ---------------------------------------------------------------------

R = TypeVar("R")


class RecordParser(Generic[R]):
    """`parse` with memory: the latest record of each record id, found again by a digest of its JSON text.

    Most records do not change between scrapes (finished tasks stay listed for good), so
    parsing costs what changed. Handing back the same object for an unchanged record lets
    the encoder reuse the lines it rendered for it.

    It remembers one record per record id: a changed record replaces the one before, and
    the lister says which ids are gone (`forget`). A listing that fails forgets the ids it
    saw first (`end(ok=False)`), so what a failing listing leaves behind is bounded by the
    last successful one.

    Records are remembered by a 128-bit XXH3 digest of their text (~80 bytes per record
    instead of ~1.2 KB), hashed straight from the page buffer. XXH3 is not a cryptographic
    hash, so the seed is a per-process secret: a task name cannot be chosen to collide with
    another record.
    """

    def __init__(self, parse: Callable[[msgspec.Raw], R]) -> None:
        self._parse = parse
        self._seed = int.from_bytes(os.urandom(8), "little")
        self._records: dict[int, R] = {}  # digest -> record
        self._digests: dict[Any, int] = {}  # record id -> digest of its latest record
        self._fresh: set[Any] = set()  # ids first seen in this listing
        # Malformed records of this listing, each once however many pages repeat it.
        self.malformed: set[int] = set()

    def begin(self) -> None:
        """Start a listing."""
        self.malformed = set()
        self._fresh = set()

    def end(self, ok: bool = True) -> None:
        """Finish a listing; one that failed forgets the ids it saw first."""
        if not ok:
            self.forget(self._fresh)
        self._fresh = set()

    def forget(self, ids: Iterable[Any]) -> None:
        """Forget the records of ids that are gone."""
        for rid in list(ids):
            digest = self._digests.pop(rid, None)
            if digest is not None:
                self._records.pop(digest, None)

    def ids(self) -> KeysView[Any]:
        """The ids whose latest record is remembered."""
        return self._digests.keys()

    def parse_all(self, raws: Sequence[msgspec.Raw], unreadable: set[int] | None = None) -> list[R]:
        """The readable records of one page (malformed ones are counted in `malformed`, and in `unreadable`)."""
        known, digests = self._records, self._digests
        # Hashing and looking up a page's records in C (map), not one Python step per record:
        # most records are unchanged, and this runs for every record of every listing.
        keys = list(map(xxh3_128_intdigest, raws, repeat(self._seed, len(raws))))
        records: list[R | None] = list(map(known.get, keys))
        malformed = False
        for i in compress(range(len(records)), map(is_, records, repeat(None))):
            key = keys[i]
            record = known.get(key)  # the same text earlier in this page
            if record is None:
                try:
                    record = self._parse(raws[i])
                except MalformedRecord:
                    self.malformed.add(key)
                    if unreadable is not None:
                        unreadable.add(key)
                    malformed = True
                    continue
                rid = record.id  # type: ignore[attr-defined]
                before = digests.get(rid)
                if before is None:
                    self._fresh.add(rid)
                else:
                    known.pop(before, None)
                digests[rid] = key
                known[key] = record
            records[i] = record
        if malformed:
            return [r for r in records if r is not None]
        return cast(list[R], records)
