"""HTTP face of the sandbox: routing, the JSON envelope, storage/CDN routes, faults.

Owns the request handler and the threading HTTP server. Every request is routed to an
API route template (``/packs``, ``/packs/{id}``, ...), ``storage`` (presigned PUT) or
``cdn`` (GET), counted, delayed by the configured latency, possibly faulted, and then
answered from the :class:`~packsync.sandbox.store.Store`. Storage PUT bodies are read, and CDN
bodies written, a chunk at a time through the sandbox's :class:`~packsync.sandbox.link.Link`.
Standard library only.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from .astria import ASTRIA_PREFIX, IMAGE_PREFIX
from .astria import answer as astria_answer
from .faults import AFTER_KINDS, TRICKLE_KINDS
from .link import CHUNK, ConnectionLink
from .store import CDN_PATH_RE
from .validation import (
    IMAGE_CONTENT_TYPES,
    PayloadError,
    validate_add_image,
    validate_create_pack,
    validate_update_pack,
    validate_upload_request,
)

if TYPE_CHECKING:
    from .app import Sandbox

__all__ = ["API_PREFIX", "SandboxServer", "Handler"]

API_PREFIX = "/api/partner/v1"
ROUTE_METHODS: dict[str, tuple[str, ...]] = {
    "/packs": ("GET", "POST"),
    "/packs/{id}": ("GET", "PATCH", "DELETE"),
    "/packs/{id}/images": ("POST",),
    "/packs/{id}/images/{image_id}": ("DELETE",),
    "/files": ("GET", "POST"),
    "storage": ("PUT",),
    "cdn": ("GET", "HEAD"),
    "astria:/packs": ("GET",),
    "astria:/gallery/packs": ("GET",),
    "astria:/p/{id}": ("GET",),
    "astria:/tunes": ("GET",),
    "astria:/tunes/{id}": ("GET",),
    "astria:/tunes/{id}/prompts": ("GET",),
    "astria:/tunes/{id}/prompts/{prompt_id}": ("GET",),
    "astria-img": ("GET", "HEAD"),
}
ACCOUNT_ERRORS = {
    401: ("invalid_token", "API key revoked"),
    402: ("subscription_required", "Active Creator, Professional, or Business subscription required"),
    403: ("tier_not_allowed", "Scheduler tier cannot use Partner API"),
}
#: The routes whose bodies cross the link: uploads in, downloads out.
UPLINK_ROUTES = frozenset({"storage"})
DOWNLINK_ROUTES = frozenset({"cdn", "astria-img"})
BAD_GATEWAY_HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def ok(code: int, message: str, data: dict[str, Any]) -> Reply:
    return Reply(code, json.dumps({"ok": True, "code": code, "message": message, "data": data}).encode())


def fail(code: int, error_code: str, message: str, issues: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    env: dict[str, Any] = {"ok": False, "code": code, "message": message, "error_code": error_code}
    if issues is not None:
        env["issues"] = issues
    return Reply(code, json.dumps(env).encode(), headers=headers or {})


def xml_error(code: int, s3_code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(s3_code)}</Code><Message>{escape(message)}</Message></Error>")
    return Reply(code, body.encode(), "application/xml", headers or {})


#: Each route as a pattern of the request path: the first that matches names the route, its groups
#: the path parameters.
ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((route, re.compile(pattern)) for route, pattern in (
    ("/files", re.escape(API_PREFIX) + r"/files/?"),
    ("/packs", re.escape(API_PREFIX) + r"/packs/?"),
    ("/packs/{id}", re.escape(API_PREFIX) + r"/packs/(?P<id>[^/]+)/?"),
    ("/packs/{id}/images", re.escape(API_PREFIX) + r"/packs/(?P<id>[^/]+)/images/?"),
    ("/packs/{id}/images/{image_id}", re.escape(API_PREFIX) + r"/packs/(?P<id>[^/]+)/images/(?P<image_id>[^/]+)/?"),
    ("storage", r"/storage/(?P<key>[^/]+)"),
    ("cdn", r"/cdn/[^/]+"),
    ("astria-img", re.escape(IMAGE_PREFIX) + r"(?P<key>[^/]+)"),
    ("astria:/packs", re.escape(ASTRIA_PREFIX) + r"/packs/?"),
    ("astria:/gallery/packs", re.escape(ASTRIA_PREFIX) + r"/gallery/packs/?"),
    ("astria:/p/{id}", re.escape(ASTRIA_PREFIX) + r"/p/(?P<id>[^/]+)/?"),
    ("astria:/tunes/{id}/prompts/{prompt_id}",
     re.escape(ASTRIA_PREFIX) + r"/tunes/(?P<id>[^/]+)/prompts/(?P<prompt_id>[^/]+)/?"),
    ("astria:/tunes/{id}/prompts", re.escape(ASTRIA_PREFIX) + r"/tunes/(?P<id>[^/]+)/prompts/?"),
    ("astria:/tunes/{id}", re.escape(ASTRIA_PREFIX) + r"/tunes/(?P<id>[^/]+)/?"),
    ("astria:/tunes", re.escape(ASTRIA_PREFIX) + r"/tunes/?"),
))


def resolve(path: str) -> tuple[str, dict[str, str]] | None:
    """Map a request path to (route template, path parameters), or None."""
    for route, pattern in ROUTES:
        if match := pattern.fullmatch(path):
            return route, match.groupdict()
    return None


def _window(query: dict[str, str], default_limit: int) -> tuple[int, int] | Reply:
    """A list's ``limit`` (1-100) and ``offset`` (from 0), or the 400 refusing them."""
    try:
        limit = int(query.get("limit", str(default_limit)))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        return fail(400, "invalid_limit", "limit must be an integer between 1 and 100")
    try:
        offset = int(query.get("offset", "0"))
    except ValueError:
        offset = -1
    if offset < 0:
        return fail(400, "invalid_offset", "offset must be a non-negative integer")
    return limit, offset


def fault_reply(kind: str, route: str) -> Reply:
    """The answer for a fault kind that answers (everything but resets)."""
    s3 = route in ("storage", "cdn", "astria-img")
    if kind == "502":
        return Reply(502, BAD_GATEWAY_HTML, "text/html")
    if kind == "not-json":
        return Reply(200, b"<html>oops</html>", "text/html")
    if kind == "expire":
        return xml_error(403, "AccessDenied", "Request has expired")
    if kind == "422":
        return fail(422, "invalid_payload", "Invalid payload", {"formErrors": [], "fieldErrors": {
            "image_url": ["The URL is not allowed"]}})
    if kind in ("429", "429-bare"):
        headers = {"Retry-After": "1"} if kind == "429" else {}
        if s3:
            return xml_error(429, "SlowDown", "Please reduce your request rate.", headers)
        return fail(429, "rate_limited", "Too many requests", headers=headers)
    status = int(kind.split("-")[0])
    names = {500: ("internal_error", "InternalError", "Internal server error"),
             503: ("service_unavailable", "ServiceUnavailable", "Service unavailable"),
             504: ("gateway_timeout", "GatewayTimeout", "Gateway timeout")}
    api_code, s3_code, message = names[status]
    return xml_error(status, s3_code, message) if s3 else fail(status, api_code, message)


class SandboxServer(ThreadingHTTPServer):
    """Threading HTTP server that knows its sandbox and can drop live connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), Handler)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    """One connection; answers each request per the Partner API contract."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "packsync-sandbox/1"
    server: SandboxServer
    link: ConnectionLink
    downlink = False  # whether this request's answer body crosses the link (a CDN GET)

    def setup(self) -> None:
        super().setup()
        self.link = self.server.sandbox.link.connection()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def parse_request(self) -> bool:
        self.arrived = time.monotonic()  # the request line is in: the call has reached the server
        return super().parse_request()

    # ------------------------------------------------------------- plumbing
    def _read_body(self, uplink: bool) -> bytes:
        """The request body, whole; ``uplink``: read at the link's rate."""
        parts: list[bytes] = []
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                self._read_into(parts, size, uplink)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        self._read_into(parts, length, uplink)
        return b"".join(parts)

    def _read_into(self, parts: list[bytes], length: int, uplink: bool) -> None:
        """Append ``length`` bytes of the body to ``parts``, a chunk at a time: the client's send waits on the
        link as on a real uplink, and the parts are joined once. ``ValueError`` when the client hung up
        part-way: as S3 does, nothing of it is stored."""
        while length > 0:
            part = self.rfile.read(min(CHUNK, length))
            if not part:
                raise ValueError("body shorter than its length")
            if uplink:
                self.link.passed(len(part), "up")
            parts.append(part)
            length -= len(part)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        if "Content-Length" not in reply.headers:  # a hostile test may declare another length
            self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD" or not reply.body:
            return
        if not self.downlink:
            self.wfile.write(reply.body)
            return
        body = memoryview(reply.body)
        for start in range(0, len(body), CHUNK):
            chunk = body[start:start + CHUNK]
            self.link.passed(len(chunk), "down")
            self.wfile.write(chunk)

    def _trickle(self, reply: Reply | None) -> None:
        """Answer a byte at a time, every ``trickle_s``: the head of ``reply`` at once, then its body; no
        reply: a head that never ends. Until the client gives up (or the sandbox stops)."""
        pause = self.server.sandbox.faults.trickle_s
        self.close_connection = True
        drip: Iterator[int]
        if reply is None:
            head, drip = b"HTTP/1.1 200 OK\r\n", itertools.cycle(b"X-Trickle: 1\r\n")
        else:
            head = (f"HTTP/1.1 {reply.status} Trickling\r\nContent-Length: {len(reply.body)}\r\n"
                    + (f"Content-Type: {reply.content_type}\r\n" if reply.content_type else "") + "\r\n").encode()
            drip = iter(reply.body)
        try:
            self.wfile.write(head)
            self.wfile.flush()
            for byte in drip:
                time.sleep(pause)
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            pass

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _dispatch(self) -> None:
        sb = self.server.sandbox
        method = self.command
        url = urlsplit(self.path)
        resolved = resolve(url.path)
        self.downlink = resolved is not None and resolved[0] in DOWNLINK_ROUTES
        try:
            body = self._read_body(uplink=resolved is not None and resolved[0] in UPLINK_ROUTES)
        except ValueError:
            self.close_connection = True
            self._send(fail(400, "bad_request", "Malformed request body"))
            return
        if resolved is None:
            self._send(fail(404, "not_found", "Route not found"))
            return
        route, params = resolved
        sb._count(method, route)
        if sb.faults.latency_s > 0:  # counted from the call's arrival: the sandbox's own parsing is not latency
            time.sleep(max(0.0, sb.faults.latency_s - (time.monotonic() - self.arrived)))
        sb.gathered(method, route)
        fault = sb.plan.draw(method, route)
        if fault == "reset":
            self._drop()
            return
        if fault == "trickle-head":
            self._trickle(None)
            return
        if fault is not None and fault not in AFTER_KINDS | TRICKLE_KINDS and fault != "expire":
            self._send(fault_reply(fault, route))
            return
        try:
            reply = self._route(method, route, params, url.query, body, fault)
        except Exception:  # noqa: BLE001 - a sandbox bug must still answer
            traceback.print_exc(file=sys.stderr)
            reply = fail(500, "internal_error", "Internal server error")
        self._after(fault, method, route, reply)

    def _after(self, fault: str | None, method: str, route: str, reply: Reply) -> None:
        """Answer a request whose work is done: with ``reply``, or as the fault says."""
        if fault == "reset-after":
            self._drop()
        elif fault == "500-after":
            self._send(fault_reply("500", route))
        elif fault == "trickle-body":
            self._trickle(self.server.sandbox.rewritten(method, route, reply))
        else:
            self._send(self.server.sandbox.rewritten(method, route, reply))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    # --------------------------------------------------------------- routes
    def _route(self, method: str, route: str, params: dict[str, str], query: str, body: bytes,
               fault: str | None) -> Reply:
        allowed = ROUTE_METHODS[route]
        if method not in allowed:
            headers = {"Allow": ", ".join(allowed)}
            if route in ("storage", "cdn", "astria-img"):
                return xml_error(405, "MethodNotAllowed",
                                 "The specified method is not allowed against this resource.", headers)
            return fail(405, "method_not_allowed", f"Method {method} not allowed", headers=headers)
        if route == "storage":
            return self._storage_put(params["key"], query, body, fault == "expire")
        if route == "cdn":
            return self._cdn_get()
        if route == "astria-img" or route.startswith("astria:"):
            self.server.sandbox.astria.workspaces_seen.append((route, self.headers.get("X-Workspace-Id")))
        if route == "astria-img":
            found = self.server.sandbox.astria.image(params["key"])
            if found is None:
                return xml_error(404, "NoSuchKey", "The specified key does not exist.")
            return Reply(200, found[1], found[0])
        if route.startswith("astria:"):
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, body = astria_answer(self.server.sandbox.astria, route, params, query, headers)
            return Reply(status, body)
        return self._api(method, route, params, query, body)

    def _storage_put(self, key: str, query: str, body: bytes, force_expired: bool) -> Reply:
        sb = self.server.sandbox
        if "Authorization" in self.headers:
            return xml_error(400, "InvalidArgument", "Only one auth mechanism allowed; only the "
                             "X-Amz-Algorithm query parameter, Signature query string parameter "
                             "or the Authorization header should be specified")
        q = parse_qs(query)
        expires_raw, signature = q.get("expires", [""])[0], q.get("signature", [""])[0]
        if not expires_raw or not signature:
            return xml_error(403, "AccessDenied", "Query-string authentication requires the "
                             "signature and expires parameters")
        try:
            expires = int(expires_raw)
        except ValueError:
            return xml_error(403, "AccessDenied", "Invalid date (should be seconds since epoch)")
        if force_expired or time.time() >= expires:
            return xml_error(403, "AccessDenied", "Request has expired")
        content_type = self.headers.get("Content-Type", "")
        if not sb.store.verify(key, expires, content_type, signature):
            return xml_error(403, "SignatureDoesNotMatch", "The request signature we calculated "
                             "does not match the signature you provided. Check your key and "
                             "signing method.")
        etag = sb.store.put_blob(key, content_type, body)
        return Reply(200, b"", None, {"ETag": f'"{etag}"'})

    def _cdn_get(self) -> Reply:
        m = CDN_PATH_RE.match(urlsplit(self.path).path)
        blob = self.server.sandbox.store.get_blob(m.group(1), m.group(2)) if m else None
        if blob is None:
            return xml_error(404, "NoSuchKey", "The specified key does not exist.")
        return Reply(200, blob.data, blob.content_type, {"Cache-Control": "public, max-age=31536000"})

    def _api(self, method: str, route: str, params: dict[str, str], query: str, body: bytes) -> Reply:
        scope = self._account_scope()
        if isinstance(scope, Reply):
            return scope
        store = self.server.sandbox.store
        if method == "GET" and route == "/packs":
            return self._list_packs(scope, query)
        if method == "GET" and route == "/files":
            return self._list_files(scope, query)
        if method == "GET":
            answer = store.pack_answer(scope, params["id"])
            return Reply(200, answer) if answer is not None else fail(404, "not_found", "Pack not found")
        if method == "DELETE":
            return self._delete(scope, route, params)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return fail(400, "invalid_json", "Invalid JSON body")
        try:
            return self._write(scope, route, params, payload)
        except PayloadError as exc:
            return fail(422, "invalid_payload", "Invalid payload", exc.issues)

    def _account_scope(self) -> str | Reply:
        """The scope of the request's key, or the answer refusing it."""
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        account = self.server.sandbox.accounts.get(token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            return fail(401, "invalid_token", "API key not found")
        if account.status in ACCOUNT_ERRORS:
            error_code, message = ACCOUNT_ERRORS[account.status]
            return fail(account.status, error_code, message)
        return account.scope

    def _delete(self, scope: str, route: str, params: dict[str, str]) -> Reply:
        store = self.server.sandbox.store
        if route == "/packs/{id}":
            if not store.delete_pack(scope, params["id"]):
                return fail(404, "not_found", "Pack not found")
            return ok(200, "Pack deleted", {"id": params["id"], "deleted": True})
        outcome = store.delete_image(scope, params["id"], params["image_id"])
        if outcome == "no_pack":
            return fail(404, "not_found", "Pack not found")
        if outcome == "no_image":
            return fail(404, "image_not_found", "Image not found")
        return ok(200, "Image deleted", {"id": params["image_id"], "deleted": True})

    def _write(self, scope: str, route: str, params: dict[str, str], payload: Any) -> Reply:
        """A POST or PATCH with a JSON body; ``PayloadError`` for a payload the API refuses."""
        store = self.server.sandbox.store
        if route == "/packs":
            name, is_public = validate_create_pack(payload)
            return ok(201, "Pack created", store.create_pack(scope, name, is_public))
        if route == "/packs/{id}":
            new_name, new_public = validate_update_pack(payload)
            pack = store.update_pack(scope, params["id"], new_name, new_public)
            return ok(200, "Pack updated", pack) if pack else fail(404, "not_found", "Pack not found")
        if route == "/packs/{id}/images":
            image_url, file_name = validate_add_image(payload)
            image = store.add_image(scope, params["id"], image_url, file_name)
            if image is None:
                return fail(404, "not_found", "Pack not found")
            return ok(201, "Image added to pack", image)
        return self._create_upload(scope, *validate_upload_request(payload))

    def _list_packs(self, scope: str, query: str) -> Reply:
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        window = _window(q, 20)
        if isinstance(window, Reply):
            return window
        limit, offset = window
        include = q.get("include_public", "true").lower()
        if include not in ("true", "false"):
            return fail(400, "invalid_include_public", "include_public must be 'true' or 'false'")
        packs, total = self.server.sandbox.store.list_packs(
            scope, q.get("search", ""), limit, offset, include == "true")
        return ok(200, "Packs retrieved", {"packs": packs, "total": total, "limit": limit, "offset": offset})

    def _list_files(self, scope: str, query: str) -> Reply:
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        window = _window(q, 50)
        if isinstance(window, Reply):
            return window
        limit, offset = window
        kind = q.get("type")
        if kind not in (None, "image", "video"):
            return fail(400, "invalid_type", "type must be 'image' or 'video'")
        files, total = self.server.sandbox.store.list_files(scope, limit, offset, kind)
        return ok(200, "Files retrieved", {"files": files, "total": total, "limit": limit, "offset": offset})

    def _create_upload(self, scope: str, content_type: str, filename: str | None) -> Reply:
        sb = self.server.sandbox
        key = uuid.uuid4().hex
        expires = int(time.time() + sb.upload_ttl_s)
        signature = sb.store.sign(key, expires, content_type)
        origin = self.server.origin
        url = f"{origin}/cdn/{key}.{IMAGE_CONTENT_TYPES[content_type]}"
        sb.store.create_file(scope, key, url, content_type, filename)
        return ok(201, "Upload URL created", {
            "uploadUrl": f"{origin}/storage/{key}?expires={expires}&signature={signature}",
            "url": url,
            "contentType": content_type,
            "expiresIn": max(1, int(round(sb.upload_ttl_s))),
        })
