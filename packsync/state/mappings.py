"""What the state remembers of the mappings and of the runs: each mapped source's pack and last sync,
the daemon's row, and the count of changes to what plans are made from.

A mapping is keyed by its source's label (a folder's path). A source renamed (a subfolder) takes all
that was recorded of it along (``move_source``), across the repositories' tables, in one transaction.
In a state shared by several sites, ``of_sites`` reads the other sites' mappings (for ``status``): the
rows whose key another site qualified, which this site never writes.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec
from msgspec.structs import astuple, replace
from sqlalchemy import case, delete, func, or_, select, true, update

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
FILES, PROBLEMS = table(FileRow), table(ProblemRow)


class SiteMapping(msgspec.Struct, frozen=True):
    """Another site's mapping, as that site recorded it: ``record.root`` is its source as that site names it
    (``/srv/brand``, ``astria:12``); ``files`` how many files its last scan judged (the items, and the files
    it cannot sync, as ``status`` counts a mapping's files)."""

    site: str
    record: MappingRecord
    files: int


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

    def of_sites(self) -> dict[str, list[SiteMapping]]:
        """The mappings of the other sites sharing the state, by site name, each site's by source (none in
        a state of one machine's own: its keys are labels, not qualified by any site)."""
        if not self.unit.shared:
            return {}
        # (every key of a shared state is some site's: "<site>:<label>")
        rows = self.unit.rows(select(*_MAPPING_COLUMNS).where(~self.unit.own(MAPPINGS.c.root))
                              .order_by(MAPPINGS.c.root))
        files = self._files_of([row[0] for row in rows])
        found: dict[str, list[SiteMapping]] = {}
        for key, *values in rows:
            site, _, label = key.partition(":")
            found.setdefault(site, []).append(SiteMapping(site, MappingRecord(label, *values), files.get(key, 0)))
        return found

    def _files_of(self, keys: Collection[str]) -> dict[str, int]:
        """How many files the last scan of each of these sources (by key) judged: its items that are not
        problems, and its problems that are not notices (a deliberate skip is not counted)."""
        if not keys:
            return {}
        problem = select(PROBLEMS.c.rel_path).where(PROBLEMS.c.root == FILES.c.root,
                                                    PROBLEMS.c.rel_path == FILES.c.rel_path).exists()
        counted: dict[str, int] = {}
        for key, count in self.unit.rows(select(FILES.c.root, func.count()).where(FILES.c.root.in_(keys), ~problem)
                                         .group_by(FILES.c.root)):
            counted[key] = int(count)
        for key, count in self.unit.rows(
                select(PROBLEMS.c.root, func.sum(case((PROBLEMS.c.notice, 0), else_=1)))
                .where(PROBLEMS.c.root.in_(keys)).group_by(PROBLEMS.c.root)):
            counted[key] = counted.get(key, 0) + int(count or 0)
        return counted

    def save(self, source: str, **changes: Any) -> None:
        record = replace(self.get(source) or MappingRecord(source), **changes)
        self.unit.write(_SAVE_MAPPING, [(self.unit.key(record.root), *astuple(record)[1:])])

    def retire(self, configured: Collection[str]) -> None:
        """In a shared state, this site's mappings of sources its config no longer names (``configured``: the
        config's mappings' labels, paused ones included) mirror into no pack any more: their files stop
        holding the pack's images for the other sites. A subfolder's mapping below a configured folder is
        that folder's to follow (renamed, vacated, paused with it), never retired here. A state of one
        machine's own is left as it is: several configs may share its file."""
        if not self.unit.site:
            return
        c = MAPPINGS.c
        keys = [self.unit.key(label) for label in configured]
        below = [c.root.startswith(key.rstrip("/") + "/", autoescape=True) for key in keys]
        self.unit.run(update(MAPPINGS).where(self.unit.own(c.root), c.pack_id.is_not(None), c.root.not_in(keys),
                                             ~or_(*below) if below else true()).values(pack_id=None))

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
