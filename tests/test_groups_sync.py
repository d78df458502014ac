"""Task groups and synchronization tasks over HTTP: every family's value, odd and missing
fields, the collectors switched off, a region without sync tasks, and one area failing while
the others are served."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiohttp import web

from oms_exporter.catalog import switches
from oms_exporter.client import OmsClient
from oms_exporter.groups import FAMILIES as GROUP_FAMILIES
from oms_exporter.groups import GroupLister
from oms_exporter.model import GROUP_STATUS_NAMES
from oms_exporter.settings import load
from oms_exporter.simulator import make_task
from oms_exporter.syncs import FAMILIES as SYNC_FAMILIES
from tests.conftest import PROJECT, Exporter, ManualClock, Samples, parse_metrics, scrape, target_for, value, values
from tests.standin import Fault, StandIn, json_fault

GROUP = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SYNC = "4fb05cd2-c94e-44e4-a07f-e65a2f01ebcb"
START_MS = 1_764_000_000_123


def put_known_group(sim: StandIn, **fields: Any) -> dict[str, Any]:
    """A group whose every counted field is given (not counted from tasks)."""
    group = {
        "group_id": GROUP, "status": 2, "task_type": "PREFIX",
        "src_node": {"cloud_type": "ALIYUN", "region": "cn-hangzhou", "bucket": "media", "object_key": ["a/"]},
        "dst_node": {"region": "cn-north-4", "bucket": "obs-media", "save_prefix": "m/"},
        "total_task_num": 40, "create_task_num": 12, "executing_task_num": 5, "waiting_task_num": 4,
        "paused_task_num": 1, "failed_task_num": 1, "complete_task_num": 1,
        "total_num": 4_000_000, "create_complete_num": 1_200_000, "success_num": 300_000, "fail_num": 7,
        "skip_num": 12, "total_size": 8_000_000_000_000, "create_complete_size": 2_400_000_000_000,
        "complete_size": 600_000_000_000, "migrate_speed": 104_857_600, "start_time": START_MS,
        "total_time": 7_200_500, "error_reason": {"error_code": "", "error_msg": ""}, **fields}
    sim.put_group(PROJECT, group)
    return group


def month_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m")


def put_known_sync(sim: StandIn, clock: ManualClock, sync_id: str = SYNC, status: str = "SYNCHRONIZING",
                   **counters: int) -> None:
    monthly = {"monthly_acceptance_request": 1200, "monthly_success_object": 1100, "monthly_failure_object": 40,
               "monthly_skip_object": 60, "monthly_size": 987_654_321, **counters}
    sim.put_sync_task(PROJECT, {
        "sync_task_id": sync_id, "src_cloud_type": "AWS", "src_region": "eu-west-1", "src_bucket": "events",
        "dst_region": "cn-north-4", "dst_bucket": "obs-events", "status": status, "create_time": START_MS - 10,
        "last_start_time": START_MS, "monthly": {month_of(clock.time()): monthly}})


def group_value(s: Samples, name: str, group: str = GROUP, **labels: str) -> float:
    return value(s, name, project_id=PROJECT, group_id=group, **labels)


def sync_value(s: Samples, name: str, sync: str = SYNC, **labels: str) -> float:
    return value(s, name, project_id=PROJECT, sync_task_id=sync, **labels)


def names(s: Samples) -> set[str]:
    return {n for n, _ in s}


# --- every value -----------------------------------------------------------------------------

async def test_every_group_family_has_its_value(sim: StandIn, exporter: Exporter) -> None:
    put_known_group(sim, error_reason={"error_code": "TRF.0159", "error_msg": "source throttled"})
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 1
    info = values(s, "oms_task_group_info", project_id=PROJECT, group_id=GROUP)
    assert list(info) == [frozenset({
        ("project_id", PROJECT), ("group_id", GROUP), ("src_cloud", "ALIYUN"), ("src_region", "cn-hangzhou"),
        ("src_bucket", "media"), ("dst_region", "cn-north-4"), ("dst_bucket", "obs-media"), ("task_type", "PREFIX")})]
    assert list(info.values()) == [1]
    states = {dict(lab)["status"]: v for lab, v in values(s, "oms_task_group_status", group_id=GROUP).items()}
    assert states == {name: (1 if name == "migrating" else 0) for name in GROUP_STATUS_NAMES.values()}
    assert group_value(s, "oms_task_group_status_code") == 2
    assert group_value(s, "oms_task_group_progress_ratio") == 600_000_000_000 / 8_000_000_000_000
    expected = {
        "oms_task_group_tasks": 40, "oms_task_group_tasks_created": 12, "oms_task_group_tasks_migrating": 5,
        "oms_task_group_tasks_waiting": 4, "oms_task_group_tasks_paused": 1, "oms_task_group_tasks_failed": 1,
        "oms_task_group_tasks_succeeded": 1, "oms_task_group_objects": 4_000_000,
        "oms_task_group_objects_created": 1_200_000, "oms_task_group_objects_succeeded": 300_000,
        "oms_task_group_objects_failed": 7, "oms_task_group_objects_skipped": 12,
        "oms_task_group_size_bytes": 8_000_000_000_000, "oms_task_group_created_bytes": 2_400_000_000_000,
        "oms_task_group_completed_bytes": 600_000_000_000, "oms_task_group_speed_bytes_per_second": 104_857_600,
        "oms_task_group_start_timestamp_seconds": START_MS / 1000, "oms_task_group_elapsed_seconds": 7200.5,
    }
    for name, want in expected.items():
        assert group_value(s, name) == want, name
    assert group_value(s, "oms_task_group_error_info", error_code="TRF.0159", error_msg="source throttled") == 1
    # Every group family is covered above.
    assert {f.name for f in GROUP_FAMILIES if f.kind} == {*expected, "oms_task_group_info", "oms_task_group_status",
                                                "oms_task_group_status_code", "oms_task_group_progress_ratio",
                                                "oms_task_group_error_info"}
    # Per project: all ten states, counting every group (the stand-in's own groups too).
    per_state = {dict(lab)["status"]: v for lab, v in values(s, "oms_task_groups", project_id=PROJECT).items()}
    assert set(per_state) == set(GROUP_STATUS_NAMES.values())
    assert sum(per_state.values()) == len(sim.groups[PROJECT]) and per_state["migrating"] >= 1


async def test_a_group_without_an_error_has_no_error_series(sim: StandIn, exporter: Exporter) -> None:
    put_known_group(sim)
    s = await scrape(await exporter())
    assert values(s, "oms_task_group_error_info", group_id=GROUP) == {}
    assert group_value(s, "oms_task_group_status_code") == 2


async def test_group_counts_agree_with_the_tasks_of_the_group(sim: StandIn, exporter: Exporter) -> None:
    """The stand-in counts a group from its GROUP_TASK tasks: the exporter's two views agree."""
    s = await scrape(await exporter(finished_task_max_age=0))
    groups = {dict(lab)["group_id"] for lab in values(s, "oms_task_group_info")}
    assert len(groups) >= 3
    by_group: dict[str, list[str]] = {}
    for lab in values(s, "oms_task_info", group_type="GROUP_TASK"):
        by_group.setdefault(dict(lab)["group_id"], []).append(dict(lab)["task_id"])
    assert set(by_group) == groups
    for gid, task_ids in by_group.items():
        assert group_value(s, "oms_task_group_tasks", gid) == len(task_ids)
        failed = sum(value(s, "oms_task_status", task_id=t, status="failed") for t in task_ids)
        assert group_value(s, "oms_task_group_tasks_failed", gid) == failed
        size = sum(value(s, "oms_task_size_bytes", task_id=t) for t in task_ids)
        assert group_value(s, "oms_task_group_size_bytes", gid) == size


async def test_every_sync_family_has_its_value(sim: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    put_known_sync(sim, clock)
    put_known_sync(sim, clock, "stopped-one", status="STOPPED", monthly_failure_object=0)
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 1
    info = values(s, "oms_sync_task_info", sync_task_id=SYNC)
    assert list(info) == [frozenset({
        ("project_id", PROJECT), ("sync_task_id", SYNC), ("src_cloud", "AWS"), ("src_region", "eu-west-1"),
        ("src_bucket", "events"), ("dst_region", "cn-north-4"), ("dst_bucket", "obs-events")})]
    assert sync_value(s, "oms_sync_task_status", status="synchronizing") == 1
    assert sync_value(s, "oms_sync_task_status", status="stopped") == 0
    assert sync_value(s, "oms_sync_task_status", "stopped-one", status="stopped") == 1
    assert sync_value(s, "oms_sync_task_last_start_timestamp_seconds") == START_MS / 1000
    monthly = {dict(lab)["result"]: v
               for lab, v in values(s, "oms_sync_task_monthly_objects", sync_task_id=SYNC).items()}
    assert monthly == {"requested": 1200, "succeeded": 1100, "failed": 40, "skipped": 60}
    assert sync_value(s, "oms_sync_task_monthly_objects", "stopped-one", result="failed") == 0
    assert sync_value(s, "oms_sync_task_monthly_bytes") == 987_654_321
    assert value(s, "oms_sync_tasks", project_id=PROJECT, status="synchronizing") == 1
    assert value(s, "oms_sync_tasks", project_id=PROJECT, status="stopped") == 1
    assert {f.name for f in SYNC_FAMILIES} <= names(s)
    # One ListSyncTasks page, then ShowSyncTask per sync task with query_time = now in ms.
    shows = [q for p, q in sim.calls if "/sync-tasks/" in p]
    assert len(shows) == 2
    for q in shows:
        assert q.startswith("query_time=") and abs(int(q.split("=")[1]) / 1000 - clock.time()) < 5


async def test_monthly_counters_start_again_when_a_month_begins(sim: StandIn, exporter: Exporter,
                                                                clock: ManualClock) -> None:
    end_of_june = datetime(2026, 6, 30, 23, 59, 0, tzinfo=UTC).timestamp()
    clock.set_time(end_of_june)
    put_known_sync(sim, clock)
    sim.sync_tasks[PROJECT][SYNC]["monthly"]["2026-07"] = {"monthly_acceptance_request": 3,
                                                           "monthly_failure_object": 1}
    client = await exporter()
    s = await scrape(client)
    assert sync_value(s, "oms_sync_task_monthly_objects", result="failed") == 40
    clock.advance(120)  # July, 00:01 UTC
    s = await scrape(client)
    assert sync_value(s, "oms_sync_task_monthly_objects", result="failed") == 1
    assert sync_value(s, "oms_sync_task_monthly_objects", result="requested") == 3
    assert sync_value(s, "oms_sync_task_monthly_bytes") == 0


# --- absent, null and unknown fields ---------------------------------------------------------

async def test_absent_null_and_unknown_group_fields(sim: StandIn, exporter: Exporter) -> None:
    """The wire as a hostile or newer OMS may write it: keys missing, nulls, keys no edition documents."""
    group = put_known_group(sim, migrate_speed=None, start_time=None, error_reason=None, src_node=None,
                            enable_kms=True, a_field_of_a_later_edition={"x": [1, 2]})
    for key in ("total_time", "skip_num", "create_task_num"):
        del group[key]
    answer = {"count": 3, "taskgroups": [
        group, {"group_id": "empty-size", "status": 6, "total_size": 0, "complete_size": 0},
        {"group_id": "later-state", "status": 11, "total_size": 10, "complete_size": None}]}
    sim.inject(json_fault(200, answer, times=100, api="taskgroups"))
    s = await scrape(await exporter())
    for name in ("oms_task_group_speed_bytes_per_second", "oms_task_group_start_timestamp_seconds",
                 "oms_task_group_elapsed_seconds", "oms_task_group_objects_skipped", "oms_task_group_tasks_created",
                 "oms_task_group_error_info"):
        assert values(s, name, group_id=GROUP) == {}, f"{name}: a value OMS did not send"
    assert group_value(s, "oms_task_group_objects_failed") == 7
    info = dict(next(iter(values(s, "oms_task_group_info", group_id=GROUP))))
    assert info["src_cloud"] == info["src_bucket"] == "" and info["dst_bucket"] == "obs-media"
    # total_size 0, or nothing completed reported: no ratio (never a division by zero or an invented 0)
    assert values(s, "oms_task_group_progress_ratio", group_id="empty-size") == {}
    # A state outside the documented 0..9 is a malformed record (issue 22, row 10): skipped, not
    # served as a group in no state.
    assert not [k for k in s if dict(k[1]).get("group_id") == "later-state"]
    assert sum(values(s, "oms_task_groups", project_id=PROJECT).values()) == 2


async def test_unreadable_group_and_sync_records_are_skipped(sim: StandIn, exporter: Exporter,
                                                             clock: ManualClock,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    put_known_group(sim)
    sim.put_group(PROJECT, {"group_id": "bad-number", "total_num": "many"})
    put_known_sync(sim, clock)
    put_known_sync(sim, clock, "bad-sync")
    sim.sync_tasks[PROJECT]["bad-sync"]["monthly"] = {month_of(clock.time()): {"monthly_size": [1]}}
    caplog.set_level(logging.WARNING)
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 1
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 1
    assert values(s, "oms_task_group_info", group_id="bad-number") == {}
    assert group_value(s, "oms_task_group_tasks") == 40
    assert values(s, "oms_sync_task_info", sync_task_id="bad-sync") == {}
    assert sync_value(s, "oms_sync_task_monthly_bytes") == 987_654_321
    skipped = {r.__dict__.get("collector"): r.__dict__.get("count") for r in caplog.records
               if r.getMessage() == "skipped malformed records"}
    assert skipped == {"task_groups": 1, "sync_tasks": 1}


async def test_sync_status_spelled_in_lower_case_is_read(sim: StandIn, exporter: Exporter,
                                                         clock: ManualClock) -> None:
    put_known_sync(sim, clock, status="stopped")
    s = await scrape(await exporter())
    assert sync_value(s, "oms_sync_task_status", status="stopped") == 1


# --- paging, changes, deletions --------------------------------------------------------------

async def test_many_groups_are_paged_and_all_served(sim: StandIn, exporter: Exporter) -> None:
    before = len(sim.groups[PROJECT])
    for i in range(250):
        sim.put_group(PROJECT, {"group_id": f"g{i:04d}", "status": i % 10})
    client = await exporter()
    s = await scrape(client)
    assert len(values(s, "oms_task_group_status_code")) == before + 250
    assert sum(values(s, "oms_task_groups").values()) == before + 250
    pages = [q for p, q in sim.calls if p.endswith("/taskgroups")]
    assert len(pages) == 3 and all("limit=100" in q for q in pages)
    # The next listing knows the count: every page at once, the same three.
    sim.calls.clear()
    await scrape(client)
    assert len([p for p, _ in sim.calls if p.endswith("/taskgroups")]) == 3


async def test_groups_changing_and_going_are_followed(sim: StandIn, exporter: Exporter) -> None:
    put_known_group(sim)
    client = await exporter()
    s = await scrape(client)
    assert group_value(s, "oms_task_group_status", status="migrating") == 1
    sim.groups[PROJECT][GROUP].update(status=5, fail_num=9,
                                      error_reason={"error_code": "TRF.0001", "error_msg": "system error"})
    s = await scrape(client)
    assert group_value(s, "oms_task_group_status", status="migrating") == 0
    assert group_value(s, "oms_task_group_status", status="failed") == 1
    assert group_value(s, "oms_task_group_objects_failed") == 9
    assert group_value(s, "oms_task_group_error_info", error_code="TRF.0001", error_msg="system error") == 1
    del sim.groups[PROJECT][GROUP]
    s = await scrape(client)
    assert not any(dict(lab).get("group_id") == GROUP for n, lab in s if n.startswith("oms_task_group_"))


async def test_a_sync_task_deleted_between_list_and_show_is_left_out(sim: StandIn, exporter: Exporter,
                                                                     clock: ManualClock) -> None:
    put_known_sync(sim, clock)
    put_known_sync(sim, clock, "deleted-meanwhile")

    def delete_on_show(request: web.Request) -> None:
        if request.path.endswith("/sync-tasks/deleted-meanwhile"):
            del sim.sync_tasks[PROJECT]["deleted-meanwhile"]

    sim.on_list = delete_on_show
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 1
    assert values(s, "oms_sync_task_info", sync_task_id="deleted-meanwhile") == {}
    assert sync_value(s, "oms_sync_task_status", status="synchronizing") == 1
    assert value(s, "oms_sync_tasks", project_id=PROJECT, status="synchronizing") == 1


# --- collectors switched off -----------------------------------------------------------------

def _off_the_wire(sim: StandIn, s: Samples, *, groups: bool, syncs: bool) -> None:
    listed = {p.split("/")[3] for p, _ in sim.calls}
    assert ("taskgroups" in listed) is groups and ("sync-tasks" in listed) is syncs
    assert any(n.startswith("oms_task_group") for n in names(s)) is groups
    assert any(n.startswith("oms_sync_task") for n in names(s)) is syncs
    collectors = {dict(lab)["collector"] for lab in values(s, "oms_collector_success", project_id=PROJECT)}
    assert collectors == {"tasks", *(["task_groups"] if groups else []), *(["sync_tasks"] if syncs else [])}


async def test_both_collectors_switched_off_by_flag(sim: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    put_known_sync(sim, clock)
    s = await scrape(await exporter(collectors={"task_groups": False, "sync_tasks": False}))
    _off_the_wire(sim, s, groups=False, syncs=False)
    assert value(s, "oms_up", project_id=PROJECT) == 1 and values(s, "oms_task_info")


async def test_a_target_setting_overrides_the_flag(sim: StandIn, oms: Any, exporter: Exporter,
                                                   clock: ManualClock) -> None:
    put_known_sync(sim, clock)
    target = target_for(oms, collectors={"task_groups": True, "sync_tasks": False})
    s = await scrape(await exporter([target], collectors={"task_groups": False}))
    _off_the_wire(sim, s, groups=True, syncs=False)


def test_collector_flags_and_yaml(tmp_path: Any) -> None:
    f = tmp_path / "c.yml"
    f.write_text("targets:\n"
                 "  - {name: a, project_id: p1, region: cn-north-4, auth_token: t, sync_tasks: true}\n"
                 "  - {name: b, project_id: p2, region: cn-north-4, auth_token: t, task_groups: true}\n"
                 "  - {name: c, project_id: p3, region: cn-north-4, auth_token: t}\n")
    settings = load({"collectors": {"task_groups": "false", "sync_tasks": "false"}}, f, switches=switches())
    lists = {t.name: (settings.lists(t, "task_groups"), settings.lists(t, "sync_tasks")) for t in settings.targets}
    assert lists == {"a": (False, True), "b": (True, False), "c": (False, False)}
    defaults = load({}, f, switches=switches())
    assert all(defaults.lists(t, c) for t in defaults.targets for c in ("task_groups", "sync_tasks"))


def test_collector_flags_on_the_command_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from oms_exporter.cli import main

    f = tmp_path / "c.yml"
    f.write_text("targets:\n  - {name: a, project_id: p1, region: cn-north-4, auth_token: t}\n"
                 "  - {name: b, project_id: p2, region: cn-north-4, auth_token: t, sync_tasks: true}\n")
    assert main(["--config.file", str(f), "--no-collector.task-groups", "--collector.sync-tasks=false",
                 "--check-config"]) == 0
    out = capsys.readouterr().out
    assert "target a: project p1" in out and out.split("target a:")[1].split("\n")[0].endswith("collectors tasks")
    assert "collectors tasks, sync_tasks" in out.split("target b:")[1]
    try:
        code = main(["--config.file", str(f), "--collector.task-groups=maybe", "--check-config"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--collector.task-groups" in err[0]


# --- a region without sync tasks --------------------------------------------------------------

async def test_a_region_without_sync_tasks_is_no_failure(sim: StandIn, exporter: Exporter, clock: ManualClock,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    put_known_sync(sim, clock)
    sim.sync_supported = False
    caplog.set_level(logging.INFO)
    client = await exporter()
    for _ in range(3):
        s = await scrape(client)
        assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 1
        assert not any(n.startswith("oms_sync_task") for n in names(s))
        assert sum(values(s, "oms_scrape_errors_total", project_id=PROJECT).values()) == 0
        assert value(s, "oms_up", project_id=PROJECT) == 1
    lines = [r for r in caplog.records if "sync tasks are not offered" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert [q for p, q in sim.calls if "/sync-tasks/" in p] == []
    sim.sync_supported = True  # the region publishes them now
    s = await scrape(client)
    assert sync_value(s, "oms_sync_task_status", status="synchronizing") == 1
    assert any("offered in this region again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("status, body, reason", [
    (404, {"error_code": "OMS.1009", "error_msg": "No resources found."}, "http_4xx"),
    (403, {"error_code": "OMS.0206", "error_msg": "insufficient permissions"}, "http_4xx"),
    (404, b"<html>not found</html>", "http_4xx"),
    (503, {"error_code": "OMS.1001", "error_msg": "Internal error"}, "http_5xx"),
])
async def test_any_other_sync_api_error_is_a_failure(status: int, body: Any, reason: str, sim: StandIn,
                                                     exporter: Exporter, clock: ManualClock) -> None:
    put_known_sync(sim, clock)
    put_known_group(sim)
    fault = (json_fault(status, body, times=100, api="sync-tasks") if isinstance(body, dict)
             else Fault(status=status, body=body, times=100, api="sync-tasks"))
    sim.inject(fault)
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason=reason) == 1
    assert not any(n.startswith("oms_sync_task") for n in names(s))
    # The others are served.
    assert value(s, "oms_up", project_id=PROJECT) == 1 and values(s, "oms_task_info")
    assert group_value(s, "oms_task_group_tasks") == 40


# --- one area failing, the others served -----------------------------------------------------

async def test_a_failing_group_api_leaves_tasks_and_sync_tasks_served(sim: StandIn, exporter: Exporter,
                                                                      clock: ManualClock) -> None:
    put_known_group(sim)
    put_known_sync(sim, clock)
    client = await exporter()
    s = await scrape(client)
    assert group_value(s, "oms_task_group_tasks") == 40
    sim.inject(status=502, times=100, api="taskgroups")
    s = await scrape(client)
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 0
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="tasks") == 1
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="http_5xx") == 1
    # Never the last listing's groups passed off as current, nor a half list: no group series.
    assert not any(n.startswith("oms_task_group") for n in names(s))
    assert value(s, "oms_up", project_id=PROJECT) == 1 and len(values(s, "oms_task_info")) > 100
    assert sync_value(s, "oms_sync_task_monthly_bytes") == 987_654_321


async def test_a_group_page_failing_mid_listing_serves_no_group(sim: StandIn, exporter: Exporter) -> None:
    for i in range(250):
        sim.put_group(PROJECT, {"group_id": f"g{i:04d}"})
    sim.inject(status=500, times=100, api="taskgroups", match=lambda r: r.query.get("offset") == "196")
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 0
    assert not any(n.startswith("oms_task_group") for n in names(s))


async def test_a_failing_task_listing_leaves_groups_and_sync_tasks_served(sim: StandIn, exporter: Exporter,
                                                                          clock: ManualClock) -> None:
    put_known_group(sim)
    put_known_sync(sim, clock)
    sim.inject(status=500, times=100)  # the task API only
    s = await scrape(await exporter())
    assert value(s, "oms_up", project_id=PROJECT) == 0
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="tasks") == 0
    assert values(s, "oms_task_info") == {}
    assert group_value(s, "oms_task_group_tasks") == 40
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 1
    assert sync_value(s, "oms_sync_task_status", status="synchronizing") == 1


async def test_a_hanging_group_api_times_out_alone(sim: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    put_known_sync(sim, clock)
    sim.inject(delay=60, status=200, times=100, api="taskgroups")
    client = await exporter()
    resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"})
    s = parse_metrics(await resp.text())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="timeout") == 1
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert sync_value(s, "oms_sync_task_status", status="synchronizing") == 1


async def test_a_malformed_sync_answer_is_bad_payload(sim: StandIn, exporter: Exporter, clock: ManualClock) -> None:
    put_known_sync(sim, clock)
    sim.inject(status=200, body=b"{not json", headers={"Content-Type": "application/json"}, times=100,
               api="sync-tasks", match=lambda r: "/sync-tasks/" in r.path)
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="bad_payload") == 1


async def test_the_probe_serves_groups_and_sync_tasks_of_its_target(sim: StandIn, exporter: Exporter,
                                                                    clock: ManualClock) -> None:
    put_known_group(sim)
    put_known_sync(sim, clock)
    s = await scrape(await exporter(), "/probe?target=main")
    assert group_value(s, "oms_task_group_tasks") == 40
    assert sync_value(s, "oms_sync_task_monthly_bytes") == 987_654_321


# --- review findings: edges between the areas ------------------------------------------------

async def test_show_sync_task_not_published_means_not_offered(sim: StandIn, exporter: Exporter, clock: ManualClock,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The gateway's 404 APIGW.0101 to ShowSyncTask is the region's answer, not a deleted sync task."""
    put_known_sync(sim, clock)
    sim.inject(json_fault(404, {"error_code": "APIGW.0101", "error_msg": "The API does not exist"}, times=100,
                          api="sync-tasks", match=lambda r: "/sync-tasks/" in r.path))
    caplog.set_level(logging.INFO)
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 1
    assert not any(n.startswith("oms_sync_task") for n in names(s))
    assert sum(values(s, "oms_scrape_errors_total", project_id=PROJECT).values()) == 0
    assert any("sync tasks are not offered" in r.getMessage() for r in caplog.records)


async def test_a_failed_sync_listing_does_not_flip_the_offered_state(sim: StandIn, exporter: Exporter,
                                                                     clock: ManualClock,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    put_known_sync(sim, clock)
    sim.sync_supported = False
    caplog.set_level(logging.INFO)
    client = await exporter()
    await scrape(client)
    sim.inject(status=503, times=100, api="sync-tasks")
    for _ in range(2):
        s = await scrape(client)
        assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 0
    sim.faults.clear()
    s = await scrape(client)
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 1
    offered = [r.getMessage() for r in caplog.records if "offered in this region" in r.getMessage()]
    assert offered == ["sync tasks are not offered in this region: no sync-task series"]


async def test_a_hanging_credentials_probe_does_not_hold_up_the_other_areas(
        sim: StandIn, exporter: Exporter, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request tries the credentials alone; if it hangs, the others go on after a moment."""
    monkeypatch.setattr(OmsClient, "PROBE_WAIT", 0.2)
    put_known_group(sim)
    put_known_sync(sim, clock)
    sim.inject(delay=60, status=200, times=1, api="*")  # the very first OMS request hangs
    client = await exporter()
    resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
    s = parse_metrics(await resp.text())
    served = {dict(lab)["collector"]: v for lab, v in values(s, "oms_collector_success", project_id=PROJECT).items()}
    assert sorted(served.values()) == [0, 1, 1]  # the area of the hung probe times out, alone
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="timeout") == 1


async def test_hanging_areas_do_not_starve_the_tasks_of_request_slots(sim: StandIn, exporter: Exporter,
                                                                       clock: ManualClock) -> None:
    put_known_group(sim)
    put_known_sync(sim, clock)
    sim.inject(delay=60, status=200, times=100, api="taskgroups")
    sim.inject(delay=60, status=200, times=100, api="sync-tasks")
    client = await exporter(max_concurrency=2)
    resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
    s = parse_metrics(await resp.text())
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert len(values(s, "oms_task_info")) == 250
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 0
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="sync_tasks") == 0


@pytest.mark.parametrize("number", [b"1" + b"0" * 400, b"-" + b"9" * 30, b"1e400"])
async def test_numbers_beyond_any_count_make_the_record_malformed(number: bytes, sim: StandIn, exporter: Exporter,
                                                                  clock: ManualClock) -> None:
    huge = msgspec.Raw(number)
    put_known_group(sim)
    sim.put_group(PROJECT, {"group_id": "huge", "total_size": 10, "complete_size": huge})
    put_known_sync(sim, clock)
    put_known_sync(sim, clock, "huge-sync", monthly_size=huge)  # type: ignore[arg-type]
    task = make_task(random.Random(3), 9_000_001, int(clock.time() * 1000), status=2)
    task["total_size"] = huge
    sim.put_task(PROJECT, task)
    resp = await (await exporter()).get("/metrics")
    assert resp.status == 200
    s = parse_metrics(await resp.text())
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert value(s, "oms_malformed_tasks", project_id=PROJECT) == 1
    assert values(s, "oms_task_info", task_id="9000001") == {}
    assert values(s, "oms_task_group_info", group_id="huge") == {} and group_value(s, "oms_task_group_tasks") == 40
    assert values(s, "oms_sync_task_info", sync_task_id="huge-sync") == {}
    assert sync_value(s, "oms_sync_task_monthly_bytes") == 987_654_321


async def test_an_area_that_raises_costs_that_area_only(sim: StandIn, exporter: Exporter, clock: ManualClock,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A bug in one collector (here: made to raise) fails it as `internal`; the others are served."""
    async def broken(self: GroupLister, deadline: float) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(GroupLister, "run", broken)
    put_known_sync(sim, clock)
    s = await scrape(await exporter())
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="task_groups") == 0
    assert value(s, "oms_scrape_errors_total", project_id=PROJECT, reason="internal") == 1
    assert value(s, "oms_up", project_id=PROJECT) == 1 and len(values(s, "oms_task_info")) == 250
    assert sync_value(s, "oms_sync_task_status", status="synchronizing") == 1
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


async def test_a_target_scoped_to_groups_serves_those_groups(sim: StandIn, oms: Any, exporter: Exporter) -> None:
    put_known_group(sim)
    sim.put_group(PROJECT, {"group_id": "other", "status": 5})
    s = await scrape(await exporter(targets=[target_for(oms, group_ids=[GROUP])]))
    assert set(dict(lab)["group_id"] for lab in values(s, "oms_task_group_info")) == {GROUP}
    assert sum(values(s, "oms_task_groups", project_id=PROJECT).values()) == 1
