"""Generates the Grafana dashboards of oms-exporter (Grafana JSON model, schemaVersion 39).

Run `python grafana/generate_dashboards.py` after editing; it rewrites
grafana/dashboards/*.json, which are committed and provisioned as they are.
tests/test_grafana.py fails when the committed files differ from this output.

Three dashboards:
- oms-tasks: every task of the selected regions and projects (overview, table, trends), their
  task groups and sync tasks, the projects (configured or discovered) and the discovery entries,
  exporter health;
- oms-task: one task in detail, opened from the table's task names;
- oms-task-group: one task group in detail with the progress of its tasks, opened from the
  task-group table.

Group totals and task totals describe the same objects (every task of a group is also listed
as a task): no panel adds them together. Nor does any panel add up the copies of a project's
series that two exporters serve for a while (replicas): see `one_per` and `one_info`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from oms_exporter.catalog import ALL_METRIC_NAMES

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
STATUSES = ["waiting", "migrating", "paused", "failed", "succeeded", "retrying", "pausing"]
STATUS_COLORS = {"waiting": "blue", "migrating": "green", "paused": "yellow", "failed": "red",
                 "succeeded": "dark-green", "retrying": "orange", "pausing": "light-yellow"}
TASK_DASHBOARD_UID = "oms-task"
GROUP_DASHBOARD_UID = "oms-task-group"
GROUP_STATUSES = ["waiting", "creating", "migrating", "paused", "create_failed", "failed", "succeeded", "pausing",
                  "delete_pending", "deleting"]  # codes 0..9
GROUP_STATUS_COLORS = {"waiting": "blue", "creating": "purple", "migrating": "green", "paused": "yellow",
                       "create_failed": "dark-red", "failed": "red", "succeeded": "dark-green",
                       "pausing": "light-yellow", "delete_pending": "gray", "deleting": "gray"}
SYNC_STATUS_COLORS = {"synchronizing": "green", "stopped": "yellow"}
SAME_OBJECTS = ("Group totals and task totals describe the same objects (every task of a group is also a "
                "task): never add them together.")

Panel = dict[str, Any]

# --- PromQL ------------------------------------------------------------------------------------
# Regions: a project's region is on its oms_project_info{project_id, project_name, region}. The
# region variable drops the series of projects whose info names another region, with `unless`:
# "All" drops nothing, and series of a project without an info series (an exporter older than
# it, or before its first scrape) are kept rather than hidden.
def in_region(expr: str) -> str:
    """`expr` (series with a project_id) less the projects of the regions not selected."""
    return f'({expr}) unless on (project_id) oms_project_info{{region!~"$region"}}'


# Replicas: two exporters may serve the same project for a while (an HA pair, a move from one
# to another, shards while their count changes, or /metrics and /probe both scraped), so every
# series of it comes twice, with another instance or job. Figures of a project or record take
# one value per record (`max by` its ids) before any sum, and joins and info tables take one
# info series per record (`topk`): nothing is counted or shown twice, no join finds two
# matches (tests/test_e2e_shards.py runs every panel on a real Prometheus so).
def one_per(ids: str, expr: str) -> str:
    return f"max by ({ids}) ({expr})"


def one_info(ids: str, expr: str) -> str:
    return f"topk by ({ids}) (1, {expr})"


# Per-task metrics carry only project_id and task_id: the task filters of the dashboard (group,
# name, status) are applied by joining oms_task_info and oms_task_status, and the join brings
# the task name along for legends and table rows.
INFO = one_info("project_id, task_id",
                'oms_task_info{project_id=~"$project_id", group_id=~"$group_id", name=~"$task"}')
IN_STATUS = '(oms_task_status{project_id=~"$project_id", status=~"$status"} == 1)'


def per_task(metric: str) -> str:
    """`metric` of the tasks the variables select, with the task name as a label."""
    selected = in_region(f'{metric}{{project_id=~"$project_id"}} and on (project_id, task_id) {IN_STATUS}')
    return f"{one_per('project_id, task_id', selected)} * on (project_id, task_id) group_left (name) {INFO}"


def totals(metric: str) -> str:
    """A per-project total (oms_tasks_*), over every task of the selected projects, regions and states.

    The exporter sums these over the whole listing, so they hold whatever per-task series
    exist (--oms.per-task-series=false, finished tasks past their max age).
    """
    return one_per("project_id, status", in_region(f'{metric}{{project_id=~"$project_id", status=~"$status"}}'))


def one_task(metric: str, labels: str = "") -> str:
    """`metric` of the task the variables name: one series (per value of `labels`), however many
    exporters serve it."""
    return one_per("project_id, task_id" + labels, f'{metric}{{project_id="$project_id", task_id="$task_id"}}')


def one_task_info(metric: str) -> str:
    """An info series (every label) of the task the variables name, one however many exporters serve it."""
    return one_info("project_id, task_id", f'{metric}{{project_id="$project_id", task_id="$task_id"}}')


# --- building blocks ---------------------------------------------------------------------------
def target(expr: str, ref: str = "A", legend: str = "", *, instant: bool = False, table: bool = False
           ) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
                         "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


def status_mappings(by_code: bool, names: list[str] = STATUSES, colors: dict[str, str] = STATUS_COLORS,
                    first: int = 1) -> list[dict[str, Any]]:
    """Value mappings of a state: by code (first, first + 1, ...) or by name."""
    options = {}
    for i, name in enumerate(names):
        key = str(i + first) if by_code else name
        options[key] = {"text": name, "color": colors[name], "index": i}
    return [{"type": "value", "options": options}]


def group_mappings(by_code: bool) -> list[dict[str, Any]]:
    return status_mappings(by_code, GROUP_STATUSES, GROUP_STATUS_COLORS, first=0)


def panel(kind: str, title: str, targets: list[dict[str, Any]], grid: tuple[int, int, int, int], *,
          description: str = "", unit: str | None = None, decimals: int | None = None,
          mappings: list[dict[str, Any]] | None = None, thresholds: list[tuple[float | None, str]] | None = None,
          custom: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
          overrides: list[dict[str, Any]] | None = None, transformations: list[dict[str, Any]] | None = None,
          min_: float | None = None, max_: float | None = None) -> Panel:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"mappings": mappings or []}
    if unit:
        defaults["unit"] = unit
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    steps = thresholds or [(None, "green")]
    defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}
    if custom:
        defaults["custom"] = custom
    p: Panel = {"type": kind, "title": title, "datasource": DS, "gridPos": {"x": x, "y": y, "w": w, "h": h},
                "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
                "options": options or {}}
    if description:
        p["description"] = description
    if transformations:
        p["transformations"] = transformations
    return p


def stat(title: str, targets: list[dict[str, Any]], grid: tuple[int, int, int, int], **kw: Any) -> Panel:
    kw.setdefault("options", {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                              "colorMode": "value", "graphMode": "area", "textMode": "auto",
                              "justifyMode": "auto", "orientation": "auto"})
    return panel("stat", title, targets, grid, **kw)


def timeseries(title: str, targets: list[dict[str, Any]], grid: tuple[int, int, int, int], **kw: Any) -> Panel:
    kw.setdefault("custom", {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
                             "spanNulls": False})
    kw.setdefault("options", {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                                         "calcs": ["lastNotNull", "max"]},
                              "tooltip": {"mode": "multi", "sort": "desc"}})
    return panel("timeseries", title, targets, grid, **kw)


def state_timeline(title: str, targets: list[dict[str, Any]], grid: tuple[int, int, int, int], *,
                   mappings: list[dict[str, Any]] | None = None, **kw: Any) -> Panel:
    return panel("state-timeline", title, targets, grid, mappings=mappings or status_mappings(by_code=True),
                 custom={"fillOpacity": 80, "lineWidth": 0},
                 options={"showValue": "never", "mergeValues": True, "rowHeight": 0.9, "alignValue": "left",
                          "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "single"}}, **kw)


def row(title: str, y: int) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": []}


def override(name: str, matcher: str = "byName", **props: Any) -> dict[str, Any]:
    return {"matcher": {"id": matcher, "options": name},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_variable(name: str, label: str, query: str, *, multi: bool = True, hide: int = 0) -> dict[str, Any]:
    v: dict[str, Any] = {"name": name, "label": label, "type": "query", "datasource": DS,
                         "definition": query, "query": query,
                         "refresh": 2, "sort": 1, "regex": "", "current": {}, "options": [], "hide": hide,
                         "multi": multi, "includeAll": multi}
    if multi:
        v["allValue"] = ".*"  # also matches tasks without the label (e.g. no group_id)
    return v


RED_ABOVE_0 = {"mode": "absolute", "steps": [{"color": "text", "value": None}, {"color": "red", "value": 1}]}
ROUTE_LABELS = ("src_cloud", "src_region", "src_bucket", "dst_region", "dst_bucket")


def status_column(mappings: list[dict[str, Any]]) -> dict[str, Any]:
    return override("Status", mappings=mappings, custom__cellOptions={"type": "color-background"})


def progress_column() -> dict[str, Any]:
    return override("Progress", unit="percentunit", min=0, max=1,
                    custom__cellOptions={"type": "gauge", "mode": "basic"})


def red_above_0_column(name: str) -> dict[str, Any]:
    return override(name, custom__cellOptions={"type": "color-text"}, thresholds=RED_ABOVE_0)


def with_route(expr: str) -> str:
    """`expr` (joined with an info series) with its source and destination labels as two."""
    return (f'label_join(label_join({expr}, "source", "/", "src_cloud", "src_region", "src_bucket"),'
            f' "destination", "/", "dst_region", "dst_bucket")')


def record_table(title: str, columns: list[tuple[str, str]], grid: tuple[int, int, int, int], *,
                 names: dict[str, str], order: list[str], description: str, overrides: list[dict[str, Any]],
                 sort_by: str | None = None, hidden: tuple[str, ...] = ROUTE_LABELS) -> Panel:
    """One row per record: instant queries (`columns`: refId, expr) merged on their labels,
    renamed (`names`) and ordered (`order`); column A gives the labels, its value is hidden."""
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": True}]
    return panel(
        "table", title, [target(e, ref, instant=True, table=True) for ref, e in columns], grid,
        description=description, custom={"align": "auto", "filterable": True, "cellOptions": {"type": "auto"}},
        options=options,
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value #A": True, **dict.fromkeys(hidden, True)},
                "renameByName": names,
                "indexByName": {name: i for i, name in enumerate(order)}}},
        ],
        overrides=overrides)


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel],
              links: list[dict[str, Any]]) -> dict[str, Any]:
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid, "title": title, "description": description, "tags": ["oms", "oms-exporter"],
        "editable": True, "graphTooltip": 1, "timezone": "browser", "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "fiscalYearStartMonth": 0,
        "liveNow": False, "schemaVersion": 39, "version": 1, "weekStart": "",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": variables}, "links": links, "panels": panels,
    }


# --- the task list dashboard -------------------------------------------------------------------
def tasks_table(y: int) -> Panel:
    route = with_route(f"{one_per('project_id, task_id, status', in_region(IN_STATUS))}"
                       f" * on (project_id, task_id) group_left (name, group_id, {', '.join(ROUTE_LABELS)})"
                       f" {INFO}")
    columns = [("A", route), ("B", per_task("oms_task_progress_ratio")),
               ("C", per_task("oms_task_speed_bytes_per_second")), ("D", per_task("oms_task_remaining_seconds")),
               ("E", per_task("oms_task_objects_failed")), ("F", per_task("oms_task_objects_skipped")),
               ("G", per_task("oms_task_objects_succeeded"))]
    names = {"Value #B": "Progress", "Value #C": "Speed", "Value #D": "ETA", "Value #E": "Failed objects",
             "Value #F": "Skipped objects", "Value #G": "Succeeded objects", "name": "Task",
             "source": "Source", "destination": "Destination", "status": "Status"}
    order = ["Task", "project_id", "task_id", "group_id", "Source", "Destination", "Status", "Progress", "Speed",
             "ETA", "Failed objects", "Skipped objects", "Succeeded objects"]
    link = (f"/d/{TASK_DASHBOARD_UID}/oms-task?var-datasource=${{datasource}}"
            "&var-project_id=${__data.fields.project_id}&var-task_id=${__data.fields.task_id}&${__url_time_range}")
    return record_table(
        "Tasks", columns, (0, y, 24, 12), names=names, order=order, sort_by="Speed",
        description="One row per task selected by the variables. Click a task name for its detail dashboard.",
        overrides=[
            override("Task", links=[{"title": "Task detail", "url": link}]),
            status_column(status_mappings(by_code=False)),
            progress_column(),
            override("Speed", unit="binBps"),
            override("ETA", unit="dtdurations"),
            red_above_0_column("Failed objects"),
        ])


# Task groups: their own series carry project_id and group_id; the dashboard's group filter
# applies to them directly.
GROUP_SEL = 'project_id=~"$project_id", group_id=~"$group_id"'


def per_group(metric: str) -> str:
    """`metric` of the selected task groups, one series per group."""
    return one_per("project_id, group_id", in_region(f"{metric}{{{GROUP_SEL}}}"))


def groups_table(y: int) -> Panel:
    in_status = one_per("project_id, group_id, status", in_region(f"oms_task_group_status{{{GROUP_SEL}}} == 1"))
    route = with_route(f"{in_status} * on (project_id, group_id) group_left ({', '.join(ROUTE_LABELS)}, task_type)"
                       f" {one_info('project_id, group_id', f'oms_task_group_info{{{GROUP_SEL}}}')}")
    columns = [("A", route), ("B", per_group("oms_task_group_progress_ratio")),
               ("C", per_group("oms_task_group_speed_bytes_per_second")),
               ("D", per_group("oms_task_group_tasks_created")), ("E", per_group("oms_task_group_tasks")),
               ("F", per_group("oms_task_group_tasks_failed")),
               ("G", per_group("oms_task_group_objects_failed")),
               ("H", per_group("oms_task_group_elapsed_seconds"))]
    names = {"Value #B": "Progress", "Value #C": "Speed", "Value #D": "Tasks created", "Value #E": "Tasks",
             "Value #F": "Tasks failed", "Value #G": "Failed objects", "Value #H": "Running for",
             "group_id": "Group", "source": "Source", "destination": "Destination", "status": "Status",
             "task_type": "Type"}
    order = ["Group", "project_id", "Type", "Source", "Destination", "Status", "Progress", "Speed", "Tasks created",
             "Tasks", "Tasks failed", "Failed objects", "Running for"]
    link = (f"/d/{GROUP_DASHBOARD_UID}/oms-task-group?var-datasource=${{datasource}}"
            "&var-project_id=${__data.fields.project_id}&var-group_id=${__data.fields.group_id}"
            "&${__url_time_range}")
    return record_table(
        "Task groups", columns, (6, y, 18, 10), names=names, order=order, sort_by="Speed",
        description="One row per task group (the OMS way to migrate a bucket over 3 TB or 5 million objects: "
                    "many tasks run as one). Click a group for its detail and the progress of its tasks. "
                    + SAME_OBJECTS,
        overrides=[
            override("Group", links=[{"title": "Task group detail", "url": link}]),
            status_column(group_mappings(by_code=False)),
            progress_column(),
            override("Speed", unit="binBps"),
            override("Running for", unit="dtdurations"),
            red_above_0_column("Tasks failed"), red_above_0_column("Failed objects"),
        ])


SYNC_SEL = 'project_id=~"$project_id"'


def per_sync(metric: str, extra: str = "") -> str:
    """`metric` (with the matchers `extra`) of the selected projects' sync tasks, one series per sync task."""
    return one_per("project_id, sync_task_id", in_region(f"{metric}{{{SYNC_SEL}{extra}}}"))


def syncs_table(y: int) -> Panel:
    in_status = one_per("project_id, sync_task_id, status", in_region(f"oms_sync_task_status{{{SYNC_SEL}}} == 1"))
    route = with_route(f"{in_status} * on (project_id, sync_task_id) group_left ({', '.join(ROUTE_LABELS)})"
                       f" {one_info('project_id, sync_task_id', f'oms_sync_task_info{{{SYNC_SEL}}}')}")
    columns = [("A", route)] + [
        (ref, per_sync("oms_sync_task_monthly_objects", f', result="{result}"'))
        for ref, result in (("B", "requested"), ("C", "succeeded"), ("D", "failed"), ("E", "skipped"))] + [
        ("F", per_sync("oms_sync_task_monthly_bytes")),
        ("G", f"{per_sync('oms_sync_task_last_start_timestamp_seconds')} * 1000")]
    names = {"Value #B": "Requested", "Value #C": "Succeeded", "Value #D": "Failed", "Value #E": "Skipped",
             "Value #F": "Bytes", "Value #G": "Last started", "sync_task_id": "Sync task", "source": "Source",
             "destination": "Destination", "status": "Status"}
    order = ["Sync task", "project_id", "Source", "Destination", "Status", "Requested", "Succeeded", "Failed",
             "Skipped", "Bytes", "Last started"]
    return record_table(
        "Sync tasks (this month)", columns, (0, y, 14, 8), names=names, order=order,
        description="Synchronization tasks and their objects of the current month (OMS counts them month to "
                    "date: they start again from 0 when a month begins). Sync tasks exist in some regions only.",
        overrides=[
            status_column(status_mappings(False, list(SYNC_STATUS_COLORS), SYNC_STATUS_COLORS)),
            override("Bytes", unit="bytes"),
            override("Last started", unit="dateTimeAsIso"),
            red_above_0_column("Failed"),
        ])


# --- projects and discovery ----------------------------------------------------------------------
DISCOVERY_STATES = ("scraped", "forbidden", "not_offered", "disabled", "excluded")
PROJECT_SEL = 'project_id=~"$project_id"'
UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                             "1": {"text": "UP", "color": "green"}}}]


def per_project(metric: str, how: str = "max") -> str:
    """`metric` of the selected projects and regions, one series per project (`how` of its copies)."""
    return f"{how} by (project_id) ({in_region(f'{metric}{{{PROJECT_SEL}}}')})"


def projects_table(y: int) -> Panel:
    # The info series with every label it has: static labels (team, environment) become columns.
    info = one_info("project_id", f'oms_project_info{{{PROJECT_SEL}, region=~"$region"}}')
    columns = [("A", info), ("B", per_project("oms_up", "min")),
               ("C", f"sum by (project_id) ({totals('oms_tasks')})"),
               ("D", per_project("oms_scrape_duration_seconds")),
               ("E", f"time() - {per_project('oms_listing_timestamp_seconds')}")]
    names = {"project_name": "Project", "region": "Region", "Value #B": "Up", "Value #C": "Tasks",
             "Value #D": "Listing duration", "Value #E": "Data age"}
    return record_table(
        "Projects", columns, (0, y, 14, 8), names=names, hidden=("__name__", "job", "instance"),
        order=["Project", "project_id", "Region", "Up", "Tasks", "Listing duration", "Data age"],
        description="One row per target, configured or discovered: its project's name, id and region "
                    "(oms_project_info, with its static labels), whether its last listing succeeded, its tasks "
                    "in the selected states, how long the listing took and how old the data served is.",
        overrides=[
            override("Up", mappings=UP_MAPPINGS, custom__cellOptions={"type": "color-background"}),
            override("Listing duration", unit="s"),
            override("Data age", unit="s"),
        ])


def discovery_table(y: int) -> Panel:
    states = [(chr(ord("C") + i), state) for i, state in enumerate(DISCOVERY_STATES)]
    columns = [("A", "group by (discovery) (oms_discovery_success)"),
               ("B", "min by (discovery) (oms_discovery_success)"),
               *((ref, f'max by (discovery) (oms_discovery_projects{{state="{state}"}})') for ref, state in states),
               ("H", "time() - min by (discovery) (oms_discovery_last_success_timestamp_seconds > 0)")]
    titles = {state: state.replace("_", " ").capitalize() for _, state in states}
    names = {"discovery": "Discovery", "Value #B": "Last refresh", "Value #H": "List age",
             **{f"Value #{ref}": titles[state] for ref, state in states}}
    return record_table(
        "Discovery", columns, (14, y, 10, 8), names=names, hidden=(),
        order=["Discovery", "Last refresh", *titles.values(), "List age"],
        description="One row per discovery entry (`default` for the single form): whether its last refresh "
                    "from IAM succeeded, its projects by state (scraped: a target; forbidden: OMS answered 403 "
                    "there; not offered: no OMS in that region; disabled; excluded: by its lists, or not a "
                    "region project), and how old its project list is: OmsDiscoveryFailing fires past 30 "
                    "minutes. The project and region variables do not apply.",
        overrides=[
            override("Last refresh", custom__cellOptions={"type": "color-background"}, mappings=[
                {"type": "value", "options": {"0": {"text": "failed", "color": "red"},
                                              "1": {"text": "ok", "color": "green"}}}]),
            red_above_0_column("Forbidden"),
            override("List age", unit="s", custom__cellOptions={"type": "color-text"}, thresholds={
                "mode": "absolute", "steps": [{"color": "text", "value": None}, {"color": "red", "value": 1800}]}),
        ])


def tasks_dashboard() -> dict[str, Any]:
    p: list[Panel] = [row("Overview", 0)]
    p.append(stat("Tasks per status", [target(f'sum by (status) ({totals("oms_tasks")})', legend="{{status}}")],
                  (0, 1, 7, 5), description="All tasks of the projects, from the full listing (group and task "
                                            "filters do not apply; old finished tasks included).",
                  overrides=[override(s, color={"mode": "fixed", "fixedColor": c}) for s, c in STATUS_COLORS.items()]))
    p.append(panel("gauge", "Overall progress", [target(
        f'sum({totals("oms_tasks_completed_bytes")}) / sum({totals("oms_tasks_size_bytes")})')],
        (7, 1, 4, 5), unit="percentunit", min_=0, max_=1, decimals=1,
        description="Bytes completed / bytes to migrate, over every task of the projects in the selected "
                    "states (group and task filters do not apply; old finished tasks included).",
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "showThresholdLabels": False, "showThresholdMarkers": False}))
    p.append(stat("Total throughput", [target(f'sum({totals("oms_tasks_speed_bytes_per_second")})')],
                  (11, 1, 4, 5), unit="binBps",
                  description="Sum of the current speeds of every task of the projects in the selected states."))
    p.append(stat("Objects failed", [target(f'sum({totals("oms_tasks_objects_failed")})')], (15, 1, 3, 5),
                  thresholds=[(None, "green"), (1, "red")],
                  description="Failed objects of every task of the projects in the selected states "
                              "(old finished tasks included)."))
    p.append(stat("OMS API up", [target(per_project("oms_up", "min"), legend="{{project_id}}")], (18, 1, 3, 5),
                  mappings=UP_MAPPINGS,
                  description="Whether the last listing of every task of the project succeeded (oms_up)."))
    p.append(stat("Listing duration", [target(f"max({in_region(f'oms_scrape_duration_seconds{{{PROJECT_SEL}}}')})")],
                  (21, 1, 3, 5), unit="s", thresholds=[(None, "green"), (5, "orange"), (9, "red")],
                  description="How long listing every task took at the last scrape (slowest project)."))

    p.append(row("Tasks", 6))
    p.append(tasks_table(7))

    p.append(row("Trends", 19))
    p.append(timeseries("Throughput per task", [target(per_task("oms_task_speed_bytes_per_second"),
                                                       legend="{{name}}")], (0, 20, 12, 9), unit="binBps"))
    p.append(timeseries("Progress per task", [target(per_task("oms_task_progress_ratio"), legend="{{name}}")],
                        (12, 20, 12, 9), unit="percentunit", min_=0, max_=1))
    p.append(timeseries("Failed objects", [target(per_task("oms_task_objects_failed"), legend="{{name}}")],
                        (0, 29, 12, 9), description="Failed objects per task over time; a rising line is "
                                                    "what OmsTaskFailedObjectsIncreasing alerts on."))
    p.append(state_timeline("Task status", [target(per_task("oms_task_status_code"), legend="{{name}}")],
                            (12, 29, 12, 9), description="Status of each selected task over time."))

    p.append(row("Task groups", 38))
    p.append(stat("Task groups per status", [target(
        f"sum by (status) ({one_per('project_id, status', in_region(f'oms_task_groups{{{PROJECT_SEL}}}'))})",
        legend="{{status}}")],
        (0, 39, 6, 10), description="All task groups of the projects, by state (the group filter does not "
                                    "apply). " + SAME_OBJECTS,
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "colorMode": "value", "graphMode": "none", "textMode": "value_and_name",
                 "justifyMode": "auto", "orientation": "horizontal"},
        overrides=[override(s, color={"mode": "fixed", "fixedColor": c}) for s, c in GROUP_STATUS_COLORS.items()]))
    p.append(groups_table(39))

    p.append(row("Sync tasks", 49))
    p.append(syncs_table(50))
    p.append(timeseries("Sync objects failed this month", [target(
        per_sync("oms_sync_task_monthly_objects", ', result="failed"'), legend="{{sync_task_id}}")],
        (14, 50, 10, 8), description="Month to date: the line drops to 0 when a month begins. A rising line "
                                     "is what OmsSyncTaskObjectsFailing alerts on."))

    p.append(row("Projects", 58))
    p.append(projects_table(59))
    p.append(discovery_table(59))

    # Each exporter counts its own requests and errors: those add up across instances.
    p.append(row("Exporter", 67))
    p.append(timeseries("OMS API requests", [target(
        f"sum by (project_id, code) ({in_region(f'rate(oms_api_requests_total{{{PROJECT_SEL}}}[$__rate_interval])')})",
        legend="{{project_id}} {{code}}")], (0, 68, 6, 8), unit="reqps"))
    buckets = in_region(f"rate(oms_api_request_duration_seconds_bucket{{{PROJECT_SEL}}}[$__rate_interval])")
    p.append(timeseries("OMS API latency", [
        target(f"histogram_quantile(0.5, sum by (project_id, le) ({buckets}))", "A", "p50 {{project_id}}"),
        target(f"histogram_quantile(0.99, sum by (project_id, le) ({buckets}))", "B", "p99 {{project_id}}")],
        (6, 68, 6, 8), unit="s"))
    errors = in_region(f"increase(oms_scrape_errors_total{{{PROJECT_SEL}}}[$__rate_interval])")
    p.append(timeseries("Listing errors", [target(
        f"sum by (project_id, reason) ({errors})", legend="{{project_id}} {{reason}}")], (12, 68, 5, 8),
        description="Failed listings by reason (timeout, throttled, auth, http_5xx, ...)."))
    p.append(timeseries("Listing duration and malformed tasks", [
        target(per_project("oms_scrape_duration_seconds"), "A", "duration {{project_id}}"),
        target(per_project("oms_malformed_tasks"), "B", "malformed {{project_id}}")],
        (17, 68, 4, 8), unit="s", overrides=[override("B", "byFrameRefID", unit="short")]))
    p.append(stat("Exporter version", [target("count by (version) (oms_exporter_build_info)",
                                              legend="{{version}}", instant=True)], (21, 68, 3, 8),
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "colorMode": "none", "graphMode": "none", "textMode": "name",
                           "justifyMode": "auto", "orientation": "auto"}))
    p.append(state_timeline("Collectors", [target(
        f"min by (project_id, collector) ({in_region(f'oms_collector_success{{{PROJECT_SEL}}}')})",
        legend="{{project_id}} {{collector}}")],
        (0, 76, 24, 5), mappings=[{"type": "value", "options": {
            "0": {"text": "failed", "color": "red", "index": 0}, "1": {"text": "listed", "color": "green",
                                                                      "index": 1}}}],
        description="Whether each API area (tasks, task_groups, sync_tasks) of each project was listed at "
                    "each scrape; the reason of a failure is in Listing errors."))

    variables = [
        datasource_variable(),
        query_variable("region", "Region", "label_values(oms_project_info, region)"),
        # The projects of the selected regions; with every region, also those without an info series.
        query_variable("project_id", "Project",
                       'label_values({__name__=~"oms_up|oms_project_info", region=~"$region"}, project_id)'),
        query_variable("group_id", "Task group",
                       # groups of the tasks, and groups served by the task-group collector
                       'label_values({__name__=~"oms_task_info|oms_task_group_info", '
                       'project_id=~"$project_id"}, group_id)'),
        query_variable("task", "Task", 'label_values(oms_task_info{project_id=~"$project_id", '
                                       'group_id=~"$group_id"}, name)'),
        {"name": "status", "label": "Status", "type": "custom", "query": ",".join(STATUSES),
         "multi": True, "includeAll": True, "allValue": ".*", "hide": 0,
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
         "options": [{"selected": False, "text": s, "value": s} for s in STATUSES]},
    ]
    links = [{"title": "Task detail", "type": "dashboards", "tags": ["oms-task"], "asDropdown": False,
              "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False}]
    return dashboard("oms-tasks", "OMS migration tasks",
                     "Huawei Cloud OMS migration tasks, from oms-exporter.", variables, p, links)


# --- the drill-down dashboards' panels -----------------------------------------------------------
GREEN_RED_ABOVE_0 = {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}


def labels_table(title: str, expr: str, grid: tuple[int, int, int, int], description: str = "") -> Panel:
    """Every label of the series of `expr` (an info series), one row."""
    return panel("table", title, [target(expr, instant=True, table=True)], grid, description=description,
                 options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
                 transformations=[{"id": "organize", "options": {"excludeByName": {
                     "Time": True, "Value": True, "__name__": True, "job": True, "instance": True}}}])


def state_stat(expr: str, grid: tuple[int, int, int, int], mappings: list[dict[str, Any]]) -> Panel:
    return stat("Status", [target(expr)], grid, mappings=mappings,
                options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "colorMode": "background", "graphMode": "none", "textMode": "value",
                         "justifyMode": "auto", "orientation": "auto"})


def progress_gauge(expr: str, grid: tuple[int, int, int, int], description: str = "") -> Panel:
    return panel("gauge", "Progress", [target(expr)], grid, unit="percentunit", min_=0, max_=1, decimals=1,
                 description=description,
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "showThresholdLabels": False, "showThresholdMarkers": False})


def started_stat(expr: str, grid: tuple[int, int, int, int]) -> Panel:
    """A start time in seconds (none while 0: not started)."""
    return stat("Started", [target(f"{expr} * 1000 > 0")], grid, unit="dateTimeAsIso",
                options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "colorMode": "none", "graphMode": "none", "textMode": "value",
                         "justifyMode": "auto", "orientation": "auto"})


# --- the one-task dashboard --------------------------------------------------------------------
def task_dashboard() -> dict[str, Any]:
    p: list[Panel] = [row("Task ${name}", 0)]
    p.append(labels_table("Task", one_task_info("oms_task_info"), (0, 1, 24, 3)))
    p.append(state_stat(one_task("oms_task_status_code"), (0, 4, 4, 4), status_mappings(by_code=True)))
    p.append(progress_gauge(one_task("oms_task_progress_ratio"), (4, 4, 4, 4)))
    p.append(stat("Speed", [target(one_task("oms_task_speed_bytes_per_second"))], (8, 4, 4, 4), unit="binBps"))
    p.append(stat("ETA", [target(one_task("oms_task_remaining_seconds"))], (12, 4, 3, 4), unit="dtdurations"))
    p.append(stat("Running for", [target(one_task("oms_task_elapsed_seconds"))], (15, 4, 3, 4),
                  unit="dtdurations"))
    p.append(started_stat(one_task("oms_task_start_timestamp_seconds"), (18, 4, 6, 4)))
    p.append(stat("Bytes", [
        target(one_task("oms_task_size_bytes"), "A", "total"),
        target(one_task("oms_task_completed_bytes"), "B", "completed"),
        target(one_task("oms_task_migrated_bytes"), "C", "migrated")], (0, 8, 12, 4), unit="bytes"))
    p.append(stat("Objects", [
        target(one_task("oms_task_objects"), "A", "total"),
        target(one_task("oms_task_objects_succeeded"), "B", "succeeded"),
        target(one_task("oms_task_objects_failed"), "C", "failed"),
        target(one_task("oms_task_objects_skipped"), "D", "skipped")], (12, 8, 12, 4),
        overrides=[override("failed", thresholds=GREEN_RED_ABOVE_0)]))
    p.append(labels_table("Error", one_task_info("oms_task_error_info"), (0, 12, 24, 3),
                          "Why OMS says the task failed; empty while it has not."))
    p.append(timeseries("Speed and bandwidth limits", [
        target(one_task("oms_task_speed_bytes_per_second"), "A", "speed"),
        target(one_task("oms_task_bandwidth_limit_bytes_per_second", ", start, end"), "B", "limit {{start}}-{{end}}")],
        (0, 15, 12, 8), unit="binBps"))
    p.append(timeseries("Progress", [target(one_task("oms_task_progress_ratio"), legend="progress")],
                        (12, 15, 12, 8), unit="percentunit", min_=0, max_=1))
    p.append(timeseries("Objects", [
        target(one_task("oms_task_objects_succeeded"), "A", "succeeded"),
        target(one_task("oms_task_objects_failed"), "B", "failed"),
        target(one_task("oms_task_objects_skipped"), "C", "skipped")], (0, 23, 12, 8)))
    p.append(state_timeline("Status", [target(one_task("oms_task_status_code"), legend="status")],
                            (12, 23, 12, 8)))
    variables = [
        datasource_variable(),
        query_variable("project_id", "Project", "label_values(oms_up, project_id)", multi=False),
        query_variable("task_id", "Task id", 'label_values(oms_task_info{project_id="$project_id"}, task_id)',
                       multi=False),
        query_variable("name", "Task", 'label_values(oms_task_info{project_id="$project_id", '
                                       'task_id="$task_id"}, name)', multi=False, hide=2),
    ]
    links = [{"title": "All tasks", "type": "dashboards", "tags": ["oms-tasks"], "asDropdown": False,
              "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False}]
    d = dashboard(TASK_DASHBOARD_UID, "OMS migration task", "One OMS migration task in detail.",
                  variables, p, links)
    d["tags"] = ["oms", "oms-exporter", "oms-task"]
    return d


# --- the one-group dashboard -------------------------------------------------------------------
def one_group(metric: str) -> str:
    """`metric` of the group the variables name: one series, however many exporters serve it."""
    return one_per("project_id, group_id", f'{metric}{{project_id="$project_id", group_id="$group_id"}}')


def one_group_info(metric: str) -> str:
    """An info series (every label) of the group the variables name, one however many exporters serve it."""
    return one_info("project_id, group_id", f'{metric}{{project_id="$project_id", group_id="$group_id"}}')


# The tasks of the group: their task_id and name from oms_task_info, by the group's id (one
# info series per task, and one value per task, however many exporters serve the project).
GROUP_TASKS = one_info("project_id, task_id",
                       'oms_task_info{project_id="$project_id", group_id="$group_id", group_type="GROUP_TASK"}')


def of_group_tasks(metric: str) -> str:
    tasks = one_per("project_id, task_id", f'{metric}{{project_id="$project_id"}}')
    return f"{tasks} * on (project_id, task_id) group_left (name) {GROUP_TASKS}"


def group_dashboard() -> dict[str, Any]:
    value_stat = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                  "colorMode": "none", "graphMode": "none", "textMode": "value_and_name",
                  "justifyMode": "auto", "orientation": "auto"}
    p: list[Panel] = [row("Task group ${group_id}", 0)]
    p.append(labels_table("Task group", one_group_info("oms_task_group_info"), (0, 1, 24, 3)))
    p.append(state_stat(one_group("oms_task_group_status_code"), (0, 4, 4, 4), group_mappings(by_code=True)))
    p.append(progress_gauge(one_group("oms_task_group_progress_ratio"), (4, 4, 4, 4),
                            "Bytes completed / bytes to migrate (complete_size / total_size)."))
    p.append(stat("Speed", [target(one_group("oms_task_group_speed_bytes_per_second"))], (8, 4, 4, 4),
                  unit="binBps"))
    p.append(stat("Running for", [target(one_group("oms_task_group_elapsed_seconds"))], (12, 4, 4, 4),
                  unit="dtdurations"))
    p.append(started_stat(one_group("oms_task_group_start_timestamp_seconds"), (16, 4, 8, 4)))
    task_counts = ["created", "migrating", "waiting", "paused", "failed", "succeeded"]  # oms_task_group_tasks_*
    p.append(stat("Tasks", [target(one_group("oms_task_group_tasks"), "A", "planned")] + [
        target(one_group(f"oms_task_group_tasks_{c}"), chr(ord("B") + i), c) for i, c in enumerate(task_counts)],
        (0, 8, 12, 4),
        description="While the group is creating its tasks, created grows towards planned.", options=value_stat,
        overrides=[override("failed", thresholds=GREEN_RED_ABOVE_0)]))
    p.append(stat("Objects", [
        target(one_group("oms_task_group_objects"), "A", "total"),
        target(one_group("oms_task_group_objects_created"), "B", "in tasks created"),
        target(one_group("oms_task_group_objects_succeeded"), "C", "succeeded"),
        target(one_group("oms_task_group_objects_failed"), "D", "failed"),
        target(one_group("oms_task_group_objects_skipped"), "E", "skipped")], (12, 8, 12, 4), options=value_stat,
        overrides=[override("failed", thresholds=GREEN_RED_ABOVE_0)]))
    p.append(stat("Bytes", [
        target(one_group("oms_task_group_size_bytes"), "A", "total"),
        target(one_group("oms_task_group_created_bytes"), "B", "in tasks created"),
        target(one_group("oms_task_group_completed_bytes"), "C", "completed")], (0, 12, 12, 4), unit="bytes",
        options=value_stat))
    p.append(labels_table("Error", one_group_info("oms_task_group_error_info"), (12, 12, 12, 4),
                          "Why OMS says the group failed; empty while it has not."))
    p.append(timeseries("Progress of the group and of its tasks", [
        target(one_group("oms_task_group_progress_ratio"), "A", "group"),
        target(of_group_tasks("oms_task_progress_ratio"), "B", "{{name}}")], (0, 16, 12, 9),
        unit="percentunit", min_=0, max_=1,
        description="The group's progress (bytes) and that of each of its tasks (listed with this group_id "
                    "and group_type GROUP_TASK).",
        overrides=[override("group", custom__lineWidth=3)]))
    p.append(timeseries("Tasks by state", [
        target(one_group(f"oms_task_group_tasks_{c}"), chr(ord("A") + i), c) for i, c in enumerate(task_counts)],
        (12, 16, 12, 9),
        overrides=[override(s, color={"mode": "fixed", "fixedColor": STATUS_COLORS[s]})
                   for s in ("migrating", "waiting", "paused", "failed", "succeeded")]))
    p.append(timeseries("Speed of the group and of its tasks", [
        target(one_group("oms_task_group_speed_bytes_per_second"), "A", "group"),
        target(of_group_tasks("oms_task_speed_bytes_per_second"), "B", "{{name}}")], (0, 25, 12, 8),
        unit="binBps", description="The group's speed is that of its tasks: the lines are not to be added.",
        overrides=[override("group", custom__lineWidth=3)]))
    p.append(timeseries("Objects", [
        target(one_group("oms_task_group_objects_succeeded"), "A", "succeeded"),
        target(one_group("oms_task_group_objects_failed"), "B", "failed"),
        target(one_group("oms_task_group_objects_skipped"), "C", "skipped")], (12, 25, 12, 8)))
    p.append(state_timeline("Status", [target(one_group("oms_task_group_status_code"), legend="status")],
                            (0, 33, 24, 5), mappings=group_mappings(by_code=True)))
    in_status = one_per("project_id, task_id, status", 'oms_task_status{project_id="$project_id"} == 1')
    route = f"{in_status} * on (project_id, task_id) group_left (name) {GROUP_TASKS}"
    link = (f"/d/{TASK_DASHBOARD_UID}/oms-task?var-datasource=${{datasource}}"
            "&var-project_id=${__data.fields.project_id}&var-task_id=${__data.fields.task_id}&${__url_time_range}")
    p.append(record_table(
        "Tasks of the group", [("A", route), ("B", of_group_tasks("oms_task_progress_ratio")),
                               ("C", of_group_tasks("oms_task_speed_bytes_per_second")),
                               ("D", of_group_tasks("oms_task_objects_failed"))], (0, 38, 24, 10),
        names={"name": "Task", "status": "Status", "Value #B": "Progress", "Value #C": "Speed",
               "Value #D": "Failed objects"},
        order=["Task", "project_id", "task_id", "Status", "Progress", "Speed", "Failed objects"],
        description="Click a task for its detail.", hidden=(),
        overrides=[
            override("Task", links=[{"title": "Task detail", "url": link}]),
            status_column(status_mappings(by_code=False)),
            progress_column(),
            override("Speed", unit="binBps"),
            red_above_0_column("Failed objects")]))
    variables = [
        datasource_variable(),
        query_variable("project_id", "Project", "label_values(oms_up, project_id)", multi=False),
        query_variable("group_id", "Task group",
                       'label_values(oms_task_group_info{project_id="$project_id"}, group_id)', multi=False),
    ]
    links = [{"title": "All tasks", "type": "dashboards", "tags": ["oms-tasks"], "asDropdown": False,
              "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False}]
    d = dashboard(GROUP_DASHBOARD_UID, "OMS task group", "One OMS task group in detail, with its tasks. "
                  + SAME_OBJECTS, variables, p, links)
    d["tags"] = ["oms", "oms-exporter", "oms-task-group"]
    return d


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    tasks = tasks_dashboard()
    tasks["tags"] = ["oms", "oms-exporter", "oms-tasks"]
    out = {f"{d['uid']}.json": json.dumps(d, indent=2, ensure_ascii=False) + "\n"
           for d in (tasks, task_dashboard(), group_dashboard())}
    # Every metric the dashboards name is one the exporter serves (its table of families).
    unknown = {name for text in out.values() for name in re.findall(r"\boms_\w+", text)} - ALL_METRIC_NAMES
    if unknown:
        raise SystemExit(f"the dashboards name metrics the exporter does not serve: {sorted(unknown)}")
    return out


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
