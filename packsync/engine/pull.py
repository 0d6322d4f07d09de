"""``packsync pull``: a pack's images downloaded into a folder — atomically, resumably, incrementally.

Each image becomes one file. Its name is the last segment of its URL when that is a safe file name
with an image extension, else ``<image id>.<ext>`` with the extension taken from the bytes; URLs are
untrusted, so no name ever leads outside the folder, and a name already taken by another file gets a
short suffix instead of overwriting it. Bytes go to a hidden temporary file in the folder, are
fsync'ed, then renamed: an interrupted pull leaves no partial image under a final name, and the next
pull removes the leftovers and downloads only what it does not have. What was pulled is recorded in
the state (folder, file, image, content), so ``--delete`` removes only files it pulled whose images
left the pack, and a mapping of the folder to the same pack afterwards adopts instead of uploading.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from packsync.errors import NotFound, PermanentError, TransientError
from packsync.logs import get_logger, untrusted
from packsync.model import PackSummary, RemoteImage, RemotePack, UrlContent
from packsync.remote.genviral import GenviralClient
from packsync.sources.media import SUPPORTED, Digester
from packsync.state.store import PulledFile, Store
from packsync.views.progress import Progress

TEMP_PREFIX = ".packsync-pull-"
_EXTENSIONS = {"jpg", "jpeg", "png", "gif", "webp", "heic", "heif"}
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,150}")
MAX_PULL_BYTES = 200_000_000
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


def name_from_url(url: str) -> str | None:
    """The URL's last path segment, when it is a safe file name with an image extension; else None."""
    segment = unquote(PurePosixPath(urlsplit(url).path).name)
    stem, dot, ext = segment.rpartition(".")
    if not (dot and stem and ext.lower() in _EXTENSIONS and _SAFE.fullmatch(segment)):
        return None
    return segment


def fallback_name(image_id: str, content_type: str | None) -> str:
    """``<image id>.<ext>``, the id made safe (ids are the API's, so untrusted too)."""
    safe_id = image_id if _SAFE.fullmatch(image_id) and "." not in image_id else \
        hashlib.sha256(image_id.encode()).hexdigest()[:16]
    return f"{safe_id}.{SUPPORTED.get(content_type or '', 'img')}"


def _suffixed(name: str, image_id: str, taken: set[str]) -> str:
    """``name``, or a variant with a short suffix that no other file has."""
    if name.lower() not in taken:
        return name
    stem, _, ext = name.rpartition(".")
    tag = re.sub(r"[^A-Za-z0-9]", "", image_id)[:8] or "image"
    for n in range(1, 10_000):
        candidate = f"{stem}-{tag}{'' if n == 1 else f'-{n}'}.{ext}"
        if candidate.lower() not in taken:
            return candidate
    raise PermanentError(f"no free name for {name}")


@dataclass(slots=True)
class PullReport:
    pack: RemotePack
    folder: Path
    downloads: list[RemoteImage] = field(default_factory=list)
    deletes: list[PulledFile] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


async def find_pack(api: GenviralClient, wanted: str) -> RemotePack:
    """A pack by id, else by exact name: the key's own packs first (the oldest), then public ones."""
    if _ID.fullmatch(wanted):
        try:
            return await api.get_pack(wanted)
        except NotFound:
            pass
    for public in (False, True):
        named = [p for p in await api.list_packs(search=wanted, include_public=public) if p.name == wanted]
        if named:
            oldest: PackSummary = min(named, key=lambda p: p.created_at)
            return await api.get_pack(oldest.pack_id)
    raise NotFound(f"no pack has the id or the name {wanted!r} (among the key's packs, then public ones)")


class _FileSink:
    """Bytes written to a temporary file while they are hashed and checked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("wb")
        self.digester = Digester()

    def update(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.digester.update(chunk)

    def finish(self) -> None:
        """On disk for good before it gets its name (run in a worker thread: fsync takes a while)."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


class Puller:
    def __init__(self, api: GenviralClient, store: Store, progress: Progress | None = None) -> None:
        self.api = api
        self.store = store
        self.progress = progress or Progress(enabled=False)
        self.log = get_logger()

    async def pull(self, wanted: str, folder: Path, *, delete: bool = False, dry_run: bool = False) -> PullReport:
        pack = await find_pack(self.api, wanted)
        folder = folder.expanduser().resolve()
        report = PullReport(pack, folder)
        records = {r.image_id: r for r in self.store.pulled(str(folder))}
        present = {image.image_id for image in pack.images}
        for image in pack.images:
            record = records.get(image.image_id)
            if record and (folder / record.name).is_file():
                report.kept += 1
            else:
                report.downloads.append(image)
        if delete:
            report.deletes = [r for r in records.values() if r.image_id not in present]
        if dry_run:
            return report
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)
        taken = {p.name.lower() for p in folder.iterdir()}
        # Names some image already has: a file there with the same bytes is that image's, not a lost one.
        claimed = {r.name.lower() for r in records.values()}
        self.progress.total("downloaded", len(report.downloads))
        lock = asyncio.Lock()

        async def one(image: RemoteImage) -> None:
            try:
                name = await self._download(image, folder, taken, claimed, lock)
            except (PermanentError, TransientError, OSError) as exc:
                report.failures.append((image.image_id, untrusted(str(exc), 200)))
                return
            report.downloaded.append(name)
            self.progress.advance("downloaded")

        await asyncio.gather(*map(one, report.downloads))
        _fsync_dir(folder)  # the renames, durable once for all (a lost one is only downloaded again)
        for record in report.deletes:
            if self._remove(folder, record):
                report.deleted.append(record.name)
        return report

    async def _download(self, image: RemoteImage, folder: Path, taken: set[str], claimed: set[str],
                        lock: asyncio.Lock) -> str:
        parts = urlsplit(image.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError("its URL is not an http(s) address")
        temp = folder / f"{TEMP_PREFIX}{os.urandom(6).hex()}.part"
        try:
            sink = await self.api.download(image.url, MAX_PULL_BYTES, lambda: _FileSink(temp))
            await asyncio.to_thread(sink.finish)
            digest = sink.digester.digest()
            if digest.content_type is None or digest.problem:
                raise PermanentError(digest.problem or "not an image")
            async with lock:  # choosing a name and taking it is one step
                name = name_from_url(image.url) or fallback_name(image.image_id, digest.content_type)
                target = folder / name
                if name.lower() in taken and name.lower() not in claimed and target.is_file() \
                        and _sha256(target) == digest.sha256:
                    temp.unlink()  # a killed pull renamed it but never recorded it: it is this image
                else:
                    name = _suffixed(name, image.image_id, taken)
                    os.replace(temp, folder / name)
                taken.add(name.lower())
                claimed.add(name.lower())
        finally:
            temp.unlink(missing_ok=True)
        self.store.record_pulled(PulledFile(str(folder), name, image.image_id, image.url, digest.sha256))
        self.store.save_url_contents([UrlContent(image.url, digest.sha256, digest.size, digest.content_type)])
        return name

    def _remove(self, folder: Path, record: PulledFile) -> bool:
        """Delete a file this pull made, unless someone changed it since (then it is theirs now)."""
        path = folder / record.name
        try:
            if path.is_file() and _sha256(path) == record.sha256:
                path.unlink()
        except OSError as exc:
            self.log.warning("cannot delete a pulled file", path=str(path), error=exc.strerror)
            return False
        self.store.forget_pulled(record)
        return True


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

