"""The OMS stand-in as the tests and the benchmark drive it: faults, latency, a log of requests.

`StandIn` is `oms_exporter.simulator.Simulator` (the wire format, the demo's stand-in) with
a middleware in front of its OMS API routes that records each request, adds latency,
answers with injected faults and lets a test change the account between pages, and an order
of its task lists a test can change (the Simulator keeps one: newest first). Nothing of this
ships with the exporter.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from oms_exporter.simulator import Simulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """An injected answer to the next `times` OMS API requests that `match`."""

    status: int = 500
    body: bytes = b"<html><body>502 Bad Gateway</body></html>"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/html"})
    times: int = 1
    delay: float = 0.0  # seconds to wait before answering (a hanging API: make it large)
    truncate: bool = False  # announce a longer body than sent, then close the connection
    reset: bool = False  # close the connection without answering: the client sees a reset
    match: Callable[[web.Request], bool] | None = None
    api: str = "tasks"  # the API it applies to: tasks, taskgroups, sync-tasks, * for all of OMS; iam: the project list


class StandIn(Simulator):
    """The stand-in with test controls.

    `requests` logs (path, query string) of the task API calls (ListTasks, ShowTask), `calls`
    those of every OMS API (task groups and sync tasks too).
    """

    def __init__(self, *args: Any, latency: float = 0.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **kwargs: Any) -> None:
        """`sleep`: how a fault's delay waits (the test's clock: a hanging API costs no real time)."""
        super().__init__(*args, **kwargs)
        self.latency = latency
        self.sleep = sleep
        # When an Event: every OMS API request waits until it is set, on no clock at all, so that
        # a test holds a listing in flight while other scrapes join it or a deadline passes.
        self.gate: asyncio.Event | None = None
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str]] = []
        # Called with each OMS API request before it is answered: lets a test change the
        # task list between pages, as users do by creating tasks mid-listing.
        self.on_list: Callable[[web.Request], Awaitable[None] | None] | None = None
        # Called with each OMS API request and its answer's JSON (when 200): what it returns is sent
        # instead. A stand-in that lies: counts that do not add up, pages larger than asked for.
        self.rewrite: Callable[[web.Request, Any], Any] | None = None
        self.in_flight = 0  # OMS API requests (of every API) being answered now, and the most at once
        self.peak_in_flight = 0
        self.api_in_flight: collections.Counter[str] = collections.Counter()  # the same, per API
        self.api_peak_in_flight: collections.Counter[str] = collections.Counter()
        self.hanging = 0  # OMS API requests waiting out a fault's delay now
        self.iam_calls = 0  # GET /v3/auth/projects
        self.auth_failures = 0  # 401 answers of OMS and IAM
        self.iam_logins = 0  # tokens IAM issued
        # When set: each ListTasks answer pages through its tasks in the order this returns for the
        # task ids that match the query, newest first (the order OMS is seen to keep): OMS reordering.
        self.reorder: Callable[[list[int]], list[int]] | None = None

    def tasks_page(self, pid: str, offset: int, limit: int, status: int | None = None,
                   group_id: str | None = None) -> dict[str, Any]:
        if self.reorder is None:
            return super().tasks_page(pid, offset, limit, status, group_id)
        tasks = self.projects[pid]
        ids = self.reorder([i for i in sorted(tasks, reverse=True)
                            if (status is None or tasks[i].get("status") == status)
                            and (group_id is None or tasks[i].get("group_id") == group_id)])
        return {"tasks": [self._task_json(pid, i) for i in ids[offset:offset + limit]], "count": len(ids)}

    def reorder_old(self, project_id: str, seed: int) -> None:
        """From now on, list the tasks `project_id` has now in a random order (of `seed`), after the tasks
        created later (newest first, as before): an OMS that reorders what it listed before."""
        old = sorted(self.projects[project_id])
        rank = dict(zip(random.Random(seed).sample(old, len(old)), range(len(old))))
        self.reorder = lambda ids: ([i for i in ids if i not in rank]
                                    + sorted((i for i in ids if i in rank), key=rank.__getitem__))

    async def settled(self) -> None:
        """Returns once every OMS API request in flight is one that hangs (a fault's delay), and no
        request came for a moment: the exporter then waits on its deadlines alone."""
        while True:
            seen = len(self.calls)
            await asyncio.sleep(0.01)
            if len(self.calls) == seen and self.in_flight <= self.hanging:
                return

    def inject(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        fault = fault or Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._middleware)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/v3/auth/projects":  # IAM's project list: faults of api="iam" apply
            self.iam_calls += 1
            for fault in self.faults:
                if fault.times > 0 and fault.api == "iam" and (fault.match is None or fault.match(request)):
                    fault.times -= 1
                    return await self._fault(request, fault)
            return await handler(request)
        if not request.path.startswith("/v2/"):
            resp = await handler(request)
            if request.path == "/v3/auth/tokens":
                self.iam_logins += resp.status == 201
                self.auth_failures += resp.status == 401
            return resp
        api = request.path.split("/")[3] if request.path.count("/") >= 3 else ""
        self.calls.append((request.path, request.query_string))
        if api == "tasks":
            self.requests.append((request.path, request.query_string))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.api_in_flight[api] += 1
        self.api_peak_in_flight[api] = max(self.api_peak_in_flight[api], self.api_in_flight[api])
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.gate is not None:
                await self.gate.wait()
            for fault in self.faults:
                if fault.times > 0 and fault.api in (api, "*") and (fault.match is None or fault.match(request)):
                    fault.times -= 1
                    return await self._fault(request, fault)
            if self.on_list is not None:
                done = self.on_list(request)
                if done is not None:  # a coroutine: the request waits for it (an order between requests)
                    await done
            resp = await handler(request)
            self.auth_failures += resp.status == 401
            if self.rewrite is not None and resp.status == 200 and isinstance(resp, web.Response) and resp.body:
                doc = self.rewrite(request, msgspec.json.decode(bytes(resp.body)))  # type: ignore[arg-type]
                return web.Response(body=msgspec.json.encode(doc), content_type="application/json")
            return resp
        finally:
            self.in_flight -= 1
            self.api_in_flight[api] -= 1

    async def _fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.delay:
            self.hanging += 1
            try:
                await self.sleep(fault.delay)
            finally:
                self.hanging -= 1
        if fault.reset:
            assert request.transport is not None
            sock = request.transport.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close with RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            return web.Response(status=fault.status)
        if fault.truncate:
            resp = web.StreamResponse(status=fault.status, headers=fault.headers)
            resp.content_length = len(fault.body) + 1000
            await resp.prepare(request)
            await resp.write(fault.body)
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(status=fault.status, body=fault.body, headers=fault.headers)


def json_fault(status: int, doc: Any, **kwargs: Any) -> Fault:
    """A fault whose body is `doc` as JSON."""
    return Fault(status=status, body=msgspec.json.encode(doc), headers={"Content-Type": "application/json"}, **kwargs)
