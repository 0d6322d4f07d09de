"""What crosses the wire, in packsync's terms: a request's ``Route`` and ``Headers``, an ``Answer`` read
whole, URLs as they go on the request line, and the one translation of an answer's HTTP status
(``refusal``) and of a request that got no answer (``failure``, naming the host: ``host_of``) into
packsync's errors.

The clients (``genviral.py``, ``astria.py``) read answers with these; the ``Transport`` sends requests
and retries them. Nothing here sends anything or keeps any state; httpx2 is imported only while one of
its exceptions is matched.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import msgspec

from packsync import __version__
from packsync.errors import (
    AmbiguousError,
    ApiError,
    AuthError,
    NotFound,
    PermanentError,
    TransientError,
    UploadRejected,
)

if TYPE_CHECKING:
    import httpx2

AGENT = f"packsync/{__version__}"


class Sink(Protocol):
    def update(self, chunk: bytes) -> None: ...


S = TypeVar("S", bound=Sink)


class Streamed(Protocol):
    """A request body read as it is sent: ``size`` bytes, which each ``chunks()`` gives afresh from the
    first (a retried attempt sends them all again). What ``chunks`` raises ends the request short of its
    ``Content-Length``, so the server keeps nothing, and goes up as it is."""

    @property
    def size(self) -> int: ...

    def chunks(self) -> AsyncGenerator[bytes]: ...


class Answer(msgspec.Struct, frozen=True):
    """An HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not.

        Half an emoji (a lone UTF-16 surrogate: what a JavaScript ``slice`` through one makes, sent as an
        escape or as bytes its encoding forbids, all of which ``json`` reads, in UTF-8, UTF-16 or UTF-32)
        comes out as U+FFFD: as Python decodes it, it would be a str that SQLite, files and terminals
        refuse to encode. The text is decoded here as ``json`` would, so that it is looked at as read.
        """
        text = self.content.decode(json.detect_encoding(self.content), "surrogatepass")
        value = json.loads(text)
        return _whole(value) if _SURROGATE.search(text) else value


#: Where a JSON text may hold a UTF-16 surrogate: as an escape, or as a character decoded from bytes
#: its encoding never allows.
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")


def _whole(value: Any) -> Any:
    """``value`` (parsed JSON) with every surrogate pair in its text joined and every lone one a U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {_whole(key): _whole(item) for key, item in value.items()}
    return value


class Route:
    """What a request is, for errors, logs, metrics and the breaker: its method and route template
    (``/packs/{id}``, ``upload URL``: never an id or a URL), whether it carries an API key, and how a
    message names it (``label``, by default ``METHOD template``)."""

    __slots__ = ("method", "template", "keyed", "name", "label")

    def __init__(self, method: str, template: str, *, keyed: bool = True, label: str | None = None) -> None:
        self.method = method
        self.template = template
        self.keyed = keyed
        self.name = f"{method} {template}"
        self.label = label or self.name

    def __repr__(self) -> str:
        return f"Route({self.name!r})"


#: Every download: an image's public URL, sent without a key.
DOWNLOAD = Route("GET", "download", keyed=False, label="download")


class Headers:
    """Headers that many requests send (an API's key, a body's type), merged with the transport's own and
    encoded for the wire once, at the first request that sends them. A repr shows names, never values."""

    __slots__ = ("items", "wire")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self.items = {"User-Agent": AGENT, **(items or {})}
        self.wire: httpx2.Headers | None = None

    def __repr__(self) -> str:
        return f"Headers({', '.join(self.items)})"


def retry_after_of(answer: Answer) -> float | None:
    """The server's ``Retry-After`` in seconds (a number or an HTTP date); None when absent or unreadable,
    and for a number that is no pause ahead (``nan``, ``inf``, negative: a float all the same)."""
    value = answer.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < math.inf else None
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def refusal(route: Route, status: int, detail: str, *, code: str | None = None, fields: tuple[str, ...] = (),
            retry_after: float | None = None, auth: str | None = None, own: bool = True) -> ApiError:
    """The error an answer with ``status`` is: the one place an HTTP status becomes packsync's error.

    ``detail`` ends the sentence (what the answer said, already made safe to show); ``auth`` is the
    sentence for a key the API refuses (its 401-403); ``own`` is False for a body that is not in the API's
    own format (a proxy's or a gateway's page), whose 401-404 say nothing about the key or the resource.
    A 2xx that could not be used is ambiguous like a 5xx: the server may have done the work.
    """
    where: dict[str, Any] = {"method": route.method, "route": route.template, "status": status,
                             "error_code": code, "fields": fields}
    message = f"{route.label}: {detail}"
    if status == 429:
        return TransientError(message, retry_after=retry_after, **where)
    if status >= 500 or status < 300:
        return AmbiguousError(message, retry_after=retry_after, **where)
    if not route.keyed:
        # A presigned URL is its own credential: storage refusing it (expired, signature) asks for a new one.
        return UploadRejected(message, **where) if route.method == "PUT" and status in (400, 403) \
            else PermanentError(message, **where)
    if own and auth and status in (401, 402, 403):
        return AuthError(auth, **where)
    if own and status == 404:
        return NotFound(message, **where)
    return PermanentError(message, **where)


def failure(route: Route, exc: BaseException, url: object = None) -> ApiError:
    """The error a request to ``url`` that got no answer is: the one place httpx2's exceptions become
    packsync's. Its sentence names the host (the one the request was last sent to, past redirects) and
    the system's reason, never the URL's path or query (a presigned URL's query is a credential)."""
    import httpx2

    where: dict[str, Any] = {"method": route.method, "route": route.template}
    name = type(exc).__name__  # never the exception's text: it may hold the URL
    sent_to = _sent_to(exc, url)
    host = host_of(sent_to)
    at = f" {host}" if host else ""
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.ProxyError):
        why = _reason(exc) or name
        if (proxy := _proxy_for(sent_to)) is not None:  # (the proxy is what could not be reached, or refused)
            at += f" through the proxy {proxy}"
        if route is DOWNLOAD:  # an image URL on a dead host stays dead: waiting would hold back the rest
            return PermanentError(f"download: cannot reach its host{at} ({why})", **where)
        return TransientError(f"{route.label}: cannot connect{' to' + at if at else ''}: {why}",
                              **where)  # nothing was sent
    if isinstance(exc, httpx2.PoolTimeout):  # no connection came free in time: nothing was sent
        return TransientError(f"{route.label}: no connection free ({name})", **where)
    if isinstance(exc, httpx2.InvalidURL | httpx2.UnsupportedProtocol | httpx2.LocalProtocolError | ValueError):
        return PermanentError(f"{route.label}: not a usable URL or request ({name})", **where)
    return AmbiguousError(f"{route.label}: connection{' to' + at if host else ''} failed ({name})", **where)


def host_of(url: object) -> str | None:
    """The host (and port, when the URL names one) a URL is sent to, as a message may show it: never its
    user, path or query. None for no URL, or one whose host cannot be read."""
    if url is None:
        return None
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or not host.isprintable() or any(c.isspace() for c in host):
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


def _proxy_for(url: object) -> str | None:
    """The host of the proxy the environment names for ``url``, as httpx2 reads it (``HTTP(S)_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``); None when the URL is reached directly."""
    from urllib.request import getproxies, proxy_bypass

    try:
        parts = urlsplit(str(url))
        target = parts.hostname
    except ValueError:
        return None
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or not target or proxy_bypass(target):
        return None
    return host_of(proxy if "://" in proxy else f"http://{proxy}")


def _sent_to(exc: BaseException, url: object) -> object:
    """The URL the failed request went to: the exception's own request's (a redirect's, when one was
    followed), else ``url``."""
    import httpx2

    if isinstance(exc, httpx2.RequestError):
        try:
            return exc.request.url
        except RuntimeError:  # (an error raised before there was a request: httpx2 holds none)
            pass
    return url


def _reason(exc: BaseException) -> str | None:
    """The system's reason under a failed connection ("Connection refused", "Name or service not known",
    "certificate verify failed: self-signed certificate"), from the error's causes: the words for its
    errno or OpenSSL's reason, never its text (which names the address)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError):  # (an OSError whose errno is OpenSSL's code, not the system's)
            return _tls_reason(cause)
        if isinstance(cause, socket.gaierror) and isinstance(cause.strerror, str):
            return cause.strerror
        if isinstance(cause, OSError) and isinstance(cause.errno, int) and cause.errno > 0:
            return os.strerror(cause.errno)
        if isinstance(cause, TimeoutError):
            return "timed out"
        cause = cause.__cause__ or cause.__context__
    return None


def _tls_reason(exc: ssl.SSLError) -> str:
    """Why a TLS handshake failed, in OpenSSL's words: for a certificate not trusted, what was wrong with
    it, and where a certificate authority of one's own (a proxy that inspects TLS) is named."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        what = exc.verify_message if isinstance(exc.verify_message, str) and exc.verify_message else None
        return (f"certificate verify failed{': ' + what if what else ''}; behind a proxy that inspects TLS, "
                "name its certificate authority in SSL_CERT_FILE")
    reason = exc.reason if isinstance(exc.reason, str) and exc.reason else None
    return f"TLS failed ({reason.replace('_', ' ').lower()})" if reason else "TLS failed"


def no_answer() -> tuple[type[BaseException], ...]:
    """What a request that got no usable answer raises: httpx2's errors, our own deadline (``TimeoutError``),
    a URL or header that cannot be encoded (``ValueError``). Named only while an exception is matched."""
    import httpx2

    return httpx2.HTTPError, httpx2.InvalidURL, TimeoutError, ValueError


def path_segment(value: str) -> str:
    """An id as one path segment: ids come from the config and the API, so ``/``, ``..`` or ``?`` in
    one must not reach another endpoint."""
    return quote(value, safe="") if value not in (".", "..") else quote(value.replace(".", "%2E"), safe="%")


_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def on_the_wire(url: str) -> str:
    """A URL from an answer (a presigned upload URL, an image's URL) as it goes on the request line: its
    escapes and signature byte for byte, a space or a non-ASCII letter percent-encoded, as browsers do."""
    return quote(url, safe=_URL_SAFE)


def request_target(wire: str) -> bytes:
    """The request target of an absolute URL: its path and query, as written."""
    rest = wire.partition("://")[2]
    ends = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
    target = rest[min(ends):].partition("#")[0] if ends else ""
    return (target if target.startswith("/") else "/" + target).encode("ascii")
