"""Observing what a mapping's recipe makes of its contents, for the planner: writes nothing.

Three things a plan needs to know of a recipe's work before anything is uploaded:

- for each image made with another recipe than the mapping's now, the changes the new one makes to its
  file (*inspected*: metadata and dimensions only), so that the planner replaces only the images whose
  bytes would change;
- when the pack holds images packsync cannot tell as its own (a lost state), the bytes the recipe
  uploads for each content still to add (*prepared*), since those are what such an image holds;
- the contents that cannot be uploaded at all: a file the recipe cannot prepare (its reason on record),
  and a type Genviral does not take that the recipe does not convert. A file whose image was made with
  another recipe, and that the new one cannot prepare, is a problem too: its image (which may carry what
  the new recipe strips) stays, and the user is told.

What is learnt is returned for the executor to record (``record-prepared``), as downloads are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from packsync.engine.preparer import Preparer
from packsync.errors import NotFound, PermanentError, PrepareError, SourceError, TransientError
from packsync.model import SUPPORTED, ContentItem, ManagedImage, PreparedContent, Problem, Scan
from packsync.recipe import Recipe
from packsync.sources.base import Source

if TYPE_CHECKING:
    from packsync.state.store import State


class Observed(msgspec.Struct):
    """What the recipe makes of the contents a plan needs, by (content, recipe key); what was learnt now."""

    prepared: dict[tuple[str, str], PreparedContent] = msgspec.field(default_factory=dict)
    learnt: list[PreparedContent] = msgspec.field(default_factory=list)


def unuploadable(scan: Scan, recipe: Recipe) -> None:
    """Move the items of a type Genviral does not take, and that ``recipe`` does not convert, to the
    scan's problems (their contents kept: a file is not deleted for a setting)."""
    refused = {i.sha256: i.content_type.removeprefix("image/") for i in scan.items
               if i.content_type not in SUPPORTED and not recipe.converts(i.content_type)}
    if refused:
        _refuse(scan, {sha: f"{kind.upper()} images are not accepted by Genviral; add {kind!r} to convert_to_jpeg "
                            "to upload them as JPEG" for sha, kind in refused.items()}, prefix="")


async def observe(state: State, source: Source, preparer: Preparer, recipe: Recipe, scan: Scan,
                  managed: Sequence[ManagedImage], missing: Collection[str], unmatched: bool) -> Observed:
    """What the planner needs to know of ``recipe``'s work on ``scan`` (see the module's docstring).

    ``missing``: the contents no image in the pack is known to hold; ``unmatched``: whether the pack
    holds images whose bytes match no content of the source (then the bytes the recipe uploads for the
    missing contents are worth knowing)."""
    if recipe.as_is:
        return Observed()
    key = recipe.key
    items = {item.sha256: item for item in scan.items}
    stale = {image.sha256: image.recipe for image in managed if image.recipe != key and image.sha256 in items}
    adding = set(missing) & items.keys()
    seen = Observed(state.uploads.prepared(stale.keys() | adding, {key, *stale.values()}))
    known = seen.prepared
    await _learn(seen, source, preparer, recipe, [items[s] for s in stale if (s, key) not in known], False)
    if unmatched:  # (a content on record as one that cannot be prepared is not tried again)
        await _learn(seen, source, preparer, recipe, [items[s] for s in adding if _unsent(known.get((s, key)))], True)
    refused = {sha: found.problem for sha in adding if (found := known.get((sha, key))) and found.problem}
    # (an image made with another recipe stays: kept, not judged)
    refused |= {sha: f"{found.problem}; its image in the pack is the file as uploaded before"
                for sha in stale.keys() - adding if (found := known.get((sha, key))) and found.problem}
    if refused:
        _refuse(scan, refused)
    return seen


def _unsent(found: PreparedContent | None) -> bool:
    """Whether the bytes the recipe uploads for a content are still to be learnt."""
    return found is None or (found.problem is None and found.uploaded_as is None)


async def _learn(seen: Observed, source: Source, preparer: Preparer, recipe: Recipe, items: Iterable[ContentItem],
                 prepare: bool) -> None:
    """Inspect (or prepare) each item, a few at a time: only that many files are in memory at once."""
    slots = asyncio.Semaphore(preparer.workers * 2)

    async def one(item: ContentItem) -> None:
        async with slots:
            await _learn_one(seen, source, preparer, recipe, item, prepare)

    await asyncio.gather(*map(one, items))


async def _learn_one(seen: Observed, source: Source, preparer: Preparer, recipe: Recipe, item: ContentItem,
                     prepare: bool) -> None:
    try:
        if prepare:
            found = await preparer.record(item, source.open, recipe)
        else:
            found = await preparer.inspect(item, source.open, recipe)
    except PrepareError as exc:
        found = PreparedContent(item.sha256, recipe.key, problem=str(exc))
    except (SourceError, TransientError, PermanentError, NotFound):
        return  # (changed, gone, unreadable: the next scan sees what it holds then)
    seen.prepared[item.sha256, recipe.key] = found
    seen.learnt.append(found)


def _refuse(scan: Scan, why: dict[str, str], prefix: str = "cannot be prepared for upload: ") -> None:
    """Move the items holding these contents to the scan's problems, each with why: their contents kept (a
    file is not deleted from the pack for a setting or a file it cannot prepare)."""
    scan.problems += [Problem(i.key, prefix + why[i.sha256]) for i in scan.items if i.sha256 in why]
    scan.items = [i for i in scan.items if i.sha256 not in why]
    scan.keep |= why.keys()
