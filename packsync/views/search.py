"""Search over the AI descriptions: packsync's images whose name, description or keywords match, with
the local files that hold them (the read model ``packsync search`` renders)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packsync.model import ManagedImage
from packsync.sources.base import kind_of

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State


@dataclass(frozen=True, slots=True)
class SearchHit:
    image: ManagedImage
    mapping: str                 # the owning mapping's label ('' for an image from before owners)
    paths: tuple[str, ...]       # local files with its content; an Astria image's is its name


def search(state: State, words: Sequence[str], limit: int = 50) -> list[SearchHit]:
    hits = []
    for image, owner in state.metadata.search(words, limit):
        if owner and kind_of(owner) == "folder":
            paths = tuple(str(Path(owner) / rel) for rel in state.files.paths_of(owner, image.sha256))
        else:
            paths = ()
        hits.append(SearchHit(image, owner, paths or (f"{owner} {image.file_name}".strip(),)))
    return hits
