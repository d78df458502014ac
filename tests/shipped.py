"""What the project ships beside the exporter, read as the tests read it: the alert and recording
rules, the Grafana dashboards (and the metric names their PromQL selects), and the compose stack's
files as each service sees them through its mounts, with the configs tests/test_e2e.py runs.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "grafana" / "rules"
ALERTS_FILE = RULES / "oms-alerts.yml"
RECORDING_FILE = RULES / "oms-recording.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
COMPOSE = ROOT / "compose.yaml"


# --- rules --------------------------------------------------------------------------------------
def load_rules(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return load_rules(ALERTS_FILE)


def recording_rule_names() -> set[str]:
    return {r["record"] for r in load_rules(RECORDING_FILE)}


def shorten_for(rules_text: str, to: str = "0s") -> str:
    """The shipped alert rules with every `for:` set to `to`, for a test that cannot wait an hour."""
    out, n = re.subn(r"^(\s+)for: *\S+ *$", rf"\g<1>for: {to}", rules_text, flags=re.MULTILINE)
    assert n, "no `for:` found: has the rule file format changed?"
    return out


# --- dashboards ---------------------------------------------------------------------------------
def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def exprs_of(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def label_values_selector(query: str) -> tuple[str, str]:
    """`label_values(SELECTOR, LABEL)` -> (SELECTOR, LABEL)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.DOTALL)
    assert m, f"unsupported variable query {query!r}"
    return m.group(1), m.group(2)


# --- PromQL -> metric names --------------------------------------------------------------------
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan", "atan2", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not a full parser: enough for these files)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"`[^`]*`", "``", e)
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", e):
        word = m.group()
        if e[m.end():].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an operator
        names.add(word)
    return names


def template_queries(text: str) -> list[str]:
    """PromQL in alert templates: `printf "EXPR" ... | query` with the %q/%s verbs filled in."""
    return [re.sub(r"%[qsvd]", '"x"', m.group(1)) for m in re.finditer(r'printf\s+"((?:[^"\\]|\\.)*)"', text)]


def rule_exprs() -> list[str]:
    out = []
    for f in (ALERTS_FILE, RECORDING_FILE):
        for rule in load_rules(f):
            out.append(rule["expr"])
            for text in rule.get("annotations", {}).values():
                out.extend(q.replace('\\"', '"') for q in template_queries(text))
    return out


def dashboard_exprs() -> list[str]:
    out = []
    for d in dashboards().values():
        out.extend(exprs_of(d))
        out.extend(label_values_selector(q)[0] for q in variable_queries(d))
    return out


def referenced_metric_names() -> set[str]:
    return set().union(*(metric_names(e) for e in rule_exprs() + dashboard_exprs()))


# --- the compose stack ------------------------------------------------------------------------
def services() -> dict[str, dict[str, Any]]:
    doc: dict[str, dict[str, dict[str, Any]]] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return doc["services"]


def bind_mounts(service: str) -> dict[PurePosixPath, Path]:
    """{path in the container: path on the host} of the service's bind mounts (not named volumes)."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[PurePosixPath(target)] = (ROOT / source).resolve()
    return out


def in_container(service: str, path: str | PurePosixPath) -> Path:
    """The host file that `path` is in the service's container (through the deepest mount over it)."""
    path = PurePosixPath(path)
    over = [t for t in bind_mounts(service) if path == t or t in path.parents]
    assert over, f"{service}: nothing is mounted at {path}"
    target = max(over, key=lambda t: len(t.parts))
    return bind_mounts(service)[target] / path.relative_to(target)


def flag(service: str, name: str) -> str:
    """The value of --NAME=VALUE in the service's command."""
    values: list[str] = [a.split("=", 1)[1] for a in services()[service].get("command", [])
                         if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"{service}: expected one --{name}= in its command, found {values}"
    return values[0]


def prometheus_config_path() -> PurePosixPath:
    return PurePosixPath(flag("prometheus", "config.file"))


def prometheus_config() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(in_container("prometheus", prometheus_config_path()).read_text())
    return doc


def prometheus_rule_files() -> dict[str, Path]:
    """{rule_files entry: the host file Prometheus reads for it}."""
    base = prometheus_config_path().parent
    return {entry: in_container("prometheus", base / entry) for entry in prometheus_config()["rule_files"]}


def alertmanager_config() -> dict[str, Any]:
    path = in_container("alertmanager", flag("alertmanager", "config.file"))
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


# --- the configs tests/test_e2e.py runs --------------------------------------------------------
def e2e_prometheus_config(exporters: list[int], alertmanager: int) -> dict[str, Any]:
    """The compose stack's Prometheus config with loopback addresses and one-second intervals."""
    doc = copy.deepcopy(prometheus_config())
    doc["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    (job,) = doc["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s",
               static_configs=[{"targets": [f"127.0.0.1:{port}" for port in exporters]}])
    (am,) = doc["alerting"]["alertmanagers"]
    am["static_configs"] = [{"targets": [f"127.0.0.1:{alertmanager}"]}]
    return doc


DISCOVERY_EXAMPLE = ROOT / "examples" / "prometheus" / "discovery.yml"


def e2e_discovery_jobs(exporter: int) -> list[dict[str, Any]]:
    """examples/prometheus/discovery.yml's two jobs, for a discovering exporter on a loopback port:
    its address and intervals changed, and its own-metrics job renamed (the compose stack's job
    already has the name "oms-exporter")."""
    text = DISCOVERY_EXAMPLE.read_text(encoding="utf-8").replace("oms-exporter:10066", f"127.0.0.1:{exporter}")
    jobs: list[dict[str, Any]] = yaml.safe_load(text)["scrape_configs"]
    for job in jobs:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        for sd in job.get("http_sd_configs", []):
            sd["refresh_interval"] = "1s"
        if job["job_name"] == "oms-exporter":
            job["job_name"] = "oms-exporter-discovering"
    return jobs


def e2e_alertmanager_config(webhook: str) -> dict[str, Any]:
    """The compose stack's Alertmanager config, its receiver a webhook, notifying at once."""
    doc = copy.deepcopy(alertmanager_config())
    doc["route"].update(group_wait="0s", group_interval="1s", repeat_interval="1h")
    (receiver,) = [r for r in doc["receivers"] if r["name"] == doc["route"]["receiver"]]
    receiver["webhook_configs"] = [{"url": webhook, "send_resolved": False}]
    return doc
