"""The example Prometheus configurations under examples/prometheus/ pass `promtool check config`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prometheus"
CONFIGS = sorted(EXAMPLES.glob("*.yml"))


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        if os.environ.get("OMS_EXPORTER_REQUIRE_E2E") == "1":
            pytest.fail("promtool not found, and OMS_EXPORTER_REQUIRE_E2E=1 requires it")
        pytest.skip("promtool not found: install Prometheus' promtool to check the example configs")
    return path


def test_there_are_examples() -> None:
    names = {p.name for p in CONFIGS}
    assert {"probe-many-projects.yml", "sharded.yml", "ha-pair.yml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_promtool_check_config(config: Path) -> None:
    out = subprocess.run([promtool(), "check", "config", config.name], cwd=EXAMPLES,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # A warning (e.g. a file_sd glob matching nothing) means the example is incomplete.
    assert "WARNING" not in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_probes_go_through_the_exporter(config: Path) -> None:
    text = config.read_text()
    assert "metrics_path: /probe" in text
    assert "target_label: __param_target" in text
