"""The encode step: the families of the catalog as prometheus_client would write them, fast.

prometheus_client builds a Sample object per series and formats it field by field: seconds
for the ~250,000 series of 10,000 tasks. This module writes the same bytes from one cache:
a record's lines, rendered once and kept for as long as OMS returns the same record (the
parser hands back the same object for an unchanged record), so an encode is mostly joining
ready lines, family by family. Two things ride on that cache because `benchmarks/compare.py`
shows each saves more than a tenth of a scrape's CPU (figures in docs/performance.md): a
changed record renders again only the families whose inputs changed, and a gzip answer
compresses again only the runs (about CHUNK records' lines of one family) that changed. And
one thing rides on it for memory: a run no line of which changed is kept compressed only
(`_Run`), so the cache weighs what the gzip body weighs, not the text (74 MB to 10 MB at
100,000 tasks).

`collector.SnapshotCollector` is the reference (tests only); the tests prove this module's output
identical to prometheus_client's text (0.0.4 and 1.0.0) and OpenMetrics encoders for every
escaping scheme, with escaping and number formatting written here and checked against it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate, chain, compress
from math import copysign
from operator import attrgetter, is_not, lt
from typing import Any

from isal import isal_zlib
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from oms_exporter.area import Area
from oms_exporter.catalog import AREAS, families
from oms_exporter.listing import Listing
from oms_exporter.metrics import Family, Kind, SelfMetrics
from oms_exporter.snapshot import SeriesPolicy

log = logging.getLogger(__name__)

Encoder = Callable[[CollectorRegistry], bytes]
CHUNK = 2000  # records whose lines in one family are kept, compressed and reused together (runs hold up to twice that)
ESCAPINGS = ("allow-utf-8", "underscores", "dots", "values")


# --- formats -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Style:
    """An output format prometheus_client can write: text or OpenMetrics, and a name-escaping scheme."""

    openmetrics: bool
    escaping: str


_OPENMETRICS, _TEXT = "application/openmetrics-text", "text/plain"
_PLAIN = Style(False, "underscores")


def negotiate(accept: str) -> tuple[Style, str, Encoder]:
    """The format of an answer to `accept`, as the Go client negotiates it, and prometheus_client's
    encoder and Content-Type of that format (for the exporter's own metrics written after the OMS ones).

    The clauses are tried by decreasing q: OpenMetrics 1.0.0 or 0.0.1 (or no version), text 0.0.4
    (or no version) and text 1.0.0; a version this module does not write is passed over, an
    unknown escaping parameter ignored; when no clause matches, text 0.0.4. Every answer is this
    module's own: no request header reaches prometheus_client's slow encoder for the OMS families.
    """
    escaping = "underscores"
    for mime, params in _clauses(accept):
        if params.get("escaping") in ESCAPINGS:
            escaping = params["escaping"]
        version = params.get("version", "")
        if mime == _OPENMETRICS and version in ("", "0.0.1", "1.0.0"):
            return _style(f"{_OPENMETRICS};version=1.0.0;escaping={escaping}")
        if mime == _TEXT and version in ("", "0.0.4"):
            break
        if mime == _TEXT and version == "1.0.0":
            return _style(f"{_TEXT};version=1.0.0;escaping={escaping}")
    return _style("")


def _clauses(accept: str) -> list[tuple[str, dict[str, str]]]:
    """The media ranges of an Accept header with their parameters, by decreasing q (stable)."""
    out = []
    for clause in accept.split(",")[:32]:  # a header of hundreds of clauses is no scraper's
        mime, *params = (p.strip() for p in clause.split(";"))
        options = dict(p.partition("=")[::2] for p in params)
        try:
            q = float(options.pop("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            out.append((q, mime.lower(), options))
    out.sort(key=lambda c: -c[0])
    return [(mime, options) for _, mime, options in out]


def _style(canonical: str) -> tuple[Style, str, Encoder]:
    """The Style, Content-Type and prometheus_client encoder of the format `canonical` asks for
    (what the installed prometheus_client makes of it: one before 0.22 knows no escaping)."""
    encoder, content_type = choose_encoder(canonical)
    kind, *params = (p.strip() for p in content_type.split(";"))
    options = dict(p.partition("=")[::2] for p in params)
    escaping = options.get("escaping", "underscores")
    if kind not in (_TEXT, _OPENMETRICS) or escaping not in ESCAPINGS:
        encoder, content_type = choose_encoder("")
        return _PLAIN, content_type, encoder
    return Style(kind != _TEXT, escaping), content_type, encoder


_LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def escape_value(v: str) -> str:
    """A label value as both prometheus_client formats write it."""
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_name(name: str, style: Style, *, sample: bool = False) -> str:
    """A metric or label name of the legacy character set as prometheus_client writes it in `style`.

    "dots" doubles underscores everywhere; OpenMetrics with "values" prefixes sample names
    with U__ and doubles their underscores (its HELP and TYPE lines keep the plain name).
    """
    if style.escaping == "dots":
        return name.replace("_", "__")
    if sample and style.openmetrics and style.escaping == "values":
        return "U__" + name.replace("_", "__")
    return name


def _escape_help(text: str, style: Style) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if style.openmetrics else text


_EXACT = 2 ** 53
_INF = float("inf")
# prometheus_client before 0.26 writes exponents of 10 and more as e+010 (a literal 0 before
# the digits), later ones as e+10: write what the installed one writes.
_EXPONENT = "e+0{}" if floatToGoString(1e10) == "1e+010" else "e+{:02d}"  # type: ignore[no-untyped-call]


def go_float(v: float) -> str:
    """`floatToGoString(v)`, with shortcuts for the integers and finite floats OMS fields hold."""
    t = type(v)
    if t is int and -_EXACT < v < _EXACT:
        if v < 1_000_000:
            return f"{v}.0"
        # floatToGoString: repr(float(v)) is the digits and ".0"; Go writes seven or more digits with an exponent.
        s = str(v)
        return (s[0] + "." + s[1:] + "0").rstrip("0.") + _EXPONENT.format(len(s) - 1)
    if t is float and -_INF < v < _INF:
        s = repr(v)
        dot = s.find(".")
        if v <= 0 or dot <= 6:
            return s
        return (s[0] + "." + s[1:dot] + s[dot + 1:]).rstrip("0.") + _EXPONENT.format(dot - 1)
    return str(floatToGoString(v))  # type: ignore[no-untyped-call]


def _lit(s: str) -> str:
    """`s` as literal text of a str.format template."""
    return s.replace("{", "{{").replace("}", "}}")


class _Templates:
    """The text of every family in one Style: headers and str.format templates of its lines."""

    def __init__(self, style: Style, families: tuple[Family, ...]) -> None:
        # The name escaping here holds for names of the legacy character set without ":" only.
        for f in families:
            assert all(_LEGACY_NAME.fullmatch(n) for n in (f.name, *f.label_names)), f.name
        self.style = style
        self.header = {f.name: self._header(f) for f in families}
        # {0}, {1}, ...: the label values in the family's label order (project_id, the record's
        # id, its own labels); the last placeholder is the value. Labels sorted, as prometheus_client writes them.
        self.line = {f.name: self._line(f) for f in families}
        # Families of one numeric field share one label set per record: a gauge line is
        # prefix + ids + value, with ids rendered once per record.
        self.gauge_prefix = {f.name: _escape_name(f.name, style, sample=True) + "{" for f in families if f.gauge}
        self.ids: dict[Kind, str] = {}
        for f in families:
            if f.kind is not None and f.kind not in self.ids:
                self.ids[f.kind] = self._labels(f.label_names[:2]) + "}} "
        # A record family's position among the families of its kind (its column in _Lines.cols).
        self.column = {f.name: [g for g in families if g.kind is f.kind].index(f) for f in families if f.kind}
        # Equal keys: byte-identical record lines, so such styles share one cache entry.
        self.key = tuple(self.line[f.name] for f in families if f.kind is not None)

    def _header(self, f: Family) -> bytes:
        shown = _escape_name(f.name, self.style)
        return f"# HELP {shown} {_escape_help(f.help, self.style)}\n# TYPE {shown} gauge\n".encode()

    def _labels(self, labels: Sequence[str]) -> str:
        order = sorted(range(len(labels)), key=lambda i: labels[i])
        return ",".join(f'{_lit(_escape_name(labels[i], self.style))}="{{{i}}}"' for i in order)

    def _line(self, f: Family) -> str:
        labels = f.label_names
        name = _lit(_escape_name(f.name, self.style, sample=True))
        return f"{name}{{{{{self._labels(labels)}}}}} {{{len(labels)}}}\n"


_templates: dict[tuple[Style, tuple[Family, ...]], _Templates] = {}


def templates(style: Style, families: tuple[Family, ...]) -> _Templates:
    tp = _templates.get((style, families))
    if tp is None:
        tp = _templates[(style, families)] = _Templates(style, families)
    return tp


# --- rendering one record ------------------------------------------------------------------------

def _same(a: object, b: object, strict: bool) -> bool:
    """Whether two values a family read are written alike.

    Equal numbers are written alike whatever their type (1 and 1.0 are both "1.0"), except
    zeros: -0.0 == 0.0 but is written "-0.0". `strict` families (numbers inside tuples)
    compare reprs too; a difference there costs a render, never a wrong line.
    """
    if a is b:
        return True
    if a != b:
        return False
    return repr(a) == repr(b) if strict else True


def _alike(v: Any, pv: Any) -> bool:
    """`_same` for the number (or None) of a gauge, inline: equal zeros differ only by sign."""
    return v is pv or (v == pv and bool(v or copysign(1.0, v) == copysign(1.0, pv)))


_id_of = attrgetter("id")


class _KindRenderer:
    """Renders the lines of one kind of record in one style, family by family."""

    def __init__(self, tp: _Templates, kind: Kind, families: tuple[Family, ...]) -> None:
        self.families = tuple(f for f in families if f.kind is kind)
        self.ids = tp.ids[kind]
        gauges = [(i, f) for i, f in enumerate(self.families) if f.gauge]
        self.gauges = tuple((i, tp.gauge_prefix[f.name].encode(), None if f.divisor == 1 else f.divisor)
                            for i, f in gauges)
        self.gauges_of = _getter([f.fields[0] for _, f in gauges])
        self.others = tuple((i, f, tp.line[f.name], f.read) for i, f in enumerate(self.families) if not f.gauge)
        # Everything the other families read, in one tuple: for most changed records (a task
        # that moved on) it is unchanged, and one comparison says so for all of them.
        self.rest_of = _getter(list(dict.fromkeys(field for _, f, _, _ in self.others for field in f.fields)))

    def render(self, r: Any, p: Any, pid: str) -> dict[int, bytes]:
        """The lines of `r` that differ from those of `p` (its previous record, or None), by family
        index; `pid` is the escaped project id."""
        rid = escape_value(str(r.id))
        out = self._gauges(r, p, self.ids.format(pid, rid).encode())
        rest_alike = p is not None and self.rest_of(r) == self.rest_of(p)
        for f, family, line, read in self.others:
            if rest_alike and not family.strict:
                continue
            key = read(r)
            if p is not None and _same(key, read(p), family.strict):
                continue
            text = "".join(line.format(pid, rid, *map(escape_value, labels), go_float(value))
                           for labels, value in family.series(key))
            if text or p is not None:
                out[f] = text.encode()
        return out

    def _gauges(self, r: Any, p: Any, ids: bytes) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        before = self.gauges_of(p) if p is not None else ()
        for k, (v, (f, prefix, divisor)) in enumerate(zip(self.gauges_of(r), self.gauges)):
            if before and _alike(v, before[k]):
                continue
            if v is not None:
                out[f] = prefix + ids + go_float(v if divisor is None else v / divisor).encode() + b"\n"
            elif before:
                out[f] = b""
        return out


def _getter(fields: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving the values of `fields` of a record, always as a tuple."""
    if len(fields) > 1:
        return attrgetter(*fields)
    if fields:
        one = attrgetter(fields[0])
        return lambda r: (one(r),)
    return lambda r: ()


# --- the one cache: each record's lines, kept while the record is the same object ----------------

def _deflate(text: bytes, level: int) -> bytes:
    """`text` as a raw DEFLATE stream from a fresh compressor, ended on a full flush: such streams
    concatenate into one (a gzip member of many runs)."""
    z = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
    return z.compress(text) + z.flush(isal_zlib.Z_FULL_FLUSH)


class _Segment:
    """Loose text between runs (headers, project families), compressed for one gzip answer."""

    __slots__ = ("crc", "data", "size")

    def __init__(self, text: bytes, level: int) -> None:
        self.data, self.crc, self.size = _deflate(text, level), isal_zlib.crc32(text), len(text)


class _Run:
    """The lines of some records in one family (b"" for a record with none), in one of three forms:
    whole (a tuple, one part per record: what an encode writes), text (one bytes, with each
    record's length in it: a few records changed in a frozen run) or frozen (that text
    compressed only, about a fifteenth of it). Runs that change from one encode to the next
    (live tasks') stay uncompressed, whole or text. A run's lines
    never change: an encode that changes a line makes a new run and shares the unchanged runs
    with the entry before. Once a gzip answer needed it, a run keeps its text compressed
    (`data`, with its CRC-32 and size: a segment of the gzip member), and a run an encode did
    not change is frozen: a gzip answer reuses `data` as it is, a text answer or a change
    inflates it. Freezing happens in place, sets what the other forms need before it drops
    them, so threads read a run freely."""

    __slots__ = ("_lines", "_text", "crc", "data", "lengths", "size")

    def __init__(self, lines: tuple[bytes, ...] | None, text: bytes | None = None,
                 lengths: array[int] | None = None) -> None:
        self._lines, self._text, self.lengths = lines, text, lengths
        self.data: bytes | None = None
        self.crc = self.size = 0

    def __len__(self) -> int:
        lines = self._lines
        return len(lines) if lines is not None else len(self.lengths)  # type: ignore[arg-type]

    def text(self) -> bytes:
        lines, text = self._lines, self._text
        if lines is not None:
            return b"".join(lines)
        if text is None:  # frozen
            text = isal_zlib.decompressobj(-isal_zlib.MAX_WBITS).decompress(self.data)
        return text

    def lines(self) -> list[bytes]:
        lines = self._lines
        if lines is not None:
            return list(lines)
        text, ends = self.text(), list(accumulate(self.lengths))  # type: ignore[arg-type]
        return list(map(text.__getitem__, map(slice, [0, *ends], ends)))

    def segment(self, level: int) -> _Run:
        """The run as a segment of a gzip member: compressed once, kept."""
        if self.data is None:
            text = self.text()
            self.crc, self.size = isal_zlib.crc32(text), len(text)
            self.data = _deflate(text, level)  # last: a run with `data` has its CRC and size too
        return self

    def freeze(self, level: int) -> None:
        lines = self._lines  # read once: another thread may be freezing this run too
        self.segment(level)
        if lines is not None and self.lengths is None:
            self.lengths = array("I", map(len, lines))
        self._lines = self._text = None

    def extended(self, n: int) -> _Run:
        """This run with `n` records of no lines after its own (the same text, compressed or not)."""
        # Read in the order freeze() lets go (lines, text), then data, which comes with its CRC and size.
        lines, text = self._lines, self._text
        if lines is not None:
            return _Run((*lines, *(b"",) * n))
        data = self.data
        run = _Run(None, text, self.lengths + array("I", [0]) * n)  # type: ignore[operator]
        if data is not None:
            run.crc, run.size, run.data = self.crc, self.size, data
        return run

    def edited(self, edit: dict[int, bytes]) -> _Run:
        """A new run of these lines with the parts of some records (index: part) replaced: whole,
        unless a few records change in a run that is not (its text is cut, not split)."""
        if self._lines is not None or len(edit) * 8 > len(self):
            lines = self.lines()
            for j, line in edit.items():
                lines[j] = line
            return _Run(tuple(lines))
        text, lengths = self.text(), array("I", self.lengths)  # type: ignore[arg-type]
        out: list[bytes] = []
        cut = at = done = 0  # copied up to `cut`; record `done` starts at `at`
        for j in sorted(edit):
            at += sum(lengths[done:j])
            out += (text[cut:at], edit[j])
            cut = at = at + lengths[j]
            lengths[j], done = len(edit[j]), j + 1
        out.append(text[cut:])
        return _Run(None, b"".join(out), lengths)


class _Lines:
    """One project's records of one area, rendered in one style: cols[f][c] is the run of family f's
    lines of the records from starts[c] to starts[c + 1] (runs of at most 2 * CHUNK records, the
    same in every family). An encode makes new runs where lines change and shares the others
    with the entry before, so an unchanged run is the same object from one encode to the next."""

    __slots__ = ("cols", "ids", "records", "starts")

    def __init__(self, ids: tuple[object, ...], records: tuple[Any, ...], cols: list[list[_Run]],
                 starts: Sequence[int]) -> None:
        self.ids, self.records, self.cols, self.starts = ids, records, cols, starts


def _runs(lines: Sequence[bytes]) -> list[_Run]:
    return [_Run(tuple(lines[i:i + CHUNK])) for i in range(0, len(lines), CHUNK)]


class RecordLines:
    """The lines of the records of the last encode, per (style, project, area).

    Records that vanished upstream (or aged out) are forgotten, so the cache holds one
    listing per project, area and style (of the MAX_STYLES styles asked for last).
    """

    MAX_STYLES = 4

    def __init__(self) -> None:
        self._entries: dict[tuple[object, str, str], _Lines] = {}
        self._renderers: dict[tuple[Style, Kind, tuple[Family, ...]], _KindRenderer] = {}
        self._lock = threading.Lock()
        self._writing: dict[tuple[object, str, str], threading.Lock] = {}  # per entry key

    def lines(self, tp: _Templates, families: tuple[Family, ...], pid: str, area: Area, records: Sequence[Any],
              level: int | None = None) -> tuple[_Lines, int]:
        """The lines of `records` (in id order) in the style of `tp`, and how many records were rendered.

        `level`: this encode answers in gzip at that level, so every run it does not change is
        frozen (runs that change from one encode to the next, those of live tasks, stay uncompressed).
        """
        key = (tp.key, pid, area.name)
        with self._lock:
            writing = self._writing.setdefault(key, threading.Lock())
        with writing:  # one encode of a key at a time: the next starts from what this one made
            return self._lines(key, tp, families, pid, area, records, level)

    def _lines(self, key: tuple[object, str, str], tp: _Templates, families: tuple[Family, ...], pid: str,
               area: Area, records: Sequence[Any], level: int | None) -> tuple[_Lines, int]:
        with self._lock:
            last = self._entries.get(key)
            renderer = self._renderers.get((tp.style, area.kind, families))
            if renderer is None:
                renderer = self._renderers[(tp.style, area.kind, families)] = _KindRenderer(tp, area.kind, families)
        new = tuple(records)
        ids = tuple(map(_id_of, new))
        base, cols, starts = _aligned(last, ids, len(renderer.families), level)
        pid_e = escape_value(pid)
        rendered = 0
        hot: set[tuple[int, int]] = set()  # runs a record seen before changed in: they change again soon
        writing: dict[int, dict[int, bytes]] = {}  # one run's edits: family -> {index in the run: lines}
        ends = (*starts[1:], len(new))
        c = 0  # the run being written: runs before it are done, and written at once (a first
        # encode holds one run's lines beside the cache, not the whole body's)
        for i in compress(range(len(new)), map(is_not, new, base)):
            if i >= ends[c]:
                _write(cols, c, writing, hot, level)
                c = bisect_right(ends, i, c)
            changes = renderer.render(new[i], base[i], pid_e)
            rendered += bool(changes)  # an equal record in a new object changes nothing
            j = i - starts[c]
            for f, line in changes.items():
                writing.setdefault(f, {})[j] = line
                if base[i] is not None:
                    hot.add((f, c))
        _write(cols, c, writing, hot, level)
        if level is not None:
            for f, col in enumerate(cols):
                for c, run in enumerate(col):
                    if (f, c) not in hot:
                        run.freeze(level)
        entry = _Lines(ids, new, cols, starts)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = entry  # the newest last
            styles = list(dict.fromkeys(k[0] for k in self._entries))
            for gone in styles[:-self.MAX_STYLES]:
                for k in [k for k in self._entries if k[0] == gone]:
                    del self._entries[k]
                    self._writing.pop(k, None)
        return entry, rendered


def _write(cols: list[list[_Run]], c: int, writing: dict[int, dict[int, bytes]], hot: set[tuple[int, int]],
           level: int | None) -> None:
    """Run c of each family with its edits, frozen at once unless hot (emptying `writing`)."""
    for f, edit in writing.items():
        run = cols[f][c] = cols[f][c].edited(edit)
        if level is not None and (f, c) not in hot:
            run.freeze(level)
    writing.clear()


_Aligned = tuple[Sequence[Any], list[list[_Run]], list[int]]


def _aligned(last: _Lines | None, ids: tuple[object, ...], n_families: int, level: int | None) -> _Aligned:
    """The last records and runs of lines moved to where the records of `ids` are now (None and b""
    for new ones), and where each run starts. In the same order as before (records gone, new
    ones anywhere), a run keeps its object unless its records changed: a task deleted or aged
    out writes one run again, not every run after it."""
    if last is None or not last.ids:
        empty = _runs((b"",) * len(ids))
        return (None,) * len(ids), [list(empty) for _ in range(n_families)], list(range(0, len(ids), CHUNK))
    m = len(last.ids)
    if ids == last.ids:  # the same records in the same order: the common case, every run shared
        return last.records, [list(c) for c in last.cols], list(last.starts)
    if len(ids) > m and ids[:m] == last.ids:  # new records after the known ones (task ids grow)
        return _appended(last, len(ids) - m)
    index = {rid: i for i, rid in enumerate(last.ids)}
    where = [index.get(rid, -1) for rid in ids]  # -1: a new record
    records = list(map((*last.records, None).__getitem__, where))
    kept = [o for o in where if o >= 0]
    if not kept:  # nothing left of the last entry: as a first encode
        return _aligned(None, ids, n_families, level)
    if all(map(lt, kept, kept[1:])):  # the kept records in the same order (strictly: no id twice)
        plan = _plan(last, where, kept)
        starts = _starts(plan)
        if len(starts) <= 2 * (len(ids) // CHUNK + 1):  # else too many short runs: written anew
            return records, [[*chain.from_iterable(step(col, where) for step in plan)] for col in last.cols], starts
    return records, [_rewritten(col, where, level) for col in last.cols], list(range(0, len(ids), CHUNK))


def _rewritten(col: list[_Run], where: list[int], level: int | None) -> list[_Run]:
    """One family's runs written anew, each record's lines at its new place (-1: a new record),
    frozen at once for a gzip answer: one family's lines at a time beside the cache, not the body's."""
    lines = (*chain.from_iterable(r.lines() for r in col), b"")
    runs = _runs(list(map(lines.__getitem__, where)))
    if level is not None:
        for run in runs:
            run.freeze(level)
    return runs


def _appended(last: _Lines, n: int) -> _Aligned:
    """`last` with n new records after its own: the last run extended up to CHUNK records, then new runs."""
    m, start = len(last.ids), last.starts[-1]
    step = _Step("extend", len(last.starts) - 1, start, m + n, start, m - start)
    cols = [[*c[:-1], *step(c, [])] for c in last.cols]
    return (*last.records, *(None,) * n), cols, [*last.starts[:-1], *_starts([step])]


class _Step:
    """What one run of the last entry becomes: itself, itself with new records after its own, or
    written again from its kept lines (in runs of CHUNK when it grew past 2 * CHUNK)."""

    __slots__ = ("begin", "end", "k", "kind", "old", "start")

    def __init__(self, kind: str, k: int, begin: int, end: int, start: int, old: int) -> None:
        # run k of the last entry (`old` records from `start`) is the records of positions begin..end
        self.kind, self.k, self.begin, self.end, self.start, self.old = kind, k, begin, end, start, old

    def sizes(self) -> list[int]:
        """The number of records of each run the step makes."""
        n = self.end - self.begin
        if self.kind == "extend":
            room = min(n - self.old, max(0, CHUNK - self.old))
            return [self.old + room, *_chunks(n - self.old - room)]
        return [n] if n <= 2 * CHUNK else _chunks(n)

    def __call__(self, col: list[_Run], where: list[int]) -> list[_Run]:
        run = col[self.k]
        if self.kind == "keep":
            return [run]
        if self.kind == "extend":
            first, *more = self.sizes()
            return [run.extended(first - self.old) if first > self.old else run, *_runs((b"",) * sum(more))]
        lines = (*run.lines(), b"")
        block = [lines[o - self.start] if o >= 0 else b"" for o in where[self.begin:self.end]]
        return [_Run(tuple(block))] if len(block) <= 2 * CHUNK else _runs(block)


def _plan(last: _Lines, where: list[int], kept: list[int]) -> list[_Step]:
    """The steps from the last entry's runs to the new ones, the kept records being in the same
    order: a run's block of positions runs from its first kept record (position 0 for the first)
    to the next block's; new records belong to the run of the kept record before them."""
    at = list(compress(range(len(where)), map((-1).__lt__, where)))  # the position of each kept record
    ends = (*last.starts[1:], len(last.ids))
    blocks = []
    for k, (start, end) in enumerate(zip(last.starts, ends)):
        a, b = bisect_left(kept, start), bisect_left(kept, end)
        if a < b:
            blocks.append((k, start, end, a, b))
    plan = []
    for n, (k, start, end, a, b) in enumerate(blocks):
        begin = 0 if n == 0 else at[a]
        stop = blocks[n + 1][3] if n + 1 < len(blocks) else None
        finish = at[stop] if stop is not None else len(where)
        whole = b - a == end - start  # every record of the run is still there
        if whole and finish - begin == end - start:
            kind = "keep"
        elif whole and at[a] == begin and at[b - 1] == begin + (b - a) - 1:
            kind = "extend"
        else:
            kind = "write"
        plan.append(_Step(kind, k, begin, finish, start, end - start))
    return plan


def _chunks(n: int) -> list[int]:
    return [min(CHUNK, n - i) for i in range(0, n, CHUNK)]


def _starts(plan: list[_Step]) -> list[int]:
    """Where each run of the plan's steps starts."""
    out: list[int] = []
    for step in plan:
        out += accumulate(step.sizes()[:-1], initial=step.begin)
    return out


# --- the body ------------------------------------------------------------------------------------

def _entries(listings: Sequence[Listing], policy: SeriesPolicy, tp: _Templates, cache: RecordLines,
             areas: Sequence[Area], table: tuple[Family, ...], stats: SelfMetrics | None, level: int | None
             ) -> dict[Kind, list[_Lines]]:
    """The rendered lines of each listing's records, by kind. An area none of whose families is in
    `table` (the metric lists dropped them all) is not even looked at: its records cost nothing."""
    entries: dict[Kind, list[_Lines]] = {area.kind: [] for area in areas}
    served = {f.kind for f in table}
    for area in areas:
        if area.kind not in served:
            continue
        for lst in listings:
            records = policy.records(lst, area.name)
            if records is None:  # a failed listing exports nothing, and keeps the cached lines
                continue
            entry, rendered = cache.lines(tp, table, lst.target.project_id, area, records, level)
            entries[area.kind].append(entry)
            if stats is not None:
                stats.encoded_records.labels(area.kind.name, "rendered").inc(rendered)
                stats.encoded_records.labels(area.kind.name, "reused").inc(len(records) - rendered)
    return entries


def _pieces(listings: Sequence[Listing], policy: SeriesPolicy, style: Style, cache: RecordLines,
            areas: Sequence[Area], table: tuple[Family, ...], stats: SelfMetrics | None = None,
            level: int | None = None) -> Iterator[bytes | _Run]:
    """The OMS families of the body in order (`table`: families(areas), or those of them the metric lists
    keep): bytes, and runs of record lines (`level`: for a gzip answer at that level)."""
    tp = templates(style, table)
    entries = _entries(listings, policy, tp, cache, areas, table, stats, level)
    for family in table:
        yield tp.header[family.name]
        if family.kind is None:  # a project family: a few lines, written afresh each time
            line = tp.line[family.name]
            yield "".join(line.format(escape_value(lst.target.project_id), *map(escape_value, labels),
                                      go_float(value))
                          for lst in listings for labels, value in family.series(lst)).encode()
            continue
        f = tp.column[family.name]
        for entry in entries[family.kind]:
            yield from entry.cols[f]


def _text(pieces: Iterable[bytes | _Run]) -> Iterator[bytes]:
    for piece in pieces:
        if type(piece) is bytes:
            yield piece
        else:
            yield piece.text()  # type: ignore[union-attr]


_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
_DEFLATE_END = b"\x03\x00"  # an empty final block (fixed Huffman codes)


def gzip_body(pieces: Iterable[bytes | _Run], level: int) -> bytes:
    """One gzip member of the pieces' text; runs are compressed once, and reused so."""
    out = [_GZIP_HEADER]
    crc = size = 0
    loose: list[bytes] = []  # small pieces between runs, compressed together

    def add(seg: _Segment | _Run) -> None:
        nonlocal crc, size
        assert seg.data is not None  # a run's segment() compressed it
        out.append(seg.data)
        crc = isal_zlib.crc32_combine(crc, seg.crc, seg.size)
        size += seg.size

    for piece in pieces:
        if type(piece) is bytes:
            loose.append(piece)
            continue
        if loose:
            add(_Segment(b"".join(loose), level))
            loose = []
        add(piece.segment(level))  # type: ignore[union-attr]
    if loose:
        add(_Segment(b"".join(loose), level))
    out += (_DEFLATE_END, struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(out)


def encode(listings: Sequence[Listing], policy: SeriesPolicy, style: Style, cache: RecordLines | None = None,
           tail: bytes = b"", areas: Sequence[Area] = AREAS, table: tuple[Family, ...] | None = None) -> bytes:
    """The OMS families of `listings` in `style` (`table`: these of them; default all), as `generate_latest`
    would write them, then `tail`."""
    pieces = _pieces(listings, policy, style, cache or RecordLines(), areas, table or families(areas))
    return b"".join(_text(pieces)) + tail


class Renderer:
    """Encodes scrape bodies in worker threads; concurrent scrapes of the same listings share one.

    Scrapes that wait for the same shared listing resume together; the first starts the
    encode, the others with the same content type await that same job. The event loop only waits.
    """

    # ISA-L level 1: ~14x smaller, and 4x less CPU than zlib level 1 (which it also out-compresses here).
    GZIP_LEVEL = 1
    QUIET_WAIT = 30.0  # seconds a render ahead waits at most for the scrapes in flight to be answered

    def __init__(self, stats: SelfMetrics, areas: Sequence[Area] = AREAS) -> None:
        self.lines = RecordLines()
        self._stats = stats
        self._areas = tuple(areas)
        self._inflight: dict[tuple[object, ...], tuple[Sequence[Listing], asyncio.Future[bytes]]] = {}
        self._format: tuple[Style, int | None] | None = None  # the last encode's style and gzip level
        self._warming: set[asyncio.Task[None]] = set()  # renders ahead
        self._pool: ThreadPoolExecutor | None = None  # their thread
        self._serving = 0  # scrapes in flight
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Around a scrape, from its start to its answer. A render ahead waits until no scrape is in
        flight (QUIET_WAIT at most): a scrape waiting for its deadline must not answer late because
        a render ahead held the interpreter."""
        self._serving += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._serving -= 1
            if not self._serving:
                self._quiet.set()

    def warm(self, listing: Listing, policy: SeriesPolicy, table: tuple[Family, ...],
             served: Callable[[Listing], bool] = lambda _: True) -> None:
        """Render a listing that became whole with no scrape waiting for it (a first listing that
        outlived its scrape), in a worker thread and in the format of the last encode, once no
        scrape is in flight: the scrape that serves it finds its lines ready instead of rendering
        every exported record itself (~10 s at 1,000,000 tasks, past a scrape's timeout). One at a
        time, in a thread of its own (the scrapes' renders keep the shared pool); `served` tells
        whether the target is still served when its turn comes."""
        if self._format is None:
            return
        task = asyncio.get_running_loop().create_task(self._ahead(listing, policy, table, served))
        self._warming.add(task)
        task.add_done_callback(self._warmed)

    async def _ahead(self, listing: Listing, policy: SeriesPolicy, table: tuple[Family, ...],
                     served: Callable[[Listing], bool]) -> None:
        try:
            await asyncio.wait_for(self._quiet.wait(), self.QUIET_WAIT)
        except TimeoutError:
            pass  # scrapes all the time (many /probe targets): render anyway
        if not served(listing):
            return
        style, level = self._format or (_PLAIN, None)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oms-render-ahead")
        await asyncio.get_running_loop().run_in_executor(self._pool, self._warm, listing, policy, style, level, table)

    async def aclose(self) -> None:
        """Cancel the renders ahead (at shutdown)."""
        tasks = list(self._warming)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _warm(self, listing: Listing, policy: SeriesPolicy, style: Style, level: int | None,
              table: tuple[Family, ...]) -> None:
        _entries([listing], policy, templates(style, table), self.lines, self._areas, table, self._stats, level)

    def _warmed(self, fut: asyncio.Task[None]) -> None:
        self._warming.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("rendering a listing ahead of its scrape failed", exc_info=fut.exception())

    async def render(self, listings: Sequence[Listing], policy: SeriesPolicy, table: tuple[Family, ...],
                     with_self: bool, accept: str, gzip_ok: bool) -> tuple[bytes, str, bool]:
        """(body, content type, gzipped) of one scrape of the families `table` (catalog.families);
        `with_self` adds the exporter's own metrics."""
        style, content_type, encoder = negotiate(accept)
        key = (tuple(id(lst) for lst in listings), policy, id(table), with_self, content_type, gzip_ok)
        entry = self._inflight.get(key)
        # The entry holds the listings, so their ids in `key` cannot be reused while it exists.
        if entry is None or any(a is not b for a, b in zip(entry[0], listings)):
            fut = asyncio.get_running_loop().run_in_executor(
                None, self._encode, listings, policy, with_self, style, encoder, gzip_ok, table)
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

    def _encode(self, listings: Sequence[Listing], policy: SeriesPolicy, with_self: bool, style: Style,
                encoder: Encoder, gzip_ok: bool, table: tuple[Family, ...] | None = None) -> bytes:
        self._stats.encodes.inc()
        table = table or families(self._areas)
        # The exporter's own metrics last, so that what they count includes this encode.
        tail = (lambda: encoder(self._stats.registry)) if with_self else (
            lambda: b"# EOF\n" if style.openmetrics else b"")
        level = self.GZIP_LEVEL if gzip_ok else None
        self._format = (style, level)
        pieces = _with_tail(_pieces(listings, policy, style, self.lines, self._areas, table, self._stats, level), tail)
        return gzip_body(pieces, self.GZIP_LEVEL) if gzip_ok else b"".join(_text(pieces))


def _with_tail(pieces: Iterator[bytes | _Run], tail: Callable[[], bytes]) -> Iterator[bytes | _Run]:
    yield from pieces
    yield tail()
