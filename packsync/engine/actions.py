"""The actions a plan is made of: small frozen values, each carrying out itself and its record.

Like vdirsyncer's ``Upload``/``Update``/``Delete``: the planner decides and returns these values; the
executor runs them, in the order of their ``phase`` (and ``order`` within it), and each one does its
API call and then records what the API confirmed — so adding a kind of action is adding one class
here. ``describe()`` is what ``run --dry-run --json`` prints of it.

Phases (``executor.py`` runs them): ``prepare`` one mapping at a time, in ``order`` (the pack first,
then what only the state needs); ``transfer`` the adds, concurrently, each awaiting its content's
upload; ``delete`` after every transfer, not in a mapping where one failed; ``finish`` after the
metadata wait (sidecars, then the mapping's "last sync" record). ``None``: nothing is done (a withheld
delete is in the plan to be shown). An action whose mapping stopped (its pack could not be created
or renamed) is skipped unless it runs ``after_error``.

Values only at import: the API client and the state are the executor's, reached through ``Run``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from packsync.config import MappingConfig
from packsync.engine.names import upload_name
from packsync.errors import ItemChanged, NotFound, PermanentError, PrepareError, TransientError, UploadRejected
from packsync.model import (
    Blob,
    CachedFile,
    ContentItem,
    ManagedImage,
    Metadata,
    PreparedContent,
    Problem,
    UrlContent,
)
from packsync.recipe import AS_IS, Recipe

if TYPE_CHECKING:  # the executor's context, named only: importing it would bring in the HTTP client
    from packsync.engine.executor import Run
    from packsync.state.store import State

Phase = Literal["prepare", "transfer", "delete", "finish"]


class Action(msgspec.Struct, frozen=True):
    """One step of a plan, for the mapping labelled ``mapping``."""

    kind: ClassVar[str]
    phase: ClassVar[Phase | None] = "prepare"
    order: ClassVar[int] = 0
    #: Whether it still runs in a mapping that stopped (its pack could not be created or renamed).
    after_error: ClassVar[bool] = False
    #: Whether it changes the pack or the records: a plan of none of these has nothing to do.
    work: ClassVar[bool] = True

    mapping: str

    def about(self) -> tuple[str | None, str | None]:
        """The source's item (its key) and the pack's image (its id) it is about, each if any."""
        return None, None

    def describe(self) -> dict[str, Any]:
        file, image = self.about()
        return {"kind": self.kind, "mapping": self.mapping, "file": file, "image": image}

    def shown(self) -> list[dict[str, Any]]:
        """What ``run --dry-run --json`` lists for it: its ``describe()``, or the steps it stands for."""
        return [self.describe()]

    def previewed(self, state: State) -> Action:
        """This action as a dry run shows it: itself, unless it plans its steps only when it runs."""
        return self

    async def apply(self, run: Run) -> None:
        raise NotImplementedError(self.kind)


# -- the pack ---------------------------------------------------------------------------------------

class Move(msgspec.Struct, frozen=True):
    """A subfolder renamed: the records of ``old`` become ``new``'s, and its pack (``pack_id``) is ``name``."""

    old: str
    new: str
    pack_id: str
    name: str


class RenamePack(Action, frozen=True):
    """A renamed subfolder: its records (``old``'s) become ``mapping``'s and its pack is renamed.

    ``together``: every rename of the subfolders of one folder that one sync found, this one among them.
    They are carried out at once — all the packs renamed, then all the records moved in one transaction
    — so that a swap (A's files now in B and B's in A) moves A's records to B while B's move to A, and a
    failure leaves all of them as they were. The first of them to run does it; the others find it done."""

    kind: ClassVar[str] = "rename-pack"
    order: ClassVar[int] = 0

    old: str
    pack_id: str
    name: str
    together: tuple[Move, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "from": self.old, "pack_id": self.pack_id, "name": self.name}

    async def apply(self, run: Run) -> None:
        moves = self.together or (Move(self.old, self.mapping, self.pack_id, self.name),)
        if not all(_moved(run.state, move) for move in moves):
            run.fence()
            try:
                for move in moves:
                    await run.api.rename_pack(move.pack_id, move.name)
            except (TransientError, PermanentError, NotFound) as exc:  # (a refused key stops everything)
                run.stop(f"cannot rename the pack of the renamed subfolder {self.old}; trying again next run: {exc}")
                return
            run.state.mappings.move_sources({move.old: move.new for move in moves})
            for move in moves:
                run.state.mappings.save(move.new, pack_id=move.pack_id, pack_name=move.name)
        run.outcome.renamed_from = self.old
        run.outcome.events.append(("renamed", self.mapping, self.old))
        run.log.info("subfolder renamed: its pack follows", old=self.old, new=self.mapping, pack=self.name)


def _moved(state: State, move: Move) -> bool:
    record = state.mappings.get(move.new)
    return bool(record and record.pack_id == move.pack_id and record.pack_name == move.name)


class CreatePack(Action, frozen=True):
    """Create the mapping's pack and remember it; the records of ``gone`` (its pack found deleted) go
    once the new one exists. Another pack of the name created at the same moment wins (the older): the
    mapping then syncs into it from the next run on, not now, while the other client fills it."""

    kind: ClassVar[str] = "create-pack"
    order: ClassVar[int] = 2

    name: str
    gone: str | None = None

    async def apply(self, run: Run) -> None:
        run.fence()
        try:
            created = await run.packs.create(self.name)
        except (TransientError, PermanentError) as exc:
            run.stop(f"cannot create pack {self.name!r}: {exc}")
            return
        remember(run, self.mapping, created.pack_id, self.name, self.gone)
        run.outcome.pack_id = created.pack_id
        if created.raced:  # its plan was made for an empty pack, which the other client is filling now
            run.stop(f"another pack named {self.name!r} was created at the same moment (another machine's "
                     "first run?); this one was deleted, and the next run syncs into that one")


class RememberPack(Action, frozen=True):
    """Remember the pack the resolver found for the mapping (and drop the records of ``gone``)."""

    kind: ClassVar[str] = "remember-pack"
    order: ClassVar[int] = 2

    pack_id: str
    name: str
    gone: str | None = None

    async def apply(self, run: Run) -> None:
        remember(run, self.mapping, self.pack_id, self.name, self.gone)


def remember(run: Run, label: str, pack_id: str, name: str, gone: str | None) -> None:
    run.state.mappings.save(label, pack_id=pack_id, pack_name=name)
    if gone and gone != pack_id:
        run.state.images.forget(gone, owner=label)


# -- the records ------------------------------------------------------------------------------------

class RecordScan(Action, frozen=True):
    """What the scan saw (the file cache, against ``previous``) and could not sync, and — when the plan
    had nothing to do — the fingerprint it settled on. None: not written (a gone subfolder's last
    listing is kept: it is how a rename is recognised later)."""

    kind: ClassVar[str] = "record-scan"
    order: ClassVar[int] = 1
    work: ClassVar[bool] = False

    previous: dict[str, CachedFile] | None = None
    cache: dict[str, CachedFile] | None = None
    problems: list[Problem] | None = None
    settled: str | None = None

    async def apply(self, run: Run) -> None:
        if self.cache is not None:
            run.state.files.save_cache(self.mapping, self.previous or {}, self.cache)
        if self.problems is not None:
            run.state.files.save_problems(self.mapping, self.problems)
        if self.settled:
            run.state.files.save_settled(self.mapping, self.settled)


class RecordPaths(Action, frozen=True):
    """What a scan of some paths saw (``Source.scan_paths``): their records and problems, and those below
    them (``scope``), replace what ``previous`` says was there; nothing else of the source changes."""

    kind: ClassVar[str] = "record-paths"
    order: ClassVar[int] = 1
    work: ClassVar[bool] = False

    scope: tuple[str, ...]
    previous: dict[str, CachedFile]
    cache: dict[str, CachedFile]
    problems: list[Problem]

    async def apply(self, run: Run) -> None:
        run.state.files.save_paths(self.mapping, self.scope, self.previous, self.cache, self.problems)


class RecordMetadata(Action, frozen=True):
    """The AI metadata the pack read reports for packsync's images, where it changed."""

    kind: ClassVar[str] = "record-metadata"
    order: ClassVar[int] = 5

    pack_id: str
    metadata: dict[str, Metadata]

    async def apply(self, run: Run) -> None:
        run.state.metadata.update(self.pack_id, self.metadata)


class RecordDownloads(Action, frozen=True):
    """What downloading the pack's unknown images taught (each URL's content), so none is fetched twice."""

    kind: ClassVar[str] = "record-downloads"
    order: ClassVar[int] = 5

    contents: tuple[UrlContent, ...]

    async def apply(self, run: Run) -> None:
        run.state.uploads.save_url_contents(self.contents)


class RecordPrepared(Action, frozen=True):
    """What observing learnt of what the mapping's recipe makes of some contents (inspected or prepared)."""

    kind: ClassVar[str] = "record-prepared"
    order: ClassVar[int] = 5
    work: ClassVar[bool] = False

    contents: tuple[PreparedContent, ...]

    async def apply(self, run: Run) -> None:
        run.state.uploads.save_prepared(self.contents)


class RecordRecipe(Action, frozen=True):
    """Images whose bytes are what the mapping's recipe (``recipe``, its key) makes of their files — it
    changes what their old one changed — are recorded as made with it: nothing to upload again."""

    kind: ClassVar[str] = "record-recipe"
    order: ClassVar[int] = 5

    pack_id: str
    image_ids: tuple[str, ...]
    recipe: str

    async def apply(self, run: Run) -> None:
        run.state.images.set_recipe(self.pack_id, self.image_ids, self.recipe)


class HandOverImage(Action, frozen=True):
    """An image whose content left the mapping's source while another mapping into the pack (of this
    machine, or of another site sharing the state) still holds it: that mapping owns it now, and the image
    stays. ``to`` is that mapping as the state keys it."""

    kind: ClassVar[str] = "hand-over"
    order: ClassVar[int] = 5

    pack_id: str
    image_id: str
    to: str
    name: str | None = None

    def about(self) -> tuple[str | None, str | None]:
        return self.name, self.image_id

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "to": self.to}

    async def apply(self, run: Run) -> None:
        run.state.images.hand_over(self.pack_id, {self.image_id: self.to})
        run.log.info("image kept: another mapping into the pack holds its content", image_id=self.image_id,
                     to=self.to)


class ForgetImage(Action, frozen=True):
    """Drop the record of an image that is no longer in the pack."""

    kind: ClassVar[str] = "forget"
    order: ClassVar[int] = 3

    image: ManagedImage

    def about(self) -> tuple[str | None, str | None]:
        return None, self.image.image_id

    async def apply(self, run: Run) -> None:
        run.state.images.forget(self.image.pack_id, [self.image.image_id])
        run.log.info("image gone from the pack; will add again if still wanted", image_id=self.image.image_id)


class AdoptImage(Action, frozen=True):
    """Record an image already in the pack as packsync's: its own upload (``recovered``), or an image
    holding the same bytes as an item of the source."""

    kind: ClassVar[str] = "adopt"
    order: ClassVar[int] = 4

    image: ManagedImage
    recovered: bool = True

    def about(self) -> tuple[str | None, str | None]:
        return None, self.image.image_id

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.image.file_name, "recovered": self.recovered}

    async def apply(self, run: Run) -> None:
        run.state.images.record([self.image])
        if self.recovered:
            run.outcome.recovered += 1
        else:
            run.outcome.adopted += 1


# -- transfers --------------------------------------------------------------------------------------

class AddImage(Action, frozen=True):
    """Add the content of ``item`` to the pack, as ``file_name``, once its upload — of the bytes ``recipe``
    makes of it — gave it a URL."""

    kind: ClassVar[str] = "add"
    phase: ClassVar[Phase | None] = "transfer"
    done: ClassVar[str] = "added"  # in the feed of recent activity

    item: ContentItem
    file_name: str
    recipe: Recipe = AS_IS

    @property
    def sha256(self) -> str:
        return self.item.sha256

    @property
    def upload_name(self) -> str:
        """The name its upload is given (``engine/names.py``): its path where the source has paths (a
        folder), else (an Astria image) the name the source gives it."""
        return self.file_name if self.item.name is not None else upload_name(self.item.key, self.file_name)

    @property
    def upload_key(self) -> str:
        """What one upload serves: a content as one recipe makes it (as it is: the content's hash), under one
        name — the same content in another pack under another path is another upload, so that each pack's
        image comes back from ``GET /files`` with its own path."""
        made = f"{self.sha256}:{self.recipe.key}" if self.recipe.key else self.sha256
        return f"{made}/{self.upload_name}"

    def about(self) -> tuple[str | None, str | None]:
        return self.item.key, None

    async def apply(self, run: Run) -> None:
        await self.add(run)

    async def add(self, run: Run) -> bool:
        """Upload (once) and add; whether the image is in the pack and recorded."""
        uploaded = None
        try:
            uploaded = await run.url_of(self)
            image_id = await run.add_once(uploaded.url, self.file_name)
        except NotFound as exc:
            run.stop(f"pack {run.pack_name!r} is gone or out of the key's scope ({exc})")
            return False
        except (TransientError, PermanentError, UploadRejected, ItemChanged, PrepareError) as exc:
            if uploaded is not None and isinstance(exc, PermanentError) and "image_url" in exc.fields:
                # The API refuses the uploaded URL: upload the content afresh next time, never reuse it.
                run.state.uploads.forget_blob(uploaded.sent, self.upload_name)
            run.fail(f"{self.mapping}/{self.item.key}", str(exc), item=self.item.key)
            return False
        run.state.images.record([ManagedImage(run.pack_id, image_id, self.sha256, uploaded.url, self.file_name,
                                              self.mapping, recipe=self.recipe.key)])
        run.outcome.added += 1
        run.outcome.events.append((self.done, self.item.key, None))
        if uploaded.changes:
            run.outcome.prepared.append((self.item.key, uploaded.changes))
        run.progress.advance("added")
        run.log.debug("image added", file=self.file_name, image_id=image_id)
        return True


class ReplaceImage(AddImage, frozen=True):
    """Add the content anew as the mapping's recipe makes it, then — once that is in the pack — delete the
    image made with another recipe (``replaces``, at ``old_url``, named ``old_name``): one step, so a failure
    leaves the old image, never both."""

    kind: ClassVar[str] = "replace"
    done: ClassVar[str] = "replaced"

    replaces: str = ""
    old_url: str = ""
    old_name: str = ""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "replaces": self.replaces}

    def old(self) -> DeleteImage:
        """The delete of the image it replaces, done once the new one is in."""
        return DeleteImage(self.mapping, self.replaces, self.old_url, REPLACED, self.sha256, self.old_name)

    def withheld(self) -> WithheldDelete:
        """Its delete as a safety stop holds it back (the add waits with it)."""
        return WithheldDelete(**msgspec.structs.asdict(self.old()))

    async def apply(self, run: Run) -> None:
        if await self.add(run):
            await self.old().apply(run)


#: Why an image made with another recipe goes.
REPLACED = "replaced: the recipe makes its file anew"


class Upload(Action, frozen=True):
    """Put ``add``'s content in Genviral's storage, resuming ``resume`` (a URL obtained, not yet used).
    Run by the first add that needs it (one upload per content and name, whatever the number of packs)."""

    kind: ClassVar[str] = "upload"
    phase: ClassVar[Phase | None] = None

    add: AddImage
    resume: Blob | None = None

    def about(self) -> tuple[str | None, str | None]:
        return self.add.item.key, None


class DeleteImage(Action, frozen=True):
    """Delete an image from the pack; ``reason`` says why in a few words."""

    kind: ClassVar[str] = "delete"
    phase: ClassVar[Phase | None] = "delete"

    image_id: str
    url: str
    reason: str
    sha256: str | None = None
    name: str | None = None  # its name as packsync added it (a foreign image's: unknown)

    def about(self) -> tuple[str | None, str | None]:
        return self.name, self.image_id  # (the file it was added from, by the name it was added as)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reason": self.reason}

    async def apply(self, run: Run) -> None:
        run.fence()
        try:
            await run.api.delete_image(run.pack_id, self.image_id)
        except NotFound as exc:
            run.stop(f"pack {run.pack_name!r} is gone or out of the key's scope ({exc})")
            return
        except (TransientError, PermanentError) as exc:
            run.fail_delete(self.name or f"image {self.image_id}", str(exc))
            return
        run.state.images.forget(run.pack_id, [self.image_id])
        run.outcome.deleted += 1
        if self.reason != REPLACED:  # (a replacement is one entry, its add's)
            run.outcome.events.append(("deleted", self.name or f"image {self.image_id}", self.reason))
        run.progress.advance("deleted")
        run.log.debug("image deleted", image_id=self.image_id, reason=self.reason)


class WithheldDelete(DeleteImage, frozen=True):
    """A delete a safety stop holds back: shown, and counted in the mapping's record, never done."""

    kind: ClassVar[str] = "withheld-delete"
    phase: ClassVar[Phase | None] = None

    async def apply(self, run: Run) -> None:
        raise AssertionError("a withheld delete is never run")  # (phase None: the executor never picks it)


# -- after the metadata wait ------------------------------------------------------------------------

class SidecarPass(Action, frozen=True):
    """Bring the XMP sidecars of the mapping's files up to date with the metadata in the state: of every
    file (``files`` None: a full sync's, the truth that also notices a sidecar someone else edited), or
    of ``files`` alone (those a sync of changed paths looked at, or holding an image whose metadata just
    arrived). Planned when it runs, after the metadata wait: ``sidecars.plan_sidecars`` makes a
    ``WriteSidecar`` or ``RemoveSidecar`` per file from the state as it is then; their file work runs in
    a worker thread, and what was written is recorded here."""

    kind: ClassVar[str] = "sidecars"
    phase: ClassVar[Phase | None] = "finish"
    order: ClassVar[int] = 0
    work: ClassVar[bool] = False

    config: MappingConfig
    files: frozenset[str] | None = None
    #: In a dry run: the sidecar writes and removals it would make with the metadata the state holds now.
    preview: tuple[dict[str, Any], ...] | None = None

    def shown(self) -> list[dict[str, Any]]:
        return [self.describe()] if self.preview is None else list(self.preview)

    def previewed(self, state: State) -> SidecarPass:
        """This pass with what it would write and remove now (a dry run's; the run itself plans after the
        metadata wait): the sidecars that would say something new, and those that would go."""
        from packsync.engine import sidecars

        planned = sidecars.observe(state, self.config, self.files).actions
        return msgspec.structs.replace(self, preview=tuple(
            a.describe() for a in planned if not isinstance(a, sidecars.WriteSidecar) or a.news))

    async def apply(self, run: Run) -> None:
        from packsync.engine import sidecars  # (imported by the mappings that write sidecars alone)

        async with run.sidecar_pass:  # one pass at a time: a sync's and the metadata loop's
            planned = sidecars.observe(run.state, self.config, self.files)
            report = await sidecars.apply(planned.actions)
            run.state.files.save_sidecars(self.mapping, report.records, report.forgotten)
        report.problems[:0] = planned.problems
        run.outcome.sidecars = report


class RecordSync(Action, frozen=True):
    """How the mapping's sync ended, for the views: when, its error (``error``, decided before anything
    ran, else the outcome's), a safety stop and the names of the deletes it withheld."""

    kind: ClassVar[str] = "record-sync"
    phase: ClassVar[Phase | None] = "finish"
    order: ClassVar[int] = 1
    after_error: ClassVar[bool] = True
    work: ClassVar[bool] = False

    error: str | None = None
    safety: str | None = None
    withheld: tuple[str, ...] = ()
    source_name: str | None = None  # None when the source could not be read: the last is kept
    withheld_count: int = 0  # (``withheld`` names the first of them)
    #: The files a sync of changed paths tried (None: every file; empty: none, the mapping stopped before its
    #: plan): the failed adds on record of these alone are replaced by this sync's.
    tried: frozenset[str] | None = None
    expires_at: float | None = None  # when the source deletes its items; None: not read (the last is kept)

    async def apply(self, run: Run) -> None:
        now = time.time()
        if not (self.error or run.outcome.error):  # (a mapping that stopped tried nothing: its failures stand)
            run.state.files.save_failures(self.mapping, run.outcome.failed_items, self.tried)
        error = last_error(self.error or run.outcome.error or self.safety,
                           run.outcome.said_failed)
        run.state.activity.record(self.mapping, run.outcome.events)
        run.state.mappings.save(self.mapping, synced_at=now, last_error=error, safety=self.safety,
                                withheld=json.dumps(list(self.withheld)) if self.withheld else None,
                                withheld_count=self.withheld_count if self.safety else None,
                                **({"source_name": self.source_name} if self.source_name else {}),
                                **({"expires_at": self.expires_at} if self.expires_at is not None else {}),
                                **({} if error else {"ok_at": now}))


def last_error(fatal: str | None, failures: list[tuple[str, str]]) -> str | None:
    """The one sentence ``status`` and the daemon show for a mapping: why it did not sync, else the first
    item that failed."""
    if fatal or not failures:
        return fatal
    (where, why), more = failures[0], len(failures) - 1
    return f"{where}: {why}" + (f" (and {more} more failed)" if more else "")
