"""The unit of work: the state's one connection, its transactions, and the queue of steps written behind.

Every repository reads and writes through one ``UnitOfWork``, so they share one connection, one
transaction at a time and one queue. Every step is committed as soon as the API confirms it, so a
killed run loses at most the step in flight — and the planner recognises that step's result by its URL
on the next run. Inside ``write_behind`` (the executor's uploads, adds and deletes) steps are queued
and committed together: before any read through this unit, with any other transaction, at ``flush``
and every ``QUEUED_AT_MOST`` steps; they leave the queue only once a commit holds them. A killed run
loses at most those few, each of which the next run finds again: an added image by its content's URL,
committed before the add is sent, and an upload whose bytes were not recorded as sent by sending them
again. Other connections (``status``, the page) see queued steps once they are committed.

The unit is on SQLite (a state of one machine's own) or on PostgreSQL (a state shared by several sites):
it knows which only to begin a transaction, to run bulk writes and to tell the database's errors; it
makes its connection again when a shared state's server dropped it (``reconnected``), and each site's
sources are stored under its site's name (``key``, ``label``).

The connection is used from one thread at a time. The database's and the file system's errors, at any
moment, end here in one sentence (``translate.unusable``'s, or ``postgres.unusable``'s), after the
transaction they broke is rolled back — all but the driver refusing how packsync used it (``misuse``), a
bug that goes up as one.
This module knows no table: the repositories bring their statements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, cast

from sqlalchemy import ColumnElement, Connection, Dialect, Engine, Executable, true
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase

from packsync.errors import StateError, StateUnavailable
from packsync.logs import get_logger
from packsync.state import sqlite
from packsync.state.dialects import ForDialect
from packsync.state.sqlite import DRIVER_ERRORS, MISUSE_ERRORS
from packsync.state.translate import unusable as _unusable

#: Steps ``write_behind`` queues at most before it commits them.
QUEUED_AT_MOST = 64
#: The errors that are the database's or the file system's (but for ``MISUSE_ERRORS``: packsync's own).
DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, *DRIVER_ERRORS, OSError)


def raise_unusable(path: Path, exc: Exception) -> NoReturn:
    """Raise ``exc``, one of SQLite's ``DATABASE_ERRORS``, in packsync's terms (``translate.unusable``) —
    unless it is packsync's misuse of the driver, a bug, which goes up as it is."""
    if isinstance(getattr(exc, "orig", None) or exc, MISUSE_ERRORS):
        raise exc
    raise _unusable(path, exc) from None


class Bulk:
    """A write statement (Core), compiled once and run for many rows at the driver's own speed.

    Its rows are tuples of the values of ``keys``, its bound parameters, in that order: a row costs a
    tuple, not the dictionary and the conversions an ORM object or a Core execution would.
    """

    def __init__(self, statement: UpdateBase | ForDialect, *keys: str) -> None:
        self.statement, self.keys = statement, keys
        self._compiled: dict[str, tuple[str, list[int] | None]] = {}

    def compiled(self, dialect: Dialect) -> tuple[str, list[int] | None]:
        """The SQL for ``dialect``, and where each of its parameters is in a row (None: in order)."""
        if dialect.name not in self._compiled:
            statement = self.statement if isinstance(self.statement, UpdateBase) else self.statement(dialect)
            compiled = statement.compile(dialect=dialect)
            order = [self.keys.index(name) for name in compiled.positiontup or ()]
            self._compiled[dialect.name] = str(compiled), None if order == list(range(len(self.keys))) else order
        return self._compiled[dialect.name]


def is_label(text: str) -> bool:
    """Whether ``text`` is a source's label as its own site names it, not a key qualified by a site: a folder's
    path (absolute, so it starts with "/") or ``<kind>:<id>`` (one ":", no "/"). A qualified key has a second
    ":" (``nas:astria:12``) or a "/" after its first (``nas:/srv/brand``); ``pg_search``'s rule is the same."""
    return text.startswith("/") or (text.count(":") == 1 and "/" not in text)


class UnitOfWork:
    """The connection every repository uses, its transactions, and the queue ``write_behind`` keeps."""

    def __init__(self, path: Path, engine: Engine, *, site: str = "",
                 unusable: Callable[[BaseException], StateError] | None = None) -> None:
        """``site``: this machine's name in a state shared by several (PostgreSQL), '' in a state of its own:
        what qualifies the labels of its sources (``key``). ``unusable``: the sentence for an error of the
        database (default: the SQLite file's at ``path``)."""
        self.path = path
        self.engine = engine
        self.site = site
        #: The ``daemon`` row this process's daemon keeps (a shared state's sites each keep their own).
        self.daemon_id = 1
        self.shared = engine.dialect.name == "postgresql"
        if self.shared:
            from packsync.state import postgres

            self.errors: tuple[type[Exception], ...] = (DBAPIError, *postgres.driver_errors(), OSError)
            self.misuse: Callable[[BaseException], bool] = postgres.misuse
            self.begin = postgres.BEGIN_WRITE
        else:
            self.errors, self.begin = DATABASE_ERRORS, sqlite.BEGIN_WRITE
            self.misuse = lambda error: isinstance(error, MISUSE_ERRORS)
        self._unusable = unusable or (lambda exc: _unusable(path, exc))
        self._open = False  # inside a transaction of ours
        self._queued: list[tuple[Bulk, list[Sequence[Any]]]] | None = None  # inside ``write_behind`` only
        #: Raises when no write may begin (the file was replaced under packsync: ``State.check``).
        self.before_write: Callable[[], None] = lambda: None
        #: Run inside every write transaction, right after it begins: raises when it may not commit (a shared
        #: state's site whose hold on a pack ran out: ``engine.leases``).
        self.fence: Callable[[], None] = lambda: None
        #: Run on every connection made (the first, and each made again after the server was lost).
        self.on_connect: list[Callable[[Connection], None]] = []
        self._connect()

    def _connect(self) -> None:
        with self.guarded():
            self.connection: Connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # The driver's own connection under it (PEP 249), for the statements run once per step: a
            # transaction's bounds and the compiled bulk writes, without SQLAlchemy's execution context per
            # statement (a pulled file's record measured 52 µs through it, 33 µs without; a run makes thousands).
            self._driver: Any = cast(Any, self.connection.connection.driver_connection)
            self._many: Callable[[str, Sequence[Sequence[Any]]], Any] = \
                self._driver.cursor().executemany if self.shared else self._driver.executemany
            try:
                for hook in self.on_connect:
                    hook(self.connection)
            except BaseException:  # (refused: the next use tries a new connection, and the hooks, again)
                self.connection.invalidate()
                raise

    def reconnected(self) -> bool:
        """Make a new connection when the server dropped the last one (a shared state's server restarted, the
        network came back); whether one was made. SQLite's connection to its file is never lost."""
        if not self.shared or not (self._driver.closed or self._driver.broken or self.connection.invalidated):
            return False
        if self._open:  # (its statements so far are lost with the session: the transaction must end in an error)
            self._open = False
            raise self._unusable(ConnectionError("the connection was lost in the middle of a transaction"))
        with contextlib.suppress(Exception):
            self.connection.close()
        self._connect()
        return True

    def key(self, label: str) -> str:
        """How the state stores a source's label: qualified by the site in a shared state (``nas:/srv/brand``),
        as it is in a state of one machine's own. A label of this site's is a folder's path or a remote
        source's ``<kind>:<id>`` of any kind (the state knows none by name); anything else is a key already
        (another site's, as ``label`` gives it back), and '' (an image of any mapping's) stays ''."""
        return f"{self.site}:{label}" if self.site and is_label(label) else label

    def label(self, key: str) -> str:
        """A stored key as this site names it: its own sources by their labels, other sites' qualified."""
        return key[len(self.site) + 1:] if self.site and key.startswith(self.site + ":") else key

    def own(self, column: ColumnElement[str], site: str | None = None) -> ColumnElement[bool]:
        """Whether a stored key (a ``root``, an ``owner``, a ``folder``) is this site's (or ``site``'s): any key
        of a state of one machine's own is."""
        site = self.site if site is None else site
        return column.startswith(site + ":", autoescape=True) if site else true()

    def close(self) -> None:
        with contextlib.suppress(*self.errors):
            self.connection.close()
        self.engine.dispose()

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """The database's errors raised inside, in packsync's terms (the transaction they broke dropped)."""
        try:
            yield
        except self.errors as exc:
            self.rollback()
            self.raise_unusable(exc)

    def raise_unusable(self, exc: Exception) -> NoReturn:
        """Raise ``exc``, one of the database's errors, in packsync's terms — unless it is packsync's misuse
        of the driver, a bug, which goes up as it is."""
        if self.misuse(getattr(exc, "orig", None) or exc):
            raise exc
        raise self._unusable(exc) from None

    def rollback(self) -> None:
        """Drop a transaction an error left open, so that the connection can be used again."""
        if self._open:
            self._open = False
            try:
                self._driver.execute("ROLLBACK")
            except self.errors:
                pass  # the database rolled it back itself (a full disk, an I/O error, a lost connection)

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
                # A state replaced is said once, by whoever starts the new one (its steps go to no one).
                if not (isinstance(exc, StateUnavailable) and exc.reason == "replaced"):
                    get_logger().warning("state: the last steps could not be recorded", error=str(exc))
            raise
        else:
            self.flush()
        finally:
            self._queued = None

    def flush(self) -> None:
        """Commit the steps ``write_behind`` queued (inside a transaction: that transaction will)."""
        if self._queued and not self._open:
            with self.transaction():
                pass

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements committed together, or not at all, after any steps queued before them (which stay
        queued until a commit holds them)."""
        self.before_write()
        self.reconnected()
        with self.guarded():
            self._driver.execute(self.begin)
            self._open = True
            queued = list(self._queued or ())
            try:
                self.fence()
                for bulk, rows in queued:
                    self._run(bulk, rows)
                yield
                self._driver.execute("COMMIT")
                self._open = False
            except BaseException:
                self.rollback()
                raise
            if queued and self._queued is not None:
                del self._queued[:len(queued)]

    def rows(self, statement: Executable, parameters: dict[str, Any] | None = None) -> Sequence[Sequence[Any]]:
        """The rows ``statement`` selects, every step written before included."""
        self.flush()
        self.reconnected()
        with self.guarded():
            return self.connection.execute(statement, parameters).all()

    def stream(self, statement: Executable) -> Iterator[Sequence[Any]]:
        """The rows ``statement`` selects, one at a time: a large read (a file cache) builds no list of them."""
        self.flush()
        self.reconnected()
        with self.guarded():
            yield from self.connection.execute(statement)

    def run(self, statement: Executable) -> None:
        """A write of its own kind (its values in it), part of the transaction open, or committed alone."""
        if not self._open:
            with self.transaction():
                self.run(statement)
            return
        with self.guarded():
            self.connection.execute(statement)

    def alone(self, statement: Executable, parameters: dict[str, Any] | None = None) -> list[Any]:
        """One statement on its own, atomic by itself (the connection is in autocommit), outside any
        transaction of ours, on a connection made again if the server dropped the last: its rows (a write's,
        with ``RETURNING``), or ``[rowcount]`` for a write that returns none."""
        self.reconnected()
        with self.guarded():
            result = self.connection.execute(statement, parameters)
            return list(result.all()) if result.returns_rows else [result.rowcount]

    def execute(self, sql: str) -> None:
        """A statement of the schema's own (DDL), inside the current transaction or on its own."""
        with self.guarded():
            self.connection.exec_driver_sql(sql)

    def write(self, bulk: Bulk, rows: Iterable[Sequence[Any]]) -> None:
        """``bulk`` for each row, committed together — or a part of the transaction open, or queued inside
        ``write_behind`` (nothing at all, not even the write lock, for no rows)."""
        rows = list(rows)
        if not rows:
            return
        if self._open:
            with self.guarded():
                self._run(bulk, rows)
        elif self._queued is not None:
            self._queued.append((bulk, rows))
            if len(self._queued) >= QUEUED_AT_MOST:
                self.flush()
        else:
            with self.transaction():
                self._run(bulk, rows)

    def _run(self, bulk: Bulk, rows: Sequence[Sequence[Any]]) -> None:
        sql, order = bulk.compiled(self.connection.dialect)
        if order is not None:
            rows = [tuple(row[index] for index in order) for row in rows]
        self._many(sql, rows)
