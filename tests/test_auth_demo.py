"""`--demo` in each authentication mode, as a real process: it serves /metrics with `oms_up 1`."""

from __future__ import annotations

from pathlib import Path

import pytest

from oms_exporter.demo import EAST_ID, PROJECT_ID, TEAM_ID
from tests.conftest import launch_exporter, parse_metrics, values

pytestmark = pytest.mark.slow  # the exporter as a process, four times


@pytest.mark.parametrize("mode", ["aksk", "token", "iam", None], ids=["aksk", "token", "iam", "default"])
async def test_demo_runs_in_each_mode(mode: str | None, tmp_path: Path) -> None:
    args = ["--demo", "--demo.tasks", "40"] + (["--demo.auth", mode] if mode else [])
    async with launch_exporter(args, tmp_path) as exporter:
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
