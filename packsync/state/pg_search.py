"""The search index of a shared state (PostgreSQL): the functions of ``search`` (SQLite's FTS5), with the
same answers, on PostgreSQL's full-text search.

Text is cut into words as FTS5's ``unicode61`` cuts it, not as PostgreSQL's own parser would (which keeps
a path, a file name, an e-mail address or a URL whole): every run of characters that are neither letters
nor digits becomes a space, letters are lowered and — where the ``unaccent`` extension may be installed
— stripped of their accents, and only then does the ``simple`` configuration (no stemming, no stop
words) make lexemes of it. ``packsync_search_words`` says that once, in the database: the index, the
rows searched and the words asked are cut by the same function. A word asked matches a word's start,
and a word that is several (``beach_day``) matches them in that order, as FTS5's ``"beach day"*``.

The index is three GIN expression indexes, kept by PostgreSQL as rows change (no trigger, no copy of the
text): on the images' own text (``file_name``, ``description``, ``keywords``), on the folders of the
files in a mapped folder (``sub/deeper`` of ``sub/deeper/landscape.png``; a remote source's items are
keyed by URLs, and its root, unlike a folder's, holds no "/"), and on the source's own words about an
item (``files.detail``: an Astria prompt's text). A mapping's names (its folder's own name,
its pack's, its source's) are few and cut at query time. The expressions are immutable SQL functions of
the state's schema, so that an index can hold them; each names what it calls with its schema, so that
they read the same under any ``search_path`` (a restore, autovacuum).

Differences from FTS5 (a server's choice, not packsync's): without ``unaccent`` (a managed server may
refuse extensions) "cafe" does not find "café"; without an ICU collation, on a database whose locale is
C, letters outside ASCII count as separators (a word is found by its ASCII parts only) and are not
lowered. Best matches are ranked by ``ts_rank``, not by BM25, and a phrase may run on from an image's
name into its description. Ranking cuts the text of every image found again (an expression index keeps
no text to rank by): a word every one of 20,000 images holds takes a few tenths of a second.

The functions are made once and then kept as they are (an index holds their answers); two sites making
them at once take turns (an advisory lock held to the end of the caller's transaction). It writes no
row of any table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from packsync.state.unit import UnitOfWork

#: The functions, each with its arguments as ``to_regprocedure`` names it, and its body (SQL), where
#: ``{s}`` is the schema the functions are in (quoted), ``{unaccent}`` an expression of ``t`` without
#: accents and ``{collate}`` the collation whose letters, digits and lower case are Unicode's.
_FUNCTIONS = {
    "packsync_search_words(text)": (
        "text", "SELECT pg_catalog.lower(pg_catalog.regexp_replace({unaccent}{collate}, '[^[:alnum:]]+', ' ', 'g'))"),
    "packsync_search_text(text)": (
        "tsvector", "SELECT pg_catalog.to_tsvector('pg_catalog.simple'::pg_catalog.regconfig, "
                    "{s}.packsync_search_words(coalesce(t, '')))"),
    # A word's lexemes in order, each right after the one before, the last as a word's start (no lexeme:
    # null, which matches nothing).
    "packsync_search_query(text)": (
        "tsquery", "SELECT CAST(pg_catalog.string_agg('''' || pg_catalog.replace(pg_catalog.replace(l.lexeme, "
                   "'\\', '\\\\'), '''', '''''') || '''', ' <-> ' ORDER BY p.p) || ':*' AS pg_catalog.tsquery) "
                   "FROM pg_catalog.unnest({s}.packsync_search_text(t)) l, pg_catalog.unnest(l.positions) p(p)"),
}
#: The functions of several arguments, whose bodies name them as ``$1``….
_COMPOSED = {
    # (cut as one text: a third of the time of three, which a search ranking many images pays for each)
    "packsync_image_text(text,text,text)": (
        "tsvector", "SELECT {s}.packsync_search_text(coalesce($1, '') || ' ' || coalesce($2, '') || ' ' "
                    "|| coalesce($3, ''))"),
    # The folders of a file (the part of its path before its name), as words.
    "packsync_folder_text(text)": (
        "tsvector", "SELECT {s}.packsync_search_text(pg_catalog.regexp_replace($1, '/[^/]*$', ''))"),
    # A mapping's names: its folder's own name (the last part of a root holding "/"; an Astria source's
    # label, ``astria:12``, without the site before it), its pack's and its source's.
    "packsync_mapping_text(text,text,text)": (
        "tsvector", "SELECT {s}.packsync_search_text(CASE WHEN pg_catalog.strpos($1, '/') > 0 "
                    "THEN pg_catalog.substring($1, '[^/]*$') "
                    "ELSE pg_catalog.regexp_replace($1, '^[^:]*:(?=[^:]*:)', '') END) "
                    "|| {s}.packsync_search_text($2) || {s}.packsync_search_text($3)"),
}
#: Which rows of ``files`` are a folder's files in a folder inside it: the folders index holds only them,
#: and a query must say it in these words for PostgreSQL to use that index.
_IN_A_FOLDER = "strpos({f}root, '/') > 0 AND strpos({f}rel_path, '/') > 0"
INDEXES = {
    "images_search_text": "CREATE INDEX IF NOT EXISTS images_search_text ON images USING gin "
                          "(packsync_image_text(file_name, description, keywords))",
    "files_search_folders": "CREATE INDEX IF NOT EXISTS files_search_folders ON files USING gin "
                            f"(packsync_folder_text(rel_path)) WHERE {_IN_A_FOLDER.format(f='')}",
    # (schema 11) the source's own words about its items: an Astria prompt's text
    "files_search_detail": "CREATE INDEX IF NOT EXISTS files_search_detail ON files USING gin "
                           "(packsync_search_text(detail)) WHERE detail IS NOT NULL",
}
#: The installation of ``unaccent`` where the server allows it (its refusal caught inside: a failed
#: statement would break the caller's transaction).
_TRY_UNACCENT = ("DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS unaccent; "
                 "EXCEPTION WHEN OTHERS THEN NULL; END $$")
#: What the functions are made of here: the schema, ``unaccent``'s schema (null: none), an ICU collation.
_SETTING = text("SELECT current_schema(), (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'unaccent'), "
                "EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu')")
#: Two sites creating the functions at once would collide: the second waits for the first's commit.
_CREATING = text("SELECT pg_advisory_xact_lock(hashtext('packsync search index'))")
_COLUMNS = ("i.pack_id, i.image_id, i.sha256, i.url, i.file_name, i.owner, i.meta_status, i.description, "
            "i.keywords, i.meta_error, i.meta_model, i.recipe")
_IMAGE_TEXT = "packsync_image_text(i.file_name, i.description, i.keywords)"


def _missing_functions(unit: UnitOfWork) -> list[str]:
    names = [*_FUNCTIONS, *_COMPOSED]
    checks = ", ".join(f"to_regprocedure(:f{n}) IS NULL" for n in range(len(names)))
    missing = unit.rows(text(f"SELECT {checks}"), {f"f{n}": name for n, name in enumerate(names)})[0]
    return [name for name, absent in zip(names, missing, strict=True) if absent]


def exists(unit: UnitOfWork) -> bool:
    if _missing_functions(unit):
        return False
    found = unit.rows(text("SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
                           "AND indexname = ANY(:names)"), {"names": list(INDEXES)})
    return int(found[0][0]) == len(INDEXES)


def _create_functions(unit: UnitOfWork) -> None:
    """The functions the schema lacks. One made already is kept as it is, whatever this server allows
    now: an index holds its answers."""
    unit.rows(_CREATING)
    missing = _missing_functions(unit)
    if not missing:
        return
    if "packsync_search_words(text)" in missing:
        unit.execute(_TRY_UNACCENT)
    schema, unaccent_schema, icu = unit.rows(_SETTING)[0]
    s = _identifier(schema)
    unaccent = (f"{_identifier(unaccent_schema)}.unaccent('{_identifier(unaccent_schema)}.unaccent'::"
                "pg_catalog.regdictionary, coalesce(t, ''))") if unaccent_schema else "coalesce(t, '')"
    collate = ' COLLATE pg_catalog."und-x-icu"' if icu else ""
    for signature, (returns, body) in (_FUNCTIONS | _COMPOSED).items():
        if signature in missing:
            name, arguments = signature.rstrip(")").split("(")
            parameters = "t text" if signature in _FUNCTIONS else arguments
            sql = body.format(s=s, unaccent=unaccent, collate=collate)
            unit.execute(f"CREATE OR REPLACE FUNCTION {s}.{name}({parameters}) RETURNS {returns} LANGUAGE sql "
                         f"IMMUTABLE PARALLEL SAFE AS $body$ {sql} $body$")


def create(unit: UnitOfWork) -> None:
    """The functions and the indexes the schema lacks, of every row recorded already (inside the caller's
    transaction; idempotent)."""
    _create_functions(unit)
    for statement in INDEXES.values():
        unit.execute(statement)


def ensure_readable(unit: UnitOfWork) -> None:
    """A state from before the index: its functions, so that a search reads it (slowly, without an index)."""
    _create_functions(unit)


def _terms(words: Sequence[str]) -> list[str]:
    """The words asked, as the database takes them: without the characters a string of its cannot hold
    (a NUL, an unpaired surrogate) nor any unprintable one; a word left blank is no word (as ``search``)."""
    kept = ("".join(c for c in word if c.isprintable()) for word in words)
    return [word for word in kept if word.strip()]


def _query(n: int) -> str:
    """The ``n``th word's query, made once per statement (a sub-select: the driver prepares a statement run
    often, and PostgreSQL's plan for any word would otherwise make it again for every row it ranks)."""
    return f"(SELECT packsync_search_query(:w{n}))"


def _matching(terms: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """A ``WITH`` clause whose ``matched`` is the images (``pack_id, image_id``) holding every term in
    their own text, their files' folders or their mapping's names, and its parameters. Each part is a
    query of its own, so that each reads its index; the mappings' names (no index: a few rows) are cut
    once, before any image is read."""
    named, each = [], []
    for n in range(len(terms)):
        query = _query(n)
        named.append(f"named{n} AS MATERIALIZED (SELECT m.root, m.pack_id FROM mappings m "
                     f"WHERE packsync_mapping_text(m.root, m.pack_name, m.source_name) @@ {query})")
        each.append(
            f"SELECT i.pack_id, i.image_id FROM images i WHERE {_IMAGE_TEXT} @@ {query} "
            f"UNION SELECT i.pack_id, i.image_id FROM files f JOIN images i ON i.owner = f.root "
            f"AND i.sha256 = f.sha256 WHERE {_IN_A_FOLDER.format(f='f.')} AND f.problem IS NULL "
            f"AND packsync_folder_text(f.rel_path) @@ {query} "
            f"UNION SELECT i.pack_id, i.image_id FROM files f JOIN images i ON i.owner = f.root "
            f"AND i.sha256 = f.sha256 WHERE f.detail IS NOT NULL AND f.problem IS NULL "
            f"AND packsync_search_text(f.detail) @@ {query} "
            f"UNION SELECT i.pack_id, i.image_id FROM named{n} m JOIN images i ON i.owner = m.root "
            f"UNION SELECT i.pack_id, i.image_id FROM named{n} m JOIN images i ON i.pack_id = m.pack_id")
    matched = " INTERSECT ".join(f"({part})" for part in each)
    return (f"WITH {', '.join(named)}, matched AS ({matched}) ",
            {f"w{n}": term for n, term in enumerate(terms)})


def find(unit: UnitOfWork, words: Sequence[str], limit: int) -> Sequence[Sequence[Any]]:
    """The rows of ``images`` (``pack_id`` … ``recipe``) holding every word as a word's start in their
    text, their files' folders or their mapping's names, best match of their own text first."""
    terms = _terms(words)
    if not terms:
        return []
    matching, parameters = _matching(terms)
    anything = " || ".join(_query(n) for n in range(len(terms)))
    return unit.rows(text(
        f"{matching}SELECT {_COLUMNS} FROM images i JOIN matched m ON m.pack_id = i.pack_id "
        f"AND m.image_id = i.image_id "
        f"ORDER BY ts_rank({_IMAGE_TEXT}, {anything}) DESC, i.added_at, i.pack_id, i.image_id LIMIT :limit"),
        {**parameters, "limit": limit})


def count(unit: UnitOfWork, words: Sequence[str]) -> int:
    """How many rows ``find`` would give without a limit."""
    terms = _terms(words)
    if not terms:
        return 0
    matching, parameters = _matching(terms)
    return int(unit.rows(text(f"{matching}SELECT count(*) FROM matched"), parameters)[0][0])


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
