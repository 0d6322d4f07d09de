"""An Astria pack as a source: its example images, known by their URLs, mirrored like a folder's files.

Astria's image URLs are public storage addresses whose bytes do not change, so an image's URL is its
identity: each new URL is downloaded once (without the key), sniffed and hashed as it comes, and held
until it is uploaded: written to a private spool folder as it arrives (a small image stays in memory,
up to ``HELD_AT_MOST`` bytes in all), never held whole when large; its upload streams from there. A URL
seen before costs nothing. A download that fails is a problem of that image, tried again next run. The
pack read itself failing is the source being unavailable: nothing is deleted because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import msgspec
from msgspec import Meta

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
from packsync.model import EXTENSIONS, AstriaImage, AstriaPack, CachedFile, ContentItem, Listed, Problem, Scan
from packsync.sources.body import UploadBody
from packsync.sources.media import Digest, Digester

#: Downloads held in memory until they are uploaded, in bytes, in all: the rest wait in the spool folder.
#: A small image in the spool costs a file created, written, read back and deleted, several times its
#: download's CPU; a run's memory grows by this much at most.
HELD_AT_MOST = 32 * 1024 * 1024
#: A download larger than this goes to its spool file as it comes, never held whole.
SPILL_AT = 1024 * 1024


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
        return f"{self.name}:{self.astria_pack}"

    @property
    def poll_s(self) -> float | None:
        return None  # [astria] poll_interval_s

    def source(self, client: Any, max_bytes: int, spool: Path | None) -> AstriaSource:
        return AstriaSource(client, self.astria_pack, self.classes, max_bytes, spool)

    async def listed(self, client: Any) -> Listed:
        raise NotImplementedError("pull lists a pack through engine/pull.py until its Listed is wired")


class _Download:
    """A download's bytes, hashed and sniffed as they come: in memory up to ``SPILL_AT``, then written to
    a file of its own in ``spool`` (None: in memory, to be judged and dropped — a dry run's)."""

    def __init__(self, spool: Path | None) -> None:
        self.digester = Digester()
        self.held = bytearray()
        self.path = spool / f"{uuid.uuid4().hex}.part" if spool else None
        self.handle: int | None = None
        self.spilled = False

    def update(self, chunk: bytes) -> None:
        self.digester.update(chunk)
        if self.path is None or (self.handle is None and len(self.held) + len(chunk) <= SPILL_AT):
            self.held += chunk
            return
        if self.handle is None:
            self.handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self.spilled = True
            _write(self.handle, self.held)
            self.held = bytearray()
        _write(self.handle, chunk)

    def close(self) -> None:
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None

    def discard(self) -> None:
        """Close it and remove its file, if it has one."""
        self.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _spill(path: Path, data: bytes | bytearray) -> None:
    """``data`` written to ``path`` whole or not at all (a full disk leaves no part of it there)."""
    part = path.with_name(f"{uuid.uuid4().hex}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write(fd, data)
    except BaseException:
        os.close(fd)
        part.unlink()
        raise
    os.close(fd)
    os.replace(part, path)


def _write(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _known(cached: CachedFile | None, url: str) -> bool:
    """Whether an image was downloaded and judged already: a URL's bytes never change, so the URL is the
    version of what it serves."""
    return cached is not None and cached.matches(url) and cached.sha256 is not None


class AstriaReader(Protocol):
    """What the source needs of Astria (``remote/astria.py``'s client is one)."""

    async def pack(self, pack_id: int) -> AstriaPack: ...

    async def download(self, url: str, max_bytes: int, sink: Callable[[], _Download]) -> _Download: ...


class AstriaSource:
    """One Astria pack (``classes`` of it, or all), mirrored (the ``Source`` interface)."""

    kind: str = "astria"
    gone = False
    unavailable: str | None = None  # a pack that cannot be read is a scan's SourceUnavailable

    def __init__(self, client: AstriaReader, pack_id: int, classes: Sequence[str] | None, max_bytes: int,
                 spool: Path | None) -> None:
        self.client = client
        self.pack_id = pack_id
        self.classes = set(classes) if classes is not None else None
        self.max_bytes = max_bytes
        self.label = f"{AstriaPackSettings.name}:{pack_id}"
        self.name: str | None = None
        self.spool = spool
        self._held: dict[str, bytes] = {}  # by SHA-256: the small downloads held in memory
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
            digest = await self._download(image.url)
        except (PermanentError, TransientError) as exc:
            return f"cannot download it ({untrusted(str(exc), 120)}); tried again next run"
        except OSError as exc:
            return f"cannot keep it until it is uploaded ({exc.strerror}); tried again next run"
        if digest.content_type is None or digest.problem:
            return digest.problem or "not an image"
        return CachedFile(image.url, digest.size, digest.sha256, digest.content_type, None)

    async def _download(self, url: str) -> Digest:
        """Download ``url`` and hold its bytes until they are uploaded: in memory while small and while
        ``HELD_AT_MOST`` allows, else in the spool as ``<sha256>``. Raises what the download raises, and
        ``OSError`` when the spool cannot be written.

        The spool folder is made at the first image all the same: a spool that cannot be written then
        fails every image alike, whatever their sizes and the order they came in.
        """
        if self.spool is not None and not self._spool_made:
            await asyncio.to_thread(self.spool.mkdir, mode=0o700, parents=True, exist_ok=True)
            self._spool_made = True
        attempts: list[_Download] = []

        def sink() -> _Download:  # a fresh one for each attempt
            attempts.append(_Download(self.spool))
            return attempts[-1]

        try:
            got = await self.client.download(url, self.max_bytes, sink)
            got.close()
            digest = got.digester.digest()
            if self.spool is not None and digest.content_type is not None and not digest.problem:
                await self._keep(digest.sha256, got)
            return digest
        finally:
            for attempt in attempts:
                attempt.discard()

    async def _keep(self, sha256: str, got: _Download) -> None:
        assert self.spool is not None
        if sha256 in self._held:
            return
        kept = self.spool / sha256
        if got.spilled:
            assert got.path is not None
            await asyncio.to_thread(os.replace, got.path, kept)
        elif self._held_bytes + len(got.held) <= HELD_AT_MOST:
            self._held[sha256] = bytes(got.held)
            self._held_bytes += len(got.held)
        else:
            await asyncio.to_thread(_spill, kept, got.held)

    async def open(self, item: ContentItem) -> UploadBody:
        """The bytes held in memory or in the spool, or downloaded again (an image hashed by an earlier run)."""
        if (held := self._held.get(item.sha256)) is not None:
            return UploadBody.of_bytes(held, item.sha256)  # the very bytes that were hashed as they came
        if self.spool is None:  # (a dry run's source: it uploads nothing, but the bytes are there to read)
            try:
                got = await self.client.download(item.key, self.max_bytes, lambda: _Download(None))
            except (PermanentError, TransientError) as exc:
                raise ItemChanged(f"cannot download it again ({untrusted(str(exc), 120)})") from None
            return UploadBody.of_bytes(bytes(got.held), item.sha256)
        kept = self.spool / item.sha256
        if not await asyncio.to_thread(kept.is_file):
            try:
                digest = await self._download(item.key)
            except (PermanentError, TransientError) as exc:
                raise ItemChanged(f"cannot download it again ({untrusted(str(exc), 120)})") from None
            except OSError as exc:
                raise ItemChanged(f"cannot keep it until it is uploaded ({exc.strerror})") from None
            if digest.sha256 != item.sha256:
                raise ItemChanged("its URL now serves other bytes; it will be synced on the next run")
            if (held := self._held.get(item.sha256)) is not None:
                return UploadBody.of_bytes(held, item.sha256)
        return UploadBody.of_file(kept, item.size, item.sha256)

    def close(self) -> None:
        """Drop what is held, in memory and in the spool: it is uploaded (or will be downloaded again). Also
        done before each scan, so what a killed run left is dropped too."""
        self._held.clear()
        self._held_bytes = 0
        self._spool_made = False
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)
