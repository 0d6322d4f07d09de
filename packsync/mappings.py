"""Which mappings a config stands for, as the state remembers them: the one place that says so.

A ``packs_from = "subfolders"`` mapping stands for one mapping per subfolder, into the pack named
after it (``derived``). Which subfolders those are is known two ways: a sync lists the folder
(``engine/subfolders.py``), and everything that only shows what is synced — ``status``, the page,
``/healthz``, the metadata loop — reads the subfolders packsync synced into a pack from the state's
mapping records (``concrete``), never the disk: a hung or unmounted share cannot stall them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from packsync.config import Config, MappingConfig, pack_name
from packsync.errors import ConfigError

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

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
    """The mapping of one subfolder of a ``packs_from = "subfolders"`` mapping, into the pack named after it,
    as Genviral stores the name (``pack_name``; a subfolder named only spaces has none: see ``listed``)."""
    return msgspec.structs.replace(mapping, path=subfolder, packs_from="folder", pack_prefix="", pack_id=None,
                                   pack=pack_name(pack or mapping.pack_prefix + subfolder.name))


def packs_named(config: Config) -> set[str]:
    """The pack names the config's mappings use: a subfolder's pack may not be one of them."""
    return {m.pack for m in config.mappings if m.pack is not None}


def concrete(config: Config, state: State) -> list[MappingConfig]:
    """Every mapping as it is synced, from the config and the state alone: a ``packs_from = "subfolders"``
    one as the subfolders packsync synced into a pack (those whose files or images it still records),
    the others as they are."""
    mappings: list[MappingConfig] = []
    for mapping in config.mappings:
        if mapping.packs_from == "subfolders":
            mappings += synced_subfolders(mapping, state, keep=lambda label, pack_id: bool(
                state.files.count(label) or state.images.count(pack_id, label)))
        else:
            mappings.append(mapping)
    return mappings


def synced_subfolders(mapping: MappingConfig, state: State, keep: Callable[[str, str], bool]) -> list[MappingConfig]:
    """The subfolders of ``mapping`` the state records a pack for, and ``keep`` keeps, by label."""
    root = mapping.folder
    found = []
    for record in state.mappings.under(str(root)):
        if record.pack_id and Path(record.root).parent == root and keep(record.root, record.pack_id):
            found.append(derived(mapping, Path(record.root), record.pack_name))
    return sorted(found, key=lambda m: m.label)


def recorded_pack_id(state: State, mapping: MappingConfig) -> str | None:
    """The pack id ``mapping`` syncs into as far as the state knows — only while the config still
    names that pack (a renamed ``pack`` is another pack; the name it was created with, untrimmed by an older
    packsync, is the same pack)."""
    if mapping.pack_id is not None:
        return mapping.pack_id
    record = state.mappings.get(mapping.label)
    return record.pack_id if record and record.pack_id and pack_name(record.pack_name or "") == mapping.pack \
        else None


def withheld(config: Config, state: State, label: str) -> dict[str, int]:
    """The deletes the safety stops of mapping ``label`` withhold now, by mapping: its own, or for a
    ``packs_from = "subfolders"`` folder each of its subfolders' packs."""
    records = [state.mappings.get(each) for each in covered(config, state, [label])]
    return {record.root: record.withheld_count for record in records
            if record is not None and record.safety and record.withheld_count}


def covered(config: Config, state: State, labels: Collection[str]) -> list[str]:
    """``labels`` with, for each ``packs_from = "subfolders"`` folder among them, its subfolders' mappings."""
    found = dict.fromkeys(labels)
    for mapping in concrete(config, state):
        if group_of(config, mapping.label) in found:
            found.setdefault(mapping.label)
    return list(found)


def hold(config: Config, state: State, labels: Collection[str], paused: bool) -> list[str]:
    """Pause (or resume) the mappings ``labels``, a folder of subfolder packs with each of its packs; none
    named: ``pause`` every mapping of the config, ``resume`` every one paused (a subfolder's pack paused
    alone among them). The mappings it paused or resumed."""
    unnamed = {m.label for m in config.mappings} if paused else state.mappings.paused()
    done = covered(config, state, labels or sorted(unnamed))
    state.mappings.pause(done, paused)
    return done


def every(config: Config, state: State) -> dict[str, MappingConfig]:
    """Every mapping a command may name, by label: the config's, and each subfolder's pack as synced."""
    return {m.label: m for m in (*config.mappings, *concrete(config, state))}


def named(config: Config, state: State, name: str) -> MappingConfig:
    """The mapping a person names on the command line: by its folder (a path, resolved as the shell gives it),
    its label (``astria:260``), its pack's name, or its folder's own name — whichever names exactly one. A
    ``packs_from = "subfolders"`` folder and each of its subfolders' packs can be named alike."""
    known = every(config, state)
    path = Path(name).expanduser()
    resolved = str(path.resolve()) if name.strip() else ""

    def recorded_name(mapping: MappingConfig) -> str | None:
        record = state.mappings.get(mapping.label)
        return record.pack_name if record else None

    ways: list[Callable[[MappingConfig], bool]] = [
        lambda m: m.label in (name, resolved),
        # A pack's exact name before one differing in case alone: "Shots" and "shots" are two packs.
        lambda m: name in {m.pack, recorded_name(m)},
        lambda m: name.casefold() in {n.casefold() for n in (m.pack, recorded_name(m)) if n},
        lambda m: m.path is not None and m.path.name == name,
    ]
    for way in ways:
        found = [m for m in known.values() if way(m)]
        if len(found) == 1:
            return found[0]
        if found:
            raise ConfigError(f"{name!r} names {len(found)} mappings ({', '.join(m.label for m in found)}); "
                              "name one by its folder's path.")
    listed = ", ".join(known) or "none: add one to the config"
    raise ConfigError(f"{name!r} is no mapping of this config; the mappings are: {listed}.")
