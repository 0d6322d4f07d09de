"""The executor: carry out a plan, one action at a time, recording each step once it is confirmed.

The plan is the contract: the executor runs its actions (``actions.py``: each does its API call and
records what the API confirmed) and decides nothing again. It is the only part of a sync that writes
the state or calls a mutating API. Phases, in this order: ``prepare`` (rename or create the pack,
remember it, record the scan, adoptions, forgotten images and metadata), ``transfer`` (each content
uploaded once per name however many packs want it — ``POST /files`` → ``PUT`` — then each image added),
``delete`` last, and not at all in a mapping where an add failed (rclone's --delete-after); and,
after the metadata wait, ``finish`` (sidecars, then the mapping's "last sync" record).

Each step is written to the state as soon as the API confirmed it (a few steps at a time: the
state's ``write_behind``), so a killed run resumes where it stopped: a URL obtained is reused while
valid, bytes PUT are not sent again, and an image added but not recorded is found by its URL in the
pack — that URL is committed before the add is sent.

A failure of one item is recorded and the rest goes on; a mapping whose pack could not be created or
renamed stops; a refused key (``AuthError``) stops everything at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from packsync.engine.actions import Action, AddImage, Phase, Upload
from packsync.engine.packs import PackResolver
from packsync.engine.planner import MappingPlan, Plan
from packsync.engine.preparer import Prepared, Preparer
from packsync.engine.progress import QUIET, ProgressObserver
from packsync.errors import (
    AmbiguousError,
    AuthError,
    PermanentError,
    PrepareError,
    Stalled,
    StateError,
    UploadRejected,
    first_error,
)
from packsync.logs import get_logger
from packsync.model import Blob, PreparedContent, Problem, Uploaded
from packsync.remote.genviral import GenviralClient
from packsync.sources.base import Source

if TYPE_CHECKING:  # types only: the state is opened by whoever runs these; sidecars by the mappings writing them
    from packsync.engine.sidecars import SidecarReport
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
    #: The items among ``failures`` whose add failed (by key): recorded, so every view counts them as failed.
    failed_items: list[Problem] = msgspec.field(default_factory=list)
    #: The deletes that failed (the file the image was for, else ``image <id>``; why): not files that failed,
    #: and tried again by the next sync, which plans them anew.
    failed_deletes: list[tuple[str, str]] = msgspec.field(default_factory=list)
    error: str | None = None
    deletes_skipped: int = 0
    renamed_from: str | None = None  # the subfolder it was, when its pack followed a rename
    prepared: list[tuple[str, tuple[str, ...]]] = msgspec.field(default_factory=list)  # (item, what was changed)
    sidecars: SidecarReport | None = None
    #: What was done, by name, for the feed of recent activity: (added|deleted|replaced|renamed|failed, name, detail).
    events: list[tuple[str, str, str | None]] = msgspec.field(default_factory=list)


    @property
    def said_failed(self) -> list[tuple[str, str]]:
        """Every add and delete that failed, (what, why), as the mapping's last error names them."""
        return self.failures + [(name, f"delete failed: {why}") for name, why in self.failed_deletes]


class Run:
    """What an action of one mapping's plan reaches while it runs: the API, the state, its pack and
    its outcome."""

    def __init__(self, executor: Executor, plan: MappingPlan, outcome: MappingOutcome) -> None:
        self.api, self.state, self.packs, self.progress = executor.api, executor.state, executor.packs, \
            executor.progress
        self.plan, self.outcome = plan, outcome
        self.pack_name = plan.pack_name
        self.log = executor.log.bind(pack=plan.pack_name)
        self.url_of = executor.url_of
        self.sidecar_pass = executor.sidecar_pass
        self._executor = executor

    @property
    def pack_id(self) -> str:
        return self.outcome.pack_id or ""

    def fence(self) -> None:
        """Raise ``LeaseLost`` unless this site still holds the mapping's pack (a shared state's lease): what
        every pack write checks first."""
        self._executor.fence(self.plan.label)

    def stop(self, why: str) -> None:
        """The mapping cannot go on this run (its pack is gone, or could not be made)."""
        if self.outcome.error is None:
            self.outcome.error = why
            self.log.error("mapping stopped", error=why)

    def fail(self, where: str, why: str, item: str | None = None) -> None:
        """One item failed (a file's add: its key is ``item``); the rest goes on (and the mapping's deletes wait)."""
        self.outcome.failures.append((where, why))
        if item is not None:
            self.outcome.failed_items.append(Problem(item, why))
        self.outcome.events.append(("failed", where, why))
        self.log.warning("item failed", item=where, error=why)

    def fail_delete(self, name: str, why: str) -> None:
        """One delete failed (the image of the file ``name``); the rest goes on."""
        self.outcome.failed_deletes.append((name, why))
        self.outcome.events.append(("failed", name, f"delete failed: {why}"))
        self.log.warning("delete failed", item=name, error=why)

    async def add_once(self, url: str, file_name: str) -> str:
        return await self._executor.add_once(self.pack_id, url, file_name, self.plan.label)


class Executor:
    def __init__(self, api: GenviralClient, state: State, packs: PackResolver, sources: Mapping[str, Source],
                 progress: ProgressObserver = QUIET, sidecar_pass: asyncio.Lock | None = None,
                 preparer: Preparer | None = None, fence: Callable[[str], None] = lambda _label: None) -> None:
        """``fence``: raises ``LeaseLost`` when this site no longer holds a mapping's pack (by its label)."""
        self.api = api
        self.fence = fence
        self.state = state
        self.packs = packs
        self.sources = sources
        self.progress = progress
        self.sidecar_pass = sidecar_pass or asyncio.Lock()  # the Syncer's: shared with the metadata loop
        self.log = get_logger()
        self._uploads: dict[str, asyncio.Task[Uploaded]] = {}
        self._urls: dict[str, Uploaded] = {}
        self._planned: dict[str, Upload] = {}
        self._to_send = 0  # the bytes of this run's uploads still to send or sent ("sent"'s total)
        self.preparer = preparer or Preparer()
        # Uploads opened (and prepared) but not yet sent, at most: enough to keep every connection and every
        # core busy, few enough that the spool's files and the open files do not grow with the adds waiting.
        # (A streamed upload holds a chunk or two in memory, whatever its size.)
        self._in_hand = asyncio.Semaphore(self.api.concurrency + self.preparer.workers)

    async def run(self, plan: Plan) -> list[MappingOutcome]:
        """Carry out ``plan`` up to its ``finish`` phase; one outcome per mapping, in the plan's order."""
        outcomes = [MappingOutcome(m.label, m.pack_id) for m in plan.mappings]
        self._planned = {upload.add.upload_key: upload for upload in plan.uploads}
        self._to_send = 0
        self._resize_sent(sum(upload.add.item.size for upload in plan.uploads))
        self._urls = dict(plan.urls)
        runs = [Run(self, mapping, outcome) for mapping, outcome in zip(plan.mappings, outcomes, strict=True)]
        try:
            with self.state.write_behind():
                for run in runs:
                    await _in_turn(run, "prepare")
                async with asyncio.TaskGroup() as group:
                    for run in runs:
                        group.create_task(self._bounded(run, "transfer"))
                for run in runs:
                    await self._deletes(run)
        except* (AuthError, StateError) as group_error:
            raise first_error(group_error) from None
        finally:
            # Uploads are shared between packs and shielded: when the run stops early, end them here
            # rather than leave them failing later with nobody to hear it.
            for task in self._uploads.values():
                task.cancel()
            await asyncio.gather(*self._uploads.values(), return_exceptions=True)
        return outcomes

    async def finish(self, plan: Plan, outcomes: list[MappingOutcome]) -> None:
        """The ``finish`` phase (after the metadata wait): sidecars, then each mapping's record."""
        with self.state.write_behind():
            for mapping, outcome in zip(plan.mappings, outcomes, strict=True):
                await _in_turn(Run(self, mapping, outcome), "finish")

    async def record(self, actions: Sequence[Action]) -> None:
        """Actions that only record what was observed outside a sync (a metadata round's), in turn."""
        with self.state.write_behind():
            for action in actions:
                await action.apply(Run(self, MappingPlan(action.mapping, "", None), MappingOutcome(action.mapping,
                                                                                                    None)))

    async def _bounded(self, run: Run, phase: Phase) -> None:
        await _bounded((a for a in run.plan.actions if a.phase == phase), lambda a: _once(run, a),
                       limit=self.api.concurrency * 2)

    async def _deletes(self, run: Run) -> None:
        deletes = [a for a in run.plan.actions if a.phase == "delete"]
        if not deletes or run.outcome.error:
            return
        if run.outcome.failures:
            run.outcome.deletes_skipped = len(deletes)
            run.log.warning("deletes postponed because some items failed", deletes=len(deletes))
            return
        await self._bounded(run, "delete")

    def url_of(self, add: AddImage) -> Awaitable[Uploaded]:
        """``add``'s content in storage as its recipe makes it, uploaded once per name however many packs want it."""
        key = add.upload_key
        if key in self._urls:
            return _ready(self._urls[key])
        task = self._uploads.get(key)
        if task is None:
            task = asyncio.ensure_future(self._upload(self._planned[key]))
            self._uploads[key] = task
        return asyncio.shield(task)

    async def _upload(self, upload: Upload) -> Uploaded:
        async with self._in_hand:
            add = upload.add
            try:
                made = await self.preparer.prepare(add.item, self.sources[add.mapping].open, add.recipe)
            except BaseException as exc:
                if isinstance(exc, PrepareError):
                    self.state.uploads.save_prepared([PreparedContent(add.sha256, add.recipe.key, problem=str(exc))])
                self._resize_sent(-add.item.size)
                raise
            self._resize_sent(made.body.size - add.item.size)  # (what the recipe made is what is sent)
            try:
                if not add.recipe.as_is:
                    self.state.uploads.save_prepared([made.record])
                sent = made.record.upload_sha256 or add.sha256
                blob = upload.resume
                if blob is None or blob.sha256 != sent:  # (the same bytes may be uploaded already, for another file)
                    blob = self.state.uploads.blobs({sent}).get((sent, add.upload_name))
                    if blob and blob.uploaded and blob.url:
                        self.progress.advance("uploaded")
                        self._resize_sent(-made.body.size)
                        return Uploaded(blob.url, sent, made.record.changes)
                return Uploaded(await self._put(add, made, sent, blob), sent, made.record.changes)
            except BaseException:
                self._resize_sent(-made.body.size)  # (not sent in this run)
                raise
            finally:
                made.release()

    async def _put(self, add: AddImage, made: Prepared, sent: str, blob: Blob | None) -> str:
        rejected: UploadRejected | None = None
        for _attempt in range(UPLOAD_TRIES):
            self.fence(add.mapping)  # (an upload for a pack this site no longer syncs is not made)
            if not (blob and blob.url and blob.upload_url and (blob.expires_at or 0) - EXPIRY_MARGIN_S > time.time()):
                ticket = await self.api.create_upload(made.content_type, add.upload_name, made.body.size)
                blob = Blob(sent, ticket.content_type, ticket.url, ticket.upload_url, ticket.expires_at,
                            name=add.upload_name)
                self.state.uploads.save_blob(blob)
            try:
                await self.api.put_bytes(blob.upload_url or "", made.body, blob.content_type, self._sent)
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

    def _sent(self, count: int) -> None:
        self.progress.advance("sent", count)

    def _resize_sent(self, change: int) -> None:
        """The bytes this run sends, grown or shrunk by ``change`` as its uploads are prepared or end."""
        if change:
            self._to_send += change
            self.progress.total("sent", self._to_send)

    async def add_once(self, pack_id: str, url: str, file_name: str, label: str) -> str:
        """Add ``url`` to the pack exactly once, even when an answer is lost on the way back."""
        attempt = 0
        while True:
            self.state.flush()  # the URL is the record of an image added by a run killed before it recorded it
            self.fence(label)
            try:
                return await self.api.add_image(pack_id, url, file_name)
            except AmbiguousError as exc:
                attempt += 1
                if isinstance(exc, Stalled) or attempt >= self.api.retry.attempts or not self.api.take_retry():
                    raise  # (a trickle costs one attempt: a next run finds an image it did add by its URL)
                pack = await self.api.get_pack(pack_id)
                for image in pack.images:
                    if image.url == url:
                        self.log.info("add-image failed after it took effect; adopting", url=url, error=str(exc))
                        return image.image_id
                await asyncio.sleep(self.api.retry.backoff.delay(attempt, exc.retry_after))


async def _in_turn(run: Run, phase: Phase) -> None:
    """A phase's actions of one mapping, one after the other in their ``order``."""
    for action in sorted((a for a in run.plan.actions if a.phase == phase), key=lambda a: a.order):
        await _once(run, action)


async def _once(run: Run, action: Action) -> None:
    if run.outcome.error is None or action.after_error:
        await action.apply(run)


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
