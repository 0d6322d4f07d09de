"""One packsync per state database: an exclusive ``flock`` on ``<state>.lock``.

``run`` and ``daemon`` take the same lock, so two of them never interleave their steps. The lock
file holds the holder's pid, so a refused second instance can say who holds it. The kernel drops
the lock when its holder dies, however it dies: there is no stale lock to clean up.

A lock is on a file, not a path: a lock file deleted (``rm state.db*``) or replaced while held excludes
no one any more, since the next packsync creates a new file at the path and locks that. So a lock is
taken on the file the path names once it is locked (``acquire`` checks), a holder can ask whether it
still is (``intact``) and take the lock again on the file there now (``renew``).

``packsync pull`` takes none of this: it locks the folder it writes into (``PullLock``), and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from types import TracebackType

from packsync.errors import LockedError
from packsync.files import check_regular, file_id
from packsync.state.translate import unusable

#: How often ``acquire`` tries again when the lock file it locked was deleted or replaced meanwhile.
RELOCK_TRIES = 5


def lock_path(state_path: Path) -> Path:
    """The lock file of the state database at ``state_path``."""
    return state_path.with_name(state_path.name + ".lock")


def same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not deleted, not replaced by another)."""
    try:
        held = file_id(fd)
        return held is not None and held == file_id(path)
    except OSError:
        return False


class StateLock:
    def __init__(self, state_path: Path) -> None:
        self.path = lock_path(state_path)
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        for _ in range(RELOCK_TRIES):
            fd = self._locked()
            if same_file(fd, self.path):
                break
            os.close(fd)  # deleted or replaced between our open and our lock: lock the file there now
        else:
            raise unusable(self.path, OSError(f"{self.path} keeps being deleted or replaced"))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message a second instance prints; the lock itself is held
        self._fd = fd
        return self

    def _locked(self) -> int:
        """The lock file at the path, opened (created if missing) and locked; LockedError if someone holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise unusable(self.path, exc) from None
        try:
            check_regular(fd, self.path)  # (a FIFO there would be locked, and block whoever reads its pid)
        except OSError as exc:
            os.close(fd)
            raise unusable(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"another packsync (pid {holder}) is using {self.path.with_suffix('')}; "
                              "wait for it to finish or stop it first.") from None
        return fd

    def intact(self) -> bool:
        """Whether the lock held is still on the file its path names: else it excludes no one any more."""
        return self._fd is not None and same_file(self._fd, self.path)

    def renew(self) -> None:
        """Let the lock go and take it again on the file the path names now (created if missing);
        LockedError if another packsync holds that one (the lock stays let go: ``renew`` again later)."""
        self.release()
        self.acquire()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> int | None:
        """The pid holding the lock right now, or None when nobody does."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # (a FIFO: no wait for a writer)
        except OSError:
            return None
        try:
            check_regular(fd, self.path)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        except OSError:
            return None  # not a regular file: no packsync holds it
        finally:
            os.close(fd)
        return None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.release()


def pull_lock_path(state_path: Path, folder: Path) -> Path:
    """The lock file of ``packsync pull`` into ``folder`` (resolved), beside the state: one per folder, named
    by a digest of its path. Never in the folder itself, which is the user's (and may be a mapped one)."""
    digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:16]
    return state_path.with_name(f"{state_path.name}.pull-{digest}.lock")


class PullLock(StateLock):
    """One ``packsync pull`` per destination folder: an exclusive ``flock`` on its own lock file.

    A pull takes this lock, not the state's, so it runs beside the daemon and ``run``: what it writes to
    the state (the files it pulled, the contents of the URLs it downloaded) is its own or a fact every
    writer agrees on, each in a short transaction. Two pulls into one folder would not interleave safely
    (each would place its own copy of an image under another name), so the second is refused at once,
    naming the folder — as a second ``run`` or ``daemon`` is — rather than waiting: it would only
    download what the first is downloading, and a wait the length of a large pack looks like a hang.
    """

    def __init__(self, state_path: Path, folder: Path) -> None:
        super().__init__(state_path)
        self.folder = folder
        self.path = pull_lock_path(state_path, folder)

    def _locked(self) -> int:
        try:
            return super()._locked()
        except LockedError:
            holder = self.holder()
            raise LockedError(f"another packsync pull (pid {holder if holder and holder > 0 else 'unknown'}) is "
                              f"writing into {self.folder}; wait for it to finish.") from None
