"""The search index of the images' names, AI descriptions and keywords: SQLite's FTS5, behind ``create``,
``ensure_readable`` and ``find``.

``image_text`` indexes ``images`` without holding a copy of its text (an external-content table), and
triggers keep it as rows are inserted, updated and deleted — which is why an image is never written
over by ``INSERT OR REPLACE``: a replaced row would leave the index holding the old text. Everything
here is SQLite's own; a state on another database would bring its own index with the same three
functions. It writes no row of ``images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from packsync.state.sqlite import tables_of
from packsync.state.unit import UnitOfWork

INDEX = [
    "CREATE VIRTUAL TABLE image_text USING fts5(file_name, description, keywords, content='images', "
    "content_rowid='rowid')",
    "CREATE TRIGGER image_text_insert AFTER INSERT ON images BEGIN INSERT INTO image_text(rowid, file_name, "
    "description, keywords) VALUES (new.rowid, new.file_name, new.description, new.keywords); END",
    "CREATE TRIGGER image_text_delete AFTER DELETE ON images BEGIN INSERT INTO image_text(image_text, rowid, "
    "file_name, description, keywords) VALUES ('delete', old.rowid, old.file_name, old.description, old.keywords); "
    "END",
    "CREATE TRIGGER image_text_update AFTER UPDATE ON images BEGIN INSERT INTO image_text(image_text, rowid, "
    "file_name, description, keywords) VALUES ('delete', old.rowid, old.file_name, old.description, old.keywords); "
    "INSERT INTO image_text(rowid, file_name, description, keywords) VALUES (new.rowid, new.file_name, "
    "new.description, new.keywords); END",
]
_FIND = text(
    "SELECT i.pack_id, i.image_id, i.sha256, i.url, i.file_name, i.owner, i.meta_status, i.description, "
    "i.keywords, i.meta_error, i.meta_model, i.recipe FROM image_text JOIN images i ON i.rowid = image_text.rowid "
    "WHERE image_text MATCH :terms ORDER BY bm25(image_text) LIMIT :limit")
_COUNT = text("SELECT count(*) FROM image_text WHERE image_text MATCH :terms")


def exists(unit: UnitOfWork) -> bool:
    return "image_text" in tables_of(unit.connection)


def create(unit: UnitOfWork) -> None:
    """The index and its triggers, of every image recorded already (inside the caller's transaction)."""
    for statement in INDEX:
        unit.execute(statement)
    unit.execute("INSERT INTO image_text(image_text) VALUES ('rebuild')")


def ensure_readable(unit: UnitOfWork) -> None:
    """A state from before the index, read only: the index is built in memory, for this connection."""
    if "image_text" not in tables_of(unit.connection) | tables_of(unit.connection, "temp"):
        unit.execute("CREATE VIRTUAL TABLE temp.image_text USING fts5(file_name, description, keywords)")
        unit.execute("INSERT INTO temp.image_text(rowid, file_name, description, keywords) "
                     "SELECT rowid, file_name, description, keywords FROM images")


def _terms(words: Sequence[str]) -> str:
    """An FTS5 query for rows holding every word as a word's start ('' for none)."""
    words = ["".join(c for c in word if c.isprintable()) for word in words]  # a NUL ends FTS5's string
    return " AND ".join('"' + word.replace('"', '""') + '"*' for word in words if word.strip())


def find(unit: UnitOfWork, words: Sequence[str], limit: int) -> Sequence[Sequence[Any]]:
    """The rows of ``images`` (``pack_id`` … ``meta_model``) whose text holds every word as a word's start,
    best match first."""
    terms = _terms(words)
    if not terms:
        return []
    with unit.guarded():
        ensure_readable(unit)
    return unit.rows(_FIND, {"terms": terms, "limit": limit})


def count(unit: UnitOfWork, words: Sequence[str]) -> int:
    """How many rows ``find`` would give without a limit."""
    terms = _terms(words)
    if not terms:
        return 0
    with unit.guarded():
        ensure_readable(unit)
    return int(unit.rows(_COUNT, {"terms": terms})[0][0])
