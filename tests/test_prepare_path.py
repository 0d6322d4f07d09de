"""A file prepared from disk (``packsync.prepare.prepare_path``): its parts -- edited bytes and spans of the
file -- joined are ``prepare``'s output byte for byte; a file changed since it was scanned is ``ItemChanged``;
a 200 MB file is stripped in a few MB of memory, however large it is.

The memory is measured in a child process of its own (its ``VmHWM`` before and after, from /proc), so the
bound cannot flake: a whole read would raise it by the file's size, a ranged one by a few chunks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import photos
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hostile_prepared import _gif_with_xmp, leaked
from test_prepare import ALL, AVIF, GIF, HEIC, JPEG, PNG, WEBP, _extended_xmp, fixture

from packsync.errors import ItemChanged, PrepareError
from packsync.prepare import (
    PreparedFile,
    Recipe,
    Span,
    inspect,
    inspect_path,
    iter_chunks,
    prepare,
    prepare_path,
)
from packsync.prepare.base import MAX_METADATA
from packsync.prepare.reader import CHUNK

MB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, start, end) of each PNG chunk."""
    pos = 8
    while pos < len(data):
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        yield data[pos + 4:pos + 8], pos, end
        pos = end


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def metadata_after_the_image(data: bytes) -> bytes:
    """The PNG with its XMP (iTXt) and its Author (tEXt) moved after the image data, where PNG allows them
    and readers find them."""
    before, after, end = [], [], b""
    for kind, start, stop in chunks(data):
        chunk = data[start:stop]
        if kind == b"IEND":
            end = chunk
        elif kind in (b"iTXt", b"tEXt"):
            after.append(chunk)
        else:
            before.append(chunk)
    return data[:8] + b"".join(before) + b"".join(after) + end


def progressive_with_a_later_exif() -> bytes:
    out = io.BytesIO()
    photos.pixels(64, 48).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    second = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    block = photos.exif().tobytes()
    return data[:second] + b"\xff\xe1" + (len(block) + 2).to_bytes(2, "big") + block + data[second:]


def extended_xmp() -> bytes:
    return _extended_xmp(photos.jpeg(120, 90), photos.xmp(serials=False, people=False))


CASES: list[tuple[str, Callable[[], bytes], str, Recipe]] = [
    ("JPEG with EXIF GPS", lambda: fixture("jpeg"), JPEG, Recipe()),
    ("JPEG, all categories", lambda: fixture("jpeg"), JPEG, ALL),
    ("Multi-Picture, a second image's EXIF", lambda: fixture("multi-picture"), JPEG, Recipe()),
    ("a JPEG appended without an index", lambda: photos.jpeg(64, 48) + photos.jpeg(32, 24, iptc=False), JPEG,
     Recipe()),
    ("an extended XMP", extended_xmp, JPEG, Recipe()),
    ("an EXIF between the scans of a progressive JPEG", progressive_with_a_later_exif, JPEG, Recipe()),
    ("PNG, eXIf and iTXt before the image data", lambda: fixture("png"), PNG, ALL),
    ("PNG, iTXt and tEXt after the image data", lambda: metadata_after_the_image(fixture("png")), PNG, ALL),
    ("PNG with a JPEG appended", lambda: photos.png(32, 24) + photos.jpeg(32, 24, iptc=False), PNG, Recipe()),
    ("WebP", lambda: fixture("webp"), WEBP, ALL),
    ("lossless WebP", lambda: fixture("lossless-webp"), WEBP, Recipe()),
    ("GIF with XMP", _gif_with_xmp, GIF, Recipe()),
    ("GIF with a JPEG appended", lambda: photos.gif(32, 24) + photos.jpeg(32, 24, iptc=False), GIF, Recipe()),
    ("nothing to strip", lambda: fixture("plain-jpeg"), JPEG, ALL),
    ("a GIF with nothing to strip", lambda: fixture("gif"), GIF, ALL),
    ("a strip of nothing", lambda: fixture("jpeg"), JPEG, Recipe(strip=())),
    ("HEIC, its items edited in place", lambda: fixture("heic"), HEIC, ALL),
    ("HEIC, nothing asked", lambda: fixture("heic"), HEIC, Recipe(strip=(), max_edge=100)),
    ("a resize, read whole", lambda: fixture("jpeg"), JPEG, Recipe(max_edge=200)),
    ("AVIF converted, read whole", lambda: fixture("avif"), AVIF, Recipe(convert_to_jpeg=("avif",))),
]


def output(file: Path, prepared: PreparedFile, chunk: int = 1 << 20) -> bytes:
    with file.open("rb") as handle:
        return b"".join(iter_chunks(handle.fileno(), prepared.parts, chunk))


@pytest.mark.parametrize(("what", "make", "content_type", "recipe"), CASES, ids=[c[0] for c in CASES])
def test_the_parts_joined_are_prepares_output_byte_for_byte(tmp_path: Path, what: str, make: Callable[[], bytes],
                                                            content_type: str, recipe: Recipe) -> None:
    data = make()
    file = tmp_path / "photo"
    file.write_bytes(data)
    expected = prepare(data, content_type, recipe)

    prepared = prepare_path(file, len(data), content_type, recipe, expected_sha256=sha256(data))

    assert output(file, prepared) == expected.data
    assert (prepared.size, prepared.sha256) == (len(expected.data), sha256(expected.data))
    assert (prepared.changes, prepared.content_type) == (expected.changes, expected.content_type)
    assert prepared.source_sha256 == sha256(data)
    assert inspect_path(file, len(data), content_type, recipe) == inspect(data, content_type, recipe)
    spans = [p for p in prepared.parts if isinstance(p, Span)]
    assert spans == sorted(spans, key=lambda s: s.offset), "the spans follow the file's order"
    ranged = not any(c == "jpeg" or c.startswith("resize:") for c in expected.changes)
    if not expected.changes:
        assert prepared.parts == (Span(0, len(data)),), "nothing changed: the file as it is"
    elif ranged:
        assert any(isinstance(p, Span) for p in prepared.parts), "a strip passes the image data on unread"
    else:
        assert prepared.parts == (expected.data,), "decoded, re-encoded: the one piece of new bytes"


def test_small_chunks_and_a_descriptor_give_the_same_output(tmp_path: Path) -> None:
    """``iter_chunks`` cuts spans and edited bytes alike at the chunk size; a descriptor given is left open."""
    data = fixture("multi-picture")
    file = tmp_path / "photo.jpg"
    file.write_bytes(data)
    fd = os.open(file, os.O_RDONLY)
    try:
        prepared = prepare_path(fd, len(data), JPEG, Recipe())
        pieces = list(iter_chunks(fd, prepared.parts, 1000))
        os.fstat(fd)  # still open
    finally:
        os.close(fd)
    assert b"".join(pieces) == prepare(data, JPEG, Recipe()).data
    assert max(map(len, pieces)) == 1000 and len(pieces) > len(prepared.parts)


# -- a file that changed ---------------------------------------------------------------------------------

def test_a_file_shorter_or_longer_than_scanned_is_item_changed(tmp_path: Path) -> None:
    data = fixture("jpeg")
    file = tmp_path / "photo.jpg"
    file.write_bytes(data)
    for size in (len(data) + 10, len(data) - 10):
        with pytest.raises(ItemChanged, match="^changed since it was scanned; it will be synced on the next run$"):
            prepare_path(file, size, JPEG, Recipe())
        with pytest.raises(ItemChanged, match="changed since it was scanned"):
            inspect_path(file, size, JPEG, Recipe())


def test_a_file_with_other_bytes_than_scanned_is_item_changed(tmp_path: Path) -> None:
    data = fixture("jpeg")
    file = tmp_path / "photo.jpg"
    file.write_bytes(data)
    with pytest.raises(ItemChanged, match="changed since it was scanned"):
        prepare_path(file, len(data), JPEG, Recipe(), expected_sha256=sha256(data[:-1] + b"\x00"))
    with pytest.raises(ItemChanged, match="changed since it was scanned"):  # a resize reads it whole: the same check
        prepare_path(file, len(data), JPEG, Recipe(max_edge=100), expected_sha256=sha256(b"other"))


def test_a_file_cut_short_after_it_was_prepared_is_item_changed_as_it_streams(tmp_path: Path) -> None:
    """The upload reads the spans again: a file truncated since (a short ``pread``, never a SIGBUS as under
    a mapping) ends the stream with ``ItemChanged``."""
    data = fixture("png")
    file = tmp_path / "photo.png"
    file.write_bytes(data)
    prepared = prepare_path(file, len(data), PNG, Recipe())
    with file.open("r+b") as handle:
        handle.truncate(len(data) // 2)
        with pytest.raises(ItemChanged, match="changed since it was scanned"):
            b"".join(iter_chunks(handle.fileno(), prepared.parts))


def test_a_file_gone_is_item_changed(tmp_path: Path) -> None:
    with pytest.raises(ItemChanged, match=r"^cannot read it any more \(No such file or directory\)$"):
        prepare_path(tmp_path / "gone.jpg", 100, JPEG, Recipe())


# -- bounds ---------------------------------------------------------------------------------------------

def png_with(*extra: bytes) -> bytes:
    """A small real PNG with ``extra`` chunks before its image data."""
    data = photos.png(32, 24, gps=False, serials=False, people=False, xmp_location=False)
    idat = data.index(b"IDAT") - 4
    return data[:idat] + b"".join(extra) + data[idat:]


def test_a_large_text_chunk_of_another_keyword_is_passed_on_unread(tmp_path: Path) -> None:
    """A 20 MB tEXt "Comment" (a generator's workflow, say) is not metadata packsync strips: a span."""
    comment = png_chunk(b"tEXt", b"Comment\x00" + b"x" * (20 * MB))
    data = png_with(comment, png_chunk(b"tEXt", b"Author\x00" + photos.ARTIST.encode()))
    file = tmp_path / "big.png"
    file.write_bytes(data)
    prepared = prepare_path(file, len(data), PNG, ALL)
    assert prepared.changes == ("people",)
    assert sum(len(p) for p in prepared.parts if isinstance(p, bytes)) == 0, "the Author chunk dropped, no bytes read"
    assert output(file, prepared) == prepare(data, PNG, ALL).data


def test_a_metadata_chunk_past_the_limit_is_refused_before_it_is_read() -> None:
    packet = photos.xmp().replace(b"</x:xmpmeta>", b" " * (MAX_METADATA + 1) + b"</x:xmpmeta>")
    data = png_with(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + packet))
    with pytest.raises(PrepareError, match="^a PNG metadata chunk is larger than 16 MB$"):
        prepare(data, PNG, Recipe())


# -- memory --------------------------------------------------------------------------------------------

def giant_jpeg(file: Path, size: int) -> None:
    """A real JPEG with EXIF GPS and serials, its scan grown to ``size`` bytes of valid entropy-coded data
    (zeros: no marker among them)."""
    data = photos.jpeg(64, 48)
    with file.open("wb") as out:
        out.write(data[:-2])
        for _ in range((size - len(data)) // MB):
            out.write(bytes(MB))
        out.write(data[-2:])  # EOI


def giant_png(file: Path, edge: int) -> None:
    """A valid ``edge`` x ``edge`` RGB PNG (black: its IDAT stored deflate blocks, in 1 MB chunks) with the
    metadata of a real one: eXIf before the image data, its XMP and Author after it."""
    small = photos.png(32, 24)
    before = [small[start:end] for kind, start, end in chunks(small) if kind in (b"iCCP", b"eXIf")]
    after = [small[start:end] for kind, start, end in chunks(small) if kind in (b"iTXt", b"tEXt")]
    header = png_chunk(b"IHDR", edge.to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00")
    raw, block = edge * (1 + 3 * edge), 65535
    with file.open("wb") as out:
        out.write(small[:8] + header + b"".join(before))
        stream, adler, left = bytearray(b"\x78\x01"), 1, raw
        while left:
            n = min(block, left)
            left -= n
            stream += bytes([left == 0]) + n.to_bytes(2, "little") + (n ^ 0xFFFF).to_bytes(2, "little") + bytes(n)
            adler = zlib.adler32(bytes(n), adler)
            if not left:
                stream += adler.to_bytes(4, "big")
            while len(stream) >= MB or (not left and stream):
                out.write(png_chunk(b"IDAT", bytes(stream[:MB])))
                del stream[:MB]
        out.write(b"".join(after) + png_chunk(b"IEND", b""))


MEASURE = """
import json, sys
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
from packsync.prepare import Recipe, Span, prepare_path
before = peak()
prepared = prepare_path(sys.argv[1], int(sys.argv[2]), sys.argv[3], Recipe())
print(json.dumps({"rise": peak() - before, "changes": prepared.changes, "size": prepared.size,
                  "sha256": prepared.sha256, "parts": len(prepared.parts),
                  "held": sum(len(p) for p in prepared.parts if not isinstance(p, Span)),
                  "pillow": any(m.split(".")[0] in ("PIL", "pillow_heif") for m in sys.modules)}))
"""


def giant_heic(file: Path, size: int) -> None:
    """A real HEIC with EXIF and XMP items, grown to ``size`` bytes by a ``free`` box after its image data
    (which readers skip)."""
    data = photos.heic(64, 48)
    with file.open("wb") as out:
        out.write(data + (size - len(data)).to_bytes(4, "big") + b"free")
        for _ in range((size - len(data) - 8) // MB):
            out.write(bytes(MB))
        out.write(bytes((size - len(data) - 8) % MB))


GIANTS: dict[str, Callable[[Path], None]] = {
    JPEG: lambda file: giant_jpeg(file, 200 * MB), PNG: lambda file: giant_png(file, 8192),
    HEIC: lambda file: giant_heic(file, 200 * MB),
}


@pytest.mark.parametrize("content_type", list(GIANTS))
def test_a_200_mb_file_is_stripped_in_a_few_mb(tmp_path: Path, content_type: str) -> None:
    """Read whole, a 200 MB file raises the peak RSS by 200 MB at least; by range, by a few chunks."""
    file = tmp_path / "giant"
    GIANTS[content_type](file)
    size = file.stat().st_size
    assert size > 190 * MB

    done = subprocess.run([sys.executable, "-c", MEASURE, str(file), str(size), content_type], capture_output=True,
                          text=True, check=True, timeout=300)
    measured = json.loads(done.stdout)

    assert measured["rise"] < 24 * MB, f"peak RSS rose by {measured['rise'] / MB:.1f} MB for a {size / MB:.0f} MB file"
    assert measured["changes"] == ["location", "serials"] and not measured["pillow"]
    assert measured["held"] < 256 * 1024 and measured["parts"] < 16
    prepared_sha, head, tail, length = hashlib.sha256(), b"", b"", 0
    with file.open("rb") as handle:
        prepared = prepare_path(handle.fileno(), size, content_type, Recipe())
        for piece in iter_chunks(handle.fileno(), prepared.parts):
            prepared_sha.update(piece)
            head, tail = (head + piece)[:MB] if len(head) < MB else head, (tail + piece)[-MB:]
            length += len(piece)
    assert (prepared_sha.hexdigest(), length) == (measured["sha256"], measured["size"])
    assert leaked(head) == [] and leaked(tail) == [], "no location or serial left where the metadata was"
    with file.open("rb") as handle:
        original = handle.read(MB) + os.pread(handle.fileno(), MB, size - MB)
    assert leaked(original), "the file held them"


def test_more_edited_metadata_than_the_limit_is_refused_not_held() -> None:
    """A crafted JPEG of hundreds of 64 KB EXIF segments, each with a location to strip: the edited bytes
    would all be held until the upload, so past ``MAX_METADATA`` the file is refused."""
    block = photos.exif().tobytes()[6:]
    segment_body = b"Exif\x00\x00" + block + bytes(65000 - len(block))
    segment = b"\xff\xe1" + (len(segment_body) + 2).to_bytes(2, "big") + segment_body
    plain = fixture("plain-jpeg")
    data = plain[:2] + segment * (MAX_METADATA // len(segment) + 1) + plain[2:]
    with pytest.raises(PrepareError, match="^the file's metadata to edit is larger than 16 MB$"):
        prepare(data, JPEG, Recipe())


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from([("jpeg", JPEG), ("multi-picture", JPEG), ("png", PNG), ("webp", WEBP), ("heic", HEIC)]),
       flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                      min_size=1, max_size=8))
def test_a_spoilt_file_gives_the_same_result_or_the_same_error_from_disk(kind: tuple[str, str],
                                                                         flips: list[tuple[int, int]]) -> None:
    """One walk over bytes and over a file: whatever ``prepare`` makes of the bytes, ``prepare_path`` makes
    of the file, refusals included."""
    data = bytearray(fixture(kind[0]))
    for where, value in flips:
        data[where % min(len(data), 4000)] = value
    spoilt = bytes(data)
    try:
        expected: bytes | str = prepare(spoilt, kind[1], ALL).data
    except PrepareError as exc:
        expected = str(exc)
    with tempfile.TemporaryFile() as file:
        file.write(spoilt)
        file.flush()
        try:
            prepared = prepare_path(file.fileno(), len(spoilt), kind[1], ALL)
        except PrepareError as exc:
            assert str(exc) == expected
        else:
            assert b"".join(iter_chunks(file.fileno(), prepared.parts)) == expected


def exif_segment() -> bytes:
    block = photos.exif().tobytes()
    return b"\xff\xe1" + (len(block) + 2).to_bytes(2, "big") + block


@pytest.mark.parametrize(("later", "shift"), [("jpeg", -3), ("jpeg", -2), ("jpeg", -1), ("jpeg", 0), ("jpeg", 1),
                                              ("app1", -1), ("app1", 0)])
def test_an_image_or_segment_across_the_border_of_two_chunks_read_is_found(tmp_path: Path, later: str,
                                                                           shift: int) -> None:
    """The scan for later images and segments reads a chunk at a time: a marker that straddles two chunks
    is found all the same. (The first image has nothing to strip; the second's IPTC city is stripped only
    if its start of image is found, its EXIF APP1 segment is found on its own too.)"""
    plain, second = fixture("plain-jpeg"), photos.jpeg(32, 24) if later == "jpeg" else exif_segment()
    scan = plain.index(b"\xff\xda")
    first = plain[:-2] + bytes(scan + CHUNK + shift - len(plain)) + plain[-2:]  # its scan grown with zeros
    data = first + second
    file = tmp_path / "photo.jpg"
    file.write_bytes(data)
    prepared = prepare_path(file, len(data), JPEG, Recipe())
    assert prepared.changes == ("location", "serials")
    assert leaked(output(file, prepared)[-len(second):]) == [] and leaked(second)


@pytest.mark.parametrize("shift", [-7, -1, 0])
def test_a_gifs_xmp_across_the_border_of_two_chunks_read_is_found(tmp_path: Path, shift: int) -> None:
    """(Bytes put before the XMP extension, where a decoder would not have them: what matters here is the
    search, which reads a chunk at a time.)"""
    gif = _gif_with_xmp()
    at = gif.index(b"\x21\xff\x0bXMP DataXMP")
    data = gif[:at] + bytes(CHUNK + shift - at) + gif[at:]
    file = tmp_path / "photo.gif"
    file.write_bytes(data)
    prepared = prepare_path(file, len(data), GIF, Recipe())
    assert prepared.changes == ("location", "serials")
    assert leaked(output(file, prepared)) == []


def heic_with_two_items_on_one_extent() -> bytes:
    """The fixture's HEIC with its XMP item made a second EXIF item whose extent is the first's."""
    data = bytearray(photos.heic(64, 48))
    at = data.index(b"iloc") + 4
    assert data[at:at + 6] == b"\x00\x00\x00\x00\x44\x40"  # version 0; offsets, lengths and bases of 4 bytes
    items = {int.from_bytes(data[pos:pos + 2], "big"): pos for pos in range(at + 8, at + 8 + 3 * 18, 18)}
    exif_item, xmp_item = items[2], items[3]
    data[xmp_item + 4:xmp_item + 18] = data[exif_item + 4:exif_item + 18]  # base, one extent, offset, length
    mime = data.index(b"mime\x00application/rdf+xml")
    data[mime:mime + 4] = b"Exif"
    return bytes(data)


def test_heif_metadata_items_sharing_bytes_are_refused(tmp_path: Path) -> None:
    """Edited in place, two items over the same bytes could not both be right: a crafted file, refused."""
    data = heic_with_two_items_on_one_extent()
    with pytest.raises(PrepareError, match="^the HEIF metadata items overlap$"):
        prepare(data, HEIC, Recipe())
    file = tmp_path / "photo.heic"
    file.write_bytes(data)
    with pytest.raises(PrepareError, match="^the HEIF metadata items overlap$"):
        prepare_path(file, len(data), HEIC, Recipe())
