"""The aiohttp app: /metrics, /probe?target=NAME, /discovery, /healthz and a landing page.

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
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from functools import partial

from aiohttp import web
from prometheus_client.exposition import gzip_accepted
from yarl import URL

from oms_exporter import __version__
from oms_exporter.area import Area
from oms_exporter.catalog import AREAS
from oms_exporter.clock import Clock
from oms_exporter.errors import Timeout
from oms_exporter.exposition import Renderer
from oms_exporter.generation import Generation
from oms_exporter.listing import Listing, failed_part
from oms_exporter.metrics import SelfMetrics
from oms_exporter.settings import Settings, Target
from oms_exporter.snapshot import SeriesPolicy, Snapshots

log = logging.getLogger(__name__)

STATS = web.AppKey("stats", SelfMetrics)
CLOCK = web.AppKey("clock", Clock)
POLICY = web.AppKey("policy", SeriesPolicy)
RENDERER = web.AppKey("renderer", Renderer)

TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
MAX_QUERY_LENGTH = 256
MAX_HEADER_BUDGET = 120.0  # seconds: the most a scrape-timeout header may ask for
WRITE_PIECE = 128 * 1024  # bytes of a response body written per turn of the event loop


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
    app.router.add_get("/discovery", discovery_handler)
    if path != "/":
        app.router.add_get("/", landing_handler)
    return app


async def _oms_clients(app: web.Application) -> AsyncIterator[None]:
    live = app[LIVE]
    live.generation = Generation(live.settings, app[STATS], app[CLOCK], live.areas)
    _render_ahead(app, live.generation)
    await live.generation.start()
    yield
    for task in list(live.retiring):
        task.cancel()
    await asyncio.gather(*live.retiring, return_exceptions=True)
    await live.generation.aclose(drain=False)  # the server has waited for the requests in flight
    await app[RENDERER].aclose()


def _render_ahead(app: web.Application, gen: Generation) -> None:
    """A listing that goes whole in the background is rendered before a scrape comes for it."""
    gen.snapshots.on_whole = partial(app[RENDERER].warm, policy=app[POLICY], table=gen.table,
                                     served=gen.snapshots.serves)


async def reload(app: web.Application, settings: Settings) -> None:
    """Serve `settings` from the next request on (with a fresh session and listers for every target).

    Scrapes in flight finish on the old generation, closed when they are done; the series
    of the exporter's own metrics for a project (or discovery entry) no longer there go with it.
    """
    live, stats = app[LIVE], app[STATS]
    old = live.generation
    new = Generation(settings, stats, app[CLOCK], live.areas)
    _render_ahead(app, new)
    await new.start(old)
    live.settings, live.generation = settings, new
    if old is None:
        return

    async def retire(old: Generation) -> None:
        try:
            await old.aclose()
        except asyncio.CancelledError:  # shutting down: close it now, requests or not
            await old.aclose(drain=False)
            raise
        current = live.generation
        assert current is not None
        kept = {t.project_id for t in current.targets()}
        for t in old.targets():
            if t.project_id not in kept:
                stats.remove_project(t.project_id)
        entries = {d.entry.name for d in current.discoverers}
        for d in old.discoverers:
            if d.entry.name not in entries:
                stats.remove_discovery(d.entry.name)

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
    with app[RENDERER].serving():  # renders ahead wait while a scrape lists and renders (not while it sends)
        deadline = _deadline(request, gen.settings)
        listings = await gen.snapshots.get(names, deadline)
        # The render may use most of --oms.timeout-offset, kept for it and the sending: listings
        # stop just before `deadline`, so a project still listing would leave the render nothing.
        end = deadline + 0.6 * gen.settings.options.timeout_offset
        body, content_type, zipped = await _rendered(app, gen, listings, with_self, request, end)
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


_LATE = Timeout("listed, but not yet rendered at the scrape's deadline: the next scrape serves it")


async def _rendered(app: web.Application, gen: Generation, listings: list[Listing], with_self: bool,
                    request: web.Request, deadline: float) -> tuple[bytes, str, bool]:
    """The body of `listings`, by `deadline`. A render still running then (the first of a listing of
    hundreds of thousands of tasks that became whole just before) goes on and fills the cache the
    next scrape reads; this scrape answers in time, serving the areas that were whole as `timeout`."""
    render = partial(app[RENDERER].render, policy=app[POLICY], table=gen.table, with_self=with_self,
                     accept=request.headers.get("Accept", ""),
                     gzip_ok=gzip_accepted(request.headers.get("Accept-Encoding", "")))
    try:
        async with app[CLOCK].timeout_at(deadline):
            return await render(listings)
    except TimeoutError:
        log.info("a render went past the scrape's deadline: it goes on for the next scrape",
                 extra={"targets": [lst.target.name for lst in listings]})
        return await render([_late(app[STATS], lst) for lst in listings])


def _late(stats: SelfMetrics, lst: Listing) -> Listing:
    """`lst` with its whole areas served as `timeout` (those that failed keep their reason), that
    reason counted unless the listing counted it already."""
    whole = [name for name, part in lst.parts.items() if part.error is None]
    if not whole:
        return lst
    if not any(isinstance(part.error, Timeout) for part in lst.parts.values()):
        stats.listing_failed(lst.target.project_id, "timeout")
    parts = {name: failed_part(i, _LATE) if name in whole else part for i, (name, part) in enumerate(lst.parts.items())}
    return Listing(lst.target, lst.taken_at, parts, in_progress=lst.in_progress)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    with request.app[LIVE].use() as gen:
        targets = gen.targets()
        shard = gen.settings.options.shard
        request.app[STATS].shard_served(shard.index, shard.count, len(targets))
        return await _respond(request, gen, [t.name for t in targets], with_self=True)


async def probe_handler(request: web.Request) -> web.StreamResponse:
    if len(request.query_string) > MAX_QUERY_LENGTH:
        raise web.HTTPBadRequest(text="query string too long\n")
    name = request.query.get("target", "")
    if not name:
        raise web.HTTPBadRequest(text="target parameter is missing\n")  # blackbox_exporter's words
    with request.app[LIVE].use() as gen:
        if gen.target(name) is None:
            owner = gen.owner(name)
            if owner is not None:  # another replica's: Prometheus' target list is out of step with the shards
                count = gen.settings.options.shard.count
                raise web.HTTPNotFound(text=f"target {name} belongs to shard {owner} of {count}\n")
            # Never a request to a host the configuration does not name, nor an answer that lists
            # the names it does to whoever asks.
            raise web.HTTPBadRequest(text="unknown target\n")
        return await _respond(request, gen, [name], with_self=False)


async def healthz_handler(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def discovery_handler(request: web.Request) -> web.Response:
    """Prometheus HTTP service discovery (http_sd_configs): one group per target, whose `/probe` scrapes it."""
    with request.app[LIVE].use() as gen:
        external = gen.settings.options.web_external_url
        address, where = request.host, {}
        if external:
            # As given, with its scheme and path: a reverse proxy's https://host/prefix/ is scraped
            # at https://host/prefix/probe (an address with brackets keeps them).
            url = URL(external)
            address = url.raw_authority
            where = {"__scheme__": url.scheme}
            if url.path.rstrip("/"):
                where["__metrics_path__"] = url.path.rstrip("/") + "/probe"
        groups = [{"targets": [address], "labels": {
            **t.labels, "__param_target": t.name, "project_id": t.project_id, "project_name": t.project_name or t.name,
            "region": t.region, **where}} for t in gen.targets()]
        return web.json_response(groups)


def _recent(snapshots: Snapshots | None, targets: Sequence[Target]) -> str:
    """The last listing of each target, as blackbox_exporter lists its recent probes.

    Only what /metrics shows too: the outcome by reason (never an error's text, which may
    quote an upstream answer), when, how long, how many tasks and requests.
    """
    rows = []
    for t in targets:
        listing = snapshots.last(t.name) if snapshots is not None else None
        running = " (a listing goes on in the background)" if snapshots and snapshots.in_progress(t.name) else ""
        if listing is None:
            cells = ["not listed yet" + running, "", "", "", ""]
        else:
            failed = sorted({e.reason for e in listing.collectors.values() if e is not None}
                            | ({listing.error.reason} if listing.error else set()))
            outcome = ("up" if not failed else "failed: " + ", ".join(failed)) + running
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
    gen = live.generation
    path = live.settings.options.telemetry_path
    shard = live.settings.options.shard
    targets = gen.targets() if gen is not None else [t for t in live.settings.targets if shard.owns(t.project_id)]
    sharded = (f"<p>Shard {shard.index} of {shard.count}: this replica serves the {len(targets)} targets whose "
               "project hashes to it; the other shards' targets are served by the other replicas.</p>\n"
               if shard.count > 1 else "")
    probes = "".join(
        f'<li><a href="/probe?target={html.escape(t.name)}">/probe?target={html.escape(t.name)}</a> '
        f"(project {html.escape(t.project_id)}, {html.escape(t.region)})</li>" for t in targets)
    recent = _recent(gen.snapshots if gen is not None else None, targets)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>OMS exporter</title></head>
<body><h1>OMS exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for Huawei Cloud OMS migration tasks.</p>
{sharded}<ul><li><a href="{html.escape(path)}">{html.escape(path)}</a>
 (every configured project and the exporter's own metrics)</li>
{probes}
<li><a href="/discovery">/discovery</a> (Prometheus HTTP service discovery: every target)</li>
<li><a href="/healthz">/healthz</a></li></ul>
{recent}
</body></html>
"""
    return web.Response(text=page, content_type="text/html")
