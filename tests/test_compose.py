"""compose.yaml, read as Docker Compose reads it: the files each service sees through its mounts.

No container engine runs here, so the stack is checked without starting it: every bind mount
of a service is laid out in a temporary directory at its path in the container, and the
Prometheus and Alertmanager configs are checked there with `promtool check config` and
`amtool check-config`, their rule files found as Prometheus would find them. The same configs
are the ones tests/test_e2e.py runs, with only addresses and timings changed
(`e2e_prometheus_config`, `e2e_alertmanager_config` below). Grafana's provisioning files and the
dashboards they name must be there. Skips without the binaries unless OMS_EXPORTER_REQUIRE_E2E=1.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from oms_exporter.settings import Options
from tests.conftest import require_binary
from tests.shipped import (
    ALERTS_FILE,
    RECORDING_FILE,
    alertmanager_config,
    bind_mounts,
    e2e_alertmanager_config,
    e2e_prometheus_config,
    flag,
    in_container,
    prometheus_config,
    prometheus_config_path,
    prometheus_rule_files,
    services,
)

ROOT = Path(__file__).resolve().parent.parent
# Grafana reads provisioning from here unless GF_PATHS_PROVISIONING says otherwise.
GRAFANA_PROVISIONING = PurePosixPath("/etc/grafana/provisioning")


def lay_out(service: str, into: Path) -> Path:
    """Copy the service's bind mounts to `into`, each at its path in the container; returns `into`."""
    for target, source in bind_mounts(service).items():
        dest = into / target.relative_to("/")
        assert source.exists(), f"{service}: {source} (mounted at {target}) does not exist"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy(source, dest)
    return into


def without(doc: dict[str, Any], *paths: str) -> dict[str, Any]:
    """`doc` less the keys at the dotted `paths` (a number indexes a list)."""
    doc = copy.deepcopy(doc)
    for path in paths:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node.pop(last, None)
    return doc


def test_e2e_runs_the_compose_configs_with_only_addresses_and_timings_changed() -> None:
    prom = e2e_prometheus_config([1234, 1235], 1236)
    addresses_and_timings = ("global.scrape_interval", "global.evaluation_interval", "global.scrape_timeout",
                             "scrape_configs.0.scrape_interval", "scrape_configs.0.scrape_timeout",
                             "scrape_configs.0.static_configs", "alerting.alertmanagers.0.static_configs")
    assert without(prom, *addresses_and_timings) == without(prometheus_config(), *addresses_and_timings)
    assert prom["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:1234", "127.0.0.1:1235"]}]
    am = e2e_alertmanager_config("http://127.0.0.1:9/hook")
    receiver = next(i for i, r in enumerate(am["receivers"]) if r["name"] == am["route"]["receiver"])
    assert without(am, "route.group_wait", "route.group_interval", "route.repeat_interval",
                   f"receivers.{receiver}.webhook_configs") == without(
        alertmanager_config(), "route.group_wait", "route.group_interval", "route.repeat_interval")


def test_prometheus_reads_the_rules_the_e2e_test_loads() -> None:
    assert set(prometheus_rule_files().values()) == {ALERTS_FILE, RECORDING_FILE}


def test_prometheus_config_as_mounted(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    root = lay_out("prometheus", tmp_path)
    config = root / prometheus_config_path().relative_to("/")
    res = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"{len(prometheus_rule_files())} rule files found" in out, out
    assert "WARNING" not in out, out


def test_alertmanager_config_as_mounted(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    root = lay_out("alertmanager", tmp_path)
    config = root / PurePosixPath(flag("alertmanager", "config.file")).relative_to("/")
    res = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout, res.stdout


def published_ports(service: str) -> set[int]:
    """The container ports of the service's `ports:` ("host:container")."""
    return {int(str(p).split(":")[-1].split("/")[0]) for p in services()[service].get("ports", [])}


def test_addresses_are_the_services_and_their_ports() -> None:
    prom = prometheus_config()
    (job,) = prom["scrape_configs"]
    exporter_port = Options().host_port[1]  # where the exporter listens by default
    assert job["static_configs"] == [{"targets": [f"oms-exporter:{exporter_port}"]}]
    assert exporter_port in published_ports("oms-exporter")
    (am,) = prom["alerting"]["alertmanagers"]
    ((host, port),) = [t.rsplit(":", 1) for t in am["static_configs"][0]["targets"]]
    assert host in services() and int(port) in published_ports(host)


def test_grafana_provisioning_as_mounted() -> None:
    providers = in_container("grafana", GRAFANA_PROVISIONING / "dashboards")
    sources = in_container("grafana", GRAFANA_PROVISIONING / "datasources")
    assert sorted(p.name for p in sources.glob("*.yml")), f"no data source file in {sources}"
    for path in sources.glob("*.yml"):
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            host, port = source["url"].removeprefix("http://").rsplit(":", 1)
            assert host in services() and int(port) in published_ports(host), source["url"]
    files = sorted(providers.glob("*.yml"))
    assert files, f"no dashboard provider in {providers}"
    for path in files:
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]:
            folder = in_container("grafana", provider["options"]["path"])
            assert sorted(folder.glob("*.json")), f"{path.name}: no dashboard in {folder}"
    home = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert in_container("grafana", home).is_file(), home


def test_in_container_resolves_through_the_mounts() -> None:
    # The helper the checks above rely on: a wrong path is an error, not an empty answer.
    assert in_container("prometheus", "/etc/prometheus/rules/oms-alerts.yml") == ALERTS_FILE
    with pytest.raises(AssertionError, match="nothing is mounted"):
        in_container("prometheus", "/etc/nowhere/prometheus.yml")
