"""Alert and recording rules, Prometheus and Alertmanager configs: checked with promtool and amtool.

`promtool test rules` runs grafana/rules/oms-rules.test.yml, where every alert has a case that
fires and one that does not. Without the binaries these tests skip, unless
OMS_EXPORTER_REQUIRE_E2E=1 (set in CI), where a missing binary is a failure.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, require_binary, run
from tests.shipped import ALERTS_FILE, RECORDING_FILE, RULES, alerts, load_rules, shorten_for

RULE_TESTS_FILE = RULES / "oms-rules.test.yml"
PROMETHEUS_CONFIG = ROOT / "grafana" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "grafana" / "alertmanager" / "alertmanager.yml"
# The runbook: one section per alert.
RUNBOOK_FILES = (ROOT / "docs" / "runbook.md",)

# Alerts about the exporter itself (no project): every other alert carries its project's region.
EXPORTER_ALERTS = {"OmsExporterDown", "OmsDiscoveryFailing"}
# Alerts about a project, not one task, group or sync task.
PROJECT_ALERTS = {"OmsTaskListingFailing", "OmsCollectorFailing"}
# Alerts about one group or sync task: the labels that name it come from its info series.
RECORD_ALERTS = {"OmsTaskGroupFailed": ("group_id", "oms_task_group_info"),
                 "OmsTaskGroupStalled": ("group_id", "oms_task_group_info"),
                 "OmsSyncTaskObjectsFailing": ("sync_task_id", "oms_sync_task_info")}
SEVERITIES = {"critical", "warning", "info"}


# --- promtool / amtool -------------------------------------------------------------------------
def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool")
    res = run(promtool, "check", "rules", ALERTS_FILE, RECORDING_FILE)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_test_rules() -> None:
    promtool = require_binary("promtool")
    res = run(promtool, "test", "rules", RULE_TESTS_FILE.name, cwd=RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests compare annotations for real: a changed expectation makes promtool fail."""
    promtool = require_binary("promtool")
    for f in (ALERTS_FILE, RECORDING_FILE):
        shutil.copy(f, tmp_path / f.name)
    text = RULE_TESTS_FILE.read_text(encoding="utf-8")
    broken = text.replace('summary: OMS task "aws-logs-7" failed', 'summary: OMS task "aws-logs-8" failed')
    assert broken != text
    (tmp_path / "t.yml").write_text(broken, encoding="utf-8")
    res = run(promtool, "test", "rules", "t.yml", cwd=tmp_path)
    assert res.returncode != 0
    assert "aws-logs-8" in res.stdout + res.stderr


def test_prometheus_config_with_its_rules(tmp_path: Path) -> None:
    # Laid out as in the compose stack: the config beside a rules/ folder.
    promtool = require_binary("promtool")
    shutil.copy(PROMETHEUS_CONFIG, tmp_path / "prometheus.yml")
    shutil.copytree(RULES, tmp_path / "rules")
    res = run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 rule files found" in res.stdout, res.stdout
    for f in (ALERTS_FILE, RECORDING_FILE):
        assert f"{len(load_rules(f))} rules found" in res.stdout, res.stdout


def test_alertmanager_config() -> None:
    amtool = require_binary("amtool")
    res = run(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


# --- the rules themselves ------------------------------------------------------------------------
def test_the_required_alerts_exist() -> None:
    names = {a["alert"] for a in alerts()}
    assert names == {"OmsExporterDown", "OmsTaskListingFailing", "OmsTaskFailed", "OmsTaskStalled",
                     "OmsTaskFailedObjectsIncreasing", "OmsTaskWaitingTooLong", "OmsTaskSpeedFarBelowLimit",
                     "OmsTaskGroupFailed", "OmsTaskGroupStalled", "OmsSyncTaskObjectsFailing", "OmsCollectorFailing",
                     "OmsDiscoveryFailing"}


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_summary_description(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in SEVERITIES
    assert alert["annotations"]["summary"].strip()
    assert alert["annotations"]["description"].strip()
    expr = " ".join(alert["expr"].split())
    if alert["alert"] in RECORD_ALERTS:
        # Source and destination from the last info sample of a few minutes, as for tasks.
        id_label, info = RECORD_ALERTS[alert["alert"]]
        assert re.search(rf"group_left \(src_bucket, dst_bucket, region, project_name\)\s*\(\s*"
                         rf"topk by \(project_id, {id_label}\) \(1, last_over_time\({info}\[\d+m\]\)\)", expr), expr
        assert f"$labels.{id_label}" in alert["annotations"]["summary"]
        assert "$labels.src_bucket" in alert["annotations"]["description"]
    elif alert["alert"] not in PROJECT_ALERTS | EXPORTER_ALERTS:
        # The name comes from the last oms_task_info sample of a few minutes, one series per task,
        # so that a failed listing (series absent for a scrape or two) does not drop it.
        assert re.search(r"group_left \([^)]*\bname\b[^)]*\)\s*\(\s*"
                         r"topk by \(project_id, task_id\) \(1, last_over_time\(oms_task_info\[\d+m\]\)\)", expr), expr
        assert "$labels.name" in alert["annotations"]["summary"]
        assert "$labels.name" in alert["annotations"]["description"]


# The project's region and name, one info series per project (two exporters may serve it).
PROJECT_INFO_JOIN = ("* on (project_id) group_left (region, project_name) "
                     "topk by (project_id) (1, last_over_time(oms_project_info[10m]))")


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_carries_the_region_and_still_fires_without_project_info(alert: dict[str, Any]) -> None:
    """Every alert about a project joins `region` and `project_name` from oms_project_info, and
    falls back to the same expression without the join (`or ignoring (region, project_name)`),
    so that a missing info series adds no label but silences nothing."""
    expr = " ".join(alert["expr"].split())
    if alert["alert"] in EXPORTER_ALERTS:
        assert "oms_project_info" not in expr
        return
    assert expr.count(PROJECT_INFO_JOIN) == 1, expr
    assert expr.count("or ignoring (region, project_name)") == 1, expr
    if alert["alert"] in PROJECT_ALERTS:
        # (EXPR * info) or ignoring (region, project_name) EXPR
        joined, fallback = expr.split(" or ignoring (region, project_name) ")
        assert joined == f"( {fallback} {PROJECT_INFO_JOIN} )", expr
    else:
        # ... group_left (..., region, project_name) (INFO * project info or ignoring (...) INFO)
        m = re.search(r"\( (topk by \([^)]*\) \(1, last_over_time\(\w+\[10m\]\)\)) (\* on .*?) "
                      r"or ignoring \(region, project_name\) (.*?) \)$", expr)
        assert m and m.group(1) == m.group(3) and m.group(2) == PROJECT_INFO_JOIN, expr
        assert re.search(r"group_left \([^)]*, region, project_name\) \( topk", expr), expr


def test_alerts_need_their_fallback_to_fire_without_project_info(tmp_path: Path) -> None:
    """The unit tests without oms_project_info fail when the fallback is taken away (`or` made
    `and`): it is what keeps those alerts firing."""
    promtool = require_binary("promtool")
    text = ALERTS_FILE.read_text(encoding="utf-8")
    broken = text.replace("or ignoring (region, project_name)", "and ignoring (region, project_name)")
    assert broken != text
    (tmp_path / ALERTS_FILE.name).write_text(broken, encoding="utf-8")
    shutil.copy(RECORDING_FILE, tmp_path / RECORDING_FILE.name)
    shutil.copy(RULE_TESTS_FILE, tmp_path / RULE_TESTS_FILE.name)
    res = run(promtool, "test", "rules", RULE_TESTS_FILE.name, cwd=tmp_path)
    assert res.returncode != 0
    assert 'alertname="OmsTaskFailed"' in res.stdout + res.stderr


def test_project_totals_are_recorded_once_per_project_with_its_region() -> None:
    """Two exporters serving one project count it once (max over its copies per status before the
    sum); the region and name are joined as in the alerts, with the same fallback."""
    for rule in load_rules(RECORDING_FILE):
        if not rule["record"].startswith("project_id:"):
            continue
        expr = " ".join(rule["expr"].split())
        metric = rule["record"].split(":")[1]
        total = f"sum by (project_id) (max by (project_id, status) ({metric}))"
        assert expr == f"( {total} {PROJECT_INFO_JOIN} ) or ignoring (region, project_name) {total}", expr


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_has_a_runbook_section(alert: dict[str, Any]) -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in RUNBOOK_FILES if p.exists())
    # The heading is the alert's name alone, so that its anchor is the name in lower case
    # (docs/runbook.md#omstaskfailed), as the comment atop oms-alerts.yml says.
    assert re.search(rf"^#+ {alert['alert']}[ \t]*$", text, re.MULTILINE), f"no runbook heading for {alert['alert']}"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    doc = yaml.safe_load(RULE_TESTS_FILE.read_text(encoding="utf-8"))
    assert set(doc["rule_files"]) == {ALERTS_FILE.name, RECORDING_FILE.name}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"


def test_shorten_for_rewrites_every_for() -> None:
    text = ALERTS_FILE.read_text(encoding="utf-8")
    rules = yaml.safe_load(shorten_for(text))
    fors = [r.get("for") for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert fors and all(f in (None, "0s") for f in fors)
    assert sum(f == "0s" for f in fors) == text.count("for:")
