"""The daemon's end of the control channel (``packsync/control.py``): HTTP on the Unix socket beside the
state, served by aiohttp in the daemon's loop.

The socket is bound as soon as the daemon holds the state's lock (``bind``), so a command that finds
the lock held finds the socket too; requests wait in its backlog until the loop serves them, and are
answered 503 until the state is open. Its file is made 0600, and a peer whose credentials
(``SO_PEERCRED``) are another user's is refused whatever the file's mode says. What each request does is
the daemon's ``Status``'s: the same calls the page's buttons make.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from packsync.control import address, socket_path
from packsync.engine.sync import SyncOptions, SyncReport
from packsync.errors import ExitCode, PacksyncError
from packsync.logs import get_logger, redact
from packsync.mappings import every

if TYPE_CHECKING:
    from packsync.daemon.service import Daemon

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: How often a sync asked to wait for the AI metadata looks whether it came.
METADATA_POLL_S = 0.5


def bind(state_path: Path) -> socket.socket:
    """The control socket of the state at ``state_path``, bound and listening, mode 0600 (a socket a killed
    daemon left there is replaced: whoever holds the state's lock owns its socket)."""
    path = socket_path(state_path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with address(path) as where:
            sock.bind(where)
            os.chmod(where, 0o600)
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def peer_uid(request: web.Request) -> int | None:
    """The user id of the process at the other end of ``request``'s connection (None: unknown)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except OSError:
        return None
    return int(uid)


def _refusal(message: str, status: int, code: ExitCode = ExitCode.USAGE) -> web.Response:
    return web.json_response({"error": message, "exit_code": int(code)}, status=status)


class Control:
    """The routes, over the running daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.log = get_logger()

    def labels(self, request: web.Request) -> frozenset[str] | None:
        """The mappings a request names (None: it names none, so every one); 404 for one the daemon has not."""
        named = request.query.getall("mapping", [])
        if not named:
            return None
        known = every(self.daemon.config, self.daemon.state)
        if unknown := [label for label in named if label not in known]:
            raise web.HTTPNotFound(text=f"the daemon does not sync {unknown[0]} (was its config reloaded?)")
        return frozenset(named)

    async def hello(self, _request: web.Request) -> web.Response:
        web_page = self.daemon.web
        return web.json_response({"pid": os.getpid(), "page": web_page.url if web_page else None,
                                  "mappings": [m.label for m in self.daemon.config.mappings],
                                  "paused": sorted(self.daemon.state.mappings.paused())})

    async def pause(self, request: web.Request) -> web.Response:
        return self._hold(request, self.daemon.status.pause, "paused")

    async def resume(self, request: web.Request) -> web.Response:
        return self._hold(request, self.daemon.status.resume, "resumed")

    def _hold(self, request: web.Request, act: Callable[[str | None], list[str]], done: str) -> web.Response:
        """Pause or resume (``act``) the mappings the request names (none: every one), and say which."""
        return web.json_response({done: [label for each in (self.labels(request) or [None]) for label in act(each)]})

    async def sync(self, request: web.Request) -> web.Response:
        """A sync now, answered once it ended (and, with ``wait``, once the metadata came or that long passed)."""
        labels = self.labels(request)
        wait = _seconds(request.query.get("wait"))
        options = SyncOptions(wait=False, force=request.query.get("force") == "1", allow=_allowed(request))
        # A caller that goes away leaves the sync to end as it would: it is the daemon's now.
        report = await asyncio.shield(self.daemon.status.ask(labels, options))
        if wait is not None:
            report.metadata_pending = await self._metadata(report, wait)
        return web.json_response(rendered(report))

    async def _metadata(self, report: SyncReport, timeout_s: float) -> int:
        """How many of the images of ``report``'s packs still wait for their metadata, once none does or
        ``timeout_s`` passed (the daemon's metadata loop polls meanwhile)."""
        state = self.daemon.state
        packs = [m.pack_id for m in report.mappings if m.pack_id and not (m.outcome and m.outcome.error)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (pending := sum(state.metadata.pending(packs).values())) and loop.time() < deadline:
            await asyncio.sleep(METADATA_POLL_S)
        return pending

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard], client_max_size=4096)
        app.router.add_get("/", self.hello)
        app.router.add_post("/pause", self.pause)
        app.router.add_post("/resume", self.resume)
        app.router.add_post("/sync", self.sync)
        return app

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if peer_uid(request) not in (os.getuid(), 0):
            return _refusal("refused: only the daemon's own user may control it", 403)
        if self.daemon.stopping.is_set():
            return _refusal("the daemon is stopping; ask again once it runs (or without it)", 409,
                            ExitCode.SOME_FAILED)
        if getattr(self.daemon, "state", None) is None:
            return _refusal("the daemon is starting: try again in a moment", 503)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return _refusal(exc.text or exc.reason, exc.status)
        except PacksyncError as exc:
            return _refusal(redact(str(exc)), 409, exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - a request's bug is the request's, never the daemon's
            self.log.error("control request failed", path=request.path[:200], error=f"{type(exc).__name__}: {exc}",
                           exc_info=exc)
            return _refusal("internal error; see the daemon's log", 500, ExitCode.SOME_FAILED)


def _allowed(request: web.Request) -> dict[str, int | None]:
    """The deletes a sync request allows, per mapping (``allow=L=N``: at most N; ``allow=L=``: any number).
    A count that is no number is refused before anything syncs: read as "any number", it would lift the stop."""
    allow: dict[str, int | None] = {}
    for item in request.query.getall("allow", []):
        label, _, count = item.rpartition("=")
        if count and not (count.isascii() and count.isdigit()):
            raise web.HTTPBadRequest(text=f"allow: {item[:200]!r} is not MAPPING=COUNT")
        allow[label] = int(count) if count else None
    return allow


def _seconds(value: str | None) -> float | None:
    """A request's ``wait``, checked before its sync runs (None: not given)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"wait: {value[:50]!r} is not a number of seconds") from None


def rendered(report: SyncReport) -> dict[str, Any]:
    """What ``run`` prints of ``report``, as text and as its JSON document, and its exit code."""
    from packsync.views.json import run_document
    from packsync.views.text import print_run

    text = StringIO()
    print_run(report, text)
    return {"exit_code": int(report.exit_code), "text": text.getvalue(), "json": run_document(report)}


class Served:
    """The control socket being served."""

    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner

    @classmethod
    async def start(cls, daemon: Daemon, sock: socket.socket) -> Served:
        runner = web.AppRunner(Control(daemon).app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return cls(runner)

    async def close(self) -> None:
        await self.runner.cleanup()
