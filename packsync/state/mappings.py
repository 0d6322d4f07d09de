"""What the state remembers of the mappings and of the runs: each mapped source's pack and last sync,
the daemon's row, and the count of changes to what plans are made from.

A mapping is keyed by its source's label (a folder's path). A source renamed (a subfolder) takes all
that was recorded of it along (``move_source``), across the repositories' tables, in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from msgspec.structs import astuple, replace
from sqlalchemy import delete, func, select, update

from packsync.state.dialects import upsert
from packsync.state.records import DaemonRecord, MappingRecord
from packsync.state.tables import (
    ChangeCountRow,
    DaemonRow,
    FailedRow,
    FileRow,
    ImageRow,
    MappingRow,
    ProblemRow,
    SettledRow,
    SidecarRow,
    table,
)
from packsync.state.unit import Bulk, UnitOfWork

MAPPINGS, DAEMON, CHANGES = table(MappingRow), table(DaemonRow), table(ChangeCountRow)
#: The tables that hold rows of a source, by its label in ``root``.
_OF_A_SOURCE = tuple(table(model) for model in (FileRow, ProblemRow, FailedRow, SidecarRow, MappingRow))
_MAPPING_COLUMNS = tuple(MAPPINGS.c[name] for name in MappingRecord.__struct_fields__)
_DAEMON_COLUMNS = tuple(DAEMON.c[name] for name in DaemonRecord.__struct_fields__)
_SAVE_MAPPING = Bulk(upsert(MAPPINGS), *MappingRecord.__struct_fields__)
_SAVE_DAEMON = Bulk(upsert(DAEMON), "id", *DaemonRecord.__struct_fields__)


class MappingRepository:
    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    def get(self, source: str) -> MappingRecord | None:
        rows = self.unit.rows(select(*_MAPPING_COLUMNS).where(MAPPINGS.c.root == self.unit.key(source)))
        return self._record(rows[0]) if rows else None

    def _record(self, row: Sequence[Any]) -> MappingRecord:
        """A mapping's record from its row, its source as this site names it."""
        return MappingRecord(self.unit.label(row[0]), *row[1:])

    def under(self, folder: str) -> list[MappingRecord]:
        """The records of mappings whose source is a folder inside ``folder``."""
        prefix = self.unit.key(folder).rstrip("/") + "/"
        rows = self.unit.rows(select(*_MAPPING_COLUMNS).where(func.substr(MAPPINGS.c.root, 1, len(prefix)) == prefix))
        return [self._record(row) for row in rows]

    def save(self, source: str, **changes: Any) -> None:
        record = replace(self.get(source) or MappingRecord(source), **changes)
        self.unit.write(_SAVE_MAPPING, [(self.unit.key(record.root), *astuple(record)[1:])])

    def paused(self) -> set[str]:
        """The sources a person paused (``packsync pause``)."""
        return {self.unit.label(root) for (root,) in self.unit.rows(
            select(MAPPINGS.c.root).where(MAPPINGS.c.paused.is_not(None)))}

    def pause(self, sources: Collection[str], paused: bool) -> None:
        """Pause (or resume) syncing ``sources``, in one transaction."""
        with self.unit.transaction():
            for source in sources:
                self.save(source, paused=time.time() if paused else None)

    def move_source(self, old: str, new: str) -> None:
        """A source that was renamed (a subfolder): everything recorded of it is the new name's now."""
        self.move_sources({old: new})

    def move_sources(self, moves: Mapping[str, str]) -> None:
        """Sources renamed at once (old name → new name), in one transaction: in a swap, A's records become
        B's while B's become A's, so each goes through a name of its own first and none is overwritten."""
        with self.unit.transaction():
            key = self.unit.key
            staged = {old: f"{key(old)}\0moving" for old in moves}
            for old, passing in staged.items():
                self._move(key(old), passing)
            for old, new in moves.items():
                self._move(staged[old], key(new))

    def _move(self, old: str, new: str) -> None:
        settled, images = table(SettledRow), table(ImageRow)
        for rows in _OF_A_SOURCE:
            self.unit.run(delete(rows).where(rows.c.root == new))
            self.unit.run(update(rows).where(rows.c.root == old).values(root=new))
        self.unit.run(update(images).where(images.c.owner == old).values(owner=new))
        self.unit.run(delete(settled).where(settled.c.root.in_((old, new))))

    # -- the daemon --------------------------------------------------------------------------------

    def daemon(self) -> DaemonRecord | None:
        rows = self.unit.rows(select(*_DAEMON_COLUMNS).where(DAEMON.c.id == self.unit.daemon_id))
        return DaemonRecord(*rows[0]) if rows else None

    def save_daemon(self, **changes: Any) -> None:
        record = replace(self.daemon() or DaemonRecord(), **changes, updated_at=time.time())
        self.unit.write(_SAVE_DAEMON, [(self.unit.daemon_id, *astuple(record))])

    # -- changes -----------------------------------------------------------------------------------

    def changes(self) -> int:
        """How many times the rows a plan reads (``tables.PLANNED_FROM``) have changed: only ever grows
        (-1: not counted, as in a state of an older schema read as it is)."""
        rows = self.unit.rows(select(CHANGES.c["count"]).where(CHANGES.c.id == 0))
        return int(rows[0][0]) if rows else -1
