"""The input of a preparation, read at random, and its output as parts: new bytes and ranges of the input.

Every container walker (``containers.py``) reads through a ``Reader``: ``BytesReader`` over bytes in hand
(``prepare``/``inspect``), ``FileReader`` over a file descriptor (``prepare_path``/``inspect_path``), so one
walk serves both and a file is never held whole to be stripped. ``FileReader`` reads with ``os.pread``,
never ``mmap``: a file truncated under a mapping kills the process with SIGBUS, a short ``pread`` is only
an ``ItemChanged``. A stripped file is its edited header bytes and ``Span``s of the input between them;
``iter_chunks`` reads such parts back from the file a chunk at a time (the engine streams its uploads
with ``sources/body.py``, which checks the file as it sends).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

import msgspec

from packsync.errors import CHANGED_SINCE_SCAN, ItemChanged

#: How much of a file is read at once: when hashing, scanning for later images, streaming the output.
CHUNK = 1024 * 1024
#: Small reads (segment and chunk headers) are served from a window of this many bytes read at once.
WINDOW = 64 * 1024


class Span(msgspec.Struct, frozen=True):
    """``length`` bytes of the input from ``offset``, passed on as they are."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


Part = bytes | Span


def part_length(part: Part) -> int:
    return part.length if isinstance(part, Span) else len(part)


class Reader(ABC):
    """The input, ``size`` bytes, read by range as a ``bytes`` slice would read it (cut at the end)."""

    size: int

    @abstractmethod
    def read(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)``, cut at ``size``: what ``data[start:end]`` would be."""

    def whole(self) -> bytes:
        """All of it, for the decoders (a re-encode, a HEIF): they need every byte at once."""
        return self.read(0, self.size)

    def chunks(self, start: int, end: int, chunk: int = CHUNK) -> Iterator[bytes]:
        """``[start, end)`` in pieces of at most ``chunk`` bytes."""
        for at in range(start, min(end, self.size), chunk):
            yield self.read(at, min(at + chunk, end))

    def find(self, needle: bytes, start: int) -> int:
        """Where ``needle`` first occurs at or after ``start`` (-1: nowhere), read a chunk at a time; each
        chunk overlaps the next by ``len(needle) - 1`` bytes, so an occurrence across their border is found."""
        for at in range(max(start, 0), self.size, CHUNK):
            found = self.read(at, at + CHUNK + len(needle) - 1).find(needle)
            if found >= 0:
                return at + found
        return -1


class BytesReader(Reader):
    """Bytes already in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]

    def whole(self) -> bytes:
        return self.data  # the very object: "nothing changed" gives it back


class FileReader(Reader):
    """A file by its descriptor, expected to hold ``size`` bytes: a read that comes back short, a size or a
    modification time that is no longer the one seen when it was opened, is ``ItemChanged``."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._seen = _identity(fd)
        if self._seen[0] != size:
            raise ItemChanged(CHANGED_SINCE_SCAN)
        self._window, self._window_at = b"", 0

    def read(self, start: int, end: int) -> bytes:
        start, end = min(max(start, 0), self.size), min(end, self.size)
        if end <= start:
            return b""
        inside = start - self._window_at
        if inside >= 0 and end - self._window_at <= len(self._window):
            return self._window[inside:inside + end - start]
        if end - start > WINDOW // 4:
            return read_exactly(self.fd, start, end - start)
        self._window, self._window_at = read_exactly(self.fd, start, min(WINDOW, self.size - start)), start
        return self._window[:end - start]

    def unchanged(self) -> None:
        """Raise ``ItemChanged`` unless the file's size and modification time are still those seen at first."""
        if _identity(self.fd) != self._seen:
            raise ItemChanged(CHANGED_SINCE_SCAN)


def _identity(fd: int) -> tuple[int, int, int]:
    try:
        seen = os.fstat(fd)
    except OSError as exc:
        raise ItemChanged(f"cannot read it any more ({exc.strerror})") from None
    return seen.st_size, seen.st_mtime_ns, seen.st_ino


def read_exactly(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``: fewer (the file shrank) is ``ItemChanged``, as a read error is."""
    try:
        data = os.pread(fd, length, offset)
        while len(data) < length:  # (a regular file returns all it has; a short read means it is shorter now)
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                raise ItemChanged(CHANGED_SINCE_SCAN)
            data += more
    except OSError as exc:
        raise ItemChanged(f"cannot read it any more ({exc.strerror})") from None
    return data


def iter_chunks(fd: int, parts: Iterable[Part], chunk: int = CHUNK) -> Iterator[bytes]:
    """The output ``parts`` make, read from the file ``fd`` in pieces of at most ``chunk`` bytes: what the
    upload sends and its hash is taken of. A span the file no longer holds is ``ItemChanged``."""
    for part in parts:
        if isinstance(part, Span):
            for at in range(part.offset, part.end, chunk):
                yield read_exactly(fd, at, min(chunk, part.end - at))
        else:
            for at in range(0, len(part), chunk):
                yield part[at:at + chunk] if len(part) > chunk else part
