"""--metric-allowlist and --metric-denylist: which OMS families are served, and what is said about it.

Over HTTP against the stand-in: a dropped family's series are absent from /metrics and /probe in
every format, the kept ones are byte for byte what an exporter without lists serves, the encoder
renders nothing for what is dropped; bad settings are one line and exit code 2; the start (and a
reload) names the shipped alerts, rules and dashboard panels a dropped family leaves without data.
"""

from __future__ import annotations

import logging
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from oms_exporter import exposition
from oms_exporter.catalog import ALWAYS_SERVED, FAMILIES, families, select
from oms_exporter.collector import SnapshotCollector
from oms_exporter.grafana_uses import USES
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Options, Settings, load
from oms_exporter.simulator import add_groups_and_syncs
from oms_exporter.snapshot import SeriesPolicy
from oms_exporter.tasks import TASKS
from oms_exporter.web import make_app, reload
from tests.conftest import (
    PROJECT,
    ROOT,
    TOKEN,
    Exporter,
    ManualClock,
    check_config_error,
    load_module,
    run_exporter_once,
    run_main,
    scrape,
    target_for,
    value,
)
from tests.standin import StandIn
from tests.test_exposition import ACCEPTS, listings

OMS = {f.name for f in FAMILIES}
PER_TASK = {f.name for f in TASKS.families if f.kind is not None}
PER_TASK_DENY = "oms_task_(?!group).*"  # docs/metrics.md's example: every per-task family
# The wall-clock times of a listing: two exporters list at two moments.
TIMES = re.compile(rb"^(oms_+(?:listing|finished_+tasks_+listed)_+timestamp_+seconds\{[^}]*\}) \S+$", re.M)
FORMATS = [("", False), (ACCEPTS[2], False), (ACCEPTS[8], False), ("", True), (ACCEPTS[-1], True)]


@pytest.fixture(autouse=True)
def account(sim: StandIn) -> None:
    """The `sim` fixture's 250 tasks, and task groups and sync tasks beside them."""
    add_groups_and_syncs(sim, PROJECT)


def served(samples: dict[Any, float]) -> set[str]:
    """The OMS families with a series (all gauges: a sample's name is its family's)."""
    return {name for name, _ in samples if name in OMS}


def without(body: bytes, dropped: set[str]) -> bytes:
    """`body` with the blocks (HELP, TYPE, samples) of the families `dropped` cut out."""
    out, keep = [], True
    for line in body.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            keep = line.split()[2].decode() not in dropped
        elif line.startswith(b"# EOF"):
            keep = True
        if keep:
            out.append(line)
    return b"".join(out)


async def get(client: TestClient, path: str, accept: str, zipped: bool) -> bytes:
    resp = await client.get(path, headers={"Accept": accept, "Accept-Encoding": "gzip" if zipped else "identity"})
    assert resp.status == 200
    assert (resp.headers.get("Content-Encoding") == "gzip") is zipped
    return TIMES.sub(rb"\1 MASKED", await resp.read())


# --- what is served -----------------------------------------------------------------------------

async def test_a_dropped_family_is_absent_and_the_kept_ones_are_byte_identical(exporter: Exporter) -> None:
    full = await exporter()
    cut = await exporter(metric_denylist=(PER_TASK_DENY, "oms_scrape_duration_seconds"))
    dropped = PER_TASK | {"oms_scrape_duration_seconds"}
    for accept, zipped in FORMATS:
        whole = await get(full, "/probe?target=main", accept, zipped)
        body = await get(cut, "/probe?target=main", accept, zipped)
        assert b"oms_task_info" in whole and b"oms_task_group_info" in whole
        assert body == without(whole, dropped), (accept, zipped)
        assert b"oms_task_info" not in body and b"oms_task_status" not in body
        assert b"oms_task_group_info{" in body and b"oms_tasks_size_bytes{" in body
    # /metrics: the same OMS series, and the exporter's own metrics, which no list drops.
    samples, whole_samples = await scrape(cut), await scrape(full)
    assert served(samples) == served(whole_samples) - dropped
    times = {"oms_listing_timestamp_seconds", "oms_finished_tasks_listed_timestamp_seconds"}
    assert {k: v for k, v in samples.items() if k[0] in OMS - times} == \
        {k: v for k, v in whole_samples.items() if k[0] in OMS - dropped - times}
    assert value(samples, "oms_exporter_encodes_total") >= 1
    assert value(samples, "oms_listings_total", project_id=PROJECT) >= 1


@pytest.mark.parametrize("lists, expected", [
    # An allowlist: what it names, and the three always served.
    ({"metric_allowlist": ("oms_tasks.*",)}, {"oms_tasks"} | {f.name for f in TASKS.families
                                                            if f.name.startswith("oms_tasks_")} | ALWAYS_SERVED),
    # Whole names: oms_task_status is not oms_task_status_code.
    ({"metric_allowlist": ("oms_task_status",)}, {"oms_task_status"} | ALWAYS_SERVED),
    ({"metric_denylist": ("oms_task_status",)}, OMS - {"oms_task_status"}),
    ({"metric_denylist": ("task_status",)}, OMS),  # matches no whole name: drops nothing
    # kube-state-metrics' anchored style means the same here.
    ({"metric_denylist": ("^oms_sync_task_.*$",)}, OMS - {n for n in OMS if n.startswith("oms_sync_task_")}),
    # A pattern with a comma (a YAML list), several patterns.
    ({"metric_allowlist": ("oms_task_group_tasks_.{4,7}", "oms_up")},
     {"oms_task_group_tasks_created", "oms_task_group_tasks_waiting", "oms_task_group_tasks_paused",
      "oms_task_group_tasks_failed"} | ALWAYS_SERVED),
    # What the lists never drop.
    ({"metric_denylist": ("oms_up", "oms_collector_success", "oms_project_info")}, OMS),
    ({"metric_denylist": (PER_TASK_DENY,)}, OMS - PER_TASK),
])
async def test_allow_and_deny_lists_choose_whole_family_names(
        exporter: Exporter, lists: dict[str, tuple[str, ...]], expected: set[str]) -> None:
    everything = served(await scrape(await exporter()))  # the families this account has series of
    client = await exporter(**lists)
    for path in ("/metrics", "/probe?target=main"):
        assert served(await scrape(client, path)) == expected & everything, path


async def test_the_encoder_renders_nothing_of_a_dropped_family(
        exporter: Exporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing-free: every value the encoder writes goes through go_float once when first rendered;
    with the per-task families dropped it writes the lines served and no other, and the task
    records are not even visited (oms_exporter_encoded_records_total{kind="task"} stays 0)."""
    calls = 0
    real = exposition.go_float

    def counting(v: float) -> str:
        nonlocal calls
        calls += 1
        return real(v)

    def samples(body: bytes) -> int:
        return sum(1 for line in body.splitlines() if not line.startswith(b"#"))

    monkeypatch.setattr(exposition, "go_float", counting)
    full = samples(await get(await exporter(), "/probe?target=main", "", False))
    assert calls == full > 5000  # without lists: every line rendered once
    calls = 0
    client = await exporter(metric_denylist=(PER_TASK_DENY,))
    kept = samples(await get(client, "/probe?target=main", "", False))
    assert calls == kept < full / 10
    samples = await scrape(client)
    assert value(samples, "oms_exporter_encoded_records_total", kind="task", result="rendered") == 0
    assert value(samples, "oms_exporter_encoded_records_total", kind="task", result="reused") == 0
    assert value(samples, "oms_exporter_encoded_records_total", kind="task_group", result="rendered") > 0


LISTS = [((), (PER_TASK_DENY,)), (("oms_tasks.*", "oms_task_group_info"), ()), ((), ("oms_sync_task_.*",)),
         ((), ("oms_task_bandwidth_limit_bytes_per_second", "oms_task_error_info", "oms_task_group_status"))]


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("allow, deny", LISTS)
def test_the_families_kept_are_prometheus_clients_bytes(accept: str, allow: tuple[str, ...],
                                                        deny: tuple[str, ...]) -> None:
    """collector.SnapshotCollector (prometheus_client's own types) is the reference, with the same lists."""
    lsts, policy = listings(), SeriesPolicy()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lsts, policy, allow=allow, deny=deny))
    style, _, encoder = exposition.negotiate(accept)
    tail = b"# EOF\n" if style.openmetrics else b""
    cache = exposition.RecordLines()
    for _ in range(2):  # first rendered, then from the cache
        assert exposition.encode(lsts, policy, style, cache, tail, table=select(families(), allow, deny)) \
            == encoder(registry)


# --- settings -----------------------------------------------------------------------------------

GOOD_ENV = {"OMS_PROJECT_ID": "p1", "OMS_REGION": "cn-north-4", "OMS_AUTH_TOKEN": "tok"}
TARGETS = "targets:\n  - {name: a, project_id: p, region: cn-north-4, auth_token: t}\n"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith(("OMS_", "CLOUD_SDK_")):
            monkeypatch.delenv(k)
    return monkeypatch


run = run_main


@pytest.mark.parametrize("argv, env, yaml_text, expected", [
    (["--metric-allowlist", "oms_task_(info"], GOOD_ENV, None,
     "--metric-allowlist: 'oms_task_(info' is not a regular expression: missing ), unterminated subpattern"),
    ([], {**GOOD_ENV, "OMS_METRIC_DENYLIST": "oms_up,["}, None, "OMS_METRIC_DENYLIST: '[' is not a regular expression"),
    ([], {}, TARGETS + "metric_denylist: ['oms_tasks', '*x']\n", ": metric_denylist: '*x' is not a regular expression"),
    ([], {}, TARGETS + "metric_allowlist: {a: 1}\n", ": metric_allowlist: should be regular expressions"),
    (["--metric-allowlist", "oms_tasks.*", "--metric-denylist", "oms_task_info"], GOOD_ENV, None,
     "--metric-denylist: mutually exclusive with the allowlist"),
    ([], {"OMS_METRIC_ALLOWLIST": "oms_tasks.*"}, TARGETS + "metric_denylist: [oms_task_info]\n",
     ".yml: metric_denylist: mutually exclusive with the allowlist (--metric-allowlist, OMS_METRIC_ALLOWLIST or "
     "metric_allowlist), which is set too: give one of them"),
    ([], {}, TARGETS + "metric_list: [x]\n", "metric_list: Extra inputs are not permitted"),
])
def test_a_bad_list_is_one_line_and_exit_code_2(argv: list[str], env: dict[str, str], yaml_text: str | None,
                                                expected: str, clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    line = check_config_error(argv, env, yaml_text, clean_env, tmp_path, capsys)
    assert expected in line, line


@pytest.mark.slow  # the program as a process
def test_the_program_exits_2_when_both_lists_are_set() -> None:
    res = run_exporter_once("--metric-allowlist", "oms_tasks.*", env={**GOOD_ENV, "OMS_METRIC_DENYLIST": "x"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "oms-exporter: error: OMS_METRIC_DENYLIST: mutually exclusive with the allowlist (--metric-allowlist, "
        "OMS_METRIC_ALLOWLIST or metric_allowlist), which is set too: give one of them"]


def test_the_flag_wins_then_the_variable_then_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yml"
    f.write_text(TARGETS + textwrap.dedent("""\
        metric_denylist:
          - oms_task_group_tasks_.{4,7}   # a comma: only a list can hold it
          - " oms_clipped_records "
    """))
    assert load({}, f).options.metric_denylist == ("oms_task_group_tasks_.{4,7}", "oms_clipped_records")
    clean_env.setenv("OMS_METRIC_DENYLIST", " oms_malformed_tasks ,, oms_clipped_records\n")
    assert load({}, f).options.metric_denylist == ("oms_malformed_tasks", "oms_clipped_records")
    assert load({"metric_denylist": "oms_up"}, f).options.metric_denylist == ("oms_up",)
    assert load({"metric_denylist": ""}, f).options.metric_denylist == ()  # empty: no list
    code, out, _ = run(["--config.file", str(f), "--metric-denylist", PER_TASK_DENY, "--check-config"], capsys)
    assert code == 0
    assert f"metric families: {len(OMS) - len(PER_TASK)} of {len(OMS)} served, dropped oms_task_info, " in out


# --- what the exporter says -----------------------------------------------------------------------

def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "oms_exporter.generation"]


async def test_a_pattern_that_matches_no_family_is_a_warning(
        exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await exporter(metric_denylist=("oms_clipped_records", "task_status", "oms_nothing_like_this"))
    (typo,) = warnings(caplog)  # and none about shipped files: none reads oms_clipped_records
    assert typo.getMessage().startswith("--metric-denylist: patterns that match no OMS family")
    assert typo.patterns == "task_status,oms_nothing_like_this"  # type: ignore[attr-defined]
    (info,) = [r for r in caplog.records if r.getMessage() == "metric families dropped"]
    assert info.dropped == "oms_clipped_records"  # type: ignore[attr-defined]


async def test_the_start_names_the_alerts_rules_and_panels_a_dropped_family_leaves_without_data(
        exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await exporter(metric_denylist=(PER_TASK_DENY, "oms_nothing_like_this"))
    typo, needed = warnings(caplog)
    assert typo.getMessage().startswith("--metric-denylist: patterns that match no OMS family")
    assert typo.patterns == "oms_nothing_like_this"  # type: ignore[attr-defined]
    assert "they will show no data" in needed.getMessage()
    fields: dict[str, str] = vars(needed)
    assert fields["families"].split(",")[:2] == ["oms_task_info", "oms_task_status"]
    assert set(fields["alerts"].split(",")) == {"OmsTaskFailed", "OmsTaskStalled", "OmsTaskFailedObjectsIncreasing",
                                                "OmsTaskWaitingTooLong", "OmsTaskSpeedFarBelowLimit"}
    assert fields["recording_rules"] == "project_id_task_id:oms_task_bandwidth_limit_bytes_per_second:min"
    dashboards = dict(d.split(": ", 1) for d in fields["dashboards"].split("; "))
    assert "ETA" in dashboards["OMS migration task"].split(", ")
    assert {"$task", "Tasks", "Throughput per task"} <= set(dashboards["OMS migration tasks"].split(", "))
    assert "Tasks per status" not in dashboards["OMS migration tasks"]  # per-project totals: kept
    assert "Tasks of the group" in dashboards["OMS task group"] and "Bytes" not in dashboards["OMS task group"]
    (info,) = [r for r in caplog.records if r.getMessage() == "metric families dropped"]
    assert info.dropped.split(",") == [f.name for f in TASKS.families if f.name in PER_TASK]  # type: ignore[attr-defined]


async def test_no_warning_when_nothing_shipped_reads_what_is_dropped(
        exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await exporter(metric_denylist=("oms_clipped_records",))
    await exporter()
    assert warnings(caplog) == []
    assert [r.dropped for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage() == "metric families dropped"] == ["oms_clipped_records"]


async def test_a_reload_applies_the_files_lists_and_warns_again(
        oms: TestServer, clock: ManualClock, aiohttp_client: Any, tmp_path: Path,
        clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    f = tmp_path / "c.yml"
    target = target_for(oms)
    targets = (f"targets:\n  - {{name: main, project_id: {PROJECT}, region: cn-north-4, auth_token: {TOKEN}, "
               f"endpoint: '{target.endpoint}'}}\n")
    f.write_text(targets + "metric_allowlist: [oms_tasks, oms_scrape_duration_seconds]\n")
    app = make_app(load({}, f), stats=SelfMetrics(), clock=clock)
    client = await aiohttp_client(app)
    assert served(await scrape(client)) == {"oms_tasks", "oms_scrape_duration_seconds"} | ALWAYS_SERVED
    (first,) = warnings(caplog)
    assert first.alerts == "OmsTaskFailed,OmsTaskStalled,OmsTaskFailedObjectsIncreasing,OmsTaskWaitingTooLong," \
        "OmsTaskSpeedFarBelowLimit,OmsTaskGroupFailed,OmsTaskGroupStalled,OmsSyncTaskObjectsFailing"  # type: ignore
    caplog.clear()
    f.write_text(targets + f"metric_denylist: ['{PER_TASK_DENY}']\n")
    await reload(app, load({}, f))
    assert served(await scrape(client)) & PER_TASK == set()
    assert "oms_task_group_info" in served(await scrape(client))
    (needed,) = warnings(caplog)
    assert "OmsTaskFailed" in needed.alerts  # type: ignore[attr-defined]
    assert [r.dropped.split(",")[0] for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage() == "metric families dropped"] == ["oms_task_info"]


# --- the table of what the shipped files read -----------------------------------------------------

def test_the_table_of_what_grafana_reads_is_the_generated_one() -> None:
    script = load_module(ROOT / "scripts" / "grafana_uses.py")
    table = ROOT / "oms_exporter" / "grafana_uses.py"
    assert script.render() == table.read_text(encoding="utf-8"), "stale: run python scripts/grafana_uses.py"


def test_a_changed_dashboard_makes_the_table_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_module(ROOT / "scripts" / "grafana_uses.py")
    before = script.render()
    shipped = script.dashboards()
    shipped["oms-task.json"]["panels"][1]["targets"][0]["expr"] += " * on (project_id) oms_malformed_tasks"
    monkeypatch.setattr(script, "dashboards", lambda: shipped)
    assert script.render() != before


def test_the_table_names_only_families_and_every_shipped_file() -> None:
    assert {f for entries in USES.values() for reads in entries.values() for f in reads} <= OMS
    assert set(USES) == {"alerts", "recording rules", "dashboard OMS migration tasks", "dashboard OMS migration task",
                         "dashboard OMS task group"}
    assert USES["alerts"]["OmsTaskFailed"] == ("oms_task_info", "oms_task_status", "oms_task_error_info",
                                               "oms_project_info")
    # Through a recording rule: the alert reads what the rule reads.
    assert "oms_task_bandwidth_limit_bytes_per_second" in USES["alerts"]["OmsTaskSpeedFarBelowLimit"]
    # A variable selecting by __name__ reads both families.
    assert USES["dashboard OMS migration tasks"]["$group_id"] == ("oms_task_info", "oms_task_group_info")


def test_the_settings_of_a_demo_keep_their_lists() -> None:
    """The lists are options: a Settings made in code (the tests', the demo's) carries them through."""
    s = Settings(options=Options(metric_allowlist="oms_tasks.*"), targets=[])
    assert s.options.metric_allowlist == ("oms_tasks.*",) and s.options.metric_denylist == ()


# --- the README's series per task, group, sync task and project -----------------------------------

async def test_the_readme_series_table_is_what_a_scrape_serves(sim: StandIn, exporter: Exporter) -> None:
    """The figures scripts/readme_tables.py computes from the families are those a scrape of the stand-in
    has: per task in each state (without bandwidth windows), per group, per sync task, per project."""
    rows = load_module(ROOT / "scripts" / "readme_tables.py").series_table().splitlines()[2:]
    figures = [int(re.search(r"\| (\d+)", row).group(1)) for row in rows]  # type: ignore[union-attr]
    live, failed, succeeded, group, sync, project = figures
    own = int(re.search(r"and (\d+) of the exporter's own", rows[-1]).group(1))  # type: ignore[union-attr]
    samples = await scrape(await exporter())

    def owner(labels: frozenset[tuple[str, str]]) -> tuple[str, str] | None:
        """The record a series is of: its task, else its group, else its sync task (a task's info
        series has a group_id too)."""
        found = dict(labels)
        return next(((k, found[k]) for k in ("task_id", "group_id", "sync_task_id") if k in found), None)

    def count(label: str, ident: object) -> int:
        return sum(1 for name, labels in samples if name in OMS and owner(labels) == (label, str(ident)))

    tasks = {t["id"]: t for t in sim.projects[PROJECT].values() if not t["bandwidth_policy"]}
    for status, want in ((2, live), (4, failed), (5, succeeded)):
        some = [i for i, t in tasks.items() if t["status"] == status][:3]
        assert some and {count("task_id", i) for i in some} == {want}, status
    creating = next(g for g, fields in sim.groups[PROJECT].items() if fields.get("status") == 1)
    assert count("group_id", creating) == group
    assert {count("sync_task_id", s) for s in sim.sync_tasks[PROJECT]} == {sync}
    assert sum(1 for name, labels in samples if name in OMS and owner(labels) is None) == project
    assert sum(1 for name, labels in samples if name not in OMS and ("project_id", PROJECT) in labels) == own
