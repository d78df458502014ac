"""The table of API areas, and every metric family in output order.

To add an area: its record type (model.py), its module (its families and its lister, with
its `Area` declaration, like groups.py), and one line in `AREAS` below. Settings, listing,
encoding, the web app and the stand-in read this table.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from oms_exporter.area import Area
from oms_exporter.grafana_uses import USES
from oms_exporter.groups import TASK_GROUPS
from oms_exporter.metrics import COLLECTOR_SUCCESS, HEAD, SELF_METRIC_NAMES, Family, project_info
from oms_exporter.syncs import SYNC_TASKS
from oms_exporter.tasks import TASKS

# The first area is the one oms_up follows (the tasks): every target lists it.
AREAS: tuple[Area, ...] = (TASKS, TASK_GROUPS, SYNC_TASKS)


def families(areas: Sequence[Area] = AREAS, info_labels: tuple[str, ...] = ()) -> tuple[Family, ...]:
    """Every OMS family, in output order: oms_up and the listing time, the first area's families,
    oms_collector_success, every other area's families in table order, then oms_project_info (with
    the static label names `info_labels`)."""
    first, *others = areas
    return (*HEAD, *first.families, COLLECTOR_SUCCESS, *(f for area in others for f in area.families),
            project_info(info_labels))


def metric_names(areas: Sequence[Area] = AREAS) -> frozenset[str]:
    """Every metric name the exporter serves (dashboards and rules may name no other)."""
    return frozenset(f.name for f in families(areas)) | SELF_METRIC_NAMES


# What --metric-allowlist and --metric-denylist never drop: whether the rest is whole (oms_up,
# oms_collector_success) and what alerts and dashboards join on (oms_project_info). One series
# per target or per area of one: dropping them would save nothing and silence alerts.
ALWAYS_SERVED = frozenset({"oms_up", "oms_collector_success", "oms_project_info"})


def select(table: tuple[Family, ...], allow: Sequence[str] = (), deny: Sequence[str] = ()) -> tuple[Family, ...]:
    """The families of `table` that the lists keep, in order: with `allow`, those whose whole name a
    pattern matches; with `deny`, those whose whole name none matches; ALWAYS_SERVED whatever the lists
    say. Anchored, as Prometheus' relabelling is (kube-state-metrics searches, so `oms_task_info` there
    also matches `oms_task_info_x`). With neither list, `table` itself."""
    if not allow and not deny:
        return table
    matches = [re.compile(p).fullmatch for p in (allow or deny)]
    return tuple(f for f in table if f.name in ALWAYS_SERVED or any(m(f.name) for m in matches) == bool(allow))


def needed_by(dropped: Collection[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The families of `dropped` that shipped alerts, recording rules or dashboard panels read
    (grafana_uses.USES), and those that read one: {"alerts" | "recording rules" | "dashboard TITLE":
    their names}, only the groups with one."""
    gone = set(dropped)
    read = [f for f in dropped if any(f in reads for entries in USES.values() for reads in entries.values())]
    users = {what: [name for name, reads in entries.items() if not gone.isdisjoint(reads)]
             for what, entries in USES.items()}
    return read, {what: names for what, names in users.items() if names}


def switches(areas: Sequence[Area] = AREAS) -> dict[str, bool]:
    """The areas that can be switched off, and whether each is listed by default."""
    return {area.name: area.default for area in areas if area.optional}


def switch_help(area: Area) -> str:
    """The help of an area's --collector flag."""
    return f"list {area.what} (`--no-{area.flag}`: not); a target's `{area.name}` overrides it"


def target_switch_help(area: Area) -> str:
    """The help of an area's key in a YAML target."""
    return f"list this project's {area.what} (true/false), whatever `--{area.flag}` says"


FAMILIES = families()  # of the built-in areas
ALL_METRIC_NAMES = metric_names()
