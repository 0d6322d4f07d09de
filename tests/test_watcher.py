"""The folder watcher (``packsync/daemon/watcher.py``) in this process: real folders, watchdog's real threads."""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import image, write
from helpers import wait_until

from packsync.daemon.watcher import Watcher
from packsync.sources.folder import Filters

FILTERS = Filters(["*.png"], [".*"], max_file_bytes=10_000_000)


def test_folders_share_one_observer_and_one_whose_emitter_died_is_watched_again(tmp_path: Path) -> None:
    """Three folders are three watches of one inotify observer; a folder whose emitter thread died is named
    by ``check()`` alone, and watching it again brings its events back while the others' never stopped."""
    seen: list[Path] = []
    watcher = Watcher(lambda root, _path, _closed: seen.append(root))
    roots = [tmp_path / name for name in ("a", "b", "c")]
    for root in roots:
        root.mkdir()
        assert watcher.watch(root, FILTERS) == "inotify"
    try:
        assert list(watcher.observers) == ["inotify"]
        (dying,) = [e for e in watcher.observers["inotify"].emitters if e.watch == watcher.watches[roots[1]]]
        dying.stop()
        dying.join(timeout=5)
        assert watcher.check() == [roots[1]]

        watcher.watch(roots[1], FILTERS)
        assert watcher.check() == []
        for n, root in enumerate(roots):
            write(root / "new.png", image(seed=n))
        wait_until(lambda: set(seen) == set(roots), timeout=10, what="an event from every folder")
    finally:
        watcher.stop()
    assert not any(t.name == "watch-inotify" and t.is_alive() for t in threading.enumerate())
