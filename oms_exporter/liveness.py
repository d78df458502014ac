"""Listing by liveness: a scrape costs what changed, not every task ever created.

Tasks in a live state (waiting, migrating, paused, retrying, pausing) are listed in full on
every scrape. Finished tasks (failed, succeeded) do not change until their owner restarts
them (they leave the finished state) or deletes them, so the lister keeps them from one
scrape to the next and keeps them exact cheaply:

- every scrape asks the first page of each finished state: its `count`, and its newest tasks
  (a task created and finished between two scrapes is among them);
- a task that was live and is no longer listed in a live state is followed to where it
  went with ShowTask (`GET /v2/{project_id}/tasks/{task_id}`): a finished state, another
  live state, or gone (404); when many left at once (or ShowTask is refused), the finished
  states are listed again instead;
- a finished state whose `count` differs from what the lister saw arrive and leave (a
  deletion, say) is listed again in full, and the tasks gone from it unseen are followed;
  all finished states are listed in full at least every `refresh_interval`;
- the counts must add up to the unfiltered `count` (a task listed in two states, having
  moved while they were listed, counts once; the total is asked again after the states
  when new tasks are seen, so that a creation cannot hide a task missed while it moved);
  a round disturbed by such moves gets one more; otherwise some tasks are in a state the
  lister did not list (retrying, where the API refuses `status=6` as a filter; a state OMS
  added), and the scrape pages through every task instead.

A target's `statuses` filter narrows what is served; every live state is still listed (so
that tasks leaving them are followed) and the finished states outside it counted, so the
same check holds. Counts per state are therefore exact on every scrape, and a listing that
fails in any of these steps fails whole: the next one starts again from the last complete view.
"""

from __future__ import annotations

import logging

from oms_exporter.client import BadPayload, Incomplete, OmsClient, RequestRejected
from oms_exporter.clock import Clock
from oms_exporter.lister import FullLister, Lister, Listing, Query, _all, _Unreachable
from oms_exporter.metrics import state_totals, task_totals
from oms_exporter.model import FINISHED_STATUSES, STATUS_NAMES, BadPage, Task, one_record
from oms_exporter.settings import Target

log = logging.getLogger(__name__)

RETRYING = 6


class LiveLister(Lister):
    """`--oms.listing=liveness` (the default): live states every scrape, finished ones kept and checked."""

    def __init__(self, client: OmsClient, target: Target, clock: Clock, *, page_limit: int,
                 refresh_interval: float) -> None:
        super().__init__(client, target, clock, page_limit=page_limit)
        self._refresh_interval = refresh_interval
        self._live: dict[int, Task] = {}  # tasks of the last complete listing in a state not finished
        self._finished: dict[int, dict[int, Task]] = {}  # finished state -> its tasks, in the last listing
        self._listed_at: float | None = None  # Unix time the finished states were last listed in full
        self._status6 = True  # False once OMS refused status=6 as a filter
        self._show_refused_at: float | None = None  # Unix time OMS last refused ShowTask (not 404)
        # The last listing's tasks per state (None after a listing of every task); for its finished
        # states kept from the listing before, the records that left and came; the sums per state.
        self._by_state: dict[int, dict[int, Task]] | None = None
        self._moved: dict[int, tuple[list[Task], list[Task]]] = {}
        self._sums: dict[int, tuple[int, tuple[float, ...]]] = {}

    async def _collect(self, deadline: float, listing: Listing) -> dict[int, Task]:
        # A round whose counts do not add up because tasks moved or were created while it ran
        # is run once more; the second one, or a round that cannot be checked, lists everything.
        view = await self._round(deadline, listing, last=False)
        if view is None:
            view = await self._round(deadline, listing, last=True)
        assert view is not None
        return view

    async def _round(self, deadline: float, listing: Listing, *, last: bool) -> dict[int, Task] | None:
        """One listing of the target's states; None when it was disturbed and `last` is False."""
        t = self.target
        states = [*t.statuses] if t.statuses else list(STATUS_NAMES)
        groups: list[str | None] = [*t.group_ids] if t.group_ids else [None]
        now = listing.taken_at
        refresh = self._listed_at is None or now - self._listed_at >= self._refresh_interval
        if self._show_refused_at is not None and now - self._show_refused_at >= self._refresh_interval:
            self._show_refused_at = None  # try ShowTask again now and then (the permission may be granted)

        def listable(s: int) -> bool:
            return s != RETRYING or self._status6

        # Every live state is listed in full, in the target's scope or not: a task that leaves a
        # live state out of scope for a finished one in scope is followed like any other. The
        # finished states out of scope are only counted.
        live = [s for s in STATUS_NAMES if s not in FINISHED_STATUSES and listable(s)]
        finished = [s for s in states if s in FINISHED_STATUSES]
        outside = [s for s in FINISHED_STATUSES if s not in states]
        # Tasks listed this round, per state (live states out of scope included).
        seen: dict[int, dict[int, Task]] = {s: {} for s in (*live, *finished)}
        moved: dict[int, tuple[list[Task], list[Task]]] = {}  # finished state kept -> (records out, records in)
        counts: dict[Query, int] = {}
        totals: dict[str | None, int] = {}

        async def whole(s: int, g: str | None) -> None:
            try:
                counts[(s, g)] = await self._whole((s, g), seen[s], deadline)
            except RequestRejected as exc:
                if s != RETRYING or exc.status != 400:
                    raise
                self._refuse_status6()

        async def head(s: int, g: str | None) -> None:
            tasks, counts[(s, g)] = await self._page((s, g), 0, deadline)
            seen[s].update((task.id, task) for task in tasks)

        async def count(s: int | None, g: str | None) -> None:
            try:
                _, n = await self._page((s, g), 0, deadline, limit=1)
            except RequestRejected as exc:
                if s != RETRYING or exc.status != 400:
                    raise
                self._refuse_status6()
                return
            if s is None:
                totals[g] = n
            else:
                counts[(s, g)] = n

        jobs = [whole(s, g) for s in live for g in groups]
        jobs += [(whole if refresh else head)(s, g) for s in finished for g in groups]
        jobs += [count(s, g) for s in (None, *outside) for g in groups]
        await _all(jobs)

        # Where each task was listed; one listed in two states moved while they were listed.
        where, ambiguous = _where(seen)
        new = {tid for tid in where.keys() - self._live.keys()
               if not any(tid in kept for kept in self._finished.values())}  # in no state of the last view
        # The check: every task in scope is counted once. A task that moved while the states were
        # listed is in no count (missed) or in two (listed twice, so seen twice: subtracted). Where
        # status 6 cannot be asked, it is what the total leaves: 0 unless tasks are retrying.
        checked = self._status6 or RETRYING in states
        if checked and new:
            # New tasks: one created while the states were listed may be in a state's count and
            # not in the total asked beside them. Asked again now, the total counts it.
            await _all(count(None, g) for g in groups)
        if checked:
            unexplained = False
            for g in groups:
                listed = sum(n for (_, gg), n in counts.items() if gg == g) - _twice(seen, ambiguous, g)
                if listed != totals[g]:
                    unexplained = True
                    log.debug("state counts do not add up to the total",
                              extra={"target": t.name, "group_id": g, "states": listed, "total": totals[g]})
            if unexplained:
                if not last and (ambiguous or new) and self._status6:
                    return None  # disturbed while listed: once more
                # Tasks in no state listed here (retrying ones where status=6 is refused, a state
                # OMS added), or still moving: page through every task instead.
                return await self._everything(groups, deadline, listing)
        elif RETRYING in states and not self._status6:
            return await self._everything(groups, deadline, listing)

        departed = self._live.keys() - where.keys()  # left the live states (or the scope)
        if not refresh and finished and departed and (
                self._show_refused_at is not None
                or len(departed) > max(16, sum(counts[(s, g)] for s in finished for g in groups)
                                       // self._limit // 2)):
            # Listing the finished states again is cheaper than following each task (or the only way).
            refresh = True
            for s in finished:
                seen[s] = {}
            await _all(whole(s, g) for s in finished for g in groups)
            where, ambiguous = _where(seen)
            departed = self._live.keys() - where.keys()
        full = refresh or not finished  # every state in scope listed in full
        # With every state listed and the counts checked, a task not listed is gone or out of scope.
        follow = ambiguous if full and checked else ambiguous | departed
        for tid in ambiguous:
            for found in seen.values():
                found.pop(tid, None)
        placed = await self._place(follow, seen, where, deadline)
        if placed is None:
            return None if not last else await self._everything(groups, deadline, listing)

        if not refresh:
            # A finished state keeps its tasks unless they are seen elsewhere now; its count says
            # whether something happened that was not seen (a deletion): then it is listed again.
            # The tasks that left it unseen are followed: one may have gone to another finished
            # state whose count the arrival hid a deletion from (restarted, finished again).
            relisted: set[int] = set()
            while again := [s for s in finished if s not in relisted and not self._keep(s, seen, where, counts,
                                                                                        groups, moved)]:
                log.debug("finished state counts changed unseen; listing them again",
                          extra={"target": t.name, "states": ",".join(STATUS_NAMES[s] for s in again)})
                fresh: dict[int, dict[int, Task]] = {s: {} for s in again}
                await _all(self._whole((s, g), fresh[s], deadline) for s in again for g in groups)
                vanished: set[int] = set()
                for s in again:
                    # Seen in another state this scrape beats the listing again (moved meanwhile).
                    seen[s] = {tid: task for tid, task in fresh[s].items() if where.get(tid, s) == s}
                    vanished |= self._finished.get(s, {}).keys() - fresh[s].keys() - where.keys()
                    where.update(dict.fromkeys(seen[s], s))
                    moved.pop(s, None)
                relisted.update(again)
                if vanished and await self._place(vanished, seen, where, deadline) is None:
                    # ShowTask refused: list the other finished states again too.
                    relisted.update(await self._relist([s for s in finished if s not in relisted], seen, where,
                                                       groups, moved, deadline))
        else:
            self._listed_at = now
        self._live = {}
        for s in live:
            self._live.update(seen[s])
        self._finished = {s: seen[s] for s in finished}
        self._by_state, self._moved = {s: seen.get(s, {}) for s in states}, moved
        listing.finished_listed_at = self._listed_at
        view: dict[int, Task] = {}
        for s in states:
            view.update(seen.get(s, {}))
        return view

    def _keep(self, s: int, seen: dict[int, dict[int, Task]], where: dict[int, int], counts: dict[Query, int],
              groups: list[str | None], moved: dict[int, tuple[list[Task], list[Task]]]) -> bool:
        """Finished state `s` from the last listing, moved by what was seen this scrape; False when
        its count says that something happened unseen (then it is to be listed again)."""
        kept = dict(self._finished.get(s, {}))
        out = [kept.pop(tid) for tid in where.keys() & kept.keys() if where[tid] != s]
        came = []
        for tid, task in seen[s].items():
            old = kept.get(tid)
            if old is not task:
                if old is not None:
                    out.append(old)
                came.append(task)
        kept.update(seen[s])
        if len(kept) != sum(counts[(s, g)] for g in groups):
            return False
        seen[s] = kept
        moved[s] = (out, came)
        return True

    async def _relist(self, states: list[int], seen: dict[int, dict[int, Task]], where: dict[int, int],
                      groups: list[str | None], moved: dict[int, tuple[list[Task], list[Task]]],
                      deadline: float) -> list[int]:
        fresh: dict[int, dict[int, Task]] = {s: {} for s in states}
        await _all(self._whole((s, g), fresh[s], deadline) for s in states for g in groups)
        for s in states:
            seen[s] = {tid: task for tid, task in fresh[s].items() if where.get(tid, s) == s}
            where.update(dict.fromkeys(seen[s], s))
            moved.pop(s, None)
        return states

    async def _place(self, ids: set[int], seen: dict[int, dict[int, Task]], where: dict[int, int],
                     deadline: float) -> bool | None:
        """Follow `ids` with ShowTask and put each where it is now (or nowhere: gone, or out of
        scope); None when ShowTask is refused (learnt: the listing then does without it)."""
        if not ids:
            return True
        if self._show_refused_at is not None:
            return None
        try:
            found = await self._follow(ids, deadline)
        except RequestRejected as exc:
            if exc.status == 404 or not 400 <= exc.status < 500:
                raise
            self._refuse_show(exc)
            return None
        groups = self.target.group_ids
        for tid, task in found.items():
            for others in seen.values():
                others.pop(tid, None)
            if task is not None and task.status in seen and (not groups or task.group_id in groups):
                seen[task.status][tid] = task
                where[tid] = task.status
            else:
                where.pop(tid, None)  # gone, or out of the listing's scope
        return True

    def _totals(self, tasks: list[Task]) -> tuple[dict[int, int], dict[int, tuple[float, ...]]]:
        """Per state, from this listing's states. A finished state kept from the last listing moves its
        sums by the records that left and came (when all are integers, so the result is exact)."""
        if self._by_state is None:
            return task_totals(tasks)
        sums = {}
        for code in STATUS_NAMES:
            found = self._by_state.get(code, {})
            cached, moved = self._sums.get(code), self._moved.get(code)
            if cached is not None and moved is not None:
                out, came = state_totals(moved[0]), state_totals(moved[1])
                if all(type(v) is int for v in (*cached[1], *out, *came)):
                    sums[code] = (len(found), tuple(t - o + c for t, o, c in zip(cached[1], out, came)))
                    continue
            sums[code] = (len(found), state_totals(found.values()))
        self._sums = sums
        return {code: n for code, (n, _) in sums.items()}, {code: t for code, (_, t) in sums.items()}

    def _failed(self) -> None:
        """The next listing starts from the last complete one (the state above is only replaced on success)."""

    async def _everything(self, groups: list[str | None], deadline: float, listing: Listing) -> dict[int, Task]:
        """Every task of the target's states, paged through unfiltered (as --oms.listing=full lists them)."""
        tasks: dict[int, Task] = {}
        await _all(self._list_query((None, g), tasks, deadline, split=True) for g in groups)
        # Every live task is followed, in the target's scope or not (see _round).
        self._live = {tid: task for tid, task in tasks.items()
                      if task.status not in FINISHED_STATUSES and task.status in STATUS_NAMES}
        wanted = set(self.target.statuses or STATUS_NAMES)
        tasks = {tid: task for tid, task in tasks.items() if task.status in wanted or not self.target.statuses}
        self._finished = {s: {tid: task for tid, task in tasks.items() if task.status == s}
                          for s in FINISHED_STATUSES if s in wanted}
        self._by_state = None  # some tasks may be in no state listed per state: counted from the tasks
        self._sums = {}
        self._listed_at = listing.taken_at
        listing.finished_listed_at = self._listed_at
        return tasks

    async def _whole(self, query: Query, into: dict[int, Task], deadline: float) -> int:
        """Every task of one state (and group); its count."""
        try:
            return await self._page_through(query, into, deadline)
        except _Unreachable as exc:
            raise Incomplete(f"{exc.count} tasks in state {STATUS_NAMES.get(query[0] or 0, query[0])} "
                             f"(group_id={query[1]}), but offset paging reaches only {self._reach()} "
                             f"(max_offset {self._max_offset})") from None

    async def _follow(self, ids: set[int], deadline: float) -> dict[int, Task | None]:
        """ShowTask of each task: its record now, or None when it is gone (or unreadable, counted as malformed)."""
        out: dict[int, Task | None] = {}

        async def one(tid: int) -> None:
            self._requests += 1
            raw = await self._client.show_task(tid, deadline)
            if raw is None:
                out[tid] = None
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

        await _all(one(tid) for tid in ids)
        return out

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


def _twice(seen: dict[int, dict[int, Task]], ambiguous: set[int], group: str | None) -> int:
    """How many times more than once the counts of `group` (None: every task) hold the tasks listed
    in several states."""
    n = 0
    for tid in ambiguous:
        records = [found[tid] for found in seen.values() if tid in found]
        if group is None or records[0].group_id == group:
            n += len(records) - 1
    return n


def _where(seen: dict[int, dict[int, Task]]) -> tuple[dict[int, int], set[int]]:
    """Task id -> the state it was listed in this scrape, and the ids listed in more than one state."""
    where: dict[int, int] = {}
    ambiguous: set[int] = set()
    for s, found in seen.items():
        ambiguous.update(where.keys() & found.keys())
        where.update(dict.fromkeys(found, s))
    return where, ambiguous


def make_lister(client: OmsClient, target: Target, clock: Clock, *, mode: str, page_limit: int,
                refresh_interval: float) -> Lister:
    """The lister of one target in the listing mode of the settings."""
    if mode == "full":
        return FullLister(client, target, clock, page_limit=page_limit)
    return LiveLister(client, target, clock, page_limit=page_limit, refresh_interval=refresh_interval)
