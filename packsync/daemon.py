"""The daemon: a thin loop that decides *when* to run the same scan → plan → execute pipeline.

Watchdog events are hints: a changed path is only noted, with the time and its size/mtime. Once a
mapping's changed paths have all been quiet for ``debounce_s`` (a writer's close ends the wait
early, after a short grace), the mapping is synced with the one pipeline ``run`` uses; paths still
being written are left for the next round (``busy``), so a file is never uploaded half-done. A
periodic full rescan, with jitter, is the truth that catches whatever the watcher missed, and an
observer that died is restarted and its folder rescanned.

Remote trouble never kills the daemon: a failing mapping is retried with capped backoff, and a
refused key pauses syncing (one clear error, a rare retry, or at once after SIGHUP). SIGTERM and
SIGINT finish or abandon the sync in flight within seconds and exit 0; SIGHUP reloads the config.
systemd hears READY=1, STATUS=, WATCHDOG=1 (from this loop, so a hung loop is noticed) and
STOPPING=1 through ``notify.py``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from packsync.client import GenviralClient
from packsync.config import Config, load_config, read_token
from packsync.errors import AuthError, ExitCode, PacksyncError
from packsync.logs import get_logger, register_secret
from packsync.notify import notify, watchdog_interval
from packsync.state import Store
from packsync.sync import Syncer, SyncOptions, SyncReport, mapping_filters
from packsync.watcher import Watcher

#: After a writer closes a file, wait this long for it to be reopened before calling it quiet.
CLOSE_GRACE_S = 0.25
#: A folder that never stops changing is still synced this often (its busy files excepted).
MAX_BATCH_WAIT_S = 30.0
RETRY_START_S = 5.0
RETRY_CAP_S = 300.0
AUTH_RETRY_S = 900.0
STOP_GRACE_S = 5.0
WATCHER_STOP_S = 2.0
STOP_DEADLINE_S = 8.0
METADATA_START_S = 1.0
METADATA_CAP_S = 30.0


@dataclass(slots=True)
class _Change:
    root: Path
    last_event: float
    closed: bool
    stat: tuple[int, int] | None
    first_event: float


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Daemon:
    def __init__(self, config_path: Path, config: Config, token: str, *, polling: bool = False) -> None:
        self.config_path = config_path
        self.config = config
        self.token = token
        self.polling = polling
        self.log = get_logger()
        self.changes: dict[Path, _Change] = {}
        self.retry_at: dict[Path, float] = {}
        self.retry_delay: dict[Path, float] = {}
        self.paused_until: float | None = None
        self.last_error: str | None = None
        self.ready = False
        self.reload_requested = False
        self.watchdog_s = watchdog_interval()
        self.tick_s = min(self.watchdog_s or 5.0, 5.0)
        self._next_full_scan = 0.0
        self._last_full_scan: float | None = None
        self._last_ping = 0.0
        self._published: tuple[object, ...] = ()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.metadata_wake = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self.store = Store(self.config.state_path)
        self.api = self._client(self.config, self.token)
        self.syncer = Syncer(self.config, self.store, self.api)
        def on_change(root: Path, path: Path, closed: bool) -> None:
            loop.call_soon_threadsafe(self._changed, root, path, closed)

        self.watcher = Watcher(on_change)
        self.store.save_daemon(pid=os.getpid(), started_at=time.time(), state="starting", queue=0, last_error=None)
        metadata = asyncio.create_task(self._metadata_loop())
        try:
            for mapping in self.config.mappings:
                self._watch(mapping.path)
            notify("STATUS=first full scan and sync")
            await self._sync(None, {}, full=True)
            if not self.stopping.is_set():
                self.ready = True
                notify("READY=1")
                self._publish()
                self.log.info("daemon ready", folders=len(self.config.mappings),
                              watchers=dict(sorted((str(k), v) for k, v in self.watcher.modes.items())))
            await self._loop()
        finally:
            notify("STOPPING=1")
            metadata.cancel()
            # watchdog's threads are daemon threads: never let a slow one hold up the exit.
            stopper = threading.Thread(target=self.watcher.stop, name="watcher-stop", daemon=True)
            stopper.start()
            stopper.join(WATCHER_STOP_S)
            await asyncio.gather(metadata, return_exceptions=True)
            await self.api.aclose()
            self.store.save_daemon(pid=None, state="stopped", queue=len(self.changes))
            self.store.close()
            self.log.info("daemon stopped")
        return ExitCode.OK

    @staticmethod
    def _client(config: Config, token: str) -> GenviralClient:
        return GenviralClient(config.genviral.base_url, token, concurrency=config.genviral.concurrency)

    def _stop(self) -> None:
        self.log.info("stopping")
        self.stopping.set()
        self.wake.set()
        deadline = threading.Timer(STOP_DEADLINE_S, self._exit_now)
        deadline.daemon = True
        deadline.start()

    def _exit_now(self) -> None:
        """The promise is an exit within 10 s of SIGTERM: past the deadline, show where it hangs and go.

        Leaving mid-step is safe: every step is committed once confirmed, and the next start resumes.
        """
        self.log.error("shutdown is taking too long; exiting now", deadline_s=STOP_DEADLINE_S)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(0)

    def _request_reload(self) -> None:
        self.reload_requested = True
        self.wake.set()

    def _watch(self, root: Path) -> None:
        mapping = next(m for m in self.config.mappings if m.path == root)
        try:
            self.watcher.watch(root, mapping_filters(mapping), polling=self.polling or mapping.polling)
        except OSError as exc:
            self.log.error("cannot watch folder; relying on rescans", path=str(root), error=exc.strerror)

    # -- events ------------------------------------------------------------------------------------

    def _changed(self, root: Path, path: Path, closed: bool) -> None:
        """A watcher saw ``path`` change (runs on the event loop, called from watchdog's threads)."""
        change = self.changes.get(path)
        now = time.monotonic()
        if change is None:
            self.changes[path] = _Change(root, now, closed, _stat_key(path), now)
        else:
            change.last_event, change.closed, change.stat = now, closed, _stat_key(path)
        self.wake.set()

    def _quiet_for(self, change: _Change) -> float:
        debounce = self.config.daemon.debounce_s
        return min(debounce, CLOSE_GRACE_S) if change.closed else debounce

    def _due(self, now: float) -> tuple[set[Path], dict[Path, set[str]]]:
        """Folders whose changes have settled, and per folder the files still being written."""
        by_root: dict[Path, list[tuple[Path, _Change, bool]]] = defaultdict(list)
        for path, change in self.changes.items():
            quiet = False
            if now - change.last_event >= self._quiet_for(change):
                stat = _stat_key(path)
                if stat == change.stat:
                    quiet = True
                else:  # still changing although no event said so (a polled share, mmap writes)
                    change.stat, change.last_event, change.closed = stat, now, False
            by_root[change.root].append((path, change, quiet))
        roots: set[Path] = set()
        busy: dict[Path, set[str]] = {}
        for root, entries in by_root.items():
            # A file that never stops changing must not hold back the rest of its folder for ever.
            waiting = now - min(change.first_event for _, change, _ in entries)
            if all(quiet for *_, quiet in entries) or waiting >= MAX_BATCH_WAIT_S:
                roots.add(root)
                busy[root] = {str(p.relative_to(root)) for p, _, quiet in entries if not quiet}
                for path, change, quiet in entries:
                    if quiet:
                        del self.changes[path]
                    else:
                        change.first_event = now  # still busy: wait a full batch again
        return roots, busy

    def _next_deadline(self, now: float) -> float:
        deadlines = [self._next_full_scan, now + self.tick_s, *self.retry_at.values()]
        deadlines += [c.last_event + self._quiet_for(c) for c in self.changes.values()]
        if self.paused_until:
            deadlines.append(self.paused_until)
        return max(0.0, min(deadlines) - now)

    # -- the loop ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self.stopping.is_set():
            self._ping()
            if self.reload_requested:
                await self._reload()
            for root in self.watcher.check():
                self.log.warning("folder watcher stopped; restarting it and rescanning", path=str(root))
                self._watch(root)
                self.retry_at[root] = 0.0
            now = time.monotonic()
            if self.paused_until and now < self.paused_until:
                await self._sleep(self.paused_until - now)
                continue
            self.paused_until = None
            roots, busy = self._due(now)
            full = now >= self._next_full_scan
            if full:
                for root in {m.path for m in self.config.mappings} - set(self.watcher.observers):
                    self._watch(root)
            roots |= {root for root, at in self.retry_at.items() if at <= now}
            if full or roots:
                await self._sync(None if full else roots, busy, full=full)
            else:
                self._publish()
                await self._sleep(self._next_deadline(now))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=min(seconds, self.tick_s))
        except TimeoutError:
            pass
        self.wake.clear()

    def _ping(self) -> None:
        now = time.monotonic()
        if self.watchdog_s and now - self._last_ping >= self.watchdog_s / 2:
            notify("WATCHDOG=1")
            self._last_ping = now

    async def _sync(self, roots: set[Path] | None, busy: dict[Path, set[str]], *, full: bool) -> None:
        """Run the pipeline for ``roots`` (None: every mapping) as a task, staying responsive."""
        targets = roots if roots is not None else {m.path for m in self.config.mappings}
        for root in targets:
            self.retry_at.pop(root, None)
        if full:
            self._next_full_scan = time.monotonic() + self.config.daemon.rescan_interval_s * random.uniform(0.9, 1.1)
        task = asyncio.create_task(self.syncer.sync(SyncOptions(wait=False), only=roots, busy=busy))
        while not task.done():
            await asyncio.wait({task}, timeout=self.tick_s)
            self._ping()
            if not self.ready:
                notify(f"EXTEND_TIMEOUT_USEC={int(self.tick_s * 3 * 1e6)}")
            if self.stopping.is_set() and not task.done():
                try:
                    await asyncio.wait_for(task, timeout=STOP_GRACE_S)
                except (TimeoutError, asyncio.CancelledError):
                    self.log.info("abandoned the sync in flight; the next start resumes it")
                    return
        try:
            report = task.result()
        except AuthError as exc:
            self._pause(targets, str(exc))
            return
        except PacksyncError as exc:
            if not self.ready and exc.exit_code == ExitCode.USAGE:
                raise  # a config error at start: say so and exit, rather than retry forever
            self.last_error = str(exc)
            self.log.error("sync failed; will retry", error=str(exc))
            self._retry(targets)
            return
        if full:
            self._last_full_scan = time.time()
        self._after(report)

    def _pause(self, roots: set[Path], reason: str) -> None:
        self.paused_until = time.monotonic() + AUTH_RETRY_S
        self.last_error = reason
        self.log.error(f"{reason}; syncing paused, retrying in {AUTH_RETRY_S / 60:.0f} min or on SIGHUP")
        for root in roots:
            self.retry_at[root] = 0.0
        self._publish(state="paused")

    def _retry(self, roots: set[Path]) -> None:
        for root in roots:
            delay = min(self.retry_delay.get(root, RETRY_START_S / 2) * 2, RETRY_CAP_S)
            self.retry_delay[root] = delay
            self.retry_at[root] = time.monotonic() + delay * random.uniform(0.8, 1.2)

    def _after(self, report: SyncReport) -> None:
        failing: set[Path] = set()
        added = 0
        for mapping in report.mappings:
            outcome = mapping.outcome
            error = mapping.error or (outcome.error if outcome else None)
            if outcome and outcome.failures and not error:
                error = f"{outcome.failures[0][0]}: {outcome.failures[0][1]}"
            if error:
                failing.add(mapping.config.path)
                self.last_error = error
            else:
                self.retry_delay.pop(mapping.config.path, None)
            if mapping.safety:
                self.last_error = mapping.safety
                self.log.error("safety stop: deletes withheld", path=str(mapping.config.path), reason=mapping.safety)
            added += outcome.added if outcome else 0
            if outcome and (outcome.added or outcome.deleted or outcome.failures):
                self.log.info("synced", path=str(mapping.config.path), added=outcome.added,
                              deleted=outcome.deleted, failed=len(outcome.failures))
        self._retry(failing)
        if added:
            self.metadata_wake.set()
        self._publish()

    def _publish(self, state: str | None = None) -> None:
        """Tell `packsync status` and systemd what the daemon is doing."""
        state = state or ("paused" if self.paused_until else ("running" if self.ready else "starting"))
        news = (state, len(self.changes), self.last_error, self._last_full_scan, len(self.config.mappings))
        if news == self._published:  # the idle loop calls this often: write only what changed
            return
        self._published = news
        self.store.save_daemon(state=state, queue=len(self.changes), last_error=self.last_error,
                               last_full_scan=self._last_full_scan)
        notify(f"STATUS={state}: {len(self.config.mappings)} folders watched, {len(self.changes)} changes queued"
               + (f", last error: {self.last_error}" if self.last_error else ""))

    # -- metadata ----------------------------------------------------------------------------------

    async def _metadata_loop(self) -> None:
        """Poll packs whose images still wait for AI metadata: one GET per pack per round, backing off."""
        delay = METADATA_START_S
        while True:
            pending = self.store.metadata_pending(self.syncer.mapped_pack_ids())
            if not pending:
                await self.metadata_wake.wait()
                self.metadata_wake.clear()
                delay = METADATA_START_S
                continue
            try:
                await asyncio.wait_for(self.metadata_wake.wait(), timeout=delay)
                self.metadata_wake.clear()
                delay = METADATA_START_S
            except TimeoutError:
                delay = min(delay * 2, METADATA_CAP_S)
            if self.paused_until:
                continue
            try:
                await self.syncer.poll_metadata(list(pending))
            except AuthError as exc:
                self.log.warning("metadata poll refused", error=str(exc))

    # -- reload ------------------------------------------------------------------------------------

    async def _reload(self) -> None:
        """SIGHUP: read the config (and token) again; start and stop watchers for what changed."""
        self.reload_requested = False
        try:
            config = load_config(self.config_path)
            token = read_token(config.genviral)
        except PacksyncError as exc:
            self.log.error("config reload failed; keeping the running config", error=str(exc))
            return
        register_secret(token)
        old = {m.path: m for m in self.config.mappings}
        new = {m.path: m for m in config.mappings}
        for root in old.keys() - new.keys():
            self.watcher.unwatch(root)
            self.retry_at.pop(root, None)
            for path in [p for p, c in self.changes.items() if c.root == root]:
                del self.changes[path]
        if config.genviral != self.config.genviral or token != self.token:
            await self.api.aclose()
            self.api = self._client(config, token)
        self.config, self.token = config, token
        self.syncer = Syncer(config, self.store, self.api)
        for root, mapping in new.items():
            if old.get(root) != mapping:
                self._watch(root)
                self.retry_at[root] = 0.0
        self.paused_until = None
        self.log.info("config reloaded", folders=len(new), added=len(new.keys() - old.keys()),
                      removed=len(old.keys() - new.keys()))


def run_daemon(config_path: Path, polling: bool = False) -> ExitCode:
    """``packsync daemon``: hold the state lock and run until SIGTERM/SIGINT."""
    from packsync.lock import StateLock

    config = load_config(config_path)
    config.require_mappings()
    token = config.token()
    register_secret(token)
    with StateLock(config.state_path):
        return asyncio.run(Daemon(config_path, config, token, polling=polling).run())
