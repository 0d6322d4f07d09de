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
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit

import msgspec

from packsync.engine.progress import QUIET, ProgressObserver
from packsync.engine.sidecars import SidecarReport, fields_of, remove_if_ours, sidecar_path, write_beside
from packsync.errors import NotFound, PermanentError, SourceUnavailable, TransientError
from packsync.logs import get_logger, untrusted
from packsync.model import PackSummary, RemoteImage, RemotePack, UrlContent
from packsync.remote.answers import url_problem
from packsync.remote.astria import AstriaClient
from packsync.remote.genviral import GenviralClient
from packsync.sources.media import SUPPORTED, Digester, digest_file
from packsync.state.records import PulledFile

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

TEMP_PREFIX = ".packsync-pull-"
_EXTENSIONS = {*SUPPORTED.values(), "jpeg"}
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,150}")
MAX_PULL_BYTES = 200_000_000
#: A download held in memory up to this size goes to disk in one write, off the event loop.
SPOOL_BYTES = 1 << 20
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{12}\.part")


def name_from_url(url: str) -> str | None:
    """The URL's last path segment, when it is a safe file name with an image extension; else None."""
    segment = unquote(PurePosixPath(urlsplit(url).path).name)
    stem, dot, ext = segment.rpartition(".")
    if not (dot and stem and ext.lower() in _EXTENSIONS and _SAFE.fullmatch(segment)):
        return None
    return segment


def genviral_name(image: RemoteImage, content_type: str) -> str:
    """A Genviral image's file: its URL's name when that is safe, else ``<image id>.<ext>``."""
    return name_from_url(image.url) or fallback_name(image.image_id, content_type)


def _safe_part(text: str) -> str:
    """``text`` as one safe path segment (an Astria class name is the API's, so untrusted)."""
    return text if _SAFE.fullmatch(text) and text not in (".", "..") else hashlib.sha256(text.encode()).hexdigest()[:16]


def fallback_name(image_id: str, content_type: str) -> str:
    """``<image id>.<ext>``, the id made safe (ids are the API's, so untrusted too)."""
    safe_id = image_id if _SAFE.fullmatch(image_id) and "." not in image_id else \
        hashlib.sha256(image_id.encode()).hexdigest()[:16]
    return f"{safe_id}.{SUPPORTED[content_type]}"


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
    sidecars: SidecarReport | None = None


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
    """Bytes hashed as they come, held in memory up to ``SPOOL_BYTES`` and written to a temporary file
    past that: most images reach the disk only in ``finish``, off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: BinaryIO | None = None
        self.held = bytearray()
        self.digester = Digester()

    def update(self, chunk: bytes) -> None:
        self.digester.update(chunk)
        self.held += chunk
        if len(self.held) > SPOOL_BYTES:
            self._spill()

    def _spill(self) -> None:
        if self.handle is None:
            self.handle = self.path.open("wb")
        self.handle.write(self.held)
        self.held.clear()

    def finish(self) -> None:
        """On disk for good before it gets its name (run in a worker thread: opening and fsync take a while).

        A download held whole (most images) goes down on a bare descriptor — open, one write, fsync,
        close — with as little Python as can be between them: the worker thread takes the interpreter
        lock back from the event loop after each.
        """
        if self.handle is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                view = memoryview(self.held)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        self._spill()
        assert self.handle is not None
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class Puller:
    def __init__(self, api: GenviralClient, state: State, progress: ProgressObserver = QUIET) -> None:
        self.api = api
        self.state = state
        self.progress = progress
        self.log = get_logger()

    async def pull(self, wanted: str, folder: Path, *, delete: bool = False, dry_run: bool = False,
                   sidecars: str = "none") -> PullReport:
        """Pull the Genviral pack ``wanted`` (an id, or an exact name); ``sidecars = "xmp"``: with each
        file's AI description and keywords in an XMP sidecar beside it."""
        pack = await find_pack(self.api, wanted)
        report = await self._pull(pack, genviral_name, folder, delete=delete, dry_run=dry_run)
        if sidecars == "xmp" and not dry_run:
            names = {r.image_id: r.name for r in self.state.uploads.pulled(str(report.folder), pack.pack_id)}
            report.sidecars = await write_beside(report.folder, "full", {
                names[image.image_id]: fields_of(image)
                for image in pack.images if image.metadata.status == "completed" and image.image_id in names})
        return report

    async def pull_astria(self, astria: AstriaClient, pack_id: int, classes: Collection[str] | None, folder: Path,
                          *, delete: bool = False, dry_run: bool = False) -> PullReport:
        """Pull an Astria pack (``classes`` of it, or all): one sub-folder per class."""
        found = await astria.pack(pack_id)
        chosen = found.chosen(classes)
        pack = RemotePack(f"astria:{pack_id}", found.title, tuple(RemoteImage(url, url) for url in chosen))

        def name(image: RemoteImage, content_type: str) -> str:
            source = chosen[image.url]
            return f"{_safe_part(source.cls)}/{source.prompt_id}-{source.index}.{SUPPORTED[content_type]}"

        return await self._pull(pack, name, folder, delete=delete, dry_run=dry_run)

    async def _pull(self, pack: RemotePack, name_of: Callable[[RemoteImage, str], str], folder: Path, *,
                    delete: bool, dry_run: bool) -> PullReport:
        try:
            folder = folder.expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise SourceUnavailable(f"{folder} cannot be used as the pull's folder ({exc})") from None
        report = PullReport(pack, folder)
        records = {r.image_id: r for r in self.state.uploads.pulled(str(folder), pack.pack_id)}
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
            report.deletes = [r for r in report.deletes if _unchanged(folder / r.name, r.sha256)]
            return report
        taken = _prepare(folder)
        self.progress.total("downloaded", len(report.downloads))
        lock = asyncio.Lock()

        async def one(image: RemoteImage) -> None:
            try:
                name = await self._download(image, pack.pack_id, folder, taken, lock, name_of)
            except (PermanentError, TransientError, OSError) as exc:
                report.failures.append((image.image_id, untrusted(str(exc), 200)))
                return
            report.downloaded.append(name)
            self.progress.advance("downloaded")

        await asyncio.gather(*map(one, report.downloads))
        _fsync_dir(folder)  # the new names, durable once for all (a lost one is only downloaded again)
        for record in report.deletes:
            if self._remove(folder, record):
                report.deleted.append(record.name)
        return report

    async def _download(self, image: RemoteImage, pack_id: str, folder: Path, taken: set[str],
                        lock: asyncio.Lock, name_of: Callable[[RemoteImage, str], str]) -> str:
        if problem := url_problem(image.url):
            raise PermanentError(problem)
        temp = folder / f"{TEMP_PREFIX}{os.urandom(6).hex()}.part"
        sinks: list[_FileSink] = []

        def sink() -> _FileSink:  # a fresh file for each attempt
            sinks.append(_FileSink(temp))
            return sinks[-1]

        try:
            written = await self.api.download(image.url, MAX_PULL_BYTES, sink)
            await asyncio.to_thread(written.finish)
            digest = written.digester.digest()
            if digest.content_type is None or digest.problem:
                raise PermanentError(digest.problem or "not an image")
            async with lock:  # choosing a name and taking it is one step
                name = self._place(temp, folder, taken, PulledFile(
                    str(folder), pack_id, name_of(image, digest.content_type), image.image_id, image.url,
                    digest.sha256),
                    UrlContent(image.url, digest.sha256, digest.size, digest.content_type))
        finally:
            for opened in sinks:
                opened.close()
            temp.unlink(missing_ok=True)
        return name

    def _place(self, temp: Path, folder: Path, taken: set[str], record: PulledFile, content: UrlContent) -> str:
        """Give the downloaded file a name no other file has, never replacing one (a link fails on an
        existing name, where a rename would overwrite it). It is recorded first: a pull killed in between
        leaves a record without its file, and the next pull downloads it again."""
        parent = (folder / record.name).parent
        if parent != folder:
            parent.mkdir(exist_ok=True)  # an Astria class's sub-folder
        while True:
            name = _suffixed(record.name, record.image_id, taken)
            taken.add(name.lower())
            self.state.uploads.record_pulled(msgspec.structs.replace(record, name=name), content)
            try:
                os.link(temp, folder / name)
            except FileExistsError:
                continue
            return name

    def _remove(self, folder: Path, record: PulledFile) -> bool:
        """Delete a file this pull made, unless someone changed it since (then it is theirs now);
        True when it was deleted."""
        path = folder / record.name
        try:
            deleted = _unchanged(path, record.sha256)
            if deleted:
                path.unlink()
                remove_if_ours(sidecar_path(path, "full"))  # pulled with --sidecars xmp
        except OSError as exc:
            self.log.warning("cannot delete a pulled file", path=str(path), error=exc.strerror)
            return False
        self.state.uploads.forget_pulled(record)
        return deleted


def _unchanged(path: Path, sha256: str) -> bool:
    """Whether ``path`` is still a file holding exactly ``sha256``."""
    try:
        return path.is_file() and digest_file(path).sha256 == sha256
    except OSError:
        return False


def _prepare(folder: Path) -> set[str]:
    """Create the folder if needed, drop what a killed pull left, and return the names taken in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(TEMP_PREFIX + "*.part"):
            if _TEMP.fullmatch(leftover.name) and leftover.is_file():  # exactly pull's own, nobody else's
                leftover.unlink()
        return {p.name.lower() for p in folder.iterdir()}
    except OSError as exc:
        raise SourceUnavailable(f"{folder} cannot be used as the pull's folder ({exc.strerror})") from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the files themselves are
    finally:
        os.close(fd)

