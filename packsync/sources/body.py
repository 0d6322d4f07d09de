"""An item's bytes on their way to storage: read from disk a chunk at a time, never held whole.

An ``UploadBody`` is a list of parts — bytes held in memory, or a range of a file (``FileRange``) — with
the size and SHA-256 planned for the whole. ``chunks`` reads it as it is sent, hashing what it gives,
and holds back the last chunk until the size and the hash are the planned ones: a file that grew,
shrank or changed while it was sent raises ``ItemChanged`` before its last bytes leave, so the request
ends short of its ``Content-Length`` and storage keeps nothing. Each call starts again from the first
byte (a retried PUT sends the whole body again). ``read`` gives the whole, checked the same way, to a
recipe that must decode it.

A prepared upload is "parts: edited header bytes and ranges of the source file" as easily as one file
or one spool file: the body never knows which it is.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path

import msgspec

from packsync.errors import CHANGED_SINCE_SCAN, ItemChanged
from packsync.files import open_regular

#: The bytes read and sent at a time: large enough that a thread hop and a throttle's ``take`` per chunk
#: cost nothing next to the bytes, small enough that concurrency × 2 chunks is all an upload holds.
CHUNK = 512 * 1024
#: A range this small is read on the event loop: a thread hop costs more than the read.
INLINE_BYTES = 256 * 1024
CHANGED_WHILE_SENT = "changed while it was uploaded; it will be synced on the next run"
REPLACED_BY_A_LINK = "replaced by a symbolic link since it was scanned; the link is not followed"
LINK_POINTS_OUT = "its symbolic link points outside the mapped folder since it was scanned; not followed"


class FileRange(msgspec.Struct, frozen=True):
    """``length`` bytes from ``offset`` of the file at ``path``, whose whole size was ``file_size`` when
    it was planned: a file of another size now has changed, whatever the bytes of the range. ``follow``:
    a symbolic link at ``path`` is read through (as the scan that found it did), to a file under ``within``
    (the mapped folder, resolved) when that is given; else it is refused."""

    path: Path
    offset: int
    length: int
    file_size: int
    follow: bool = True
    within: Path | None = None


Part = bytes | FileRange


class UploadBody:
    """The bytes of one upload, ``size`` of them hashing to ``sha256``, read part after part."""

    def __init__(self, parts: Sequence[Part], size: int, sha256: str) -> None:
        self.parts = tuple(parts)
        self.size = size
        self.sha256 = sha256

    @classmethod
    def of_file(cls, path: Path, size: int, sha256: str, *, follow: bool = True,
                within: Path | None = None) -> UploadBody:
        """A whole file, planned to hold ``size`` bytes hashing to ``sha256`` (``follow``, ``within``: as
        ``FileRange``)."""
        return cls((FileRange(path, 0, size, size, follow, within),), size, sha256)

    @classmethod
    def of_bytes(cls, data: bytes, sha256: str | None = None) -> UploadBody:
        """Bytes in hand (hashed here unless their hash is known)."""
        return cls((data,), len(data), sha256 or hashlib.sha256(data).hexdigest())

    @property
    def file(self) -> FileRange | None:
        """The one file the body is, whole, if it is one (what a recipe can prepare from disk)."""
        match self.parts:
            case (FileRange(offset=0, length=length, file_size=size) as whole,) if length == size == self.size:
                return whole
        return None

    async def chunks(self) -> AsyncGenerator[bytes]:
        """The bytes, ``CHUNK`` at a time, from the first; ``ItemChanged`` instead of the last chunk when
        they are not the planned ones."""
        sha, size, held, gathered = hashlib.sha256(), 0, b"", bytearray()
        files: dict[FileRange, int] = {}  # a file open once, however many of its ranges the body holds
        try:
            for part in self.parts:
                async for piece in _pieces(part, files):
                    sha.update(piece)
                    size += len(piece)
                    if size > self.size:
                        raise ItemChanged(CHANGED_WHILE_SENT)
                    if held:  # more bytes follow it: it is not the last chunk
                        yield held
                        held = b""
                    # A file's small ranges (a strip's, hundreds of thousands in a crafted file) go out a chunk
                    # at a time, with what follows them; bytes in hand (a few edited headers) go as they are.
                    if gathered or (len(piece) < CHUNK and isinstance(part, FileRange)):
                        gathered += piece
                        if len(gathered) < CHUNK:
                            continue
                        piece, gathered = bytes(gathered), bytearray()
                    held = piece
        finally:
            for fd in files.values():
                os.close(fd)
        if size != self.size or sha.hexdigest() != self.sha256:
            raise ItemChanged(CHANGED_WHILE_SENT)
        if held or gathered:
            yield held or bytes(gathered)

    async def read(self) -> bytes:
        """The bytes whole, provided they are the planned ones; else ``ItemChanged``."""
        pieces = [part if isinstance(part, bytes) else await _whole(part) for part in self.parts]
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.sha256:
            raise ItemChanged(CHANGED_SINCE_SCAN)
        return data


async def _pieces(part: Part, files: dict[FileRange, int]) -> AsyncIterator[bytes]:
    """A part in chunks; a file range that ended early gives what it had (the size check catches it). The
    file is opened at its first range and kept in ``files`` (by its whole range) for the next: a stripped
    file is its ranges between the metadata taken out, and a crafted one may have hundreds of thousands."""
    if isinstance(part, bytes):
        for start in range(0, len(part), CHUNK):
            yield part[start:start + CHUNK]
        return
    whole = msgspec.structs.replace(part, offset=0, length=part.file_size)
    if (fd := files.get(whole)) is None:
        fd = files[whole] = open_file(part) if part.file_size < INLINE_BYTES else await asyncio.to_thread(open_file,
                                                                                                          part)
    position, end = part.offset, part.offset + part.length
    while position < end:
        want = min(CHUNK, end - position)
        piece = _read(fd, want, position) if want < INLINE_BYTES else \
            await asyncio.to_thread(_read, fd, want, position)
        if not piece:
            return
        position += len(piece)
        yield piece
    if _size(fd) != part.file_size:  # grown (or cut) where this range does not reach
        raise ItemChanged(CHANGED_WHILE_SENT)


def _read(fd: int, size: int, offset: int) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:  # (a disk failing, a network share gone): this item's failure, never the run's
        raise ItemChanged(f"cannot read it any more ({exc.strerror})") from None


def _size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError as exc:
        raise ItemChanged(f"cannot read it any more ({exc.strerror})") from None


def open_file(part: FileRange) -> int:
    """A descriptor of the file ``part`` is a range of (the caller closes it): a regular file, opened as the
    source's scan opened it; ``ItemChanged`` when it cannot be. A link where the scan found a file is not
    read through, and a link the scan followed is read through to a file in the mapped folder only (where it
    points now): its target may be anywhere, and all but the last chunk of it would leave before its hash
    told it apart."""
    path, follow = part.path, part.follow
    try:
        if follow and part.within is not None:  # (where the link points now: the scan saw where it pointed then)
            path, follow = path.resolve(strict=True), False
            if not path.is_relative_to(part.within):
                raise ItemChanged(LINK_POINTS_OUT)
        with open_regular(path, follow=follow) as handle:
            return os.dup(handle.fileno())
    except (OSError, RuntimeError) as exc:  # (RuntimeError: a link loop, as ``resolve`` says it)
        if isinstance(exc, RuntimeError) or (exc.errno == errno.ELOOP and not follow):
            raise ItemChanged(REPLACED_BY_A_LINK if not part.follow else "cannot read it any more (a symbolic "
                              "link loop, or a link swapped in)") from None
        raise ItemChanged(f"cannot read it any more ({exc.strerror})") from None


async def _whole(part: FileRange) -> bytes:
    """A range read in one call (no copy of a large file is made), checked against the file's size."""
    def read() -> bytes:
        fd = open_file(part)
        try:
            data = _read(fd, part.length, part.offset)
            if len(data) != part.length or _size(fd) != part.file_size:
                raise ItemChanged(CHANGED_SINCE_SCAN)
            return data
        finally:
            os.close(fd)

    return read() if part.file_size < INLINE_BYTES else await asyncio.to_thread(read)
