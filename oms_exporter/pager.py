"""Pages through one of a target's OMS lists, concurrently, de-duplicated by record id.

The first page's `count` says how many pages follow; they are fetched concurrently (the
client keeps each area's requests of a target within its slots). The previous listing's
count lets the next one start every page at once instead of waiting for the first. Offset
paging shifts while records are created or deleted, so records are keyed by id, pages that
a growing `count` adds are fetched, and when the count changed during the listing every
page is fetched a second time (a live record can fall between two shifted pages). Offsets
go up to the documented maximum; an API edition that caps them lower (one caps them at
10,000) answers 400, and the pager learns that cap. A count beyond what `offset` can reach
raises `Unreachable`: the tasks then list per status; any other area fails as `incomplete`.

`PagedLister` lists a simple area (task groups) with it; the tasks and the sync tasks build
on it in their own modules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from operator import attrgetter
from typing import Any, Generic, TypeVar

from oms_exporter.area import Context
from oms_exporter.clock import Clock
from oms_exporter.errors import BadPayload, Incomplete, OmsError, RequestRejected, Timeout
from oms_exporter.listing import Part
from oms_exporter.model import BadPage, RecordParser, page, parser

log = logging.getLogger(__name__)

_record_id = attrgetter("id")
R = TypeVar("R")

Query = tuple[int | None, str | None]  # (status filter, group_id filter)


def read_page(raw: bytes, parser: RecordParser[R], area: Any, unreadable: set[int] | None = None
              ) -> tuple[list[R], int]:
    """The readable records and the `count` of one list answer of `area`; BadPayload when it is not that shape."""
    try:
        raws, count = page(raw, area.api, area.records_key)
    except BadPage as exc:
        raise BadPayload(str(exc)) from None
    return parser.parse_all(raws, unreadable), count


class Unreachable(Exception):
    def __init__(self, count: int) -> None:
        self.count = count


class Pager(Generic[R]):
    """Pages through one of a target's OMS lists: what every lister here shares.

    `_page_through` fetches every page of one query concurrently (the client bounds
    the requests in flight), de-duplicated by record id, with shift handling and the offset cap; the last
    count per query starts the next listing's pages at once. `_run` runs one listing of the
    subclass's `_collect` before a deadline and turns any OmsError into its outcome.
    The area (`Context.area`) says where its list is and how a page holds its records.
    """

    MAX_GROWTH_ROUNDS = 3  # extra rounds for pages that records created mid-listing push out

    def __init__(self, ctx: Context, parser: RecordParser[R]) -> None:
        self._client = ctx.client
        self.target = ctx.target
        self._clock = ctx.clock
        self._area = ctx.area
        self.API = ctx.area.api  # the list this pager reads (log lines, errors)
        self._limit = ctx.options.page_limit
        self._last_count: dict[Query, int] = {}
        self._parser = parser
        # Pages are parsed on the event loop, one at a time with a turn of the loop between
        # them (about a millisecond each): pages that arrive together neither hold the loop
        # for long nor pay for a thread hop and fight the event loop for the GIL.
        self._parse_turn = asyncio.Lock()
        # The highest offset to ask for: the target's (the documented maximum by default),
        # lowered when OMS refuses an offset below it (an API edition with a lower cap).
        self._max_offset = min(ctx.target.max_offset, ctx.area.max_offset)
        self._requests = 0

    @property
    def clock(self) -> Clock:
        return self._clock

    async def _fetch(self, query: Query, offset: int, limit: int, deadline: float) -> bytes:
        """One page of the area's list: `limit` records from `offset`, filtered by `query`."""
        params = {"limit": str(limit), "offset": str(offset)}
        if query[0] is not None:
            params["status"] = str(query[0])
        if query[1] is not None:
            params["group_id"] = query[1]
        area = self._area
        return (await self._client.get(area.name, area.path, params, deadline)).body

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
            async with clock.timeout_at(deadline):
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
            records, count = read_page(raw, self._parser, self._area, unreadable)
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
                await together(fetch(o) for o in todo)
                if refused:
                    self._learn_offset_cap(answered, refused, max(counts))
                    raise Unreachable(max(counts))
                if max(counts) > reach:
                    raise Unreachable(max(counts))
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


class PagedLister(Pager[Any]):
    """Lists every record of a simple area (task groups), page by page; a target scoped to some
    task groups (`group_ids`) serves the records of those only."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, RecordParser(parser(ctx.area.record)))

    async def run(self, deadline: float) -> Part:
        async def collect() -> dict[Any, Any]:
            found: dict[Any, Any] = {}
            try:
                await self._page_through((None, None), found, deadline)
            except Unreachable as exc:
                raise Incomplete(f"{exc.count} records of {self.API}, but offset paging reaches only "
                                 f"{self._reach()}") from None
            return found

        found, error, duration = await self._run(deadline, collect)
        if error is not None:
            return Part(error=error, duration=duration, requests=self._requests)
        return Part(records=[found[rid] for rid in self._scoped(found)], malformed=len(self._parser.malformed),
                    duration=duration, requests=self._requests)

    def _scoped(self, found: dict[Any, Any]) -> list[Any]:
        return sorted(found)


async def together(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
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
