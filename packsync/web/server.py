"""The local HTTP surface: ``/healthz``, ``/metrics``, the page, its thumbnails, an image's own page and
the page's actions (sync, retry, pause, resume, allow-deletes: asked of the running daemon, ``Live``).

The page (``/``) takes its view from the query string alone — ``q`` (a search, shown first), ``show``
(the files listed: one of ``views.status.SHOWN``), ``mapping`` (one mapping's key: its files a page at a
time) and ``page`` — so every view is a link, works without script, and the script's refresh (``/view``)
asks for the same one. ``/image/KEY/SHA256`` is one content of one mapping, with all the state knows of it.

Served by aiohttp inside the daemon's own event loop (or by ``packsync ui`` from the state alone), on
a read-only connection to the state of its own, so a page view never waits on, or holds up, a sync.

Security, from the outside in: a ``Host`` that is not the listen address or ``localhost`` gets 421
(DNS rebinding); a non-loopback listen address needs HTTP basic auth (the config refuses one without
a password); every page carries a Content-Security-Policy that allows no inline script and nothing
from elsewhere; what the API said (descriptions, keywords, names) is escaped by Jinja2; actions are
POSTs that need the page's CSRF token and, when the browser names one, this origin; a thumbnail is
asked for by mapping and content hash and served only for a file the state knows, inside its folder.

Against clients that open connections and stall (or just open many): no request body is ever read —
an action says all it needs in its URL, so its origin and token are checked on the request line and
headers alone — a connection gets ``request_s`` to send its headers (or to send the next request),
an answer that the client stops reading for ``request_s`` is abandoned, and past ``MAX_CONNECTIONS``
open at once a new one is closed at once. The descriptors a stalling client can hold are bounded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2
from aiohttp import web

from packsync import __version__
from packsync.config import Config, MappingConfig, read_password
from packsync.errors import ConfigError, StateUnavailable
from packsync.logs import get_logger
from packsync.mappings import concrete, group_of
from packsync.recipe import describe
from packsync.sources.media import sniff
from packsync.state.lock import StateLock
from packsync.state.store import State
from packsync.views.clock import local_time
from packsync.views.search import count, search
from packsync.views.status import SHOWN, FileStatus, Listing, MappingStatus, read_image, read_status, shown
from packsync.web.health import STALL_S, Live, LiveState, MappingHealth, health, http_status
from packsync.web.limits import MAX_CONNECTIONS, REQUEST_S
from packsync.web.metrics import Metrics

HERE = Path(__file__).parent
#: Files shown per mapping on the main page, and per page of a mapping's own view (a big folder stays a
#: quick page).
GALLERY_LIMIT = 120
SEARCH_LIMIT = 200
#: The filters the page offers, as their links name them.
SHOWN_AS = {"all": "All", "synced": "Synced", "pending": "Pending", "problems": "Problems",
            "ai-pending": "AI pending", "ai-failed": "AI failed"}
MAX_PAGE = 1_000_000
#: The newest entries of the activity feed the page shows.
ACTIVITY_SHOWN = 20
#: Page reads waiting for the site's thread before more get 503; thumbnails are sent this much at a time.
MAX_WAITING = 8
CHUNK = 256 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Query:
    """What the page shows, as its query string says: a search (``q``), the files listed (``show``), one
    mapping's files (``mapping``, its key) a page at a time (``page``, from 1). Anything else is the default."""

    q: str = ""
    show: str = "all"
    mapping: str | None = None
    page: int = 1

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Query:
        show = query.get("show", "all")
        mapping = query.get("mapping")
        page = query.get("page", "1")
        number = int(page) if page.isascii() and page.isdigit() and len(page) < 8 else 1
        return cls(query.get("q", "")[:200], show if show in SHOWN else "all", mapping if _hex(mapping, 16) else None,
                   min(max(number, 1), MAX_PAGE))

    def url(self, **changes: Any) -> str:
        """The page's address for this view with ``changes`` (a default value is left out of it)."""
        values = {"q": self.q, "show": self.show, "mapping": self.mapping, "page": self.page, **changes}
        shown = {k: v for k, v in values.items() if v not in ("", None, "all", 1)}
        return "/?" + urlencode(shown) if shown else "/"

    @property
    def key(self) -> str:
        """What tells views apart (for the ETag)."""
        return f"{self.q}\0{self.show}\0{self.mapping}\0{self.page}"


@dataclass
class Site:
    """What the pages are made of. ``live`` is the running daemon (None under ``packsync ui``).

    The page's reads and renders run one at a time on a thread of the site's own (a big state takes a
    while, and the daemon's loop syncs meanwhile; its scans keep the default thread pool), and at most
    ``MAX_WAITING`` wait: more get 503. Health reads a connection of its own, on the loop: it never
    waits behind a render.
    """

    config: Config
    state: State
    metrics: Metrics
    live: Live | None = None
    password: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def open(cls, config: Config, live: Live | None) -> Site:
        """The site of ``config``, on a read-only connection to its state of its own: pages never wait on,
        or hold up, a sync."""
        state = State.for_config(config, readonly=True)
        return cls(config, state, Metrics(config, state), live, read_password(config))

    def __post_init__(self) -> None:
        self.quick = State(self.state.path, readonly=True, shared=self.state.shared)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="packsync-web")
        self.prober = ThreadPoolExecutor(1, thread_name_prefix="packsync-health")  # a hung mount stalls it alone
        self.waiting = 0
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.templates.filters["basename"] = lambda source: Path(source).name or source
        self.templates.filters["name_of"] = lambda key: PurePosixPath(key).name or key
        self.templates.filters["folder_of"] = lambda key: "" if (up := str(PurePosixPath(key).parent)) == "." else up
        self.templates.filters["clock"] = local_time  # (the page's script then shows it in the reader's zone)
        self.templates.globals["describe"] = describe

    def close(self) -> None:
        for pool in (self.worker, self.prober):
            pool.shutdown(wait=True, cancel_futures=True)
        self.quick.close()
        self.state.close()

    async def read(self, reading: Callable[..., T], *args: Any) -> T:
        """Run ``reading`` on the site's thread (503 when too many wait already)."""
        if self.waiting >= MAX_WAITING:
            raise web.HTTPServiceUnavailable(text="busy: try again in a moment", headers={"Retry-After": "2"})
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, reading, *args)
        finally:
            self.waiting -= 1

    def now(self) -> LiveState | None:
        """What the daemon knows now (read on the event loop, before a reading goes to its thread)."""
        return self.live.live() if self.live else None

    def render(self, template: str, query: Query, live: LiveState | None) -> tuple[str, str]:
        """(HTML, ETag) of the whole page or of its changing part (``view.html``)."""
        config = self.config  # one config for the whole request, even if a reload swaps it meanwhile
        etag = self.version(query, live)
        html = self.templates.get_template(template).render(version=__version__, etag=etag,
                                                            **self.view(config, query, live))
        return html, etag

    def render_image(self, key: str, sha256: str) -> str | None:
        """The page of content ``sha256`` in mapping ``key`` (None: the state knows no such file)."""
        mapping = self.mapping(key)
        detail = read_image(mapping, self.state, sha256) if mapping else None
        if mapping is None or detail is None:
            return None
        record = self.state.mappings.get(mapping.label)
        source = f"{mapping.label} ({record.source_name})" if record and record.source_name else mapping.label
        thumb = f"/thumb/{key}/{sha256}" if mapping.path is not None else None
        return self.templates.get_template("image.html").render(
            version=__version__, detail=detail, key=key, source=source, thumb=thumb, query=Query(),
            folder=mapping.path, actions=self.live is not None)

    # -- read models -------------------------------------------------------------------------------

    def health(self, live: LiveState | None, config: Config | None = None,
               state: State | None = None) -> dict[str, Any]:
        """The ``/healthz`` document (on the loop, with the quick connection, unless told otherwise)."""
        config, state = config or self.config, state or self.quick
        mappings = []
        try:
            for mapping in concrete(config, state):
                record = state.mappings.get(mapping.label)
                retrying = live.retrying.get(group_of(config, mapping.label)) if live else None
                error = retrying or (record.last_error if record else None)
                mappings.append(MappingHealth(mapping.label, mapping.pack_label, record, error))
            daemon = state.mappings.daemon()
        except StateUnavailable as exc:  # (a shared state's server away): degraded, and why
            return health([], live, None, unreadable=str(exc))
        gone = live is None and daemon is not None and daemon.state != "stopped" and \
            StateLock(config.state_path).holder() != daemon.pid
        return health(mappings, live, daemon, daemon_gone=gone)

    def view(self, config: Config, query: Query, live: LiveState | None) -> dict[str, Any]:
        words = query.q.split()
        hits = search(self.state, words, SEARCH_LIMIT) if words else None  # shown first, the galleries hidden
        everyone = shown(config, self.state)  # (a folder of subfolder packs too, while files in it are skipped)
        chosen = next((m for m in everyone if key_of(m.label) == query.mapping), None) if query.mapping else None
        listing = Listing(query.show, (query.page - 1) * GALLERY_LIMIT if chosen else 0, GALLERY_LIMIT,
                          chosen.label if chosen else None)
        status = read_status(config, self.state, files=not words, problems=True, problems_limit=GALLERY_LIMIT,
                             listing=listing)
        indexes = {m.label: key_of(m.label) for m in everyone}
        folders = {m.label for m in everyone if m.path is not None}
        packs = {m.label: _pack_name(m, self.state.mappings.get(m.label)) for m in everyone}

        def thumb(mapping: MappingStatus | str, file: FileStatus | None = None,
                  sha256: str | None = None) -> str | None:
            """Where the page asks for a file's thumbnail (None: no local file, as for an Astria image)."""
            label = mapping if isinstance(mapping, str) else mapping.path
            sha = sha256 or (file.sha256 if file else None)
            return f"/thumb/{indexes[label]}/{sha}" if label in folders and sha else None

        return {"status": status, "query": query, "hits": hits, "total": count(self.state, words) if words else 0,
                "limit": GALLERY_LIMIT, "csrf": self.csrf, "actions": self.live is not None,
                "health": self.health(live, config, self.state), "thumb": thumb, "indexes": indexes, "live": live,
                "packs": packs, "chosen": chosen, "filters": _filters(status.mappings), "shown_as": SHOWN_AS,
                "activity": self.state.activity.recent(ACTIVITY_SHOWN, chosen.label if chosen else None)}

    def version(self, query: Query, live: LiveState | None) -> str:
        """An ETag for the view: it changes whenever the state does (a commit by any connection) or what
        the daemon shows does (not its loop's heartbeat)."""
        data_version = self.state.data_version()
        shown = None if live is None else replace(live, since_tick_s=float(live.since_tick_s > STALL_S))
        daemon = self.state.mappings.daemon()
        digest = hashlib.sha256(f"{data_version}\0{shown!r}\0{query.key}\0{daemon}".encode()).hexdigest()
        return f'"{digest[:32]}"'

    def mappings(self) -> list[MappingConfig]:
        """The mappings as synced (one per subfolder of a ``packs_from = "subfolders"`` one)."""
        return concrete(self.config, self.state)

    def mapping(self, key: str) -> MappingConfig | None:
        """The mapping the page calls ``key`` (``key_of`` its label: stable while subfolders come and go)."""
        return next((m for m in self.mappings() if key_of(m.label) == key), None)

    def open_thumb(self, key: str, sha256: str) -> tuple[int, int, str] | None:
        """(an open file, its size, its image type) for content ``sha256`` in mapping ``key``: a regular
        file the state knows, opened below its folder without following any link (nothing can be swapped
        in between a check and the open), whose bytes are an image. None otherwise."""
        mapping = self.mapping(key)
        if mapping is None or mapping.path is None:
            return None
        for rel in self.state.files.paths_of(mapping.label, sha256):
            fd = _open_below(mapping.folder, rel)
            if fd is None:
                continue
            try:
                size = os.fstat(fd).st_size
                content_type = sniff(os.pread(fd, 64, 0))
            except OSError:
                content_type = None
            if content_type is not None:
                return fd, size, content_type
            os.close(fd)
        return None


def _pack_name(mapping: MappingConfig, record: Any) -> str:
    """A mapping's pack as people read it: its name, else its id."""
    name = mapping.pack or (record.pack_name if record else None)
    return str(name or mapping.pack_id or (record.pack_id if record else None) or "(pack not created yet)")


def _filters(mappings: list[MappingStatus]) -> dict[str, int]:
    """How many entries each filter selects in these mappings (AI ones: images, as the counts say)."""
    def total(*names: str, of: str = "counts") -> int:
        return sum(getattr(m, of)[name] for m in mappings for name in names)

    return {"all": total("synced", "pending", "failed"), "synced": total("synced"), "pending": total("pending"),
            "problems": total("skipped", "failed"), "ai-pending": total("pending", of="metadata"),
            "ai-failed": total("failed", of="metadata")}


def key_of(label: str) -> str:
    """A mapping's name in the page's URLs and forms."""
    return hashlib.sha256(label.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _open_below(root: Path, rel: str) -> int | None:
    """``root/rel`` opened for reading, every part below ``root`` refused if it is a link; None unless
    it is a regular file."""
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    try:
        folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


# -- handlers ---------------------------------------------------------------------------------------

SITE = web.AppKey("site", Site)
REQUEST_S_KEY = web.AppKey("request_s", float)
PUBLIC = web.RequestKey("public", bool)


async def healthz(request: web.Request) -> web.Response:
    site = request.app[SITE]
    document = await asyncio.get_running_loop().run_in_executor(site.prober, site.health, site.now())
    if request.get(PUBLIC):  # a password is set and was not given: the verdict only
        document = {"status": document["status"]}
    return web.json_response(document, status=http_status(document))


async def metrics(request: web.Request) -> web.Response:
    site = request.app[SITE]
    body = await site.read(site.metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def page(request: web.Request) -> web.Response:
    site = request.app[SITE]
    html, _etag = await site.read(site.render, "page.html", Query.of(request.query), site.now())
    return web.Response(text=html, content_type="text/html")


async def image_page(request: web.Request) -> web.Response:
    """One content of one mapping: its picture, its AI metadata, its files, its pack."""
    site = request.app[SITE]
    key, sha = request.match_info["key"], request.match_info["sha"]
    html = await site.read(site.render_image, key, sha) if _hex(key, 16) and _hex(sha, 64) else None
    if html is None:
        raise web.HTTPNotFound(text="no such image: the state knows no file of this content in this mapping")
    return web.Response(text=html, content_type="text/html")


async def view(request: web.Request) -> web.Response:
    """The page's changing part, for the page's script: 304 while nothing changed."""
    site = request.app[SITE]
    query = Query.of(request.query)
    live = site.now()
    etag = await site.read(site.version, query, live)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    html, etag = await site.read(site.render, "view.html", query, live)
    return web.Response(text=html, content_type="text/html", headers={"ETag": etag})


async def thumb(request: web.Request) -> web.StreamResponse:
    """A file's bytes, streamed from the file opened once, as the image type its bytes are (never what
    its name says), in a sandbox of its own."""
    site = request.app[SITE]
    key, sha = request.match_info["key"], request.match_info["sha"]
    if not (_hex(key, 16) and _hex(sha, 64)):
        raise web.HTTPNotFound()
    opened = await site.read(site.open_thumb, key, sha)
    if opened is None:
        raise web.HTTPNotFound()
    fd, size, content_type = opened
    try:
        response = web.StreamResponse(headers={
            "Content-Type": content_type, "Content-Length": str(size), "Cache-Control": "private, max-age=3600",
            "Content-Security-Policy": "default-src 'none'; sandbox", "Content-Disposition": "inline"})
        await response.prepare(request)
        sent, loop, stall_s = 0, asyncio.get_running_loop(), request.app[REQUEST_S_KEY]
        try:
            async with asyncio.timeout(stall_s) as deadline:  # a client that stops reading is let go
                while sent < size and (chunk := await asyncio.to_thread(os.read, fd, min(CHUNK, size - sent))):
                    await response.write(chunk)
                    sent += len(chunk)
                    deadline.reschedule(loop.time() + stall_s)
                await response.write_eof()
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
        return response
    finally:
        os.close(fd)


def _hex(text: object, length: int) -> bool:
    return isinstance(text, str) and len(text) == length and all(c in "0123456789abcdef" for c in text)


async def action(request: web.Request) -> web.Response:
    """A button of the page. Everything it needs is in its URL (the form's ``action``), so the token and
    the origin are checked before, and without, any byte of a body: none is ever read."""
    site = request.app[SITE]
    if site.live is None:
        raise web.HTTPForbidden(text="packsync ui is read-only: run the daemon to sync from this page")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="cross-origin request refused")
    token = request.query.get("csrf")
    if token is None or not hmac.compare_digest(token.encode(), site.csrf.encode()):
        raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
    name = request.match_info["name"]
    if name == "retry":
        site.live.retry_failed()
    elif name in MAPPING_ACTIONS:
        await _act_on_mapping(site, site.live, name, request.query.get("mapping"))
    else:
        raise web.HTTPNotFound()
    raise web.HTTPSeeOther(_back(request))


#: The buttons that act on a mapping (each may name none, "all", or one mapping's key — allow-deletes one).
MAPPING_ACTIONS = ("sync", "pause", "resume", "allow-deletes")


async def _act_on_mapping(site: Site, live: Live, name: str, key: str | None) -> None:
    """Ask the daemon to sync, pause or resume the mapping ``key`` names (every one for none or "all"), or
    to delete what its safety stop withholds, once."""
    chosen = await site.read(site.mapping, key) if _hex(key, 16) else None
    if chosen is None and (name == "allow-deletes" or key not in (None, "all")):
        raise web.HTTPBadRequest(text="no such mapping")
    label = chosen.label if chosen else None
    if name == "sync":
        live.sync_now(label)
    elif name == "pause":
        live.pause(label)
    elif name == "resume":
        live.resume(label)
    elif label is not None:
        live.allow_deletes(label)  # (the sync it starts reports to the page as any sync does)


def _back(request: web.Request) -> str:
    """Where an action sends the browser: the view it was asked from (``back``), rebuilt from what that
    view's query says, so it is always one of this page's views and never another site."""
    try:
        return Query.of(dict(parse_qsl(urlsplit(request.query.get("back", "/")).query))).url()
    except ValueError:
        return "/"


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
        if site.password is not None and not _authorized(request, site.password):
            if request.path != "/healthz":
                return web.Response(status=401, text="authentication required",
                                    headers={"WWW-Authenticate": 'Basic realm="packsync", charset="UTF-8"'})
            request[PUBLIC] = True  # monitors may ask how it goes, and hear only that
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # an answer of its own (a redirect, a refusal), sent as one
            response = web.Response(status=exc.status, reason=exc.reason, body=exc.body, headers=exc.headers)
        except StateUnavailable as exc:  # it passes (a shared state's server away): said, not a traceback
            response = web.Response(status=503, text=f"{exc} The page is back once it is usable again.",
                                    headers={"Retry-After": "5"})
        except Exception as exc:  # noqa: BLE001 - a page error is the page's, never the daemon's
            log.error("web request failed", path=request.path[:200], error=f"{type(exc).__name__}: {exc}"[:500],
                      exc_info=exc)
            response = web.Response(status=500, text="internal error; see the daemon's log")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with the page's own
        # forms, and the origin check refuses every button; other sites still hear no address of the page
        response.headers.setdefault("Referrer-Policy", "same-origin")
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


def make_app(site: Site, host: str, request_s: float) -> web.Application:
    app = web.Application(middlewares=middlewares(site, host), client_max_size=64 * 1024)
    app[SITE] = site
    app[REQUEST_S_KEY] = request_s
    app.router.add_get("/", page)
    app.router.add_get("/view", view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/thumb/{key}/{sha}", thumb)
    app.router.add_get("/image/{key}/{sha}", image_page)
    app.router.add_post("/actions/{name}", action)
    app.router.add_static("/static", HERE / "static", follow_symlinks=False)
    return app


def page_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class _Admission(asyncio.Protocol):
    """A new connection, handed to aiohttp's handler as it opens unless ``MAX_CONNECTIONS`` are open
    already (then it is closed). Decided when it opens, not when it is accepted: the loop accepts a
    burst of connections before any of them counts as open."""

    def __init__(self, server: web.Server) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.server.connections) >= MAX_CONNECTIONS:
            transport.close()
            return
        handler = self.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)


@dataclass
class Served:
    """The page being served: where, and how to stop."""

    runner: web.AppRunner
    listener: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.listener.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.listener.close()
        await self.runner.cleanup()
        await self.listener.wait_closed()


async def serve(site: Site, host: str, port: int, request_s: float) -> Served:
    """Start serving ``site`` on ``host:port`` in the running loop (port 0: any free one, which
    ``Served.port`` tells), a connection that stalls let go after ``request_s`` (the ``Timing``'s
    ``page_request_s``); OSError when the port is taken."""
    # aiohttp logs every malformed request with a traceback: anyone could fill the journal with them.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    # aiohttp's keep-alive deadline runs from the moment a connection opens and is not put off by bytes
    # that trickle in: it is the deadline for a request's headers too. After an answer, a body never
    # read is drained for a moment at most (long enough that a client still sending it sees the answer).
    runner = web.AppRunner(make_app(site, host, request_s), access_log=None, handle_signals=False,
                           keepalive_timeout=request_s, lingering_time=min(1.0, request_s))
    await runner.setup()
    server = runner.server
    assert server is not None
    try:
        listener = await asyncio.get_running_loop().create_server(lambda: _Admission(server), host, port,
                                                                  reuse_address=True)
    except OSError:
        await runner.cleanup()
        raise
    return Served(runner, listener)


async def serve_until_stopped(config: Config) -> None:
    """``packsync ui``: the page, health and metrics from the state alone, until SIGINT or SIGTERM."""
    import signal

    assert config.http.address is not None
    host, port = config.http.address
    site = Site.open(config, None)
    try:
        try:
            served = await serve(site, host, port, REQUEST_S)
        except OSError as exc:
            raise ConfigError(f"http.listen: cannot listen on {config.http.listen} ({exc.strerror or exc}).") from None
        print(f"packsync ui: serving {page_url(host, served.port)} (read-only; Ctrl-C stops)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await served.close()
    finally:
        site.close()
