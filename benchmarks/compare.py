"""Two versions of the exporter side by side: one stand-in, one exporter per checkout, scraped in turns.

    git worktree add /tmp/old f027c68
    python benchmarks/compare.py /tmp/old .                       # 10,000 tasks, 24 scrapes each
    python benchmarks/compare.py /tmp/old . --tasks 1000 --scrapes 40
    python benchmarks/compare.py /tmp/old . --account churn        # ~22 % of the tasks change per scrape

This machine's speed drifts by ±15 % over minutes, so two separate runs of scrape.py
cannot tell a 5 % change from noise. Here both exporters (each started from its own
checkout's `benchmarks/scrape.py --role exporter`, each with its own default listing mode
and every finished task kept) list the same stand-in, which moves its account on once per
round (benchmarks/accounts.py); each round scrapes both, in alternating order. CPU per scrape is
read from /proc in clock ticks (10 ms), so the mean over many scrapes is the figure to
compare, not the median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scrape  # noqa: E402  (this directory's benchmark: roles, Prometheus' headers, /proc readers)


async def _rounds(args: argparse.Namespace, sim_port: int, exporters: list[tuple[subprocess.Popen[str], int]]
                  ) -> list[dict[str, list[float]]]:
    import aiohttp

    headers = {"Accept": scrape.PROM_ACCEPT, "Accept-Encoding": "gzip", "X-Prometheus-Scrape-Timeout-Seconds": "10"}
    figures: list[dict[str, list[float]]] = [{"wall": [], "cpu": [], "lag": [], "gc": []} for _ in exporters]
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async def get_json(url: str) -> Any:
            async with s.get(url) as r:
                return await r.json()

        async def one(k: int) -> None:
            proc, port = exporters[k]
            await get_json(f"http://127.0.0.1:{port}/_bench/stats?reset=1")
            c0, t0 = scrape._cpu_seconds(proc.pid), time.perf_counter()
            async with s.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as r:
                await r.read()
                assert r.status == 200
            wall = time.perf_counter() - t0
            await asyncio.sleep(0.02)  # let the lag probe fire once more
            figures[k]["wall"].append(wall)
            figures[k]["cpu"].append(scrape._cpu_seconds(proc.pid) - c0)
            stats = await get_json(f"http://127.0.0.1:{port}/_bench/stats")
            figures[k]["lag"].append(stats["max_loop_lag"])
            figures[k]["gc"].append(stats.get("gc_seconds", 0.0))  # older checkouts do not report it

        for k in range(len(exporters)):  # warm-up
            await one(k)
        for f in figures:
            for values in f.values():
                values.clear()
        for i in range(args.scrapes):
            async with s.post(f"http://127.0.0.1:{sim_port}/_bench/advance") as r:
                await r.read()
            for k in (range(len(exporters)) if i % 2 == 0 else reversed(range(len(exporters)))):
                await one(k)
    return figures


def main(argv: list[str] | None = None) -> int:
    from oms_exporter.settings import Options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path, help="checkout of the version to compare against")
    p.add_argument("new", type=Path, help="checkout of the version to measure")
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--scrapes", type=int, default=24, help="scrapes of each exporter, after one warm-up")
    p.add_argument("--max-concurrency", type=int, default=Options().max_concurrency)
    p.add_argument("--account", choices=["real", "deletions", "churn"], default="real",
                   help="the stand-in's account (see benchmarks/accounts.py; the new checkout's stand-in runs it)")
    p.add_argument("--live-share", type=float, default=0.05)
    args = p.parse_args(argv)
    roots = [args.old.resolve(), args.new.resolve()]
    common = ["--tasks", str(args.tasks), "--latency-ms", str(args.latency_ms),
              "--max-concurrency", str(args.max_concurrency)]
    sim, sim_port = scrape._spawn("standin", *common, "--account", args.account, "--live-share", str(args.live_share),
                                  root=roots[1])
    exporters: list[tuple[subprocess.Popen[str], int]] = []
    try:
        for root in roots:
            exporters.append(scrape._spawn("exporter", *common, "--endpoint", f"http://127.0.0.1:{sim_port}",
                                           root=root))
        figures = asyncio.run(_rounds(args, sim_port, exporters))
        rss = [scrape._hwm_mb(proc.pid) for proc, _ in exporters]
    finally:
        for proc, _ in exporters:
            scrape._stop(proc)
        scrape._stop(sim)
    print(f"{args.tasks:,} tasks ({args.account} account), {args.latency_ms:g} ms per OMS call, {args.scrapes} scrapes "
          f"each, in turns; every finished task kept")
    for label, root, f, mb in zip(("old", "new"), roots, figures, rss):
        print(f"  {label} {root}: median scrape {statistics.median(f['wall']):.3f} s  "
              f"CPU/scrape mean {statistics.mean(f['cpu']):.3f} s  max loop lag {max(f['lag']) * 1000:.0f} ms "
              f"(median {statistics.median(f['lag']) * 1000:.0f})  GC {statistics.mean(f['gc']) * 1000:.1f} ms/scrape  "
              f"peak RSS {mb:.0f} MB")
    old, new = figures
    old_cpu = statistics.mean(old["cpu"])
    # A tiny run can stay under one 10 ms clock tick per scrape: no CPU ratio then.
    cpu = f"{statistics.mean(new['cpu']) / old_cpu:.2f}" if old_cpu else "n/a (under one clock tick)"
    print(f"  new/old: CPU {cpu}  median scrape {statistics.median(new['wall']) / statistics.median(old['wall']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
