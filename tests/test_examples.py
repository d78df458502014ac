"""The example Prometheus configurations under examples/prometheus/ pass `promtool check config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from oms_exporter.catalog import ALL_METRIC_NAMES, SELF_METRIC_NAMES
from tests.conftest import promtool, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prometheus"
CONFIGS = sorted(EXAMPLES.glob("*.yml"))


def jobs(config: Path) -> dict[str, dict[str, Any]]:
    return {j["job_name"]: j for j in yaml.safe_load(config.read_text(encoding="utf-8"))["scrape_configs"]}


def test_there_are_examples() -> None:
    names = {p.name for p in CONFIGS}
    assert {"probe-many-projects.yml", "sharded.yml", "ha-pair.yml", "discovery.yml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_promtool_check_config(config: Path) -> None:
    out = run(promtool(), "check", "config", config.name, cwd=EXAMPLES)
    assert out.returncode == 0, out.stdout + out.stderr
    # A warning (e.g. a file_sd glob matching nothing) means the example is incomplete.
    assert "WARNING" not in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_probes_go_through_the_exporter(config: Path) -> None:
    probes = [j for j in jobs(config).values() if j.get("metrics_path") == "/probe"]
    assert probes
    for job in probes:
        relabels = job.get("relabel_configs", [])
        written = {r.get("target_label") for r in relabels}
        if "http_sd_configs" in job:
            # The exporter's /discovery gives each group its address and __param_target (the
            # target's name, which Prometheus sends as ?target=): nothing to rewrite.
            assert not written & {"__address__", "__param_target"}, job["job_name"]
        else:
            # A static or file_sd list of names: each name becomes ?target=, the address the exporter's.
            assert {"__address__", "__param_target"} <= written, job["job_name"]
        # The instance label names the project, not the exporter every project shares.
        assert {"source_labels": ["__param_target"], "target_label": "instance"} in relabels, job["job_name"]


def test_discovery_example_scrapes_each_discovered_project() -> None:
    config = jobs(EXAMPLES / "discovery.yml")
    oms = config["oms"]
    (sd,) = oms["http_sd_configs"]
    (exporter,) = config["oms-exporter"]["static_configs"][0]["targets"]
    assert sd["url"] == f"http://{exporter}/discovery"
    assert oms["metrics_path"] == "/probe" and "static_configs" not in oms and "file_sd_configs" not in oms
    # The groups' project_id (and region, project_name on oms_project_info) equal the exporter's
    # own labels: honoured, not copied to exported_*.
    assert oms["honor_labels"] is True


def test_discovery_example_keeps_only_the_exporters_own_metrics_from_metrics() -> None:
    """The /metrics job keeps the exporter's own families; the projects' series come from /probe."""
    (keep,) = jobs(EXAMPLES / "discovery.yml")["oms-exporter"]["metric_relabel_configs"]
    assert keep["source_labels"] == ["__name__"] and keep["action"] == "keep"
    regex = re.compile(keep["regex"])  # Prometheus anchors it
    for name in ALL_METRIC_NAMES:
        assert bool(regex.fullmatch(name)) == (name in SELF_METRIC_NAMES), name
    assert regex.fullmatch("process_resident_memory_bytes") and regex.fullmatch("python_info")
