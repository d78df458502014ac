"""End to end on real parts: OMS stand-in -> exporter process -> Prometheus -> Alertmanager -> webhook.

The stand-in and the webhook receiver run in the test's event loop (so the test can fail a
task); the exporter, Prometheus and Alertmanager run as processes, all on loopback with temporary
storage. Prometheus and Alertmanager run the compose stack's configs and the shipped rules, with
only addresses and timings changed (scrapes every second, `for:` shortened, no waits).
Asserted: the targets are up; each project a discovering exporter serves at /discovery is
scraped once through /probe (examples/prometheus/discovery.yml), with its region and name; a
task the stand-in fails reaches the webhook as OmsTaskFailed, named; a task group it fails
reaches it as OmsTaskGroupFailed; failing sync objects and a failing collector fire their alerts;
every metric the dashboards and rules name exists in Prometheus; every dashboard query (variables
filled in) returns data. Skips without the binaries unless OMS_EXPORTER_REQUIRE_E2E=1.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from oms_exporter.simulator import Credential, add_groups_and_syncs, make_tasks
from tests.conftest import AK, SK, clean_env, free_port, require_binary
from tests.shipped import (
    ALERTS_FILE,
    dashboards,
    e2e_alertmanager_config,
    e2e_discovery_jobs,
    e2e_prometheus_config,
    exprs_of,
    label_values_selector,
    prometheus_rule_files,
    referenced_metric_names,
    shorten_for,
    variable_queries,
)
from tests.standin import Fault, StandIn

pytestmark = pytest.mark.slow  # real Prometheus and Alertmanager, a minute of real time

PROJECT = "e2e00000000000000000000000000001"
AGGREGATES_PROJECT = "e2e00000000000000000000000000002"  # its exporter serves no per-task series
TOKEN = "e2e-token-4f1a"
JOB = "oms-exporter"
DEADLINE = 45.0  # seconds for the whole stack to do everything asked of it
# The account a third exporter discovers (AK/SK, IAM's project list): project name -> id. Its
# regions reach the stand-in through endpoint overrides; cn-east-3_legacy answers 403, MOS is
# no region project: neither is scraped.
DISCOVERED = {"cn-north-4": "d1500000000000000000000000000001", "cn-east-3": "d1500000000000000000000000000002",
              "cn-north-4_team": "d1500000000000000000000000000003"}


class Processes:
    """Child processes of the test, each logging to a file; all ended at teardown."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logdir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, cwd=self.logdir)
        log.close()

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                pytest.fail(f"{name} exited with {p.returncode}:\n{self.log(name)}")

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")[-4000:]

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{self.log(n)}" for n in self.procs)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def overview_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels of the dashboard's first row, "Overview"."""
    panels = dashboard["panels"]
    assert panels[0]["type"] == "row" and panels[0]["title"] == "Overview"
    out = []
    for p in panels[1:]:
        if p["type"] == "row":
            break
        out.append(p)
    return out


def fill_variables(expr: str, values: dict[str, str]) -> str:
    """A dashboard expression as Grafana would send it, with these variable values."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"variable left in {expr}"
    return expr


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], deadline: float, procs: Processes) -> None:
    """Poll `check` until it is true; fail with the processes' logs at `deadline` (monotonic)."""
    while True:
        procs.check_alive()
        try:
            if await check():
                return
        except (TimeoutError, aiohttp.ClientError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{procs.logs()}")
        await asyncio.sleep(0.25)


async def discovered_projects_scraped_once(query: Callable[[str], Awaitable[list[dict[str, Any]]]]) -> None:
    """Each project of the discovering exporter's /discovery: one scrape of /probe, named after it,
    labelled with its region and name; its series carry them; the exporter's own job keeps none."""
    ups = await query('up{job="oms"}')
    got = sorted((u["metric"]["instance"], u["metric"]["project_name"], u["metric"]["region"],
                  u["metric"]["project_id"], u["value"][1]) for u in ups)
    assert got == sorted((name, name, name.split("_")[0], pid, "1") for name, pid in DISCOVERED.items()), got
    oms_up = await query('oms_up{job="oms"}')
    assert sorted((u["metric"]["project_name"], u["metric"]["region"], u["metric"]["project_id"], u["value"][1])
                  for u in oms_up) == sorted((n, n.split("_")[0], pid, "1") for n, pid in DISCOVERED.items())
    states = {r["metric"]["state"]: r["value"][1]
              for r in await query('oms_discovery_projects{job="oms-exporter-discovering", discovery="default"}')}
    assert states == {"scraped": "3", "forbidden": "1", "not_offered": "0", "disabled": "0", "excluded": "1"}
    assert not await query('oms_up{job="oms-exporter-discovering"}')  # dropped: the /probe job has them
    assert not await query('{job="oms", __name__=~"oms_(exporter|discovery|api)_.+"}')  # the exporter's own: once


def pick_task(sim: StandIn) -> dict[str, Any]:
    return next(t for t in sim.projects[PROJECT].values()
                if t["status"] == 2 and re.fullmatch(r"[\w-]+", t["name"]))


async def test_stack_end_to_end(tmp_path: Path, processes: Processes,
                                aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager", "alertmanager")
    started = time.monotonic()
    deadline = started + DEADLINE

    sim = StandIn(tokens={TOKEN}, credentials={AK: Credential(SK)})
    sim.add_project(PROJECT, make_tasks(50, seed=11))
    add_groups_and_syncs(sim, PROJECT)  # a group creating its tasks, a failed one, two sync tasks
    group = "3f0c9a6e5b7d4c21a8e90f1b2c3d4e5f"  # creating its tasks: failed below
    syncing = next(s for s in sim.sync_tasks[PROJECT].values() if s["status"] == "SYNCHRONIZING")
    victim = pick_task(sim)
    tid = str(victim["id"])
    sim.patch_task(PROJECT, victim["id"], bandwidth_policy=[
        {"start": "00:00", "end": "12:00", "max_bandwidth": 100 * 1024 * 1024},
        {"start": "12:00", "end": "23:59", "max_bandwidth": 50 * 1024 * 1024}])
    # A second project, served by a second exporter with per-task series switched off: the
    # overview's totals must not need them. (No listing fails here: the panel of listing
    # errors has data because every reason is exported at 0 from the start.)
    sim.add_project(AGGREGATES_PROJECT, make_tasks(40, seed=12))
    # Its task groups cannot be listed: OmsCollectorFailing (its tasks and sync tasks are served).
    sim.inject(Fault(status=503, times=10**9, api="taskgroups", match=lambda r: AGGREGATES_PROJECT in r.path))
    for n, (name, pid) in enumerate(DISCOVERED.items()):
        sim.add_project(pid, make_tasks(10 + n, seed=20 + n))
        sim.add_iam_project(name, pid, parent_id=DISCOVERED["cn-north-4"] if "_" in name else None)
    sim.add_iam_project("cn-east-3_legacy", "d1500000000000000000000000000004")  # OMS: 403
    sim.add_iam_project("MOS")
    oms = await aiohttp_server(sim.app())
    oms_url = str(oms.make_url("")).rstrip("/")

    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    hook_server = await aiohttp_server(hook_app)

    exp_port, agg_port, prom_port, am_port, disc_port = (free_port() for _ in range(5))
    env = clean_env(OMS_PROJECT_ID=PROJECT, OMS_REGION="cn-north-4", OMS_AUTH_TOKEN=TOKEN, OMS_ENDPOINT=oms_url)
    processes.start("exporter", [sys.executable, "-m", "oms_exporter", "--web.listen-address",
                                 f"127.0.0.1:{exp_port}", "--log.level", "debug"], env=env)
    processes.start("exporter-aggregates", [
        sys.executable, "-m", "oms_exporter", "--web.listen-address", f"127.0.0.1:{agg_port}",
        "--oms.per-task-series=false"], env={**env, "OMS_PROJECT_ID": AGGREGATES_PROJECT})
    (tmp_path / "discovering.yml").write_text(yaml.safe_dump({"discovery": {
        "ak": AK, "sk": SK, "iam_endpoint": oms_url, "refresh_interval": "5s",
        "endpoints": {"cn-north-4": oms_url, "cn-east-3": oms_url}}}), encoding="utf-8")
    processes.start("exporter-discovering", [
        sys.executable, "-m", "oms_exporter", "--web.listen-address", f"127.0.0.1:{disc_port}",
        "--config.file", str(tmp_path / "discovering.yml")], env=clean_env())

    (tmp_path / "alertmanager.yml").write_text(
        yaml.safe_dump(e2e_alertmanager_config(str(hook_server.make_url("/hook")))))
    processes.start("alertmanager", [
        alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
        f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="])

    # The compose stack's configs and the shipped rules, laid out as there: only addresses,
    # intervals and the alerts' `for:` shortened.
    for entry, rules in prometheus_rule_files().items():
        (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
        text = rules.read_text(encoding="utf-8")
        (tmp_path / entry).write_text(shorten_for(text) if rules == ALERTS_FILE else text, encoding="utf-8")
    prometheus_yml = e2e_prometheus_config([exp_port, agg_port], am_port)
    prometheus_yml["scrape_configs"] += e2e_discovery_jobs(disc_port)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_yml))
    processes.start("prometheus", [
        prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}"])

    prom_url = f"http://127.0.0.1:{prom_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

        async def query(expr: str) -> list[dict[str, Any]]:
            async with http.get(f"{prom_url}/api/v1/query", params={"query": expr}) as resp:
                doc = await resp.json()
            assert doc["status"] == "success", f"{expr}: {doc}"
            return doc["data"]["result"]

        async def has(expr: str) -> bool:
            return bool(await query(expr))

        async def ready(url: str) -> bool:
            async with http.get(url) as resp:
                return resp.status == 200

        await wait_for("the exporter", lambda: ready(f"http://127.0.0.1:{exp_port}/healthz"), deadline, processes)
        await wait_for("Alertmanager", lambda: ready(f"http://127.0.0.1:{am_port}/-/ready"), deadline, processes)
        await wait_for("Prometheus", lambda: ready(f"{prom_url}/-/ready"), deadline, processes)
        await wait_for("both targets to be up", lambda: has(f'count(up{{job="{JOB}"}} == 1) == 2'),
                       deadline, processes)
        await wait_for("each discovered project to be scraped through /probe, and the exporter's own job",
                       lambda: has(f'count(up{{job=~"oms|oms-exporter-discovering"}} == 1) == {len(DISCOVERED) + 1}'),
                       deadline, processes)
        await discovered_projects_scraped_once(query)
        await wait_for("the task to be seen migrating",
                       lambda: has(f'oms_task_status{{task_id="{tid}", status="migrating"}} == 1'),
                       deadline, processes)
        assert sim.requests, "the exporter never asked the stand-in"

        sim.patch_task(PROJECT, victim["id"], status=4, migrate_speed=0, left_time=0,
                       error_reason={"error_code": "OMS.1105", "error_msg": "The destination bucket does not exist."})

        await wait_for("the group to be seen creating its tasks",
                       lambda: has(f'oms_task_group_status{{group_id="{group}", status="creating"}} == 1'),
                       deadline, processes)
        sim.groups[PROJECT][group].update(status=5, error_reason={
            "error_code": "TRF.0159", "error_msg": "The source throttled the migration."})
        month = next(iter(syncing["monthly"]))
        syncing["monthly"][month]["monthly_failure_object"] += 5

        def arrived(name: str, **labels: str) -> dict[str, Any] | None:
            for message in received:
                for alert in message["alerts"]:
                    if alert["labels"].get("alertname") == name and labels.items() <= alert["labels"].items():
                        return alert
            return None

        def failed_alert() -> dict[str, Any] | None:
            return arrived("OmsTaskFailed", task_id=tid)

        async def alert_arrived() -> bool:
            return failed_alert() is not None and arrived("OmsTaskGroupFailed", group_id=group) is not None

        await wait_for("OmsTaskFailed and OmsTaskGroupFailed at the webhook", alert_arrived, deadline, processes)
        group_alert = arrived("OmsTaskGroupFailed", group_id=group)
        assert group_alert is not None and group_alert["status"] == "firing"
        assert group_alert["labels"]["status"] == "failed" and group_alert["labels"]["src_bucket"] == "datalake-raw"
        assert "TRF.0159 The source throttled the migration." in group_alert["annotations"]["description"]
        for name, labels in (("OmsSyncTaskObjectsFailing", f'sync_task_id="{syncing["sync_task_id"]}"'),
                             ("OmsCollectorFailing", f'project_id="{AGGREGATES_PROJECT}", collector="task_groups"')):
            firing = f'ALERTS{{alertname="{name}", alertstate="firing", {labels}}}'
            await wait_for(f"{name} firing", lambda firing=firing: has(firing), deadline, processes)
        alert = failed_alert()
        assert alert is not None
        assert alert["status"] == "firing"
        assert alert["labels"]["name"] == victim["name"]
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["project_id"] == PROJECT
        assert victim["name"] in alert["annotations"]["summary"]
        assert "OMS.1105 The destination bucket does not exist." in alert["annotations"]["description"]

        # Everything the dashboards and the rules name exists in Prometheus (recorded ones included).
        series = await query('count by (__name__) ({__name__=~"oms_.+|.+:.+:.+|up"})')
        present = {s["metric"]["__name__"] for s in series}
        missing = referenced_metric_names() - present
        assert not missing, f"named by the dashboards or rules, absent from Prometheus: {sorted(missing)}"

        # Every dashboard query returns data, as Grafana would send it.
        values = {"region": ".*", "project_id": PROJECT, "group_id": ".*", "task": ".*", "status": ".*", "task_id": tid,
                  "name": victim["name"], "datasource": "prometheus"}
        empty = []
        checked = 0
        for name, d in dashboards().items():
            # The group dashboard shows one group: the failed one.
            filled = {**values, "group_id": group} if name == "oms-task-group.json" else values
            for expr in exprs_of(d):
                checked += 1
                if not await query(fill_variables(expr, filled)):
                    empty.append(f"{name}: {expr}")
            for q in variable_queries(d):
                selector, label = label_values_selector(q)
                result = await query(fill_variables(selector, filled))
                checked += 1
                if not any(label in s["metric"] for s in result):
                    empty.append(f"{name}: variable {q}")
        assert checked > 30
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        # The overview row (per-project totals) of a project served without per-task series.
        tasks_dash = dashboards()["oms-tasks.json"]
        overview = overview_panels(tasks_dash)
        assert {p["title"] for p in overview} >= {"Tasks per status", "Overall progress", "Total throughput",
                                                  "Objects failed"}
        assert not await query(f'oms_task_info{{project_id="{AGGREGATES_PROJECT}"}}')
        for p in overview:
            for t in p["targets"]:
                expr = fill_variables(t["expr"], {**values, "project_id": AGGREGATES_PROJECT})
                assert await query(expr), f"overview panel {p['title']!r} without per-task series: {expr}"

        # A filtered view narrows down to the failed task alone.
        assert re.fullmatch(r"[\w-]+", victim["name"])  # no regex escaping needed
        narrowed = {**values, "status": "failed", "task": victim["name"]}
        table = next(p for p in dashboards()["oms-tasks.json"]["panels"] if p["type"] == "table")
        rows = await query(fill_variables(table["targets"][0]["expr"], narrowed))
        assert [r["metric"]["task_id"] for r in rows] == [tid]
        assert rows[0]["metric"]["destination"].endswith("/" + victim["dst_node"]["bucket"])

