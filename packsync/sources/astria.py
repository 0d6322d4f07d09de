"""An Astria pack as a source: its example images, known by their URLs, mirrored like a folder's files.

Astria's image URLs are public storage addresses whose bytes do not change, so an image's URL is its
identity: each new URL is downloaded once and held until it is uploaded (``downloads.py``, shared with
the other sources read through an API). A URL seen before costs nothing. A download that fails is a
problem of that image, tried again next run. The pack read itself failing is the source being
unavailable: nothing is deleted because of it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import msgspec
from msgspec import Meta

from packsync.errors import (
    ConfigError,
)
from packsync.logs import untrusted
from packsync.model import AstriaPack, CachedFile, ContentItem, Listed, ListedImage, Problem, Scan
from packsync.sources.body import UploadBody
from packsync.sources.downloads import Download, Downloader, HeldDownloads, Wanted, listing_failures


class AstriaPackSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="kind",
                         tag="astria"):
    """An Astria pack as a mapping (``astria_pack``, ``classes``) or a pull (``astria:260``) names it: the
    kind of source ``sources.kinds`` knows it as."""

    name: ClassVar[str] = "astria"
    noun: ClassVar[str] = "an Astria pack"
    api: ClassVar[str] = "astria"
    described: ClassVar[bool] = False  # a pack's images carry no text of their own
    id_key: ClassVar[str] = "astria_pack"

    astria_pack: Annotated[int, Meta(ge=1)]
    #: The pack's classes mirrored (None: all).
    classes: Annotated[list[str], Meta(min_length=1)] | None = None

    @property
    def id(self) -> int:
        return self.astria_pack

    @property
    def label(self) -> str:
        return pack_label(self.astria_pack)

    @property
    def poll_s(self) -> float | None:
        return None  # [astria] poll_interval_s

    def source(self, client: Any, max_bytes: int, spool: Path | None) -> AstriaSource:
        return AstriaSource(client, self.astria_pack, self.classes, max_bytes, spool)

    async def listed(self, client: Any) -> Listed:
        return await pack_listed(client, self.astria_pack, self.classes)

    async def kept(self, client: Any, names: Collection[str]) -> set[str]:
        return set()  # a pack is read whole: an image it no longer lists is gone from it


def pack_label(pack_id: int) -> str:
    """How an Astria pack is named as a source (in messages, the state, the views and pull's argument)."""
    return f"{AstriaPackSettings.name}:{pack_id}"


def _known(cached: CachedFile | None, url: str) -> bool:
    """Whether an image was downloaded and judged already: a URL's bytes never change, so the URL is the
    version of what it serves."""
    return cached is not None and cached.matches(url) and cached.sha256 is not None


class AstriaReader(Downloader, Protocol):
    """What the source needs of Astria (``remote/astria.py``'s client is one)."""

    async def pack(self, pack_id: int) -> AstriaPack: ...

    async def download(self, url: str, max_bytes: int, sink: Callable[[], Download]) -> Download: ...


class AstriaSource:
    """One Astria pack (``classes`` of it, or all), mirrored (the ``Source`` interface)."""

    kind: str = "astria"
    expires_at: float | None = None
    gone = False
    unavailable: str | None = None  # a pack that cannot be read is a scan's SourceUnavailable

    def __init__(self, client: AstriaReader, pack_id: int, classes: Sequence[str] | None, max_bytes: int,
                 spool: Path | None) -> None:
        self.client = client
        self.pack_id = pack_id
        self.classes = set(classes) if classes is not None else None
        self.label = pack_label(pack_id)
        self.name: str | None = None
        self.downloads = HeldDownloads(client, max_bytes, spool)

    def exists(self) -> bool:
        return True  # known only by reading it: a pack that is gone is a scan's SourceUnavailable

    async def listing(self) -> None:
        return None  # the pack read is the only way to see it

    async def scan_paths(self, paths: Collection[str], previous: Mapping[str, CachedFile],
                         busy: Collection[str] = (), on_item: Callable[[int], None] | None = None) -> None:
        return None  # the same: one read of the whole pack

    async def scan(self, previous: Mapping[str, CachedFile], busy: Collection[str] = (),
                   on_item: Callable[[int], None] | None = None) -> Scan:
        with listing_failures(self.label, "pack", self.pack_id):
            pack = await self.client.pack(self.pack_id)
        self.name = pack.title
        firsts = pack.chosen(self.classes)
        scan = Scan(self.label, problems=[Problem(where, why) for cls, where, why in pack.problems
                                          if self.classes is None or cls in self.classes])
        scan.problems += [Problem(f"class {cls}", f"{self.label} has no class {cls!r}")
                          for cls in sorted(self.classes or ()) if cls not in pack.classes]
        if scan.problems:  # an entry it could not read may be one it listed before: nothing synced from it goes
            scan.keep |= {cached.sha256 for url, cached in previous.items() if cached.sha256 and url not in firsts}
        self.close()
        await self.downloads.gather(scan, [Wanted(url, url, image.stem, None, _known(previous.get(url), url))
                                           for url, image in firsts.items()], previous, on_item)
        return scan

    async def open(self, item: ContentItem) -> UploadBody:
        """The bytes held in memory or in the spool, or downloaded again (an image hashed by an earlier run)."""
        return await self.downloads.open(item)

    def close(self) -> None:
        """Drop what is held, in memory and in the spool: it is uploaded (or will be downloaded again). Also
        done before each scan, so what a killed run left is dropped too."""
        self.downloads.close()


async def pack_listed(client: AstriaReader, pack_id: int, classes: Collection[str] | None) -> Listed:
    """What ``packsync pull astria:<id>`` downloads: the pack's images (of ``classes``, or all), one per URL,
    each as ``<class>/<prompt id>-<n>``. A class the pack does not have is an error (nothing is pulled); an
    entry it cannot read is a problem, and withholds every removal."""
    pack = await client.pack(pack_id)
    _check_classes(pack, classes)
    label = pack_label(pack_id)
    problems = tuple(Problem(where, why) for cls, where, why in pack.problems if classes is None or cls in classes)
    return Listed(label, pack.title,
                  tuple(ListedImage(url, (image.cls, f"{image.prompt_id}-{image.index}"))
                        for url, image in pack.chosen(classes).items()),
                  problems, None if classes is None else frozenset(classes),
                  f"{label}: {len(problems)} of its entries could not be read" if problems else None)


def _check_classes(pack: AstriaPack, classes: Collection[str] | None) -> None:
    """Refuse classes the pack does not have: pulling none of a class named wrongly, and deleting what came
    from it, is never what was meant. Names are exact; a name that differs only in case is suggested."""
    for wanted in classes or ():
        if wanted in pack.classes:
            continue
        near = [c for c in pack.classes if c.casefold() == wanted.casefold()]
        hint = f" (class names are exact: did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"--classes: {pack_label(pack.pack_id)} has no class "
                          f"{untrusted(wanted, 60)!r}{hint}; "
                          f"its classes are {', '.join(repr(c) for c in pack.classes) or 'none'}")
