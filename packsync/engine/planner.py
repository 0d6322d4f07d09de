"""The planner: what to do to make one pack mirror one source. Pure: no I/O, no clock.

Inputs are three views of the same mapping: what the source holds now (a ``Scan`` of content
items, whatever kind of source listed them), what packsync
recorded of its own work (``ManagedImage`` rows), and what the pack really holds (``RemotePack``).
The output is a ``MappingPlan``: small action values that the executor carries out, or that
``run --dry-run`` prints. The rules, in order:

1. An image in the pack whose URL is one of packsync's own uploads but which the state does not
   record (a run died between the API's answer and the commit) is *adopted*, never added again.
   So is an image added some other way (the web app, another machine, a lost state) whose bytes —
   downloaded once — are a content the source holds: the oldest such image is adopted, and further
   copies are reported as duplicates and left alone (they are not packsync's).
2. A recorded image that is gone from the pack is *forgotten* (and added again if still wanted).
3. Each distinct content in the source needs exactly one image: missing ones are *added*, extra
   copies are *deleted* as duplicates, the oldest one stays.
4. Images of contents no longer in the source are *deleted* when the mapping deletes — but never
   contents the scan could not positively see gone (``Scan.keep``).
5. Images packsync did not add are the user's: deleted only with ``prune_foreign``. Images another
   mapping owns in the same pack are neither: that mapping's to delete; their content is present.
6. Safety: deletes are withheld (and the mapping reported) when the source looks empty while the
   pack holds its images, or when they exceed ``max_delete``; ``--force`` overrides both.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

import msgspec

from packsync.model import Blob, ContentItem, ManagedImage, Metadata, RemoteImage, RemotePack, Scan

MAX_FILE_NAME = 255


class AddImage(msgspec.Struct, frozen=True):
    """Add the content of ``item`` (of the mapping labelled ``mapping``) to the pack, as ``file_name``."""

    mapping: str
    item: ContentItem
    file_name: str

    @property
    def sha256(self) -> str:
        return self.item.sha256


class Upload(msgspec.Struct, frozen=True):
    """Put some content in Genviral's storage, resuming ``resume`` (a URL obtained, not yet used)."""

    add: AddImage
    resume: Blob | None = None


class AdoptImage(msgspec.Struct, frozen=True):
    """Record an image already in the pack as packsync's: its own upload (``recovered``), or an image
    holding the same bytes as an item of the source."""

    image: ManagedImage
    recovered: bool = True


class ForgetImage(msgspec.Struct, frozen=True):
    """Drop the record of an image that is no longer in the pack."""

    image: ManagedImage


class DeleteImage(msgspec.Struct, frozen=True):
    """Delete an image from the pack; ``reason`` says why in a few words."""

    image_id: str
    url: str
    reason: str
    sha256: str | None = None


class MappingOptions(msgspec.Struct, frozen=True):
    delete: bool = True
    prune_foreign: bool = False
    max_delete: int | str = "50%"
    force: bool = False


class MappingInput(msgspec.Struct, frozen=True):
    """Everything the planner needs to know about one mapping."""

    label: str
    pack_name: str
    scan: Scan
    managed: Sequence[ManagedImage]
    remote: RemotePack | None
    known_urls: Mapping[str, str]   # packsync's own upload URLs among the pack's unrecorded images
    options: MappingOptions = MappingOptions()
    others: Mapping[str, str] = msgspec.field(default_factory=dict)  # other mappings' images here: id -> content
    contents: Mapping[str, str] = msgspec.field(default_factory=dict)  # downloaded unrecorded images: url -> content
    unknown: int = 0  # unrecorded images whose content could not be learnt this time (it may pass)


class MappingPlan(msgspec.Struct):
    label: str
    pack_name: str
    pack_id: str | None
    adds: list[AddImage] = msgspec.field(default_factory=list)
    adopts: list[AdoptImage] = msgspec.field(default_factory=list)
    forgets: list[ForgetImage] = msgspec.field(default_factory=list)
    deletes: list[DeleteImage] = msgspec.field(default_factory=list)
    withheld: list[DeleteImage] = msgspec.field(default_factory=list)
    duplicates: list[RemoteImage] = msgspec.field(default_factory=list)  # foreign copies of a content already here
    waiting: list[AddImage] = msgspec.field(default_factory=list)  # adds held back until unknown images are read
    metadata: dict[str, Metadata] = msgspec.field(default_factory=dict)
    safety: str | None = None

    @property
    def create_pack(self) -> bool:
        return self.pack_id is None

    @property
    def mutations(self) -> int:
        return len(self.adds) + len(self.deletes) + int(self.create_pack)

    @property
    def settled(self) -> bool:
        """Nothing to do, to hold back, to report or to record: the mapping is a mirror of its source."""
        return not (self.create_pack or self.adds or self.adopts or self.forgets or self.deletes or self.withheld
                    or self.duplicates or self.waiting or self.metadata or self.safety)


class Plan(msgspec.Struct):
    """Every mapping's actions, the uploads they need (one per content), and the URLs of contents
    already in storage."""

    mappings: list[MappingPlan]
    uploads: list[Upload]
    urls: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def mutations(self) -> int:
        return len(self.uploads) + sum(m.mutations for m in self.mappings)


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


def metadata_updates(managed: Iterable[ManagedImage], remote: Iterable[RemoteImage]) -> dict[str, Metadata]:
    """The recorded images whose AI metadata the pack now reports differently, with the new metadata.

    Settled metadata (completed or failed) is final, so for a settled record only a change of status
    counts: the records need not carry their descriptions to be compared.
    """
    current = {image.image_id: image.metadata for image in remote}
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
    wanted: dict[str, ContentItem] = {}
    for item in sorted(source.scan.items, key=lambda i: i.key):
        wanted.setdefault(item.sha256, item)

    pack_id = remote.pack_id if remote else ""
    remote_images = remote.images if remote else ()
    present = {image.image_id for image in remote_images}
    recorded = {image.image_id: image for image in source.managed}
    plan.forgets = [ForgetImage(image) for image in source.managed if image.image_id not in present]
    plan.metadata = metadata_updates(source.managed, remote_images)

    # One pass in the pack's own order (oldest first): the oldest image of a content stays, whoever owns
    # it, so two mappings sharing a pack agree on which copy is the duplicate.
    live: list[ManagedImage] = []
    foreign: list[RemoteImage] = []
    kept: set[str] = set()
    deletes: list[DeleteImage] = []
    # Contents some image in the pack already holds as packsync's: a foreign copy of one is not adopted.
    held = {recorded[i.image_id].sha256 if i.image_id in recorded else source.others.get(i.image_id)
            or source.known_urls.get(i.url) for i in remote_images}
    for seen in remote_images:
        if seen.image_id in source.others:
            kept.add(source.others[seen.image_id])
            continue
        image = recorded.get(seen.image_id)
        if image is None and seen.url in source.known_urls:  # our upload, added but never recorded
            sha256 = source.known_urls[seen.url]
            name = _name(wanted[sha256]) if sha256 in wanted else seen.url
            image = ManagedImage(pack_id, seen.image_id, sha256, seen.url, file_name_for(name), source.label,
                                 seen.metadata)
            plan.adopts.append(AdoptImage(image))
        if image is None and seen.url in source.contents:  # not ours, but the bytes of an item we hold
            sha256 = source.contents[seen.url]
            if sha256 in kept or sha256 in held or sha256 not in wanted:
                if sha256 in kept or sha256 in held:
                    plan.duplicates.append(seen)
                foreign.append(seen)
                continue
            image = ManagedImage(pack_id, seen.image_id, sha256, seen.url, file_name_for(_name(wanted[sha256])),
                                 source.label, seen.metadata)
            plan.adopts.append(AdoptImage(image, recovered=False))
        if image is None:
            foreign.append(seen)
            continue
        live.append(image)
        if image.sha256 in kept:
            deletes.append(DeleteImage(image.image_id, image.url, "duplicate", image.sha256))
        elif image.sha256 in wanted or image.sha256 in source.scan.keep or not source.options.delete:
            kept.add(image.sha256)
        else:
            deletes.append(DeleteImage(image.image_id, image.url, "file removed", image.sha256))
    if source.options.prune_foreign:
        deletes += [DeleteImage(image.image_id, image.url, "not in the folder (prune_foreign)")
                    for image in foreign]

    for sha256, item in wanted.items():
        if sha256 not in kept:
            plan.adds.append(AddImage(source.label, item, file_name_for(_name(item))))
    if source.unknown:  # any of those images may hold what would be added: adding waits for their bytes
        plan.waiting, plan.adds = plan.adds, []

    plan.safety = _safety(source, deletes, managed=len(live),
                          deletable=len(live) + (len(foreign) if source.options.prune_foreign else 0))
    if plan.safety:
        plan.withheld = deletes
    else:
        plan.deletes = deletes
    return plan


def _safety(source: MappingInput, deletes: list[DeleteImage], managed: int, deletable: int) -> str | None:
    """Why these deletes must not run without ``--force``, or None when they may.

    ``managed`` images in the pack came from this mapping; ``deletable`` counts those and, with
    ``prune_foreign``, the foreign ones: a ``max_delete`` share is a share of what may be deleted.
    """
    if not deletes or source.options.force:
        return None
    removals = [d for d in deletes if d.reason != "duplicate"]
    if not removals:
        return None
    if not source.scan.items and not source.scan.problems:
        return (f"{source.scan.source} is empty but {_images(managed)} in the pack came from it; "
                "refusing to delete them (an unmounted disk? an emptied pack?). Re-run with --force if you emptied it")
    limit = delete_limit(source.options.max_delete, deletable)
    if len(removals) > limit:
        share = source.options.max_delete
        allowed = f"{share}: at most {limit}" if isinstance(share, int) else \
            f"{share} of the {_images(deletable)} it may delete here: at most {limit}"
        return (f"this run would delete {_images(len(removals))}, more than max_delete allows ({allowed}); "
                "re-run with --force to allow it, or with --dry-run to list them")
    return None


def _images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def plan_uploads(mappings: list[MappingPlan], blobs: Mapping[str, Blob]) -> Plan:
    """Complete mapping plans with the uploads they need; ``blobs`` covers at least their adds' contents."""
    uploads: dict[str, Upload] = {}
    urls: dict[str, str] = {}
    for mapping in mappings:
        for add in mapping.adds:
            blob = blobs.get(add.sha256)
            if blob and blob.uploaded and blob.url:
                urls[add.sha256] = blob.url
            elif add.sha256 not in uploads:
                uploads[add.sha256] = Upload(add, blob)
    return Plan(mappings, list(uploads.values()), urls)
