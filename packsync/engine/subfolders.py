"""A pack per subfolder (``packs_from = "subfolders"``): the mappings such a mapping stands for.

Each direct subfolder of its ``path`` is a mapping of its own into the pack named after it (with
``pack_prefix``); everything else — dedupe, adoption, safety stops, status, the daemon — works per
derived mapping unchanged. Files directly in the folder are reported and skipped. A subfolder that
packsync synced and that is gone stays a mapping whose source is empty, so it is handled like an
emptied folder: a safety stop unless ``--force``; the pack itself is never deleted. A subfolder that
is gone while a new one holds the same files (moved: the same inodes, sizes and times; or copied: the
same bytes) is a rename: its records move to the new name and its pack is renamed (``PATCH``), so
nothing is uploaded again — an action of the plan like any other. So is a subfolder packsync synced
that holds another's files now (two names swapped, three rotated: its first file is not where its last
scan saw it, and the other's are there): the renames of one folder are carried out together. A subfolder's
pack name is the one Genviral stores (trimmed, ``config.pack_name``); one named only spaces is skipped.

Listing the folder and comparing a gone subfolder's last listing with a new one are observations;
``targets`` decides, from them, which mappings this sync has (pure). What only shows the mappings reads
them from the state (``packsync.mappings.concrete``), never from the disk.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from packsync.config import MappingConfig, pack_name
from packsync.engine.actions import Move
from packsync.errors import ConfigError, SourceUnavailable
from packsync.mappings import derived, synced_subfolders
from packsync.model import CachedFile, Problem
from packsync.sources.base import Source
from packsync.sources.folder import Filters, FolderSource, GoneFolder, filters_for, stat_version
from packsync.sources.media import digest_file

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

LOOSE = "directly in a folder whose subfolders are packs: put it in a subfolder to sync it"


class Target(msgspec.Struct, frozen=True):
    """One mapping this sync has, and what observing its source found: a subfolder packsync synced that
    is ``gone`` (an emptied source), one whose folder is ``missing`` (it cannot be listed, or every
    synced subfolder vanished at once: why), or one ``renamed_from`` a gone subfolder whose records and
    pack it takes over (with the other ``renames`` of the folder). ``parent``: the ``packs_from =
    "subfolders"`` mapping it is a subfolder of."""

    config: MappingConfig
    parent: MappingConfig | None = None
    gone: bool = False
    missing: str | None = None
    renamed_from: str | None = None
    #: Every rename found in its parent folder, its own among them: carried out together (a swap).
    renames: tuple[Move, ...] = ()

    @property
    def label(self) -> str:
        return self.config.label


class Observed(msgspec.Struct, frozen=True):
    """What one look at a ``packs_from = "subfolders"`` folder found: the subfolders there (``present``),
    what is skipped in it, why it could not be listed (``unlisted``), the subfolders packsync synced that
    are not there (``old``), and which subfolder packsync synced is another one now (``moves``: old label →
    new label; ``renames``: the same, with the packs)."""

    present: list[MappingConfig]
    skipped: list[Problem]
    unlisted: str | None
    old: list[MappingConfig]
    moves: dict[str, str]
    renames: tuple[Move, ...] = ()


def targets(index: int, mapping: MappingConfig, seen: Observed) -> list[Target]:
    """The mappings a ``packs_from = "subfolders"`` mapping stands for this sync. A folder that cannot
    be listed, or in which every subfolder packsync synced vanished at once (an empty mount point?), makes
    each synced subfolder a missing source (a safety stop that ``--force`` does not lift); one packsync
    never synced from is a mistake in the config."""
    missing = seen.unlisted
    if missing is not None and not seen.old:
        raise ConfigError(f"mappings[{index}].path: {missing}.")
    if seen.old and not seen.present:
        missing = missing or f"{mapping.label} holds none of the subfolders packsync synced"
    if missing is not None:
        return [Target(m, mapping, gone=True, missing=missing) for m in seen.old]
    renamed_to = {new: old for old, new in seen.moves.items()}
    return [Target(m, mapping, renamed_from=renamed_to.get(m.label), renames=seen.renames
                   if m.label in renamed_to else ()) for m in seen.present] \
        + [Target(m, mapping, gone=True) for m in seen.old if m.label not in seen.moves]


async def observe(mapping: MappingConfig, state: State, taken: set[str]) -> Observed:
    """Look at a ``packs_from = "subfolders"`` folder (writing nothing): its subfolders, those synced
    before and gone, and which subfolder is another renamed (compared in a worker thread): a new one that
    holds a gone one's files, or one packsync synced that holds another's now (two names swapped; its
    first file is not where its last scan saw it, which costs one ``stat`` per subfolder to notice)."""
    present: list[MappingConfig] = []
    skipped: list[Problem] = []
    there: set[str] = set()
    unlisted = None
    packs = {record.root: record.pack_id for record in state.mappings.under(str(mapping.folder))
             if record.pack_id and Path(record.root).parent == mapping.folder}
    try:
        present, skipped, there = listed(mapping, taken, first=lambda label: label in packs)
    except SourceUnavailable as exc:
        unlisted = str(exc)
    old = gone(mapping, state, there)
    new = [m.folder for m in present if m.label not in packs]
    firsts = {m.label: state.files.some_items(m.label, 1) for m in present if m.label in packs}
    displaced = await asyncio.to_thread(elsewhere, firsts) if firsts else []
    moves: dict[str, Path] = {}
    if old and new or displaced and (old or new or len(displaced) > 1):
        caches = {label: state.files.cache(label) for label in sorted({m.label for m in old} | set(displaced))}
        moves = await asyncio.to_thread(renamed, caches, new, [Path(label) for label in displaced])
    names = {m.label: m.pack or "" for m in present}
    renames = tuple(Move(was, str(path), packs[was], names[str(path)]) for was, path in moves.items())
    # One synced whose files moved to another while it holds others (``mv B C; mkdir B``): its records go
    # with its files; it is planned afresh next sync, when nothing recorded says it is its old self.
    vacated = {was: path.name for was, path in moves.items() if was in names and Path(was) not in moves.values()}
    skipped += [Problem(Path(was).name, f"its files are in {now} now, and its pack follows them; what it holds now "
                                        "gets a pack of its own next sync", notice=True)  # (nothing to fix)
                for was, now in vacated.items()]
    return Observed([m for m in present if m.label not in vacated], skipped, unlisted, old,
                    {label: str(path) for label, path in moves.items()}, renames)


def source_of(target: Target) -> Source:
    """The source of a subfolder's mapping: its folder, matched with the mapped folder's patterns; or,
    gone, an emptied one."""
    assert target.parent is not None, "the config's own mappings' sources are the app's to make"
    if target.gone:
        return GoneFolder(target.label, unavailable=target.missing)
    return FolderSource(target.config.folder, filters_below(target.parent, target.config.folder))


def listed(mapping: MappingConfig, taken: set[str], first: Callable[[str], bool] = lambda _label: False
           ) -> tuple[list[MappingConfig], list[Problem], set[str]]:
    """The mappings of the subfolders there now, what is skipped (also a subfolder whose pack name
    another mapping uses: two mappings into one pack are refused, as in the config — the server trims
    names, so " Acme" and "Acme" are one pack; the subfolder ``first`` says synced into it keeps it), and
    the labels of every subfolder there (a skipped one is there: never "gone"). The names given out are
    added to ``taken``. ``SourceUnavailable`` when the folder cannot be listed."""
    folders, skipped = subfolders(mapping)
    present = []
    for path in sorted(folders, key=lambda path: not first(str(path))):
        name = pack_name(mapping.pack_prefix + path.name)
        if not name:
            skipped.append(Problem(path.name, "its name is only spaces, and a pack cannot be named after it; "
                                              "rename it"))
            continue
        one = derived(mapping, path, name)
        if one.pack in taken:
            skipped.append(Problem(path.name, f"its pack would be {one.pack!r}, which another mapping syncs into"))
            continue
        taken.add(one.pack or "")
        present.append(one)
    return sorted(present, key=lambda m: m.label), skipped, {str(path) for path in folders}


def subfolders(mapping: MappingConfig) -> tuple[list[Path], list[Problem]]:
    """The direct subfolders the patterns let in, and what is skipped directly in the folder (files,
    and folders whose names cannot be names of packs). ``SourceUnavailable`` when the folder cannot
    be listed: never an empty listing, which would look like every subfolder removed."""
    root = mapping.folder
    filters = filters_for(mapping).reading(root)
    folders, skipped = [], []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                if filters.excluded(entry.name, entry.name, is_dir):
                    continue
                try:
                    entry.name.encode("utf-8")
                except UnicodeEncodeError:
                    shown = entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                    skipped.append(Problem(shown, "its name is not valid UTF-8; rename it"))
                    continue
                if entry.is_symlink() and entry.is_dir():
                    skipped.append(Problem(entry.name, "symbolic link to a folder, not followed: a pack per "
                                                       "subfolder takes real folders only", notice=True))
                elif is_dir:
                    folders.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and filters.included(entry.name, entry.name):
                    skipped.append(Problem(entry.name, LOOSE))
    except OSError as exc:
        raise SourceUnavailable(f"{root} cannot be read ({exc.strerror})") from None
    return sorted(folders), sorted(skipped, key=lambda p: p.rel_path)


def filters_below(mapping: MappingConfig, subfolder: Path) -> Filters:
    """A subfolder's filters: the mapped folder's patterns and ``.packsyncignore``, matched from there."""
    return filters_for(mapping).below(subfolder.name, mapping.folder)


def gone(mapping: MappingConfig, state: State, present: Collection[str]) -> list[MappingConfig]:
    """The subfolders packsync synced into a pack that are not there any more, or are excluded now,
    and whose images are still in their pack: each an emptied source, by the pack name it had."""
    return synced_subfolders(mapping, state, keep=lambda label, pack_id: label not in present
                             and bool(state.images.count(pack_id, label)))


def renamed(gone: Mapping[str, Mapping[str, CachedFile]], new: Collection[Path],
            displaced: Collection[Path] = ()) -> dict[str, Path]:
    """Which subfolder (its label → what its last scan saw) each new or ``displaced`` subfolder is now: the
    same files under the same relative paths, moved (same device, inode, size and mtime) or, into a new
    one, copied (same bytes). A displaced subfolder (one packsync synced, holding something else now) is
    walked only if the other's first file is there, moved: a swap is moves."""
    found: dict[str, Path] = {}
    for label, cache in gone.items():
        files = {rel: c for rel, c in cache.items() if c.sha256 and not c.problem}
        first = dict([min(files.items())]) if files else {}
        for candidate in [*new, *displaced]:
            if candidate in found.values() or str(candidate) == label or not files:
                continue
            if candidate in displaced and elsewhere({str(candidate): first}):
                continue
            if _same(candidate, files):
                found[label] = candidate
                break
    return found


def elsewhere(firsts: Mapping[str, Mapping[str, CachedFile]]) -> list[str]:
    """The subfolders (label → its first good file as its last scan saw it) whose first file is not there
    as it was: moved away (or that file alone changed)."""
    moved = []
    for label, first in firsts.items():
        for rel, cached in first.items():
            try:
                if not cached.matches(stat_version((Path(label) / rel).stat())):
                    moved.append(label)
            except OSError:
                moved.append(label)
    return moved


def _same(folder: Path, files: Mapping[str, CachedFile]) -> bool:
    here: dict[str, os.stat_result] = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel in files:
                try:
                    here[rel] = path.stat()
                except OSError:
                    return False
    if here.keys() != files.keys():
        return False
    if all(files[rel].matches(stat_version(st)) for rel, st in here.items()):
        return True
    try:
        return all(st.st_size == files[rel].size and digest_file(folder / rel).sha256 == files[rel].sha256
                   for rel, st in here.items())
    except OSError:
        return False
