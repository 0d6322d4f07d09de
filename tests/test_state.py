"""The state file across releases: what any earlier packsync wrote opens, upgrades in place and is used
as it is — every row kept, nothing uploaded or added again — and reading it (``status``, ``--dry-run``,
``search``) writes nothing.

``tests/data/state-schema-6.sql`` is a real state written by the last release on plain sqlite3 (its
header says how it was made). The earlier schemas are that file's schema taken back a release at a
time, as each release's migration added to it; schema 7 (the file cache keeping each source's
version token instead of a folder's stat key in four columns) is this release's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import Env, image, write
from helpers import state_rows

from packsync.state.sqlite import count_changes
from packsync.state.store import State
from packsync.state.tables import SCHEMA_VERSION

DUMP = Path(__file__).parent / "data" / "state-schema-6.sql"
#: The folder the dump's state was made in: its paths start with it.
DUMP_ROOT = "/tmp/packsync-state-6"
#: The tables of packsync's own (the search index's are SQLite's, checked by its integrity check).
TABLES = ("meta", "files", "problems", "blobs", "images", "url_contents", "pulled", "sidecars", "mappings",
          "daemon", "changes", "settled")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_dump(path: Path, root: Path) -> None:
    """The dump's state, as a WAL file at ``path`` whose folders are under ``root``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(DUMP.read_text(encoding="utf-8").replace(DUMP_ROOT, str(root)))


def every_row(path: Path) -> dict[str, list[tuple[object, ...]]]:
    present = {name for (name,) in state_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {table: sorted(state_rows(path, f"SELECT * FROM {table}"), key=repr) for table in TABLES
            if table in present}


def stat_key_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A file cache row of schema 11 as schema 6 kept it: a folder's stat key in four columns, zeros for
    an Astria image (whose version is its URL), no detail."""
    root, rel_path, version, size, *verdict, _detail = row
    parts = version.split(":")
    dev, inode, _size, mtime_ns = map(int, parts) if len(parts) == 4 and all(p.isdigit() for p in parts) \
        else (0, 0, size, 0)
    return (root, rel_path, dev, inode, size, mtime_ns, *verdict)


def version_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A file cache row of schema 6 as schema 7 keeps it (the upgrade's conversion, said again)."""
    root, rel_path, dev, inode, size, mtime_ns, *verdict = row
    version = rel_path if (dev, inode, mtime_ns) == (0, 0, 0) else f"{dev}:{inode}:{size}:{mtime_ns}"
    return (root, rel_path, version, size, *verdict, None)  # (11: no detail)


def upgraded(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """``every_row`` of a schema-6 file as it reads once upgraded to this schema."""
    return {**rows, "meta": sorted([("app", "packsync"), ("schema", str(SCHEMA_VERSION))], key=repr),
            "files": sorted(map(version_row, rows["files"]), key=repr),
            # (9: withheld_count, paused; 11: expires_at)
            **({"mappings": [(*row, None, None, None) for row in rows["mappings"]]} if "mappings" in rows else {}),
            **({"images": [(*row, "") for row in rows["images"]]} if "images" in rows else {}),  # (8: as they were)
            **({"blobs": [(*row, "") for row in rows["blobs"]]} if "blobs" in rows else {})}  # (10: unnamed)


def schema_6_ddl() -> list[str]:
    """The statements that make an empty state of schema 6 as that release made it (read off the dump)."""
    sql = DUMP.read_text(encoding="utf-8")
    statements = [s.strip() for s in sql.split(";\n") if s.strip().startswith("CREATE ")]
    fts = re.search(r"VALUES\('table','image_text','image_text',0,'(.*?)'\);\n", sql)
    assert fts, "the dump holds the search index's table"
    index = fts.group(1).replace("''", "'")
    tables = [s for s in statements if s.startswith("CREATE TABLE ") and not s.startswith("CREATE TABLE 'image_text")]
    return [*tables, index, *(s for s in statements if s.startswith(("CREATE INDEX", "CREATE TRIGGER")))]


#: Schema 10's index of the folders inside a mapped folder (folders alone; an Astria pack's label spelt out).
FILE_TEXT_10 = [
    "CREATE VIRTUAL TABLE file_text USING fts5(folders)",
    "CREATE TRIGGER file_text_insert AFTER INSERT ON files BEGIN INSERT INTO file_text(rowid, folders) SELECT "
    "new.rowid, rtrim(new.rel_path, replace(new.rel_path, '/', '')) WHERE substr(new.root, 1, 7) <> 'astria:' "
    "AND instr(new.rel_path, '/') > 0; END",
    "CREATE TRIGGER file_text_delete AFTER DELETE ON files BEGIN DELETE FROM file_text WHERE rowid = old.rowid; END",
    "CREATE TRIGGER file_text_update AFTER UPDATE OF root, rel_path ON files BEGIN DELETE FROM file_text WHERE "
    "rowid = old.rowid; INSERT INTO file_text(rowid, folders) SELECT new.rowid, rtrim(new.rel_path, "
    "replace(new.rel_path, '/', '')) WHERE substr(new.root, 1, 7) <> 'astria:' AND instr(new.rel_path, '/') > 0; END",
]
#: What each schema added, undone to take a file back to the one before (schema 7 and older: a schema-6 one).
ADDED_BY = {
    11: ["DROP TRIGGER file_text_insert", "DROP TRIGGER file_text_delete", "DROP TRIGGER file_text_update",
         "DROP TABLE file_text", "ALTER TABLE files DROP COLUMN detail", "ALTER TABLE mappings DROP COLUMN expires_at",
         *FILE_TEXT_10, "INSERT INTO file_text(rowid, folders) SELECT rowid, "
         "rtrim(rel_path, replace(rel_path, '/', '')) FROM files WHERE substr(root, 1, 7) <> 'astria:' "
         "AND instr(rel_path, '/') > 0"],
    10: ["DROP TABLE failed",
         "ALTER TABLE blobs RENAME TO blobs_10", "DROP INDEX ix_blobs_url",
         "CREATE TABLE blobs (sha256 VARCHAR NOT NULL PRIMARY KEY, content_type VARCHAR NOT NULL, url VARCHAR, "
         "upload_url VARCHAR, expires_at FLOAT, uploaded BOOLEAN NOT NULL)",
         "INSERT INTO blobs SELECT sha256, content_type, url, upload_url, expires_at, uploaded FROM blobs_10",
         "DROP TABLE blobs_10", "CREATE INDEX ix_blobs_url ON blobs (url)", *count_changes(("blobs",))],
    9: ["DROP TABLE activity", "ALTER TABLE mappings DROP COLUMN withheld_count",
        "ALTER TABLE mappings DROP COLUMN paused"],
    8: ["DROP TABLE prepared", "ALTER TABLE images DROP COLUMN recipe"],  # (its triggers go with the table)
    6: ["DROP TABLE changes", "DROP TABLE settled", *(f"DROP TRIGGER {table}_{event}_counted"
                                                      for table in ("images", "blobs", "url_contents")
                                                      for event in ("insert", "update", "delete"))],
    5: ["DROP INDEX ix_images_pack_sha256", "ALTER TABLE images DROP COLUMN meta_model",
        "ALTER TABLE mappings DROP COLUMN ok_at", "ALTER TABLE mappings DROP COLUMN safety",
        "ALTER TABLE mappings DROP COLUMN withheld"],
    4: ["DROP TRIGGER image_text_insert", "DROP TRIGGER image_text_delete", "DROP TRIGGER image_text_update",
        "DROP TABLE image_text"],
    3: ["ALTER TABLE mappings DROP COLUMN source_name"],
    2: ["ALTER TABLE images DROP COLUMN owner"],
}


def back_to(state: Path, version: int) -> None:
    """This release's file as the release of schema ``version`` (7 or later) left it."""
    with closing(sqlite3.connect(state, isolation_level=None)) as db:
        for undone in range(SCHEMA_VERSION, version, -1):
            for statement in ADDED_BY[undone]:
                db.execute(statement)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(version),))


def copy_rows(old: sqlite3.Connection, new: sqlite3.Connection) -> None:
    """Every row of ``old`` into the tables of ``new`` (a schema-6 file: its columns, its file cache's stat keys)."""
    for table in TABLES:
        columns = [row[1] for row in new.execute(f"PRAGMA table_info({table})")]
        if not columns:
            continue  # (a table schema 6 did not have)
        rows = old.execute("SELECT * FROM files").fetchall() if table == "files" else \
            old.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
        new.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        map(stat_key_row, rows) if table == "files" else rows)


def as_schema(state: Path, version: int) -> None:
    """Rebuild a state file, rows and all, on the schema-6 release's own DDL, then take it back to ``version``
    (this release's file is left as it is)."""
    if version == SCHEMA_VERSION:
        return
    if version >= 7:
        back_to(state, version)
        return
    rebuilt = state.with_name("rebuilt.db")
    ddl = schema_6_ddl()
    with closing(sqlite3.connect(state)) as old, closing(sqlite3.connect(rebuilt, isolation_level=None)) as new:
        new.execute("PRAGMA journal_mode=WAL")
        new.execute("BEGIN")
        for statement in ddl:
            if not statement.startswith(("CREATE INDEX", "CREATE TRIGGER")):
                new.execute(statement)
        copy_rows(old, new)
        new.execute("INSERT INTO image_text(image_text) VALUES ('rebuild')")
        for statement in ddl:
            if statement.startswith(("CREATE INDEX", "CREATE TRIGGER")):
                new.execute(statement)
        for undone in range(6, version, -1):  # (the DDL is schema 6's)
            for statement in ADDED_BY[undone]:
                new.execute(statement)
        new.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(version),))
        new.execute("COMMIT")
    for leftover in state.parent.glob(state.name + "-*"):
        leftover.unlink()
    os.replace(rebuilt, state)


def test_the_schema_6_release_s_state_opens_and_reading_it_writes_nothing(env: Env) -> None:
    load_dump(env.state_path, env.root)
    brand_pack, = (pack for (pack,) in state_rows(env.state_path, "SELECT pack_id FROM mappings WHERE root = ?",
                                                  str(env.root / "brand")))
    env.map("brand", pack_id=brand_pack, sidecars="xmp")
    env.map("logos", pack="Logos")
    rows = every_row(env.state_path)
    before = digest(env.state_path)

    status = json.loads(env.cli("status", "--json", "--files", token=None).stdout)
    found = env.cli("search", "red", token=None)
    env.cli("run", "--dry-run")

    brand = status["mappings"][0]
    assert (brand["files"], brand["synced"], brand["skipped"], brand["images"]) == (6, 5, 1, 4)
    assert brand["metadata"]["completed"] == 4
    assert found.returncode == 0 and str(env.root / "brand" / "photo-2.png") in found.stdout
    assert str(env.root / "logos" / "logo.png") in found.stdout
    assert digest(env.state_path) == before, "reading the state wrote to it"

    State(env.state_path).close()  # opened to write: what `run` does first

    assert every_row(env.state_path) == upgraded(rows), "opening it changed a row (beyond the upgrade's)"
    assert state_rows(env.state_path, "PRAGMA integrity_check") == [("ok",)]
    state = State(env.state_path, readonly=True)
    try:
        assert {image.file_name for image, _owner in state.metadata.search(["red"])} == {"photo-2.png", "logo.png"}
        assert state.uploads.pulled(str(env.root / "pulled"))
    finally:
        state.close()


@pytest.mark.parametrize("version", range(SCHEMA_VERSION, 0, -1))
def test_a_state_of_every_earlier_schema_upgrades_keeping_its_rows_and_uploads_nothing(env: Env,
                                                                                       version: int) -> None:
    """A real sync, then the file rebuilt as release ``version`` made it: reading it writes nothing, the
    next run upgrades it in one go and makes no call that changes the pack, and every row is kept."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "sunset.png", image())
    write(folder / "harbour.png", image())
    assert env.cli("run").returncode == 0
    as_schema(env.state_path, version)
    kept = {table: rows for table, rows in every_row(env.state_path).items()
            if table in ("files", "problems", "blobs", "url_contents", "pulled")}
    if version < 7:  # (schema 7 keeps a file's version token as this one does)
        kept["files"] = upgraded(kept)["files"]
    elif version < 11:  # (an item cached before schema 11 has no detail)
        kept["files"] = [(*row, None) for row in kept["files"]]
    if version < 10:  # (an upload made before schema 10 has no name)
        kept["blobs"] = upgraded(kept)["blobs"]
    images = state_rows(env.state_path, "SELECT pack_id, image_id, sha256, url, file_name, meta_status, description, "
                                        "keywords FROM images ORDER BY image_id")
    before = digest(env.state_path)

    status = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]
    dry = env.cli("run", "--dry-run")
    found = env.cli("search", "sunset", token=None)

    assert (status["images"], status["synced"]) == (2, 2)
    assert dry.returncode == 0 and "nothing to do" in dry.stdout
    assert str(folder / "sunset.png") in found.stdout
    assert digest(env.state_path) == before, "reading an older state upgraded it"

    env.sandbox.reset_calls()
    assert env.cli("run", "--no-wait").returncode == 0
    assert env.sandbox.mutating_calls() == 0

    assert state_rows(env.state_path, "SELECT value FROM meta WHERE key = 'schema'") == [(str(SCHEMA_VERSION),)]
    assert {t: r for t, r in every_row(env.state_path).items() if t in kept} == kept
    assert state_rows(env.state_path, "SELECT pack_id, image_id, sha256, url, file_name, meta_status, description, "
                                      "keywords FROM images ORDER BY image_id") == images
    assert state_rows(env.state_path, "SELECT DISTINCT owner FROM images") == [(str(folder),)]
    assert "sunset.png" in env.cli("search", "sunset", token=None).stdout
    write(folder / "dawn.png", image())
    (folder / "harbour.png").unlink()
    result = env.cli("run", "--no-wait")
    assert result.returncode == 0 and "1 added, 1 deleted, 0 skipped, 0 failed" in result.stdout, result.stdout


def test_the_schema_6_release_s_file_cache_is_still_valid_once_upgraded(env: Env) -> None:
    """The stat keys schema 6 kept become the folder's version tokens: no file is read again."""
    load_dump(env.state_path, env.root)
    brand_pack, = (pack for (pack,) in state_rows(env.state_path, "SELECT pack_id FROM mappings WHERE root = ?",
                                                  str(env.root / "brand")))
    brand = env.map("brand", pack_id=brand_pack)
    logos = env.map("logos", pack="Logos")
    with closing(sqlite3.connect(env.state_path)) as db, db:
        # the files as that release saw them: here, on this disk
        for root, rel_path in db.execute("SELECT root, rel_path FROM files").fetchall():
            st = write(Path(root) / rel_path, image(seed=len(rel_path))).stat()
            db.execute("UPDATE files SET dev = ?, inode = ?, size = ?, mtime_ns = ? WHERE root = ? AND rel_path = ?",
                       (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, root, rel_path))

    report = env.sync()

    assert {m.label: m.hashed_files for m in report.mappings} == {str(brand): 0, str(logos): 0}
    assert state_rows(env.state_path, "SELECT value FROM meta WHERE key = 'schema'") == [(str(SCHEMA_VERSION),)]
