"""Takes listings of the configured projects, shared by every scrape that asks at the same time.

A project's listing lists its API areas side by side (`Project`): the tasks, and the task
groups and synchronization tasks when those collectors are on; each area's failure is its
own. One listing per project is in flight at any moment: concurrent scrapes (an HA
Prometheus pair, a dashboard refresh storm) wait for the same one. With `min_interval`, a
listing younger than that is served again instead of asking OMS. `SeriesPolicy` says which
records of a listing get series.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import compress
from operator import attrgetter, ge
from typing import Any, Protocol

from oms_exporter.area import AreaLister
from oms_exporter.clock import Clock
from oms_exporter.errors import InternalError, OmsError, Timeout
from oms_exporter.listing import Listing, Part, failed_part
from oms_exporter.model import FAILED, SUCCEEDED, Task
from oms_exporter.settings import Target

log = logging.getLogger(__name__)

_ended = attrgetter("ended_ms")
_status = attrgetter("status")


class Observer(Protocol):
    """What the snapshots report (the exporter's own metrics implement it)."""

    def listing_started(self, project_id: str) -> None: ...

    def listing_failed(self, project_id: str, reason: str) -> None: ...

    def listing_fallback(self, project_id: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SeriesPolicy:
    """Which tasks get per-task series (all of them still count in oms_tasks and the oms_tasks_* totals).

    A succeeded task that ended more than `finished_task_max_age` ago has none. A failed task
    keeps its series while it is failed (OmsTaskFailed reads them), unless `failed_task_max_age`
    is set too. 0 turns a rule off. The records of the other areas all get series.
    """

    per_task_series: bool = True
    finished_task_max_age: float = 7 * 86400.0  # seconds, for succeeded tasks
    failed_task_max_age: float = 0.0  # seconds, for failed tasks

    def exported(self, listing: Listing) -> Sequence[Task]:
        if not self.per_task_series or not listing.up:
            return []
        limits = {SUCCEEDED: self.finished_task_max_age, FAILED: self.failed_task_max_age}
        if not any(limits.values()):
            return listing.tasks
        now_ms = listing.taken_at * 1000
        # The oldest end a task in each state may have (-inf: no limit); in C, task by task.
        oldest = defaultdict(lambda: -math.inf, {code: now_ms - age * 1000 for code, age in limits.items() if age})
        tasks = listing.tasks
        return list(compress(tasks, map(ge, map(_ended, tasks), map(oldest.__getitem__, map(_status, tasks)))))

    def records(self, listing: Listing, area: str) -> Sequence[Any] | None:
        """The records of `area` that get series; None when that area was not listed (failed,
        switched off, not offered), which serves none and keeps what the encoder cached."""
        if area == next(iter(listing.parts), None):
            return self.exported(listing) if listing.up else None
        return listing.records(area)


class Project:
    """The listers of one target: one per API area switched on for it, the tasks' first.

    Each area lists in a task of its own, bounded by `budget` seconds from its start (or by the
    scrape's deadline, when that is later), not by the scrape that started it: an area still
    listing at the scrape's deadline is served as `timeout` and goes on in the background, and
    the next listing of the target takes its result as soon as it is whole (a first listing of
    300,000 tasks outlives a scrape; its work is not thrown away). One run per area at a time.
    """

    def __init__(self, target: Target, listers: dict[str, AreaLister], clock: Clock, budget: float = 0.0) -> None:
        self.target, self.listers, self.clock, self.budget = target, listers, clock, budget
        self._running: dict[str, asyncio.Task[Part]] = {}  # area -> its run, until a listing takes its result
        # Told of an area whose run went on past its scrape's deadline and is now whole, as a
        # listing of that area alone (the others `timeout`): the encoder renders it before the next
        # scrape comes for it, so that scrape does not render a first listing of 1,000,000 tasks.
        self.on_whole: Callable[[Listing], None] | None = None
        self._watched: set[str] = set()  # the areas whose background run on_whole waits for

    @property
    def in_progress(self) -> bool:
        """Whether an area's listing goes on past the deadline of the scrape that started it."""
        return any(not run.done() for run in self._running.values())

    async def run(self, deadline: float) -> Listing:
        """Every area side by side; what is whole by `deadline`, and `timeout` for the areas still
        listing then (they go on). Never raises an OmsError: an area that raises (a bug) costs that
        area, not the others."""
        taken_at = self.clock.time()
        runs = {name: self._run(name, lister, deadline) for name, lister in self.listers.items()}
        try:
            async with self.clock.timeout_at(deadline):
                await asyncio.wait(runs.values())
        except TimeoutError:
            pass
        parts: dict[str, Part] = {}
        for i, (name, run) in enumerate(runs.items()):
            if not run.done():
                parts[name] = failed_part(i, _CONTINUING)
                if name not in self._watched:
                    self._watched.add(name)
                    run.add_done_callback(partial(self._ended, name))
                continue
            del self._running[name]  # taken: the next listing of this area starts afresh
            if run.cancelled():  # the target is going away
                raise asyncio.CancelledError()
            exc = run.exception()
            if exc is not None:
                _unexpected(exc, self.target.name, name)
                parts[name] = failed_part(i, _INTERNAL)
            else:
                parts[name] = run.result()
        return Listing(self.target, taken_at, parts, in_progress=self.in_progress)

    def _ended(self, name: str, run: asyncio.Task[Part]) -> None:
        """A background run ended: when it is whole and not taken yet, tell on_whole."""
        self._watched.discard(name)
        if self.on_whole is None or self._running.get(name) is not run or run.cancelled() or run.exception():
            return
        part = run.result()
        if part.error is None:
            parts = {n: part if n == name else failed_part(i, _CONTINUING) for i, n in enumerate(self.listers)}
            self.on_whole(Listing(self.target, self.clock.time(), parts, in_progress=self.in_progress))

    def _run(self, name: str, lister: AreaLister, deadline: float) -> asyncio.Task[Part]:
        """The area's run going on in the background, or a new one. A background run that failed is
        dropped for a new one: its failure is old news, and this listing may do better."""
        run = self._running.get(name)
        if run is not None and run.done() and (run.cancelled() or run.exception() is not None or run.result().error):
            run = None
        if run is None:
            until = max(deadline, self.clock.monotonic() + self.budget)
            run = self._running[name] = asyncio.get_running_loop().create_task(lister.run(until))
        return run

    def cancel(self) -> list[asyncio.Task[Part]]:
        """Cancel the areas' runs (the target is gone, or the exporter stops); the runs cancelled."""
        runs = list(self._running.values())
        self._running.clear()
        for run in runs:
            run.cancel()
        return runs

    def failed(self, error: OmsError, taken_at: float) -> Listing:
        """A listing of this target in which every area failed with `error`."""
        return Listing.failed(self.target, taken_at, list(self.listers), error, in_progress=self.in_progress)


_INTERNAL = InternalError("internal error, see the exporter's log")
_CONTINUING = Timeout("still listing at the scrape's deadline: it goes on, and a later scrape serves it")


def _unexpected(exc: BaseException, target: str, collector: str) -> None:
    """An area raised: a bug. Logged with its traceback."""
    log.error("listing failed unexpectedly", exc_info=exc, extra={"target": target, "collector": collector})


class Snapshots:
    SETTLE = 0.1  # seconds before a scrape's deadline that its listing's areas stop
    # A scrape whose deadline is at least this much later than that of the failed listing it
    # joined lists again (see _one); closer deadlines (scrapes of one burst) share the failure.
    RELIST_MARGIN = 1.0
    REPEAT_EVERY = 600.0  # seconds before a warning that still holds is written again

    def __init__(self, projects: dict[str, Project], observer: Observer, clock: Clock,
                 min_interval: float = 0.0) -> None:
        self._projects = projects
        self._observer = observer
        self._clock = clock
        self._min_interval = min_interval
        # target name -> (the listing in flight, its deadline)
        self._inflight: dict[str, tuple[asyncio.Task[Listing], float]] = {}
        self._last: dict[str, tuple[float, Listing]] = {}  # target name -> (monotonic time, last listing)
        # (target, collector, what) -> (the state last warned of, monotonic time): no warning every scrape.
        self._reported: dict[tuple[str, str, str], tuple[object, float]] = {}
        self.on_whole: Callable[[Listing], None] | None = None  # see Project.on_whole

    def set_projects(self, projects: dict[str, Project]) -> None:
        """Serve these projects from now on; the listings of those gone (or replaced) are cancelled,
        background ones too, and forgotten."""
        for name, before in self._projects.items():
            if projects.get(name) is before:
                continue
            entry = self._inflight.pop(name, None)
            if entry is not None:
                entry[0].cancel()
            before.cancel()
            self._last.pop(name, None)
        for project in projects.values():
            project.on_whole = self._whole
        self._projects = projects

    def _whole(self, listing: Listing) -> None:
        # A scrape waiting for this target takes the listing and renders it itself.
        if self.on_whole is not None and self.serves(listing) and listing.target.name not in self._inflight:
            self.on_whole(listing)

    def serves(self, listing: Listing) -> bool:
        """Whether the target of `listing` is still served (not gone by a reload or discovery)."""
        project = self._projects.get(listing.target.name)
        return project is not None and project.target == listing.target

    async def get(self, names: Sequence[str], deadline: float) -> list[Listing]:
        """Listings of the named targets, each finished or failed by `deadline` (`Clock.monotonic()` time)."""
        # Now: discovery may change them while listings run. A project gone meanwhile is left out.
        projects = [self._projects[n] for n in names if n in self._projects]
        listings = await asyncio.gather(*(self._one(p, deadline) for p in projects))
        return [listing for listing in listings if listing is not None]

    async def _one(self, project: Project, deadline: float) -> Listing | None:
        """The listing of `project` for a scrape with `deadline`; None when the project went away
        (discovery, reload) while the scrape waited for it."""
        clock = self._clock
        name = project.target.name
        last = self._last.get(name)
        if self._min_interval and last and clock.monotonic() - last[0] < self._min_interval:
            return last[1]
        while True:
            joined = await self._join(project, deadline)
            if joined is None:
                return None
            listing, listing_deadline = joined
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

    async def _join(self, project: Project, deadline: float) -> tuple[Listing, float] | None:
        """The listing of `project` in flight (or a new one until `deadline`), and its scrape's deadline."""
        clock = self._clock
        name = project.target.name
        entry = self._inflight.get(name)
        if entry is None:
            # Each area of a listing stops itself at the listing's deadline; SETTLE before the
            # scrape's is the moment that takes, so that an area that hung is served as failed
            # beside those that finished, instead of the whole project as failed.
            entry = (asyncio.get_running_loop().create_task(self._list(project, deadline - self.SETTLE)), deadline)
            self._inflight[name] = entry
        fut, listing_deadline = entry  # the deadline of the scrape that started the listing
        try:
            # shield: a scrape that gives up must not cancel the listing others wait for.
            async with clock.timeout_at(deadline):
                return await asyncio.shield(fut), listing_deadline
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if fut.cancelled() and current is not None and not current.cancelling():
                return None  # the listing was cancelled because its project went away, not this scrape
            raise
        except TimeoutError:
            if deadline < listing_deadline:
                # The shared listing goes on for the scrape that started it; this earlier
                # deadline is a failed listing of its own, as far as this scrape can tell.
                self._observer.listing_failed(project.target.project_id, "timeout")
                log.info("scrape deadline reached while a shared listing was still running",
                         extra={"target": name})
            failed = project.failed(Timeout("listing still running at this scrape's deadline"), clock.time())
            return failed, deadline

    def _report(self, name: str, collector: str, part: Part) -> None:
        """Log what went wrong with one area of a listing: a warning when it is new (or REPEAT_EVERY
        after the last one), a debug line while it lasts, an info line when it is over."""
        extra: dict[str, object] = {"target": name, "collector": collector}
        if part.error is not None:
            extra |= {"reason": part.error.reason, "error": str(part.error), "requests": part.requests,
                      "duration_seconds": round(part.duration, 3)}
            log.log(self._level((name, collector, "failed"), part.error.reason), "listing failed", extra=extra)
        elif self._reported.pop((name, collector, "failed"), None) is not None:
            log.info("listing recovered", extra=extra)
        if part.malformed and part.error is None:
            log.log(self._level((name, collector, "malformed"), part.malformed), "skipped malformed records",
                    extra=extra | {"count": part.malformed})

    def _level(self, key: tuple[str, str, str], state: object) -> int:
        """WARNING for a state not reported yet (or not for REPEAT_EVERY), else DEBUG."""
        now = self._clock.monotonic()
        last = self._reported.get(key)
        if last is not None and last[0] == state and now - last[1] < self.REPEAT_EVERY:
            return logging.DEBUG
        self._reported[key] = (state, now)
        return logging.WARNING

    def in_progress(self, name: str) -> bool:
        """Whether a listing of the target `name` goes on past the deadline of the scrape that started it."""
        project = self._projects.get(name)
        return project is not None and project.in_progress

    def last(self, name: str) -> Listing | None:
        """The last listing of the target `name` that finished, if any."""
        entry = self._last.get(name)
        return entry[1] if entry else None

    async def aclose(self) -> None:
        """Cancel listings still running (at shutdown, before their HTTP session closes)."""
        pending: list[asyncio.Future[Any]] = [fut for fut, _ in self._inflight.values()]
        for fut in pending:
            fut.cancel()
        for project in self._projects.values():
            pending += project.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _list(self, project: Project, deadline: float) -> Listing:
        name, pid = project.target.name, project.target.project_id
        self._observer.listing_started(pid)
        try:
            listing = await project.run(deadline)
        except Exception:  # a bug must cost one scrape's data, not the exporter
            log.exception("listing failed unexpectedly", extra={"target": name})
            listing = project.failed(InternalError("internal error, see the exporter's log"), self._clock.time())
        finally:
            self._inflight.pop(name, None)
        for reason in sorted({e.reason for e in listing.collectors.values() if e is not None}):
            self._observer.listing_failed(pid, reason)  # one failed listing: each of its reasons once
        for reason in listing.fallbacks:
            self._observer.listing_fallback(pid, reason)
        for collector, part in listing.parts.items():
            self._report(name, collector, part)
        self._last[name] = (self._clock.monotonic(), listing)
        return listing
