"""Writes oms_exporter/grafana_uses.py: the OMS families each shipped alert, recording rule and dashboard
panel (or variable) selects, read from grafana/.

    python scripts/grafana_uses.py           # rewrite oms_exporter/grafana_uses.py
    python scripts/grafana_uses.py --check   # exit 1 if it is not what this writes

The exporter warns at start when --metric-allowlist or --metric-denylist drops a family one of
them needs; the wheel ships no grafana/ folder, so this table is what it knows of them. An alert
or panel that reads a recording rule needs the families of that rule too. The PromQL is read
with tests/shipped.py's reader, the one tests/test_grafana.py checks the names of these files
with. tests/test_metric_lists.py fails when the committed table is not what this writes.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from oms_exporter.catalog import FAMILIES  # noqa: E402
from tests.shipped import (  # noqa: E402  (the PromQL reader of the tests: one reader of these files)
    ALERTS_FILE,
    RECORDING_FILE,
    all_panels,
    dashboards,
    label_values_selector,
    load_rules,
    metric_names,
    template_queries,
    variable_queries,
)

TABLE = ROOT / "oms_exporter" / "grafana_uses.py"
OMS = frozenset(f.name for f in FAMILIES)
# {__name__=~"oms_up|oms_project_info"}: names a selector picks by a matcher of plain alternatives.
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([A-Za-z_:][\w:]*(?:\|[A-Za-z_:][\w:]*)*)"')


def selected(expr: str) -> set[str]:
    """The metric names `expr` selects, by name or by a `__name__` matcher."""
    return metric_names(expr) | {n for m in _NAME_MATCHER.finditer(expr) for n in m.group(1).split("|")}


def _recorded() -> dict[str, frozenset[str]]:
    """Each recording rule -> the OMS families it reads, through the rules it reads too."""
    reads = {r["record"]: selected(r["expr"]) for r in load_rules(RECORDING_FILE)}
    out = {name: frozenset(names & OMS) for name, names in reads.items()}
    while True:  # rules reading rules: until nothing more is added
        more = {name: out[name].union(*(out[r] for r in reads[name] if r in out)) for name in out}
        if more == out:
            return out
        out = more


def _families(exprs: Iterable[str], recorded: dict[str, frozenset[str]]) -> tuple[str, ...]:
    names = set().union(*(selected(e) for e in exprs))
    found = (names & OMS).union(*(recorded[n] for n in names if n in recorded))
    return tuple(f.name for f in FAMILIES if f.name in found)  # in catalog order


def uses() -> dict[str, dict[str, tuple[str, ...]]]:
    """{"alerts" | "recording rules" | "dashboard TITLE": {rule, panel or $variable: the OMS families it needs}};
    what needs none is left out."""
    recorded = _recorded()
    out: dict[str, dict[str, tuple[str, ...]]] = {"alerts": {}, "recording rules": {}}
    for rule in load_rules(ALERTS_FILE):
        texts = [rule["expr"], *(q.replace('\\"', '"') for text in rule.get("annotations", {}).values()
                                 for q in template_queries(text))]
        out["alerts"][rule["alert"]] = _families(texts, recorded)
    for rule in load_rules(RECORDING_FILE):
        out["recording rules"][rule["record"]] = _families([rule["expr"]], recorded)
    for d in dashboards().values():
        panels: dict[str, set[str]] = {}
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                panels[f"${v['name']}"] = set(_families([label_values_selector(q)[0] for q in variable_queries(
                    {"templating": {"list": [v]}})], recorded))
        for p in all_panels(d["panels"]):
            exprs = [t["expr"] for t in p.get("targets", [])]
            if exprs:  # panels of one title (a stat and a timeline): one entry
                panels.setdefault(p["title"], set()).update(_families(exprs, recorded))
        out[f"dashboard {d['title']}"] = {k: tuple(f.name for f in FAMILIES if f.name in v) for k, v in panels.items()}
    return {what: {k: v for k, v in entries.items() if v} for what, entries in out.items()}


def _entry(key: str, families: tuple[str, ...]) -> list[str]:
    one = f"        {_q(key)}: ({', '.join(map(_q, families))}{',' if len(families) == 1 else ''}),"
    if len(one) <= 120:
        return [one]
    return [f"        {_q(key)}: (", *(f"            {_q(f)}," for f in families), "        ),"]


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a Python string literal for these names and titles


def render() -> str:
    lines = [
        '"""The OMS families each shipped alert, recording rule and Grafana panel (or $variable) reads.',
        "",
        "Written by scripts/grafana_uses.py from grafana/ (the wheel ships no grafana/): do not edit. The",
        "exporter names them in a warning when --metric-allowlist or --metric-denylist drops a family they need.",
        '"""',
        "",
        "USES: dict[str, dict[str, tuple[str, ...]]] = {",
    ]
    for what, entries in uses().items():
        lines.append(f"    {_q(what)}: {{")
        for key, families in entries.items():
            lines += _entry(key, families)
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TABLE.exists() or TABLE.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"{TABLE.relative_to(ROOT)} is out of date: run python scripts/grafana_uses.py\n")
            return 1
        return 0
    TABLE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
