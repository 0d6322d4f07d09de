"""Whether every row of a state file is one packsync could have written: the one check of the values
themselves, made as the state is opened.

SQLite keeps whatever a column is given, of any type (the tables are not ``STRICT``: the files of every
release must open), so a hand edit, another program or a damaged disk can leave text where packsync
keeps a number, a NULL where it always writes a value, keywords that are not a JSON list of strings, or
a file cache row that is neither an item nor a problem. Read as they are, such rows would fail far
from here, in a plan or a view, as a traceback. They are looked for once, by the database, each table's
columns against their declared types (``tables``) plus the few rules one type cannot say; one is found
corrupt in ``translate.corrupt``'s sentence. It writes nothing. (A keyword in the list that is not text
is left to the reading of an image, which drops it: looking into every list here costs twice the rest.)
It costs a scan of each table: about 0.3 s of CPU for 100,000 files and 100,000 images on a loaded
machine, against 0.5 s for reading that file cache.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, Table

from packsync.errors import StateError
from packsync.state.tables import TABLES
from packsync.state.translate import corrupt
from packsync.state.unit import UnitOfWork

#: The storage classes (SQLite's ``typeof``) a value of each declared type is written as; any other type
#: is text (SQLModel's ``AutoString``).
_STORED = ((Boolean, ("integer",)), (Integer, ("integer",)), (Float, ("real", "integer")))
#: What a row of a table must hold beyond its columns' types (SQL; the table's columns by name), and what
#: a row that does not is, for the sentence.
_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "files": (("problem IS NOT NULL OR (sha256 IS NOT NULL AND content_type IS NOT NULL)",
               "a file that is neither an image nor a problem"),),
    "images": (("CASE WHEN json_valid(keywords) THEN json_type(keywords) = 'array' ELSE 0 END",
                "keywords that are not a JSON list"),),
}


def _stored_as(column: Column[object]) -> str:
    """A condition that holds for the values ``column`` may hold."""
    kinds = next((kinds for kind, kinds in _STORED if isinstance(column.type, kind)), ("text",))
    allowed = (*kinds, "null") if column.nullable and not column.primary_key else kinds
    return f"typeof({column.name}) IN ({', '.join(repr(kind) for kind in allowed)})"


def _checks(table: Table) -> list[tuple[str, str]]:
    """(condition, what a row failing it is) for ``table``."""
    return [(_stored_as(column), f"{column.name} of a type packsync never writes") for column in table.columns] \
        + list(_RULES.get(table.name, ()))


def check(unit: UnitOfWork) -> None:
    """Raise the corrupt-state sentence when a row of any table is not one packsync writes."""
    with unit.guarded():
        for name, table in TABLES.items():
            checks = _checks(table)
            every = " AND ".join(f"({condition})" for condition, _ in checks)
            if unit.connection.exec_driver_sql(f"SELECT 1 FROM {name} WHERE NOT ({every}) LIMIT 1").first():
                raise _which(unit, name, checks)


def _which(unit: UnitOfWork, name: str, checks: list[tuple[str, str]]) -> StateError:
    for condition, what in checks:
        if unit.connection.exec_driver_sql(f"SELECT 1 FROM {name} WHERE NOT ({condition}) LIMIT 1").first():
            return corrupt(unit.path, f"a row of {name} holds {what}")
    return corrupt(unit.path, f"a row of {name} holds a value packsync never writes")
