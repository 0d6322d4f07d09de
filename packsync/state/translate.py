"""The one place where the database's and the file system's errors become packsync's own.

Every error of the state — SQLite's (bare, or as SQLAlchemy wraps it: the driver's error is its
``orig``), or the file system's — ends in one sentence naming the file: ``StateUnavailable`` when it
may pass (locked by another program, disk full, an I/O error), ``StateError`` otherwise. Importing this
costs nothing (the lock uses it for its own file): it reads the errors' attributes, never imports a
database library. It decides nothing else.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from packsync.errors import StateError, StateUnavailable, file_system_reason

#: The file system's refusals to open or write a file that do not pass by waiting a little.
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EMFILE, errno.ENFILE)
#: The files SQLite may hold open for one database in WAL mode.
_DATABASE_FILES = 4


def unusable(path: Path, exc: BaseException) -> StateError:
    """The one sentence for an error of the database at ``path`` (SQLite's, or the file system's)."""
    origin = getattr(exc, "orig", None) or exc  # SQLAlchemy's DBAPIError carries the driver's error
    name = getattr(origin, "sqlite_errorname", "") or ""
    code = origin.errno if isinstance(origin, OSError) else None
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StateUnavailable(f"the state database {path} is locked by another program "
                                "(a backup tool, or a sqlite3 shell holding a transaction?).", reason="locked")
    if name == "SQLITE_FULL" or code == errno.ENOSPC or (name.startswith("SQLITE_IOERR") and _disk_full(path)):
        return StateUnavailable(f"no space left on the device of {path}.", reason="full")
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN")) or code in _REFUSED:
        return StateError(f"cannot write the state database {path}: {file_system_reason(code or _refused(path))}.")
    if name.startswith("SQLITE_IOERR") or code == errno.EIO:
        return StateUnavailable(f"the state database {path} could not be read or written (I/O error).",
                                reason="io")
    if isinstance(origin, OSError):
        return StateError(f"cannot use the state database {path} ({origin.strerror or origin}).")
    return corrupt(path, str(origin))


def corrupt(path: Path, what: str) -> StateError:
    """The sentence for a state file that is packsync's, or looks it, but cannot be read as one."""
    return StateError(f"the state database {path} is corrupt ({what}); packsync will not replace it. "
                      "Move it away to start over.")


def _refused(path: Path) -> int:
    """Why SQLite could not open or write ``path`` (it does not say which errno), found by looking: a
    read-only mount, too few file descriptors left for a database (its file, ``-wal``, ``-shm`` and a
    journal: SQLite has let go of those it had), else a refusal (the owner and mode)."""
    probes: list[int] = []
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return errno.EROFS
        for _ in range(_DATABASE_FILES):
            probes.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return exc.errno
    finally:
        for probe in probes:
            os.close(probe)
    return errno.EACCES


def _disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (next to) no space left: SQLite reports a write that
    failed for want of space as an I/O error."""
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 64 * 1024
