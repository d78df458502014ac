"""Task groups and synchronization tasks: the two API areas a scrape lists beside the tasks.

- Task groups (`GET /v2/{project_id}/taskgroups`) are paged like tasks, every page of 100.
- Synchronization tasks (`GET /v2/{project_id}/sync-tasks`, at most 5 per tenant) are listed,
  then each one is asked for its counters of the current month (`GET .../sync-tasks/{id}
  ?query_time=<now ms>`). Sync tasks exist only in some regions: where the API gateway says
  the API is not published there (404 `APIGW.0101`), that is no failure: no sync series, one
  info line.

Each area's outcome is its own (`Area`): a failure in one never hides the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

from oms_exporter.client import BadPayload, Incomplete, OmsClient, OmsError, RequestRejected
from oms_exporter.clock import Clock
from oms_exporter.lister import Pager, Query, _all, _Unreachable
from oms_exporter.model import BadPage, RecordParser, SyncTask, TaskGroup, one_record, parse_group, parse_sync
from oms_exporter.settings import Target

log = logging.getLogger(__name__)

R = TypeVar("R")

# The API gateway's answer to an API a region does not publish.
NOT_PUBLISHED = "APIGW.0101"


@dataclass(slots=True)
class Area(Generic[R]):
    """The outcome of listing one API area of a project: its records (in id order), or why not."""

    records: list[R] | None = None  # None: the listing failed, or the area is not offered
    error: OmsError | None = None
    offered: bool = True  # False: the region does not publish this API
    malformed: int = 0
    duration: float = 0.0
    requests: int = 0


class GroupLister(Pager[TaskGroup]):
    """Lists every task group of a target, page by page."""

    API = "ListTaskGroup"

    def __init__(self, client: OmsClient, target: Target, clock: Clock, *, page_limit: int) -> None:
        super().__init__(client, target, clock, RecordParser(parse_group), page_limit=page_limit)

    async def _fetch(self, query: Query, offset: int, limit: int, deadline: float) -> bytes:
        return await self._client.list_task_groups(offset=offset, limit=limit, deadline=deadline, status=query[0])

    async def run(self, deadline: float) -> Area[TaskGroup]:
        async def collect() -> dict[str, TaskGroup]:
            groups: dict[str, TaskGroup] = {}
            try:
                await self._page_through((None, None), groups, deadline)
            except _Unreachable as exc:
                raise Incomplete(f"{exc.count} task groups, but offset paging reaches only {self._reach()}") from None
            return groups

        groups, error, duration = await self._run(deadline, collect)
        if error is not None:
            return Area(error=error, duration=duration, requests=self._requests)
        # A target scoped to some groups (`group_ids`) serves those groups only.
        wanted = sorted(groups) if not self.target.group_ids else sorted(set(self.target.group_ids) & groups.keys())
        return Area(records=[groups[gid] for gid in wanted], malformed=len(self._parser.malformed),
                    duration=duration, requests=self._requests)


class SyncLister(Pager[SyncTask]):
    """Lists a target's synchronization tasks, then asks each for this month's counters."""

    API = "ListSyncTasks"
    MAX_OFFSET = 10000  # ListSyncTasks documents offsets up to 10,000 (a tenant has at most 5 sync tasks)

    def __init__(self, client: OmsClient, target: Target, clock: Clock, *, page_limit: int) -> None:
        super().__init__(client, target, clock, RecordParser(parse_sync), page_limit=page_limit)
        self._max_offset = min(self._max_offset, self.MAX_OFFSET)
        self._details: RecordParser[SyncTask] = RecordParser(parse_sync)  # ShowSyncTask answers
        self._offered = True

    async def _fetch(self, query: Query, offset: int, limit: int, deadline: float) -> bytes:
        return await self._client.list_sync_tasks(offset=offset, limit=limit, deadline=deadline)

    async def run(self, deadline: float) -> Area[SyncTask]:
        offered = True

        async def collect() -> dict[str, SyncTask]:
            nonlocal offered
            listed: dict[str, SyncTask] = {}
            try:
                await self._page_through((None, None), listed, deadline)
                return await self._details_of(sorted(listed), deadline)
            except _Unreachable as exc:
                raise Incomplete(f"{exc.count} sync tasks, but offset paging reaches only {self._reach()}") from None
            except RequestRejected as exc:
                if exc.status != 404 or exc.code != NOT_PUBLISHED:
                    raise
                offered = False
                return {}

        self._details.begin()
        syncs, error, duration = await self._run(deadline, collect)
        if error is None:
            self._details.forget(set(self._details.ids()) - syncs.keys())
        self._details.end(ok=error is None)
        if error is not None:
            # A failed listing says nothing about whether the region offers the API.
            return Area(error=error, duration=duration, requests=self._requests)
        if offered != self._offered:
            self._offered = offered
            log.info("sync tasks are not offered in this region: no sync-task series" if not offered
                     else "sync tasks are offered in this region again", extra={"target": self.target.name})
        if not offered:
            return Area(offered=False, duration=duration, requests=self._requests)
        return Area(records=[syncs[sid] for sid in sorted(syncs)],
                    malformed=len(self._parser.malformed) + len(self._details.malformed), duration=duration,
                    requests=self._requests)

    async def _details_of(self, ids: list[str], deadline: float) -> dict[str, SyncTask]:
        """ShowSyncTask of each: this month's counters (a sync task deleted meanwhile is left out)."""
        query_time = int(self._clock.time() * 1000)
        out: dict[str, SyncTask] = {}

        async def one(sid: str) -> None:
            self._requests += 1
            try:
                raw = await self._client.show_sync_task(sid, query_time, deadline)
            except RequestRejected as exc:
                if exc.status == 404 and exc.code != NOT_PUBLISHED:
                    return  # deleted since it was listed
                raise  # the gateway's "not published here" is the region's answer: see run
            try:
                records = self._details.parse_all([one_record(raw)])
            except BadPage:
                raise BadPayload(f"the ShowSyncTask answer for {sid!r} is not valid JSON") from None
            if records:
                out[sid] = records[0]

        await _all(one(sid) for sid in ids)
        return out
