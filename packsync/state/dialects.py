"""The statements each database spells its own way, asked for by table and made for the database a state
is on: the repositories build their writes once, with ``upsert`` and ``insert_new`` from here, and the
unit of work compiles each for its connection's dialect (``Bulk``). Importing this loads no driver."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from sqlalchemy import Dialect, Table
from sqlalchemy.sql.dml import UpdateBase

#: A statement made for a dialect when first compiled for it.
ForDialect = Callable[[Dialect], UpdateBase]


def _database(dialect: Dialect) -> ModuleType:
    """What packsync knows of the dialect's database (``sqlite`` or ``postgres``), imported when first asked."""
    if dialect.name == "postgresql":
        from packsync.state import postgres

        return postgres
    from packsync.state import sqlite

    return sqlite


def upsert(table: Table) -> ForDialect:
    """Every column of a row inserted, or written over the row of the same primary key (an update: a
    trigger sees one, and the row keeps its identity, which SQLite's search index relies on)."""
    return lambda dialect: _database(dialect).upsert(table)


def insert_new(table: Table) -> ForDialect:
    """A row inserted unless its primary key is taken already."""
    return lambda dialect: _database(dialect).insert_new(table)
