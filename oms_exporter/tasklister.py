"""Lists every task of one target: what both listing modes share, and `--oms.listing=full`.

A listing is every task of the target's scope (`statuses`, `group_ids`), paged through
with `pager.Pager`. When the count is beyond what offset paging reaches, the query is
split per status; if even that cannot reach every task, the listing fails as
`incomplete` instead of dropping tasks. `FullLister` pages through every task on every
scrape; `liveness.LiveLister` keeps the finished ones between scrapes.
"""

from __future__ import annotations

import itertools
import logging
from array import array
from collections.abc import Callable

from oms_exporter.area import Context
from oms_exporter.errors import Incomplete
from oms_exporter.listing import TaskPart
from oms_exporter.model import (
    FAILED,
    INF,
    STATUS_NAMES,
    SUCCEEDED,
    RecordParser,
    Task,
    Totals,
    bare,
    parse_task,
    task_totals,
)
from oms_exporter.pager import Pager, Query, Unreachable, together

log = logging.getLogger(__name__)


class FilterIgnored(Incomplete):
    """A page of `status=S` / `group_id=G` holding a task of another state / group."""


class TaskLister(Pager[Task]):
    """Lists one target's tasks: the two listing modes share this, and each `run` makes a `Listing`.

    Subclasses say what a listing asks (`_collect`).
    """

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, RecordParser(parse_task))
        self._options = ctx.options
        self._finished_listed_at: float | None = None  # Unix time the finished states were last listed in full
        self._fallbacks: list[str] = []  # this listing's: why a finished state was listed in full, not probed

    async def run(self, deadline: float) -> TaskPart:
        """List every task before `deadline` (`Clock.monotonic()` time); never raises an OmsError."""
        taken_at = self._clock.time()
        self._parser.compact = self._compactor(taken_at)
        self._fallbacks = []
        tasks, error, duration = await self._run(deadline, lambda: self._collect(deadline, taken_at))
        if error is not None:
            return TaskPart(error=error, duration=duration, requests=self._requests, fallbacks=tuple(self._fallbacks))
        # In id order, whatever order the pages came back in: a stable order lets the encoder
        # reuse the text of runs of unchanged tasks (and makes the output reproducible).
        ordered = list(map(tasks.__getitem__, sorted(tasks)))
        counts, totals = self._totals(ordered)
        return TaskPart(records=ordered, counts=counts, totals=totals, malformed=len(self._parser.malformed),
                        duration=duration, requests=self._requests, finished_listed_at=self._finished_listed_at,
                        fallbacks=tuple(self._fallbacks))

    def _compactor(self, taken_at: float) -> Callable[[Task], Task] | None:
        """What a finished task that gets no series (SeriesPolicy's rules) is kept as: `bare`, for a
        listing started at Unix time `taken_at` (a minute earlier: a listing served later only finds
        it older). None when every finished task keeps its series."""
        opts = self._options
        ages = {SUCCEEDED: opts.finished_task_max_age, FAILED: opts.failed_task_max_age}
        if not opts.per_task_series:
            ages = dict.fromkeys(ages, -INF)
        cut = {code: (taken_at - age) * 1000 - 60_000 for code, age in ages.items() if age}
        if not cut:
            return None

        def compact(task: Task) -> Task:
            limit = cut.get(task.status)  # type: ignore[arg-type]
            return bare(task) if limit is not None and task.ended_ms < limit and not task.bare else task

        return compact

    def _totals(self, tasks: list[Task]) -> tuple[dict[int, int], dict[int, Totals]]:
        """Tasks per state and the per-state sums of a complete listing's tasks."""
        return task_totals(tasks)

    def _check_filter(self, query: Query, records: list[Task]) -> None:
        """A page of `status=S` (or `group_id=G`) holds tasks in state S (of group G) only: one that does
        not is no page of that list (a listing checked by its counts only would serve it)."""
        status, group = query
        odd = next((t for t in records if status is not None and t.status != status
                    or group is not None and t.group_id != group), None)
        if odd is not None:
            raise FilterIgnored(f"{self.API} listed task {odd.id} (status {odd.status}, group {odd.group_id}) "
                             f"for status={status} group_id={group}")

    async def _collect(self, deadline: float, taken_at: float) -> dict[int, Task]:
        """Every task of the target by id (or an OmsError), in a listing started at Unix time `taken_at`."""
        raise NotImplementedError

    def _queries(self) -> list[Query]:
        statuses: list[int | None] = [*self.target.statuses] if self.target.statuses else [None]
        groups: list[str | None] = [*self.target.group_ids] if self.target.group_ids else [None]
        return list(itertools.product(statuses, groups))

    async def _whole(self, query: Query, into: dict[int, Task], deadline: float,
                     order: array[int] | None = None, followed: bool = False) -> int:
        """Every task of one state (and group) into `into`; its count. With `order`: the ids in the order
        served, appended when that order is known; `followed`: see `Pager._page_through`."""
        try:
            return await self._page_through(query, into, deadline, order, followed)
        except Unreachable as exc:
            raise Incomplete(f"{exc.count} tasks in state {STATUS_NAMES.get(query[0] or 0, query[0])} "
                             f"(group_id={query[1]}), but offset paging reaches only {self._reach()} "
                             f"(max_offset {self._max_offset})") from None

    async def _list_query(self, query: Query, tasks: dict[int, Task], deadline: float, split: bool) -> None:
        mine: dict[int, Task] = {}
        try:
            await self._page_through(query, mine, deadline)
        except Unreachable as exc:
            if not split or query[0] is not None:
                raise Incomplete(
                    f"{exc.count} tasks match status={query[0]} group_id={query[1]}, but offset paging "
                    f"reaches only {self._reach()} (max_offset {self._max_offset})") from None
            log.debug("task count beyond offset reach, listing per status",
                     extra={"target": self.target.name, "count": exc.count, "reach": self._reach()})
            # Count distinct tasks: a task that changes status mid-listing can be missed by
            # both status lists while their counts still add up. One more round catches it.
            found: dict[int, Task] = {}
            for _ in range(2):
                await together(self._list_query((s, query[1]), found, deadline, split=False)
                           for s in STATUS_NAMES)
                # Malformed records are in the count but not among the tasks.
                if len(found) + len(self._parser.malformed) >= exc.count:
                    break
            else:
                raise Incomplete(f"listing per status found {len(found)} of {exc.count} tasks "
                                 f"(tasks without a known status, or changing status while listed)") from None
            # The per-status pages, not the unfiltered ones: they are the fresher (a task deleted
            # meanwhile is not among them).
            mine = found
        tasks.update(mine)



class FullLister(TaskLister):
    """`--oms.listing=full`: every task of every state, paged through on every scrape."""

    async def _collect(self, deadline: float, taken_at: float) -> dict[int, Task]:
        tasks: dict[int, Task] = {}
        await together(self._list_query(q, tasks, deadline, split=True) for q in self._queries())
        self._finished_listed_at = taken_at
        return tasks
