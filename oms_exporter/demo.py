"""`--demo`: the OMS stand-in, in-process on loopback, with a few hundred tasks that move.

Progress advances every second, some tasks fail, some finish and new ones appear; task
groups (one creating its tasks, one whose creation failed, others migrating or done) and
two sync tasks counting this month's objects come with them, so a newcomer sees live
metrics without a cloud account. The exporter reaches the stand-in over
real HTTP with the chosen authentication mode (AK/SK signing by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from oms_exporter.settings import Target
from oms_exporter.simulator import Credential, Evolution, Simulator, add_groups_and_syncs, make_tasks

log = logging.getLogger(__name__)

PROJECT_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


class Demo:
    def __init__(self, n_tasks: int = 300, auth: str = "aksk") -> None:
        self.sim = Simulator(cache_json=True)
        self.sim.add_project(PROJECT_ID, make_tasks(n_tasks, seed=42))
        add_groups_and_syncs(self.sim, PROJECT_ID)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        creds: dict[str, str] = {}
        if auth == "token":
            token = "demo-" + secrets.token_urlsafe(32)
            self.sim.tokens[token] = float("inf")
            creds = {"auth_token": token}
        elif auth == "iam":
            password = secrets.token_urlsafe(16)
            self.sim.iam_users[("demo-account", "demo-user")] = password
            self.sim.token_lifetime = 3600
            creds = {"iam_username": "demo-user", "iam_password": password, "iam_domain": "demo-account",
                     "iam_endpoint": endpoint}
        else:
            ak, sk = "DEMO" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
            self.sim.credentials[ak] = Credential(sk)
            creds = {"ak": ak, "sk": sk}
        self.target = Target.model_validate(
            {"name": "demo", "project_id": PROJECT_ID, "region": "cn-north-4", "endpoint": endpoint, **creds})

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: serve the stand-in and move its tasks while the exporter runs."""
        runner = web.AppRunner(self.sim.app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        evolution = Evolution(self.sim, PROJECT_ID)

        async def tick() -> None:
            while True:
                await asyncio.sleep(1)
                evolution.advance(1)

        ticker = asyncio.create_task(tick())
        log.info("demo OMS stand-in running", extra={"endpoint": self.target.oms_endpoint,
                                                      "tasks": len(self.sim.projects[PROJECT_ID]),
                                                      "task_groups": len(self.sim.groups[PROJECT_ID]),
                                                      "sync_tasks": len(self.sim.sync_tasks[PROJECT_ID]),
                                                      "auth": self.target.auth_mode})
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await runner.cleanup()
