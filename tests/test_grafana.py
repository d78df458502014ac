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
from tests.conftest import load_module, require_binary, run
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
    assert variables == ["datasource", "region", "project_id", "group_id", "task", "status"]
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


def test_region_variable_applies_to_every_project_panel() -> None:
    """The region comes from oms_project_info; every query that selects projects also drops the
    projects of the regions not selected (the discovery table, per entry, and the version do not)."""
    d = dashboards()["oms-tasks.json"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["region"]["query"] == "label_values(oms_project_info, region)"
    assert "$region" in variables["project_id"]["query"]  # the project list follows the region
    names = [v["name"] for v in d["templating"]["list"]]
    assert names.index("region") < names.index("project_id")  # Grafana resolves them in order
    for p in all_panels(d["panels"]):
        for t in p.get("targets", []):
            if "$project_id" in t["expr"]:
                assert "$region" in t["expr"], (p["title"], t["refId"])
    assert "oms_project_info" in referenced_metric_names()


def test_projects_and_discovery_tables() -> None:
    d = dashboards()["oms-tasks.json"]
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows[rows.index("Projects") + 1] == "Exporter"
    panels = {p["title"]: p for p in all_panels(d["panels"])}
    projects, discovery = panels["Projects"], panels["Discovery"]
    assert projects["type"] == discovery["type"] == "table"
    for table in (projects, discovery):
        assert all(t["format"] == "table" and t["instant"] for t in table["targets"])
    renamed = projects["transformations"][1]["options"]["renameByName"]
    assert {"Project", "Region", "Up", "Tasks"} <= set(renamed.values())
    assert "oms_project_info" in projects["targets"][0]["expr"]
    assert renamed["project_name"] == "Project" and renamed["region"] == "Region"
    # Every state of oms_discovery_projects is a column, and so are the refresh and the list's age.
    exprs = " ".join(t["expr"] for t in discovery["targets"])
    states = re.findall(r'oms_discovery_projects\{state="(\w+)"\}', exprs)
    assert states == ["scraped", "forbidden", "not_offered", "disabled", "excluded"]
    assert "oms_discovery_success" in exprs and "oms_discovery_last_success_timestamp_seconds" in exprs
    columns = discovery["transformations"][1]["options"]["renameByName"]
    assert len(set(columns.values())) == len(columns) == 2 + len(states) + 1


def test_every_join_takes_one_info_series_per_record() -> None:
    """Two exporters may serve one project for a while: every series then comes twice (other
    instance). A join needs one info series per record on its `one` side, or it fails with
    many-to-many matching; so each group_left joins a topk by the record's ids."""
    joins = 0
    for name, d in dashboards().items():
        for expr in exprs_of(d):
            for m in re.finditer(r"\bon \(([^)]*)\) group_left \([^)]*\)\s*(.{0,40})", expr):
                joins += 1
                assert m.group(2).startswith(f"topk by ({m.group(1)}) (1, "), (name, expr)
    assert joins >= 10


# --- dashboard queries on promtool: regions, replicas, exporters without oms_project_info ------------
# p1 (cn-north-4) is served by two exporters (a, b: replicas, or /metrics and /probe), p2
# (cn-east-3) by one, p3 by an exporter older than oms_project_info (no region known).
QUERY_SERIES = {
    'oms_project_info{project_id="p1", project_name="cn-north-4", region="cn-north-4", instance="a"}': "1",
    'oms_project_info{project_id="p1", project_name="cn-north-4", region="cn-north-4", instance="b"}': "1",
    'oms_project_info{project_id="p2", project_name="cn-east-3_team", region="cn-east-3", instance="a"}': "1",
    'oms_up{project_id="p1", instance="a"}': "1", 'oms_up{project_id="p1", instance="b"}': "1",
    'oms_up{project_id="p2", instance="a"}': "0", 'oms_up{project_id="p3", instance="old"}': "1",
    'oms_tasks{project_id="p1", status="migrating", instance="a"}': "3",
    'oms_tasks{project_id="p1", status="migrating", instance="b"}': "3",
    'oms_tasks{project_id="p2", status="migrating", instance="a"}': "2",
    'oms_tasks{project_id="p3", status="migrating", instance="old"}': "4",
    'oms_tasks_speed_bytes_per_second{project_id="p1", status="migrating", instance="a"}': "100",
    'oms_tasks_speed_bytes_per_second{project_id="p1", status="migrating", instance="b"}': "100",
    'oms_tasks_speed_bytes_per_second{project_id="p2", status="migrating", instance="a"}': "10",
    'oms_tasks_speed_bytes_per_second{project_id="p3", status="migrating", instance="old"}': "1000",
    'oms_task_info{project_id="p1", task_id="t1", name="one", group_id="g1", group_type="GROUP_TASK", instance="a"}':
        "1",
    'oms_task_info{project_id="p1", task_id="t1", name="one", group_id="g1", group_type="GROUP_TASK", instance="b"}':
        "1",
    'oms_task_info{project_id="p2", task_id="t2", name="two", instance="a"}': "1",
    'oms_task_status{project_id="p1", task_id="t1", status="migrating", instance="a"}': "1",
    'oms_task_status{project_id="p1", task_id="t1", status="migrating", instance="b"}': "1",
    'oms_task_status{project_id="p2", task_id="t2", status="migrating", instance="a"}': "1",
    # Replica b listed later: it has seen more progress.
    'oms_task_progress_ratio{project_id="p1", task_id="t1", instance="a"}': "0.5",
    'oms_task_progress_ratio{project_id="p1", task_id="t1", instance="b"}': "0.6",
    'oms_task_progress_ratio{project_id="p2", task_id="t2", instance="a"}': "0.2",
    'oms_task_group_status{project_id="p1", group_id="g1", status="migrating", instance="a"}': "1",
    'oms_task_group_status{project_id="p1", group_id="g1", status="migrating", instance="b"}': "1",
    'oms_task_group_info{project_id="p1", group_id="g1", src_cloud="AWS", src_bucket="s", dst_bucket="d", '
    'instance="a"}': "1",
    'oms_task_group_info{project_id="p1", group_id="g1", src_cloud="AWS", src_bucket="s", dst_bucket="d", '
    'instance="b"}': "1",
    'oms_discovery_success{discovery="default", instance="a"}': "1",
    'oms_discovery_success{discovery="default", instance="b"}': "0",
    'oms_discovery_projects{discovery="default", state="forbidden", instance="a"}': "1",
    'oms_discovery_projects{discovery="default", state="forbidden", instance="b"}': "1",
}
ALL = {"region": ".*", "project_id": ".*", "group_id": ".*", "task": ".*", "status": ".*"}
# (dashboard, panel, refId, variables, wrapper of the query, expected samples: labels -> value)
QUERY_CASES: list[tuple[str, str, str, dict[str, str], str, dict[str, float]]] = [
    # Per-project totals: a project served twice counts once; the region drops the other
    # region's projects and keeps those without a known region.
    ("oms-tasks.json", "Tasks per status", "A", ALL, "{}", {'{status="migrating"}': 9}),
    ("oms-tasks.json", "Tasks per status", "A", {**ALL, "region": "cn-north-4"}, "{}", {'{status="migrating"}': 7}),
    ("oms-tasks.json", "Total throughput", "A", ALL, "{}", {"{}": 1110}),
    ("oms-tasks.json", "Total throughput", "A", {**ALL, "region": "cn-east-3"}, "{}", {"{}": 1010}),
    ("oms-tasks.json", "OMS API up", "A", {**ALL, "region": "cn-north-4"}, "{}",
     {'{project_id="p1"}': 1, '{project_id="p3"}': 1}),
    # Per-task series: one per task (the largest of the copies), joined to one info series.
    ("oms-tasks.json", "Progress per task", "A", ALL, "{}",
     {'{project_id="p1", task_id="t1", name="one"}': 0.6, '{project_id="p2", task_id="t2", name="two"}': 0.2}),
    ("oms-tasks.json", "Progress per task", "A", {**ALL, "region": "cn-east-3"}, "{}",
     {'{project_id="p2", task_id="t2", name="two"}': 0.2}),
    ("oms-tasks.json", "Tasks", "A", ALL, "count by (project_id, task_id) ({})",
     {'{project_id="p1", task_id="t1"}': 1, '{project_id="p2", task_id="t2"}': 1}),
    ("oms-tasks.json", "Task groups", "A", ALL, "count by (project_id, group_id) ({})",
     {'{project_id="p1", group_id="g1"}': 1}),
    ("oms-tasks.json", "Projects", "A", ALL, "count by (project_id, project_name, region) ({})",
     {'{project_id="p1", project_name="cn-north-4", region="cn-north-4"}': 1,
      '{project_id="p2", project_name="cn-east-3_team", region="cn-east-3"}': 1}),
    ("oms-tasks.json", "Projects", "B", {**ALL, "region": "cn-east-3"}, "{}",
     {'{project_id="p2"}': 0, '{project_id="p3"}': 1}),
    ("oms-tasks.json", "Discovery", "B", ALL, "{}", {'{discovery="default"}': 0}),
    ("oms-tasks.json", "Discovery", "D", ALL, "{}", {'{discovery="default"}': 1}),
    ("oms-task-group.json", "Progress of the group and of its tasks", "B", {"project_id": "p1", "group_id": "g1"},
     "{}", {'{project_id="p1", task_id="t1", name="one"}': 0.6}),
]


def fill(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "1m")
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


def panel_expr(dashboard: str, title: str, ref: str) -> str:
    (expr,) = [t["expr"] for p in all_panels(dashboards()[dashboard]["panels"]) if p["title"] == title
               for t in p.get("targets", []) if t["refId"] == ref]
    return expr


def test_dashboard_queries_with_regions_replicas_and_exporters_without_project_info(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    tests = [{"expr": wrap.replace("{}", fill(panel_expr(d, title, ref), values)), "eval_time": "5m",
              "exp_samples": [{"labels": labels, "value": value} for labels, value in expected.items()]}
             for d, title, ref, values, wrap, expected in QUERY_CASES]
    doc = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": f"{v}x10"} for s, v in QUERY_SERIES.items()],
        "promql_expr_test": tests}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    res = run(promtool, "test", "rules", "t.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


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
