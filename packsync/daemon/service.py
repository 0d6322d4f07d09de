"""The daemon: a thin loop that decides *when* to run the same scan → plan → execute pipeline.

Watchdog events are hints, fed to the change aggregator (``aggregator.py``), which says when a
folder's changes have settled, which paths changed and which files are still being written. The
schedule (``schedule.py``) turns that, failed folders' retries and the periodic full rescan (the
truth that catches whatever the watcher missed) into rounds; ``rounds.py`` runs each one and hands
its outcome back. An observer that died is restarted and its folder rescanned.

Remote trouble never kills the daemon: a failing mapping is retried with backoff, and a refused key
pauses syncing (one clear error, a rare retry, or at once after SIGHUP). The metadata loop
(``metadata.py``) polls beside the syncs, supervised. SIGTERM and SIGINT finish or abandon the sync in
flight within seconds and exit 0; SIGHUP reloads the config. systemd hears READY=1, STATUS=,
WATCHDOG=1 (from this loop, so a hung loop is noticed) and STOPPING=1 (``systemd.py``); ``packsync
status`` and the page hear the same through ``status.py``; a person, through the notifications configured
(``alerts.py``). Every delay is the ``Timing``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from pathlib import Path

from packsync.app import App, client_for, transport_for
from packsync.config import Config, load_config, read_password, with_bandwidth_limit
from packsync.control import socket_path
from packsync.daemon.aggregator import Aggregator
from packsync.daemon.alerts import Notifications
from packsync.daemon.control import Served, bind
from packsync.daemon.metadata import MetadataLoop
from packsync.daemon.process import ThreadNames, on_signals, raise_file_limit, release_memory
from packsync.daemon.reload import Retiring, reread
from packsync.daemon.rounds import Rounds
from packsync.daemon.schedule import FIRST, Folder, Schedule
from packsync.daemon.status import Status
from packsync.daemon.systemd import Systemd
from packsync.daemon.timing import PRODUCT, Timing
from packsync.daemon.watcher import Watcher
from packsync.daemon.web import Web
from packsync.errors import ConfigError, ExitCode, LockedError, PacksyncError, StateError, StateUnavailable
from packsync.logs import get_logger, register_secret
from packsync.mappings import concrete
from packsync.remote.retry import Retrying
from packsync.sources.folder import filters_for
from packsync.state.lock import StateLock
from packsync.state.store import State


class Daemon:
    def __init__(self, config_path: Path, config: Config, token: str, lock: StateLock, *, polling: bool = False,
                 timing: Timing = PRODUCT, control: socket.socket | None = None,
                 bandwidth_limit: str | None = None) -> None:
        self.config_path = config_path
        self.bandwidth_limit = bandwidth_limit  # ``--bwlimit``: over the config's, this one and every reloaded one
        self.lock = lock  # held by the caller; taken again here if its file goes
        self.control_socket = control  # bound by the caller with the lock held (None: bound here)
        self.config = config
        self.token = token
        self.polling = polling
        self.timing = timing
        self.log = get_logger()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.reload_requested = False
        self.systemd = Systemd()
        self.tick_s = timing.tick(self.systemd.watchdog_s)
        self.changes = Aggregator(config.daemon.debounce_s, max_batch_wait_s=timing.max_batch_wait_s)
        self.schedule = Schedule(config, timing, self.changes)
        self.status = Status(self.schedule, self.systemd, self.wake, timing.stuck_after_s)
        self.metadata = MetadataLoop(lambda: self.app, self.schedule, self.status, timing)
        self.notifications = Notifications.open(config)  # its URLs checked now: a config error before it starts
        self.rounds = Rounds(self.schedule, self.status, self.systemd, timing, self.stopping, self.metadata.wake.set,
                             self.notifications)
        self.retiring = Retiring()
        self.web: Web | None = None
        self.thread_names = ThreadNames()
        #: Rounds ran since the loop last rested, a full one among them (True) or not (False); None: none ran.
        self.worked: bool | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        """Serve until ``stop()``; a state that can never be used ends it early, in its ``StateError``."""
        control = await self._serve_control()
        try:
            return await self._run()
        finally:
            await control.close()
            with contextlib.suppress(OSError):
                socket_path(self.config.state_path).unlink()

    async def _serve_control(self) -> Served:
        """The control socket (``daemon/control.py``), answering 503 until the state is open."""
        sock = self.control_socket or bind(self.config.state_path)
        try:
            return await Served.start(self, sock)
        except BaseException:
            sock.close()
            raise

    async def _run(self) -> ExitCode:
        state = await self._open_state()
        if state is None:
            return ExitCode.OK
        self.state = self.status.state = state
        # A stop the daemon before this one told of is not told again (one ``run`` met is not told at all).
        self.notifications.alerts.stopped.update(m.label for m in concrete(self.config, state)
                                           if (record := state.mappings.get(m.label)) and record.safety)
        try:
            self.web = await Web.start(self.config, self.status, self.timing.page_request_s) \
                if self.config.http.address else None
            self.status.metrics = self.web.metrics if self.web else None
            self.app = App.wire(self.config, state, client_for(self.config, self.token,
                                                               transport_for(self.config, self.status.metrics)))
            loop = asyncio.get_running_loop()

            def on_change(root: Path, path: Path, closed: bool) -> None:
                loop.call_soon_threadsafe(self._changed, root, path, closed)

            self.watcher = Watcher(on_change)
            await self._serve()
        finally:
            self.state.close()  # whatever ended the daemon
            self.log.info("daemon stopped")
        return ExitCode.OK

    async def _serve(self) -> None:
        self.started_at = time.time()
        self.status.save(pid=os.getpid(), started_at=self.started_at, state="starting", queue=0, last_error=None)
        metadata = asyncio.create_task(self.metadata.run())
        try:
            for folder in self.schedule.folders.values():
                self._watch(folder)
            self.systemd.status("first full scan and sync")
            await self.rounds.run(self.app, FIRST)
            self.worked = True
            if not self.stopping.is_set():
                self.status.ready = True
                self.systemd.ready()
                self.status.publish()
                self.log.info("daemon ready", folders=len(self.schedule.folders),
                              watchers=dict(sorted((str(k), v) for k, v in self.watcher.modes.items())))
            await self._loop()
        finally:
            self.systemd.stopping()
            metadata.cancel()
            await self.rounds.abandon()
            await self.notifications.close()
            self.schedule.refuse_asked(PacksyncError("the daemon stopped before it ran this sync; the next start "
                                                     "syncs everything anyway"))
            self.app.close_sources()
            # watchdog's threads are daemon threads: never let a slow one hold up the exit.
            stopper = threading.Thread(target=self.watcher.stop, name="watcher-stop", daemon=True)
            stopper.start()
            stopper.join(self.timing.watcher_stop_s)
            await asyncio.gather(metadata, return_exceptions=True)
            await self.retiring.close()
            await self.app.api.transport.aclose()
            if self.web:
                await self.web.close()
            # Best effort: a state that cannot be written now is said by the error that ends the daemon.
            with contextlib.suppress(StateError):
                self.status.save(pid=None, state="stopped", queue=len(self.changes))

    async def _open_state(self) -> State | None:
        """The state, once it can be opened: a locked state or a full disk at start is waited out too.
        None when a stop came first."""
        retrying = Retrying(self.timing.mapping_retry)
        while not self.stopping.is_set():
            try:
                state = State.for_config(self.config)
            except StateUnavailable as exc:
                self.status.state_unusable(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=retrying.next_delay())
                continue
            self.status.state_usable()
            return state
        return None

    def stop(self) -> None:
        """Finish (or, past ``stop_grace_s``, abandon) the sync in flight, and return from ``run``."""
        self.log.info("stopping")
        self.stopping.set()
        self.wake.set()

    def request_reload(self) -> None:
        self.reload_requested = True
        self.wake.set()

    def _watch(self, folder: Folder, polling: bool = False) -> None:
        if folder.root is None:
            return
        try:
            self.watcher.watch(folder.root, filters_for(folder.mapping),
                               polling=polling or self.polling or folder.mapping.polling)
        except OSError as exc:
            self.log.error("cannot watch folder; relying on rescans", path=str(folder.root), error=exc.strerror)

    def _changed(self, root: Path, path: Path, closed: bool) -> None:
        """A watcher saw ``path`` change (runs on the event loop, called from watchdog's threads)."""
        self.changes.changed(root, path, closed, time.monotonic())
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self.stopping.is_set():
            self.status.came_round(time.monotonic())
            self.rounds.reap()
            if self.state.replaced() is not None or not self.lock.intact():
                await self._start_anew()
                continue
            if self.reload_requested:
                await self._reload()
            self._restart_dead_watchers()
            now = time.monotonic()
            due = self.schedule.due(now)
            if due is None:
                self.status.publish()
                self.thread_names.update()
                if self.worked is not None:  # at rest from now on: what the rounds freed goes back
                    release_memory(collect=self.worked)
                    self.worked = None
                await self._sleep(self.schedule.next_deadline(now))
                continue
            if due.full:  # a watcher that could not start before may start now
                for folder in self.schedule.folders.values():
                    if folder.root is not None and folder.root not in self.watcher.watches:
                        self._watch(folder)
            await self.rounds.run(self.app, due)
            self.worked = bool(self.worked) or due.full

    async def _start_anew(self) -> None:
        """The state's file or its lock was deleted or replaced (``rm state.db*``, a file moved over it):
        nothing more is written to the old one (``State.check``). Lock the file there now (waiting while a
        ``run`` started meanwhile holds it), open the state there — a new one, where every folder's next
        sync adopts what its pack holds, by content, uploading nothing again — and sync every folder."""
        if self.state.replaced() == self.state.path:
            self.log.warning(f"the state database {self.config.state_path} was deleted or replaced while packsync "
                             "ran; starting a new one, adopting what the packs hold")
        else:
            self.log.warning(f"the lock file {self.lock.path} was deleted or replaced while packsync ran; "
                             "locking it again")
        await self.rounds.abandon()  # the Astria syncs beside the loop hold the old state, closed below: due again
        if not await self._relock():
            return
        state = await self._open_state()
        if state is None:
            return
        old, self.state = self.state, state
        self.status.state = state
        self.app.close_sources()
        self.app = App.wire(self.config, state, self.app.api)
        old.close()
        self.status.forget_published()
        self.status.save(pid=os.getpid(), started_at=self.started_at, state=self.status.mode,
                         queue=len(self.changes), last_error=None)
        self.schedule.sync_now(None)

    async def _relock(self) -> bool:
        """Take the state's lock again, waiting while another packsync holds it; False when a stop came first."""
        said = False
        retrying = Retrying(self.timing.mapping_retry)
        while not self.stopping.is_set():
            try:
                self.lock.renew()
                return True
            except LockedError as exc:
                if not said:
                    self.log.info("waiting for the other packsync to finish", error=str(exc))
                    said = True
            self.status.came_round(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=min(retrying.next_delay(), self.tick_s))
        return False

    def _restart_dead_watchers(self) -> None:
        for root in self.watcher.check():
            self.log.warning("folder watcher stopped; restarting it and rescanning", path=str(root))
            folder = self.schedule.folders[str(root)]
            self._watch(folder)
            folder.retry_at = 0.0
        for root in self.watcher.out_of_watches():  # said once by the watcher: polled, and rescanned
            folder = self.schedule.folders[str(root)]
            self._watch(folder, polling=True)
            folder.retry_at = 0.0

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=min(seconds, self.tick_s))
        self.wake.clear()

    async def _reload(self) -> None:
        """SIGHUP: read the config (and keys) again; start and stop watchers for what changed."""
        self.reload_requested = False
        try:
            config, token = reread(self.config_path)
            config = with_bandwidth_limit(config, self.bandwidth_limit)
        except PacksyncError as exc:
            self.log.error("config reload failed; keeping the running config", error=str(exc))
            return
        try:
            if config.notify != self.config.notify:
                self.notifications.reconfigure(config)
        except ConfigError as exc:
            self.log.error("config reload failed; keeping the running config", error=str(exc))
            return
        old = set(self.schedule.folders)
        fresh, gone = self.schedule.reconfigure(config)
        for root in gone:
            self.watcher.unwatch(root)
            self.changes.forget(root)
        api = self.app.api
        if config.genviral != self.config.genviral or token != self.token:
            # A metadata poll may still be using the old client: its transport closes once that round is over.
            self.retiring.add(api.transport)
            api = client_for(config, token, transport_for(config, self.status.metrics))
        self.config, self.token = config, token
        await self.rounds.abandon()  # the Astria syncs beside the loop hold the sources closed below: due again
        self.app.close_sources()
        self.app = App.wire(config, self.state, api)
        self.changes.debounce_s = config.daemon.debounce_s
        for folder in fresh:
            self._watch(folder)
        if self.web:
            self.web.reconfigure(config)
        self.log.info("config reloaded", folders=len(self.schedule.folders),
                      added=len(self.schedule.folders.keys() - old), removed=len(old - self.schedule.folders.keys()))


def run_daemon(config_path: Path, polling: bool = False, bandwidth_limit: str | None = None) -> ExitCode:
    """``packsync daemon``: hold the state lock and run until SIGTERM/SIGINT. ``bandwidth_limit``
    (``--bwlimit``) holds over the config's, through every reload."""
    config = with_bandwidth_limit(load_config(config_path), bandwidth_limit)
    config.require_mappings()
    token = config.token()
    register_secret(token)
    read_password(config)  # a missing page password is a config error at start, not a surprise later
    raise_file_limit()
    with StateLock(config.state_path) as lock:
        try:
            control = bind(config.state_path)
        except OSError as exc:
            raise StateError(f"cannot make the control socket {socket_path(config.state_path)}: "
                             f"{exc.strerror or exc}") from None
        return asyncio.run(on_signals(Daemon(config_path, config, token, lock, polling=polling, control=control,
                                             bandwidth_limit=bandwidth_limit)))
