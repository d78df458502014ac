"""The aiohttp app: /metrics, /probe?target=NAME, /healthz and a landing page.

A scrape first awaits the listings (shared between concurrent scrapes by `Snapshots`),
then has `exposition.Renderer` encode them in a worker thread, so the event loop keeps
serving while ~20 MB of text is produced; concurrent scrapes of the same listings in the
same format share that one body (and its gzip copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from prometheus_client.exposition import gzip_accepted

from oms_exporter import __version__
from oms_exporter.area import Area, Context
from oms_exporter.auth import make_auth
from oms_exporter.catalog import AREAS, families
from oms_exporter.client import OmsClient
from oms_exporter.clock import Clock
from oms_exporter.exposition import Renderer
from oms_exporter.http import Http
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Options, Settings, SettingsError, ca_context, meta
from oms_exporter.snapshot import Project, SeriesPolicy, Snapshots

log = logging.getLogger(__name__)

STATS = web.AppKey("stats", SelfMetrics)
CLOCK = web.AppKey("clock", Clock)
POLICY = web.AppKey("policy", SeriesPolicy)
RENDERER = web.AppKey("renderer", Renderer)

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
MAX_QUERY_LENGTH = 256
MAX_HEADER_BUDGET = 120.0  # seconds: the most a scrape-timeout header may ask for
WRITE_PIECE = 128 * 1024  # bytes of a response body written per turn of the event loop


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


class Generation:
    """The settings in force and what serves them: a client session and the targets' listings.

    A reload makes a new one; scrapes that started on the old one finish on it, and it is
    closed (listings cancelled, session closed) when the last of them is done.
    """

    def __init__(self, settings: Settings, snapshots: Snapshots, session: aiohttp.ClientSession,
                 areas: Sequence[Area] = AREAS) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.session = session
        self.table = families(areas, settings.info_labels)  # the OMS families, in output order
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()

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
        if drain:
            await self._idle.wait()
        await self.snapshots.aclose()
        await self.session.close()


class Live:
    """The generation serving now, swapped whole by `reload`."""

    def __init__(self, settings: Settings, areas: Sequence[Area]) -> None:
        self.settings = settings
        self.areas = tuple(areas)  # the API areas a generation lists
        self.generation: Generation | None = None
        self.retiring: set[asyncio.Task[None]] = set()

    def use(self) -> contextlib.AbstractContextManager[Generation]:
        assert self.generation is not None, "the app has not started"
        return self.generation.use()


LIVE = web.AppKey("live", Live)


def make_app(settings: Settings, *, stats: SelfMetrics | None = None, clock: Clock | None = None,
             areas: Sequence[Area] = AREAS) -> web.Application:
    app = web.Application()
    app[LIVE] = Live(settings, areas)
    app[STATS] = stats or SelfMetrics(area.kind.name for area in areas)
    app[CLOCK] = clock or Clock()
    for t in settings.targets:
        app[STATS].add_project(t.project_id)
    app[STATS].config_loaded(True, app[CLOCK].time())
    # Flags only: a reload re-reads the files, never the options.
    opts = settings.options
    app[POLICY] = SeriesPolicy(opts.per_task_series, opts.finished_task_max_age, opts.failed_task_max_age)
    app[RENDERER] = Renderer(app[STATS], areas)
    app.cleanup_ctx.append(_oms_clients)
    path = settings.options.telemetry_path
    app.router.add_get(path, metrics_handler)
    app.router.add_get("/probe", probe_handler)
    app.router.add_get("/healthz", healthz_handler)
    if path != "/":
        app.router.add_get("/", landing_handler)
    return app


def upstream_connections(settings: Settings, areas: Sequence[Area] = AREAS) -> int:
    """The most connections the exporter opens to OMS and IAM at once: --oms.max-connections, or
    fewer when the targets' request slots (each area's share of --oms.max-concurrency, and IAM)
    cannot fill it."""
    mc = settings.options.max_concurrency
    per_target = sum(area.slots(mc) for area in areas)
    return min(settings.options.max_connections, per_target * len(settings.targets) + 4)


async def _open(settings: Settings, stats: SelfMetrics, clock: Clock, areas: Sequence[Area]) -> Generation:
    """One ClientSession, one client + lister per target and area."""
    opts = settings.options
    tls = outbound_ssl(settings)
    # Every target together: many targets queue for a connection instead of running the
    # process out of file descriptors.
    connector = aiohttp.TCPConnector(limit=upstream_connections(settings, areas), ttl_dns_cache=300, ssl=tls)
    # No cookie jar: OMS and IAM are token/signature APIs, and a cookie set by a gateway in
    # front of one project must not ride along to the next (or cost a jar lookup per page).
    # No automatic decompression: Http reads and unpacks answers within --oms.max-response-size.
    session = aiohttp.ClientSession(connector=connector, raise_for_status=False, auto_decompress=False,
                                    cookie_jar=aiohttp.DummyCookieJar())
    http = Http(session, clock, stats.request, ssl=tls, max_body=opts.max_response_size,
                request_timeout=opts.request_timeout)
    slots = {area.name: area.slots(opts.max_concurrency) for area in areas}
    projects = {}
    for t in settings.targets:
        client = OmsClient(http, t, make_auth(t, http, clock), clock, slots=slots)
        on = [area for area in areas if settings.lists(t, area.name)]
        projects[t.name] = Project(t, {area.name: area.lister(Context(area, client, t, clock, opts)) for area in on},
                                   clock)
    return Generation(settings, Snapshots(projects, stats, clock, min_interval=opts.min_interval), session, areas)


async def _oms_clients(app: web.Application) -> AsyncIterator[None]:
    live = app[LIVE]
    live.generation = await _open(live.settings, app[STATS], app[CLOCK], live.areas)
    yield
    for task in list(live.retiring):
        task.cancel()
    await asyncio.gather(*live.retiring, return_exceptions=True)
    await live.generation.aclose(drain=False)  # the server has waited for the requests in flight


async def reload(app: web.Application, settings: Settings) -> None:
    """Serve `settings` from the next request on (with a fresh session and listers for every target).

    Scrapes in flight finish on the old generation, closed when they are done; the series
    of the exporter's own metrics for a project no longer configured go with it.
    """
    live, stats = app[LIVE], app[STATS]
    new = await _open(settings, stats, app[CLOCK], live.areas)
    old = live.generation
    live.settings, live.generation = settings, new
    for t in settings.targets:
        stats.add_project(t.project_id)
    if old is None:
        return

    async def retire(old: Generation) -> None:
        try:
            await old.aclose()
        except asyncio.CancelledError:  # shutting down: close it now, requests or not
            await old.aclose(drain=False)
            raise
        kept = {t.project_id for t in live.settings.targets}
        for t in old.settings.targets:
            if t.project_id not in kept:
                stats.remove_project(t.project_id)

    task = asyncio.get_running_loop().create_task(retire(old))
    live.retiring.add(task)
    task.add_done_callback(live.retiring.discard)


def _deadline(request: web.Request, settings: Settings) -> float:
    opts = settings.options
    budget = opts.scrape_timeout
    header = request.headers.get(TIMEOUT_HEADER, "")
    if 0 < len(header) <= 32:
        try:
            value = float(header)
        except ValueError:
            value = math.nan
        # NaN, inf or a negative budget from a hostile client must not set the deadline, nor
        # a huge one: concurrent scrapes share the listing and so wait on its deadline.
        if math.isfinite(value) and value > 0:
            budget = min(value, max(opts.scrape_timeout, MAX_HEADER_BUDGET))
    return request.app[CLOCK].monotonic() + max(budget - opts.timeout_offset, 0.1)


async def _respond(request: web.Request, gen: Generation, names: Sequence[str],
                   with_self: bool) -> web.StreamResponse:
    app = request.app
    listings = await gen.snapshots.get(names, _deadline(request, gen.settings))
    body, content_type, zipped = await app[RENDERER].render(
        listings, app[POLICY], gen.table, with_self, request.headers.get("Accept", ""),
        gzip_accepted(request.headers.get("Accept-Encoding", "")))
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    resp.content_length = len(body)
    if zipped:
        resp.headers["Content-Encoding"] = "gzip"
    await resp.prepare(request)
    if request.method == "HEAD":  # the headers only (a StreamResponse would send what is written)
        await resp.write_eof()
        return resp
    # In pieces, one per turn of the event loop: concurrent scrapes of one big body (an HA
    # pair, a burst) wake up together and would otherwise each write their whole body in the
    # same loop iteration. 50 bodies of 8 MB (50,000 tasks) stalled the loop for 1.4 s.
    view = memoryview(body)
    sent = 0
    try:
        for sent in range(0, len(body), WRITE_PIECE):
            await resp.write(view[sent:sent + WRITE_PIECE])  # waits only while the socket is full
            await asyncio.sleep(0)
        await resp.write_eof()
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one
        # The client gave up (a Prometheus past its scrape timeout): nothing went wrong here.
        log.debug("client hung up mid-body", extra={
            "peer": request.remote, "path": request.path, "sent_bytes": sent, "body_bytes": len(body),
            "error": type(exc).__name__})
    return resp


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    with request.app[LIVE].use() as gen:
        return await _respond(request, gen, [t.name for t in gen.settings.targets], with_self=True)


async def probe_handler(request: web.Request) -> web.StreamResponse:
    if len(request.query_string) > MAX_QUERY_LENGTH:
        raise web.HTTPBadRequest(text="query string too long\n")
    name = request.query.get("target", "")
    if not name:
        raise web.HTTPBadRequest(text="target parameter is missing\n")  # blackbox_exporter's words
    with request.app[LIVE].use() as gen:
        if gen.settings.target(name) is None:
            # Never a request to a host the configuration does not name, nor an answer that lists
            # the names it does to whoever asks.
            raise web.HTTPBadRequest(text="unknown target\n")
        return await _respond(request, gen, [name], with_self=False)


async def healthz_handler(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _recent(snapshots: Snapshots | None, settings: Settings) -> str:
    """The last listing of each target, as blackbox_exporter lists its recent probes.

    Only what /metrics shows too: the outcome by reason (never an error's text, which may
    quote an upstream answer), when, how long, how many tasks and requests.
    """
    rows = []
    for t in settings.targets:
        listing = snapshots.last(t.name) if snapshots is not None else None
        if listing is None:
            cells = ["not listed yet", "", "", "", ""]
        else:
            failed = sorted({e.reason for e in listing.collectors.values() if e is not None}
                            | ({listing.error.reason} if listing.error else set()))
            outcome = "up" if not failed else "failed: " + ", ".join(failed)
            when = datetime.fromtimestamp(listing.taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            requests = listing.requests
            cells = [outcome, when, f"{listing.duration:.3f} s", str(len(listing.tasks)) if listing.up else "",
                     str(requests)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in [t.name, t.project_id, *cells])
                    + "</tr>")
    return ("<h2>Last listing of each target</h2>\n<table border=\"1\"><tr><th>target</th><th>project</th>"
            "<th>outcome</th><th>started</th><th>took</th><th>tasks</th><th>requests</th></tr>\n"
            + "\n".join(rows) + "\n</table>")


async def landing_handler(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    settings = live.settings
    path = settings.options.telemetry_path
    probes = "".join(
        f'<li><a href="/probe?target={html.escape(t.name)}">/probe?target={html.escape(t.name)}</a> '
        f"(project {html.escape(t.project_id)}, {html.escape(t.region)})</li>" for t in settings.targets)
    recent = _recent(live.generation.snapshots if live.generation else None, settings)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>OMS exporter</title></head>
<body><h1>OMS exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for Huawei Cloud OMS migration tasks.</p>
<ul><li><a href="{html.escape(path)}">{html.escape(path)}</a>
 (every configured project and the exporter's own metrics)</li>
{probes}
<li><a href="/healthz">/healthz</a></li></ul>
{recent}
</body></html>
"""
    return web.Response(text=page, content_type="text/html")
