"""The executor: carry out a plan against the API, recording each step once it is confirmed.

Per content: ``POST /files`` → ``PUT`` the bytes → ``POST /packs/{id}/images``, each step written
to the state as soon as the API confirmed it, so a killed run resumes where it stopped: a URL
obtained is reused while valid, bytes PUT are never sent again, and an image added but not recorded
is found by its URL in the pack. Uploads are shared: the same bytes wanted by two packs go up once.
Deletes run last, and not at all in a mapping where an add failed (like rclone's --delete-after).

A failure of one file is recorded and the rest goes on; a refused key (``AuthError``) stops
everything at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from packsync.client import GenviralClient, ambiguous
from packsync.errors import AuthError, NotFound, PermanentError, TransientError, UploadRejected
from packsync.logs import get_logger
from packsync.model import Blob, ManagedImage
from packsync.planner import AddImage, DeleteImage, MappingPlan, Plan
from packsync.progress import Progress
from packsync.state import Store

T = TypeVar("T")
T_exc = TypeVar("T_exc", bound=BaseException)

#: A presigned URL is not used when it expires within this many seconds: a PUT of a large file
#: must not start on a URL that dies half-way.
EXPIRY_MARGIN_S = 30.0
INLINE_READ_BYTES = 256 * 1024


class FileChanged(PermanentError):
    """The file's bytes are no longer those the scan hashed."""


@dataclass(slots=True)
class MappingOutcome:
    label: str
    pack_id: str | None
    added: int = 0
    adopted: int = 0
    deleted: int = 0
    forgotten: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    deletes_skipped: int = 0


class Executor:
    def __init__(self, api: GenviralClient, store: Store, progress: Progress | None = None) -> None:
        self.api = api
        self.store = store
        self.progress = progress or Progress(enabled=False)
        self.log = get_logger()
        self._uploads: dict[str, asyncio.Task[str]] = {}

    async def run(self, plan: Plan, roots: dict[str, Path]) -> list[MappingOutcome]:
        """Carry out ``plan``; ``roots`` maps each mapping label to its folder (for the pack record)."""
        outcomes = {m.label: MappingOutcome(m.label, m.pack_id) for m in plan.mappings}
        try:
            for mapping in plan.mappings:
                await self._prepare(mapping, outcomes[mapping.label], roots[mapping.label])
            async with asyncio.TaskGroup() as group:
                for mapping in plan.mappings:
                    if not outcomes[mapping.label].error:
                        group.create_task(self._adds(mapping, outcomes[mapping.label]))
            for mapping in plan.mappings:
                await self._deletes(mapping, outcomes[mapping.label])
        except* AuthError as group_error:
            raise _first(group_error) from None
        return list(outcomes.values())

    async def _prepare(self, mapping: MappingPlan, outcome: MappingOutcome, root: Path) -> None:
        """Create the pack if needed, then record adoptions and forget images gone remotely."""
        if mapping.pack_id is None:
            try:
                mapping.pack_id = await self._create_pack(mapping.pack_name)
            except (TransientError, PermanentError) as exc:
                outcome.error = f"cannot create pack {mapping.pack_name!r}: {exc}"
                return
            self.store.save_mapping(root, pack_id=mapping.pack_id, pack_name=mapping.pack_name)
            self.log.info("pack created", pack=mapping.pack_name, pack_id=mapping.pack_id)
        outcome.pack_id = mapping.pack_id
        for forget in mapping.forgets:
            self.store.forget_images(forget.image.pack_id, [forget.image.image_id])
            self.log.info("image gone from the pack; will add again if still wanted",
                          pack=mapping.pack_name, image_id=forget.image.image_id)
        for adopt in mapping.adopts:
            self.store.record_image(adopt.image)
        outcome.forgotten, outcome.adopted = len(mapping.forgets), len(mapping.adopts)

    async def _create_pack(self, name: str) -> str:
        try:
            return await self.api.create_pack(name)
        except TransientError as exc:
            if not ambiguous(exc):
                raise
            # The server may have created it before failing: look before creating another.
            existing = [p for p in await self.api.list_packs(search=name) if p.name == name and not p.is_public]
            if existing:
                return sorted(existing, key=lambda p: p.created_at)[0].pack_id
            return await self.api.create_pack(name)

    # -- adds --------------------------------------------------------------------------------------

    async def _adds(self, mapping: MappingPlan, outcome: MappingOutcome) -> None:
        async def one(add: AddImage) -> None:
            if outcome.error:
                return
            try:
                url = await self._uploaded(add)
                image_id = await self._add(mapping.pack_id or "", url, add.file_name)
            except NotFound as exc:
                if outcome.error is None:
                    outcome.error = f"pack {mapping.pack_name!r} is gone or out of the key's scope ({exc})"
                    self.log.error("pack unavailable; mapping stopped", pack=mapping.pack_name, error=str(exc))
                return
            except (TransientError, PermanentError, UploadRejected) as exc:
                outcome.failures.append((str(add.path), str(exc)))
                self.log.warning("file failed", path=str(add.path), error=str(exc))
                return
            self.store.record_image(ManagedImage(mapping.pack_id or "", image_id, add.sha256, url, add.file_name))
            outcome.added += 1
            self.progress.advance("added")
            self.log.debug("image added", pack=mapping.pack_name, file=add.file_name, image_id=image_id)

        await _bounded(mapping.adds, one, limit=self.api.concurrency * 2)

    def _uploaded(self, add: AddImage) -> Awaitable[str]:
        """The CDN URL of ``add``'s content, uploading it once however many packs want it."""
        task = self._uploads.get(add.sha256)
        if task is None:
            task = asyncio.ensure_future(self._upload(add))
            self._uploads[add.sha256] = task
        return asyncio.shield(task)

    async def _upload(self, add: AddImage) -> str:
        blob = self.store.blob(add.sha256)
        if blob and blob.uploaded and blob.url:
            return blob.url
        rejected: UploadRejected | None = None
        for _attempt in range(3):
            if not (blob and blob.url and blob.upload_url and (blob.expires_at or 0) - EXPIRY_MARGIN_S > time.time()):
                ticket = await self.api.create_upload(add.content_type, add.file_name, add.size)
                blob = Blob(add.sha256, ticket.content_type, ticket.url, ticket.upload_url, ticket.expires_at)
                self.store.save_blob(blob)
            # Small files are read in the loop: a thread hand-off costs more than the read.
            data = _read_verified(add.path, add.sha256) if add.size < INLINE_READ_BYTES \
                else await asyncio.to_thread(_read_verified, add.path, add.sha256)
            try:
                await self.api.put_bytes(blob.upload_url or "", data, blob.content_type)
            except UploadRejected as exc:
                rejected = exc
                self.log.info("upload URL rejected; asking for a new one", path=str(add.path), error=str(exc))
                blob = replace(blob, upload_url=None, expires_at=None)
                self.store.save_blob(blob)
                continue
            blob = replace(blob, upload_url=None, expires_at=None, uploaded=True)
            self.store.save_blob(blob)
            self.progress.advance("uploaded")
            return blob.url or ""
        raise PermanentError(f"storage rejected three fresh upload URLs in a row; the last said: {rejected}")

    async def _add(self, pack_id: str, url: str, file_name: str) -> str:
        """Add ``url`` to the pack exactly once, even when an answer is lost on the way back."""
        attempt = 0
        while True:
            try:
                return await self.api.add_image(pack_id, url, file_name)
            except TransientError as exc:
                attempt += 1
                if not ambiguous(exc) or attempt >= self.api.retry.attempts or not self.api.take_retry():
                    raise
                pack = await self.api.get_pack(pack_id)
                for image in pack.images:
                    if image.url == url:
                        self.log.info("add-image failed after it took effect; adopting", url=url, error=str(exc))
                        return image.image_id
                await asyncio.sleep(self.api.retry.delay(attempt, exc.retry_after))

    # -- deletes -----------------------------------------------------------------------------------

    async def _deletes(self, mapping: MappingPlan, outcome: MappingOutcome) -> None:
        if not mapping.deletes or outcome.error:
            return
        if outcome.failures:
            outcome.deletes_skipped = len(mapping.deletes)
            self.log.warning("deletes postponed because some files failed", pack=mapping.pack_name,
                             deletes=len(mapping.deletes))
            return

        async def one(delete: DeleteImage) -> None:
            if outcome.error:
                return
            try:
                await self.api.delete_image(mapping.pack_id or "", delete.image_id)
            except NotFound as exc:
                outcome.error = f"pack {mapping.pack_name!r} is gone or out of the key's scope ({exc})"
                return
            except (TransientError, PermanentError) as exc:
                outcome.failures.append((f"image {delete.image_id}", f"delete failed: {exc}"))
                return
            self.store.forget_images(mapping.pack_id or "", [delete.image_id])
            outcome.deleted += 1
            self.progress.advance("deleted")
            self.log.debug("image deleted", pack=mapping.pack_name, image_id=delete.image_id, reason=delete.reason)

        await _bounded(mapping.deletes, one, limit=self.api.concurrency * 2)


def _first(group: BaseExceptionGroup[T_exc]) -> T_exc:
    """The first leaf exception of a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _read_verified(path: Path, sha256: str) -> bytes:
    """The file's bytes, provided they still hash to what the scan saw."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileChanged(f"cannot read it any more ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise FileChanged("changed since it was scanned; it will be synced on the next run")
    return data


async def _bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """Run ``work`` on every item with at most ``limit`` running at once (not one task per item)."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await work(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(limit):
            group.create_task(worker())
