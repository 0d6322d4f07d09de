"""A pack per subfolder (``packs_from = "subfolders"``): the mappings such a mapping stands for.

Each direct subfolder of its ``path`` is a mapping of its own into the pack named after it (with
``pack_prefix``); everything else — dedupe, adoption, safety stops, status, the daemon — works per
derived mapping unchanged. Files directly in the folder are reported and skipped. A subfolder that
packsync synced and that is gone stays a mapping whose source is empty, so it is handled like an
emptied folder: a safety stop unless ``--force``; the pack itself is never deleted. A subfolder that
is gone while a new one holds the same files (moved: the same inodes, sizes and times; or copied: the
same bytes) is a rename: its records move to the new name and its pack is renamed (``PATCH``), so
nothing is uploaded again.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from packsync.config import Config, MappingConfig
from packsync.errors import SourceUnavailable
from packsync.model import CachedFile, Problem
from packsync.sources.folder import Filters, filters_for, stat_version
from packsync.sources.media import digest_file

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

#: Genviral's longest pack name.
MAX_PACK_NAME = 120
LOOSE = "directly in a folder whose subfolders are packs: put it in a subfolder to sync it"


def parent_of(config: Config, label: str) -> MappingConfig | None:
    """The ``packs_from = "subfolders"`` mapping a derived mapping's label belongs to, if any."""
    parent = Path(label).parent
    return next((m for m in config.mappings if m.packs_from == "subfolders" and m.path == parent), None)


def group_of(config: Config, label: str) -> str:
    """The label of the config's mapping a mapping's ``label`` comes from: its own, unless it is a
    subfolder's of a ``packs_from = "subfolders"`` mapping."""
    parent = parent_of(config, label)
    return parent.label if parent else label


def derived(mapping: MappingConfig, subfolder: Path, pack: str | None = None) -> MappingConfig:
    return msgspec.structs.replace(mapping, path=subfolder, packs_from="folder", pack_prefix="", pack_id=None,
                                   pack=pack or (mapping.pack_prefix + subfolder.name)[:MAX_PACK_NAME])


def concrete(config: Config, state: State) -> list[MappingConfig]:
    """Every mapping as it is synced: a ``packs_from = "subfolders"`` one as one per subfolder (the
    existing ones, then those synced before and gone), the others as they are."""
    mappings: list[MappingConfig] = []
    taken = packs_named(config)
    for mapping in config.mappings:
        if mapping.packs_from != "subfolders":
            mappings.append(mapping)
            continue
        try:
            present, _skipped, there = listed(mapping, taken)
        except SourceUnavailable:
            present, there = [], set()
        mappings += present + gone(mapping, state, there)
    return mappings


def packs_named(config: Config) -> set[str]:
    """The pack names the config's mappings use: a subfolder's pack may not be one of them."""
    return {m.pack for m in config.mappings if m.pack is not None}


def listed(mapping: MappingConfig, taken: set[str]) -> tuple[list[MappingConfig], list[Problem], set[str]]:
    """The mappings of the subfolders there now, what is skipped (also a subfolder whose pack name
    another mapping uses: two mappings into one pack are refused, as in the config), and the labels of
    every subfolder there (a skipped one is there: never "gone"). The names given out are added to
    ``taken``. ``SourceUnavailable`` when the folder cannot be listed."""
    folders, skipped = subfolders(mapping)
    present = []
    for path in folders:
        one = derived(mapping, path)
        if one.pack in taken:
            skipped.append(Problem(path.name, f"its pack would be {one.pack!r}, which another mapping syncs into"))
            continue
        taken.add(one.pack or "")
        present.append(one)
    return present, skipped, {str(path) for path in folders}


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
    root = mapping.folder
    found = []
    for record in state.mappings.under(str(root)):
        if record.root in present or not record.pack_id or Path(record.root).parent != root:
            continue
        if state.images.count(record.pack_id, record.root):
            found.append(derived(mapping, Path(record.root), record.pack_name))
    return found


def renamed(gone: Mapping[str, Mapping[str, CachedFile]], new: Collection[Path]) -> dict[str, Path]:
    """Which gone subfolder (its label → what its last scan saw) each new subfolder is: the same files
    under the same relative paths, moved (same device, inode, size and mtime) or copied (same bytes)."""
    found: dict[str, Path] = {}
    for label, cache in gone.items():
        files = {rel: c for rel, c in cache.items() if c.sha256 and not c.problem}
        for candidate in new:
            if candidate not in found.values() and files and _same(candidate, files):
                found[label] = candidate
                break
    return found


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
