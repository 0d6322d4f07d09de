"""The Genviral Partner API client: envelopes in, typed values or classified errors out.

It owns the API's base URL and key, its paths, and the reading of its answers: the envelope (and the
XML errors of its storage) becomes a ``data`` object or the error the answer is (``refusal``, in
``transport.py``); ``answers.py`` checks the ``data``. Every request goes through the process's one
``Transport`` (slots, retries, run budget, breaker, proxies), which this module never reaches around.
A request that may have been carried out by the server (a 500, a connection dropped after sending) is
retried there only when repeating it is harmless; otherwise the ``AmbiguousError`` goes up so the
caller can look at the remote state before trying again.

Storage PUTs and downloads carry no Authorization header: a presigned URL is its own credential and
storage rejects a second one, and an image URL may be on any host.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlencode

import msgspec

from packsync.errors import NotFound
from packsync.logs import untrusted
from packsync.model import Metadata, PackRead, PackSummary, RemotePack, UploadNames, UploadTicket
from packsync.remote import answers
from packsync.remote.transport import RetryPolicy, Transport
from packsync.remote.wire import Answer, Headers, Route, S, Streamed, path_segment, refusal, retry_after_of

_AUTH_MESSAGES = {
    401: "the Genviral API refused the key: it is invalid or revoked (401 invalid_token)",
    402: "the Genviral account needs an active Creator, Professional or Business plan "
         "for the Partner API (402 subscription_required)",
    403: "the key's plan tier may not use the Partner API (403 tier_not_allowed)",
}
PAGE_SIZE = 100
#: The most pages one walk of ``GET /files`` reads (a million files): a server that makes up new files
#: on every page, whatever its ``total``, cannot keep a pull walking for ever.
MAX_FILE_PAGES = 10_000

LIST_PACKS = Route("GET", "/packs")
GET_PACK = Route("GET", "/packs/{id}")
CREATE_PACK = Route("POST", "/packs")
RENAME_PACK = Route("PATCH", "/packs/{id}")
DELETE_PACK = Route("DELETE", "/packs/{id}")
CREATE_UPLOAD = Route("POST", "/files")
LIST_FILES = Route("GET", "/files")
PUT_BYTES = Route("PUT", "upload URL", keyed=False)
ADD_IMAGE = Route("POST", "/packs/{id}/images")
DELETE_IMAGE = Route("DELETE", "/packs/{id}/images/{image_id}")


def _excerpt(answer: Answer) -> str:
    return untrusted(answer.content, limit=120) or "(empty body)"


def data_of(answer: Answer, route: Route) -> Any:
    """The ``data`` of a successful envelope, or the error the answer is."""
    status = answer.status
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise refusal(route, status, f"HTTP {status}, not a JSON answer: {_excerpt(answer)}",
                      retry_after=retry_after_of(answer), own=False)
    if status < 300 and body.get("ok") is True and isinstance(body.get("data"), dict):
        return body["data"]
    raw_code = body.get("error_code")
    code = untrusted(raw_code, limit=60) if isinstance(raw_code, str) else None
    if status < 300:
        raise refusal(route, status, f"HTTP {status}, answer has no data: {_excerpt(answer)}", code=code)
    detail, fields = _said(body)
    said = {429: "rate limited (429)", 404: f"not found or outside the key's scope ({code or 404})"}.get(status) \
        or (f"server error {status} {code or ''}".rstrip() if status >= 500
            else f"{status} {code or ''} {detail}".replace("  ", " ").strip())
    raise refusal(route, status, said, code=code, fields=fields, retry_after=retry_after_of(answer),
                  auth=_AUTH_MESSAGES.get(status))


def _said(body: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """An error envelope's message and issues, safe to show, and the payload fields it names as wrong."""
    detail = str(body.get("message") or "")
    issues = body.get("issues")
    fields: tuple[str, ...] = ()
    if isinstance(issues, dict):
        field_errors = issues.get("fieldErrors")
        if isinstance(field_errors, dict):
            fields = tuple(untrusted(str(k), limit=60) for k in field_errors)
        listed = "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                           for k, v in field_errors.items()) if isinstance(field_errors, dict) else ""
        form_errors = issues.get("formErrors")
        forms = "; ".join(map(str, form_errors)) if isinstance(form_errors, list) else ""
        detail = "; ".join(part for part in (detail, forms, listed) if part)
    return untrusted(detail), fields


def _pack_of(answer: Answer, route: Route) -> RemotePack:
    """A ``GET /packs/{id}`` answer: decoded in one pass when exactly as documented, else checked."""
    quick = answers.pack_answer(answer.content) if answer.status == 200 else None
    return quick or answers.pack(data_of(answer, route))


def stored(answer: Answer, route: Route) -> None:
    """Nothing for a PUT storage took, else the error its (S3-style XML) answer is."""
    status = answer.status
    if status < 300:
        return None
    code_match = re.search(r"<Code>([^<]{1,200})</Code>", answer.text)
    text_match = re.search(r"<Message>([^<]{1,2000})</Message>", answer.text)
    code = untrusted(code_match.group(1), limit=60) if code_match else None
    detail = f"{code}: {untrusted(text_match.group(1))}" if code and text_match else (code or _excerpt(answer))
    raise refusal(route, status, f"storage answered {status} {detail}", code=code, retry_after=retry_after_of(answer))


class GenviralClient:
    """An async client for the parts of the Partner API packsync uses, speaking through ``transport``.

    Without a ``transport`` the client makes its own (with ``concurrency`` and ``retry``) and closes it
    with itself; a transport it is given is its maker's to close.
    """

    def __init__(self, base_url: str, token: str, transport: Transport | None = None, *, concurrency: int = 4,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.transport = transport or Transport(concurrency=concurrency, retry=retry)
        self._owned = transport is None
        self._base = base_url.rstrip("/")
        self._headers = Headers({"Authorization": f"Bearer {token}"})
        self._json = Headers({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        self._storage: dict[str, Headers] = {}

    @property
    def concurrency(self) -> int:
        return self.transport.concurrency

    @property
    def retry(self) -> RetryPolicy:
        return self.transport.retry

    def start_run(self, planned_calls: int = 0) -> None:
        """A new run for the calling task: a fresh retry budget, no broken routes (``Transport.start_run``)."""
        self.transport.start_run(planned_calls)

    def take_retry(self) -> bool:
        """Spend one retry of the calling task's run, shared with every client of the transport."""
        return self.transport.take_retry()

    async def __aenter__(self) -> GenviralClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the transport if this client made it."""
        if self._owned:
            await self.transport.aclose()

    async def _call(self, route: Route, path: str, *, safe_to_repeat: bool, body: Any = None,
                    read: Callable[[Answer, Route], Any] = data_of) -> Any:
        """One API request (a JSON ``body``, if any), retried by the transport; what ``read`` makes of it."""
        if body is None:
            return await self.transport.request(route, self._base + path, read, headers=self._headers,
                                                safe_to_repeat=safe_to_repeat)
        return await self.transport.request(route, self._base + path, read, headers=self._json,
                                            safe_to_repeat=safe_to_repeat, body=msgspec.json.encode(body))

    # -- packs -------------------------------------------------------------------------------------

    async def list_packs(self, search: str | None = None, include_public: bool = False) -> list[PackSummary]:
        """Every pack the key sees (optionally only names containing ``search``), all pages.

        A server that ignores ``offset`` or reports an absurd ``total`` cannot make this loop for ever:
        it stops at a page that brings no new pack, and after as many pages as the first ``total`` allows.
        """
        packs: dict[str, PackSummary] = {}
        pages = None
        while pages is None or pages > 0:
            params = {"limit": str(PAGE_SIZE), "offset": str(len(packs)),
                      "include_public": "true" if include_public else "false"}
            if search:
                params["search"] = search
            query = "?" + urlencode(params)
            page, total = answers.pack_page(await self._call(LIST_PACKS, "/packs" + query, safe_to_repeat=True))
            pages = (-(-total // PAGE_SIZE) if pages is None else pages) - 1
            new = {p.pack_id: p for p in page if p.pack_id not in packs}
            packs.update(new)
            if not new or len(packs) >= total:
                break
        return list(packs.values())

    async def get_pack(self, pack_id: str) -> RemotePack:
        """A pack with its images, decoded (a metadata poll, a pull): no digest, no second pass."""
        pack: RemotePack = await self._call(GET_PACK, f"/packs/{path_segment(pack_id)}", safe_to_repeat=True,
                                            read=_pack_of)
        return pack

    async def pack_metadata(self, pack_id: str, image_ids: Collection[str]) -> dict[str, Metadata]:
        """The AI metadata of these images of a pack (a metadata round), by image id; the rest of the
        answer is skipped over, not decoded. An image the pack no longer holds is left out."""
        wanted = frozenset(image_ids)

        def read(answer: Answer, route: Route) -> dict[str, Metadata]:
            quick = answers.pack_metadata(answer.content, wanted) if answer.status == 200 else None
            if quick is not None:
                return quick
            return {i.image_id: i.metadata for i in _pack_of(answer, route).images if i.image_id in wanted}

        found: dict[str, Metadata] = await self._call(GET_PACK, f"/packs/{path_segment(pack_id)}",
                                                      safe_to_repeat=True, read=read)
        return found

    async def read_pack(self, pack_id: str) -> PackRead:
        """A pack's answer: its id, its name and a digest of its bytes now, its images when ``decode`` is
        called (which raises this client's errors for images not as documented)."""
        def read(answer: Answer, route: Route) -> PackRead:
            digest = hashlib.blake2b(answer.content, digest_size=16).hexdigest()
            head = answers.pack_head(answer.content) if answer.status == 200 else None
            if head is None:  # an error, or an answer not as documented: decided now, as always
                pack = _pack_of(answer, route)

                def ready() -> RemotePack:
                    return pack

                return PackRead(pack.pack_id, pack.name, digest, ready)
            return PackRead(*head, digest, functools.partial(_pack_of, answer, route))

        answer: PackRead = await self._call(GET_PACK, f"/packs/{path_segment(pack_id)}", safe_to_repeat=True,
                                            read=read)
        return answer

    async def create_pack(self, name: str) -> str:
        """Create a private pack; returns its id. Not repeated on ambiguous failures."""
        data = await self._call(CREATE_PACK, "/packs", safe_to_repeat=False, body={"name": name, "is_public": False})
        return answers.created_id(data, "POST /packs")

    async def rename_pack(self, pack_id: str, name: str) -> None:
        """Give a pack a new name (``PATCH``; harmless to repeat)."""
        await self._call(RENAME_PACK, f"/packs/{path_segment(pack_id)}", safe_to_repeat=True, body={"name": name})

    async def delete_pack(self, pack_id: str) -> None:
        """Delete a pack; one that is already gone counts as deleted. packsync deletes only a pack it has
        just created, still empty, that another client created at the same moment under the same name."""
        try:
            await self._call(DELETE_PACK, f"/packs/{path_segment(pack_id)}", safe_to_repeat=True)
        except NotFound:
            pass

    # -- images ------------------------------------------------------------------------------------

    async def create_upload(self, content_type: str, filename: str, size: int) -> UploadTicket:
        """Ask for a presigned upload URL. Harmless to repeat: an unused URL just expires."""
        data = await self._call(CREATE_UPLOAD, "/files", safe_to_repeat=True,
                                body={"contentType": content_type, "filename": filename, "size": size})
        return answers.upload_ticket(data, content_type)

    async def put_bytes(self, upload_url: str, data: bytes | Streamed, content_type: str,
                        on_sent: Callable[[int], None] | None = None) -> None:
        """PUT the bytes to storage, with exactly the signed Content-Type and no Authorization; a ``Streamed``
        body is read from disk as it goes, each chunk told to ``on_sent`` (``Transport.request``)."""
        headers = self._storage.get(content_type) or self._storage.setdefault(
            content_type, Headers({"Content-Type": content_type}))
        await self.transport.request(PUT_BYTES, upload_url, stored, headers=headers, safe_to_repeat=True, body=data,
                                     given=True, on_sent=on_sent)

    async def add_image(self, pack_id: str, url: str, file_name: str) -> str:
        """Add an uploaded URL to a pack; returns the image id. Not repeated on ambiguous failures."""
        data = await self._call(ADD_IMAGE, f"/packs/{path_segment(pack_id)}/images", safe_to_repeat=False,
                                body={"image_url": url, "file_name": file_name})
        return answers.created_id(data, "POST /packs/{id}/images")

    async def file_names(self, wanted: Collection[str]) -> UploadNames:
        """The name each uploaded file was given at ``POST /files``, by URL, for the ``wanted`` URLs: the
        key's files are walked (``GET /files``, in whatever order the server keeps) until each of those is
        found or none is left. Each page's offset is the last one moved by the entries that page held, and a
        file is known by its id: a file listed twice is read once. Files uploaded or deleted during the walk
        shift the pages, so a file may be missed: the answer says when the list was seen to change.

        Like ``list_packs``, a server ignoring ``offset`` or reporting an absurd ``total`` cannot make
        this walk for ever: it stops at a page that brings no new file, after as many pages as the first
        ``total`` allows, and after ``MAX_FILE_PAGES``.
        """
        missing = set(wanted)
        names: dict[str, str] = {}
        seen: set[str] = set()
        offset, pages, first, shifted = 0, None, None, False
        while missing and (pages is None or pages > 0):
            query = "?" + urlencode({"limit": str(PAGE_SIZE), "offset": str(offset), "type": "image"})
            page, size, total = answers.file_page(await self._call(LIST_FILES, "/files" + query,
                                                                   safe_to_repeat=True))
            pages = (min(-(-total // PAGE_SIZE), MAX_FILE_PAGES) if pages is None else pages) - 1
            first = total if first is None else first
            new = [(url, name) for identity, url, name in page if identity not in seen]
            shifted = shifted or total != first or len({identity for identity, _url, _name in page} & seen) > 0
            seen.update(identity for identity, _url, _name in page)
            for url, name in new:
                if url in missing and name is not None:
                    names[url] = name
                    missing.discard(url)
            offset += size
            if not new or offset >= total:
                break
        return UploadNames(names, shifted)

    # -- downloads ---------------------------------------------------------------------------------

    async def download(self, url: str, max_bytes: int, sink: Callable[[], S],
                       on_received: Callable[[int], None] | None = None) -> S:
        """The bytes at an image's ``url``, without the key, through the transport (``Transport.download``)."""
        return await self.transport.download(url, max_bytes, sink, on_received)

    async def delete_image(self, pack_id: str, image_id: str) -> None:
        """Delete an image; one that is already gone counts as deleted."""
        try:
            await self._call(DELETE_IMAGE, f"/packs/{path_segment(pack_id)}/images/{path_segment(image_id)}",
                             safe_to_repeat=True)
        except NotFound as exc:
            if exc.error_code != "image_not_found":
                raise
