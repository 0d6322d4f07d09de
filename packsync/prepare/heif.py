"""HEIC, HEIF and AVIF (all HEIF: ISO base media boxes) stripped in place, without a decoder.

The EXIF item and the XMP item (``mime``, ``application/rdf+xml``) are found through the ``meta`` box's
item information (``iinf``) and locations (``iloc``), and edited where they lie by ``exif.py`` and
``xmpedit.py``, which keep their lengths: no box, offset or extent changes, the coded image is untouched.
Only the box headers, the ``meta`` box and the metadata items are read (``base.MAX_METADATA`` each at most); the
stripped file is the edited items' bytes and spans of the input between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from packsync.prepare import exif, xmpedit
from packsync.prepare.base import PrepareError, metadata_within_limit, need, u32
from packsync.prepare.reader import BytesReader, Part, Reader, Span

_CUT = "the HEIF boxes are cut short or point outside the file"
#: More items (or extents) than any camera writes: a crafted count is refused, not walked.
MAX_ITEMS = 100_000


def _uint(data: bytes, pos: int, size: int) -> int:
    need(pos + size <= len(data), _CUT)
    return int.from_bytes(data[pos:pos + size], "big")


def _boxes(src: Reader, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, start of the content, end) of each box in the input's [start, end)."""
    pos = start
    while pos + 8 <= end:
        head = src.read(pos, pos + 16)
        size, kind, header = u32(head, 0, True, _CUT), head[4:8], 8
        if size == 1:
            size, header = _uint(head, 8, 8), 16
        elif size == 0:
            size = end - pos
        need(size >= header and pos + size <= end, _CUT)
        yield kind, pos + header, pos + size
        pos += size


@dataclass(frozen=True, slots=True)
class _Extent:
    method: int  # 0: file offsets, 1: inside idat
    offset: int
    length: int


def _item_kinds(data: bytes, start: int, end: int) -> dict[int, str]:
    """item_ID -> "exif" or "xmp" for the metadata items ``iinf`` lists."""
    version = data[start] if start < end else 0
    count_size = 2 if version == 0 else 4
    kinds = {}
    for kind, at, stop in _boxes(BytesReader(data), start + 4 + count_size, end):
        if kind != b"infe" or at >= stop or data[at] < 2:
            continue
        id_size = 2 if data[at] == 2 else 4
        item = _uint(data, at + 4, id_size)
        item_type = data[at + 6 + id_size:at + 10 + id_size]
        rest = data[at + 10 + id_size:stop].split(b"\x00")
        if item_type == b"Exif":
            kinds[item] = "exif"
        elif item_type == b"mime" and len(rest) > 1 and rest[1] == b"application/rdf+xml":
            need(len(rest) < 3 or not rest[2], "the HEIF XMP item is compressed, which packsync does not edit")
            kinds[item] = "xmp"
    return kinds


def _locations(data: bytes, start: int, end: int) -> dict[int, list[_Extent]]:
    """item_ID -> its extents, from ``iloc``."""
    version = _uint(data, start, 1)
    sizes = _uint(data, start + 4, 1)
    offset_size, length_size = sizes >> 4, sizes & 15
    more = _uint(data, start + 5, 1)
    base_size, index_size = more >> 4, (more & 15) if version in (1, 2) else 0
    id_size = 4 if version == 2 else 2
    count = _uint(data, start + 6, id_size)
    need(count <= MAX_ITEMS, "the HEIF file lists too many items")
    pos, found, total = start + 6 + id_size, dict[int, list[_Extent]](), 0
    for _ in range(count):
        item = _uint(data, pos, id_size)
        pos += id_size
        method = _uint(data, pos, 2) & 15 if version in (1, 2) else 0
        pos += 2 if version in (1, 2) else 0
        base = _uint(data, pos + 2, base_size)
        extents = _uint(data, pos + 2 + base_size, 2)
        pos += 4 + base_size
        found[item] = []
        total += extents
        need(total <= MAX_ITEMS, "the HEIF file lists too many item extents")
        for _ in range(extents):
            pos += index_size
            offset, length = _uint(data, pos, offset_size), _uint(data, pos + offset_size, length_size)
            found[item].append(_Extent(method, base + offset, length))
            pos += offset_size + length_size
        need(pos <= end, _CUT)
    return found


def _meta(src: Reader) -> tuple[int, int]:
    need(src.read(4, 8) == b"ftyp", "not a HEIF file (no ftyp box)")
    for kind, start, end in _boxes(src, 0, src.size):
        if kind == b"meta":
            return start + 4, end  # a full box: version and flags first
    raise PrepareError("the HEIF file has no meta box")


def _spans(size: int, extents: list[_Extent], idat: int | None) -> list[tuple[int, int]]:
    """Where an item's extents lie in the input (``idat``: where the idat box's content starts in it)."""
    spans = []
    for extent in extents:
        need(extent.method in (0, 1) and (extent.method == 0 or idat is not None),
             "a HEIF metadata item is stored in a way packsync does not edit")
        begin = extent.offset + ((idat or 0) if extent.method == 1 else 0)
        need(begin + extent.length <= size, _CUT)
        spans.append((begin, begin + extent.length))
    return spans


def _edit(payload: bytes, kind: str, wanted: frozenset[str]) -> tuple[bytes, frozenset[str]]:
    if kind == "xmp":
        return xmpedit.strip(payload, wanted)
    skip = 4 + u32(payload, 0, True, "the HEIF EXIF item is cut short")  # the offset to the TIFF header
    need(skip <= len(payload), "the HEIF EXIF item is cut short")
    block, found = exif.strip(payload[skip:], wanted)
    return (payload if not found else payload[:skip] + block), found


def strip(src: Reader, categories: Iterable[str]) -> tuple[tuple[Part, ...] | None, frozenset[str]]:
    """The input with its EXIF and XMP items stripped of ``categories`` in place -- as parts: the edited
    extents, and spans of the input between them; None when nothing changed -- and the categories found."""
    wanted = frozenset(categories)
    if not wanted:
        return None, frozenset()
    start, end = _meta(src)
    metadata_within_limit(end - start, "the HEIF meta box")
    meta = src.read(start, end)  # its boxes' offsets below count from its start
    kinds: dict[int, str] = {}
    places: dict[int, list[_Extent]] = {}
    idat = None
    for box, at, stop in _boxes(BytesReader(meta), 0, len(meta)):
        if box == b"iinf":
            kinds = _item_kinds(meta, at, stop)
        elif box == b"iloc":
            places = _locations(meta, at, stop)
        elif box == b"idat":
            idat = start + at
    edits: list[tuple[int, int, bytes]] = []  # (start, end, bytes) of each extent changed
    found: set[str] = set()
    held = 0
    for item, kind in sorted(kinds.items()):
        spans = _spans(src.size, places.get(item, []), idat)
        metadata_within_limit(sum(b - a for a, b in spans), "a HEIF metadata item")
        payload = b"".join(src.read(a, b) for a, b in spans)
        result, present = _edit(payload, kind, wanted)
        found |= present
        if result is not payload:
            held += len(result)
            metadata_within_limit(held, "the file's metadata to edit")
            for a, b in spans:
                edits.append((a, b, result[:b - a]))
                result = result[b - a:]
    return _spliced(src.size, edits), frozenset(found)


def _spliced(size: int, edits: list[tuple[int, int, bytes]]) -> tuple[Part, ...] | None:
    """The input with ``edits`` in place of the extents they replace (which never overlap but in a crafted
    file: refused, as its items could not all be stripped)."""
    if not edits:
        return None
    parts: list[Part] = []
    pos = 0
    for a, b, replacement in sorted(edits, key=lambda edit: edit[0]):
        need(a >= pos, "the HEIF metadata items overlap")
        parts += [Span(pos, a - pos), replacement] if a > pos else [replacement]
        pos = b
    return (*parts, Span(pos, size - pos)) if pos < size else tuple(parts)
