"""Generates the Grafana dashboards of oms-exporter (Grafana JSON model, schemaVersion 39).

Run `python grafana/generate_dashboards.py` after editing; it rewrites
grafana/dashboards/*.json, which are committed and provisioned as they are.
tests/test_grafana.py fails when the committed files differ from this output.

Two dashboards:
- oms-tasks: every task of the selected projects (overview, table, trends, exporter health);
- oms-task: one task in detail, opened from the table's task names.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from oms_exporter.metrics import ALL_METRIC_NAMES

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
STATUSES = ["waiting", "migrating", "paused", "failed", "succeeded", "retrying", "pausing"]
STATUS_COLORS = {"waiting": "blue", "migrating": "green", "paused": "yellow", "failed": "red",
                 "succeeded": "dark-green", "retrying": "orange", "pausing": "light-yellow"}
TASK_DASHBOARD_UID = "oms-task"

Panel = dict[str, Any]

# --- PromQL ------------------------------------------------------------------------------------
# Per-task metrics carry only project_id and task_id: the task filters of the dashboard (group,
# name, status) are applied by joining oms_task_info and oms_task_status, and the join brings
# the task name along for legends and table rows.
INFO = 'oms_task_info{project_id=~"$project_id", group_id=~"$group_id", name=~"$task"}'
IN_STATUS = '(oms_task_status{project_id=~"$project_id", status=~"$status"} == 1)'


def per_task(metric: str) -> str:
    """`metric` of the tasks the variables select, with the task name as a label."""
    return (f'({metric}{{project_id=~"$project_id"}} and on (project_id, task_id) {IN_STATUS})'
            f" * on (project_id, task_id) group_left (name) {INFO}")


def totals(metric: str) -> str:
    """A per-project total (oms_tasks_*), over every task of the selected projects and states.

    The exporter sums these over the whole listing, so they hold whatever per-task series
    exist (--oms.per-task-series=false, finished tasks past their max age).
    """
    return f'{metric}{{project_id=~"$project_id", status=~"$status"}}'


def one_task(metric: str) -> str:
    return f'{metric}{{project_id="$project_id", task_id="$task_id"}}'


# --- building blocks ---------------------------------------------------------------------------
def target(expr: str, ref: str = "A", legend: str = "", *, instant: bool = False, table: bool = False
           ) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
                         "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


def status_mappings(by_code: bool) -> list[dict[str, Any]]:
    options = {}
    for i, name in enumerate(STATUSES, start=1):
        key = str(i) if by_code else name
        options[key] = {"text": name, "color": STATUS_COLORS[name], "index": i - 1}
    return [{"type": "value", "options": options}]


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


def state_timeline(title: str, targets: list[dict[str, Any]], grid: tuple[int, int, int, int], **kw: Any) -> Panel:
    return panel("state-timeline", title, targets, grid, mappings=status_mappings(by_code=True),
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
    route = (f"(oms_task_status{{project_id=~\"$project_id\", status=~\"$status\"}} == 1)"
             f" * on (project_id, task_id) group_left (name, group_id, src_cloud, src_region, src_bucket,"
             f" dst_region, dst_bucket) {INFO}")
    route = (f'label_join(label_join({route}, "source", "/", "src_cloud", "src_region", "src_bucket"),'
             f' "destination", "/", "dst_region", "dst_bucket")')
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
    return panel(
        "table", "Tasks", [target(e, ref, instant=True, table=True) for ref, e in columns], (0, y, 24, 12),
        description="One row per task selected by the variables. Click a task name for its detail dashboard.",
        custom={"align": "auto", "filterable": True, "cellOptions": {"type": "auto"}},
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False},
                 "sortBy": [{"displayName": "Speed", "desc": True}]},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value #A": True, "src_cloud": True, "src_region": True,
                                  "src_bucket": True, "dst_region": True, "dst_bucket": True},
                "renameByName": names,
                "indexByName": {name: i for i, name in enumerate(order)}}},
        ],
        overrides=[
            override("Task", links=[{"title": "Task detail", "url": link}]),
            override("Status", mappings=status_mappings(by_code=False),
                     custom__cellOptions={"type": "color-background"}),
            override("Progress", unit="percentunit", min=0, max=1,
                     custom__cellOptions={"type": "gauge", "mode": "basic"}),
            override("Speed", unit="binBps"),
            override("ETA", unit="dtdurations"),
            override("Failed objects", custom__cellOptions={"type": "color-text"},
                     thresholds={"mode": "absolute", "steps": [{"color": "text", "value": None},
                                                               {"color": "red", "value": 1}]}),
        ])


def tasks_dashboard() -> dict[str, Any]:
    p: list[Panel] = [row("Overview", 0)]
    p.append(stat("Tasks per status", [target(
        'sum by (status) (oms_tasks{project_id=~"$project_id", status=~"$status"})', legend="{{status}}")],
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
    p.append(stat("OMS API up", [target('min by (project_id) (oms_up{project_id=~"$project_id"})',
                                        legend="{{project_id}}")], (18, 1, 3, 5),
                  mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                                          "1": {"text": "UP", "color": "green"}}}],
                  description="Whether the last listing of every task of the project succeeded (oms_up)."))
    p.append(stat("Listing duration", [target('max(oms_scrape_duration_seconds{project_id=~"$project_id"})')],
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

    p.append(row("Exporter", 38))
    p.append(timeseries("OMS API requests", [target(
        'sum by (project_id, code) (rate(oms_api_requests_total{project_id=~"$project_id"}[$__rate_interval]))',
        legend="{{project_id}} {{code}}")], (0, 39, 6, 8), unit="reqps"))
    p.append(timeseries("OMS API latency", [
        target('histogram_quantile(0.5, sum by (project_id, le) (rate('
               'oms_api_request_duration_seconds_bucket{project_id=~"$project_id"}[$__rate_interval])))',
               "A", "p50 {{project_id}}"),
        target('histogram_quantile(0.99, sum by (project_id, le) (rate('
               'oms_api_request_duration_seconds_bucket{project_id=~"$project_id"}[$__rate_interval])))',
               "B", "p99 {{project_id}}")], (6, 39, 6, 8), unit="s"))
    p.append(timeseries("Listing errors", [target(
        'sum by (project_id, reason) (increase(oms_scrape_errors_total{project_id=~"$project_id"}'
        '[$__rate_interval]))', legend="{{project_id}} {{reason}}")], (12, 39, 5, 8),
        description="Failed listings by reason (timeout, throttled, auth, http_5xx, ...)."))
    p.append(timeseries("Listing duration and malformed tasks", [
        target('oms_scrape_duration_seconds{project_id=~"$project_id"}', "A", "duration {{project_id}}"),
        target('oms_malformed_tasks{project_id=~"$project_id"}', "B", "malformed {{project_id}}")],
        (17, 39, 4, 8), unit="s", overrides=[override("B", "byFrameRefID", unit="short")]))
    p.append(stat("Exporter version", [target("count by (version) (oms_exporter_build_info)",
                                              legend="{{version}}", instant=True)], (21, 39, 3, 8),
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "colorMode": "none", "graphMode": "none", "textMode": "name",
                           "justifyMode": "auto", "orientation": "auto"}))

    variables = [
        datasource_variable(),
        query_variable("project_id", "Project", "label_values(oms_up, project_id)"),
        query_variable("group_id", "Task group",
                       'label_values(oms_task_info{project_id=~"$project_id"}, group_id)'),
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


# --- the one-task dashboard --------------------------------------------------------------------
def task_dashboard() -> dict[str, Any]:
    p: list[Panel] = [row("Task ${name}", 0)]
    p.append(panel("table", "Task", [target(one_task("oms_task_info"), instant=True, table=True)], (0, 1, 24, 3),
                   options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
                   transformations=[{"id": "organize", "options": {
                       "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True,
                                         "instance": True}}}]))
    p.append(stat("Status", [target(one_task("oms_task_status_code"))], (0, 4, 4, 4),
                  mappings=status_mappings(by_code=True),
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "colorMode": "background", "graphMode": "none", "textMode": "value",
                           "justifyMode": "auto", "orientation": "auto"}))
    p.append(panel("gauge", "Progress", [target(one_task("oms_task_progress_ratio"))], (4, 4, 4, 4),
                   unit="percentunit", min_=0, max_=1, decimals=1,
                   options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "showThresholdLabels": False, "showThresholdMarkers": False}))
    p.append(stat("Speed", [target(one_task("oms_task_speed_bytes_per_second"))], (8, 4, 4, 4), unit="binBps"))
    p.append(stat("ETA", [target(one_task("oms_task_remaining_seconds"))], (12, 4, 3, 4), unit="dtdurations"))
    p.append(stat("Running for", [target(one_task("oms_task_elapsed_seconds"))], (15, 4, 3, 4),
                  unit="dtdurations"))
    p.append(stat("Started", [target(f'{one_task("oms_task_start_timestamp_seconds")} * 1000 > 0')],
                  (18, 4, 6, 4), unit="dateTimeAsIso",
                  options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "colorMode": "none", "graphMode": "none", "textMode": "value",
                           "justifyMode": "auto", "orientation": "auto"}))
    p.append(stat("Bytes", [
        target(one_task("oms_task_size_bytes"), "A", "total"),
        target(one_task("oms_task_completed_bytes"), "B", "completed"),
        target(one_task("oms_task_migrated_bytes"), "C", "migrated")], (0, 8, 12, 4), unit="bytes"))
    p.append(stat("Objects", [
        target(one_task("oms_task_objects"), "A", "total"),
        target(one_task("oms_task_objects_succeeded"), "B", "succeeded"),
        target(one_task("oms_task_objects_failed"), "C", "failed"),
        target(one_task("oms_task_objects_skipped"), "D", "skipped")], (12, 8, 12, 4),
        overrides=[override("failed", thresholds={"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": 1}]})]))
    p.append(panel("table", "Error", [target(one_task("oms_task_error_info"), instant=True, table=True)],
                   (0, 12, 24, 3), description="Why OMS says the task failed; empty while it has not.",
                   options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
                   transformations=[{"id": "organize", "options": {"excludeByName": {
                       "Time": True, "Value": True, "__name__": True, "job": True, "instance": True}}}]))
    p.append(timeseries("Speed and bandwidth limits", [
        target(one_task("oms_task_speed_bytes_per_second"), "A", "speed"),
        target(one_task("oms_task_bandwidth_limit_bytes_per_second"), "B", "limit {{start}}-{{end}}")],
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


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    tasks = tasks_dashboard()
    tasks["tags"] = ["oms", "oms-exporter", "oms-tasks"]
    out = {f"{d['uid']}.json": json.dumps(d, indent=2, ensure_ascii=False) + "\n"
           for d in (tasks, task_dashboard())}
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
