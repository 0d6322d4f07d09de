"""The daemon's change aggregator, driven by a fake clock and a fake size/mtime probe: no sleeps.

Rules (see ``packsync/daemon/aggregator.py``): a path is quiet after ``debounce_s`` without events
and with an unchanged size/mtime; a writer's close shortens the wait; a folder is due when all its
paths are quiet, or every ``max_batch_wait_s`` with the paths still changing handed over as busy; the
quiet paths are handed over as changed, up to ``max_paths`` of them (past it: the whole folder).
"""

from __future__ import annotations

from pathlib import Path

from packsync.daemon.aggregator import Aggregator, Due, StatKey

ROOT = Path("/photos")
OTHER = Path("/other")


class Files:
    """A fake file system: what each path's (size, mtime) is now."""

    def __init__(self) -> None:
        self.keys: dict[Path, StatKey] = {}

    def stat(self, path: Path) -> StatKey:
        return self.keys.get(path)

    def write(self, path: Path, size: int) -> None:
        self.keys[path] = (size, size * 1000)


def aggregator(files: Files, debounce_s: float = 2.0, max_paths: int = 1000) -> Aggregator:
    return Aggregator(debounce_s, stat=files.stat, close_grace_s=0.25, max_batch_wait_s=30.0, max_paths=max_paths)


def changed(*paths: str) -> Due:
    return Due(frozenset(paths))


def test_a_change_is_due_once_quiet_for_the_debounce_and_then_forgotten() -> None:
    files, path = Files(), ROOT / "a.png"
    changes = aggregator(files)
    files.write(path, 10)

    changes.changed(ROOT, path, closed=False, now=100.0)

    assert changes.due(101.9) == {}
    assert changes.next_deadline() == 102.0
    assert changes.due(102.0) == {ROOT: changed("a.png")}
    assert len(changes) == 0 and changes.due(200.0) == {} and changes.next_deadline() is None


def test_every_event_restarts_the_wait() -> None:
    files, path = Files(), ROOT / "a.png"
    changes = aggregator(files)
    for t in (100.0, 101.0, 102.5):
        files.write(path, int(t))
        changes.changed(ROOT, path, closed=False, now=t)

    assert changes.due(104.0) == {}
    assert changes.due(104.5) == {ROOT: changed("a.png")}


def test_a_writer_s_close_shortens_the_wait_to_the_grace() -> None:
    files, path = Files(), ROOT / "a.png"
    changes = aggregator(files)
    files.write(path, 10)

    changes.changed(ROOT, path, closed=True, now=100.0)

    assert changes.due(100.2) == {}
    assert changes.due(100.25) == {ROOT: changed("a.png")}


def test_a_file_growing_without_events_is_not_quiet() -> None:
    """A polled share or mmap writes change a file without an event: the size/mtime probe sees it."""
    files, path = Files(), ROOT / "a.png"
    changes = aggregator(files)
    files.write(path, 10)
    changes.changed(ROOT, path, closed=False, now=100.0)
    files.write(path, 20)

    assert changes.due(102.0) == {}, "the size changed since the event"
    assert changes.due(103.9) == {}
    assert changes.due(104.0) == {ROOT: changed("a.png")}, "quiet a debounce after the change was noticed"


def test_a_burst_in_one_folder_becomes_one_batch() -> None:
    files = Files()
    changes = aggregator(files)
    for i in range(1000):
        path = ROOT / f"{i}.png"
        files.write(path, i + 1)
        changes.changed(ROOT, path, closed=True, now=100.0 + i / 1000)

    assert len(changes) == 1000
    assert changes.due(100.5) == {}, "the last file is not yet past its grace"
    assert changes.due(101.3) == {ROOT: changed(*(f"{i}.png" for i in range(1000)))}
    assert len(changes) == 0


def test_folders_are_due_independently() -> None:
    files = Files()
    changes = aggregator(files)
    files.write(ROOT / "a.png", 1)
    files.write(OTHER / "b.png", 1)
    changes.changed(ROOT, ROOT / "a.png", closed=False, now=100.0)
    changes.changed(OTHER, OTHER / "b.png", closed=False, now=101.0)

    assert changes.due(102.0) == {ROOT: changed("a.png")}
    assert changes.due(103.0) == {OTHER: changed("b.png")}


def test_a_file_that_never_stops_changing_holds_its_folder_back_at_most_a_batch_wait() -> None:
    files = Files()
    changes = aggregator(files)
    busy, quiet = ROOT / "log/render.png", ROOT / "done.png"
    files.write(quiet, 5)
    changes.changed(ROOT, quiet, closed=True, now=100.0)
    t = 100.0
    while t < 129.5:
        files.write(busy, int(t * 10))
        changes.changed(ROOT, busy, closed=False, now=t)
        assert changes.due(t) == {}, f"the folder was released early at {t}"
        t += 0.5

    files.write(busy, 999_999)
    changes.changed(ROOT, busy, closed=False, now=130.0)
    assert changes.due(130.0) == {ROOT: Due(frozenset({"done.png"}), frozenset({"log/render.png"}))}, \
        "due with the quiet file changed and the busy one named"
    assert len(changes) == 1, "the quiet file is handed out, the busy one waits"
    assert changes.due(131.0) == {}, "the busy file waits a whole batch again"
    assert changes.due(160.0) == {ROOT: changed("log/render.png")}, "once it stops, it is synced like any other file"


def test_a_deleted_file_is_quiet_when_it_stays_deleted() -> None:
    files, path = Files(), ROOT / "gone.png"
    changes = aggregator(files)

    changes.changed(ROOT, path, closed=False, now=100.0)

    assert changes.due(102.0) == {ROOT: changed("gone.png")}, "a gone path is handed over: a removal"


def test_forget_drops_what_waits_in_one_folder_only() -> None:
    files = Files()
    changes = aggregator(files)
    changes.changed(ROOT, ROOT / "a.png", closed=False, now=100.0)
    changes.changed(OTHER, OTHER / "b.png", closed=False, now=100.0)

    changes.forget(ROOT)

    assert len(changes) == 1 and changes.due(103.0) == {OTHER: changed("b.png")}


def test_past_max_paths_a_folder_is_handed_over_whole() -> None:
    """Like Syncthing's aggregator: so many changed paths cost more to look up one by one than a walk."""
    files = Files()
    changes = aggregator(files, max_paths=3)
    for name in ("a.png", "b.png", "c.png"):
        changes.changed(ROOT, ROOT / name, closed=True, now=100.0)
    for name in ("w.png", "x.png", "y.png", "z.png"):
        changes.changed(OTHER, OTHER / name, closed=True, now=100.0)

    assert changes.due(101.0) == {ROOT: changed("a.png", "b.png", "c.png"), OTHER: Due(None)}
    assert len(changes) == 0


def test_a_changed_folder_is_handed_over_as_one_path() -> None:
    """A tree moved in is one event for its folder: the path stands for the subtree."""
    files = Files()
    changes = aggregator(files)
    files.write(ROOT / "moved-in", 4096)

    changes.changed(ROOT, ROOT / "moved-in", closed=False, now=100.0)

    assert changes.due(102.0) == {ROOT: changed("moved-in")}
