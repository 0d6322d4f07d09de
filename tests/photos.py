"""Real photos for tests, made with Pillow: gradients and noise (so pixels matter), EXIF with GPS, serials
and names, an orientation, an ICC profile, XMP and IPTC with a location -- what a phone or camera writes.

Small and fast: a unit test builds what it needs. ``exiftool`` reads a file as the outside world does.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageCms

#: The values the fixtures write, for tests to look for (and not find).
LATITUDE = (52.0, 22.0, 3.36)
CITY = "Amsterdam"
BODY_SERIAL = "BODY-4711-SERIAL"
LENS_SERIAL = "LENS-0815-SERIAL"
ARTIST = "Jane Photographer"
OWNER = "Jane Owner"
MAKERNOTE = b"VENDOR\x00\x01" + b"MAKERNOTE-SERIAL-99" + bytes(13)
LENS_MODEL = "Test Lens 24-70mm"
CREATOR_TOOL = "packsync tests"


def pixels(width: int, height: int, *, alpha: bool = False) -> Image.Image:
    """An RGB(A) image with gradients in two directions and noise: no two rows or columns alike."""
    across = Image.linear_gradient("L").resize((width, height))
    down = Image.linear_gradient("L").rotate(90).resize((width, height))
    noise = Image.effect_noise((width, height), 48)
    bands = [across, noise, down] + ([Image.linear_gradient("L").resize((width, height))] if alpha else [])
    return Image.merge("RGBA" if alpha else "RGB", bands)


@functools.cache
def icc_profile() -> bytes:
    """A real sRGB ICC profile (lcms2's)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif(*, gps: bool = True, serials: bool = True, people: bool = True, orientation: int = 6,
         byte_order: Literal["MM", "II"] = "MM") -> Image.Exif:
    """EXIF as a camera writes it: IFD0, the Exif IFD (serials, owner, MakerNote, a lens model after them),
    a GPS IFD; big-endian ("MM", Apple, Canon) or little-endian ("II", Nikon, Sony)."""
    data = Image.Exif()
    data.endian = ">" if byte_order == "MM" else "<"
    data[0x010F] = "PacksyncCam"
    data[0x0110] = "Model 1"
    if orientation:
        data[0x0112] = orientation
    if people:
        data[0x013B] = ARTIST
        data[0x8298] = f"(c) {ARTIST}"
    sub = data.get_ifd(0x8769)
    sub[0x9003] = "2024:05:01 12:00:00"
    sub[0xA434] = LENS_MODEL  # after the serials (0xA431, 0xA435 sort around it): must still read right
    sub[0xA432] = (24.0, 70.0, 2.8, 2.8)
    if serials:
        sub[0xA431] = BODY_SERIAL
        sub[0xA435] = LENS_SERIAL
        sub[0x927C] = MAKERNOTE
    if people:
        sub[0xA430] = OWNER
    if gps:
        place = data.get_ifd(0x8825)
        place[0x0000] = b"\x02\x03\x00\x00"
        place[0x0001] = "N"
        place[0x0002] = LATITUDE
        place[0x0003] = "E"
        place[0x0004] = (4.0, 53.0, 46.0)
    return data


def xmp(*, location: bool = True, serials: bool = True, people: bool = True) -> bytes:
    """An XMP packet with location (attribute and element forms), serials and people, and a field to keep."""
    attributes = ' exif:GPSLatitude="52,22.056N" exif:GPSLongitude="4,53.767E"' if location else ""
    elements = []
    if location:
        elements += [f"<photoshop:City>{CITY}</photoshop:City>", "<photoshop:Country>Netherlands</photoshop:Country>",
                     "<Iptc4xmpExt:LocationShown><rdf:Bag><rdf:li rdf:parseType='Resource'>"
                     f"<Iptc4xmpExt:City>{CITY}</Iptc4xmpExt:City></rdf:li></rdf:Bag></Iptc4xmpExt:LocationShown>"]
    if serials:
        elements += [f"<aux:SerialNumber>{BODY_SERIAL}</aux:SerialNumber>"]
    if people:
        elements += [f"<dc:creator><rdf:Seq><rdf:li>{ARTIST}</rdf:li></rdf:Seq></dc:creator>"]
    body = "\n   ".join(elements)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        ' <rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
        ' xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:aux="http://ns.adobe.com/exif/1.0/aux/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        f' xmp:CreatorTool="{CREATOR_TOOL}"{attributes}>\n   {body}\n </rdf:Description>\n'
        '</rdf:RDF></x:xmpmeta>\n' + " " * 200 + '\n<?xpacket end="w"?>'
    ).encode("utf-8")


def iptc_segment(*, location: bool = True, people: bool = True) -> bytes:
    """A JPEG APP13 segment: Photoshop image resources holding IPTC IIM (city, by-line, an object name) and
    its digest, as Photoshop writes them."""
    def dataset(number: int, value: str) -> bytes:
        raw = value.encode("utf-8")
        return bytes([0x1C, 2, number]) + len(raw).to_bytes(2, "big") + raw
    iim = dataset(5, "A title to keep") + (dataset(90, CITY) if location else b"") + (
        dataset(80, ARTIST) if people else b"")
    resource = b"8BIM\x04\x04\x00\x00" + len(iim).to_bytes(4, "big") + iim + bytes(len(iim) % 2)
    digest = b"8BIM\x04\x25\x00\x00" + (16).to_bytes(4, "big") + hashlib.md5(iim, usedforsecurity=False).digest()
    payload = b"Photoshop 3.0\x00" + resource + digest
    return b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload


def _metadata(gps: bool, serials: bool, people: bool, orientation: int, icc: bool,
              xmp_location: bool, byte_order: Literal["MM", "II"] = "MM") -> dict[str, Any]:
    options: dict[str, Any] = {"exif": exif(gps=gps, serials=serials, people=people, orientation=orientation,
                                            byte_order=byte_order)}
    if icc:
        options["icc_profile"] = icc_profile()
    options["xmp"] = xmp(location=xmp_location, serials=serials, people=people)
    return options


def jpeg(width: int, height: int, *, gps: bool = True, serials: bool = True, people: bool = True,
         orientation: int = 6, icc: bool = True, xmp_location: bool = True, iptc: bool = True,
         byte_order: Literal["MM", "II"] = "MM") -> bytes:
    """A baseline JPEG (q 92, 4:2:0) with EXIF, XMP, an ICC profile and IPTC, as a camera writes them."""
    out = io.BytesIO()
    pixels(width, height).save(out, "JPEG", quality=92,
                               **_metadata(gps, serials, people, orientation, icc, xmp_location, byte_order))
    data = out.getvalue()
    return data[:2] + iptc_segment(location=xmp_location, people=people) + data[2:] if iptc else data


def png(width: int, height: int, *, gps: bool = True, serials: bool = True, people: bool = True,
        orientation: int = 1, icc: bool = True, xmp_location: bool = True, alpha: bool = False) -> bytes:
    """A PNG with an eXIf chunk, an XMP iTXt chunk, an ICC profile and (people) a tEXt Author."""
    from PIL import PngImagePlugin

    options = _metadata(gps, serials, people, orientation, icc, xmp_location)
    text = PngImagePlugin.PngInfo()
    text.add_itxt("XML:com.adobe.xmp", options.pop("xmp").decode("utf-8"))
    text.add_text("Title", "A title to keep")
    if people:
        text.add_text("Author", ARTIST)
    out = io.BytesIO()
    pixels(width, height, alpha=alpha).save(out, "PNG", pnginfo=text, **options)
    return out.getvalue()


def webp(width: int, height: int, *, gps: bool = True, serials: bool = True, people: bool = True,
         orientation: int = 1, icc: bool = True, xmp_location: bool = True, lossless: bool = False) -> bytes:
    """A WebP (extended: VP8X) with EXIF and XMP chunks and an ICC profile."""
    options = _metadata(gps, serials, people, orientation, icc, xmp_location)
    options["exif"] = options["exif"].tobytes()
    out = io.BytesIO()
    pixels(width, height).save(out, "WEBP", quality=90, lossless=lossless, **options)
    return out.getvalue()


def heic(width: int, height: int, *, gps: bool = True, serials: bool = True, people: bool = True,
         orientation: int = 6) -> bytes:
    """A HEIC as a phone writes one, with EXIF and XMP items (pillow-heif turns the EXIF orientation into the
    HEIF rotation)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    pixels(width, height).save(out, "HEIF", quality=85, xmp=xmp(location=gps, serials=serials, people=people),
                               exif=exif(gps=gps, serials=serials, people=people, orientation=orientation).tobytes())
    return out.getvalue()


def avif(width: int, height: int, *, gps: bool = True, serials: bool = True, people: bool = True,
         orientation: int = 6) -> bytes:
    """An AVIF (Pillow's own encoder) with EXIF and XMP."""
    out = io.BytesIO()
    pixels(width, height).save(out, "AVIF", quality=85, xmp=xmp(location=gps, serials=serials, people=people),
                               exif=exif(gps=gps, serials=serials, people=people, orientation=orientation).tobytes())
    return out.getvalue()


def gif(width: int, height: int) -> bytes:
    out = io.BytesIO()
    pixels(width, height).convert("P").save(out, "GIF")
    return out.getvalue()


def exiftool(data_or_path: bytes | Path) -> dict[str, Any] | None:
    """Every tag Debian's exiftool reads (``-j -G1 -a -n``: group-qualified, duplicates too, numbers raw);
    None when exiftool is not installed."""
    if shutil.which("exiftool") is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = data_or_path
        if isinstance(data_or_path, bytes):
            path = Path(folder) / "image"
            path.write_bytes(data_or_path)
        done = subprocess.run(["exiftool", "-j", "-G1", "-a", "-n", str(path)], capture_output=True, check=True,
                              timeout=60)
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found[0]
