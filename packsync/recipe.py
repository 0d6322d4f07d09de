"""A mapping's preparation recipe: which metadata to strip, how large, which formats become JPEG.

Pure and light: the config and the planner import it, so it imports nothing heavy (no Pillow). The
recipe's ``key`` is what the state records next to an upload; ``describe`` turns a file's changes into
the words ``status``, the page and ``run --json`` show.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

STRIP_CATEGORIES = ("location", "people", "serials")
#: The formats ``convert_to_jpeg`` may name (JPEG is one already; GIF stays GIF).
CONVERTIBLE = ("avif", "heic", "heif", "png", "webp")
#: The quality of every re-encode, JPEG and lossy WebP alike.
JPEG_QUALITY = 90

#: Content types as the caller sniffed them, by the name ``convert_to_jpeg`` uses.
_FORMAT_OF = {"image/avif": "avif", "image/heic": "heic", "image/heif": "heif", "image/png": "png",
              "image/webp": "webp"}

_WORDS = {"location": "location", "people": "names", "serials": "serial numbers"}


class Recipe(msgspec.Struct, frozen=True):
    """How a mapping's files are prepared before upload (``config.example.toml`` documents the keys)."""

    #: A sorted, unique subset of ``STRIP_CATEGORIES``.
    strip: tuple[str, ...] = ("location", "serials")
    #: The long edge, in pixels, an image is scaled down to; 0: never resized.
    max_edge: int = 0
    #: A sorted, unique subset of ``CONVERTIBLE``.
    convert_to_jpeg: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse what packsync does not know, naming the key (msgspec.convert reports this ValueError as a
        ValidationError); keep the names sorted and unique, so equal recipes are equal values."""
        for key, given, allowed in (("strip", self.strip, STRIP_CATEGORIES),
                                    ("convert_to_jpeg", self.convert_to_jpeg, CONVERTIBLE)):
            unknown = [word for word in given if word not in allowed]
            if unknown:
                raise ValueError(f"{key}: {unknown[0]!r} is not one of {', '.join(map(repr, allowed))}")
            msgspec.structs.force_setattr(self, key, tuple(sorted(set(given))))
        if self.max_edge < 0:
            raise ValueError("max_edge: must be 0 (never resize) or a number of pixels")

    @property
    def key(self) -> str:
        """Canonical text the state records with an upload; "" exactly when the recipe changes nothing."""
        parts = []
        if self.strip:
            parts.append("strip=" + ",".join(self.strip))
        if self.max_edge:
            parts.append(f"max_edge={self.max_edge}")
        if self.convert_to_jpeg:
            parts.append("jpeg=" + ",".join(self.convert_to_jpeg))
        return ";".join(parts)

    @property
    def as_is(self) -> bool:
        """Files are uploaded byte for byte."""
        return not self.strip and not self.max_edge and not self.convert_to_jpeg

    def converts(self, content_type: str) -> bool:
        """Whether a file of this (sniffed) content type is uploaded as JPEG."""
        name = _FORMAT_OF.get(content_type)
        return name is not None and name in self.convert_to_jpeg


def describe(changes: Sequence[str]) -> str:
    """The changes of one file for people: "location and serial numbers stripped; resized to 2160 px;
    converted to JPEG"; "" for none."""
    stripped = [_WORDS[c] for c in changes if c in _WORDS]
    parts = []
    if stripped:
        listed = stripped[0] if len(stripped) == 1 else ", ".join(stripped[:-1]) + " and " + stripped[-1]
        parts.append(f"{listed} stripped")
    parts += [f"resized to {c.partition(':')[2]} px" for c in changes if c.startswith("resize:")]
    if "jpeg" in changes:
        parts.append("converted to JPEG")
    return "; ".join(parts)


#: Files uploaded byte for byte (``strip = []``, no ``max_edge``, no ``convert_to_jpeg``).
AS_IS = Recipe(strip=())
