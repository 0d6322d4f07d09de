"""What the state remembers of contents moving in and out: what a recipe makes of a content before
upload (``prepared``), uploads (``blobs``), the contents of URLs packsync downloaded (``url_contents``),
and the files ``packsync pull`` wrote (``pulled``).

An upload is known by the hash of the bytes uploaded (a content's own, unless its recipe changed them)
and the name it was given, and serves every pack that wants those bytes under that name (a content in
two packs under two paths is uploaded twice, so that ``GET /files`` names each pack's image by its own
path); a URL's content is remembered so that
no URL is downloaded twice. This repository knows nothing of the images that use them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, select

from packsync.model import Blob, PreparedContent, PulledFile, UrlContent
from packsync.state.dialects import upsert
from packsync.state.tables import BlobRow, PreparedRow, PulledRow, UrlContentRow, table
from packsync.state.unit import Bulk, UnitOfWork

BLOBS, URL_CONTENTS, PULLED, PREPARED = table(BlobRow), table(UrlContentRow), table(PulledRow), table(PreparedRow)
#: How many keys one ``IN (…)`` holds at most (the database limits a statement's parameters).
IN_AT_MOST = 500

_SAVE_BLOB = Bulk(upsert(BLOBS), "sha256", "name", "content_type", "url", "upload_url", "expires_at", "uploaded")
_FORGET_BLOB = Bulk(delete(BLOBS).where(BLOBS.c.sha256 == bindparam("sha256"), BLOBS.c.name == bindparam("name")),
                    "sha256", "name")
_SAVE_PREPARED = Bulk(upsert(PREPARED), "sha256", "recipe", "changes", "upload_sha256", "size", "content_type",
                      "problem")
_SAVE_URL_CONTENT = Bulk(upsert(URL_CONTENTS), "url", "sha256", "size", "content_type", "problem")
_SAVE_PULLED = Bulk(upsert(PULLED), "folder", "pack_id", "image_id", "name", "url", "sha256")
_FORGET_PULLED = Bulk(delete(PULLED).where(PULLED.c.folder == bindparam("folder"), PULLED.c.pack_id ==
                                           bindparam("pack_id"), PULLED.c.image_id == bindparam("image_id")),
                      "folder", "pack_id", "image_id")


def batches(keys: Collection[str], size: int = IN_AT_MOST) -> Iterable[list[str]]:
    """``keys`` a few hundred at a time (or ``size``), for ``IN (…)``."""
    items = list(keys)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _url_content_row(content: UrlContent) -> tuple[Any, ...]:
    return content.url, content.sha256, content.size, content.content_type, content.problem


class UploadRepository:
    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    # -- prepared contents -------------------------------------------------------------------------

    def prepared(self, shas: Collection[str], recipes: Collection[str]) -> dict[tuple[str, str], PreparedContent]:
        """What these recipes (their keys) make of these contents, where it is known: by (content, recipe)."""
        c = PREPARED.c
        found: dict[tuple[str, str], PreparedContent] = {}
        for batch in batches(shas):
            for sha, recipe, changes, upload, size, kind, problem in self.unit.rows(select(
                    c.sha256, c.recipe, c.changes, c.upload_sha256, c.size, c.content_type, c.problem).where(
                    c.sha256.in_(batch), c.recipe.in_(list(recipes)))):
                found[sha, recipe] = PreparedContent(sha, recipe, tuple(changes.split(",")) if changes else (),
                                                     upload, size, kind, problem)
        return found

    def save_prepared(self, contents: Iterable[PreparedContent]) -> None:
        self.unit.write(_SAVE_PREPARED, [(p.sha256, p.recipe, ",".join(p.changes), p.upload_sha256, p.size,
                                          p.content_type, p.problem) for p in contents])

    # -- uploads -----------------------------------------------------------------------------------

    def blobs(self, shas: Collection[str]) -> dict[tuple[str, str], Blob]:
        """The uploads of these contents, where there are any: by (content, name)."""
        c = BLOBS.c
        found: dict[tuple[str, str], Blob] = {}
        for batch in batches(shas):
            for sha, name, kind, url, upload_url, expires, done in self.unit.rows(select(
                    c.sha256, c.name, c.content_type, c.url, c.upload_url, c.expires_at, c.uploaded).where(
                    c.sha256.in_(batch))):
                found[sha, name] = Blob(sha, kind, url, upload_url, expires, bool(done), name)
        return found

    def save_blob(self, blob: Blob) -> None:
        """Record an upload step; committed at once (or queued, inside ``write_behind``)."""
        self.unit.write(_SAVE_BLOB, [(blob.sha256, blob.name, blob.content_type, blob.url, blob.upload_url,
                                      blob.expires_at, blob.uploaded)])

    def forget_blob(self, sha256: str, name: str) -> None:
        """Forget an upload whose URL the API refused: the content is uploaded afresh next time."""
        self.unit.write(_FORGET_BLOB, [(sha256, name)])

    def known_urls(self, urls: Collection[str]) -> dict[str, tuple[str, str]]:
        """Those of ``urls`` that are packsync's own uploads, with the content and the recipe (its key) that
        made the bytes: the content's own bytes, as they are, where no recipe is on record for them."""
        b, p = BLOBS.c, PREPARED.c
        statement = select(b.url, func.coalesce(p.sha256, b.sha256), func.coalesce(p.recipe, "")).select_from(
            BLOBS.outerjoin(PREPARED, p.upload_sha256 == b.sha256))
        return {url: (sha, recipe) for batch in batches(urls)
                for url, sha, recipe in self.unit.rows(statement.where(b.url.in_(batch)))}

    # -- downloads ---------------------------------------------------------------------------------

    def url_contents(self, urls: Collection[str]) -> dict[str, UrlContent]:
        """What packsync learnt of these URLs' bytes by downloading them, where it did."""
        c = URL_CONTENTS.c
        return {row[0]: UrlContent(*row) for batch in batches(urls) for row in self.unit.rows(
            select(c.url, c.sha256, c.size, c.content_type, c.problem).where(c.url.in_(batch)))}

    def seen_in_images(self, shas: Collection[str]) -> bool:
        """Whether an image packsync downloaded (one it did not add, in any pack) held one of these contents."""
        c = URL_CONTENTS.c
        return any(self.unit.rows(select(c.url).where(c.sha256.in_(batch)).limit(1)) for batch in batches(shas))

    def save_url_contents(self, contents: Iterable[UrlContent]) -> None:
        self.unit.write(_SAVE_URL_CONTENT, map(_url_content_row, contents))

    # -- pulled files ------------------------------------------------------------------------------

    def pulled(self, folder: str, pack_id: str | None = None) -> list[PulledFile]:
        """The files pull wrote into ``folder`` (from ``pack_id``, or from any pack)."""
        c = PULLED.c
        statement = select(c.folder, c.pack_id, c.name, c.image_id, c.url, c.sha256).where(
            c.folder == self.unit.key(folder))
        rows: Sequence[Any] = self.unit.rows(statement if pack_id is None else statement.where(c.pack_id == pack_id))
        return [PulledFile(folder, *row[1:]) for row in rows]

    def record_pulled(self, pulled: PulledFile, content: UrlContent) -> None:
        """Record a file pull is about to give its name, with what the download learnt of its URL."""
        with self.unit.transaction():
            self.unit.write(_SAVE_URL_CONTENT, [_url_content_row(content)])
            self.unit.write(_SAVE_PULLED, [(self.unit.key(pulled.folder), pulled.pack_id, pulled.image_id, pulled.name,
                                            pulled.url, pulled.sha256)])

    def forget_pulled(self, pulled: PulledFile) -> None:
        self.unit.write(_FORGET_PULLED, [(self.unit.key(pulled.folder), pulled.pack_id, pulled.image_id)])
