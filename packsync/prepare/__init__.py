"""Images prepared before upload: metadata stripped, scaled down, converted to JPEG, as a recipe says.

Pure: bytes in, bytes out, nothing written, nothing logged. The engine decides which files to prepare
and records what came out. ``inspect`` says what ``prepare`` would change without decoding a pixel;
``prepare`` makes those changes, and only those: its output depends on the input bytes and the changes
alone, so the same file prepared again, in another process, on another day, gives the same bytes (an
adoption after a lost state finds its images by them).

    containers.py  JPEG, PNG, WebP, GIF: read and stripped losslessly, by packsync's own splicing
    exif.py        EXIF directories edited in place      xmpedit.py  XMP properties blanked in place
    iptc.py        Photoshop/IPTC IIM datasets removed    heif.py     HEIC/HEIF/AVIF items edited in place
    pixels.py      decode, resize, encode: the only part that imports Pillow (and pillow-heif)
"""

from __future__ import annotations

import msgspec

from packsync.prepare import heif
from packsync.prepare.base import PrepareError, within_limit
from packsync.prepare.containers import SURVEYS, Survey
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


def _survey(data: bytes, content_type: str, recipe: Recipe) -> Survey:
    wanted = frozenset(recipe.strip)
    if content_type in SURVEYS:
        return SURVEYS[content_type](data, wanted)
    if content_type in DECODED and recipe.converts(content_type):
        from packsync.prepare import pixels

        return pixels.survey(data, content_type, wanted)
    if content_type in DECODED:
        stripped, found = heif.strip(data, wanted)
        return Survey(stripped, found, 0, 0, 1, None, None)  # not converted: never resized, its size unread
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
    return _plan(_survey(data, content_type, recipe), content_type, recipe)[0]


def prepare(data: bytes, content_type: str, recipe: Recipe) -> Prepared:
    """``data`` prepared by ``recipe``: ``changes`` equal ``inspect``'s; no change gives back ``data``
    itself; the output depends only on (data, changes), byte for byte."""
    if recipe.as_is:
        return Prepared(data, content_type, ())
    survey = _survey(data, content_type, recipe)
    changes, resize, convert = _plan(survey, content_type, recipe)
    if not resize and not convert:
        return Prepared(survey.stripped(), content_type, changes)
    from packsync.prepare import pixels

    out, out_type = pixels.reencode(data, content_type, survey, recipe.max_edge if resize else 0, convert)
    return Prepared(out, out_type, changes)


__all__ = ["CONVERTIBLE", "JPEG_QUALITY", "STRIP_CATEGORIES", "PrepareError", "Prepared", "Recipe", "describe",
           "inspect", "prepare"]
