"""Images prepared before upload: metadata stripped, scaled down, converted to JPEG, as a recipe says.

Pure: bytes in, bytes out, nothing written, nothing logged -- or a file in, parts out: ``prepare_path``
strips a file without holding it, and gives back its edited header bytes and ``Span``s of the file between
them (``iter_chunks`` reads them back; the engine streams them as the upload). The engine decides which files to prepare
and records what came out. ``inspect`` says what ``prepare`` would change without decoding a pixel;
``prepare`` makes those changes, and only those: its output depends on the input bytes and the changes
alone, so the same file prepared again, in another process, on another day, gives the same bytes (an
adoption after a lost state finds its images by them).

    containers.py  JPEG, PNG, WebP, GIF: read and stripped losslessly, by packsync's own splicing
    reader.py      the input read by range (bytes, or a file by pread); the output's parts read back
    exif.py        EXIF directories edited in place      xmpedit.py  XMP properties blanked in place
    iptc.py        Photoshop/IPTC IIM datasets removed    heif.py     HEIC/HEIF/AVIF items edited in place
    pixels.py      decode, resize, encode: the only part that imports Pillow (and pillow-heif)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from packsync.errors import CHANGED_SINCE_SCAN, ItemChanged
from packsync.prepare import heif
from packsync.prepare.base import PrepareError, within_limit
from packsync.prepare.containers import SURVEYS, Survey
from packsync.prepare.reader import (
    CHUNK,
    BytesReader,
    FileReader,
    Part,
    Reader,
    Span,
    iter_chunks,
    part_length,
)
from packsync.recipe import CONVERTIBLE, JPEG_QUALITY, STRIP_CATEGORIES, Recipe, describe

#: The formats packsync re-encodes in their own format when scaling down.
RESIZABLE = frozenset({"image/jpeg", "image/png", "image/webp"})
#: HEIF files: stripped in place (``heif.py``); scaled down only when converted to JPEG: encoding HEVC or
#: AV1 again is slow, and would not make an AVIF uploadable (not among Genviral's types) anyway.
DECODED = frozenset({"image/heic", "image/heif", "image/avif"})


class Prepared(msgspec.Struct, frozen=True):
    """What is uploaded for a file: its bytes, their type, and the changes that made them (none: the file
    itself)."""

    data: bytes
    content_type: str
    changes: tuple[str, ...]


class PreparedFile(msgspec.Struct, frozen=True):
    """What is uploaded for a file on disk, never held whole: ``parts`` in order -- new bytes, and ``Span``s
    of the file as it is -- make ``size`` bytes hashing to ``sha256`` (``iter_chunks`` reads them); no change
    is the one span of the whole file. ``source_sha256``: the file's own hash, as this read it."""

    parts: tuple[Part, ...]
    size: int
    sha256: str
    content_type: str
    changes: tuple[str, ...]
    source_sha256: str


def _survey(src: Reader, content_type: str, recipe: Recipe) -> Survey:
    wanted = frozenset(recipe.strip)
    if content_type in SURVEYS:
        return SURVEYS[content_type](src, wanted)
    if content_type in DECODED and recipe.converts(content_type):
        from packsync.prepare import pixels

        return pixels.survey(src.whole(), content_type, wanted)
    if content_type in DECODED:
        parts, found = heif.strip(src, wanted)  # not converted: never resized, its size unread
        return Survey(found, 0, 0, 1, None, None, parts=parts)
    raise PrepareError(f"packsync does not prepare {content_type} files")


def _plan(survey: Survey, content_type: str, recipe: Recipe) -> tuple[tuple[str, ...], bool, bool]:
    """(changes, resize?, convert?) for a surveyed file."""
    convert = recipe.converts(content_type) and not survey.animated
    resizable = (content_type in RESIZABLE or convert) and not survey.animated
    resize = resizable and 0 < recipe.max_edge < max(survey.width, survey.height)
    if resize or convert:
        within_limit(survey.width, survey.height)  # known from the headers: inspect refuses it too
    changes = (*sorted(survey.found), *([f"resize:{recipe.max_edge}"] if resize else []),
               *(["jpeg"] if convert else []))
    return changes, resize, convert


def inspect(data: bytes, content_type: str, recipe: Recipe) -> tuple[str, ...]:
    """The changes ``prepare`` would make -- cheap: reads metadata and dimensions only, never decodes pixels."""
    if recipe.as_is:
        return ()
    return _plan(_survey(BytesReader(data), content_type, recipe), content_type, recipe)[0]


def prepare(data: bytes, content_type: str, recipe: Recipe) -> Prepared:
    """``data`` prepared by ``recipe``: ``changes`` equal ``inspect``'s; no change gives back ``data``
    itself; the output depends only on (data, changes), byte for byte."""
    if recipe.as_is:
        return Prepared(data, content_type, ())
    survey = _survey(BytesReader(data), content_type, recipe)
    changes, resize, convert = _plan(survey, content_type, recipe)
    if not resize and not convert:
        return Prepared(survey.stripped(data), content_type, changes)
    from packsync.prepare import pixels

    out, out_type = pixels.reencode(data, content_type, survey, recipe.max_edge if resize else 0, convert)
    return Prepared(out, out_type, changes)


File = str | os.PathLike[str] | int


def inspect_path(file: File, size: int, content_type: str, recipe: Recipe) -> tuple[str, ...]:
    """``inspect`` of a file (a path, or a descriptor left open) expected to hold ``size`` bytes, read by
    range: ``ItemChanged`` when it does not."""
    if recipe.as_is:
        return ()
    with _opened(file) as fd:
        return _plan(_survey(FileReader(fd, size), content_type, recipe), content_type, recipe)[0]


def prepare_path(file: File, size: int, content_type: str, recipe: Recipe, *,
                 expected_sha256: str | None = None) -> PreparedFile:
    """``prepare`` of a file (a path, or a descriptor left open) expected to hold ``size`` bytes, without
    holding it: a strip reads the metadata it edits, and the file once more to hash it, a chunk at a time.
    Its parts joined are ``prepare``'s output for the file's bytes, byte for byte. A resize or a conversion
    decodes the file, read whole (its parts: the one re-encoded ``bytes``).

    ``ItemChanged`` (never a traceback) when the file no longer holds ``size`` bytes, changes while it is
    read, or -- given ``expected_sha256``, its hash when it was scanned -- holds other bytes."""
    with _opened(file) as fd:
        src = FileReader(fd, size)
        survey = _survey(src, content_type, recipe) if not recipe.as_is else None
        changes, resize, convert = _plan(survey, content_type, recipe) if survey else ((), False, False)
        if survey and (resize or convert):
            from packsync.prepare import pixels

            data = src.whole()
            out, out_type = pixels.reencode(data, content_type, survey, recipe.max_edge if resize else 0, convert)
            parts: tuple[Part, ...] = (out,)
            source_sha256, sha256 = hashlib.sha256(data).hexdigest(), hashlib.sha256(out).hexdigest()
        else:
            out_type = content_type
            parts = survey.parts if survey and survey.parts is not None else (Span(0, size),)
            source_sha256, sha256 = _digests(src, parts)
        src.unchanged()
    if expected_sha256 is not None and source_sha256 != expected_sha256:
        raise ItemChanged(CHANGED_SINCE_SCAN)
    return PreparedFile(parts, sum(map(part_length, parts)), sha256, out_type, changes, source_sha256)


@contextmanager
def _opened(file: File) -> Iterator[int]:
    """The descriptor of ``file``: a descriptor given is the caller's to close, a path opened here is closed."""
    if isinstance(file, int):
        yield file
        return
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ItemChanged(f"cannot read it any more ({exc.strerror})") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _digests(src: Reader, parts: tuple[Part, ...]) -> tuple[str, str]:
    """(the input's sha256, the output's) from one pass over the input, in order: the parts' spans follow
    the file's order, and the bytes between them (those an edit replaced or dropped) count for the input."""
    source, output, pos = hashlib.sha256(), hashlib.sha256(), 0
    if parts == (Span(0, src.size),):  # the file as it is: one hash
        for chunk in src.chunks(0, src.size):
            source.update(chunk)
        return source.hexdigest(), source.hexdigest()
    for part in parts:
        if isinstance(part, Span):
            assert part.offset >= pos, "a walker's spans follow the input's order"
            for chunk in src.chunks(pos, part.offset):
                source.update(chunk)
            for chunk in src.chunks(part.offset, part.end):
                source.update(chunk)
                output.update(chunk)
            pos = part.end
        else:
            output.update(part)
    for chunk in src.chunks(pos, src.size):
        source.update(chunk)
    return source.hexdigest(), output.hexdigest()


__all__ = ["CHUNK", "CONVERTIBLE", "JPEG_QUALITY", "STRIP_CATEGORIES", "PrepareError", "Prepared", "PreparedFile",
           "Recipe", "Span", "describe", "inspect", "inspect_path", "iter_chunks", "prepare", "prepare_path"]
