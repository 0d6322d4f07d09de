"""The sandbox's in-memory model: accounts, packs, images, uploaded blobs and the files they are, enrichment.

Owns every piece of sandbox state and the rules over it (scope visibility, ordering,
presigned-upload signatures, lazy enrichment, JSON persistence). No HTTP here: the
server module translates requests into calls on :class:`Store`. All public methods take
the store's single re-entrant lock, so the store is safe to share between threads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from .imaging import describe, inspect
from .validation import IMAGE_CONTENT_TYPES

__all__ = ["Account", "Blob", "Store", "iso_ms", "CDN_PATH_RE", "ENRICH_MODEL"]

ENRICH_MODEL = "gpt-4.1-nano"
CDN_PATH_RE = re.compile(r"^/cdn/([0-9a-f]{32})\.([a-z0-9]+)$")
URL_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Account:
    """An API key's owner: the scope its packs live in, and a forced failure status.

    ``status`` 401, 402 or 403 makes every API call with the key fail with that status.
    """

    scope: str
    status: int = 200


@dataclass
class Blob:
    """Bytes PUT through a presigned URL, with the content type that was signed."""

    content_type: str
    data: bytes
    b64: str = ""

    def encoded(self) -> str:
        if not self.b64:
            self.b64 = base64.b64encode(self.data).decode("ascii")
        return self.b64


@dataclass
class _File:
    """An upload asked for with ``POST /files``: the key's scope, the name it was given (display only)."""

    key: str
    scope: str
    url: str
    content_type: str
    filename: str | None
    created_at: float
    seq: int


@dataclass
class _Image:
    id: str
    url: str
    file_name: str
    content_type: str | None
    added_at: float
    seq: int
    final: dict[str, Any] | None = None  # frozen terminal metadata once decided
    encoded: bytes | None = None  # its part of a pack's answer, once final (a large pack is answered quickly)


@dataclass
class _Pack:
    id: str
    name: str
    scope: str
    is_public: bool
    created_at: float
    seq: int
    images: list[_Image] = field(default_factory=list)


def iso_ms(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z suffix."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def content_type_for_url(url: str) -> str | None:
    """The image content type implied by the URL path's extension, if any."""
    return URL_CONTENT_TYPES.get(PurePosixPath(urlsplit(url).path).suffix.lower())


class Store:
    """All sandbox state behind one lock; optionally persisted to a JSON file."""

    def __init__(
        self,
        state_path: Path | None = None,
        enrich_delays: tuple[float, float] = (0.2, 0.3),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lock = threading.RLock()
        self._packs: dict[str, _Pack] = {}
        self._blobs: dict[str, Blob] = {}
        self._files: dict[str, _File] = {}
        self._seq = 0
        self._secret = secrets.token_bytes(32)
        self._state_path = Path(state_path) if state_path is not None else None
        self._delays = (float(enrich_delays[0]), float(enrich_delays[1]))
        self._clock = clock
        self._dirty = False  # enrichment decided during a read (or a file asked for), not yet saved
        if self._state_path is not None and self._state_path.exists():
            self._load(self._state_path)

    # ----------------------------------------------------------------- helpers
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _metadata(self, img: _Image) -> dict[str, Any]:
        if img.final is not None:
            return dict(img.final, keywords=list(img.final["keywords"]))
        elapsed = self._clock() - img.added_at
        pending, processing = self._delays
        if elapsed < pending + processing:
            status = "pending" if elapsed < pending else "processing"
            return {"status": status, "description": None, "keywords": [], "model": ENRICH_MODEL,
                    "generated_at": None, "error": None}
        img.final = self._decide(img, img.added_at + pending + processing)
        self._dirty = True
        return self._metadata(img)

    def _decide(self, img: _Image, when: float) -> dict[str, Any]:
        meta: dict[str, Any] = {"status": "failed", "description": None, "keywords": [],
                                "model": ENRICH_MODEL, "generated_at": iso_ms(when), "error": None}
        blob = self._blob_for_url(img.url)
        if blob is None:
            meta["error"] = "image URL could not be fetched"
            return meta
        facts = inspect(blob.data)
        if facts is None:
            meta["error"] = "image bytes are not a supported image"
            return meta
        meta["description"], meta["keywords"] = describe(facts)
        meta["status"] = "completed"
        return meta

    def _blob_for_url(self, url: str) -> Blob | None:
        parts = urlsplit(url)
        if parts.hostname not in LOOPBACK_HOSTS:
            return None
        m = CDN_PATH_RE.match(parts.path)
        return self.get_blob(m.group(1), m.group(2)) if m else None

    def _summary(self, p: _Pack) -> dict[str, Any]:
        return {"id": p.id, "name": p.name, "image_count": len(p.images),
                "preview_image_url": p.images[0].url if p.images else None,
                "is_public": p.is_public, "created_at": iso_ms(p.created_at)}

    def _detail(self, p: _Pack) -> dict[str, Any]:
        return {"id": p.id, "name": p.name, "image_count": len(p.images), "is_public": p.is_public,
                "created_at": iso_ms(p.created_at),
                "images": [{"id": i.id, "url": i.url, "metadata": self._metadata(i)} for i in p.images]}

    def _owned(self, scope: str | None, pack_id: str) -> _Pack | None:
        p = self._packs.get(pack_id)
        return p if p is not None and (scope is None or p.scope == scope) else None

    # -------------------------------------------------------------- packs API
    def list_packs(self, scope: str, search: str, limit: int, offset: int,
                   include_public: bool) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            needle = search.casefold()
            hits = [p for p in self._packs.values()
                    if (p.scope == scope or (include_public and p.is_public))
                    and needle in p.name.casefold()]
            hits.sort(key=lambda p: p.seq)
            return [self._summary(p) for p in hits[offset:offset + limit]], len(hits)

    def get_pack(self, scope: str | None, pack_id: str) -> dict[str, Any] | None:
        """The pack if visible to ``scope`` (own or public); ``scope=None`` sees all."""
        with self.lock:
            p = self._packs.get(pack_id)
            if p is None or not (scope is None or p.scope == scope or p.is_public):
                return None
            detail = self._detail(p)
            self._save_if_dirty()
            return detail

    def pack_answer(self, scope: str | None, pack_id: str) -> bytes | None:
        """``GET /packs/{id}``'s whole answer, encoded: what ``get_pack`` says, in the API's envelope. Each
        image's part is encoded once its metadata is final, so a pack of 100,000 settled images is answered
        in milliseconds, as a real API serving from its cache would, rather than re-encoded per request."""
        with self.lock:
            p = self._packs.get(pack_id)
            if p is None or not (scope is None or p.scope == scope or p.is_public):
                return None
            head = json.dumps({"id": p.id, "name": p.name, "image_count": len(p.images), "is_public": p.is_public,
                               "created_at": iso_ms(p.created_at)}).encode()
            images = b", ".join(map(self._encoded, p.images))
            self._save_if_dirty()
        return (b'{"ok": true, "code": 200, "message": "Pack retrieved", "data": ' + head[:-1] + b', "images": ['
                + images + b"]}}")

    def _encoded(self, img: _Image) -> bytes:
        if img.encoded is not None:
            return img.encoded
        data = json.dumps({"id": img.id, "url": img.url, "metadata": self._metadata(img)}).encode()
        if img.final is not None:
            img.encoded = data
        return data

    def all_packs(self) -> list[dict[str, Any]]:
        with self.lock:
            details = [self._detail(p) for p in sorted(self._packs.values(), key=lambda p: p.seq)]
            self._save_if_dirty()
            return details

    def create_pack(self, scope: str, name: str, is_public: bool) -> dict[str, Any]:
        with self.lock:
            p = _Pack(id=str(uuid.uuid4()), name=name, scope=scope, is_public=is_public,
                      created_at=self._clock(), seq=self._next_seq())
            self._packs[p.id] = p
            self._save()
            return self._summary(p)

    def update_pack(self, scope: str | None, pack_id: str, name: str | None,
                    is_public: bool | None) -> dict[str, Any] | None:
        with self.lock:
            p = self._owned(scope, pack_id)
            if p is None:
                return None
            if name is not None:
                p.name = name
            if is_public is not None:
                p.is_public = is_public
            self._save()
            return self._summary(p)

    def delete_pack(self, scope: str | None, pack_id: str) -> bool:
        with self.lock:
            if self._owned(scope, pack_id) is None:
                return False
            del self._packs[pack_id]
            self._save()
            return True

    def add_image(self, scope: str | None, pack_id: str, url: str,
                  file_name: str) -> dict[str, Any] | None:
        with self.lock:
            p = self._owned(scope, pack_id)
            if p is None:
                return None
            img = _Image(id=str(uuid.uuid4()), url=url, file_name=file_name,
                         content_type=content_type_for_url(url), added_at=self._clock(),
                         seq=self._next_seq())
            p.images.append(img)
            self._save()
            return {"id": img.id, "url": img.url, "file_name": img.file_name,
                    "content_type": img.content_type}

    def delete_image(self, scope: str | None, pack_id: str, image_id: str) -> str:
        """"deleted", "no_pack" (missing or out of scope) or "no_image"."""
        with self.lock:
            p = self._owned(scope, pack_id)
            if p is None:
                return "no_pack"
            kept = [i for i in p.images if i.id != image_id]
            if len(kept) == len(p.images):
                return "no_image"
            p.images = kept
            self._save()
            return "deleted"

    # ---------------------------------------------------------------- storage
    def sign(self, key: str, expires: int, content_type: str) -> str:
        msg = f"{key}\n{expires}\n{content_type}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, content_type: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(key, expires, content_type), signature)

    def put_blob(self, key: str, content_type: str, data: bytes) -> str:
        """Store (or overwrite) the bytes under ``key``; returns their md5 hex."""
        with self.lock:
            self._blobs[key] = Blob(content_type=content_type, data=data)
            self._save()
        return hashlib.md5(data).hexdigest()

    def create_file(self, scope: str, key: str, url: str, content_type: str, filename: str | None) -> None:
        """Remember an upload asked for (``POST /files``): it is listed once its bytes are PUT."""
        with self.lock:
            self._files[key] = _File(key, scope, url, content_type, filename, self._clock(), self._next_seq())
            self._dirty = True  # saved with its bytes (``put_blob``): listed only once they are there

    def list_files(self, scope: str, limit: int, offset: int, kind: str | None) -> tuple[list[dict[str, Any]], int]:
        """``GET /files``: the scope's uploaded files (bytes PUT), oldest first, one page of them, and their
        number. Only images are stored here, so ``kind = "video"`` lists none."""
        with self.lock:
            files = [f for f in self._files.values() if f.scope == scope and f.key in self._blobs
                     and kind in (None, "image")]
            files.sort(key=lambda f: f.seq)
            return [{"id": f.key, "url": f.url, "contentType": f.content_type, "filename": f.filename,
                     "size": len(self._blobs[f.key].data), "createdAt": iso_ms(f.created_at)}
                    for f in files[offset:offset + limit]], len(files)

    def get_blob(self, key: str, ext: str) -> Blob | None:
        """The blob when it was PUT and ``ext`` matches its content type."""
        with self.lock:
            blob = self._blobs.get(key)
            if blob is None or IMAGE_CONTENT_TYPES.get(blob.content_type) != ext:
                return None
            return blob

    # ------------------------------------------------------------ persistence
    def _save_if_dirty(self) -> None:
        if self._dirty:
            self._save()

    def _save(self) -> None:
        self._dirty = False
        if self._state_path is None:
            return
        state = {
            "version": 1,
            "seq": self._seq,
            "packs": [
                {"id": p.id, "name": p.name, "scope": p.scope, "is_public": p.is_public,
                 "created_at": p.created_at, "seq": p.seq,
                 "images": [{"id": i.id, "url": i.url, "file_name": i.file_name,
                             "content_type": i.content_type, "added_at": i.added_at,
                             "seq": i.seq, "final": i.final} for i in p.images]}
                for p in self._packs.values()
            ],
            "blobs": {k: {"content_type": b.content_type, "data": b.encoded()}
                      for k, b in self._blobs.items()},
            "files": [{"key": f.key, "scope": f.scope, "url": f.url, "content_type": f.content_type,
                       "filename": f.filename, "created_at": f.created_at, "seq": f.seq}
                      for f in self._files.values()],
        }
        target = self._state_path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _load(self, path: Path) -> None:
        state = json.loads(path.read_text(encoding="utf-8"))
        self._seq = int(state.get("seq", 0))
        for raw in state.get("packs", []):
            images = [_Image(id=i["id"], url=i["url"], file_name=i["file_name"],
                             content_type=i.get("content_type"), added_at=float(i["added_at"]),
                             seq=int(i["seq"]), final=i.get("final"))
                      for i in raw.get("images", [])]
            images.sort(key=lambda i: i.seq)
            self._packs[raw["id"]] = _Pack(id=raw["id"], name=raw["name"], scope=raw["scope"],
                                           is_public=bool(raw["is_public"]),
                                           created_at=float(raw["created_at"]),
                                           seq=int(raw["seq"]), images=images)
        for key, b in state.get("blobs", {}).items():
            self._blobs[key] = Blob(content_type=b["content_type"],
                                    data=base64.b64decode(b["data"]), b64=b["data"])
        for f in state.get("files", []):
            self._files[f["key"]] = _File(f["key"], f["scope"], f["url"], f["content_type"], f.get("filename"),
                                          float(f["created_at"]), int(f["seq"]))
