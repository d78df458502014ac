"""Fast encoder of the OMS metric families: byte for byte what prometheus_client writes.

prometheus_client builds a Sample object per series and formats it field by field: ~3.5 s
for the ~230,000 series of 10,000 tasks. This module writes the same bytes from the same
listings in a fraction of that, because

- each task's lines are rendered once per task record and reused for as long as OMS
  returns the same record (the parser hands back the same `Task` object for an
  unchanged record), so a scrape re-renders only the tasks that moved since the
  previous one, and of those only the families whose fields changed (a migrating task:
  its progress, sizes and times, not its info line or status block);
- a gzip body is made of independently compressed chunks, and a chunk whose lines did
  not change keeps its compressed form from the last encode;
- a line is one `str.format` of a template prepared per family and output format, with
  the labels already in the sorted order prometheus_client writes them in;
- the gauge lines of a changed task (most of what a scrape renders) and Go's number format
  are written by `_speedups.c` where the install could build it: the same output as
  `_render_gauges_py` and `_go_float_py` here, which run otherwise (and in the tests, too).

`collector.SnapshotCollector` stays the reference: which families, which series, which
values. `tests/test_exposition.py` proves this encoder's output identical to
prometheus_client's text (0.0.4 and 1.0.0) and OpenMetrics encoders on the same
listings. Label, help and name escaping and number formatting call prometheus_client's
own functions, so the two cannot drift apart silently.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain, compress
from operator import attrgetter, is_not
from typing import Any, TypeVar

from isal import isal_zlib
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as text_generate_latest
from prometheus_client.openmetrics import exposition as om
from prometheus_client.utils import floatToGoString
from prometheus_client.validation import (
    _is_valid_legacy_labelname,
    _is_valid_legacy_metric_name,
)

from oms_exporter import metrics as m
from oms_exporter.collector import SeriesPolicy, SnapshotCollector
from oms_exporter.lister import Listing
from oms_exporter.metrics import SelfMetrics
from oms_exporter.model import STATUS_NAMES, BandwidthWindow, Task

Encoder = Callable[[CollectorRegistry], bytes]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Style:
    """An output format prometheus_client can write: text or OpenMetrics, and a name escaping."""

    openmetrics: bool
    escaping: str


def negotiate(accept: str) -> tuple[Style | None, str, Encoder]:
    """prometheus_client's own content negotiation, and the Style that writes the same format.

    The Style is None for an encoder this module does not know (a newer prometheus_client):
    the caller then uses the reference encoder.
    """
    encoder, content_type = choose_encoder(accept)
    func = encoder.func if isinstance(encoder, partial) else encoder
    kwargs = encoder.keywords if isinstance(encoder, partial) else {}
    escaping = kwargs.get("escaping", om.UNDERSCORES)
    if func is text_generate_latest:
        return Style(False, escaping), content_type, encoder
    if func is om.generate_latest:
        return Style(True, escaping), content_type, encoder
    return None, content_type, encoder


# Per-task families, in the order SnapshotCollector yields them after the aggregates.
# (name, help, label names in the collector's order)
_TASK_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (m.TASK_INFO, m.TASK_INFO_HELP, m.TASK_LABELS + tuple(n for n, _ in m.TASK_INFO_LABELS)),
    (m.TASK_STATUS, m.TASK_STATUS_HELP, ("project_id", "task_id", "status")),
    (m.TASK_STATUS_CODE, m.TASK_STATUS_CODE_HELP, m.TASK_LABELS),
    *((g.name, g.help, m.TASK_LABELS) for g in m.TASK_GAUGES),
    (m.TASK_BANDWIDTH, m.TASK_BANDWIDTH_HELP, m.TASK_BANDWIDTH_LABELS),
    (m.TASK_ERROR_INFO, m.TASK_ERROR_INFO_HELP, m.TASK_ERROR_INFO_LABELS),
)
_AGGREGATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (m.UP, m.UP_HELP, m.PROJECT_LABELS),
    (m.SCRAPE_DURATION, m.SCRAPE_DURATION_HELP, m.PROJECT_LABELS),
    (m.TASKS, m.TASKS_HELP, ("project_id", "status")),
    (m.MALFORMED_TASKS, m.MALFORMED_TASKS_HELP, m.PROJECT_LABELS),
    (m.LISTING_TIMESTAMP, m.LISTING_TIMESTAMP_HELP, m.PROJECT_LABELS),
    *((t.name, t.help, ("project_id", "status")) for t in m.TASK_TOTALS),
)
# The quoting and escaping rules below hold for names of the legacy character set only.
for _name, _, _labels in _TASK_FAMILIES + _AGGREGATES:
    assert _is_valid_legacy_metric_name(_name), _name
    assert all(_is_valid_legacy_labelname(n) for n in _labels), _labels

_GAUGES = tuple((g.attr, g.scale) for g in m.TASK_GAUGES)
_INFO_ATTRS = tuple(a for _, a in m.TASK_INFO_LABELS)
_STATUS_CODES = tuple(STATUS_NAMES)


def escape_value(v: str) -> str:
    """A label value as both prometheus_client encoders write it."""
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Templates:
    """`str.format` templates of every line of one Style; labels in sorted order, as the reference writes them."""

    def __init__(self, style: Style) -> None:
        self.style = style
        self.task_headers = tuple(self._header(n, h) for n, h, _ in _TASK_FAMILIES)
        self.agg_headers = tuple(self._header(n, h) for n, h, _ in _AGGREGATES)
        info, status, code, *gauges = (self._line(n, labels) for n, _, labels in _TASK_FAMILIES[:-2])
        self.bandwidth, self.error = (self._line(n, labels) for n, _, labels in _TASK_FAMILIES[-2:])
        self.info, self.code, self.gauges = info, code, tuple(gauges)
        self.up, self.duration, self.counts, self.malformed, self.taken, *totals = (
            self._line(n, lab) for n, _, lab in _AGGREGATES)
        self.totals = tuple(totals)
        # The seven oms_task_status lines of a task in each state, with {0}=project, {1}=task.
        def block(state: int | None) -> str:
            text = "".join(status.format("\0P\0", "\0T\0", escape_value(name), "1.0" if c == state else "0.0")
                           for c, name in STATUS_NAMES.items())
            return _lit(text).replace("\0P\0", "{0}").replace("\0T\0", "{1}")

        self.status_blocks = {state: block(state) for state in (*_STATUS_CODES, None)}
        # The families labelled by (project_id, task_id) alone share one label set per task:
        # name + ids.format(pid, tid) + value + "\n" is their line (equal to their template's).
        self.ids = self._labels(m.TASK_LABELS)
        self.code_name = self._sample_name(m.TASK_STATUS_CODE)
        self.gauge_names = tuple(self._sample_name(g.name) for g in m.TASK_GAUGES)
        self.gauge_prefixes = tuple(n.encode() for n in self.gauge_names)
        assert all(_lit(n) + self.ids + "{2}\n" == line
                   for n, line in zip((self.code_name, *self.gauge_names), (code, *self.gauges)))
        # Equal keys mean byte-identical per-task lines: such styles share rendered tasks.
        self.key = (info, status, code, self.gauges, self.bandwidth, self.error)

    def _sample_name(self, name: str) -> str:
        if self.style.openmetrics:
            return om._escape(name, self.style.escaping, om._is_legacy_labelname_rune)
        return om.escape_metric_name(name, self.style.escaping)

    def _header(self, name: str, help_text: str) -> bytes:
        shown = om.escape_metric_name(name, self.style.escaping)
        if self.style.openmetrics:
            doc = om._escape(help_text, om.ALLOWUTF8, om._is_legacy_labelname_rune)
        else:
            doc = help_text.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {shown} {doc}\n# TYPE {shown} gauge\n".encode()

    def _labels(self, labels: Sequence[str]) -> str:
        """Template of a line's label set and the space after it: {i} = the i-th label value (collector order)."""
        order = sorted(range(len(labels)), key=lambda i: labels[i])
        pairs = ",".join(f'{_lit(om.escape_label_name(labels[i], self.style.escaping))}="{{{i}}}"' for i in order)
        return f"{{{{{pairs}}}}} "

    def _line(self, name: str, labels: Sequence[str]) -> str:
        """Template with {i} = the i-th label value (collector order), {len(labels)} = the value."""
        return f"{_lit(self._sample_name(name))}{self._labels(labels)}{{{len(labels)}}}\n"


def _lit(s: str) -> str:
    """`s` as literal text of a str.format template."""
    return s.replace("{", "{{").replace("}", "}}")


@lru_cache(maxsize=16)
def templates(style: Style) -> _Templates:
    return _Templates(style)


_EXACT = 2 ** 53
_INF = float("inf")


def _go_float_py(v: float) -> str:
    """`floatToGoString(v)`, with shortcuts for the integers and finite floats OMS fields hold."""
    t = type(v)
    if t is int and -_EXACT < v < _EXACT:
        if v < 1_000_000:
            return f"{v}.0"
        # floatToGoString: repr(float(v)) is the digits and ".0"; Go writes seven or more digits with an exponent.
        s = str(v)
        return f"{(s[0] + '.' + s[1:] + '0').rstrip('0.')}e+{len(s) - 1:02d}"
    if t is float and -_INF < v < _INF:
        s = repr(v)
        dot = s.find(".")
        if v <= 0 or dot <= 6:
            return s
        # floatToGoString, from here on: positive values with seven or more integer digits get an exponent.
        return f"{(s[0] + '.' + s[1:dot] + s[dot + 1:]).rstrip('0.')}e+{dot - 1:02d}"
    return floatToGoString(v)


def _same(a: object, b: object) -> bool:
    """Whether two field values are written alike.

    Equal numbers are written alike whatever their type (1 and 1.0 are both "1.0"), except
    zeros: -0.0 == 0.0 but is written "-0.0". Zeros are compared by their repr (0 and 0.0
    then count as different, which costs a render, not a wrong line).
    """
    return a is b or (a == b and (bool(a) or repr(a) == repr(b)))


def _same_windows(a: tuple[BandwidthWindow, ...], b: tuple[BandwidthWindow, ...]) -> bool:
    return a == b and (not a or all(_same(x.max_bandwidth, y.max_bandwidth) for x, y in zip(a, b)))


_info_of = attrgetter(*_INFO_ATTRS)
_gauges_of = attrgetter(*(attr for attr, _ in _GAUGES))
_SCALES = tuple(None if scale == 1 else scale for _, scale in _GAUGES)  # None: no scaling
# Family indexes of render_task's lines: info 0, status block 1, status code 2, the gauges, bandwidth, error.
_GAUGE_FAMILIES = tuple(range(3, 3 + len(_GAUGES)))
_BANDWIDTH = 3 + len(_GAUGES)
_ERROR = _BANDWIDTH + 1

# family index -> line; a dict of ints and bytes is never tracked by the garbage collector
# (a tuple per line was, and made a scrape collect several times more often).
Changes = dict[int, bytes]


def _render_gauges_py(out: Changes, first: int, prefixes: tuple[bytes, ...], ids: bytes,
                      values: tuple[float | None, ...], prev: tuple[float | None, ...] | None,
                      scales: tuple[float | None, ...]) -> None:
    """Into `out`: the gauge lines of `values` that differ from `prev` (all of them when None).

    Family first + k is gauge k: prefixes[k] + ids + its value times scales[k] (None: 1) + "\n",
    or b"" where the value became None. `_speedups.render_gauges` is this function in C.
    """
    gf = go_float
    if prev is None:
        for f, v, scale, prefix in zip(range(first, first + len(values)), values, scales, prefixes):
            if v is not None:
                out[f] = b"%s%s%s\n" % (prefix, ids, gf(v if scale is None else v * scale).encode())
    else:
        for f, v, pv, scale, prefix in zip(range(first, first + len(values)), values, prev, scales, prefixes):
            # not _same(v, pv), inline: this loop runs for every gauge of every changed task.
            if v is not pv and (v != pv or not v and repr(v) != repr(pv)):
                out[f] = (b"" if v is None
                          else b"%s%s%s\n" % (prefix, ids, gf(v if scale is None else v * scale).encode()))


def render_task(t: Task, pid: str, tp: _Templates, p: Task | None = None) -> Changes:
    """The lines of `t` that differ from those of `p`, by family index; b"" where `t` has none.

    `p` is the same task's record that the lines to change were rendered from (same project
    and style); only the families whose fields changed are rendered. Without `p`: every
    line the task has (its lines are all b"" so far).
    """
    esc = escape_value
    tid = str(t.id)
    out: Changes = {}
    if p is None or _info_of(t) != _info_of(p):
        out[0] = tp.info.format(pid, tid, *map(esc, _info_of(t)), "1.0").encode()
    ids = tp.ids.format(pid, tid)
    status = t.status
    if p is None or not _same(status, p.status):
        if status is not None:
            out[1] = tp.status_blocks.get(status, tp.status_blocks[None]).format(pid, tid).encode()
            out[2] = f"{tp.code_name}{ids}{go_float(status)}\n".encode()
        elif p is not None:
            out[1] = out[2] = b""
    _render_gauges(out, _GAUGE_FAMILIES[0], tp.gauge_prefixes, ids.encode(), _gauges_of(t),
                   None if p is None else _gauges_of(p), _SCALES)
    if p is None or not _same_windows(t.bandwidth, p.bandwidth):
        if t.bandwidth or p is not None:
            # (Task.__post_init__ keeps only windows with a limit: max_bandwidth is never None here.)
            out[_BANDWIDTH] = "".join(tp.bandwidth.format(pid, tid, esc(w.start), esc(w.end),
                                                          go_float(w.max_bandwidth))  # type: ignore[arg-type]
                                      for w in t.bandwidth).encode()
    if p is None or t.error_code != p.error_code or t.error_msg != p.error_msg:
        if t.error_code or t.error_msg:
            out[_ERROR] = tp.error.format(pid, tid, esc(t.error_code), esc(t.error_msg), "1.0").encode()
        elif p is not None:
            out[_ERROR] = b""
    return out


def _untrack_py(lists: Sequence[list[object]]) -> int:
    """Without the C module, the garbage collector keeps tracking the lists: it costs GC time, nothing else."""
    return 0


go_float: Callable[[float], str]
_render_gauges: Callable[[Changes, int, tuple[bytes, ...], bytes, tuple[float | None, ...],
                          tuple[float | None, ...] | None, tuple[float | None, ...]], None]
# Lists of lines (bytes) and of task ids (ints) hold nothing the cyclic garbage collector
# tracks, so it need not walk them; at 50,000 tasks it walked ~700,000 of their items in
# one young-generation pass per scrape (30-60 ms of stalled event loop). Only for lists
# that never hold anything else.
_untrack: Callable[[Sequence[list[Any]]], int]
try:  # C versions of go_float and _render_gauges_py, and untrack, where the install could build them (setup.py)
    from oms_exporter._speedups import go_float as _go_float_c
    from oms_exporter._speedups import render_gauges as _render_gauges_c
    from oms_exporter._speedups import untrack as _untrack_c
except ImportError:  # pragma: no cover - a build without a C compiler
    SPEEDUPS = False
    go_float, _render_gauges, _untrack = _go_float_py, _render_gauges_py, _untrack_py
else:
    SPEEDUPS = True
    go_float, _render_gauges, _untrack = _go_float_c, _render_gauges_c, _untrack_c


class _Project:
    """One project's rendered tasks in one style, family by family, in chunks of CHUNK_TASKS tasks.

    Family f's line of tasks[i] is cols[f][i // CHUNK_TASKS][i % CHUNK_TASKS] (b"" for none).
    Immutable once published: an encode copies the chunks it changes and shares the others
    with the entry before, so threads can read it freely, and a chunk that did not change
    is the same list object from one encode to the next.
    """

    __slots__ = ("_index", "cols", "encoded_at", "ids", "pending", "segments", "tasks", "tp")

    def __init__(self, tp: _Templates, tasks: Sequence[Task], ids: list[int], cols: list[list[list[bytes]]],
                 index: dict[int, int] | None = None, segments: dict[tuple[int, int], _Segment] | None = None
                 ) -> None:
        self.tp, self.tasks, self.ids, self.cols = tp, tasks, ids, cols
        # Compressed chunks of the columns, handed from each entry to the next (see _Segment).
        self.segments: dict[tuple[int, int], _Segment] = {} if segments is None else segments
        # Lines of records that a listing still running saw change:
        # task id -> (new record, the record its changes apply to, the changes).
        self.pending: dict[int, tuple[Task, Task | None, Changes]] = {}
        self._index = index  # never changed once built: the next entry may share it
        self.encoded_at = time.monotonic()

    def index(self) -> dict[int, int]:
        """Task id -> position, built on first use (racing threads build equal maps)."""
        if self._index is None:
            self._index = {tid: i for i, tid in enumerate(self.ids)}
        return self._index


def _runs(index: dict[int, int], ids: Sequence[int]) -> list[tuple[int, int]]:
    """`ids` as runs (old position or -1 for new ids, length) of consecutive positions in the old list."""
    runs: list[tuple[int, int]] = []
    start, length, expect = -2, 0, -2
    for tid in ids:
        j = index.get(tid, -1)
        if j == expect or (j < 0 and start < 0 and length):
            length += 1
        else:
            if length:
                runs.append((start, length))
            start, length = j, 1
        expect = j + 1 if j >= 0 else -2
    if length:
        runs.append((start, length))
    return runs


def _chunked(lines: list[bytes], step: int) -> list[list[bytes]]:
    """`lines` in lists of `step`, which the garbage collector does not track (see `_untrack`)."""
    chunks = [lines[i:i + step] for i in range(0, len(lines), step)]
    _untrack(chunks)
    return chunks


def _moved(old: Sequence[_T], runs: list[tuple[int, int]], fill: _T | bytes = b"") -> list[_T]:
    """A list laid out as `runs` says, from `old`'s items (`fill` for new ones); slices, so a few runs cost little."""
    out: list[_T] = []
    for start, length in runs:
        out += old[start:start + length] if start >= 0 else [fill] * length  # type: ignore[list-item]
    return out


class TaskLines:
    """Rendered lines of the tasks of the last scrape, per (output style, project), family by family.

    An encode keeps the lines of every task whose record is the very object it rendered last
    time (the parser returns the same object for an unchanged record), and re-renders only
    the changed families of the records that changed, so a scrape costs in proportion to what
    moved, not to what is listed. Lines are kept in one list per family, in task order, ready
    to be joined, in chunks that are copied only when one of their lines changes. Tasks that
    vanished upstream (or aged out) are forgotten, so the cache never
    outgrows one listing per project and style. Safe to use from several threads at once:
    published entries are never changed, and the last encode's entry wins.
    """

    MAX_STYLES = 4
    PRERENDER_STYLES = 2
    PRERENDER_WINDOW = 120.0  # seconds before the last encode of a project: styles encoded since then

    def __init__(self) -> None:
        self._maps: OrderedDict[tuple[object, str], _Project] = OrderedDict()
        self._lock = threading.Lock()
        self.rendered = 0  # tasks whose lines changed (cache misses), for tests and the benchmark
        self.reused = 0

    def prerender(self, pid: str, tasks: Sequence[Task]) -> None:
        """Render records that a running listing of `pid` saw change, in the styles `pid` was last encoded in.

        Called by the page parser while the listing runs, so that the encode after the listing
        finds the changed tasks' lines ready. A record rendered here and then not exported costs
        only time.
        """
        with self._lock:
            mine = [p for (_, key_pid), p in self._maps.items() if key_pid == pid]
        # Only styles scraped lately (two Prometheus versions, say): a format someone fetched
        # once with curl must not double the work of every listing after it.
        recent = max((p.encoded_at for p in mine), default=0.0) - self.PRERENDER_WINDOW
        projects = [p for p in mine if p.encoded_at >= recent][-self.PRERENDER_STYLES:]
        pid_e = escape_value(pid)
        for project in projects:
            index, tp, pending = project.index(), project.tp, project.pending
            old = project.tasks
            for t in tasks:
                i = index.get(t.id)
                p = None if i is None else old[i]
                pending[t.id] = (t, p, render_task(t, pid_e, tp, p))

    def columns(self, tp: _Templates, pid: str, tasks: Sequence[Task]) -> _Project:
        """The lines of `tasks` in the style of `tp`: a new entry whose `.cols` hold them (see _Project)."""
        key = (tp.key, pid)
        with self._lock:
            last = self._maps.get(key)
        ids = [t.id for t in tasks]
        # The task list too (records are gc=False structs), while its records are in the cache.
        _untrack((ids, tasks) if type(tasks) is list else (ids,))  # type: ignore[arg-type]
        n, step = len(tasks), CHUNK_TASKS
        base: Sequence[Task | None]
        index: dict[int, int] | None = None
        cols: list[list[list[bytes]]]
        shared = 0  # chunks before this one are the last entry's lists: copied before a write
        if last is None:
            cols = [_chunked([b""] * n, step) for _ in tp.task_headers]
            base, pending = [None] * n, {}
        else:
            pending = last.pending
            m = len(last.ids)
            if ids == last.ids:  # the same tasks in the same order: the common case
                cols, base, index = [list(c) for c in last.cols], last.tasks, last._index
                shared = len(cols[0])
            elif n > m and ids[:m] == last.ids:  # new tasks after the known ones (ids grow)
                shared = m // step  # the full chunks; a last, partial one is extended in a copy
                cols = [c[:shared] + _chunked([*chain.from_iterable(c[shared:]), *[b""] * (n - m)], step)
                        for c in last.cols]
                base = [*last.tasks, *[None] * (n - m)]
                if last._index is not None:
                    index = last._index.copy()
                    index.update(zip(ids[m:], range(m, n)))
            else:  # tasks came or went: move the known ones' lines to their new places
                runs = _runs(last.index(), ids)
                cols = [_chunked(_moved(list(chain.from_iterable(c)), runs), step) for c in last.cols]
                base = _moved(last.tasks, runs, None)
        copied = [[c >= shared for c in range(len(cols[0]))] for _ in cols]  # per family, per chunk
        pid_e = escape_value(pid)
        rendered = 0
        for i in compress(range(n), map(is_not, tasks, base)):
            t, p = tasks[i], base[i]
            ready = pending.get(t.id)
            if ready is not None and ready[0] is t and ready[1] is p:
                changes = ready[2]
            else:
                changes = render_task(t, pid_e, tp, p)
            if changes:  # an equal record in a new object changes nothing
                rendered += 1
                c, j = divmod(i, step)
                for f, line in changes.items():
                    chunks = cols[f]
                    if not copied[f][c]:
                        chunks[c] = chunk = chunks[c].copy()
                        _untrack((chunk,))
                        copied[f][c] = True
                    chunks[c][j] = line
        with self._lock:
            project = self._maps[key] = _Project(tp, tasks, ids, cols, index,
                                                 None if last is None else last.segments)
            self._maps.move_to_end(key)
            styles = list(dict.fromkeys(k[0] for k in self._maps))
            for gone in styles[:-self.MAX_STYLES]:
                for k in [k for k in self._maps if k[0] == gone]:
                    del self._maps[k]
            self.rendered += rendered
            self.reused += len(tasks) - rendered
        return project


def encode(listings: Sequence[Listing], policy: SeriesPolicy, style: Style, cache: TaskLines | None = None,
           tail: bytes = b"") -> bytes:
    """The OMS families of `listings` in `style`, as `generate_latest` would write them, then `tail`.

    `tail` is what follows in the same body: the exporter's own metrics encoded by
    prometheus_client, or the OpenMetrics `# EOF` line (this function does not write it).
    """
    return b"".join(encode_chunks(listings, policy, style, cache, tail))


CHUNK_TASKS = 2000


class _Chunk:
    """Lines of up to CHUNK_TASKS tasks of one family of one project: a piece of the body."""

    __slots__ = ("key", "lines", "segments")

    def __init__(self, lines: list[bytes], segments: dict[tuple[int, int], _Segment], key: tuple[int, int]) -> None:
        self.lines, self.segments, self.key = lines, segments, key

    def segment(self, level: int) -> _Segment:
        """The chunk compressed: the last encode's segment when it holds the same lines.

        An unchanged chunk is the very same list (see _Project); a list of equal lines is
        compared item by item (identical items without reading them).
        """
        old = self.segments.get(self.key)
        lines = self.lines
        if old is not None and (old.lines is lines or old.lines == lines):
            return old
        seg = _Segment.of(b"".join(lines), level, lines)
        self.segments[self.key] = seg
        return seg


def _pieces(listings: Sequence[Listing], policy: SeriesPolicy, style: Style, cache: TaskLines | None,
            tail: bytes) -> Iterator[bytes | _Chunk]:
    """The body in order: bytes, and _Chunks of per-task lines."""
    tp = templates(style)
    cache = cache if cache is not None else TaskLines()

    up, duration, counts, malformed, taken = [], [], [], [], []
    totals: list[list[str]] = [[] for _ in tp.totals]
    for lst in listings:
        pid = escape_value(lst.target.project_id)
        up.append(tp.up.format(pid, "1.0" if lst.up else "0.0"))
        duration.append(tp.duration.format(pid, floatToGoString(lst.duration)))
        if lst.up:
            for code, n in lst.status_counts().items():
                counts.append(tp.counts.format(pid, escape_value(STATUS_NAMES[code]), floatToGoString(n)))
            malformed.append(tp.malformed.format(pid, floatToGoString(lst.malformed)))
            taken.append(tp.taken.format(pid, floatToGoString(lst.taken_at)))
            for code, sums in lst.status_totals().items():
                state = escape_value(STATUS_NAMES[code])
                for lines, template, total in zip(totals, tp.totals, sums):
                    lines.append(template.format(pid, state, floatToGoString(total)))
    yield b"".join(header + "".join(lines).encode()
                   for header, lines in zip(tp.agg_headers, (up, duration, counts, malformed, taken, *totals)))

    # A failed listing exports nothing and leaves the project's cached lines for its next success.
    projects = [cache.columns(tp, lst.target.project_id, policy.exported(lst)) for lst in listings if lst.up]
    for f, header in enumerate(tp.task_headers):
        yield header
        for project in projects:
            segments = project.segments
            for c, chunk in enumerate(project.cols[f]):
                yield _Chunk(chunk, segments, (f, c))
    for project in projects:  # chunks past the end of a shorter task list
        n = len(project.cols[0]) if project.cols else 0
        # list(): a copy taken at once; another thread may be encoding the same project and style.
        for key in [k for k in list(project.segments) if k[1] >= n]:
            project.segments.pop(key, None)
    yield tail


def encode_chunks(listings: Sequence[Listing], policy: SeriesPolicy, style: Style,
                  cache: TaskLines | None = None, tail: bytes = b"") -> Iterator[bytes]:
    """`encode` in pieces of at most one family and CHUNK_TASKS tasks."""
    for piece in _pieces(listings, policy, style, cache, tail):
        yield piece if type(piece) is bytes else b"".join(piece.lines)  # type: ignore[union-attr]


class _Segment:
    """A piece of the body as a raw DEFLATE stream that ends on a full flush, with its CRC-32 and length.

    Such segments, each from a fresh compressor (no reference into earlier data), concatenate
    into one valid DEFLATE stream: `gzip_body` puts them in a gzip member. A chunk whose lines
    did not change since the last encode keeps its segment, so a scrape compresses only the
    chunks that changed (in accounts where most tasks are finished, almost nothing).
    """

    __slots__ = ("crc", "data", "lines", "size")

    def __init__(self, data: bytes, crc: int, size: int, lines: list[bytes] | None = None) -> None:
        self.data, self.crc, self.size, self.lines = data, crc, size, lines

    @classmethod
    def of(cls, text: bytes, level: int, lines: list[bytes] | None = None) -> _Segment:
        z = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        return cls(z.compress(text) + z.flush(isal_zlib.Z_FULL_FLUSH), isal_zlib.crc32(text), len(text), lines)


_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
_DEFLATE_END = b"\x03\x00"  # an empty final block (fixed Huffman codes)


def gzip_body(pieces: Iterable[bytes | _Chunk], level: int) -> bytes:
    """One gzip member of the pieces' text; unchanged chunks reuse their last segment."""
    out = [_GZIP_HEADER]
    crc = size = 0
    loose: list[bytes] = []  # small pieces between chunks, compressed together

    def add(seg: _Segment) -> None:
        nonlocal crc, size
        out.append(seg.data)
        crc = isal_zlib.crc32_combine(crc, seg.crc, seg.size)
        size += seg.size

    for piece in pieces:
        if type(piece) is bytes:
            loose.append(piece)
            continue
        if loose:
            add(_Segment.of(b"".join(loose), level))
            loose = []
        add(piece.segment(level))  # type: ignore[union-attr]
    if loose:
        add(_Segment.of(b"".join(loose), level))
    out += (_DEFLATE_END, struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(out)


class Renderer:
    """Encodes scrape bodies in worker threads; concurrent scrapes of the same listings share one.

    Scrapes that wait for the same shared listing (see `snapshot.Snapshots`) resume
    together; the first starts the encode, the others with the same content type await
    that same job. The event loop only waits.
    """

    # ISA-L level 1: ~14x smaller, and 4x less CPU than zlib level 1 (which it also out-compresses here).
    GZIP_LEVEL = 1

    def __init__(self) -> None:
        self.lines = TaskLines()
        self._inflight: dict[tuple[object, ...], tuple[Sequence[Listing], asyncio.Future[bytes]]] = {}
        self.encodes = 0  # bodies encoded (not shared), for tests and the benchmark

    async def render(self, listings: Sequence[Listing], policy: SeriesPolicy, stats: SelfMetrics | None,
                     accept: str, gzip_ok: bool) -> tuple[bytes, str, bool]:
        """(body, content type, gzipped) of one scrape."""
        style, content_type, encoder = negotiate(accept)
        key = (tuple(id(lst) for lst in listings), policy, stats is not None, content_type, gzip_ok)
        entry = self._inflight.get(key)
        # The entry holds the listings, so their ids in `key` cannot be reused while it exists.
        if entry is None or any(a is not b for a, b in zip(entry[0], listings)):
            fut = asyncio.get_running_loop().run_in_executor(
                None, self._encode, listings, policy, stats, style, encoder, gzip_ok)
            entry = (listings, fut)
            self._inflight[key] = entry
            fut.add_done_callback(lambda f: self._done(key, f))
        # shield: a scrape that goes away must not cancel the job the others wait for.
        return await asyncio.shield(entry[1]), content_type, gzip_ok

    def _done(self, key: tuple[object, ...], fut: asyncio.Future[bytes]) -> None:
        entry = self._inflight.get(key)
        if entry is not None and entry[1] is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved: every waiter may have gone

    def _encode(self, listings: Sequence[Listing], policy: SeriesPolicy, stats: SelfMetrics | None,
                style: Style | None, encoder: Encoder, gzip_ok: bool) -> bytes:
        self.encodes += 1
        if style is None:  # a format this module does not write: the reference encoder
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(listings, policy))
            if stats is not None:
                registry.register(stats.registry)
            chunks: Iterable[bytes] = [encoder(registry)]
        else:
            if stats is not None:
                tail = encoder(stats.registry)
            else:
                tail = b"# EOF\n" if style.openmetrics else b""
            if gzip_ok:
                return gzip_body(_pieces(listings, policy, style, self.lines, tail), self.GZIP_LEVEL)
            chunks = encode_chunks(listings, policy, style, self.lines, tail)
        if not gzip_ok:
            return b"".join(chunks)
        return gzip_body(chunks, self.GZIP_LEVEL)
