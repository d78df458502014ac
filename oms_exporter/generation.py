"""The settings in force and what serves them: one HTTP session, the targets, their listers, discovery.

A `Generation` lives from one (re)load of the settings to the next. Its targets are the
configured ones and, while its discovery entries run, the projects they find: a project
found or lost is a target added or removed (with its series) without a restart; a project
both configured and discovered is listed once, under its configured name. With shards, it
serves (lists, exports, offers at /discovery) only its shard's targets, and knows every
shard's, to say which shard serves a target it does not. A reload makes a
new generation; scrapes that started on the old one finish on it, and it is closed (discovery
and listings cancelled, session closed) when the last of them is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Iterator, Sequence

import aiohttp

from oms_exporter.area import Area, Context
from oms_exporter.auth import Auth, make_auth
from oms_exporter.catalog import AREAS, families, needed_by, select
from oms_exporter.client import OmsClient
from oms_exporter.clock import Clock
from oms_exporter.discovery import STATES, Discoverer
from oms_exporter.http import Http, Proxies
from oms_exporter.metrics import Family, SelfMetrics
from oms_exporter.settings import Options, Settings, SettingsError, Target, ca_context, meta
from oms_exporter.snapshot import Project, Snapshots

log = logging.getLogger(__name__)


def outbound_ssl(settings: Settings) -> ssl.SSLContext | bool:
    """How requests to OMS and IAM verify TLS; SettingsError (one line) for a CA file that is not a bundle."""
    opts = settings.options
    if opts.insecure_skip_verify:
        log.warning("TLS VERIFICATION OF OMS AND IAM IS TURNED OFF (--oms.insecure-skip-verify): "
                    "credentials can be intercepted; use --oms.ca-file instead")
        return False
    if opts.ca_file is not None:
        try:
            return ca_context(opts.ca_file)
        except ValueError as exc:  # the file changed since the settings were read
            raise SettingsError([f"--{meta(Options.model_fields['ca_file'])['flag']}: {exc}"]) from None
    return True


def upstream_connections(settings: Settings, areas: Sequence[Area] = AREAS) -> int:
    """The most connections the exporter opens to OMS and IAM at once: --oms.max-connections, or
    fewer when the request slots of the configured targets it serves (each area's share of
    --oms.max-concurrency, and IAM) cannot fill it (discovered targets: their number is not known
    in advance)."""
    if settings.discovery:
        return settings.options.max_connections
    mc = settings.options.max_concurrency
    per_target = sum(area.slots(mc) for area in areas)
    served = sum(1 for t in settings.targets if settings.options.shard.owns(t.project_id))
    return min(settings.options.max_connections, per_target * served + 4)


def _report_lists(opts: Options, every: Sequence[Family], served: Sequence[Family]) -> None:
    """Log what --metric-allowlist / --metric-denylist drop (info), patterns that match no family (warn: a
    typo drops or keeps nothing), and the shipped alerts, rules and dashboards left without data (warn)."""
    flag, patterns = (("allowlist", opts.metric_allowlist) if opts.metric_allowlist
                      else ("denylist", opts.metric_denylist))
    if not patterns:
        return
    kept = {f.name for f in served}
    dropped = [f.name for f in every if f.name not in kept]
    log.info("metric families dropped", extra={flag: ",".join(patterns), "dropped": ",".join(dropped) or "none",
                                                "served": len(served), "of": len(every)})
    unmatched = [p for p in patterns if not any(re.fullmatch(p, f.name) for f in every)]
    if unmatched:
        log.warning(f"--metric-{flag}: patterns that match no OMS family (each matches a whole name)",
                    extra={"patterns": ",".join(unmatched)})
    read, users = needed_by(dropped)
    if read:
        dashboards = "; ".join(f"{what.removeprefix('dashboard ')}: {', '.join(names)}"
                               for what, names in users.items() if what.startswith("dashboard "))
        log.warning("dropped metric families are read by shipped alerts, recording rules or dashboards: "
                    "they will show no data", extra={
                        "families": ",".join(read), "alerts": ",".join(users.get("alerts", ())) or "none",
                        "recording_rules": ",".join(users.get("recording rules", ())) or "none",
                        "dashboards": dashboards or "none"})


class Generation:
    """The settings in force, the targets they make, and what lists them (see the module's docstring)."""

    FIRST_DISCOVERY_WAIT = 15.0  # seconds the start waits for each entry's first project list

    def __init__(self, settings: Settings, stats: SelfMetrics, clock: Clock, areas: Sequence[Area] = AREAS) -> None:
        opts = settings.options
        self.settings = settings
        every = families(areas, settings.info_labels)
        self.table = select(every, opts.metric_allowlist, opts.metric_denylist)  # the OMS families served, in order
        _report_lists(opts, every, self.table)
        self._stats, self._clock, self._areas = stats, clock, tuple(areas)
        tls = outbound_ssl(settings)
        # Every target together: many targets queue for a connection instead of running the process
        # out of file descriptors. No cookie jar: OMS and IAM are token/signature APIs, and a cookie
        # set by a gateway in front of one project must not ride along to the next. No automatic
        # decompression: Http reads and unpacks answers within --oms.max-response-size. HTTPS_PROXY,
        # HTTP_PROXY and NO_PROXY apply, as they do for the official SDK (Proxies).
        connector = aiohttp.TCPConnector(limit=upstream_connections(settings, areas), ttl_dns_cache=300, ssl=tls)
        self.session = aiohttp.ClientSession(connector=connector, raise_for_status=False, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar())
        self._http = Http(self.session, clock, stats.request, ssl=tls, max_body=opts.max_response_size,
                          request_timeout=opts.request_timeout, proxies=Proxies())
        self._slots = {area.name: area.slots(opts.max_concurrency) for area in areas}
        self._auths: dict[tuple[str, str], Auth] = {}  # (target name, project id) -> its credentials
        self._projects: dict[str, Project] = {}  # target name -> its listers: the targets served now
        self._clashes: set[tuple[str, str]] = set()  # (name, project id) of discovered projects left out
        self.snapshots = Snapshots({}, stats, clock, min_interval=opts.min_interval)
        self.discoverers = [Discoverer(entry, self._http, clock, stats, self._auth_of, self._apply)
                            for entry in settings.discovery]
        for d in self.discoverers:
            stats.add_discovery(d.entry.name, STATES)
        self._tasks: list[asyncio.Task[None]] = []
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._apply()

    # --- the targets ---------------------------------------------------------------------------
    def targets(self) -> list[Target]:
        """The targets served now: those of this replica's shard (see `_wanted`)."""
        return [p.target for p in self._projects.values()]

    def owner(self, name: str) -> int | None:
        """The shard that serves the target `name` (configured or discovered), None for no such target."""
        found = next((t for t in self.every_target() if t.name == name), None)
        return None if found is None else self.settings.options.shard.owner(found.project_id)

    def _wanted(self) -> list[Target]:
        """The targets this replica serves: those of its shard (every one, unsharded)."""
        shard = self.settings.options.shard
        return [t for t in self.every_target() if shard.owns(t.project_id)]

    def every_target(self) -> list[Target]:
        """Every shard's targets: the configured ones, then those discovered. A project both
        configured and discovered once, under its configured name; a discovered project whose name
        is taken by another project is left out, with a warning (once)."""
        out = list(self.settings.targets)
        names, projects = {t.name: t.project_id for t in out}, {t.project_id for t in out}
        for d in self.discoverers:
            for t in d.targets:
                if t.project_id in projects:
                    continue
                if t.name in names:
                    if (t.name, t.project_id) not in self._clashes:
                        self._clashes.add((t.name, t.project_id))
                        log.warning("a discovered project has the name of another target: not scraped", extra={
                            "discovery": d.entry.name, "target": t.name, "project_id": t.project_id,
                            "taken_by": names[t.name]})
                    continue
                out.append(t)
                names[t.name] = t.project_id
                projects.add(t.project_id)
        return out

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets() if t.name == name), None)

    def _auth_of(self, target: Target) -> Auth:
        """A target's credentials, made once (an IAM token is asked once per project, not per probe)."""
        key = (target.name, target.project_id)
        auth = self._auths.get(key)
        if auth is None:
            auth = self._auths[key] = make_auth(target, self._http, self._clock)
        return auth

    def _apply(self) -> None:
        """Serve the targets as they are now: listers for the new ones, none for the ones gone."""
        targets = {t.name: t for t in self._wanted()}
        before = self._projects
        projects = {name: p for name, p in before.items() if name in targets and p.target == targets[name]}
        for name, t in targets.items():
            if name not in projects:
                projects[name] = self._project(t)
                self._stats.add_project(t.project_id)
        kept = {p.target.project_id for p in projects.values()}
        for name, p in before.items():
            if projects.get(name) is not p:
                self._auths.pop((name, p.target.project_id), None)
                if p.target.project_id not in kept:
                    self._stats.remove_project(p.target.project_id)
        self._projects = projects
        self.snapshots.set_projects(projects)
        # Credentials of projects neither served nor probed any more (an IAM token each) go too.
        known = kept | {f.id for d in self.discoverers for f in d.found}
        for key in [k for k in self._auths if k[1] not in known]:
            del self._auths[key]

    def _project(self, t: Target) -> Project:
        opts = self.settings.options
        client = OmsClient(self._http, t, self._auth_of(t), self._clock, slots=self._slots)
        on = [area for area in self._areas if self.settings.lists(t, area.name)]
        return Project(t, {area.name: area.lister(Context(area, client, t, self._clock, opts)) for area in on},
                       self._clock, budget=opts.listing_budget)

    # --- its life ------------------------------------------------------------------------------
    async def start(self, before: Generation | None = None) -> None:
        """Start discovery (from the last lists of `before` for the entries it shares), and wait for
        each entry's first list, FIRST_DISCOVERY_WAIT at most."""
        adopted = False
        for d in self.discoverers:
            same = next((o for o in (before.discoverers if before else ()) if d.same_account(o.entry)), None)
            if same is not None:
                d.adopt(same)
                adopted = True
        if adopted:
            self._apply()
        self._tasks = [asyncio.get_running_loop().create_task(d.run()) for d in self.discoverers]
        waits = [asyncio.ensure_future(d.refreshed.wait()) for d in self.discoverers]
        if waits:
            await asyncio.wait(waits, timeout=self.FIRST_DISCOVERY_WAIT)
            for w in waits:
                w.cancel()

    @contextlib.contextmanager
    def use(self) -> Iterator[Generation]:
        self._users += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._users -= 1
            if not self._users:
                self._idle.set()

    async def aclose(self, *, drain: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if drain:
            await self._idle.wait()
        await self.snapshots.aclose()
        await self.session.close()
