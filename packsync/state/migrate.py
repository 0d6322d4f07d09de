"""Moving one machine's state (SQLite) into a state shared by several (PostgreSQL): ``packsync state migrate``.

What it copies, and how: the per-site tables (the file cache, problems, failures, sidecars, settled
fingerprints, mappings, activity, pulled files) are this site's own, each root, owner or folder stored
qualified by the site (``unit.key``), beside other sites' rows and replacing none of them; a shared state
that holds rows of this site already (a migration before) is refused unless they are to be replaced. The
shared tables (uploads, URL contents, prepared contents, pack images) merge: a row whose key is there
already is the same fact, and what is there stays — a pack image another site recorded first keeps its
owner. Activity gets fresh ids. The ``meta``, ``daemon`` and ``changes`` rows are the shared state's own.

The source is read in one snapshot, a table at a time, streamed: no table is held in memory, only a batch
of ``BATCH`` rows. Everything is written in ONE transaction on the target, so a failure (the server lost,
a refusal) leaves nothing half migrated. A dry run reads the same and writes nothing. Knows no command line.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec
from sqlalchemy import Column, ColumnElement, MetaData, Table, bindparam, delete, func, insert, select, tuple_

from packsync.errors import StateError
from packsync.state.dialects import insert_new
from packsync.state.store import State
from packsync.state.tables import TABLES
from packsync.state.unit import Bulk, UnitOfWork

#: The per-site tables, and the column each qualifies by the site.
SITE_TABLES = {"files": "root", "problems": "root", "failed": "root", "sidecars": "root", "settled": "root",
               "mappings": "root", "activity": "root", "pulled": "folder"}
#: The tables every site shares, and the column each qualifies (None: none; an image's ``owner``).
SHARED_TABLES: dict[str, str | None] = {"images": "owner", "blobs": None, "url_contents": None, "prepared": None}
#: What a person calls each table's rows.
NOUNS = {"files": "files", "problems": "problems", "failed": "failures", "sidecars": "sidecars",
         "settled": "settled fingerprints", "mappings": "mappings", "activity": "activity entries",
         "pulled": "pulled files", "images": "images", "blobs": "uploads", "url_contents": "URL contents",
         "prepared": "prepared contents"}
#: Rows read, checked and written at a time.
BATCH = 2000


class TableCount(msgspec.Struct, frozen=True):
    """One table's part of a migration: ``rows`` in this machine's state, ``kept`` of them already in the shared
    state (the same key: what is there stays), ``replaced`` rows of this site's deleted first (``--replace``)."""

    table: str
    rows: int
    kept: int = 0
    replaced: int = 0

    @property
    def copied(self) -> int:
        return self.rows - self.kept


class Migration(msgspec.Struct, frozen=True):
    """What a migration did (or, ``dry_run``, would do): the site, where to, and each table's count."""

    site: str
    where: str
    dry_run: bool
    tables: list[TableCount]

    def count(self, table: str) -> TableCount:
        return next(t for t in self.tables if t.table == table)


def migrate(source: State, target: State, *, replace: bool = False, dry_run: bool = False) -> Migration:
    """Copy ``source`` (one machine's SQLite state, opened to read) into ``target`` (the shared state, as its
    site; opened to read only for a ``dry_run``). StateError, writing nothing, when ``target`` holds rows of
    this site already and not ``replace``."""
    unit = target.unit
    site = unit.site
    if source.shared is not None or not site:
        raise StateError("a migration copies a state file of one machine into a shared state (PostgreSQL).")
    with _snapshot(source.unit):
        if dry_run:
            ours = _this_sites_rows(unit)
            _refuse_unless(ours, replace, site, target.where)
            counts = [TableCount(name, count(source.unit, TABLES[name]), replaced=ours[name] if replace else 0)
                      for name in SITE_TABLES]
            counts += [_merge(source.unit, unit, name, write=False) for name in SHARED_TABLES]
        else:
            with unit.transaction():
                ours = _this_sites_rows(unit)
                _refuse_unless(ours, replace, site, target.where)
                if replace:
                    _forget(unit)
                counts = [_copy(source.unit, unit, name, replaced=ours[name] if replace else 0)
                          for name in SITE_TABLES]
                counts += [_merge(source.unit, unit, name, write=True) for name in SHARED_TABLES]
    return Migration(site, target.where, dry_run, counts)


@contextmanager
def _snapshot(unit: UnitOfWork) -> Iterator[None]:
    """Every read inside sees the file as it was at the first (SQLite's read transaction): a ``pull`` writing
    beside does not tear the copy."""
    unit.execute("BEGIN")
    try:
        yield
    finally:
        unit.execute("ROLLBACK")


def _own(unit: UnitOfWork, table: Table, column: str) -> Any:
    """The condition on ``table``'s rows that are this site's (their ``column`` qualified by its name)."""
    return unit.own(table.c[column])


def _this_sites_rows(unit: UnitOfWork) -> dict[str, int]:
    """How many rows of this site each per-site table of the shared state holds already."""
    return {name: int(unit.rows(select(func.count()).select_from(TABLES[name])
                                .where(_own(unit, TABLES[name], column)))[0][0])
            for name, column in SITE_TABLES.items()}


def _refuse_unless(ours: dict[str, int], replace: bool, site: str, where: str) -> None:
    if (held := sum(ours.values())) and not replace:
        raise StateError(f"the shared state {where} already holds {held:,} rows of site {site!r} (migrated before, "
                         "or synced there already); give --replace to replace them with this machine's state, or "
                         "--site to migrate it as another site.")


def _forget(unit: UnitOfWork) -> None:
    """Delete this site's rows of every per-site table (``--replace``)."""
    for name, column in SITE_TABLES.items():
        unit.run(delete(TABLES[name]).where(_own(unit, TABLES[name], column)))


def count(unit: UnitOfWork, table: Table, where: ColumnElement[bool] | None = None) -> int:
    """How many rows of ``table`` (those ``where`` holds, if given) the state holds."""
    statement = select(func.count()).select_from(table)
    return int(unit.rows(statement if where is None else statement.where(where))[0][0])


def _columns(table: Table) -> list[str]:
    """The columns copied: all but activity's id, which the shared state gives anew."""
    return [column.name for column in table.columns if not (table.name == "activity" and column.name == "id")]


def _batches(unit: UnitOfWork, table: Table, columns: Sequence[str]) -> Iterator[tuple[Sequence[Any], ...]]:
    rows = unit.stream(select(*(table.c[name] for name in columns)))
    while batch := tuple(itertools.islice(rows, BATCH)):
        yield batch


def _qualified(unit: UnitOfWork, rows: Sequence[Sequence[Any]], at: int | None,
               unowned: Mapping[str, str] | None = None) -> list[tuple[Any, ...]]:
    """The rows with the value at ``at`` (a root, an owner, a folder) qualified by the site. ``unowned``: per
    pack (an image row's first column), the mapping that takes an image recorded without an owner."""
    if at is None:
        return [tuple(row) for row in rows]
    if unowned:
        return [(*row[:at], unit.key(row[at] or unowned.get(row[0], "")), *row[at + 1:]) for row in rows]
    return [(*row[:at], unit.key(row[at]), *row[at + 1:]) for row in rows]


def _unowned(source: UnitOfWork) -> dict[str, str]:
    """Per pack, the mapping (the first by label) that takes this site's images recorded before images had
    an owner ('': any mapping's may manage it) — in a shared state, '' would be every site's mapping's."""
    m = TABLES["mappings"].c
    return {pack_id: root for pack_id, root in source.rows(
        select(m.pack_id, func.min(m.root)).where(m.pack_id.is_not(None)).group_by(m.pack_id))}


def _writer(table: Table, columns: Sequence[str]) -> Bulk:
    """A row inserted unless its key is taken; activity's without its id (the serial gives it)."""
    if table.name == "activity":
        return Bulk(insert(table).values({name: bindparam(name) for name in columns}), *columns)
    return Bulk(insert_new(table), *columns)


def _copy(source: UnitOfWork, target: UnitOfWork, name: str, *, replaced: int) -> TableCount:
    """The per-site table ``name`` copied, each row qualified by the site."""
    table = TABLES[name]
    columns = _columns(table)
    at, write, rows = columns.index(SITE_TABLES[name]), _writer(table, columns), 0
    for batch in _batches(source, table, columns):
        target.write(write, _qualified(target, batch, at))
        rows += len(batch)
    return TableCount(name, rows, replaced=replaced)


def _merge(source: UnitOfWork, target: UnitOfWork, name: str, *, write: bool) -> TableCount:
    """The shared table ``name`` merged: the rows whose key the shared state lacks inserted (``write``), those it
    holds counted and left as they are."""
    table = TABLES[name]
    columns = _columns(table)
    qualify = SHARED_TABLES[name]
    at = None if qualify is None else columns.index(qualify)
    unowned = _unowned(source) if name == "images" else None
    if write:
        return _merge_staged(source, target, table, columns, at, unowned)
    keys = [column.name for column in table.primary_key.columns]
    where = [columns.index(key) for key in keys]
    rows = kept = 0
    for batch in _batches(source, table, columns):
        wanted = {tuple(row[i] for i in where) for row in _qualified(target, batch, at, unowned)}
        there = target.rows(select(*(table.c[key] for key in keys))
                            .where(tuple_(*(table.c[key] for key in keys)).in_(wanted)))
        rows, kept = rows + len(batch), kept + len(there)
    return TableCount(name, rows, kept=kept)


def _merge_staged(source: UnitOfWork, target: UnitOfWork, table: Table, columns: list[str],
                  at: int | None, unowned: Mapping[str, str] | None) -> TableCount:
    """The rows copied into a temporary table of the transaction's, then into ``table`` in one statement that
    keeps what is there: the shared tables' triggers count each statement in the one ``changes`` row, and a
    row updated once per row inserted, thousands of times in one transaction, slows every next update (10,000
    images took 17 s inserted row by row)."""
    stage = Table(f"migrating_{table.name}", MetaData(), *(Column(name, table.c[name].type) for name in columns),
                  prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
    with target.guarded():
        stage.create(target.connection)
    staged, rows = Bulk(insert(stage), *columns), 0
    for batch in _batches(source, table, columns):
        target.write(staged, _qualified(target, batch, at, unowned))
        rows += len(batch)
    names = ", ".join(columns)
    with target.guarded():
        inserted = target.connection.exec_driver_sql(
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {stage.name} ON CONFLICT DO NOTHING").rowcount
    return TableCount(str(table.name), rows, kept=rows - inserted)
