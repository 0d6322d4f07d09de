"""What the state knows of PostgreSQL, named and in one place: the shared state of several machines.

The counterpart of ``sqlite``: the engine and its one connection (psycopg 3, in autocommit, with
positional parameters so that the unit of work's compiled bulk writes run as they do on SQLite), the
schema made once for every site (its tables with byte-order text, as SQLite compares, its indexes and
the statement triggers that count changes), the few statements only PostgreSQL has (``ON CONFLICT``
upserts, a transaction's ``BEGIN``), the site's own session lock, and its errors in packsync's words.

psycopg is imported when an engine is made, never before: a state on SQLite loads no PostgreSQL library.
The password is handed to the driver as a parameter of its own, never part of a URL that could be shown.
"""

from __future__ import annotations

import zlib
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine
from sqlalchemy.dialects.postgresql import Insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import NullPool
from sqlmodel.sql.sqltypes import AutoString

from packsync.config import SharedState
from packsync.errors import LockedError, StateError, StateUnavailable

BEGIN_WRITE = "BEGIN"
#: How long a statement may wait for a row another site's transaction holds, before it is an error that
#: passes (a site's transactions are short; a longer wait is a server in trouble).
LOCK_TIMEOUT_MS = 10_000
#: How long a transaction may stay open between two statements before the server ends it (and lets go of its
#: rows). A site's transactions run their statements back to back, never waiting on the network: one that
#: pauses this long belongs to a frozen process (a closed lid, a stopped VM), whose row locks would otherwise
#: fail every other site's writes until it woke. Shorter than ``LOCK_TIMEOUT_MS``, so a waiting site outlasts it.
IDLE_IN_TRANSACTION_MS = 5_000
CONNECT_TIMEOUT_S = 10
#: How long one statement may run: far more than any of packsync's takes, far less than forever.
STATEMENT_TIMEOUT_MS = 120_000
#: The one transaction-scoped lock every site takes to create or upgrade the schema, so that two sites'
#: first runs do not both create it.
_SCHEMA_LOCK = 0x70616B73  # "paks"


@compiles(AutoString, "postgresql")
def _byte_order(_type: AutoString, _compiler: Any, **_kw: Any) -> str:
    """Text compared byte by byte (the "C" collation), as SQLite compares it: a range of paths below a
    folder (``files._at_or_below``) and every order by name come out the same on both, whatever the
    server's default collation."""
    return 'VARCHAR COLLATE "C"'


def driver_errors() -> tuple[type[Exception], ...]:
    """The driver's errors that may reach the unit of work unwrapped (its own ``BEGIN``, bulk writes)."""
    import psycopg

    return (psycopg.Error,)


def misuse(error: BaseException) -> bool:
    """Whether the driver's error is packsync's misuse of it (a bug: a statement it cannot send as written),
    never the server's answer. psycopg raises its ``ProgrammingError`` for both; the server's carry the
    SQLSTATE it answered with (permission denied, a missing table, a trigger's refusal)."""
    import psycopg

    return isinstance(error, psycopg.ProgrammingError | psycopg.InterfaceError) \
        and getattr(error, "sqlstate", None) is None


def where(shared: SharedState) -> str:
    """How messages name the shared state: its server and database, never a user or a password."""
    url = make_url(shared.url)
    port = f":{url.port}" if url.port else ""
    return f"{url.host or 'localhost'}{port}/{url.database or ''}"


def open_engine(shared: SharedState) -> Engine:
    """The engine of the shared state: a connection made when asked (the unit of work keeps one, and makes
    another when the server comes back), each in autocommit, positional parameters."""
    import psycopg  # noqa: F401  (a missing driver is said here, once: ``missing_driver``)

    url = make_url(shared.url).set(drivername="postgresql+psycopg")
    # A server that stops answering (a cut link, not a refusal) fails a statement within ~30 s rather than
    # hanging it: the unit's calls are made on the daemon's event loop.
    connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "packsync",
                                    # (the server's keepalives too: a session cut off lets go of the site's lock
                                    # in ~25 s, not the server's default two hours, so the site can come back)
                                    # (synchronous_commit stays the server's: a lease the server said it took
                                    # must not vanish in its crash, or two sites would both hold it)
                                    "options": f"-c lock_timeout={LOCK_TIMEOUT_MS} "
                                               f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} "
                                               f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                                               "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
                                               "-c tcp_keepalives_count=3",
                                    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                                    "keepalives_count": 3, "tcp_user_timeout": 30_000}
    if shared.password is not None:
        connect_args["password"] = shared.password
    return create_engine(url, connect_args=connect_args, poolclass=NullPool, paramstyle="format",
                         isolation_level="AUTOCOMMIT", hide_parameters=True)


def missing_driver() -> str | None:
    """Why a shared state cannot be opened here for want of the driver (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return ("[state] url needs PostgreSQL's driver, which is not installed: "
                "pip install 'packsync[postgresql]' (or pip install 'psycopg[binary]').")
    return None


def upsert(table: Table) -> Insert:
    """Every column of a row inserted, or written over the row of the same primary key."""
    statement = pg_insert(table)
    keys = {column.name for column in table.primary_key.columns}
    return statement.on_conflict_do_update(index_elements=sorted(keys), set_={
        column.name: statement.excluded[column.name] for column in table.columns if column.name not in keys})


def insert_new(table: Table) -> Insert:
    """A row inserted unless its primary key is taken already."""
    return pg_insert(table).on_conflict_do_nothing()


def tables_of(connection: Connection, schema: str = "public") -> set[str]:
    return {row[0] for row in connection.exec_driver_sql(
        f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'")}


def schema_lock(connection: Connection) -> None:
    """Wait for (and hold until the transaction ends) the right to create or upgrade the schema."""
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")


def count_changes(tables: tuple[str, ...]) -> list[str]:
    """A function and statement triggers that count every change to these tables in ``changes`` (row 0):
    one count a statement, not a row (an ``INSERT … SELECT`` of many rows counts once; a bulk write, which
    psycopg sends as a statement a row, once a row, and an upsert twice: the count only has to grow)."""
    statements = ["CREATE OR REPLACE FUNCTION packsync_count_change() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; RETURN NULL; END $$"]
    for table in tables:
        statements += [f"DROP TRIGGER IF EXISTS {table}_counted ON {table}",
                       f"CREATE TRIGGER {table}_counted AFTER INSERT OR UPDATE OR DELETE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION packsync_count_change()"]
    return statements


def data_version(connection: Connection) -> int:
    """A number that changes whenever a transaction that wrote ends on the server (any site's): what a reader
    polls. (The server's snapshot, which names the transactions still running and the next to come: it
    changes as one commits; no privilege needed, no row read.)"""
    snapshot = str(connection.exec_driver_sql("SELECT pg_current_snapshot()::text").scalar_one())
    return zlib.crc32(snapshot.encode())


def site_lock_key(site: str) -> int:
    """The session lock that keeps a site to one packsync, as a signed 64-bit key."""
    return zlib.crc32(b"packsync-site:" + site.encode()) - (1 << 31)


def lock_site(connection: Connection, shared: SharedState, *, again: bool = False) -> None:
    """Hold the site's session lock for as long as this connection lives: a second packsync of the same
    site (the same config on two machines, say) is refused, as a second one on one state file is. Taken
    ``again`` on a connection made after the server was lost, a refusal may pass: the server has not yet
    seen that the lost session is gone (it holds the lock until its keepalives tell it)."""
    held = connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({site_lock_key(shared.site)})").scalar_one()
    if not held and again:
        raise StateUnavailable(f"the shared state {where(shared)} still holds this site's lock for the session it "
                               "lost; waiting for the server to let it go.", reason="locked")
    if not held:
        raise LockedError(f"another packsync is using the shared state {where(shared)} as site {shared.site!r} "
                          "(on this machine, or another with the same [state] site); stop it first, or give "
                          "this machine a [state] site of its own.")


def unusable(shared: SharedState, exc: BaseException) -> StateError:
    """The one sentence for an error of the shared state's server."""
    import psycopg
    from psycopg import errors

    origin = getattr(exc, "orig", None) or exc
    place = where(shared)
    reason = _first_line(origin)
    if isinstance(origin, errors.InvalidPassword | errors.InvalidAuthorizationSpecification) \
            or "authentication failed" in reason or "no password supplied" in reason:
        return StateError(f"the shared state {place} refused this site's login ({reason}); check [state] url's "
                          "user and the password in [state] password_env or password_file.")
    if isinstance(origin, errors.InsufficientPrivilege):
        return StateError(f"the shared state {place} refused a statement: {reason}. Its user needs to create "
                          "tables in the database's public schema, and read and write them.")
    if isinstance(origin, errors.InvalidCatalogName):
        return StateError(f"the shared state {place}: the database does not exist ({reason}); create it first "
                          "(createdb).")
    if isinstance(origin, errors.DiskFull):
        return StateUnavailable(f"the shared state {place} has no space left ({reason}).", reason="full")
    if isinstance(origin, errors.SerializationFailure | errors.DeadlockDetected | errors.LockNotAvailable
                  | errors.QueryCanceled):
        return StateUnavailable(f"the shared state {place} is busy ({reason}).", reason="locked")
    if isinstance(origin, psycopg.OperationalError | errors.AdminShutdown | OSError):
        return StateUnavailable(f"the shared state {place} cannot be reached ({reason}).", reason="unreachable")
    return StateError(f"the shared state {place} refused a statement: {reason}.")


def _first_line(error: BaseException) -> str:
    """The server's or the driver's own sentence, on one line, without psycopg's connection preamble."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    _, _, after = text.rpartition(" failed: ")
    text = after or text
    return text.removeprefix("FATAL:").strip()
