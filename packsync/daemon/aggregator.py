"""The change aggregator: watcher events in, "these folders are due, with these paths changed and
these still busy" out.

Pure and clock-injected (every call takes ``now``; the size/mtime probe is injected too), so it is
tested without sleeps, like Syncthing's ``watchaggregator``. Its rules:

- A changed path is quiet once no event arrived for ``debounce_s`` and its size and mtime are what
  they were at the last event (a polled share, or mmap writes, change without events). A writer's
  close shortens the wait to ``close_grace_s``, in case it reopens the file at once.
- A folder is due when all its changed paths are quiet: one sync then covers the whole burst, and
  is handed the paths that changed, so that it looks at those alone. Past ``max_paths`` of them the
  folder is scanned whole instead (as Syncthing's aggregator does): a walk costs less than so many
  look-ups, and a big burst is often a whole tree moved in.
- A folder whose paths never all go quiet (a file rewritten for ever) is due anyway every
  ``max_batch_wait_s``, with the paths still changing handed over as *busy*: their new content
  waits, and everything else in the folder syncs.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: What a path looked like: (size, mtime_ns), or None when it is gone.
StatKey = tuple[int, int] | None

#: After a writer closes a file, wait this long for it to be reopened before calling it quiet.
CLOSE_GRACE_S = 0.25
#: A folder that never stops changing is still synced this often (its busy files excepted).
MAX_BATCH_WAIT_S = 30.0
#: More changed paths than this in one folder: the folder is scanned whole.
MAX_CHANGED_PATHS = 1000


def stat_key(path: Path) -> StatKey:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True, slots=True)
class Due:
    """A folder due for a sync: what changed in it (relative paths), and what is still being written."""

    #: The quiet changed paths (a folder among them stands for its subtree, a gone path for a removal);
    #: None: more than ``max_paths`` changed, scan the whole folder.
    changed: frozenset[str] | None
    #: Paths still changing: their new content waits for a later sync.
    busy: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Change:
    root: Path
    last_event: float
    closed: bool
    stat: StatKey
    first_event: float


class Aggregator:
    def __init__(self, debounce_s: float, *, stat: Callable[[Path], StatKey] = stat_key,
                 close_grace_s: float = CLOSE_GRACE_S, max_batch_wait_s: float = MAX_BATCH_WAIT_S,
                 max_paths: int = MAX_CHANGED_PATHS) -> None:
        self.debounce_s = debounce_s
        self.stat = stat
        self.close_grace_s = close_grace_s
        self.max_batch_wait_s = max_batch_wait_s
        self.max_paths = max_paths
        self._changes: dict[Path, _Change] = {}

    def __len__(self) -> int:
        """How many changed paths wait."""
        return len(self._changes)

    def changed(self, root: Path, path: Path, closed: bool, now: float) -> None:
        """The watcher of folder ``root`` saw ``path`` change; ``closed``: a writer closed it."""
        change = self._changes.get(path)
        if change is None:
            self._changes[path] = _Change(root, now, closed, self.stat(path), now)
        else:
            change.last_event, change.closed, change.stat = now, closed, self.stat(path)

    def _quiet_for(self, change: _Change) -> float:
        return min(self.debounce_s, self.close_grace_s) if change.closed else self.debounce_s

    def due(self, now: float) -> dict[Path, Due]:
        """The folders to sync now, each with its quiet changed paths and its busy ones.

        What is handed out as changed is forgotten; busy paths stay, and wait a whole batch again.
        """
        by_root: dict[Path, list[tuple[Path, _Change, bool]]] = defaultdict(list)
        for path, change in self._changes.items():
            by_root[change.root].append((path, change, self._quiet(path, change, now)))
        due: dict[Path, Due] = {}
        for root, entries in by_root.items():
            waiting = now - min(change.first_event for _, change, _ in entries)
            if not (all(quiet for *_, quiet in entries) or waiting >= self.max_batch_wait_s):
                continue
            changed = frozenset(str(path.relative_to(root)) for path, _, quiet in entries if quiet)
            busy = frozenset(str(path.relative_to(root)) for path, _, quiet in entries if not quiet)
            due[root] = Due(changed if len(changed) <= self.max_paths else None, busy)
            for path, change, quiet in entries:
                if quiet:
                    del self._changes[path]
                else:
                    change.first_event = now
        return due

    def _quiet(self, path: Path, change: _Change, now: float) -> bool:
        """Whether ``path`` has gone quiet: no event for its wait, and its size and mtime as at the last one."""
        if now - change.last_event < self._quiet_for(change):
            return False
        stat = self.stat(path)
        if stat == change.stat:
            return True
        change.stat, change.last_event, change.closed = stat, now, False  # still changing, though no event said so
        return False

    def next_deadline(self) -> float | None:
        """When a waiting path may next go quiet (None: nothing waits)."""
        return min((c.last_event + self._quiet_for(c) for c in self._changes.values()), default=None)

    def forget(self, root: Path) -> None:
        """Drop what waits in folder ``root`` (it is no longer mapped)."""
        self._changes = {path: change for path, change in self._changes.items() if change.root != root}
