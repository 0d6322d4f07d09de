"""XMP packets edited in place: the properties of the stripped categories blanked out with spaces.

The packet keeps its length (so a JPEG segment, a PNG chunk or a WebP chunk around it keeps its size)
and every byte not removed stays as it was: no XML serialiser runs, so the result depends on the packet
alone -- not on a global namespace registry that other threads write to. Parsing is expat's, hardened as
``packsync/xmp.py`` is: no DTD (so no entities), a depth limit, a size limit.
"""

from __future__ import annotations

import re
import xml.parsers.expat as expat
from collections.abc import Iterable
from dataclasses import dataclass, field

from packsync.prepare.base import PrepareError

EXIF = "http://ns.adobe.com/exif/1.0/"
EXIF_EX = "http://cipa.jp/exif/1.0/"
AUX = "http://ns.adobe.com/exif/1.0/aux/"
TIFF = "http://ns.adobe.com/tiff/1.0/"
DC = "http://purl.org/dc/elements/1.1/"
PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
IPTC_CORE = "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
MWG_RS = "http://www.metadataworkinggroup.com/schemas/regions/"
MS_PHOTO = "http://ns.microsoft.com/photo/1.2/"
XMP_RIGHTS = "http://ns.adobe.com/xap/1.0/rights/"
DJI = "http://www.dji.com/drone-dji/1.0/"

#: (namespace, local name) of the properties removed per category; a name ending in "*" is a prefix.
FIELDS: dict[str, frozenset[tuple[str, str]]] = {
    "location": frozenset({
        (EXIF, "GPS*"), (PHOTOSHOP, "City"), (PHOTOSHOP, "State"), (PHOTOSHOP, "Country"),
        (IPTC_CORE, "Location"), (IPTC_CORE, "CountryCode"), (IPTC_EXT, "LocationShown"),
        (IPTC_EXT, "LocationCreated"), (DJI, "Gps*"), (DJI, "AbsoluteAltitude"), (DJI, "RelativeAltitude"),
    }),
    "serials": frozenset({
        (AUX, "SerialNumber"), (AUX, "LensSerialNumber"), (EXIF_EX, "BodySerialNumber"),
        (EXIF_EX, "LensSerialNumber"), (EXIF_EX, "ImageUniqueID"), (EXIF, "ImageUniqueID"),
    }),
    "people": frozenset({
        (DC, "creator"), (DC, "rights"), (TIFF, "Artist"), (TIFF, "Copyright"), (PHOTOSHOP, "AuthorsPosition"),
        (PHOTOSHOP, "CaptionWriter"), (IPTC_CORE, "CreatorContactInfo"), (IPTC_EXT, "PersonInImage"),
        (IPTC_EXT, "PersonInImageWDetails"), (MWG_RS, "Regions"), (MS_PHOTO, "RegionInfo"), (AUX, "OwnerName"),
        (EXIF_EX, "CameraOwnerName"), (XMP_RIGHTS, "Owner"),
    }),
}
MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 100


def _category(uri: str, local: str, wanted: frozenset[str]) -> str | None:
    for category in sorted(wanted):
        for namespace, name in FIELDS[category]:
            if namespace == uri and (local == name or (name.endswith("*") and local.startswith(name[:-1]))):
                return category
    return None


@dataclass
class _Scan:
    data: bytes
    wanted: frozenset[str]
    scopes: list[dict[str, str]] = field(default_factory=lambda: [{}])
    opened: list[tuple[int, int, bool, bool]] = field(default_factory=list)  # start, tag end, empty, removed
    removing: int = 0  # open elements being removed (the outermost one and those inside it)
    spans: list[tuple[int, int]] = field(default_factory=list)
    found: set[str] = field(default_factory=set)
    parser: expat.XMLParserType = field(default_factory=expat.ParserCreate)

    def resolve(self, qname: str) -> tuple[str, str]:
        prefix, _, local = qname.rpartition(":")
        return self.scopes[-1].get(prefix, ""), local  # (attributes without a prefix are never asked)

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if len(self.opened) >= MAX_DEPTH:
            raise PrepareError(f"the XMP packet nests elements deeper than {MAX_DEPTH}")
        scope = dict(self.scopes[-1])
        scope.update({k[6:]: v for k, v in attrs.items() if k.startswith("xmlns:")})
        if "xmlns" in attrs:  # a default namespace: the one of the unprefixed elements inside
            scope[""] = attrs["xmlns"]
        self.scopes.append(scope)
        begin = self.parser.CurrentByteIndex
        end = _tag_end(self.data, begin)
        category = None if self.removing else _category(*self.resolve(name), self.wanted)
        if category is not None:
            self.found.add(category)
        elif not self.removing:
            self._attributes(attrs, begin, end)
        self.removing += bool(category or self.removing)
        self.opened.append((begin, end, self.data[end - 2:end] == b"/>", category is not None))

    def _attributes(self, attrs: dict[str, str], begin: int, end: int) -> None:
        for qname in attrs:
            if ":" not in qname or qname.startswith("xmlns:"):
                continue
            category = _category(*self.resolve(qname), self.wanted)
            if category is None:
                continue
            self.found.add(category)
            pattern = re.compile(rb"\s" + re.escape(qname.encode()) + rb"\s*=\s*(\"[^\"]*\"|'[^']*')")
            match = pattern.search(self.data, begin, end)
            if match is not None:
                self.spans.append((match.start(), match.end()))

    def end(self, name: str) -> None:
        begin, tag_end, empty, removed = self.opened.pop()
        self.scopes.pop()
        self.removing = max(self.removing - 1, 0)
        if removed:
            close = tag_end if empty else self.data.find(b">", self.parser.CurrentByteIndex) + 1
            self.spans.append((begin, close))


def _tag_end(data: bytes, pos: int) -> int:
    """The index just past the start tag at ``pos`` (attribute values may hold '>')."""
    quote = 0
    for index in range(pos, len(data)):
        byte = data[index]
        if quote:
            quote = 0 if byte == quote else quote
        elif byte in b"\"'":
            quote = byte
        elif byte == 0x3E:
            return index + 1
    return len(data)


def within_limit(size: int) -> None:
    """Refuse a packet of ``size`` bytes that ``strip`` would refuse: before a container reads it."""
    if size > MAX_BYTES:
        raise PrepareError(f"the XMP packet is larger than {MAX_BYTES // (1024 * 1024)} MB")


def _refuse_dtd(*_: object) -> None:
    raise PrepareError("the XMP packet declares a DTD, which no XMP packet has")


def strip(packet: bytes, categories: Iterable[str]) -> tuple[bytes, frozenset[str]]:
    """``packet`` with the properties of ``categories`` blanked, and the categories it held; the same object
    when it held none. A packet that is not readable XML (or is UTF-16, which is not edited) is a PrepareError."""
    wanted = frozenset(categories)
    if not wanted:
        return packet, frozenset()
    within_limit(len(packet))
    if packet[:2] in (b"\xfe\xff", b"\xff\xfe"):
        raise PrepareError("the XMP packet is in UTF-16, which packsync does not edit")
    body = packet.rstrip(b"\x00 \t\r\n")  # writers pad packets, some with NULs expat refuses
    scan = _Scan(body, wanted)
    parser = scan.parser
    parser.StartElementHandler = scan.start
    parser.EndElementHandler = scan.end
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise PrepareError(f"the XMP packet is not well-formed XML ({exc})") from None
    except RecursionError:
        raise PrepareError("the XMP packet nests too deep") from None
    if not scan.spans:
        return packet, frozenset(scan.found)
    edited = bytearray(packet)
    for begin, end in scan.spans:
        edited[begin:end] = b" " * (end - begin)
    return bytes(edited), frozenset(scan.found)
