"""Images prepared before upload (``packsync/prepare``): metadata stripped without touching a pixel,
orientation and ICC profile kept; scaled down and converted to JPEG in one encode, upright; the same bytes
every time; a corrupt or hostile file a PrepareError with its reason, never another exception.

The photos are real (``photos.py``: Pillow-made, with the EXIF, XMP and IPTC a camera writes) and are read
back both by Pillow and by Debian's exiftool, as the outside world would.
"""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import photos
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageOps, ImageStat

from packsync.prepare import (
    CONVERTIBLE,
    STRIP_CATEGORIES,
    Prepared,
    PrepareError,
    Recipe,
    describe,
    inspect,
    prepare,
)

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed: apt-get "
                                    "install libimage-exiftool-perl (the prepared files are then read as others do)")
ALL = Recipe(strip=STRIP_CATEGORIES)
JPEG, PNG, WEBP, HEIC, AVIF, GIF = "image/jpeg", "image/png", "image/webp", "image/heic", "image/avif", "image/gif"


@functools.cache
def fixture(kind: str) -> bytes:
    """One of each photo, made once per worker."""
    makers: dict[str, Callable[[], bytes]] = {
        "jpeg": lambda: photos.jpeg(400, 300),
        "little-endian-jpeg": lambda: photos.jpeg(400, 300, byte_order="II"),
        "plain-jpeg": lambda: photos.jpeg(120, 90, gps=False, serials=False, people=False, xmp_location=False,
                                          iptc=False),
        "png": lambda: photos.png(300, 200, orientation=6),
        "alpha-png": lambda: photos.png(120, 80, alpha=True),
        "webp": lambda: photos.webp(300, 200, orientation=6),
        "lossless-webp": lambda: photos.webp(300, 200, orientation=6, lossless=True),
        "heic": lambda: photos.heic(400, 300),
        "avif": lambda: photos.avif(400, 300),
        "gif": lambda: photos.gif(60, 40),
        "multi-picture": lambda: _multi_picture(photos.jpeg(120, 90), photos.jpeg(64, 48)),
    }
    return makers[kind]()


def decoded(data: bytes) -> Image.Image:
    import pillow_heif

    pillow_heif.register_heif_opener()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def difference(a: Image.Image, b: Image.Image) -> float:
    """The mean absolute difference of two same-sized images, 0..255, seen from afar (10x smaller: the
    gradients count, the noise and the encoders' own ways of scaling it average out)."""
    assert a.size == b.size
    size = (max(1, a.width // 10), max(1, a.height // 10))
    a, b = (image.convert("RGB").resize(size, Image.Resampling.BOX) for image in (a, b))
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def webp_chunks(data: bytes) -> list[bytes]:
    found, pos = [], 12
    while pos + 8 <= len(data):
        found.append(data[pos:pos + 4])
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        pos += 8 + length + length % 2
    return found


def tags(data: bytes) -> dict[str, Any]:
    found = photos.exiftool(data)
    assert found is not None
    return found


def in_groups(found: dict[str, Any], *groups: str) -> dict[str, Any]:
    return {k: v for k, v in found.items() if k.split(":")[0] in groups}


LOCATION_TAGS = ("GPS:GPSLatitude", "GPS:GPSLongitude", "XMP-exif:GPSLatitude", "XMP-exif:GPSLongitude",
                 "XMP-photoshop:City", "XMP-photoshop:Country", "XMP-iptcExt:LocationShownCity", "IPTC:City")
SERIAL_TAGS = ("ExifIFD:SerialNumber", "ExifIFD:LensSerialNumber", "XMP-aux:SerialNumber",
               "ExifIFD:MakerNoteUnknownText")
PEOPLE_TAGS = ("IFD0:Artist", "IFD0:Copyright", "ExifIFD:OwnerName", "XMP-dc:Creator", "IPTC:By-line", "PNG:Author")


# -- the recipe -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("recipe", "key"), [
    (Recipe(), "strip=location,serials"),
    (Recipe(strip=(), max_edge=0, convert_to_jpeg=()), ""),
    (Recipe(strip=("location", "people", "serials"), max_edge=2160, convert_to_jpeg=("heic",)),
     "strip=location,people,serials;max_edge=2160;jpeg=heic"),
    (Recipe(strip=(), max_edge=1080), "max_edge=1080"),
    (Recipe(strip=(), convert_to_jpeg=("avif", "heic")), "jpeg=avif,heic"),
])
def test_the_recipe_key_is_canonical_and_empty_exactly_when_as_is(recipe: Recipe, key: str) -> None:
    assert recipe.key == key
    assert recipe.as_is == (key == "")


@pytest.mark.parametrize("fields", [{"strip": ("gps",)}, {"convert_to_jpeg": ("jpeg",)}, {"max_edge": -1}])
def test_a_recipe_refuses_what_it_does_not_know(fields: dict[str, Any]) -> None:
    import msgspec

    with pytest.raises(ValueError):
        Recipe(**fields)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(fields, Recipe)


def test_converts_names_formats_by_their_sniffed_content_type() -> None:
    recipe = Recipe(convert_to_jpeg=("heic", "png"))
    assert recipe.converts(HEIC) and recipe.converts(PNG)
    assert not recipe.converts("image/heif") and not recipe.converts(JPEG) and not recipe.converts(GIF)
    assert set(CONVERTIBLE) == {"avif", "heic", "heif", "png", "webp"}


@pytest.mark.parametrize(("changes", "words"), [
    ((), ""),
    (("location", "serials", "resize:2160", "jpeg"), "location and serial numbers stripped; resized to 2160 px; "
                                                     "converted to JPEG"),
    (("location", "people", "serials"), "location, names and serial numbers stripped"),
    (("people",), "names stripped"),
    (("jpeg",), "converted to JPEG"),
])
def test_describe_tells_people_what_changed(changes: tuple[str, ...], words: str) -> None:
    assert describe(changes) == words


# -- lossless strip -------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "content_type"), [("jpeg", JPEG), ("little-endian-jpeg", JPEG), ("png", PNG),
                                                    ("webp", WEBP), ("lossless-webp", WEBP), ("heic", HEIC),
                                                    ("avif", AVIF)])
def test_stripping_keeps_every_pixel_the_orientation_and_the_icc_profile(kind: str, content_type: str) -> None:
    original = fixture(kind)
    prepared = prepare(original, content_type, Recipe())
    assert prepared.changes == ("location", "serials")
    assert prepared.content_type == content_type
    before, after = decoded(original), decoded(prepared.data)
    assert after.tobytes() == before.tobytes()
    assert after.info.get("icc_profile") == before.info.get("icc_profile")
    if content_type not in (HEIC, AVIF):  # HEIF holds its turn in its own boxes, left as they are
        assert after.info["icc_profile"]
        assert after.getexif()[0x0112] == 6
    exif = after.getexif()
    assert 0x8825 not in exif and not exif.get_ifd(0x8825)
    assert not {0xA431, 0xA435, 0x927C} & set(exif.get_ifd(0x8769))
    assert exif.get_ifd(0x8769)[0xA434] == photos.LENS_MODEL


@needs_exiftool
@pytest.mark.parametrize(("kind", "content_type"), [("jpeg", JPEG), ("little-endian-jpeg", JPEG), ("png", PNG),
                                                    ("webp", WEBP), ("heic", HEIC), ("avif", AVIF)])
def test_exiftool_finds_no_location_or_serial_and_the_rest_as_it_was(kind: str, content_type: str) -> None:
    original = fixture(kind)
    before, after = tags(original), tags(prepare(original, content_type, Recipe()).data)
    assert before.get("GPS:GPSLatitude") and before.get("ExifIFD:SerialNumber")  # the fixture has them
    assert not [t for t in (*LOCATION_TAGS, *SERIAL_TAGS) if t in after]
    assert not [k for k in after if k.startswith("GPS:")]
    assert after.get("ExifTool:Warning") is None  # the original's one: its MakerNote, gone with the serials
    kept = ("IFD0:Make", "IFD0:Model", "IFD0:Artist", "ExifIFD:LensModel", "ExifIFD:LensInfo",
            "ExifIFD:DateTimeOriginal", "XMP-xmp:CreatorTool", "XMP-dc:Creator", "IFD0:Orientation",
            "ICC_Profile:ProfileDescription")
    assert {t: after.get(t) for t in kept} == {t: before.get(t) for t in kept}


@needs_exiftool
@pytest.mark.parametrize(("kind", "content_type"), [("jpeg", JPEG), ("png", PNG), ("webp", WEBP), ("heic", HEIC)])
def test_people_strips_names_and_creators(kind: str, content_type: str) -> None:
    original = fixture(kind)
    before = tags(original)
    assert before.get("IFD0:Artist") == photos.ARTIST
    prepared = prepare(original, content_type, Recipe(strip=("people",)))
    assert prepared.changes == ("people",)
    after = tags(prepared.data)
    assert not [t for t in PEOPLE_TAGS if t in after]
    assert after.get("GPS:GPSLatitude") == before["GPS:GPSLatitude"]  # not asked for: kept


@pytest.mark.parametrize(("kind", "content_type"), [("jpeg", JPEG), ("png", PNG), ("webp", WEBP), ("heic", HEIC),
                                                    ("avif", AVIF)])
def test_no_stripped_value_is_left_anywhere_in_the_bytes(kind: str, content_type: str) -> None:
    """Removed values are zeroed, not just unlinked: a reader that scans the bytes finds nothing either."""
    original = fixture(kind)
    prepared = prepare(original, content_type, ALL).data
    secrets = [photos.CITY, photos.BODY_SERIAL, photos.LENS_SERIAL, photos.ARTIST, photos.OWNER, "MAKERNOTE"]
    assert [s for s in secrets if s.encode() in original]  # the fixture carries them
    assert [s for s in secrets if s.encode() in prepared] == []
    assert photos.LENS_MODEL.encode() in prepared and photos.CREATOR_TOOL.encode() in prepared


def test_values_after_removed_entries_and_the_makernote_stay_where_they_were() -> None:
    """The directory is rewritten where it was and nothing moves: a value stored after the removed entries
    reads right, and the MakerNote (whose own offsets count from the TIFF header) keeps its place."""
    original = fixture("jpeg")
    prepared = prepare(original, JPEG, Recipe(strip=("location",))).data
    assert len(prepared) == len(original)  # IPTC's city dataset: removed, the rest moved up and zero-padded
    def makernote_at(data: bytes) -> int:  # from the TIFF header, which its own offsets count from
        return data.index(photos.MAKERNOTE) - _tiff_at(data)

    assert makernote_at(prepared) == makernote_at(original)
    exif = decoded(prepared).getexif().get_ifd(0x8769)
    assert exif[0x927C] == photos.MAKERNOTE
    assert exif[0xA434] == photos.LENS_MODEL and exif[0xA432] == (24.0, 70.0, 2.8, 2.8)
    assert exif[0xA431] == photos.BODY_SERIAL


@needs_exiftool
def test_the_iptc_digest_follows_the_stripped_iptc() -> None:
    """Photoshop compares the digest with the IIM to tell whether another program changed it."""
    after = tags(prepare(fixture("jpeg"), JPEG, Recipe()).data)
    assert after["IPTC:ObjectName"] == "A title to keep" and "IPTC:City" not in after
    assert after["File:CurrentIPTCDigest"] == after["Photoshop:IPTCDigest"]


def _extended_xmp(data: bytes, packet: bytes) -> bytes:
    """``data`` with ``packet`` as its extended XMP, in two APP1 chunks, as Google's cameras write depth maps."""
    guid = hashlib.md5(packet, usedforsecurity=False).hexdigest().upper().encode()
    half = len(packet) // 2
    segments = b""
    for offset, chunk in ((0, packet[:half]), (half, packet[half:])):
        body = b"http://ns.adobe.com/xmp/extension/\x00" + guid + len(packet).to_bytes(4, "big") + \
            offset.to_bytes(4, "big") + chunk
        segments += b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body
    scan = data.index(b"\xff\xdb")
    return data[:scan] + segments + data[scan:]


EXTENSION = b"http://ns.adobe.com/xmp/extension/\x00"


def _extension_of(data: bytes) -> tuple[bytes, set[bytes]]:
    """(the extended XMP packet, the GUIDs its chunks name) of a JPEG."""
    chunks, guids, at = [], set(), data.find(EXTENSION)
    while at >= 0:
        end = at - 2 + int.from_bytes(data[at - 2:at], "big")
        body = data[at + len(EXTENSION):end]
        guids.add(body[:32])
        chunks.append((int.from_bytes(body[36:40], "big"), body[40:]))
        at = data.find(EXTENSION, end)
    return b"".join(chunk for _, chunk in sorted(chunks)), guids


@pytest.mark.parametrize("location", [True, False])
def test_an_extended_xmp_is_stripped_in_place_and_named_anew(location: bool) -> None:
    """Google's cameras keep depth maps and more in an extended XMP, split over segments and named by the
    MD5 of the packet, which the main packet names too: stripped, it is named by its new MD5 everywhere."""
    extension = photos.xmp(location=location, serials=False, people=False)
    guid = hashlib.md5(extension, usedforsecurity=False).hexdigest().upper().encode()
    main = photos.xmp(location=False, serials=False, people=False).replace(
        b"xmp:CreatorTool=", b'xmlns:xmpNote="http://ns.adobe.com/xmp/note/" xmpNote:HasExtendedXMP="' + guid
        + b'" xmp:CreatorTool=')
    out = io.BytesIO()
    photos.pixels(120, 90).save(out, "JPEG", quality=90, xmp=main)
    data = _extended_xmp(out.getvalue(), extension)
    prepared = prepare(data, JPEG, Recipe(strip=("location",)))
    assert prepared.changes == (("location",) if location else ())
    assert len(prepared.data) == len(data)
    assert decoded(prepared.data).tobytes() == decoded(data).tobytes()
    packet, guids = _extension_of(prepared.data)
    new = hashlib.md5(packet, usedforsecurity=False).hexdigest().upper().encode()
    assert guids == {new} and (new == guid) == (not location)
    assert prepared.data.count(new) == 3  # both chunks and the main packet's reference
    assert photos.CITY.encode() not in prepared.data and photos.CREATOR_TOOL.encode() in packet
    found = photos.exiftool(prepared.data)
    if found is not None:  # exiftool joins the extension only when the reference and the MD5 agree
        assert found["XMP-xmpNote:HasExtendedXMP"] == new.decode() and "ExifTool:Warning" not in found
        assert "XMP-photoshop:City" not in found and "XMP-exif:GPSLatitude" not in found


def _multi_picture(first: bytes, second: bytes) -> bytes:
    """``first`` then ``second``, indexed by an MPF segment in ``first`` (CIPA DC-007), as phones write
    previews and gain maps: MP Entry offsets count from the segment's TIFF header."""
    index_at = 8 + 2 + 12 * 3 + 4  # TIFF header, three entries, the next-IFD pointer
    mpf_length = 2 + 4 + index_at + 32
    second_at = 2 + 2 + mpf_length + len(first) - 2
    table = bytes(4) + len(first).to_bytes(4, "big") + bytes(8) + bytes(4) + len(second).to_bytes(4, "big") + (
        second_at - (2 + 2 + 2 + 4)).to_bytes(4, "big") + bytes(4)
    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return tag.to_bytes(2, "big") + kind.to_bytes(2, "big") + count.to_bytes(4, "big") + value

    entries = entry(0xB000, 7, 4, b"0100") + entry(0xB001, 4, 1, (2).to_bytes(4, "big")) + entry(
        0xB002, 7, 32, index_at.to_bytes(4, "big"))
    tiff = b"MM\x00\x2a" + (8).to_bytes(4, "big") + (3).to_bytes(2, "big") + entries + bytes(4) + table
    segment = b"\xff\xe2" + mpf_length.to_bytes(2, "big") + b"MPF\x00" + tiff
    return first[:2] + segment + first[2:] + second


def test_the_images_of_a_multi_picture_jpeg_are_stripped_in_place_too() -> None:
    """Phones store previews, gain maps and depth maps after the image (MPF), each with an EXIF of its own,
    and index them by offset: they are stripped where they are, and nothing moves."""
    second = photos.jpeg(64, 48)
    data = _multi_picture(fixture("plain-jpeg"), second)
    assert Image.open(io.BytesIO(data)).format == "MPO"  # Pillow reads the index as a phone's viewer would
    prepared = prepare(data, JPEG, Recipe())
    assert prepared.changes == ("location", "serials") == inspect(data, JPEG, Recipe())
    assert len(prepared.data) == len(data) and prepared.data[:-len(second)] == data[:-len(second)]
    image = Image.open(io.BytesIO(prepared.data))
    image.seek(1)  # through the index
    assert image.tobytes() == decoded(second).tobytes() and image.getexif()[0x0112] == 6
    assert not image.getexif().get_ifd(0x8825) and photos.BODY_SERIAL.encode() not in prepared.data
    plain = fixture("plain-jpeg") + second  # not indexed: its EXIF as readable, so stripped the same
    assert prepare(plain, JPEG, Recipe()).data[-len(second):] == prepared.data[-len(second):]


def test_png_text_chunks_compressed_or_raw_profiles_are_stripped_too() -> None:
    """ImageMagick keeps EXIF as a hex "Raw profile type exif" text; some writers compress the XMP (zTXt)."""
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    blob = photos.exif(serials=False, people=False).tobytes()  # the Exif signature, then the TIFF block
    text.add_text("Raw profile type exif", f"\nexif\n{len(blob):8d}\n{blob.hex()}\n")
    text.add_itxt("XML:com.adobe.xmp", photos.xmp(serials=False, people=False).decode(), zip=True)
    text.add_text("Title", "A title to keep")
    out = io.BytesIO()
    photos.pixels(40, 30).save(out, "PNG", pnginfo=text)
    prepared = prepare(out.getvalue(), PNG, Recipe())
    assert prepared.changes == ("location",)
    image = decoded(prepared.data)
    assert image.tobytes() == decoded(out.getvalue()).tobytes()
    assert "Raw profile type exif" not in image.info and image.info["Title"] == "A title to keep"
    assert photos.CITY not in image.info["XML:com.adobe.xmp"] and photos.CREATOR_TOOL in image.info["XML:com.adobe.xmp"]


def test_strip_nothing_gives_back_the_very_same_bytes_object() -> None:
    original = fixture("jpeg")
    for content_type, data in ((JPEG, original), (PNG, fixture("png")), (HEIC, fixture("heic"))):
        prepared = prepare(data, content_type, Recipe(strip=()))
        assert prepared.data is data and prepared.changes == () and prepared.content_type == content_type


@pytest.mark.parametrize(("kind", "content_type"), [("plain-jpeg", JPEG), ("gif", GIF)])
def test_a_file_with_nothing_to_strip_is_the_very_same_bytes_object(kind: str, content_type: str) -> None:
    data = fixture(kind)
    prepared = prepare(data, content_type, ALL)
    assert prepared == Prepared(data, content_type, ()) and prepared.data is data


# -- resize and convert ---------------------------------------------------------------------------

def test_max_edge_scales_a_turned_jpeg_down_as_displayed() -> None:
    """400x300 stored, orientation 6 (displayed 300x400), max_edge 200: 150x200, upright, ICC kept, GPS gone."""
    original = fixture("jpeg")
    prepared = prepare(original, JPEG, Recipe(max_edge=200))
    assert prepared.changes == ("location", "serials", "resize:200") and prepared.content_type == JPEG
    image = decoded(prepared.data)
    assert image.format == "JPEG" and image.size == (150, 200)
    assert image.getexif().get(0x0112, 1) == 1
    assert image.info["icc_profile"] == decoded(original).info["icc_profile"]
    assert not image.getexif().get_ifd(0x8825)
    upright = ImageOps.exif_transpose(decoded(original)).resize((150, 200), Image.Resampling.LANCZOS)
    assert difference(image, upright) < 3
    assert difference(image, upright.transpose(Image.Transpose.ROTATE_180)) > 20  # the other way round is wrong


@needs_exiftool
def test_a_resized_jpeg_carries_its_stripped_metadata_over() -> None:
    after = tags(prepare(fixture("jpeg"), JPEG, Recipe(max_edge=200)).data)
    assert (after["File:ImageWidth"], after["File:ImageHeight"], after["IFD0:Orientation"]) == (150, 200, 1)
    assert after["ExifIFD:LensModel"] == photos.LENS_MODEL and after["XMP-xmp:CreatorTool"] == photos.CREATOR_TOOL
    assert not [t for t in (*LOCATION_TAGS, *SERIAL_TAGS) if t in after]
    assert after["ICC_Profile:ProfileDescription"] == "sRGB built-in"


def _with_thumbnail(data: bytes, thumbnail: bytes) -> bytes:
    """The JPEG with an IFD1 holding ``thumbnail``, as cameras write one, after the rest of its EXIF."""
    tiff_at = _tiff_at(data)
    end = tiff_at - 8 + int.from_bytes(data[tiff_at - 8:tiff_at - 6], "big")
    tiff = bytearray(data[tiff_at:end])
    order: Any = "big" if tiff[:2] == b"MM" else "little"
    ifd1 = len(tiff) + len(tiff) % 2
    entries = [(0x0201, ifd1 + 2 + 24 + 4), (0x0202, len(thumbnail))]
    block = len(entries).to_bytes(2, order) + b"".join(
        tag.to_bytes(2, order) + (4).to_bytes(2, order) + (1).to_bytes(4, order) + value.to_bytes(4, order)
        for tag, value in entries) + bytes(4)
    ifd0 = int.from_bytes(tiff[4:8], order)
    next_at = ifd0 + 2 + 12 * int.from_bytes(tiff[ifd0:ifd0 + 2], order)
    tiff[next_at:next_at + 4] = ifd1.to_bytes(4, order)
    tiff += bytes(len(tiff) % 2) + block + thumbnail
    return data[:tiff_at - 8] + (len(tiff) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + tiff + data[end:]


def test_a_thumbnail_is_kept_by_a_strip_and_left_out_of_a_re_encode() -> None:
    """It shows the original, as stored: a re-encode turned upright would carry a thumbnail turned wrong."""
    out = io.BytesIO()
    photos.pixels(16, 12).save(out, "JPEG", quality=50)
    thumbnail = out.getvalue()
    data = _with_thumbnail(fixture("jpeg"), thumbnail)
    assert decoded(data).getexif().get_ifd(0x8769)[0xA434] == photos.LENS_MODEL  # still a good EXIF
    stripped = prepare(data, JPEG, Recipe())
    assert thumbnail in stripped.data and decoded(stripped.data).tobytes() == decoded(data).tobytes()
    resized = prepare(data, JPEG, Recipe(max_edge=200))
    assert thumbnail not in resized.data and decoded(resized.data).size == (150, 200)
    assert decoded(resized.data).getexif().get_ifd(0x8769)[0xA434] == photos.LENS_MODEL


def test_max_edge_never_scales_up() -> None:
    original = fixture("plain-jpeg")
    prepared = prepare(original, JPEG, Recipe(max_edge=1000))
    assert prepared.data is original and prepared.changes == ()


@pytest.mark.parametrize(("kind", "content_type", "lossless"), [("png", PNG, True), ("webp", WEBP, False),
                                                                ("lossless-webp", WEBP, True)])
def test_max_edge_keeps_the_format_and_its_losslessness(kind: str, content_type: str, lossless: bool) -> None:
    prepared = prepare(fixture(kind), content_type, Recipe(max_edge=100))
    assert prepared.content_type == content_type and prepared.changes[-1] == "resize:100"
    image = decoded(prepared.data)
    assert image.size == (67, 100)  # 300x200 turned by orientation 6
    assert (content_type == PNG or b"VP8L" in webp_chunks(prepared.data)) == lossless
    assert image.info.get("icc_profile") == photos.icc_profile()


@pytest.mark.parametrize(("kind", "content_type"), [("heic", HEIC), ("avif", AVIF)])
def test_heic_and_avif_become_an_upright_jpeg(kind: str, content_type: str) -> None:
    original = fixture(kind)
    recipe = Recipe(convert_to_jpeg=("avif", "heic"))
    prepared = prepare(original, content_type, recipe)
    assert prepared.content_type == JPEG and prepared.changes == ("location", "serials", "jpeg")
    image = decoded(prepared.data)
    assert image.format == "JPEG" and image.size == (300, 400)
    assert image.getexif().get(0x0112, 1) == 1 and not image.getexif().get_ifd(0x8825)
    assert difference(image, ImageOps.exif_transpose(decoded(original))) < 4
    both = prepare(original, content_type, Recipe(max_edge=200, convert_to_jpeg=("avif", "heic")))
    assert both.changes == ("location", "serials", "resize:200", "jpeg")
    assert decoded(both.data).size == (150, 200)


def test_alpha_is_laid_on_white_when_converted() -> None:
    prepared = prepare(fixture("alpha-png"), PNG, Recipe(convert_to_jpeg=("png",)))
    image = decoded(prepared.data)
    assert image.mode == "RGB"
    top = image.crop((0, 0, image.width, 1))  # the fixture's alpha is 0 along the top row
    assert min(ImageStat.Stat(top).mean) > 240


def test_an_unknown_type_and_gif_resizing_are_left_alone() -> None:
    with pytest.raises(PrepareError, match="image/bmp"):
        prepare(b"BM....", "image/bmp", Recipe())
    gif = fixture("gif")
    assert prepare(gif, GIF, Recipe(max_edge=10)).data is gif


def _plain_webp(lossless: bool) -> bytes:
    """A simple WebP (no VP8X, no metadata), as most encoders write one."""
    out = io.BytesIO()
    photos.pixels(300, 200).save(out, "WEBP", lossless=lossless, quality=80)
    return out.getvalue()


def _png_with(keyword: str, value: str, *, zipped: bool = False) -> bytes:
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    if zipped:
        text.add_itxt(keyword, value, zip=True)
    else:
        text.add_text(keyword, value)
    out = io.BytesIO()
    photos.pixels(40, 30).save(out, "PNG", pnginfo=text)
    return out.getvalue()


def _raw_profile(name: str, blob: bytes) -> str:
    return f"\n{name}\n{len(blob):8d}\n{blob.hex()}\n"


@pytest.mark.parametrize(("data", "content_type", "recipe", "changes"), [
    pytest.param(_plain_webp(False), WEBP, Recipe(max_edge=100), ("resize:100",), id="simple lossy WebP"),
    pytest.param(_plain_webp(True), WEBP, Recipe(max_edge=100), ("resize:100",), id="simple lossless WebP"),
    pytest.param(_png_with("Raw profile type xmp", _raw_profile("xmp", photos.xmp())), PNG, Recipe(),
                 ("location", "serials"), id="PNG raw XMP profile"),
    pytest.param(_png_with("Raw profile type iptc", _raw_profile("iptc", photos.iptc_segment()[4:])), PNG,
                 Recipe(strip=("people",)), ("people",), id="PNG raw IPTC profile"),
    pytest.param(_png_with("Raw profile type icc", _raw_profile("icc", b"\x00" * 16)), PNG, ALL, (),
                 id="PNG raw profile of another kind"),
    pytest.param(_png_with("Author", photos.ARTIST, zipped=True), PNG, ALL, ("people",), id="PNG compressed Author"),
    pytest.param(_png_with("XML:com.adobe.xmp", photos.xmp().decode()), PNG, ALL,
                 ("location", "people", "serials"), id="PNG XMP in tEXt"),
])
def test_other_forms_of_the_same_metadata(data: bytes, content_type: str, recipe: Recipe,
                                          changes: tuple[str, ...]) -> None:
    prepared = prepare(data, content_type, recipe)
    assert prepared.changes == changes == inspect(data, content_type, recipe)
    if "resize:100" in changes:
        assert decoded(prepared.data).size == (100, 67)
        assert (b"VP8L" in webp_chunks(prepared.data)) == (b"VP8L" in webp_chunks(data))
    else:
        assert decoded(prepared.data).tobytes() == decoded(data).tobytes()
        assert photos.CITY.encode() not in prepared.data or "location" not in changes
        assert photos.ARTIST.encode() not in prepared.data or "people" not in changes


def test_fill_bytes_between_jpeg_segments_are_kept() -> None:
    data = fixture("jpeg")
    filled = data[:2] + b"\xff\xff" + data[2:]  # markers may be preceded by any number of 0xFF
    prepared = prepare(filled, JPEG, Recipe())
    assert prepared.changes == ("location", "serials")
    assert prepared.data[2:4] == b"\xff\xff"
    assert decoded(prepared.data).tobytes() == decoded(data).tobytes()


@pytest.mark.parametrize(("data", "reason"), [
    (_png_with("Raw profile type exif", "\nexif\n      8\nnot hex!\n"), "not hexadecimal"),
    (_png_with("Raw profile type exif", "exif"), "malformed"),
    (_png_with("Author", photos.ARTIST, zipped=True).replace(b"x\x9c", b"x\x00", 1), "corrupt"),
])
def test_a_broken_png_text_chunk_is_a_prepare_error(data: bytes, reason: str) -> None:
    with pytest.raises(PrepareError, match=reason):
        prepare(data, PNG, ALL)


# -- the invariants -------------------------------------------------------------------------------

CASES = [
    ("jpeg", JPEG, Recipe()), ("jpeg", JPEG, ALL), ("jpeg", JPEG, Recipe(strip=("people",))),
    ("jpeg", JPEG, Recipe(max_edge=200)), ("jpeg", JPEG, Recipe(strip=(), max_edge=350)),
    ("plain-jpeg", JPEG, ALL), ("plain-jpeg", JPEG, Recipe(max_edge=100)),
    ("png", PNG, Recipe()), ("png", PNG, Recipe(max_edge=100, convert_to_jpeg=("png",))),
    ("webp", WEBP, ALL), ("lossless-webp", WEBP, Recipe(max_edge=150)),
    ("heic", HEIC, Recipe()), ("heic", HEIC, Recipe(max_edge=100)), ("heic", HEIC, Recipe(convert_to_jpeg=("heic",))),
    ("avif", AVIF, Recipe(strip=(), convert_to_jpeg=("avif",))), ("gif", GIF, ALL),
]


@pytest.mark.parametrize(("kind", "content_type", "recipe"), CASES)
def test_inspect_says_exactly_what_prepare_changes(kind: str, content_type: str, recipe: Recipe) -> None:
    data = fixture(kind)
    prepared = prepare(data, content_type, recipe)
    assert inspect(data, content_type, recipe) == prepared.changes
    assert (prepared.data is data) == (prepared.changes == ())
    assert list(prepared.changes) == sorted(c for c in prepared.changes if c in STRIP_CATEGORIES) + [
        c for c in prepared.changes if c not in STRIP_CATEGORIES]
    assert prepare(data, content_type, recipe).data == prepared.data  # again: the same bytes


def test_the_same_bytes_in_a_fresh_process(tmp_path: Path) -> None:
    """Adoption after a lost state compares prepared bytes: another process must make exactly these."""
    jobs = [("jpeg", JPEG, Recipe(max_edge=200)), ("png", PNG, Recipe(max_edge=100, convert_to_jpeg=("png",))),
            ("lossless-webp", WEBP, Recipe(max_edge=150)), ("heic", HEIC, Recipe(convert_to_jpeg=("heic",))),
            ("jpeg", JPEG, ALL)]
    here = []
    for index, (kind, content_type, recipe) in enumerate(jobs):
        (tmp_path / f"{index}.in").write_bytes(fixture(kind))
        here.append(hashlib.sha256(prepare(fixture(kind), content_type, recipe).data).hexdigest())
    script = (
        "import hashlib, sys\nfrom packsync.prepare import Recipe, prepare\n"
        f"jobs = {[(ct, r.strip, r.max_edge, r.convert_to_jpeg) for _, ct, r in jobs]!r}\n"
        "for i, (ct, strip, edge, jpeg) in enumerate(jobs):\n"
        f"    data = open(f'{tmp_path}/{{i}}.in', 'rb').read()\n"
        "    print(hashlib.sha256(prepare(data, ct, Recipe(strip, edge, jpeg)).data).hexdigest())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == here


def test_threads_preparing_at_once_make_the_same_bytes() -> None:
    """The engine prepares in worker threads: nothing shared (a parser, a namespace registry) may leak between them."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(kind, content_type, recipe) for kind, content_type, recipe in CASES if kind != "gif"] * 2
    alone = [prepare(fixture(k), ct, r).data for k, ct, r in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda job: prepare(fixture(job[0]), job[1], job[2]).data, jobs))
    assert together == alone


def test_a_lossless_strip_never_imports_pillow(tmp_path: Path) -> None:
    """Pillow and pillow-heif load only for a re-encode: a JPEG or a HEIC stripped in place needs neither."""
    script = ("import sys\n"
              "data = open(sys.argv[1], 'rb').read()\n"
              "import packsync.prepare as p\n"
              "for content_type in ('image/jpeg',):\n"
              "    assert p.prepare(data, content_type, p.Recipe()).changes == ('location', 'serials')\n"
              "    assert p.inspect(data, content_type, p.Recipe()) == ('location', 'serials')\n"
              "heic = open(sys.argv[2], 'rb').read()\n"
              "assert p.prepare(heic, 'image/heic', p.Recipe()).changes == ('location', 'serials')\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PIL', 'pillow_heif')))\n")
    (tmp_path / "a.jpg").write_bytes(fixture("jpeg"))
    (tmp_path / "a.heic").write_bytes(fixture("heic"))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.jpg"), str(tmp_path / "a.heic")],
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


# -- bad input ------------------------------------------------------------------------------------

def _tiff_at(data: bytes) -> int:
    return data.index(b"Exif\x00\x00") + 6


def _with_ifd0_next(data: bytes, value: int) -> bytes:
    """The JPEG with IFD0's next-directory pointer set to ``value`` (relative to the TIFF header)."""
    tiff = _tiff_at(data)
    ifd0 = int.from_bytes(data[tiff + 4:tiff + 8], "big")
    count = int.from_bytes(data[tiff + ifd0:tiff + ifd0 + 2], "big")
    at = tiff + ifd0 + 2 + 12 * count
    return data[:at] + value.to_bytes(4, "big") + data[at + 4:]


def _ifd0_offset(data: bytes) -> int:
    tiff = _tiff_at(data)
    return int.from_bytes(data[tiff + 4:tiff + 8], "big")


def _huge(data: bytes) -> bytes:
    """The JPEG claiming 20000x20000 pixels in its frame header."""
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + (20000).to_bytes(2, "big") * 2 + data[at + 9:]


def _box(kind: bytes, body: bytes) -> bytes:
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def _endless_heif(_: bytes) -> bytes:
    """A HEIC whose item locations claim 60000 items of 65535 empty extents each: refused, not walked."""
    infe = _box(b"infe", b"\x02\x00\x00\x00" + (1).to_bytes(2, "big") + b"\x00\x00Exif\x00")
    iinf = _box(b"iinf", bytes(4) + (1).to_bytes(2, "big") + infe)
    items = b"".join(i.to_bytes(2, "big") + b"\x00\x00\xff\xff" for i in range(1, 60001))
    iloc = _box(b"iloc", bytes(4) + b"\x00\x00" + (60000).to_bytes(2, "big") + items)
    return _box(b"ftyp", b"heic\x00\x00\x00\x00mif1heic") + _box(b"meta", bytes(4) + iinf + iloc)


BAD: list[tuple[str, Callable[[bytes], bytes], str, Recipe, str]] = [
    ("not a JPEG", lambda d: b"GIF89a" + d, JPEG, Recipe(), "not a JPEG"),
    ("cut in its segments", lambda d: d[:300], JPEG, Recipe(), "cut short"),
    ("EXIF directories in a loop", lambda d: _with_ifd0_next(d, _ifd0_offset(d)), JPEG, Recipe(), "overlap or loop"),
    ("an IFD beyond the EXIF", lambda d: _with_ifd0_next(d, 0x7FFFFFF0), JPEG, Recipe(), "EXIF data is cut short"),
    ("XMP with a DTD", lambda d: d.replace(b"<x:xmpmeta", b"<!DOCTYPE x [<!ENTITY a 'b'>]><x:xmpmeta", 1)
     .replace(b" " * 200, b" " * (200 - 38), 1), JPEG, Recipe(), "DTD"),
    ("XMP not well-formed", lambda d: d.replace(b"</photoshop:City>", b"</photoshop:Cityy", 1), JPEG, Recipe(),
     "XMP packet is not well-formed"),
    ("scan data cut short", lambda d: d[:d.index(b"\xff\xda") + 400], JPEG,
     Recipe(max_edge=100), "cannot decode the JPEG image"),
    ("too many megapixels", _huge, JPEG, Recipe(max_edge=100), "400 megapixels; packsync prepares at most 250"),
    ("a PNG cut short", lambda d: fixture("png")[:5000], PNG, Recipe(), "cut short"),
    ("a WebP cut short", lambda d: fixture("webp")[:100], WEBP, Recipe(), "cut short"),
    ("a HEIC that is not", lambda d: b"\x00\x00\x00\x18ftypheic" + bytes(40), HEIC, Recipe(convert_to_jpeg=("heic",)),
     "cannot decode the HEIC image"),
    ("a HEIC listing endless extents", _endless_heif, HEIC, Recipe(), "too many item extents"),
    ("a HEIC with no meta", lambda d: b"\x00\x00\x00\x10ftypheic\x00\x00\x00\x00", HEIC, Recipe(), "no meta box"),
]


@pytest.mark.parametrize(("what", "spoil", "content_type", "recipe", "reason"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_is_a_prepare_error_with_its_reason(what: str, spoil: Callable[[bytes], bytes],
                                                       content_type: str, recipe: Recipe, reason: str) -> None:
    data = spoil(fixture("jpeg"))
    with pytest.raises(PrepareError, match=reason) as caught:
        prepare(data, content_type, recipe)
    assert str(caught.value).count(". ") == 0  # one sentence
    if "decode" not in reason:  # inspect reads no pixels, so finds all but a broken scan
        with pytest.raises(PrepareError, match=reason):
            inspect(data, content_type, recipe)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from([("jpeg", JPEG), ("multi-picture", JPEG), ("png", PNG), ("webp", WEBP), ("heic", HEIC)]),
       flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                      min_size=1, max_size=8),
       resize=st.booleans())
# A Multi-Picture index pointing 16 MB past the file's end: an IndexError, found by this test in a full run.
@example(kind=("multi-picture", JPEG), flips=[(68, 1)], resize=False)
def test_flipped_bytes_give_a_result_or_a_prepare_error_never_another_exception(
        kind: tuple[str, str], flips: list[tuple[int, int]], resize: bool) -> None:
    data = bytearray(fixture(kind[0]))
    metadata_end = min(len(data), 4000)  # most flips land where the metadata is, which packsync parses
    for where, value in flips:
        data[where % metadata_end] = value
    recipe = Recipe(strip=STRIP_CATEGORIES, max_edge=120 if resize else 0,
                    convert_to_jpeg=("heic",) if resize else ())
    try:
        prepared = prepare(bytes(data), kind[1], recipe)
    except PrepareError as exc:
        assert str(exc)
    else:
        assert inspect(bytes(data), kind[1], recipe) == prepared.changes
