"""Downloads held until they are uploaded: what every source read through an API shares (an Astria pack's
images, an Astria tune's).

Such a source knows an image by its URL, public storage whose bytes do not change: each new URL is
downloaded once (without the key), sniffed and hashed as it comes, and held until it is uploaded:
written to a private spool folder as it arrives (a small image stays in memory, up to ``HELD_AT_MOST``
bytes in all), never held whole when large; its upload streams from there. A download that fails is a
problem of that image, tried again next run. How a source lists its URLs is its own; this module only
fetches, holds and opens them, and says what a failed listing means (``listing_failures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

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
from packsync.model import EXTENSIONS, CachedFile, ContentItem, Problem, Scan
from packsync.sources.body import UploadBody
from packsync.sources.media import Digest, Digester

#: Downloads held in memory until they are uploaded, in bytes, in all: the rest wait in the spool folder.
#: A small image in the spool costs a file created, written, read back and deleted, several times its
#: download's CPU; a run's memory grows by this much at most.
HELD_AT_MOST = 32 * 1024 * 1024
#: A download larger than this goes to its spool file as it comes, never held whole.
SPILL_AT = 1024 * 1024


@contextlib.contextmanager
def listing_failures(label: str, noun: str, ident: int, gone: str = "") -> Iterator[None]:
    """What reading an Astria source's listing (``noun`` ``ident``: "pack", 260) failing means: nothing is
    deleted because of it. Not there for the key (404): the source is unavailable (``gone``: what that may
    mean, said after it); a refused key: raised as
    it is (the API's alert); a rate limit, an outage, a trickle: this mapping's error, tried again later;
    any other bad answer: unavailable."""
    try:
        yield
    except NotFound:
        raise SourceUnavailable(f"{label}: Astria has no {noun} {ident} the key can see{gone}") from None
    except AuthError:
        raise
    except TransientError as exc:
        raise TransientError(f"{label}: cannot read the Astria {noun} now ({exc}); nothing is deleted, and it is "
                             "read again later", method=exc.method, route=exc.route, status=exc.status) from None
    except ApiError as exc:
        raise SourceUnavailable(f"{label}: cannot read the Astria {noun} ({exc})") from None


class Download:
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


class Downloader(Protocol):
    """What the held downloads need of an API client: an image's bytes, without the key."""

    async def download(self, url: str, max_bytes: int, sink: Callable[[], Download]) -> Download: ...


class Wanted(msgspec.Struct, frozen=True):
    """An image a source lists: its URL, the version token its record gets, its name before the extension
    its bytes give, its source's words about it, and whether its record says it was downloaded already."""

    url: str
    version: str
    stem: str
    detail: str | None
    known: bool


class HeldDownloads:
    """A source's new images, downloaded and held until they are uploaded (see the module's docstring)."""

    def __init__(self, client: Downloader, max_bytes: int, spool: Path | None) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.spool = spool
        self._held: dict[str, bytes] = {}  # by SHA-256: the small downloads held in memory
        self._held_bytes = 0
        self._spool_made = False

    async def gather(self, scan: Scan, wanted: Sequence[Wanted], previous: Mapping[str, CachedFile],
                     on_item: Callable[[int], None] | None) -> None:
        """Each ``wanted`` image into ``scan``: downloaded when it is new, else its record as it was (under its
        version and detail now); one that cannot be downloaded is a problem of that image, tried next run."""
        new = [image for image in wanted if not image.known]
        got = await asyncio.gather(*(self.fetch(image.url, image.version, image.detail) for image in new))
        fetched = {image.url: found for image, found in zip(new, got, strict=True)}
        for image in wanted:
            found = fetched.get(image.url)
            if isinstance(found, str):
                scan.problems.append(Problem(image.url, f"{image.stem}: {found}"))
                continue
            cached = found or msgspec.structs.replace(previous[image.url], version=image.version, detail=image.detail)
            assert cached.sha256 is not None and cached.content_type is not None
            scan.cache[image.url] = cached
            scan.items.append(ContentItem(image.url, cached.sha256, cached.size, cached.content_type,
                                          f"{image.stem}.{EXTENSIONS[cached.content_type]}"))
            if found is not None and on_item:
                on_item(cached.size)
        scan.hashed_files = sum(1 for found in fetched.values() if isinstance(found, CachedFile))

    async def fetch(self, url: str, version: str, detail: str | None = None) -> CachedFile | str:
        """Download a new image into the spool: what it is (its record, of ``version``), or why it cannot be
        synced (this run)."""
        try:
            digest = await self._download(url)
        except (PermanentError, TransientError) as exc:
            return f"cannot download it ({untrusted(str(exc), 120)}); tried again next run"
        except OSError as exc:
            return f"cannot keep it until it is uploaded ({exc.strerror}); tried again next run"
        if digest.content_type is None or digest.problem:
            return digest.problem or "not an image"
        return CachedFile(version, digest.size, digest.sha256, digest.content_type, None, detail)

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
        attempts: list[Download] = []

        def sink() -> Download:  # a fresh one for each attempt
            attempts.append(Download(self.spool))
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

    async def _keep(self, sha256: str, got: Download) -> None:
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
        """The bytes held in memory or in the spool, or downloaded again (an image hashed by an earlier run);
        ``item.key`` is the image's URL."""
        if (held := self._held.get(item.sha256)) is not None:
            return UploadBody.of_bytes(held, item.sha256)  # the very bytes that were hashed as they came
        if self.spool is None:  # (a dry run's source: it uploads nothing, but the bytes are there to read)
            try:
                got = await self.client.download(item.key, self.max_bytes, lambda: Download(None))
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
