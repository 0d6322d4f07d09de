"""Watch mapped folders with watchdog and hand every relevant change to a callback.

Events are hints, never truth: the daemon only uses them to decide *when* to scan. So this module
stays small — inotify where it works and polling where asked (or where inotify has run out of
watches), and a health check that tells the daemon when a folder's watching died so it can restart it
and rescan. Events for files that the mapping does not sync, and the open/close-without-write events
that packsync's own reads cause, are dropped here.

Every folder is a watch of one shared observer per mode, made at its first folder: watchdog gives each
inotify observer an inotify instance of its own and three threads (dispatch, read, hand over) besides
the one per folder, so an observer per folder took 4 threads and one of the user's inotify instances
(``fs.inotify.max_user_instances``, 128 by default) per folder. Shared, a folder costs one thread and
its watches; at rest every one of them sleeps in a blocking read, woken by an event alone. A polled
folder is walked every ``polling_interval_s``, but never more than one part in ``POLL_PACE`` of the time:
the fallback for a folder of 100,000 files must not take a core.

inotify can run out later too: a folder made after the start whose watch the kernel refuses. watchdog
then only logs (once per folder, and watches nothing below it), so its log records are where this
module hears of it: such a folder's mapping is named by ``out_of_watches()`` for the daemon to poll
instead, and packsync says so once, as at the start, instead of watchdog's warning per folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify_c import InotifyFD
from watchdog.observers.polling import PollingEmitter

from packsync.logs import get_logger
from packsync.sources.folder import Filters
from packsync.sources.patterns import IGNORE_FILE

#: (mapped folder, changed path, the writer closed it) — called from watchdog's threads.
ChangeCallback = Callable[[Path, Path, bool], None]

_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent, FileClosedEvent,
           DirCreatedEvent, DirDeletedEvent, DirMovedEvent]

#: The sysctl to raise for each way inotify runs out, as the message names it.
INOTIFY_LIMITS = {errno.ENOSPC: "fs.inotify.max_user_watches=524288",
                  errno.EMFILE: "fs.inotify.max_user_instances=1024"}


#: A polled folder waits between walks at least this many times as long as its last walk took: at most one
#: part in 51 of a core per polled folder, however large (5,000 files walked every 2 s took 6 % of one).
POLL_PACE = 50


#: Where watchdog's inotify emitter reports a watch it could not add (``inotify.py``: "Unable to watch").
WATCHDOG_INOTIFY_LOG = "watchdog.observers.inotify"


def _limit_error(record: logging.LogRecord) -> OSError | None:
    """The inotify limit error a watchdog log record carries (as an argument or as its exception), if any."""
    args = record.args if isinstance(record.args, tuple) else ()
    candidates = [*args, record.exc_info[1] if record.exc_info else None]
    return next((c for c in candidates if isinstance(c, OSError) and c.errno in INOTIFY_LIMITS), None)


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, filters: Filters, on_change: ChangeCallback) -> None:
        self.root = root
        self.filters = filters
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "")]
        for raw in paths:
            if not raw:
                continue
            path = Path(raw if isinstance(raw, str) else raw.decode(errors="surrogateescape"))
            if self._relevant(path, event.is_directory):
                self.on_change(self.root, path, isinstance(event, FileClosedEvent))

    def _relevant(self, path: Path, is_directory: bool) -> bool:
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return False
        if parts == (IGNORE_FILE,):
            return True  # the folder's own patterns changed: rescan it with them
        return bool(parts) and not self.filters.ignores(parts, is_directory)


class _PacedPolling(PollingEmitter):
    """A polled folder's emitter: walked every ``polling_interval_s``, or ``POLL_PACE`` times its last walk's
    time if that is longer, so that the fallback for a large tree never takes a core (changes there are
    seen later, not missed; the rescan stays the truth)."""

    walk_s = 0.0

    def queue_events(self, timeout: float) -> None:
        wait = max(timeout, POLL_PACE * self.walk_s)
        started = time.monotonic()
        super().queue_events(wait)  # waits, then walks and compares
        self.walk_s = max(0.0, time.monotonic() - started - wait)


class Watcher:
    """Mapped folders watched by one observer per mode; ``check()`` finds the folders whose watching died."""

    def __init__(self, on_change: ChangeCallback, polling_interval_s: float = 2.0) -> None:
        self.on_change = on_change
        self.polling_interval_s = polling_interval_s
        self.observers: dict[str, BaseObserver] = {}  # by mode, made at its first folder
        self.watches: dict[Path, ObservedWatch] = {}
        self.modes: dict[Path, str] = {}
        self._warned = False
        self._exhausted: set[Path] = set()  # written from watchdog's threads
        self._known: set[Path] = set()  # every folder watched so far
        self._lock = threading.Lock()
        self.log = get_logger()
        logging.getLogger(WATCHDOG_INOTIFY_LOG).addFilter(self._heard)

    def watch(self, root: Path, filters: Filters, polling: bool = False) -> str:
        """Start watching ``root`` recursively; returns the mode used: "inotify" or "polling"."""
        self.unwatch(root)
        if not polling:
            try:
                return self._start(root, filters, "inotify")
            except OSError as exc:
                if exc.errno not in INOTIFY_LIMITS:
                    raise
                self._ran_out(root, exc)
        return self._start(root, filters, "polling")

    def _ran_out(self, root: Path, exc: OSError) -> None:
        """Say once, whichever folder and whenever, that inotify ran out and which sysctl raises it."""
        with self._lock:
            warned, self._warned = self._warned, True
        if not warned:
            sysctl = INOTIFY_LIMITS[exc.errno or errno.ENOSPC]
            self.log.warning(f"inotify limit reached ({exc.strerror}); polling instead. Raise it with "
                             f"`sudo sysctl {sysctl}` (persist it in /etc/sysctl.d/), then restart packsync",
                             path=str(root))

    def _heard(self, record: logging.LogRecord) -> bool:
        """watchdog's log filter: a watch refused for want of inotify watches or instances below a folder
        of ours marks that folder for polling (if inotify watches it), and watchdog's own warning is dropped."""
        error = _limit_error(record)
        if error is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        paths = [Path(os.fsdecode(a)) for a in args if isinstance(a, (str, bytes))]
        with self._lock:  # a folder being switched or unwatched is still ours: its emitter may not have stopped
            ours = [root for root in self._known if any(path == root or root in path.parents for path in paths)]
            self._exhausted.update(root for root in ours if self.modes.get(root) == "inotify")
        if not ours:
            return True
        self._ran_out(ours[0], error)
        return False

    def out_of_watches(self) -> list[Path]:
        """Folders watched by inotify with part of their tree left unwatched: to be polled instead."""
        with self._lock:
            exhausted, self._exhausted = self._exhausted, set()
        return [root for root in exhausted if self.modes.get(root) == "inotify"]

    def _start(self, root: Path, filters: Filters, mode: str) -> str:
        observer = self._observer(mode)
        # (a limit met while adding the folder's watches is raised here, its watches already taken back)
        watch = observer.schedule(_Handler(root, filters, self.on_change), str(root), recursive=True,
                                  event_filter=_EVENTS)
        for emitter in observer.emitters:
            if emitter.watch == watch:
                emitter.name = f"{mode[:4]} {root.name}"
        for thread in threading.enumerate():
            if isinstance(thread, InotifyFD):
                thread.name = "inotify-read"
        self.watches[root] = watch
        self.modes[root] = mode
        with self._lock:
            self._known.add(root)
        return mode

    def _observer(self, mode: str) -> BaseObserver:
        """The running observer of ``mode``, started now if there is none (or it died)."""
        observer = self.observers.get(mode)
        if observer is None or not observer.is_alive():
            observer = Observer() if mode == "inotify" else BaseObserver(_PacedPolling, timeout=self.polling_interval_s)
            observer.name = f"watch-{mode}"
            observer.start()
            self.observers[mode] = observer
        return observer

    def unwatch(self, root: Path) -> None:
        watch = self.watches.pop(root, None)
        mode = self.modes.pop(root, None)
        observer = self.observers.get(mode) if mode else None
        if watch is not None and observer is not None and observer.is_alive():
            with contextlib.suppress(KeyError):  # (its emitter died: watchdog forgot it already)
                observer.unschedule(watch)

    def check(self) -> list[Path]:
        """Folders whose observer, or whose own emitter, is no longer running."""
        running = {e.watch for observer in self.observers.values() if observer.is_alive()
                   for e in list(observer.emitters) if e.is_alive()}  # (a copy: watchdog's threads change it)
        return [root for root, watch in self.watches.items() if watch not in running]

    def stop(self) -> None:
        logging.getLogger(WATCHDOG_INOTIFY_LOG).removeFilter(self._heard)
        self.watches.clear()
        self.modes.clear()
        for observer in self.observers.values():
            observer.stop()
        for observer in self.observers.values():
            observer.join(timeout=5)
