"""The folder ``packsync pull`` writes into, reached without following any link below it.

The folder named on the command line is the user's choice: it is resolved once, links and all. Below
it nothing is followed: each directory is opened from its parent's descriptor with ``O_NOFOLLOW``, and
each file is created, linked, read and removed relative to its own directory's descriptor — so a class
folder swapped for a link to ``/tmp/outside``, before the pull or while it runs, is met as a link
(``LinkInTheWay``, remembered in ``links``) and nothing is written, read or deleted through it. A name
that is itself a link is never a pulled file: it is not read, and a new file never replaces it.

This module does the file system's part of a pull and nothing else: it decides nothing.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from pathlib import Path
from types import TracebackType

from packsync.errors import LinkInTheWay, SourceError
from packsync.files import file_id
from packsync.sources.media import digest_file

TEMP_PREFIX = ".packsync-pull-"
_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{12}\.part")
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_name() -> str:
    """A fresh name for a download on its way, in the directory it will be placed in."""
    return f"{TEMP_PREFIX}{os.urandom(6).hex()}.part"


class PullFolder:
    """Descriptors of the pull's folder and of the directories below it, each opened once.

    ``write``: the pull runs — the folder and missing directories are made, each directory's leftovers
    of a killed pull are removed as it is first opened, and ``taken`` gathers the names already used
    (lower-cased, relative to the folder). Otherwise (observing, a dry run) nothing is made or changed.
    """

    def __init__(self, root: Path, *, write: bool) -> None:
        if write:
            root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.write = write
        self.links: set[str] = set()
        self.taken: set[str] = set()
        self._dirs: dict[str, int] = {}
        self._lock = threading.RLock()  # downloads open their directories from worker threads: each once
        self._dirs[""] = self._opened(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "")

    def __enter__(self) -> PullFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def opened(self, rel: str) -> int | None:
        """The directory ``rel``'s descriptor when it is open already (no system call: the event loop
        may ask)."""
        return self._dirs.get(rel)

    def directory(self, rel: str) -> int | None:
        """The descriptor of the directory ``rel`` (``""``: the folder), or None when it is not there and
        the pull only observes. Raises ``LinkInTheWay`` for the first link on the way."""
        with self._lock:
            return self._directory(rel)

    def _directory(self, rel: str) -> int | None:
        if (known := self._dirs.get(rel)) is not None:
            return known
        parent_rel, _, name = rel.rpartition("/")
        _below(name, rel)
        parent = self._directory(parent_rel)
        if parent is None:
            return None
        try:
            fd = self._open_directory(parent, name, rel)
        except FileNotFoundError:
            if not self.write:
                return None
            try:
                os.mkdir(name, dir_fd=parent)
            except FileExistsError:
                pass  # made meanwhile: opened below, as anything else would be
            fd = self._open_directory(parent, name, rel)
        self._dirs[rel] = self._opened(fd, rel)
        return fd

    def check(self, rel: str) -> None:
        """Raise unless the directory ``rel``, opened earlier, is still where its path leads through no
        link: one moved away and replaced (by a link to where it went, say) while the pull ran gets
        nothing more placed in it (``LinkInTheWay``, or ``SourceError`` when it was only moved)."""
        if not rel:
            return  # the folder itself: the user's choice, resolved once
        with self._lock:
            expected = file_id(self._dirs[rel])
            opened: list[int] = []
            try:
                fd = self._dirs[""]
                parts = rel.split("/")
                for count, part in enumerate(parts, 1):
                    fd = self._open_directory(fd, part, "/".join(parts[:count]))
                    opened.append(fd)
                current = file_id(fd)
            except FileNotFoundError:
                current = None
            finally:
                for fd in opened:
                    os.close(fd)
        if current != expected:
            raise SourceError(f"{rel} was moved while the pull ran: nothing more is placed in it")

    def parent(self, rel: str) -> tuple[int, str]:
        """The descriptor of the directory ``rel`` is in (made if missing), and its last part."""
        folder, _, name = rel.rpartition("/")
        _below(name, rel)
        fd = self.directory(folder)
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "no such folder", folder)
        return fd, name

    def is_file(self, rel: str) -> bool:
        """Whether ``rel`` is a regular file (a link is not). Raises ``LinkInTheWay`` for a link on the way."""
        try:
            fd, name = self.parent(rel)
            return stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def holds(self, rel: str, sha256: str) -> bool:
        """Whether ``rel`` is still a regular file holding exactly ``sha256`` (a link does not). Raises
        ``LinkInTheWay`` for a link on the way."""
        try:
            fd, name = self.parent(rel)
            return digest_file(name, follow=False, dir_fd=fd).sha256 == sha256  # (a FIFO there refused, not waited on)
        except OSError:
            return False

    def unlink(self, rel: str) -> None:
        """Remove the file ``rel`` from its directory, still where its path leads (``check``)."""
        fd, name = self.parent(rel)
        self.check(rel.rpartition("/")[0])
        os.unlink(name, dir_fd=fd)

    def sync(self) -> None:
        """The names placed, durable (a lost one is only downloaded again)."""
        for fd in self._dirs.values():
            try:
                os.fsync(fd)
            except OSError:
                pass  # some file systems cannot sync a folder; the files themselves are

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def _open_directory(self, parent: int, name: str, rel: str) -> int:
        try:
            return os.open(name, _DIRECTORY, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(name, parent):
                self.links.add(rel)
                raise LinkInTheWay(rel) from None
            raise

    def _opened(self, fd: int, rel: str) -> int:
        """A directory just opened: when writing, with a killed pull's leftovers dropped and its names taken."""
        if not self.write:
            return fd
        try:
            prefix = f"{rel}/" if rel else ""
            with os.scandir(fd) as entries:
                for entry in entries:
                    if _TEMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                        os.unlink(entry.name, dir_fd=fd)  # exactly pull's own, nobody else's
                    else:
                        self.taken.add(f"{prefix}{entry.name}".lower())
        except OSError:
            os.close(fd)
            raise
        return fd


def _below(name: str, rel: str) -> None:
    """Refuse a path that would not lead below the folder (a record from a state someone edited)."""
    if name in ("", ".", ".."):
        raise SourceError(f"{rel!r} is not a name below the pull's folder")


def _is_link(name: str, parent: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False
