"""An Astria pack as a source: its example images, known by their URLs, mirrored like a folder's files.

Astria's image URLs are public storage addresses whose bytes do not change, so an image's URL is its
identity: each new URL is downloaded once (without the key), sniffed, hashed and held until it is
uploaded — in memory up to ``HELD_AT_MOST`` bytes in all, in a private spool folder past that; a URL
seen before costs nothing. A download that fails is a problem of that image, tried again next run. The
pack read itself failing is the source being unavailable: nothing is deleted because of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from packsync.errors import (
    ApiError,
    AuthError,
    ItemChanged,
    NotFound,
    PermanentError,
    SourceUnavailable,
    TransientError,
)
from packsync.logs import untrusted
from packsync.model import EXTENSIONS, AstriaImage, AstriaPack, CachedFile, ContentItem, Problem, Scan
from packsync.sources.base import SourceKind, astria_label
from packsync.sources.media import Digester

#: Downloads held in memory until they are uploaded, in bytes, in all: the rest wait in the spool folder.
#: A small image in the spool costs a file created, written, read back and deleted, several times its
#: download's CPU; a run's memory grows by this much at most.
HELD_AT_MOST = 32 * 1024 * 1024


class _Held:
    """A download's bytes, hashed and sniffed as they come."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.digester = Digester()

    def update(self, chunk: bytes) -> None:
        self.data += chunk
        self.digester.update(chunk)


def _known(cached: CachedFile | None, url: str) -> bool:
    """Whether an image was downloaded and judged already: a URL's bytes never change, so the URL is the
    version of what it serves."""
    return cached is not None and cached.matches(url) and cached.sha256 is not None


class AstriaReader(Protocol):
    """What the source needs of Astria (``remote/astria.py``'s client is one)."""

    async def pack(self, pack_id: int) -> AstriaPack: ...

    async def download(self, url: str, max_bytes: int, sink: Callable[[], _Held]) -> _Held: ...


class AstriaSource:
    """One Astria pack (``classes`` of it, or all), mirrored (the ``Source`` interface)."""

    kind: SourceKind = "astria"
    gone = False
    unavailable: str | None = None  # a pack that cannot be read is a scan's SourceUnavailable

    def __init__(self, client: AstriaReader, pack_id: int, classes: Sequence[str] | None, max_bytes: int,
                 spool: Path | None) -> None:
        self.client = client
        self.pack_id = pack_id
        self.classes = set(classes) if classes is not None else None
        self.max_bytes = max_bytes
        self.label = astria_label(pack_id)
        self.name: str | None = None
        self.spool = spool
        self._held: dict[str, bytes] = {}  # by SHA-256: the downloads held in memory
        self._held_bytes = 0
        self._spool_made = False

    def exists(self) -> bool:
        return True  # known only by reading it: a pack that is gone is a scan's SourceUnavailable

    async def listing(self) -> None:
        return None  # the pack read is the only way to see it

    async def scan_paths(self, paths: Collection[str], previous: Mapping[str, CachedFile],
                         busy: Collection[str] = (), on_item: Callable[[int], None] | None = None) -> None:
        return None  # the same: one read of the whole pack

    async def scan(self, previous: Mapping[str, CachedFile], busy: Collection[str] = (),
                   on_item: Callable[[int], None] | None = None) -> Scan:
        try:
            pack = await self.client.pack(self.pack_id)
        except NotFound:
            raise SourceUnavailable(f"{self.label}: Astria has no pack {self.pack_id} the key can see") from None
        except AuthError:
            raise
        except TransientError as exc:  # a rate limit, an outage, a trickle: this mapping's error, tried again
            raise TransientError(f"{self.label}: cannot read the Astria pack now ({exc}); nothing is deleted, "
                                 "and it is read again later", method=exc.method, route=exc.route,
                                 status=exc.status) from None
        except ApiError as exc:
            raise SourceUnavailable(f"{self.label}: cannot read the Astria pack ({exc})") from None
        self.name = pack.title
        firsts = pack.chosen(self.classes)
        scan = Scan(self.label, problems=[Problem(where, why) for cls, where, why in pack.problems
                                          if self.classes is None or cls in self.classes])
        scan.problems += [Problem(f"class {cls}", f"{self.label} has no class {cls!r}")
                          for cls in sorted(self.classes or ()) if cls not in pack.classes]
        if scan.problems:  # an entry it could not read may be one it listed before: nothing synced from it goes
            scan.keep |= {cached.sha256 for url, cached in previous.items() if cached.sha256 and url not in firsts}
        self.close()
        new = [image for url, image in firsts.items() if not _known(previous.get(url), url)]
        fetched = dict(zip((image.url for image in new), await asyncio.gather(*map(self._fetch, new)), strict=True))
        for url, image in firsts.items():
            got = fetched.get(url)
            if isinstance(got, str):
                scan.problems.append(Problem(url, f"{image.stem}: {got}"))
                continue
            cached = got or previous[url]
            assert cached.sha256 is not None and cached.content_type is not None
            scan.cache[url] = cached
            scan.items.append(ContentItem(url, cached.sha256, cached.size, cached.content_type,
                                          f"{image.stem}.{EXTENSIONS[cached.content_type]}"))
            if got is not None and on_item:
                on_item(cached.size)
        scan.hashed_files = sum(1 for got in fetched.values() if isinstance(got, CachedFile))
        return scan

    async def _fetch(self, image: AstriaImage) -> CachedFile | str:
        """Download a new image into the spool: what it is, or why it cannot be synced (this run)."""
        try:
            held = await self.client.download(image.url, self.max_bytes, _Held)
        except (PermanentError, TransientError) as exc:
            return f"cannot download it ({untrusted(str(exc), 120)}); tried again next run"
        digest = held.digester.digest()
        if digest.content_type is None or digest.problem:
            return digest.problem or "not an image"
        if self.spool is not None:
            try:
                await self._keep(digest.sha256, bytes(held.data))
            except OSError as exc:
                return f"cannot keep it until it is uploaded ({exc.strerror}); tried again next run"
        return CachedFile(image.url, digest.size, digest.sha256, digest.content_type, None)

    async def _keep(self, sha256: str, data: bytes) -> None:
        """Hold ``data`` until it is uploaded: in memory while ``HELD_AT_MOST`` allows, else in the spool.

        The spool folder is made at the first image all the same: a spool that cannot be written then
        fails every image alike, whatever their sizes and the order they came in.
        """
        assert self.spool is not None
        if not self._spool_made:
            await asyncio.to_thread(self.spool.mkdir, mode=0o700, parents=True, exist_ok=True)
            self._spool_made = True
        if sha256 in self._held:
            return
        if self._held_bytes + len(data) <= HELD_AT_MOST:
            self._held[sha256] = data
            self._held_bytes += len(data)
        else:
            await asyncio.to_thread(self._spill, sha256, data)

    def _spill(self, sha256: str, data: bytes) -> None:
        assert self.spool is not None
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.spool / sha256).write_bytes(data)

    async def read(self, item: ContentItem) -> bytes:
        """The bytes held in memory or in the spool, or downloaded again (an image hashed by an earlier run)."""
        if (held := self._held.get(item.sha256)) is not None:
            return held  # the very bytes that were hashed as they came
        try:
            if self.spool is None:
                raise FileNotFoundError
            data = await asyncio.to_thread((self.spool / item.sha256).read_bytes)
        except OSError:
            try:
                data = bytes((await self.client.download(item.key, self.max_bytes, _Held)).data)
            except (PermanentError, TransientError) as exc:
                raise ItemChanged(f"cannot download it again ({untrusted(str(exc), 120)})") from None
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise ItemChanged("its URL now serves other bytes; it will be synced on the next run")
        return data

    def close(self) -> None:
        """Drop what is held, in memory and in the spool: it is uploaded (or will be downloaded again). Also
        done before each scan, so what a killed run left is dropped too."""
        self._held.clear()
        self._held_bytes = 0
        self._spool_made = False
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)
