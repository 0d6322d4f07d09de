"""A change the daemon saw, planned from its paths alone: one file dropped into a folder of 100,000 costs
the ``stat`` calls of that file and the records of the contents it touches, not a walk and a cache load.

The daemon hands over the paths that changed and went quiet (``Syncer.sync(changed=...)``). ``observe``
has the source scan just those (``Source.scan_paths``) against their records (``files.cache_for``) and reads
what the state knows of the contents they touch: which images of the pack hold them
(``images.holding``) and, for a content the changed files no longer hold, how many other files of the
mapping do (``files.holders``) and how many images the mapping manages. It writes nothing.
``restricted_input`` (pure) turns that into the planner's input for those contents only, so that
``plan_mapping`` decides for them what it would decide over the whole mapping:

- a content a changed file holds and no image of the pack does is added;
- a content no file of the mapping holds any more has its images deleted, by the same rules (``delete``,
  ``max_delete`` as a share of every image the mapping manages, ``--force``);
- everything else is left as it is; the pack is taken as packsync recorded it (no pack read).

The periodic full rescan stays the truth: it reads the pack, the whole folder and every record, and
corrects what a record got wrong meanwhile (an image deleted in the web app). ``observe`` returns None,
and the mapping is scanned whole, whenever only that can decide: the source says so, no pack is
recorded yet, the change empties the mapping (the planner's "emptied source" stop looks at the whole
of it), or a content to add was seen in an image packsync did not record (``adopt``: a full plan
downloads those and adopts rather than adds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

import msgspec

from packsync.config import MappingConfig
from packsync.engine.planner import MappingInput, MappingOptions
from packsync.mappings import recorded_pack_id
from packsync.model import CachedFile, ContentItem, ManagedImage, PathsScan, RemoteImage, RemotePack, Scan
from packsync.recipe import Recipe
from packsync.sources.base import Source

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State


class Changes(msgspec.Struct, frozen=True):
    """What ``observe`` saw of a change: the partial scan, the records it replaces, and what the state
    holds of the contents it touches."""

    label: str
    pack_id: str
    pack_name: str
    partial: PathsScan
    previous: dict[str, CachedFile]  # the records of the partial scan's scope, as they were
    holders: dict[str, int]  # per content the change's files no longer hold, the files the state says hold it
    images: list[ManagedImage]  # the pack's recorded images (any mapping's) holding a touched content
    managed: int  # every image of the pack the mapping manages (counted only when a content may be deleted)
    witness: dict[str, CachedFile]  # some good file outside the change, to stand for the rest of the mapping
    #: per content the change's files no longer hold, another mapping into the pack holding it (its key)
    elsewhere: dict[str, str] = msgspec.field(default_factory=dict)


def touched(partial: PathsScan, previous: Mapping[str, CachedFile]) -> set[str]:
    """The contents a change may add or remove: what its paths hold now, and what they held."""
    return {item.sha256 for item in partial.scan.items} | partial.scan.keep | _held(previous).keys()


def _held(records: Mapping[str, CachedFile]) -> Counter[str]:
    """How many of these records hold each content (the state's ``holders`` counts the same rows)."""
    return Counter(c.sha256 for c in records.values() if c.sha256 and not c.problem)


async def observe(state: State, mapping: MappingConfig, source: Source, paths: Collection[str],
                  busy: Collection[str] = (), configured: Collection[str] = ()) -> Changes | None:
    """Have ``source`` (``mapping``'s) scan ``paths`` and read what the change touches; None when only a
    full scan can decide (see the module's docstring). ``configured``: the labels of every mapping the config
    has (of them, and of other sites' mappings, one into the pack that holds a lost content keeps its image).
    Raises what the source's scan raises."""
    label = mapping.label
    pack_id = recorded_pack_id(state, mapping)
    record = state.mappings.get(label)
    if pack_id is None or record is None or record.safety:
        return None  # (a standing safety stop is the full scan's to lift or to keep)
    previous = state.files.cache_for(label, paths)
    partial = await source.scan_paths(paths, previous, busy)
    if partial is None:
        return None
    contents = touched(partial, previous)
    witness = {}
    if not (partial.scan.items or partial.scan.problems):
        # One good file the change did not touch stands for the rest of the mapping (at most the records
        # of the change come before it); none: the change may empty the mapping, which a full scan decides.
        witness = {rel: c for rel, c in state.files.some_items(label, len(previous) + 1).items()
                   if rel not in previous}
        if not witness:
            return None
        witness = dict([min(witness.items())])
        contents |= _held(witness).keys()
    images = state.images.holding(pack_id, contents)
    recipe = mapping.recipe.key
    if any(image.recipe != recipe for image in images if image.owner in (label, "")):
        return None  # (an image made with another recipe: whether to replace it takes a look at its file)
    new = {item.sha256 for item in partial.scan.items} - {image.sha256 for image in images}
    if new and state.uploads.seen_in_images(new):
        return None
    # Only a content the change's files no longer hold may lose its images: only then are the other files
    # holding it counted, and the images the mapping manages (a drop into 100,000 files counts neither).
    lost = _held(previous).keys() - {item.sha256 for item in partial.scan.items} - partial.scan.keep
    holders = state.files.holders(label, lost) if lost else {}
    managed = state.images.count(pack_id, label) if lost else 0
    elsewhere = state.images.held_elsewhere(pack_id, label, lost, configured) if lost else {}
    return Changes(label, pack_id, mapping.pack or record.pack_name or "", partial, previous, holders, images,
                   managed, witness, elsewhere)


def restricted_input(changes: Changes, options: MappingOptions, recipe: Recipe) -> MappingInput:
    """The planner's input for the contents a change touches: its plan is the whole mapping's plan for
    them (see the module's docstring). ``options`` are the mapping's, as for a full plan."""
    scan = changes.partial.scan
    now = Scan(source=scan.source, items=list(scan.items), problems=list(scan.problems), keep=set(scan.keep))
    before = _held(changes.previous)
    # Contents files outside the change still hold: kept, as a full scan would see them held.
    now.keep |= {sha for sha, count in changes.holders.items() if count > before[sha]}
    now.items += [ContentItem(rel, c.sha256, c.size, c.content_type or "")
                  for rel, c in changes.witness.items() if c.sha256]
    ours = [i for i in changes.images if i.owner in (changes.label, "")]
    others = {i.image_id: i.sha256 for i in changes.images if i.owner not in (changes.label, "")}
    pack = RemotePack(changes.pack_id, changes.pack_name,
                      tuple(RemoteImage(i.image_id, i.url, i.metadata) for i in changes.images))
    # max_delete is a share of every image the mapping manages, not of the few in this input.
    return MappingInput(label=changes.label, pack_name=changes.pack_name, scan=now, managed=ours, remote=pack,
                        known_urls={}, options=options, others=others, managed_in_pack=changes.managed, recipe=recipe,
                        held_elsewhere=changes.elsewhere)
