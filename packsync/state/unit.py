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

The connection is used from one thread at a time. The database's and the file system's errors, at any
moment, end here in ``translate.unusable``'s sentence, after the transaction they broke is rolled back —
all but the driver refusing how packsync used it (``MISUSE_ERRORS``), a bug that goes up as one.
This module knows no table: the repositories bring their statements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Connection, Dialect, Engine, Executable
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase

from packsync.errors import StateError, StateUnavailable
from packsync.logs import get_logger
from packsync.state.sqlite import BEGIN_WRITE, DRIVER_ERRORS, MISUSE_ERRORS
from packsync.state.translate import unusable

#: Steps ``write_behind`` queues at most before it commits them.
QUEUED_AT_MOST = 64
#: The errors that are the database's or the file system's (but for ``MISUSE_ERRORS``: packsync's own).
DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, *DRIVER_ERRORS, OSError)


def raise_unusable(path: Path, exc: Exception) -> NoReturn:
    """Raise ``exc``, one of ``DATABASE_ERRORS``, in packsync's terms (``translate.unusable``) — unless it
    is packsync's misuse of the driver, a bug, which goes up as it is."""
    if isinstance(getattr(exc, "orig", None) or exc, MISUSE_ERRORS):
        raise exc
    raise unusable(path, exc) from None


class Bulk:
    """A write statement (Core), compiled once and run for many rows at the driver's own speed.

    Its rows are tuples of the values of ``keys``, its bound parameters, in that order: a row costs a
    tuple, not the dictionary and the conversions an ORM object or a Core execution would.
    """

    def __init__(self, statement: UpdateBase, *keys: str) -> None:
        self.statement, self.keys = statement, keys
        self._compiled: dict[str, tuple[str, list[int] | None]] = {}

    def compiled(self, dialect: Dialect) -> tuple[str, list[int] | None]:
        """The SQL for ``dialect``, and where each of its parameters is in a row (None: in order)."""
        if dialect.name not in self._compiled:
            compiled = self.statement.compile(dialect=dialect)
            order = [self.keys.index(name) for name in compiled.positiontup or ()]
            self._compiled[dialect.name] = str(compiled), None if order == list(range(len(self.keys))) else order
        return self._compiled[dialect.name]


class UnitOfWork:
    """The connection every repository uses, its transactions, and the queue ``write_behind`` keeps."""

    def __init__(self, path: Path, engine: Engine) -> None:
        self.path = path
        self.engine = engine
        self.connection: Connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        # The driver's own connection under it (PEP 249), for the statements run once per step: a
        # transaction's bounds and the compiled bulk writes, without SQLAlchemy's execution context per
        # statement (a pulled file's record measured 52 µs through it, 33 µs without; a run makes thousands).
        self._driver: Any = self.connection.connection.driver_connection
        self._open = False  # inside a transaction of ours
        self._queued: list[tuple[Bulk, list[Sequence[Any]]]] | None = None  # inside ``write_behind`` only
        #: Raises when no write may begin (the file was replaced under packsync: ``State.check``).
        self.before_write: Callable[[], None] = lambda: None

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """The database's errors raised inside, in packsync's terms (the transaction they broke dropped)."""
        try:
            yield
        except DATABASE_ERRORS as exc:
            self.rollback()
            raise_unusable(self.path, exc)

    def rollback(self) -> None:
        """Drop a transaction an error left open, so that the connection can be used again."""
        if self._open:
            self._open = False
            try:
                self._driver.execute("ROLLBACK")
            except DATABASE_ERRORS:
                pass  # the database rolled it back itself (a full disk, an I/O error)

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
        with self.guarded():
            self._driver.execute(BEGIN_WRITE)
            self._open = True
            queued = list(self._queued or ())
            try:
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
        with self.guarded():
            return self.connection.execute(statement, parameters).all()

    def stream(self, statement: Executable) -> Iterator[Sequence[Any]]:
        """The rows ``statement`` selects, one at a time: a large read (a file cache) builds no list of them."""
        self.flush()
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
        self._driver.executemany(sql, rows)
