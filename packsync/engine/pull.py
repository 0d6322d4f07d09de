"""``packsync pull``: a pack's images downloaded into a folder — atomically, resumably, incrementally.

Observe, plan, execute: what the folder holds of earlier pulls is observed (which recorded files are
there, and, for ``--delete``, which still hold what was pulled), the pure ``pull_plan`` decides what
to download and what to remove (and names the files: no name leads outside the folder), and the
``Puller`` runs that plan — ``--dry-run`` prints it instead. Each image becomes one file; a name
already taken by another file gets a short suffix instead of overwriting it. Bytes go to a hidden
temporary file in the folder, are fsync'ed, then linked under their name: an interrupted pull leaves no
partial image under a final name, and the next pull removes the leftovers and downloads only what it
does not have. What was pulled is recorded in the state (folder, file, image, content) as the file
gets its name, so ``--delete`` removes only files it pulled whose images left the pack — never one
changed since, checked again as it is removed — and a mapping of the folder to the same pack
afterwards adopts instead of uploading.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from packsync.engine.progress import QUIET, ProgressObserver
from packsync.engine.pull_plan import (
    DisownFile,
    Download,
    PullPlan,
    RemoveFile,
    astria_download,
    genviral_download,
    plan_pull,
)
from packsync.engine.sidecars import SidecarReport, fields_of, remove_if_ours, sidecar_path, write_beside
from packsync.errors import NotFound, PermanentError, SourceUnavailable, TransientError
from packsync.logs import get_logger, untrusted
from packsync.model import PackSummary, PulledFile, RemoteImage, RemotePack, UrlContent
from packsync.remote.answers import url_problem
from packsync.remote.astria import AstriaClient
from packsync.remote.genviral import GenviralClient
from packsync.sources.base import astria_label
from packsync.sources.media import Digester, digest_file

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

TEMP_PREFIX = ".packsync-pull-"
MAX_PULL_BYTES = 200_000_000
#: A download held in memory up to this size goes to disk in one write, off the event loop.
SPOOL_BYTES = 1 << 20
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{12}\.part")


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
    plan: PullPlan
    downloaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
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
        folder = _resolved(folder)
        report = await self._pull(pack, [genviral_download(str(folder), pack.pack_id, i) for i in pack.images],
                                  folder, delete=delete, dry_run=dry_run)
        if sidecars == "xmp" and not dry_run:
            names = {r.image_id: r.name for r in self.state.uploads.pulled(str(folder), pack.pack_id)}
            report.sidecars = await write_beside(folder, "full", {
                names[image.image_id]: fields_of(image)
                for image in pack.images if image.metadata.status == "completed" and image.image_id in names})
        return report

    async def pull_astria(self, astria: AstriaClient, pack_id: int, classes: Collection[str] | None, folder: Path,
                          *, delete: bool = False, dry_run: bool = False) -> PullReport:
        """Pull an Astria pack (``classes`` of it, or all): one sub-folder per class."""
        found = await astria.pack(pack_id)
        chosen = found.chosen(classes)
        pack = RemotePack(astria_label(pack_id), found.title, tuple(RemoteImage(url, url) for url in chosen))
        folder = _resolved(folder)
        return await self._pull(pack, [astria_download(str(folder), pack.pack_id, i) for i in chosen.values()],
                                folder, delete=delete, dry_run=dry_run)

    async def _pull(self, pack: RemotePack, images: Sequence[Download], folder: Path, *, delete: bool,
                    dry_run: bool) -> PullReport:
        """Observe the folder, plan, and (unless ``dry_run``) run the plan."""
        records = self.state.uploads.pulled(str(folder), pack.pack_id)
        in_pack = {image.image_id for image in images}
        present, unchanged = await asyncio.to_thread(
            _observe, folder, records, [r for r in records if r.image_id not in in_pack] if delete else [])
        report = PullReport(pack, folder, plan_pull(images, records, present, unchanged, delete=delete))
        if not dry_run:
            await self._execute(report)
        return report

    async def _execute(self, report: PullReport) -> None:
        """The downloads, a few at a time, then the removals; each recorded once it is done."""
        taken = _prepare(report.folder)
        self.progress.total("downloaded", len(report.plan.downloads))
        lock = asyncio.Lock()
        await asyncio.gather(*(self._run(download, report, taken, lock) for download in report.plan.downloads))
        _fsync_dir(report.folder)  # the new names, durable once for all (a lost one is only downloaded again)
        for removal in report.plan.removals:
            self._remove(report, removal)

    async def _run(self, download: Download, report: PullReport, taken: set[str], lock: asyncio.Lock) -> None:
        try:
            name = await self._download(download, report.folder, taken, lock)
        except (PermanentError, TransientError, OSError) as exc:
            report.failures.append((download.image_id, untrusted(str(exc), 200)))
            return
        report.downloaded.append(name)
        self.progress.advance("downloaded")

    async def _download(self, download: Download, folder: Path, taken: set[str], lock: asyncio.Lock) -> str:
        if problem := url_problem(download.url):
            raise PermanentError(problem)
        temp = folder / f"{TEMP_PREFIX}{os.urandom(6).hex()}.part"
        sinks: list[_FileSink] = []

        def sink() -> _FileSink:  # a fresh file for each attempt
            sinks.append(_FileSink(temp))
            return sinks[-1]

        try:
            written = await self.api.download(download.url, MAX_PULL_BYTES, sink)
            await asyncio.to_thread(written.finish)
            digest = written.digester.digest()
            if digest.content_type is None or digest.problem:
                raise PermanentError(digest.problem or "not an image")
            async with lock:  # choosing a name and taking it is one step
                name = self._place(temp, folder, taken, PulledFile(
                    download.folder, download.pack_id, download.file_name(digest.content_type), download.image_id,
                    download.url, digest.sha256),
                    UrlContent(download.url, digest.sha256, digest.size, digest.content_type))
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

    def _remove(self, report: PullReport, removal: RemoveFile | DisownFile) -> None:
        """Delete a file this pull made — unless someone changed it since the plan was made (then it is
        theirs now) — and forget it."""
        record = removal.record
        if isinstance(removal, RemoveFile):
            path = report.folder / record.name
            try:
                if _unchanged(path, record.sha256):
                    path.unlink()
                    remove_if_ours(sidecar_path(path, "full"))  # pulled with --sidecars xmp
                    report.deleted.append(record.name)
            except OSError as exc:
                self.log.warning("cannot delete a pulled file", path=str(path), error=exc.strerror)
                return
        self.state.uploads.forget_pulled(record)


def _resolved(folder: Path) -> Path:
    try:
        return folder.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise SourceUnavailable(f"{folder} cannot be used as the pull's folder ({exc})") from None


def _observe(folder: Path, records: Sequence[PulledFile], deletable: Sequence[PulledFile]) -> tuple[set[str], set[str]]:
    """The image ids of the recorded files still there, and of the ``deletable`` ones that still hold
    what was pulled (read in a worker thread: it stats and hashes files)."""
    present = {record.image_id for record in records if (folder / record.name).is_file()}
    return present, {record.image_id for record in deletable if _unchanged(folder / record.name, record.sha256)}


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

