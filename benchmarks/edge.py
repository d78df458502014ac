"""At the edge of scale: a cold start and the scrapes after it, on Prometheus' schedule.

    python benchmarks/edge.py --tasks 300000                 # scrapes 15 s apart, 10 s timeout
    python benchmarks/edge.py --tasks 1000000 --scrapes 8
    python benchmarks/edge.py --tasks 100000 --root /tmp/old # another checkout (before/after)

Two processes beside this driver, as in benchmarks/scrape.py: the stand-in (a real account:
1 % live by default, 50 ms per call, moving on by one scrape interval before every scrape)
and the exporter with its defaults (the real app: listing by liveness, succeeded tasks' series
for 7 days). The driver scrapes like Prometheus every `--interval` seconds with its timeout
header and prints, per scrape: `oms_up`, the scrape's time, the requests it cost OMS, whether
a listing goes on in the background, whether the scrape was exact (every task's state and
`oms_tasks` per state against the stand-in), and the exporter's peak RSS so far. Then the
first scrape that is up: when it ended (seconds from the start), and the
`oms_scrape_duration_seconds` it served.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scrape  # noqa: E402  (this directory's benchmark: roles, Prometheus' headers, /proc readers)


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _run(args: argparse.Namespace, sim_port: int, exp_port: int, exp_pid: int) -> list[dict[str, Any]]:
    import aiohttp

    sim, exp = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{exp_port}"
    headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip",
               "X-Prometheus-Scrape-Timeout-Seconds": str(args.timeout)}
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    async with aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=600)) as s:
        async def get_json(url: str) -> Any:
            async with s.get(url) as r:
                return await r.json()

        for i in range(args.scrapes):
            due = started + i * args.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if i:
                async with s.post(f"{sim}/_bench/advance", params={"seconds": str(args.interval)}):
                    pass
            truth = await get_json(f"{sim}/_bench/truth")
            before = (await get_json(f"{sim}/_bench/stats"))["requests"]
            t0 = time.monotonic()
            async with s.get(f"{exp}/metrics", headers=headers) as r:
                body = await r.read()
            took = time.monotonic() - t0
            after = (await get_json(f"{sim}/_bench/stats"))["requests"]
            text = gzip.decompress(body).decode()
            up = _gauge(text, "oms_up")
            row = {"scrape": i + 1, "at": round(t0 - started, 1), "up": up, "seconds": took,
                   "requests": after - before, "in_progress": _gauge(text, "oms_listing_in_progress"),
                   "listing_seconds": _gauge(text, "oms_scrape_duration_seconds") if up == 1 else None,
                   "exact": not scrape.check_exact(text.encode(), truth) if up == 1 else None,
                   "rss_mb": scrape._hwm_mb(exp_pid)}
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    flags = " (listing in the background)" if r["in_progress"] else ""
    exact = "" if r["exact"] is None else (", exact" if r["exact"] else ", NOT EXACT")
    return (f"  scrape {r['scrape']} at {r['at']:6.1f} s: oms_up {r['up']:.0f}, {r['seconds']:6.2f} s, "
            f"{r['requests']:5d} requests, peak RSS {r['rss_mb']:5.0f} MB{exact}{flags}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=300_000)
    p.add_argument("--live-share", type=float, default=0.01)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--scrapes", type=int, default=6)
    p.add_argument("--interval", type=float, default=15.0, help="seconds between scrapes (Prometheus' interval)")
    p.add_argument("--timeout", type=float, default=10.0, help="the scrape timeout header (seconds)")
    p.add_argument("--root", type=Path, default=scrape.ROOT, help="the checkout whose exporter runs")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from oms_exporter.settings import Options

    common = ["--tasks", str(args.tasks), "--latency-ms", str(args.latency_ms), "--live-share", str(args.live_share),
              "--account", "real"]
    sim, sim_port = scrape._spawn("standin", *common)  # one stand-in, whatever exporter
    try:
        exporter_args = [*common, "--endpoint", f"http://127.0.0.1:{sim_port}", "--listing", "liveness",
                         "--max-concurrency", str(Options().max_concurrency),
                         "--finished-task-max-age", str(Options().finished_task_max_age)]
        exp, exp_port = scrape._spawn("exporter", *exporter_args, root=args.root)
        try:
            print(f"{args.tasks:,} tasks ({args.live_share:.0%} live), {args.latency_ms:g} ms per call, scrapes "
                  f"every {args.interval:g} s with a {args.timeout:g} s timeout, exporter from {args.root}")
            rows = asyncio.run(_run(args, sim_port, exp_port, exp.pid))
        finally:
            scrape._stop(exp)
    finally:
        scrape._stop(sim)
    first = next((r for r in rows if r["up"] == 1), None)
    if first is None:
        print(f"  never up in {len(rows)} scrapes")
    else:
        print(f"  first up: scrape {first['scrape']}, {first['at'] + first['seconds']:.1f} s after the start; "
              f"the listing it served took {first['listing_seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
