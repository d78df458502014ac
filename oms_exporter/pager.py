"""Pages through one of a target's OMS lists, concurrently, de-duplicated by record id.

The first page's `count` says how many pages follow; they are fetched concurrently (the
client keeps each area's requests of a target within its slots). The previous listing's
count lets the next one start every page at once instead of waiting for the first. Offset
paging shifts while records are created or deleted, so records are keyed by id and pages that
a growing `count` adds are fetched. Neighbouring pages overlap by two records (a page of
`limit` every `limit - 2` offsets): where the next page holds the record that ends one page,
and before it what that page holds before it, nothing fell between them, whatever moved
while they were fetched (records created before them, or one deleted). Below a pair that
does not link so (the list shifted between their fetches), pages are read again in runs that
double (no more than a pass costs); when the count changed the head is read again until what
began the list is found, and the distinct records must make up the count. Only where that does
not settle it is every page fetched a second time (records that tie in OMS's order may swap
between two requests: pages that do not link are not taken for a lie, the distinct records
decide). Offsets go up to the documented maximum; an API edition that caps them lower (one caps them at
10,000) answers 400, and the pager learns that cap. A count beyond what `offset` can reach
raises `Unreachable`: the tasks then list per status; any other area fails as `incomplete`.

`PagedLister` lists a simple area (task groups) with it; the tasks and the sync tasks build
on it in their own modules.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from itertools import pairwise
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
              ) -> tuple[list[R], int, int]:
    """The readable records, the `count` and the number of records of one list answer of `area`;
    BadPayload when it is not that shape."""
    try:
        raws, count = page(raw, area.api, area.records_key)
    except BadPage as exc:
        raise BadPayload(str(exc)) from None
    return parser.parse_all(raws, unreadable), count, len(raws)


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
    OVERLAP = 2  # records two neighbouring pages share
    MAX_RELINKS = 5  # rounds of reading again the pages below links that do not hold (1, 2, 4... pages)

    def __init__(self, ctx: Context, parser: RecordParser[R]) -> None:
        self._client = ctx.client
        self.target = ctx.target
        self._clock = ctx.clock
        self._area = ctx.area
        self.API = ctx.area.api  # the list this pager reads (log lines, errors)
        self._limit = ctx.options.page_limit
        # Pages start every `_stride` offsets: two records before the end of the page before, so that
        # two neighbours share two records and still link when one record before them went between
        # their fetches (one-record pages share none: they cannot be linked).
        self._stride = self._limit - min(self.OVERLAP, self._limit - 1)
        self._last_count: dict[Query, int] = {}
        self._parser = parser
        # Pages are parsed on the event loop, one at a time with a turn of the loop between
        # them (about a millisecond each): pages that arrive together neither hold the loop
        # for long nor pay for a thread hop and fight the event loop for the GIL.
        self._parse_turn = asyncio.Lock()
        # The highest offset to ask for: the target's (the documented maximum by default),
        # lowered when OMS refuses an offset below it (an API edition with a lower cap).
        self._max_offset = min(ctx.target.max_offset, ctx.area.max_offset)
        self._max_records = ctx.options.max_records
        self._slots = ctx.area.slots(ctx.options.max_concurrency)  # pages asked at once, at most
        self._pace = 0.0  # seconds the first page of the last query took
        self._requests = 0
        # After a listing that failed as incomplete, the next one may send about as many requests as
        # it did (or the costliest good one), no more; one stopped by that bound leaves the one after
        # unbounded. A list that lies (its count growing with every request) never costs more and
        # more; one that grew honestly costs one failed listing (None: no bound).
        self._budget: int | None = None
        self._budget_hit = False  # this listing stopped at the budget
        self._peak_cost = 0  # requests of the costliest listing that succeeded

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
            self._budget, self._peak_cost = None, max(self._peak_cost, self._requests)
        else:
            if self._budget_hit:
                # The budget was tried once: the next listing may cost what it costs (a list that
                # grew honestly beyond it, or a full listing due, is not locked out for good).
                self._budget = None
            elif isinstance(error, Incomplete) and self._budget is None:
                # What the failed listing asked (or the costliest good one, if more), and one round
                # of concurrent requests for the list's honest growth: a list that lies forever
                # costs every other listing no more than that.
                self._budget = max(self._requests, self._peak_cost) + self._slots
            self._failed()
        self._budget_hit = False
        self._parser.end(ok=error is None)
        return records, error, clock.monotonic() - started

    def _failed(self) -> None:
        """The listing failed: forget whatever it had learnt that the next one must not trust."""

    def _reach(self) -> int:
        """Number of tasks that offset paging (pages start at multiples of the stride) can reach."""
        return self._max_offset // self._stride * self._stride + self._limit

    def _offsets(self, count: int) -> range:
        """The offsets of the pages that hold a list of `count` records (within reach)."""
        overlap = self._limit - self._stride
        return range(0, max(min(count, self._reach()) - overlap, 1), self._stride)

    async def _page(self, query: Query, offset: int, deadline: float, limit: int = 0,
                    unreadable: set[int] | None = None) -> tuple[list[R], int]:
        """The readable records of one page (`limit` records, the page limit by default) and its `count`.

        The digests of its unreadable records are added to `unreadable`. A page with more records
        than asked for, or than its own count leaves at its offset, is no page OMS writes: Incomplete.
        """
        if self._budget is not None and self._requests >= self._budget:
            self._budget_hit = True
            raise Incomplete(f"{self.API}: {self._budget} requests, as many as the listing that failed before, "
                             "did not list every record")
        self._requests += 1
        limit = limit or self._limit
        raw = await self._fetch(query, offset, limit, deadline)
        async with self._parse_turn:
            records, count, n = read_page(raw, self._parser, self._area, unreadable)
            await asyncio.sleep(0)
        if n > limit or n > max(count - offset, 0):
            raise Incomplete(f"{self.API} answered {n} records at offset {offset} for limit {limit}, "
                             f"with a count of {count}")
        self._check_filter(query, records)
        return records, count

    def _check_filter(self, query: Query, records: list[R]) -> None:
        """Incomplete when a page holds records its filter does not match (the area's records say)."""

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

    def _check_count(self, count: int, pages: int, deadline: float) -> None:
        """BadPayload at once for a count no listing should page through: beyond --oms.max-records, or
        needing more pages than the time left can fetch at the pace of the first page."""
        if count > self._max_records:
            raise BadPayload(f"{self.API} says it has {count} records, more than --oms.max-records "
                             f"({self._max_records})")
        left = self._clock.remaining(deadline)
        fit = self._slots * left / max(self._pace, 0.001) * 2  # twice the pace so far: no false alarm
        if pages > fit:
            raise BadPayload(f"{self.API} says it has {count} records: {pages} pages, more than the "
                             f"{left:.1f}s left can fetch ({fit:.0f} at {self._pace * 1000:.0f} ms a page)")

    async def _page_through(self, query: Query, records: dict[Any, R], deadline: float,
                            order: array[int] | None = None, followed: bool = False) -> int:
        """Put every record `query` matches into `records`; the query's count (the largest seen).

        With `order`, the records' ids are appended to it in the order the pages served them, when
        that order is known: pages linked from the head to the end, each whole and readable, no id
        twice (`order` is left as it was otherwise). `followed`: the caller finds the records that
        entered the list behind the pages read by other means (listing by liveness follows the tasks
        that leave the live states), so the distinct records need not add up to the count after the
        head is read again. Raises Unreachable when the count is beyond what offsets reach.
        """
        last = self._last_count.get(query, 0)
        # Start the pages the previous listing had together with the first one (only the first
        # when they were beyond reach: its count is all this listing needs before splitting).
        walk = _Walk(self, query, records, deadline, followed)
        await walk.one_pass(last if last <= self._reach() else 0)
        settled = await walk.relink()
        if not settled:
            # Records were created or deleted while the pages were fetched. Offset pages then
            # shift, and a live record can fall between two pages fetched at different moments.
            # A second pass catches it unless the list shifts at the same place again.
            log.debug("list changed while listing, listing again",
                      extra={"target": self.target.name, "api": self.API, "counts": sorted(walk.counts)})
            await walk.one_pass(max(walk.counts))
        # Every page fetched: the distinct records must account for the count (its smallest
        # value: records deleted meanwhile lower it). Pages that repeat records while `count`
        # says there are more are a listing that missed records, not a complete one.
        if walk.short():
            # A record that moved between two pages fetched at different moments while the
            # count stayed (one record left the list as another joined): one more pass.
            await walk.one_pass(max(walk.counts))
            if walk.short():
                raise Incomplete(f"{self.API} answered {len(walk.ids)} distinct records over every page (twice), "
                                 f"but its count says {min(walk.counts)}")
        self._last_count[query] = max(walk.counts)
        if order is not None:
            order.extend(walk.order())
        return max(walk.counts)


class _Walk(Generic[R]):
    """The pages of one query of one listing: what they said, page by page and pass by pass."""

    def __init__(self, pager: Pager[R], query: Query, records: dict[Any, R], deadline: float,
                 followed: bool = False) -> None:
        self.pager, self.query, self.records, self.deadline = pager, query, records, deadline
        self.followed = followed  # records entering the list behind the pages read are found by the caller
        self.pages: dict[int, list[Any]] = {}  # offset -> the ids of its page (its latest fetch) in the order served
        self.page_counts: dict[int, int] = {}  # offset -> the count its latest fetch said
        self.arrived: list[Any] = []  # records that came before the first page while the others were read
        self.passes = 0
        self.counts: set[int] = set()
        self.answered: set[int] = set()
        self.refused: list[int] = []
        self.ids: set[Any] = set()  # distinct records seen
        self.unreadable: set[int] = set()  # distinct unreadable records seen (digests of their text)
        self.end: int | None = None  # this pass: an offset whose page was short (the list ends there)

    def short(self) -> bool:
        return len(self.ids) + len(self.unreadable) < min(self.counts)

    def _chain(self) -> tuple[list[int], list[int]] | None:
        """(the offsets of the pages from the head to the end of the list, the offsets among them whose
        link to the next page does not hold); None when pages cannot be linked (one-record pages,
        unreadable records: a page's ids are not all of its records)."""
        pager = self.pager
        if pager._stride == pager._limit or self.unreadable or 0 not in self.pages:
            return None
        offsets: list[int] = []
        for offset in sorted(self.pages):
            offsets.append(offset)
            page = self.pages[offset]
            if len(page) < pager._limit or offset + len(page) >= self.page_counts[offset]:
                break  # the list ends on this page (as it was when fetched)
        broken = [a for a, b in pairwise(offsets)
                  if b - a != pager._stride or _link(self.pages[a], self.pages[b]) is None]
        return offsets, broken

    async def relink(self) -> bool | None:
        """Fetch again the pages on both sides of each link that does not hold (a few rounds), and the
        first page when the count changed: whether every page now links to the next from the head to
        the end of the list, and what came at the head meanwhile is read. Pages that cannot be linked:
        True when the count stayed the same (the rule without links), None when it did not."""
        spent = 0
        for attempt in range(self.pager.MAX_RELINKS + 1):
            chain = self._chain()
            if chain is None:
                return True if len(self.counts) == 1 else None
            offsets, broken = chain
            if not broken:
                return self._ends(offsets) and (len(self.counts) == 1 or await self._rehead())
            if attempt < self.pager.MAX_RELINKS:
                # A deletion before pages read earlier shifts every page after it: read again a run
                # below each broken link that doubles each round, until it reaches before the change.
                stride = self.pager._stride
                run = 2 ** attempt
                again = sorted({o for a in broken for o in range(max(a - (run - 1) * stride, 0),
                                                                 a + 2 * stride, stride)})
                spent += len(again)
                if spent > len(offsets):  # no cheaper than a second pass: leave it to that
                    return False
                await self._fetch_all(again, ends=False)
        return False

    async def _rehead(self) -> bool:
        """Read the head again, page after page until the record that began the list is found: whether what
        the first page held is still there, after the records that came before it meanwhile (`arrived`, kept
        before the chain). At most as many pages as the count grew by, and a few."""
        pager, first = self.pager, self.pages[0]
        if not first:
            return False
        grew = max(self.counts) - min(self.counts)
        ids: list[Any] = []
        prev: list[Any] = []
        for k in range(grew // pager._stride + 2):
            unreadable = len(self.unreadable)
            page, count = await pager._page(self.query, k * pager._stride, self.deadline, unreadable=self.unreadable)
            self.counts.add(count)
            self.records.update(zip(map(_record_id, page), page))
            more = list(map(_record_id, page))
            self.ids.update(more)
            j = _link(prev, more) if k else -1
            if len(self.unreadable) != unreadable or j is None:
                return False
            ids.extend(more[j + 1:])
            prev = more
            if not k:
                live = count  # every record the list held when its head was read again
            if first[0] in ids:
                j = ids.index(first[0])
                self.arrived = ids[:j]
                # Records that came in behind the pages read (a task entering a state's list at its
                # place, not the head) leave fewer distinct records than the list holds: not linked.
                return (ids[j:j + len(first)] == first[:len(ids) - j]
                        and (self.followed or len(self.ids) + len(self.unreadable) >= live))
            if len(more) < pager._limit:
                return False
        return False

    def _ends(self, offsets: list[int]) -> bool:
        """Whether the last page of the chain reaches the end of the list (as its fetch saw it)."""
        last = offsets[-1]
        return last + len(self.pages[last]) >= self.page_counts[last]

    def order(self) -> list[Any]:
        """Every id in the order the pages served them, or [] when that order is not known for sure:
        the pages, linked from the head to the end, hold each record seen exactly once."""
        chain = self._chain()
        if self.passes != 1 or chain is None or chain[1] or not self._ends(chain[0]):
            return []
        offsets = chain[0]
        ids = [*self.arrived, *self.pages[offsets[0]]]
        for a, b in pairwise(offsets):
            j = _link(self.pages[a], self.pages[b])
            assert j is not None
            ids.extend(self.pages[b][j + 1:])
        return ids if len(ids) == len(self.ids) == len(set(ids)) else []

    async def one_pass(self, start_count: int) -> None:
        """Fetch pages until every offset below the largest count seen has been fetched."""
        pager = self.pager
        reach = pager._reach()
        fetched: set[int] = set()
        self.end = None
        self.passes += 1
        count = max(start_count, 1)
        for _ in range(2 + pager.MAX_GROWTH_ROUNDS):
            todo = [o for o in pager._offsets(count) if o not in fetched]
            if not todo:
                return
            if self.counts:
                pager._check_count(count, len(todo), self.deadline)
            fetched.update(todo)
            await self._fetch_all(todo)
            count = max(self.counts)
            if self.refused:
                pager._learn_offset_cap(self.answered, self.refused, count)
                raise Unreachable(count)
            if count > reach:
                raise Unreachable(count)
            pager._check_count(count, 0, self.deadline)
        raise Incomplete(f"the list kept growing while it was listed (count {max(self.counts)})")

    async def _fetch_all(self, offsets: list[int], ends: bool = True) -> None:
        """Fetch these pages, as many at once as the area has request slots; past the offset of a short
        page (the list ends before its count says) none is asked (with `ends`)."""
        it = iter(offsets)

        async def worker() -> None:
            for offset in it:
                if not ends or self.end is None or offset <= self.end:
                    await self._fetch(offset)

        await together(worker() for _ in range(min(self.pager._slots, len(offsets))))

    async def _fetch(self, offset: int) -> None:
        pager = self.pager
        started = pager._clock.monotonic()
        unreadable = len(self.unreadable)
        try:
            page, count = await pager._page(self.query, offset, self.deadline, unreadable=self.unreadable)
        except RequestRejected as exc:
            if exc.status != 400 or offset == 0:
                raise
            # A 400 to an offset the first page's count says holds records: an offset cap this
            # API edition does not announce.
            self.refused.append(offset)
            return
        if offset == 0:
            pager._pace = pager._clock.monotonic() - started
        self.answered.add(offset)
        self.counts.add(count)
        if len(page) + len(self.unreadable) - unreadable < min(pager._limit, count - offset):
            self.end = offset if self.end is None else min(self.end, offset)  # a short page: the list ends
        # A record on two pages (the list shifted between them): the later page is the fresher.
        page_ids = list(map(_record_id, page))
        self.pages[offset], self.page_counts[offset] = page_ids, count
        self.records.update(zip(page_ids, page))
        self.ids.update(page_ids)


def _link(a: list[Any], b: list[Any]) -> int | None:
    """Where in page `b` the record that ends page `a` (the page before it) is, when the two link: `b`
    holds it, and what `b` holds before it is what `a` holds before it (nothing between them fell
    out, or came in, while they were fetched); None when they do not link."""
    if not a or not b:
        return None
    try:
        j = b.index(a[-1])
    except ValueError:
        return None
    return j if b[:j] == a[len(a) - 1 - j:len(a) - 1] else None


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
