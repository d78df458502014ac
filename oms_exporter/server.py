"""Serving the app to clients that may be hostile: the listening socket, a cap on open
connections shared fairly, bounds on the time to send a request's head and to take an answer,
quiet accept errors, signals.

aiohttp's own sites accept every connection the kernel offers, give a client that never
finishes its request head an hour, and one that never reads its answer forever: 1,000
half-sent requests then held every file descriptor a common 1,024 limit allows, and 600
clients that asked for /metrics and read nothing held every place of the cap. Here:

- At most `max_connections` connections are served at once. One more is accepted and waits
  for a place; the next clients wait in the kernel's backlog (a pause, not an
  accept-and-close), and the exporter keeps descriptors for its upstream connections.
- A client has `header_timeout` seconds from connecting (or from the end of its previous
  answer, on a kept-alive connection) to send a whole request head, and as long for a TLS
  handshake; then the connection is closed. This is aiohttp's keep-alive timer, which
  closes a connection whose handler still waits for a request when it fires.
- Write deadline: a connection whose client takes less than MIN_PROGRESS of the answer
  waiting for it (in the transport's buffer and the kernel's send queue) within
  `write_timeout` seconds (by default `header_timeout`) is reset. A client that reads keeps
  its connection however long its whole answer takes.
- Fair share: when every place is taken and a client waits for one, the connection whose
  answer has waited on its client longest (STALL_GRACE at least, less than MIN_PROGRESS
  taken) is reset to make room. Clients that do not read give way to clients that do:
  /healthz and a scrape are served within about STALL_GRACE however many connections
  stopped reading.
- An accept() that fails (out of file descriptors) logs one line per ACCEPT_LOG_INTERVAL,
  with the count of failures it stands for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import resource
import signal
import socket
import ssl
import struct
import termios
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 512  # the most the derived default allows
RESERVED_FILES = 64  # descriptors kept for everything but connections: logs, files, threads, the demo
MIN_CONNECTIONS = 8
ACCEPT_LOG_INTERVAL = 10.0  # seconds between two log lines about failing accept()
ACCEPT_RETRY = 0.5  # seconds to wait after accept() failed for want of resources
# Seconds an answer must have waited on its client before, at the cap, a waiting client takes
# that connection's place: long enough that a client reading (whose answer waits milliseconds
# at a time) is never the one reset, short enough that /healthz answers within 2 s.
STALL_GRACE = 1.0
# Bytes a client must take of its waiting answer per write deadline (per STALL_GRACE, to keep
# its place when a client waits for one): a client that reads a byte at a time is not reading.
MIN_PROGRESS = 64 * 1024
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # Linux's SIOCOUTQ: bytes the peer has not acknowledged
# accept() failures that mean "out of resources": wait for connections to close.
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def listen(host: str | None, port: int, backlog: int = 128) -> socket.socket:
    """A listening, non-blocking socket; every interface (IPv4 and IPv6) when `host` is None."""
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    if host is None:
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
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (as Go programs do at start); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(upstream: int, file_limit: int | None = None) -> int:
    """The default cap on client connections: below the open-file limit, after `upstream` connections."""
    if file_limit is None:
        file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if file_limit == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, file_limit - upstream - RESERVED_FILES))


class _Slot:
    """One of the `max_connections` places, given back once, whichever way the connection ends."""

    __slots__ = ("_site", "_held")

    def __init__(self, site: GuardedSite) -> None:
        self._site = site
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._site.open_connections -= 1
            self._site._changed.set()


class _Counted(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; tells the site while the answer waits on the client
    (the transport is paused for writing), and gives the slot back when the connection is lost."""

    def __init__(self, inner: asyncio.Protocol, slot: _Slot, site: GuardedSite) -> None:
        self._inner = inner
        self._slot = slot
        self._site = site
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if isinstance(transport, asyncio.WriteTransport):
            # Paused as soon as the kernel leaves a byte unsent, resumed when it took all: the
            # write deadline then covers every byte, also those of a transport aiohttp closed
            # (which waits for its buffer to drain, forever if the client never reads).
            transport.set_write_buffer_limits(high=0)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._site._stalled(self)
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._site._moving(self)
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._site._moving(self)
        try:
            self._inner.connection_lost(exc)
        finally:
            self._slot.release()

    def pending(self) -> int:
        """Bytes of the answer its client has not taken yet: in the transport's buffer, and (on Linux)
        in the kernel's send queue, not acknowledged by the client's kernel (whose window a client
        that does not read keeps shut)."""
        transport = self._transport
        if not isinstance(transport, asyncio.WriteTransport):
            return 0
        pending = transport.get_write_buffer_size()
        sock = transport.get_extra_info("socket")
        if _OUTQ is not None and sock is not None:
            with contextlib.suppress(OSError, ValueError):
                pending += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, bytes(4)))[0]
        return pending

    def drop(self, why: str, stalled: float) -> None:
        """Reset the connection (RST, not FIN: the kernel keeps no unsent answer for a client that
        does not read, as nginx's reset_timedout_connection) and give its place back now."""
        transport = self._transport
        if transport is None:
            return
        log.debug("connection reset: its client does not take its answer", extra={
            "peer": _peer(transport), "why": why, "stalled_seconds": round(stalled, 3)})
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._site._moving(self)
        self._slot.release()
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        else:
            transport.close()


def _took(conn: _Counted, pending: int) -> bool:
    """Whether the client took MIN_PROGRESS (or all) of the `pending` bytes it had to take."""
    return pending - conn.pending() >= min(MIN_PROGRESS, pending)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _Acceptor(asyncio.AbstractServer):
    """What BaseSite.stop() closes: the accept loop and the listening socket."""

    def __init__(self, task: asyncio.Task[None], sock: socket.socket) -> None:
        self._task = task
        self._sock = sock

    def close(self) -> None:
        self._task.cancel()
        self._sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._task.get_loop()

    def is_serving(self) -> bool:
        return not self._task.done()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)

    async def start_serving(self) -> None:
        pass  # serving from the start

    async def serve_forever(self) -> None:
        await self.wait_closed()


class GuardedSite(web.BaseSite):
    """A site on a listening socket with a cap on open connections (see the module's docstring)."""

    __slots__ = ("_sock", "_max_connections", "_header_timeout", "_write_timeout", "_stall_grace", "_changed",
                 "_stalls", "_opening", "_suppressed", "_last_logged", "open_connections")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, max_connections: int,
                 header_timeout: float, write_timeout: float | None = None, stall_grace: float = STALL_GRACE,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._write_timeout = header_timeout if write_timeout is None else write_timeout
        self._stall_grace = stall_grace
        self._changed = asyncio.Event()  # a place was given back, or an answer began to wait on its client
        # The connections whose answer waits on their client, in the order of `since`: since when
        # it has not taken MIN_PROGRESS, what it had to take then, and the timer of its deadline.
        self._stalls: dict[_Counted, tuple[float, int, asyncio.TimerHandle]] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self._suppressed = 0
        self._last_logged: float | None = None
        self.open_connections = 0

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        task = asyncio.get_running_loop().create_task(self._accept())
        self._server = _Acceptor(task, self._sock)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._accept_failed(exc, loop.time())
                    await asyncio.sleep(ACCEPT_RETRY)
                continue  # ECONNABORTED and the like: that client is gone
            try:
                await self._place()  # at the cap: accept nothing more until this one has a place
            except BaseException:
                conn.close()
                raise
            self.open_connections += 1
            task = loop.create_task(self._open(conn, _Slot(self)))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _place(self) -> None:
        """Until there is a place: a free one, or the one of the connection whose answer has waited on
        its client longest, once that is `stall_grace` seconds without MIN_PROGRESS taken."""
        loop = asyncio.get_running_loop()
        while self.open_connections >= self._max_connections:
            self._changed.clear()
            oldest = next(iter(self._stalls.items()), None)  # a dict keeps the order of insertion
            if oldest is None:
                await self._changed.wait()
                continue
            conn, (since, pending, _) = oldest
            stalled = loop.time() - since
            if stalled < self._stall_grace:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self._stall_grace - stalled)
            elif _took(conn, pending):
                self._watch(conn)  # slow, but reading: to the end of the line
            else:
                conn.drop("a client waits for a place", stalled)

    def _stalled(self, conn: _Counted) -> None:
        self._watch(conn)
        self._changed.set()

    def _watch(self, conn: _Counted) -> None:
        """Watch from now what `conn` has to take, with a write deadline `write_timeout` from now."""
        self._moving(conn)
        loop = asyncio.get_running_loop()
        since = loop.time()
        self._stalls[conn] = since, conn.pending(), loop.call_at(since + self._write_timeout, self._expired, conn)

    def _moving(self, conn: _Counted) -> None:
        stall = self._stalls.pop(conn, None)
        if stall is not None:
            stall[2].cancel()

    def _expired(self, conn: _Counted) -> None:
        since, pending, _ = self._stalls[conn]
        if _took(conn, pending):
            self._watch(conn)
        else:
            conn.drop("write deadline", asyncio.get_running_loop().time() - since)

    async def _open(self, conn: socket.socket, slot: _Slot) -> None:
        server = self._runner.server
        assert server is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Counted(server(), slot, self), conn, ssl=self._ssl_context,
                ssl_handshake_timeout=self._header_timeout if self._ssl_context else None)
        except (TimeoutError, OSError) as exc:  # a failed or too slow TLS handshake
            log.debug("connection closed before a request", extra={"error": type(exc).__name__})
            conn.close()
            slot.release()
        except BaseException:
            conn.close()
            slot.release()
            raise

    def _accept_failed(self, exc: OSError, now: float) -> None:
        if self._last_logged is not None and now - self._last_logged < ACCEPT_LOG_INTERVAL:
            self._suppressed += 1
            return
        log.error("cannot accept connections", extra={
            "error": errno.errorcode.get(exc.errno or 0, str(exc.errno)), "open_connections": self.open_connections,
            "max_connections": self._max_connections, "suppressed": self._suppressed})
        self._last_logged, self._suppressed = now, 0


async def start(app: web.Application, sock: socket.socket, *, max_connections: int, header_timeout: float,
                write_timeout: float | None = None, ssl_context: ssl.SSLContext | None = None,
                **runner_args: Any) -> web.AppRunner:
    """Start serving `app` on `sock`; `await runner.cleanup()` stops it. The write deadline is
    `header_timeout` unless `write_timeout` says otherwise."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=header_timeout, **runner_args)
    await runner.setup()
    site = GuardedSite(runner, sock, max_connections=max_connections, header_timeout=header_timeout,
                       write_timeout=write_timeout, ssl_context=ssl_context)
    await site.start()
    return runner


def run(app: web.Application, sock: socket.socket, *, max_connections: int, header_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        on_reload: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (then finish the requests in flight); SIGHUP calls `on_reload`."""

    async def serve() -> None:
        runner = await start(app, sock, max_connections=max_connections, header_timeout=header_timeout,
                             ssl_context=ssl_context, handle_signals=True)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()
        if on_reload is not None:
            reload = on_reload

            def hup() -> None:
                task = loop.create_task(reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, hup)
        try:
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            if on_reload is not None:
                loop.remove_signal_handler(signal.SIGHUP)
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        loop.run_until_complete(asyncio.gather(main, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
