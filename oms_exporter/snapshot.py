"""Takes listings of the configured projects, shared by every scrape that asks at the same time.

A project's listing lists its API areas side by side (`Project`): the tasks, and the task
groups and synchronization tasks when those collectors are on; each area's failure is its
own. One listing per project is in flight at any moment: concurrent scrapes (an HA
Prometheus pair, a dashboard refresh storm) wait for the same one. With `min_interval`, a
listing younger than that is served again instead of asking OMS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from oms_exporter.client import InternalError, OmsError, Timeout
from oms_exporter.clock import Clock
from oms_exporter.groups import Area, GroupLister, SyncLister
from oms_exporter.lister import Lister, Listing
from oms_exporter.metrics import SelfMetrics
from oms_exporter.model import SyncTask, TaskGroup
from oms_exporter.settings import Target

log = logging.getLogger(__name__)


@dataclass
class Project:
    """The listers of one target: its tasks, and its task groups and sync tasks when switched on."""

    tasks: Lister
    groups: GroupLister | None = None
    syncs: SyncLister | None = None

    @property
    def target(self) -> Target:
        return self.tasks.target

    @property
    def collectors(self) -> list[str]:
        """The collectors (API areas) switched on for this target."""
        return ["tasks"] + ["task_groups"] * (self.groups is not None) + ["sync_tasks"] * (self.syncs is not None)

    async def run(self, deadline: float) -> Listing:
        """Every area side by side, before `deadline`; never raises an OmsError.

        An area that raises (a bug) costs that area, not the others: each is awaited to its end.
        """
        tasks, groups, syncs = await asyncio.gather(
            self.tasks.run(deadline), _area(self.groups, deadline), _area(self.syncs, deadline),
            return_exceptions=True)
        if isinstance(tasks, BaseException):
            _unexpected(tasks, self.target.name, "tasks")
            listing = Listing(self.target, self.tasks.clock.time(), error=_INTERNAL)
        else:
            listing = tasks
        listing.collectors["tasks"] = listing.error
        listing.skipped["tasks"] = listing.malformed if listing.up else 0
        listing.costs["tasks"] = (listing.requests, listing.duration)
        for name, area in (("task_groups", groups), ("sync_tasks", syncs)):
            if area is None:
                continue
            if isinstance(area, BaseException):
                _unexpected(area, self.target.name, name)
                area = Area(error=_INTERNAL)
            listing.collectors[name] = area.error
            listing.skipped[name] = area.malformed
            listing.costs[name] = (area.requests, area.duration)
            if name == "task_groups":
                listing.groups = cast(list[TaskGroup] | None, area.records)
            else:
                listing.sync_tasks = cast(list[SyncTask] | None, area.records)
        return listing

    def failed(self, error: OmsError, taken_at: float) -> Listing:
        """A listing of this target in which every area failed with `error`."""
        return Listing(self.target, taken_at, error=error, collectors=dict.fromkeys(self.collectors, error))


_INTERNAL = InternalError("internal error, see the exporter's log")


async def _area(lister: GroupLister | SyncLister | None, deadline: float) -> Area[Any] | None:
    return None if lister is None else await lister.run(deadline)


def _unexpected(exc: BaseException, target: str, collector: str) -> None:
    """An area raised: a bug (or a cancellation, passed on). Logged with its traceback."""
    if not isinstance(exc, Exception):
        raise exc
    log.error("listing failed unexpectedly", exc_info=exc, extra={"target": target, "collector": collector})


class Snapshots:
    SETTLE = 0.1  # seconds before a scrape's deadline that its listing's areas stop
    # A scrape whose deadline is at least this much later than that of the failed listing it
    # joined lists again (see _one); closer deadlines (scrapes of one burst) share the failure.
    RELIST_MARGIN = 1.0

    def __init__(self, projects: dict[str, Project], stats: SelfMetrics, clock: Clock,
                 min_interval: float = 0.0) -> None:
        self._projects = projects
        self._stats = stats
        self._clock = clock
        self._min_interval = min_interval
        # target name -> (the listing in flight, its deadline)
        self._inflight: dict[str, tuple[asyncio.Task[Listing], float]] = {}
        self._last: dict[str, tuple[float, Listing]] = {}  # target name -> (monotonic time, last listing)

    async def get(self, names: Sequence[str], deadline: float) -> list[Listing]:
        """Listings of the named targets, each finished or failed by `deadline` (`Clock.monotonic()` time)."""
        return list(await asyncio.gather(*(self._one(n, deadline) for n in names)))

    async def _one(self, name: str, deadline: float) -> Listing:
        clock = self._clock
        last = self._last.get(name)
        if self._min_interval and last and clock.monotonic() - last[0] < self._min_interval:
            return last[1]
        while True:
            listing, listing_deadline = await self._join(name, deadline)
            # A listing started by a scrape with an earlier deadline (a client asking for 0.6 s)
            # may have failed for want of time this scrape still has: list again, within this
            # scrape's own deadline, rather than pass that failure on. Scrapes of one burst
            # have nearly the same deadline and share the failure, as they share a success.
            # Only a failure for want of time: any other (throttled, 5xx, ...) is OMS's answer, and
            # asking again at once would double the load on it.
            timed_out = any(isinstance(error, Timeout) for error in listing.collectors.values())
            if (not timed_out or deadline - listing_deadline < self.RELIST_MARGIN
                    or clock.remaining(deadline) <= self.SETTLE):
                return listing
            log.info("listing again: the shared listing failed at an earlier scrape's deadline",
                     extra={"target": name})

    async def _join(self, name: str, deadline: float) -> tuple[Listing, float]:
        """The listing of `name` in flight (or a new one until `deadline`), and its scrape's deadline."""
        clock = self._clock
        entry = self._inflight.get(name)
        if entry is None:
            # Each area of a listing stops itself at the listing's deadline; SETTLE before the
            # scrape's is the moment that takes, so that an area that hung is served as failed
            # beside those that finished, instead of the whole project as failed.
            entry = (asyncio.get_running_loop().create_task(self._list(name, deadline - self.SETTLE)), deadline)
            self._inflight[name] = entry
        fut, listing_deadline = entry  # the deadline of the scrape that started the listing
        try:
            # shield: a scrape that gives up must not cancel the listing others wait for.
            return await asyncio.wait_for(asyncio.shield(fut), clock.remaining(deadline)), listing_deadline
        except TimeoutError:
            project = self._projects[name]
            if deadline < listing_deadline:
                # The shared listing goes on for the scrape that started it; this earlier
                # deadline is a failed listing of its own, as far as this scrape can tell.
                self._stats.scrape_errors.labels(project.target.project_id, "timeout").inc()
                log.info("scrape deadline reached while a shared listing was still running",
                         extra={"target": name})
            failed = project.failed(Timeout("listing still running at this scrape's deadline"), clock.time())
            return failed, deadline

    def last(self, name: str) -> Listing | None:
        """The last listing of the target `name` that finished, if any."""
        entry = self._last.get(name)
        return entry[1] if entry else None

    async def aclose(self) -> None:
        """Cancel listings still running (at shutdown, before their HTTP session closes)."""
        pending = [fut for fut, _ in self._inflight.values()]
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _list(self, name: str, deadline: float) -> Listing:
        project = self._projects[name]
        pid = project.target.project_id
        self._stats.listings.labels(pid).inc()
        try:
            listing = await project.run(deadline)
        except Exception:  # a bug must cost one scrape's data, not the exporter
            log.exception("listing failed unexpectedly", extra={"target": name})
            listing = project.failed(InternalError("internal error, see the exporter's log"), self._clock.time())
        finally:
            self._inflight.pop(name, None)
        reasons: set[str] = set()
        for collector, error in listing.collectors.items():
            if error is None:
                continue
            reasons.add(error.reason)
            requests, duration = listing.costs.get(collector, (listing.requests, listing.duration))
            log.warning("listing failed", extra={
                "target": name, "collector": collector, "reason": error.reason, "error": str(error),
                "requests": requests, "duration_seconds": round(duration, 3)})
        for reason in sorted(reasons):  # one failed listing: each of its reasons once
            self._stats.scrape_errors.labels(pid, reason).inc()
        for collector, count in listing.skipped.items():
            if count:
                log.warning("skipped malformed records", extra={"target": name, "collector": collector, "count": count})
        self._last[name] = (self._clock.monotonic(), listing)
        return listing
