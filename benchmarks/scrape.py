"""Scrape benchmark: the exporter against the OMS stand-in, next to the official-SDK baseline.

    python benchmarks/scrape.py --tasks 10000 --latency-ms 50                    # both listing modes
    python benchmarks/scrape.py --tasks 100000 --live-share 0.01 --scrapes 5 --listing liveness
    python benchmarks/scrape.py --tasks 10000 --account churn --keep-finished    # the encoder's worst case
    python benchmarks/scrape.py --tasks 100 1000 10000 50000                     # scaling table
    python benchmarks/scrape.py --tasks 100000 --live-share 0.01 --account deletions --listing liveness \
        --scrapes 5 --exporter-root /tmp/old                                   # another checkout's exporter

Three processes, so that each one's CPU and memory are its own: the stand-in (with the
added latency per OMS call, an account that moves on by one scrape interval before every
scrape, see benchmarks/accounts.py, and each task's JSON text kept until it changes, so that
the stand-in's own CPU on this shared machine stays small next to a real OMS's, which costs
the exporter none), the exporter (the real app from `oms_exporter.web.make_app`, plus a
loop-lag probe), and this driver, which scrapes like Prometheus does (its Accept and
Accept-Encoding headers and the timeout header), checks every timed scrape against the
stand-in's account (every task's state, deleted tasks gone, `oms_tasks` per state), and
reads the exporter's CPU and peak RSS from /proc. The baseline runs in a fourth process:
`huaweicloudsdkoms` OmsClient + ListTasksRequest signed with AK/SK, sequential pages of 100,
then prometheus-client's `generate_latest` of the same families.

The exporter runs with its defaults (listing by liveness, succeeded tasks' series for 7
days), or with every finished task kept (`--keep-finished`: the largest body).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = "0b1c2d3e4f5a60718293a4b5c6d7e8f9"
AK, SK = "BENCHAK00000000000001", "bench-secret-key-0000000000000001"
PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
               "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
               "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
SCRAPE_INTERVAL = 15.0  # seconds the stand-in's tasks move on between two scrapes
STATES = {1: "waiting", 2: "migrating", 3: "paused", 4: "failed", 5: "succeeded", 6: "retrying", 7: "pausing"}
ROOT = Path(__file__).resolve().parent.parent


# --- child roles ------------------------------------------------------------------------

def _ready(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


def role_standin(args: argparse.Namespace) -> None:
    from aiohttp import web

    from oms_exporter.simulator import Credential
    from tests.standin import StandIn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import accounts

    sim = StandIn(credentials={AK: Credential(SK)}, latency=args.latency_ms / 1000, cache_json=True)
    evolution = accounts.account(sim, PROJECT, args.account, args.tasks[0], args.live_share)
    app = sim.app()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"requests": len(sim.requests)})

    async def advance(request: web.Request) -> web.Response:
        evolution.advance(float(request.query.get("seconds", SCRAPE_INTERVAL)))
        return web.json_response({"tasks": len(sim.projects[PROJECT])})

    async def truth(request: web.Request) -> web.Response:
        return web.json_response({tid: t["status"] for tid, t in sim.projects[PROJECT].items()})

    app.router.add_get("/_bench/stats", stats)
    app.router.add_post("/_bench/advance", advance)
    app.router.add_get("/_bench/truth", truth)
    _serve(app)


def role_exporter(args: argparse.Namespace) -> None:
    import prometheus_client
    from aiohttp import web
    from pydantic import SecretStr

    from oms_exporter import cli
    from oms_exporter import web as oms_web
    from oms_exporter.settings import Options, Settings, Target

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # as cli.main does

    target = Target(name="bench", project_id=PROJECT, region="cn-north-4", endpoint=args.endpoint,
                    ak=SecretStr(AK), sk=SecretStr(SK))
    extra = {"listing": args.listing} if args.listing in ("liveness", "full") else {}
    options = Options(finished_task_max_age=args.finished_task_max_age, log_level="error",
                      max_concurrency=args.max_concurrency, **extra)
    app = oms_web.make_app(Settings(options=options, targets=[target]))
    app.cleanup_ctx.append(cli.gc_policy)
    lag = {"max": 0.0}
    # Time spent in the cyclic garbage collector, and its longest pause (one pass blocks the loop).
    gc_time = {"total": 0.0, "max": 0.0, "start": 0.0}

    def gc_watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_time["start"] = time.perf_counter()
        else:
            took = time.perf_counter() - gc_time["start"]
            gc_time["total"] += took
            gc_time["max"] = max(gc_time["max"], took)

    gc.callbacks.append(gc_watch)

    async def probe(app: web.Application):  # type: ignore[no-untyped-def]
        # A timer that should fire every 5 ms: how late it fires is how long the loop was blocked.
        async def tick() -> None:
            loop = asyncio.get_running_loop()
            while True:
                t0 = loop.time()
                await asyncio.sleep(0.005)
                lag["max"] = max(lag["max"], loop.time() - t0 - 0.005)

        task = asyncio.create_task(tick())
        yield
        task.cancel()

    async def stats(request: web.Request) -> web.Response:
        sample = request.app[oms_web.STATS].registry.get_sample_value  # the exporter's own metrics
        out = {"max_loop_lag": lag["max"], "listings": sample("oms_listings_total", {"project_id": PROJECT}),
               "encodes": sample("oms_exporter_encodes_total"),
               "rendered_tasks": sample("oms_exporter_encoded_records_total", {"kind": "task", "result": "rendered"}),
               "reused_tasks": sample("oms_exporter_encoded_records_total", {"kind": "task", "result": "reused"}),
               "gc_seconds": gc_time["total"], "gc_max_pause": gc_time["max"]}
        if request.query.get("reset"):
            lag["max"] = 0.0
            gc_time.update(total=0.0, max=0.0)
        return web.json_response(out)

    app.cleanup_ctx.append(probe)
    app.router.add_get("/_bench/stats", stats)
    _serve(app)


def _serve(app: Any) -> None:
    import socket

    from aiohttp import web

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=1024).start()
        _ready(port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def role_sdk(args: argparse.Namespace) -> None:
    """The baseline: official SDK, sequential pages, prometheus-client collector."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sdk_baseline import scrape_once

    walls, cpus, body = [], [], 0
    for _ in range(args.runs):
        c0, t0 = time.process_time(), time.perf_counter()
        body = len(scrape_once(args.endpoint, PROJECT, AK, SK))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    print(json.dumps({"walls": walls, "cpus": cpus, "body": body, "rss_mb": _hwm_mb(os.getpid())}))


# --- driver -----------------------------------------------------------------------------

def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _spawn(role: str, *extra: str, root: Path = ROOT, script: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    """Start a role of `root`'s copy of this script (another checkout, for compare.py), or of another
    benchmark `script` with the same roles; its port, once it says READY.

    `root` goes first on the path."""
    script = script or root / "benchmarks" / "scrape.py"
    proc = subprocess.Popen([sys.executable, str(script), "--role", role, *extra],
                            stdout=subprocess.PIPE, text=True, env=_env(root))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"{role} from {root} did not start: {line!r}")
    return proc, int(line.split()[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of the whole machine: time a virtual machine's CPUs were taken away."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def check_exact(body: bytes, truth: dict[str, int]) -> list[str]:
    """What a scrape's text gets wrong about the account: states, deleted tasks, counts per state."""
    import re

    text = body.decode()
    if f'oms_up{{project_id="{PROJECT}"}} 1.0' not in text:
        return ["oms_up is not 1"]
    problems = []
    counts = {m[1]: float(m[2])
              for m in re.finditer(r'^oms_tasks\{project_id="\w+",status="(\w+)"\} (\S+)$', text, re.M)}
    want = {name: float(sum(1 for st in truth.values() if st == code)) for code, name in STATES.items()}
    if counts != want:
        problems.append(f"oms_tasks {counts} != {want}")
    shown = {m[2]: m[1] for m in re.finditer(
        r'^oms_task_status\{project_id="\w+",status="(\w+)",task_id="(\d+)"\} 1\.0$', text, re.M)}
    wrong = [tid for tid, state in shown.items() if STATES.get(truth.get(tid, 0)) != state]
    if wrong:
        problems.append(f"{len(wrong)} tasks in the wrong state or deleted, e.g. {wrong[:3]}")
    missing = [tid for tid, st in truth.items() if st not in (4, 5) and tid not in shown]
    if missing:
        problems.append(f"{len(missing)} live tasks missing, e.g. {missing[:3]}")
    return problems


async def _measure(n: int, args: argparse.Namespace, sim_port: int, exp_port: int, exp_pid: int) -> dict[str, Any]:
    import gzip

    import aiohttp

    sim, exp = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{exp_port}"
    headers = {"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip", "X-Prometheus-Scrape-Timeout-Seconds": "10"}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async def get_json(url: str) -> Any:
            async with s.get(url) as r:
                return await r.json()

        async def scrape() -> tuple[float, bytes]:
            t0 = time.perf_counter()
            async with s.get(f"{exp}/metrics", headers=headers) as r:
                body = await r.read()
                assert r.status == 200, body[:200]
                assert r.headers.get("Content-Encoding") == "gzip"
            return time.perf_counter() - t0, body

        async def advance() -> None:
            async with s.post(f"{sim}/_bench/advance", params={"seconds": str(SCRAPE_INTERVAL)}) as r:
                await r.read()

        t0 = time.perf_counter()
        await scrape()  # warm-up: connection pools, the first (complete) listing, caches
        first_s = time.perf_counter() - t0
        walls, cpus, reqs, lags, sizes, gcs, gc_pauses, wrong = [], [], [], [], [], [], [], []
        steal0, total0 = _host_ticks()
        for _ in range(args.scrapes):
            await advance()
            await get_json(f"{exp}/_bench/stats?reset=1")
            r0 = (await get_json(f"{sim}/_bench/stats"))["requests"]
            c0 = _cpu_seconds(exp_pid)
            wall, body = await scrape()
            await asyncio.sleep(0.02)  # let the probe timer run once more after the response
            walls.append(wall)
            cpus.append(_cpu_seconds(exp_pid) - c0)
            reqs.append((await get_json(f"{sim}/_bench/stats"))["requests"] - r0)
            probe = await get_json(f"{exp}/_bench/stats")
            lags.append(probe["max_loop_lag"])
            gcs.append(probe["gc_seconds"])
            gc_pauses.append(probe["gc_max_pause"])
            sizes.append(len(body))
            wrong += check_exact(gzip.decompress(body), await get_json(f"{sim}/_bench/truth"))
        steal1, total1 = _host_ticks()
        rss_timed = _hwm_mb(exp_pid)

        # Burst: concurrent scrapes must share one listing and, per content type, one body.
        await advance()
        before = await get_json(f"{exp}/_bench/stats?reset=1")
        r0 = (await get_json(f"{sim}/_bench/stats"))["requests"]
        t0 = time.perf_counter()
        await asyncio.gather(*(scrape() for _ in range(args.concurrent)))
        burst_wall = time.perf_counter() - t0
        after = await get_json(f"{exp}/_bench/stats")
        burst_reqs = (await get_json(f"{sim}/_bench/stats"))["requests"] - r0
        # Peak RSS of the Prometheus-like scrapes, before the identity fetch below adds a raw body.
        rss = _hwm_mb(exp_pid)
        # The raw size, for the record.
        async with s.get(f"{exp}/metrics", headers={"Accept": PROM_ACCEPT, "Accept-Encoding": "identity"}) as r:
            text = await r.read()
            raw = len(text)
            up = b'oms_up{project_id="%s"} 1.0' % PROJECT.encode() in text
    encodes = None if after["encodes"] is None else after["encodes"] - before["encodes"]
    return {
        "tasks": n, "listing": args.listing_now, "first_s": first_s, "median_s": statistics.median(walls),
        "walls": walls, "cpu_s": statistics.median(cpus), "cpus": cpus, "max_cpu_s": max(cpus),
        "requests": statistics.median(reqs), "max_requests": max(reqs), "max_loop_lag_ms": max(lags) * 1000,
        "gc_ms": statistics.mean(gcs) * 1000, "gc_max_pause_ms": max(gc_pauses) * 1000,
        "gzip_bytes": statistics.median(sizes), "raw_bytes": raw, "up": up, "rss_mb": rss, "rss_timed_mb": rss_timed,
        "steal_pct": 100 * (steal1 - steal0) / max(total1 - total0, 1), "wrong": wrong,
        "burst": {"scrapes": args.concurrent, "listings": after["listings"] - before["listings"],
                  "upstream_requests": burst_reqs, "encodes": encodes, "wall_s": burst_wall,
                  "max_loop_lag_ms": after["max_loop_lag"] * 1000},
    }


def run_size(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    from oms_exporter.settings import Options

    common = ["--tasks", str(n), "--latency-ms", str(args.latency_ms), "--max-concurrency", str(args.max_concurrency)]
    account = ["--account", args.account, "--live-share", str(args.live_share)]
    results = []
    for mode in (["liveness", "full"] if args.listing == "both" else [args.listing]):
        args.listing_now = mode
        # A fresh stand-in per mode: both see the same account move the same way.
        sim, sim_port = _spawn("standin", *common, *account)
        try:
            max_age = 0.0 if args.keep_finished else Options().finished_task_max_age
            exp, exp_port = _spawn("exporter", *common, "--endpoint", f"http://127.0.0.1:{sim_port}",
                                   "--listing", mode, "--finished-task-max-age", str(max_age),
                                   root=args.exporter_root)
            try:
                res = asyncio.run(_measure(n, args, sim_port, exp_port, exp.pid))
            finally:
                _stop(exp)
            if args.baseline_runs and n in args.baseline_at and mode == (["liveness", "full"] if args.listing == "both"
                                                  else [args.listing])[-1]:
                out = subprocess.run(
                    [sys.executable, __file__, "--role", "sdk", *common, "--runs", str(args.baseline_runs),
                     "--endpoint", f"http://127.0.0.1:{sim_port}"],
                    capture_output=True, text=True, check=True,
                    env=_env(ROOT))
                base = json.loads(out.stdout.strip().splitlines()[-1])
                res["sdk"] = {"median_s": statistics.median(base["walls"]), "cpu_s": statistics.median(base["cpus"]),
                              "rss_mb": base["rss_mb"], "raw_bytes": base["body"], "runs": len(base["walls"])}
                res["ratio"] = res["sdk"]["median_s"] / res["median_s"]
        finally:
            _stop(sim)
        results.append(res)
    return results

def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [(f"oms-exporter scrape benchmark: {args.account} account"
              + (f" ({args.live_share:.0%} live)" if args.account in ("real", "deletions") else "")
              + ("" if args.exporter_root == ROOT else f", the exporter of {args.exporter_root}")
              + f", stand-in latency {args.latency_ms:g} ms per OMS call, --oms.max-concurrency "
              f"{args.max_concurrency}, {'every finished task kept' if args.keep_finished else 'exporter defaults'}, "
              f"{os.cpu_count()} CPUs, {args.scrapes} timed scrapes after 1 warm-up, the account moves on "
              f"{SCRAPE_INTERVAL:g}s between scrapes"), ""]
    for r in results:
        b = r["burst"]
        lines += [
            f"tasks {r['tasks']:,}, --oms.listing={r['listing']}: body {r['raw_bytes'] / 1e6:.1f} MB "
            f"({r['gzip_bytes'] / 1e6:.2f} MB gzip), first listing {r['first_s']:.2f} s"
            + ("" if r["up"] else "  LISTING FAILED (oms_up 0): figures are not comparable"),
            (f"  exporter   median scrape {r['median_s']:.3f} s (min {min(r['walls']):.3f}, "
             f"max {max(r['walls']):.3f})  CPU/scrape {r['cpu_s']:.3f} s (max {r['max_cpu_s']:.3f})  "
             f"peak RSS {r['rss_mb']:.0f} MB (timed scrapes {r['rss_timed_mb']:.0f} MB)"),
            (f"             upstream requests/scrape {r['requests']:g} (max {r['max_requests']})"
             f"  max event-loop lag {r['max_loop_lag_ms']:.1f} ms"
             f"  GC {r['gc_ms']:.1f} ms/scrape (longest pause {r['gc_max_pause_ms']:.1f} ms)"
             # CPU time the hypervisor gave to other guests: a slow run says so here.
             f"  host CPU steal {r['steal_pct']:.1f} %"),
            f"  exact      {'every timed scrape' if not r['wrong'] else 'NO: ' + '; '.join(r['wrong'][:3])}",
            (f"  burst      {b['scrapes']} concurrent scrapes -> {b['listings']} listing(s), "
             f"{b['upstream_requests']} upstream requests, {b['encodes']} encode(s), {b['wall_s']:.3f} s, "
             f"loop lag {b['max_loop_lag_ms']:.1f} ms"),
        ]
        if "sdk" in r:
            s = r["sdk"]
            lines.append(f"  SDK        median scrape {s['median_s']:.3f} s ({s['runs']} run(s))  CPU/scrape "
                         f"{s['cpu_s']:.3f} s  peak RSS {s['rss_mb']:.0f} MB  body {s['raw_bytes'] / 1e6:.1f} MB")
            lines.append(f"  ratio      exporter is {r['ratio']:.1f}x faster than the SDK baseline")
        lines.append("")
    if len(results) > 1:
        lines += ["| tasks | listing | upstream requests/scrape | scrape (median) | CPU/scrape | peak RSS | exact |",
                  "|---:|---|---:|---:|---:|---:|---|"]
        for r in results:
            lines.append(f"| {r['tasks']:,} | {r['listing']} | {r['requests']:g} | {r['median_s']:.3f} s "
                         f"| {r['cpu_s']:.3f} s | {r['rss_mb']:.0f} MB | {'yes' if not r['wrong'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from oms_exporter.settings import Options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, nargs="+", default=[10000], help="task counts (several: a scaling table)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="added latency per ListTasks call")
    p.add_argument("--max-concurrency", type=int, default=Options().max_concurrency,
                   help="the exporter's --oms.max-concurrency (default: the exporter's default)")
    p.add_argument("--scrapes", type=int, default=7, help="timed scrapes per size, after one warm-up")
    p.add_argument("--concurrent", type=int, default=50, help="scrapes in the concurrent burst")
    p.add_argument("--baseline-runs", type=int, default=3, help="SDK baseline scrapes per size")
    p.add_argument("--baseline-at", type=int, nargs="*", default=None,
                   help="task counts to run the SDK baseline at (default: every size up to 10000)")
    p.add_argument("--account", choices=["real", "deletions", "churn"], default="real",
                   help="real: most tasks finished, a share live (default); deletions: real, and 1-5 old finished "
                   "tasks deleted between scrapes; churn: ~22%% change every scrape")
    p.add_argument("--live-share", type=float, default=0.05, help="share of live tasks of a real account")
    p.add_argument("--listing", choices=["both", "liveness", "full"], default="both",
                   help="the exporter's --oms.listing (both: one run each, on the same account)")
    p.add_argument("--keep-finished", action="store_true",
                   help="--oms.finished-task-max-age 0 (every finished task's series: the largest body)")
    p.add_argument("--finished-task-max-age", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the raw figures to this file")
    p.add_argument("--exporter-root", type=Path, default=ROOT,
                   help="the checkout whose exporter is measured (default: this one; the stand-in and the "
                   "account are always this checkout's)")
    p.add_argument("--role", choices=["standin", "exporter", "sdk"], help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        {"standin": role_standin, "exporter": role_exporter, "sdk": role_sdk}[args.role](args)
        return 0
    if args.baseline_at is None:
        args.baseline_at = [n for n in args.tasks if n <= 10000]
    results = [r for n in args.tasks for r in run_size(n, args)]
    print(_report(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
