"""The daemon: a thin loop that decides *when* to run the same scan → plan → execute pipeline.

Watchdog events are hints, fed to the change aggregator (``aggregator.py``), which says when a
folder's changes have settled and which files are still being written (``busy``: left for the
next round, so a file is never uploaded half-done). A periodic full rescan, with jitter, is the
truth that catches whatever the watcher missed, and an observer that died is restarted and its
folder rescanned.

Remote trouble never kills the daemon: a failing mapping is retried with the shared backoff, and a
refused key pauses syncing (one clear error, a rare retry, or at once after SIGHUP). Background
loops (metadata polling) are supervised: an unexpected error is logged and the loop restarted with
backoff. SIGTERM and SIGINT finish or abandon the sync in flight within seconds and exit 0; SIGHUP
reloads the config. systemd hears READY=1, STATUS=, WATCHDOG=1 (from this loop, so a hung loop is
noticed) and STOPPING=1 through ``notify.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import random
import resource
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packsync.app import App, client_for, read_astria_token, transport_for
from packsync.config import Config, MappingConfig, load_config, read_password, read_token
from packsync.daemon.aggregator import Aggregator
from packsync.daemon.notify import notify, watchdog_interval
from packsync.daemon.watcher import Watcher
from packsync.daemon.web import Web
from packsync.engine.metadata import POLL_BACKOFF
from packsync.engine.subfolders import group_of
from packsync.engine.sync import SyncOptions, SyncReport
from packsync.errors import AuthError, ExitCode, PacksyncError, StateUnavailable
from packsync.logs import get_logger, register_secret
from packsync.remote.retry import Backoff, Retrying
from packsync.remote.transport import Transport
from packsync.sources.folder import filters_for
from packsync.state.lock import StateLock
from packsync.state.store import State
from packsync.web.health import LiveState

if TYPE_CHECKING:
    from packsync.web.metrics import Metrics

#: A failing mapping is retried after 5 s, doubling up to 5 min, ±20 % so that mappings drift apart.
MAPPING_RETRY = Backoff(5.0, 300.0, 0.2)
#: A background loop that crashed is restarted after 1 s, doubling up to 1 min.
LOOP_RESTART = Backoff(1.0, 60.0, 0.2)
AUTH_RETRY_S = 900.0
STOP_GRACE_S = 5.0
WATCHER_STOP_S = 2.0
STOP_DEADLINE_S = 8.0


@dataclass(slots=True)
class Folder:
    """What the daemon keeps for one mapped folder."""

    mapping: MappingConfig
    retry: Retrying = field(default_factory=lambda: Retrying(MAPPING_RETRY))
    retry_at: float | None = None
    error: str | None = None

    @property
    def root(self) -> Path | None:
        """The folder watched (None: an Astria pack, read every ``[astria] poll_interval_s``)."""
        return self.mapping.path


class Daemon:
    def __init__(self, config_path: Path, config: Config, token: str, *, polling: bool = False) -> None:
        self.config_path = config_path
        self.config = config
        self.token = token
        self.polling = polling
        self.log = get_logger()
        self.folders = {m.label: Folder(m) for m in config.mappings}
        self.changes = Aggregator(config.daemon.debounce_s)
        self.paused_until: float | None = None
        self.paused_reason: str | None = None
        self.sync_error: str | None = None
        self.state_trouble: str | None = None
        self.ready = False
        self.reload_requested = False
        self.watchdog_s = watchdog_interval()
        self.tick_s = min(self.watchdog_s or 5.0, 5.0)
        self._next_full_scan = 0.0
        self._last_full_scan: float | None = None
        self._last_ping = 0.0
        self._published: tuple[object, ...] = ()
        self._retiring: set[asyncio.Task[None]] = set()
        self._last_tick = time.monotonic()
        self.web: Web | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.metadata_wake = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        state = await self._open_state()
        if state is None:
            return ExitCode.OK
        self.state = state
        self.web = await Web.start(self.config, self) if self.config.http.address else None
        self.app = App.wire(self.config, self.state,
                            client_for(self.config, self.token, transport_for(self.config, self._observer)))

        def on_change(root: Path, path: Path, closed: bool) -> None:
            loop.call_soon_threadsafe(self._changed, root, path, closed)

        self.watcher = Watcher(on_change)
        self._save_daemon(pid=os.getpid(), started_at=time.time(), state="starting", queue=0, last_error=None)
        metadata = asyncio.create_task(self._supervised("metadata polling", self._metadata_loop))
        try:
            for folder in self.folders.values():
                self._watch(folder)
            notify("STATUS=first full scan and sync")
            await self._sync(None, {}, full=True)
            if not self.stopping.is_set():
                self.ready = True
                notify("READY=1")
                self._publish()
                self.log.info("daemon ready", folders=len(self.folders),
                              watchers=dict(sorted((str(k), v) for k, v in self.watcher.modes.items())))
            await self._loop()
        finally:
            notify("STOPPING=1")
            metadata.cancel()
            self.app.close_sources()
            # watchdog's threads are daemon threads: never let a slow one hold up the exit.
            stopper = threading.Thread(target=self.watcher.stop, name="watcher-stop", daemon=True)
            stopper.start()
            stopper.join(WATCHER_STOP_S)
            for task in self._retiring:
                task.cancel()
            await asyncio.gather(metadata, *self._retiring, return_exceptions=True)
            await self.app.api.transport.aclose()
            if self.web:
                await self.web.close()
            self._save_daemon(pid=None, state="stopped", queue=len(self.changes))
            self.state.close()
            self.log.info("daemon stopped")
        return ExitCode.OK

    async def _open_state(self) -> State | None:
        """The state, once it can be opened: a locked state or a full disk at start is waited out too.
        None when a stop came first."""
        retrying = Retrying(MAPPING_RETRY)
        while not self.stopping.is_set():
            try:
                state = State(self.config.state_path)
            except StateUnavailable as exc:
                self._state_unusable(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=retrying.next_delay())
                continue
            self._state_usable()
            return state
        return None

    def _stop(self) -> None:
        self.log.info("stopping")
        self.stopping.set()
        self.wake.set()
        deadline = threading.Timer(STOP_DEADLINE_S, self._exit_now)
        deadline.daemon = True
        deadline.start()

    def _exit_now(self) -> None:
        """The promise is an exit within 10 s of SIGTERM: past the deadline, show where it hangs and go.

        Leaving mid-step is safe, like a kill: the steps still queued (``State.write_behind``) are each
        found again by the next start, which resumes.
        """
        self.log.error("shutdown is taking too long; exiting now", deadline_s=STOP_DEADLINE_S)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(0)

    def _request_reload(self) -> None:
        self.reload_requested = True
        self.wake.set()

    def _watch(self, folder: Folder) -> None:
        if folder.root is None:
            return
        try:
            self.watcher.watch(folder.root, filters_for(folder.mapping),
                               polling=self.polling or folder.mapping.polling)
        except OSError as exc:
            self.log.error("cannot watch folder; relying on rescans", path=str(folder.root), error=exc.strerror)

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop for ever: an unexpected error is logged and the loop restarted, backing off."""
        restarts = Retrying(LOOP_RESTART)
        while True:
            started = time.monotonic()
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a supervisor: whatever it was, log it and go on
                if time.monotonic() - started > LOOP_RESTART.cap_s:
                    restarts.reset()
                delay = restarts.next_delay()
                self.log.error(f"{name} failed; restarting it", error=f"{type(exc).__name__}: {exc}",
                               retry_in_s=round(delay, 1), exc_info=exc)
                await asyncio.sleep(delay)

    # -- events ------------------------------------------------------------------------------------

    def _changed(self, root: Path, path: Path, closed: bool) -> None:
        """A watcher saw ``path`` change (runs on the event loop, called from watchdog's threads)."""
        self.changes.changed(root, path, closed, time.monotonic())
        self.wake.set()

    def _next_deadline(self, now: float) -> float:
        deadlines = [self._next_full_scan, now + self.tick_s]
        deadlines += [f.retry_at for f in self.folders.values() if f.retry_at is not None]
        if (change := self.changes.next_deadline()) is not None:
            deadlines.append(change)
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
                folder = self.folders[str(root)]
                self._watch(folder)
                folder.retry_at = 0.0
            now = time.monotonic()
            if self.paused_until and now < self.paused_until:
                await self._sleep(self.paused_until - now)
                continue
            self.paused_until = None
            due = self.changes.due(now)
            busy = {str(root): paths for root, paths in due.items()}
            full = now >= self._next_full_scan
            if full:
                for folder in self.folders.values():
                    if folder.root is not None and folder.root not in self.watcher.observers:
                        self._watch(folder)
            labels = set(busy) | {label for label, f in self.folders.items()
                                  if f.retry_at is not None and f.retry_at <= now}
            if full:  # every folder; an Astria pack only when its poll interval is up
                labels |= {label for label, f in self.folders.items() if f.root is not None}
            # Folders due for changes alone scan just the changed paths; one due for a retry or the rescan, all.
            changed = {str(root): paths | due[root] for root, paths in self.changes.quiet.items()
                       if not full and (f := self.folders.get(str(root))) is not None and f.retry_at is None}
            if full or labels:
                await self._sync(labels, busy, full=full, changed=changed)
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
        now = self._last_tick = time.monotonic()
        if self.watchdog_s and now - self._last_ping >= self.watchdog_s / 2:
            notify("WATCHDOG=1")
            self._last_ping = now

    async def _sync(self, labels: set[str] | None, busy: dict[str, set[str]], *, full: bool,
                    changed: dict[str, set[str]] | None = None) -> None:
        """Run the pipeline for ``labels`` (None: every mapping) as a task, staying responsive."""
        targets = [f for label, f in self.folders.items() if labels is None or label in labels]
        for folder in targets:
            folder.retry_at = None
        if full:
            self._next_full_scan = time.monotonic() + self.config.daemon.rescan_interval_s * random.uniform(0.9, 1.1)
        started = time.monotonic()
        task = asyncio.create_task(self.app.syncer.sync(SyncOptions(wait=False), only=labels, busy=busy,
                                                            changed=changed))
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
        except StateUnavailable as exc:
            self._state_unusable(exc)
            for folder in targets:
                self._retry(folder)
            return
        except PacksyncError as exc:
            if not self.ready and exc.exit_code == ExitCode.USAGE:
                raise  # a config error at start: say so and exit, rather than retry forever
            self.sync_error = str(exc)
            self.log.error("sync failed; will retry", error=str(exc))
            for folder in targets:
                self._retry(folder)
            return
        self._state_usable()
        self.sync_error = self.paused_reason = None
        if full:
            self._last_full_scan = time.time()
        if self.web:
            self.web.metrics.synced([m.config.pack_label for m in report.mappings], time.monotonic() - started,
                                    [m.config.pack_label for m in report.mappings if m.safety])
        self._after(report)

    def _state_unusable(self, exc: StateUnavailable) -> None:
        """The state is locked or its disk full: say so once, and keep trying (nothing is lost meanwhile)."""
        if self.state_trouble != str(exc):
            self.log.error(f"{exc} Waiting for it; changes are synced once it is usable again")
        self.state_trouble = str(exc)

    def _state_usable(self) -> None:
        if self.state_trouble:
            self.log.info("the state database is usable again")
        self.state_trouble = None

    def _save_daemon(self, **fields: object) -> bool:
        """Publish to the state for `packsync status`: best effort, never a reason to stop."""
        try:
            self.state.mappings.save_daemon(**fields)
        except StateUnavailable as exc:
            self._state_unusable(exc)
            return False
        return True

    @property
    def last_error(self) -> str | None:
        """What is wrong now, for `packsync status` and systemd; None once everything recovered."""
        folder_error = next((f.error for f in self.folders.values() if f.error), None)
        return self.paused_reason or self.state_trouble or self.sync_error or folder_error

    def _pause(self, folders: list[Folder], reason: str) -> None:
        self.paused_until = time.monotonic() + AUTH_RETRY_S
        self.paused_reason = reason
        self.log.error(f"{reason}; syncing paused, retrying in {AUTH_RETRY_S / 60:.0f} min or on SIGHUP")
        for folder in folders:
            folder.retry_at = 0.0
        self._publish(state="paused")

    def _retry(self, folder: Folder) -> None:
        folder.retry_at = time.monotonic() + folder.retry.next_delay()

    def _folder_of(self, label: str) -> Folder | None:
        """The daemon's folder a mapping belongs to: its own, or the folder whose subfolders are packs."""
        return self.folders.get(group_of(self.config, label))

    def _after(self, report: SyncReport) -> None:
        added = 0
        errors: dict[str, str | None] = {}   # per daemon folder: the first error of its mappings
        failing: dict[str, bool] = {}        # ...and whether one failed otherwise than by a safety stop
        for mapping in report.mappings:
            folder = self._folder_of(mapping.label)
            if folder is None:
                continue
            label, log = folder.mapping.label, self.log.bind(path=mapping.label)
            errors[label] = errors.get(label) or mapping.last_error
            failing[label] = failing.get(label, False) or bool(mapping.last_error and not mapping.safety)
            if mapping.safety:
                # Not retried: nothing changes until the folder does (or a person says --force).
                log.error("safety stop: deletes withheld", reason=mapping.safety)
            outcome = mapping.outcome
            added += outcome.added if outcome else 0
            if outcome and (outcome.added or outcome.deleted or outcome.failures):
                log.info("synced", added=outcome.added, deleted=outcome.deleted, failed=len(outcome.failures))
        for label, error in errors.items():
            folder = self.folders[label]
            folder.error = error
            if failing[label]:
                self._retry(folder)
            elif not error:
                folder.retry.reset()
            if folder.root is None and folder.retry_at is None:  # an Astria pack: read again in a while
                folder.retry_at = time.monotonic() + self.config.astria.poll_interval_s
        if added:
            self.metadata_wake.set()
        self._publish()

    def _publish(self, state: str | None = None) -> None:
        """Tell `packsync status` and systemd what the daemon is doing."""
        state = state or ("paused" if self.paused_until else ("running" if self.ready else "starting"))
        if self.web:
            self.web.metrics.queued.set(len(self.changes))
        news = (state, len(self.changes), self.last_error, self._last_full_scan, len(self.folders))
        if news == self._published:  # the idle loop calls this often: write only what changed
            return
        if not self._save_daemon(state=state, queue=len(self.changes), last_error=self.last_error,
                                 last_full_scan=self._last_full_scan):
            return
        self._published = news
        notify(f"STATUS={state}: {len(self.folders)} folders watched, {len(self.changes)} changes queued"
               + (f", last error: {self.last_error}" if self.last_error else ""))

    # -- what the web surface sees and asks (web/health.py's Live) ---------------------------------

    @property
    def _observer(self) -> Metrics | None:
        return self.web.metrics if self.web else None

    def live(self) -> LiveState:
        now = time.monotonic()
        return LiveState(
            state="paused" if self.paused_until else "running" if self.ready else "starting",
            queue=len(self.changes), since_tick_s=now - self._last_tick, paused_reason=self.paused_reason,
            state_trouble=self.state_trouble, last_full_scan=self._last_full_scan,
            retrying={label: f.error for label, f in self.folders.items() if f.error and f.retry_at is not None})

    def sync_now(self, label: str | None) -> None:
        """Sync one mapping (None: all) as soon as the loop comes round; a pause for a refused key ends too."""
        chosen = self._folder_of(label) if label is not None else None
        for folder in self.folders.values():
            if label is None or folder is chosen:
                folder.retry_at = 0.0
        self.paused_until = None
        self.wake.set()

    def retry_failed(self) -> None:
        """Judge the skipped files again (someone fixed them) and retry every mapping now."""
        for label, folder in self.folders.items():
            try:
                if folder.root is not None:
                    self.state.files.forget_verdicts(label)
            except StateUnavailable as exc:
                self._state_unusable(exc)
            folder.retry.reset()
        self.sync_now(None)

    # -- metadata ----------------------------------------------------------------------------------

    async def _metadata_loop(self) -> None:
        """Poll packs whose images still wait for AI metadata: one GET per pack per round, backing off."""
        rounds = Retrying(POLL_BACKOFF)
        while True:
            try:
                pending = self.state.metadata.pending(self.app.syncer.mapped_pack_ids())
            except StateUnavailable as exc:
                self._state_unusable(exc)
                pending = None
            if pending == {}:  # nothing waits: sleep until a sync adds images
                await self.metadata_wake.wait()
                self.metadata_wake.clear()
                rounds.reset()
                continue
            try:
                await asyncio.wait_for(self.metadata_wake.wait(), timeout=rounds.next_delay())
                self.metadata_wake.clear()
                rounds.reset()
            except TimeoutError:
                pass
            if self.paused_until or not pending:
                continue
            try:
                await self.app.syncer.write_sidecars(await self.app.metadata.poll(list(pending)))
            except AuthError as exc:
                self.log.warning("metadata poll refused", error=str(exc))
            except StateUnavailable as exc:
                self._state_unusable(exc)

    # -- reload ------------------------------------------------------------------------------------

    async def _close_later(self, transport: Transport) -> None:
        """Close a replaced transport once a metadata poll still using it is done with it."""
        try:
            await transport.retire()
        finally:  # a daemon stopping meanwhile closes it now
            await transport.aclose()

    async def _reload(self) -> None:
        """SIGHUP: read the config (and token) again; start and stop watchers for what changed."""
        self.reload_requested = False
        try:
            config = load_config(self.config_path)
            token = read_token(config.genviral)
            if any(mapping.astria_pack for mapping in config.mappings):
                read_astria_token(config)  # a missing Astria key is found here, not half-way through the reload
        except PacksyncError as exc:
            self.log.error("config reload failed; keeping the running config", error=str(exc))
            return
        register_secret(token)
        old, new = self.folders, {m.label: m for m in config.mappings}
        for label in old.keys() - new.keys():
            if (root := old[label].root) is not None:
                self.watcher.unwatch(root)
                self.changes.forget(root)
        api = self.app.api
        if config.genviral != self.config.genviral or token != self.token:
            # A metadata poll may still be using the old client: its transport closes once that round is over.
            self._retiring.add(asyncio.create_task(self._close_later(api.transport)))
            api = client_for(config, token, transport_for(config, self._observer))
        self.config, self.token = config, token
        self.app.close_sources()
        self.app = App.wire(config, self.state, api)
        self.changes.debounce_s = config.daemon.debounce_s
        self.folders = {}
        for label, mapping in new.items():
            kept = old.get(label)
            self.folders[label] = kept if kept and kept.mapping == mapping else Folder(mapping, retry_at=0.0)
            if self.folders[label] is not kept:
                self._watch(self.folders[label])
            elif kept.root is None:
                kept.retry_at = 0.0  # SIGHUP reads every Astria pack again
        self.paused_until = None
        if self.web:
            self.web.reconfigure(config)
        self.log.info("config reloaded", folders=len(new), added=len(new.keys() - old.keys()),
                      removed=len(old.keys() - new.keys()))


def run_daemon(config_path: Path, polling: bool = False) -> ExitCode:
    """``packsync daemon``: hold the state lock and run until SIGTERM/SIGINT."""
    config = load_config(config_path)
    config.require_mappings()
    token = config.token()
    register_secret(token)
    read_password(config)  # a missing page password is a config error at start, not a surprise later
    _raise_file_limit()
    with StateLock(config.state_path):
        return asyncio.run(Daemon(config_path, config, token, polling=polling).run())


def _raise_file_limit() -> None:
    """Take the hard limit of open files as the soft one (systemd's soft default is 1,024): watches, the
    state and the page's connections all hold descriptors, and a flood of idle connections must not
    leave none for a sync."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
