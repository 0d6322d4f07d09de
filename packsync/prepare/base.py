"""What every part of the preparation shares: its one error, and bounds-checked reads of untrusted bytes."""

from __future__ import annotations

from packsync.errors import PrepareError

__all__ = ["MAX_METADATA", "MAX_PIXELS", "PrepareError", "metadata_within_limit", "need", "u16", "u32",
           "within_limit"]


#: The largest image packsync decodes (a 250-megapixel RGB image is 750 MB of pixels).
MAX_PIXELS = 250_000_000
#: A metadata block read whole to be edited (a PNG text or EXIF chunk, a WebP EXIF or XMP chunk, a HEIF's
#: meta box or metadata item), and all the edited bytes of one file together, are refused past this: a file
#: is never held whole to be stripped.
MAX_METADATA = 16 * 1024 * 1024


def within_limit(width: int, height: int) -> None:
    """Refuse an image too large to decode: before any decoder sees it (Pillow's own check only warns)."""
    need(width * height <= MAX_PIXELS,
         f"the image is {width * height // 1_000_000} megapixels; packsync prepares at most {MAX_PIXELS // 1_000_000}")


def metadata_within_limit(size: int, what: str) -> None:
    """Refuse metadata of ``size`` bytes past ``MAX_METADATA``: before it is read whole, or held edited."""
    need(size <= MAX_METADATA, f"{what} is larger than {MAX_METADATA // (1024 * 1024)} MB")


def need(condition: bool, what: str) -> None:
    """Raise ``PrepareError(what)`` unless ``condition``: every read of a file's structure goes through a check."""
    if not condition:
        raise PrepareError(what)


def u16(data: bytes | bytearray, pos: int, big: bool, what: str) -> int:
    need(pos >= 0 and pos + 2 <= len(data), what)
    return int.from_bytes(data[pos:pos + 2], "big" if big else "little")


def u32(data: bytes | bytearray, pos: int, big: bool, what: str) -> int:
    need(pos >= 0 and pos + 4 <= len(data), what)
    return int.from_bytes(data[pos:pos + 4], "big" if big else "little")
