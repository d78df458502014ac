"""The web app towards its clients: a client that hangs up, the landing page."""

from __future__ import annotations

import asyncio
import logging
import socket
from html.parser import HTMLParser

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from oms_exporter.settings import Target
from oms_exporter.simulator import make_tasks
from tests.conftest import PROJECT, TOKEN, Exporter, Served, scrape, target_for
from tests.standin import Fault, StandIn


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


class _Table(HTMLParser):
    """The cells of each row of an HTML page's tables."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def test_the_landing_page_shows_each_targets_last_listing(
        sim: StandIn, oms: TestServer, exporter: Exporter) -> None:
    other = "p0000000000000000000000000000002"
    sim.add_project(other, make_tasks(3, seed=1))
    # A name no setting lets through, to show that what the page shows is escaped.
    hostile = Target.model_construct(**{**target_for(oms, name="x", project_id=other).__dict__,
                                        "name": "<script>alert(1)</script>"})
    client = await exporter(targets=[target_for(oms), hostile, target_for(oms, name="later", project_id="p3")])
    sim.inject(Fault(status=502, body=b"<script>steal()</script>", times=100,
                     match=lambda r: other in r.path))
    await scrape(client)
    resp = await client.get("/")
    page = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    parser = _Table()
    parser.feed(page)
    header, *rows = parser.rows
    assert header == ["target", "project", "outcome", "started", "took", "tasks", "requests"]
    by_name = {row[0]: row for row in rows}
    main = by_name["main"]
    assert main[1] == PROJECT and main[2] == "up" and main[5] == "250" and int(main[6]) > 0
    assert main[3].endswith(" UTC") and main[4].endswith(" s")
    assert by_name["<script>alert(1)</script>"][2] == "failed: http_5xx"
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "steal" not in page  # an upstream answer never reaches the page
    assert TOKEN not in page and "auth_token" not in page


@pytest.mark.parametrize("query, answer", [
    ("target=unknown", "unknown target\n"),
    ("target=mai", "unknown target\n"),  # a prefix of a configured name
    ("target=", "target parameter is missing\n"),
    ("", "target parameter is missing\n"),
])
async def test_probe_errors_name_no_target(query: str, answer: str, sim: StandIn, oms: TestServer,
                                           exporter: Exporter) -> None:
    other = "p0000000000000000000000000000002"
    sim.add_project(other, make_tasks(3, seed=1))
    client = await exporter(targets=[target_for(oms), target_for(oms, name="prod-eu-secret", project_id=other)])
    resp = await client.get("/probe?" + query)
    text = await resp.text()
    assert resp.status == 400 and text == answer
    assert "main" not in text and "prod-eu-secret" not in text and other not in text
    assert sim.requests == []
