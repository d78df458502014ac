"""The wheel and sdist as users get them: built, checked, installed (not editable) and run.

`python -m build` makes the sdist, then the wheel from the sdist (so the sdist is complete
enough to build from); `twine check` passes both; the wheel carries the oms_exporter package
exactly (every file of the checkout's oms_exporter/, data files included) and its console
script, and nothing else: no tests/, no benchmarks/. Installed into a fresh virtualenv, its
`oms-exporter --demo` serves `oms_up 1`. Slow: build and install download from the package index.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env, launch_exporter, parse_metrics, values
from tests.conftest import run as run_command

PACKAGE = "oms_exporter"
pytestmark = pytest.mark.slow


# As users have it: no PYTHONPATH or VIRTUAL_ENV pointing into the checkout.
OUTSIDE = {k: v for k, v in clean_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_command(*args, cwd=cwd, timeout=600, env=OUTSIDE)


@dataclass
class Dist:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    res = run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dist(wheel, sdist)


def package_files() -> set[str]:
    """The checkout's oms_exporter/ files, as paths in a wheel (no caches or in-place builds)."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so")}


def test_twine_check(dist: Dist) -> None:
    res = run(sys.executable, "-m", "twine", "check", "--strict", dist.wheel, dist.sdist)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("PASSED") == 2, res.stdout


def test_the_wheel_holds_the_package_and_nothing_else(dist: Dist) -> None:
    names = zipfile.ZipFile(dist.wheel).namelist()
    info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert {n.split("/")[0] for n in names} == {PACKAGE, info}, sorted({n.split("/")[0] for n in names})
    assert {n for n in names if n.startswith(f"{PACKAGE}/")} == package_files()
    assert not [n for n in names if "test" in n.split("/")[0] or "benchmark" in n], names
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(dist.wheel).read(f"{info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == {"oms-exporter": "oms_exporter.cli:main"}


def test_the_sdist_holds_what_the_wheel_is_built_from(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        top = dist.sdist.name.removesuffix(".tar.gz")
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names
    assert package_files() <= names


@pytest.fixture
def installed(dist: Dist, tmp_path: Path) -> Iterator[Path]:
    """A fresh virtualenv with the wheel installed: its bin/ folder."""
    venv = tmp_path / "venv"
    res = run(sys.executable, "-m", "venv", venv)
    assert res.returncode == 0, res.stderr
    res = run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", dist.wheel)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    yield venv / "bin"


async def test_the_installed_wheel_serves_the_demo(installed: Path, tmp_path: Path) -> None:
    # From the virtualenv, not the checkout (run from elsewhere, with no PYTHONPATH).
    where = run(installed / "python", "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout
    async with launch_exporter(["--demo"], tmp_path, program=[installed / "oms-exporter"], env=OUTSIDE,
                               cwd=tmp_path) as exporter:
        _, text = await exporter.get()
    up = values(parse_metrics(text), "oms_up")
    assert up and set(up.values()) == {1}, up
