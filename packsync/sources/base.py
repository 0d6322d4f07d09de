"""The interface every source of content implements; the engine knows sources only through it.

Like a backend behind rclone's ``fs.Fs``: a source lists what it holds — items known by their
content — and opens an item's bytes. It asks one question of the past ("what did this item look
like last time?") through the ``previous`` cache it is given, and knows nothing of the state
database or the API.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from packsync.model import CachedFile, ContentItem, Scan


class Source(Protocol):
    label: str
    #: What the source calls itself, once scanned, when that says more than its label (a pack's title).
    name: str | None
    #: What it is: ``"folder"`` or ``"astria"`` (what views show; the engine never branches on it).
    kind: str
    #: A subfolder packsync synced that is not there any more: an emptied source, whose last listing is kept.
    gone: bool
    #: Why the source cannot be told present or gone (a folder that cannot be listed): a missing source.
    unavailable: str | None

    def exists(self) -> bool:
        """Whether the source is there at all (a folder on an unmounted disk is not)."""

    async def scan(self, previous: Mapping[str, CachedFile], busy: Collection[str] = (),
             on_item: Callable[[int], None] | None = None) -> Scan:
        """Everything the source holds now. ``busy`` items are being written: their last content is
        kept. ``on_item(bytes_read)`` follows each item judged. Raises ``SourceUnavailable``."""

    async def listing(self) -> Scan | None:
        """What a walk alone sees (no item read), to tell a source unchanged cheaply; None when the source
        has no look cheaper than its scan."""

    async def read(self, item: ContentItem) -> bytes:
        """The item's bytes, provided they still hash to ``item.sha256``; else ``ItemChanged``."""

    def close(self) -> None:
        """Let go of what the source holds between runs (temporary files)."""
