"""The encode step: the families of `metrics.FAMILIES` as prometheus_client would write them, fast.

prometheus_client builds a Sample object per series and formats it field by field: seconds
for the ~250,000 series of 10,000 tasks. This module writes the same bytes from one idea:
a record's lines are rendered once and kept for as long as OMS returns the same record
(the parser hands back the same object for an unchanged record), and a changed record
re-renders only the families whose inputs changed. The lines are kept family by family,
in record order, in chunks of CHUNK records, so an encode is mostly joining ready lines,
and a chunk whose lines did not change keeps its compressed form for gzip (finished tasks
are most of a project: almost nothing is compressed again).

`collector.SnapshotCollector` is the reference; the tests prove this module's output
identical to prometheus_client's text (0.0.4 and 1.0.0) and OpenMetrics encoders for every
escaping scheme, with escaping and number formatting written here and checked against it.
"""

from __future__ import annotations

import asyncio
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from math import copysign
from operator import attrgetter, is_not
from typing import Any

from isal import isal_zlib
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from oms_exporter.collector import SeriesPolicy, SnapshotCollector
from oms_exporter.lister import Listing
from oms_exporter.metrics import FAMILIES, Family, Kind, SelfMetrics

Encoder = Callable[[CollectorRegistry], bytes]
CHUNK = 2000  # records per chunk of a family's lines
ESCAPINGS = ("allow-utf-8", "underscores", "dots", "values")


# --- formats -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Style:
    """An output format prometheus_client can write: text or OpenMetrics, and a name-escaping scheme."""

    openmetrics: bool
    escaping: str


def negotiate(accept: str) -> tuple[Style | None, str, Encoder]:
    """prometheus_client's content negotiation, and the Style of the format it chose.

    The Style comes from the chosen Content-Type; it is None for a format this module does
    not write (a newer prometheus_client's), and the caller then uses the reference encoder.
    """
    encoder, content_type = choose_encoder(accept)
    kind, *params = (p.strip() for p in content_type.split(";"))
    options = dict(p.partition("=")[::2] for p in params)
    escaping = options.get("escaping", "underscores")
    if kind not in ("text/plain", "application/openmetrics-text") or escaping not in ESCAPINGS:
        return None, content_type, encoder
    if kind == "text/plain" and options.get("version") not in ("0.0.4", "1.0.0"):
        return None, content_type, encoder
    # OpenMetrics 1.0.0; prometheus_client before 0.22 labels the same text version=0.0.1.
    if kind != "text/plain" and options.get("version", "1.0.0") not in ("1.0.0", "0.0.1"):
        return None, content_type, encoder
    return Style(kind != "text/plain", escaping), content_type, encoder


_LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The name escaping below holds for names of the legacy character set without ":" only.
for _f in FAMILIES:
    assert all(_LEGACY_NAME.fullmatch(n) for n in (_f.name, *_f.label_names)), _f.name


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

    def __init__(self, style: Style) -> None:
        self.style = style
        self.header = {f.name: self._header(f) for f in FAMILIES}
        # {0}, {1}, ...: the label values in the family's label order (project_id, the record's
        # id, its own labels); the last placeholder is the value. Labels sorted, as prometheus_client writes them.
        self.line = {f.name: self._line(f) for f in FAMILIES}
        # Families of one numeric field share one label set per record: a gauge line is
        # prefix + ids + value, with ids rendered once per record.
        self.gauge_prefix = {f.name: _escape_name(f.name, style, sample=True) + "{" for f in FAMILIES if f.gauge}
        self.ids: dict[Kind, str] = {}
        for f in FAMILIES:
            if f.kind is not None and f.kind not in self.ids:
                self.ids[f.kind] = self._labels(f.label_names[:2]) + "}} "
        # Equal keys: byte-identical record lines, so such styles share one cache entry.
        self.key = tuple(self.line[f.name] for f in FAMILIES if f.kind is not None)

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


_templates: dict[Style, _Templates] = {}


def templates(style: Style) -> _Templates:
    tp = _templates.get(style)
    if tp is None:
        tp = _templates[style] = _Templates(style)
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


_id_of = attrgetter("id")


class _KindRenderer:
    """Renders the lines of one kind of record in one style, family by family."""

    def __init__(self, tp: _Templates, kind: Kind) -> None:
        self.families = tuple(f for f in FAMILIES if f.kind is kind)
        self.ids = tp.ids[kind]
        gauges = [(i, f) for i, f in enumerate(self.families) if f.gauge]
        self.gauge_index = tuple(i for i, _ in gauges)
        self.gauge_prefix = tuple(tp.gauge_prefix[f.name].encode() for _, f in gauges)
        self.gauge_divisor = tuple(None if f.divisor == 1 else f.divisor for _, f in gauges)
        self.gauges_of = _getter([f.fields[0] for _, f in gauges])
        self.others = tuple((i, f, tp.line[f.name], f.read) for i, f in enumerate(self.families) if not f.gauge)
        # Everything the other families read, in one tuple: for most changed records (a task
        # that moved on) it is unchanged, and one comparison says so for all of them.
        self.rest_of = _getter(list(dict.fromkeys(field for _, f, _, _ in self.others for field in f.fields)))

    def render(self, r: Any, p: Any, pid: str) -> dict[int, bytes]:
        """The lines of `r` that differ from those of `p` (its previous record, or None), by family index."""
        rid = ""
        out: dict[int, bytes] = {}
        values = self.gauges_of(r)
        if p is None:
            rid = escape_value(str(r.id))
            ids = self.ids.format(pid, rid).encode()
            for f, prefix, divisor, v in zip(self.gauge_index, self.gauge_prefix, self.gauge_divisor, values):
                if v is not None:
                    out[f] = prefix + ids + go_float(v if divisor is None else v / divisor).encode() + b"\n"
        else:
            before = self.gauges_of(p)
            ids = b""
            for f, prefix, divisor, v, pv in zip(self.gauge_index, self.gauge_prefix, self.gauge_divisor, values,
                                                 before):
                # Written alike (see _same), inline: this runs for every gauge of every changed record.
                # Equal zeros differ only by sign (-0.0 is written "-0.0").
                if v is pv or (v == pv and (v or copysign(1.0, v) == copysign(1.0, pv))):
                    continue
                if v is None:
                    out[f] = b""
                    continue
                if not ids:
                    rid = escape_value(str(r.id))
                    ids = self.ids.format(pid, rid).encode()
                out[f] = prefix + ids + go_float(v if divisor is None else v / divisor).encode() + b"\n"
        rest_alike = p is not None and self.rest_of(r) == self.rest_of(p)
        for f, family, line, read in self.others:
            if p is not None and rest_alike and not family.strict:
                continue
            key = read(r)
            if p is not None and _same(key, read(p), family.strict):
                continue
            if not rid:
                rid = escape_value(str(r.id))
            text = "".join(line.format(pid, rid, *map(escape_value, labels), go_float(value))
                           for labels, value in family.series(key))
            if text or p is not None:
                out[f] = text.encode()
        return out


def _getter(fields: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving the values of `fields` of a record, always as a tuple."""
    if len(fields) > 1:
        return attrgetter(*fields)
    if fields:
        one = attrgetter(fields[0])
        return lambda r: (one(r),)
    return lambda r: ()


# --- the cache of rendered lines -----------------------------------------------------------------

class _Segment:
    """A piece of the body as a raw DEFLATE stream that ends on a full flush, with its CRC-32 and length.

    Such segments, each from a fresh compressor (no reference into earlier data), concatenate
    into one valid DEFLATE stream: `gzip_body` puts them in a gzip member.
    """

    __slots__ = ("crc", "data", "lines", "size")

    def __init__(self, data: bytes, crc: int, size: int, lines: tuple[bytes, ...] | None = None) -> None:
        self.data, self.crc, self.size, self.lines = data, crc, size, lines

    @classmethod
    def of(cls, text: bytes, level: int, lines: tuple[bytes, ...] | None = None) -> _Segment:
        z = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
        return cls(z.compress(text) + z.flush(isal_zlib.Z_FULL_FLUSH), isal_zlib.crc32(text), len(text), lines)


class _Columns:
    """One project's records of one kind, rendered in one style, family by family.

    Family f's line of records[i] is cols[f][i // CHUNK][i % CHUNK] (b"" for none). Chunks are
    tuples, never changed once built: an encode makes new tuples for the chunks it changes
    and shares the others with the entry before, so threads read entries freely, and an
    unchanged chunk is the same object from one encode to the next. Tuples of bytes are
    untracked by CPython's cyclic collector after their first collection.
    """

    __slots__ = ("cols", "ids", "records", "segments")

    def __init__(self, ids: tuple[object, ...], records: tuple[Any, ...], cols: list[list[tuple[bytes, ...]]],
                 segments: dict[tuple[int, int], _Segment]) -> None:
        self.ids, self.records, self.cols, self.segments = ids, records, cols, segments


def _chunks(lines: Sequence[bytes]) -> list[tuple[bytes, ...]]:
    return [tuple(lines[i:i + CHUNK]) for i in range(0, len(lines), CHUNK)]


class RecordLines:
    """Rendered lines of the records of the last encode, per (style, project, kind).

    Records that vanished upstream (or aged out) are forgotten, so the cache holds one
    listing per project, kind and style. Safe to use from several threads at once: entries
    are never changed once published, and the last encode's entry wins.
    """

    MAX_STYLES = 4

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[object, str, Kind], _Columns] = OrderedDict()
        self._renderers: dict[tuple[Style, Kind], _KindRenderer] = {}
        self._lock = threading.Lock()

    def columns(self, tp: _Templates, pid: str, kind: Kind, records: Sequence[Any]) -> tuple[_Columns, int]:
        """The lines of `records` (in id order) in the style of `tp`, and how many records were rendered."""
        key = (tp.key, pid, kind)
        with self._lock:
            last = self._entries.get(key)
            renderer = self._renderers.get((tp.style, kind))
            if renderer is None:
                renderer = self._renderers[(tp.style, kind)] = _KindRenderer(tp, kind)
        n_families = len(renderer.families)
        ids = tuple(map(_id_of, records))
        new = tuple(records)
        n = len(new)
        segments: dict[tuple[int, int], _Segment]
        if last is None:
            base: Sequence[Any] = (None,) * n
            cols = [_chunks((b"",) * n) for _ in range(n_families)]
            segments = {}
        else:
            segments = last.segments
            m = len(last.ids)
            if ids == last.ids:  # the same records in the same order: the common case
                base, cols = last.records, [list(c) for c in last.cols]
            elif n > m and ids[:m] == last.ids:  # new records after the known ones (ids grow)
                full = m // CHUNK  # full chunks stay; a last, partial one is extended
                base = last.records + (None,) * (n - m)
                cols = [c[:full] + _chunks(tuple(chain.from_iterable(c[full:])) + (b"",) * (n - m))
                        for c in last.cols]
            else:  # records came or went: move the known ones' lines to their new places
                index = {rid: i for i, rid in enumerate(last.ids)}
                where = [index.get(rid, m) for rid in ids]  # m: a new record, the b"" / None appended below
                base = list(map((*last.records, None).__getitem__, where))
                cols = [_chunks(list(map((*chain.from_iterable(c), b"").__getitem__, where))) for c in last.cols]
        pid_e = escape_value(pid)
        rendered = 0
        # (family, chunk) -> the chunk's lines being written; a tuple again below (never changed in place).
        writing: dict[tuple[int, int], list[bytes]] = {}
        for i in compress(range(n), map(is_not, new, base)):
            changes = renderer.render(new[i], base[i], pid_e)
            if changes:  # an equal record in a new object changes nothing
                rendered += 1
                c, j = divmod(i, CHUNK)
                for f, line in changes.items():
                    chunk = writing.get((f, c))
                    if chunk is None:
                        chunk = writing[(f, c)] = list(cols[f][c])
                    chunk[j] = line
        for (f, c), chunk in writing.items():
            cols[f][c] = tuple(chunk)
        entry = _Columns(ids, new, cols, segments)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            styles = list(dict.fromkeys(k[0] for k in self._entries))
            for gone in styles[:-self.MAX_STYLES]:
                for k in [k for k in self._entries if k[0] == gone]:
                    del self._entries[k]
        return entry, rendered


# --- the body ------------------------------------------------------------------------------------

class _Chunk:
    """Lines of up to CHUNK records of one family of one project: a piece of the body."""

    __slots__ = ("key", "lines", "segments")

    def __init__(self, lines: tuple[bytes, ...], segments: dict[tuple[int, int], _Segment],
                 key: tuple[int, int]) -> None:
        self.lines, self.segments, self.key = lines, segments, key

    def segment(self, level: int) -> _Segment:
        """The chunk compressed: the last encode's segment when it holds the same lines."""
        old = self.segments.get(self.key)
        lines = self.lines
        if old is not None and (old.lines is lines or old.lines == lines):
            return old
        seg = _Segment.of(b"".join(lines), level, lines)
        self.segments[self.key] = seg
        return seg


# A record family's position among the families of its kind (its column in _Columns.cols).
_FAMILY_INDEX = {f.name: [g for g in FAMILIES if g.kind is f.kind].index(f) for f in FAMILIES if f.kind}


def _pieces(listings: Sequence[Listing], policy: SeriesPolicy, style: Style, cache: RecordLines,
            tail: bytes | Callable[[], bytes], stats: SelfMetrics | None = None) -> Iterator[bytes | _Chunk]:
    """The body in order, family by family: bytes, and _Chunks of record lines, then `tail`.

    A callable `tail` (the exporter's own metrics) is called last, so that what it counts
    includes this encode.
    """
    tp = templates(style)
    projects: dict[Kind, list[_Columns]] = {}
    for family in FAMILIES:
        kind = family.kind
        if kind is not None and kind not in projects:
            # A failed listing exports nothing and leaves the project's cached lines for its next success.
            projects[kind] = []
            for lst in listings:
                records = policy.records(lst, kind)
                if records is None:
                    continue
                entry, rendered = cache.columns(tp, lst.target.project_id, kind, records)
                projects[kind].append(entry)
                if stats is not None:
                    stats.encoded_records.labels(kind.name, "rendered").inc(rendered)
                    stats.encoded_records.labels(kind.name, "reused").inc(len(records) - rendered)
    out: list[bytes] = []
    for family in FAMILIES:
        if family.kind is None:
            # Per-project families: a few lines, written afresh each time.
            line = tp.line[family.name]
            text = "".join(line.format(escape_value(lst.target.project_id), *map(escape_value, labels),
                                       go_float(value))
                           for lst in listings for labels, value in family.series(lst))
            out += (tp.header[family.name], text.encode())
            continue
        if out:
            yield b"".join(out)
            out = []
        yield tp.header[family.name]
        f = _FAMILY_INDEX[family.name]
        for entry in projects[family.kind]:
            for c, chunk in enumerate(entry.cols[f]):
                yield _Chunk(chunk, entry.segments, (f, c))
    if out:
        yield b"".join(out)
    for entries in projects.values():  # segments past the end of a shorter record list
        for entry in entries:
            n = len(entry.cols[0]) if entry.cols else 0
            for key in [k for k in list(entry.segments) if k[1] >= n]:
                entry.segments.pop(key, None)
    yield tail() if callable(tail) else tail


def encode(listings: Sequence[Listing], policy: SeriesPolicy, style: Style, cache: RecordLines | None = None,
           tail: bytes = b"") -> bytes:
    """The OMS families of `listings` in `style`, as `generate_latest` would write them, then `tail`."""
    return b"".join(_text(_pieces(listings, policy, style, cache or RecordLines(), tail)))


def _text(pieces: Iterable[bytes | _Chunk]) -> Iterator[bytes]:
    for piece in pieces:
        yield piece if type(piece) is bytes else b"".join(piece.lines)  # type: ignore[union-attr]


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

    Scrapes that wait for the same shared listing resume together; the first starts the
    encode, the others with the same content type await that same job. The event loop only waits.
    """

    # ISA-L level 1: ~14x smaller, and 4x less CPU than zlib level 1 (which it also out-compresses here).
    GZIP_LEVEL = 1

    def __init__(self, stats: SelfMetrics) -> None:
        self.lines = RecordLines()
        self._stats = stats
        self._inflight: dict[tuple[object, ...], tuple[Sequence[Listing], asyncio.Future[bytes]]] = {}

    async def render(self, listings: Sequence[Listing], policy: SeriesPolicy, with_self: bool,
                     accept: str, gzip_ok: bool) -> tuple[bytes, str, bool]:
        """(body, content type, gzipped) of one scrape; `with_self` adds the exporter's own metrics."""
        style, content_type, encoder = negotiate(accept)
        key = (tuple(id(lst) for lst in listings), policy, with_self, content_type, gzip_ok)
        entry = self._inflight.get(key)
        # The entry holds the listings, so their ids in `key` cannot be reused while it exists.
        if entry is None or any(a is not b for a, b in zip(entry[0], listings)):
            fut = asyncio.get_running_loop().run_in_executor(
                None, self._encode, listings, policy, with_self, style, encoder, gzip_ok)
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

    def _encode(self, listings: Sequence[Listing], policy: SeriesPolicy, with_self: bool, style: Style | None,
                encoder: Encoder, gzip_ok: bool) -> bytes:
        self._stats.encodes.inc()
        if style is None:  # a format this module does not write: the reference encoder
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(listings, policy))
            if with_self:
                registry.register(self._stats.registry)
            text = encoder(registry)
            return gzip_body([text], self.GZIP_LEVEL) if gzip_ok else text
        if with_self:
            registry = self._stats.registry

            def tail() -> bytes:
                return encoder(registry)
        else:
            tail = b"# EOF\n" if style.openmetrics else b""  # type: ignore[assignment]
        pieces = _pieces(listings, policy, style, self.lines, tail, self._stats)
        return gzip_body(pieces, self.GZIP_LEVEL) if gzip_ok else b"".join(_text(pieces))
