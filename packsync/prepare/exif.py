"""EXIF (a TIFF structure) edited in place: directory entries removed, nothing moved.

A removed entry's directory is written again, shorter, where it was, and the bytes it no longer uses are
zeroed, as are the values of removed entries and a removed GPS directory. Every other offset -- the
MakerNote's own, relative to the TIFF header, included -- therefore stays valid, and the EXIF block keeps
its length, so no container around it needs new sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packsync.prepare.base import need, u16, u32

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
ORIENTATION = 0x0112
#: Tags removed per category, wherever they appear (IFD0, the Exif IFD, IFD1). Location is the GPS IFD.
TAGS = {
    # Camera and lens serials; the MakerNote, where vendors keep theirs (and more); ImageUniqueID, which
    # some cameras derive from the body serial and which ties an upload to its original.
    "serials": frozenset({0xA431, 0xA435, 0xC62F, 0xA420, 0x927C}),
    # Artist, Copyright (in practice the photographer's name), XPAuthor, CameraOwnerName.
    "people": frozenset({0x013B, 0x8298, 0x9C9D, 0xA430}),
    "location": frozenset({GPS_IFD}),
}
_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_CUT = "the EXIF data is cut short or points outside itself"


@dataclass(frozen=True, slots=True)
class _Entry:
    tag: int
    kind: int
    count: int
    at: int  # where the 12-byte entry starts


class _Tiff:
    def __init__(self, data: bytearray) -> None:
        need(len(data) >= 8 and bytes(data[:2]) in (b"II", b"MM"), "the EXIF data has no TIFF header")
        self.data = data
        self.big = data[:2] == b"MM"
        need(u16(data, 2, self.big, _CUT) == 42, "the EXIF data has no TIFF header")
        self.seen: list[tuple[int, int]] = []

    def u16(self, pos: int) -> int:
        return u16(self.data, pos, self.big, _CUT)

    def u32(self, pos: int) -> int:
        return u32(self.data, pos, self.big, _CUT)

    def ifd(self, pos: int) -> list[_Entry]:
        """The entries of the directory at ``pos``; a directory overlapping one read before (a loop, or a
        crafted file) is refused."""
        count = self.u16(pos)
        end = pos + 2 + 12 * count + 4
        need(end <= len(self.data), _CUT)
        need(all(end <= a or b <= pos for a, b in self.seen), "the EXIF directories overlap or loop")
        self.seen.append((pos, end))
        return [_Entry(self.u16(at), self.u16(at + 2), self.u32(at + 4), at)
                for at in range(pos + 2, pos + 2 + 12 * count, 12)]

    def span(self, entry: _Entry) -> tuple[int, int] | None:
        """Where an entry's value lies outside its directory (None: inside it), clamped to the data."""
        size = _SIZES.get(entry.kind, 1) * entry.count
        if size <= 4:
            return None
        start = min(self.u32(entry.at + 8), len(self.data))
        return start, min(start + size, len(self.data))

    def zero(self, span: tuple[int, int] | None) -> None:
        if span is not None:
            self.data[span[0]:span[1]] = bytes(span[1] - span[0])

    def rewrite(self, pos: int, entries: list[_Entry], kept: list[_Entry]) -> None:
        """The directory at ``pos`` again with only ``kept``, its freed tail zeroed."""
        end = pos + 2 + 12 * len(entries)
        body = b"".join(bytes(self.data[e.at:e.at + 12]) for e in kept)
        self.data[pos:end + 4] = (len(kept).to_bytes(2, "big" if self.big else "little") + body
                                  + bytes(self.data[end:end + 4]) + bytes(end - pos - 2 - len(body)))


@dataclass(slots=True)
class _Layout:
    ifds: list[tuple[int, list[_Entry]]]  # IFD0, the Exif IFD, IFD1: where tags are removed
    gps: tuple[int, list[_Entry]] | None


def _layout(tiff: _Tiff) -> _Layout:
    ifd0_at = tiff.u32(4)
    ifd0 = tiff.ifd(ifd0_at)
    ifds = [(ifd0_at, ifd0)]
    gps = None
    for entry in ifd0:
        if entry.tag == EXIF_IFD:
            at = tiff.u32(entry.at + 8)
            ifds.append((at, tiff.ifd(at)))
        elif entry.tag == GPS_IFD:
            at = tiff.u32(entry.at + 8)
            gps = (at, tiff.ifd(at))
    ifd1_at = tiff.u32(ifd0_at + 2 + 12 * len(ifd0))
    if ifd1_at:
        ifds.append((ifd1_at, tiff.ifd(ifd1_at)))
    return _Layout(ifds, gps)


def strip(block: bytes, categories: Iterable[str]) -> tuple[bytes, frozenset[str]]:
    """``block`` (a TIFF header and what follows) without the tags of ``categories``, and the categories
    it held. Unchanged (the same object) when it held none."""
    wanted = frozenset(categories)
    if not wanted:
        return block, frozenset()
    removed_tags = frozenset().union(*(TAGS[c] for c in wanted))
    tiff = _Tiff(bytearray(block))
    layout = _layout(tiff)
    present = {c for c in wanted for _, entries in layout.ifds for e in entries if e.tag in TAGS[c]}
    if not present:
        return block, frozenset()
    if layout.gps is not None and "location" in wanted:
        at, entries = layout.gps
        for entry in entries:
            tiff.zero(tiff.span(entry))
        tiff.zero((at, at + 2 + 12 * len(entries) + 4))
    for at, entries in layout.ifds:
        gone = [e for e in entries if e.tag in removed_tags]
        for entry in gone:
            tiff.zero(tiff.span(entry))
        if gone:
            tiff.rewrite(at, entries, [e for e in entries if e.tag not in removed_tags])
    return bytes(tiff.data), frozenset(present)


def orientation(block: bytes) -> int:
    """The Orientation of IFD0 (1 when absent or out of range)."""
    tiff = _Tiff(bytearray(block))
    for entry in tiff.ifd(tiff.u32(4)):
        if entry.tag == ORIENTATION and entry.kind == 3:
            value = tiff.u16(entry.at + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def upright(block: bytes, width: int, height: int) -> bytes:
    """``block`` for a re-encoded image: Orientation 1, PixelXDimension/PixelYDimension the new size, and
    no thumbnail (IFD1 and its JPEG zeroed: it showed the original, differently turned)."""
    tiff = _Tiff(bytearray(block))
    layout = _layout(tiff)
    ifd0_at, ifd0 = layout.ifds[0]
    values = {ORIENTATION: 1, 0xA002: width, 0xA003: height}
    for _, entries in layout.ifds:
        for entry in entries:
            if entry.tag in values and entry.count == 1 and entry.kind in (3, 4):
                size = 2 if entry.kind == 3 else 4
                tiff.data[entry.at + 8:entry.at + 8 + size] = values[entry.tag].to_bytes(
                    size, "big" if tiff.big else "little")
    next_at = ifd0_at + 2 + 12 * len(ifd0)
    ifd1_at = tiff.u32(next_at)
    if ifd1_at:
        entries = next(e for a, e in layout.ifds[1:] if a == ifd1_at)
        _drop_thumbnail(tiff, ifd1_at, entries)
        tiff.data[next_at:next_at + 4] = bytes(4)
    return bytes(tiff.data)


def _drop_thumbnail(tiff: _Tiff, at: int, entries: list[_Entry]) -> None:
    found = {e.tag: e for e in entries}
    start, length = found.get(0x0201), found.get(0x0202)
    if start is not None and length is not None:
        begin = min(tiff.u32(start.at + 8), len(tiff.data))
        tiff.zero((begin, min(begin + tiff.u32(length.at + 8), len(tiff.data))))
    for entry in entries:
        tiff.zero(tiff.span(entry))
    tiff.zero((at, at + 2 + 12 * len(entries) + 4))
