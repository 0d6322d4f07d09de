"""Preparing a file's bytes for upload by its mapping's recipe, off the event loop and a few at a time.

``packsync.prepare`` does the work (pure: bytes in, bytes out); this module runs it in worker threads —
the image libraries let go of the interpreter while they decode, resize and encode, so both cores work
— at most one per core at once, so that only that many decoded images are ever in memory. It is where the
library is imported: a mapping that uploads files as they are never loads it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import msgspec

from packsync.errors import PrepareError
from packsync.model import ContentItem, PreparedContent
from packsync.recipe import Recipe


class Prepared(msgspec.Struct, frozen=True):
    """The bytes to upload, their content type, and the record of what the recipe made of the content."""

    data: bytes
    content_type: str
    record: PreparedContent


#: How the bytes of an item are read (a source's ``read``).
Read = Callable[[ContentItem], Awaitable[bytes]]


class Preparer:
    """Runs a recipe's inspections and preparations in worker threads of its own, ``workers`` at a time,
    each file read only once a worker is free for it (so only that many files are in hand)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or _cores()
        self._slots = asyncio.Semaphore(self.workers)
        # Threads of its own, not the loop's shared pool: each thread an image was decoded in keeps the memory
        # it freed for the next decode, so the fewer threads ever decode, the less the process holds.
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="packsync-prepare")

    async def prepare(self, item: ContentItem, read: Read, recipe: Recipe) -> Prepared:
        """What ``recipe`` makes of ``item``'s bytes: raises ``PrepareError`` with the reason (and what
        ``read`` raises)."""
        if recipe.as_is:
            data = await read(item)
            return Prepared(data, item.content_type, PreparedContent(item.sha256, "", (), item.sha256, len(data),
                                                                     item.content_type))
        async with self._slots:
            data = await read(item)
            return await asyncio.get_running_loop().run_in_executor(self._pool, _prepare, item, data, recipe)

    async def inspect(self, item: ContentItem, read: Read, recipe: Recipe) -> PreparedContent:
        """The changes ``recipe`` would make to ``item``'s bytes, learnt without preparing them (or why it
        cannot prepare them)."""
        async with self._slots:
            data = await read(item)
            return await asyncio.get_running_loop().run_in_executor(self._pool, _inspect, item, data, recipe)


def _cores() -> int:
    """The cores this process may run on (in a container or under an affinity mask, fewer than the host's)."""
    affinity = getattr(os, "sched_getaffinity", None)  # (Linux; elsewhere, the machine's)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _prepare(item: ContentItem, data: bytes, recipe: Recipe) -> Prepared:
    from packsync import prepare

    made = prepare.prepare(data, item.content_type, recipe)
    if made.content_type != item.content_type or any(c.startswith("resize:") for c in made.changes):
        _give_back_memory()
    upload = hashlib.sha256(made.data).hexdigest() if made.changes else item.sha256
    return Prepared(made.data, made.content_type, PreparedContent(
        item.sha256, recipe.key, made.changes, upload, len(made.data), made.content_type))


def _inspect(item: ContentItem, data: bytes, recipe: Recipe) -> PreparedContent:
    from packsync import prepare

    try:
        changes = prepare.inspect(data, item.content_type, recipe)
    except PrepareError as exc:
        return PreparedContent(item.sha256, recipe.key, problem=str(exc))
    return PreparedContent(item.sha256, recipe.key, changes)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # (only once something was re-encoded: every run would pay for its import)

    try:
        return cast(Callable[[int], int], ctypes.CDLL(None).malloc_trim)
    except (OSError, AttributeError):  # not glibc
        return None


def _give_back_memory() -> None:
    """Hand the memory a decode freed back to the system: glibc keeps it in the thread's arena otherwise,
    and a daemon that resized a few 50-megapixel photos would hold their size for good."""
    if (trim := _malloc_trim()) is not None:
        trim(0)
