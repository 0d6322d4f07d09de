"""What the state knows of SQLite, named and in one place (the search index aside: ``search``).

The file (its header, the private mode it is created with, how it is opened only to read it, the
crash recovery a reader may need, and that nothing but SQLite opens it while SQLite holds it open:
``held``), the engine and its one connection (made by SQLite's driver in autocommit, configured by one
``connect`` listener), and the few statements only SQLite has: its pragmas, ``BEGIN IMMEDIATE``,
``ON CONFLICT`` upserts, temporary tables and the triggers that count changes. A state on another
database would replace this module, not the repositories. It knows the tables by name only and holds
no row.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import weakref
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, Table, event
from sqlalchemy.dialects.sqlite import Insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateTable
from sqlmodel import create_engine

from packsync.files import file_id, open_regular

#: The driver's errors that reach the state unwrapped (opening a file to look at it, before the engine).
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)
#: The driver's errors that say packsync used it wrongly (a value it cannot bind, a closed connection):
#: bugs of packsync's, never a sign that the file is unusable.
MISUSE_ERRORS: tuple[type[Exception], ...] = (sqlite3.ProgrammingError, sqlite3.InterfaceError)
#: A write transaction: the write lock is taken (or waited for, up to the busy timeout) at its start,
#: never half-way through, where a wait could deadlock with another writer.
BEGIN_WRITE = "BEGIN IMMEDIATE"
BUSY_TIMEOUT_MS = 2000
HEADER = b"SQLite format 3\x00"


class HeldConnection(sqlite3.Connection):
    """A connection of the driver's, counted as holding its database file open (``held``) until closed."""

    file: tuple[int, int] | None = None  # the file's device and inode (None: a database in memory)

    def close(self) -> None:
        try:
            super().close()
        finally:
            with _connections_lock:
                _connections.discard(self)


#: The connections this process has open (one lost unclosed leaves the set as it is collected).
_connections: weakref.WeakSet[HeldConnection] = weakref.WeakSet()
_connections_lock = threading.Lock()


def open_connection(path: Path | None, target: str, *, uri: bool = False) -> HeldConnection:
    """The driver's connection to ``target``, the database file at ``path`` (None: in memory), in autocommit
    and usable from any thread, counted in ``held`` until closed. Every connection packsync opens is one."""
    connection = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False,
                                 factory=HeldConnection)
    if path is not None:
        connection.file = file_id(path)
        with _connections_lock:
            _connections.add(connection)
    return connection


def held(path: Path) -> bool:
    """Whether this process holds the file at ``path`` open through SQLite: then nothing else may open it.

    SQLite's locks are POSIX advisory locks, which belong to the process, not to a descriptor: closing any
    descriptor of the file drops them all, SQLite's too (SQLite itself defers closing its own). A connection
    to a WAL database holds a shared lock on the file while it is open; a reader in another process that
    finds none left when it closes takes itself for the file's last user, checkpoints the write-ahead log
    and deletes it, with the shared memory — while this process goes on committing into the deleted log,
    seen by no one (``status``, the page of a ``packsync ui``) until it checkpoints or closes.
    """
    found = file_id(path)
    with _connections_lock:
        return found is not None and any(connection.file == found for connection in _connections)


def private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by the user only, if it does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not held(path):  # (a held one exists, and closing a descriptor of it would drop SQLite's locks)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


def has_header(path: Path) -> bool:
    """Whether the file at ``path`` is empty or starts as a SQLite database does (OSError if unreadable).
    A file this process holds open through SQLite is one, and is not opened again to look (``held``)."""
    if held(path):
        return True
    with open_regular(path) as handle:  # (a FIFO would block the open, and SQLite's after it)
        head = handle.read(16)
    return not head or head == HEADER


def readonly_uri(path: Path) -> str:
    """How to open ``path`` only to read it.

    In a folder nobody can write to (a read-only mount, another user's folder), SQLite cannot make
    the shared-memory file a reader of a WAL database needs; there, with no write-ahead log left
    over, no writer can exist either, so the file is opened as immutable.
    """
    wal = path.with_name(path.name + "-wal")
    immutable = not os.access(path.parent, os.W_OK) and not wal.exists()
    return f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def read_meta(path: Path) -> tuple[set[str], dict[str, str]]:
    """(the tables, the ``meta`` rows) of the file at ``path``, read without writing anything.

    The one write that may happen is SQLite's own crash recovery: a process killed mid-transaction
    leaves a journal only a writer can roll back (it restores the last committed state).
    """
    try:
        return _read_meta(path)
    except sqlite3.OperationalError as exc:
        if not (exc.sqlite_errorname or "").startswith("SQLITE_READONLY_"):
            raise
    with closing(open_connection(path, str(path))) as connection:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    return _read_meta(path)


def _read_meta(path: Path) -> tuple[set[str], dict[str, str]]:
    with closing(open_connection(path, readonly_uri(path), uri=True)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    return tables, meta


def open_engine(path: Path | None, *, readonly: bool = False) -> Engine:
    """The engine of the state at ``path`` (None: an empty one in memory), on one connection.

    The driver's connection is in autocommit (``isolation_level=None``) and may be used from any thread,
    one at a time: packsync, not the driver, says where each transaction begins and ends (the unit of
    work), and a ``StaticPool`` keeps the one connection for the engine's life.
    """
    target, uri = (":memory:", False) if path is None else (readonly_uri(path), True) if readonly \
        else (str(path), False)

    creator = functools.partial(open_connection, path, target, uri=uri)
    engine = create_engine("sqlite://", creator=creator, poolclass=StaticPool)
    event.listen(engine, "connect", functools.partial(_configure, writer=path is not None and not readonly))
    return engine


def _configure(connection: sqlite3.Connection, _record: Any, *, writer: bool) -> None:
    """SQLite's settings, for every connection the engine makes. A reader's write nothing: WAL is the file's
    own setting, made once by a writer. ``foreign_keys`` stays off: the tables declare none."""
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if writer:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # in WAL, durable at checkpoints; never corrupt


def upsert(table: Table) -> Insert:
    """Every column of a row inserted, or written over the row of the same primary key (an update: a
    trigger sees one, and the row keeps its rowid, which the search index relies on)."""
    statement = sqlite_insert(table)
    keys = {column.name for column in table.primary_key.columns}
    return statement.on_conflict_do_update(index_elements=sorted(keys), set_={
        column.name: statement.excluded[column.name] for column in table.columns if column.name not in keys})


def insert_new(table: Table) -> Insert:
    """A row inserted unless its primary key is taken already."""
    return sqlite_insert(table).on_conflict_do_nothing()


def tables_of(connection: Connection, schema: str = "main") -> set[str]:
    return {row[0] for row in connection.exec_driver_sql(f"SELECT name FROM {schema}.sqlite_master "
                                                         "WHERE type = 'table'")}


def columns_of(connection: Connection, table: str, schema: str = "main") -> set[str]:
    return {row[1] for row in connection.exec_driver_sql(f"PRAGMA {schema}.table_info({table})")}


def create_temp_table(connection: Connection, table: Table) -> None:
    """An empty table of this name that lives as long as the connection, in memory: a reader's stand-in
    for a table an older file lacks."""
    ddl = str(CreateTable(table, if_not_exists=True).compile(dialect=connection.dialect))
    connection.exec_driver_sql(ddl.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))


def count_changes(tables: tuple[str, ...]) -> list[str]:
    """Triggers that count every change to these tables in ``changes`` (its row 0)."""
    return [f"CREATE TRIGGER IF NOT EXISTS {table}_{event_name.lower()}_counted AFTER {event_name} ON {table} "
            "BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END"
            for table in tables for event_name in ("INSERT", "UPDATE", "DELETE")]


def data_version(connection: Connection) -> int:
    """A number that changes whenever another connection commits to the file."""
    return int(connection.exec_driver_sql("PRAGMA data_version").scalar_one())
