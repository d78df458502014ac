"""The example Prometheus configurations under examples/prometheus/ pass `promtool check config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import promtool, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prometheus"
CONFIGS = sorted(EXAMPLES.glob("*.yml"))


def test_there_are_examples() -> None:
    names = {p.name for p in CONFIGS}
    assert {"probe-many-projects.yml", "sharded.yml", "ha-pair.yml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_promtool_check_config(config: Path) -> None:
    out = run(promtool(), "check", "config", config.name, cwd=EXAMPLES)
    assert out.returncode == 0, out.stdout + out.stderr
    # A warning (e.g. a file_sd glob matching nothing) means the example is incomplete.
    assert "WARNING" not in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_probes_go_through_the_exporter(config: Path) -> None:
    text = config.read_text()
    assert "metrics_path: /probe" in text
    assert "target_label: __param_target" in text
