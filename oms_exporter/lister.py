"""Pages through every task of one project, concurrently, de-duplicated by task id.

The first page's `count` says how many pages follow; they are fetched concurrently (the
client keeps at most `max_concurrency` requests of a target in flight). The previous
listing's count lets the next one start every page at once instead of waiting for the
first. The same pager reads task groups and sync tasks (`groups.py`). Offset paging shifts while
tasks are created or deleted, so tasks are keyed by id, pages that a growing `count` adds
are fetched, and when the count changed during the listing every page is fetched a second
time (a live task can fall between two shifted pages). Offsets go up to the documented
maximum; an API edition that caps them lower (one caps them at 10,000) answers 400, and the
lister learns that cap. When `count` is beyond what `offset` can reach, the query is split
per status; if even that cannot reach every task, the listing fails as `incomplete` instead
of dropping tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Generic, TypeVar

from oms_exporter.client import BadPayload, Incomplete, OmsClient, OmsError, RequestRejected, Timeout
from oms_exporter.clock import Clock
from oms_exporter.metrics import task_totals
from oms_exporter.model import STATUS_NAMES, BadPage, RecordParser, SyncTask, Task, TaskGroup, page, parse_task
from oms_exporter.settings import Target

log = logging.getLogger(__name__)

_task_id = _record_id = attrgetter("id")
R = TypeVar("R")

Query = tuple[int | None, str | None]  # (status filter, group_id filter)


@dataclass(slots=True)
class Listing:
    """Outcome of listing one project: every task in id order, or the error that stopped the listing."""

    target: Target
    taken_at: float  # Unix time the listing started (task ages are measured from it)
    tasks: list[Task] = field(default_factory=list)
    malformed: int = 0
    error: OmsError | None = None
    duration: float = 0.0
    requests: int = 0
    counts: dict[int, int] = field(default_factory=dict)  # tasks per state
    totals: dict[int, tuple[float, ...]] = field(default_factory=dict)  # per state: sums of TASK_TOTALS
    finished_listed_at: float | None = None  # Unix time the finished states were last listed in full
    # The other API areas: their records in id order, None when not listed (switched off,
    # failed, not offered in the region); and every area switched on -> its error (None: listed).
    groups: list[TaskGroup] | None = None
    sync_tasks: list[SyncTask] | None = None
    collectors: dict[str, OmsError | None] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # collector -> unreadable records left out
    costs: dict[str, tuple[int, float]] = field(default_factory=dict)  # collector -> (requests, seconds)

    @property
    def up(self) -> bool:
        return self.error is None

    @classmethod
    def of(cls, target: Target, taken_at: float, tasks: Iterable[Task], **fields: Any) -> Listing:
        """A complete listing of `tasks`: in id order, with their counts and totals per state."""
        ordered = sorted(tasks, key=_task_id)
        counts, totals = task_totals(ordered)
        return cls(target, taken_at, ordered, counts=counts, totals=totals, **fields)


def read_page(raw: bytes, parser: RecordParser[R], api: str = "ListTasks",
              unreadable: set[int] | None = None) -> tuple[list[R], int]:
    """The readable records and the `count` of one list answer; BadPayload when it is not that shape."""
    try:
        raws, count = page(raw, api)
    except BadPage as exc:
        raise BadPayload(str(exc)) from None
    return parser.parse_all(raws, unreadable), count


def read_task_page(raw: bytes, parser: RecordParser[Task]) -> tuple[list[Task], int]:
    """The readable tasks and the `count` of one ListTasks answer; BadPayload when it is not that shape."""
    return read_page(raw, parser, "ListTasks")


class _Unreachable(Exception):
    def __init__(self, count: int) -> None:
        self.count = count


class Pager(Generic[R]):
    """Pages through one of a target's OMS lists: what every lister here shares.

    `_page_through` fetches every page of one query concurrently (the client bounds
    the requests in flight), de-duplicated by record id, with shift handling and the offset cap; the last
    count per query starts the next listing's pages at once. `_run` runs one listing of the
    subclass's `_collect` before a deadline and turns any OmsError into its outcome.
    Subclasses say what a page is: `_fetch` (the request) and `_parser` (its records).
    """

    MAX_GROWTH_ROUNDS = 3  # extra rounds for pages that records created mid-listing push out
    API = "ListTasks"  # the list this pager reads (page shape, log lines)

    def __init__(self, client: OmsClient, target: Target, clock: Clock, parser: RecordParser[R], *,
                 page_limit: int) -> None:
        self._client = client
        self.target = target
        self._clock = clock
        self._limit = page_limit
        self._last_count: dict[Query, int] = {}
        self._parser = parser
        # Pages are parsed on the event loop, one at a time with a turn of the loop between
        # them (about a millisecond each): pages that arrive together neither hold the loop
        # for long nor pay for a thread hop and fight the event loop for the GIL.
        self._parse_turn = asyncio.Lock()
        # The highest offset to ask for: the target's (the documented maximum by default),
        # lowered when OMS refuses an offset below it (an API edition with a lower cap).
        self._max_offset = target.max_offset
        self._requests = 0

    @property
    def clock(self) -> Clock:
        return self._clock

    async def _fetch(self, query: Query, offset: int, limit: int, deadline: float) -> bytes:
        raise NotImplementedError

    async def _run(self, deadline: float, collect: Callable[[], Awaitable[dict[Any, R]]]
                   ) -> tuple[dict[Any, R], OmsError | None, float]:
        """(the records by id, the error that stopped the listing, its duration); never raises an OmsError."""
        clock = self._clock
        started = clock.monotonic()
        self._requests = 0
        self._parser.begin()
        records: dict[Any, R] = {}
        error: OmsError | None = None
        try:
            async with asyncio.timeout(clock.remaining(deadline)):
                records = await collect()
        except TimeoutError:
            error = Timeout("listing did not finish before the scrape deadline")
        except OmsError as exc:
            error = exc
        if error is None:
            self._parser.forget(set(self._parser.ids()) - records.keys())  # gone upstream
        else:
            self._failed()
        self._parser.end(ok=error is None)
        return records, error, clock.monotonic() - started

    def _failed(self) -> None:
        """The listing failed: forget whatever it had learnt that the next one must not trust."""

    def _reach(self) -> int:
        """Number of tasks that offset paging (offsets are multiples of the limit) can reach."""
        return (self._max_offset // self._limit + 1) * self._limit

    async def _page(self, query: Query, offset: int, deadline: float, limit: int = 0,
                    unreadable: set[int] | None = None) -> tuple[list[R], int]:
        """The readable records of one page (`limit` records, the page limit by default) and its `count`.

        The digests of its unreadable records are added to `unreadable`."""
        self._requests += 1
        raw = await self._fetch(query, offset, limit or self._limit, deadline)
        async with self._parse_turn:
            records, count = read_page(raw, self._parser, self.API, unreadable)
            await asyncio.sleep(0)
        return records, count

    def _learn_offset_cap(self, answered: set[int], refused: list[int], count: int) -> None:
        """OMS answered 400 to offsets `refused` and 200 to `answered`: learn its cap, or fail the listing.

        Only a clean cut is a cap: every offset below the lowest refused one answered, none at
        or above it, and every refused offset below the count (tasks are there). Anything else
        is a 400 of another kind, and fails this listing as http_4xx without lowering the cap.
        """
        low = min(refused)
        if answered and max(answered) < low and max(refused) < count:
            cap = max(answered)
            if cap < self._max_offset:
                log.warning("OMS refused an offset it documents; listing per status from now on",
                            extra={"target": self.target.name, "refused_offset": low, "learned_max_offset": cap})
                self._max_offset = cap
            return
        raise RequestRejected(f"OMS rejected the page at offset {low} (HTTP 400) while offsets up to "
                              f"{max(answered, default=0)} were answered", 400)

    async def _page_through(self, query: Query, tasks: dict[Any, R], deadline: float) -> int:
        """Put every task `query` matches into `tasks`; the query's count (the largest seen).

        Raises _Unreachable when the count is beyond what offsets reach.
        """
        limit, reach = self._limit, self._reach()
        counts: set[int] = set()
        answered: set[int] = set()
        refused: list[int] = []
        ids: set[Any] = set()  # distinct records seen
        unreadable: set[int] = set()  # distinct unreadable records seen (digests of their text)

        async def fetch(offset: int) -> None:
            try:
                page_tasks, count = await self._page(query, offset, deadline, unreadable=unreadable)
            except RequestRejected as exc:
                if exc.status != 400 or offset == 0:
                    raise
                # A 400 to an offset the first page's count says holds tasks: an offset cap
                # this API edition does not announce.
                refused.append(offset)
                return
            answered.add(offset)
            counts.add(count)
            # A record on two pages (the list shifted between them): the later page is the fresher.
            page_ids = list(map(_record_id, page_tasks))
            tasks.update(zip(page_ids, page_tasks))
            ids.update(page_ids)

        async def one_pass(start_count: int) -> None:
            """Fetch pages until every offset below the largest count seen has been fetched."""
            fetched: set[int] = set()

            def missing(count: int) -> list[int]:
                return [o for o in range(0, min(count, reach), limit) if o not in fetched]

            todo = missing(max(start_count, 1))
            for _ in range(2 + self.MAX_GROWTH_ROUNDS):
                if not todo:
                    return
                fetched.update(todo)
                await _all(fetch(o) for o in todo)
                if refused:
                    self._learn_offset_cap(answered, refused, max(counts))
                    raise _Unreachable(max(counts))
                if max(counts) > reach:
                    raise _Unreachable(max(counts))
                todo = missing(max(counts))
            raise Incomplete(f"the task list kept growing while it was listed (count {max(counts)})")

        # Start the pages the previous listing had together with the first one (only the first
        # when they were beyond reach: its count is all this listing needs before splitting).
        last = self._last_count.get(query, 0)
        await one_pass(last if last <= reach else 0)
        if len(counts) > 1:
            # Tasks were created or deleted while the pages were fetched. Offset pages then
            # shift, and a live task can fall between two pages fetched at different moments.
            # A second pass catches it unless the list shifts at the same place again.
            log.debug("task list changed while listing, listing again",
                      extra={"target": self.target.name, "counts": sorted(counts)})
            await one_pass(max(counts))
        # Every page fetched: the distinct records must account for the count (its smallest
        # value: records deleted meanwhile lower it). Pages that repeat records while `count`
        # says there are more are a listing that missed records, not a complete one.
        def short() -> bool:
            return len(ids) + len(unreadable) < min(counts)

        if short():
            # A record that moved between two pages fetched at different moments while the
            # count stayed (one task left the list as another joined): one more pass.
            await one_pass(max(counts))
            if short():
                raise Incomplete(f"{self.API} answered {len(ids)} distinct records over every page (twice), "
                                 f"but its count says {min(counts)}")
        self._last_count[query] = max(counts)
        return max(counts)


class Lister(Pager[Task]):
    """Lists one target's tasks: the two listing modes share this, and each `run` makes a `Listing`.

    Subclasses say what a listing asks (`_collect`).
    """

    def __init__(self, client: OmsClient, target: Target, clock: Clock, *, page_limit: int) -> None:
        super().__init__(client, target, clock, RecordParser(parse_task), page_limit=page_limit)

    async def _fetch(self, query: Query, offset: int, limit: int, deadline: float) -> bytes:
        return await self._client.list_tasks(offset=offset, limit=limit, deadline=deadline, status=query[0],
                                             group_id=query[1])

    async def run(self, deadline: float) -> Listing:
        """List every task before `deadline` (`Clock.monotonic()` time); never raises an OmsError."""
        listing = Listing(self.target, taken_at=self._clock.time())
        tasks, listing.error, listing.duration = await self._run(deadline, lambda: self._collect(deadline, listing))
        listing.requests = self._requests
        if listing.error is None:
            listing.malformed = len(self._parser.malformed)
            # In id order, whatever order the pages came back in: a stable order lets the encoder
            # reuse the text of runs of unchanged tasks (and makes the output reproducible).
            listing.tasks = list(map(tasks.__getitem__, sorted(tasks)))
            listing.counts, listing.totals = self._totals(listing.tasks)
        return listing

    def _totals(self, tasks: list[Task]) -> tuple[dict[int, int], dict[int, tuple[float, ...]]]:
        """Tasks per state and the per-state sums of a complete listing's tasks."""
        return task_totals(tasks)

    async def _collect(self, deadline: float, listing: Listing) -> dict[int, Task]:
        """Every task of the target by id (or an OmsError); may set fields of `listing`."""
        raise NotImplementedError

    def _queries(self) -> list[Query]:
        statuses: list[int | None] = [*self.target.statuses] if self.target.statuses else [None]
        groups: list[str | None] = [*self.target.group_ids] if self.target.group_ids else [None]
        return list(itertools.product(statuses, groups))

    async def _list_query(self, query: Query, tasks: dict[int, Task], deadline: float, split: bool) -> None:
        mine: dict[int, Task] = {}
        try:
            await self._page_through(query, mine, deadline)
        except _Unreachable as exc:
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
                await _all(self._list_query((s, query[1]), found, deadline, split=False)
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



class FullLister(Lister):
    """`--oms.listing=full`: every task of every state, paged through on every scrape."""

    async def _collect(self, deadline: float, listing: Listing) -> dict[int, Task]:
        tasks: dict[int, Task] = {}
        await _all(self._list_query(q, tasks, deadline, split=True) for q in self._queries())
        listing.finished_listed_at = listing.taken_at
        return tasks


async def _all(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run concurrently; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            for c in coros:
                tg.create_task(c)
    except BaseExceptionGroup as eg:
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
