"""The images packsync added to packs (or adopted), and which mapping owns each.

Only these images are packsync's to delete, each by its owner: a mapping manages its own and those
recorded with the owner '' (before images had one). Packs can be large, so images come out as plain
``ManagedImage`` values, and settled metadata can be left out of a read (``details=False``). The AI
metadata's updates and the search index are ``metadata``'s; this repository only writes it with the
image it records. It reads the file cache only to say where an image's content is in its owner's source
(``sources_of``: how a pull names what this state pushed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, bindparam, case, delete, func, or_, select, text, true, update

from packsync.model import METADATA_SETTLED, ManagedImage, Metadata
from packsync.state.dialects import upsert
from packsync.state.tables import UNSETTLED, FileRow, ImageRow, MappingRow, table
from packsync.state.unit import Bulk, UnitOfWork
from packsync.state.uploads import batches

IMAGES, FILES, MAPPINGS = table(ImageRow), table(FileRow), table(MappingRow)
#: The columns an image is read from, in ``image``'s order.
COLUMNS = tuple(IMAGES.c[name] for name in ("pack_id", "image_id", "sha256", "url", "file_name", "owner",
                                            "meta_status", "description", "keywords", "meta_error", "meta_model",
                                            "recipe"))
SETTLED = tuple(sorted(METADATA_SETTLED))

# An upsert, never a replace: a replaced row would leave the search index (kept by triggers) holding the
# old text.
_RECORD = Bulk(upsert(IMAGES), *IMAGES.c.keys())
_OWNED = or_(bindparam("any_owner", type_=String).is_(None), IMAGES.c.owner == bindparam("owner"))
_FORGET_ALL = Bulk(delete(IMAGES).where(IMAGES.c.pack_id == bindparam("pack_id"), _OWNED),
                   "pack_id", "any_owner", "owner")
_FORGET = Bulk(delete(IMAGES).where(IMAGES.c.pack_id == bindparam("pack_id"), _OWNED,
                                    IMAGES.c.image_id == bindparam("image_id")), "pack_id", "any_owner", "owner",
               "image_id")
_SET_RECIPE = Bulk(update(IMAGES).where(IMAGES.c.pack_id == bindparam("pack_id"),
                                        IMAGES.c.image_id == bindparam("image_id")).values(recipe=bindparam("to")),
                   "to", "pack_id", "image_id")
_HAND_OVER = Bulk(update(IMAGES).where(IMAGES.c.pack_id == bindparam("pack_id"),
                                       IMAGES.c.image_id == bindparam("image_id")).values(owner=bindparam("to")),
                  "to", "pack_id", "image_id")

#: Settled metadata read without its details is the same value for every image: share it.
_BARE = {status: Metadata(status) for status in METADATA_SETTLED}


def image(row: Sequence[Any], label: Callable[[str], str]) -> ManagedImage:
    """An image from the columns of its row (``COLUMNS``), its owner as ``label`` names it (the unit's: this
    site's sources by their labels). Its keywords are a JSON list (``rows`` saw to that); one that is not
    text counts as none, as in an answer (``answers.metadata``)."""
    pack_id, image_id, sha256, url, file_name, owner, status, description, keywords, error, model, recipe = row
    if description is None and error is None and keywords == "[]" and model is None:
        metadata = _BARE.get(status) or Metadata(status)
    else:
        words = tuple(json.loads(keywords))
        if not all(word.__class__ is str for word in words):
            words = tuple(word for word in words if word.__class__ is str)
        metadata = Metadata(status, description, words, error, model)
    return ManagedImage(pack_id, image_id, sha256, url, file_name, label(owner), metadata, recipe)


def managed_by(owner: str | None) -> ColumnElement[bool]:
    """The images a mapping manages: its own and those of no known owner (all, for None)."""
    return true() if owner is None else IMAGES.c.owner.in_((owner, ""))


class ImageRepository:
    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    def managed(self, pack_id: str, owner: str | None = None, details: bool = True) -> list[ManagedImage]:
        """The images packsync added to this pack — all, or ``owner``'s — as plain values: packs can be large.

        Without ``details``, settled metadata comes as its status alone: syncing needs no more, since
        settled metadata does not change, and a large pack's descriptions are most of its weight.
        """
        columns: tuple[Any, ...] = COLUMNS
        if not details:
            unsettled = IMAGES.c.meta_status.not_in(SETTLED)
            c = IMAGES.c
            columns = (*COLUMNS[:7], case((unsettled, c.description)), case((unsettled, c.keywords), else_="[]"),
                       case((unsettled, c.meta_error)), case((unsettled, c.meta_model)), c.recipe)
        rows = self.unit.rows(select(*columns).where(IMAGES.c.pack_id == pack_id, managed_by(self._key(owner))))
        return [self._image(row) for row in rows]

    def _key(self, owner: str | None) -> str | None:
        return None if owner is None else self.unit.key(owner)

    def _image(self, row: Sequence[Any]) -> ManagedImage:
        """An image from its row (``COLUMNS``), its owner as this site names it."""
        return image(row, self.unit.label)

    def unsettled(self, pack_id: str) -> list[ManagedImage]:
        """The images packsync added to this pack (any owner's) whose AI metadata is still to come: read
        through their own index, so a pack of 100,000 settled images costs what waits."""
        return [self._image(row) for row in self.unit.rows(select(*COLUMNS).where(IMAGES.c.pack_id == pack_id,
                                                                                  text(UNSETTLED)))]

    def others(self, pack_id: str, owner: str) -> dict[str, str]:
        """The images other mappings own in this pack: image id → content."""
        c = IMAGES.c
        return {image_id: sha for image_id, sha in self.unit.rows(
            select(c.image_id, c.sha256).where(c.pack_id == pack_id, c.owner.not_in((self.unit.key(owner), ""))))}

    def count(self, pack_id: str, owner: str | None = None) -> int:
        return int(self.unit.rows(select(func.count()).select_from(IMAGES).where(
            IMAGES.c.pack_id == pack_id, managed_by(self._key(owner))))[0][0])

    def holding(self, pack_id: str, shas: Collection[str]) -> list[ManagedImage]:
        """The images of a pack (any owner's) that hold these contents, the oldest first (as the pack lists them)."""
        return [self._image(row) for batch in batches(shas) for row in self.unit.rows(
            select(*COLUMNS).where(IMAGES.c.pack_id == pack_id, IMAGES.c.sha256.in_(batch))
            .order_by(IMAGES.c.added_at))]

    def sources_of(self, pack_id: str) -> dict[str, tuple[str, str, str]]:
        """For each image packsync added to the pack (or adopted) whose owner's source still has a file
        holding its content: (the first such file's key, the image's name, its owner), by image id — how
        a pull names what this state pushed."""
        c, i = FILES.c, IMAGES.c  # (the file cache: what each owner's source holds now)
        rows = self.unit.rows(select(i.image_id, func.min(c.rel_path), i.file_name, i.owner)
                              .join(FILES, (c.root == i.owner) & (c.sha256 == i.sha256))
                              .where(i.pack_id == pack_id, c.problem.is_(None))
                              # (every column shown grouped: PostgreSQL refuses one that is not)
                              .group_by(i.image_id, i.file_name, i.owner))
        return {image_id: (path, name, self.unit.label(owner)) for image_id, path, name, owner in rows}

    def held_elsewhere(self, pack_id: str, owner: str, shas: Collection[str],
                       configured: Collection[str]) -> dict[str, str]:
        """Of these contents, those the source of another mapping into this pack holds as a good file, each
        with such a mapping (the first by key) as the state keys it: a mapping of this site's that is
        ``configured`` (a label), or any of another site's sharing the state."""
        f, m = FILES.c, MAPPINGS.c
        mine = [self.unit.key(label) for label in configured if label != owner]
        live = or_(f.root.in_(mine), ~self.unit.own(f.root)) if self.unit.site else f.root.in_(mine)
        return {sha: key for batch in batches(shas) for sha, key in self.unit.rows(
            select(f.sha256, func.min(f.root)).join(MAPPINGS, m.root == f.root)
            .where(m.pack_id == pack_id, f.root != self.unit.key(owner), live, f.sha256.in_(batch),
                   f.problem.is_(None))
            .group_by(f.sha256))} if mine or self.unit.site else {}

    def hand_over(self, pack_id: str, owners: Mapping[str, str]) -> None:
        """Make each of these images (by id) the image of another mapping (as the state keys it)."""
        self.unit.write(_HAND_OVER, [(to, pack_id, image_id) for image_id, to in owners.items()])

    def record(self, images: Iterable[ManagedImage]) -> None:
        """Record images packsync added (or adopted); committed at once, together."""
        now = time.time()
        self.unit.write(_RECORD, [
            (i.pack_id, i.image_id, i.sha256, i.url, i.file_name, i.metadata.status, i.metadata.description,
             json.dumps(list(i.metadata.keywords)), i.metadata.error, now, self.unit.key(i.owner), i.metadata.model,
             i.recipe)
            for i in images])

    def set_recipe(self, pack_id: str, image_ids: Iterable[str], recipe: str) -> None:
        """Record that these images are what ``recipe`` makes of their content (it gives the bytes they hold)."""
        self.unit.write(_SET_RECIPE, [(recipe, pack_id, image_id) for image_id in image_ids])

    def forget(self, pack_id: str, image_ids: Iterable[str] | None = None, *, owner: str | None = None) -> None:
        """Drop image records of ``pack_id``: the given ones, or all of them (of ``owner``, if given)."""
        owner = self._key(owner)
        if image_ids is None:
            self.unit.write(_FORGET_ALL, [(pack_id, owner, owner)])
        else:
            self.unit.write(_FORGET, [(pack_id, owner, owner, image_id) for image_id in image_ids])
