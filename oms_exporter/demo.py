"""`--demo`: the OMS stand-in, in-process on loopback, with an account whose tasks move.

The account has projects in two regions (cn-north-4 with a sub-project, cn-east-3), a project
whose OMS refuses the credentials (403), OBS's `MOS`, a disabled project and a region without
OMS, so the exporter discovers them as it would a real account. Progress advances every
second, some tasks fail, some finish and new ones appear; task groups (one creating its tasks,
one whose creation failed, others migrating or done) and two sync tasks counting this month's
objects come with them. The exporter reaches the stand-in over real HTTP with the chosen
authentication mode (AK/SK signing by default; a static token cannot discover, so the demo
then lists its main project as a configured target).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from oms_exporter.settings import DiscoveryEntry, FileConfig, Target
from oms_exporter.simulator import Credential, Evolution, Simulator, add_groups_and_syncs, make_tasks

log = logging.getLogger(__name__)

PROJECT_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"  # cn-north-4
EAST_ID = "1b2c3d4e5f60718293a4b5c6d7e8f90a"  # cn-east-3
TEAM_ID = "2c3d4e5f60718293a4b5c6d7e8f90a1b"  # cn-north-4_analytics
FORBIDDEN_ID = "3d4e5f60718293a4b5c6d7e8f90a1b2c"  # cn-east-3_legacy: no OMS permission there


class Demo:
    def __init__(self, n_tasks: int = 300, auth: str = "aksk") -> None:
        self.sim = Simulator(cache_json=True)
        sizes = {PROJECT_ID: n_tasks, EAST_ID: max(1, n_tasks // 3), TEAM_ID: max(1, n_tasks // 6)}
        for i, (pid, n) in enumerate(sizes.items()):
            self.sim.add_project(pid, make_tasks(n, seed=42 + i))
        add_groups_and_syncs(self.sim, PROJECT_ID)
        self.sim.add_iam_project("cn-north-4", PROJECT_ID)
        self.sim.add_iam_project("cn-east-3", EAST_ID)
        self.sim.add_iam_project("cn-north-4_analytics", TEAM_ID, parent_id=PROJECT_ID)
        self.sim.add_iam_project("cn-east-3_legacy", FORBIDDEN_ID, parent_id=EAST_ID)
        self.sim.add_iam_project("MOS")
        self.sim.add_iam_project("cn-south-1_archive", enabled=False)
        self.sim.add_iam_project("cn-north-2")  # a region without OMS
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.endpoint = endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.auth = auth
        creds = self._credentials(auth)
        if auth == "token":
            self.config = FileConfig(targets=[Target.model_validate(
                {"name": "demo", "project_id": PROJECT_ID, "region": "cn-north-4", "endpoint": endpoint, **creds})])
        else:
            self.config = FileConfig(discovery=[DiscoveryEntry.model_validate({
                "iam_endpoint": endpoint, "endpoints": {"cn-north-4": endpoint, "cn-east-3": endpoint},
                "labels": {"env": "demo"}, **creds})])

    def _credentials(self, auth: str) -> dict[str, Any]:
        if auth == "token":
            token = "demo-" + secrets.token_urlsafe(32)
            self.sim.tokens[token] = float("inf")
            return {"auth_token": token}
        if auth == "iam":
            password = secrets.token_urlsafe(16)
            self.sim.iam_users[("demo-account", "demo-user")] = password
            self.sim.token_lifetime = 3600
            return {"iam_username": "demo-user", "iam_password": password, "iam_domain": "demo-account",
                    "iam_endpoint": self.endpoint}
        ak, sk = "DEMO" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
        self.sim.credentials[ak] = Credential(sk)
        return {"ak": ak, "sk": sk}

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: serve the stand-in and move its tasks while the exporter runs."""
        runner = web.AppRunner(self.sim.app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        evolutions = [Evolution(self.sim, pid, seed=7 + i) for i, pid in enumerate(self.sim.projects)]

        async def tick() -> None:
            while True:
                await asyncio.sleep(1)
                for evolution in evolutions:
                    evolution.advance(1)

        ticker = asyncio.create_task(tick())
        log.info("demo OMS stand-in running", extra={
            "endpoint": self.endpoint, "projects": len(self.sim.iam_projects),
            "tasks": sum(len(t) for t in self.sim.projects.values()), "auth": self.auth,
            "discovers": not self.config.targets})
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await runner.cleanup()
