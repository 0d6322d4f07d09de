"""The statements each database spells its own way, asked for by table and made for the database a state
is on: the repositories build their writes once, with ``upsert`` and ``insert_new`` from here, and the
unit of work compiles each for its connection's dialect (``Bulk``). Importing this loads no driver."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Dialect, Table
from sqlalchemy.sql.dml import UpdateBase

#: A statement made for a dialect when first compiled for it.
ForDialect = Callable[[Dialect], UpdateBase]


def upsert(table: Table) -> ForDialect:
    """Every column of a row inserted, or written over the row of the same primary key (an update: a
    trigger sees one, and the row keeps its identity, which SQLite's search index relies on)."""
    def made(dialect: Dialect) -> UpdateBase:
        if dialect.name == "postgresql":
            from packsync.state import postgres

            return postgres.upsert(table)
        from packsync.state import sqlite

        return sqlite.upsert(table)
    return made


def insert_new(table: Table) -> ForDialect:
    """A row inserted unless its primary key is taken already."""
    def made(dialect: Dialect) -> UpdateBase:
        if dialect.name == "postgresql":
            from packsync.state import postgres

            return postgres.insert_new(table)
        from packsync.state import sqlite

        return sqlite.insert_new(table)
    return made
