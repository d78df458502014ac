"""One account, many projects: the exporter discovers them through IAM and lists each one.

    python benchmarks/discovery.py                                  # 20 projects of 1,000 tasks
    python benchmarks/discovery.py --projects 50 --tasks 2000 --scrapes 10

Three processes, as in benchmarks/scrape.py: the stand-in (IAM's project list and OMS for
every project, 50 ms per call, each project a real account: 5 % live, moving on by one
scrape interval before every scrape), the exporter (the real app, one discovery entry with
AK/SK, the regions' endpoints pointed at the stand-in), and this driver, which scrapes
`/metrics` as Prometheus does and reads requests from the stand-in and CPU from /proc.

Reported: what discovery cost (IAM and one probe per project), the first scrape (every
project listed in full), and the steady scrapes that follow (listing by liveness): wall
time, requests, exporter CPU, body size; every project's `oms_up` must be 1 and its
`oms_tasks` must equal the stand-in's count.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scrape  # noqa: E402  (this directory's benchmark: roles' plumbing, Prometheus' headers, /proc readers)

REGIONS = ("cn-north-4", "cn-east-3", "cn-south-1", "ap-southeast-1")


def project_names(n: int) -> list[tuple[str, str]]:
    """(name, id) of n projects: a region project of each region first, then sub-projects."""
    names = list(REGIONS[:n])
    names += [f"{REGIONS[i % len(REGIONS)]}_team{i}" for i in range(n - len(names))]
    return [(name, f"{i + 1:032x}") for i, name in enumerate(names)]


def role_standin(args: argparse.Namespace) -> None:
    import accounts
    from aiohttp import web

    from oms_exporter.simulator import Credential
    from tests.standin import StandIn

    sim = StandIn(credentials={scrape.AK: Credential(scrape.SK)}, latency=args.latency_ms / 1000, cache_json=True)
    moving = []
    for name, pid in project_names(args.projects):
        moving.append(accounts.account(sim, pid, "real", args.tasks, args.live_share))
        sim.add_iam_project(name, pid)
    sim.add_iam_project("MOS")
    app = sim.app()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": len(sim.calls), "tasks": len(sim.requests), "iam": sim.iam_calls})

    async def advance(request: web.Request) -> web.Response:
        for account in moving:
            account.advance(scrape.SCRAPE_INTERVAL)
        return web.json_response({})

    async def truth(request: web.Request) -> web.Response:
        return web.json_response({pid: len(sim.projects[pid]) for _, pid in project_names(args.projects)})

    app.router.add_get("/_bench/stats", stats)
    app.router.add_post("/_bench/advance", advance)
    app.router.add_get("/_bench/truth", truth)
    scrape._serve(app)


def role_exporter(args: argparse.Namespace) -> None:
    import prometheus_client

    from oms_exporter import cli
    from oms_exporter import web as oms_web
    from oms_exporter.catalog import switches
    from oms_exporter.settings import DiscoveryEntry, Options, Settings

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # as cli.main does
    entry = DiscoveryEntry.model_validate({
        "ak": scrape.AK, "sk": scrape.SK, "iam_endpoint": args.endpoint,
        "endpoints": dict.fromkeys(REGIONS, args.endpoint)})
    options = Options(log_level="error", max_concurrency=args.max_concurrency)
    app = oms_web.make_app(Settings(options=options, targets=[], discovery=[entry], switches=switches()))
    app.cleanup_ctx.append(cli.gc_policy)
    scrape._serve(app)


def _check(body: bytes, truth: dict[str, int]) -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families

    up: dict[str, float] = {}
    tasks: dict[str, float] = {}
    for family in text_string_to_metric_families(gzip.decompress(body).decode()):
        for s in family.samples:
            if s.name == "oms_up":
                up[s.labels["project_id"]] = s.value
            elif s.name == "oms_tasks":
                tasks[s.labels["project_id"]] = tasks.get(s.labels["project_id"], 0) + s.value
    problems = [f"{pid}: oms_up {up.get(pid)}" for pid in truth if up.get(pid) != 1]
    problems += [f"{pid}: {tasks.get(pid)} tasks, OMS has {n}" for pid, n in truth.items() if tasks.get(pid) != n]
    return problems


async def _measure(args: argparse.Namespace, sim_port: int, exp_port: int, exp_pid: int) -> dict[str, Any]:
    import aiohttp

    sim, exp = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{exp_port}"
    headers = {"Accept": scrape.PROM_ACCEPT, "Accept-Encoding": "gzip", "X-Prometheus-Scrape-Timeout-Seconds": "30"}
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async def stats() -> dict[str, int]:
            async with s.get(f"{sim}/_bench/stats") as r:
                return dict(await r.json())

        # Discovery runs at start: the first list, then one probe per candidate.
        give_up = time.monotonic() + 60
        while True:
            async with s.get(f"{exp}/discovery") as r:
                groups = await r.json()
            if len(groups) == args.projects:
                break
            assert time.monotonic() < give_up, f"{len(groups)} of {args.projects} projects discovered in 60 s"
            await asyncio.sleep(0.2)
        discovered = await stats()  # requests since the start: discovery's alone
        for i in range(args.scrapes + 1):
            if i:
                await s.post(f"{sim}/_bench/advance")
            async with s.get(f"{sim}/_bench/truth") as r:
                truth = await r.json()
            before, cpu0, t0 = await stats(), scrape._cpu_seconds(exp_pid), time.perf_counter()
            async with s.get(f"{exp}/metrics", headers=headers) as r:
                body = await r.read()
            wall, cpu, after = time.perf_counter() - t0, scrape._cpu_seconds(exp_pid) - cpu0, await stats()
            problems = _check(body, truth)
            if problems:
                raise SystemExit(f"scrape {i} is not exact: {problems[:5]}")
            rows.append({"wall": wall, "cpu": cpu, "requests": after["requests"] - before["requests"],
                         "tasks": after["tasks"] - before["tasks"], "body": len(body)})
    return {"discovery_requests": discovered["requests"], "iam_calls": discovered["iam"], "rows": rows,
            "rss_mb": scrape._hwm_mb(exp_pid)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sim, sim_port = scrape._spawn("standin", "--projects", str(args.projects), "--tasks", str(args.tasks),
                                  "--latency-ms", str(args.latency_ms), "--live-share", str(args.live_share),
                                  script=Path(__file__))
    try:
        exp, exp_port = scrape._spawn("exporter", "--endpoint", f"http://127.0.0.1:{sim_port}",
                                      "--max-concurrency", str(args.max_concurrency), script=Path(__file__))
        try:
            return asyncio.run(_measure(args, sim_port, exp_port, exp.pid))
        finally:
            scrape._stop(exp)
    finally:
        scrape._stop(sim)


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    first, steady = result["rows"][0], result["rows"][1:]
    lines = [f"{args.projects} discovered projects x {args.tasks:,} tasks ({args.live_share:.0%} live), "
             f"{args.latency_ms:g} ms per OMS call, --oms.max-concurrency {args.max_concurrency}",
             f"  discovery: {result['iam_calls']} IAM project list, {result['discovery_requests']} OMS requests "
             f"(one probe per project)",
             f"  first scrape (every project listed in full): {first['wall']:.2f} s, {first['requests']} OMS requests "
             f"({first['tasks']} ListTasks), exporter CPU {first['cpu']:.2f} s, body {first['body'] / 1e6:.2f} MB gzip"]
    if steady:
        med = {k: statistics.median(r[k] for r in steady) for k in ("wall", "cpu", "requests", "tasks", "body")}
        lines.append(f"  steady scrapes (median of {len(steady)}, by liveness): {med['wall']:.2f} s, "
                     f"{med['requests']:.0f} OMS requests ({med['requests'] / args.projects:.1f} per project, "
                     f"{med['tasks']:.0f} ListTasks/ShowTask), "
                     f"exporter CPU {med['cpu']:.2f} s, body {med['body'] / 1e6:.2f} MB gzip")
    lines.append(f"  exporter peak RSS {result['rss_mb']:.0f} MB; every scrape exact (oms_up 1, oms_tasks = OMS)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from oms_exporter.settings import Options

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=20)
    p.add_argument("--tasks", type=int, default=1000, help="tasks per project")
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--live-share", type=float, default=0.05)
    p.add_argument("--max-concurrency", type=int, default=Options().max_concurrency)
    p.add_argument("--scrapes", type=int, default=5, help="steady scrapes after the first")
    p.add_argument("--json", type=Path)
    p.add_argument("--role", choices=["standin", "exporter"], help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "standin":
        role_standin(args)
        return 0
    if args.role == "exporter":
        role_exporter(args)
        return 0
    result = run(args)
    print(report(result, args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
