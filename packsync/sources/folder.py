"""A local folder as a source: walk it and say what images it holds, by content.

It asks one question of the past — "what did this file look like last time?" — through the
``previous`` mapping of cached stat keys, so an unchanged tree is stat-ed but never read. It
knows nothing of the database or the API. A file is hashed, then stat-ed again: a file that
changed while it was read is reported and retried later, never synced half-written.

Two walks share one set of rules per entry (``_Walk._entry``): ``scan_folder`` goes over the whole
tree, ``scan_paths`` over the paths a watcher saw change (a folder among them with everything below
it), so that one file dropped into a folder of 100,000 costs the few ``stat`` calls of that file.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Protocol

import msgspec

from packsync.errors import ItemChanged, SourceUnavailable
from packsync.files import read_regular
from packsync.model import CachedFile, ContentItem, PathsScan, Problem, Scan
from packsync.sources.body import UploadBody
from packsync.sources.media import digest_file
from packsync.sources.patterns import DEFAULT_EXCLUDE, IGNORE_FILE, Patterns, compiled

#: Sidecars (``engine/sidecars.py`` writes them; so do other programs) and packsync's files in the making.
SIDECAR_SUFFIXES = (".xmp", ".packsync-tmp")
#: A ``.packsyncignore`` larger than this is refused (50,000 lines would slow every scan).
MAX_IGNORE_BYTES = 256 * 1024
#: A file's version token (``CachedFile.version``): its stat key, device, inode, size and mtime. A file
#: replaced, rewritten or touched has another (formatted with ``%``: the walk does it for every file).
_VERSION = "%d:%d:%d:%d"


def stat_version(st: os.stat_result) -> str:
    """The version token of a file ``stat`` saw."""
    return _VERSION % (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Filters:
    """Which items a mapping syncs: gitignore-style ``include`` and ``exclude`` patterns (``patterns.py``),
    plus the mapped folder's own ``.packsyncignore`` lines once ``reading`` has read them.

    Paths are matched as seen from the mapped folder: a subfolder's own mapping (``packs_from =
    "subfolders"``) has ``base`` ("Acme/") put before its paths, and reads the mapped folder's
    ``.packsyncignore`` (``ignore_from``).
    """

    include: Sequence[str]
    exclude: Sequence[str]
    max_file_bytes: int
    follow_symlinks: bool = False
    ignore_file: Sequence[str] = ()
    base: str = ""
    ignore_from: Path | None = None
    _included: Patterns = field(init=False, repr=False, compare=False)
    _excluded: Patterns = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen, so the compiled patterns are set the way dataclasses set fields.
        object.__setattr__(self, "_included", compiled((*self.include,), walked=False))
        object.__setattr__(self, "_excluded", compiled((*self.exclude, *self.ignore_file)))

    def below(self, folder: str, parent: Path) -> Filters:
        """These filters for the subfolder ``folder`` of the mapped folder ``parent``."""
        return replace(self, base=f"{self.base}{folder}/", ignore_from=parent)

    def reading(self, root: Path) -> Filters:
        """These filters with the mapped folder's ``.packsyncignore`` (read now: it may have changed).

        A file that is there but cannot be read (a folder, a FIFO, one larger than ``MAX_IGNORE_BYTES``),
        or holds a pattern that is not one, fails the scan
        (``SourceUnavailable``: nothing is deleted): going on without it would sync what it excludes.
        """
        path = (self.ignore_from or root) / IGNORE_FILE
        try:
            data = read_regular(path, MAX_IGNORE_BYTES)
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise SourceUnavailable(f"{path} cannot be read ({exc.strerror}); nothing synced or deleted "
                                    "without its patterns") from None
        lines = data.decode("utf-8-sig", errors="replace").splitlines()
        if list(self.ignore_file) == lines:
            return self
        try:
            return replace(self, ignore_file=lines)
        except ValueError as exc:
            raise SourceUnavailable(f"{path}: {exc}; nothing synced or deleted until it is fixed") from None

    def excluded(self, rel: str, name: str, folder: bool) -> bool:
        return self._excluded.matches(self.base + rel, name, folder)

    def excluded_by(self, rel: str, name: str, folder: bool) -> str | None:
        """The exclude pattern that excludes ``rel`` (for ``run --dry-run -v``)."""
        return self._excluded.deciding(self.base + rel, name, folder)

    def included(self, rel: str, name: str) -> bool:
        """Whether a file is one the mapping syncs (folders are always walked, unless excluded); never a
        sidecar, or one being written, whatever the patterns say."""
        return self._included.matches(self.base + rel, name, False) and \
            not name.lower().endswith(SIDECAR_SUFFIXES)

    def ignores(self, parts: Sequence[str], folder: bool) -> bool:
        """Whether a path below the mapped folder (its ``parts``) is outside the mapping: excluded itself,
        under an excluded folder, or a file no include pattern takes (the watcher's question)."""
        for depth in range(1, len(parts) + 1):
            is_folder = folder or depth < len(parts)
            if self.excluded("/".join(parts[:depth]), parts[depth - 1], is_folder):
                return True
        return not folder and not self.included("/".join(parts), parts[-1])


class FolderSettings(Protocol):
    """What a mapping of a folder says of the files it syncs (a config's ``MappingConfig`` is one: the
    config is read above the sources, which take its plain values)."""

    @property
    def include(self) -> Sequence[str]: ...
    @property
    def exclude(self) -> Sequence[str]: ...
    @property
    def default_excludes(self) -> bool: ...
    @property
    def max_file_mb(self) -> float: ...
    @property
    def follow_symlinks(self) -> bool: ...


def filters_for(mapping: FolderSettings) -> Filters:
    """Which files a mapping syncs: the scanner's view, and the watcher's. A mapping's own excludes come
    after the default junk, so that its ``!`` can take one of those back, and its list never drops them."""
    exclude = [*DEFAULT_EXCLUDE, *mapping.exclude] if mapping.default_excludes else list(mapping.exclude)
    return Filters(mapping.include, exclude, int(mapping.max_file_mb * 1_000_000), mapping.follow_symlinks)


class FolderSource:
    """A mapped folder, mirrored recursively (the ``Source`` interface)."""

    kind: str = "folder"
    expires_at: float | None = None
    gone = False
    unavailable: str | None = None  # a folder that is not there is told by ``exists``

    def __init__(self, root: Path, filters: Filters) -> None:
        self.root = root
        self.filters = filters
        self.label = str(root)
        self.name: str | None = None

    def exists(self) -> bool:
        return self.root.is_dir()

    async def scan(self, previous: Mapping[str, CachedFile], busy: Collection[str] = (),
                   on_item: Callable[[int], None] | None = None) -> Scan:
        """The walk, in a worker thread (it stats and reads files; the event loop goes on)."""
        return await asyncio.to_thread(scan_folder, self.root, previous, self.filters, on_item, busy)

    async def scan_paths(self, paths: Collection[str], previous: Mapping[str, CachedFile],
                         busy: Collection[str] = (), on_item: Callable[[int], None] | None = None) -> PathsScan | None:
        """``scan_paths``, in a worker thread."""
        return await asyncio.to_thread(scan_paths, self.root, paths, previous, self.filters, busy, on_item)

    async def listing(self) -> Scan:
        """The walk alone, in a worker thread: its ``listing`` and its own problems, no file read."""
        return await asyncio.to_thread(lambda: scan_folder(self.root, {}, self.filters, judge=False))

    async def open(self, item: ContentItem) -> UploadBody:
        """The file as scanned: read from disk as it is sent."""
        follow = self.filters.follow_symlinks
        return UploadBody.of_file(self.root / item.key, item.size, item.sha256, follow=follow,
                                  within=self.root.resolve() if follow else None)

    def close(self) -> None:
        pass


class GoneFolder:
    """A subfolder packsync synced (as a pack of its own) that is not there any more: an empty source,
    so that its pack is handled as an emptied folder's (a safety stop unless ``--force``)."""

    kind: str = "folder"
    expires_at: float | None = None
    gone = True

    def __init__(self, label: str, unavailable: str | None = None) -> None:
        self.label = label
        self.name: str | None = None
        self.unavailable = unavailable  # why its folder cannot be told gone: then it is a missing source

    def exists(self) -> bool:
        return self.unavailable is None

    async def scan(self, previous: Mapping[str, CachedFile], busy: Collection[str] = (),
                   on_item: Callable[[int], None] | None = None) -> Scan:
        return Scan(source=self.label)

    async def scan_paths(self, paths: Collection[str], previous: Mapping[str, CachedFile],
                         busy: Collection[str] = (), on_item: Callable[[int], None] | None = None) -> None:
        return None  # an emptied source is planned whole

    async def listing(self) -> Scan:
        return Scan(source=self.label)

    async def open(self, item: ContentItem) -> UploadBody:
        raise ItemChanged("its folder is gone")

    def close(self) -> None:
        pass


def scan_folder(root: Path, previous: Mapping[str, CachedFile], filters: Filters,
                on_file: Callable[[int], None] | None = None, busy: Collection[str] = (), *,
                judge: bool = True) -> Scan:
    """Scan ``root`` recursively. ``on_file(bytes_read)`` is called after each file is judged.

    ``busy`` names files (relative paths) still being written: they are not read now, and
    whatever content they held before is kept. Without ``judge`` it is the walk alone: every file
    ``stat``ed, none compared with the cache or read, and the scan has its ``listing`` only (with
    the problems of the walk itself).
    """
    _check_root(root)
    return _Walk(root, previous, filters, on_file, busy, judge).run()


def scan_paths(root: Path, paths: Iterable[str], previous: Mapping[str, CachedFile], filters: Filters,
               busy: Collection[str] = (), on_file: Callable[[int], None] | None = None) -> PathsScan | None:
    """Scan only ``paths`` of ``root`` (relative paths, as a watcher reported them), by the full walk's
    rules; None when only a full scan can say what changed.

    ``previous`` must hold the cache records of every path in scope: each path and everything below
    it (``FileRepository.cache_for``). A path that is a folder is walked; a path not there is a
    removal, of a file or of a whole folder. A full scan is needed when ``.packsyncignore`` changed (it
    decides everything else), when links are followed (a file may then be seen under several paths),
    for the folder itself, and when a path or a folder above it cannot be looked at (the full walk
    then keeps what that folder held).
    """
    scope = _outermost(paths)
    if scope is None or filters.follow_symlinks or IGNORE_FILE in scope:
        return None
    _check_root(root, listed=False)  # (only the folders among the paths are listed)
    walk = _Walk(root, previous, filters, on_file, busy)
    if not walk.paths(scope):
        return None
    return PathsScan(walk.scan, scope, set(previous) - walk.scan.cache.keys())


def _check_root(root: Path, *, listed: bool = True) -> None:
    """``root`` is a folder (that can be listed, when it is to be), or ``SourceUnavailable``."""
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise SourceUnavailable(f"{root} is not a folder")
        if listed:
            with os.scandir(root):  # it can be opened (its entries are read once, by the walk)
                pass
    except OSError as exc:
        raise SourceUnavailable(f"{root} cannot be read ({exc.strerror})") from None


def _outermost(paths: Iterable[str]) -> tuple[str, ...] | None:
    """The paths, normalised, without those inside another one (it is walked with it); None when one of
    them is the folder itself or leaves it."""
    found: list[str] = []
    for path in sorted({PurePosixPath(p).as_posix() for p in paths}):
        if path in ("", ".") or path.startswith("/") or ".." in PurePosixPath(path).parts:
            return None
        if not (found and path.startswith(found[-1] + "/")):
            found.append(path)
    return tuple(found)


class _Entry(Protocol):
    """What ``_Walk._entry`` asks of an entry: an ``os.DirEntry``, or a ``_PathEntry``."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...

    def is_symlink(self) -> bool: ...

    def is_dir(self, *, follow_symlinks: bool = True) -> bool: ...

    def is_file(self, *, follow_symlinks: bool = True) -> bool: ...

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result: ...


class _PathEntry:
    """A path given by name, answering as the ``os.DirEntry`` a listing of its folder would have given
    (one ``lstat``, made now: ``FileNotFoundError`` when it is gone)."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
        self._lstat = os.lstat(path)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self._lstat.st_mode)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return stat.S_ISDIR(self.stat(follow_symlinks=follow_symlinks).st_mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return stat.S_ISREG(self.stat(follow_symlinks=follow_symlinks).st_mode)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.path) if follow_symlinks and self.is_symlink() else self._lstat


class _Walk:
    def __init__(self, root: Path, previous: Mapping[str, CachedFile], filters: Filters,
                 on_file: Callable[[int], None] | None, busy: Collection[str], judge: bool = True) -> None:
        self.root = root
        self.busy = busy
        self.previous = previous
        self.filters = filters.reading(root)
        self.on_file = on_file or (lambda _n: None)
        self.judge = judge
        self.scan = Scan(source=str(root))
        self.seen_dirs: set[tuple[int, int]] = set()
        self.listed: dict[str, tuple[int, int, int, int]] = {}  # each file the walk took: its stat key
        self.folders: dict[str, bool] = {}  # ``_in_mapping``'s answers, by folder

    def run(self) -> Scan:
        root_stat = os.stat(self.root)
        self.seen_dirs.add((root_stat.st_dev, root_stat.st_ino))
        self._walk([(str(self.root), "")])
        self.scan.listing = self._listing()
        return self.scan

    def paths(self, rels: Iterable[str]) -> bool:
        """Judge these paths alone (and walk those that are folders), as the whole walk would have; False
        when one of them, or a folder above it, cannot be looked at (only the whole walk can tell then)."""
        for rel in rels:
            parent, _, name = rel.rpartition("/")
            inside = self._in_mapping(parent)
            if inside is None:
                return False
            if not inside:
                continue  # below an excluded folder, or a folder gone: nothing there is the mapping's
            try:
                entry = _PathEntry(str(self.root / rel), name)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone: its records are what ``scan_paths`` calls gone
            except OSError:
                return False
            pending: list[tuple[str, str]] = []
            self._entry(entry, f"{parent}/" if parent else "", pending)
            self._walk(pending)
        return True

    def _in_mapping(self, folder: str) -> bool | None:
        """Whether the full walk goes into ``folder`` (relative; "" is the root): every folder on the way
        is a folder, not a link, and not excluded. None when one cannot be looked at."""
        if not folder:
            return True
        if folder not in self.folders:
            parent, _, name = folder.rpartition("/")
            try:
                mode = os.lstat(self.root / folder).st_mode
            except (FileNotFoundError, NotADirectoryError):
                mode = 0
            except OSError:
                return None
            inside = self._in_mapping(parent)
            if inside is None:
                return None
            self.folders[folder] = inside and stat.S_ISDIR(mode) and not self.filters.excluded(folder, name, True)
        return self.folders[folder]

    def _walk(self, pending: list[tuple[str, str]]) -> None:
        """List each pending folder (its path, and its prefix relative to the root) and judge its entries."""
        while pending:
            path, prefix = pending.pop()
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        self._entry(entry, prefix, pending)
            except OSError as exc:
                self._unreadable(prefix, f"cannot list this folder ({exc.strerror})")

    def _listing(self) -> str:
        """The digest of what the walk saw: files and their keys, the problems of the walk itself (not a
        file's judgement: those are of listed files), and the files said to be busy."""
        walked = sorted((p.rel_path, p.reason, p.notice) for p in self.scan.problems if p.rel_path not in self.listed)
        seen = (sorted(self.listed.items()), walked, sorted(self.busy))
        return hashlib.blake2b(msgspec.msgpack.encode(seen), digest_size=16).hexdigest()

    def _entry(self, entry: _Entry, prefix: str, pending: list[tuple[str, str]]) -> None:
        name = entry.name
        rel = f"{prefix}{name}"
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError as exc:
            self._problem(rel, f"cannot read ({exc.strerror})")
            return
        if self.filters.excluded(rel, name, is_dir):
            shown = rel + "/" if is_dir else rel
            self.scan.excluded.append((shown, self.filters.excluded_by(rel, name, is_dir) or ""))
            return
        if not (is_dir or is_link or self.filters.included(rel, name)):
            return
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            self._problem(rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
                          "its name is not valid UTF-8; rename it")
            return
        if is_link:
            self._symlink(entry, rel, pending)
            return
        if is_dir:
            pending.append((entry.path, rel + "/"))
            return
        try:
            st = entry.stat(follow_symlinks=False)  # (the walk needs the stat key of every file)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._problem(rel, f"cannot read ({exc.strerror})")
            return
        if stat.S_ISREG(st.st_mode):
            self._file(entry.path, rel, st)
        else:
            self._problem(rel, "not a regular file (a pipe, socket or device); skipped")

    def _symlink(self, entry: _Entry, rel: str, pending: list[tuple[str, str]]) -> None:
        if not self.filters.follow_symlinks:
            if self.filters.included(rel, entry.name) or _points_to_a_folder(entry):
                self._problem(rel, "symbolic link, not followed (set follow_symlinks = true)", notice=True)
            return
        try:
            target = Path(entry.path).resolve(strict=True)
        except FileNotFoundError:
            self._problem(rel, "dangling symbolic link")
            return
        except (RuntimeError, OSError) as exc:
            loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
            self._problem(rel, "symbolic link loop" if loop else f"cannot follow link ({exc})")
            return
        if not target.is_relative_to(self.root.resolve()):
            self._problem(rel, "symbolic link points outside the mapped folder; not followed")
            return
        try:
            st = target.stat()
        except OSError as exc:  # gone or changed since it was resolved
            self._problem(rel, f"cannot read ({exc.strerror})")
            return
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in self.seen_dirs:
                self._problem(rel, "symbolic link loop")
                return
            self.seen_dirs.add((st.st_dev, st.st_ino))
            pending.append((entry.path, rel + "/"))
        elif stat.S_ISREG(st.st_mode) and self.filters.included(rel, entry.name):
            self._file(str(target), rel, st)

    def _file(self, path: str, rel: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.listed[rel] = key
        if not self.judge:
            return
        cached = self.previous.get(rel)
        if rel in self.busy:
            if cached is not None and cached.sha256 and not cached.problem:
                self.scan.keep.add(cached.sha256)
                self.scan.cache[rel] = cached
            return
        version = _VERSION % key
        if cached is None or not cached.matches(version):
            cached = self._read(path, rel, st, version)
            if cached is None:
                self.scan.retry = True
                return
        self.scan.cache[rel] = cached
        if cached.problem:
            self._problem(rel, cached.problem, protect=False)
        else:
            assert cached.sha256 is not None and cached.content_type is not None
            self.scan.items.append(ContentItem(rel, cached.sha256, cached.size, cached.content_type))

    def _read(self, path: str, rel: str, st: os.stat_result, version: str) -> CachedFile | None:
        """Hash and judge a new or changed file; None when it could not be judged this time."""
        if st.st_size > self.filters.max_file_bytes:
            limit = self.filters.max_file_bytes / 1e6
            return CachedFile(version, st.st_size, None, None,
                              f"larger than max_file_mb ({st.st_size / 1e6:.1f} MB > {limit:g} MB)")
        try:
            # (a link swapped in since the walk's lstat is not followed where the walk would not follow it)
            follow = self.filters.follow_symlinks
            digest = digest_file(path, follow=follow)
            after = os.stat(path, follow_symlinks=follow)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problem(rel, f"cannot read ({exc.strerror})")
            return None
        self.scan.hashed_files += 1
        self.on_file(digest.size)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or digest.size != st.st_size:
            self._problem(rel, "changed while it was being read; it will be synced once it is quiet")
            return None
        return CachedFile(version, st.st_size, digest.sha256, digest.content_type, digest.problem)

    def _problem(self, rel: str, reason: str, *, notice: bool = False, protect: bool = True) -> None:
        """Report ``rel``; unless told otherwise, keep whatever content it held before."""
        self.scan.problems.append(Problem(rel, reason, notice))
        cached = self.previous.get(rel)
        if protect and cached is not None and cached.sha256 and not cached.problem:
            self.scan.keep.add(cached.sha256)
            self.scan.cache[rel] = cached

    def _unreadable(self, prefix: str, reason: str) -> None:
        if not prefix:
            raise SourceUnavailable(f"{self.root} cannot be read ({reason})")
        self.scan.problems.append(Problem(prefix.rstrip("/") + "/", reason))
        for rel, cached in self.previous.items():
            if rel.startswith(prefix):
                self.scan.cache[rel] = cached
                if cached.sha256 and not cached.problem:
                    self.scan.keep.add(cached.sha256)


def _points_to_a_folder(entry: _Entry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
