"""Writes the README's generated tables from their one definition: the settings, the metrics, the series
per task, task group, sync task and project.

    python scripts/readme_tables.py           # rewrite the tables in README.md
    python scripts/readme_tables.py --check   # exit 1 if README.md is not what this writes

The settings come from the fields of `oms_exporter.settings.Options` (flags, a few also from the
environment and YAML) and `Target` (environment and YAML) and the API areas' switches
(`oms_exporter.catalog.AREAS`), the metrics from `oms_exporter.catalog.families()` and
`oms_exporter.metrics.SELF_FAMILIES`.
Each table sits between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->`.
tests/test_readme.py fails when README.md differs from this output.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from pydantic.fields import FieldInfo

from oms_exporter.catalog import AREAS, families, switch_help, target_switch_help
from oms_exporter.listing import Listing, Part, complete_tasks
from oms_exporter.metrics import SELF_FAMILIES, Family, SelfMetrics
from oms_exporter.model import FAILED, SUCCEEDED, SyncTask, Task, TaskGroup, parse_group, parse_sync, parse_task
from oms_exporter.settings import Credentials, DiscoveryEntry, Options, Target, meta, shown_default
from oms_exporter.simulator import SYNC_COUNTERS, SYNC_DEFAULTS, Simulator, add_groups_and_syncs, make_task

README = Path(__file__).resolve().parent.parent / "README.md"


def _default(info: FieldInfo) -> str:
    shown = meta(info).get("shown")
    if shown:
        return str(shown)
    value = shown_default(info)
    return "—" if value == "none" else f"`{value}`"


def settings_table() -> str:
    rows = ["| setting | where | default | meaning |", "|---|---|---|---|"]
    switchable = [area for area in AREAS if area.optional]
    for info in Options.model_fields.values():
        if "flag" in meta(info):
            # A flag that the environment and the YAML file may set too (`--shard.count`).
            names = [f"`--{meta(info)['flag']}`"] + [f"`{meta(info)[k]}`" for k in ("env", "yaml") if k in meta(info)]
            where = " / ".join(w for k, w in (("flag", "flag"), ("env", "env"), ("yaml", "YAML")) if k in meta(info))
            rows.append(f"| {' / '.join(names)} | {where} | {_default(info)} | {info.description} |")
    for area in switchable:
        rows.append(f"| `--{area.flag}` | flag | `{str(area.default).lower()}` | {switch_help(area)} |")
    for name, info in Target.model_fields.items():
        if info.description is None:  # filled from the keys below
            continue
        env = meta(info).get("env")
        where, setting = ("env / YAML", f"`{env}` / `{name}`") if env else ("YAML", f"`{name}`")
        rows.append(f"| {setting} | {where} | {_default(info)} | {info.description} |")
    for area in switchable:
        rows.append(f"| `{area.name}` | YAML | `--{area.flag}` | {target_switch_help(area)} |")
    for name, info in DiscoveryEntry.model_fields.items():
        if name not in Credentials.model_fields:
            rows.append(f"| `discovery.{name}` | YAML | {_default(info)} | {info.description} |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | from | example PromQL |", "|---|---|---|"]
    for f in families():
        labels = f"{{{', '.join(f.labels)}}}" if f.labels else ""
        rows.append(f"| `{f.name}{labels}` | {f.source} | {f.example} |")
    for s in SELF_FAMILIES:
        labels = f"{{{', '.join(s.labels)}}}" if s.labels else ""
        rows.append(f"| `{s.name}{labels}` | {s.source} | {s.example} |")
    return "\n".join(rows)


NOW_MS = 1_765_000_000_000  # any time: the counts do not depend on it
MIGRATING = 2  # a live state (model.STATUS_NAMES)


def _record_series(families: tuple[Family, ...], record: Any) -> int:
    """The series the record families of an area give for one record."""
    return sum(len(list(f.series(f.read(record)))) for f in families if f.kind is not None)


def _task(status: int) -> Task:
    """A task in `status` as OMS sends one (every field present; no bandwidth window)."""
    fields = make_task(random.Random(1), 1, NOW_MS, status=status) | {"bandwidth_policy": []}
    return parse_task(msgspec.json.encode(fields))


def _group() -> TaskGroup:
    sim = Simulator()
    sim.add_project("p")
    add_groups_and_syncs(sim, "p", now_ms=NOW_MS)
    creating = next(g for g, fields in sim.groups["p"].items() if fields.get("status") == 1)  # every field, no error
    return parse_group(msgspec.json.encode(sim.group_resp("p", creating)))


def _sync() -> SyncTask:
    fields = {k: v for k, v in SYNC_DEFAULTS.items() if k != "monthly"} | dict.fromkeys(SYNC_COUNTERS, 1)
    return parse_sync(msgspec.json.encode(fields | {"sync_task_id": "s", "last_start_time": NOW_MS}))


def _project_series() -> tuple[int, int]:
    """The series of one project as a whole (every area listed, none of its records counted) on /probe,
    and the exporter's own series of one project (on /metrics only)."""
    target = Target.model_validate({"name": "t", "project_id": "p", "region": "cn-north-4", "auth_token": "t"})
    now = NOW_MS / 1000
    listing = Listing(target, now, {"tasks": complete_tasks([], finished_listed_at=now),
                                    **{area.name: Part(records=[]) for area in AREAS[1:]}})
    oms = sum(len(list(f.series(listing))) for f in families() if f.kind is None)
    own = SelfMetrics()
    own.add_project("p")
    return oms, sum(s.labels.get("project_id") == "p" and not s.name.endswith("_created")  # none served (cli)
                    for fam in own.registry.collect() for s in fam.samples)


def series_table() -> str:
    """Series per record and per project, so that users can size Prometheus."""
    tasks, groups, syncs = (area.families for area in AREAS)
    live, failed, succeeded = (_record_series(tasks, _task(s)) for s in (MIGRATING, FAILED, SUCCEEDED))
    project, own = _project_series()
    rows = ["| each | series |", "|---|---|",
            f"| live task (waiting, migrating, paused, retrying, pausing) | {live}, and 1 per bandwidth window |",
            f"| failed task | {failed} (with its error) |",
            f"| succeeded task, ended within `--oms.finished-task-max-age` (older: none) | {succeeded} |",
            f"| task group | {_record_series(groups, _group())}, and 1 with an error |",
            f"| sync task | {_record_series(syncs, _sync())} |",
            f"| project (every task, group and sync task counted in its totals) | {project}, and {own} of the "
            "exporter's own on `/metrics` |"]
    return "\n".join(rows)


TABLES = {"settings": settings_table, "metrics": metrics_table, "series": series_table}


def _block(table: str) -> Callable[[re.Match[str]], str]:
    """The replacement of a generated block: its markers around `table`."""
    return lambda m: m.group(1) + table + "\n" + m.group(2)


def render(text: str) -> str:
    """`text` (the README) with every generated table written anew."""
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end generated: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- generated: {name} --> block")
        text = pattern.sub(_block(make()), text)
    return text


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in argv:
        if new != text:
            sys.stderr.write("README.md's generated tables are out of date: run python scripts/readme_tables.py\n")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
