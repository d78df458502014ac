"""Command line: Prometheus-style flags, logging, settings, then the web server.

Every bad flag, variable or file setting ends the program with one line per problem
and exit code 2, before anything listens.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from oms_exporter import __version__, logs, webconfig
from oms_exporter.settings import FLAG_NAMES, Settings, SettingsError, load

log = logging.getLogger("oms_exporter")

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        sys.stderr.write(f"oms-exporter: error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="oms-exporter", description="Prometheus exporter for Huawei Cloud OMS migration tasks.")
    p.add_argument("--version", action="version", version=f"oms-exporter {__version__}")
    p.add_argument("--config.file", dest="config_file", type=Path, metavar="FILE",
                   help="YAML file with `targets:` (projects to list); OMS_* variables add one more")
    p.add_argument("--web.config.file", dest="web_config_file", type=Path, metavar="FILE",
                   help="TLS and basic auth for this exporter's endpoint, in the Prometheus "
                        "exporter-toolkit web config format")
    p.add_argument("--check-config", action="store_true", help="validate the settings and exit")
    p.add_argument("--demo", action="store_true",
                   help="run against a built-in OMS stand-in with changing demo tasks (no cloud account)")
    p.add_argument("--demo.tasks", dest="demo_tasks", type=int, default=300, metavar="N",
                   help="number of demo tasks (default 300)")
    p.add_argument("--demo.auth", dest="demo_auth", choices=["aksk", "token", "iam"], default="aksk",
                   help="how the exporter authenticates to the demo stand-in (default aksk)")
    help_for = {
        "listen_address": "address to listen on (default :10066)",
        "telemetry_path": "path of the metrics endpoint (default /metrics)",
        "log_level": "debug, info, warn or error (default info)",
        "log_format": "logfmt or json (default logfmt)",
        "max_concurrency": "ListTasks requests in flight per project (default 32)",
        "page_limit": "tasks per ListTasks page, 1..100 (default 100)",
        "scrape_timeout": "scrape budget when Prometheus sends no timeout header (default 10s)",
        "timeout_offset": "margin kept back from the scrape timeout (default 500ms)",
        "min_interval": "serve a listing younger than this instead of asking OMS again (default 0: always ask)",
        "finished_task_max_age": "succeeded tasks that ended longer ago get no per-task series "
                                 "(default 7d; 0 keeps them all)",
        "failed_task_max_age": "failed tasks that ended longer ago get no per-task series, so OmsTaskFailed "
                               "resolves for them (default 0: failed tasks keep their series while they are failed)",
        "per_task_series": "true or false: per-task series, or per-project aggregates only (default true)",
        "ca_file": "CA bundle to verify OMS and IAM TLS certificates with",
        "insecure_skip_verify": "true to skip TLS verification of OMS and IAM (dangerous)",
    }
    for field, flag in FLAG_NAMES.items():
        p.add_argument(f"--{flag}", dest=field, metavar="VALUE", help=help_for[field])
    return p


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    return {f: getattr(ns, f) for f in FLAG_NAMES if getattr(ns, f) is not None}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    flags = _flags(ns)
    demo = None
    if ns.demo:
        from oms_exporter.demo import Demo  # the stand-in is not loaded in production

        demo = Demo(n_tasks=ns.demo_tasks, auth=ns.demo_auth)
    errors: list[str] = []
    try:
        settings = load(flags, ns.config_file, only_target=demo.target if demo else None)
    except SettingsError as exc:
        errors += exc.lines
    web_config = webconfig.WebConfig()
    if ns.web_config_file is not None:
        try:
            web_config = webconfig.load(ns.web_config_file)
        except SettingsError as exc:
            errors += exc.lines
    if errors:
        for line in errors:
            sys.stderr.write(f"oms-exporter: error: {line}\n")
        return EXIT_USAGE
    logs.setup(settings.options.log_level, settings.options.log_format)
    if ns.check_config:
        sys.stdout.write(_describe(settings))
        return 0

    from oms_exporter.exposition import SPEEDUPS
    from oms_exporter.web import make_app

    app = make_app(settings)
    webconfig.install(app, web_config)
    if demo is not None:
        app.cleanup_ctx.insert(0, demo.context)
    host, port = settings.options.host_port
    try:
        sock = _listen(host, port)
    except OSError as exc:
        sys.stderr.write(f"oms-exporter: error: --web.listen-address: cannot listen on "
                         f"{settings.options.listen_address}: {exc.strerror}\n")
        return EXIT_USAGE
    log.info("listening", extra={"address": settings.options.listen_address, "version": __version__,
                                 "targets": ",".join(t.name for t in settings.targets),
                                 # "python": built without a C compiler, so scrapes of many changed tasks cost more CPU
                                 "speedups": "c" if SPEEDUPS else "python",
                                 **web_config.describe()})
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True,
                ssl_context=web_config.ssl_context)
    return 0


def _listen(host: str | None, port: int) -> socket.socket:
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    if host is None:
        # All interfaces, IPv4 and IPv6 where the machine has it.
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            host = "::"
        except OSError:
            sock, host = socket.socket(socket.AF_INET, socket.SOCK_STREAM), "0.0.0.0"
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _describe(settings: Settings) -> str:
    lines = ["configuration OK"]
    for t in settings.targets:
        lines.append(f"target {t.name}: project {t.project_id} in {t.region}, endpoint {t.oms_endpoint}, "
                     f"auth {t.auth_mode}")
    return "\n".join(lines) + "\n"
