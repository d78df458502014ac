"""Writes the README's generated tables from their one definition: the settings and the metrics.

    python scripts/readme_tables.py           # rewrite the tables in README.md
    python scripts/readme_tables.py --check   # exit 1 if README.md is not what this writes

The settings come from the fields of `oms_exporter.settings.Options` (flags; a few also env and
YAML) and `Target` (environment and YAML) and the API areas' switches (`oms_exporter.catalog.AREAS`), the metrics
from `oms_exporter.catalog.families()` and `oms_exporter.metrics.SELF_FAMILIES`.
Each table sits between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->`.
tests/test_readme.py fails when README.md differs from this output.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic.fields import FieldInfo

from oms_exporter.catalog import AREAS, families, switch_help, target_switch_help
from oms_exporter.metrics import SELF_FAMILIES
from oms_exporter.settings import Credentials, DiscoveryEntry, Options, Target, meta, shown_default

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
        m = meta(info)
        if "flag" in m:  # an option with an `env` and a `yaml` name is read from those too
            names = " / ".join([f"`--{m['flag']}`", *(f"`{m[k]}`" for k in ("env", "yaml") if k in m)])
            where = " / ".join(w for w, k in (("flag", "flag"), ("env", "env"), ("YAML", "yaml")) if k in m)
            rows.append(f"| {names} | {where} | {_default(info)} | {info.description} |")
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


TABLES = {"settings": settings_table, "metrics": metrics_table}


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
