"""The containers, spliced by packsync's own code: JPEG segments, PNG chunks, WebP RIFF chunks, GIF.

``survey`` reads what a file holds (its size, orientation, metadata) and strips the categories asked for
without touching a pixel byte: EXIF and XMP (extended XMP too) are edited in place (``exif.py``,
``xmpedit.py``) and IPTC padded to its size (``iptc.py``), so a JPEG keeps its exact length -- the offsets
of a Multi-Picture index (MPF) to the images after it stay right -- and a WebP its chunk sizes. Only PNG
text chunks are rewritten or dropped (each carries its own length and CRC). It reads headers only, never
pixels: ``inspect`` is cheap.

The walkers read through a ``Reader`` (``reader.py``), a bytes object or a file alike, and hand back the
stripped file as parts: the edited bytes, and ``Span``s of the input for all they pass on unread (a scan,
image data). Nothing is held but the metadata being edited (``base.MAX_METADATA`` at most), whatever the size
of the file.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from packsync.prepare import exif, iptc, xmpedit
from packsync.prepare.base import PrepareError, metadata_within_limit, need, u16, u32
from packsync.prepare.reader import CHUNK, Part, Reader, Span, part_length

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

    found: frozenset[str]  # the categories asked for that the file held
    width: int  # as stored
    height: int
    orientation: int  # EXIF Orientation, 1 when none
    exif: bytes | None  # the stripped TIFF block, for a re-encode to carry over
    xmp: bytes | None  # the stripped main XMP packet
    lossless: bool = False  # a WebP stored losslessly
    animated: bool = False  # an animated PNG or WebP: never resized nor converted (one frame would be left)
    #: The stripped file: edited bytes and spans of the input, in the input's order, joined only when it is
    #: the upload (a re-encode does not need it); None: nothing was stripped.
    parts: tuple[Part, ...] | None = None

    def stripped(self, data: bytes) -> bytes:
        """The stripped file, made of the input ``data``: the very ``data`` object when nothing was stripped."""
        if self.parts is None:
            return data
        view = memoryview(data)
        return b"".join(view[p.offset:p.end] if isinstance(p, Span) else p for p in self.parts)


@dataclass(slots=True)
class _Edit:
    """What a container walk collects: its output pieces (spans of the input merged while they follow one
    another, edited bytes) and what it learnt."""

    src: Reader
    pieces: list[Part] = field(default_factory=list)
    found: set[str] = field(default_factory=set)
    exif: bytes | None = None
    xmp: bytes | None = None
    changed: bool = False
    mpf: tuple[int, bytes] | None = None  # (start, segment) of a JPEG's Multi-Picture (APP2) index
    pinned: set[int] = field(default_factory=set)  # pieces edited later by index: never merged into
    held: int = 0  # the edited bytes held in pieces

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

    def keep(self, start: int, end: int, pin: bool = False) -> int:
        """Pass on the input's bytes ``[start, end)`` as they are; the index of the piece holding them."""
        last = len(self.pieces) - 1
        if end <= start and not pin:
            return last
        previous = self.pieces[last] if last >= 0 else None
        if not pin and isinstance(previous, Span) and previous.end == start and last not in self.pinned:
            self.pieces[last] = Span(previous.offset, end - previous.offset)
            return last
        self.pieces.append(Span(start, end - start))
        if pin:
            self.pinned.add(last + 1)
        return last + 1

    def add(self, piece: Part) -> None:
        """Append a piece another walk made (its edited bytes counted by ``hold`` already)."""
        if isinstance(piece, Span):
            self.keep(piece.offset, piece.end)
        else:
            self.pieces.append(piece)

    def put(self, start: int, original: bytes, edited: bytes | None, pin: bool = False) -> int:
        """Keep the input's ``original`` bytes at ``start``, or put ``edited`` (None: drop them) in their
        place; the index of the piece."""
        if edited is original:
            return self.keep(start, start + len(original), pin)
        self.changed = True
        if edited is not None:
            self.hold(len(edited))
            self.pieces.append(edited)
            if pin:
                self.pinned.add(len(self.pieces) - 1)
        return len(self.pieces) - 1

    def hold(self, size: int) -> None:
        self.held += size
        metadata_within_limit(self.held, "the file's metadata to edit")

    def bytes_at(self, index: int) -> bytes:
        piece = self.pieces[index]
        return self.src.read(piece.offset, piece.end) if isinstance(piece, Span) else piece

    def metadata(self, start: int, end: int, what: str) -> bytes:
        """The input's ``[start, end)``, a metadata block read whole to be edited (refused past its limit)."""
        metadata_within_limit(end - start, what)
        return self.src.read(start, end)


def _result(edit: _Edit, size: tuple[int, int], lossless: bool = False, animated: bool = False) -> Survey:
    orientation = exif.orientation(edit.exif) if edit.exif else 1
    parts = tuple(edit.pieces) if edit.changed else None
    return Survey(frozenset(edit.found), size[0], size[1], orientation, edit.exif, edit.xmp, lossless, animated,
                  parts)


# -- JPEG -----------------------------------------------------------------------------------------

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_segments(src: Reader, begin: int = 0) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment before the scan of the JPEG at ``begin``, then (0xDA, start of
    the scan, end of the input)."""
    need(src.read(begin, begin + 2) == b"\xff\xd8", "not a JPEG (no start-of-image marker)")
    pos = begin + 2
    while True:
        head = src.read(pos, pos + 4)
        need(len(head) >= 2 and head[0] == 0xFF, "the JPEG's segments are cut short or corrupt")
        marker = head[1]
        if marker == 0xFF:  # fill byte
            yield 0xFF, pos, pos + 1
            pos += 1
        elif marker == 0xDA:
            yield marker, pos, src.size
            return
        elif marker in _STANDALONE:
            yield marker, pos, pos + 2
            pos += 2
        else:
            need(marker != 0xD9, "the JPEG ends before its image data")
            end = pos + 2 + u16(head, 2, True, "the JPEG's segments are cut short")
            need(end <= src.size and end >= pos + 4, "the JPEG's segments are cut short or corrupt")
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


def _extended_xmp(extended: list[int], main: int | None, wanted: frozenset[str], edit: _Edit) -> None:
    """The extended XMP -- one packet in chunks, each in its own segment at ``edit.pieces[index]``, named
    by the MD5 of the packet (its GUID) -- blanked in place like the main packet; the chunks keep their
    sizes, and the new GUID replaces the old one in each chunk and in the main packet's reference."""
    head = 4 + len(EXTENDED_XMP_SIGNATURE)  # marker, length, signature; then GUID, full length, offset, chunk
    spans = [(index, edit.pieces[index]) for index in extended]
    chunks = sorted((u32(edit.src.read(s.offset, s.offset + head + 40), head + 36, True,
                         "the extended XMP is cut short"), index, s)
                    for index, s in spans if isinstance(s, Span))  # by offset in the packet
    xmpedit.within_limit(sum(s.length - head - 40 for _, _, s in chunks))  # before it is read
    segments = [(index, edit.src.read(s.offset, s.end)) for _, index, s in chunks]
    packet = b"".join(segment[head + 40:] for _, segment in segments)
    edited, found = xmpedit.strip(packet, wanted)
    edit.found |= found
    if edited is packet:
        return
    old, new = segments[0][1][head:head + 32], hashlib.md5(edited, usedforsecurity=False).hexdigest().upper().encode()
    at = 0
    for index, segment in segments:
        size = len(segment) - head - 40
        edit.pieces[index] = segment[:head] + new + segment[head + 32:head + 40] + edited[at:at + size]
        edit.hold(len(segment))
        at += size
    if main is not None and len(old) == len(new):
        edit.pieces[main] = edit.bytes_at(main).replace(old, new)
    edit.changed = True


def _jpeg_edit(src: Reader, wanted: frozenset[str], begin: int) -> tuple[_Edit, tuple[int, int], int]:
    """The JPEG at ``begin`` stripped (its last piece: a span of its scan and all after it), its size, where
    its scan starts."""
    edit, size, main, scan = _Edit(src), (0, 0), None, src.size
    edit.keep(begin, begin + 2)
    extended: list[int] = []  # the indexes in pieces of the extended XMP chunks
    for marker, start, end in _jpeg_segments(src, begin):
        if not (marker in _SOF or 0xE0 <= marker <= 0xEF):
            edit.keep(start, end)  # the scan above all: not read
            scan = start if marker == 0xDA else scan
            continue
        if marker in _SOF:
            if size == (0, 0):
                header = src.read(start, min(end, start + 9))
                size = (u16(header, 7, True, "the JPEG's frame header is cut short"),
                        u16(header, 5, True, "the JPEG's frame header is cut short"))
            edit.keep(start, end)
            continue
        segment = src.read(start, end)  # an application segment: at most 64 KiB
        if marker == 0xE1 and segment[4:].startswith(EXTENDED_XMP_SIGNATURE):
            extended.append(edit.keep(start, end, pin=True))
            continue
        primary = marker == 0xE1 and segment[4:].startswith(XMP_SIGNATURE) and main is None
        if marker == 0xE2 and segment[4:8] == b"MPF\x00":
            edit.mpf = (start, segment)
        index = edit.put(start, segment, _jpeg_app(marker, segment, wanted, edit), pin=primary)
        main = index if primary else main
    if extended and wanted:
        _extended_xmp(extended, main, wanted, edit)
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


def _embedded(src: Reader, scan: int, wanted: frozenset[str], edit: _Edit) -> None:
    """The images a Multi-Picture (MPF) JPEG holds after the first -- previews, gain maps, depth maps,
    each with an EXIF of its own -- those appended without an index, and APP1 segments between the
    scans of a progressive JPEG, stripped in place like the first. They keep their lengths, so the MPF
    index stays right; the last piece (a span from the first image's scan, or the tail of a PNG or GIF,
    to the end) is cut around the edited headers."""
    indexed = sorted(set(_mpf_images(*edit.mpf))) if edit.mpf and wanted else []
    edited: list[tuple[int, int, list[Part]]] = []  # (where, length, pieces) of each edited stretch
    reach, previous = scan, -1
    for begin in heapq.merge(indexed, _appended(src, scan) if wanted else iter(())):
        if begin < reach or begin == previous:
            continue  # read already (an index pointing back into it: a crafted file), or listed twice
        previous = begin
        headers = _edited_at(src, begin, wanted, edit, begin in indexed)
        if headers is not None:
            edit.hold(sum(len(piece) for piece in headers if isinstance(piece, bytes)))  # held till the splice
            length = sum(map(part_length, headers))
            edited.append((begin, length, headers))
            reach = begin + length
    if edited:
        last = edit.pieces.pop()
        assert isinstance(last, Span) and last.offset <= scan and last.end == src.size, last
        start = last.offset
        for begin, length, headers in edited:
            edit.keep(start, begin)
            for piece in headers:
                edit.add(piece)
            start = begin + length
        edit.keep(start, src.size)
        edit.changed = True


def _edited_at(src: Reader, begin: int, wanted: frozenset[str], edit: _Edit, indexed: bool) -> list[Part] | None:
    """The pieces of the bytes from ``begin`` on that stripping changes (a JPEG's headers, an APP1 segment),
    of the same length; None when nothing there changes, or it is not what it looked like."""
    try:
        need(begin + 1 < src.size, "an image the Multi-Picture index lists lies past the file's end")
        if src.read(begin + 1, begin + 2) == b"\xe1":
            end = begin + 2 + u16(src.read(begin, begin + 4), 2, True, "cut short")
            need(end <= src.size, "cut short")
            stray = _Edit(src)  # (its EXIF is not the image's: the orientation stays the first's)
            segment = src.read(begin, end)
            result = _jpeg_app(0xE1, segment, wanted, stray)
            edit.found |= stray.found
            return None if result is segment else [result]
        inner, _, inner_scan = _jpeg_edit(src, wanted, begin)
    except PrepareError:
        if indexed:
            raise
        return None  # (the bytes of something else, a video say: not a JPEG, not a segment)
    edit.found |= inner.found
    if not inner.changed:
        return None
    *headers, last = inner.pieces  # the last: a span from at most its scan's start to the end
    assert isinstance(last, Span) and last.offset <= inner_scan, last
    headers += [Span(last.offset, inner_scan - last.offset)] if inner_scan > last.offset else []
    need(sum(map(part_length, headers)) == inner_scan - begin, "an image after the JPEG's end could not be edited")
    return headers


#: A start of image or an APP1 marker: one pass over the data finds both (two ``find``s cost four times as
#: much: a JPEG's entropy-coded data is full of 0xFF bytes).
_LATER = re.compile(rb"\xff(?:\xd8\xff|\xe1)")


def _appended(src: Reader, scan: int) -> Iterator[int]:
    """Where a JPEG or an APP1 segment may begin after the first image's first scan: apps append the
    original or a preview with no index, a progressive JPEG may hold metadata before a later scan, and it
    is as readable there. (A scan's entropy-coded data never holds a marker.) Read a chunk at a time, each
    overlapping the next by two bytes, so a marker across their border is found, and found once."""
    resume = scan  # where the last marker found ends: the search goes on from there, as one over all would
    for at in range(scan, src.size, CHUNK):
        chunk = src.read(at, at + CHUNK + 2)
        for match in _LATER.finditer(chunk, max(resume - at, 0)):
            if match.start() >= CHUNK:
                break  # the next chunk's to find
            resume = at + match.end()
            yield at + match.start()


def _jpeg(src: Reader, wanted: frozenset[str]) -> Survey:
    edit, size, scan = _jpeg_edit(src, wanted, 0)
    need(size[0] > 0 and size[1] > 0, "the JPEG has no frame header (or a size of 0)")
    _embedded(src, scan, wanted, edit)
    return _result(edit, size)


# -- PNG ------------------------------------------------------------------------------------------

_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def _png_chunks(src: Reader) -> Iterator[tuple[bytes, int, int]]:
    need(src.read(0, 8) == PNG_SIGNATURE, "not a PNG (no PNG signature)")
    pos = 8
    while pos < src.size:
        head = src.read(pos, pos + 8)
        length = u32(head, 0, True, "the PNG's chunks are cut short")
        end = pos + 12 + length
        need(end <= src.size, "the PNG's chunks are cut short")
        kind = head[4:8]
        yield kind, pos, end
        pos = end
        if kind == b"IEND":
            break
    if pos < src.size:
        yield b"", pos, src.size  # bytes after IEND: kept as they are


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


def _png_reads(src: Reader, kind: bytes, start: int, end: int, wanted: frozenset[str]) -> bool:
    """Whether a PNG chunk is one packsync reads: the header, EXIF, and the text chunks it may strip (read by
    their keyword, within the first 80 bytes: PNG's keywords are 1 to 79 bytes long). Any other chunk --
    image data, a text of another keyword however long -- is passed on unread."""
    if kind not in _PNG_TEXT:
        return kind in (b"IHDR", b"eXIf")
    keyword, zero, _ = src.read(start + 8, min(end - 4, start + 8 + 80)).partition(b"\x00")
    need(bool(zero), "a PNG text chunk has no keyword")
    name = keyword.decode("latin-1")
    return name == "XML:com.adobe.xmp" or name.startswith("Raw profile type ") or (
        name in PNG_PEOPLE and "people" in wanted)


def _png(src: Reader, wanted: frozenset[str]) -> Survey:
    edit, size, animated = _Edit(src), (0, 0), False
    edit.keep(0, len(PNG_SIGNATURE))
    tail = None
    for kind, start, end in _png_chunks(src):
        tail = start if kind == b"" else None
        if not _png_reads(src, kind, start, end, wanted):
            animated |= kind == b"acTL"
            edit.keep(start, end)  # image data: not read
            continue
        if kind == b"IHDR":
            header = src.read(start, min(end, start + 16))
            size = (u32(header, 8, True, "the PNG header is cut short"),
                    u32(header, 12, True, "the PNG header is cut short"))
            edit.keep(start, end)
            continue
        chunk = edit.metadata(start, end, "a PNG metadata chunk")
        edit.put(start, chunk, _png_chunk(kind, chunk, wanted, edit))
    need(size[0] > 0 and size[1] > 0, "the PNG has no header (or a size of 0)")
    if tail is not None:  # bytes after IEND, the last piece: a JPEG appended there is stripped in place
        _embedded(src, tail, wanted, edit)
    return _result(edit, size, animated=animated)


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


def _webp(src: Reader, wanted: frozenset[str]) -> Survey:
    need(src.read(0, 4) == b"RIFF" and src.read(8, 12) == b"WEBP", "not a WebP (no RIFF WEBP header)")
    edit, size, lossless, animated = _Edit(src), None, False, False
    edit.keep(0, 12)
    pos = 12
    while pos + 8 <= src.size:
        head = src.read(pos, pos + 8)
        kind, length = head[:4], u32(head, 4, False, "the WebP's chunks are cut short")
        end = pos + 8 + length
        need(end <= src.size, "the WebP's chunks are cut short")
        size = size or _webp_size(kind, src.read(pos + 8, min(end, pos + 24)))
        lossless |= kind == b"VP8L"
        animated |= kind == b"ANIM"
        if kind in (b"EXIF", b"XMP "):
            chunk = edit.metadata(pos, end, "a WebP metadata chunk")
            edit.put(pos, chunk, _webp_chunk(kind, chunk, wanted, edit))
        else:
            edit.keep(pos, end)  # image data: not read
        pos = end + length % 2
        edit.keep(end, min(pos, src.size))
    edit.keep(pos, src.size)  # a tail too short for a chunk: kept as it was
    need(size is not None and size[0] > 0 and size[1] > 0, "the WebP has no image header")
    assert size is not None
    return _result(edit, size, lossless, animated)


# -- GIF ------------------------------------------------------------------------------------------

#: A GIF's XMP application extension: the packet follows as it is, then a "magic trailer" (0x01, 0xFF down
#: to 0x00) that walks a reader taking it for sub-blocks to their end, whatever byte it lands on.
GIF_XMP = b"\x21\xff\x0bXMP DataXMP"
_GIF_XMP_END = b"\x01\xff\xfe\xfd\xfc"


def _gif(src: Reader, wanted: frozenset[str]) -> Survey:
    """A GIF holds no EXIF: read for its size, its XMP (blanked in place: the trailer after it does not
    care what the packet's bytes are) and a JPEG appended to it."""
    header = src.read(0, 10)
    need(header[:6] in (b"GIF87a", b"GIF89a"), "not a GIF (no GIF header)")
    size = (u16(header, 6, False, "the GIF header is cut short"), u16(header, 8, False, "the GIF header is cut short"))
    need(size[0] > 0 and size[1] > 0, "the GIF has a size of 0")
    edit, at = _Edit(src), 0
    begin = src.find(GIF_XMP, 0) if wanted else -1
    while begin >= 0:
        start = begin + len(GIF_XMP)
        end = src.find(_GIF_XMP_END, start)
        need(end >= 0, "the GIF's XMP has no end")
        xmpedit.within_limit(end - start)  # before it is read
        packet = src.read(start, end)
        edit.keep(at, start)
        edit.put(start, packet, edit.packet(packet, wanted))
        at, begin = end, src.find(GIF_XMP, end)
    edit.keep(at, src.size)
    _embedded(src, at, wanted, edit)  # a JPEG appended after it: stripped in place
    return _result(edit, size)


SURVEYS: dict[str, Callable[[Reader, frozenset[str]], Survey]] = {
    "image/jpeg": _jpeg, "image/png": _png, "image/webp": _webp, "image/gif": _gif,
}
