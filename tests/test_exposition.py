"""The fast encoder writes exactly the bytes prometheus_client writes for SnapshotCollector."""

from __future__ import annotations

import gc
import gzip
import math
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from oms_exporter import exposition as x
from oms_exporter.collector import SnapshotCollector
from oms_exporter.errors import Timeout
from oms_exporter.listing import Listing
from oms_exporter.model import BandwidthWindow, DstNode, ErrorReason, Node, SyncTask, Task, TaskGroup
from oms_exporter.settings import Target
from oms_exporter.snapshot import SeriesPolicy
from oms_exporter.tasks import FAMILIES as TASK_FAMILIES
from tests.conftest import make_listing

NOW = 1_750_000_000.0  # listing time (s)


DAY_MS = 86_400_000

ACCEPTS = [
    "",  # text 0.0.4
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    # What Prometheus 3 sends.
    ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
     "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,"
     "*/*;q=0.2"),
]

ODD_TEXTS = ['quote "q"', "back\\slash \\n not a newline", "line\nbreak", "迁移任务-日志", "emoji 🚚📦",
             "tab\there", "", "{braces} {0} {{x}}", "trailing\\", 'all "\\\n" three']


def target(pid: str = "p0000000000000000000000000000001", name: str = "main") -> Target:
    return Target(name=name, project_id=pid, region="cn-north-4", auth_token="t")


def listing(tgt: Target, tasks: list[Task], **fields: Any) -> Listing:
    return make_listing(tgt, NOW, tasks, **fields)


def flat(fields: dict[str, Any]) -> dict[str, Any]:
    """Record fields with the flat names tests use (src_cloud, dst_bucket, error_code, ...) as the record's."""
    src = {k.removeprefix("src_"): fields.pop(k) for k in ("src_cloud", "src_region", "src_bucket") if k in fields}
    if "cloud" in src:
        src["cloud_type"] = src.pop("cloud")
    dst = {k.removeprefix("dst_"): fields.pop(k) for k in ("dst_region", "dst_bucket") if k in fields}
    if src:
        fields["src"] = Node(**src)
    if dst:
        fields["dst"] = DstNode(**dst)
    if "error_code" in fields or "error_msg" in fields:
        fields["error_reason"] = ErrorReason(fields.pop("error_code", ""), fields.pop("error_msg", ""))
    return fields


def task(task_id: int, **fields: object) -> Task:
    base: dict[str, object] = dict(
        id=task_id, name=f"aws-logs-{task_id}", group_id="", group_type="NORMAL_TASK", task_type="object",
        priority="HIGH", src_cloud="AWS", src_region="us-east-1", src_bucket="src", dst_region="cn-north-4",
        dst_bucket="dst", status=2, progress=0.5, migrate_speed=1048576, total_num=10, successful_num=5,
        failed_num=0, skipped_num=0, total_size=1 << 40, complete_size=1 << 39, real_size=123456789,
        start_time_ms=(NOW - 3600) * 1000, total_time_ms=3_600_000, left_time_ms=3_600_000,
        bandwidth=(), error_code="", error_msg="")
    base.update(fields)
    return Task(**flat(base))


def group(**fields: Any) -> TaskGroup:
    return TaskGroup(**flat(fields))


def sync(**fields: Any) -> SyncTask:
    return SyncTask(**fields)


def odd_tasks() -> list[Task]:
    """Every escaping and number-formatting case in one listing."""
    tasks = [task(i, name=s, src_bucket=s, error_code="OMS.1" if i % 2 else "", error_msg=s if i % 3 else "")
             for i, s in enumerate(ODD_TEXTS, start=1)]
    numbers = [0, 1, -1, 0.1, 1e-7, -2.5, 123456, 1234567, 1_000_000, 2**53 - 1, 2**53 + 1, 2**64 + 12345,
               -(2**60), math.inf, -math.inf, 1e300, 5e-324, 1.5e16, 0.30000000000000004, 12345678.9]
    for i, v in enumerate(numbers, start=100):
        tasks.append(task(i, progress=v, total_size=v, real_size=v, migrate_speed=v, start_time_ms=v,
                          left_time_ms=v, status=(i % 9) or None))
    tasks += [
        # Absent numeric fields: no series at all for them.
        task(200, status=None, progress=None, migrate_speed=None, total_num=None, successful_num=None,
             failed_num=None, skipped_num=None, total_size=None, complete_size=None, real_size=None,
             start_time_ms=None, total_time_ms=None, left_time_ms=None),
        # Bandwidth windows, a repeated one and one without a limit.
        task(201, bandwidth=(BandwidthWindow("00:00", "08:00", 209715200), BandwidthWindow("08:00", "23:59", 1.5),
                             BandwidthWindow("00:00", "08:00", 1), BandwidthWindow('"q"\n', "\\", None),
                             BandwidthWindow("夜", "🚚", 2**53 + 1))),
        task(202, status=4, error_code='E"1\\', error_msg="失败：access denied\nretry 🚚"),
        task(203, status=9),  # a status code OMS may add later
        # Finished long ago (dropped by a 7-day max age) and recently (kept).
        task(204, status=5, start_time_ms=(NOW - 30 * 86400) * 1000, total_time_ms=DAY_MS),
        task(205, status=4, start_time_ms=(NOW - 3 * 86400) * 1000, total_time_ms=DAY_MS),
        task(206, status=5, start_time_ms=None),
    ]
    return tasks


def groups() -> list[TaskGroup]:
    """Task groups with every kind of value: odd texts, nulls, an unknown state, huge and tiny numbers."""
    full = group(
        id="0f1e2d3c4b5a69788796a5b4c3d2e1f0", status=2, src_cloud="AWS", src_region="us-east-1",
        src_bucket="src", dst_region="cn-north-4", dst_bucket="dst", task_type="PREFIX", total_task_num=40,
        create_task_num=12, executing_task_num=5, waiting_task_num=4, paused_task_num=1, failed_task_num=1,
        complete_task_num=1, total_num=4_000_000, create_complete_num=1_200_000, success_num=300_000, fail_num=7,
        skip_num=12, total_size=2 ** 64, create_complete_size=2 ** 60, complete_size=1e-7, migrate_speed=104857600,
        start_time_ms=(NOW - 7200) * 1000, total_time_ms=7_200_000, error_code="", error_msg="")
    return [
        full,
        group(id='odd "id" \\ 迁移', status=5, src_bucket=ODD_TEXTS[2], dst_bucket=ODD_TEXTS[7],
                  error_code="TRF.0159", error_msg=ODD_TEXTS[9], fail_num=-0.0),
        group(id="unknown-state", status=12, total_size=0, complete_size=0),
        group(id="no-state"),
    ]


def syncs() -> list[SyncTask]:
    return [
        SyncTask(id="4fb05cd2-c94e-44e4-a07f-e65a2f01ebcb", status="SYNCHRONIZING", src_cloud="AWS",
                 src_region="eu-west-1", src_bucket=ODD_TEXTS[0], dst_region="cn-north-4", dst_bucket="dst",
                 last_start_time_ms=(NOW - 86400) * 1000, monthly_requested=120_000, monthly_succeeded=118_000,
                 monthly_failed=40, monthly_skipped=1960, monthly_bytes=3.1e11),
        SyncTask(id="stopped", status="STOPPED", monthly_failed=0, monthly_bytes=None),
        SyncTask(id="paused?", status="PAUSED"),
    ]


def listings() -> list[Listing]:
    ok = listing(target(), odd_tasks(), malformed=2, duration=0.123456789, requests=3, groups=groups(),
                 syncs=syncs())
    other = listing(target("p2", "second"), [task(7), task(8, status=1)], duration=1e-7)
    # The tasks failed, the groups did not: the groups are served; the sync tasks failed too.
    failed = listing(target("p3", "third"), [], error=Timeout("x"), duration=10.5, groups=groups()[:1],
                     sync_error=Timeout("x"))
    return [ok, failed, other]


def reference(lsts: list[Listing], policy: SeriesPolicy, accept: str, extra: CollectorRegistry | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lsts, policy))
    if extra is not None:
        registry.register(extra)
    _, _, encoder = x.negotiate(accept)  # prometheus_client's encoder of the format negotiated
    return encoder(registry)


def fast(lsts: list[Listing], policy: SeriesPolicy, accept: str, cache: x.RecordLines | None = None) -> bytes:
    style, _, _ = x.negotiate(accept)
    assert style is not None
    return x.encode(lsts, policy, style, cache, tail=b"# EOF\n" if style.openmetrics else b"")


def stats() -> Any:
    """What the Renderer counts in, in one registry without process metrics (they move between encodes)."""
    registry = CollectorRegistry(auto_describe=True)
    Gauge("oms_exporter_build_info", "Version.", ["version"], registry=registry).labels("1").set(1)
    Counter("oms_api_requests", "Requests.", ["project_id", "code"], registry=registry).labels("p", "200").inc(3)
    Histogram("oms_api_request_duration_seconds", "Time.", ["project_id"], registry=registry).labels("p").observe(0.2)
    return SimpleNamespace(
        registry=registry, encodes=Counter("oms_exporter_encodes", "Encodes.", registry=registry),
        encoded_records=Counter("oms_exporter_encoded_records", "Records.", ["kind", "result"], registry=registry))


def rendered(st_: Any) -> float:
    return st_.registry.get_sample_value("oms_exporter_encoded_records_total",
                                         {"kind": "task", "result": "rendered"}) or 0


def reused(st_: Any) -> float:
    return st_.registry.get_sample_value("oms_exporter_encoded_records_total",
                                         {"kind": "task", "result": "reused"}) or 0


def encode_with(renderer: x.Renderer, lsts: list[Listing], policy: SeriesPolicy, accept: str) -> bytes:
    style, _, encoder = x.negotiate(accept)
    return renderer._encode(lsts, policy, False, style, encoder, False)


POLICIES = [SeriesPolicy(), SeriesPolicy(finished_task_max_age=0), SeriesPolicy(per_task_series=False),
            SeriesPolicy(finished_task_max_age=7 * 86400)]


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("policy", POLICIES, ids=["default", "keep-all", "aggregates-only", "7d"])
def test_identical_to_prometheus_client(accept: str, policy: SeriesPolicy) -> None:
    lsts = listings()
    want = reference(lsts, policy, accept)
    assert fast(lsts, policy, accept) == want
    assert want.count(b"\n") > 20


def test_the_cases_are_really_in_the_output() -> None:
    body = fast(listings(), SeriesPolicy(), "").decode()
    assert 'name="迁移任务-日志"' in body and 'name="emoji 🚚📦"' in body
    assert r'name="quote \"q\""' in body and r'name="line\nbreak"' in body and r'name="back\\slash' in body
    assert 'oms_task_progress_ratio{project_id="p0000000000000000000000000000001",task_id="113"} +Inf' in body
    assert "1.8446744073709564e+19" in body and "1e-07" in body and "-2.5" in body
    assert 'start="00:00",task_id="201"} 2.097152e+08' in body
    assert 'task_id="204"' not in body and 'task_id="205"' in body  # 7-day max age
    assert 'oms_up{project_id="p3"} 0.0' in body
    assert 'oms_task_info{dst_bucket="dst"' in body  # labels sorted, as prometheus_client writes them
    # Groups and sync tasks, also of a project whose task listing failed.
    p1 = 'project_id="p0000000000000000000000000000001"'
    assert 'oms_task_group_status{group_id="0f1e2d3c4b5a69788796a5b4c3d2e1f0",project_id="p3",status="migrating"} 1.0' \
        in body
    assert (r'oms_task_group_error_info{error_code="TRF.0159",error_msg="all \"\\\n\" three",'
            r'group_id="odd \"id\" \\ 迁移"') in body
    assert f'oms_task_group_status_code{{group_id="unknown-state",{p1}}} 12.0' in body
    assert f'group_id="unknown-state",{p1},status="failed"}} 0.0' in body
    assert 'oms_task_group_progress_ratio{group_id="unknown-state"' not in body  # total_size 0: no ratio
    assert 'oms_task_group_status{group_id="no-state"' not in body
    assert f'oms_sync_task_monthly_objects{{{p1},result="failed",sync_task_id="stopped"}} 0.0' in body
    assert f'oms_sync_task_monthly_bytes{{{p1},sync_task_id="stopped"}}' not in body
    assert f'oms_sync_tasks{{{p1},status="synchronizing"}} 1.0' in body
    assert 'oms_sync_tasks{project_id="p3"' not in body
    assert 'oms_collector_success{collector="sync_tasks",project_id="p3"} 0.0' in body


def test_reused_lines_follow_changes() -> None:
    """Second and later encodes reuse unchanged tasks' lines and still match the reference."""
    counts = stats()
    renderer = x.Renderer(counts)
    policy = SeriesPolicy(finished_task_max_age=0)
    lsts = listings()
    assert encode_with(renderer, lsts, policy, "") == reference(lsts, policy, "")
    first = rendered(counts)
    assert first == len(odd_tasks()) + 2 and reused(counts) == 0
    tasks = list(lsts[0].tasks)
    tasks[0] = replace(tasks[0], progress=0.75, name='moved "on"')
    del tasks[3]
    tasks.append(task(999, name="新"))
    lsts[0] = listing(target(), tasks, duration=0.5)
    # A fresh but equal record is reused too (each listing parses new Task objects).
    lsts[2] = listing(target("p2", "second"), [task(7), task(8, status=1)])
    assert encode_with(renderer, lsts, policy, "") == reference(lsts, policy, "")
    assert rendered(counts) - first == 2  # the changed task and the new one
    # Another format with the same lines shares them; one with other names renders its own.
    before = rendered(counts)
    accept = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"
    assert encode_with(renderer, lsts, policy, accept) == reference(lsts, policy, accept)
    assert rendered(counts) == before
    assert encode_with(renderer, lsts, policy, ACCEPTS[4]) == reference(lsts, policy, ACCEPTS[4])
    if x.negotiate(ACCEPTS[4])[0] != x.negotiate("")[0]:  # escaping=dots (prometheus_client 0.22 and later)
        assert rendered(counts) > before


def test_changed_values_written_differently_are_rendered_again() -> None:
    """Values that compare equal but are written differently (-0.0 and 0.0, 1 and 1.0) make new lines."""
    cache = x.RecordLines()
    policy = SeriesPolicy(finished_task_max_age=0)
    accept = ACCEPTS[6]
    before = [task(1, progress=0.0, total_num=1, failed_num=-0.0, bandwidth=(BandwidthWindow("a", "b", 0.0),)),
              task(2, status=2, name="same"), task(3, status=4, error_code="E", error_msg="m"),
              task(4, bandwidth=(BandwidthWindow("a", "b", 5),))]
    after = [replace(before[0], progress=-0.0, total_num=1.0, failed_num=0.0,
                     bandwidth=(BandwidthWindow("a", "b", -0.0),)),
             replace(before[1], status=5, progress=1.0),  # status block, status code and a gauge move
             replace(before[2], error_reason=ErrorReason("E", "m2"), left_time_ms=None),
             replace(before[3], bandwidth=(BandwidthWindow("a", "b", 5.0),), name="renamed")]
    for tasks in (before, after, before):
        lsts = [listing(target(), list(tasks), duration=0.5)]
        assert fast(lsts, policy, accept, cache) == reference(lsts, policy, accept)
    assert b'progress_ratio{project_id="p0000000000000000000000000000001",task_id="1"} -0.0' in \
        fast([listing(target(), after)], policy, accept, cache)


@pytest.mark.slow  # 6,006 tasks against prometheus_client's own encoder, six times
def test_many_tasks_moving_and_gzip() -> None:
    """Thousands of tasks, moving between encodes; the gzip body reads back identical."""
    policy = SeriesPolicy(finished_task_max_age=0)
    counts = stats()
    renderer = x.Renderer(counts)
    tasks = [task(i, status=(i % 7) + 1, progress=i / 3000, name=f"t{i}") for i in range(1, 6007)]
    for round_ in range(3):
        lsts = [listing(target(), list(tasks), duration=0.5)]
        for accept in (ACCEPTS[0], ACCEPTS[-1]):
            style, _, encoder = x.negotiate(accept)
            want = reference(lsts, policy, accept)
            assert renderer._encode(lsts, policy, False, style, encoder, False) == want
            zipped = renderer._encode(lsts, policy, False, style, encoder, True)
            assert zipped[:2] == b"\x1f\x8b" and gzip.decompress(zipped) == want
        tasks = [replace(t, progress=t.progress + 0.25, total_time_ms=t.total_time_ms + 15_000) if t.id % 4 == round_
                 else t for t in tasks]
    assert reused(counts) > 0


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("gzip_ok", [False, True])
def test_renderer_body_with_self_metrics(accept: str, gzip_ok: bool) -> None:
    """The /metrics body: OMS families then the exporter's own, in one text (one # EOF), counting this encode."""
    counts = stats()
    lsts, policy = listings(), SeriesPolicy()
    style, _, encoder = x.negotiate(accept)
    body = x.Renderer(counts)._encode(lsts, policy, True, style, encoder, gzip_ok)
    if gzip_ok:
        body = gzip.decompress(body)
    assert body == reference(lsts, policy, accept, counts.registry)
    assert b"oms_exporter_encodes_total 1.0" in body or b"oms_exporter_encodes_total 1.0" in body.replace(b"__", b"_")
    probe = x.Renderer(stats())._encode(lsts, policy, False, style, encoder, False)
    assert probe == reference(lsts, policy, accept)


@pytest.mark.parametrize("accept, openmetrics, escaping", [
    ("application/openmetrics-text;version=2.0.0", False, "underscores"),  # a version not written: text
    ("application/openmetrics-text;version=2.0.0;escaping=dots,application/openmetrics-text;version=1.0.0",
     True, "dots"),  # passed over; its known escaping counts, as in the Go client
    ("application/openmetrics-text;version=1.0.0;escaping=rot13", True, "underscores"),  # unknown: ignored
    ("text/plain;version=0.0.4;q=0.3,application/openmetrics-text;version=1.0.0;q=0.5", True, "underscores"),
    ("text/plain;version=9.9.9,*/*", False, "underscores"),
    ("application/openmetrics-text;version=1.0.0;q=0", False, "underscores"),  # q=0: not acceptable
    ("application/json", False, "underscores"),
])
def test_every_accept_goes_to_the_fast_encoder(accept: str, openmetrics: bool, escaping: str) -> None:
    """Issue 22, row 6: a version the exporter does not write gets the Go client's answer (the next
    clause, else text 0.0.4); the reference encoder is reachable from no header."""
    style, content_type, _ = x.negotiate(accept)
    assert style.openmetrics is openmetrics
    if "escaping" in content_type:  # prometheus_client 0.22 and later: the escaping asked for, when known
        assert style.escaping == escaping
    lsts = listings()
    assert x.Renderer(stats())._encode(lsts, SeriesPolicy(), False, style, x.negotiate(accept)[2], False) \
        == reference(lsts, SeriesPolicy(), accept)


texts = st.text(st.characters(codec="utf-8"), max_size=12)
numbers = st.one_of(st.none(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def tasks_strategy(draw: st.DrawFn) -> Task:
    n = {f: draw(numbers) for f in ("progress", "migrate_speed", "total_num", "successful_num", "failed_num",
                                   "skipped_num", "total_size", "complete_size", "real_size", "start_time_ms",
                                   "total_time_ms", "left_time_ms")}
    windows = tuple(BandwidthWindow(draw(texts), draw(texts), draw(numbers))
                    for _ in range(draw(st.integers(0, 3))))
    return task(draw(st.integers(0, 2**63)), name=draw(texts), group_id=draw(texts), src_bucket=draw(texts),
                status=draw(st.one_of(st.none(), st.integers(0, 9))), bandwidth=windows,
                error_code=draw(texts), error_msg=draw(texts), **n)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tasks_strategy(), max_size=6, unique_by=lambda t: t.id),
       st.sampled_from([ACCEPTS[0], ACCEPTS[2], ACCEPTS[6], ACCEPTS[10]]), st.sampled_from(POLICIES))
def test_any_task_data(tasks: list[Task], accept: str, policy: SeriesPolicy) -> None:
    lsts = [listing(target(), tasks, duration=0.25)]
    assert fast(lsts, policy, accept) == reference(lsts, policy, accept)


@st.composite
def groups_strategy(draw: st.DrawFn) -> TaskGroup:
    n = {f: draw(numbers) for f in ("total_task_num", "create_task_num", "executing_task_num", "waiting_task_num",
                                   "paused_task_num", "failed_task_num", "complete_task_num", "total_num",
                                   "create_complete_num", "success_num", "fail_num", "skip_num", "total_size",
                                   "create_complete_size", "complete_size", "migrate_speed", "start_time_ms",
                                   "total_time_ms", "progress")}
    n.pop("progress")  # derived from complete_size / total_size
    return group(id=draw(texts), status=draw(st.one_of(st.none(), st.integers(-1, 11))), src_bucket=draw(texts),
                 task_type=draw(texts), error_code=draw(texts), error_msg=draw(texts), **n)


@st.composite
def syncs_strategy(draw: st.DrawFn) -> SyncTask:
    n = {f: draw(numbers) for f in ("last_start_time_ms", "monthly_requested", "monthly_succeeded", "monthly_failed",
                                   "monthly_skipped", "monthly_bytes")}
    return SyncTask(id=draw(texts), status=draw(st.sampled_from([None, "SYNCHRONIZING", "STOPPED", "", "x"])),
                    dst_bucket=draw(texts), **n)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(groups_strategy(), max_size=5, unique_by=lambda g: g.id),
       st.lists(syncs_strategy(), max_size=5, unique_by=lambda s: s.id),
       st.lists(groups_strategy(), max_size=5, unique_by=lambda g: g.id),
       st.sampled_from([ACCEPTS[0], ACCEPTS[2], ACCEPTS[6], ACCEPTS[10]]))
def test_any_group_and_sync_data(first: list[TaskGroup], syncs_: list[SyncTask], then: list[TaskGroup],
                                 accept: str) -> None:
    """Any records, and any change of them between two encodes that share the line cache."""
    cache = x.RecordLines()
    for grps in (first, then):
        grps = sorted(grps, key=lambda g: g.id)
        lsts = [listing(target(), [task(1)], groups=grps, syncs=sorted(syncs_, key=lambda s: s.id))]
        assert fast(lsts, SeriesPolicy(), accept, cache) == reference(lsts, SeriesPolicy(), accept)


def test_go_float_matches_prometheus_client() -> None:
    from prometheus_client.utils import floatToGoString

    values = [0, 1, -1, 999_999, 1_000_000, 1_000_001, 10**15, 2**53 - 1, 2**53, 2**53 + 1, -(2**53) + 1,
              -(2**53) - 1, 10**16, 10**20, 0.1, 1e-7, -0.0, 1e22, math.inf, -math.inf]
    values += [7 ** k for k in range(40)] + [-(7 ** k) for k in range(40)]
    values += [1.5 * 7 ** k for k in range(40)] + [float(7 ** k) for k in range(40)]  # floats with 7+ digits
    values += [1234567.125, 1e6, 999999.9999, 1.7976931348623157e308, 5e-324]
    for v in values:
        assert x.go_float(v) == floatToGoString(v), v
    assert x.go_float(math.nan) == "NaN"



@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tasks_strategy(), min_size=1, max_size=4, unique_by=lambda t: t.id), st.data())
def test_any_change_between_encodes(first: list[Task], data: st.DataObject) -> None:
    """The same task ids with any new field values: the partly reused lines still match the reference."""
    fields = [f for f in Task.__struct_fields__ if f not in ("id", "error_code", "error_msg", "ended_ms", "clipped")]
    second = []
    for t in first:
        other = data.draw(tasks_strategy())
        moved = data.draw(st.sets(st.sampled_from(fields)))
        second.append(replace(t, **{f: getattr(other, f) for f in moved}))
    cache, policy = x.RecordLines(), SeriesPolicy(finished_task_max_age=0)
    for tasks in (first, second, first):
        lsts = [listing(target(), tasks, duration=0.25)]
        assert fast(lsts, policy, ACCEPTS[6], cache) == reference(lsts, policy, ACCEPTS[6])


def test_concurrent_encodes_of_one_project_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker threads encoding different listings of one project at once (the renderer's thread
    pool: /metrics and /probe, or listings that overlap) share cached lines; each body still
    equals the reference of its own listing."""
    policy = SeriesPolicy(finished_task_max_age=0)
    renderer = x.Renderer(stats())
    style, _, encoder = x.negotiate(ACCEPTS[0])
    assert style is not None
    failures: list[str] = []

    def worker(k: int) -> None:
        try:
            for r in range(30):
                n = 5 + (r * 7 + k * 13) % 30  # lists grow and shrink: lines added and forgotten
                tasks = [task(i, progress=(i + r + k) / 100) for i in range(1, n)]
                lsts = [listing(target(), tasks, duration=0.5)]
                body = renderer._encode(lsts, policy, False, style, encoder, gzip_ok=r % 2 == 0)
                text = gzip.decompress(body) if r % 2 == 0 else body
                if text != reference(lsts, policy, ACCEPTS[0]):
                    failures.append(f"thread {k} round {r}")
        except Exception as exc:  # reported by the assert below, with the thread's number
            failures.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_cached_lines_are_left_alone_by_the_garbage_collector() -> None:
    """Lines are bytes (or tuples of bytes), id lists tuples of ints, record lists tuples of gc=False
    records: after one collection the cyclic collector tracks none of them but the column lists
    and their runs, whatever the encode did (first encode, changes, growth, removals); the
    output stays the reference's."""
    policy, cache = SeriesPolicy(finished_task_max_age=0), x.RecordLines()
    tasks = [task(i, progress=i / 9000) for i in range(1, 211)]
    grown = [*tasks, task(250)]
    changed = [replace(t, progress=0.5) if t.id % 3 == 0 else t for t in grown]
    for tasks_ in (tasks, tasks, changed, grown, changed[5:-9:2]):
        lsts = [listing(target(), list(tasks_), duration=0.5)]
        assert fast(lsts, policy, ACCEPTS[0], cache) == reference(lsts, policy, ACCEPTS[0])
        gc.collect()
        entry = next(iter(cache._entries.values()))
        assert not gc.is_tracked(entry.ids) and not gc.is_tracked(entry.records)
        assert not any(gc.is_tracked(run._lines) for col in entry.cols for run in col if run._lines is not None)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tasks_strategy(), min_size=1, max_size=8, unique_by=lambda t: t.id), st.data())
def test_tasks_come_go_reorder_and_change_between_encodes(pool: list[Task], data: st.DataObject) -> None:
    """Any sequence of listings drawn from a pool of tasks (some gone, some new, some records
    changed), in runs of any length: each encode equals the reference, and so does its gzip body
    (which freezes the runs it does not change, and the next encode thaws what it changes)."""
    renderer, policy = x.Renderer(stats()), SeriesPolicy(finished_task_max_age=0)
    accept = data.draw(st.sampled_from([ACCEPTS[0], ACCEPTS[6]]))
    style, _, encoder = x.negotiate(accept)
    assert style is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(x, "CHUNK", data.draw(st.sampled_from([1, 2, 3, 2000])))
        for _ in range(4):
            tasks = data.draw(st.lists(st.sampled_from(pool), unique_by=lambda t: t.id))
            tasks = [replace(t, progress=data.draw(numbers)) if data.draw(st.booleans()) else t for t in tasks]
            lsts = [listing(target(), tasks, duration=0.25)]
            want = reference(lsts, policy, accept)
            gzip_first = data.draw(st.booleans())
            if gzip_first:
                assert gzip.decompress(renderer._encode(lsts, policy, False, style, encoder, True)) == want
            assert fast(lsts, policy, accept, renderer.lines) == want
            assert gzip.decompress(renderer._encode(lsts, policy, False, style, encoder, True)) == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tasks_strategy(), min_size=1, max_size=30, unique_by=lambda t: t.id), st.data())
def test_listings_in_id_order_with_tasks_gone_and_new_anywhere(pool: list[Task], data: st.DataObject) -> None:
    """Listings as the exporter makes them (in id order), tasks gone and new anywhere, runs of a
    few records: each body is the reference's, every run holds exactly the records between its
    start and the next, and a run kept from the encode before holds the same records as there."""
    pool = sorted(pool, key=lambda t: t.id)
    renderer, policy = x.Renderer(stats()), SeriesPolicy(finished_task_max_age=0)
    style, _, encoder = x.negotiate(ACCEPTS[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(x, "CHUNK", data.draw(st.sampled_from([1, 2, 3, 4])))
        kept: dict[Any, tuple[object, ...]] = {}  # the runs of the encode before, and their records
        for _ in range(5):
            chosen = data.draw(st.sets(st.integers(0, len(pool) - 1)))
            tasks = [replace(pool[i], progress=data.draw(numbers)) if data.draw(st.booleans()) else pool[i]
                     for i in sorted(chosen)]
            lsts = [listing(target(), tasks, duration=0.25)]
            gzip_ok = data.draw(st.booleans())
            body = renderer._encode(lsts, policy, False, style, encoder, gzip_ok)
            assert (gzip.decompress(body) if gzip_ok else body) == reference(lsts, policy, ACCEPTS[0])
            entry = next(iter(renderer.lines._entries.values()))
            sizes = [b - a for a, b in zip(entry.starts, [*entry.starts[1:], len(tasks)])]
            assert all(0 < n <= 2 * x.CHUNK for n in sizes)
            assert all([len(run) for run in col] == sizes for col in entry.cols)
            held = {id(run): entry.ids[a:a + len(run)] for col in entry.cols
                    for run, a in zip(col, entry.starts)}
            assert all(held[id(run)] == ids for run, ids in kept.items() if id(run) in held)
            kept = {run: entry.ids[a:a + len(run)] for col in entry.cols for run, a in zip(col, entry.starts)}


@pytest.mark.parametrize("chunk", [3, 2000])
@pytest.mark.parametrize("then", [["g1", "g1", "g3"], ["g4", "g5"], []], ids=["an id twice", "none kept", "none"])
def test_records_an_entry_cannot_keep_its_runs_for(monkeypatch: pytest.MonkeyPatch, chunk: int,
                                                   then: list[str]) -> None:
    """A list holding an id twice (no lister makes one, but encode() takes any) is no list in the same
    order, and one with nothing of the last is as a first: each body is still the reference's."""
    monkeypatch.setattr(x, "CHUNK", chunk)
    renderer, policy = x.Renderer(stats()), SeriesPolicy()
    style, _, encoder = x.negotiate(ACCEPTS[0])
    made = {name: group(id=name, status=2, total_num=int(name[1:])) for name in ("g1", "g2", "g3", "g4", "g5")}
    for names in (["g1", "g2", "g3"], then):
        lsts = [listing(target(), [task(1)], groups=[made[n] for n in names])]
        for gzip_ok in (True, False):
            body = renderer._encode(lsts, policy, False, style, encoder, gzip_ok)
            assert (gzip.decompress(body) if gzip_ok else body) == reference(lsts, policy, ACCEPTS[0])


def test_runs_an_encode_did_not_change_keep_their_compressed_text_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a gzip answer, a run no line of which changed holds its compressed text only (the
    memory of an account's finished tasks); one a live task changed in stays whole for the next
    change; runs of new records only are frozen as soon as written. Text answers read them all."""
    monkeypatch.setattr(x, "CHUNK", 10)
    renderer, policy = x.Renderer(stats()), SeriesPolicy(finished_task_max_age=0)
    style, _, encoder = x.negotiate(ACCEPTS[0])
    key = next(i for i, f in enumerate(f for f in TASK_FAMILIES if f.kind is not None)
               if f.name == "oms_task_progress_ratio")

    def encode(tasks: list[Task], gzip_ok: bool = True) -> list[bool]:
        lsts = [listing(target(), tasks, duration=0.5)]
        body = renderer._encode(lsts, policy, False, style, encoder, gzip_ok)
        assert (gzip.decompress(body) if gzip_ok else body) == reference(lsts, policy, ACCEPTS[0])
        entry = next(iter(renderer.lines._entries.values()))
        return [run._lines is None and run._text is None for run in entry.cols[key]]  # frozen, run by run

    tasks = [task(i, progress=i / 100) for i in range(1, 36)]
    assert encode(tasks) == [True] * 4  # a first encode: every run frozen as soon as written
    moving = [replace(t, progress=0.5) if t.id in (3, 33) else t for t in tasks]
    assert encode(moving) == [False, True, True, False]  # the runs tasks 3 and 33 changed in
    assert encode(moving, gzip_ok=False) == [False, True, True, False]  # a text answer freezes nothing
    grown = [*moving, task(40), task(41)]
    assert encode(grown) == [True] * 4  # unchanged since; the last run extended with new records
    assert encode([replace(t, progress=0.25) if t.id == 41 else t for t in grown]) == [True] * 3 + [False]
    fewer = [t for t in grown if t.id != 12]
    # a task gone: only its run is written again (and a text answer freezes nothing)
    assert encode(fewer, gzip_ok=False) == [True, False, True, False]
    assert encode(fewer) == [True] * 4


def test_an_unchanged_record_is_not_rendered_and_a_changed_one_only_in_its_changed_families(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Record identity is the cache key; within a changed record, families whose inputs are the same keep their line."""
    counts = stats()
    renderer, policy = x.Renderer(counts), SeriesPolicy(finished_task_max_age=0)
    first = [task(i, progress=i / 100) for i in range(1, 201)]
    assert encode_with(renderer, [listing(target(), first)], policy, ACCEPTS[6])
    assert rendered(counts) == 200
    written: dict[object, set[int]] = {}  # task id -> the families whose lines were written again
    render = x._KindRenderer.render
    monkeypatch.setattr(x._KindRenderer, "render", lambda self, r, p, pid: written.setdefault(r.id, set()).update(
        out := render(self, r, p, pid)) or out)
    second = [replace(t, progress=0.99) if t.id % 10 == 0 else t for t in first] + [task(501)]
    lsts = [listing(target(), second)]
    assert encode_with(renderer, lsts, policy, ACCEPTS[6]) == reference(lsts, policy, ACCEPTS[6])
    assert rendered(counts) == 200 + 20 + 1 and reused(counts) == 180
    assert sorted(written) == [*range(10, 201, 10), 501]
    info = [f.name for f in TASK_FAMILIES if f.kind is not None].index("oms_task_info")
    assert info in written[501] and info not in written[10]  # task 10's info line is kept
