"""Bringing a state file of any schema up to this one — or, for a reader, showing it as if it were.

Every release before this one wrote SQLite files, of schemas 1 to 9; this module knows what each
lacked. A writer creates what is missing and migrates forward in one transaction, so that a run killed
half-way, or a first run killed before it wrote its schema version, leaves a file the next run
finishes. A reader (``--dry-run``, ``status``) writes nothing: tables added since are empty temporary
tables, and columns added since come through temporary views. What a file is (packsync's, another
program's, too new) is decided here too, before anything is written, not even the switch to WAL.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Table, select

from packsync.errors import StateError
from packsync.state import search
from packsync.state.dialects import insert_new, upsert
from packsync.state.sqlite import columns_of, count_changes, create_temp_table, read_meta, tables_of
from packsync.state.tables import (
    APP_ID,
    METADATA,
    PLANNED_FROM,
    SCHEMA_VERSION,
    SHARED_ONLY,
    TABLES,
    ChangeCountRow,
    MetaRow,
    table,
)
from packsync.state.translate import corrupt
from packsync.state.unit import Bulk, UnitOfWork

#: The mapping columns schema 5 added.
_MAPPING_COLUMNS_5 = ("ok_at FLOAT", "safety VARCHAR", "withheld VARCHAR")
_MAPPING_COLUMNS_9 = ("withheld_count INTEGER", "paused FLOAT")
#: The columns schema 11 added: a source's own words about an item, and when a source deletes its items.
_FILE_COLUMNS_11 = ("detail VARCHAR",)
_MAPPING_COLUMNS_11 = ("expires_at FLOAT",)
#: Who owns an image recorded before schema 2 (which had one mapping per pack and state): the mapping
#: into its pack whose folder holds its content, else the first mapping into its pack, else '' — an
#: image any mapping into that pack may manage.
_OWNER_BEFORE_2 = (
    "coalesce((SELECT m.root FROM mappings m JOIN files f ON f.root = m.root AND f.sha256 = images.sha256 "
    "WHERE m.pack_id = images.pack_id ORDER BY m.root LIMIT 1), "
    "(SELECT root FROM mappings m WHERE m.pack_id = images.pack_id ORDER BY m.root LIMIT 1), '')")
#: The version token of a file cache row of schemas 1 to 6, which kept a folder's stat key in four
#: columns (``dev``, ``inode``, ``size``, ``mtime_ns``) and wrote zeros there for an Astria image, whose
#: version is its key (its URL; no file has inode 0). The folder source's own spelling of its key
#: (``sources.folder.stat_version``), so that no file is read again after the upgrade.
_VERSION_BEFORE_7 = ("CASE WHEN dev = 0 AND inode = 0 AND mtime_ns = 0 THEN rel_path "
                     "ELSE dev || ':' || inode || ':' || size || ':' || mtime_ns END")
_FILES_BEFORE_7 = (f"root, rel_path, {_VERSION_BEFORE_7} AS version, size, sha256, content_type, problem, "
                   "NULL AS detail")
#: How schemas 1 to 7 judged an AVIF file: a verdict on its bytes, kept until they changed.
_AVIF_BEFORE_8 = "AVIF images are not accepted"
#: The columns of an upload's row in schemas 1 to 9, which kept no name (an upload made then is named '').
_BLOB_COLUMNS_9 = "sha256, content_type, url, upload_url, expires_at, uploaded"
_META = Bulk(upsert(table(MetaRow)), "key", "value")
_COUNT_FROM_ZERO = Bulk(insert_new(table(ChangeCountRow)), "id", "count")


def inspect(path: Path) -> tuple[int | None, set[str]]:
    """The schema version of an existing state file (None: new or unfinished) and its tables, read only."""
    if not path.exists() or path.stat().st_size == 0:
        return None, set()
    tables, meta = read_meta(path)
    foreign = StateError(f"{path} is a SQLite database of another program; packsync will not touch it. "
                         "Set [state] path to another file.")
    if not meta:
        # A first run killed while creating the tables leaves only packsync's own, unfinished.
        if tables <= TABLES.keys():
            return None, tables
        raise foreign
    if meta.get("app") != APP_ID:
        raise foreign
    schema = str(meta.get("schema", "0"))
    if not (schema.isascii() and schema.isdigit()):
        raise corrupt(path, f"its schema version reads {schema!r}")
    version = int(schema)
    if version > SCHEMA_VERSION:
        raise StateError(f"{path} was written by a newer packsync (schema {version}); upgrade packsync to use it.")
    return version, tables


def create_empty(unit: UnitOfWork) -> None:
    """Every table, empty (a reader's state in memory, where there is no file yet)."""
    with unit.guarded():
        METADATA.create_all(unit.connection, tables=list(TABLES.values()))


def set_up(unit: UnitOfWork, version: int | None, tables: set[str]) -> None:
    """Create what is missing and migrate forward, in one transaction."""
    if version == SCHEMA_VERSION and tables >= {*TABLES, *search.INDEXES}:
        return
    with unit.transaction():
        connection = unit.connection
        _add_columns(unit)
        missing = _create_tables(unit, tables)
        if version is not None and version < 11:  # schema 10 → 11: the files' index holds their detail too
            for statement in search.FILE_TEXT_BEFORE_11:
                unit.execute(statement)
        for name in TABLES.keys() - {t.name for t in missing}:  # schema 4 → 5: images by pack and content
            for index in TABLES[name].indexes:
                index.create(connection, checkfirst=True)
        if not search.exists(unit):  # schema 3 → 4: the search index, of every image recorded; 10: of folders;
            # 11: of the items' detail
            search.create(unit)
        if version is not None and version < 8:  # schema 7 → 8: AVIF is a type a recipe may convert now
            unit.execute(f"DELETE FROM files WHERE problem LIKE '{_AVIF_BEFORE_8}%'")
        unit.write(_COUNT_FROM_ZERO, [(0, 0)])  # schema 5 → 6
        for statement in count_changes(PLANNED_FROM):
            unit.execute(statement)
        unit.write(_META, [("app", APP_ID), ("schema", str(SCHEMA_VERSION))])


def _create_tables(unit: UnitOfWork, tables: set[str]) -> list[Table]:
    """The tables the file lacks, created — and those whose key changed, made anew with their rows (their
    indexes and triggers go with the old table; ``set_up`` makes them again); the tables created."""
    connection = unit.connection
    stat_keys = "version" not in columns_of(connection, "files") and "files" in tables
    if stat_keys:  # schema 6 → 7: the file cache keeps each source's version token
        unit.execute("ALTER TABLE files RENAME TO files_6")
    unnamed = _unnamed_blobs(unit)
    if unnamed:  # schema 9 → 10: an upload is known by its content and its name
        unit.execute("DROP INDEX IF EXISTS ix_blobs_url")  # (the new table's index has its name)
        unit.execute("ALTER TABLE blobs RENAME TO blobs_9")
    missing = [TABLES[name] for name in TABLES.keys() - tables_of(connection)]
    METADATA.create_all(connection, tables=missing)
    if stat_keys:
        unit.execute(f"INSERT INTO files SELECT {_FILES_BEFORE_7} FROM files_6")
        unit.execute("DROP TABLE files_6")
    if unnamed:
        unit.execute(f"INSERT INTO blobs ({_BLOB_COLUMNS_9}, name) SELECT {_BLOB_COLUMNS_9}, '' FROM blobs_9")
        unit.execute("DROP TABLE blobs_9")
    return missing


def _unnamed_blobs(unit: UnitOfWork) -> bool:
    """Whether the file's uploads are known by their content alone (schemas 1 to 9)."""
    columns = columns_of(unit.connection, "blobs")
    return bool(columns) and "name" not in columns


def _add_columns(unit: UnitOfWork) -> None:
    """The columns schemas 2 to 5 added to the tables an older file has."""
    columns = columns_of(unit.connection, "images")
    if columns and "owner" not in columns:  # schema 1 → 2
        unit.execute("ALTER TABLE images ADD COLUMN owner VARCHAR NOT NULL DEFAULT ''")
        unit.execute(f"UPDATE images SET owner = {_OWNER_BEFORE_2}")
    if columns and "meta_model" not in columns:  # schema 4 → 5
        unit.execute("ALTER TABLE images ADD COLUMN meta_model VARCHAR")
    if columns and "recipe" not in columns:  # schema 7 → 8: every image so far was uploaded as it was
        unit.execute("ALTER TABLE images ADD COLUMN recipe VARCHAR NOT NULL DEFAULT ''")
    columns = columns_of(unit.connection, "files")
    for column in _FILE_COLUMNS_11:  # schema 10 → 11 (a file cache of schema 6 or before is made anew)
        if "version" in columns and column.split()[0] not in columns:
            unit.execute(f"ALTER TABLE files ADD COLUMN {column}")
    columns = columns_of(unit.connection, "mappings")
    if columns and "source_name" not in columns:  # schema 2 → 3
        unit.execute("ALTER TABLE mappings ADD COLUMN source_name VARCHAR")
    for column in (*_MAPPING_COLUMNS_5, *_MAPPING_COLUMNS_9, *_MAPPING_COLUMNS_11):  # schema 4 → 5, 8 → 9, 10 → 11
        if columns and column.split()[0] not in columns:
            unit.execute(f"ALTER TABLE mappings ADD COLUMN {column}")


def read_as_current(unit: UnitOfWork, version: int | None, tables: set[str]) -> None:
    """Let a reader read an older file as if it were migrated, writing nothing to it."""
    with unit.guarded():
        connection = unit.connection
        for name in sorted(TABLES.keys() - tables):
            create_temp_table(connection, TABLES[name])
        columns = columns_of(connection, "images")
        if columns and not columns >= {"owner", "meta_model", "recipe"}:  # (the view keeps the rowid: search)
            added = [] if "owner" in columns else [f"{_OWNER_BEFORE_2} AS owner"]
            added += [] if "meta_model" in columns else ["NULL AS meta_model"]
            added += [] if "recipe" in columns else ["'' AS recipe"]
            unit.execute(f"CREATE TEMP VIEW images AS SELECT rowid AS rowid, *, {', '.join(added)} "
                         "FROM main.images AS images")
        if _unnamed_blobs(unit):
            unit.execute(f"CREATE TEMP VIEW blobs AS SELECT {_BLOB_COLUMNS_9}, '' AS name FROM main.blobs")
        columns = columns_of(connection, "files")
        if "files" in tables and "version" not in columns:  # (the views keep the rowid: search)
            unit.execute(f"CREATE TEMP VIEW files AS SELECT rowid AS rowid, {_FILES_BEFORE_7} FROM main.files")
        elif "files" in tables and "detail" not in columns:
            nulls = ", ".join(f"NULL AS {column.split()[0]}" for column in _FILE_COLUMNS_11)
            unit.execute(f"CREATE TEMP VIEW files AS SELECT rowid AS rowid, *, {nulls} FROM main.files")
        if version is not None and version < 11 and "mappings" in tables:
            missing = (*(_MAPPING_COLUMNS_5 if version < 5 else ()), *(_MAPPING_COLUMNS_9 if version < 9 else ()),
                       *_MAPPING_COLUMNS_11)
            since = ("NULL AS source_name, " if version < 3 else "") + ", ".join(
                f"NULL AS {column.split()[0]}" for column in missing)
            unit.execute(f"CREATE TEMP VIEW mappings AS SELECT *, {since} FROM main.mappings")


#: The columns a shared state of schema 10 (the first a shared state had) lacks, by table.
_SHARED_COLUMNS_11 = {"files": _FILE_COLUMNS_11, "mappings": _MAPPING_COLUMNS_11}


def _on_postgres(column: str) -> str:
    """A column as SQLite's files spell it (``expires_at FLOAT``), as PostgreSQL's tables have it."""
    return column.replace(" FLOAT", " DOUBLE PRECISION")


def _add_shared_columns(unit: UnitOfWork, have: set[str]) -> None:
    """The columns schema 11 added, in a shared state of schema 10 (the first schema a shared state had)."""
    for name, columns in _SHARED_COLUMNS_11.items():
        for column in columns if name in have else ():
            unit.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {_on_postgres(column)}")


def read_shared_as_current(unit: UnitOfWork) -> None:
    """Let a reader read a shared state of an older schema as if it were upgraded, writing nothing to it: the
    columns added since come through temporary views of the connection's own (made again on every
    connection made after the server was lost)."""
    rows = unit.rows(select(table(MetaRow).c.value).where(table(MetaRow).c.key == "schema"))
    schema = str(rows[0][0]) if rows else str(SCHEMA_VERSION)
    if not (schema.isascii() and schema.isdigit()) or int(schema) >= 11:
        return

    def made(connection: Connection) -> None:
        # (asked on each connection: another site may have upgraded the state since, and a view naming a
        # column the table now has would be refused, and with it every read of this reader's)
        for name, columns in _SHARED_COLUMNS_11.items():
            have = {row[0] for row in connection.exec_driver_sql(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s", (name,))}
            if missing := [column for column in columns if column.split()[0] not in have]:
                connection.exec_driver_sql(
                    f"CREATE TEMP VIEW {name} AS SELECT *, " + ", ".join(
                        f"NULL::{_on_postgres(column).split(maxsplit=1)[1]} AS {column.split()[0]}"
                        for column in missing) + f" FROM public.{name}")

    with unit.guarded():
        made(unit.connection)
    unit.on_connect.append(made)


def set_up_shared(unit: UnitOfWork, where: str) -> None:
    """A shared state's schema (PostgreSQL), made by the first site to open it: every table, with the
    indexes, the search index and the triggers that count changes, in one transaction under the schema's
    lock (two sites' first runs at once make it once). A database holding other programs' tables, or a
    newer packsync's schema, is refused before anything is written."""
    from packsync.state import pg_search, postgres

    with unit.transaction():
        postgres.schema_lock(unit.connection)
        have = postgres.tables_of(unit.connection)
        shared = {**TABLES, **SHARED_ONLY}
        if "meta" in have:
            meta = {key: value for key, value in unit.rows(select(table(MetaRow).c.key, table(MetaRow).c.value))}
            if meta.get("app") != APP_ID:
                raise StateError(f"the database {where} holds another program's tables; give packsync a database "
                                 "of its own.")
            schema = meta.get("schema", "0")
            if schema.isascii() and schema.isdigit() and int(schema) > SCHEMA_VERSION:
                raise StateError(f"the shared state {where} was written by a newer packsync (schema {schema}); "
                                 "upgrade packsync on this machine to use it.")
            if have >= shared.keys() and pg_search.exists(unit) and schema == str(SCHEMA_VERSION):
                return
            if schema.isascii() and schema.isdigit() and int(schema) < 11:  # schema 10 → 11
                _add_shared_columns(unit, have)
        elif have:  # (packsync makes its schema in one transaction: tables without its meta are not its own)
            raise StateError(f"the database {where} holds other tables ({', '.join(sorted(have)[:3])}…); give "
                             "packsync a database of its own.")
        METADATA.create_all(unit.connection, tables=[t for name, t in shared.items() if name not in have])
        if not pg_search.exists(unit):
            pg_search.create(unit)
        for statement in postgres.count_changes(PLANNED_FROM):
            unit.execute(statement)
        unit.write(_COUNT_FROM_ZERO, [(0, 0)])
        unit.write(_META, [("app", APP_ID), ("schema", str(SCHEMA_VERSION))])
