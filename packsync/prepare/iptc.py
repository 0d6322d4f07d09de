"""IPTC IIM, as Photoshop stores it in a JPEG's APP13 segment: the datasets of the stripped categories
removed, the others moved up and the freed bytes zeroed (Photoshop pads IIM with zeros too), so the segment
keeps its size; the IPTC digest brought up to date. EXIF and XMP kept among the same image resources are
edited in place (``exif.py``, ``xmpedit.py``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from packsync.prepare import exif, xmpedit
from packsync.prepare.base import need, u16, u32

SIGNATURE = b"Photoshop 3.0\x00"
#: (record, dataset) removed per category.
DATASETS = {
    # Content location code and name, city, sub-location, province/state, country code and name.
    "location": frozenset({(2, 26), (2, 27), (2, 90), (2, 92), (2, 95), (2, 100), (2, 101)}),
    # By-line (creator), by-line title, copyright notice, contact, writer/editor.
    "people": frozenset({(2, 80), (2, 85), (2, 116), (2, 118), (2, 122)}),
    "serials": frozenset(),
}
_IIM = 0x0404
_EXIF = frozenset({0x0422, 0x0423})  # "EXIF data 1" and "3": a TIFF block
_XMP = 0x0424
_DIGEST = 0x0425
_CUT = "the Photoshop (IPTC) metadata is cut short"


def _resources(data: bytes) -> tuple[list[tuple[int, bytes, bytes]], int]:
    """(id, header up to the size, data) of each image resource after the signature, and where they end
    (what follows -- another vendor's resources -- is kept as it is)."""
    found = []
    pos = len(SIGNATURE)
    while pos + 4 <= len(data) and data[pos:pos + 4] == b"8BIM":
        ident = u16(data, pos + 4, True, _CUT)
        need(pos + 6 < len(data), _CUT)
        name_length = data[pos + 6] + 1
        name_length += name_length % 2
        size_at = pos + 6 + name_length
        size = u32(data, size_at, True, _CUT)
        need(size_at + 4 + size <= len(data), _CUT)
        found.append((ident, data[pos:size_at], data[size_at + 4:size_at + 4 + size]))
        pos = size_at + 4 + size + size % 2
    return found, min(pos, len(data))


def _strip_iim(iim: bytes, removed: frozenset[tuple[int, int]], wanted: frozenset[str]) -> tuple[bytes, set[str]]:
    kept, found, pos = [], set(), 0
    while pos + 5 <= len(iim) and iim[pos] == 0x1C:
        key = (iim[pos + 1], iim[pos + 2])
        length, start = u16(iim, pos + 3, True, _CUT), pos + 5
        if length & 0x8000:  # an extended dataset: the length's own length follows
            size = length & 0x7FFF
            need(size <= 4 and start + size <= len(iim), _CUT)
            length, start = int.from_bytes(iim[start:start + size], "big"), start + size
        need(start + length <= len(iim), _CUT)
        if key in removed:
            found |= {c for c in wanted if key in DATASETS[c]}
        else:
            kept.append(iim[pos:start + length])
        pos = start + length
    rest = b"".join(kept) + iim[pos:]
    return rest + bytes(len(iim) - len(rest)), found  # zero padding, as Photoshop pads: the segment keeps its size


def _strip_resource(ident: int, data: bytes, removed: frozenset[tuple[int, int]],
                    wanted: frozenset[str]) -> tuple[bytes, frozenset[str] | set[str]]:
    """One image resource stripped: IIM, or the EXIF and XMP Photoshop may keep here too (edited in place:
    they keep their sizes)."""
    if ident == _IIM and removed:
        return _strip_iim(data, removed, wanted)
    if ident in _EXIF:
        prefix = b"Exif\x00\x00" if data.startswith(b"Exif\x00\x00") else b""
        block = data[len(prefix):]
        edited, found = exif.strip(block, wanted)
        return (data if edited is block else prefix + edited), found
    if ident == _XMP:
        return xmpedit.strip(data, wanted)
    return data, frozenset()


def strip(payload: bytes, categories: Iterable[str]) -> tuple[bytes, frozenset[str]]:
    """An APP13 payload without the IIM datasets of ``categories``, and the categories it held (the same
    object when none)."""
    wanted = frozenset(categories)
    removed = frozenset().union(*(DATASETS[c] for c in wanted))
    resources, end = _resources(payload)
    found: set[str] = set()
    rebuilt = []
    for ident, header, data in resources:
        data, present = _strip_resource(ident, data, removed, wanted)
        found |= present
        rebuilt.append((ident, header, data))
    if not found:
        return payload, frozenset()
    iim = next((data for ident, _, data in rebuilt if ident == _IIM), None)
    parts = [SIGNATURE]
    for ident, header, data in rebuilt:
        data = hashlib.md5(iim, usedforsecurity=False).digest() if ident == _DIGEST and iim is not None else data
        parts += [header, len(data).to_bytes(4, "big"), data, b"\x00" * (len(data) % 2)]
    return b"".join(parts) + payload[end:], frozenset(found)
