"""Shards (issue 24): replicas that split the targets by a stable hash of `project_id`.

The assignment is Prometheus' `hashmod` (tests/test_e2e_shards.py checks it against a real
Prometheus): stable across processes, complete and disjoint for any count. Each replica
serves only its shard's targets, configured and discovered, on /metrics, /probe, /discovery
and the landing page, and tells which shard serves a target it does not. Settings: flag,
environment and YAML, `auto` from a StatefulSet pod's host name, and one line per bad setting.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from oms_exporter.catalog import switches
from oms_exporter.cli import main
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import DiscoveryEntry, Options, Settings, load
from oms_exporter.shards import Shard, ordinal, shard_of
from oms_exporter.simulator import Credential, make_tasks
from oms_exporter.web import LIVE, make_app, reload
from tests.conftest import AK, ROOT, SK, ManualClock, Samples, parse_metrics, target_for, value, values
from tests.standin import StandIn

# Six projects; with two shards, 0 serves P1, P4, P6 and 1 serves P2, P3, P5 (Prometheus' hashmod).
PROJECTS = [f"5a{i:030d}" for i in range(1, 7)]
SHARD_OF_2 = {PROJECTS[0]: 0, PROJECTS[1]: 1, PROJECTS[2]: 1, PROJECTS[3]: 0, PROJECTS[4]: 1, PROJECTS[5]: 0}
NAMES = {pid: f"p{i}" for i, pid in enumerate(PROJECTS, 1)}


# --- the assignment ---------------------------------------------------------------------------------
def test_the_hash_is_prometheus_hashmod() -> None:
    # Values a real Prometheus 2.42 gives for `hashmod` of these project ids (tests/test_e2e_shards.py
    # checks many more, live).
    assert shard_of("abc", 3) == 2
    assert shard_of("0a1b2c3d4e5f60718293a4b5c6d7e8f9", 7) == 0
    assert {pid: shard_of(pid, 2) for pid in PROJECTS} == SHARD_OF_2


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_project_is_in_exactly_one_shard(count: int) -> None:
    ids = [f"{i:032x}" for i in range(2000)]
    shards = [Shard(index, count) for index in range(count)]
    per_shard = [[pid for pid in ids if s.owns(pid)] for s in shards]
    assert sorted(pid for served in per_shard for pid in served) == sorted(ids)  # complete and disjoint
    for served in per_shard:  # and spread evenly enough to be worth it
        assert abs(len(served) - len(ids) / count) < 0.2 * len(ids) / count + 10, [len(s) for s in per_shard]
    assert all(shards[0].owner(pid) == i for i, served in enumerate(per_shard) for pid in served)


def test_the_assignment_is_the_same_in_every_process() -> None:
    """Never `hash()`: another interpreter, with another hash seed, assigns the same shards."""
    code = ("from oms_exporter.shards import shard_of\n"
            "print(','.join(str(shard_of(f'{i:032x}', 5)) for i in range(300)))")
    outs = set()
    for seed in ("1", "2"):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)})
        assert res.returncode == 0, res.stderr
        outs.add(res.stdout.strip())
    assert outs == {",".join(str(shard_of(f"{i:032x}", 5)) for i in range(300))}


@pytest.mark.parametrize("host, index", [("oms-exporter-0", 0), ("oms-exporter-2", 2), ("oms-exporter-17", 17),
                                         ("oms-exporter-3.oms-exporter.monitoring.svc.cluster.local", 3),
                                         ("exporter-v2-1", 1)])
def test_auto_takes_the_ordinal_of_a_statefulset_pod(host: str, index: int) -> None:
    assert ordinal(host) == index


@pytest.mark.parametrize("host", ["oms-exporter", "vm", "oms-exporter-2a", "localhost.localdomain", "x-1234567"])
def test_a_host_name_without_an_ordinal_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="does not end in a StatefulSet pod's ordinal"):
        ordinal(host)


# --- settings: flag, environment, YAML ---------------------------------------------------------------
@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("OMS_", "CLOUD_SDK_")):
            monkeypatch.delenv(k)


def config(tmp_path: Path, shard: str = "") -> Path:
    f = tmp_path / "oms.yml"
    f.write_text(shard + "targets:\n  - {name: a, project_id: p, region: cn-north-4, auth_token: t}\n",
                 encoding="utf-8")
    return f


def test_the_shard_from_a_flag_the_environment_or_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = config(tmp_path, "shard:\n  count: 4\n  index: 3\n")
    assert load({}, f).options.shard == Shard(3, 4)
    monkeypatch.setenv("OMS_SHARD_INDEX", "2")
    assert load({}, f).options.shard == Shard(2, 4)  # the environment over the file
    assert load({"shard_index": "1"}, f).options.shard == Shard(1, 4)  # a flag over both
    assert load({"shard_index": "1", "shard_count": "2"}, f).options.shard == Shard(1, 2)
    monkeypatch.delenv("OMS_SHARD_INDEX")
    assert load({}, config(tmp_path)).options.shard == Shard(0, 1)  # unsharded by default


def test_auto_reads_the_host_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "oms-exporter-2")
    assert load({"shard_index": "auto", "shard_count": "3"}, config(tmp_path)).options.shard == Shard(2, 3)
    assert load({}, config(tmp_path, "shard: {count: 3, index: auto}\n")).options.shard == Shard(2, 3)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main([*argv, "--check-config"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, env, shard, host, expected", [
    (["--shard.count", "3", "--shard.index", "3"], {}, "", "vm",
     "--shard.index: 3 is not a shard of 3 (shards 0 to 2, by --shard.count)"),
    (["--shard.index", "1"], {}, "", "vm", "--shard.index: 1 is not a shard of 1 (shards 0 to 0, by --shard.count)"),
    (["--shard.count", "0"], {}, "", "vm", "--shard.count: Input should be greater than or equal to 1"),
    (["--shard.count", "3", "--shard.index", "-1"], {}, "", "vm", "--shard.index: Input should be greater than"),
    (["--shard.count", "3", "--shard.index", "two"], {}, "", "vm", "--shard.index: Input should be a valid integer"),
    (["--shard.count", "3", "--shard.index", "auto"], {}, "", "vm",
     "--shard.index: auto: the host name 'vm' does not end in a StatefulSet pod's ordinal"),
    (["--shard.count", "3", "--shard.index", "auto"], {}, "", "oms-exporter-3",
     "--shard.index: auto (the host name's ordinal 3) is not a shard of 3 (shards 0 to 2, by --shard.count)"),
    ([], {"OMS_SHARD_COUNT": "2", "OMS_SHARD_INDEX": "5"}, "", "vm",
     "OMS_SHARD_INDEX: 5 is not a shard of 2 (shards 0 to 1, by OMS_SHARD_COUNT)"),
    ([], {"OMS_SHARD_COUNT": "many"}, "", "vm", "OMS_SHARD_COUNT: Input should be a valid integer"),
    ([], {}, "shard: {count: 2, index: 2}\n", "vm", "oms.yml: shard.index: 2 is not a shard of 2 (shards 0 to 1, by "),
    ([], {}, "shard: {count: 0}\n", "vm", "oms.yml: shard.count: Input should be greater than or equal to 1"),
    ([], {}, "shard: 3\n", "vm", "oms.yml: shard: should be a mapping of count, index"),
    ([], {}, "shard: {count: 2, ordinal: 1}\n", "vm", "oms.yml: shard.ordinal: Extra inputs are not permitted"),
])
def test_bad_shard_settings_one_line_exit_2(argv: list[str], env: dict[str, str], shard: str, host: str,
                                            expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, err = run([*argv, "--config.file", str(config(tmp_path, shard))], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("oms-exporter: error: ") and expected in lines[0], lines[0]


def test_check_config_says_which_targets_the_shard_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    f = tmp_path / "oms.yml"
    f.write_text("targets:\n" + "".join(f"  - {{name: {NAMES[p]}, project_id: {p}, region: cn-north-4, "
                                        "auth_token: t}\n" for p in PROJECTS), encoding="utf-8")
    assert main(["--config.file", str(f), "--shard.count", "2", "--shard.index", "1", "--check-config"]) == 0
    assert "shard 1 of 2: serves 3 of 6 configured targets (p2, p3, p5)\n" in capsys.readouterr().out


# --- over HTTP: what a replica serves ---------------------------------------------------------------
@pytest.fixture
def six(sim: StandIn) -> StandIn:
    for n, pid in enumerate(PROJECTS):
        sim.add_project(pid, make_tasks(5 + n, seed=40 + n))
    return sim


Replica = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def replica(six: StandIn, oms: TestServer, clock: ManualClock, aiohttp_client: Any) -> Replica:
    """`await replica(index, count)`: an exporter of the six projects (and the `sim` fixture's) as shard
    `index` of `count`."""
    async def make(index: int, count: int) -> TestClient:
        targets = [target_for(oms, name=NAMES[pid], project_id=pid) for pid in PROJECTS]
        settings = Settings(options=Options(shard_index=index, shard_count=count), targets=targets)
        return await aiohttp_client(make_app(settings, stats=SelfMetrics(), clock=clock))
    return make


async def get(client: TestClient, path: str) -> tuple[int, str]:
    resp = await client.get(path)
    return resp.status, await resp.text()


def served(s: Samples) -> set[str]:
    return {dict(lab)["project_id"] for lab in values(s, "oms_up")}


async def test_each_replica_serves_its_shard_on_metrics(replica: Replica) -> None:
    for count in (1, 2, 3):
        seen: list[str] = []
        for index in range(count):
            client = await replica(index, count)
            status, text = await get(client, "/metrics")
            assert status == 200
            s = parse_metrics(text)
            mine = {pid for pid in PROJECTS if shard_of(pid, count) == index}
            assert served(s) == mine
            assert {dict(lab)["project_id"] for lab in values(s, "oms_project_info")} == mine
            assert {dict(lab)["project_id"] for lab in values(s, "oms_listings_total")} == mine
            assert all(value(s, "oms_up", project_id=pid) == 1 for pid in mine)
            assert value(s, "oms_exporter_shard_info", index=str(index), count=str(count)) == 1
            assert len(values(s, "oms_exporter_shard_info")) == 1
            assert value(s, "oms_exporter_shard_targets") == len(mine)
            seen += served(s)
            await client.close()
        assert sorted(seen) == sorted(PROJECTS)  # every project once, over the replicas


async def test_discovery_and_the_landing_page_show_only_the_shard(replica: Replica) -> None:
    client = await replica(1, 2)
    groups = await (await client.get("/discovery")).json()
    assert {g["labels"]["project_id"] for g in groups} == {pid for pid, i in SHARD_OF_2.items() if i == 1}
    status, page = await get(client, "/")
    assert status == 200 and "Shard 1 of 2: this replica serves the 3 targets" in page
    for pid, index in SHARD_OF_2.items():
        assert (f"/probe?target={NAMES[pid]}" in page) == (index == 1), pid


async def test_probe_of_another_shards_target_names_its_shard(replica: Replica) -> None:
    client = await replica(0, 2)
    for pid, index in SHARD_OF_2.items():
        status, text = await get(client, f"/probe?target={NAMES[pid]}")
        if index == 0:
            assert status == 200 and value(parse_metrics(text), "oms_up", project_id=pid) == 1
        else:
            assert (status, text) == (404, f"target {NAMES[pid]} belongs to shard 1 of 2\n")
    assert await get(client, "/probe?target=nowhere") == (400, "unknown target\n")  # as unsharded


async def test_unsharded_the_exporter_serves_everything_as_before(replica: Replica) -> None:
    client = await replica(0, 1)
    s = parse_metrics((await get(client, "/metrics"))[1])
    assert served(s) == set(PROJECTS)
    assert value(s, "oms_exporter_shard_info", index="0", count="1") == 1
    assert value(s, "oms_exporter_shard_targets") == 6
    assert "Shard" not in (await get(client, "/"))[1]


async def test_a_reload_can_change_the_shard(replica: Replica, oms: TestServer) -> None:
    """`shard:` of the file is read again on SIGHUP, with the targets: the next scrape serves the new
    share, and the projects no longer served lose their series."""
    client = await replica(0, 2)
    assert served(parse_metrics((await get(client, "/metrics"))[1])) == {p for p, i in SHARD_OF_2.items() if i == 0}
    targets = [target_for(oms, name=NAMES[pid], project_id=pid) for pid in PROJECTS]
    await reload(client.server.app, Settings(options=Options(shard_index=2, shard_count=3), targets=targets))
    s = parse_metrics((await get(client, "/metrics"))[1])
    mine = {pid for pid in PROJECTS if shard_of(pid, 3) == 2}
    assert served(s) == mine and value(s, "oms_exporter_shard_targets") == len(mine)
    assert list(values(s, "oms_exporter_shard_info")) == [frozenset({("index", "2"), ("count", "3")})]
    await asyncio.gather(*client.server.app[LIVE].retiring)
    s = parse_metrics((await get(client, "/metrics"))[1])
    assert {dict(lab)["project_id"] for lab in values(s, "oms_listings_total")} == mine


# --- discovered targets --------------------------------------------------------------------------------
@pytest.fixture
def account(clock: ManualClock) -> StandIn:
    """An account of six projects with OMS, one forbidden, and MOS."""
    sim = StandIn(credentials={AK: Credential(SK)}, clock=clock.time)
    for n, pid in enumerate(PROJECTS):
        sim.add_project(pid, make_tasks(3 + n, seed=60 + n))
        sim.add_iam_project(f"cn-north-4_{NAMES[pid]}", pid)
    sim.add_iam_project("cn-north-4_legacy", "f" * 32)  # OMS answers 403
    sim.add_iam_project("MOS")
    return sim


async def test_discovered_targets_are_sharded_and_every_replica_counts_the_whole_account(
        account: StandIn, clock: ManualClock, aiohttp_server: Any, aiohttp_client: Any) -> None:
    iam = await aiohttp_server(account.app())
    url = str(iam.make_url("")).rstrip("/")
    entry = DiscoveryEntry.model_validate({"ak": AK, "sk": SK, "iam_endpoint": url, "endpoints": {"cn-north-4": url}})
    seen: list[str] = []
    for index in (0, 1):
        settings = Settings(options=Options(shard_index=index, shard_count=2), targets=[], discovery=[entry],
                            switches=switches())
        client = await aiohttp_client(make_app(settings, stats=SelfMetrics(), clock=clock))
        s = parse_metrics((await get(client, "/metrics"))[1])
        mine = {pid for pid, i in SHARD_OF_2.items() if i == index}
        assert served(s) == mine and value(s, "oms_exporter_shard_targets") == 3
        seen += served(s)
        # The account as a whole, the same on each replica: these counts are not to be added up.
        states = {dict(lab)["state"]: v for lab, v in values(s, "oms_discovery_projects").items()}
        assert states == {"scraped": 6, "forbidden": 1, "not_offered": 0, "disabled": 0, "excluded": 1}
        groups = await (await client.get("/discovery")).json()
        assert {g["labels"]["project_id"] for g in groups} == mine
        other = next(pid for pid, i in SHARD_OF_2.items() if i != index)
        assert await get(client, f"/probe?target=cn-north-4_{NAMES[other]}") == (
            404, f"target cn-north-4_{NAMES[other]} belongs to shard {1 - index} of 2\n")
        await client.close()
    assert sorted(seen) == sorted(PROJECTS)
