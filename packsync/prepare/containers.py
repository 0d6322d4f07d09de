"""The containers, spliced by packsync's own code: JPEG segments, PNG chunks, WebP RIFF chunks, GIF.

``survey`` reads what a file holds (its size, orientation, metadata) and strips the categories asked for
without touching a pixel byte: EXIF and XMP (extended XMP too) are edited in place (``exif.py``,
``xmpedit.py``) and IPTC padded to its size (``iptc.py``), so a JPEG keeps its exact length -- the offsets
of a Multi-Picture index (MPF) to the images after it stay right -- and a WebP its chunk sizes. Only PNG
text chunks are rewritten or dropped (each carries its own length and CRC). It reads headers only, never
pixels: ``inspect`` is cheap.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from packsync.prepare import exif, iptc, xmpedit
from packsync.prepare.base import PrepareError, need, u16, u32

EXIF_SIGNATURE = b"Exif\x00\x00"
XMP_SIGNATURE = b"http://ns.adobe.com/xap/1.0/\x00"
EXTENDED_XMP_SIGNATURE = b"http://ns.adobe.com/xmp/extension/\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG text keywords that name people (PNG's own registered keywords).
PNG_PEOPLE = frozenset({"Author", "Copyright"})
#: A compressed PNG text chunk inflating past this is refused (a decompression bomb).
MAX_TEXT = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Survey:
    """What stripping made of a file, and what resizing and converting need to know of it."""

    data: bytes  # the input (a HEIF's: stripped already)
    found: frozenset[str]  # the categories asked for that the file held
    width: int  # as stored
    height: int
    orientation: int  # EXIF Orientation, 1 when none
    exif: bytes | None  # the stripped TIFF block, for a re-encode to carry over
    xmp: bytes | None  # the stripped main XMP packet
    lossless: bool = False  # a WebP stored losslessly
    animated: bool = False  # an animated PNG or WebP: never resized nor converted (one frame would be left)
    #: The stripped file in pieces, joined only when it is the upload (a re-encode does not need it: a
    #: large file is not held twice); None: nothing was stripped.
    parts: tuple[bytes | memoryview, ...] | None = None

    def stripped(self) -> bytes:
        """The file stripped: the very ``data`` object when nothing was."""
        return self.data if self.parts is None else b"".join(self.parts)


@dataclass(slots=True)
class _Edit:
    """What a container walk collects: its output pieces and what it learnt."""

    pieces: list[bytes | memoryview]
    found: set[str]
    exif: bytes | None = None
    xmp: bytes | None = None
    changed: bool = False
    mpf: tuple[int, bytes] | None = None  # (start, segment) of a JPEG's Multi-Picture (APP2) index

    def tiff(self, block: bytes, wanted: frozenset[str]) -> bytes:
        edited, found = exif.strip(block, wanted)
        self.found |= found
        self.exif = edited if self.exif is None else self.exif
        return edited

    def packet(self, packet: bytes, wanted: frozenset[str]) -> bytes:
        edited, found = xmpedit.strip(packet, wanted)
        self.found |= found
        self.xmp = edited if self.xmp is None else self.xmp
        return edited

    def keep(self, piece: bytes | memoryview) -> None:
        self.pieces.append(piece)

    def put(self, original: bytes | memoryview, edited: bytes | memoryview | None) -> None:
        """Keep ``original``, or put ``edited`` (None: drop it) in its place."""
        if edited is not None:
            self.pieces.append(edited)
        self.changed |= edited is not original


def _result(data: bytes, edit: _Edit, size: tuple[int, int], lossless: bool = False, animated: bool = False) -> Survey:
    orientation = exif.orientation(edit.exif) if edit.exif else 1
    parts = tuple(edit.pieces) if edit.changed else None
    return Survey(data, frozenset(edit.found), size[0], size[1], orientation, edit.exif, edit.xmp, lossless, animated,
                  parts)


# -- JPEG -----------------------------------------------------------------------------------------

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_segments(data: bytes, begin: int = 0) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment before the scan of the JPEG at ``begin``, then (0xDA, start of
    the scan, end of data)."""
    need(data[begin:begin + 2] == b"\xff\xd8", "not a JPEG (no start-of-image marker)")
    pos = begin + 2
    while True:
        need(pos + 2 <= len(data) and data[pos] == 0xFF, "the JPEG's segments are cut short or corrupt")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            yield 0xFF, pos, pos + 1
            pos += 1
        elif marker == 0xDA:
            yield marker, pos, len(data)
            return
        elif marker in _STANDALONE:
            yield marker, pos, pos + 2
            pos += 2
        else:
            need(marker != 0xD9, "the JPEG ends before its image data")
            end = pos + 2 + u16(data, pos + 2, True, "the JPEG's segments are cut short")
            need(end <= len(data) and end >= pos + 4, "the JPEG's segments are cut short or corrupt")
            yield marker, pos, end
            pos = end


def _jpeg_app(marker: int, segment: bytes, wanted: frozenset[str], edit: _Edit) -> bytes:
    """A segment with its metadata stripped (the same object when it held nothing asked for)."""
    body = segment[4:]
    # Readers take "Exif\0" and any sixth byte for EXIF (old writers put 0xFF there): so is it stripped.
    if marker == 0xE1 and body[:5] == EXIF_SIGNATURE[:5] and len(body) >= 6:
        block = body[6:]
        edited = edit.tiff(block, wanted)
        return segment if edited is block else segment[:10] + edited
    if marker == 0xE1 and body.startswith(XMP_SIGNATURE):
        packet = body[len(XMP_SIGNATURE):]
        edited = edit.packet(packet, wanted)
        return segment if edited is packet else segment[:4 + len(XMP_SIGNATURE)] + edited
    if marker == 0xE1 and not body.startswith(EXTENDED_XMP_SIGNATURE) and (at := _packet_at(body)) >= 0:
        # An XMP packet under another header (a missing NUL, an old "XMP\0" one): readers take it as XMP.
        packet = body[at:]
        edited = edit.packet(packet, wanted)
        return segment if edited is packet else segment[:4 + at] + edited
    if marker == 0xED and body.startswith(iptc.SIGNATURE):
        stripped, found = iptc.strip(body, wanted)
        edit.found |= found
        return segment if stripped is body else b"\xff\xed" + (len(stripped) + 2).to_bytes(2, "big") + stripped
    return segment


def _packet_at(body: bytes) -> int:
    """Where an XMP packet begins in a segment's body (-1: none)."""
    found = [at for at in (body.find(b"<?xpacket"), body.find(b"<x:xmpmeta"), body.find(b"<rdf:RDF")) if at >= 0]
    return min(found, default=-1)


def _extended_xmp(extended: list[tuple[int, bytes]], main: int | None, wanted: frozenset[str], edit: _Edit) -> None:
    """The extended XMP -- one packet in chunks, each in its own segment at ``edit.pieces[index]``, named
    by the MD5 of the packet (its GUID) -- blanked in place like the main packet; the chunks keep their
    sizes, and the new GUID replaces the old one in each chunk and in the main packet's reference."""
    head = 4 + len(EXTENDED_XMP_SIGNATURE)  # marker, length, signature; then GUID, full length, offset, chunk
    chunks = sorted((u32(s, head + 36, True, "the extended XMP is cut short"), index, s)
                    for index, s in extended)  # by offset in the packet
    packet = b"".join(segment[head + 40:] for _, _, segment in chunks)
    edited, found = xmpedit.strip(packet, wanted)
    edit.found |= found
    if edited is packet:
        return
    old, new = chunks[0][2][head:head + 32], hashlib.md5(edited, usedforsecurity=False).hexdigest().upper().encode()
    at = 0
    for _, index, segment in chunks:
        size = len(segment) - head - 40
        edit.pieces[index] = segment[:head] + new + segment[head + 32:head + 40] + edited[at:at + size]
        at += size
    if main is not None and len(old) == len(new):
        edit.pieces[main] = bytes(edit.pieces[main]).replace(old, new)


def _jpeg_edit(data: bytes, wanted: frozenset[str], begin: int) -> tuple[_Edit, tuple[int, int], int]:
    """The JPEG at ``begin`` stripped (its last piece: its scan and all after it), its size, where its scan
    starts."""
    edit, size, main, scan = _Edit([data[begin:begin + 2]], set()), (0, 0), None, len(data)
    extended: list[tuple[int, bytes]] = []  # (index in pieces, segment) of each extended XMP chunk
    view = memoryview(data)
    for marker, start, end in _jpeg_segments(data, begin):
        if not (marker in _SOF or 0xE0 <= marker <= 0xEF):
            edit.keep(view[start:end])  # the scan above all: not copied
            scan = start if marker == 0xDA else scan
            continue
        segment = data[start:end]
        if marker in _SOF and size == (0, 0):
            size = (u16(segment, 7, True, "the JPEG's frame header is cut short"),
                    u16(segment, 5, True, "the JPEG's frame header is cut short"))
        if marker == 0xE1 and segment[4:].startswith(EXTENDED_XMP_SIGNATURE):
            extended.append((len(edit.pieces), segment))
        elif marker == 0xE1 and segment[4:].startswith(XMP_SIGNATURE) and main is None:
            main = len(edit.pieces)
        elif marker == 0xE2 and segment[4:8] == b"MPF\x00":
            edit.mpf = (start, segment)
        edit.put(segment, _jpeg_app(marker, segment, wanted, edit) if 0xE0 <= marker <= 0xEF else segment)
    if extended and wanted:
        _extended_xmp(extended, main, wanted, edit)
        edit.changed |= any(edit.pieces[index] is not segment for index, segment in extended)
    return edit, size, scan


#: At most this many images of a Multi-Picture file are read (a crafted index could list many more).
MAX_EMBEDDED = 16
_MPF_CUT = "the JPEG's Multi-Picture index is cut short"


def _mpf_images(start: int, segment: bytes) -> list[int]:
    """Where the images an MPF segment (at ``start``) lists after the first begin: its MP Entry offsets
    count from its TIFF header, 8 bytes into the segment."""
    tiff = segment[8:]
    need(tiff[:2] in (b"II", b"MM"), _MPF_CUT)
    big = tiff[:2] == b"MM"
    ifd = u32(tiff, 4, big, _MPF_CUT)
    for at in range(ifd + 2, ifd + 2 + 12 * u16(tiff, ifd, big, _MPF_CUT), 12):
        if u16(tiff, at, big, _MPF_CUT) == 0xB002:  # MP Entry: 16 bytes per image, its offset at 8
            table, count = u32(tiff, at + 8, big, _MPF_CUT), u32(tiff, at + 4, big, _MPF_CUT) // 16
            offsets = [u32(tiff, table + 16 * i + 8, big, _MPF_CUT) for i in range(min(count, MAX_EMBEDDED))]
            return [start + 8 + offset for offset in offsets if offset]
    return []


def _embedded(data: bytes, scan: int, wanted: frozenset[str], edit: _Edit) -> None:
    """The images a Multi-Picture (MPF) JPEG holds after the first -- previews, gain maps, depth maps,
    each with an EXIF of its own -- those appended without an index, and APP1 segments between the
    scans of a progressive JPEG, stripped in place like the first. They keep their lengths, so the MPF
    index stays right; the first image's scan piece is cut around the edited headers."""
    edited: list[tuple[int, bytes]] = []
    indexed = set(_mpf_images(*edit.mpf)) if edit.mpf and wanted else set()
    for begin in sorted(indexed | set(_appended(data, scan) if wanted else ())):
        if begin < scan or (edited and begin < edited[-1][0] + len(edited[-1][1])):
            continue  # an index pointing back into what was read already: a crafted file
        headers = _edited_at(data, begin, wanted, edit, begin in indexed)
        if headers is not None:
            edited.append((begin, headers))
    if edited:
        view, start, pieces = memoryview(data), scan, list[bytes | memoryview]()
        for begin, headers in edited:
            pieces += [view[start:begin], headers]
            start = begin + len(headers)
        edit.pieces[-1:] = [*pieces, view[start:]]
        edit.changed = True


def _edited_at(data: bytes, begin: int, wanted: frozenset[str], edit: _Edit, indexed: bool) -> bytes | None:
    """The bytes from ``begin`` on that stripping changes (a JPEG's headers, an APP1 segment), of the same
    length; None when nothing there changes, or it is not what it looked like."""
    try:
        need(begin + 1 < len(data), "an image the Multi-Picture index lists lies past the file's end")
        if data[begin + 1] == 0xE1:
            end = begin + 2 + u16(data, begin + 2, True, "cut short")
            need(end <= len(data), "cut short")
            stray = _Edit([], set())  # (its EXIF is not the image's: the orientation stays the first's)
            segment = data[begin:end]
            result = _jpeg_app(0xE1, segment, wanted, stray)
            edit.found |= stray.found
            return None if result is segment else result
        inner, _, inner_scan = _jpeg_edit(data, wanted, begin)
    except PrepareError:
        if indexed:
            raise
        return None  # (the bytes of something else, a video say: not a JPEG, not a segment)
    edit.found |= inner.found
    if not inner.changed:
        return None
    headers = b"".join(inner.pieces[:-1])
    need(len(headers) == inner_scan - begin, "an image after the JPEG's end could not be edited")
    return headers


#: A start of image or an APP1 marker: one pass over the data finds both (two ``find``s cost four times as
#: much: a JPEG's entropy-coded data is full of 0xFF bytes).
_LATER = re.compile(rb"\xff(?:\xd8\xff|\xe1)")


def _appended(data: bytes, scan: int) -> Iterator[int]:
    """Where a JPEG or an APP1 segment may begin after the first image's first scan: apps append the
    original or a preview with no index, a progressive JPEG may hold metadata before a later scan, and it
    is as readable there. (A scan's entropy-coded data never holds a marker.)"""
    return (match.start() for match in _LATER.finditer(data, scan))


def _jpeg(data: bytes, wanted: frozenset[str]) -> Survey:
    edit, size, scan = _jpeg_edit(data, wanted, 0)
    need(size[0] > 0 and size[1] > 0, "the JPEG has no frame header (or a size of 0)")
    _embedded(data, scan, wanted, edit)
    return _result(data, edit, size)


# -- PNG ------------------------------------------------------------------------------------------

#: The PNG chunks packsync reads; the others are passed on uncopied.
_PNG_READ = frozenset({b"IHDR", b"eXIf", b"tEXt", b"zTXt", b"iTXt"})


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    need(data[:8] == PNG_SIGNATURE, "not a PNG (no PNG signature)")
    pos = 8
    while pos < len(data):
        length = u32(data, pos, True, "the PNG's chunks are cut short")
        end = pos + 12 + length
        need(end <= len(data), "the PNG's chunks are cut short")
        kind = data[pos + 4:pos + 8]
        yield kind, pos, end
        pos = end
        if kind == b"IEND":
            break
    if pos < len(data):
        yield b"", pos, len(data)  # bytes after IEND: kept as they are


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_TEXT)
    except zlib.error as exc:
        raise PrepareError(f"a compressed PNG text chunk is corrupt ({exc})") from None
    need(not inflater.unconsumed_tail, f"a PNG text chunk inflates past {MAX_TEXT // (1024 * 1024)} MB")
    return text


def _png_text(kind: bytes, body: bytes) -> tuple[str, bytes]:
    """(keyword, text as bytes) of a tEXt, zTXt or iTXt chunk."""
    keyword, zero, rest = body.partition(b"\x00")
    need(bool(zero), "a PNG text chunk has no keyword")
    if kind == b"zTXt":
        return keyword.decode("latin-1"), _inflate(rest[1:])
    if kind == b"iTXt":
        need(len(rest) >= 2, "a PNG text chunk is cut short")
        compressed, after = rest[0], rest[2:]
        after = after.split(b"\x00", 2)[-1]  # past the language tag and the translated keyword
        return keyword.decode("latin-1"), _inflate(after) if compressed else after
    return keyword.decode("latin-1"), rest


def _raw_profile(text: bytes) -> bytes:
    """The bytes of an ImageMagick "Raw profile type" text: a name line, a length line, then hex."""
    lines = text.split(b"\n")
    need(len(lines) >= 3 and lines[2].strip().isdigit(), "a PNG raw profile is malformed")
    try:
        return bytes.fromhex(b"".join(lines[3:]).decode("ascii"))
    except ValueError:
        raise PrepareError("a PNG raw profile is not hexadecimal") from None


def _profile_found(name: str, profile: bytes, wanted: frozenset[str]) -> frozenset[str]:
    if name in ("exif", "app1"):
        return exif.strip(profile.removeprefix(EXIF_SIGNATURE), wanted)[1]
    if name == "xmp":
        return xmpedit.strip(profile, wanted)[1]
    if name in ("iptc", "8bim"):
        payload = profile if profile.startswith(iptc.SIGNATURE) else iptc.SIGNATURE + profile
        return iptc.strip(payload, wanted)[1]
    return frozenset()


def _itxt(keyword: str, text: bytes) -> bytes:
    body = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text
    return _chunk(b"iTXt", body)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png_text_chunk(kind: bytes, chunk: bytes, wanted: frozenset[str], edit: _Edit) -> bytes | None:
    keyword, text = _png_text(kind, chunk[8:-4])
    if keyword in PNG_PEOPLE and "people" in wanted:
        edit.found.add("people")
        return None
    if keyword == "XML:com.adobe.xmp":
        edited = edit.packet(text, wanted)
        if edited is text:
            return chunk
        return _itxt(keyword, edited)  # written uncompressed: one form, whatever the original's
    if keyword.startswith("Raw profile type "):
        found = _profile_found(keyword[17:].lower(), _raw_profile(text), wanted)
        edit.found |= found
        return None if found else chunk  # a duplicate of metadata held elsewhere: goes whole
    return chunk


def _png_chunk(kind: bytes, chunk: bytes, wanted: frozenset[str], edit: _Edit) -> bytes | None:
    if kind == b"eXIf":
        body = chunk[8:-4]
        edited = edit.tiff(body, wanted)
        return chunk if edited is body else _chunk(kind, edited)
    if kind in (b"tEXt", b"zTXt", b"iTXt"):
        return _png_text_chunk(kind, chunk, wanted, edit)
    return chunk


def _png(data: bytes, wanted: frozenset[str]) -> Survey:
    edit, size, animated = _Edit([PNG_SIGNATURE], set()), (0, 0), False
    view = memoryview(data)
    tail = None
    for kind, start, end in _png_chunks(data):
        tail = start if kind == b"" else None
        if kind not in _PNG_READ:
            animated |= kind == b"acTL"
            edit.keep(view[start:end])  # image data: not copied
            continue
        chunk = data[start:end]
        if kind == b"IHDR":
            size = (u32(chunk, 8, True, "the PNG header is cut short"),
                    u32(chunk, 12, True, "the PNG header is cut short"))
        edit.put(chunk, _png_chunk(kind, chunk, wanted, edit))
    need(size[0] > 0 and size[1] > 0, "the PNG has no header (or a size of 0)")
    if tail is not None:  # bytes after IEND, the last piece: a JPEG appended there is stripped in place
        _embedded(data, tail, wanted, edit)
    return _result(data, edit, size, animated=animated)


# -- WebP -----------------------------------------------------------------------------------------

def _webp_size(kind: bytes, body: bytes) -> tuple[int, int] | None:
    what = "the WebP header is cut short"
    if kind == b"VP8X":
        need(len(body) >= 10, what)
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    if kind == b"VP8 ":
        need(len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a", what)
        return u16(body, 6, False, what) & 0x3FFF, u16(body, 8, False, what) & 0x3FFF
    if kind == b"VP8L":
        need(len(body) >= 5 and body[0] == 0x2F, what)
        bits = u32(body, 1, False, what)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _webp_chunk(kind: bytes, chunk: bytes, wanted: frozenset[str], edit: _Edit) -> bytes:
    body = chunk[8:]
    if kind == b"EXIF":
        prefix = EXIF_SIGNATURE if body.startswith(EXIF_SIGNATURE) else b""  # some writers keep it
        block = body[len(prefix):]
        edited = edit.tiff(block, wanted)
        return chunk if edited is block else chunk[:8] + prefix + edited
    if kind == b"XMP ":
        edited = edit.packet(body, wanted)
        return chunk if edited is body else chunk[:8] + edited
    return chunk


def _webp(data: bytes, wanted: frozenset[str]) -> Survey:
    need(data[:4] == b"RIFF" and data[8:12] == b"WEBP", "not a WebP (no RIFF WEBP header)")
    edit, size, lossless, animated = _Edit([data[:12]], set()), None, False, False
    view = memoryview(data)
    pos = 12
    while pos + 8 <= len(data):
        kind, length = data[pos:pos + 4], u32(data, pos + 4, False, "the WebP's chunks are cut short")
        end = pos + 8 + length
        need(end <= len(data), "the WebP's chunks are cut short")
        size = size or _webp_size(kind, data[pos + 8:min(end, pos + 24)])
        lossless |= kind == b"VP8L"
        animated |= kind == b"ANIM"
        if kind in (b"EXIF", b"XMP "):
            edit.put(data[pos:end], _webp_chunk(kind, data[pos:end], wanted, edit))
        else:
            edit.keep(view[pos:end])  # image data: not copied
        pos = end + length % 2
        edit.keep(view[end:min(pos, len(data))])
    edit.keep(view[pos:])  # a tail too short for a chunk: kept as it was
    need(size is not None and size[0] > 0 and size[1] > 0, "the WebP has no image header")
    assert size is not None
    return _result(data, edit, size, lossless, animated)


# -- GIF ------------------------------------------------------------------------------------------

#: A GIF's XMP application extension: the packet follows as it is, then a "magic trailer" (0x01, 0xFF down
#: to 0x00) that walks a reader taking it for sub-blocks to their end, whatever byte it lands on.
GIF_XMP = b"\x21\xff\x0bXMP DataXMP"
_GIF_XMP_END = b"\x01\xff\xfe\xfd\xfc"


def _gif(data: bytes, wanted: frozenset[str]) -> Survey:
    """A GIF holds no EXIF: read for its size, its XMP (blanked in place: the trailer after it does not
    care what the packet's bytes are) and a JPEG appended to it."""
    need(data[:6] in (b"GIF87a", b"GIF89a"), "not a GIF (no GIF header)")
    size = (u16(data, 6, False, "the GIF header is cut short"), u16(data, 8, False, "the GIF header is cut short"))
    need(size[0] > 0 and size[1] > 0, "the GIF has a size of 0")
    view, edit, at = memoryview(data), _Edit([], set()), 0
    begin = data.find(GIF_XMP)
    while begin >= 0 and wanted:
        start = begin + len(GIF_XMP)
        end = data.find(_GIF_XMP_END, start)
        need(end >= 0, "the GIF's XMP has no end")
        packet = data[start:end]
        edit.keep(view[at:start])
        edit.put(packet, edit.packet(packet, wanted))
        at, begin = end, data.find(GIF_XMP, end)
    edit.keep(view[at:])
    _embedded(data, at, wanted, edit)  # a JPEG appended after it: stripped in place
    return _result(data, edit, size)


SURVEYS: dict[str, Callable[[bytes, frozenset[str]], Survey]] = {
    "image/jpeg": _jpeg, "image/png": _png, "image/webp": _webp, "image/gif": _gif,
}
