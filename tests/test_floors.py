"""Habits that keep the house in order: lint and types clean, and the declared dependency floors real.

A floor in pyproject.toml is a promise that the exporter runs with that version: this test
installs the package at the lowest versions its requirements allow (`uv pip install
--resolution lowest-direct`) into a fresh virtualenv, runs the demo and scrapes it in the
formats Prometheus asks for, and runs the encoder's byte-identity tests against that
prometheus_client.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from tests.conftest import REQUIRE, ROOT, launch_exporter, parse_metrics, values
from tests.conftest import run as run_command

pytestmark = pytest.mark.slow  # installs the lowest versions, runs ruff and mypy over the tree


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """In the checkout, within 5 minutes (an install at the lowest versions downloads them)."""
    return run_command(*args, timeout=300)


def test_ruff() -> None:
    res = run(sys.executable, "-m", "ruff", "check", "oms_exporter", "tests", "benchmarks", "scripts", "grafana")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy() -> None:
    res = run(sys.executable, "-m", "mypy")  # files and strictness from pyproject.toml
    assert res.returncode == 0, res.stdout + res.stderr


def _get(url: str, headers: dict[str, str]) -> tuple[str, str]:
    """(content type, text) of a scrape."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        body = resp.read()
        if resp.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return resp.headers.get("Content-Type", ""), body.decode()


async def test_the_lowest_declared_versions_run_the_demo(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "uv", "venv", "-q", "--python", sys.executable, str(venv))
    if made.returncode != 0 and not REQUIRE:
        pytest.skip(f"uv cannot make a virtualenv here: {made.stderr.strip()[-300:]}")
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    installed = run(sys.executable, "-m", "uv", "pip", "install", "-q", "--python", python,
                    "--resolution", "lowest-direct", str(ROOT))
    if installed.returncode != 0 and "network" in installed.stderr.lower() and not REQUIRE:
        pytest.skip(f"PyPI not reachable: {installed.stderr.strip()[-300:]}")
    assert installed.returncode == 0, installed.stderr
    versions = run(sys.executable, "-m", "uv", "pip", "list", "--python", python).stdout
    async with launch_exporter(["--demo", "--demo.tasks", "120"], tmp_path, program=[venv / "bin" / "oms-exporter"],
                               cwd=tmp_path) as exporter:
        url = f"{exporter.base}/metrics"
        _, text = _get(url, {})
        assert set(values(parse_metrics(text), "oms_up").values()) == {1}, versions
        prometheus = {"Accept": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                                "text/plain;version=0.0.4;q=0.3,*/*;q=0.2", "Accept-Encoding": "gzip",
                      "X-Prometheus-Scrape-Timeout-Seconds": "10"}
        content_type, body = _get(url, prometheus)
        assert content_type.startswith("application/openmetrics-text"), content_type
        up = [s.value for f in openmetrics_families(body) for s in f.samples if s.name == "oms_up"]
        assert up and set(up) == {1}, (up, versions)
        assert set(values(parse_metrics(_get(url, {"Accept-Encoding": "gzip"})[1]), "oms_up").values()) == {1}
    # The encoder's byte-identity with prometheus_client, at the lowest prometheus_client allowed
    # (pytest and hypothesis added; they bring none of the exporter's own dependencies).
    tools = run(sys.executable, "-m", "uv", "pip", "install", "-q", "--python", python, "pytest", "hypothesis")
    assert tools.returncode == 0, tools.stderr
    identity = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_exposition.py")
    assert identity.returncode == 0, identity.stdout[-3000:] + versions
