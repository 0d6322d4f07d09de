"""A mapping's recipe: what is done to a file's bytes before they are uploaded. Pure, and light to import
(the config and the planner read it; the image libraries are ``packsync.prepare``'s alone)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

STRIP_CATEGORIES = ("location", "people", "serials")
CONVERTIBLE = ("avif", "heic", "heif", "png", "webp")
JPEG_QUALITY = 90
_TYPES = {"avif": "image/avif", "heic": "image/heic", "heif": "image/heif", "png": "image/png", "webp": "image/webp"}


class Recipe(msgspec.Struct, frozen=True):
    strip: tuple[str, ...] = ("location", "serials")
    max_edge: int = 0
    convert_to_jpeg: tuple[str, ...] = ()

    @property
    def as_is(self) -> bool:
        return not (self.strip or self.max_edge or self.convert_to_jpeg)

    @property
    def key(self) -> str:
        if self.as_is:
            return ""
        return f"strip={','.join(self.strip)};max_edge={self.max_edge};jpeg={','.join(self.convert_to_jpeg)}"

    def converts(self, content_type: str) -> bool:
        return any(_TYPES[name] == content_type for name in self.convert_to_jpeg)


AS_IS = Recipe(strip=())


def describe(changes: Sequence[str]) -> str:
    return ", ".join(changes)
