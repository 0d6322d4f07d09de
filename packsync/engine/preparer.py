"""Preparing a file's bytes for upload by its mapping's recipe, off the event loop and a few at a time.

``packsync.prepare`` does the work (pure: bytes in, bytes out); this module runs it in worker threads —
the image libraries let go of the interpreter while they decode, resize and encode, so both cores work
— at most one per core at once, so that only that many decoded images are ever in memory. It is where the
library is imported: a mapping that uploads files as they are never loads it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import msgspec

from packsync.errors import PrepareError
from packsync.model import PreparedContent
from packsync.recipe import Recipe


class Prepared(msgspec.Struct, frozen=True):
    """The bytes to upload, their content type, and the record of what the recipe made of the content."""

    data: bytes
    content_type: str
    record: PreparedContent


class Preparer:
    """Runs a recipe's inspections and preparations in worker threads, ``workers`` at a time."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or _cores()
        self._slots = asyncio.Semaphore(self.workers)

    async def prepare(self, sha256: str, data: bytes, content_type: str, recipe: Recipe) -> Prepared:
        """What ``recipe`` makes of ``data`` (a content's bytes): raises ``PrepareError`` with the reason."""
        if recipe.as_is:
            return Prepared(data, content_type, PreparedContent(sha256, "", (), sha256, len(data), content_type))
        async with self._slots:
            return await asyncio.to_thread(_prepare, sha256, data, content_type, recipe)

    async def inspect(self, sha256: str, data: bytes, content_type: str, recipe: Recipe) -> PreparedContent:
        """The changes ``recipe`` would make to ``data``, learnt without preparing it (a problem, if any)."""
        async with self._slots:
            return await asyncio.to_thread(_inspect, sha256, data, content_type, recipe)


def _cores() -> int:
    """The cores this process may run on (in a container or under an affinity mask, fewer than the host's)."""
    affinity = getattr(os, "sched_getaffinity", None)  # (Linux; elsewhere, the machine's)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _prepare(sha256: str, data: bytes, content_type: str, recipe: Recipe) -> Prepared:
    from packsync import prepare

    made = prepare.prepare(data, content_type, recipe)
    upload = hashlib.sha256(made.data).hexdigest() if made.changes else sha256
    return Prepared(made.data, made.content_type, PreparedContent(
        sha256, recipe.key, made.changes, upload, len(made.data), made.content_type))


def _inspect(sha256: str, data: bytes, content_type: str, recipe: Recipe) -> PreparedContent:
    from packsync import prepare

    try:
        changes = prepare.inspect(data, content_type, recipe)
    except PrepareError as exc:
        return PreparedContent(sha256, recipe.key, problem=str(exc))
    return PreparedContent(sha256, recipe.key, changes)
