"""Preparing a file's bytes for upload by its mapping's recipe, off the event loop and a few at a time.

``packsync.prepare`` does the work (pure: bytes or a file in, parts out); this module runs it in worker threads —
the image libraries let go of the interpreter while they decode, resize and encode, so both cores work
— at most one per core at once, so that only that many decoded images are ever in memory, and a file
larger than ``LARGE_BYTES`` alone (it takes every worker). It is where the library is imported: a
mapping that uploads files as they are never loads it.

A file on disk is prepared from disk (``prepare.prepare_path``): a strip reads the metadata it edits and
hashes the file a chunk at a time, and its upload is the edited header bytes and ranges of the file itself,
streamed as they are sent — never the whole file in memory, whatever its size. A resize or a conversion
must decode (the whole file in hand, one large file at a time); what it made is never held until its PUT:
it is written to a private spool file (``spool``, in the state's folder, named after the process writing
it: removed once uploaded, or by the next preparer once that process is gone) and the upload streams from
there. Bytes a source holds in memory (a small Astria
download) are prepared in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import msgspec

from packsync.errors import ItemChanged, PrepareError
from packsync.model import ContentItem, PreparedContent
from packsync.recipe import Recipe
from packsync.sources.body import FileRange, Part, UploadBody, open_file

#: A file larger than this is prepared alone (all the workers' slots) when its preparation holds it whole (a
#: re-encode, or bytes not on disk), so memory is bounded by one such file, not by the sum of those under way.
LARGE_BYTES = 32 * 1024 * 1024
#: Bytes a recipe made (a re-encode) past this size wait for their PUT in a spool file, not in memory.
SPOOL_AT_LEAST = 1024 * 1024


class Prepared(msgspec.Struct, frozen=True):
    """The bytes to upload (``body``, read as they are sent), their content type, the record of what the
    recipe made of the content, and the spool file they are in, if they are in one (``release`` it)."""

    body: UploadBody
    content_type: str
    record: PreparedContent
    spooled: Path | None = None

    def release(self) -> None:
        """Remove the spool file (once uploaded, or given up)."""
        if self.spooled is not None:
            with contextlib.suppress(OSError):  # (what failed before matters more than this)
                self.spooled.unlink()


#: How an item's bytes are opened (a source's ``open``).
Open = Callable[[ContentItem], Awaitable[UploadBody]]


class Preparer:
    """Runs a recipe's inspections and preparations in worker threads of its own, ``workers`` at a time,
    each file prepared only once a worker is free for it. ``spool``: the folder a re-encode's output waits in
    for its upload (None: in memory — a dry run prepares nothing it uploads)."""

    def __init__(self, workers: int | None = None, spool: Path | None = None) -> None:
        self.workers = workers or _cores()
        self.spool = spool
        self._slots = asyncio.Semaphore(self.workers)
        self._large = asyncio.Lock()  # (one large file gathers every slot at a time: two would wait on each other)
        # Threads of its own, not the loop's shared pool: each thread an image was decoded in keeps the memory
        # it freed for the next decode, so the fewer threads ever decode, the less the process holds.
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="packsync-prepare")
        if spool is not None:
            _sweep(spool)

    async def prepare(self, item: ContentItem, open_item: Open, recipe: Recipe) -> Prepared:
        """What ``recipe`` makes of ``item``'s bytes, ready to stream: raises ``PrepareError`` with the
        reason (and what ``open_item`` raises)."""
        body = await open_item(item)
        if recipe.as_is:
            return Prepared(body, item.content_type, PreparedContent(item.sha256, "", (), item.sha256, item.size,
                                                                     item.content_type))
        made = await self._made(item, body, recipe, self.spool)
        return made if made.record.changes else msgspec.structs.replace(made, body=body)

    async def record(self, item: ContentItem, open_item: Open, recipe: Recipe) -> PreparedContent:
        """What ``recipe`` makes of ``item``'s bytes, learnt by preparing them, the bytes then dropped."""
        return (await self._made(item, await open_item(item), recipe, None)).record

    async def _made(self, item: ContentItem, body: UploadBody, recipe: Recipe, spool: Path | None) -> Prepared:
        async with self._working(item, body.file is None or _decodes(item, recipe)):
            loop = asyncio.get_running_loop()
            if (whole := body.file) is not None:
                return await loop.run_in_executor(self._pool, _prepare_file, item, whole, recipe, spool)
            data = await body.read()
            return await loop.run_in_executor(self._pool, _prepare, item, data, recipe, spool)

    async def inspect(self, item: ContentItem, open_item: Open, recipe: Recipe) -> PreparedContent:
        """The changes ``recipe`` would make to ``item``'s bytes, learnt without preparing them (or why it
        cannot prepare them)."""
        body = await open_item(item)
        async with self._working(item, body.file is None or _decodes(item, recipe)):
            loop = asyncio.get_running_loop()
            if (whole := body.file) is not None:
                return await loop.run_in_executor(self._pool, _inspect_file, item, whole, recipe)
            data = await body.read()
            return await loop.run_in_executor(self._pool, _inspect, item, data, recipe)

    @contextlib.asynccontextmanager
    async def _working(self, item: ContentItem, whole: bool) -> AsyncIterator[None]:
        """A worker's slot for ``item``; every slot for a large one held ``whole``."""
        if not whole or item.size <= LARGE_BYTES:
            async with self._slots:
                yield
            return
        taken = 0
        try:
            async with self._large:
                for _ in range(self.workers):
                    await self._slots.acquire()
                    taken += 1
            yield
        finally:
            for _ in range(taken):
                self._slots.release()


def _decodes(item: ContentItem, recipe: Recipe) -> bool:
    """Whether ``recipe`` may decode ``item`` (a resize or a conversion reads the file whole)."""
    return bool(recipe.max_edge) or recipe.converts(item.content_type)


def _sweep(spool: Path) -> None:
    """Remove what processes no longer running left in the spool (a killed run's), never what a running one
    holds (a daemon's beside a ``pull``, another state's in the same folder): each file is named after the
    process that wrote it."""
    try:
        entries = list(os.scandir(spool))
    except OSError:
        return
    for entry in entries:
        writer = entry.name.partition("-")[0]
        if not (writer.isdigit() and _running(int(writer))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's)
        return True
    return True


def _cores() -> int:
    """The cores this process may run on (in a container or under an affinity mask, fewer than the host's)."""
    affinity = getattr(os, "sched_getaffinity", None)  # (Linux; elsewhere, the machine's)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _prepare(item: ContentItem, data: bytes, recipe: Recipe, spool: Path | None) -> Prepared:
    """``data`` prepared (bytes a source held in memory)."""
    from packsync import prepare

    made = prepare.prepare(data, item.content_type, recipe)
    del data
    upload = hashlib.sha256(made.data).hexdigest() if made.changes else item.sha256
    return _kept(item, recipe, (made.data,), len(made.data), upload, made.content_type, made.changes, spool)


def _prepare_file(item: ContentItem, whole: FileRange, recipe: Recipe, spool: Path | None) -> Prepared:
    """The file ``whole`` is prepared from disk: its upload made of the bytes the recipe edited and ranges of
    the file itself (the file checked against what was scanned as it is read)."""
    from packsync import prepare
    from packsync.prepare.reader import Span

    fd = open_file(whole)
    try:
        made = prepare.prepare_path(fd, item.size, item.content_type, recipe, expected_sha256=item.sha256)
    finally:
        os.close(fd)
    parts = [msgspec.structs.replace(whole, offset=part.offset, length=part.length) if isinstance(part, Span)
             else part for part in made.parts]
    return _kept(item, recipe, parts, made.size, made.sha256, made.content_type, made.changes, spool)


def _kept(item: ContentItem, recipe: Recipe, parts: Sequence[Part], size: int, upload: str, content_type: str,
          changes: tuple[str, ...], spool: Path | None) -> Prepared:
    """What a recipe made, ready to stream: a re-encode's bytes written to a spool file of their own when
    ``spool`` is given, so that they are not held until their PUT; a strip's edited bytes (bounded, as the
    metadata they are) and ranges of the file as they are."""
    record = PreparedContent(item.sha256, recipe.key, changes, upload, size, content_type)
    if content_type != item.content_type or any(c.startswith("resize:") for c in changes):
        _give_back_memory()
    if spool is None or not all(isinstance(part, bytes) for part in parts) or size <= SPOOL_AT_LEAST:
        return Prepared(UploadBody(parts, size, upload), content_type, record)
    spooled = spool / f"{os.getpid()}-{upload}-{uuid.uuid4().hex[:8]}"
    try:
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(os.open(spooled, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as out:
            out.writelines(cast(Sequence[bytes], parts))
    except OSError as exc:  # (a full disk, say: this item's failure, tried again next run)
        with contextlib.suppress(OSError):
            spooled.unlink()
        raise ItemChanged(f"cannot keep what its recipe made until it is uploaded ({exc.strerror})") from None
    return Prepared(UploadBody.of_file(spooled, size, upload), content_type, record, spooled)


def _inspect(item: ContentItem, data: bytes, recipe: Recipe) -> PreparedContent:
    from packsync import prepare

    return _inspected(item, recipe, lambda: prepare.inspect(data, item.content_type, recipe))


def _inspect_file(item: ContentItem, whole: FileRange, recipe: Recipe) -> PreparedContent:
    from packsync import prepare

    fd = open_file(whole)
    try:
        return _inspected(item, recipe, lambda: prepare.inspect_path(fd, item.size, item.content_type, recipe))
    finally:
        os.close(fd)


def _inspected(item: ContentItem, recipe: Recipe, inspect: Callable[[], tuple[str, ...]]) -> PreparedContent:
    try:
        changes = inspect()
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
