"""The Grafana dashboards, provisioning, compose stack and Dockerfile, checked as files.

With `metric_names()`, the PromQL reader of tests/shipped.py, a test fails when the dashboards
or the rules name a metric the exporter does not produce (tests/test_e2e.py runs the same
expressions on a real Prometheus).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from oms_exporter.catalog import ALL_METRIC_NAMES
from tests.conftest import load_module
from tests.shipped import (
    ALERTS_FILE,
    DASHBOARDS,
    RECORDING_FILE,
    alerts,
    all_panels,
    dashboards,
    exprs_of,
    load_rules,
    metric_names,
    recording_rule_names,
    referenced_metric_names,
    template_queries,
    variable_queries,
)

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
GENERATOR = GRAFANA / "generate_dashboards.py"
DS_UID = "${datasource}"
# Variables Grafana defines itself.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__range_ms",
                     "__data", "__url_time_range", "__all", "__dashboard", "__org", "__user", "__from", "__to"}


def load_generator() -> ModuleType:
    return load_module(GENERATOR)


def test_metric_names_reader() -> None:
    expr = ('sum by (status) (rate(oms_a_total{project_id=~"$p", x="a{b}"}[$__rate_interval])) '
            '* on (project_id, task_id) group_left (name) oms_task_info offset 30m '
            '> bool 0.1 * level:oms_b:sum and max_over_time(oms_c[1h:1m]) / 1e3')
    assert metric_names(expr) == {"oms_a_total", "oms_task_info", "level:oms_b:sum", "oms_c"}
    assert metric_names('label_join(x, "dst", "/", "a", "b")') == {"x"}
    assert template_queries('{{ with printf "oms_x{project_id=%q}" $labels.p | query }}') == ['oms_x{project_id="x"}']


def test_every_referenced_metric_exists() -> None:
    """The dashboards and rules name only metrics the exporter produces, or recorded ones."""
    recorded = recording_rule_names()
    names = referenced_metric_names()
    assert {"oms_task_info", "oms_up", "oms_task_status"} <= names  # the reader reads
    unknown = names - ALL_METRIC_NAMES - recorded - {"up"}
    assert not unknown, f"not produced by the exporter nor recorded: {sorted(unknown)}"
    for rule in load_rules(RECORDING_FILE):
        assert metric_names(rule["expr"]) <= ALL_METRIC_NAMES, rule["record"]


def test_recording_rules_are_used() -> None:
    used_by_alerts = {n for a in alerts() for n in metric_names(a["expr"])}
    assert used_by_alerts & recording_rule_names(), "no alert uses a recording rule"


# --- dashboards ----------------------------------------------------------------------------------
def test_committed_dashboards_are_the_generated_ones() -> None:
    rendered = load_generator().render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS.glob("*.json")}
    assert set(rendered) == set(committed)
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: run python grafana/generate_dashboards.py"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_model(name: str) -> None:
    d = dashboards()[name]
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    assert "id" not in d or d["id"] is None  # provisioning assigns ids
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = set()
    cells: set[tuple[int, int]] = set()
    for p in all_panels(d["panels"]):
        assert isinstance(p["id"], int) and p["id"] not in ids, p["title"]
        ids.add(p["id"])
        g = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(g) and g["x"] >= 0 and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= 24, p["title"]
        covered = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not covered & cells, f"{p['title']} overlaps another panel"
        cells |= covered
        if p["type"] == "row":
            continue
        assert p["title"] and p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DS_UID
            assert t["expr"].strip()
    used = set()
    for text in exprs_of(d) + variable_queries(d) + [json.dumps(d["panels"])]:
        used |= set(re.findall(r"\$\{?(\w+)", text))
    assert used - BUILTIN_VARIABLES <= set(variables), f"undefined variables {used - set(variables)}"


def test_tasks_dashboard_contents() -> None:
    d = dashboards()["oms-tasks.json"]
    variables = [v["name"] for v in d["templating"]["list"]]
    assert variables == ["datasource", "project_id", "group_id", "task", "status"]
    statuses = next(v for v in d["templating"]["list"] if v["name"] == "status")["query"].split(",")
    assert statuses == ["waiting", "migrating", "paused", "failed", "succeeded", "retrying", "pausing"]
    panels = {p["title"]: p for p in all_panels(d["panels"])}
    for title in ["Overview", "Tasks per status", "Overall progress", "Total throughput", "Objects failed",
                  "OMS API up", "Listing duration", "Tasks", "Throughput per task", "Progress per task",
                  "Failed objects", "Task status"]:
        assert title in panels, title
    assert panels["Task status"]["type"] == "state-timeline"
    table = panels["Tasks"]
    assert table["type"] == "table"
    assert all(t["format"] == "table" and t["instant"] for t in table["targets"])
    assert all("group_left" in t["expr"] and "oms_task_info" in t["expr"] for t in table["targets"])
    renamed = table["transformations"][1]["options"]["renameByName"].values()
    assert {"Task", "Source", "Destination", "Status", "Progress", "Speed", "ETA", "Failed objects",
            "Skipped objects", "Succeeded objects"} <= set(renamed)
    overrides = {o["matcher"]["options"]: o["properties"] for o in table["fieldConfig"]["overrides"]}
    progress = {p["id"]: p["value"] for p in overrides["Progress"]}
    assert progress["custom.cellOptions"]["type"] == "gauge"  # a progress bar
    link = overrides["Task"][0]["value"][0]["url"]
    detail = dashboards()["oms-task.json"]
    assert link.startswith(f"/d/{detail['uid']}/")
    for var in ("project_id", "task_id"):
        assert f"var-{var}=${{__data.fields.{var}}}" in link
        assert var in [v["name"] for v in detail["templating"]["list"]]


def test_task_variables_match_tasks_without_a_group() -> None:
    # Tasks outside a group have no group_id label: only ".*" (not Grafana's default) matches them.
    d = dashboards()["oms-tasks.json"]
    for v in d["templating"]["list"]:
        if v.get("includeAll"):
            assert v["allValue"] == ".*", v["name"]


# --- provisioning, compose, Dockerfile ------------------------------------------------------------
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def test_provisioning_matches_the_compose_mounts() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text(encoding="utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    services = compose()["services"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/oms.yml").read_text(encoding="utf-8"))
    (provider,) = prov["providers"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


def test_compose_stack() -> None:
    services = compose()["services"]
    assert set(services) == {"oms-exporter", "prometheus", "alertmanager", "grafana"}
    assert services["oms-exporter"]["build"] == "."
    assert "--demo" in services["oms-exporter"]["command"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
    prom = yaml.safe_load((GRAFANA / "prometheus/prometheus.yml").read_text(encoding="utf-8"))
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "oms-exporter"  # OmsExporterDown selects this job
    assert 'job="oms-exporter"' in ALERTS_FILE.read_text(encoding="utf-8")
    assert job["static_configs"][0]["targets"] == ["oms-exporter:10066"]
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"] if v.startswith("./grafana/rules")}
    assert {f"/etc/prometheus/{r}".rsplit("/", 1)[0] for r in prom["rule_files"]} == mounted


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(stages) >= 2 and all(s.startswith("python:3.11-slim") for s in stages)
    assert re.search(r"^RUN .*pip install \.(\s|$)", text, re.MULTILINE)
    # Pure Python: no compiler in either stage.
    assert "gcc" not in text and "apt-get" not in text
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r"^EXPOSE 10066$", text, re.MULTILINE)
    health = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, re.MULTILINE | re.DOTALL)
    assert health and "/healthz" in health.group() and "urllib" in health.group()
    assert "curl" not in health.group()  # not in the slim image
    assert re.search(r'^ENTRYPOINT \["oms-exporter"\]$', text, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".git" in ignored and "oms_exporter" not in ignored
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in src.split():
            assert (ROOT / path).exists(), path


def healthcheck_command() -> list[str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    m = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE)
    assert m, "HEALTHCHECK in exec form expected"
    return json.loads(m.group(1))


async def test_dockerfile_healthcheck_against_a_running_exporter(exporter: Any) -> None:
    client = await exporter()
    cmd = [sys.executable if c == "python" else c.replace(":10066/", f":{client.port}/")
           for c in healthcheck_command()]
    assert cmd[1:] != healthcheck_command()[1:]  # the port was found and replaced
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    await client.close()  # nothing listens any more: unhealthy
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(proc.wait(), 20) != 0
