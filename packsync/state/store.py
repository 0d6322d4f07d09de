"""The state database: what packsync knows of files, uploads and the images it added.

One SQLite file (WAL mode, private to the user) with these tables:

- ``files``    — per mapped folder and relative path: the stat key and the content hash, so an
                 unchanged tree is never read again; a bad file's verdict is cached the same way.
- ``problems`` — per mapped folder: the files its last scan skipped, with the reason.
- ``blobs``    — per content hash: the upload's CDN URL, its presigned URL while the PUT is not
                 confirmed, and whether it is. The same bytes are uploaded once, for every pack.
- ``images``   — per pack image packsync added: its content, URL, name, AI metadata and the
                 mapping that owns it. Only these images are packsync's to delete, each by its owner.
- ``url_contents`` — per image URL packsync downloaded: the content it serves (or why not known),
                 so no URL is downloaded twice.
- ``pulled``   — per folder ``packsync pull`` wrote to: each file it wrote and the image it came from.
- ``mappings`` — per mapped source: the pack it syncs to, the source's own name (an Astria pack's
                 title) and how the last sync went.
- ``daemon``   — one row: what the running daemon is doing, for ``packsync status``.
- ``image_text`` — a full-text index (FTS5) of the images' names, descriptions and keywords, kept by
                 triggers on ``images``, for ``packsync search``.

Folders and other sources are keyed by their label (a folder's path). Every step is committed as
soon as the API confirms it, so a killed run loses at most the step in flight — and the planner
recognises that step's result by its URL on the next run. Inside ``write_behind`` (the executor's
uploads, adds and deletes) steps are queued and committed together: before any read through this
store, with any other transaction, at ``flush`` and every ``QUEUED_AT_MOST`` steps; they leave the
queue only once a commit holds them. A killed run loses at most those few, each of which the next
run finds again: an added image by its content's URL, committed before the add is sent, and an
upload whose bytes were not recorded as sent by sending them again. Other connections (``status``,
the page) see queued steps once they are committed.

SQLite errors, at opening or at any later moment, are translated here and nowhere else: into
``StateUnavailable`` when they may pass (locked by another program, disk full, an I/O error) and
``StateError`` otherwise, each in one sentence naming the file. A ``readonly`` store (``--dry-run``,
``status``) never writes: not the file, and not a missing file into existence — the one exception
being SQLite's own crash recovery, which rolls back a transaction a killed process left half done.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
from msgspec.structs import astuple, replace

from packsync.errors import StateError, StateUnavailable
from packsync.logs import get_logger
from packsync.model import METADATA_SETTLED, Blob, CachedFile, ManagedImage, Metadata, Problem, UrlContent

SCHEMA_VERSION = 6
#: Steps ``write_behind`` queues at most before it commits them.
QUEUED_AT_MOST = 64
APP_ID = "packsync"

#: The tables, as SQLite keeps them. Every column without a value is written by packsync explicitly:
#: the files earlier versions made have no DEFAULT clauses.
TABLES = {
    "meta": """(key VARCHAR NOT NULL PRIMARY KEY, value VARCHAR NOT NULL)""",
    "files": """(root VARCHAR NOT NULL, rel_path VARCHAR NOT NULL, dev INTEGER NOT NULL, inode INTEGER NOT NULL,
        size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 VARCHAR, content_type VARCHAR, problem VARCHAR,
        PRIMARY KEY (root, rel_path))""",
    "problems": """(root VARCHAR NOT NULL, rel_path VARCHAR NOT NULL, reason VARCHAR NOT NULL,
        notice BOOLEAN NOT NULL, PRIMARY KEY (root, rel_path))""",
    "blobs": """(sha256 VARCHAR NOT NULL PRIMARY KEY, content_type VARCHAR NOT NULL, url VARCHAR, upload_url VARCHAR,
        expires_at FLOAT, uploaded BOOLEAN NOT NULL)""",
    "images": """(pack_id VARCHAR NOT NULL, image_id VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, url VARCHAR NOT NULL,
        file_name VARCHAR NOT NULL, meta_status VARCHAR NOT NULL, description VARCHAR, keywords VARCHAR NOT NULL,
        meta_error VARCHAR, added_at FLOAT NOT NULL, owner VARCHAR NOT NULL, meta_model VARCHAR,
        PRIMARY KEY (pack_id, image_id))""",
    "url_contents": """(url VARCHAR NOT NULL PRIMARY KEY, sha256 VARCHAR, size INTEGER NOT NULL,
        content_type VARCHAR, problem VARCHAR)""",
    "pulled": """(folder VARCHAR NOT NULL, pack_id VARCHAR NOT NULL, image_id VARCHAR NOT NULL, name VARCHAR NOT NULL,
        url VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, PRIMARY KEY (folder, pack_id, image_id))""",
    "sidecars": """(root VARCHAR NOT NULL, rel_path VARCHAR NOT NULL, digest VARCHAR NOT NULL, size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL, PRIMARY KEY (root, rel_path))""",
    "mappings": """(root VARCHAR NOT NULL PRIMARY KEY, pack_id VARCHAR, pack_name VARCHAR, synced_at FLOAT,
        last_error VARCHAR, source_name VARCHAR, ok_at FLOAT, safety VARCHAR, withheld VARCHAR)""",
    "daemon": """(id INTEGER NOT NULL PRIMARY KEY, pid INTEGER, started_at FLOAT, last_full_scan FLOAT,
        queue INTEGER NOT NULL, state VARCHAR NOT NULL, last_error VARCHAR, updated_at FLOAT)""",
    "changes": """(id INTEGER NOT NULL PRIMARY KEY, count INTEGER NOT NULL)""",
    "settled": """(root VARCHAR NOT NULL PRIMARY KEY, fingerprint VARCHAR NOT NULL)""",
}
#: The tables a mapping's plan reads besides its scan and its pack: every change to one of them is
#: counted (``Store.changes``), so a fingerprint of a plan's inputs can hold the state's part as a number.
PLANNED_FROM = ("images", "blobs", "url_contents")
COUNTED = [f"CREATE TRIGGER IF NOT EXISTS {table}_{event.lower()}_counted AFTER {event} ON {table} "
           "BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END"
           for table in PLANNED_FROM for event in ("INSERT", "UPDATE", "DELETE")]
#: A full-text index over the images' names, AI descriptions and keywords (SQLite's FTS5), kept by
#: triggers as ``images`` changes: it holds no copy of the text, only the index.
SEARCH = [
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

INDEXES = {
    "ix_blobs_url": "blobs (url)",
    "ix_images_sha256": "images (sha256)",
    "ix_images_pack_sha256": "images (pack_id, sha256)",
    "ix_url_contents_sha256": "url_contents (sha256)",
}


class PulledFile(msgspec.Struct, frozen=True):
    folder: str
    pack_id: str
    name: str
    image_id: str
    url: str
    sha256: str


class SidecarRecord(msgspec.Struct, frozen=True):
    """A sidecar as packsync last wrote it: what it said (``digest``), and the file's size and mtime then."""

    digest: str
    size: int
    mtime_ns: int


class MappingRecord(msgspec.Struct, frozen=True):
    """What the state remembers of a mapping: ``source_name`` is what its source calls itself (an Astria
    pack's title); ``ok_at`` when a sync last ended without error; ``safety`` the safety stop holding
    its deletes back, if any, and ``withheld`` what ``--force`` would delete (JSON: a list of names)."""

    root: str
    pack_id: str | None = None
    pack_name: str | None = None
    synced_at: float | None = None
    last_error: str | None = None
    source_name: str | None = None
    ok_at: float | None = None
    safety: str | None = None
    withheld: str | None = None

    @property
    def withheld_names(self) -> list[str]:
        try:
            names = json.loads(self.withheld or "[]")
        except ValueError:
            return []
        return [str(name) for name in names] if isinstance(names, list) else []


class DaemonRecord(msgspec.Struct, frozen=True):
    """What a running daemon is doing, for `packsync status` (one row)."""

    pid: int | None = None
    started_at: float | None = None
    last_full_scan: float | None = None
    queue: int = 0
    state: str = "stopped"
    last_error: str | None = None
    updated_at: float | None = None


def _private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by the user only, if it does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise unusable(path, exc) from None
    if head and head != b"SQLite format 3\x00":
        raise StateError(f"{path} is not a SQLite database; packsync will not overwrite it. "
                         "Move it away, or set [state] path to another file.")


#: Settled metadata read without its details is the same value for every image: share it.
_BARE = {status: Metadata(status) for status in METADATA_SETTLED}


def _image(pack_id: str, image_id: str, sha256: str, url: str, file_name: str, owner: str, status: str,
           description: str | None, keywords: str, error: str | None, model: str | None) -> ManagedImage:
    if description is None and error is None and keywords == "[]" and model is None:
        metadata = _BARE.get(status) or Metadata(status)
    else:
        metadata = Metadata(status, description, tuple(json.loads(keywords)), error, model)
    return ManagedImage(pack_id, image_id, sha256, url, file_name, owner, metadata)


T = TypeVar("T")


def unusable(path: Path, exc: BaseException) -> StateError:
    """The one sentence for an error of the database at ``path`` (SQLite's, or the file system's)."""
    origin = exc
    name = getattr(origin, "sqlite_errorname", "") or ""
    code = origin.errno if isinstance(origin, OSError) else None
    text = str(origin).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return StateUnavailable(f"the state database {path} is locked by another program "
                                "(a backup tool, or a sqlite3 shell holding a transaction?).")
    if name == "SQLITE_FULL" or code == errno.ENOSPC or (name.startswith("SQLITE_IOERR") and _disk_full(path)):
        return StateUnavailable(f"no space left on the device of {path}.")
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN")) \
            or code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StateError(f"cannot write the state database {path}: permission denied (check the owner and "
                          "mode of the file and of its folder).")
    if name.startswith("SQLITE_IOERR") or code == errno.EIO:
        return StateUnavailable(f"the state database {path} could not be read or written (I/O error).")
    if isinstance(origin, OSError):
        return StateError(f"cannot use the state database {path} ({origin.strerror or origin}).")
    return StateError(f"the state database {path} is corrupt ({origin}); packsync will not replace it. "
                      "Move it away to start over.")


_MAPPING_COLUMNS = list(MappingRecord.__struct_fields__)
_MAPPING_FIELDS = ", ".join(_MAPPING_COLUMNS)
#: The mapping columns schema 5 added (the table's definition above has them too).
_MAPPING_COLUMNS_5 = ("ok_at FLOAT", "safety VARCHAR", "withheld VARCHAR")
_IMAGE_FIELDS = "pack_id, image_id, sha256, url, file_name, owner, meta_status, description, keywords, meta_error, " \
    "meta_model"

#: Who owns an image recorded before schema 2 (which had one mapping per pack and state): the mapping
#: into its pack whose folder holds its content, else the first mapping into its pack, else '' — an
#: image any mapping into that pack may manage.
_OWNER_BEFORE_2 = (
    "coalesce((SELECT m.root FROM mappings m JOIN files f ON f.root = m.root AND f.sha256 = images.sha256 "
    "WHERE m.pack_id = images.pack_id ORDER BY m.root LIMIT 1), "
    "(SELECT root FROM mappings m WHERE m.pack_id = images.pack_id ORDER BY m.root LIMIT 1), '')")


def _readonly_uri(path: Path) -> str:
    """How to open ``path`` only to read it.

    In a folder nobody can write to (a read-only mount, another user's folder), SQLite cannot make
    the shared-memory file a reader of a WAL database needs; there, with no write-ahead log left
    over, no writer can exist either, so the file is opened as immutable.
    """
    wal = path.with_name(path.name + "-wal")
    immutable = not os.access(path.parent, os.W_OK) and not wal.exists()
    return f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def _disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (next to) no space left: SQLite reports a write that
    failed for want of space as an I/O error."""
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 64 * 1024


def _translating(method: Callable[..., T]) -> Callable[..., T]:
    """SQLite's and the file system's errors, raised at any moment, as packsync's own."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            self.rollback()
            raise unusable(self.path, exc) from None

    return wrapper


def _tables(db: sqlite3.Connection, schema: str = "main") -> set[str]:
    return {row[0] for row in db.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}


def _create(db: sqlite3.Connection, names: Iterable[str], *, temp: bool = False) -> None:
    """Create these tables (with their indexes; a temporary one, empty for good, needs none)."""
    for name in names:
        db.execute(f"CREATE {'TEMP ' if temp else ''}TABLE IF NOT EXISTS {name} {TABLES[name]}")
        if not temp:
            for index, target in INDEXES.items():
                if target.split()[0] == name:
                    db.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {target}")


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode: packsync says where each transaction begins (``_transaction``)."""
    return sqlite3.connect(target, uri=uri, check_same_thread=False, isolation_level=None)


_SAVE_URL_CONTENT = ("INSERT OR REPLACE INTO url_contents (url, sha256, size, content_type, problem) "
                     "VALUES (?, ?, ?, ?, ?)")


def _url_content_row(content: UrlContent) -> tuple[Any, ...]:
    return content.url, content.sha256, content.size, content.content_type, content.problem


#: The statuses of settled metadata, as an SQL list.
_SETTLED_SQL = ", ".join(f"'{status}'" for status in METADATA_SETTLED)


class Store:
    """The state database, used from one thread at a time."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._queued: list[tuple[str, list[Sequence[Any]]]] | None = None  # inside ``write_behind`` only
        try:
            _check_header(path)
            version, tables = self._inspect()
            if readonly and version is None:
                # Nothing to read yet (no file, or one a first run left unfinished): an empty state in
                # memory, so that a dry run or `status` creates nothing.
                self.db = _connect(":memory:")
                _create(self.db, TABLES)
            elif readonly:
                self.db = _connect(_readonly_uri(path), uri=True)
                self._read_as_current(version, tables)
            else:
                _private_file(path)
                self.db = _connect(str(path))
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA busy_timeout=2000")
                self._set_up(version, tables)
        except (sqlite3.Error, OSError) as exc:
            if hasattr(self, "db"):
                self.db.close()
            raise unusable(path, exc) from None

    def _inspect(self) -> tuple[int | None, set[str]]:
        """The schema version of an existing state file (None: new or unfinished) and its tables, read
        only: nothing is written before the file is known to be packsync's, not even the switch to WAL.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None, set()
        try:
            try:
                tables, meta = self._read_meta()
            except sqlite3.OperationalError as exc:
                if not (exc.sqlite_errorname or "").startswith("SQLITE_READONLY_"):
                    raise
                # A process killed mid-transaction left a journal that only a writer can roll back
                # (SQLite's own crash recovery: it restores the last committed state), then read again.
                with closing(sqlite3.connect(self.path)) as connection:
                    connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
                tables, meta = self._read_meta()
        except sqlite3.DatabaseError as exc:
            raise unusable(self.path, exc) from None
        foreign = StateError(f"{self.path} is a SQLite database of another program; packsync will not touch it. "
                             "Set [state] path to another file.")
        if not meta:
            # A first run killed while creating the tables leaves only packsync's own, unfinished.
            if tables <= TABLES.keys():
                return None, tables
            raise foreign
        if meta.get("app") != APP_ID:
            raise foreign
        version = int(meta.get("schema", "0"))
        if version > SCHEMA_VERSION:
            raise StateError(f"{self.path} was written by a newer packsync (schema {version}); "
                             "upgrade packsync to use it.")
        return version, tables

    def _read_meta(self) -> tuple[set[str], dict[str, str]]:
        with closing(sqlite3.connect(_readonly_uri(self.path), uri=True)) as connection:
            tables = _tables(connection)
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        return tables, meta

    def _set_up(self, version: int | None, tables: set[str]) -> None:
        """Create what is missing and migrate forward, in one transaction: a run killed half-way, or a
        first run killed before it wrote its schema version, leaves a file the next run finishes."""
        if version == SCHEMA_VERSION and tables >= {*TABLES, "image_text"}:
            return
        with self._transaction() as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
            if columns and "owner" not in columns:  # schema 1 → 2
                db.execute("ALTER TABLE images ADD COLUMN owner VARCHAR NOT NULL DEFAULT ''")
                db.execute(f"UPDATE images SET owner = {_OWNER_BEFORE_2}")
            if columns and "meta_model" not in columns:  # schema 4 → 5
                db.execute("ALTER TABLE images ADD COLUMN meta_model VARCHAR")
            columns = {row[1] for row in db.execute("PRAGMA table_info(mappings)")}
            if columns and "source_name" not in columns:  # schema 2 → 3
                db.execute("ALTER TABLE mappings ADD COLUMN source_name VARCHAR")
            for column in _MAPPING_COLUMNS_5:  # schema 4 → 5
                if columns and column.split()[0] not in columns:
                    db.execute(f"ALTER TABLE mappings ADD COLUMN {column}")
            _create(db, TABLES.keys() - _tables(db))
            for index, target in INDEXES.items():  # schema 4 → 5: images by pack and content
                db.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {target}")
            if "image_text" not in _tables(db):  # schema 3 → 4: the search index, of every image recorded
                for statement in SEARCH:
                    db.execute(statement)
                db.execute("INSERT INTO image_text(image_text) VALUES ('rebuild')")
            db.execute("INSERT OR IGNORE INTO changes (id, count) VALUES (0, 0)")  # schema 5 → 6
            for statement in COUNTED:
                db.execute(statement)
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           [("app", APP_ID), ("schema", str(SCHEMA_VERSION))])

    def _read_as_current(self, version: int | None, tables: set[str]) -> None:
        """Let a read-only store read an older file as if it were migrated, writing nothing: tables
        added since are empty temporary tables, and images get their owner through a view."""
        _create(self.db, TABLES.keys() - tables, temp=True)
        columns = {row[1] for row in self.db.execute("PRAGMA main.table_info(images)")}
        if columns and not columns >= {"owner", "meta_model"}:  # a view keeps the rowid, for the search index
            added = [] if "owner" in columns else [f"{_OWNER_BEFORE_2} AS owner"]
            added += [] if "meta_model" in columns else ["NULL AS meta_model"]
            self.db.execute(f"CREATE TEMP VIEW images AS SELECT rowid AS rowid, *, {', '.join(added)} "
                            "FROM main.images AS images")
        if version is not None and version < 5 and "mappings" in tables:
            since = ("NULL AS source_name, " if version < 3 else "") + ", ".join(
                f"NULL AS {column.split()[0]}" for column in _MAPPING_COLUMNS_5)
            self.db.execute(f"CREATE TEMP VIEW mappings AS SELECT *, {since} FROM main.mappings")

    def close(self) -> None:
        self.db.close()

    def rollback(self) -> None:
        """Drop a transaction an error left open, so that the store can be used again."""
        try:
            if self.db.in_transaction:
                self.db.rollback()
        except sqlite3.Error:
            pass

    @contextmanager
    def write_behind(self) -> Iterator[None]:
        """Steps written inside are queued and committed together (see the module's docstring): one
        commit for many steps, where each costs as much as the request it records.

        When the block ends its steps are committed; if it ends in an error (a refused key, a
        cancellation), that error is the one raised even if the commit fails too. Steps a failed
        commit leaves behind are lost then, and found again by the next run like a kill's. Within an
        enclosing block, it is that block's queue.
        """
        if self._queued is not None:
            yield
            return
        self._queued = []
        try:
            yield
        except BaseException:
            try:
                self.flush()
            except StateError as exc:
                get_logger().warning("state: the last steps could not be recorded", error=str(exc))
            raise
        else:
            self.flush()
        finally:
            self._queued = None

    def flush(self) -> None:
        """Commit the steps ``write_behind`` queued (inside a transaction: that transaction will)."""
        if self._queued and not self.db.in_transaction:
            with self._transaction():
                pass

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Statements committed together, or not at all, after any steps queued before them (which stay
        queued until a commit holds them). IMMEDIATE: the write lock is taken (or waited for, up to the
        busy timeout) at the start, never half-way."""
        self.db.execute("BEGIN IMMEDIATE")
        queued = list(self._queued or ())
        try:
            for sql, rows in queued:
                self.db.executemany(sql, rows)
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        if queued and self._queued is not None:
            del self._queued[:len(queued)]

    # -- plain SQL ---------------------------------------------------------------------------------

    def _rows(self, sql: str, *params: Any) -> list[Any]:
        """The rows ``sql`` selects, every step written before included."""
        self.flush()
        return self.db.execute(sql, params).fetchall()

    def _rows_in(self, sql: str, keys: Collection[str], *params: Any) -> list[Any]:
        """``sql`` for every key in its ``IN (?)``, 500 at a time (SQLite limits the parameters)."""
        items = list(keys)
        rows: list[Any] = []
        for start in range(0, len(items), 500):
            batch = items[start:start + 500]
            rows += self._rows(sql.replace("IN (?)", f"IN ({', '.join('?' * len(batch))})"), *params, *batch)
        return rows

    def _write(self, sql: str, *params: Any) -> None:
        """One statement, committed: for the steps recorded once per file as the API confirms them."""
        self._write_many(sql, [params])

    def _write_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for each row, committed together — or queued, inside ``write_behind`` (nothing
        at all, not even the write lock, for no rows)."""
        rows = list(rows)
        if not rows:
            return
        if self.db.in_transaction:  # written inside another's transaction: a part of it
            self.db.executemany(sql, rows)
        elif self._queued is not None:
            self._queued.append((sql, rows))
            if len(self._queued) >= QUEUED_AT_MOST:
                self.flush()
        else:
            with self._transaction() as db:
                db.executemany(sql, rows)

    # -- files -------------------------------------------------------------------------------------

    def file_cache(self, source: str) -> dict[str, CachedFile]:
        """What the last scan of ``source`` saw, by item key."""
        rows = self._rows("SELECT rel_path, dev, inode, size, mtime_ns, sha256, content_type, problem "
                          "FROM files WHERE root = ?", source)
        return {rel: CachedFile(dev, inode, size, mtime_ns, sha256, kind, problem)
                for rel, dev, inode, size, mtime_ns, sha256, kind, problem in rows}

    def save_file_cache(self, source: str, previous: Mapping[str, CachedFile],
                        current: Mapping[str, CachedFile]) -> None:
        """Store what a scan saw, writing only the rows that changed (nothing, not even the write lock,
        when none did)."""
        gone = [(source, rel) for rel in previous if rel not in current]
        changed = [(source, rel, c.dev, c.inode, c.size, c.mtime_ns, c.sha256, c.content_type, c.problem)
                   for rel, c in current.items() if previous.get(rel) is not c and previous.get(rel) != c]
        if not (gone or changed):
            return
        with self._transaction() as db:
            db.executemany("DELETE FROM files WHERE root = ? AND rel_path = ?", gone)
            db.executemany("INSERT OR REPLACE INTO files (root, rel_path, dev, inode, size, mtime_ns, sha256, "
                           "content_type, problem) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", changed)

    def save_problems(self, source: str, problems: Iterable[Problem]) -> None:
        """Make what the last scan of ``source`` reported the problems on record, writing only what changed
        (a folder of 50,000 bad files rescanned unchanged writes nothing). New problems void the
        source's settled fingerprint: a run it matches reports the problems on record."""
        old = set(self.problems(source))
        new = set(problems)
        if old == new:
            return
        kept = {problem.rel_path for problem in new}
        with self._transaction() as db:
            db.executemany("DELETE FROM problems WHERE root = ? AND rel_path = ?",
                           [(source, problem.rel_path) for problem in old if problem.rel_path not in kept])
            db.executemany("INSERT OR REPLACE INTO problems (root, rel_path, reason, notice) VALUES (?, ?, ?, ?)",
                           [(source, p.rel_path, p.reason, p.notice) for p in new - old])
            db.execute("DELETE FROM settled WHERE root = ?", (source,))

    def sidecars(self, source: str) -> dict[str, SidecarRecord]:
        """The sidecars packsync wrote next to ``source``'s files, by the file's key."""
        rows = self._rows("SELECT rel_path, digest, size, mtime_ns FROM sidecars WHERE root = ?", source)
        return {rel: SidecarRecord(*rest) for rel, *rest in rows}

    def save_sidecars(self, source: str, written: Mapping[str, SidecarRecord], gone: Iterable[str]) -> None:
        """Remember the sidecars just written, and forget those removed or given up."""
        with self._transaction() as db:
            db.executemany("DELETE FROM sidecars WHERE root = ? AND rel_path = ?", [(source, rel) for rel in gone])
            db.executemany("INSERT OR REPLACE INTO sidecars (root, rel_path, digest, size, mtime_ns) VALUES "
                           "(?, ?, ?, ?, ?)", [(source, rel, *astuple(record)) for rel, record in written.items()])

    def forget_verdicts(self, source: str) -> None:
        """Let the next scan of ``source`` (and of its subfolders' packs) judge again the files it skipped
        as bad (someone fixed them)."""
        below = source.rstrip("/") + "/"
        with self._transaction() as db:  # and their last plans: a settled walk would not read the files again
            db.execute("DELETE FROM files WHERE (root = ? OR substr(root, 1, ?) = ?) AND problem IS NOT NULL",
                       (source, len(below), below))
            db.execute("DELETE FROM settled WHERE root = ? OR substr(root, 1, ?) = ?", (source, len(below), below))

    def problem_counts(self, source: str) -> tuple[int, int]:
        """(problems, notices among them) of ``source``."""
        row = self._rows("SELECT count(*), coalesce(sum(notice), 0) FROM problems WHERE root = ?", source)[0]
        return int(row[0]), int(row[1])

    def problems(self, source: str, limit: int | None = None) -> list[Problem]:
        rows = self._rows("SELECT rel_path, reason, notice FROM problems WHERE root = ? ORDER BY rel_path LIMIT ?",
                          source, -1 if limit is None else limit)
        return [Problem(rel_path, reason, bool(notice)) for rel_path, reason, notice in rows]

    def paths_of(self, source: str, sha256: str) -> list[str]:
        """The items of ``source`` whose content is ``sha256`` (its files that hold it), by key."""
        return [row[0] for row in self._rows("SELECT rel_path FROM files WHERE root = ? AND sha256 = ? AND problem "
                                             "IS NULL ORDER BY rel_path", source, sha256)]

    def count_files(self, source: str) -> int:
        return int(self._rows("SELECT count(*) FROM files WHERE root = ?", source)[0][0])

    # -- blobs -------------------------------------------------------------------------------------

    def blobs(self, shas: Collection[str]) -> dict[str, Blob]:
        """The uploads of these contents, where there are any."""
        rows = self._rows_in("SELECT sha256, content_type, url, upload_url, expires_at, uploaded FROM blobs "
                             "WHERE sha256 IN (?)", shas)
        return {sha: Blob(sha, kind, url, upload_url, expires, bool(done))
                for sha, kind, url, upload_url, expires, done in rows}

    def save_blob(self, blob: Blob) -> None:
        """Record an upload step; committed at once."""
        self._write("INSERT OR REPLACE INTO blobs (sha256, content_type, url, upload_url, expires_at, uploaded) "
                    "VALUES (?, ?, ?, ?, ?, ?)", blob.sha256, blob.content_type, blob.url, blob.upload_url,
                    blob.expires_at, blob.uploaded)

    def forget_blob(self, sha256: str) -> None:
        """Forget an upload whose URL the API refused: the content is uploaded afresh next time."""
        self._write("DELETE FROM blobs WHERE sha256 = ?", sha256)

    def known_urls(self, urls: Collection[str]) -> dict[str, str]:
        """Those of ``urls`` that are packsync's own uploads, with their content hash."""
        return dict(self._rows_in("SELECT url, sha256 FROM blobs WHERE url IN (?)", urls))

    # -- downloads ---------------------------------------------------------------------------------

    def url_contents(self, urls: Collection[str]) -> dict[str, UrlContent]:
        """What packsync learnt of these URLs' bytes by downloading them, where it did."""
        rows = self._rows_in("SELECT url, sha256, size, content_type, problem FROM url_contents WHERE url IN (?)",
                             urls)
        return {row[0]: UrlContent(*row) for row in rows}

    def save_url_contents(self, contents: Iterable[UrlContent]) -> None:
        self._write_many(_SAVE_URL_CONTENT, map(_url_content_row, contents))

    def pulled(self, folder: str, pack_id: str | None = None) -> list[PulledFile]:
        """The files pull wrote into ``folder`` (from ``pack_id``, or from any pack)."""
        rows = self._rows("SELECT folder, pack_id, name, image_id, url, sha256 FROM pulled WHERE folder = ? "
                          "AND (? IS NULL OR pack_id = ?)", folder, pack_id, pack_id)
        return [PulledFile(*row) for row in rows]

    def record_pulled(self, pulled: PulledFile, content: UrlContent) -> None:
        """Record a file pull is about to give its name, with what the download learnt of its URL."""
        with self._transaction() as db:
            db.execute(_SAVE_URL_CONTENT, _url_content_row(content))
            db.execute("INSERT OR REPLACE INTO pulled (folder, pack_id, image_id, name, url, sha256) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (pulled.folder, pulled.pack_id, pulled.image_id, pulled.name,
                                                    pulled.url, pulled.sha256))

    def forget_pulled(self, pulled: PulledFile) -> None:
        self._write("DELETE FROM pulled WHERE folder = ? AND pack_id = ? AND image_id = ?", pulled.folder,
                    pulled.pack_id, pulled.image_id)

    # -- images ------------------------------------------------------------------------------------

    def managed(self, pack_id: str, owner: str | None = None, details: bool = True) -> list[ManagedImage]:
        """The images packsync added to this pack — all, or ``owner``'s — as plain values: packs can be large.

        Without ``details``, settled metadata comes as its status alone: syncing needs no more, since
        settled metadata does not change, and a large pack's descriptions are most of its weight.
        """
        full = f"? OR meta_status NOT IN ({_SETTLED_SQL})"
        rows = self._rows("SELECT pack_id, image_id, sha256, url, file_name, owner, meta_status, "
                          f"CASE WHEN {full} THEN description END, CASE WHEN {full} THEN keywords ELSE '[]' END, "
                          f"CASE WHEN {full} THEN meta_error END, CASE WHEN {full} THEN meta_model END FROM images "
                          "WHERE pack_id = ? AND (? IS NULL OR owner IN (?, ''))", details, details, details, details,
                          pack_id, owner, owner)
        return [_image(*row) for row in rows]

    def others(self, pack_id: str, owner: str) -> dict[str, str]:
        """The images other mappings own in this pack: image id → content."""
        return dict(self._rows("SELECT image_id, sha256 FROM images WHERE pack_id = ? AND owner NOT IN (?, '')",
                               pack_id, owner))

    def count_images(self, pack_id: str, owner: str | None = None) -> int:
        return int(self._rows("SELECT count(*) FROM images WHERE pack_id = ? AND (? IS NULL OR owner IN (?, ''))",
                              pack_id, owner, owner)[0][0])

    def images_with(self, pack_id: str, shas: Collection[str]) -> list[ManagedImage]:
        """The images of a pack (any owner's) that hold these contents."""
        return [_image(*row) for row in self._rows_in(
            f"SELECT {_IMAGE_FIELDS} FROM images WHERE pack_id = ? AND sha256 IN (?)", shas, pack_id)]

    def file_page(self, source: str, limit: int | None = None) -> list[tuple[str, str | None]]:
        """(item key, content) of ``source``'s items that are not problems, by key, the first ``limit``."""
        return [(row[0], row[1]) for row in self._rows(
            "SELECT rel_path, sha256 FROM files f WHERE root = ? AND NOT EXISTS (SELECT 1 FROM problems p WHERE "
            "p.root = f.root AND p.rel_path = f.rel_path) ORDER BY rel_path LIMIT ?", source, -1 if limit is None
            else limit)]

    def metadata_counts(self, pack_id: str, owner: str | None = None) -> dict[str, int]:
        """packsync's images in a pack by metadata status, counted by SQLite (the metrics' cheap read)."""
        return dict(self._rows("SELECT meta_status, count(*) FROM images WHERE pack_id = ? AND "
                               "(? IS NULL OR owner IN (?, '')) GROUP BY meta_status", pack_id, owner, owner))

    def file_counts(self, source: str, pack_id: str | None) -> tuple[int, int]:
        """(items, items whose content is in the pack) of ``source``, problems aside, counted by SQLite."""
        row = self._rows("SELECT count(*), coalesce(sum(EXISTS (SELECT 1 FROM images i WHERE i.pack_id = ? AND "
                         "i.sha256 = f.sha256)), 0) FROM files f WHERE f.root = ? AND NOT EXISTS (SELECT 1 FROM "
                         "problems p WHERE p.root = f.root AND p.rel_path = f.rel_path)", pack_id, source)[0]
        return int(row[0]), int(row[1])

    def record_images(self, images: Iterable[ManagedImage]) -> None:
        """Record images packsync added (or adopted); committed at once, together."""
        now = time.time()
        # An upsert, not INSERT OR REPLACE: a replaced row would leave the search index (kept by triggers)
        # holding the old text.
        self._write_many(f"INSERT INTO images ({_IMAGE_FIELDS}, added_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pack_id, image_id) DO UPDATE SET "
                         "sha256 = excluded.sha256, url = excluded.url, file_name = excluded.file_name, "
                         "owner = excluded.owner, meta_status = excluded.meta_status, "
                         "description = excluded.description, keywords = excluded.keywords, "
                         "meta_error = excluded.meta_error, meta_model = excluded.meta_model, "
                         "added_at = excluded.added_at",
                         [(i.pack_id, i.image_id, i.sha256, i.url, i.file_name, i.owner, i.metadata.status,
                           i.metadata.description, json.dumps(list(i.metadata.keywords)), i.metadata.error,
                           i.metadata.model, now) for i in images])

    def forget_images(self, pack_id: str, image_ids: Iterable[str] | None = None, *, owner: str | None = None) -> None:
        """Drop image records of ``pack_id``: the given ones, or all of them (of ``owner``, if given)."""
        where = "pack_id = ? AND (? IS NULL OR owner = ?)"
        if image_ids is None:
            self._write(f"DELETE FROM images WHERE {where}", pack_id, owner, owner)
        else:
            self._write_many(f"DELETE FROM images WHERE {where} AND image_id = ?",
                             [(pack_id, owner, owner, image_id) for image_id in image_ids])

    # -- settled mappings --------------------------------------------------------------------------

    def changes(self) -> int:
        """How many times the rows a plan reads (``PLANNED_FROM``) have changed: only ever grows."""
        rows = self._rows("SELECT count FROM changes WHERE id = 0")
        return int(rows[0][0]) if rows else -1

    def settled(self, source: str) -> str | None:
        """The fingerprint of the inputs of the last plan of ``source`` that had nothing to do."""
        rows = self._rows("SELECT fingerprint FROM settled WHERE root = ?", source)
        return str(rows[0][0]) if rows else None

    def save_settled(self, source: str, fingerprint: str) -> None:
        if self.settled(source) != fingerprint:
            self._write("INSERT OR REPLACE INTO settled (root, fingerprint) VALUES (?, ?)", source, fingerprint)

    def update_metadata(self, pack_id: str, updates: Mapping[str, Metadata]) -> None:
        """Store new AI metadata for some of packsync's images in a pack."""
        self._write_many("UPDATE images SET meta_status = ?, description = ?, keywords = ?, meta_error = ?, "
                         "meta_model = ? WHERE pack_id = ? AND image_id = ?",
                         [(meta.status, meta.description, json.dumps(list(meta.keywords)), meta.error, meta.model,
                           pack_id, image_id) for image_id, meta in updates.items()])

    def metadata_pending(self, pack_ids: Collection[str]) -> dict[str, int]:
        """Per pack, how many of packsync's images wait for AI metadata (packs with none are left out)."""
        return dict(self._rows_in(f"SELECT pack_id, count(*) FROM images WHERE meta_status NOT IN ({_SETTLED_SQL}) "
                                  "AND pack_id IN (?) GROUP BY pack_id", pack_ids))

    def search(self, words: Sequence[str], limit: int = 50) -> list[tuple[ManagedImage, str]]:
        """packsync's images whose name, description or keywords hold every word (as a word's start),
        best match first, each with the mapping that owns it."""
        words = ["".join(c for c in word if c.isprintable()) for word in words]  # a NUL ends FTS5's string
        terms = " AND ".join('"' + word.replace('"', '""') + '"*' for word in words if word.strip())
        if not terms:
            return []
        if "image_text" not in _tables(self.db) | _tables(self.db, "temp"):
            # A state from before the index, read only: the index is built in memory, for this store.
            self.db.execute("CREATE VIRTUAL TABLE temp.image_text USING fts5(file_name, description, keywords)")
            self.db.execute("INSERT INTO temp.image_text(rowid, file_name, description, keywords) "
                            "SELECT rowid, file_name, description, keywords FROM images")
        rows = self._rows(
            "SELECT i.pack_id, i.image_id, i.sha256, i.url, i.file_name, i.owner, i.meta_status, i.description, "
            "i.keywords, i.meta_error, i.meta_model FROM image_text JOIN images i ON i.rowid = image_text.rowid "
            "WHERE image_text MATCH ? ORDER BY bm25(image_text) LIMIT ?", terms, limit)
        return [(_image(*row), row[5]) for row in rows]

    # -- mappings ----------------------------------------------------------------------------------

    def mapping(self, source: str) -> MappingRecord | None:
        rows = self._rows(f"SELECT {_MAPPING_FIELDS} FROM mappings WHERE root = ?", source)
        return MappingRecord(*rows[0]) if rows else None

    def mappings_under(self, folder: str) -> list[MappingRecord]:
        """The records of mappings whose source is a folder inside ``folder``."""
        prefix = folder.rstrip("/") + "/"
        rows = self._rows(f"SELECT {_MAPPING_FIELDS} FROM mappings WHERE substr(root, 1, ?) = ?", len(prefix), prefix)
        return [MappingRecord(*row) for row in rows]

    def move_source(self, old: str, new: str) -> None:
        """A source that was renamed (a subfolder): everything recorded of it is the new name's now."""
        with self._transaction() as db:
            for table in ("files", "problems", "sidecars", "mappings"):
                db.execute(f"DELETE FROM {table} WHERE root = ?", (new,))
                db.execute(f"UPDATE {table} SET root = ? WHERE root = ?", (new, old))
            db.execute("UPDATE images SET owner = ? WHERE owner = ?", (new, old))
            db.execute("DELETE FROM settled WHERE root IN (?, ?)", (old, new))

    def save_mapping(self, source: str, **changes: Any) -> None:
        record = replace(self.mapping(source) or MappingRecord(source), **changes)
        marks = ", ".join("?" * len(_MAPPING_COLUMNS))
        self._write(f"INSERT OR REPLACE INTO mappings ({_MAPPING_FIELDS}) VALUES ({marks})", *astuple(record))

    # -- daemon ------------------------------------------------------------------------------------

    def daemon(self) -> DaemonRecord | None:
        rows = self._rows("SELECT pid, started_at, last_full_scan, queue, state, last_error, updated_at "
                          "FROM daemon WHERE id = 1")
        return DaemonRecord(*rows[0]) if rows else None

    def save_daemon(self, **changes: Any) -> None:
        record = replace(self.daemon() or DaemonRecord(), **changes, updated_at=time.time())
        self._write("INSERT OR REPLACE INTO daemon (id, pid, started_at, last_full_scan, queue, state, last_error, "
                    "updated_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?)", *astuple(record))


# Every public method, whatever moment SQLite fails at, reports it in packsync's terms.
for _name, _method in list(vars(Store).items()):
    if callable(_method) and not _name.startswith("_") and _name not in ("close", "rollback"):
        setattr(Store, _name, _translating(_method))
