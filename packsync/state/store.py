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
- ``mappings`` — per mapped folder: the pack it syncs to and how the last sync went.
- ``daemon``   — one row: what the running daemon is doing, for ``packsync status``.

Folders and other sources are keyed by their label (a folder's path). Every step is committed as
soon as the API confirms it, so a killed run loses at most the step in flight — and the planner
recognises that step's result by its URL on the next run.

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import event, func, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateTable
from sqlmodel import Field, Session, SQLModel, col, create_engine, delete, select

from packsync.errors import StateError, StateUnavailable
from packsync.model import METADATA_SETTLED, Blob, CachedFile, ManagedImage, Metadata, Problem, UrlContent

SCHEMA_VERSION = 2
APP_ID = "packsync"


class MetaRow(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class FileRow(SQLModel, table=True):
    __tablename__ = "files"
    root: str = Field(primary_key=True)
    rel_path: str = Field(primary_key=True)
    dev: int
    inode: int
    size: int
    mtime_ns: int
    sha256: str | None = None
    content_type: str | None = None
    problem: str | None = None


class ProblemRow(SQLModel, table=True):
    """A file the last scan of its folder did not sync, and why."""

    __tablename__ = "problems"
    root: str = Field(primary_key=True)
    rel_path: str = Field(primary_key=True)
    reason: str
    notice: bool = False


class BlobRow(SQLModel, table=True):
    __tablename__ = "blobs"
    sha256: str = Field(primary_key=True)
    content_type: str
    url: str | None = Field(default=None, index=True)
    upload_url: str | None = None
    expires_at: float | None = None
    uploaded: bool = False


class ImageRow(SQLModel, table=True):
    __tablename__ = "images"
    pack_id: str = Field(primary_key=True)
    image_id: str = Field(primary_key=True)
    sha256: str = Field(index=True)
    url: str
    file_name: str
    meta_status: str = "pending"
    description: str | None = None
    keywords: str = "[]"
    meta_error: str | None = None
    added_at: float = Field(default_factory=time.time)
    owner: str = ""


class UrlContentRow(SQLModel, table=True):
    """What the bytes at an image URL packsync downloaded are (or why they could not be known)."""

    __tablename__ = "url_contents"
    url: str = Field(primary_key=True)
    sha256: str | None = Field(default=None, index=True)
    size: int = 0
    content_type: str | None = None
    problem: str | None = None


class PulledRow(SQLModel, table=True):
    """A file ``packsync pull`` wrote into a folder, and the image it came from."""

    __tablename__ = "pulled"
    folder: str = Field(primary_key=True)
    pack_id: str = Field(primary_key=True)
    image_id: str = Field(primary_key=True)
    name: str
    url: str
    sha256: str


@dataclass(frozen=True, slots=True)
class PulledFile:
    folder: str
    pack_id: str
    name: str
    image_id: str
    url: str
    sha256: str


class MappingRow(SQLModel, table=True):
    __tablename__ = "mappings"
    root: str = Field(primary_key=True)
    pack_id: str | None = None
    pack_name: str | None = None
    synced_at: float | None = None
    last_error: str | None = None


class DaemonRow(SQLModel, table=True):
    """What a running daemon is doing, for `packsync status` (one row)."""

    __tablename__ = "daemon"
    id: int = Field(default=1, primary_key=True)
    pid: int | None = None
    started_at: float | None = None
    last_full_scan: float | None = None
    queue: int = 0
    state: str = "stopped"
    last_error: str | None = None
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class MappingRecord:
    root: str
    pack_id: str | None
    pack_name: str | None
    synced_at: float | None
    last_error: str | None


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
           description: str | None, keywords: str, error: str | None) -> ManagedImage:
    if description is None and error is None and keywords == "[]":
        metadata = _BARE.get(status) or Metadata(status)
    else:
        metadata = Metadata(status, description, tuple(json.loads(keywords)), error)
    return ManagedImage(pack_id, image_id, sha256, url, file_name, owner, metadata)


T = TypeVar("T")


def unusable(path: Path, exc: BaseException) -> StateError:
    """The one sentence for an error of the database at ``path`` (SQLite's, or the file system's)."""
    origin = getattr(exc, "orig", None) or exc
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
        except (sqlite3.Error, SQLAlchemyError, OSError) as exc:
            self.rollback()
            raise unusable(self.path, exc) from None

    return wrapper


class Store:
    """The state database, used from one thread at a time."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        try:
            _check_header(path)
            version = self._inspect()
            if readonly and version is None:
                # Nothing to read yet (no file, or one a first run left unfinished): an empty state in
                # memory, so that a dry run or `status` creates nothing.
                self.engine = create_engine("sqlite://", poolclass=StaticPool,
                                            connect_args={"check_same_thread": False})
                SQLModel.metadata.create_all(self.engine)
            elif readonly:
                self.engine = create_engine("sqlite://", poolclass=StaticPool, creator=lambda: sqlite3.connect(
                    _readonly_uri(path), uri=True, check_same_thread=False))
                self._read_as_current(version)
            else:
                _private_file(path)
                self.engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})
                event.listen(self.engine, "connect", self._pragmas)
                self._set_up(version)
        except (sqlite3.Error, SQLAlchemyError, OSError) as exc:
            raise unusable(path, exc) from None
        self.session = Session(self.engine, expire_on_commit=False)

    def _inspect(self) -> int | None:
        """The schema version of an existing state file (None: new or unfinished), read-only.

        Nothing is written before the file is known to be packsync's: not even the switch to WAL.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
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
            if tables <= set(SQLModel.metadata.tables):
                return None
            raise foreign
        if meta.get("app") != APP_ID:
            raise foreign
        version = int(meta.get("schema", "0"))
        if version > SCHEMA_VERSION:
            raise StateError(f"{self.path} was written by a newer packsync (schema {version}); "
                             "upgrade packsync to use it.")
        return version

    def _read_meta(self) -> tuple[set[str], dict[str, str]]:
        with closing(sqlite3.connect(_readonly_uri(self.path), uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        return tables, meta

    @staticmethod
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=2000")
        cursor.close()

    def _set_up(self, version: int | None) -> None:
        """Create what is missing and migrate forward, one step per schema version."""
        if version != SCHEMA_VERSION:
            self._migrate()
        SQLModel.metadata.create_all(self.engine)
        if version != SCHEMA_VERSION:
            with Session(self.engine) as session:
                session.merge(MetaRow(key="app", value=APP_ID))
                session.merge(MetaRow(key="schema", value=str(SCHEMA_VERSION)))
                session.commit()

    def _read_as_current(self, version: int | None) -> None:
        """Let a read-only store read an older file as if it were migrated, writing nothing: tables
        added since are empty temporary tables, and images get their owner through a view."""
        with self.engine.begin() as connection:
            tables = {row[0] for row in connection.exec_driver_sql(
                "SELECT name FROM main.sqlite_master WHERE type = 'table'")}
            for table in SQLModel.metadata.sorted_tables:
                if table.name not in tables:
                    ddl = str(CreateTable(table).compile(self.engine))
                    connection.exec_driver_sql(ddl.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
            if version is not None and version < 2:
                connection.exec_driver_sql("CREATE TEMP VIEW images AS SELECT *, "
                                           f"{_OWNER_BEFORE_2} AS owner FROM main.images AS images")

    def _migrate(self) -> None:
        """Schema 1 → 2, in one transaction, and harmless to repeat: a run killed half-way, or a first
        run killed before it wrote its schema version, leaves a file this finishes."""
        with closing(sqlite3.connect(self.path, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
            if columns and "owner" not in columns:
                db.execute("ALTER TABLE images ADD COLUMN owner VARCHAR NOT NULL DEFAULT ''")
                db.execute(f"UPDATE images SET owner = {_OWNER_BEFORE_2}")
            db.execute("COMMIT")

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()

    def rollback(self) -> None:
        """Drop a transaction an error left open, so that the store can be used again."""
        try:
            self.session.rollback()
        except (sqlite3.Error, SQLAlchemyError):
            pass

    # -- files -------------------------------------------------------------------------------------

    def _rows(self, sql: str, *params: Any) -> list[Any]:
        """Plain rows through the session's own connection, for the reads that return a whole folder or
        pack (100,000 rows): ORM objects would cost several times the time and memory."""
        cursor = self.session.connection().connection.cursor()
        try:
            return list(cursor.execute(sql, params).fetchall())
        finally:
            cursor.close()

    def _write(self, sql: str, *params: Any) -> None:
        """One statement, committed: for the steps recorded once per file as the API confirms them."""
        self._write_many(sql, [params])

    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each row, committed together."""
        cursor = self.session.connection().connection.cursor()
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()
        self.session.commit()

    def file_cache(self, source: str) -> dict[str, CachedFile]:
        """What the last scan of ``source`` saw, by item key."""
        rows = self._rows("SELECT rel_path, dev, inode, size, mtime_ns, sha256, content_type, problem "
                          "FROM files WHERE root = ?", source)
        return {rel: CachedFile(*rest) for rel, *rest in rows}

    def save_file_cache(self, source: str, previous: Mapping[str, CachedFile],
                        current: Mapping[str, CachedFile]) -> None:
        """Store what a scan saw, writing only the rows that changed."""
        key = source
        self._write_many("DELETE FROM files WHERE root = ? AND rel_path = ?",
                         [(key, rel) for rel in previous if rel not in current])
        self._write_many("INSERT OR REPLACE INTO files (root, rel_path, dev, inode, size, mtime_ns, sha256, "
                         "content_type, problem) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [(key, rel, c.dev, c.inode, c.size, c.mtime_ns, c.sha256, c.content_type, c.problem)
                          for rel, c in current.items() if previous.get(rel) is not c and previous.get(rel) != c])

    def save_problems(self, source: str, problems: Iterable[Problem]) -> None:
        """Make what the last scan of ``source`` reported the problems on record, writing only what changed
        (a folder of 50,000 bad files rescanned unchanged writes nothing)."""
        old = set(self.problems(source))
        new = set(problems)
        if old == new:
            return
        kept = {problem.rel_path for problem in new}
        self._write_many("DELETE FROM problems WHERE root = ? AND rel_path = ?",
                         [(source, problem.rel_path) for problem in old if problem.rel_path not in kept])
        self._write_many("INSERT OR REPLACE INTO problems (root, rel_path, reason, notice) VALUES (?, ?, ?, ?)",
                         [(source, p.rel_path, p.reason, p.notice) for p in new - old])

    def problems(self, source: str) -> list[Problem]:
        rows = self._rows("SELECT rel_path, reason, notice FROM problems WHERE root = ? ORDER BY rel_path", source)
        return [Problem(rel_path, reason, bool(notice)) for rel_path, reason, notice in rows]

    def count_files(self, source: str) -> int:
        return int(self._rows("SELECT count(*) FROM files WHERE root = ?", source)[0][0])

    def file_rows(self, source: str) -> list[FileRow]:
        return list(self.session.exec(select(FileRow).where(FileRow.root == source).order_by(FileRow.rel_path)))

    # -- blobs -------------------------------------------------------------------------------------

    def blobs(self, shas: Collection[str]) -> dict[str, Blob]:
        """The uploads of these contents, where there are any."""
        found: dict[str, Blob] = {}
        keys = list(shas)
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            rows = self._rows("SELECT sha256, content_type, url, upload_url, expires_at, uploaded FROM blobs "
                              f"WHERE sha256 IN ({', '.join('?' * len(batch))})", *batch)
            found.update((sha, Blob(sha, kind, url, upload_url, expires, bool(done)))
                         for sha, kind, url, upload_url, expires, done in rows)
        return found

    def save_blob(self, blob: Blob) -> None:
        """Record an upload step; committed at once (several per file: plain SQL, not the ORM)."""
        self._write("INSERT OR REPLACE INTO blobs (sha256, content_type, url, upload_url, expires_at, uploaded) "
                    "VALUES (?, ?, ?, ?, ?, ?)", blob.sha256, blob.content_type, blob.url, blob.upload_url,
                    blob.expires_at, blob.uploaded)

    def forget_blob(self, sha256: str) -> None:
        """Forget an upload whose URL the API refused: the content is uploaded afresh next time."""
        self._write("DELETE FROM blobs WHERE sha256 = ?", sha256)

    def url_contents(self, urls: Collection[str]) -> dict[str, UrlContent]:
        """What packsync learnt of these URLs' bytes by downloading them, where it did."""
        found: dict[str, UrlContent] = {}
        keys = list(urls)
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            rows = self._rows("SELECT url, sha256, size, content_type, problem FROM url_contents "
                              f"WHERE url IN ({', '.join('?' * len(batch))})", *batch)
            found.update((row[0], UrlContent(*row)) for row in rows)
        return found

    def save_url_contents(self, contents: Iterable[UrlContent]) -> None:
        self._write_many("INSERT OR REPLACE INTO url_contents (url, sha256, size, content_type, problem) "
                         "VALUES (?, ?, ?, ?, ?)", [(c.url, c.sha256, c.size, c.content_type, c.problem)
                                                    for c in contents])

    def pulled(self, folder: str, pack_id: str | None = None) -> list[PulledFile]:
        """The files pull wrote into ``folder`` (from ``pack_id``, or from any pack)."""
        rows = self._rows("SELECT folder, pack_id, name, image_id, url, sha256 FROM pulled WHERE folder = ? "
                          "AND (? IS NULL OR pack_id = ?)", folder, pack_id, pack_id)
        return [PulledFile(*row) for row in rows]

    def record_pulled(self, pulled: PulledFile) -> None:
        self._write("INSERT OR REPLACE INTO pulled (folder, pack_id, image_id, name, url, sha256) "
                    "VALUES (?, ?, ?, ?, ?, ?)", pulled.folder, pulled.pack_id, pulled.image_id, pulled.name,
                    pulled.url, pulled.sha256)

    def forget_pulled(self, pulled: PulledFile) -> None:
        self._write("DELETE FROM pulled WHERE folder = ? AND pack_id = ? AND image_id = ?", pulled.folder,
                    pulled.pack_id, pulled.image_id)

    def known_urls(self, urls: Collection[str]) -> dict[str, str]:
        """Those of ``urls`` that are packsync's own uploads, with their content hash."""
        found: dict[str, str] = {}
        keys = list(urls)
        for start in range(0, len(keys), 500):
            rows = self.session.exec(select(BlobRow.url, BlobRow.sha256).where(
                col(BlobRow.url).in_(keys[start:start + 500])))
            found.update((url, sha) for url, sha in rows if url)
        return found

    # -- images ------------------------------------------------------------------------------------

    def managed(self, pack_id: str, owner: str | None = None, details: bool = True) -> list[ManagedImage]:
        """The images packsync added to this pack — all, or ``owner``'s — as plain values, not ORM
        rows: packs can be large.

        Without ``details``, settled metadata comes as its status alone: syncing needs no more, since
        settled metadata does not change, and a large pack's descriptions are most of its weight.
        """
        full = "? OR meta_status NOT IN ('completed', 'failed')"
        rows = self._rows("SELECT pack_id, image_id, sha256, url, file_name, owner, meta_status, "
                          f"CASE WHEN {full} THEN description END, CASE WHEN {full} THEN keywords ELSE '[]' END, "
                          f"CASE WHEN {full} THEN meta_error END FROM images WHERE pack_id = ? "
                          "AND (? IS NULL OR owner IN (?, ''))", details, details, details, pack_id, owner, owner)
        return [_image(*row) for row in rows]

    def others(self, pack_id: str, owner: str) -> dict[str, str]:
        """The images other mappings own in this pack: image id → content."""
        return dict(self._rows("SELECT image_id, sha256 FROM images WHERE pack_id = ? AND owner NOT IN (?, '')",
                               pack_id, owner))

    def count_images(self, pack_id: str, owner: str | None = None) -> int:
        return int(self._rows("SELECT count(*) FROM images WHERE pack_id = ? AND (? IS NULL OR owner IN (?, ''))",
                              pack_id, owner, owner)[0][0])

    def record_images(self, images: Iterable[ManagedImage]) -> None:
        """Record images packsync added (or adopted); committed at once, together."""
        now = time.time()
        self._write_many("INSERT OR REPLACE INTO images (pack_id, image_id, sha256, url, file_name, owner, "
                         "meta_status, description, keywords, meta_error, added_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [(i.pack_id, i.image_id, i.sha256, i.url, i.file_name, i.owner, i.metadata.status,
                           i.metadata.description, json.dumps(list(i.metadata.keywords)), i.metadata.error, now)
                          for i in images])

    def forget_images(self, pack_id: str, image_ids: Iterable[str] | None = None, *, owner: str | None = None) -> None:
        """Drop image records of ``pack_id``: the given ones, or all of them (of ``owner``, if given)."""
        statement = delete(ImageRow).where(col(ImageRow.pack_id) == pack_id)
        if image_ids is not None:
            statement = statement.where(col(ImageRow.image_id).in_(list(image_ids)))
        if owner is not None:
            statement = statement.where(col(ImageRow.owner) == owner)
        self.session.exec(statement)
        self.session.commit()

    def update_metadata(self, pack_id: str, updates: Mapping[str, Metadata]) -> None:
        """Store new AI metadata for some of packsync's images in a pack."""
        for image_id, meta in updates.items():
            self.session.exec(update(ImageRow).where(col(ImageRow.pack_id) == pack_id,
                                                     col(ImageRow.image_id) == image_id)
                              .values(meta_status=meta.status, description=meta.description,
                                      keywords=json.dumps(list(meta.keywords)), meta_error=meta.error))
        if updates:
            self.session.commit()

    def metadata_pending(self, pack_ids: Collection[str]) -> dict[str, int]:
        """Per pack, how many of packsync's images wait for AI metadata (packs with none are left out)."""
        rows = self.session.exec(
            select(ImageRow.pack_id, func.count()).where(col(ImageRow.pack_id).in_(list(pack_ids)),
                                                          col(ImageRow.meta_status).not_in(METADATA_SETTLED))
            .group_by(ImageRow.pack_id))
        return {pack_id: count for pack_id, count in rows}

    # -- mappings ----------------------------------------------------------------------------------

    def mapping(self, source: str) -> MappingRecord | None:
        row = self.session.get(MappingRow, source)
        return MappingRecord(row.root, row.pack_id, row.pack_name, row.synced_at, row.last_error) if row else None

    def save_mapping(self, source: str, **fields: Any) -> None:
        row = self.session.get(MappingRow, source) or MappingRow(root=source)
        for name, value in fields.items():
            setattr(row, name, value)
        self.session.add(row)
        self.session.commit()

    # -- daemon ------------------------------------------------------------------------------------

    def daemon(self) -> DaemonRow | None:
        return self.session.get(DaemonRow, 1)

    def save_daemon(self, **fields: Any) -> None:
        row = self.session.get(DaemonRow, 1) or DaemonRow()
        for name, value in fields.items():
            setattr(row, name, value)
        row.updated_at = time.time()
        self.session.add(row)
        self.session.commit()


# Every public method, whatever moment SQLite fails at, reports it in packsync's terms.
for _name, _method in list(vars(Store).items()):
    if callable(_method) and not _name.startswith("_") and _name not in ("close", "rollback"):
        setattr(Store, _name, _translating(_method))
