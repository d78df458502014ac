"""The C speedups write exactly what their Python versions write (tests/test_exposition.py runs the encoder on both)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oms_exporter import exposition as x

needs_c = pytest.mark.skipif(not x.SPEEDUPS, reason="the C speedups are not built")


def test_speedups_are_built_where_required() -> None:
    """CI sets OMS_EXPORTER_REQUIRE_SPEEDUPS=1: a build that lost its C module fails there (the Docker build imports it)."""
    if os.environ.get("OMS_EXPORTER_REQUIRE_SPEEDUPS") == "1":
        assert x.SPEEDUPS, "oms_exporter._speedups was not built (is a C compiler installed?)"


any_number = st.one_of(st.integers(-(2**80), 2**80), st.integers(-(10**7), 10**7), st.floats(),
                       st.floats(1e5, 1e17), st.sampled_from([0, 0.0, -0.0, 2**53, -(2**53), 1_000_000, True]))


@needs_c
@settings(max_examples=2000, deadline=None)
@given(any_number)
def test_c_go_float_is_the_python_one(v: float) -> None:
    from prometheus_client.utils import floatToGoString

    assert x._go_float_c(v) == x._go_float_py(v) == floatToGoString(v)


def alike(v: object) -> list[object]:
    if isinstance(v, bool) or v is None:
        return [v]
    if isinstance(v, int):
        return [v, float(v), v + 0]
    assert isinstance(v, float)
    return [v, -v, float(repr(v)), int(v) if v == v and abs(v) != float("inf") else v]


@needs_c
@settings(max_examples=500, deadline=None)
@given(st.data(), st.integers(1, 12))
def test_c_render_gauges_is_the_python_one(data: st.DataObject, n: int) -> None:
    values = tuple(data.draw(st.lists(st.one_of(st.none(), any_number), min_size=n, max_size=n)))
    # Previous values: others, the same object, or equal ones of another type or sign (1 and 1.0, 0.0 and -0.0).
    prev = data.draw(st.one_of(st.none(), st.tuples(*(st.one_of(st.none(), any_number, st.sampled_from(alike(v)))
                                                       for v in values))))
    scales = tuple(data.draw(st.lists(st.sampled_from([None, 0.001, 2]), min_size=n, max_size=n)))
    prefixes = tuple(f"metric_{k}".encode() for k in range(n))
    ids = '{project_id="p",task_id="é7"} '.encode()
    got: x.Changes = {}
    want: x.Changes = {}
    x._render_gauges_c(got, 3, prefixes, ids, values, prev, scales)
    x._render_gauges_py(want, 3, prefixes, ids, values, prev, scales)
    assert got == want
    assert list(got) == list(want)  # the same order of families


@needs_c
def test_c_render_gauges_rejects_wrong_arguments() -> None:
    with pytest.raises(TypeError):
        x._render_gauges_c({}, 3, (b"a",), "not bytes", (1,), None, (None,))
    with pytest.raises(ValueError):
        x._render_gauges_c({}, 3, (b"a", b"b"), b"", (1,), None, (None,))
    with pytest.raises(TypeError):
        x._render_gauges_c({}, 3, ("a",), b"", (1,), None, (None,))


NAN = float("nan")
PAIRS = [(0.0, float("0.0")), (-0.0, float("-0.0")), (0, 0.0), (0.0, -0.0), (0, -0.0), (1, 1.0), (1.5, float("1.5")),
         (NAN, NAN), (NAN, float("nan")), (None, 0), (0, None), (None, None), (2**60, int("1" + "0" * 18) // 10),
         (True, 1), (1, True), (2**70, float(2**70))]


@needs_c
@pytest.mark.parametrize(("v", "pv"), PAIRS, ids=[f"{v!r}-after-{pv!r}" for v, pv in PAIRS])
def test_c_render_gauges_on_the_edges_of_equal(v: object, pv: object) -> None:
    """Equal values in other objects, zeros of both signs, NaN, None: which lines change is decided alike."""
    got: x.Changes = {}
    want: x.Changes = {}
    for scale in (None, 0.001):
        x._render_gauges_c(got, 3, (b"m",), b" ", (v,), (pv,), (scale,))
        x._render_gauges_py(want, 3, (b"m",), b" ", (v,), (pv,), (scale,))
        assert got == want


def test_without_the_c_module_the_python_versions_run() -> None:
    """An install without a C compiler: exposition imports, says so, and encodes with the Python twins."""
    code = (
        "import sys; sys.modules['oms_exporter._speedups'] = None\n"  # import fails as if never built
        "from oms_exporter import exposition as x\n"
        "assert not x.SPEEDUPS and x.go_float is x._go_float_py and x._render_gauges is x._render_gauges_py\n"
        "assert x._untrack is x._untrack_py\n"
        "out = {}; x._render_gauges(out, 3, (b'm', b'n'), b' ', (1234567, None), None, (None, None))\n"
        "assert out == {3: b'm 1.234567e+06\\n'}, out\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@needs_c
def test_untrack_only_lists_of_objects_the_collector_does_not_track() -> None:
    from oms_exporter.model import BandwidthWindow, Task

    task = Task(1, *[""] * 10, *[None] * 13, (BandwidthWindow("00:00", "08:00", 1),), "", "")  # type: ignore[arg-type]
    lines, ids, records, empty = [b"a\n", b""], [1, 2**70], [task], []
    nested, with_tuple, with_dict = [b"", [b""]], [(1,)], [{}]
    lists = [lines, ids, records, empty, nested, with_tuple, with_dict]
    assert all(gc.is_tracked(x) for x in lists)
    assert x._untrack_c([*lists, "not a list", (b"tuple",)]) == 4
    assert [gc.is_tracked(x) for x in lists] == [False, False, False, False, True, True, True]
    assert x._untrack_c([lines]) == 0  # already untracked
    lines.append(b"more\n")  # lines stay lines: still untracked, still correct
    assert not gc.is_tracked(lines) and lines == [b"a\n", b"", b"more\n"]
    gc.collect()
    with pytest.raises(TypeError):
        x._untrack_c(1)  # type: ignore[arg-type]


class _EqAlways(float):
    """A value whose == and != disagree: the C code must ask the question the Python code asks (!=)."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = float.__hash__


@needs_c
@pytest.mark.parametrize(("v", "pv"), [(1.0, _EqAlways(2.0)), (_EqAlways(2.0), 1.0)])
def test_c_render_gauges_asks_not_equal_like_the_python_version(v: float, pv: float) -> None:
    got: x.Changes = {}
    want: x.Changes = {}
    x._render_gauges_c(got, 3, (b"m",), b" ", (v,), (pv,), (None,))
    x._render_gauges_py(want, 3, (b"m",), b" ", (v,), (pv,), (None,))
    assert got == want and len(want) == 1
