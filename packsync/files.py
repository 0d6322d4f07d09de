"""Opening a file that someone may have replaced by something that is not one.

packsync reads files a user names or leaves around: the config, a token file, a folder's
``.packsyncignore``, XMP sidecars, the state. Any of them can be a FIFO (``open`` then waits for a
writer that never comes, and a run or the daemon hangs for good), a device (``/dev/zero`` never ends)
or a socket. Here alone such files are opened: without blocking, checked to be regular files, and
read up to a limit. What is refused is an ``OSError`` whose ``strerror`` says what the file is, so that
each caller's "cannot read X (…)" sentence needs nothing more.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

#: What a file that is not a regular file is, in a user's words.
_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder"))


def open_regular(path: Path | str | int, *, follow: bool = True, dir_fd: int | None = None) -> io.FileIO:
    """``path`` opened for reading (unbuffered), or an ``OSError`` when it is not a regular file. It is opened without
    blocking (a FIFO opens at once then) and its type checked on the open file, so that nothing swapped
    in between a check and the open is read. An open descriptor is checked the same way, and is the
    returned file's (closed with it, or at once when refused). ``follow=False``: a link is refused too.
    ``dir_fd``: ``path`` is relative to that directory (a pull's, opened without following links)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = path if isinstance(path, int) else os.open(path, flags, dir_fd=dir_fd)
    try:
        check_regular(fd, path)
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(fd: int, path: Path | str | int) -> None:
    """An ``OSError`` saying what the file open as ``fd`` is, unless it is a regular file."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "something else")
        raise OSError(errno.EINVAL, f"{kind}, not a regular file", str(path))


def read_regular(path: Path | str, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of the regular file at ``path``; an ``OSError`` when it is not one or holds more than
    ``limit`` bytes (a file that large is not what packsync expects there, and is not read whole)."""
    chunks: list[bytes] = []
    total = 0
    with open_regular(path, follow=follow) as handle:
        # Read at its size (and a byte more, to see its end) in one call: no copy of a large file is made,
        # and a file that grew since is read on to ``limit``.
        want = min(os.fstat(handle.fileno()).st_size, limit) + 1
        while total <= limit and (chunk := handle.read(want)):
            chunks.append(chunk)
            total += len(chunk)
            want = limit + 1 - total
    if total > limit:
        raise OSError(errno.EFBIG, f"larger than {_size(limit)}", str(path))
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def file_id(file: Path | str | int) -> tuple[int, int] | None:
    """Which file ``file`` (a path, or an open descriptor) is: its device and inode; None when no file is
    there. While a descriptor holds a file open its inode is not reused, so a path whose answer changed
    since names another file now: the one opened was deleted, replaced or moved away."""
    try:
        found = os.stat(file)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found.st_dev, found.st_ino


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MiB" if count >= 1024 * 1024 else f"{count // 1024} KiB"
