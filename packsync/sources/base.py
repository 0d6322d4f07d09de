"""The interface every source of content implements; the engine knows sources only through it.

Like a backend behind rclone's ``fs.Fs``: a source lists what it holds — items known by their
content — and opens an item's bytes. It asks one question of the past ("what did this item look
like last time?") through the ``previous`` cache it is given, keyed by item and holding a *version
token* of the source's own making (a folder's stat key, an Astria image's URL): the state stores the
token as given and never reads it. A source knows nothing of the state database or the API.

Whoever holds only a label (read from the state, say) asks ``sources.kinds`` what kind of source it
names: no code outside ``sources/`` reads a label's spelling.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from packsync.model import CachedFile, ContentItem, PathsScan, Scan
from packsync.sources.body import UploadBody

#: The longest a source read through an API may wait between two reads, in seconds (30 days): a longer
#: interval ("inf") would read it once and never again, silently.
MAX_POLL_S = 30 * 86400.0


class Source(Protocol):
    label: str
    #: What the source calls itself, once scanned, when that says more than its label (a pack's title).
    name: str | None
    #: What the source is: "folder", or the kind of a source read through an API (``sources.kinds``).
    kind: str
    #: A subfolder packsync synced that is not there any more: an empty source whose last listing is
    #: kept (it is how a rename is recognised later), so no cache is written for it.
    gone: bool
    #: Why the source can be told neither present nor gone (an unmounted disk): a missing source.
    unavailable: str | None
    #: When the source itself deletes its items (epoch seconds: an Astria tune's images, 30 days after its
    #: training); None: never, or not known.
    expires_at: float | None

    def exists(self) -> bool:
        """Whether the source is there at all (a folder on an unmounted disk is not)."""

    async def scan(self, previous: Mapping[str, CachedFile], busy: Collection[str] = (),
                   on_item: Callable[[int], None] | None = None) -> Scan:
        """Everything the source holds now. ``busy`` items are being written: their last content is
        kept. ``on_item(bytes_read)`` follows each item judged. Raises ``SourceUnavailable``."""

    async def scan_paths(self, paths: Collection[str], previous: Mapping[str, CachedFile],
                         busy: Collection[str] = (), on_item: Callable[[int], None] | None = None) -> PathsScan | None:
        """What these items hold now — a folder's paths as a watcher reported them, each standing for
        itself and what is below it — judged as ``scan`` would judge them, against ``previous`` (their
        records, and those below them). None when only a whole ``scan`` can tell (a source that cannot
        look at some items alone, or a change that decides the rest: a folder's ``.packsyncignore``)."""

    async def listing(self) -> Scan | None:
        """What the source holds, seen without reading any item (a ``Scan`` with its ``listing`` only);
        None when there is no cheap way to see it (an Astria pack is known only by reading it)."""

    async def open(self, item: ContentItem) -> UploadBody:
        """The item's bytes, to be read as they are sent (``body.py``), checked on the way to be the ones
        that hashed to ``item.sha256`` (else ``ItemChanged``); ``ItemChanged`` at once when it has none."""

    def close(self) -> None:
        """Let go of what the source holds between runs (temporary files)."""
