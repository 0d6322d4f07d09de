"""The planner: what to do to make one pack mirror one source. Pure: no I/O, no clock.

Inputs are three views of the same mapping: what the source holds now (a ``Scan`` of content
items, whatever kind of source listed them), what packsync
recorded of its own work (``ManagedImage`` rows), and what the pack really holds (``RemotePack``).
The output is a ``MappingPlan``: small action values (``actions.py``) that the executor carries out,
or that ``run --dry-run`` prints — the pack created, remembered or renamed, adoptions, forgets, adds,
deletes, withheld deletes and the metadata to record. The rules, in order:

1. An image in the pack whose URL is one of packsync's own uploads but which the state does not
   record (a run died between the API's answer and the commit) is *adopted*, never added again.
   So is an image added some other way (the web app, another machine, a lost state) whose bytes —
   downloaded once — are a content the source holds: the oldest such image is adopted, and further
   copies are reported as duplicates and left alone (they are not packsync's).
2. A recorded image that is gone from the pack is *forgotten* (and added again if still wanted).
3. Each distinct content in the source needs exactly one image: missing ones are *added*, extra
   copies are *deleted* as duplicates, the oldest one stays.
4. Images of contents no longer in the source are *deleted* when the mapping deletes — but never
   contents the scan could not positively see gone (``Scan.keep``), and never contents another mapping
   into the pack still holds (of this machine, or another site sharing the state): that mapping owns the
   image now (*handed over*).
5. Images packsync did not add are the user's: deleted only with ``prune_foreign``. Images another
   mapping owns in the same pack are neither: that mapping's to delete; their content is present.
6. A recorded image whose upload was prepared with another recipe than the mapping's now (``strip``
   turned on, say) is checked against what the new recipe makes of its file (``prepared``, observed):
   the same changes give the same bytes, and the record just takes the new recipe; other changes
   *replace* the image — the new one added, then the old one deleted (a delete like any other, under
   the safety stops; a replacement whose delete is withheld is not added either: no copy twice).
7. Safety (``safety_stop``, the one place every safety stop is decided): nothing is deleted from a
   missing source packsync synced from or one that could not be scanned, even with ``--force``;
   deletes are withheld (and the mapping reported) when the source looks empty while the pack holds
   its images, or when they exceed ``max_delete``, unless ``--force``.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TypeVar

import msgspec

from packsync.engine.actions import (
    REPLACED,
    Action,
    AddImage,
    AdoptImage,
    CreatePack,
    DeleteImage,
    ForgetImage,
    HandOverImage,
    RecordMetadata,
    RecordRecipe,
    RememberPack,
    RenamePack,
    ReplaceImage,
    Upload,
    WithheldDelete,
)
from packsync.model import (
    Blob,
    ContentItem,
    ManagedImage,
    Metadata,
    PreparedContent,
    RemoteImage,
    RemotePack,
    Scan,
    Uploaded,
)
from packsync.recipe import AS_IS, Recipe

A = TypeVar("A", bound=Action)

MAX_FILE_NAME = 255


class MappingOptions(msgspec.Struct, frozen=True):
    delete: bool = True
    prune_foreign: bool = False
    max_delete: int | str = "50%"
    force: bool = False
    #: Deletes allowed past the safety stops without ``force``: at most this many (``allow-deletes``).
    allow: int = 0


class SourceFacts(msgspec.Struct, frozen=True):
    """What observing a mapping's source found that a safety stop depends on."""

    #: Why the source is not there (a folder missing, one that cannot be listed, every synced subfolder
    #: of a mapped folder gone at once): a missing source.
    missing: str | None = None
    #: Why its scan could not be made (``SourceUnavailable``).
    unreadable: str | None = None
    #: Whether packsync recorded files or images of it: then a missing source is not a mistake in the config.
    synced_before: bool = False


class MappingInput(msgspec.Struct, frozen=True):
    """Everything the planner needs to know about one mapping."""

    label: str
    pack_name: str
    scan: Scan
    managed: Sequence[ManagedImage]
    remote: RemotePack | None
    known_urls: Mapping[str, str]   # packsync's own upload URLs among the pack's unrecorded images: their content
    options: MappingOptions = MappingOptions()
    others: Mapping[str, str] = msgspec.field(default_factory=dict)  # other mappings' images here: id -> content
    contents: Mapping[str, str] = msgspec.field(default_factory=dict)  # downloaded unrecorded images: url -> content
    unknown: int = 0  # unrecorded images whose content could not be learnt this time (it may pass)
    #: How many images the mapping manages in the whole pack, when ``managed`` holds only some of them (a
    #: plan of changed paths): ``max_delete`` is a share of them all.
    managed_in_pack: int | None = None
    remember: RememberPack | None = None  # the pack the resolver found, when the state does not know it yet
    gone_pack: str | None = None  # the remembered pack found deleted: its records go once a new one exists
    renamed: RenamePack | None = None  # a renamed subfolder taking over its old name's records and pack
    recipe: Recipe = AS_IS  # what is done to a file's bytes before upload
    #: What recipes make of contents, by (content, recipe key), where observing learnt it: the mapping's
    #: recipe for the contents of images made with another, and for the contents to add (their uploaded
    #: bytes are how an image in the pack is recognised as theirs).
    prepared: Mapping[tuple[str, str], PreparedContent] = msgspec.field(default_factory=dict)
    #: The recipe (its key) that made the bytes of each of ``known_urls`` ('' or missing: the file as it is).
    known_recipes: Mapping[str, str] = msgspec.field(default_factory=dict)
    #: Contents of the mapping's images that another mapping into the pack (of any site) holds in its
    #: source, each with that mapping as the state keys it: such an image is handed over, never deleted.
    held_elsewhere: Mapping[str, str] = msgspec.field(default_factory=dict)


class MappingPlan(msgspec.Struct):
    """One mapping's actions, in the order the executor takes them within a phase, and what the plan
    found worth a word without anything to do about it."""

    label: str
    pack_name: str
    pack_id: str | None
    actions: list[Action] = msgspec.field(default_factory=list)
    duplicates: list[RemoteImage] = msgspec.field(default_factory=list)  # foreign copies of a content already here
    waiting: list[AddImage] = msgspec.field(default_factory=list)  # adds held back until unknown images are read
    safety: str | None = None
    #: How many deletes (and replacements) the safety stops weighed: what a stop withholds, and what
    #: ``allow-deletes`` then approves (a duplicate's delete is never weighed: a copy stays).
    weighed: int = 0

    def of(self, kind: type[A]) -> list[A]:
        """The actions of exactly this class."""
        return [action for action in self.actions if type(action) is kind]

    @property
    def adds(self) -> list[AddImage]:
        """Every image to add, replacements among them."""
        return [action for action in self.actions if isinstance(action, AddImage)]

    @property
    def replacements(self) -> list[ReplaceImage]:
        return self.of(ReplaceImage)

    @property
    def adopts(self) -> list[AdoptImage]:
        return self.of(AdoptImage)

    @property
    def forgets(self) -> list[ForgetImage]:
        return self.of(ForgetImage)

    @property
    def deletes(self) -> list[DeleteImage]:
        return self.of(DeleteImage)

    @property
    def withheld(self) -> list[WithheldDelete]:
        return self.of(WithheldDelete)

    @property
    def create_pack(self) -> bool:
        return bool(self.of(CreatePack))

    @property
    def mutations(self) -> int:
        return len(self.adds) + len(self.replacements) + len(self.deletes) + len(self.of(CreatePack)) \
            + len(self.of(RenamePack))

    @property
    def settled(self) -> bool:
        """Nothing to do, to hold back, to report or to record: the mapping is a mirror of its source."""
        return not (any(action.work for action in self.actions) or self.duplicates or self.waiting or self.safety)


class Plan(msgspec.Struct):
    """Every mapping's actions, the uploads they need (one per content), and the URLs of contents
    already in storage."""

    mappings: list[MappingPlan]
    uploads: list[Upload]
    urls: dict[str, Uploaded] = msgspec.field(default_factory=dict)

    @property
    def mutations(self) -> int:
        return len(self.uploads) + sum(m.mutations for m in self.mappings)

    def actions(self) -> Iterator[Action]:
        """Every action, the uploads first (what ``run --dry-run --json`` lists)."""
        yield from self.uploads
        for mapping in self.mappings:
            yield from mapping.actions


def file_name_for(rel_path: str) -> str:
    """The image's display name: the file's name, printable, within the API's 255 characters."""
    name = PurePosixPath(rel_path).name
    name = "".join(" " if unicodedata.category(c).startswith("C") else c for c in name).strip() or "image"
    if len(name) <= MAX_FILE_NAME:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and 0 < len(ext) <= 10:
        return stem[: MAX_FILE_NAME - len(ext) - 1] + "." + ext
    return name[:MAX_FILE_NAME]


def _name(item: ContentItem) -> str:
    return item.name or item.key


def metadata_updates(managed: Iterable[ManagedImage], current: Mapping[str, Metadata]) -> dict[str, Metadata]:
    """The recorded images whose AI metadata the pack now reports differently, with the new metadata.

    Settled metadata (completed or failed) is final, so for a settled record only a change of status
    counts: the records need not carry their descriptions to be compared.
    """
    updates = {}
    for image in managed:
        new = current.get(image.image_id)
        if new is None or new == image.metadata:
            continue
        if not image.metadata.settled or new.status != image.metadata.status:
            updates[image.image_id] = new
    return updates


def delete_limit(max_delete: int | str, managed: int) -> int:
    """How many deletes one run may make in a pack where packsync manages ``managed`` images.

    A percentage always allows at least one delete, so that removing one file from a small folder
    does not need ``--force``; an explicit count is taken as it is (0 means never without --force).
    """
    if isinstance(max_delete, int):
        return max_delete
    return max(1, math.floor(managed * float(max_delete.removesuffix("%")) / 100))


def plan_mapping(source: MappingInput) -> MappingPlan:
    """Decide the actions that make ``source.remote`` mirror ``source.scan``."""
    remote = source.remote
    plan = MappingPlan(source.label, source.pack_name, remote.pack_id if remote else None)
    plan.actions += _pack_actions(source)
    wanted: dict[str, ContentItem] = {}
    for item in sorted(source.scan.items, key=lambda i: i.key):
        wanted.setdefault(item.sha256, item)
    remote_images = remote.images if remote else ()
    present = {image.image_id for image in remote_images}
    plan.actions += [ForgetImage(source.label, image) for image in source.managed if image.image_id not in present]
    metadata = metadata_updates(source.managed, {image.image_id: image.metadata for image in remote_images})
    if remote and metadata:
        plan.actions.append(RecordMetadata(source.label, remote.pack_id, metadata))

    walk = _Walk(source, wanted, plan)
    for seen in remote_images:
        walk.image(seen)
    walk.replaced_already()
    deletes = walk.deletes
    if source.options.prune_foreign:
        deletes += [DeleteImage(source.label, image.image_id, image.url, "not in the folder (prune_foreign)")
                    for image in walk.foreign]

    adds = [_add(source, item, walk.replaced.get(sha256)) for sha256, item in wanted.items() if sha256 not in walk.kept]
    if source.unknown:  # any of those images may hold what would be added: adding waits for their bytes
        plan.waiting, adds = adds, []
    plan.actions += adds

    managed = len(walk.live) if source.managed_in_pack is None else source.managed_in_pack
    scan = source.scan
    plan.weighed = sum(d.reason != "duplicate" for d in deletes) + len(walk.replaced)
    plan.safety = safety_stop(SourceFacts(), Deletes(
        scan.source, plan.weighed, not scan.items and not scan.problems, managed,
        managed + (len(walk.foreign) if source.options.prune_foreign else 0), replaced=len(walk.replaced)),
        source.options)
    plan.actions += [WithheldDelete(**msgspec.structs.asdict(d)) for d in deletes] if plan.safety else deletes
    _replacing(plan, walk, source.recipe)
    return plan


def _pack_actions(source: MappingInput) -> list[Action]:
    """The pack renamed, created or remembered, as the mapping needs."""
    actions: list[Action] = [source.renamed] if source.renamed else []
    if source.remote is None:
        actions.append(CreatePack(source.label, source.pack_name, source.gone_pack))
    elif source.remember:
        actions.append(source.remember)
    return actions


def _add(source: MappingInput, item: ContentItem, old: ManagedImage | None) -> AddImage:
    """The add of ``item``'s content, or the replacement of ``old`` (made with another recipe) by it."""
    name = _uploaded_name(item, source.recipe)
    if old is None:
        return AddImage(source.label, item, name, source.recipe)
    return ReplaceImage(source.label, item, name, source.recipe, old.image_id, old.url, old.file_name)


def _replacing(plan: MappingPlan, walk: _Walk, recipe: Recipe) -> None:
    """Record the images the recipe makes anew as they are; a safety stop holds back the replacements (their
    deletes are listed as withheld)."""
    if plan.safety:
        held = plan.replacements
        plan.actions = [a for a in plan.actions if not isinstance(a, ReplaceImage)]
        plan.waiting = [a for a in plan.waiting if not isinstance(a, ReplaceImage)]
        plan.actions += [replacement.withheld() for replacement in held]
    if walk.same:
        plan.actions.append(RecordRecipe(plan.label, walk.pack_id, tuple(walk.same), recipe.key))


def _uploaded_name(item: ContentItem, recipe: Recipe) -> str:
    """The image's name: the file's, with a converted file's extension made ``.jpg``."""
    name = file_name_for(_name(item))
    if not recipe.converts(item.content_type):
        return name
    stem, dot, _ext = name.rpartition(".")
    return file_name_for(f"{stem if dot else name}.jpg")


class _Walk:
    """One pass over the pack in its own order (oldest first): the oldest image of a content stays,
    whoever owns it, so two mappings sharing a pack agree on which copy is the duplicate."""

    def __init__(self, source: MappingInput, wanted: dict[str, ContentItem], plan: MappingPlan) -> None:
        self.source, self.wanted, self.plan = source, wanted, plan
        self.pack_id = source.remote.pack_id if source.remote else ""
        self.recorded = {image.image_id: image for image in source.managed}
        self.live: list[ManagedImage] = []
        self.foreign: list[RemoteImage] = []
        self.kept: set[str] = set()
        self.deletes: list[DeleteImage] = []
        self.replaced: dict[str, ManagedImage] = {}  # content -> the image (another recipe's) its add replaces
        self.same: list[str] = []  # images the mapping's recipe makes anew as they are
        self.recipe = recipe = source.recipe.key
        # The contents whose uploads the mapping's recipe made, by the hash of the bytes uploaded: several
        # when files differ only in what the recipe strips (the same photo tagged at two places).
        self.uploaded: dict[str, list[str]] = {}
        for (sha, key), made in sorted(source.prepared.items()):
            if key == recipe and made.uploaded_as and sha in wanted:
                self.uploaded.setdefault(made.uploaded_as, []).append(sha)
        # Contents some image in the pack already holds as packsync's: a foreign copy of one is not adopted.
        self.held = {self.recorded[i.image_id].sha256 if i.image_id in self.recorded
                     else source.others.get(i.image_id) or source.known_urls.get(i.url)
                     for i in (source.remote.images if source.remote else ())}

    def image(self, seen: RemoteImage) -> None:
        source = self.source
        if seen.image_id in source.others:
            self.kept.add(source.others[seen.image_id])
            return
        image = self.recorded.get(seen.image_id)
        if image is None and seen.url in source.known_urls:  # our upload, added but never recorded
            image = self._adopt(seen, source.known_urls[seen.url], recovered=True)
        if image is None and seen.url in source.contents:  # not ours, but the bytes of an item we hold
            made = self.uploaded.get(source.contents[seen.url], [source.contents[seen.url]])
            sha256 = next((sha for sha in made if sha not in self.kept and sha not in self.held), made[0])
            if sha256 in self.kept or sha256 in self.held:
                self.plan.duplicates.append(seen)
            elif sha256 in self.wanted:
                image = self._adopt(seen, sha256, recovered=False)
        if image is None:
            self.foreign.append(seen)
        else:
            self._keep_or_delete(image)

    def _adopt(self, seen: RemoteImage, sha256: str, recovered: bool) -> ManagedImage:
        name = _name(self.wanted[sha256]) if sha256 in self.wanted else seen.url
        # Bytes its recipe made are the recipe's; the file's own bytes are the file as it is.
        recipe = self.source.known_recipes.get(seen.url, "") if recovered else self.recipe \
            if sha256 in self.uploaded.get(self.source.contents.get(seen.url, ""), ()) else ""
        image = ManagedImage(self.pack_id, seen.image_id, sha256, seen.url, file_name_for(name), self.source.label,
                             seen.metadata, recipe)
        self.plan.actions.append(AdoptImage(self.source.label, image, recovered))
        return image

    def _keep_or_delete(self, image: ManagedImage) -> None:
        self.live.append(image)
        source = self.source
        if image.sha256 in self.kept:
            self.deletes.append(DeleteImage(source.label, image.image_id, image.url, "duplicate", image.sha256,
                                            image.file_name))
        elif image.sha256 in self.wanted and not self._as_recipe_makes(image):
            self.replaced[image.sha256] = image
        elif image.sha256 in self.wanted or image.sha256 in source.scan.keep or not source.options.delete:
            self.kept.add(image.sha256)
        elif image.sha256 in source.held_elsewhere:
            self.kept.add(image.sha256)
            self.plan.actions.append(HandOverImage(source.label, image.pack_id, image.image_id,
                                                   source.held_elsewhere[image.sha256], image.file_name))
        else:
            self.deletes.append(DeleteImage(source.label, image.image_id, image.url, "file removed", image.sha256,
                                            image.file_name))

    def replaced_already(self) -> None:
        """An image whose replacement is in the pack already (its delete failed last time) goes now."""
        for sha, old in list(self.replaced.items()):
            if sha in self.kept:
                del self.replaced[sha]
                self.deletes.append(DeleteImage(self.source.label, old.image_id, old.url, REPLACED, sha,
                                                old.file_name))

    def _as_recipe_makes(self, image: ManagedImage) -> bool:
        """Whether the image holds what the mapping's recipe makes of its content (as far as is known: a
        file the recipe could not be judged on keeps its image). The same changes make the same bytes."""
        recipe = self.recipe
        if image.recipe == recipe:
            return True
        now = self.source.prepared.get((image.sha256, recipe))
        if now is None or now.problem is not None:  # (observing reported a file it cannot prepare)
            return True
        before = () if image.recipe == "" else getattr(self.source.prepared.get((image.sha256, image.recipe)),
                                                       "changes", None)
        if now.changes == before:
            self.same.append(image.image_id)
            return True
        return False


class Deletes(msgspec.Struct, frozen=True):
    """What a safety stop weighs of the deletes a plan would make, whichever way it mirrors: ``count``
    things deleted of the ``managed`` ones that came from ``source`` into ``place`` (``deletable`` of them
    may be deleted at all), and whether the source holds nothing now (``empty``)."""

    source: str
    count: int
    empty: bool
    managed: int
    deletable: int
    noun: str = "image"
    place: str = "in the pack"
    #: What an empty source may mean, to say with the stop.
    hint: str = "an unmounted disk? an emptied pack?"
    #: How many of ``count`` are images replaced because the recipe changed (the rest are deleted).
    replaced: int = 0


def safety_stop(facts: SourceFacts, deletes: Deletes | None = None,
                options: MappingOptions | None = None) -> str | None:
    """Why nothing (or none of these deletes) may be deleted, or None when they may: every safety stop,
    for a sync into a pack and for a pull into a folder alike.

    A missing source packsync synced from, and one that could not be read whole, delete nothing even
    with ``--force`` (what is not there cannot be mirrored). Otherwise ``--force`` lifts the rest: an
    empty source while the destination holds what came from it, and more deletes than ``max_delete``
    (a share of what may be deleted).
    """
    if facts.missing is not None and facts.synced_before:
        return f"{facts.missing}, but packsync synced files from it; nothing is deleted (is a disk unmounted?)"
    if facts.unreadable is not None:
        return f"{facts.unreadable}; nothing is deleted"
    if deletes is None or options is None or not deletes.count or options.force or deletes.count <= options.allow:
        return None
    if deletes.empty:
        return (f"{deletes.source} is empty but {_counted(deletes.managed, deletes.noun)} {deletes.place} came from "
                f"it; refusing to delete them ({deletes.hint}). Re-run with --force if you emptied it")
    limit = delete_limit(options.max_delete, deletes.deletable)
    if deletes.count > limit:
        share = options.max_delete
        allowed = f"{share}: at most {limit}" if isinstance(share, int) else \
            f"{share} of the {_counted(deletes.deletable, deletes.noun)} it may delete here: at most {limit}"
        return (f"this run would {_deleting(deletes)}, more than max_delete allows "
                f"({allowed}); re-run with --force to allow it, or with --dry-run to list them")
    return None


def _deleting(deletes: Deletes) -> str:
    """What a plan's deletes are, in words: replacements (the recipe changed) told apart."""
    if not deletes.replaced:
        return f"delete {_counted(deletes.count, deletes.noun)}"
    rest = deletes.count - deletes.replaced
    return (f"replace {_counted(deletes.replaced, deletes.noun)} (strip, max_edge or convert_to_jpeg changed what "
            "is uploaded)" + (f" and delete {rest}" if rest else ""))


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def uploaded_as(add: AddImage, prepared: Mapping[tuple[str, str], PreparedContent]) -> str | None:
    """The hash of the bytes ``add`` uploads, where it is known before they are prepared."""
    if add.recipe.as_is:
        return add.sha256
    known = prepared.get((add.sha256, add.recipe.key))
    return known.uploaded_as if known else None


def plan_uploads(mappings: list[MappingPlan], blobs: Mapping[tuple[str, str], Blob],
                 prepared: Mapping[tuple[str, str], PreparedContent] | None = None) -> Plan:
    """Complete mapping plans with the uploads they need (one per content, recipe and upload name); ``blobs``
    (by the hash of the bytes sent and the name) covers at least the uploads of their adds' contents whose
    bytes are known (``uploaded_as``)."""
    uploads: dict[str, Upload] = {}
    urls: dict[str, Uploaded] = {}
    known = prepared or {}
    for mapping in mappings:
        for add in mapping.adds:
            upload = uploaded_as(add, known)
            blob = blobs.get((upload, add.upload_name)) if upload else None
            if upload and blob and blob.uploaded and blob.url:
                made = known.get((add.sha256, add.recipe.key))
                urls[add.upload_key] = Uploaded(blob.url, upload, made.changes if made else ())
            elif add.upload_key not in uploads:
                uploads[add.upload_key] = Upload(add.mapping, add, blob)
    return Plan(mappings, list(uploads.values()), urls)
