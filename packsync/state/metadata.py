"""The AI metadata of packsync's images (a description, keywords, a status) and the search over it.

Metadata arrives after an image is added, a pack read at a time, and is written as one statement per
pack; it is counted by status for the views and the metrics, and searched through the search index
(``search``, which the database keeps as the images change). The images themselves are ``images``'.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence

from sqlalchemy import bindparam, func, select, text, update

from packsync.model import ManagedImage, Metadata
from packsync.state import pg_search, search
from packsync.state.images import IMAGES, image, managed_by
from packsync.state.tables import UNSETTLED
from packsync.state.unit import Bulk, UnitOfWork
from packsync.state.uploads import batches

_UPDATE = Bulk(update(IMAGES).where(IMAGES.c.pack_id == bindparam("b_pack_id"),
                                    IMAGES.c.image_id == bindparam("b_image_id"))
               .values(meta_status=bindparam("b_status"), description=bindparam("b_description"),
                       keywords=bindparam("b_keywords"), meta_error=bindparam("b_error"),
                       meta_model=bindparam("b_model")),
               "b_status", "b_description", "b_keywords", "b_error", "b_model", "b_pack_id", "b_image_id")


class MetadataRepository:
    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    def update(self, pack_id: str, updates: Mapping[str, Metadata]) -> None:
        """Store new AI metadata for some of packsync's images in a pack."""
        self.unit.write(_UPDATE, [(meta.status, meta.description, json.dumps(list(meta.keywords)), meta.error,
                                   meta.model, pack_id, image_id) for image_id, meta in updates.items()])

    def pending(self, pack_ids: Collection[str]) -> dict[str, int]:
        """Per pack, how many of packsync's images wait for AI metadata (packs with none are left out)."""
        c = IMAGES.c
        return {pack_id: int(count) for batch in batches(pack_ids) for pack_id, count in self.unit.rows(
            select(c.pack_id, func.count()).where(text(UNSETTLED), c.pack_id.in_(batch))
            .group_by(c.pack_id))}

    def counts(self, pack_id: str, owner: str | None = None) -> dict[str, int]:
        """packsync's images in a pack by metadata status, counted by the database (the metrics' cheap read)."""
        c = IMAGES.c
        return {status: int(count) for status, count in self.unit.rows(
            select(c.meta_status, func.count()).where(c.pack_id == pack_id,
                                                      managed_by(None if owner is None else self.unit.key(owner)))
            .group_by(c.meta_status))}

    def search(self, words: Sequence[str], limit: int = 50) -> list[tuple[ManagedImage, str]]:
        """packsync's images whose name, description, keywords, files' folders or mapping's folder or pack
        name hold every word (as a word's start), best match first, each with the mapping that owns it."""
        label = self.unit.label
        return [(image(row, label), label(row[5]))
                for row in (pg_search if self.unit.shared else search).find(self.unit, words, limit)]

    def count(self, words: Sequence[str]) -> int:
        """How many of packsync's images ``search`` finds for these words, whatever its limit."""
        return pg_search.count(self.unit, words) if self.unit.shared else search.count(self.unit, words)
