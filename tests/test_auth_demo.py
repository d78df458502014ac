"""`--demo` in each authentication mode, as a real process: it serves /metrics with `oms_up 1`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import launch_exporter, parse_metrics, value

pytestmark = pytest.mark.slow  # the exporter as a process, four times


@pytest.mark.parametrize("mode", ["aksk", "token", "iam", None], ids=["aksk", "token", "iam", "default"])
async def test_demo_runs_in_each_mode(mode: str | None, tmp_path: Path) -> None:
    args = ["--demo", "--demo.tasks", "40"] + (["--demo.auth", mode] if mode else [])
    async with launch_exporter(args, tmp_path) as exporter:
        for _ in range(2):
            status, body = await exporter.get()
            assert status == 200
            samples = parse_metrics(body)
            assert value(samples, "oms_up") == 1
            errors = {k: v for k, v in samples.items() if k[0] == "oms_scrape_errors_total"}
            assert errors and not any(errors.values()), errors  # every reason exported, none counted
    assert f"auth={mode or 'aksk'}" in exporter.log()
