"""The README's configuration and metrics tables are written from their one definition, and stay so."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from oms_exporter.catalog import AREAS, FAMILIES
from oms_exporter.metrics import SELF_FAMILIES
from oms_exporter.settings import Options, Target, meta
from tests.conftest import load_module

ROOT = Path(__file__).resolve().parent.parent


def generator() -> ModuleType:
    return load_module(ROOT / "scripts" / "readme_tables.py")


def test_readme_tables_are_the_generated_ones() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert generator().render(text) == text, "run: python scripts/readme_tables.py"


def test_every_setting_and_metric_is_in_the_readme() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for info in Options.model_fields.values():
        assert "flag" not in meta(info) or f"`--{meta(info)['flag']}`" in text
    for name, info in Target.model_fields.items():
        assert info.description is None or f"`{name}`" in text
        assert "env" not in meta(info) or f"`{meta(info)['env']}`" in text
    for area in AREAS:
        assert not area.optional or (f"`--{area.flag}`" in text and f"`{area.name}`" in text)
    for name in [f.name for f in FAMILIES] + [f.name for f in SELF_FAMILIES]:
        assert re.search(rf"\| `{name}[{{`]", text), name


def test_a_changed_help_text_makes_the_check_fail(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    module = generator()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    info = Options.model_fields["page_limit"]
    monkeypatch.setattr(info, "description", "tasks per page, changed")
    assert module.render(text) != text
