"""The records the rest of the exporter reads, each declared once, with its wire names.

A record type is a frozen msgspec Struct whose fields are the JSON fields OMS sends (renamed
where the exporter's name differs, `msgspec.field(name=...)`), so a page's record decodes
straight into it: strict about types (a string where a number belongs makes the record
malformed), lenient about presence (absent or null fields stay `None`, unknown fields are
skipped unread), because newer API editions add fields and any field may be missing.
`__post_init__` tidies what one record may add to /metrics (no None labels, values cut to the
limits below) and derives the few values computed from others; their wire names are
not OMS's ("... (derived)"), so no answer sets them.

`RecordParser` remembers the records of the last listing by a digest of their JSON text, so
an unchanged record is neither decoded again nor a new object: the encoder keys its cached
lines on that identity.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Collection, Iterable, KeysView, Sequence
from itertools import compress, repeat
from operator import attrgetter, is_
from typing import Annotated, Any, Generic, TypeVar, cast

import msgspec
from msgspec import field
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

# What one record may add to /metrics (a hostile or broken upstream must not turn one record
# into megabytes of labels or thousands of series). Beyond these a value is cut, and the
# record counts in oms_clipped_records.
LABEL_MAX = 1024  # characters of a label value (OMS names are at most 255)
MESSAGE_MAX = 512  # characters of an error message
WINDOWS_MAX = 5  # bandwidth windows of a task (the API allows 5)


class MalformedRecord(ValueError):
    """A record that cannot be read (wrong type for a known field, no usable id)."""


class BadPage(ValueError):
    """A page that does not have the documented shape (not JSON, items or count missing, ...)."""


# A number field: an integer within int64 (a larger one is no count OMS can mean, and would
# overflow float arithmetic), or a finite float. Anything else makes the record malformed.
Num = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | float
Text = str | None  # a text field: None (null or absent) becomes "" in __post_init__
INF = float("inf")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _tidy(record: Any, names: tuple[str, ...], limit: int = LABEL_MAX) -> bool:
    """Text fields `names` of `record`: None becomes "", longer than `limit` is cut; True when one was cut."""
    values = [getattr(record, name) for name in names]
    if None not in values and max(map(len, values)) <= limit:  # the common case, at C speed
        return False
    cut = False
    for name in names:
        value = getattr(record, name)
        if value is None:
            force_setattr(record, name, "")
        elif len(value) > limit:
            force_setattr(record, name, _clip(value, limit))
            cut = True
    return cut


# Records are frozen msgspec Structs: built ~9x faster than frozen dataclasses, and with
# gc=False (they hold only strings, numbers and other such records) the cyclic garbage
# collector never scans the ~10,000 of them a big project keeps.
class Node(msgspec.Struct, frozen=True, gc=False):
    """A source (src_node)."""

    cloud_type: Text = ""
    region: Text = ""
    bucket: Text = ""
    clipped: bool = field(default=False, name="clipped (derived)")

    def __post_init__(self) -> None:
        force_setattr(self, "clipped", _tidy(self, ("cloud_type", "region", "bucket")))


class DstNode(msgspec.Struct, frozen=True, gc=False):
    """A destination (dst_node)."""

    region: Text = ""
    bucket: Text = ""
    clipped: bool = field(default=False, name="clipped (derived)")

    def __post_init__(self) -> None:
        force_setattr(self, "clipped", _tidy(self, ("region", "bucket")))


NO_NODE = Node()
NO_DST = DstNode()


class BandwidthWindow(msgspec.Struct, frozen=True, gc=False):
    """One traffic-limiting window of bandwidth_policy."""

    start: Text = ""
    end: Text = ""
    max_bandwidth: Num | None = None  # a window without one is dropped

    def __post_init__(self) -> None:
        _tidy(self, ("start", "end"))  # cut, but a window's times never count as clipped


class ErrorReason(msgspec.Struct, frozen=True, gc=False):
    error_code: str | None = None
    error_msg: str | None = None


def _error(record: Any, reason: ErrorReason | str | None) -> bool:
    """error_code and error_msg of `record` from its error_reason; True when one was cut.

    The API documents error_reason as "an empty string if the task is not in the Failed
    state", so a string is legal there; a non-empty one carries only a message.
    """
    if not reason:
        return False  # no error: error_code and error_msg stay ""
    if isinstance(reason, ErrorReason):
        code, msg = reason.error_code or "", reason.error_msg or ""
    else:
        code, msg = "", reason
    cut = len(code) > LABEL_MAX or len(msg) > MESSAGE_MAX
    force_setattr(record, "error_code", _clip(code, LABEL_MAX))
    force_setattr(record, "error_msg", _clip(msg, MESSAGE_MAX))
    return cut


def _nodes(record: Any) -> bool:
    """src and dst of `record`: a null node is an empty one; True when a value in one was cut."""
    if record.src is None:
        force_setattr(record, "src", NO_NODE)
    if record.dst is None:
        force_setattr(record, "dst", NO_DST)
    return bool(record.src.clipped or record.dst.clipped)


class Task(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A TaskResp (ListTasks, ShowTask): the fields the exporter reads."""

    id: Annotated[int, msgspec.Meta(ge=0)]
    status: int | None = None
    name: Text = ""
    group_id: Text = ""
    group_type: Text = ""
    task_type: Text = ""
    priority: Text = field(default="", name="task_priority")
    src: Node | None = field(default=NO_NODE, name="src_node")
    dst: DstNode | None = field(default=NO_DST, name="dst_node")
    progress: Num | None = None
    migrate_speed: Num | None = None
    total_num: Num | None = None
    successful_num: Num | None = None
    failed_num: Num | None = None
    skipped_num: Num | None = None
    total_size: Num | None = None
    complete_size: Num | None = None
    real_size: Num | None = None
    start_time_ms: Num | None = field(default=None, name="start_time")
    total_time_ms: Num | None = field(default=None, name="total_time")
    left_time_ms: Num | None = field(default=None, name="left_time")
    bandwidth: tuple[BandwidthWindow, ...] | None = field(default=(), name="bandwidth_policy")
    error_reason: ErrorReason | str | None = None
    # Derived.
    error_code: str = field(default="", name="error_code (derived)")
    error_msg: str = field(default="", name="error_msg (derived)")
    # When a succeeded/failed task ended (start + total time, ms); +inf for any other task.
    ended_ms: float = field(default=INF, name="ended_ms (derived)")
    clipped: bool = field(default=False, name="clipped (derived)")  # a value was cut to the limits
    bare: bool = field(default=False, name="bare (derived)")  # kept without what only its series need

    def __post_init__(self) -> None:
        clipped = _tidy(self, _TASK_TEXT) | _nodes(self) | _error(self, self.error_reason)
        if self.bandwidth:
            clipped |= _windows(self)
        elif self.bandwidth is None:
            force_setattr(self, "bandwidth", ())
        if clipped:
            force_setattr(self, "clipped", True)
        # start_time 0 means "not started" (waiting tasks carry it), not 1970.
        if self.status in FINISHED_STATUSES and self.start_time_ms:
            force_setattr(self, "ended_ms", self.start_time_ms + (self.total_time_ms or 0))

    def finished_at_ms(self) -> float | None:
        """When a succeeded/failed task ended (start + total time), else None."""
        return None if self.ended_ms == INF else self.ended_ms


_TASK_TEXT = ("name", "group_id", "group_type", "task_type", "priority")


def _windows(task: Task) -> bool:
    """Only windows with a limit, and the first of each start/end (two would be one series
    twice), at most WINDOWS_MAX; True when some were cut."""
    windows = task.bandwidth or ()
    cut = len(windows) > 4 * WINDOWS_MAX
    kept: dict[tuple[str | None, str | None], BandwidthWindow] = {}
    for w in windows[:4 * WINDOWS_MAX]:
        if w.max_bandwidth is not None:
            kept.setdefault((w.start, w.end), w)
    if len(kept) > WINDOWS_MAX:
        kept = dict(list(kept.items())[:WINDOWS_MAX])
        cut = True
    if len(kept) != len(windows) or task.bandwidth is None:
        force_setattr(task, "bandwidth", tuple(kept.values()))
    return cut


class TaskGroup(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A task group (TaskGroupResp): OMS splits one migration into many tasks and runs them as one."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=LABEL_MAX)] = field(name="group_id")  # never cut
    # A code outside the documented 0..9 makes the record malformed: served, it would count in no state.
    status: Annotated[int, msgspec.Meta(ge=0, le=9)] | None = None
    src: Node | None = field(default=NO_NODE, name="src_node")
    dst: DstNode | None = field(default=NO_DST, name="dst_node")
    task_type: Text = ""
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
    start_time_ms: Num | None = field(default=None, name="start_time")
    total_time_ms: Num | None = field(default=None, name="total_time")
    error_reason: ErrorReason | str | None = None
    # Derived: complete_size / total_size; None when total_size is 0 or absent.
    progress: float | None = field(default=None, name="progress (derived)")
    error_code: str = field(default="", name="error_code (derived)")
    error_msg: str = field(default="", name="error_msg (derived)")
    clipped: bool = field(default=False, name="clipped (derived)")

    def __post_init__(self) -> None:
        clipped = _tidy(self, ("task_type",)) | _nodes(self) | _error(self, self.error_reason)
        force_setattr(self, "clipped", clipped)
        if self.total_size and self.complete_size is not None:
            force_setattr(self, "progress", self.complete_size / self.total_size)


class SyncTask(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A synchronization task (ShowSyncTask, SyncTaskInfo): keeps a destination bucket in step with a source."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=LABEL_MAX)] = field(name="sync_task_id")  # never cut
    status: str | None = None  # SYNCHRONIZING, STOPPED (read whatever the case)
    src_cloud: Text = field(default="", name="src_cloud_type")
    src_region: Text = ""
    src_bucket: Text = ""
    dst_region: Text = ""
    dst_bucket: Text = ""
    last_start_time_ms: Num | None = field(default=None, name="last_start_time")
    # Month to date (the month holding the query time): they start again from 0 every month.
    monthly_requested: Num | None = field(default=None, name="monthly_acceptance_request")
    monthly_succeeded: Num | None = field(default=None, name="monthly_success_object")
    monthly_failed: Num | None = field(default=None, name="monthly_failure_object")
    monthly_skipped: Num | None = field(default=None, name="monthly_skip_object")
    monthly_bytes: Num | None = field(default=None, name="monthly_size")
    clipped: bool = field(default=False, name="clipped (derived)")

    def __post_init__(self) -> None:
        force_setattr(self, "clipped", _tidy(self, _SYNC_TEXT))
        force_setattr(self, "status", self.status.upper() if self.status else None)


_SYNC_TEXT = ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket")

R = TypeVar("R")


def parser(record: type[R]) -> Callable[[bytes | msgspec.Raw], R]:
    """A function reading one record of type `record` from its JSON text; MalformedRecord when it cannot."""
    decode = msgspec.json.Decoder(record).decode

    def parse(raw: bytes | msgspec.Raw) -> R:
        try:
            return decode(raw)
        except _UNREADABLE as exc:
            raise MalformedRecord(_why(exc)) from None

    return parse


# Every way one record's text can be unreadable: a wrong type, invalid UTF-8 inside a string
# (the page's syntax check does not look inside strings), nesting deeper than the decoder goes.
_UNREADABLE = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def _why(exc: Exception) -> str:
    return "nested too deep" if isinstance(exc, RecursionError) else str(exc)


parse_task = parser(Task)
parse_group = parser(TaskGroup)
parse_sync = parser(SyncTask)


class BareTask(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A finished task as a listing keeps it once it gets no series any more: its id, state, group,
    end and the fields summed per state (the per-state sums, the listing's decisions and its
    counts read nothing else). It reads as a Task: every other Task field is a class attribute
    holding that field's default, so it costs nothing per task (0.12 KB of struct instead of
    0.24; an account keeps hundreds of thousands of these between scrapes)."""

    id: int
    status: int | None
    group_id: str
    total_size: Num | None
    complete_size: Num | None
    real_size: Num | None
    total_num: Num | None
    successful_num: Num | None
    failed_num: Num | None
    skipped_num: Num | None
    migrate_speed: Num | None
    ended_ms: float
    clipped: bool


_EMPTY = Task(id=0)
for _name in Task.__struct_fields__:
    if _name not in BareTask.__struct_fields__:
        setattr(BareTask, _name, True if _name == "bare" else getattr(_EMPTY, _name))


def bare(task: Task) -> Task:
    """`task` kept bare (BareTask), read as a Task. Equal integers among its sums are kept as one
    object (a succeeded task's completed size is its size, its objects succeeded its objects)."""
    ints: dict[int, int] = {}
    sums = {name: ints.setdefault(v, v) if type(v) is int else v
            for name, v in zip(TOTAL_FIELDS, map(getattr, repeat(task), TOTAL_FIELDS))}
    kept = BareTask(id=task.id, status=task.status, group_id=sys.intern(task.group_id or ""),
                    ended_ms=task.ended_ms, clipped=task.clipped, **sums)
    return cast(Task, kept)


# --- the per-state sums of tasks ---------------------------------------------------------------

# The Task fields summed per project and state (oms_tasks_* families), in family order.
TOTAL_FIELDS = ("total_size", "complete_size", "real_size", "total_num", "successful_num", "failed_num",
                "skipped_num", "migrate_speed")
_TOTAL_GETTERS = tuple(attrgetter(f) for f in TOTAL_FIELDS)
Totals = tuple[float, ...]


def task_totals(tasks: Iterable[Task]) -> tuple[dict[int, int], dict[int, Totals]]:
    """Per state: how many tasks, and the sum of each TOTAL_FIELDS field (absent values count as 0)."""
    by_status: dict[int | None, list[Task]] = {code: [] for code in STATUS_NAMES}
    for t in tasks:
        by_status.setdefault(t.status, []).append(t)
    counts = {code: len(by_status[code]) for code in STATUS_NAMES}
    totals = {code: state_totals(by_status[code]) for code in STATUS_NAMES}
    return counts, totals


def state_totals(tasks: Collection[Task]) -> Totals:
    """The sum of each TOTAL_FIELDS field over `tasks` (absent values count as 0)."""
    return tuple(sum(filter(None, map(getter, tasks))) for getter in _TOTAL_GETTERS)


# --- pages -----------------------------------------------------------------------------------

class _Skeleton(msgspec.Struct):
    records: list[int]
    count: Annotated[int, msgspec.Meta(ge=0)]


_page_decoders: dict[str, Callable[[bytes], Any]] = {}


def _page_decoder(key: str) -> Callable[[bytes], Any]:
    """A decoder of a list answer whose records are under `key`, keeping each record's JSON text
    (Raw: checked for syntax, decoded only when it changed)."""
    decode = _page_decoders.get(key)
    if decode is None:
        shape = msgspec.defstruct("Page", [(key, list[msgspec.Raw]), ("count", Annotated[int, msgspec.Meta(ge=0)])])
        decode = _page_decoders[key] = msgspec.json.Decoder(shape).decode
    return decode


def page(raw: bytes, api: str = "ListTasks", key: str = "tasks") -> tuple[list[msgspec.Raw], int]:
    """The records (as JSON text) and `count` of a list answer of `api` (records under `key`);
    BadPage when it is not that shape."""
    try:
        doc = _page_decoder(key)(raw)
    except msgspec.ValidationError as exc:
        raise BadPage(f"answer does not have the {api} shape: {exc}") from None
    except msgspec.DecodeError:
        raise BadPage("answer is not valid JSON") from None
    except RecursionError:
        # Something nests deeper than the decoder goes: if it is inside one record, that record
        # is malformed and the others are read; anywhere else the page is unreadable.
        return _split_page(raw, key.encode(), api)
    return getattr(doc, key), doc.count


# A JSON string, or one structural character: enough to find the records of a page without
# decoding them (and without recursion, whatever the nesting).
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*("?)|[\[\]{},:]')  # `("?)`: an unterminated string ends the scan at once
_SPLIT_MAX = 512 * 1024  # bytes of a page the flat scan reads (one Python step per token: ~0.5 s at most)


def _split_page(raw: bytes, key: bytes, api: str) -> tuple[list[msgspec.Raw], int]:
    """`page` for a page holding something nested too deep: each record's text found by a flat scan.

    The page must be valid JSON around its records (checked on a copy with each record
    replaced by 0), and each record must be valid JSON syntax but may nest too deep (it is
    then malformed when parsed). Slow (a Python step per token), and only for such pages.
    """
    if len(raw) > _SPLIT_MAX:
        raise BadPage(f"answer nests deeper than it can be read (and is over {_SPLIT_MAX} bytes to split)")
    spans, key_at = _record_spans(raw, key)
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


def _record_spans(raw: bytes, key: bytes) -> tuple[list[tuple[int, int]], int]:
    """Where each record of the top-level list `key` is in `raw`, and where that key is."""
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
        elif in_records and depth == 2 and tok != b":":  # "," or the list's end, between two records
            if tok == b"," or raw[start:m.start()].strip():
                spans.append((start, m.start()))
            start, in_records = m.end(), tok == b","
            depth -= tok != b","
        elif tok in b"]}":
            depth -= 1
    if not spans and not in_records:
        raise BadPage("answer nests deeper than it can be read")
    return spans, key_at


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


# --- parsing with memory ---------------------------------------------------------------------


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
        # What a record is kept as (a lighter record, or itself): remembered in its place.
        self.compact: Callable[[R], R] | None = None

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
        if self.compact is not None:
            self._compact(keys, records)
        if malformed:
            return [r for r in records if r is not None]
        return cast(list[R], records)

    def _compact(self, keys: list[int], records: list[R | None]) -> None:
        """Each record as `compact` keeps it, remembered so in its place (found again as that)."""
        compact, known = self.compact, self._records
        assert compact is not None
        for i, record in enumerate(records):
            if record is not None:
                kept = compact(record)
                if kept is not record:
                    known[keys[i]] = records[i] = kept
