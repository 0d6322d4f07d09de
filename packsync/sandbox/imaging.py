"""Image sniffing and the sandbox's stand-in for AI enrichment.

Owns everything the sandbox knows about image bytes: recognising a format from its
signature, reading the pixel size from the header (PNG IHDR, GIF logical screen, JPEG
SOF marker, WebP VP8/VP8L/VP8X, HEIF ``ispe``), naming the average colour of small
8-bit RGB/RGBA PNGs, and turning that into a deterministic description and keywords.
It also makes sample images (``solid_png``) for the demo, the tests and the benchmarks.
Pure functions only: no I/O, no clock, no shared state.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = ["ImageFacts", "sniff_format", "inspect", "describe", "solid_png"]

FORMAT_LABELS: dict[str, str] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WebP",
    "heic": "HEIC",
}

PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("white", (255, 255, 255)),
    ("grey", (128, 128, 128)),
    ("red", (220, 30, 30)),
    ("green", (40, 170, 60)),
    ("blue", (30, 70, 220)),
    ("yellow", (240, 220, 30)),
    ("orange", (245, 140, 20)),
    ("purple", (130, 50, 170)),
)

HEIF_BRANDS = (b"heic", b"heix", b"mif1", b"heif", b"hevc", b"hevx", b"msf1")
MAX_COLOUR_BYTES = 1 << 19  # decoded scanline budget for the colour estimate


@dataclass(frozen=True)
class ImageFacts:
    """What could be read from an image's bytes."""

    fmt: str
    width: int | None = None
    height: int | None = None
    colour: str | None = None


def sniff_format(data: bytes) -> str | None:
    """Return "jpeg", "png", "gif", "webp" or "heic" when the bytes carry that signature.

    Written apart from packsync's own ``media.sniff`` on purpose: the sandbox plays the server, and a
    sniffing mistake on the client's side must not be hidden by the same mistake on the server's.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        box_len = struct.unpack(">I", data[:4])[0]
        end = min(len(data), box_len if box_len >= 16 else 32)
        brands = [data[8:12]] + [data[i : i + 4] for i in range(16, end - 3, 4)]
        if any(b in HEIF_BRANDS for b in brands):
            return "heic"
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no SOF seen
            return None
        (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in sof and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + seg_len
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _heif_size(data: bytes) -> tuple[int, int] | None:
    at = data.find(b"ispe", 0, 1 << 16)
    if at >= 4 and at + 16 <= len(data):
        return struct.unpack(">II", data[at + 8 : at + 16])
    return None


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _png_average_rgb(data: bytes) -> tuple[int, int, int] | None:
    """Average colour of an 8-bit RGB/RGBA non-interlaced PNG, or None."""
    width, height = struct.unpack(">II", data[16:24])
    bit_depth, colour_type, _comp, _filt, interlace = data[24:29]
    if bit_depth != 8 or colour_type not in (2, 6) or interlace != 0:
        return None
    bpp = 3 if colour_type == 2 else 4
    stride = width * bpp
    if width == 0 or height == 0 or (stride + 1) * height > MAX_COLOUR_BYTES:
        return None
    raw = zlib.decompressobj().decompress(_png_idat(data), (stride + 1) * height)
    if len(raw) < (stride + 1) * height:
        return None
    prev = bytearray(stride)
    totals = [0, 0, 0]
    weight = 0
    for y in range(height):
        base = y * (stride + 1)
        row = _unfiltered(raw[base], bytearray(raw[base + 1 : base + 1 + stride]), prev, bpp)
        if row is None:
            return None
        weight += _add_pixels(row, bpp, totals)
        prev = row
    if weight == 0:
        return None
    return totals[0] // weight, totals[1] // weight, totals[2] // weight


def _png_idat(data: bytes) -> bytes:
    """The concatenated IDAT chunks of a PNG."""
    idat = bytearray()
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        elif ctype == b"IEND":
            break
        pos += 12 + length
    return bytes(idat)


def _unfiltered(ftype: int, row: bytearray, prev: bytearray, bpp: int) -> bytearray | None:
    """A PNG scanline with its filter undone (None: an unknown filter type)."""
    stride = len(row)
    if ftype == 1:
        for i in range(bpp, stride):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif ftype == 2:
        row = bytearray((r + p) & 0xFF for r, p in zip(row, prev, strict=False))
    elif ftype == 3:
        for i in range(stride):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif ftype == 4:
        for i in range(stride):
            left = row[i - bpp] if i >= bpp else 0
            upleft = prev[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + _paeth(left, prev[i], upleft)) & 0xFF
    elif ftype != 0:
        return None
    return row


def _add_pixels(row: bytearray, bpp: int, totals: list[int]) -> int:
    """Add a scanline's channels to ``totals``; returns its weight (RGBA pixels weigh their alpha, so
    transparent areas do not count)."""
    if bpp == 3:
        for ch in range(3):
            totals[ch] += sum(row[ch::3])
        return len(row) // 3
    alpha = row[3::4]
    for ch in range(3):
        totals[ch] += sum(c * a for c, a in zip(row[ch::4], alpha, strict=False))
    return sum(alpha)


def _colour_name(rgb: tuple[int, int, int]) -> str:
    def dist(ref: tuple[int, int, int]) -> int:
        return sum((a - b) ** 2 for a, b in zip(rgb, ref, strict=False))

    return min(PALETTE, key=lambda item: dist(item[1]))[0]


def inspect(data: bytes) -> ImageFacts | None:
    """Read what can be read from image bytes; None when they are not a supported image."""
    fmt = sniff_format(data)
    if fmt is None:
        return None
    readers = {"png": _png_size, "gif": _gif_size, "jpeg": _jpeg_size, "webp": _webp_size, "heic": _heif_size}
    try:
        size = readers[fmt](data)
    except (struct.error, IndexError, ValueError):
        size = None
    colour = None
    if fmt == "png" and size is not None:
        try:
            rgb = _png_average_rgb(data)
        except (struct.error, IndexError, ValueError, zlib.error):
            rgb = None
        colour = _colour_name(rgb) if rgb is not None else None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return ImageFacts(fmt=fmt, colour=colour)
    return ImageFacts(fmt=fmt, width=size[0], height=size[1], colour=colour)


def describe(facts: ImageFacts) -> tuple[str, list[str]]:
    """Deterministic (description, 3-6 keywords) for the facts read from an image."""
    label = FORMAT_LABELS[facts.fmt]
    words: list[str] = []
    keywords = [facts.fmt]
    if facts.width and facts.height:
        words.append(f"{facts.width}\u00d7{facts.height}")
    if facts.colour:
        words.append(facts.colour)
        keywords.append(facts.colour)
    if facts.width and facts.height:
        if facts.width > facts.height:
            orientation = "landscape"
        elif facts.width < facts.height:
            orientation = "portrait"
        else:
            orientation = "square"
        keywords += [orientation, f"{facts.width}x{facts.height}"]
    for filler in ("image", "picture"):
        if len(keywords) < 3:
            keywords.append(filler)
    description = " ".join(["A", *words, label, "image."])
    return description, keywords[:6]


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid, solid-colour 8-bit RGB PNG: sample content whose colour the enrichment names."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))
