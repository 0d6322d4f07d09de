"""Search over the AI descriptions: packsync's images whose name, description, keywords, folder name, pack
name or source's own words about them (an Astria prompt's text) match, with the local files that hold them
(the read model ``packsync search`` and the page render), and how many match in all (``count``: what both
say "N of M" with)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from packsync.model import ManagedImage
from packsync.sources.kinds import owner_kind
from packsync.views.status import shown_detail

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State


@dataclass(frozen=True, slots=True)
class SearchHit:
    image: ManagedImage
    mapping: str                 # the owning mapping's label ('' for an image from before owners)
    paths: tuple[str, ...]       # local files with its content; an Astria image's is its name
    files: tuple[str, ...] = ()  # the same, relative to the mapping's folder (an Astria image's: its name)
    detail: str | None = None    # its source's own words about it (an Astria prompt's text), made safe to show

    @property
    def name(self) -> str:
        """The first file's name (without its folder)."""
        return PurePosixPath(self.files[0]).name if self.files else Path(self.paths[0]).name

    @property
    def folder(self) -> str:
        """The first file's folder relative to the mapping's ('' for the mapping's own folder)."""
        parent = str(PurePosixPath(self.files[0]).parent) if self.files else ""
        return "" if parent == "." else parent


def search(state: State, words: Sequence[str], limit: int = 50) -> list[SearchHit]:
    hits = []
    for image, owner in state.metadata.search(words, limit):
        files: tuple[str, ...] = ()
        if owner and owner_kind(owner) == "folder":
            files = tuple(state.files.paths_of(owner, image.sha256))
            paths = tuple(str(Path(owner) / rel) for rel in files)
        else:
            paths = ()
        detail = state.files.detail_of(owner, image.sha256) if owner else None
        hits.append(SearchHit(image, owner, paths or (f"{owner} {image.file_name}".strip(),),
                              files or (image.file_name,), shown_detail(detail)))
    return hits


def count(state: State, words: Sequence[str]) -> int:
    """How many images ``search`` finds for ``words``, past any limit."""
    return state.metadata.count(words)
