"""The Genviral Partner API client: envelopes in, typed values or classified errors out.

This is the one place where the HTTP client's exceptions and the API's error answers become packsync's
(``errors.py``); the ``data`` of a successful answer is checked by ``answers.py``. Every request
takes one of ``concurrency`` slots; transient failures (429, 5xx, timeouts, dropped connections)
are retried with the shared backoff (``retry.py``), honouring ``Retry-After``, within a per-request
and a per-run budget. A request that may have been carried out by the server (a 500, a connection
dropped after sending) is retried here only when repeating it is harmless; otherwise the
``AmbiguousError`` goes up so the caller can look at the remote state before trying again.

Storage PUTs and downloads carry no Authorization header: a presigned URL is its own credential and
storage rejects a second one, and an image URL may be on any host.

The HTTP client is aiohttp's (its parser is llhttp, in C): about a third of httpx's CPU per request,
which on a first sync of small files is the difference between waiting on the server and waiting on
packsync (``bench/first_sync.py``). Every answer is read whole into an ``Answer`` here, so nothing
above this module knows which library spoke HTTP.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote
from urllib.request import getproxies, proxy_bypass

import msgspec

from packsync import __version__
from packsync.errors import (
    AmbiguousError,
    AuthError,
    NotFound,
    PermanentError,
    Stalled,
    TransientError,
    UploadRejected,
)
from packsync.logs import get_logger, untrusted
from packsync.model import PackRead, PackSummary, RemotePack, UploadTicket
from packsync.remote import answers
from packsync.remote.retry import Backoff

if TYPE_CHECKING:  # imported at the first request: a new process walks its first folder meanwhile
    import aiohttp
    from yarl import URL

_AUTH_MESSAGES = {
    401: "the Genviral API refused the key: it is invalid or revoked (401 invalid_token)",
    402: "the Genviral account needs an active Creator, Professional or Business plan "
         "for the Partner API (402 subscription_required)",
    403: "the key's plan tier may not use the Partner API (403 tier_not_allowed)",
}
PAGE_SIZE = 100
#: A download still below STALL_RATE bytes/s on average after STALL_GRACE_S is given up for the run:
#: a server that sends a byte every few seconds never trips the read timeout.
STALL_GRACE_S = 30.0
STALL_RATE = 16 * 1024
#: Retries of one download stop this long after its first try (a host that never answers costs a
#: minute of one slot, not the read timeout times every attempt).
DOWNLOAD_DEADLINE_S = 60.0
CONNECT_S = 10.0
CHUNK = 64 * 1024


class Sink(Protocol):
    def update(self, chunk: bytes) -> None: ...


class Observer(Protocol):
    """Told of every request the client makes (the daemon's metrics): its route (a template, never an id
    or a URL), its HTTP status (0: no answer), how long it took, and the bytes of a body it sent."""

    def request(self, route: str, status: int, seconds: float, sent: int) -> None: ...


S = TypeVar("S", bound=Sink)


class RetryPolicy(msgspec.Struct, frozen=True):
    """How hard to try: per request, and in total for one run."""

    attempts: int = 6
    backoff: Backoff = Backoff(1.0, 30.0, "full")
    run_budget: int = 500
    #: Failed attempts in a row at one route (429 aside) after which the route is given up for the run:
    #: an outage then ends the run in seconds, whatever the folder's size.
    breaker: int = 10


class Answer(msgspec.Struct, frozen=True):
    """An HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not."""
        return json.loads(self.content)


@dataclass(frozen=True, slots=True)
class Api:
    """An API's base URL and the headers of every request to it (its key among them)."""

    base_url: str
    headers: dict[str, str] = field(repr=False)


def _excerpt(response: Answer) -> str:
    return untrusted(response.text[:2000], limit=120) or "(empty body)"


def path_segment(value: str) -> str:
    """An id as one path segment: ids come from the config and the API, so ``/``, ``..`` or ``?`` in
    one must not reach another endpoint."""
    return quote(value, safe="") if value not in (".", "..") else quote(value.replace(".", "%2E"), safe="%")


def on_the_wire(url: str) -> URL:
    """A URL from an answer (a presigned upload URL, an image's URL) as it goes on the request line: its
    escapes and signature byte for byte, a space or a non-ASCII letter percent-encoded, as browsers do."""
    from yarl import URL

    return URL(quote(url, safe=_URL_SAFE), encoded=True)


_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def retry_after_of(response: Answer | aiohttp.ClientResponse) -> float | None:
    """The server's ``Retry-After`` in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class GenviralClient:
    """An async client for the parts of the Partner API packsync uses."""

    def __init__(self, base_url: str, token: str, *, concurrency: int = 4, retry: RetryPolicy = RetryPolicy(),
                 timeout: float = 30.0, observer: Observer | None = None) -> None:
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None  # made in the event loop, at the first request
        self._agent = {"User-Agent": f"packsync/{__version__}"}
        # As curl reads them: a proxy named without a scheme is an HTTP one.
        self._proxies = {scheme: proxy if "://" in proxy else f"http://{proxy}"
                         for scheme, proxy in getproxies().items()}
        self._api = self.sibling(base_url, token)
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.retry = retry
        self.retries_left = retry.run_budget
        self._failing: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.observer = observer
        self.log = get_logger()

    def start_run(self, planned_calls: int = 0) -> None:
        """A new run (or daemon round): a fresh retry budget, sized to the calls planned, and no broken routes."""
        self.retries_left = self.retry.run_budget + planned_calls // 2
        self._failing.clear()

    def take_retry(self) -> bool:
        """Spend one retry of the run's budget; False when it is spent."""
        if self.retries_left <= 0:
            return False
        self.retries_left -= 1
        return True

    async def __aenter__(self) -> GenviralClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def read_other(self, api: Api, path: str, what: str, reader: Callable[[Answer], Any],
                         **params: str) -> Any:
        """A GET to another ``api`` (Astria's), read by ``reader``, with this client's slots, retry
        policy and budget: reads are always safe to repeat."""
        return await self._request("GET", path, what=what, safe_to_repeat=True, other=(api, reader), params=params)

    def sibling(self, base_url: str, token: str) -> Api:
        """An API at ``base_url`` with a Bearer ``token``, reached through this client's connections."""
        return Api(base_url.rstrip("/") + "/", {**self._agent, "Authorization": f"Bearer {token}"})

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            # No cookies (no API here sets one, and a jar costs every answer); ``concurrency`` slots bound
            # the connections in use. Proxies come from ``_proxy`` (aiohttp's ``trust_env`` would read the
            # environment and ~/.netrc again on a thread for every request).
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_S, sock_read=self._timeout))
        return self._session

    def _proxy(self, url: URL) -> str | None:
        """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``…), as curl would use it."""
        proxy = self._proxies.get(url.scheme) if self._proxies else None
        return None if proxy is None or proxy_bypass(url.host or "") else proxy

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport ---------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, what: str, safe_to_repeat: bool, storage: bool = False,
                       other: tuple[Api, Callable[[Answer], Any]] | None = None, json_body: Any = None,
                       content: bytes | None = None, headers: Mapping[str, str] | None = None,
                       params: Mapping[str, str] | None = None) -> Any:
        """Send one request with retries; return the envelope's ``data`` (or None for storage).

        ``other`` is another API (Astria's) and the reading of its answers: its requests share this
        client's slots, retry policy and budget.
        """
        import aiohttp
        from yarl import URL

        attempt = 0
        route = f"{method} {what}"
        while True:
            if self._failing[route] >= self.retry.breaker:
                raise TransientError(f"{route}: not sent; the last {self._failing[route]} attempts all failed, "
                                     "so this run gives up on it")
            api = other[0] if other else self._api
            # Built before taking a slot: a slot stands for a request on the wire, not one being prepared.
            url = on_the_wire(path) if storage else URL(api.base_url + path.lstrip("/"), encoded=True)
            url = url.update_query(params) if params else url
            sent = json.dumps(json_body).encode() if json_body is not None else content or b""
            sending = dict(self._agent if storage else api.headers)
            if json_body is not None:
                sending["Content-Type"] = "application/json"
            sending.update(headers or {})
            # A body may take as long to send as its size allows at the slowest rate still counted as moving.
            deadline = max(self._timeout, 120.0) + len(sent) / STALL_RATE if sent else None
            try:
                async with self._slots:
                    self.calls[route] += 1
                    started, status = time.monotonic(), 0
                    try:
                        async with asyncio.timeout(deadline), self._http().request(
                                method, url, data=sent or None, headers=sending, allow_redirects=False,
                                proxy=self._proxy(url)) as reply:
                            response = Answer(reply.status, reply.headers, await reply.read())
                        status = response.status
                    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                        raise TransientError(f"{method} {what}: cannot connect ({type(exc).__name__})") from None
                    except aiohttp.InvalidURL:
                        raise PermanentError(f"{method} {what}: not a usable URL") from None
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        raise AmbiguousError(f"{method} {what}: connection failed ({type(exc).__name__})") from None
                    finally:
                        self._observe(route, status, started, len(sent) if 0 < status < 300 else 0)
                answer = other[1](response) if other else self._storage_answer(response, what) if storage \
                    else self._api_answer(response, method, what)
                self._failing[route] = 0
                return answer
            except TransientError as error:
                attempt += 1
                if error.status != 429:
                    self._failing[route] += 1
                if (isinstance(error, AmbiguousError) and not safe_to_repeat) or attempt >= self.retry.attempts \
                        or not self.take_retry():
                    raise
                delay = self.retry.backoff.delay(attempt, error.retry_after)
                self.log.debug("retrying", request=f"{method} {what}", attempt=attempt, delay_s=round(delay, 2),
                               error=str(error))
                await asyncio.sleep(delay)

    def _api_answer(self, response: Answer, method: str, what: str) -> Any:
        status = response.status
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            message = f"{method} {what}: HTTP {status}, not a JSON answer: {_excerpt(response)}"
            if status == 429:
                raise TransientError(message, status=status, retry_after=retry_after_of(response))
            if status >= 500 or status < 400:
                raise AmbiguousError(message, status=status)
            raise PermanentError(message, status=status)
        raw_code = body.get("error_code")
        code = untrusted(raw_code, limit=60) if isinstance(raw_code, str) else None
        if status in _AUTH_MESSAGES:
            raise AuthError(_AUTH_MESSAGES[status], status=status, error_code=code)
        if status == 429:
            raise TransientError(f"{method} {what}: rate limited (429)", status=status, error_code=code,
                                 retry_after=retry_after_of(response))
        if status >= 500:
            raise AmbiguousError(f"{method} {what}: server error {status} {code or ''}".rstrip(), status=status,
                             error_code=code)
        if status == 404:
            raise NotFound(f"{method} {what}: not found or outside the key's scope ({code or 404})",
                           status=status, error_code=code)
        if status >= 400 or body.get("ok") is not True:
            detail = str(body.get("message") or "")
            issues = body.get("issues")
            if isinstance(issues, dict):
                field_errors = issues.get("fieldErrors")
                fields = "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                                   for k, v in field_errors.items()) if isinstance(field_errors, dict) else ""
                form_errors = issues.get("formErrors")
                forms = "; ".join(map(str, form_errors)) if isinstance(form_errors, list) else ""
                detail = "; ".join(part for part in (detail, forms, fields) if part)
            raise PermanentError(f"{method} {what}: {status} {code or ''} {untrusted(detail)}".replace("  ", " ")
                                 .strip(), status=status, error_code=code)
        if not isinstance(body.get("data"), dict):
            raise AmbiguousError(f"{method} {what}: HTTP {status}, answer has no data: {_excerpt(response)}",
                             status=status)
        return body["data"]

    @staticmethod
    def _storage_answer(response: Answer, what: str) -> None:
        status = response.status
        if status < 300:
            return None
        code_match = re.search(r"<Code>([^<]{1,200})</Code>", response.text)
        text_match = re.search(r"<Message>([^<]{1,2000})</Message>", response.text)
        code = untrusted(code_match.group(1), limit=60) if code_match else None
        detail = f"{code}: {untrusted(text_match.group(1))}" if code and text_match else (code or _excerpt(response))
        message = f"PUT {what}: storage answered {status} {detail}"
        if status == 429:
            raise TransientError(message, status=status, error_code=code, retry_after=retry_after_of(response))
        if status >= 500:
            raise TransientError(message, status=status, error_code=code)
        if status in (400, 403):
            raise UploadRejected(message, status=status, error_code=code)
        raise PermanentError(message, status=status, error_code=code)

    # -- packs -------------------------------------------------------------------------------------

    async def list_packs(self, search: str | None = None, include_public: bool = False) -> list[PackSummary]:
        """Every pack the key sees (optionally only names containing ``search``), all pages.

        A server that ignores ``offset`` or reports an absurd ``total`` cannot make this loop for ever:
        it stops at a page that brings no new pack, and after as many pages as the first ``total`` allows.
        """
        packs: dict[str, PackSummary] = {}
        pages = None
        while pages is None or pages > 0:
            params: dict[str, Any] = {"limit": PAGE_SIZE, "offset": len(packs),
                                      "include_public": "true" if include_public else "false"}
            if search:
                params["search"] = search
            page, total = answers.pack_page(await self._request("GET", "/packs", what="/packs", safe_to_repeat=True,
                                                                params={k: str(v) for k, v in params.items()}))
            pages = (-(-total // PAGE_SIZE) if pages is None else pages) - 1
            new = {p.pack_id: p for p in page if p.pack_id not in packs}
            packs.update(new)
            if not new or len(packs) >= total:
                break
        return list(packs.values())

    async def get_pack(self, pack_id: str) -> RemotePack:
        """A pack with its images, decoded (a metadata poll, a pull): no digest, no second pass."""
        pack: RemotePack = await self._read_pack(pack_id, self._pack_of)
        return pack

    async def read_pack(self, pack_id: str) -> PackRead:
        """A pack's answer: its id, its name and a digest of its bytes now, its images when ``decode`` is
        called (which raises this client's errors for images not as documented)."""
        def read(response: Answer) -> PackRead:
            digest = hashlib.blake2b(response.content, digest_size=16).hexdigest()
            head = answers.pack_head(response.content) if response.status == 200 else None
            if head is None:  # an error, or an answer not as documented: decided now, as always
                pack = self._pack_of(response)

                def ready() -> RemotePack:
                    return pack

                return PackRead(pack.pack_id, pack.name, digest, ready)
            return PackRead(*head, digest, functools.partial(self._pack_of, response))

        answer: PackRead = await self._read_pack(pack_id, read)
        return answer

    async def _read_pack(self, pack_id: str, reader: Callable[[Answer], Any]) -> Any:
        return await self._request("GET", f"/packs/{path_segment(pack_id)}", what="/packs/{id}", safe_to_repeat=True,
                                   other=(self._api, reader))

    def _pack_of(self, response: Answer) -> RemotePack:
        quick = answers.pack_answer(response.content) if response.status == 200 else None
        return quick or answers.pack(self._api_answer(response, "GET", "/packs/{id}"))

    async def create_pack(self, name: str) -> str:
        """Create a private pack; returns its id. Not repeated on ambiguous failures."""
        data = await self._request("POST", "/packs", what="/packs", safe_to_repeat=False,
                                   json_body={"name": name, "is_public": False})
        return answers.created_id(data, "POST /packs")

    async def rename_pack(self, pack_id: str, name: str) -> None:
        """Give a pack a new name (``PATCH``; harmless to repeat)."""
        await self._request("PATCH", f"/packs/{path_segment(pack_id)}", what="/packs/{id}", safe_to_repeat=True,
                            json_body={"name": name})

    # -- images ------------------------------------------------------------------------------------

    async def create_upload(self, content_type: str, filename: str, size: int) -> UploadTicket:
        """Ask for a presigned upload URL. Harmless to repeat: an unused URL just expires."""
        data = await self._request("POST", "/files", what="/files", safe_to_repeat=True,
                                   json_body={"contentType": content_type, "filename": filename, "size": size})
        return answers.upload_ticket(data, content_type)

    async def put_bytes(self, upload_url: str, data: bytes, content_type: str) -> None:
        """PUT the bytes to storage, with exactly the signed Content-Type and no Authorization."""
        await self._request("PUT", upload_url, what="upload URL", safe_to_repeat=True, storage=True,
                            content=data, headers={"Content-Type": content_type})

    async def add_image(self, pack_id: str, url: str, file_name: str) -> str:
        """Add an uploaded URL to a pack; returns the image id. Not repeated on ambiguous failures."""
        data = await self._request("POST", f"/packs/{path_segment(pack_id)}/images", what="/packs/{id}/images",
                                   safe_to_repeat=False, json_body={"image_url": url, "file_name": file_name})
        return answers.created_id(data, "POST /packs/{id}/images")

    # -- downloads ---------------------------------------------------------------------------------

    async def download(self, url: str, max_bytes: int, sink: Callable[[], S]) -> S:
        """Stream the bytes at ``url`` into a fresh ``sink()`` (one per attempt) and return it.

        Image URLs are public storage or CDN addresses: the request carries no Authorization, so the
        key never goes to a host that is not the API. A refusal (4xx) or a body over ``max_bytes`` is a
        ``PermanentError``; 429, 5xx, timeouts and dropped connections are retried like any request,
        within ``DOWNLOAD_DEADLINE_S`` from the first try; a trickle (``Stalled``) is not retried.
        """
        attempt, deadline = 0, time.monotonic() + DOWNLOAD_DEADLINE_S
        while True:
            try:
                async with self._slots:
                    self.calls["GET download"] += 1
                    return await self._stream(url, max_bytes, sink())
            except TransientError as error:
                attempt += 1
                delay = self.retry.backoff.delay(attempt, error.retry_after)
                if isinstance(error, Stalled) or attempt >= self.retry.attempts or time.monotonic() + delay > deadline \
                        or not self.take_retry():
                    raise
                await asyncio.sleep(delay)

    def _observe(self, route: str, status: int, started: float, sent: int) -> None:
        seconds = time.monotonic() - started
        self.log.debug("request", request=route, status=status or "no answer", ms=round(seconds * 1000))
        if self.observer:
            self.observer.request(route, status, seconds, sent)

    async def _stream(self, url: str, max_bytes: int, into: S) -> S:
        import aiohttp

        started, status = time.monotonic(), 0
        try:
            target = on_the_wire(url)
            async with self._http().get(target, headers=self._agent, proxy=self._proxy(target)) as response:
                status = response.status
                if status == 429 or status >= 500:
                    raise TransientError(f"download: HTTP {status}", status=status,
                                         retry_after=retry_after_of(response))
                if status >= 300:
                    raise PermanentError(f"download: HTTP {status}", status=status)
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise PermanentError(f"larger than {max_bytes / 1e6:g} MB ({int(declared) / 1e6:.1f} MB)")
                size, started = 0, time.monotonic()
                async for chunk in response.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PermanentError(f"larger than {max_bytes / 1e6:g} MB")
                    into.update(chunk)
                    elapsed = time.monotonic() - started
                    if elapsed > STALL_GRACE_S and size < elapsed * STALL_RATE:  # the read timeout resets per byte
                        raise Stalled(f"download: {size:,} bytes in {elapsed:.0f} s, too slow to finish")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No such host, or nothing listening: an image URL on a dead host stays dead. (Waiting for it
            # would hold back the mapping's new files for ever.)
            raise PermanentError(f"download: cannot reach its host ({type(exc).__name__})") from None
        except (aiohttp.InvalidURL, aiohttp.TooManyRedirects, ValueError) as exc:
            raise PermanentError(f"download: {type(exc).__name__}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"download: connection failed ({type(exc).__name__})") from None
        finally:
            self._observe("GET download", status, started, 0)
        return into

    async def delete_image(self, pack_id: str, image_id: str) -> None:
        """Delete an image; one that is already gone counts as deleted."""
        try:
            await self._request("DELETE", f"/packs/{path_segment(pack_id)}/images/{path_segment(image_id)}",
                                what="/packs/{id}/images/{image_id}", safe_to_repeat=True)
        except NotFound as exc:
            if exc.error_code != "image_not_found":
                raise
