"""The change aggregator: watcher events in, "these folders are due, these files still busy" out.

Pure and clock-injected (every call takes ``now``; the size/mtime probe is injected too), so it is
tested without sleeps, like Syncthing's ``watchaggregator``. Its rules:

- A changed path is quiet once no event arrived for ``debounce_s`` and its size and mtime are what
  they were at the last event (a polled share, or mmap writes, change without events). A writer's
  close shortens the wait to ``close_grace_s``, in case it reopens the file at once.
- A folder is due when all its changed paths are quiet: one sync then covers the whole burst.
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


def stat_key(path: Path) -> StatKey:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass(slots=True)
class _Change:
    root: Path
    last_event: float
    closed: bool
    stat: StatKey
    first_event: float


class Aggregator:
    def __init__(self, debounce_s: float, *, stat: Callable[[Path], StatKey] = stat_key,
                 close_grace_s: float = CLOSE_GRACE_S, max_batch_wait_s: float = MAX_BATCH_WAIT_S) -> None:
        self.debounce_s = debounce_s
        self.stat = stat
        self.close_grace_s = close_grace_s
        self.max_batch_wait_s = max_batch_wait_s
        self._changes: dict[Path, _Change] = {}
        #: The quiet paths the last ``due`` handed out, per folder (relative): what its sync need look at.
        self.quiet: dict[Path, set[str]] = {}

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

    def due(self, now: float) -> dict[Path, set[str]]:
        """The folders to sync now, each with its files still being written (relative paths).

        What is handed out is forgotten; busy paths stay, and wait a whole batch again.
        """
        by_root: dict[Path, list[tuple[Path, _Change, bool]]] = defaultdict(list)
        for path, change in self._changes.items():
            quiet = False
            if now - change.last_event >= self._quiet_for(change):
                stat = self.stat(path)
                if stat == change.stat:
                    quiet = True
                else:  # still changing although no event said so
                    change.stat, change.last_event, change.closed = stat, now, False
            by_root[change.root].append((path, change, quiet))
        due: dict[Path, set[str]] = {}
        self.quiet = {}
        for root, entries in by_root.items():
            waiting = now - min(change.first_event for _, change, _ in entries)
            if not (all(quiet for *_, quiet in entries) or waiting >= self.max_batch_wait_s):
                continue
            due[root] = {str(path.relative_to(root)) for path, _, quiet in entries if not quiet}
            self.quiet[root] = {str(path.relative_to(root)) for path, _, quiet in entries if quiet}
            for path, change, quiet in entries:
                if quiet:
                    del self._changes[path]
                else:
                    change.first_event = now
        return due

    def next_deadline(self) -> float | None:
        """When a waiting path may next go quiet (None: nothing waits)."""
        return min((c.last_event + self._quiet_for(c) for c in self._changes.values()), default=None)

    def forget(self, root: Path) -> None:
        """Drop what waits in folder ``root`` (it is no longer mapped)."""
        self._changes = {path: change for path, change in self._changes.items() if change.root != root}
