"""The one HTTP transport of a process: every request packsync makes goes through it.

It owns the httpx2 client (one connection pool, built at the first request inside the event loop:
``import httpx2`` happens only there, so commands that send nothing never load it), the
``concurrency`` slots, timeouts, the proxies the environment names (read once, as curl reads them),
retries (the shared ``Backoff``, ``Retry-After``, per-request attempts, a per-run budget and a
per-route breaker) and the metrics hook (``Observer``). A run's budget and breakers belong to the task
that started it (``start_run``) and the tasks it makes: a daemon's sync and its metadata round, each a
run of its own over the one transport, never reset or spend each other's. What a request and an answer are, and which
of packsync's errors an HTTP status or a failure is, are ``wire.py``'s. Every API answer is read whole
into an ``Answer``, so nothing above ``remote/`` knows which library spoke HTTP; downloads stream into
a sink. Either is bounded in size, its head in time and its body in
rate (``_body``): whatever a server does, a request ends, and holds no more than its bound in memory.

It knows no API: paths, keys and the reading of bodies are the clients' (``genviral.py``,
``astria.py``), which hand it a ``Route`` (a request's name in errors, logs and metrics), prepared
``Headers`` and a reader that turns an ``Answer`` into a value or an error. A request without a key
(a presigned PUT, a download) is sent with no Authorization header: headers are only ever the caller's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from contextvars import ContextVar
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import msgspec

from packsync.errors import (
    AmbiguousError,
    ApiError,
    ConfigError,
    MalformedAnswer,
    PermanentError,
    Stalled,
    TransientError,
)
from packsync.logs import get_logger, register_secret
from packsync.remote import redirects
from packsync.remote.bandwidth import UNLIMITED, Direction, Throttle
from packsync.remote.retry import Backoff
from packsync.remote.wire import (
    DOWNLOAD,
    Answer,
    Headers,
    Route,
    S,
    Sink,
    Streamed,
    failure,
    no_answer,
    on_the_wire,
    refusal,
    request_target,
    retry_after_of,
)

if TYPE_CHECKING:  # imported at the first request: a new process walks its first folder meanwhile
    import httpx2

#: Every request ends within a total deadline made of the read timeout ``T`` (``[genviral] timeout_s``),
#: however slowly a server sends: a read timeout alone resets at every byte, so a server sending one
#: byte a second never trips it. An answer's head must be whole within HEAD_TIMEOUTS × T, plus the time
#: the request's body takes to send at STALL_RATE; its body must average STALL_RATE bytes/s once T has
#: passed (so it ends by max(T, size / STALL_RATE)). An attempt past either is ``Stalled``: given up, not
#: repeated. Retries start no later than RETRY_TIMEOUTS × T after the first try (DOWNLOAD_TIMEOUTS × T
#: for a download: a host that never answers costs a minute of one slot, not every attempt).
STALL_RATE = 16 * 1024
#: The bytes of a limited PUT taken from the bandwidth limit at a time (``_slices``): 4 s at the stall rate.
#: Smaller costs CPU per byte (a 50 MiB PUT on loopback: 0.19 s in 512 KiB chunks, 0.24 s in 64 KiB slices,
#: 0.40 s in 16 KiB ones).
LIMITED_SLICE = 64 * 1024
HEAD_TIMEOUTS = 4
RETRY_TIMEOUTS = 10
DOWNLOAD_TIMEOUTS = 2
#: Downloads from one host that may stall in a run before its other downloads are not sent in that run:
#: a pack of images at a host that trickles costs a few stalled attempts, not one per image.
STALLS_PER_HOST = 3
#: The largest API answer read (a pack of a few hundred thousand images with their AI text): a larger one
#: is not what the API documents, and reading on would only fill the memory.
MAX_ANSWER_BYTES = 256 * 2**20
CONNECT_S = 10.0
#: Redirects a download follows (API calls and storage PUTs follow none), each where ``redirects.py`` allows.
MAX_REDIRECTS = 5

T = TypeVar("T")


class _Chunks:
    """An answer's body as it arrives (a ``Sink``)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def update(self, chunk: bytes) -> None:
        self.chunks.append(chunk)


class Observer(Protocol):
    """Told of every request the transport makes (the daemon's metrics): its route (a template, never an id
    or a URL), its HTTP status (0: no answer), how long it took, and the bytes of a body it sent."""

    def request(self, route: str, status: int, seconds: float, sent: int) -> None: ...


class Run:
    """One run's retry budget, its routes' failed attempts in a row (the breaker), and the downloads that
    stalled, by host."""

    def __init__(self, retries: int) -> None:
        self.retries_left = retries
        self.failing: Counter[str] = Counter()
        self.stalled: Counter[str] = Counter()


class RetryPolicy(msgspec.Struct, frozen=True):
    """How hard to try: per request, and in total for one run."""

    attempts: int = 6
    backoff: Backoff = Backoff(1.0, 30.0, "full")
    run_budget: int = 500
    #: Failed attempts in a row at one route (429 aside) after which the route is given up for the run:
    #: an outage then ends the run in seconds, whatever the folder's size.
    breaker: int = 10

    def wait_at_most(self, cap_s: float) -> RetryPolicy:
        """This policy with no pause between two tries longer than ``cap_s``."""
        return msgspec.structs.replace(self, backoff=msgspec.structs.replace(self.backoff, cap_s=cap_s))


def _not_sent(route: Route | None) -> TransientError:
    """The error of a request a closed transport does not send."""
    where = f"{route.label}: not sent" if route else "not sent"
    return TransientError(f"{where}; its connections are closed (packsync is stopping, or reloaded its config)",
                          method=route.method if route else None, route=route.template if route else None)


def _keep_proxy_credentials_secret() -> None:
    """The password of every proxy the environment names, as it is written there and as the
    Proxy-Authorization header carries it, is kept out of every output like a key: a proxy's error page
    may show either."""
    from urllib.request import getproxies  # what httpx2 reads too; once, with the client

    for proxy in getproxies().values():
        try:
            parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        except ValueError:
            continue  # httpx2 refuses it in a sentence of its own
        if parts.password:
            user, password = unquote(parts.username or ""), unquote(parts.password)
            for secret in (parts.password, password, base64.b64encode(f"{user}:{password}".encode()).decode()):
                register_secret(secret)


class Transport:
    """Slots, retries, budget, breaker and one connection pool, shared by every client of a process.

    ``concurrency`` requests are in flight at most, API calls, storage PUTs and downloads together.
    ``timeout`` is the read timeout, which the bounds of an answer's head and body are made of; an API
    answer is read up to ``max_answer`` bytes. Every chunk of a storage PUT's body and of a download's passes
    ``throttle`` (the bandwidth limit) first. Close it (``aclose`` or ``async with``) when the process is
    done with it, or ``retire`` it when others may still be using it; closed, it sends nothing more.
    """

    def __init__(self, *, concurrency: int = 4, retry: RetryPolicy = RetryPolicy(), timeout: float = 30.0,
                 observer: Observer | None = None, max_answer: int = MAX_ANSWER_BYTES,
                 throttle: Throttle = UNLIMITED) -> None:
        self.concurrency = concurrency
        self.throttle = throttle
        self.retry = retry
        self.timeout = timeout
        self.observer = observer
        self.max_answer = max_answer
        self.calls: Counter[str] = Counter()
        #: The run of the task asking (``start_run``); the tasks that started none share ``_shared``.
        self._run: ContextVar[Run | None] = ContextVar(f"packsync-run-{id(self)}", default=None)
        self._shared = Run(retry.run_budget)
        self._slots = asyncio.Semaphore(concurrency)
        self._client: httpx2.AsyncClient | None = None
        self._closed = False
        self._using = 0  # requests and downloads under way, retries included
        self._idle = asyncio.Event()
        self._idle.set()
        self._extensions: dict[str, Any] = {}
        self._plain = Headers()
        self.log = get_logger()

    def start_run(self, planned_calls: int = 0) -> None:
        """A new run (or daemon round) for the calling task and the tasks it makes from now on: a fresh retry
        budget, sized to the calls planned, and no broken routes. Another task's run is left as it is."""
        self._run.set(Run(self.retry.run_budget + planned_calls // 2))

    def _current(self) -> Run:
        return self._run.get() or self._shared

    @property
    def retries_left(self) -> int:
        """What is left of the calling task's run's retry budget."""
        return self._current().retries_left

    def take_retry(self) -> bool:
        """Spend one retry of the calling task's run's budget; False when it is spent."""
        run = self._current()
        if run.retries_left <= 0:
            return False
        run.retries_left -= 1
        return True

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections now: a request under way ends in its error, and none is sent after."""
        self._closed = True
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def retire(self) -> None:
        """Close once the requests under way have ended (a client replaced while it may still be in use)."""
        while self._using:
            await self._idle.wait()
        await self.aclose()

    @contextmanager
    def _in_use(self, route: Route) -> Iterator[None]:
        """A request or a download under way, for ``retire``; refused once the transport is closed."""
        if self._closed:
            raise _not_sent(route)
        self._using += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._using -= 1
            if not self._using:
                self._idle.set()

    def _http(self) -> httpx2.AsyncClient:
        if self._closed:  # never a pool of a closed transport's own again, which nobody would close
            raise _not_sent(None)
        if self._client is None:
            import httpx2

            # Its INFO line per request would log presigned URLs; httpcore2's DEBUG traces cost every request.
            logging.getLogger("httpx2").setLevel(logging.WARNING)
            logging.getLogger("httpcore2").setLevel(logging.WARNING)
            # No cookies: no API here sets one, and none set by a CDN is ever sent back. The environment
            # (HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE) is read here, once: a proxy named without a scheme is
            # an HTTP one, as curl reads it.
            _keep_proxy_credentials_secret()
            try:
                self._client = httpx2.AsyncClient(
                    limits=httpx2.Limits(max_connections=self.concurrency,
                                         max_keepalive_connections=self.concurrency),
                    timeout=httpx2.Timeout(self.timeout, connect=CONNECT_S),
                    cookies=CookieJar(DefaultCookiePolicy(allowed_domains=())),
                    follow_redirects=False, max_redirects=MAX_REDIRECTS, trust_env=True)
            except (ImportError, ValueError, httpx2.InvalidURL):  # its text may hold the proxy's password
                raise ConfigError("the environment names a proxy packsync cannot use (HTTP_PROXY, HTTPS_PROXY or "
                                  "ALL_PROXY): only well-formed http:// and https:// proxy URLs are spoken to; "
                                  "change or unset it, or name the hosts to reach directly in NO_PROXY") from None
            self._extensions = {"timeout": self._client.timeout.as_dict()}
        return self._client

    def _request(self, method: str, url: str, headers: Headers, body: bytes | _Sending, given: bool) -> httpx2.Request:
        """An httpx2 request; ``given``: ``url`` came from an answer and goes on the request line as it is.
        A streamed body goes with its ``Content-Length`` (a presigned PUT takes no chunked encoding: httpx2
        sends no ``Transfer-Encoding`` when the length is given)."""
        import httpx2

        client = self._http()
        wire = headers.wire
        if wire is None:
            wire = headers.wire = httpx2.Headers(client.headers)
            wire.update(headers.items)
        content: bytes | AsyncIterator[bytes] | None
        if isinstance(body, _Sending):
            wire = httpx2.Headers(wire)
            wire["Content-Length"] = str(body.body.size)
            content = body.chunks()
        else:
            content = body or None
        extensions = self._extensions
        if given:
            url = on_the_wire(url)
            target = request_target(url)
            request = httpx2.Request(method, url, headers=wire, content=content, extensions=extensions)
            if request.url.raw_path != target:  # httpx2 would drop a dot segment: send it as given
                request.extensions = {**extensions, "target": target}
            return request
        return httpx2.Request(method, url, headers=wire, content=content, extensions=extensions)

    # -- requests ----------------------------------------------------------------------------------

    async def request(self, route: Route, url: str, read: Callable[[Answer, Route], T], *, headers: Headers,
                      safe_to_repeat: bool, body: bytes | Streamed = b"", given: bool = False,
                      on_sent: Callable[[int], None] | None = None) -> T:
        """Send one request, with retries, and return what ``read`` makes of its answer.

        ``read`` raises the error an answer is (``refusal``); a ``TransientError`` from it or from the wire
        is retried after the backoff (or the server's ``Retry-After``), unless the server may have done
        the work (``AmbiguousError``) and repeating the request is not harmless: then the caller looks
        at the remote state first. ``given``: ``url`` came from an answer and is sent byte for byte.
        A ``Streamed`` body (a storage PUT's) is read as it is sent, each chunk through the throttle and
        told to ``on_sent`` as it goes; an attempt that fails takes its count back.
        """
        with self._in_use(route):
            return await self._retrying(route, lambda: self._once(route, url, read, headers, body, given, on_sent),
                                        safe_to_repeat=safe_to_repeat,
                                        deadline=time.monotonic() + RETRY_TIMEOUTS * self.timeout)

    async def _once(self, route: Route, url: str, read: Callable[[Answer, Route], T], headers: Headers,
                    body: bytes | Streamed, given: bool, on_sent: Callable[[int], None] | None) -> T:
        sending = body if isinstance(body, bytes) else _Sending(body, self.throttle, on_sent, self.timeout)
        try:
            # Built before taking a slot: a slot stands for a request on the wire, not one being prepared.
            request = self._request(route.method, url, headers, sending, given)
        except no_answer() as exc:
            raise failure(route, exc, url) from None
        if isinstance(sending, bytes):
            return read(await self._exchange(route, request, len(sending), self._whole), route)
        try:
            return read(await self._exchange(route, request, sending.body.size, self._whole, sending=sending), route)
        except BaseException:
            sending.take_back()
            raise

    async def _exchange(self, route: Route, request: httpx2.Request, sent: int,
                        receive: Callable[[Route, httpx2.Response], Awaitable[T]], *, follow: bool = False,
                        admit: Callable[[], None] | None = None, sending: _Sending | None = None) -> T:
        """Send ``request`` (of a body of ``sent`` bytes) in a slot, and ``receive`` its answer.

        The answer's head must be whole within ``HEAD_TIMEOUTS`` read timeouts and the time the body
        takes to send at ``STALL_RATE`` (``Stalled`` past it) — a streamed body's (``sending``) moves that
        deadline on as its bytes go; ``receive`` reads its body through ``_body``,
        which keeps it moving. ``follow``: redirects are followed, by hand (a download's). ``admit`` may
        still refuse it once it has its slot (what it judges may have changed while it waited).
        """
        async with self._slots:
            if admit:
                admit()
            self.calls[route.name] += 1
            started, status = time.monotonic(), 0
            try:
                head_s = HEAD_TIMEOUTS * self.timeout + (0 if sending else sent / STALL_RATE)
                try:
                    async with asyncio.timeout(head_s) as head:
                        if sending:
                            sending.due = head
                        response = await self._head(route, request, follow)
                except TimeoutError:
                    if not head.expired():
                        raise
                    raise Stalled(f"{route.label}: the answer's head is not whole after {head_s:.3g} s, too slow to "
                                  "finish", method=route.method, route=route.template) from None
                try:
                    status = response.status_code
                    return await receive(route, response)
                finally:
                    await response.aclose()
            except no_answer() as exc:
                raise failure(route, exc, request.url) from None
            finally:
                self._observe(route, status, started, sent if 0 < status < 300 else 0)

    async def _head(self, route: Route, request: httpx2.Request, follow: bool) -> httpx2.Response:
        """The answer to ``request``, up to its head (and through the redirects ``redirects.py`` allows, at
        most ``MAX_REDIRECTS``, when ``follow``: a ``PermanentError`` for one it refuses)."""
        import httpx2

        client = self._http()
        response = await client.send(request, stream=True)
        first: frozenset[redirects.Kind | None] | None = None
        hops = 0
        while follow and response.has_redirect_location and response.next_request:
            await response.aclose()
            target = response.next_request.url
            if first is None:
                first = await redirects.kinds_of(request.url.host, request.url.port)
            why = f"more than {MAX_REDIRECTS} redirects; not followed" if hops == MAX_REDIRECTS else \
                await redirects.refused(target.scheme, target.host, target.port, first)
            if why:
                raise PermanentError(f"{route.label}: {why}", method=route.method, route=route.template,
                                     status=response.status_code)
            hops += 1
            # Followed by hand: the request target of the first URL is not the next one's. A hop carries
            # the transport's own headers only.
            hop = httpx2.Request("GET", target, headers=self._plain.wire, extensions=self._extensions)
            response = await client.send(hop, stream=True)
        return response

    async def _whole(self, route: Route, response: httpx2.Response) -> Answer:
        """An API answer, read whole: up to ``max_answer`` bytes, and a ``MalformedAnswer`` past them."""
        def too_large(size: int | None) -> ApiError:
            return MalformedAnswer(f"{route.label}: the answer is larger than {self.max_answer / 2**20:g} MiB; "
                                   "not read", method=route.method, route=route.template, status=response.status_code)

        body = await _body(route, response, self.max_answer, _Chunks(), too_large, self.timeout)
        return Answer(response.status_code, response.headers, b"".join(body.chunks))

    async def _retrying(self, route: Route, once: Callable[[], Awaitable[T]], *, safe_to_repeat: bool,
                        deadline: float | None = None, breaker: bool = True) -> T:
        attempt, failing = 0, self._current().failing
        while True:
            if breaker and failing[route.name] >= self.retry.breaker:
                raise TransientError(f"{route.label}: not sent; the last {failing[route.name]} attempts all "
                                     "failed, so this run gives up on it", method=route.method, route=route.template)
            try:
                result = await once()
            except TransientError as error:
                attempt += 1
                if error.status != 429:
                    failing[route.name] += 1
                delay = self.retry.backoff.delay(attempt, error.retry_after)
                if self._closed or isinstance(error, Stalled) \
                        or (isinstance(error, AmbiguousError) and not safe_to_repeat) \
                        or attempt >= self.retry.attempts or (deadline and time.monotonic() + delay > deadline) \
                        or not self.take_retry():
                    raise
                self.log.debug("retrying", request=route.name, attempt=attempt, delay_s=round(delay, 2),
                               error=str(error))
                await asyncio.sleep(delay)
                if self._closed:  # meanwhile
                    raise _not_sent(route) from None
            else:
                if failing[route.name]:
                    failing[route.name] = 0
                return result

    def _observe(self, route: Route, status: int, started: float, sent: int) -> None:
        seconds = time.monotonic() - started
        self.log.debug("request", request=route.name, status=status or "no answer", ms=round(seconds * 1000))
        if self.observer:
            self.observer.request(route.name, status, seconds, sent)

    # -- downloads ---------------------------------------------------------------------------------

    async def download(self, url: str, max_bytes: int, sink: Callable[[], S],
                       on_received: Callable[[int], None] | None = None) -> S:
        """Stream the bytes at ``url`` into a fresh ``sink()`` (one per attempt) and return it, each chunk
        told to ``on_received`` as it comes (an attempt that fails takes its count back).

        Image URLs are public storage or CDN addresses: the request carries no Authorization, so a key
        never goes to a host that is not its API. A refusal (4xx) or a body over ``max_bytes`` is a
        ``PermanentError``; 429, 5xx, timeouts and dropped connections are retried like any request,
        within ``DOWNLOAD_TIMEOUTS`` read timeouts from the first try; a trickle (``Stalled``) is not retried.
        """
        deadline = time.monotonic() + DOWNLOAD_TIMEOUTS * self.timeout
        host, run = (urlsplit(url).hostname or "").lower(), self._current()
        with self._in_use(DOWNLOAD):
            try:
                return await self._retrying(DOWNLOAD, lambda: self._stream(url, max_bytes, sink, host, on_received),
                                            safe_to_repeat=True, deadline=deadline, breaker=False)
            except Stalled:
                run.stalled[host] += 1
                raise

    def _admit(self, host: str) -> None:
        """Refuse a download from a host whose downloads stalled ``STALLS_PER_HOST`` times in this run."""
        if (stalled := self._current().stalled[host]) >= STALLS_PER_HOST:
            raise Stalled(f"download: not sent; {stalled} downloads from its host were too slow to finish in this "
                          "run", method=DOWNLOAD.method, route=DOWNLOAD.template)

    async def _stream(self, url: str, max_bytes: int, sink: Callable[[], S], host: str,
                      on_received: Callable[[int], None] | None) -> S:
        try:
            request = self._request("GET", url, self._plain, b"", True)
        except no_answer() as exc:
            raise failure(DOWNLOAD, exc, url) from None

        async def receive(route: Route, response: httpx2.Response) -> S:
            status = response.status_code
            if status >= 300:
                raise refusal(route, status, f"HTTP {status}",
                              retry_after=retry_after_of(Answer(status, response.headers, b"")))

            def too_large(size: int | None) -> ApiError:
                said = f" ({size / 1e6:.1f} MB)" if size is not None else ""
                return PermanentError(f"larger than {max_bytes / 1e6:g} MB{said}", method=route.method,
                                      route=route.template, status=status)

            into = sink()
            if on_received is None:
                return await _body(route, response, max_bytes, into, too_large, self.timeout, self.throttle)
            counted = _Counted(into, on_received)
            try:
                await _body(route, response, max_bytes, counted, too_large, self.timeout, self.throttle)
            except BaseException:
                on_received(-counted.count)
                raise
            return into

        return await self._exchange(DOWNLOAD, request, 0, receive, follow=True, admit=lambda: self._admit(host))


async def _body(route: Route, response: httpx2.Response, max_bytes: int, into: S,
                too_large: Callable[[int | None], ApiError], grace_s: float, throttle: Throttle = UNLIMITED) -> S:
    """Stream the body of ``response`` into ``into``: ``too_large`` (with the size said, if it was) past
    ``max_bytes``, ``Stalled`` as soon as it averages below ``STALL_RATE`` once ``grace_s`` have passed —
    a deadline that moves on with each byte, not a check made when one comes (the read timeout resets at
    every byte: a byte every T - 1 s would never be judged in time). Each chunk passes ``throttle`` first;
    the time it waits there is packsync's, not the server's, and moves the deadline on by as much."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(int(declared))
    clock = asyncio.get_running_loop().time  # (the clock ``timeout_at`` counts in)
    size, started, throttled = 0, clock(), 0.0
    try:
        async with asyncio.timeout_at(started + grace_s) as due:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(None)
                if throttle is not UNLIMITED:
                    throttled += await _waited(throttle, len(chunk), "down", due)
                into.update(chunk)
                due.reschedule(started + throttled + max(grace_s, size / STALL_RATE))
    except TimeoutError:
        if not due.expired():
            raise
        raise Stalled(f"{route.label}: {size:,} bytes in {clock() - started:.0f} s, too slow to finish",
                      method=route.method, route=route.template, status=response.status_code) from None
    return into


async def _waited(throttle: Throttle, n: int, direction: Direction, due: asyncio.Timeout | None) -> float:
    """Wait until ``throttle`` lets ``n`` bytes pass, the deadline ``due`` held meanwhile (the wait is
    packsync's, not the server's slowness); the seconds waited, by which the caller moves ``due`` on."""
    clock = asyncio.get_running_loop().time
    waiting = clock()
    if due is not None:
        due.reschedule(None)
    await throttle.take(n, direction)
    return clock() - waiting


class _Counted:
    """A download's sink, its chunks counted (``on_received``) as they pass into it."""

    def __init__(self, into: Sink, on_received: Callable[[int], None]) -> None:
        self.into = into
        self.on_received = on_received
        self.count = 0

    def update(self, chunk: bytes) -> None:
        self.into.update(chunk)
        self.count += len(chunk)
        self.on_received(len(chunk))


class _Sending:
    """A streamed body on its way, one attempt of it: each chunk passes the throttle, then goes, and is
    counted (``on_sent``); the deadline of the answer's head (``due``) moves on with the bytes sent, by the
    time waited in the throttle too (that wait is packsync's, not the server's slowness)."""

    def __init__(self, body: Streamed, throttle: Throttle, on_sent: Callable[[int], None] | None,
                 grace_s: float) -> None:
        self.body = body
        self.throttle = throttle
        self.on_sent = on_sent
        self.grace_s = HEAD_TIMEOUTS * grace_s
        self.due: asyncio.Timeout | None = None
        self.sent = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        clock = asyncio.get_running_loop().time
        started, waited = clock(), 0.0
        async with aclosing(self.body.chunks()) as chunks:
            async for chunk in chunks:
                for piece in _slices(chunk) if self.throttle is not UNLIMITED else (chunk,):
                    if self.throttle is not UNLIMITED:
                        waited += await _waited(self.throttle, len(piece), "up", self.due)
                    if self.due:
                        self.due.reschedule(started + waited + self.grace_s + (self.sent + len(piece)) / STALL_RATE)
                    yield piece
                    self.sent += len(piece)
                    if self.on_sent:
                        self.on_sent(len(piece))

    def take_back(self) -> None:
        """Take back the count of an attempt that failed: the bytes go again with the next one."""
        if self.sent and self.on_sent:
            self.on_sent(-self.sent)
        self.sent = 0


def _slices(chunk: bytes) -> Iterator[bytes]:
    """A chunk as it passes a bandwidth limit: ``LIMITED_SLICE`` bytes at a time. The limit holds bytes back
    before they leave, so a take of a whole chunk leaves the connection silent for ``CHUNK / rate`` seconds
    (times the uploads taking turns): at 100k with 4 in flight, 20 s between chunks, when S3 ends a PUT
    (RequestTimeout); a slice, 2.6 s."""
    for start in range(0, len(chunk), LIMITED_SLICE):
        yield chunk[start:start + LIMITED_SLICE]
