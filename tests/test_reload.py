"""SIGHUP: the real program reads its files again, serves the new targets, keeps the old on a bad file."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp.test_utils import TestServer

from oms_exporter.simulator import make_tasks
from tests.conftest import PROJECT, TOKEN, Samples, launch_exporter, parse_metrics, value, values
from tests.standin import StandIn

pytestmark = pytest.mark.slow  # the exporter as a process, SIGHUP and polling in real time

OTHER = "p0000000000000000000000000000002"


def target(oms: TestServer, name: str, project_id: str) -> dict[str, Any]:
    return {"name": name, "project_id": project_id, "region": "cn-north-4",
            "endpoint": str(oms.make_url("")).rstrip("/"), "auth_token": TOKEN}


async def metrics(session: aiohttp.ClientSession, port: int) -> Samples:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return parse_metrics(await resp.text())


async def until(session: aiohttp.ClientSession, port: int, ok: Any, timeout: float = 10) -> Samples:
    started = time.monotonic()
    while True:
        try:
            samples = await metrics(session, port)
            if ok(samples):
                return samples
        except aiohttp.ClientConnectorError:
            pass
        assert time.monotonic() - started < timeout, "condition not reached"
        await asyncio.sleep(0.1)


def up(samples: Samples) -> dict[str, float]:
    return {dict(labels)["project_id"]: v for labels, v in values(samples, "oms_up").items()}


async def test_sighup_reloads_the_config_file_and_keeps_it_when_broken(
        sim: StandIn, oms: TestServer, tmp_path: Path) -> None:
    sim.add_project(OTHER, make_tasks(7, seed=2))
    config = tmp_path / "targets.yml"
    config.write_text(yaml.safe_dump({"targets": [target(oms, "a", PROJECT)]}))
    args = ["--config.file", str(config), "--no-collector.task-groups", "--no-collector.sync-tasks"]
    async with launch_exporter(args, tmp_path) as exporter, aiohttp.ClientSession() as session:
        port, proc = exporter.port, exporter.proc
        first = await until(session, port, lambda s: up(s) == {PROJECT: 1}, timeout=15)
        assert value(first, "oms_exporter_config_last_reload_successful") == 1
        started_at = value(first, "oms_exporter_config_last_reload_success_timestamp_seconds")
        assert abs(started_at - time.time()) < 30

        config.write_text(yaml.safe_dump({"targets": [target(oms, "a", PROJECT), target(oms, "b", OTHER)]}))
        proc.send_signal(signal.SIGHUP)
        after = await until(session, port, lambda s: up(s) == {PROJECT: 1, OTHER: 1})
        assert value(after, "oms_tasks", project_id=OTHER, status="waiting") >= 0
        assert value(after, "oms_exporter_config_last_reload_successful") == 1
        assert value(after, "oms_exporter_config_last_reload_success_timestamp_seconds") > started_at

        config.write_text("targets: [\n")  # broken
        proc.send_signal(signal.SIGHUP)
        kept = await until(session, port, lambda s: value(s, "oms_exporter_config_last_reload_successful") == 0)
        assert up(kept) == {PROJECT: 1, OTHER: 1}
        assert proc.poll() is None

        config.write_text(yaml.safe_dump({"targets": [target(oms, "b", OTHER)]}))
        proc.send_signal(signal.SIGHUP)
        last = await until(session, port, lambda s: up(s) == {OTHER: 1})
        # The own metrics of a project no longer configured go with it.
        await asyncio.sleep(0.2)
        last = await metrics(session, port)
        assert not values(last, "oms_scrape_errors_total", project_id=PROJECT)
    err = exporter.log()
    errors = [line for line in err.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "reload failed" in errors[0] and "not valid YAML" in errors[0], errors
    assert "Traceback" not in err and TOKEN not in err
    assert proc.returncode in (0, -signal.SIGTERM)


async def test_a_ca_file_broken_before_sighup_fails_the_reload_and_keeps_the_old_settings(
        sim: StandIn, oms: TestServer, tmp_path: Path) -> None:
    sim.add_project(OTHER, make_tasks(7, seed=2))
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    config = tmp_path / "targets.yml"
    config.write_text(yaml.safe_dump({"targets": [target(oms, "a", PROJECT)]}))
    args = ["--config.file", str(config), "--oms.ca-file", str(ca_file), "--no-collector.task-groups",
            "--no-collector.sync-tasks"]
    async with launch_exporter(args, tmp_path) as exporter, aiohttp.ClientSession() as session:
        port, proc = exporter.port, exporter.proc
        await until(session, port, lambda s: up(s) == {PROJECT: 1}, timeout=15)
        # Both files change; the new targets come with a CA file that is no longer a CA bundle.
        ca_file.write_text("not a certificate\nkey=CA-FILE-CONTENT-7f3a\n")
        config.write_text(yaml.safe_dump({"targets": [target(oms, "a", PROJECT), target(oms, "b", OTHER)]}))
        proc.send_signal(signal.SIGHUP)
        kept = await until(session, port, lambda s: value(s, "oms_exporter_config_last_reload_successful") == 0)
        assert up(kept) == {PROJECT: 1}  # the settings in force still serve
        await asyncio.sleep(0.3)
        assert up(await metrics(session, port)) == {PROJECT: 1}
        assert proc.poll() is None
    text = exporter.log()
    errors = [line for line in text.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "reload failed" in errors[0], errors
    assert f"--oms.ca-file: {ca_file} is not a PEM CA bundle (" in errors[0], errors
    assert "Traceback" not in text and "never retrieved" not in text and "CA-FILE-CONTENT" not in text
