"""``packsync pull``: a pack's images downloaded into a folder — atomically, resumably, incrementally.

Observe, plan, execute: what the folder holds of earlier pulls is observed (which recorded files are
there, and, for ``--delete``, which still hold what was pulled), the pure ``pull_plan`` decides what
to download and what to remove (and names the files: no name leads outside the folder), and the
``Puller`` runs that plan — ``--dry-run`` prints it instead. Each image becomes one file, named by the
path it was uploaded from when that is known — from the state, for what it pushed, else from the name
its upload was given (``GET /files``) — sub-folders and all, else by its URL; a name already taken by
another file gets a short suffix instead of overwriting it, and a path one of whose folders a file holds
is named as if unknown (a notice), never failing at every pull. Bytes go to a hidden
temporary file in the folder, are fsync'ed, then linked under their name: an interrupted pull leaves no
partial image under a final name, and the next pull removes the leftovers and downloads only what it
does not have. What was pulled is recorded in the state (folder, file, image, content) as the file
gets its name, so ``--delete`` removes only files it pulled whose images left the pack — never one
changed since, checked again as it is removed — and a mapping of the folder to the same pack
afterwards adopts instead of uploading. Deleting has the sync direction's safety (``pull_plan``).

A pull runs beside the daemon or a ``run``, without the state's lock (its opener locks the folder
instead: ``state.lock.PullLock``): the rows it writes are its own (``pulled``) or facts a sync records
alike (``url_contents``), each committed in a short transaction of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from packsync.engine.names import upload_name
from packsync.engine.planner import MappingOptions, SourceFacts
from packsync.engine.progress import QUIET, ProgressObserver
from packsync.engine.pull_folder import PullFolder, temp_name
from packsync.engine.pull_plan import (
    BLOCKED,
    LINK_SKIPPED,
    DisownFile,
    Download,
    PullPlan,
    PullSafety,
    RemoveFile,
    as_if_unknown,
    genviral_download,
    listed_download,
    plan_pull,
    safe_part,
)
from packsync.engine.sidecars import SidecarReport, fields_of, remove_if_ours, sidecar_path, write_beside
from packsync.errors import (
    ApiError,
    AuthError,
    ExitCode,
    LinkInTheWay,
    NotFound,
    PermanentError,
    SourceError,
    SourceUnavailable,
    TransientError,
)
from packsync.logs import get_logger, untrusted
from packsync.model import Listed, ListedImage, PackSummary, Problem, PulledFile, RemoteImage, RemotePack, UrlContent
from packsync.remote.answers import url_problem
from packsync.remote.genviral import GenviralClient
from packsync.sources.kinds import owner_kind
from packsync.sources.media import Digester
from packsync.xmp import Fields

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

MAX_PULL_BYTES = 200_000_000
NAMES_ROUTE = "GET /files"
NAMES_UNREAD = "the names the files were uploaded with could not be read: named as if unknown"
#: Why some images were named as if unknown after a walk of ``GET /files`` that saw the list change.
NAMES_SHIFTED = ("the key's file list changed while it was read (files uploaded or deleted meanwhile), "
                 "so the names their uploads were given may have been missed")
#: A download held in memory up to this size goes to disk in one write, off the event loop.
SPOOL_BYTES = 1 << 20
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


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
    #: The label of the remote source pulled (``astria:260``); None: a Genviral pack.
    label: str | None = None
    #: Entries of the pack that could not be read, links skipped, names changed (notices).
    problems: list[Problem] = field(default_factory=list)

    def met_link(self, link: LinkInTheWay) -> None:
        """A link met while the pull ran (made since it looked): said once, like one seen before."""
        if link.where not in {problem.rel_path for problem in self.problems}:
            self.problems.append(Problem(link.where, LINK_SKIPPED, notice=True))

    @property
    def exit_code(self) -> ExitCode:
        if self.plan.safety:
            return ExitCode.SAFETY
        if self.failures or any(not problem.notice for problem in self.problems):
            return ExitCode.SOME_FAILED
        return ExitCode.OK


class PullOptions(msgspec.Struct, frozen=True):
    """How a pull goes: ``delete`` files whose images left the pack (within ``max_delete`` unless
    ``force``), or only ``dry_run`` it."""

    delete: bool = False
    dry_run: bool = False
    max_delete: int | str = MappingOptions().max_delete
    force: bool = False


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

    def __init__(self, directory: int, name: str) -> None:
        self.directory = directory
        self.name = name
        self.handle: BinaryIO | None = None
        self.held = bytearray()
        self.digester = Digester()

    def update(self, chunk: bytes) -> None:
        self.digester.update(chunk)
        self.held += chunk
        if len(self.held) > SPOOL_BYTES:
            self._spill()

    def _open(self) -> int:
        """The temporary file, in its verified directory, never through a link put in its place."""
        return os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                       dir_fd=self.directory)

    def _spill(self) -> None:
        if self.handle is None:
            self.handle = os.fdopen(self._open(), "wb")
        self.handle.write(self.held)
        self.held.clear()

    def finish(self) -> None:
        """On disk for good before it gets its name (run in a worker thread: opening and fsync take a while).

        A download held whole (most images) goes down on a bare descriptor — open, one write, fsync,
        close — with as little Python as can be between them: the worker thread takes the interpreter
        lock back from the event loop after each.
        """
        if self.handle is None:
            fd = self._open()
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

    async def pull(self, wanted: str, folder: Path, options: PullOptions, sidecars: str = "none") -> PullReport:
        """Pull the Genviral pack ``wanted`` (an id, or an exact name); ``sidecars = "xmp"``: with each
        file's AI description and keywords in an XMP sidecar beside it."""
        pack = await find_pack(self.api, wanted)
        folder = resolved_folder(folder)
        given, unnamed = await self._names(pack, folder)
        report = await self._pull(pack, [genviral_download(str(folder), pack.pack_id, i, given.get(i.image_id))
                                         for i in pack.images],
                                  folder, options, PullSafety(f"genviral:{pack.name}", SourceFacts(),
                                                              _limits(options)))
        report.problems[:0] = unnamed
        if sidecars == "xmp" and not options.dry_run:
            names = self._pulled_names(folder, pack.pack_id)
            report.sidecars = await write_beside(folder, "full", {
                names[image.image_id]: fields_of(image)
                for image in pack.images if image.metadata.status == "completed" and image.image_id in names})
        return report

    def _pulled_names(self, folder: Path, pack_id: str) -> dict[str, str]:
        """The files pulled from ``pack_id`` into ``folder``, by image id: those a sidecar may go beside (none
        behind a link below the folder)."""
        return {r.image_id: r.name for r in self.state.uploads.pulled(str(folder), pack_id)
                if _no_link_on_the_way(folder, r.name)}

    async def _names(self, pack: RemotePack, folder: Path) -> tuple[dict[str, str], list[Problem]]:
        """The path each image of the pack was uploaded from, by image id, where it is known: from this
        state when it pushed the image (its file's path; ``engine/names.py``), else from the name its
        upload was given (``GET /files``: walked only when an image not pulled yet has no name here). The
        names are untrusted either way (``pull_plan`` makes them safe). A walk that fails is a notice:
        the images it would have named are named as if unknown."""
        given = {image_id: name if owner_kind(owner) != "folder" else upload_name(path, name)
                 for image_id, (path, name, owner) in self.state.images.sources_of(pack.pack_id).items()}
        pulled = {record.image_id for record in self.state.uploads.pulled(str(folder), pack.pack_id)}
        unknown = {image.url: image.image_id for image in pack.images
                   if image.image_id not in given and image.image_id not in pulled}
        if not unknown:
            return given, []
        try:
            found = await self.api.file_names(unknown.keys())
        except AuthError:
            raise
        except ApiError as exc:
            return given, [Problem(NAMES_ROUTE, f"{NAMES_UNREAD} ({exc})", notice=True)]
        given.update((unknown[url], name) for url, name in found.names.items())
        missed = len(unknown.keys() - found.names.keys())
        if found.shifted and missed:
            return given, [Problem(NAMES_ROUTE, f"{missed} image{'' if missed == 1 else 's'} named by their CDN "
                                   f"name: {NAMES_SHIFTED}", notice=True)]
        return given, []

    async def pull_listed(self, listed: Listed, folder: Path, options: PullOptions, sidecars: str = "none",
                          kept: Callable[[Collection[str]], Awaitable[set[str]]] | None = None) -> PullReport:
        """Pull a remote source's images, as its ``listed`` says (``RemoteSettings.listed``), each named by
        its parts; ``sidecars = "xmp"``: with each image's ``detail`` as the description of an XMP sidecar
        beside it. An entry the listing could not read is reported, and withholds every removal. ``kept``
        (``RemoteSettings.kept``): of the files pulled before that the listing no longer shows, those the
        source still has, which ``--delete`` leaves alone."""
        folder = resolved_folder(folder)
        images: dict[str, ListedImage] = {}
        for image in listed.images:  # an image listed twice is one file, named after its first listing
            images.setdefault(image.url, image)
        pack = RemotePack(listed.label, listed.title, tuple(RemoteImage(url, url) for url in images))
        scope = None if listed.scope is None else {safe_part(part) for part in listed.scope}
        still: set[str] = set()
        if options.delete and kept is not None and listed.unreadable is None:
            missing = {r.name: r.image_id for r in self.state.uploads.pulled(str(folder), listed.label)
                       if r.image_id not in images}
            still = {missing[name] for name in await kept(list(missing))} if missing else set()
        report = await self._pull(pack, [listed_download(str(folder), listed.label, i) for i in images.values()],
                                  folder, options, PullSafety(listed.label, SourceFacts(unreadable=listed.unreadable),
                                                              _limits(options)), scope, still)
        report.label = listed.label
        report.problems[:0] = listed.problems
        if sidecars == "xmp" and not options.dry_run:
            names = self._pulled_names(folder, listed.label)
            report.sidecars = await write_beside(folder, "full", {
                names[image.url]: Fields(image.url, image.detail, (), None) for image in images.values()
                if image.detail is not None and image.url in names})
        return report

    async def _pull(self, pack: RemotePack, images: Sequence[Download], folder: Path, options: PullOptions,
                    safety: PullSafety, scope: Collection[str] | None = None,
                    still: Collection[str] = ()) -> PullReport:
        """Observe the folder, plan, and (unless a dry run) run the plan. ``scope``: the top sub-folders whose
        files this pull mirrors (an Astria pack's ``--classes``; None: all): a file pulled into another
        class's sub-folder is not this pull's to remove, its image being left out, not gone. ``still``: the
        images the source still has though it did not list them, whose files are not this pull's either."""
        records = self.state.uploads.pulled(str(folder), pack.pack_id)
        mine = [r for r in records if (scope is None or "/" in r.name and r.name.partition("/")[0] in scope)
                and r.image_id not in still]
        in_pack = {image.image_id for image in images}
        present, unchanged, links = await asyncio.to_thread(
            _observe, folder, records, [r for r in mine if r.image_id not in in_pack] if options.delete else [],
            {image.directory for image in images})
        plan = plan_pull(images, mine, present, unchanged, delete=options.delete, links=links, safety=safety)
        report = PullReport(pack, folder, plan, problems=list(plan.notices))
        if not options.dry_run:
            await self._execute(report)
        return report

    async def _execute(self, report: PullReport) -> None:
        """The downloads, a few at a time, then the removals; each recorded once it is done."""
        try:
            tree = await asyncio.to_thread(PullFolder, report.folder, write=True)
        except OSError as exc:
            raise SourceUnavailable(f"{report.folder} cannot be used as the pull's folder ({exc.strerror})") from None
        with tree:
            self.progress.total("downloaded", len(report.plan.downloads))
            lock = asyncio.Lock()
            await asyncio.gather(*(self._run(download, report, tree, lock) for download in report.plan.downloads))
            tree.sync()
            for removal in report.plan.removals:
                self._remove(report, tree, removal)

    async def _run(self, download: Download, report: PullReport, tree: PullFolder, lock: asyncio.Lock) -> None:
        try:
            try:
                name = await self._download(download, tree, lock)
            except NotADirectoryError:  # its folder cannot be made: it would fail at every pull, so it moves
                report.problems.append(Problem(download.name or download.stem, BLOCKED, notice=True))
                name = await self._download(as_if_unknown(download), tree, lock)
        except LinkInTheWay as exc:  # made while the pull ran
            report.met_link(exc)
            return
        except (PermanentError, TransientError, SourceError, OSError) as exc:
            report.failures.append((download.image_id, untrusted(str(exc), 200)))
            return
        report.downloaded.append(name)
        self.progress.advance("downloaded")

    def _received(self, count: int) -> None:
        self.progress.advance("received", count)

    async def _download(self, download: Download, tree: PullFolder, lock: asyncio.Lock) -> str:
        if problem := url_problem(download.url):
            raise PermanentError(problem)
        directory = tree.opened(download.directory)
        if directory is None:
            directory = await asyncio.to_thread(tree.directory, download.directory)
            assert directory is not None  # (made when missing)
        temp = temp_name()
        sinks: list[_FileSink] = []

        def sink() -> _FileSink:  # a fresh file for each attempt
            sinks.append(_FileSink(directory, temp))
            return sinks[-1]

        try:
            written = await self.api.download(download.url, MAX_PULL_BYTES, sink, self._received)
            await asyncio.to_thread(written.finish)
            digest = written.digester.digest()
            if digest.content_type is None or digest.problem:
                raise PermanentError(digest.problem or "not an image")
            async with lock:  # choosing a name and taking it is one step
                tree.check(download.directory)
                name = self._place(temp, directory, tree.taken, PulledFile(
                    download.folder, download.pack_id, download.file_name(digest.content_type), download.image_id,
                    download.url, digest.sha256),
                    UrlContent(download.url, digest.sha256, digest.size, digest.content_type))
        finally:
            for opened in sinks:
                opened.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=directory)
        return name

    def _place(self, temp: str, directory: int, taken: set[str], record: PulledFile, content: UrlContent) -> str:
        """Give the downloaded file a name no other file has, never replacing one (a link fails on an
        existing name, link or not, where a rename would overwrite it), in the directory it was written
        in. It is recorded first: a pull killed in between leaves a record without its file, and the
        next pull downloads it again."""
        while True:
            name = _suffixed(record.name, record.image_id, taken)
            taken.add(name.lower())
            self.state.uploads.record_pulled(msgspec.structs.replace(record, name=name), content)
            try:
                os.link(temp, name.rpartition("/")[2], src_dir_fd=directory, dst_dir_fd=directory,
                        follow_symlinks=False)
            except FileExistsError:
                continue
            return name

    def _remove(self, report: PullReport, tree: PullFolder, removal: RemoveFile | DisownFile) -> None:
        """Delete a file this pull made — unless someone changed it since the plan was made (then it is
        theirs now) — and forget it. Nothing is deleted through a link."""
        record = removal.record
        if isinstance(removal, RemoveFile):
            try:
                if tree.holds(record.name, record.sha256):
                    tree.unlink(record.name)
                    remove_if_ours(sidecar_path(report.folder / record.name, "full"))  # (only one packsync wrote)
                    report.deleted.append(record.name)
            except LinkInTheWay as exc:
                report.met_link(exc)
                return
            except SourceError as exc:
                report.failures.append((record.image_id, str(exc)))
                return
            except OSError as exc:
                self.log.warning("cannot delete a pulled file", path=str(report.folder / record.name),
                                 error=exc.strerror)
                return
        self.state.uploads.forget_pulled(record)


def _no_link_on_the_way(folder: Path, name: str) -> bool:
    """Whether each directory on the way from the folder to the file ``name`` is a directory, not a link:
    a sidecar is written by its path, and never through a link below the folder."""
    parts = name.split("/")[:-1]
    try:
        return all(stat.S_ISDIR(os.lstat(folder.joinpath(*parts[:n])).st_mode) for n in range(1, len(parts) + 1))
    except OSError:
        return False


def _limits(options: PullOptions) -> MappingOptions:
    return MappingOptions(max_delete=options.max_delete, force=options.force)


def resolved_folder(folder: Path) -> Path:
    """The folder a pull writes into, as it is known by (its records, its lock): absolute, links resolved once."""
    try:
        return folder.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise SourceUnavailable(f"{folder} cannot be used as the pull's folder ({exc})") from None


def _observe(folder: Path, records: Sequence[PulledFile], deletable: Sequence[PulledFile],
             directories: Collection[str]) -> tuple[set[str], set[str], set[str]]:
    """The image ids of the recorded files still there, of the ``deletable`` ones that still hold what
    was pulled, and the links met on the way to those and to the ``directories`` downloads go in
    (read in a worker thread: it stats and hashes files; it makes and changes nothing)."""
    try:
        tree = PullFolder(folder, write=False)
    except OSError:
        return set(), set(), set()  # not made yet (or not usable: said when the pull writes)
    with tree:
        for directory in directories:
            try:
                tree.directory(directory)
            except (LinkInTheWay, OSError):
                pass  # a link is in ``tree.links``; anything else fails the downloads, each said
        present = {record.image_id for record in records if _or_link(tree.is_file, record.name)}
        unchanged = {record.image_id for record in deletable if _or_link(tree.holds, record.name, record.sha256)}
        return present, unchanged, set(tree.links)


def _or_link(check: Callable[..., bool], *args: str) -> bool:
    """``check(*args)``, False behind a link (which the folder remembers in its ``links``) or for a name
    that does not lead below the folder."""
    try:
        return check(*args)
    except SourceError:
        return False
