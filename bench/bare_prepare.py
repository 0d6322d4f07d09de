"""The floor of preparing: ``packsync.prepare.prepare`` over a list of files, on every core, and nothing else.

Run as a process of its own and measured like packsync (wall time spawn → exit, CPU from ``os.wait4``;
see ``prepared_sync.py``). Each file is read and prepared with the recipe given, by ``WORKERS``
threads or processes; the prepared bytes are counted and dropped (no hashing, no state, no upload):

    threads   WORKERS MAX_EDGE FILES_JSON [ranged]  # a thread pool in this process (Pillow releases the GIL)
    processes WORKERS MAX_EDGE FILES_JSON [ranged]  # a process pool: each worker reads and prepares its files

``MAX_EDGE`` 0 is the default recipe (strip location and serials, no resize). ``ranged``: each file is
prepared from disk by ``prepare_path`` (read by range, never whole, its input and output hashed as it does)
instead of read whole and passed to ``prepare``. It prints one JSON object: the loop's own seconds (start-up
and imports left out), the files, the bytes read and written, and how many files the recipe changed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from packsync.prepare import prepare, prepare_path
from packsync.recipe import Recipe

_recipe = Recipe()
_ranged = False


def _configure(max_edge: int, ranged: bool) -> None:
    """Set the recipe in this process (a process pool's workers call it as their initializer)."""
    global _recipe, _ranged
    _recipe, _ranged = Recipe(max_edge=max_edge), ranged


def _one(path: str) -> tuple[int, int, bool]:
    """Read and prepare one file: (bytes read, bytes prepared, whether the recipe changed them)."""
    if _ranged:
        size = os.path.getsize(path)
        made = prepare_path(path, size, "image/jpeg", _recipe)
        return size, made.size, made.sha256 != made.source_sha256
    with open(path, "rb") as handle:
        data = handle.read()
    prepared = prepare(data, "image/jpeg", _recipe)
    return len(data), len(prepared.data), prepared.data != data


def _pool(mode: str, workers: int, max_edge: int, ranged: bool) -> Executor:
    if mode == "threads":
        return ThreadPoolExecutor(max_workers=workers)
    if mode == "processes":
        return ProcessPoolExecutor(max_workers=workers, initializer=_configure, initargs=(max_edge, ranged))
    sys.exit(f"unknown mode {mode!r}: threads or processes")


def main() -> None:
    mode, workers, max_edge, listed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ranged = sys.argv[5:] == ["ranged"]
    with open(listed, encoding="utf-8") as handle:
        paths: list[str] = json.load(handle)
    _configure(max_edge, ranged)
    with _pool(mode, workers, max_edge, ranged) as pool:
        start = time.perf_counter()
        results: Iterator[tuple[int, int, bool]] = pool.map(_one, paths)
        read = written = changed = 0
        for size_in, size_out, differs in results:
            read, written, changed = read + size_in, written + size_out, changed + differs
        seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "ranged": ranged, "workers": workers, "max_edge": max_edge, "seconds": seconds,
                      "files": len(paths), "bytes_in": read, "bytes_out": written, "changed": changed}))


if __name__ == "__main__":
    main()
