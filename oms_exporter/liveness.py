"""`--oms.listing=liveness` (the default): the I/O around `reconcile`, so a scrape costs what changed.

A round lists every live state in full, the first page of each finished state in scope (or
the whole of them, when they are due), the unfiltered count and the counts of the finished
states out of scope; then it asks `reconcile.reconcile` what to do, does it (`Fetch`) and
asks again, until the answer is a view to serve. A round disturbed by tasks moving gets one
more; a round whose counts cannot be explained pages through every task instead. It records
what the kept order of a finished state needs: each listing of a state in full in the order
its pages served it, and the task read at each offset of a first page or a probe. What OMS
refuses is learnt and kept: `status=6` as a filter (retrying tasks are then what the total
leaves), ShowTask (finished states are then listed again instead; ShowTask is tried again
every refresh interval, as the permission may be granted). A round that listed the finished
states in full but whose counts did not add up (tasks moved while a large account was listed)
leaves its listing as the view the next rounds check (`reconcile.seed_of`), never served
unchecked, instead of listing everything again. A listing that fails keeps the last view it
reached for the next one.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Coroutine, Mapping
from operator import attrgetter
from typing import Any

from oms_exporter.area import Context
from oms_exporter.errors import BadPayload, Incomplete, RequestRejected
from oms_exporter.model import STATUS_NAMES, TOTAL_FIELDS, BadPage, Task, Totals, one_record, task_totals
from oms_exporter.pager import Query, together
from oms_exporter.reconcile import (
    RETRYING,
    Again,
    Everything,
    Fetch,
    Key,
    Round,
    Scope,
    Serve,
    View,
    reconcile,
    seed_of,
    view_of,
)
from oms_exporter.tasklister import FilterIgnored, TaskLister

log = logging.getLogger(__name__)

_task_id = attrgetter("id")


class LiveLister(TaskLister):
    """Live states every scrape, finished ones kept and checked (see `reconcile`)."""

    MAX_STEPS = 16  # Fetch steps of one round before it gives up and lists every task
    SEEDED_ROUNDS = 3  # rounds that check a listing in full that did not add up, before listing every task

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._refresh_interval = ctx.options.finished_refresh_interval
        self._view = View()
        self._status6 = True  # False once OMS refused status=6 as a filter
        self._show_refused_at: float | None = None  # Unix time OMS last refused ShowTask (not 404)
        self._served_sums: Mapping[int, tuple[int, Totals]] | None = None  # None: count them from the tasks

    async def _collect(self, deadline: float, taken_at: float) -> dict[int, Task]:
        rounds, seeded = 0, False
        while True:
            rounds += 1
            last = rounds >= (self.SEEDED_ROUNDS if seeded else 2)
            rnd = Round()
            first = self._scope(taken_at, last)
            await self._first(rnd, first, deadline)
            decision = await self._decide(rnd, taken_at, last, deadline)
            if isinstance(decision, Serve):
                self._view, self._served_sums = decision.view, decision.view.sums
                self._finished_listed_at = decision.view.listed_at
                return decision.records
            if first.refresh and first.checked and not last and not seeded:
                # The finished states were listed in full, but tasks moved meanwhile (a large account
                # takes long to list): what was listed is checked by the cheap rounds after this one,
                # as a served view is, instead of listing everything again (and again).
                log.debug("checking what was listed in full by the rounds after it",
                          extra={"target": self.target.name, "reason": decision.reason})
                self._view, seeded, rounds = seed_of(rnd, first, taken_at), True, 0
                continue
            log.debug("listing again" if isinstance(decision, Again) else "listing every task",
                      extra={"target": self.target.name, "reason": decision.reason})
            if isinstance(decision, Everything):
                seen = set().union(*(found.keys() for found in rnd.pages.values()))
                return await self._everything(self._scope(taken_at, last), deadline, taken_at, len(seen))

    async def _decide(self, rnd: Round, taken_at: float, last: bool, deadline: float) -> Serve | Again | Everything:
        """Reconcile and fetch what it asks, until it answers something else (or MAX_STEPS)."""
        for _ in range(self.MAX_STEPS):
            scope = self._scope(taken_at, last)  # what was learnt meanwhile counts at once
            step = reconcile(self._view, rnd, scope, taken_at)
            if not isinstance(step, Fetch):
                return step
            self._fell_back(step)
            await self._more(step, rnd, scope, deadline)
        return Everything("too many steps")

    def _scope(self, now: float, last: bool) -> Scope:
        t = self.target
        if self._show_refused_at is not None and now - self._show_refused_at >= self._refresh_interval:
            self._show_refused_at = None  # try ShowTask again now and then (the permission may be granted)
        listed = self._view.listed_at
        return Scope(states=tuple(t.statuses or STATUS_NAMES), groups=tuple(t.group_ids or (None,)), limit=self._limit,
                     status6=self._status6, show=self._show_refused_at is None,
                     refresh=listed is None or now - listed >= self._refresh_interval, last=last)

    async def _first(self, rnd: Round, scope: Scope, deadline: float) -> None:
        """The first batch of a round: live states in full, finished ones by head (or in full), the counts."""
        rnd.pages = {s: {} for s in scope.tracked()}
        jobs = [self._state(rnd, (s, g), deadline) for s in scope.live for g in scope.groups]
        jobs += [self._state(rnd, (s, g), deadline) if scope.refresh else self._head(rnd, (s, g), 0, deadline)
                 for s in scope.finished for g in scope.groups]
        jobs += [self._count(rnd, (s, g), deadline) for s in (None, *scope.outside) for g in scope.groups]
        await together(jobs)

    async def _more(self, step: Fetch, rnd: Round, scope: Scope, deadline: float) -> None:
        """What `step` asks to read, into `rnd`."""
        jobs: list[Coroutine[Any, Any, Any]] = []
        if step.recount:
            rnd.recounted = True
            jobs += [self._count(rnd, (None, g), deadline) for g in scope.groups]
        for key in step.heads:  # as many pages again as were read: a run of arrivals costs few round trips
            read = rnd.heads[key]
            rnd.heads[key] = 2 * read
            jobs += [self._head(rnd, key, offset, deadline)
                     for offset in range(read * self._limit, min(2 * read * self._limit, rnd.counts[key]), self._limit)]
        for s in step.whole:
            rnd.relisted[s] = {}
            jobs += [self._listed(rnd, (s, g), rnd.relisted[s], deadline) for g in scope.groups]
        rnd.probed += bool(step.probes)
        jobs += [self._read(rnd, p.key, p.offset, p.limit, deadline) for p in step.probes]
        rnd.refreshed |= step.refresh
        if step.show:
            jobs.append(self._show(step.show, rnd, deadline))
        await together(jobs)

    def _fell_back(self, step: Fetch) -> None:
        for s, reason in step.fallbacks:
            log.debug("listing a finished state again in full instead of probing where its tasks went",
                      extra={"target": self.target.name, "state": STATUS_NAMES[s], "reason": reason})
            self._fallbacks.append(reason)

    async def _listed(self, rnd: Round, key: Key, into: dict[int, Task], deadline: float) -> int:
        """A state (and group) in full into `into`, its order kept in `rnd` when sure; its count."""
        order: array[int] = array("q")
        # A task entering the state while it is listed came from a live state (followed: the counts and
        # ShowTask place it) or is new (at the head, read again): no second pass for it.
        n = await self._whole(key, into, deadline, order, followed=True)
        if order or not n:  # (tasks deleted and created while it was listed: not n long, but sure)
            rnd.orders[key] = order
        return n

    async def _state(self, rnd: Round, key: Key, deadline: float) -> None:
        """A state in full, with its count."""
        try:
            rnd.counts[key] = await self._listed(rnd, key, rnd.pages[key[0]], deadline)
            rnd.whole.add(key[0])
        except (RequestRejected, FilterIgnored) as exc:
            if key[0] != RETRYING or isinstance(exc, RequestRejected) and exc.status != 400:
                raise
            self._refuse_status6()  # refused, or ignored (every task answered): not a filter OMS has

    async def _head(self, rnd: Round, key: Key, offset: int, deadline: float) -> None:
        """One page of a finished state from its head (the first: with its count)."""
        tasks, n = await self._read(rnd, key, offset, self._limit, deadline)
        rnd.pages[key[0]].update((t.id, t) for t in tasks)
        if not offset:
            rnd.counts[key], rnd.heads[key] = n, 1

    async def _read(self, rnd: Round, key: Key, offset: int, limit: int, deadline: float) -> tuple[list[Task], int]:
        """A page of a finished list, each task put at its offset in `rnd.at`; a page that cannot be placed
        so (its count not the first page's, a record unreadable or missing) makes the list unsure."""
        unreadable: set[int] = set()
        tasks, n = await self._page(key, offset, deadline, limit=limit, unreadable=unreadable)
        if unreadable or len(tasks) != min(limit, max(n - offset, 0)) or n != rnd.counts.get(key, n):
            rnd.unsure.add(key)
        else:
            rnd.at.setdefault(key, {}).update(zip(range(offset, offset + len(tasks)), map(_task_id, tasks)))
        return tasks, n

    async def _count(self, rnd: Round, key: Query, deadline: float) -> None:
        """The count of a state (None: of every task) and group."""
        s, g = key
        try:
            _, n = await self._page(key, 0, deadline, limit=1)
        except (RequestRejected, FilterIgnored) as exc:
            if s != RETRYING or isinstance(exc, RequestRejected) and exc.status != 400:
                raise
            self._refuse_status6()
            return
        if s is None:
            rnd.totals[g] = n
        else:
            rnd.counts[(s, g)] = n

    async def _show(self, ids: frozenset[int], rnd: Round, deadline: float) -> None:
        """ShowTask of each task, into `rnd.shown`; a refusal (a 4xx but 404) is learnt, not a failure."""
        try:
            rnd.shown.update(await self._follow(ids, deadline))
        except RequestRejected as exc:
            if exc.status == 404 or not 400 <= exc.status < 500:
                raise
            self._refuse_show(exc)

    def _totals(self, tasks: list[Task]) -> tuple[dict[int, int], dict[int, Totals]]:
        """Per state, as the reconcile kept them (a finished state kept from the last listing moves its
        sums by the records that left and came); from the tasks after a listing of every task."""
        sums = self._served_sums
        if sums is None:
            return task_totals(tasks)
        zeros = (0,) * len(TOTAL_FIELDS)
        return ({code: sums[code][0] if code in sums else 0 for code in STATUS_NAMES},
                {code: sums[code][1] if code in sums else zeros for code in STATUS_NAMES})

    async def _everything(self, scope: Scope, deadline: float, now: float, seen: int) -> dict[int, Task]:
        """Every task of the target's groups, paged through unfiltered (as --oms.listing=full lists them);
        Incomplete when that finds fewer tasks than the `seen` this round already listed by state."""
        tasks: dict[int, Task] = {}
        await together(self._list_query((None, g), tasks, deadline, split=True) for g in scope.groups)
        if len(tasks) + len(self._parser.malformed) < seen:
            raise Incomplete(f"listing every task found {len(tasks)}, fewer than the {seen} listed by state "
                             "this round (a count too low?)")
        self._view = view_of(tasks.values(), scope, now)
        self._served_sums = None  # some tasks may be in no state listed per state: counted from the tasks
        self._finished_listed_at = now
        wanted = set(scope.states)
        return {tid: t for tid, t in tasks.items() if t.status in wanted or not self.target.statuses}

    async def _follow(self, ids: frozenset[int], deadline: float) -> dict[int, Task | None]:
        """ShowTask of each task: its record now, or None when it is gone (or unreadable, counted as malformed)."""
        out: dict[int, Task | None] = {}

        async def one(tid: int) -> None:
            raw = await self._show_one(tid, deadline)
            if raw is None:
                out[tid] = None  # OMS does not know it: deleted
                return
            try:
                records = self._parser.parse_all([one_record(raw)])
            except BadPage:
                raise BadPayload(f"the ShowTask answer for task {tid} is not valid JSON") from None
            if records and records[0].id != tid:
                # Another task's record would be served twice under two ids (and Prometheus
                # would refuse the scrape): an answer to be skipped, as an unreadable record is.
                self._parser.malformed.add(tid)
                records = []
            out[tid] = records[0] if records else None

        await together(one(tid) for tid in ids)
        return out

    async def _show_one(self, tid: int, deadline: float) -> bytes | None:
        """ShowTask: the task's TaskResp, or None when OMS does not know it (404)."""
        self._requests += 1
        try:
            return (await self._client.get(self._area.name, f"{self._area.path}/{tid}", {}, deadline)).body
        except RequestRejected as exc:
            if exc.status == 404:
                return None
            raise

    def _refuse_show(self, exc: RequestRejected) -> None:
        if self._show_refused_at is None:
            log.warning("OMS refuses ShowTask (grant the oms:task:get action); finished states are listed "
                        "again instead of following the tasks that leave the live states, which costs more",
                        extra={"target": self.target.name, "error": str(exc)})
        self._show_refused_at = self._clock.time()

    def _refuse_status6(self) -> None:
        if self._status6:
            log.warning("OMS refuses status=6 (retrying) as a ListTasks filter; retrying tasks are counted "
                        "from the total and listed with every task while there are any",
                        extra={"target": self.target.name})
        self._status6 = False
