"""OMS accounts for the benchmark, and how they move between two scrapes.

- `real`: most tasks finished long ago (created one a minute, older ones finished), a share
  of the newest ones live. Between two scrapes every migrating task moves on, and now and
  then a task finishes, one fails, a failed one is restarted, a new one is created and an
  old finished one is deleted: what an account in use looks like from one scrape to the next.
- `deletions`: a `real` account whose owner also tidies it: between two scrapes 1–5 old finished
  tasks (picked among the 100 oldest) are deleted, as a user clears the last page of the
  console's task list.
- `churn`: the stand-in's demo account (`simulator.make_tasks` and `Evolution`): about a
  quarter of all tasks migrate and change on every scrape. The encoder's worst case.
"""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from oms_exporter.simulator import Evolution, Simulator, make_task, make_tasks

LIVE_MIX = [(1, 25), (2, 60), (3, 10), (6, 3), (7, 2)]  # live states and their weights
FINISHED_MIX = [(5, 85), (4, 15)]


def real_tasks(n: int, live_share: float, seed: int = 11) -> list[dict[str, Any]]:
    """`n` tasks created a minute apart; the newest `live_share` of them live, the others finished."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    live = round(n * live_share)
    out = []
    for i in range(n):
        mix = LIVE_MIX if i >= n - live else FINISHED_MIX
        status = rng.choices([s for s, _ in mix], weights=[w for _, w in mix])[0]
        out.append(make_task(rng, i + 1, now_ms - (n - i) * 60_000, status=status))
    return out


class RealAccount:
    """Moves a `real` account on by one scrape interval."""

    def __init__(self, sim: Simulator, project_id: str, seed: int = 5) -> None:
        self._sim, self._pid = sim, project_id
        self._rng = random.Random(seed)
        self._next_id = max(sim.projects[project_id], default=0) + 1

    def advance(self, seconds: float) -> None:
        rng, sim, pid = self._rng, self._sim, self._pid
        tasks = sim.projects[pid]
        now_ms = int(sim.clock() * 1000)
        by_status: dict[int, list[int]] = {}
        for tid, t in tasks.items():
            by_status.setdefault(t["status"], []).append(tid)
        for tid in by_status.get(2, []) + by_status.get(6, []):  # every migrating task moves on
            t = tasks[tid]
            speed = max(int(t["migrate_speed"] * rng.uniform(0.8, 1.2)), 1024 * 1024)
            done = min(t["total_size"], t["complete_size"] + int(speed * seconds))
            progress = done / t["total_size"] if t["total_size"] else 1.0
            sim.patch_task(pid, tid, complete_size=done, real_size=int(done * 0.95), progress=round(progress, 4),
                           successful_num=int(t["total_num"] * progress), migrate_speed=speed,
                           total_time=t["total_time"] + int(seconds * 1000),
                           left_time=int((t["total_size"] - done) / speed * 1000))
        # Now and then: about once in two scrapes a task finishes, once in three one fails, ...
        if by_status.get(2) and rng.random() < 0.5:
            sim.patch_task(pid, rng.choice(by_status[2]), status=5, progress=1, migrate_speed=0, left_time=0)
        if by_status.get(2) and rng.random() < 0.3:
            sim.patch_task(pid, rng.choice(by_status[2]), status=4, migrate_speed=0, left_time=0,
                           error_reason={"error_code": "OMS.1301", "error_msg": "Network unstable."})
        if by_status.get(4) and rng.random() < 0.2:  # its owner restarts a failed task
            sim.patch_task(pid, rng.choice(by_status[4]), status=1, progress=0.0,
                           error_reason={"error_code": "", "error_msg": ""})
        if by_status.get(1) and rng.random() < 0.5:
            sim.patch_task(pid, rng.choice(by_status[1]), status=2, start_time=now_ms,
                           migrate_speed=rng.randint(5, 200) * 1024 * 1024)
        if rng.random() < 0.4:  # a new task
            sim.put_task(pid, make_task(rng, self._next_id, now_ms, status=1))
            self._next_id += 1
        finished = by_status.get(5, [])
        if finished and rng.random() < 0.1:  # an old finished one deleted
            sim.remove_task(pid, min(finished))


class TidiedAccount(RealAccount):
    """A `real` account whose owner deletes 1–5 old finished tasks between two scrapes."""

    OLDEST = 100  # the deleted tasks are picked among this many of the oldest finished ones

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        tasks = self._sim.projects[self._pid]
        oldest = heapq.nsmallest(self.OLDEST, (tid for tid, t in tasks.items() if t["status"] in (4, 5)))
        for tid in self._rng.sample(oldest, min(len(oldest), self._rng.randint(1, 5))):
            self._sim.remove_task(self._pid, tid)


def account(sim: Simulator, project_id: str, kind: str, n: int, live_share: float) -> Evolution | RealAccount:
    """Fill `project_id` of `sim` with an account of `kind`; what moves it on."""
    if kind == "churn":
        sim.add_project(project_id, make_tasks(n, seed=11))
        return Evolution(sim, project_id, seed=5)
    sim.add_project(project_id, real_tasks(n, live_share))
    return TidiedAccount(sim, project_id) if kind == "deletions" else RealAccount(sim, project_id)
