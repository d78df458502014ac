"""The web app towards its clients: a client that hangs up, the landing page."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest

from oms_exporter.simulator import make_tasks
from tests.conftest import PROJECT, Served
from tests.standin import StandIn


async def _read_part_then_hang_up(port: int, path: str, keep: int) -> int:
    """A raw client that reads `keep` bytes of the answer and goes away (Prometheus giving up)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the exporter's writes back up at once
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n".encode())
    got = await reader.readexactly(keep)
    writer.transport.abort()
    return len(got)


async def test_a_client_hanging_up_mid_body_is_one_debug_line(
        sim: StandIn, served: Served, caplog: pytest.LogCaptureFixture) -> None:
    sim.add_project(PROJECT, make_tasks(3_000, seed=5))  # a body of 7 MB, more than the socket buffers hold
    port = await served(listing="full", min_interval=60)  # one listing, served again
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "identity"}) as r:
            assert len(await r.read()) > 6_000_000
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        assert await _read_part_then_hang_up(port, "/metrics", 64 * 1024) == 64 * 1024
        for _ in range(250):  # the handler notices at its next write
            if any(r.name.startswith(("oms_exporter", "aiohttp.server")) for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not errors, [r.getMessage() for r in errors]
        hung = [r for r in caplog.records if "hung up" in r.getMessage()]
        assert len(hung) == 1 and hung[0].levelno == logging.DEBUG
        async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
