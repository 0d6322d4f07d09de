"""What the syncs did, newest first, for the page's feed: a short log of images added, deleted and
replaced, packs renamed and items that failed, by name. Only the newest ``KEPT`` are kept."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import bindparam, delete, insert, select

from packsync.state.records import ActivityRecord
from packsync.state.tables import ActivityRow, table
from packsync.state.unit import Bulk, UnitOfWork

ACTIVITY = table(ActivityRow)
#: How many entries the feed keeps.
KEPT = 500
_COLUMNS = tuple(ACTIVITY.c[name] for name in ActivityRecord.__struct_fields__)
_ADD = Bulk(insert(ACTIVITY).values({name: bindparam(name) for name in ActivityRecord.__struct_fields__}),
            *ActivityRecord.__struct_fields__)
_TRIM = delete(ACTIVITY).where(ACTIVITY.c.id.not_in(select(ACTIVITY.c.id).order_by(ACTIVITY.c.id.desc()).limit(KEPT)))


class ActivityRepository:
    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    def record(self, root: str, events: Iterable[tuple[str, str, str | None]]) -> None:
        """Add ``(kind, name, detail)`` entries for the mapping ``root``, and forget those past ``KEPT``."""
        now = time.time()
        rows = [(now, self.unit.key(root), kind, name, detail) for kind, name, detail in events]
        if rows:
            with self.unit.transaction():
                self.unit.write(_ADD, rows)
                self.unit.run(_TRIM)

    def recent(self, limit: int = 20, root: str | None = None) -> list[ActivityRecord]:
        """The newest ``limit`` entries (of the mapping ``root`` only, when given), newest first."""
        query = select(*_COLUMNS).order_by(ACTIVITY.c.id.desc()).limit(limit)
        if root is not None:
            query = query.where(ACTIVITY.c.root == self.unit.key(root))
        else:  # (this site's: what its page shows)
            query = query.where(self.unit.own(ACTIVITY.c.root))
        return [ActivityRecord(at, self.unit.label(key), kind, name, detail)
                for at, key, kind, name, detail in self.unit.rows(query)]
