"""Shards and replicas on a real Prometheus (issue 24): OMS stand-in -> exporter processes -> Prometheus.

- Six projects over two shards: two exporter processes with the same config, `--shard.index 0`
  and `1`, scraped by examples/prometheus/sharded.yml's job for exporter shards: each project is
  served by exactly one replica, the one its hash names, and every series of a project is in
  Prometheus once; the same after a replica restarts. The example's other job, Prometheus
  servers keeping their `hashmod` of `project_id` over an unsharded exporter's /discovery,
  splits the projects the same way.
- The hash: Prometheus' own `hashmod` relabelling of many project ids gives what
  `oms_exporter.shards.shard_of` gives.
- Two replicas serving the same project for a while (a rolling update, a shard count change):
  the shipped dashboards' queries and recording rules give for that project exactly what they
  give for a twin project (the same tasks) that one exporter serves; no per-project figure is
  doubled and no series comes twice. Alerts may come once per exporter (they keep the
  `instance` they fire from) but with the twin's labels and values.

Skips without the binaries unless OMS_EXPORTER_REQUIRE_E2E=1.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from oms_exporter.shards import shard_of
from oms_exporter.simulator import add_groups_and_syncs, make_tasks
from tests.conftest import clean_env, free_port, parse_metrics, require_binary, values
from tests.shipped import (
    ALERTS_FILE,
    RECORDING_FILE,
    alerts,
    dashboards,
    e2e_prometheus_config,
    exprs_of,
    load_rules,
    prometheus_rule_files,
    shorten_for,
)
from tests.standin import StandIn
from tests.test_e2e import Processes, fill_variables, wait_for

pytestmark = pytest.mark.slow  # real Prometheus, exporter processes, seconds of real time

ROOT = Path(__file__).resolve().parent.parent
SHARDED_EXAMPLE = ROOT / "examples" / "prometheus" / "sharded.yml"
TOKEN = "e2e-shards-token-51c2"
DEADLINE = 60.0  # seconds for each test's stack to do everything asked of it
# Six projects; with two shards, 0 serves P1, P4, P6 and 1 serves P2, P3, P5.
PROJECTS = {f"p{i}": f"5a{i:030d}" for i in range(1, 7)}
NOW_MS = int(time.time() * 1000)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


Query = Callable[[str], Awaitable[list[dict[str, Any]]]]


class Prometheus:
    """A Prometheus process of the test, and its query API."""

    def __init__(self, processes: Processes, tmp_path: Path, config: dict[str, Any], name: str = "prometheus") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        processes.start(name, [require_binary("prometheus"), f"--config.file={tmp_path / f'{name}.yml'}",
                               f"--storage.tsdb.path={tmp_path / f'{name}-tsdb'}",
                               f"--web.listen-address=127.0.0.1:{self.port}"])
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp:
            doc = await resp.json()
        assert doc["status"] == "success", f"{expr}: {doc}"
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    async def has(self, expr: str) -> bool:
        return bool(await self.query(expr))

    async def api(self, path: str) -> Any:
        async with self.http.get(f"{self.url}{path}") as resp:
            return (await resp.json())["data"]

    async def close(self) -> None:
        await self.http.close()


def exporter_args(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "oms_exporter", "--web.listen-address", f"127.0.0.1:{port}", *args]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, s.get(url) as resp:
        return resp.status, await resp.text()


def example_jobs() -> dict[str, dict[str, Any]]:
    jobs = yaml.safe_load(SHARDED_EXAMPLE.read_text(encoding="utf-8"))["scrape_configs"]
    return {j["job_name"]: j for j in jobs}


def sharded_jobs(replicas: list[int], unsharded: int, count: int) -> list[dict[str, Any]]:
    """examples/prometheus/sharded.yml's two jobs with loopback addresses, one-second intervals and
    `count` shards: A as it is, B once per Prometheus shard (oms-shard-0, ...), as `count` servers
    would run it, in one Prometheus here."""
    jobs = example_jobs()
    a = copy.deepcopy(jobs["oms-exporter"])
    a.update(scrape_interval="1s", scrape_timeout="1s",
             static_configs=[{"targets": [f"127.0.0.1:{p}" for p in replicas]}])
    out = [a]
    for shard in range(count):
        b = copy.deepcopy(jobs["oms"])
        b.update(job_name=f"oms-shard-{shard}", scrape_interval="1s", scrape_timeout="1s")
        (sd,) = b["http_sd_configs"]
        sd.update(url=f"http://127.0.0.1:{unsharded}/discovery", refresh_interval="1s")
        (hashmod,) = [r for r in b["relabel_configs"] if r.get("action") == "hashmod"]
        assert hashmod["source_labels"] == ["project_id"]
        hashmod["modulus"] = count
        (keep,) = [r for r in b["relabel_configs"] if r.get("action") == "keep"]
        keep["regex"] = str(shard)  # SHARD
        out.append(b)
    return out


# --- six projects over two shards ----------------------------------------------------------------
async def test_six_projects_over_two_shards(tmp_path: Path, processes: Processes,
                                            aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    require_binary("prometheus")
    deadline = time.monotonic() + DEADLINE
    sim = StandIn(tokens={TOKEN})
    tasks = {}
    for n, pid in enumerate(PROJECTS.values()):
        sim.add_project(pid, make_tasks(6 + n, seed=80 + n))
        tasks[pid] = len(sim.projects[pid])
    oms = await aiohttp_server(sim.app())
    url = str(oms.make_url("")).rstrip("/")
    config = tmp_path / "oms.yml"
    config.write_text(yaml.safe_dump({"targets": [
        {"name": name, "project_id": pid, "region": "cn-north-4", "endpoint": url, "auth_token": TOKEN}
        for name, pid in PROJECTS.items()]}), encoding="utf-8")
    ports = [free_port(), free_port()]
    unsharded = free_port()
    shard_args = [exporter_args(port, "--config.file", str(config), "--shard.count", "2", "--shard.index", str(i))
                  for i, port in enumerate(ports)]
    for i, args in enumerate(shard_args):
        processes.start(f"shard-{i}", args, env=clean_env())
    processes.start("unsharded", exporter_args(unsharded, "--config.file", str(config)), env=clean_env())
    prom = Prometheus(processes, tmp_path, {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                            "scrape_configs": sharded_jobs(ports, unsharded, 2)})
    expected = {f"127.0.0.1:{port}": {pid for pid in PROJECTS.values() if shard_of(pid, 2) == i}
                for i, port in enumerate(ports)}
    assert all(expected.values()), "each shard serves some of the six"
    try:
        await wait_for("every project scraped, through both alternatives",
                       lambda: prom.has('count(oms_up{job="oms-exporter"} == 1) == 6 and '
                                        'count(oms_up{job=~"oms-shard-.+"} == 1) == 6'), deadline, processes)
        await each_project_once(prom, expected, tasks)

        # The example's Prometheus shards keep the projects the exporter's shards serve.
        for i, port in enumerate(ports):
            ups = await prom.query(f'up{{job="oms-shard-{i}"}} == 1')
            assert {PROJECTS[u["metric"]["instance"]] for u in ups} == expected[f"127.0.0.1:{port}"], i

        # A replica restarts: the same projects, each still once.
        served = await served_by(ports[1])
        assert served == expected[f"127.0.0.1:{ports[1]}"]
        started = float((await prom.query(f'process_start_time_seconds{{instance="127.0.0.1:{ports[1]}"}}'))[0]
                        ["value"][1])
        stopped = processes.procs.pop("shard-1")
        stopped.terminate()
        stopped.wait(timeout=10)
        await wait_for("the replica seen down", lambda: prom.has(f'up{{instance="127.0.0.1:{ports[1]}"}} == 0'),
                       deadline, processes)
        processes.start("shard-1", shard_args[1], env=clean_env())
        await wait_for("the restarted replica scraped", lambda: prom.has(
            f'process_start_time_seconds{{instance="127.0.0.1:{ports[1]}"}} > {started}'), deadline, processes)
        assert await served_by(ports[1]) == served
        await wait_for("every project scraped again",
                       lambda: prom.has('count(oms_up{job="oms-exporter"} == 1) == 6'), deadline, processes)
        await each_project_once(prom, expected, tasks)
    finally:
        await prom.close()


async def served_by(port: int) -> set[str]:
    status, text = await get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {dict(lab)["project_id"] for lab in values(parse_metrics(text), "oms_up")}


async def each_project_once(prom: Prometheus, expected: dict[str, set[str]], tasks: dict[str, int]) -> None:
    """Each project served by the replica of its shard alone; each of its series once, all its tasks."""
    ups = await prom.query('oms_up{job="oms-exporter"}')
    assert sorted((u["metric"]["project_id"], u["metric"]["instance"]) for u in ups) == sorted(
        (pid, instance) for instance, pids in expected.items() for pid in pids)
    twice = await prom.query('count without (instance) (label_replace({job="oms-exporter", project_id=~".+"}, '
                             '"name", "$1", "__name__", "(.+)")) > 1')  # (aggregating drops __name__)
    assert not twice, twice
    per_project = await prom.query('count by (project_id) (oms_task_info{job="oms-exporter"})')
    assert {r["metric"]["project_id"]: int(r["value"][1]) for r in per_project} == tasks
    shards = await prom.query('oms_exporter_shard_info{job="oms-exporter"}')
    assert sorted((r["metric"]["instance"], r["metric"]["index"], r["metric"]["count"]) for r in shards) == sorted(
        (instance, str(i), "2") for i, instance in enumerate(expected))
    assert await prom.has('sum(oms_exporter_shard_targets{job="oms-exporter"}) == 6')


# --- the hash --------------------------------------------------------------------------------------
async def test_the_exporters_shards_are_prometheus_hashmod(tmp_path: Path, processes: Processes) -> None:
    """Prometheus relabels 400 project ids with `hashmod` for several moduli: each lands where
    `shard_of` puts it."""
    ids = [f"{i:032x}" for i in range(0, 400 * 7919, 7919)] + ["0a1b2c3d4e5f60718293a4b5c6d7e8f9", "abc"]
    (tmp_path / "ids.json").write_text(json.dumps(
        [{"targets": ["127.0.0.1:9"], "labels": {"project_id": pid}} for pid in ids]), encoding="utf-8")
    moduli = (2, 3, 5, 16)
    jobs = [{"job_name": f"m{m}", "scrape_interval": "1h", "file_sd_configs": [{"files": [str(tmp_path / "ids.json")]}],
             "relabel_configs": [
                 {"source_labels": ["project_id"], "modulus": m, "target_label": "shard", "action": "hashmod"},
                 {"source_labels": ["project_id"], "target_label": "instance"}]} for m in moduli]
    prom = Prometheus(processes, tmp_path, {"scrape_configs": jobs})
    try:
        async def listed() -> bool:
            return len((await prom.api("/api/v1/targets?state=active"))["activeTargets"]) == len(ids) * len(moduli)

        await wait_for("every id relabelled", listed, time.monotonic() + DEADLINE, processes)
        targets = (await prom.api("/api/v1/targets?state=active"))["activeTargets"]
        got = {(t["labels"]["job"], t["labels"]["instance"]): int(t["labels"]["shard"]) for t in targets}
        assert got == {(f"m{m}", pid): shard_of(pid, m) for m in moduli for pid in ids}
    finally:
        await prom.close()


# --- two replicas serving one project --------------------------------------------------------------
SERVED_TWICE, SERVED_ONCE = "2e000000000000000000000000000001", "2e000000000000000000000000000002"
# Figures of the exporters' own work (requests, listings, errors), which two exporters do twice
# for real, and of when and how long (each exporter lists at its own moments): their queries are
# compared by the series they give, not by value.
OWN_WORK = re.compile(r"oms_api_|oms_scrape_errors_total|oms_listings_total|oms_scrape_duration_seconds|"
                      r"oms_listing_timestamp_seconds|oms_finished_tasks_listed_timestamp_seconds")


def normal(result: list[dict[str, Any]], project: str, with_values: bool) -> collections.Counter[Any]:
    """The series of `project` in a query's result, without the labels that tell exporters apart and
    with its project id made neutral: a multiset of (labels, value)."""
    out: collections.Counter[Any] = collections.Counter()
    for r in result:
        labels = dict(r["metric"])
        if labels.get("project_id", project) != project:
            continue
        labels.pop("instance", None)
        labels.pop("job", None)
        if "project_id" in labels:
            labels["project_id"] = "P"
        v = float(r["value"][1])
        out[(tuple(sorted(labels.items())), f"{v:.9g}" if with_values else None)] += 1
    return out


def twin_projects(sim: StandIn) -> dict[str, Any]:
    """Two projects with the same tasks, groups and sync tasks; a failed task of each with bandwidth
    limits, whose id and name the drill-down dashboards are filled with."""
    for pid in (SERVED_TWICE, SERVED_ONCE):
        sim.add_project(pid, make_tasks(40, seed=5, now_ms=NOW_MS))
        add_groups_and_syncs(sim, pid, now_ms=NOW_MS)
    failed = next(t for t in sim.projects[SERVED_TWICE].values() if t["status"] == 4 and
                  re.fullmatch(r"[\w-]+", t["name"]))
    for pid in (SERVED_TWICE, SERVED_ONCE):
        sim.patch_task(pid, failed["id"], bandwidth_policy=[
            {"start": "00:00", "end": "12:00", "max_bandwidth": 100 * 1024 * 1024},
            {"start": "12:00", "end": "23:59", "max_bandwidth": 50 * 1024 * 1024}])
    return {"region": ".*", "project_id": "", "group_id": ".*", "task": ".*", "status": ".*", "datasource": "x",
            "task_id": str(failed["id"]), "name": failed["name"]}


async def test_two_replicas_serving_one_project_count_it_once(
        tmp_path: Path, processes: Processes, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    require_binary("prometheus")
    deadline = time.monotonic() + DEADLINE
    sim = StandIn(tokens={TOKEN})
    variables = twin_projects(sim)
    oms = await aiohttp_server(sim.app())
    env = clean_env(OMS_REGION="cn-north-4", OMS_AUTH_TOKEN=TOKEN, OMS_ENDPOINT=str(oms.make_url("")).rstrip("/"))
    ports = [free_port() for _ in range(3)]  # two replicas of SERVED_TWICE, one exporter of SERVED_ONCE
    for i, (port, pid) in enumerate(zip(ports, (SERVED_TWICE, SERVED_TWICE, SERVED_ONCE))):
        processes.start(f"exporter-{i}", exporter_args(port), env={**env, "OMS_PROJECT_ID": pid})
    # The compose stack's Prometheus with the shipped rules (alerts' `for:` shortened), as tests/test_e2e.py.
    for entry, rules in prometheus_rule_files().items():
        (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
        text = rules.read_text(encoding="utf-8")
        (tmp_path / entry).write_text(shorten_for(text) if rules == ALERTS_FILE else text, encoding="utf-8")
    config = e2e_prometheus_config(ports, free_port())
    del config["alerting"]
    prom = Prometheus(processes, tmp_path, config)
    twice, once = f'project_id="{SERVED_TWICE}"', f'project_id="{SERVED_ONCE}"'
    try:
        await wait_for("both projects scraped, one of them by two exporters, with rates and recorded totals",
                       lambda: prom.has(f"count(oms_up{{{twice}}} == 1) == 2 and count(oms_up{{{once}}} == 1) == 1 "
                                        f"and count(rate(oms_api_requests_total{{{twice}, code='200'}}[1m]) > 0) == 2 "
                                        f"and count(rate(oms_api_requests_total{{{once}, code='200'}}[1m]) > 0) == 1 "
                                        f"and on () project_id:oms_tasks_size_bytes:sum{{{twice}}}"), deadline,
                       processes)

        async def compare(expr_of: Callable[[str], str], what: str, *, alert: bool = False) -> bool:
            """The expression for the project served twice against that for its twin served once: the
            same series, with the same values. True when it gave any."""
            expr = expr_of(SERVED_TWICE)
            got, want = await prom.query(expr), await prom.query(expr_of(SERVED_ONCE))
            exact = not OWN_WORK.search(expr)
            twice_seen, once_seen = normal(got, SERVED_TWICE, exact), normal(want, SERVED_ONCE, exact)
            if alert:  # one alert per exporter that fires it, each the twin's
                same = set(twice_seen) == set(once_seen) and max(twice_seen.values(), default=1) <= 2
            else:
                same = twice_seen == once_seen
            if not same:
                wrong.append(f"{what}: {expr}\n  served twice: {dict(twice_seen)}\n  served once: {dict(once_seen)}")
            return bool(once_seen)

        wrong: list[str] = []
        # The control: a plain sum does double the project served twice (so the equalities below mean something).
        naive = [normal(await prom.query(f'sum by (project_id) (oms_tasks{{project_id="{pid}"}})'), pid, True)
                 for pid in (SERVED_TWICE, SERVED_ONCE)]
        assert [float(v) for (_, v) in naive[0]] == [2 * float(v) for (_, v) in naive[1]] != [0], naive

        with_data = 0
        for name, d in dashboards().items():
            for expr in exprs_of(d):
                filled = {**variables, "group_id": "5e6f7a8b9c0d4e1f8a2b3c4d5e6f7a8b"} \
                    if name == "oms-task-group.json" else variables
                with_data += await compare(lambda pid, expr=expr, filled=filled: fill_variables(
                    expr, {**filled, "project_id": pid}), f"dashboard {name}")
        assert not wrong, "\n".join(wrong)
        assert with_data >= 80, with_data
        recorded = 0
        for rule in load_rules(RECORDING_FILE):
            recorded += await compare(lambda pid, rule=rule: f'{rule["record"]}{{project_id="{pid}"}}',
                                      f"recording rule {rule['record']}")
        assert not wrong, "\n".join(wrong)
        assert recorded == len(load_rules(RECORDING_FILE))
        fired = {rule["alert"] for rule in alerts()
                 if await compare(lambda pid, rule=rule: rule["expr"], f"alert {rule['alert']}", alert=True)}
        assert not wrong, "\n".join(wrong)
        assert {"OmsTaskFailed", "OmsTaskGroupFailed"} <= fired, fired  # the others need more than seconds
    finally:
        await prom.close()
