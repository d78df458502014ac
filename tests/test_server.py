"""Hostile clients of the listening socket: half-sent requests, more connections than files."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from oms_exporter import server
from oms_exporter.simulator import make_tasks
from oms_exporter.web import TIMEOUT_HEADER
from tests.conftest import PROJECT, Served, launch_exporter, parse_metrics, value, values
from tests.standin import StandIn

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


@pytest.mark.slow  # header timeouts in real time
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


@pytest.mark.slow  # a header timeout in real time
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


def _low_file_limit() -> None:
    """The real program under a 128 open-file limit, as a container with a low limit runs it."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


async def _healthz(port: int, deadline: float) -> float:
    """Seconds until /healthz answers (connecting again while the connection is refused)."""
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


@pytest.mark.slow  # the exporter as a process, header timeouts in real time
@pytest.mark.parametrize("cap", ["derived", "above the file limit"])
async def test_more_half_sent_requests_than_files(cap: str, tmp_path: Path) -> None:
    # A static token: one configured target, whose request slots the derived cap counts (a
    # discovering exporter counts all of --oms.max-connections: its targets are not known in advance).
    args = ["--demo", "--demo.auth", "token", "--demo.tasks", "20", "--oms.max-concurrency", "2",
            "--web.read-header-timeout", "1s", *(["--web.max-connections", "1000"] if cap != "derived" else [])]
    async with launch_exporter(args, tmp_path, path="/healthz", preexec_fn=_low_file_limit) as exporter:
        conns = await half_sent(exporter.port, 150)  # more than 128 files: accepted or in the backlog
        elapsed = await _healthz(exporter.port, 6)
        # Served once the header timeout closed the first half-sent requests (one second each round).
        assert elapsed < 4.5, elapsed
        for _, writer in conns:
            writer.close()
    lines = exporter.log().splitlines()
    assert not [line for line in lines if "Traceback" in line or "level=error" in line and "accept" not in line]
    refused = [line for line in lines if "cannot accept connections" in line]
    if cap == "derived":
        # 128 - (2 task + 1 group + 2 sync slots) * 1 target - 4 - 64
        assert "max_connections=55" in lines[0] and not refused
    else:
        assert 1 <= len(refused) <= 2, lines  # one line per 10 seconds, however many accept() failed


# --- clients that never read their answer --------------------------------------------------

GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n"


async def _non_reader(port: int) -> socket.socket:
    """A client that asks for /metrics and never reads: its 4 KB receive buffer is full at once."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, GET_METRICS)
    return sock


def _reset(sock: socket.socket) -> bool:
    """Whether the exporter reset this connection (seen without reading from it)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET


async def _timed_get(port: int, path: str, timeout: float, **headers: str) -> tuple[float, int, bytes]:
    """Seconds to a whole answer on a fresh connection (a new place under the cap), status, body."""
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.read()
    return time.monotonic() - started, resp.status, body


@pytest.mark.slow  # 600 sockets, seconds of real time
async def test_600_clients_that_never_read_starve_neither_healthz_nor_a_scrape(sim: StandIn, served: Served) -> None:
    """600 clients ask for a 7 MB /metrics and never read it, and reconnect whenever the exporter drops
    them; the write deadline (the 10 s header timeout) is longer than the whole test."""
    server.raise_file_limit()
    sim.add_project(PROJECT, make_tasks(3_000, seed=5))
    port = await served(listing="full", min_interval=60, max_connections=server.MAX_CONNECTIONS, header_timeout=10)
    _, status, body = await _timed_get(port, "/metrics", 30, **{"Accept-Encoding": "identity"})
    assert status == 200 and len(body) > 6_000_000  # listed once; the scrapes below share it
    attackers = [await _non_reader(port) for _ in range(600)]
    reconnected = 0

    async def keep_them_up() -> None:
        nonlocal reconnected
        while True:
            for i, sock in enumerate(attackers):
                if _reset(sock):
                    sock.close()
                    attackers[i] = await _non_reader(port)
                    reconnected += 1
            await asyncio.sleep(0.05)

    keeper = asyncio.create_task(keep_them_up())
    try:
        waits = []
        for _ in range(5):
            took, status, _ = await _timed_get(port, "/healthz", 5)
            assert status == 200
            waits.append(took)
            await asyncio.sleep(0.2)
        took, status, body = await _timed_get(port, "/metrics", 10, **{"Accept-Encoding": "identity",
                                                                         TIMEOUT_HEADER: "10"})
        assert status == 200
        s = parse_metrics(body.decode())
        assert value(s, "oms_up", project_id=PROJECT) == 1
        assert len(values(s, "oms_task_info", project_id=PROJECT)) == 3_000
        print(f"\n/healthz under 600 non-readers: {', '.join(f'{w:.2f}' for w in waits)} s; "
              f"a 7 MB scrape {took:.2f} s; {reconnected} reconnections")
        assert max(waits) < 2, waits
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        for sock in attackers:
            sock.close()


async def _slow_reader(port: int, gap: float) -> tuple[bytes, int]:
    """A client that reads what has arrived, then nothing for `gap` seconds, until the exporter closes
    the kept-alive connection after the answer: what it got, in how many reads."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, GET_METRICS)
    got, reads = bytearray(), 0
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 4 * 2**20), 5):
            got += chunk
            reads += 1
            await asyncio.sleep(gap)
    finally:
        sock.close()
    return bytes(got), reads


@pytest.mark.slow  # a write deadline in real time
async def test_a_client_that_takes_nothing_for_the_write_deadline_is_dropped(sim: StandIn, served: Served) -> None:
    """Below the cap, with nobody waiting: the deadline alone frees the places (here 0.5 s, the header timeout)."""
    sim.add_project(PROJECT, make_tasks(3_000, seed=5))  # a body of 7 MB, more than the socket buffers hold
    port = await served(listing="full", min_interval=60, header_timeout=0.5)
    _, _, body = await _timed_get(port, "/metrics", 30, **{"Accept-Encoding": "identity"})
    stalled = [await _non_reader(port) for _ in range(5)]
    started = time.monotonic()
    while not all(_reset(sock) for sock in stalled):
        assert time.monotonic() - started < 3, "a client that reads nothing is still connected"
        await asyncio.sleep(0.05)
    dropped_after = time.monotonic() - started
    for sock in stalled:
        sock.close()
    # A client that reads slowly, nothing for 0.3 s at a time, is not dropped however long its answer takes.
    started = time.monotonic()
    got, reads = await _slow_reader(port, 0.3)
    took = time.monotonic() - started
    head, _, rest = got.partition(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    print(f"\nnon-readers dropped after {dropped_after:.2f} s (deadline 0.5 s); a slow reader got {len(rest)} "
          f"bytes in {reads} reads, {took:.2f} s")
    assert dropped_after < 1.5
    assert head.startswith(b"HTTP/1.1 200") and len(rest) == length > 6_000_000 and took > 1
