"""Property-based tests: whatever OMS answers, the exporter answers a valid exposition.

Hypothesis generates task records and whole pages (any JSON shape, any strings, huge and
negative numbers, NaN and Infinity as Python's json writes them, missing keys, raw bytes).
Properties: nothing raises out of page parsing or the collector, the output always parses
with prometheus_client's parsers, has no duplicate series, and a sample passes
`promtool check metrics`.

Examples per test come from a hypothesis profile: `OMS_FUZZ_PROFILE=ci` (the default,
bounded for CI) or `dev` (more examples, for a local hunt).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from oms_exporter import exposition
from oms_exporter.catalog import AREAS
from oms_exporter.collector import SnapshotCollector
from oms_exporter.errors import BadPayload
from oms_exporter.listing import Listing
from oms_exporter.model import RecordParser, parse_task
from oms_exporter.pager import read_page
from oms_exporter.settings import Target
from oms_exporter.snapshot import SeriesPolicy
from oms_exporter.web import TIMEOUT_HEADER
from tests.conftest import PROJECT, Exporter, make_listing, parse_metrics, promtool, target_for, value, values
from tests.standin import StandIn

settings.register_profile("oms-fuzz-ci", max_examples=50, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("oms-fuzz-dev", parent=settings.get_profile("oms-fuzz-ci"), max_examples=1000)
PROFILE = settings.get_profile("oms-fuzz-" + os.environ.get("OMS_FUZZ_PROFILE", "ci"))
HTTP_PROFILE = settings(PROFILE, max_examples=max(PROFILE.max_examples // 2, 10))


# --- strategies ------------------------------------------------------------------------------

numbers = st.one_of(st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True))
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text())
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def plausible(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the documented type, sometimes anything at all."""
    return st.one_of(good, good, good, json_values)


label_text = st.text(max_size=40) | st.sampled_from(['迁移 "q" \\ \n', "\x00", "a\tb", "🚚" * 20, "}", "{x=\"\"}"])
node = st.fixed_dictionaries({}, optional={
    "cloud_type": plausible(label_text), "region": plausible(label_text), "bucket": plausible(label_text),
    "object_key": json_values})
window = st.fixed_dictionaries({}, optional={
    "start": plausible(label_text), "end": plausible(label_text), "max_bandwidth": plausible(numbers)})
NUMERIC = ("progress", "migrate_speed", "total_num", "successful_num", "failed_num", "skipped_num", "total_size",
           "complete_size", "real_size", "start_time", "total_time", "left_time")
task_records = st.fixed_dictionaries(
    {"id": plausible(st.integers(min_value=0, max_value=2**64) | st.integers(min_value=0, max_value=20))},
    optional={
        "name": plausible(label_text), "group_id": plausible(label_text), "group_type": plausible(label_text),
        "task_type": plausible(label_text), "task_priority": plausible(label_text),
        "status": plausible(st.integers(min_value=-1, max_value=9)),
        **{k: plausible(numbers) for k in NUMERIC},
        "src_node": plausible(node), "dst_node": plausible(node),
        "bandwidth_policy": plausible(st.lists(window, max_size=3)),
        "error_reason": plausible(st.fixed_dictionaries({}, optional={
            "error_code": plausible(label_text), "error_msg": plausible(label_text)}) | label_text),
        "enable_kms": json_values, "some_future_field": json_values,
    })
pages = st.one_of(
    st.fixed_dictionaries({"tasks": st.lists(plausible(task_records), max_size=8),
                           "count": plausible(st.integers(min_value=0, max_value=300))},
                          optional={"extra": json_values}),
    st.fixed_dictionaries({}, optional={"tasks": json_values, "count": json_values}),
    json_values,
)


def encode(doc: Any) -> bytes:
    # Python's json writes NaN/Infinity tokens and arbitrarily large integers.
    return json.dumps(doc, allow_nan=True).encode()


bodies = st.one_of(pages.map(encode), pages.map(encode), st.binary(max_size=200),
                   pages.map(lambda d: encode(d)[: max(len(encode(d)) // 2, 1)]))  # truncated

# --- helpers ---------------------------------------------------------------------------------

TARGET = Target(name="fuzz", project_id=PROJECT, region="cn-north-4", auth_token="t")
NOW = 1_750_000_000.0


def listing_of(body: bytes) -> Listing:
    """What the lister would make of `body` as the only page: a Listing, never an exception."""
    parser = RecordParser(parse_task)
    parser.begin()
    try:
        page, _, _ = read_page(body, parser, AREAS[0])
    except BadPayload as exc:
        return make_listing(TARGET, NOW, error=exc)
    tasks = {}
    for t in page:
        tasks.setdefault(t.id, t)
    return make_listing(TARGET, NOW, tasks.values(), malformed=len(parser.malformed))


def render(listings: list[Listing], accept: str = "") -> str:
    """The body the exporter serves (its fast encoder), checked against prometheus_client's own."""
    policy = SeriesPolicy(finished_task_max_age=0)
    style, _, encoder = exposition.negotiate(accept)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(listings, policy))
    reference = encoder(registry)
    assert style is not None
    served = exposition.encode(listings, policy, style, None, b"# EOF\n" if style.openmetrics else b"")
    assert served == reference
    return served.decode()


def check_text(text: str) -> dict[Any, float]:
    samples = parse_metrics(text)  # also fails on a duplicate series
    for (_name, labels), v in samples.items():
        assert isinstance(v, float)
        for _k, lv in labels:
            assert isinstance(lv, str)
    return samples


def promtool_check(text: str) -> None:
    proc = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stdout.decode()[-2000:], proc.stderr.decode()[-2000:])


# --- properties --------------------------------------------------------------------------------

@given(record=task_records)
@example(record={"id": 1, "progress": float("nan"), "total_size": float("inf"), "name": "\x00\n\"\\"})
@example(record={"id": 2**64, "total_num": -(2**80), "start_time": 2**80, "bandwidth_policy": [{}, {}]})
@settings(PROFILE)
def test_any_task_record_is_served_or_counted_as_malformed(record: dict[str, Any]) -> None:
    page = {"tasks": [record, {"id": 424242, "name": "the good one", "status": 2, "progress": 0.5}], "count": 2}
    listing = listing_of(encode(page))
    samples = check_text(render([listing]))
    if listing.up:
        # The well-formed neighbour is always served, whatever the other record holds.
        assert values(samples, "oms_task_info", task_id="424242")
        assert value(samples, "oms_malformed_tasks", project_id=PROJECT) == listing.malformed <= 1
    else:
        assert value(samples, "oms_up", project_id=PROJECT) == 0


@given(body=bodies)
@example(body=b'{"tasks": null, "count": 3}')
@example(body=b'{"tasks": [], "count": "250"}')
@example(body=b'{"tasks": [{"id": 1, "progress": NaN}], "count": 1}')
@example(body=b'{"tasks": [{"id": 1e400}], "count": 1}')
@example(body=b'\xff\xfe{"tasks": []}')
@settings(PROFILE)
def test_any_page_gives_a_parseable_exposition(body: bytes) -> None:
    listing = listing_of(body)
    list(SnapshotCollector([listing], SeriesPolicy()).collect())  # never raises
    samples = check_text(render([listing]))
    assert value(samples, "oms_up", project_id=PROJECT) == (1 if listing.up else 0)
    if not listing.up:
        assert not values(samples, "oms_task_info")
    # The OpenMetrics encoding of the same data parses too.
    om = render([listing], accept="application/openmetrics-text; version=1.0.0")
    assert om.endswith("# EOF\n")
    list(parse_openmetrics(om))


@given(records=st.lists(task_records, max_size=6))
@settings(PROFILE)
def test_several_projects_of_generated_tasks_never_collide(records: list[dict[str, Any]]) -> None:
    listings = []
    for i, pid in enumerate(("p1", "p2", "p3")):
        target = Target(name=f"t{i}", project_id=pid, region="cn-north-4", auth_token="t")
        lst = listing_of(encode({"tasks": records[i::2], "count": len(records)}))
        listings.append(make_listing(target, NOW, lst.tasks, malformed=lst.malformed, error=lst.error))
    samples = check_text(render(listings))
    assert {dict(lab)["project_id"] for lab in values(samples, "oms_up")} == {"p1", "p2", "p3"}


# --- through HTTP ------------------------------------------------------------------------------

@given(body=bodies, status=st.sampled_from([200, 200, 200, 400, 404, 500, 503]))
@HTTP_PROFILE
async def test_any_upstream_answer_gives_a_200_scrape(sim: StandIn, oms: TestServer, exporter: Exporter,
                                                      caplog: pytest.LogCaptureFixture, body: bytes,
                                                      status: int) -> None:
    """The generated answer is served for every page of the listing, as the stand-in's fault."""
    caplog.set_level(logging.WARNING)
    caplog.clear()
    sim.faults.clear()
    sim.inject(status=status, body=body, headers={"Content-Type": "application/json"}, times=10_000)
    client = await exporter(targets=[target_for(oms, max_offset=200)], timeout_offset=0.5)
    resp = await client.get("/metrics", headers={TIMEOUT_HEADER: "5"})
    assert resp.status == 200
    samples = check_text(await resp.text())
    assert value(samples, "oms_up", project_id=PROJECT) in (0, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    await client.close()


# --- promtool ------------------------------------------------------------------------------------

SAMPLE_RECORDS = [
    {"id": 1, "name": '迁移任务 "quoted" \\ back\nslash', "status": 2, "progress": 0.5, "total_size": 1e300,
     "src_node": {"cloud_type": "AWS", "region": "us-east-1", "bucket": "b"},
     "bandwidth_policy": [{"start": "00:00", "end": "08:00", "max_bandwidth": 1}, {"start": "00:00", "end": "08:00"}],
     "error_reason": {"error_code": "OMS.1", "error_msg": "boom\x00"}},
    {"id": 2, "total_num": -5, "start_time": 2**63 - 1, "status": 7, "name": "🚚" * 300},
    {"id": 5, "start_time": 2**70},  # beyond int64: no count OMS can mean, malformed
    {"id": 2, "name": "duplicate id"},
    {"id": 3, "progress": "half"},
    {"id": 4, "status": 99, "left_time": -1},
]


@given(records=st.lists(task_records, min_size=1, max_size=20))
@settings(PROFILE, max_examples=3)
def test_a_generated_sample_passes_promtool(records: list[dict[str, Any]]) -> None:
    listing = listing_of(encode({"tasks": records + SAMPLE_RECORDS, "count": 30}))
    text = render([listing, make_listing(Target(name="down", project_id="p2", region="cn-north-4", auth_token="t"),
                                         NOW, error=BadPayload("x"))])
    check_text(text)
    promtool_check(text)


def test_the_fixed_sample_passes_promtool() -> None:
    listing = listing_of(encode({"tasks": SAMPLE_RECORDS, "count": 6}))
    assert listing.up and listing.malformed == 2
    promtool_check(render([listing]))
