"""The executor: carry out a plan against the API, recording each step once it is confirmed.

The plan is the contract: the executor does what it says — create the pack, record adoptions and
forget vanished images, upload each content the plan lists once (``POST /files`` → ``PUT``), add
each image, delete last — and decides nothing again. Each step is written to the state as soon as
the API confirmed it (a few steps at a time: the state's ``write_behind``), so a killed run resumes
where it stopped: a URL obtained is reused while valid, bytes PUT are not sent again, and an image
added but not recorded is found by its URL in the pack — that URL is committed before the add is
sent. Deletes run last, and not at all in a mapping where an add failed (rclone's
--delete-after).

A failure of one item is recorded and the rest goes on; a refused key (``AuthError``) stops
everything at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

import msgspec

from packsync.engine.packs import PackResolver
from packsync.engine.planner import AddImage, DeleteImage, MappingPlan, Plan, Upload
from packsync.errors import (
    AmbiguousError,
    AuthError,
    ItemChanged,
    NotFound,
    PermanentError,
    StateError,
    TransientError,
    UploadRejected,
    first_error,
)
from packsync.logs import get_logger
from packsync.model import Blob, ManagedImage
from packsync.remote.genviral import GenviralClient
from packsync.sources.base import Source
from packsync.views.progress import Progress

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

T = TypeVar("T")

#: A presigned URL is not used when it expires within this many seconds: a PUT of a large file
#: must not start on a URL that dies half-way.
EXPIRY_MARGIN_S = 30.0
#: Fresh upload URLs storage may refuse in a row before the item is given up for this run.
UPLOAD_TRIES = 3


class MappingOutcome(msgspec.Struct):
    label: str
    pack_id: str | None
    added: int = 0
    adopted: int = 0     # images already in the pack holding a file's bytes, now packsync's
    recovered: int = 0   # packsync's own uploads a killed run added without recording them
    deleted: int = 0
    failures: list[tuple[str, str]] = msgspec.field(default_factory=list)
    error: str | None = None
    deletes_skipped: int = 0


class Executor:
    def __init__(self, api: GenviralClient, state: State, packs: PackResolver, sources: Mapping[str, Source],
                 progress: Progress | None = None) -> None:
        self.api = api
        self.state = state
        self.packs = packs
        self.sources = sources
        self.progress = progress or Progress(enabled=False)
        self.log = get_logger()
        self._uploads: dict[str, asyncio.Task[str]] = {}

    async def run(self, plan: Plan) -> list[MappingOutcome]:
        """Carry out ``plan``; one outcome per mapping, in the plan's order."""
        outcomes = [MappingOutcome(m.label, m.pack_id) for m in plan.mappings]
        uploads = {upload.add.sha256: upload for upload in plan.uploads}

        def url_of(add: AddImage) -> Awaitable[str]:
            return self._uploaded(uploads[add.sha256]) if add.sha256 not in plan.urls else _ready(plan.urls[add.sha256])

        try:
            with self.state.write_behind():
                await self._run(plan, outcomes, url_of)
        except* (AuthError, StateError) as group_error:
            raise first_error(group_error) from None
        finally:
            # Uploads are shared between packs and shielded: when the run stops early, end them here
            # rather than leave them failing later with nobody to hear it.
            for task in self._uploads.values():
                task.cancel()
            await asyncio.gather(*self._uploads.values(), return_exceptions=True)
        return outcomes

    async def _run(self, plan: Plan, outcomes: list[MappingOutcome],
                   url_of: Callable[[AddImage], Awaitable[str]]) -> None:
        for mapping, outcome in zip(plan.mappings, outcomes, strict=True):
            await self._prepare(mapping, outcome)
        async with asyncio.TaskGroup() as group:
            for mapping, outcome in zip(plan.mappings, outcomes, strict=True):
                if not outcome.error:
                    group.create_task(self._adds(mapping, outcome, url_of))
        for mapping, outcome in zip(plan.mappings, outcomes, strict=True):
            await self._deletes(mapping, outcome)

    async def _prepare(self, mapping: MappingPlan, outcome: MappingOutcome) -> None:
        """Create the pack if the plan says so, then record adoptions and forget images gone remotely."""
        if mapping.create_pack:
            try:
                outcome.pack_id = await self.packs.create(mapping.label, mapping.pack_name)
            except (TransientError, PermanentError) as exc:
                outcome.error = f"cannot create pack {mapping.pack_name!r}: {exc}"
                return
        log = self.log.bind(pack=mapping.pack_name)
        for forget in mapping.forgets:
            self.state.images.forget(forget.image.pack_id, [forget.image.image_id])
            log.info("image gone from the pack; will add again if still wanted", image_id=forget.image.image_id)
        self.state.images.record(adopt.image for adopt in mapping.adopts)
        outcome.recovered = sum(adopt.recovered for adopt in mapping.adopts)
        outcome.adopted = len(mapping.adopts) - outcome.recovered

    # -- adds --------------------------------------------------------------------------------------

    async def _adds(self, mapping: MappingPlan, outcome: MappingOutcome,
                    url_of: Callable[[AddImage], Awaitable[str]]) -> None:
        pack_id = outcome.pack_id or ""
        log = self.log.bind(pack=mapping.pack_name)

        async def one(add: AddImage) -> None:
            if outcome.error:
                return
            url = None
            try:
                url = await url_of(add)
                image_id = await self._add(pack_id, url, add.file_name)
            except NotFound as exc:
                if outcome.error is None:
                    outcome.error = f"pack {mapping.pack_name!r} is gone or out of the key's scope ({exc})"
                    log.error("pack unavailable; mapping stopped", error=str(exc))
                return
            except (TransientError, PermanentError, UploadRejected, ItemChanged) as exc:
                if url is not None and isinstance(exc, PermanentError) and "image_url" in exc.fields:
                    # The API refuses the uploaded URL: upload the content afresh next time, never reuse it.
                    self.state.uploads.forget_blob(add.sha256)
                where = f"{mapping.label}/{add.item.key}"
                outcome.failures.append((where, str(exc)))
                log.warning("item failed", item=where, error=str(exc))
                return
            self.state.images.record([ManagedImage(pack_id, image_id, add.sha256, url, add.file_name, mapping.label)])
            outcome.added += 1
            self.progress.advance("added")
            log.debug("image added", file=add.file_name, image_id=image_id)

        await _bounded(mapping.adds, one, limit=self.api.concurrency * 2)

    def _uploaded(self, upload: Upload) -> Awaitable[str]:
        """The CDN URL of ``upload``'s content, uploading it once however many packs want it."""
        task = self._uploads.get(upload.add.sha256)
        if task is None:
            task = asyncio.ensure_future(self._upload(upload))
            self._uploads[upload.add.sha256] = task
        return asyncio.shield(task)

    async def _upload(self, upload: Upload) -> str:
        add, blob = upload.add, upload.resume
        source = self.sources[add.mapping]
        rejected: UploadRejected | None = None
        for _attempt in range(UPLOAD_TRIES):
            if not (blob and blob.url and blob.upload_url and (blob.expires_at or 0) - EXPIRY_MARGIN_S > time.time()):
                ticket = await self.api.create_upload(add.item.content_type, add.file_name, add.item.size)
                blob = Blob(add.sha256, ticket.content_type, ticket.url, ticket.upload_url, ticket.expires_at)
                self.state.uploads.save_blob(blob)
            data = await source.read(add.item)
            try:
                await self.api.put_bytes(blob.upload_url or "", data, blob.content_type)
            except UploadRejected as exc:
                rejected = exc
                self.log.info("upload URL rejected; asking for a new one", item=add.item.key, error=str(exc))
                blob = msgspec.structs.replace(blob, upload_url=None, expires_at=None)
                self.state.uploads.save_blob(blob)
                continue
            blob = msgspec.structs.replace(blob, upload_url=None, expires_at=None, uploaded=True)
            self.state.uploads.save_blob(blob)
            self.progress.advance("uploaded")
            return blob.url or ""
        raise PermanentError(f"storage rejected {UPLOAD_TRIES} fresh upload URLs in a row; the last said: {rejected}")

    async def _add(self, pack_id: str, url: str, file_name: str) -> str:
        """Add ``url`` to the pack exactly once, even when an answer is lost on the way back."""
        attempt = 0
        while True:
            self.state.flush()  # the URL is the record of an image added by a run killed before it recorded it
            try:
                return await self.api.add_image(pack_id, url, file_name)
            except AmbiguousError as exc:
                attempt += 1
                if attempt >= self.api.retry.attempts or not self.api.take_retry():
                    raise
                pack = await self.api.get_pack(pack_id)
                for image in pack.images:
                    if image.url == url:
                        self.log.info("add-image failed after it took effect; adopting", url=url, error=str(exc))
                        return image.image_id
                await asyncio.sleep(self.api.retry.backoff.delay(attempt, exc.retry_after))

    # -- deletes -----------------------------------------------------------------------------------

    async def _deletes(self, mapping: MappingPlan, outcome: MappingOutcome) -> None:
        if not mapping.deletes or outcome.error:
            return
        log = self.log.bind(pack=mapping.pack_name)
        if outcome.failures:
            outcome.deletes_skipped = len(mapping.deletes)
            log.warning("deletes postponed because some items failed", deletes=len(mapping.deletes))
            return
        pack_id = outcome.pack_id or ""

        async def one(delete: DeleteImage) -> None:
            if outcome.error:
                return
            try:
                await self.api.delete_image(pack_id, delete.image_id)
            except NotFound as exc:
                outcome.error = f"pack {mapping.pack_name!r} is gone or out of the key's scope ({exc})"
                return
            except (TransientError, PermanentError) as exc:
                outcome.failures.append((f"image {delete.image_id}", f"delete failed: {exc}"))
                return
            self.state.images.forget(pack_id, [delete.image_id])
            outcome.deleted += 1
            self.progress.advance("deleted")
            log.debug("image deleted", image_id=delete.image_id, reason=delete.reason)

        await _bounded(mapping.deletes, one, limit=self.api.concurrency * 2)


async def _ready(value: T) -> T:
    return value


async def _bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """Run ``work`` on every item with at most ``limit`` running at once (not one task per item)."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await work(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(limit):
            group.create_task(worker())
