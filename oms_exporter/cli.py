"""Command line: Prometheus-style flags, logging, process-wide settings, then the web server.

The flags are made from the fields of `settings.Options`. Every bad flag, variable or file
setting ends the program with one line per problem and exit code 2, before anything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import prometheus_client
from aiohttp import web
from pydantic import ValidationError

from oms_exporter import __version__, logs, server, webconfig
from oms_exporter.catalog import AREAS, families, select, switch_help, switches
from oms_exporter.settings import (
    FileConfig,
    Options,
    Settings,
    SettingsError,
    format_duration,
    load,
    meta,
    shown_default,
)

log = logging.getLogger("oms_exporter")

EXIT_USAGE = 2
GC_YOUNG_THRESHOLD = 10_000  # see gc_policy


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        sys.stderr.write(f"oms-exporter: error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """One flag per Options field; a boolean is `--flag`, `--no-flag` or `--flag=true|false`."""
    p = _Parser(prog="oms-exporter", description="Prometheus exporter for Huawei Cloud OMS migration tasks.")
    p.add_argument("--version", action="version", version=f"oms-exporter {__version__}")
    for field, info in Options.model_fields.items():
        if "flag" not in meta(info):
            continue
        flag = meta(info)["flag"]
        default = meta(info).get("shown") or shown_default(info)
        text = f"{info.description} (default {default})".replace("`", "")
        if info.annotation is bool:
            p.add_argument(f"--{flag}", dest=field, nargs="?", const="true", metavar="true|false", help=text)
            p.add_argument(f"--no-{flag}", dest=field, action="store_const", const="false", help=argparse.SUPPRESS)
        else:
            p.add_argument(f"--{flag}", dest=field, metavar="VALUE", help=text)
    for area in AREAS:
        if area.optional:
            text = f"{switch_help(area)} (default {str(area.default).lower()})"
            p.add_argument(f"--{area.flag}", dest=_SWITCH + area.name, nargs="?", const="true",
                           metavar="true|false", help=text.replace("`", ""))
            p.add_argument(f"--no-{area.flag}", dest=_SWITCH + area.name, action="store_const", const="false",
                           help=argparse.SUPPRESS)
    return p


_SWITCH = "collector:"  # argparse dest prefix of the --collector.<area> flags


def flags(argv: list[str] | None) -> dict[str, Any]:
    """The flags given on the command line (absent ones are left to their defaults)."""
    ns = build_parser().parse_args(argv)
    given = {f: v for f, v in vars(ns).items() if v is not None and not f.startswith(_SWITCH)}
    switches = {f.removeprefix(_SWITCH): v for f, v in vars(ns).items() if v is not None and f.startswith(_SWITCH)}
    if switches:
        given["collectors"] = switches
    return given


def main(argv: list[str] | None = None) -> int:
    given = flags(argv)
    demo = None
    try:
        wanted = Options.model_validate({k: v for k, v in given.items() if k.startswith("demo")})
    except ValidationError:
        wanted = None  # load() below reports the bad demo flags
    if wanted is not None and wanted.demo:
        from oms_exporter.demo import Demo  # the stand-in is not loaded in production

        demo = Demo(n_tasks=wanted.demo_tasks, auth=wanted.demo_auth)
    only = demo.config if demo else None
    settings, web_config, errors = _read(given, only)
    if errors:
        for line in errors:
            sys.stderr.write(f"oms-exporter: error: {line}\n")
        return EXIT_USAGE
    assert settings is not None
    opts = settings.options
    logs.setup(opts.log_level, opts.log_format)
    if opts.check_config:
        sys.stdout.write(_describe(settings))
        return 0

    from oms_exporter.generation import upstream_connections
    from oms_exporter.web import make_app

    # Counters without `_created` series: they double the sample count and nobody graphs them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    app = make_app(settings)
    webconfig.install(app, web_config)
    if demo is not None:
        app.cleanup_ctx.insert(0, demo.context)
    app.cleanup_ctx.append(gc_policy)  # last: what the others set up is frozen too
    host, port = opts.host_port
    try:
        sock = server.listen(host, port)
    except OSError as exc:
        sys.stderr.write(f"oms-exporter: error: --web.listen-address: cannot listen on "
                         f"{opts.listen_address}: {exc.strerror}\n")
        return EXIT_USAGE
    file_limit = server.raise_file_limit()
    max_connections = opts.web_max_connections or server.connection_cap(upstream_connections(settings), file_limit)
    log.info("listening", extra={"address": opts.listen_address, "version": __version__,
                                 "targets": ",".join(t.name for t in settings.targets),
                                 "discovery": ",".join(e.name for e in settings.discovery),
                                 "shard": f"{opts.shard_index}/{opts.shard_count}",
                                 "max_connections": max_connections, "open_file_limit": file_limit,
                                 **web_config.describe()})
    try:
        server.run(app, sock, max_connections=max_connections, header_timeout=opts.read_header_timeout,
                   ssl_context=web_config.ssl_context, on_reload=_reloader(app, given, only))
    except SettingsError as exc:  # a file the settings name changed since they were read
        for line in exc.lines:
            sys.stderr.write(f"oms-exporter: error: {line}\n")
        return EXIT_USAGE
    return 0


def _reloader(app: web.Application, given: dict[str, Any], only: FileConfig | None
              ) -> Callable[[], Coroutine[Any, Any, None]]:
    """What SIGHUP runs: read both files again; serve them if they are good, else keep what is served."""
    reloading = asyncio.Lock()  # one reload at a time: two quick SIGHUPs apply in order

    async def reload() -> None:
        async with reloading:
            await _reload(app, given, only)

    return reload


async def _reload(app: web.Application, given: dict[str, Any], only: FileConfig | None) -> None:
    from oms_exporter.web import STATS
    from oms_exporter.web import reload as reload_settings

    new_settings, new_web, errors = _read(given, only)
    if not errors:
        errors = webconfig.reload_errors(app, new_web)
    if not errors and new_settings is not None:
        try:
            await reload_settings(app, new_settings)
        except SettingsError as exc:  # a file the settings name changed since they were read
            errors = exc.lines
    stats = app[STATS]
    if errors or new_settings is None:
        log.error("reload failed, the settings in force stay", extra={"errors": "; ".join(errors)})
        stats.config_loaded(False, time.time())
        return
    webconfig.swap(app, new_web)
    stats.config_loaded(True, time.time())
    log.info("reloaded", extra={"targets": ",".join(t.name for t in new_settings.targets), **new_web.describe()})


def _read(given: dict[str, Any], only: FileConfig | None
          ) -> tuple[Settings | None, webconfig.WebConfig, list[str]]:
    """The settings and the web config from the flags and both files, and a line per problem."""
    errors: list[str] = []
    settings = None
    try:
        settings = load(given, only=only, switches=switches())
    except SettingsError as exc:
        errors += exc.lines
    web_config = webconfig.WebConfig()
    if given.get("web_config_file"):
        try:
            web_config = webconfig.load(Path(given["web_config_file"]))
        except SettingsError as exc:
            errors += exc.lines
    return settings, web_config, errors


async def gc_policy(app: web.Application) -> AsyncIterator[None]:
    """Garbage-collector settings for a process whose scrapes build a few big, short-lived lists.

    - What start-up built (modules, settings, clients: ~50,000 objects that live as long as
      the process) is frozen out of every full collection, which otherwise scanned it in
      ~100 ms pauses of the event loop while a big scrape allocated.
    - A young-generation collection starts after 10,000 new container objects instead of 700:
      a scrape of 10,000 tasks makes a few thousand, among them lists of 10,000 items, and at
      700 the collector ran 3 to 4 times per scrape, walking those lists each time.

    Undone when the app stops.
    """
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _describe(settings: Settings) -> str:
    lines = ["configuration OK"]
    for t in settings.targets:
        collectors = ", ".join(area.name for area in AREAS if settings.lists(t, area.name))
        lines.append(f"target {t.name}: project {t.project_id} in {t.region}, endpoint {t.oms_endpoint}, "
                     f"auth {t.auth_mode}, collectors {collectors}")
    shard = settings.options.shard
    if shard.count > 1:
        served = [t.name for t in settings.targets if shard.owns(t.project_id)]
        lines.append(f"shard {shard.index} of {shard.count}: serves {len(served)} of {len(settings.targets)} "
                     f"configured targets ({', '.join(served) or 'none'})"
                     + (", and its share of the discovered ones" if settings.discovery else ""))
    for e in settings.discovery:
        regions = ", ".join(e.regions) if e.regions else "all with OMS"
        lines.append(f"discovery {e.name}: IAM {e.iam_url} every {format_duration(e.refresh_interval)}, "
                     f"regions {regions}, auth {e.auth_mode}")
    opts = settings.options
    if opts.metric_allowlist or opts.metric_denylist:
        every = families(AREAS, settings.info_labels)
        kept = {f.name for f in select(every, opts.metric_allowlist, opts.metric_denylist)}
        lines.append(f"metric families: {len(kept)} of {len(every)} served, dropped "
                     + (", ".join(f.name for f in every if f.name not in kept) or "none"))
    return "\n".join(lines) + "\n"
