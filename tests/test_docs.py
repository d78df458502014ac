"""The README is read in one sitting, and every relative link of the repository's Markdown leads somewhere.

A relative link must name a file or folder of the repository; a `#anchor` on a link to a
Markdown file (or on a link within one) must be a heading of that file, spelled as GitHub
spells heading anchors: the heading's text in lower case, punctuation other than `-` and `_`
dropped, each space a `-`, and `-1`, `-2`, ... after repeats. Links inside code are not links.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 400
# Folders that are not the project's own Markdown (virtualenvs, caches, build output).
SKIP_DIRS = {".git", ".venv", "venv", ".tox", ".nox", ".pytest_cache", ".mypy_cache", ".ruff_cache",
             ".hypothesis", "node_modules", "build", "dist", "__pycache__"}

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^()\s<>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HTML_LINK = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def markdown_files(root: Path = ROOT) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(folder) / f for f in files if f.endswith(".md")]
    return sorted(found)


def outside_fences(text: str) -> list[str]:
    """The lines of `text` outside fenced code blocks."""
    out, fence = [], ""
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(" `~"):
                fence = ""
            continue
        if m:
            fence = m.group(1)
            continue
        out.append(line)
    return out


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading of this text (before repeats are numbered)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in outside_fences(path.read_text(encoding="utf-8")):  # code spans are heading text
        m = HEADING.match(line)
        if not m:
            continue
        base = github_anchor(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    found = []
    for line in outside_fences(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)  # a link in code is not a link
        found += INLINE_LINK.findall(line) + HTML_LINK.findall(line)
        m = REFERENCE_DEF.match(line)
        if m:
            found.append(m.group(1))
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of `path` that names no file of `root`, or an anchor its target lacks."""
    broken = []
    for link in links(path):
        if SCHEME.match(link):
            continue  # http:, https:, mailto:: not checked here
        target, _, anchor = link.partition("#")
        dest = (path.parent / unquote(target)).resolve() if target else path
        if not dest.is_relative_to(root.resolve()):
            broken.append(f"{link}: outside the repository")
        elif not dest.exists():
            broken.append(f"{link}: no such file")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            broken.append(f"{link}: no heading #{anchor} in {dest.relative_to(root.resolve())}")
    return broken


def test_the_readme_is_read_in_one_sitting() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/*.md"


def test_the_readme_keeps_its_set_up_commands() -> None:
    """The two commands a newcomer copies (the second is what .ci/run runs), and the fast subset."""
    text = README.read_text(encoding="utf-8")
    assert "```sh\npip install . && oms-exporter --demo\n```" in text
    assert "```sh\nscripts/test\n```" in text
    assert '`pytest -m "not slow"`' in text


def test_the_markdown_files_are_found() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/runbook.md", "docs/architecture.md"} <= files, files


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_every_doc_is_linked_from_the_readme() -> None:
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in links(README)}
    orphans = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert orphans == [], "docs/*.md not linked from README.md"


def test_github_anchors() -> None:
    assert github_anchor("Listing: by liveness (default) or in full") == "listing-by-liveness-default-or-in-full"
    assert github_anchor("Securing the exporter's endpoint: `--web.config.file`") == \
        "securing-the-exporters-endpoint---webconfigfile"
    assert github_anchor("Performance at 10,000+ tasks") == "performance-at-10000-tasks"
    assert github_anchor("OmsTaskFailed") == "omstaskfailed"
    assert github_anchor("[Kubernetes](docs/kubernetes.md) and oms_up") == "kubernetes-and-oms_up"


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n\n## Twice\n\n## Twice\n\n```\n# not a heading\n```\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# R\n\n[ok](docs/a.md) [ok](docs/a.md#a-title) [ok](docs/a.md#twice-1) [ok](#r) [web](https://x.invalid/y)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#not-a-heading) [self](#nowhere) [up](../outside.md)\n"
        "`[in code](docs/c.md)`\n\n```\n[in a block](docs/d.md)\n```\n\n[ref]: docs/e.md\n")
    assert broken_links(readme, tmp_path) == [
        "docs/b.md: no such file",
        "docs/a.md#not-a-heading: no heading #not-a-heading in docs/a.md",
        "#nowhere: no heading #nowhere in README.md",
        "../outside.md: outside the repository",
        "docs/e.md: no such file",
    ]
