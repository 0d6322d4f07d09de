"""The API's answers, checked: JSON ``data`` objects in, typed values or ``MalformedAnswer`` out.

This is the one place that trusts nothing of an answer's shape. What packsync acts on must be
exactly as documented — an id that is missing or null, a pack whose ``images`` is not a list of
objects, an upload whose URLs are not absolute http(s) URLs — and is otherwise an error for that
call, in one sentence. What is only shown to people is taken leniently: AI metadata of the wrong
type counts as absent (the API documents that it may be absent on old images).

A pack's answer (tens of MB for a large pack) is first decoded straight into typed structs by
msgspec, in one pass; only an answer that is not exactly as documented goes the slower way through
``json`` and the checks below, which decide what it means.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from packsync.errors import MalformedAnswer
from packsync.logs import redact, untrusted
from packsync.model import METADATA_SETTLED, Metadata, PackSummary, RemoteImage, RemotePack, UploadTicket

_STATUSES = METADATA_SETTLED | {"pending", "processing"}
#: Absent metadata is the same value for thousands of images: share it.
_PENDING = Metadata()


def _id(value: Any, what: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MalformedAnswer(f"{what}: the answer has no valid id ({_shown(value)})")


def _shown(value: Any) -> str:
    return untrusted(repr(value), limit=40)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedAnswer(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, what: str, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedAnswer(f"{what}: {key} is {type(value).__name__}, not a list")
    return value


def is_http_url(value: Any) -> bool:
    """Whether ``value`` is an absolute http(s) URL (a malformed one, like ``http://[x``, is not)."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        return parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def url_problem(url: Any) -> str | None:
    """Why an image's ``url`` is not one to download (only absolute http(s) URLs without a key in them
    are), or None. A key in a URL would be printed and stored with it."""
    if not is_http_url(url):
        return "its URL is not an http(s) address"
    return "its URL holds an API key; not used" if redact(url) != url else None


def http_url(value: Any, what: str) -> str:
    """``value`` if it is an absolute http(s) URL, else ``MalformedAnswer``."""
    if is_http_url(value):
        return str(value)
    raise MalformedAnswer(f"{what}: {_shown(value)} is not an absolute http(s) URL")


def metadata(raw: Any) -> Metadata:
    """An image's AI metadata; fields of the wrong type count as absent."""
    if raw.__class__ is not dict:
        return _PENDING
    status, description, keywords, error, model = raw.get("status"), raw.get("description"), \
        raw.get("keywords"), raw.get("error"), raw.get("model")
    if keywords.__class__ is list:
        keywords = tuple(keywords)
        if not all(k.__class__ is str for k in keywords):
            keywords = tuple(k for k in keywords if k.__class__ is str)
    else:
        keywords = ()
    return Metadata(status if status in _STATUSES else "pending",
                    description if description.__class__ is str else None, keywords,
                    error if error.__class__ is str else None, model if model.__class__ is str else None)


class _PackAnswer(msgspec.Struct):
    ok: bool
    data: RemotePack


_PACK_DECODER = msgspec.json.Decoder(_PackAnswer)


class _PackHead(msgspec.Struct):
    pack_id: str = msgspec.field(name="id", default="")
    name: str = ""


class _HeadAnswer(msgspec.Struct):
    ok: bool = False
    data: _PackHead = msgspec.field(default_factory=_PackHead)


_HEAD_DECODER = msgspec.json.Decoder(_HeadAnswer)


def pack_head(body: bytes) -> tuple[str, str] | None:
    """The id and name of a successful ``GET /packs/{id}`` answer, its images skipped over (not
    checked); None when it is not one."""
    try:
        answer = _HEAD_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    return (answer.data.pack_id, answer.data.name) if answer.ok and answer.data.pack_id else None


def pack_answer(body: bytes) -> RemotePack | None:
    """A successful ``GET /packs/{id}`` answer exactly as documented, decoded in one pass; None for
    anything else (then ``pack`` on the parsed JSON decides)."""
    try:
        answer = _PACK_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    pack = answer.data
    if not (answer.ok and pack.pack_id and all(image.image_id and image.metadata.status in _STATUSES
                                               for image in pack.images)):
        return None
    return pack


class _Entry(msgspec.Struct):
    image_id: Annotated[str, msgspec.Meta(min_length=1)] = msgspec.field(name="id")  # checked for every image
    metadata: msgspec.Raw = msgspec.Raw(b"null")  # decoded for the images asked about alone


class _Entries(msgspec.Struct):
    pack_id: str = msgspec.field(name="id", default="")
    images: list[_Entry] = []


class _EntriesAnswer(msgspec.Struct):
    ok: bool = False
    data: _Entries = msgspec.field(default_factory=_Entries)


_ENTRIES_DECODER = msgspec.json.Decoder(_EntriesAnswer)
_METADATA_DECODER = msgspec.json.Decoder(Metadata)


def pack_metadata(body: bytes, image_ids: Collection[str]) -> dict[str, Metadata] | None:
    """The AI metadata of these images (``image_ids``, a set) in a successful ``GET /packs/{id}`` answer
    exactly as documented, the other images' skipped over unread, so that a metadata round over a pack
    of 100,000 images decodes what it asked about; an image not in the pack is left out. None for
    anything else (then ``pack`` on the parsed JSON decides)."""
    try:
        answer = _ENTRIES_DECODER.decode(body)
        if not (answer.ok and answer.data.pack_id):
            return None
        found = {entry.image_id: _METADATA_DECODER.decode(entry.metadata) for entry in answer.data.images
                 if entry.image_id in image_ids}
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    return found if all(meta.status in _STATUSES for meta in found.values()) else None


def pack(data: Any, what: str = "GET /packs/{id}") -> RemotePack:
    """A pack with its images (``GET /packs/{id}``)."""
    data = _object(data, what)
    images = []
    # Run once per image of every pack read (100,000 at a time): the usual case is checked inline.
    for raw in _list(data.get("images"), what, "images"):
        if raw.__class__ is not dict:
            raise MalformedAnswer(f"{what}: an entry of images is {type(raw).__name__}, not an object")
        image_id, url = raw.get("id"), raw.get("url")
        if image_id.__class__ is not str or not image_id:
            image_id = _id(image_id, f"{what}: an image")
        images.append(RemoteImage(image_id, url if url.__class__ is str else "", metadata(raw.get("metadata"))))
    name = data.get("name")
    return RemotePack(_id(data.get("id"), what), name if isinstance(name, str) else "", tuple(images))


def pack_page(data: Any, what: str = "GET /packs") -> tuple[list[PackSummary], int]:
    """One page of ``GET /packs``: its packs and the ``total`` the server reports."""
    data = _object(data, what)
    packs = []
    for raw in _list(data.get("packs"), what, "packs"):
        raw = _object(raw, f"{what}: a pack")
        name, count, created = raw.get("name"), raw.get("image_count"), raw.get("created_at")
        packs.append(PackSummary(_id(raw.get("id"), f"{what}: a pack"), name if isinstance(name, str) else "",
                                 count if isinstance(count, int) and not isinstance(count, bool) else 0,
                                 raw.get("is_public") is True, created if isinstance(created, str) else ""))
    total = data.get("total")
    return packs, total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else len(packs)


def created_id(data: Any, what: str) -> str:
    """The id of what a POST created (a pack, an image)."""
    return _id(_object(data, what).get("id"), what)


def upload_ticket(data: Any, content_type: str) -> UploadTicket:
    """The answer to ``POST /files``: where to PUT the bytes and the URL they will have."""
    what = "POST /files"
    data = _object(data, what)
    expires_in = data.get("expiresIn", 600)
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or not 0 < expires_in < math.inf:
        raise MalformedAnswer(f"{what}: expiresIn is {_shown(expires_in)}, not a positive number of seconds")
    upload_url = http_url(data.get("uploadUrl"), f"{what}: uploadUrl")
    return UploadTicket(upload_url, http_url(data.get("url"), f"{what}: url"), content_type,
                        time.time() + float(expires_in))


def file_page(data: Any, what: str = "GET /files") -> tuple[list[tuple[str, str, str | None]], int, int]:
    """One page of ``GET /files``: each file's (identity, url, filename), how many entries the page held
    (the next page's offset moves by that), and the ``total`` the server reports. The names are only shown
    and used as file names (untrusted, checked where they are used): a file whose URL is not an http(s) URL
    is passed over, one whose name is not a string is kept without a name; its identity is its id, else its
    URL (a page repeated is then seen to bring nothing new)."""
    data = _object(data, what)
    files = []
    entries = _list(data.get("files"), what, "files")
    for raw in entries:
        raw = _object(raw, f"{what}: a file")
        url, name, file_id = raw.get("url"), raw.get("filename"), raw.get("id")
        if not isinstance(url, str) or not is_http_url(url):
            continue
        identity = file_id if isinstance(file_id, str) and file_id else url
        files.append((identity, url, name if isinstance(name, str) and name else None))
    total = data.get("total")
    return files, len(entries), total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 \
        else len(entries)
