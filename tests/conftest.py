"""Shared fixtures and helpers: the OMS stand-in on a real loopback port, the exporter app in front
of it, a clock the test moves; ports, binaries (promtool, ...) and the exporter as a process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from oms_exporter import server
from oms_exporter.clock import Clock
from oms_exporter.errors import OmsError
from oms_exporter.listing import Listing, Part, TaskPart, complete_tasks
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Options, Settings, Target
from oms_exporter.simulator import Credential, make_tasks
from oms_exporter.web import make_app
from tests.standin import StandIn

# As cli.main sets it for the process: no _created series.
prometheus_client.disable_created_metrics()


class ManualClock(Clock):
    """Real time plus an offset that the test moves; waiting on it moves it instead of waiting.

    A coroutine that sleeps resumes at once, with the clock at (at least) the time it asked
    to wake up at, so back-off and pauses cost a test no real time; `slept` lists the waits.
    Deadlines (`timeout_at`) follow the clock: when it moves past one, that block times out
    at once. A sleep that would pass a deadline first lets real work settle (`quiet`), then
    moves the clock to that deadline only, and so on: a stand-in that hangs for a minute (it
    sleeps on this clock) fails a scrape's 10 s deadline at 10 s, without the test waiting.
    """

    SETTLE = 0.02  # real seconds a sleep past a deadline leaves work that does not wait on the clock, at least
    QUIET = 0.01  # ... and then until a window this long in which the process was (nearly) idle

    def __init__(self) -> None:
        self.offset = 0.0
        self.wall_offset = 0.0  # moves the wall clock only (set_time), as a clock set by NTP would
        self.slept: list[float] = []
        self._deadlines: list[tuple[float, asyncio.Timeout]] = []  # of the blocks inside timeout_at now
        self._schedules: list[tuple[float, asyncio.Future[None]]] = []  # background waits (sleep_until)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset + self.wall_offset

    def set_time(self, unix: float) -> None:
        """The wall clock reads `unix` now (monotonic time goes on as it was)."""
        self.wall_offset += unix - self.time()

    def deadlines(self) -> list[float]:
        """The deadlines of the blocks inside `timeout_at` now, soonest first: a scrape waiting for
        a listing is one of them, with the deadline it was given."""
        return sorted(d for d, t in self._deadlines if not t.expired())

    async def settle(self) -> None:
        """Until no block is inside `timeout_at` any more (each listing finished, or failed at its
        deadline), then SETTLE for what it does after: count its failure, log."""
        await wait_until(lambda: not self._deadlines, "every block past its deadline")
        await self.quiet()

    async def quiet(self) -> None:
        """SETTLE, and more while this process is busy (CPU time of every thread: the stand-in,
        the exporter, its encoder): a healthy listing beside a hanging one finishes before the
        clock moves to their deadline, however loaded the machine is (at most 10 s)."""
        await asyncio.sleep(self.SETTLE)
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            cpu = time.process_time()
            await asyncio.sleep(self.QUIET)
            if time.process_time() - cpu < self.QUIET / 10:
                return

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        loop = asyncio.get_running_loop()
        for deadline, timeout in self._deadlines:
            if not timeout.expired():
                timeout.reschedule(loop.time() + self.remaining(deadline))
        for when, woken in self._schedules:
            if when <= self.monotonic() and not woken.done():
                woken.set_result(None)

    async def sleep_until(self, when: float) -> None:
        """Ends once the clock is moved to `when` (or real time gets there): never moves the clock."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (when, woken)
        self._schedules.append(entry)
        try:
            await asyncio.wait([woken], timeout=self.remaining(when))
        finally:
            self._schedules.remove(entry)

    @contextlib.asynccontextmanager
    async def timeout_at(self, deadline: float) -> AsyncIterator[asyncio.Timeout]:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(loop.time() + self.remaining(deadline)) as timeout:
            entry = (deadline, timeout)
            self._deadlines.append(entry)
            try:
                yield timeout
            finally:
                self._deadlines.remove(entry)

    async def sleep(self, seconds: float, settled: Callable[[], Awaitable[None]] | None = None) -> None:
        """Wait `seconds` on this clock; `settled`: returns once the work that does not wait on the clock
        is done (the stand-in's: no request but the hanging ones), before the clock passes a deadline."""
        self.slept.append(seconds)
        wake = self.monotonic() + seconds
        await asyncio.sleep(0)
        while earlier := [d for d, t in self._deadlines if d < wake and not t.expired()]:
            if settled is not None:
                await settled()
            await self.quiet()
            self.advance(max(0.0, min(earlier) - self.monotonic()))
            await asyncio.sleep(0)
        self.advance(max(0.0, wake - self.monotonic()))


async def wait_until(done: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Until `done()` is true, looking each millisecond; fail after `timeout` real seconds (a guard:
    what is awaited takes no time on a test's clock)."""
    give_up = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < give_up, f"not reached in {timeout} s: {what}"
        await asyncio.sleep(0.001)


PROJECT = "p0000000000000000000000000000001"
TOKEN = "test-token-7d1f0c"
AK, SK = "TESTAK0000000001", "test-secret-key-93kd0"


@pytest.fixture
def clock() -> ManualClock:
    """The clock of the exporter and the stand-in; tests move it instead of sleeping."""
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> StandIn:
    """A stand-in with one project of 250 tasks; accepts TOKEN and the AK/SK pair."""
    s = StandIn(tokens={TOKEN}, credentials={AK: Credential(SK)}, clock=clock.time)
    s.sleep = partial(clock.sleep, settled=s.settled)
    s.add_project(PROJECT, make_tasks(250, seed=3))
    return s


@pytest.fixture
async def oms(sim: StandIn, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(sim.app())


def target_for(server: TestServer, *, name: str = "main", project_id: str = PROJECT, **extra: Any) -> Target:
    creds = {} if {"auth_token", "ak", "iam_username"} & set(extra) else {"auth_token": TOKEN}
    return Target(name=name, project_id=project_id, region="cn-north-4",
                  endpoint=str(server.make_url("")).rstrip("/"), **{**creds, **extra})


def load_module(path: Path) -> ModuleType:
    """A script (scripts/*.py, grafana/generate_dashboards.py) as a module: they are not a package."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Exporter = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def exporter(oms: TestServer, clock: ManualClock, aiohttp_client: Callable[..., Awaitable[TestClient]]) -> Exporter:
    """`await exporter(targets=None, **options)` -> test client of an exporter app on `clock`."""

    async def make(targets: list[Target] | None = None, **options: Any) -> TestClient:
        settings = Settings(options=Options(**options), targets=targets or [target_for(oms)])
        return await aiohttp_client(make_app(settings, stats=SelfMetrics(), clock=clock))

    return make


Served = Callable[..., Awaitable[int]]


@pytest.fixture
async def served(oms: TestServer, clock: ManualClock) -> AsyncIterator[Served]:
    """`port = await served(targets=None, max_connections=, header_timeout=, **options)`: the exporter
    served as cli.main serves it (`server.start`: a handler goes on when its client goes away)."""
    runners: list[web.AppRunner] = []

    async def make(targets: list[Target] | None = None, *, max_connections: int = 100,
                   header_timeout: float = 10.0, **options: Any) -> int:
        settings = Settings(options=Options(**options), targets=targets or [target_for(oms)])
        sock = server.listen("127.0.0.1", 0)
        port: int = sock.getsockname()[1]
        runners.append(await server.start(make_app(settings, stats=SelfMetrics(), clock=clock), sock,
                                          max_connections=max_connections, header_timeout=header_timeout))
        return port

    yield make
    for runner in runners:
        await runner.cleanup()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Parse exposition text with prometheus_client's parser: {(name, labels): value}.

    The same result as parsing the text at once (tests/test_helpers.py), in pieces parsed once:
    a test that scrapes one account 40 times parses what changed between scrapes, not all 14,000
    lines each time, and the tests that scrape the `sim` fixture's 250 tasks share what they
    have in common (see `_pieces`).
    """
    out: Samples = {}
    for piece in _pieces(text):
        for key, v in piece:
            assert key not in out, f"duplicate series {key}"
            out[key] = v
    return out


Piece = list[tuple[tuple[str, frozenset[tuple[str, str]]], float]]
_PARSED: dict[tuple[str, str], Piece | None] = {}  # (family header, sample lines) -> its samples
_PARSED_MAX = 6_000  # pieces kept (about 17 KB each: 100 MB), then all forgotten at once


def _plain(text: str) -> list[Piece]:
    return [[((s.name, frozenset(s.labels.items())), s.value) for fam in text_string_to_metric_families(text)
             for s in fam.samples]]


def _pieces(text: str) -> list[Piece]:
    """The samples of `text`, family by family, each family cut into pieces of lines whose bounds
    depend on the lines alone (a line whose hash ends in four zero bits ends a piece), so that a
    changed, added or removed task leaves the other pieces as they were.

    prometheus_client's parser starts afresh at a family's HELP or TYPE line, and within a family
    reads each sample line on its own: a piece parsed after its family's header gives what the
    whole text gives, as long as every sample belongs to that family (the parser yields one family
    for the piece). Anything else (samples before any header, a header without HELP or TYPE, a
    family named twice, leading blanks, a sample outside its family) is parsed as one text.
    """
    if text.startswith((" ", "\t")) or "\n " in text or "\n\t" in text:
        return _plain(text)
    families: list[tuple[list[str], list[str], list[str]]] = []  # (header, samples, names it is given)
    for line in text.split("\n"):
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else None
            if not families or families[-1][1] or name is not None and families[-1][2] not in ([], [name]):
                families.append(([], [], []))
            families[-1][0].append(line)
            if name is not None and name not in families[-1][2]:
                families[-1][2].append(name)
        elif line.strip():
            if not families:
                return _plain(text)
            families[-1][1].append(line)
    names = [name for _, _, named in families for name in named]
    if (len(set(names)) != len(names) or any(name.startswith('"') for name in names)
            or any(not named for _, _, named in families)):
        return _plain(text)
    out: list[Piece] = []
    for header, lines, _ in families:
        head = "\n".join(header)
        start = 0
        for i, line in enumerate(lines or [""]):  # a family without samples: its header is checked
            if hash(line) & 15 == 0 or i == len(lines) - 1 or i - start == 127 or not lines:
                key = (head, "\n".join(lines[start:i + 1]))
                if key not in _PARSED:
                    if len(_PARSED) >= _PARSED_MAX:
                        _PARSED.clear()
                    fams = list(text_string_to_metric_families(key[0] + "\n" + key[1]))
                    _PARSED[key] = ([((s.name, frozenset(s.labels.items())), s.value) for s in fams[0].samples]
                                    if len(fams) == 1 else None)
                piece = _PARSED[key]
                if piece is None:
                    return _plain(text)
                out.append(piece)
                start = i + 1
    return out



def values(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= lab}


def value(samples: Samples, name: str, **labels: str) -> float:
    found = values(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: expected one series, found {len(found)}"
    return next(iter(found.values()))


async def scrape(client: TestClient, path: str = "/metrics", **headers: str) -> Samples:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    return parse_metrics(await resp.text())


def make_listing(target: Target, taken_at: float, tasks: Any = (), *, error: OmsError | None = None,
                 groups: Any = None, syncs: Any = None, group_error: OmsError | None = None,
                 sync_error: OmsError | None = None, malformed: int = 0, duration: float = 0.0,
                 requests: int = 0, finished_listed_at: float | None = None) -> Listing:
    """A listing as Project.run makes one: the tasks' part (complete, or failed with `error`), and a
    part for the task groups and the sync tasks when they are given (records, or an error)."""
    main: TaskPart = (TaskPart(error=error, duration=duration, requests=requests) if error is not None else
                      complete_tasks(sorted(tasks, key=lambda t: t.id), malformed=malformed, duration=duration,
                                     requests=requests, finished_listed_at=finished_listed_at))
    parts: dict[str, Part] = {"tasks": main}
    if groups is not None or group_error is not None:
        parts["task_groups"] = Part(records=None if group_error else groups, error=group_error)
    if syncs is not None or sync_error is not None:
        parts["sync_tasks"] = Part(records=None if sync_error else syncs, error=sync_error)
    return Listing(target, taken_at, parts)


TOTALS = {  # oms_tasks_* family -> TaskResp field it sums
    "oms_tasks_size_bytes": "total_size", "oms_tasks_completed_bytes": "complete_size",
    "oms_tasks_migrated_bytes": "real_size", "oms_tasks_objects": "total_num",
    "oms_tasks_objects_succeeded": "successful_num", "oms_tasks_objects_failed": "failed_num",
    "oms_tasks_objects_skipped": "skipped_num", "oms_tasks_speed_bytes_per_second": "migrate_speed",
}


# --- processes, ports and binaries -----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
# Set in CI (.ci/run): a missing binary (promtool, prometheus, kubectl, ...) fails its tests instead of skipping them.
REQUIRE_ENV = "OMS_EXPORTER_REQUIRE_E2E"
REQUIRE = os.environ.get(REQUIRE_ENV) == "1"


def missing(reason: str) -> None:
    """Skip for want of a tool, or fail when CI requires every tool."""
    if REQUIRE:
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
    pytest.skip(reason)


def require_binary(*names: str, package: str = "prometheus, prometheus-alertmanager") -> str:
    """Path of the first of `names` on PATH (or in /usr/bin); skip without it, fail in CI."""
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")
        if path:
            return path
    missing(f"{' / '.join(names)} not installed (Debian package {package})")
    raise AssertionError("unreachable")


def promtool() -> str:
    return require_binary("promtool", package="prometheus")


def run(*args: str | Path, cwd: Path | None = ROOT, timeout: float = 60, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command run to its end: exit code, stdout and stderr as text."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env, input=input)


def free_port() -> int:
    """A loopback port nobody listens on now, for a process the test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without OMS_* and CLOUD_SDK_* (a developer's own settings), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.upper().startswith(("OMS_", "CLOUD_SDK_"))}, **extra}


EXPORTER = (sys.executable, "-m", "oms_exporter")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`oms_exporter.cli.main(argv)` in this process: (its exit code, stdout, stderr)."""
    from oms_exporter.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def check_config_error(argv: list[str], env: dict[str, str], yaml_text: str | None, monkeypatch: pytest.MonkeyPatch,
                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`--check-config` with these flags, variables and YAML file (None: none) refuses them as a bad setting
    must: exit code 2 and one line on stderr, `oms-exporter: error: ...`, which it returns."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if yaml_text is not None:
        f = tmp_path / "c.yml"
        f.write_text(yaml_text)
        argv = [*argv, "--config.file", str(f)]
    code, _, err = run_main([*argv, "--check-config"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oms-exporter: error: "), err
    return lines[0]


def run_exporter_once(*args: str, env: dict[str, str] | None = None, timeout: float = 30,
                      cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m oms_exporter ARGS` run to its exit (`--check-config`, a refused setting), in `clean_env()`."""
    return run(*EXPORTER, *args, env=clean_env(**(env or {})), timeout=timeout, cwd=cwd)


class Launched:
    """An exporter process started by `launch_exporter`: where it answers and what it logged."""

    def __init__(self, proc: subprocess.Popen[bytes], base: str, log_path: Path,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.proc, self.base, self.log_path, self.ssl = proc, base, log_path, ssl_context
        self.port = int(base.rsplit(":", 1)[1])

    async def get(self, path: str = "/metrics", **headers: str) -> tuple[int, str]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            async with s.get(self.base + path, headers=headers, ssl=self.ssl or True) as resp:
                return resp.status, await resp.text()

    def log(self) -> str:
        """What it wrote to stdout and stderr (its log) so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.asynccontextmanager
async def launch_exporter(args: Sequence[str], tmp_path: Path, *, program: Sequence[str | Path] = EXPORTER,
                          env: dict[str, str] | None = None, ready: Callable[[int, str], bool] | None = None,
                          path: str = "/metrics", ssl_context: ssl.SSLContext | None = None, wait: float = 30,
                          cwd: Path | None = None, preexec_fn: Callable[[], Any] | None = None
                          ) -> AsyncIterator[Launched]:
    """Start `program ARGS --web.listen-address 127.0.0.1:PORT` on a free port, in `env` (default:
    `clean_env()`); wait until `path` answers and `ready(status, body)` (default: status 200), at most
    `wait` seconds; stop it at the end (SIGTERM, then SIGKILL). Its log is in `tmp_path`."""
    port = free_port()
    scheme = "https" if ssl_context else "http"
    log_path = tmp_path / f"exporter-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([str(a) for a in program] + [*args, "--web.listen-address", f"127.0.0.1:{port}"],
                                env=clean_env() if env is None else env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, preexec_fn=preexec_fn)
    launched = Launched(proc, f"{scheme}://127.0.0.1:{port}", log_path, ssl_context)
    try:
        give_up = time.monotonic() + wait
        while True:
            assert proc.poll() is None, f"the exporter exited with {proc.returncode}:\n{launched.log()}"
            with contextlib.suppress(aiohttp.ClientConnectionError, TimeoutError):
                status, body = await launched.get(path)
                if ready(status, body) if ready else status == 200:
                    break
            assert time.monotonic() < give_up, f"the exporter did not answer in {wait} s:\n{launched.log()}"
            await asyncio.sleep(0.05)
        yield launched
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)


# --- memory -----------------------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the directory's own descriptor, closed by now
            pass
    return sorted(out)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
