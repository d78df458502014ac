"""benchmarks/scrape.py runs end to end (tiny size, no timing assertions: CI machines vary)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmark scripts, run as processes

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scrape.py"


def test_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    pytest.importorskip("huaweicloudsdkoms", reason="the SDK baseline needs the test extra (huaweicloudsdkoms)")
    out_json = tmp_path / "figures.json"
    # 25 ms per call: a listing lasts long enough that the burst's five scrapes (on new
    # connections) all arrive while it runs; at 1 ms one of them sometimes came after it.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tasks", "30", "250", "--latency-ms", "25", "--scrapes", "2",
         "--concurrent", "5", "--baseline-runs", "1", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "SDK baseline" in text and "faster than the SDK baseline" in text
    assert "| tasks | listing | upstream requests/scrape |" in text  # the table of several sizes and modes
    assert "host CPU steal" in text
    figures = json.loads(out_json.read_text())
    assert [(f["tasks"], f["listing"]) for f in figures] == [
        (30, "liveness"), (30, "full"), (250, "liveness"), (250, "full")]
    for f in figures:
        assert f["wrong"] == []  # every timed scrape showed the account as it was
        assert f["burst"]["listings"] == 1  # five concurrent scrapes, one upstream listing
        assert f["burst"]["encodes"] == 1
        assert f["requests"] >= 1 and f["rss_mb"] > 0 and f["raw_bytes"] > 0
        assert 0 <= f["steal_pct"] <= 100
    assert all(f["sdk"]["raw_bytes"] > 0 for f in figures if f["listing"] == "full")


def test_compare_runs_two_checkouts_in_turns() -> None:
    """benchmarks/compare.py, with this checkout on both sides (any two checkouts would do)."""
    root = SCRIPT.parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "compare.py"), str(root), str(root), "--tasks", "30",
         "--latency-ms", "5", "--scrapes", "2"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("30 tasks") and "new/old: CPU" in lines[-1]
    assert sum("median scrape" in line and "peak RSS" in line for line in lines) == 2


def test_discovery_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out_json = tmp_path / "discovery.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "discovery.py"), "--projects", "6", "--tasks", "40",
         "--latency-ms", "1", "--scrapes", "2", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 discovered projects x 40 tasks" in proc.stdout and "every scrape exact" in proc.stdout
    figures = json.loads(out_json.read_text())
    assert figures["iam_calls"] == 1 and figures["discovery_requests"] == 6  # one probe per project
    assert len(figures["rows"]) == 3 and all(r["requests"] >= 6 for r in figures["rows"])


def test_edge_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out_json = tmp_path / "edge.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "edge.py"), "--tasks", "2000", "--latency-ms", "1", "--scrapes", "2",
         "--interval", "1", "--timeout", "5", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "first up: scrape 1" in proc.stdout
    rows = json.loads(out_json.read_text())
    assert [r["up"] for r in rows] == [1, 1] and all(r["exact"] for r in rows)
    assert rows[0]["requests"] > rows[1]["requests"]  # the first listing in full, then by liveness
