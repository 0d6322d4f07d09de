"""What a file's bytes are: its SHA-256, its real image type, and whether it is whole.

The content type is sniffed from the bytes, never trusted from the name: a text file called
``photo.jpg`` is reported, not uploaded. Hashing and checking happen in one pass over the file,
so a file is read at most once per change.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import msgspec

from packsync.files import open_regular

_CHUNK = 1 << 20
_SMALLEST_READ = 64 * 1024
_HEAD = 64
_TAIL = 64 * 1024
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"}
_HEIF_BRANDS = {b"mif1", b"msf1", b"heif"}
_AVIF_BRANDS = {b"avif", b"avis"}


class Digest(msgspec.Struct, frozen=True):
    """The outcome of reading one file: its identity and, if it cannot be synced, why not."""

    sha256: str
    size: int
    content_type: str | None
    problem: str | None = None


def sniff(head: bytes) -> str | None:
    """The image type that ``head`` (the first bytes of a file) starts like, or None: one Genviral takes
    (``model.SUPPORTED``), or AVIF, which a mapping's recipe may convert (else ``engine.recipes.unuploadable``
    reports it)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brands = {head[i:i + 4] for i in range(8, min(len(head), 32), 4)}
        if brands & _AVIF_BRANDS:  # AVIF files also list the generic HEIF brand mif1
            return "image/avif"
        if brands & _HEIC_BRANDS:
            return "image/heic"
        if brands & _HEIF_BRANDS:
            return "image/heif"
    return None


def _unsupported_name(head: bytes) -> str | None:
    """A name for well-known image formats the API does not take, for a clearer message."""
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    text = head.lstrip()[:256].lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "SVG"
    return None


def _truncation(content_type: str, size: int, head: bytes, tail: bytes) -> str | None:
    """Why a file of a known type looks cut short, or None when its ending is where it should be."""
    if content_type == "image/jpeg" and b"\xff\xd9" not in tail:
        return "truncated or corrupt JPEG (no end-of-image marker)"
    if content_type == "image/png" and b"IEND" not in tail:
        return "truncated or corrupt PNG (no IEND chunk)"
    if content_type == "image/gif" and not tail.rstrip(b"\x00").endswith(b";"):
        return "truncated or corrupt GIF (no trailer)"
    if content_type == "image/webp" and len(head) >= 8 and struct.unpack("<I", head[4:8])[0] + 8 > size:
        return "truncated or corrupt WebP (shorter than its RIFF header says)"
    return None


def judge(size: int, head: bytes, tail: bytes) -> tuple[str | None, str | None]:
    """(content type, problem) for a file of ``size`` bytes starting with ``head``, ending with ``tail``."""
    if size == 0:
        return None, "empty file"
    content_type = sniff(head)
    if content_type is None:
        name = _unsupported_name(head)
        if name:
            return None, f"{name} images are not accepted by Genviral (use JPEG, PNG, GIF, WebP or HEIC)"
        return None, "not an image (its bytes match no supported image format)"
    return content_type, _truncation(content_type, size, head, tail)


class Digester:
    """Hash and check bytes as they stream past (a file read, a download), keeping only head and tail."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.head = b""
        self._tail = bytearray()
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        """Take the next bytes, in chunks of any size (a download's may be a few bytes)."""
        self.sha.update(chunk)
        if len(self.head) < _HEAD:
            self.head += bytes(chunk[:_HEAD - len(self.head)])
        self._tail += chunk[-_TAIL:]
        if len(self._tail) > 2 * _TAIL:  # trimmed now and then: each chunk costs its own size
            del self._tail[:-_TAIL]
        self.size += len(chunk)

    @property
    def tail(self) -> bytes:
        return bytes(self._tail[-_TAIL:])

    def digest(self) -> Digest:
        content_type, problem = judge(self.size, self.head, self.tail)
        return Digest(self.sha.hexdigest(), self.size, content_type, problem)


def digest_file(path: Path | str | int, *, follow: bool = True, dir_fd: int | None = None) -> Digest:
    """Hash and check the file at ``path`` (or the open descriptor, which it closes) in one read. Raises
    OSError if it cannot be read. ``follow`` and ``dir_fd``: as ``files.open_regular`` takes them."""
    digester = Digester()
    # (a FIFO swapped in since the walk's lstat is refused, not waited on)
    with open_regular(path, follow=follow, dir_fd=dir_fd) as handle:
        # Sized to the file (one byte more, to see its end in the same read), within bounds: most
        # images are far smaller than a chunk, and a chunk-sized buffer per file costs more than
        # reading it; a file still being written may have grown since its size was taken.
        buffer = bytearray(min(_CHUNK, max(_SMALLEST_READ, os.fstat(handle.fileno()).st_size + 1)))
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digester.update(view[:count])
    return digester.digest()
