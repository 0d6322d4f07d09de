"""What a file's bytes are: the sniffed type, the verdict on whole files, and the one-pass digest."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest

from packsync.model import SUPPORTED
from packsync.sandbox.imaging import solid_png
from packsync.sources.media import Digest, Digester, digest_file, judge, sniff

PNG = solid_png(4, 3, (200, 10, 10))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200) + b"\xff\xd9"
GIF = b"GIF89a" + bytes(40) + b";"
WEBP = b"RIFF" + struct.pack("<I", 4 + 30) + b"WEBP" + bytes(30)
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40)
HEIF = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1miaf" + bytes(40)
# What libavif writes: major brand avif, and mif1 among the compatible brands.
AVIF = b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00avifmif1miafMA1B" + bytes(40)


@pytest.mark.parametrize(("head", "content_type"), [
    pytest.param(JPEG, "image/jpeg", id="jpeg"),
    pytest.param(PNG, "image/png", id="png"),
    pytest.param(b"GIF87a" + bytes(10), "image/gif", id="gif87a"),
    pytest.param(GIF, "image/gif", id="gif89a"),
    pytest.param(WEBP, "image/webp", id="webp"),
    pytest.param(HEIC, "image/heic", id="heic"),
    pytest.param(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00heic" + bytes(8), "image/heic",
                 id="heic as a compatible brand"),
    pytest.param(HEIF, "image/heif", id="heif"),
    pytest.param(b"", None, id="nothing"),
    pytest.param(b"hello, world", None, id="text"),
    pytest.param(b"BM" + bytes(60), None, id="bmp"),
    pytest.param(b"II*\x00" + bytes(60), None, id="tiff"),
    pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", None, id="svg"),
    pytest.param(b"RIFF\x10\x00\x00\x00WAVEfmt ", None, id="wav is riff but not webp"),
    pytest.param(AVIF, "image/avif", id="avif is not heif"),
])
def test_sniff_names_the_type_the_bytes_start_like(head: bytes, content_type: str | None) -> None:
    assert sniff(head[:64]) == content_type


def test_every_sniffed_type_is_a_supported_one() -> None:
    for head in (JPEG, PNG, GIF, WEBP, HEIC, HEIF):
        assert sniff(head[:64]) in SUPPORTED


def judged(data: bytes) -> tuple[str | None, str | None]:
    return judge(len(data), data[:64], data[-64 * 1024:])


@pytest.mark.parametrize("data", [PNG, JPEG, GIF, GIF + b"\x00\x00", WEBP, HEIC, HEIF],
                         ids=["png", "jpeg", "gif", "gif with zero padding", "webp", "heic", "heif"])
def test_whole_images_have_no_problem(data: bytes) -> None:
    content_type, problem = judged(data)

    assert content_type == sniff(data[:64]) and content_type is not None
    assert problem is None


@pytest.mark.parametrize(("data", "problem"), [
    (b"", "empty file"),
    (b"this is text, not a JPEG", "not an image"),
    (b"BM" + bytes(100), "BMP images are not accepted"),
    (b"MM\x00*" + bytes(100), "TIFF images are not accepted"),
    (b"  <?xml version='1.0'?>\n<svg/>", "SVG images are not accepted"),
    (b"<SVG viewBox='0 0 1 1'></SVG>", "SVG images are not accepted"),
    (JPEG[:-2], "truncated or corrupt JPEG"),
    (PNG[:-12], "truncated or corrupt PNG"),
    (GIF[:-1], "truncated or corrupt GIF"),
    (WEBP[:-1], "truncated or corrupt WebP"),
], ids=["empty", "text", "bmp", "tiff", "svg", "svg upper case", "jpeg", "png", "gif", "webp"])
def test_files_that_cannot_be_synced_say_why(data: bytes, problem: str) -> None:
    content_type, reason = judged(data)

    assert reason is not None and problem in reason
    assert content_type is None or problem.startswith("truncated")


def test_unsupported_formats_name_the_ones_that_are() -> None:
    _, reason = judged(b"BM" + bytes(100))

    assert reason is not None and "JPEG, PNG, GIF, WebP or HEIC" in reason


def test_digest_hashes_like_hashlib_and_judges_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG)

    digest = digest_file(path)

    assert digest.sha256 == hashlib.sha256(PNG).hexdigest()
    assert (digest.size, digest.content_type, digest.problem) == (len(PNG), "image/png", None)


def test_digest_of_a_file_larger_than_one_read_sees_its_head_and_its_end(tmp_path: Path) -> None:
    """The end marker is found even when it straddles two reads."""
    chunk = 1 << 20
    head = b"\x89PNG\r\n\x1a\n"
    data = head + bytes(chunk - len(head) - 2) + b"IEND\xae\x42\x60\x82"
    path = tmp_path / "big.png"
    path.write_bytes(data)

    digest = digest_file(path)

    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert (digest.size, digest.content_type, digest.problem) == (len(data), "image/png", None)


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_bytes_streamed_in_small_chunks_are_judged_as_if_read_whole(size: int) -> None:
    """A download may come a few bytes at a time: the head is still the first bytes, the tail the last."""
    whole = Digester()
    whole.update(PNG)
    for data in (PNG, PNG + bytes(200_000)):
        streamed = Digester()
        for start in range(0, len(data), size):
            streamed.update(memoryview(data)[start:start + size])
        assert streamed.digest() == digest_of(data), size
    assert whole.digest().problem is None


def digest_of(data: bytes) -> Digest:
    digester = Digester()
    digester.update(data)
    return digester.digest()


def test_digest_of_a_large_truncated_file_reports_it(tmp_path: Path) -> None:
    data = PNG + bytes(3 << 20)  # the IEND chunk is far from the end: the tail is what is judged
    path = tmp_path / "big.png"
    path.write_bytes(data)

    digest = digest_file(path)

    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert digest.problem is not None and "truncated or corrupt PNG" in digest.problem


def test_digest_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")

    digest = digest_file(path)

    assert (digest.sha256, digest.size, digest.problem) == (hashlib.sha256(b"").hexdigest(), 0, "empty file")


def test_digest_of_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        digest_file(tmp_path / "missing.png")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (kind, data) chunks of a PNG, checking each CRC on the way."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def test_solid_png_is_a_valid_solid_png_that_judge_accepts() -> None:
    data = solid_png(5, 3, (1, 2, 3))

    chunks = png_chunks(data)

    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (5, 3, 8, 2, 0, 0, 0)
    assert zlib.decompress(chunks[1][1]) == (b"\x00" + bytes((1, 2, 3)) * 5) * 3
    assert judged(data) == ("image/png", None)


def test_solid_png_differ_by_colour_and_size() -> None:
    samples = {solid_png(4, 4, (0, 0, 0)), solid_png(4, 4, (0, 0, 1)), solid_png(5, 4, (0, 0, 0))}

    assert len(samples) == 3
