"""Builds the Dockerfile as CI does: Debian's buildah, on a stand-in for its base image.

CI reaches no image registry, so `python:3.11-slim` cannot be pulled. The stand-in is Debian
bookworm's own Python made with mmdebstrap (`STAND_IN`: python3, python3-venv,
python-is-python3, ca-certificates, without the documentation that Debian's slim images leave
out), imported with `buildah from scratch` + `buildah add` + `buildah commit` under the base's
name. It is made once per machine and kept, labelled with a hash of how it is made, in a buildah
storage of its own under the cache directory (so it never shadows a real image of that name);
a change to how it is made makes it anew.

The build (`buildah bud --isolation chroot --format docker`: without the Docker format the
HEALTHCHECK is dropped) gets read-only mounts that let pip inside it reach the package index as
pip on this host does (`pip_volumes`). buildah leaves an empty file or directory in the image
where such a mount had no target: the image tests allow exactly those.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "OMS_EXPORTER_CI_CACHE"
STAND_IN_LABEL = "org.oms-exporter.ci.stand-in"
# Debian's slim images (debuerreotype) leave these out; so does the stand-in.
SLIM_DPKG = ["path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
             "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
             "path-exclude=/usr/share/groff/*", "path-exclude=/usr/share/lintian/*",
             "path-exclude=/usr/share/linda/*", "path-exclude=/usr/share/locale/*",
             "path-include=/usr/share/locale/locale.alias"]
STAND_IN = ["--variant=apt", "--include=python3,python3-venv,python-is-python3,ca-certificates",
            *(f"--dpkgopt={o}" for o in SLIM_DPKG), "bookworm"]
# The image configuration python:3.11-slim has, as far as the Dockerfile relies on it.
STAND_IN_CONFIG = ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "--env", "LANG=C.UTF-8", "--cmd", "python3"]


def cache_dir() -> Path:
    """Where the stand-in base and the buildah storage holding it are kept between runs."""
    return Path(os.environ.get(CACHE_ENV) or "/var/cache/oms-exporter-ci")


class Buildah:
    """buildah on a storage of its own (`--root`, `--runroot`), not the machine's default one."""

    def __init__(self, cache: Path) -> None:
        self.root = cache / "storage"
        run = Path("/run")
        self.runroot = (run if os.access(run, os.W_OK) else cache) / "oms-exporter-ci"

    def argv(self, *args: str | Path) -> list[str]:
        return ["buildah", "--root", str(self.root), "--runroot", str(self.runroot), *map(str, args)]

    def __call__(self, *args: str | Path, timeout: float = 300) -> str:
        res = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(map(str, args))} failed ({res.returncode}):\n"
                               f"{res.stdout[-2000:]}{res.stderr[-3000:]}")
        return res.stdout.strip()

    def inspect(self, image: str) -> dict[str, Any] | None:
        """`buildah inspect` of the image, or None when the storage has none of that name."""
        res = subprocess.run(self.argv("inspect", "--type", "image", image), capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            return None
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc

    @contextlib.contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        """The image's root file system, through a working container removed afterwards."""
        ctr = self("from", "--pull-never", "--name", f"oms-ci-{os.getpid()}-{time.monotonic_ns()}", image)
        try:
            yield Path(self("mount", ctr))
        finally:
            self("umount", ctr)
            self("rm", ctr)


def stand_in_key(name: str) -> str:
    return hashlib.sha256(json.dumps([name, STAND_IN, STAND_IN_CONFIG]).encode()).hexdigest()[:16]


def ensure_stand_in(buildah: Buildah, name: str) -> tuple[bool, float]:
    """Make the stand-in `name` unless the storage has it, made as now. (made it?, seconds)."""
    started = time.monotonic()
    key = stand_in_key(name)
    buildah.root.mkdir(parents=True, exist_ok=True)
    with open(buildah.root.parent / "stand-in.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once make it once
        found = buildah.inspect(name)
        if found and (found["OCIv1"]["config"].get("Labels") or {}).get(STAND_IN_LABEL) == key:
            return False, time.monotonic() - started
        work = buildah.root.parent / "stand-in.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            tarball = work / "rootfs.tar"
            res = subprocess.run(["mmdebstrap", "--quiet", *STAND_IN, str(tarball)], capture_output=True,
                                 text=True, timeout=900, stdin=subprocess.DEVNULL)
            if res.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed ({res.returncode}):\n{res.stdout[-2000:]}{res.stderr[-3000:]}")
            ctr = buildah("from", "scratch")
            buildah("add", ctr, tarball, "/")
            buildah("config", *STAND_IN_CONFIG, "--label", f"{STAND_IN_LABEL}={key}", ctr)
            buildah("commit", "--rm", ctr, name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return True, time.monotonic() - started


def _config_paths(value: str) -> list[Path]:
    """Host paths a pip setting names (a cert, a constraints file, a find-links folder...)."""
    out = []
    for word in value.split():
        word = word.removeprefix("file://")
        if word.startswith("/") and Path(word).exists():
            out.append(Path(word))
    return out


def pip_volumes(workdir: Path) -> list[tuple[Path, str]]:
    """(host path, path in the build) of the read-only mounts that let pip in the build reach the
    package index as pip on this host does: the system's CA certificates, pip's global config
    (/etc/xdg/pip, and /etc/pip.conf with the host's PIP_* variables merged in, as the build sees
    no host environment) and the files those settings name."""
    volumes: list[tuple[Path, str]] = []
    certs = Path("/etc/ssl/certs")
    if certs.is_dir():
        volumes.append((certs, str(certs)))
    config = configparser.ConfigParser(interpolation=None)
    xdg = Path("/etc/xdg/pip")
    if xdg.is_dir():
        volumes.append((xdg, str(xdg)))
        named = configparser.ConfigParser(interpolation=None)
        named.read(xdg / "pip.conf")
        settings = [v for s in named.sections() for v in named[s].values()]
    else:
        settings = []
    config.read(["/etc/pip.conf", *filter(None, [os.environ.get("PIP_CONFIG_FILE")])])
    env = {k[4:].lower().replace("_", "-"): v for k, v in os.environ.items()
           if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"}
    if env:
        if not config.has_section("global"):
            config.add_section("global")
        config["global"].update(env)
    if config.sections():
        merged = workdir / "pip.conf"
        with merged.open("w") as f:
            config.write(f)
        volumes.append((merged, "/etc/pip.conf"))
        settings += [v for s in config.sections() for v in config[s].values()]
    for value in settings:
        for path in _config_paths(value):
            if not any(path == Path(t) or Path(t) in path.parents for _, t in volumes):
                volumes.append((path, str(path)))
    return volumes


def build(buildah: Buildah, context: Path, tag: str, volumes: list[tuple[Path, str]], log: Path) -> float:
    """Build context/Dockerfile as `tag`; seconds taken. The build's output goes to `log`."""
    started = time.monotonic()
    mounts = [a for host, target in volumes for a in ("--volume", f"{host}:{target}:ro")]
    with log.open("w") as out:
        res = subprocess.run(buildah.argv("bud", "--isolation", "chroot", "--format", "docker", "--pull-never",
                                          *mounts, "--file", context / "Dockerfile", "--tag", tag, context),
                             stdout=out, stderr=subprocess.STDOUT, timeout=900, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"buildah bud failed ({res.returncode}); its output ends:\n{log.read_text()[-4000:]}")
    return time.monotonic() - started
