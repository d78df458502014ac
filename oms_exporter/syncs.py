"""Synchronization tasks: each keeps a destination bucket in step with a source.

They are listed (`GET /v2/{project_id}/sync-tasks`, at most 5 per tenant), then each one is
asked for its counters of the current month (`GET .../sync-tasks/{id}?query_time=<now ms>`).
Sync tasks exist only in some regions: where the API gateway says the API is not published
there (404 `APIGW.0101`), that is no failure: no sync series, one info line.
"""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import quote

from oms_exporter.area import Area, Context
from oms_exporter.errors import BadPayload, Incomplete, RequestRejected
from oms_exporter.listing import Part
from oms_exporter.metrics import Family, Kind, _records_per_state, _state_set, gauge, project, record
from oms_exporter.model import SYNC_STATUS_NAMES, BadPage, RecordParser, SyncTask, one_record, parse_sync
from oms_exporter.pager import Pager, Unreachable, together

log = logging.getLogger(__name__)

# The API gateway's answer to an API a region does not publish.
NOT_PUBLISHED = "APIGW.0101"
SYNC = Kind("sync_task", "sync_task_id")
sync_gauge, sync_record = partial(gauge, kind=SYNC), partial(record, kind=SYNC)
SYNC_RESULTS = ("requested", "succeeded", "failed", "skipped")  # oms_sync_task_monthly_objects{result}

FAMILIES: tuple[Family, ...] = (
    project("oms_sync_tasks", "Number of synchronization tasks of the project in each state.", ("status",),
            _records_per_state(lambda listing: listing.records("sync_tasks"), SYNC_STATUS_NAMES),
            source="per project: sync tasks per state (synchronizing, stopped); none where the region has no "
                   "sync tasks", example="`sum by (status) (oms_sync_tasks)`"),
    sync_record("oms_sync_task_info", "Static facts of an OMS synchronization task; the value is always 1.",
           ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket"),
           ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket"),
           lambda facts: ((facts, 1),), source="static facts of a sync task, value 1",
           example="`oms_sync_task_info`"),
    sync_record("oms_sync_task_status", "Current state of a synchronization task: 1 for the state it is in, 0 for "
           "the other.", ("status",), ("status",), _state_set(SYNC_STATUS_NAMES),
           source="`status`: synchronizing, stopped", example='`oms_sync_task_status{status="stopped"} == 1`'),
    sync_gauge("oms_sync_task_last_start_timestamp_seconds", "Unix time the sync task was last started "
          "(last_start_time).", "last_start_time_ms", ms=True, source="`last_start_time` (ms → s)",
          example="`time() - (oms_sync_task_last_start_timestamp_seconds > 0)`"),
    sync_record("oms_sync_task_monthly_objects",
           "Objects of the sync task this month, by result: requested, succeeded, failed, skipped "
           "(monthly_acceptance_request, monthly_success_object, monthly_failure_object, monthly_skip_object). "
           "Month to date: they start again from 0 when a month begins.", ("result",),
           ("monthly_requested", "monthly_succeeded", "monthly_failed", "monthly_skipped"),
           lambda counts: [((result,), n) for result, n in zip(SYNC_RESULTS, counts) if n is not None],
           strict=True,
           source="`monthly_acceptance_request`, `monthly_success_object`, `monthly_failure_object`, "
                  "`monthly_skip_object` as `result` requested, succeeded, failed, skipped (month to date)",
           example='`oms_sync_task_monthly_objects{result="failed"}`'),
    sync_gauge("oms_sync_task_monthly_bytes", "Bytes the sync task synchronized this month (monthly_size). Month to "
          "date: it starts again from 0 when a month begins.", "monthly_bytes",
          source="`monthly_size` (month to date)", example="`oms_sync_task_monthly_bytes`"),
)


class SyncLister(Pager[SyncTask]):
    """Lists a target's synchronization tasks, then asks each for this month's counters."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, RecordParser(parse_sync))
        self._details: RecordParser[SyncTask] = RecordParser(parse_sync)  # ShowSyncTask answers
        self._offered = True

    async def run(self, deadline: float) -> Part:
        offered = True

        async def collect() -> dict[str, SyncTask]:
            nonlocal offered
            listed: dict[str, SyncTask] = {}
            try:
                await self._page_through((None, None), listed, deadline)
                return await self._details_of(sorted(listed), deadline)
            except Unreachable as exc:
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
            return Part(error=error, duration=duration, requests=self._requests)
        if offered != self._offered:
            self._offered = offered
            log.info("sync tasks are not offered in this region: no sync-task series" if not offered
                     else "sync tasks are offered in this region again", extra={"target": self.target.name})
        if not offered:
            return Part(offered=False, duration=duration, requests=self._requests)
        return Part(records=[syncs[sid] for sid in sorted(syncs)],
                    malformed=len(self._parser.malformed) + len(self._details.malformed), duration=duration,
                    requests=self._requests)

    async def _details_of(self, ids: list[str], deadline: float) -> dict[str, SyncTask]:
        """ShowSyncTask of each: this month's counters (a sync task deleted meanwhile is left out)."""
        query_time = int(self._clock.time() * 1000)
        out: dict[str, SyncTask] = {}

        async def one(sid: str) -> None:
            self._requests += 1
            try:
                raw = (await self._client.get(self._area.name, f"{self._area.path}/{quote(sid, safe='')}",
                                              {"query_time": str(query_time)}, deadline)).body
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

        await together(one(sid) for sid in ids)
        return out


SYNC_TASKS = Area(
    name="sync_tasks", what="synchronization tasks", api="ListSyncTasks", path="sync-tasks", records_key="tasks",
    record=SyncTask, kind=SYNC, families=FAMILIES, lister=SyncLister,
    slots=lambda max_concurrency: min(2, max_concurrency),
    max_offset=10000)  # ListSyncTasks documents offsets up to 10,000 (at most 5 sync tasks per tenant)
