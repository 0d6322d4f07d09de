"""XMP sidecars: Genviral's AI description and keywords where digiKam, darktable, Lightroom and Immich
read them. Pure: bytes in, bytes out; ``engine/sidecars.py`` decides when and writes the files.

packsync owns only its fields: ``dc:description`` (its ``x-default`` entry), the ``dc:subject``
keywords it wrote last time (remembered in the packet itself, as ``packsync:ownKeywords``), and its own
namespace (``packsync:imageId``, ``packsync:aiModel``). Every other element, attribute, language and
keyword of a sidecar another program wrote is kept, and so are its comments and processing
instructions, inside the packet or around it. A packet it cannot read, or could not write back, is an
``XmpError`` whatever the reason (not XML, an encoding expat refuses, a DTD, nesting deeper than any
packet's, too large): the caller leaves that file alone. Nothing else escapes from here for a file's sake.
"""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from packsync.errors import XmpError

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
XML = "http://www.w3.org/XML/1998/namespace"
PACKSYNC = "https://packsync.dev/ns/xmp/1.0/"
PREFIXES = {"x": X, "rdf": RDF, "dc": DC, "packsync": PACKSYNC}
#: A sidecar larger than this is not an XMP packet packsync will parse.
MAX_BYTES = 4 * 1024 * 1024

HEADER = b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
TRAILER = b'\n<?xpacket end="w"?>\n'


@dataclass(frozen=True, slots=True)
class Fields:
    """What packsync writes into a sidecar: one image's settled AI metadata."""

    image_id: str
    description: str | None
    keywords: tuple[str, ...]
    model: str | None


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def render(fields: Fields, existing: bytes | None = None) -> bytes:
    """A sidecar holding ``fields``: a new packet, or ``existing`` with only packsync's fields replaced.

    The description becomes the ``x-default`` entry where there is none, or where it is still the one
    packsync wrote: a caption someone wrote (before or since) is theirs and stays. The keywords go into
    whichever list (``rdf:Bag`` or ``rdf:Seq``) and whichever ``rdf:Description`` holds ``dc:subject``.
    """
    packet = _parse(existing) if existing is not None else _Packet(_new_root(), {}, [], [])
    root = packet.root
    ours = _forget_ours(root)
    holder = _holder(root, "description")
    current = _default_text(holder)
    text = _clean(fields.description or "") if current is None or current == ours.description else ""
    if text:
        _set_description(holder, text)
    holder = _holder(root, "subject")
    added = _set_keywords(holder, ours.keywords, [k for k in map(_clean, fields.keywords) if k])
    ET.SubElement(holder, _q(PACKSYNC, "imageId")).text = _clean(fields.image_id)
    if fields.model:
        ET.SubElement(holder, _q(PACKSYNC, "aiModel")).text = _clean(fields.model)
    owned = text or ours.description  # the description packsync wrote before is still packsync's
    if owned is not None:
        ET.SubElement(holder, _q(PACKSYNC, "ownDescription")).text = owned
    if added:
        bag = ET.SubElement(ET.SubElement(holder, _q(PACKSYNC, "ownKeywords")), _q(RDF, "Bag"))
        for keyword in added:
            ET.SubElement(bag, _q(RDF, "li")).text = keyword
    return _serialize(packet)


def without_ours(existing: bytes) -> bytes | None:
    """``existing`` with packsync's fields taken out; None when nothing else is left in it (packsync
    alone wrote it, so the whole file may go). A description someone changed since is theirs: kept."""
    packet = _parse(existing)
    root = packet.root
    ours = _forget_ours(root)
    rdf = _rdf(root)
    descriptions = rdf.findall(_q(RDF, "Description"))
    for description in descriptions:
        if ours.description is not None and _default_text(description) == ours.description:
            _set_description(description, None)
        _set_keywords(description, ours.keywords, ())
    alone = len(rdf) == len(descriptions) and all(map(_empty, descriptions)) and (root is rdf or len(root) == 1) \
        and not (packet.before or packet.after)
    return None if alone else _serialize(packet)


def read_fields(data: bytes) -> tuple[str | None, list[str]]:
    """(x-default description, every keyword) of a packet: what other programs will show."""
    text, keywords = None, []
    for description in _rdf(_parse(data).root).findall(_q(RDF, "Description")):
        text = _default_text(description) or text
        subject = description.find(_q(DC, "subject"))
        keywords += [li.text or "" for li in subject.iter(_q(RDF, "li"))] if subject is not None else []
    return text, keywords


#: Characters XML 1.0 cannot hold (control characters, lone surrogates, U+FFFE/U+FFFF): an AI text
#: with one would make a sidecar no program can read.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub("", text)


@dataclass(frozen=True, slots=True)
class _Ours:
    description: str | None
    keywords: list[str]


# -- the tree -------------------------------------------------------------------------------------

class _Builder(ET.TreeBuilder):
    """ElementTree's tree builder, keeping comments and processing instructions (inside the packet, where
    they belong; around it, aside: ``_Packet``), the namespace prefixes the file used, and refusing what
    no XMP packet holds and a parser should not be made to do: a DTD (entities to expand, or to fetch),
    elements nested deeper than ``MAX_DEPTH``."""

    def __init__(self) -> None:
        super().__init__(insert_comments=True, insert_pis=True)
        self.depth = 0
        self.prefixes: dict[str, str] = {}
        self.before: list[ET.Element] = []
        self.after: list[ET.Element] = []
        self.closed = False

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise XmpError(f"elements nested deeper than {MAX_DEPTH}: not an XMP packet")
        return super().start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        self.depth -= 1
        self.closed = self.depth == 0
        return super().end(tag)

    def start_ns(self, prefix: str, uri: str) -> None:
        self.prefixes.setdefault(prefix, uri)

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise XmpError("it declares a DTD, which no XMP packet has")

    def comment(self, text: str | None) -> ET.Element:
        return self._aside(super().comment(text))

    def pi(self, target: str, text: str | None = None) -> ET.Element:
        node = super().pi(target, text)
        return node if self.depth == 0 and target == "xpacket" else self._aside(node)  # the wrapper is written anew

    def _aside(self, node: ET.Element) -> ET.Element:
        if self.depth == 0:
            (self.after if self.closed else self.before).append(node)
        return node


@dataclass(slots=True)
class _Packet:
    """A parsed sidecar: its tree, the prefixes it used, and what stands around its root element."""

    root: ET.Element
    prefixes: dict[str, str]
    before: list[ET.Element]
    after: list[ET.Element]


#: Elements nested deeper than this are no XMP packet (one nests a handful); deeper ones would exhaust
#: the stack of a serialiser that recurses, as ElementTree's does.
MAX_DEPTH = 100
#: What parsing a sidecar can raise besides ``ParseError``: an encoding unknown (``LookupError``) or one
#: expat cannot read (``ValueError``), text it cannot decode.
_UNREADABLE = (ET.ParseError, LookupError, ValueError)


def _parse(data: bytes) -> _Packet:
    if len(data) > MAX_BYTES:
        raise XmpError(f"larger than {MAX_BYTES // (1024 * 1024)} MB")
    builder = _Builder()
    try:
        parser = ET.XMLParser(target=builder)
        parser.feed(data)
        root: ET.Element = parser.close()
    except XmpError:
        raise
    except ET.ParseError as exc:
        raise XmpError(f"not well-formed XML ({exc})") from None
    except _UNREADABLE as exc:
        raise XmpError(f"not readable XML: its encoding ({exc})") from None
    if root.tag != _q(RDF, "RDF") and root.find(f".//{_q(RDF, 'RDF')}") is None:
        raise XmpError("no rdf:RDF element: not an XMP packet")
    return _Packet(root, builder.prefixes, builder.before, builder.after)


def _new_root() -> ET.Element:
    root = ET.Element(_q(X, "xmpmeta"))
    ET.SubElement(root, _q(RDF, "RDF"))
    return root


def _rdf(root: ET.Element) -> ET.Element:
    found = root if root.tag == _q(RDF, "RDF") else root.find(f".//{_q(RDF, 'RDF')}")
    assert found is not None  # _parse checked
    return found


def _holder(root: ET.Element, name: str) -> ET.Element:
    """The rdf:Description that holds ``dc:<name>`` already, else one with packsync's other field, else
    the first, else a new one."""
    descriptions = _rdf(root).findall(_q(RDF, "Description"))
    other = "subject" if name == "description" else "description"
    for wanted in (name, other):
        for description in descriptions:
            if description.find(_q(DC, wanted)) is not None:
                return description
    if descriptions:
        return descriptions[0]
    return ET.SubElement(_rdf(root), _q(RDF, "Description"), {_q(RDF, "about"): ""})


def _default_text(description: ET.Element) -> str | None:
    for li in description.iterfind(f"{_q(DC, 'description')}/{_q(RDF, 'Alt')}/{_q(RDF, 'li')}"):
        if li.get(_q(XML, "lang")) == "x-default":
            return li.text or ""
    return None


def _forget_ours(root: ET.Element) -> _Ours:
    """Take packsync's own namespace out of every description; return what it had written."""
    keywords: list[str] = []
    text = None
    for description in _rdf(root).findall(_q(RDF, "Description")):
        for child in list(description):
            if isinstance(child.tag, str) and child.tag.startswith(f"{{{PACKSYNC}}}"):  # not a comment
                if child.tag == _q(PACKSYNC, "ownKeywords"):
                    keywords += [li.text or "" for li in child.iter(_q(RDF, "li"))]
                elif child.tag == _q(PACKSYNC, "ownDescription"):
                    text = child.text or ""
                description.remove(child)
        for attribute in [a for a in description.attrib if a.startswith(f"{{{PACKSYNC}}}")]:
            del description.attrib[attribute]
    return _Ours(text, keywords)


def _set_description(description: ET.Element, text: str | None) -> None:
    element = description.find(_q(DC, "description"))
    if element is None:
        if text is None:
            return
        element = ET.SubElement(description, _q(DC, "description"))
    alt = element.find(_q(RDF, "Alt"))
    if alt is None:
        alt = ET.SubElement(element, _q(RDF, "Alt"))
    default = next((li for li in alt.findall(_q(RDF, "li")) if li.get(_q(XML, "lang")) == "x-default"), None)
    if text is None:
        if default is not None:
            alt.remove(default)
        if len(alt) == 0:
            description.remove(element)
        return
    if default is None:
        default = ET.Element(_q(RDF, "li"), {_q(XML, "lang"): "x-default"})
        alt.insert(0, default)
    default.text = text


def _set_keywords(description: ET.Element, ours_before: Sequence[str], keywords: Sequence[str]) -> list[str]:
    """Replace the keywords packsync wrote before by ``keywords``, keeping everyone else's, in whatever
    list ``dc:subject`` holds (a Bag; digiKam writes a Seq); return the ones packsync added now (a keyword
    someone else had already is theirs, not packsync's)."""
    subject = description.find(_q(DC, "subject"))
    items = next((child for child in subject if child.tag in (_q(RDF, "Bag"), _q(RDF, "Seq"))), None) \
        if subject is not None else None
    if items is not None:
        stale = set(ours_before)
        for li in list(items):
            if li.tag == _q(RDF, "li") and (li.text or "") in stale:
                items.remove(li)
    present = {li.text or "" for li in items if li.tag == _q(RDF, "li")} if items is not None else set()
    added = [k for k in dict.fromkeys(keywords) if k not in present]
    if added:
        if subject is None:
            subject = ET.SubElement(description, _q(DC, "subject"))
        if items is None:
            items = ET.SubElement(subject, _q(RDF, "Bag"))
        for keyword in added:
            ET.SubElement(items, _q(RDF, "li")).text = keyword
    elif subject is not None and (items is None or len(items) == 0) and len(subject) <= 1:
        description.remove(subject)
    return added


def _empty(description: ET.Element) -> bool:
    return len(description) == 0 and not [a for a in description.attrib if a != _q(RDF, "about")]


def _serialize(packet: _Packet) -> bytes:
    """The packet, with the prefixes the file used (ElementTree's registry is global: each prefix is
    registered as the file had it, then packsync's own, unless reserved), and the comments and
    processing instructions that stood around it where they stood."""
    for prefix, uri in {**packet.prefixes, **PREFIXES}.items():
        if prefix and prefix != "xml" and not re.fullmatch(r"ns\d+", prefix):
            with contextlib.suppress(ValueError):
                ET.register_namespace(prefix, uri)
    try:
        nodes = [ET.tostring(node, encoding="unicode") for node in (*packet.before, packet.root, *packet.after)]
    except (RecursionError, ValueError, TypeError) as exc:  # parsed, yet not to be written again as XML
        raise XmpError(f"cannot be written back ({type(exc).__name__})") from None
    return HEADER + "\n".join(nodes).encode("utf-8") + TRAILER
