"""The local HTTP surface: ``/healthz``, ``/metrics``, the page, its thumbnails and its two actions.

Served by aiohttp inside the daemon's own event loop (or by ``packsync ui`` from the state alone), on
a read-only connection to the state of its own, so a page view never waits on, or holds up, a sync.

Security, from the outside in: a ``Host`` that is not the listen address or ``localhost`` gets 421
(DNS rebinding); a non-loopback listen address needs HTTP basic auth (the config refuses one without
a password); every page carries a Content-Security-Policy that allows no inline script and nothing
from elsewhere; what the API said (descriptions, keywords, names) is escaped by Jinja2; actions are
POSTs that need the page's CSRF token and, when the browser names one, this origin; a thumbnail is
asked for by mapping and content hash and served only for a file the state knows, inside its folder.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from aiohttp import web

from packsync import __version__
from packsync.config import Config, MappingConfig
from packsync.engine.subfolders import concrete
from packsync.errors import ConfigError
from packsync.logs import get_logger
from packsync.state.store import Store
from packsync.views.search import search
from packsync.views.status import FileStatus, MappingStatus, read_status
from packsync.web.health import Live, LiveState, MappingHealth, health, http_status
from packsync.web.metrics import Metrics

HERE = Path(__file__).parent
#: Files shown per mapping before the page asks for a search (a big folder stays a quick page).
GALLERY_LIMIT = 120
SEARCH_LIMIT = 200
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


@dataclass
class Site:
    """What the pages are made of. ``live`` is the running daemon (None under ``packsync ui``)."""

    config: Config
    store: Store
    metrics: Metrics
    live: Live | None = None
    password: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.templates.filters["basename"] = lambda source: Path(source).name or source

    async def read(self, reading: Callable[..., T], *args: Any) -> T:
        """Run ``reading`` off the event loop (a big state takes a while to read and render, and the
        daemon's loop syncs meanwhile), one at a time on this site's connection."""
        def locked() -> T:
            with self.lock:
                return reading(*args)

        return await asyncio.to_thread(locked)

    def now(self) -> LiveState | None:
        """What the daemon knows now (read on the event loop, before a reading goes to its thread)."""
        return self.live.live() if self.live else None

    def render(self, template: str, query: str, live: LiveState | None) -> tuple[str, str]:
        """(HTML, ETag) of the whole page or of its changing part (``view.html``)."""
        etag = self.version(query, live)
        html = self.templates.get_template(template).render(version=__version__, etag=etag,
                                                            **self.view(query, live))
        return html, etag

    # -- read models -------------------------------------------------------------------------------

    def mappings(self) -> list[MappingConfig]:
        """The mappings as synced (one per subfolder of a ``packs_from = "subfolders"`` one)."""
        return concrete(self.config, self.store)

    def health(self, live: LiveState | None) -> dict[str, Any]:
        mappings = []
        for mapping in self.mappings():
            record = self.store.mapping(mapping.label)
            error = (live.retrying.get(mapping.label) if live else None) or (record.last_error if record else None)
            mappings.append(MappingHealth(mapping.label, mapping.pack_label, record, error))
        return health(mappings, live, self.store.daemon())

    def view(self, query: str, live: LiveState | None) -> dict[str, Any]:
        words = query.split()
        hits = search(self.store, words, SEARCH_LIMIT) if words else None  # shown instead of the galleries
        status = read_status(self.config, self.store, files=not words, problems=True, files_limit=GALLERY_LIMIT)
        mappings = self.mappings()
        indexes = {m.label: i for i, m in enumerate(mappings)}
        folders = {m.label for m in mappings if m.path is not None}

        def thumb(mapping: MappingStatus | str, file: FileStatus | None = None,
                  sha256: str | None = None) -> str | None:
            """Where the page asks for a file's thumbnail (None: no local file, as for an Astria image)."""
            label = mapping if isinstance(mapping, str) else mapping.path
            sha = sha256 or (file.sha256 if file else None)
            return f"/thumb/{indexes[label]}/{sha}" if label in folders and sha else None

        return {"status": status, "query": query, "hits": hits, "limit": GALLERY_LIMIT, "csrf": self.csrf,
                "actions": self.live is not None, "health": self.health(live), "thumb": thumb, "indexes": indexes,
                "live": live}

    def version(self, query: str, live: LiveState | None) -> str:
        """An ETag for the view: it changes whenever the state does (a commit by any connection) or the
        daemon's live state does."""
        data_version = self.store.db.execute("PRAGMA data_version").fetchone()[0]
        digest = hashlib.sha256(f"{data_version}\0{live!r}\0{query}\0{self.store.daemon()}".encode()).hexdigest()
        return f'"{digest[:32]}"'

    def file_of(self, index: int, sha256: str) -> Path | None:
        """The local file holding content ``sha256`` in mapping ``index``, if the state knows one there."""
        mappings = self.mappings()
        if not 0 <= index < len(mappings):
            return None
        mapping: MappingConfig = mappings[index]
        if mapping.path is None:
            return None
        root = mapping.path.resolve()
        for rel in self.store.paths_of(mapping.label, sha256):
            path = (root / rel).resolve()
            if path.is_relative_to(root) and path.is_file():
                return path
        return None


# -- handlers ---------------------------------------------------------------------------------------

SITE = web.AppKey("site", Site)


async def healthz(request: web.Request) -> web.Response:
    site = request.app[SITE]
    document = await site.read(site.health, site.now())
    return web.json_response(document, status=http_status(document))


async def metrics(request: web.Request) -> web.Response:
    site = request.app[SITE]
    body = await site.read(site.metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def page(request: web.Request) -> web.Response:
    site = request.app[SITE]
    html, _etag = await site.read(site.render, "page.html", request.query.get("q", "")[:200], site.now())
    return web.Response(text=html, content_type="text/html")


async def view(request: web.Request) -> web.Response:
    """The page's changing part, for the page's script: 304 while nothing changed."""
    site = request.app[SITE]
    query = request.query.get("q", "")[:200]
    live = site.now()
    etag = await site.read(site.version, query, live)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    html, etag = await site.read(site.render, "view.html", query, live)
    return web.Response(text=html, content_type="text/html", headers={"ETag": etag})


async def thumb(request: web.Request) -> web.StreamResponse:
    site = request.app[SITE]
    index, sha = request.match_info["index"], request.match_info["sha"]
    if not index.isdigit() or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise web.HTTPNotFound()
    path = await site.read(site.file_of, int(index), sha)
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600",
                                           "Content-Disposition": "inline"})


async def action(request: web.Request) -> web.Response:
    site = request.app[SITE]
    if site.live is None:
        raise web.HTTPForbidden(text="packsync ui is read-only: run the daemon to sync from this page")
    form = await request.post()
    token = form.get("csrf")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), site.csrf.encode()):
        raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="cross-origin request refused")
    name = request.match_info["name"]
    if name == "sync":
        index = form.get("mapping")
        label = None
        mappings = await site.read(site.mappings)
        if isinstance(index, str) and index.isdigit() and int(index) < len(mappings):
            label = mappings[int(index)].label
        elif index not in (None, "all"):
            raise web.HTTPBadRequest(text="no such mapping")
        site.live.sync_now(label)
    elif name == "retry":
        site.live.retry_failed()
    else:
        raise web.HTTPNotFound()
    raise web.HTTPSeeOther("/")


# -- middleware -------------------------------------------------------------------------------------

def host_allowed(listen_host: str, request: web.Request) -> bool:
    """Whether the request's ``Host`` names this server: its listen address or localhost, with the port
    the connection came in on (a wildcard listen address answers any name: it needs a password anyway)."""
    try:
        if ipaddress.ip_address(listen_host).is_unspecified:
            return True
    except ValueError:
        pass
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if sockname else None
    shown = f"[{listen_host}]" if ":" in listen_host else listen_host
    names = {shown, "localhost", "127.0.0.1", "[::1]"}
    return request.host.lower() in names | {f"{name}:{port}" for name in names}


def middlewares(site: Site, listen_host: str) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    log = get_logger()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(listen_host, request):
            return web.Response(status=421, text="misdirected request: this server answers only as "
                                                 "localhost or its listen address")
        if site.password is not None and request.path != "/healthz" and not _authorized(request, site.password):
            return web.Response(status=401, text="authentication required",
                                headers={"WWW-Authenticate": 'Basic realm="packsync", charset="UTF-8"'})
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        except Exception as exc:  # noqa: BLE001 - a page error is the page's, never the daemon's
            log.error("web request failed", path=request.path, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            response = web.Response(status=500, text="internal error; see the daemon's log")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return [guard]


def _authorized(request: web.Request, password: str) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        _user, _, given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), password.encode())


def make_app(site: Site, host: str) -> web.Application:
    app = web.Application(middlewares=middlewares(site, host), client_max_size=64 * 1024)
    app[SITE] = site
    app.router.add_get("/", page)
    app.router.add_get("/view", view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/thumb/{index}/{sha}", thumb)
    app.router.add_post("/actions/{name}", action)
    app.router.add_static("/static", HERE / "static", follow_symlinks=False)
    return app


def page_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


async def serve(site: Site, host: str, port: int) -> web.AppRunner:
    """Start serving ``site`` on ``host:port`` in the running loop (port 0: any free one, which
    ``runner.addresses`` tells); OSError when the port is taken."""
    runner = web.AppRunner(make_app(site, host), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


async def serve_until_stopped(config: Config) -> None:
    """``packsync ui``: the page, health and metrics from the state alone, until SIGINT or SIGTERM."""
    import asyncio
    import signal

    from packsync.config import read_password

    assert config.http.address is not None
    host, port = config.http.address
    store = Store(config.state_path, readonly=True)
    site = Site(config, store, Metrics(config, store), None, read_password(config))
    try:
        try:
            runner = await serve(site, host, port)
        except OSError as exc:
            raise ConfigError(f"http.listen: cannot listen on {config.http.listen} ({exc.strerror or exc}).") from None
        print(f"packsync ui: serving {page_url(host, runner.addresses[0][1])} (read-only; Ctrl-C stops)",
              flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        store.close()
