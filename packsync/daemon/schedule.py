"""When each mapped folder syncs: the daemon's schedule, decided without waiting or touching a disk.

A folder is synced when the changes the watcher saw in it settle (the aggregator hands over the paths
that changed, so the sync looks at those alone, and those still being written, which wait), when its
retry is due (a failed sync, backing off), and at every full rescan, with jitter: the truth that
catches whatever the watcher missed. A source read through an API (an Astria pack) has no watcher: it
is read every ``Config.poll_interval_s`` of its mapping. A refused key pauses every folder until the
pause is over, SIGHUP, or the page asks. The loop (``service.py``) asks ``due(now)`` and
``next_deadline(now)``, runs the round, and tells the outcome back; every time is the caller's ``now``,
so the schedule is tested with a made-up clock.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packsync.config import Config, MappingConfig
from packsync.daemon.aggregator import Aggregator, Due
from packsync.daemon.timing import Timing
from packsync.errors import ConfigError
from packsync.mappings import group_of
from packsync.remote.retry import Retrying
from packsync.sources.patterns import IGNORE_FILE

if TYPE_CHECKING:  # the engine's types only: the schedule decides without it
    from packsync.engine.sync import SyncOptions, SyncReport


@dataclass(slots=True)
class Folder:
    """What the daemon keeps for one mapped folder (or source read through an API)."""

    mapping: MappingConfig
    retry: Retrying
    retry_at: float | None = None  # when a retry (or a remote source's next read) is due
    error: str | None = None

    @property
    def label(self) -> str:
        return self.mapping.label

    @property
    def root(self) -> Path | None:
        """The folder watched (None: a source read through an API, read every ``Config.poll_interval_s``)."""
        return self.mapping.path


@dataclass(frozen=True, slots=True)
class Round:
    """One sync the loop runs: which folders, and what the watcher knows of each."""

    labels: frozenset[str] | None  # None: every mapping (the first sync)
    full: bool = False
    #: Per folder label: paths still being written.
    busy: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Per folder label: the paths that changed, for a folder synced for its events alone; a folder
    #: without an entry (a retry, a full rescan, too many changes) is scanned whole.
    changed: dict[str, frozenset[str]] = field(default_factory=dict)
    #: The request this round answers, if it is one: run as asked, and its report handed back.
    asked: Asked | None = None


@dataclass(eq=False, slots=True)
class Asked:
    """A sync someone asked for (a command over the control socket, the page's button): its mappings (None:
    every one), its options (``--force``, the deletes approved), and where its report goes."""

    labels: frozenset[str] | None
    options: SyncOptions
    reply: asyncio.Future[SyncReport]


FIRST = Round(None, full=True)


class Schedule:
    def __init__(self, config: Config, timing: Timing, changes: Aggregator) -> None:
        self.config = config
        self.timing = timing
        self.changes = changes
        self.folders = {m.label: self.folder(m) for m in config.mappings}
        self.paused_until: float | None = None
        self.paused_reason: str | None = None
        self.next_full_scan = 0.0
        #: The folders whose sync is under way, and since when: never in another round meanwhile.
        self.in_flight: dict[str, float] = {}
        #: Syncs asked for, each a round of its own, in the order asked.
        self.asked: deque[Asked] = deque()

    def folder(self, mapping: MappingConfig, retry_at: float | None = None) -> Folder:
        return Folder(mapping, Retrying(self.timing.mapping_retry), retry_at)

    def folder_of(self, label: str) -> Folder | None:
        """The daemon's folder a mapping belongs to: its own, or the folder whose subfolders are packs."""
        return self.folders.get(group_of(self.config, label))

    # -- what is due ------------------------------------------------------------------------------

    def due(self, now: float) -> Round | None:
        """The round to run now, if any (None while paused): a sync asked for first."""
        if (asked := self._asked()) is not None:
            return Round(asked.labels, full=asked.labels is None, asked=asked)
        if self.paused_until is not None:
            if now < self.paused_until:
                return None
            self.paused_until = None
        settled = {str(root): due for root, due in self.changes.due(now).items()}
        full = now >= self.next_full_scan
        retries = {label for label, f in self.folders.items()
                   if f.retry_at is not None and f.retry_at <= now and label not in self.in_flight}
        labels = set(settled) | retries
        if full:  # every folder; a remote source only when its poll interval is up
            labels |= {label for label, f in self.folders.items() if f.root is not None}
        if not (full or labels):
            return None
        changed = {label: paths for label, due in settled.items()
                   if not (full or label in retries) and (paths := _paths(due)) is not None}
        return Round(frozenset(labels), full, {label: due.busy for label, due in settled.items()}, changed)

    def _asked(self) -> Asked | None:
        """The first sync asked for that may run now: none of its mappings syncing beside the loop (a remote
        source's: it waits for that sync, and the loop syncs the folders meanwhile). Those answered already
        (their asker gave up), or naming a mapping a reload removed, leave the queue."""
        for asked in list(self.asked):
            # A reload while it waited may have removed a mapping it names: syncing the rest would answer "done".
            gone = sorted(label for label in asked.labels or () if self.folder_of(label) is None)
            if gone and not asked.reply.done():
                asked.reply.set_exception(ConfigError(f"the daemon no longer syncs {gone[0]}: its config was "
                                                      "reloaded without it."))
            if asked.reply.done():
                self.asked.remove(asked)
            elif not self._waits(asked):
                self.asked.remove(asked)
                return asked
        return None

    def _waits(self, asked: Asked) -> bool:
        """Whether a mapping ``asked`` names (None: any) is syncing beside the loop now."""
        return bool(self.in_flight.keys() & (asked.labels if asked.labels is not None else self.folders.keys()))

    def next_deadline(self, now: float) -> float:
        """How long the loop may sleep before something is due (it wakes sooner for an event, or when a sync
        beside it ends)."""
        if any(not self._waits(asked) for asked in self.asked):
            return 0.0
        if self.paused_until is not None:
            return max(0.0, self.paused_until - now)
        deadlines = [self.next_full_scan]
        deadlines += [f.retry_at for label, f in self.folders.items()
                      if f.retry_at is not None and label not in self.in_flight]
        if (change := self.changes.next_deadline()) is not None:
            deadlines.append(change)
        return max(0.0, min(deadlines) - now)

    # -- what happened ----------------------------------------------------------------------------

    def started(self, due: Round, now: float) -> list[Folder]:
        """``due`` starts: its folders' retries are taken, and a full rescan schedules the next one."""
        targets = [f for label, f in self.folders.items() if due.labels is None or label in due.labels]
        for folder in targets:
            folder.retry_at = None
        if due.full:
            self.next_full_scan = now + self.config.daemon.rescan_interval_s * random.uniform(0.9, 1.1)
        return targets

    def refuse_asked(self, error: Exception) -> None:
        """Answer every sync still asked for with ``error`` (the daemon stops before running them)."""
        while self.asked:
            if not (asked := self.asked.popleft()).reply.done():
                asked.reply.set_exception(error)

    def retry(self, folder: Folder, now: float) -> None:
        folder.retry_at = now + folder.retry.next_delay()

    def wait_turn(self, folder: Folder, now: float) -> None:
        """Another site syncs the folder's pack now (a shared state): a full sync of it in a moment."""
        folder.retry_at = now + self.timing.turn_s

    def synced(self, folder: Folder, error: str | None, failing: bool, now: float) -> None:
        """A folder's sync ended: with ``error`` (its first mapping's), ``failing`` otherwise than by a safety
        stop (which is not retried: nothing changes until the folder does, or a person says --force)."""
        folder.error = error
        if failing:
            self.retry(folder, now)
        elif not error:
            folder.retry.reset()
        if folder.root is None and folder.retry_at is None:  # a source read through an API: again in a while
            folder.retry_at = now + self.config.poll_interval_s(folder.mapping)

    def pause(self, folders: list[Folder], reason: str, now: float) -> None:
        """A refused key: nothing syncs for ``auth_pause_s``; then ``folders`` are retried."""
        self.paused_until = now + self.timing.auth_pause_s
        self.paused_reason = reason
        for folder in folders:
            folder.retry_at = 0.0

    def sync_now(self, label: str | None) -> None:
        """Sync one mapping's folder (None: every folder) at once; a pause for a refused key ends too."""
        chosen = self.folder_of(label) if label is not None else None
        for folder in self.folders.values():
            if label is None or folder is chosen:
                folder.retry_at = 0.0
        self.paused_until = None

    def reconfigure(self, config: Config) -> tuple[list[Folder], list[Path]]:
        """A reloaded config: every folder it adds or changes is new and due at once (and a remote source is
        read again); returns the new folders, and the roots no longer watched. A pause ends too."""
        old, new = self.folders, {m.label: m for m in config.mappings}
        self.config, self.folders, self.paused_until = config, {}, None
        fresh: list[Folder] = []
        for label, mapping in new.items():
            kept = old.get(label)
            if kept and kept.mapping == mapping:
                self.folders[label] = kept
                if kept.root is None:
                    kept.retry_at = 0.0
            else:
                self.folders[label] = self.folder(mapping, retry_at=0.0)
                fresh.append(self.folders[label])
        gone = [root for label, f in old.items() if label not in new and (root := f.root) is not None]
        return fresh, gone

    @property
    def paused(self) -> bool:
        return self.paused_until is not None


def _paths(due: Due) -> frozenset[str] | None:
    """The paths a folder's sync may look at alone; None (scan it whole) past the aggregator's bound, or
    when its ignore file changed (every path may be in or out now)."""
    return None if due.changed is None or IGNORE_FILE in due.changed else due.changed
