"""The search index of the images' names, AI descriptions and keywords: SQLite's FTS5, behind ``create``,
``ensure_readable``, ``find`` and ``count``.

``image_text`` indexes ``images`` without holding a copy of its text (an external-content table), and
triggers keep it as rows are inserted, updated and deleted — which is why an image is never written
over by ``INSERT OR REPLACE``: a replaced row would leave the index holding the old text. Everything
here is SQLite's own; a state on another database would bring its own index with the same
functions. It writes no row of ``images``.

A word also matches every image of a mapping whose folder's name, pack name or source name holds it:
those few names are indexed at query time, in ``mapping_text``, an FTS5 table of the connection's own
(``temp``), so they are cut into words exactly as the images' text is, and a state file needs no new
column for them (nor is written to by a search).
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
_COLUMNS = ("i.pack_id, i.image_id, i.sha256, i.url, i.file_name, i.owner, i.meta_status, i.description, "
            "i.keywords, i.meta_error, i.meta_model, i.recipe")
# Only the images' text matches (no mapping's names hold a word): the index alone finds them.
_FIND = text(f"SELECT {_COLUMNS} FROM image_text JOIN images i ON i.rowid = image_text.rowid "
             "WHERE image_text MATCH :terms ORDER BY bm25(image_text) LIMIT :limit")
_COUNT = text("SELECT count(*) FROM image_text WHERE image_text MATCH :terms")
#: The mappings' names, as words: the folder's own name (the label's last part), the pack's name and the
#: source's (an Astria pack's title). Refilled before each search from ``mappings``, a few rows.
_MAPPING_TEXT = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.mapping_text USING fts5(root UNINDEXED, pack_id UNINDEXED, "
    "folder, pack)",
    "DELETE FROM temp.mapping_text",
    "INSERT INTO temp.mapping_text(root, pack_id, folder, pack) SELECT root, pack_id, "
    "substr(root, length(rtrim(root, replace(root, '/', ''))) + 1), "
    "coalesce(pack_name, '') || ' ' || coalesce(source_name, '') FROM mappings",
]
_NAMED = text("SELECT count(*) FROM temp.mapping_text WHERE mapping_text MATCH :terms")


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


def _term(word: str) -> str:
    """An FTS5 query for rows holding ``word`` as a word's start ('' for a word of no characters)."""
    word = "".join(c for c in word if c.isprintable())  # a NUL ends FTS5's string
    return '"' + word.replace('"', '""') + '"*' if word.strip() else ""


def _matching(terms: list[str]) -> tuple[str, dict[str, Any]]:
    """A condition on ``images i`` holding every term in the image's text or its mapping's names, and its
    parameters."""
    each = [f"(i.rowid IN (SELECT rowid FROM image_text WHERE image_text MATCH :t{n}) "
            f"OR i.owner IN (SELECT root FROM temp.mapping_text WHERE mapping_text MATCH :t{n}) "
            f"OR i.pack_id IN (SELECT pack_id FROM temp.mapping_text WHERE mapping_text MATCH :t{n}))"
            for n in range(len(terms))]
    return " AND ".join(each), {f"t{n}": term for n, term in enumerate(terms)}


def _prepared(unit: UnitOfWork, words: Sequence[str]) -> tuple[list[str], bool]:
    """The words' terms, and whether a mapping's names hold any of them (the index and the mappings'
    names made ready to read)."""
    terms = [term for term in map(_term, words) if term]
    if not terms:
        return [], False
    with unit.guarded():
        ensure_readable(unit)
        for statement in _MAPPING_TEXT:
            unit.execute(statement)
    named = unit.rows(_NAMED, {"terms": " OR ".join(terms)})[0][0] > 0
    return terms, bool(named)


def find(unit: UnitOfWork, words: Sequence[str], limit: int) -> Sequence[Sequence[Any]]:
    """The rows of ``images`` (``pack_id`` … ``meta_model``) holding every word as a word's start in their
    text or their mapping's names, best match of their own text first."""
    terms, named = _prepared(unit, words)
    if not named:
        return unit.rows(_FIND, {"terms": " AND ".join(terms), "limit": limit}) if terms else []
    condition, parameters = _matching(terms)
    return unit.rows(text(
        f"SELECT {_COLUMNS} FROM images i LEFT JOIN (SELECT rowid AS r, bm25(image_text) AS score FROM image_text "
        f"WHERE image_text MATCH :any) s ON s.r = i.rowid WHERE {condition} "
        "ORDER BY s.score IS NULL, s.score, i.rowid LIMIT :limit"),
        {**parameters, "any": " OR ".join(terms), "limit": limit})


def count(unit: UnitOfWork, words: Sequence[str]) -> int:
    """How many rows ``find`` would give without a limit."""
    terms, named = _prepared(unit, words)
    if not named:
        return int(unit.rows(_COUNT, {"terms": " AND ".join(terms)})[0][0]) if terms else 0
    condition, parameters = _matching(terms)
    return int(unit.rows(text(f"SELECT count(*) FROM images i WHERE {condition}"), parameters)[0][0])
