"""The search index of the images' names, AI descriptions and keywords: SQLite's FTS5, behind ``create``,
``ensure_readable``, ``find`` and ``count``.

``image_text`` indexes ``images`` without holding a copy of its text (an external-content table), and
triggers keep it as rows are inserted, updated and deleted — which is why an image is never written
over by ``INSERT OR REPLACE``: a replaced row would leave the index holding the old text. Everything
here is SQLite's own; a state on another database would bring its own index with the same
functions. It writes no row of ``images``.

``file_text`` indexes the folders inside a mapped folder that hold its files (``sub/deeper`` of the file
``sub/deeper/landscape.png``: the part of ``files.rel_path`` before the file's name, which ``image_text``
has) and the source's own words about an item (``files.detail``: an Astria prompt's text) the same way,
kept by triggers on ``files``: a word matches an image that an item of its owner holds in such a folder,
or that its source describes so, as the item is now. A remote source's items (keyed by their URLs) have
no folders.

A word also matches every image of a mapping whose folder's name, pack name or source name holds it:
those few names are indexed at query time, in ``mapping_text``, an FTS5 table of the connection's own
(``temp``), so they are cut into words exactly as the images' text is, and a state file needs no new
column for them (nor is written to by a search).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import text

from packsync.state.sqlite import tables_of
from packsync.state.unit import UnitOfWork

IMAGE_TEXT = [
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
#: The folders of a file cache's row on ``row``, as words (``sub/deeper/`` of ``sub/deeper/x.png``), when it is
#: a file of a folder's in a folder inside it ('' otherwise: a remote source's item key is its URL). A folder's
#: label is absolute and a SQLite state's keys are never qualified by a site, so a root starting with "/" is
#: a folder whatever kinds of remote sources there are.
_IN_A_FOLDER = "substr({row}.root, 1, 1) = '/' AND instr({row}.rel_path, '/') > 0"
_FOLDERS = ("CASE WHEN " + _IN_A_FOLDER + " THEN rtrim({row}.rel_path, replace({row}.rel_path, '/', '')) "
            "ELSE '' END")
#: A row worth indexing: one with folders, or with the source's own words about it (``files.detail``).
_INDEXED = "(" + _IN_A_FOLDER + " OR {row}.detail IS NOT NULL)"
_ADD = ("INSERT INTO file_text(rowid, folders, detail) SELECT {row}.rowid, " + _FOLDERS + ", {row}.detail WHERE "
        + _INDEXED + ";")
FILE_TEXT = [
    "CREATE VIRTUAL TABLE file_text USING fts5(folders, detail)",
    "CREATE TRIGGER file_text_insert AFTER INSERT ON files BEGIN " + _ADD.format(row="new") + " END",
    "CREATE TRIGGER file_text_delete AFTER DELETE ON files BEGIN DELETE FROM file_text WHERE rowid = old.rowid; END",
    # (an upsert writes every column: only a file's move, or new words about it, changes what is indexed)
    "CREATE TRIGGER file_text_update AFTER UPDATE OF root, rel_path, detail ON files WHEN old.root IS NOT new.root "
    "OR old.rel_path IS NOT new.rel_path OR old.detail IS NOT new.detail BEGIN "
    "DELETE FROM file_text WHERE rowid = old.rowid; " + _ADD.format(row="new") + " END",
]
#: The triggers and the index of schema 10 (folders alone, by the spelling of an Astria pack's label), which an
#: upgrade drops before ``create`` makes them anew.
FILE_TEXT_BEFORE_11 = ["DROP TRIGGER IF EXISTS file_text_insert", "DROP TRIGGER IF EXISTS file_text_delete",
                       "DROP TRIGGER IF EXISTS file_text_update", "DROP TABLE IF EXISTS file_text"]
#: The folders and words of every file recorded, into the index ``{table}``.
_FILL_FILE_TEXT = ("INSERT INTO {table}(rowid, folders, detail) SELECT f.rowid, " + _FOLDERS.format(row="f")
                   + ", f.detail FROM files f WHERE " + _INDEXED.format(row="f"))
#: Each index, what makes it, and what fills it with the rows recorded before it.
INDEXES = {
    "image_text": (IMAGE_TEXT, "INSERT INTO image_text(image_text) VALUES ('rebuild')"),
    "file_text": (FILE_TEXT, _FILL_FILE_TEXT.format(table="file_text")),
}
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
#: Whether a file's folders, and a mapping's names, hold a word anywhere (when neither holds any word, the
#: images' own text alone is searched).
_HELD = text("SELECT EXISTS (SELECT 1 FROM file_text WHERE file_text MATCH :term), "
             "EXISTS (SELECT 1 FROM temp.mapping_text WHERE mapping_text MATCH :term)")


def exists(unit: UnitOfWork) -> bool:
    return tables_of(unit.connection) >= INDEXES.keys()


def create(unit: UnitOfWork) -> None:
    """The indexes the state lacks and their triggers, of every row recorded already (inside the caller's
    transaction)."""
    have = tables_of(unit.connection)
    for name, (statements, fill) in INDEXES.items():
        if name not in have:
            for statement in statements:
                unit.execute(statement)
            unit.execute(fill)


def ensure_readable(unit: UnitOfWork) -> None:
    """A state from before an index, read only: the index is built in memory, for this connection."""
    have = tables_of(unit.connection) | tables_of(unit.connection, "temp")
    if "image_text" not in have:
        unit.execute("CREATE VIRTUAL TABLE temp.image_text USING fts5(file_name, description, keywords)")
        unit.execute("INSERT INTO temp.image_text(rowid, file_name, description, keywords) "
                     "SELECT rowid, file_name, description, keywords FROM images")
    if "file_text" not in have:
        unit.execute("CREATE VIRTUAL TABLE temp.file_text USING fts5(folders, detail)")
        unit.execute(_FILL_FILE_TEXT.format(table="temp.file_text"))


def _term(word: str) -> str:
    """An FTS5 query for rows holding ``word`` as a word's start ('' for a word of no characters)."""
    word = "".join(c for c in word if c.isprintable())  # a NUL ends FTS5's string
    return '"' + word.replace('"', '""') + '"*' if word.strip() else ""


class _Term(NamedTuple):
    """A word's FTS5 query, and whether a file's folders or a mapping's names hold it anywhere."""

    query: str
    in_folders: bool
    in_names: bool


def _matching(terms: Sequence[_Term]) -> tuple[str, dict[str, Any]]:
    """A condition on ``images i`` holding every term in the image's text, its files' folders or its
    mapping's names (only where some hold it: each is a subquery), and its parameters."""
    each = []
    for n, term in enumerate(terms):
        where = [f"i.rowid IN (SELECT rowid FROM image_text WHERE image_text MATCH :t{n})"]
        if term.in_folders:
            where.append(f"(i.owner, i.sha256) IN (SELECT f.root, f.sha256 FROM files f WHERE f.rowid IN "
                         f"(SELECT rowid FROM file_text WHERE file_text MATCH :t{n}) AND f.problem IS NULL)")
        if term.in_names:
            where.append(f"i.owner IN (SELECT root FROM temp.mapping_text WHERE mapping_text MATCH :t{n}) "
                         f"OR i.pack_id IN (SELECT pack_id FROM temp.mapping_text WHERE mapping_text MATCH :t{n})")
        each.append(f"({' OR '.join(where)})")
    return " AND ".join(each), {f"t{n}": term.query for n, term in enumerate(terms)}


def _prepared(unit: UnitOfWork, words: Sequence[str]) -> tuple[list[_Term], bool]:
    """The words' terms, and whether a file's folders or a mapping's names hold any of them (the indexes
    and the mappings' names made ready to read)."""
    queries = [query for query in map(_term, words) if query]
    if not queries:
        return [], False
    with unit.guarded():
        ensure_readable(unit)
        for statement in _MAPPING_TEXT:
            unit.execute(statement)
    terms = [_Term(query, *(bool(held) for held in unit.rows(_HELD, {"term": query})[0])) for query in queries]
    return terms, any(term.in_folders or term.in_names for term in terms)


def find(unit: UnitOfWork, words: Sequence[str], limit: int) -> Sequence[Sequence[Any]]:
    """The rows of ``images`` (``pack_id`` … ``meta_model``) holding every word as a word's start in their
    text, their files' folders or their mapping's names, best match of their own text first."""
    terms, named = _prepared(unit, words)
    if not named:
        return unit.rows(_FIND, {"terms": " AND ".join(t.query for t in terms), "limit": limit}) if terms else []
    condition, parameters = _matching(terms)
    return unit.rows(text(
        f"SELECT {_COLUMNS} FROM images i LEFT JOIN (SELECT rowid AS r, bm25(image_text) AS score FROM image_text "
        f"WHERE image_text MATCH :any) s ON s.r = i.rowid WHERE {condition} "
        "ORDER BY s.score IS NULL, s.score, i.rowid LIMIT :limit"),
        {**parameters, "any": " OR ".join(t.query for t in terms), "limit": limit})


def count(unit: UnitOfWork, words: Sequence[str]) -> int:
    """How many rows ``find`` would give without a limit."""
    terms, named = _prepared(unit, words)
    if not named:
        return int(unit.rows(_COUNT, {"terms": " AND ".join(t.query for t in terms)})[0][0]) if terms else 0
    condition, parameters = _matching(terms)
    return int(unit.rows(text(f"SELECT count(*) FROM images i WHERE {condition}"), parameters)[0][0])
