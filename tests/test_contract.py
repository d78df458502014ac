"""The metrics contract of issue 2, checked end to end: stand-in -> HTTP -> exporter -> parsed /metrics."""

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from oms_exporter import __version__
from oms_exporter.area import Area
from oms_exporter.catalog import ALL_METRIC_NAMES, AREAS
from oms_exporter.groups import TASK_GROUPS
from oms_exporter.simulator import make_task
from oms_exporter.tasks import TASKS
from tests.conftest import PROJECT, TOTALS, parse_metrics, promtool, run, scrape, target_for, value, values

NOW_MS = 1_790_000_000_000
FULL = {
    "id": 9001, "name": "aws-logs", "status": 2, "progress": 0.522, "task_type": "prefix",
    "group_type": "GROUP_TASK", "group_id": "g-1", "task_priority": "HIGH",
    "src_node": {"cloud_type": "AWS", "region": "us-east-1", "bucket": "src-b"},
    "dst_node": {"region": "cn-north-4", "bucket": "dst-b"},
    "migrate_speed": 1048576, "total_num": 1000, "successful_num": 900, "failed_num": 7, "skipped_num": 3,
    "total_size": 2**40, "complete_size": 2**39, "real_size": 2**38,
    "start_time": NOW_MS, "total_time": 90_500, "left_time": 1_250,
    "bandwidth_policy": [{"start": "00:00", "end": "08:00", "max_bandwidth": 209715200},
                         {"start": "08:00", "end": "23:59", "max_bandwidth": 1048576}],
    "error_reason": {"error_code": "OMS.1201", "error_msg": "access denied"},
    "enable_kms": True, "a_field_from_a_newer_api": [1, {"x": None}],
}
TASK = dict(project_id=PROJECT, task_id="9001")


@pytest.fixture
def one_task(sim):
    sim.clear(PROJECT)
    sim.put_task(PROJECT, dict(FULL))
    return sim


async def test_every_task_field_maps_to_its_metric(one_task, exporter):
    s = await scrape(await exporter(finished_task_max_age=0))
    info = values(s, "oms_task_info", **TASK)
    assert list(info.values()) == [1]
    assert dict(next(iter(info))) == {
        **TASK, "name": "aws-logs", "group_id": "g-1", "group_type": "GROUP_TASK", "task_type": "prefix",
        "priority": "HIGH", "src_cloud": "AWS", "src_region": "us-east-1", "src_bucket": "src-b",
        "dst_region": "cn-north-4", "dst_bucket": "dst-b"}
    assert value(s, "oms_task_status_code", **TASK) == 2
    status = {dict(lab)["status"]: v for lab, v in values(s, "oms_task_status", **TASK).items()}
    assert status == {"waiting": 0, "migrating": 1, "paused": 0, "failed": 0, "succeeded": 0,
                      "retrying": 0, "pausing": 0}
    bw = {(dict(lab)["start"], dict(lab)["end"]): v
          for lab, v in values(s, "oms_task_bandwidth_limit_bytes_per_second", **TASK).items()}
    assert bw == {("00:00", "08:00"): 209715200, ("08:00", "23:59"): 1048576}
    err = values(s, "oms_task_error_info", **TASK)
    assert [(dict(lab)["error_code"], dict(lab)["error_msg"], v) for lab, v in err.items()] == [
        ("OMS.1201", "access denied", 1)]


async def test_absent_or_null_numbers_give_no_series(one_task, exporter):
    one_task.patch_task(PROJECT, 9001, progress=None, error_reason="", bandwidth_policy=None)
    del one_task.projects[PROJECT][9001]["left_time"]
    s = await scrape(await exporter(finished_task_max_age=0))
    assert values(s, "oms_task_progress_ratio", **TASK) == {}
    assert values(s, "oms_task_remaining_seconds", **TASK) == {}
    assert values(s, "oms_task_error_info", **TASK) == {}
    assert values(s, "oms_task_bandwidth_limit_bytes_per_second", **TASK) == {}
    assert value(s, "oms_task_objects", **TASK) == 1000


async def test_project_series_and_all_seven_states(sim, exporter):
    s = await scrape(await exporter(finished_task_max_age=0))
    counts = {dict(lab)["status"]: v for lab, v in values(s, "oms_tasks", project_id=PROJECT).items()}
    assert set(counts) == {"waiting", "migrating", "paused", "failed", "succeeded", "retrying", "pausing"}
    truth = {}
    for t in sim.projects[PROJECT].values():
        truth[t["status"]] = truth.get(t["status"], 0) + 1
    names = ["waiting", "migrating", "paused", "failed", "succeeded", "retrying", "pausing"]
    assert counts == {n: truth.get(i + 1, 0) for i, n in enumerate(names)}
    assert sum(counts.values()) == 250
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert value(s, "oms_scrape_duration_seconds", project_id=PROJECT) > 0
    assert value(s, "oms_malformed_tasks", project_id=PROJECT) == 0
    # Every OMS series carries project_id.
    for (name, labels) in s:
        if name.startswith("oms_") and not name.startswith(("oms_exporter_", "oms_api_")):
            assert dict(labels).get("project_id") == PROJECT, name


async def test_exporter_wide_series(sim, exporter):
    client = await exporter()
    await scrape(client)
    text = await (await client.get("/metrics")).text()
    s = parse_metrics(text)
    assert value(s, "oms_exporter_build_info", version=__version__) == 1
    assert value(s, "oms_api_requests_total", project_id=PROJECT, code="200") == len(sim.calls)
    assert any(n == "process_resident_memory_bytes" for n, _ in s)
    # No `_created` samples of counters (prometheus_client adds them unless told not to); the
    # task-group gauges named after OMS's own "created" counts are the only `_created` names.
    assert {n for n, _ in s if n.endswith("_created")} <= {"oms_task_group_tasks_created",
                                                           "oms_task_group_objects_created"}
    assert "_total_created" not in text and "_count_created" not in text
    produced = {n for n, _ in s if n.startswith("oms_")}
    assert produced <= ALL_METRIC_NAMES | {"oms_api_request_duration_seconds_bucket"}


async def test_a_task_that_vanishes_upstream_vanishes_from_metrics(sim, exporter):
    client = await exporter(finished_task_max_age=0)
    first = await scrape(client)
    gone = next(iter(sim.projects[PROJECT]))
    assert values(first, "oms_task_info", task_id=str(gone))
    sim.remove_task(PROJECT, gone)
    second = await scrape(client)
    assert not [k for k in second if dict(k[1]).get("task_id") == str(gone)]
    assert len(values(second, "oms_task_info")) == 249


async def test_old_finished_tasks_count_but_have_no_series(sim, exporter):
    sim.put_task(PROJECT, {**make_task(__import__("random").Random(1), 99999, 0, status=5),
                           "start_time": 1_000_000, "total_time": 5_000})
    s = await scrape(await exporter(finished_task_max_age=7 * 86400))
    assert values(s, "oms_task_info", task_id="99999") == {}
    assert sum(values(s, "oms_tasks", status="succeeded").values()) == sum(
        1 for t in sim.projects[PROJECT].values() if t["status"] == 5)
    s = await scrape(await exporter(per_task_series=False))
    assert values(s, "oms_task_info") == {} and values(s, "oms_tasks")


NASTY = ['quote " and \\ backslash', "new\nline", "迁移任务", "emoji 🚚📦", "trailing \\", "{curly}=,"]


async def test_label_values_are_escaped_for_any_name(one_task, exporter, tmp_path):
    for i, name in enumerate(NASTY):
        one_task.put_task(PROJECT, {**FULL, "id": 100 + i, "name": name,
                                    "error_reason": {"error_code": "E", "error_msg": name}})
    client = await exporter(finished_task_max_age=0)
    text = await (await client.get("/metrics")).text()
    s = parse_metrics(text)
    names = {dict(lab)["name"] for lab in values(s, "oms_task_info")}
    assert set(NASTY) <= names
    msgs = {dict(lab)["error_msg"] for lab in values(s, "oms_task_error_info")}
    assert set(NASTY) <= msgs
    res = run(promtool(), "check", "metrics", input=text)
    # promtool lints naming conventions too; only real format errors fail the check.
    problems = [ln for ln in res.stderr.splitlines() if "error while linting" in ln or "parse" in ln]
    assert res.returncode in (0, 3) and not problems, res.stderr


async def test_openmetrics_is_served_when_asked(exporter):
    client = await exporter()
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await resp.text()
    assert text.endswith("# EOF\n")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    assert any(f.name == "oms_up" for f in text_string_to_metric_families(text))


async def test_probe_serves_one_target_and_refuses_unknown(sim, oms, exporter):
    other = "p0000000000000000000000000000002"
    sim.add_project(other, [dict(FULL)])
    client = await exporter(targets=[target_for(oms), target_for(oms, name="second", project_id=other)])
    s = await scrape(client, "/probe?target=second")
    assert value(s, "oms_up", project_id=other) == 1
    assert values(s, "oms_up", project_id=PROJECT) == {}
    assert not any(n.startswith("process_") for n, _ in s)
    before = len(sim.requests)
    for bad in ("/probe", "/probe?target=nope", "/probe?target=http://evil.example", "/probe?target=" + "x" * 300):
        resp = await client.get(bad)
        assert resp.status == 400
    assert len(sim.requests) == before
    s = await scrape(client)
    assert value(s, "oms_up", project_id=other) == 1 and value(s, "oms_up", project_id=PROJECT) == 1


async def test_landing_page_and_healthz(exporter):
    client = await exporter()
    page = await (await client.get("/")).text()
    assert 'href="/metrics"' in page and 'href="/probe?target=main"' in page and "/healthz" in page
    resp = await client.get("/healthz")
    assert resp.status == 200


async def test_min_interval_serves_the_same_listing_and_says_how_old_it_is(sim, exporter, clock):
    client = await exporter(min_interval=0.5)
    first = await scrape(client)
    taken = value(first, "oms_listing_timestamp_seconds", project_id=PROJECT)
    requests = len(sim.requests)
    again = await scrape(client)
    assert len(sim.requests) == requests  # served again, OMS not asked
    assert value(again, "oms_listing_timestamp_seconds", project_id=PROJECT) == taken
    clock.advance(0.6)
    later = await scrape(client)
    assert len(sim.requests) > requests
    assert value(later, "oms_listing_timestamp_seconds", project_id=PROJECT) > taken


# --- issue 12: what stays, what goes, and totals that do not depend on it ------------------------

DAY_MS = 86_400_000
STATES = ["waiting", "migrating", "paused", "failed", "succeeded", "retrying", "pausing"]


def _totals(s):
    return {(name, dict(lab)["status"]): v for name in TOTALS for lab, v in values(s, name).items()}


def _ended_days_ago(days, **fields):
    import time as _time
    now_ms = int(_time.time() * 1000)
    return {"start_time": now_ms - int(days * DAY_MS) - 3_600_000, "total_time": 3_600_000, **fields}


async def test_totals_are_sums_over_every_task_per_state(sim, exporter):
    sim.patch_task(PROJECT, 1, total_size=None)  # absent values count as 0
    del sim.projects[PROJECT][2]["real_size"]
    for per_task_series in (True, False):
        s = await scrape(await exporter(per_task_series=per_task_series))
        got = _totals(s)
        assert {st for _, st in got} == set(STATES)  # all seven, always
        for name, field in TOTALS.items():
            for code, state in enumerate(STATES, start=1):
                want = sum(t.get(field) or 0 for t in sim.projects[PROJECT].values() if t["status"] == code)
                assert got[(name, state)] == want, (name, state)


async def test_a_task_that_failed_long_ago_keeps_its_series(sim, exporter):
    sim.patch_task(PROJECT, 5, status=4, **_ended_days_ago(9),
                   error_reason={"error_code": "OMS.1105", "error_msg": "The destination bucket does not exist."})
    s = await scrape(await exporter())  # default settings: --oms.finished-task-max-age 7d
    assert value(s, "oms_task_status", project_id=PROJECT, task_id="5", status="failed") == 1
    assert values(s, "oms_task_error_info", project_id=PROJECT, task_id="5")
    # The opt-in flag drops it, and only it decides for failed tasks.
    s = await scrape(await exporter(failed_task_max_age=8 * 86400))
    assert values(s, "oms_task_info", task_id="5") == {}
    assert value(s, "oms_tasks", project_id=PROJECT, status="failed") == sum(
        1 for t in sim.projects[PROJECT].values() if t["status"] == 4)


@pytest.mark.parametrize("listing", ["liveness", "full"])
async def test_succeeded_tasks_past_the_max_age_lose_their_series_and_totals_do_not_move(
        sim, exporter, clock, listing):
    sim.patch_task(PROJECT, 5, status=5, **_ended_days_ago(6.9))
    client = await exporter(listing=listing)
    first = await scrape(client)
    assert values(first, "oms_task_info", task_id="5")
    clock.advance(86400)  # a day later
    second = await scrape(client)
    assert values(second, "oms_task_info", task_id="5") == {}
    assert not [k for k in second if dict(k[1]).get("task_id") == "5"]
    assert len(_totals(first)) == len(TOTALS) * len(STATES)
    assert _totals(second) == _totals(first)
    assert values(second, "oms_tasks") == values(first, "oms_tasks")


async def test_every_error_reason_is_exported_at_zero_from_the_first_scrape(sim, oms, exporter):
    from oms_exporter.metrics import ERROR_REASONS, KNOWN_API_CODES
    other = "p0000000000000000000000000000002"
    sim.add_project(other, [dict(FULL)])
    s = await scrape(await exporter(targets=[target_for(oms), target_for(oms, name="second", project_id=other)]))
    for pid in (PROJECT, other):
        assert value(s, "oms_up", project_id=pid) == 1
        reasons = {dict(lab)["reason"]: v for lab, v in values(s, "oms_scrape_errors_total", project_id=pid).items()}
        assert reasons == dict.fromkeys(ERROR_REASONS, 0)
        codes = {dict(lab)["code"] for lab in values(s, "oms_api_requests_total", project_id=pid)}
        assert set(KNOWN_API_CODES) <= codes
        assert value(s, "oms_api_request_duration_seconds_count", project_id=pid) >= 1


async def test_an_old_failed_task_fires_oms_task_failed_in_promtool(sim, exporter, tmp_path):
    """The exporter's own output for a task that failed nine days ago, fed to the shipped alert rules."""
    import yaml

    from tests.shipped import ALERTS_FILE, RECORDING_FILE
    sim.patch_task(PROJECT, 5, status=4, name="old-failure", **_ended_days_ago(9),
                   error_reason={"error_code": "OMS.1105", "error_msg": "The destination bucket does not exist."})
    s = await scrape(await exporter())
    series = []
    for (name, labels), v in s.items():
        if dict(labels).get("task_id") == "5" and name in ("oms_task_status", "oms_task_info", "oms_task_error_info"):
            sel = ",".join(f'{k}="{v_}"' for k, v_ in sorted(labels))
            series.append({"series": f"{name}{{{sel}}}", "values": f"{v:g}x15"})
    assert len(series) == 9  # seven states, info, error
    info = dict(next(iter(values(s, "oms_task_info", task_id="5"))))
    test = {"rule_files": [ALERTS_FILE.name, RECORDING_FILE.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [{"eval_time": "10m", "alertname": "OmsTaskFailed", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "project_id": PROJECT, "task_id": "5", "status": "failed",
                           "name": "old-failure", "src_bucket": info["src_bucket"], "dst_bucket": info["dst_bucket"]},
            "exp_annotations": {
                "summary": 'OMS task "old-failure" failed',
                "description": f'Migration task "old-failure" (id 5, project {PROJECT}) from bucket '
                               f'{info["src_bucket"]} to {info["dst_bucket"]} has failed: OMS.1105 The destination '
                               f'bucket does not exist..'}}]}]}]}
    for f in (ALERTS_FILE, RECORDING_FILE):
        (tmp_path / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "t.yml").write_text(yaml.safe_dump(test), encoding="utf-8")
    res = run(promtool(), "test", "rules", "t.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


# --- every gauge of every area reads its wire field (a new one is covered without a line here) -----

def _wire_record(area: Area) -> dict[str, Any]:
    """A record of `area` whose every number field has its own value (1001, 1002, ...), by wire name."""
    out: dict[str, Any] = {}
    for i, f in enumerate(msgspec.structs.fields(area.record)):
        if f.encode_name.endswith("(derived)") or f.name == "id":
            continue
        if "int" in str(f.type) and "str" not in str(f.type):  # a number field (model.Num, a status code)
            out[f.encode_name] = 1001 + i
    if "status" in out:
        out["status"] = 2  # a state code must be one of the documented ones
    return out


def _put(sim: Any, area: Area, fields: dict[str, Any], now_ms: int) -> str:
    """Put one record of `area` with `fields` into the stand-in; its id."""
    if area is TASKS:
        sim.put_task(PROJECT, {**FULL, **fields, "id": 9001})
        return "9001"
    if area is TASK_GROUPS:
        sim.put_group(PROJECT, {"group_id": "g-9", "status": 2, **fields})
        return "g-9"
    month = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m")
    counters = {k: fields.pop(k) for k in list(fields) if k.startswith("monthly_")}
    sim.put_sync_task(PROJECT, {"sync_task_id": "s-9", **fields, "monthly": {month: counters}})
    return "s-9"


@pytest.mark.parametrize("area", AREAS, ids=lambda a: a.name)
async def test_every_gauge_reads_its_wire_field(sim: Any, exporter: Any, clock: Any, area: Area) -> None:
    """Each gauge family of each area serves its record field, found by the field's wire name (ms
    as seconds): a new number is its record field and its family, and this test covers it."""
    sim.clear(PROJECT)
    wire = _wire_record(area)
    rid = _put(sim, area, dict(wire), int(clock.time() * 1000))
    s = await scrape(await exporter(finished_task_max_age=0))
    names = {f.name: f.encode_name for f in msgspec.structs.fields(area.record)}
    gauges = [f for f in area.families if f.gauge and not names[f.fields[0]].endswith("(derived)")]
    assert gauges
    for family in gauges:
        # The README's "from" column names the wire field the family reads: the two agree.
        assert f"`{names[family.fields[0]]}`" in family.source, family.name
        want = wire[names[family.fields[0]]] / family.divisor
        got = value(s, family.name, project_id=PROJECT, **{area.kind.id_label: rid})
        assert got == pytest.approx(want), family.name
