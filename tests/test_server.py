"""Hostile clients of the listening socket: half-sent requests, more connections than files."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time

import aiohttp
import pytest

from oms_exporter import server
from tests.conftest import Served

HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # no blank line: the head never ends


async def half_sent(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HALF_SENT)
        conns.append((reader, writer))
    return conns


async def closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from `started` until the exporter closed this connection."""
    assert await reader.read() == b""
    return time.monotonic() - started


LIMITS = {"max_connections": 10, "header_timeout": 0.5}


async def test_half_sent_requests_are_closed_and_connections_capped(served: Served) -> None:
    port = await served(**LIMITS)
    started = time.monotonic()
    conns = await half_sent(port, 15)
    closing = [asyncio.create_task(closed_after(reader, started)) for reader, _ in conns]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz",
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
            assert resp.status == 200
    healthz = time.monotonic() - started
    # The first 10 take every place until their half second is over; /healthz is served next.
    assert 0.4 < healthz < 1.5, healthz
    waited = await asyncio.wait_for(asyncio.gather(*closing), 5)
    # Ten (the cap) closed after the header timeout, the five queued behind them half a second later.
    waited.sort()
    assert 0.4 < waited[0] and waited[9] < 0.9 < waited[10] and waited[14] < 1.6, waited
    for _, writer in conns:
        writer.close()


async def test_a_kept_alive_connection_gets_the_same_bound(served: Served) -> None:
    port = await served(**LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readuntil(b"ok\n")).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    writer.write(HALF_SENT)
    assert await asyncio.wait_for(closed_after(reader, started), 3) < 1.0
    writer.close()


def test_the_default_cap_stays_below_the_file_limit() -> None:
    assert server.connection_cap(36, 1024) == 512
    assert server.connection_cap(36, 256) == 256 - 36 - server.RESERVED_FILES
    assert server.connection_cap(1000, 1024) == server.MIN_CONNECTIONS
    assert server.connection_cap(36, resource.RLIM_INFINITY) == 512


def _exporter(port: int, *args: str) -> subprocess.Popen[bytes]:
    """The real program under a 128 open-file limit, as a container with a low limit runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMS_", "CLOUD_SDK_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "oms_exporter", "--demo", "--demo.tasks", "20", "--oms.max-concurrency", "2",
         "--web.listen-address", f"127.0.0.1:{port}", "--web.read-header-timeout", "1s", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))


async def _healthz(port: int, deadline: float) -> float:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz",
                                       timeout=aiohttp.ClientTimeout(total=deadline)) as resp:
                    assert resp.status == 200
                    return time.monotonic() - started
            except aiohttp.ClientConnectorError:
                assert time.monotonic() - started < 15, "exporter did not start"
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("cap", ["derived", "above the file limit"])
async def test_more_half_sent_requests_than_files(cap: str) -> None:
    from tests.test_webconfig import _free_port

    port = _free_port()
    proc = _exporter(port, *(["--web.max-connections", "1000"] if cap != "derived" else []))
    try:
        await _healthz(port, 15)  # started
        conns = await half_sent(port, 150)  # more than 128 files: accepted or in the backlog
        elapsed = await _healthz(port, 6)
        # Served once the header timeout closed the first half-sent requests (one second each round).
        assert elapsed < 4.5, elapsed
        for _, writer in conns:
            writer.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    lines = err.decode().splitlines()
    assert not [line for line in lines if "Traceback" in line or "level=error" in line and "accept" not in line]
    refused = [line for line in lines if "cannot accept connections" in line]
    if cap == "derived":
        # 128 - (2 task + 1 group + 2 sync slots) * 1 target - 4 - 64
        assert "max_connections=55" in lines[0] and not refused
    else:
        assert 1 <= len(refused) <= 2, lines  # one line per 10 seconds, however many accept() failed
