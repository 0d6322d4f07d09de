"""XMP sidecars: Genviral's AI description and keywords where digiKam, darktable, Lightroom and Immich
read them. Pure: bytes in, bytes out; ``engine/sidecars.py`` decides when and writes the files.

packsync owns only its fields: ``dc:description`` (its ``x-default`` entry), the ``dc:subject``
keywords it wrote last time (remembered in the packet itself, as ``packsync:ownKeywords``), and its own
namespace (``packsync:imageId``, ``packsync:aiModel``). Every other element, attribute, language and
keyword of a sidecar another program wrote is kept. A packet it cannot read is an ``XmpError``: the
caller leaves that file alone.
"""

from __future__ import annotations

import contextlib
import io
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
    root, prefixes = _parse(existing) if existing is not None else (_new_root(), {})
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
    return _serialize(root, prefixes)


def without_ours(existing: bytes) -> bytes | None:
    """``existing`` with packsync's fields taken out; None when nothing else is left in it (packsync
    alone wrote it, so the whole file may go). A description someone changed since is theirs: kept."""
    root, prefixes = _parse(existing)
    ours = _forget_ours(root)
    rdf = _rdf(root)
    descriptions = rdf.findall(_q(RDF, "Description"))
    for description in descriptions:
        if ours.description is not None and _default_text(description) == ours.description:
            _set_description(description, None)
        _set_keywords(description, ours.keywords, ())
    alone = len(rdf) == len(descriptions) and all(map(_empty, descriptions)) and (root is rdf or len(root) == 1)
    return None if alone else _serialize(root, prefixes)


def read_fields(data: bytes) -> tuple[str | None, list[str]]:
    """(x-default description, every keyword) of a packet: what other programs will show."""
    root, _ = _parse(data)
    text, keywords = None, []
    for description in _rdf(root).findall(_q(RDF, "Description")):
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

def _parse(data: bytes) -> tuple[ET.Element, dict[str, str]]:
    if len(data) > MAX_BYTES:
        raise XmpError(f"larger than {MAX_BYTES // (1024 * 1024)} MB")
    prefixes: dict[str, str] = {}
    try:
        events = ET.iterparse(io.BytesIO(data), events=("start-ns", "end"))
        root = None
        for event, item in events:
            if event == "start-ns":
                prefix, uri = item
                prefixes.setdefault(prefix, uri)
            else:
                root = item
    except ET.ParseError as exc:
        raise XmpError(f"not well-formed XML ({exc})") from None
    if root is None or (root.tag != _q(RDF, "RDF") and root.find(f".//{_q(RDF, 'RDF')}") is None):
        raise XmpError("no rdf:RDF element: not an XMP packet")
    return root, prefixes


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
            if child.tag.startswith(f"{{{PACKSYNC}}}"):
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
    present = {li.text or "" for li in items} if items is not None else set()
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


def _serialize(root: ET.Element, prefixes: dict[str, str]) -> bytes:
    """The packet, with the prefixes the file used (ElementTree's registry is global: each prefix is
    registered as the file had it, then packsync's own, unless reserved)."""
    for prefix, uri in {**prefixes, **PREFIXES}.items():
        if prefix and prefix != "xml" and not re.fullmatch(r"ns\d+", prefix):
            with contextlib.suppress(ValueError):
                ET.register_namespace(prefix, uri)
    body = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    return HEADER + body.encode("utf-8") + TRAILER
