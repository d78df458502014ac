# Type stub of oms_exporter/_speedups.c: C versions of two functions of exposition.py, and untrack.

from collections.abc import Sequence
from typing import Any

def go_float(v: float, /) -> str: ...
def render_gauges(out: dict[int, bytes], first: int, prefixes: tuple[bytes, ...], ids: bytes,
                  values: tuple[float | None, ...], prev: tuple[float | None, ...] | None,
                  scales: tuple[float | None, ...], /) -> None: ...
def untrack(lists: Sequence[list[Any]], /) -> int: ...
