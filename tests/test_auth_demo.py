"""`--demo` in each authentication mode, as a real process: it serves /metrics with `oms_up 1`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from oms_exporter.demo import EAST_ID, PROJECT_ID, TEAM_ID
from tests.conftest import parse_metrics, values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exporter:
    """An `oms-exporter` process; its stderr (the log) is in `log_path`."""

    def __init__(self, proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
        self.proc, self.base, self.log_path = proc, base, log_path

    async def get(self, path: str = "/metrics") -> tuple[int, str]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            async with s.get(self.base + path) as resp:
                return resp.status, await resp.text()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@asynccontextmanager
async def run_exporter(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
                       ready: Callable[[str], bool] = lambda text: True) -> AsyncIterator[Exporter]:
    """Start `python -m oms_exporter ARGS` on a free loopback port; wait until /metrics answers
    (and `ready(body)`), at most 20 s; stop it afterwards (SIGTERM, then SIGKILL)."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("OMS_", "CLOUD_SDK_"))}
    log_path = tmp_path / f"exporter-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oms_exporter", *args, "--web.listen-address", f"127.0.0.1:{port}"],
            env={**clean, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT)
    exporter = Exporter(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 20
        while True:
            assert proc.poll() is None, f"exporter exited with {proc.returncode}:\n{exporter.log()}"
            try:
                status, body = await exporter.get()
                if status == 200 and ready(body):
                    break
            except aiohttp.ClientError:
                pass
            assert loop.time() < give_up, f"exporter not ready in 20 s:\n{exporter.log()}"
            await asyncio.sleep(0.1)
        yield exporter
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)


@pytest.mark.parametrize("mode", ["aksk", "token", "iam", None], ids=["aksk", "token", "iam", "default"])
async def test_demo_runs_in_each_mode(mode: str | None, tmp_path: Path) -> None:
    args = ["--demo", "--demo.tasks", "40"] + (["--demo.auth", mode] if mode else [])
    async with run_exporter(args, tmp_path) as exporter:
        for _ in range(2):
            status, body = await exporter.get()
            assert status == 200
            samples = parse_metrics(body)
            up = {dict(lab)["project_id"]: v for lab, v in values(samples, "oms_up").items()}
            # A static token cannot discover: the demo's main project alone; else its account's three.
            assert up == ({PROJECT_ID: 1} if mode == "token" else {PROJECT_ID: 1, EAST_ID: 1, TEAM_ID: 1})
            errors = {k: v for k, v in samples.items() if k[0] == "oms_scrape_errors_total"}
            assert errors and not any(errors.values()), errors  # every reason exported, none counted
    assert f"auth={mode or 'aksk'}" in exporter.log()
