"""What the running daemon says about itself, and what the web surface may ask of it.

It tells ``packsync status`` (the daemon's record in the state), systemd (``STATUS=``) and the page
(``web/health.py``'s ``Live``: ``live()``, and the two requests the page makes, ``sync_now`` and
``retry_failed``) the same things: whether it is starting, running or paused, how many changes wait,
and what is wrong now — a refused key, a state database that cannot be used, a sync that failed as a
whole, a folder's error — each said once, not at every retry, and cleared once it recovered.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from packsync.daemon.schedule import Asked, Schedule
from packsync.daemon.systemd import Systemd
from packsync.daemon.timing import PRODUCT
from packsync.engine.sync import SyncOptions, SyncReport
from packsync.errors import StateUnavailable
from packsync.logs import get_logger
from packsync.mappings import hold, withheld
from packsync.web.health import LiveState

#: How often a daemon at rest tells the other sites of a shared state that it is alive.
ALIVE_EVERY_S = 300.0

if TYPE_CHECKING:
    from packsync.state.store import State
    from packsync.web.metrics import Metrics


class Status:
    def __init__(self, schedule: Schedule, systemd: Systemd, wake: asyncio.Event,
                 stuck_after_s: float = PRODUCT.stuck_after_s) -> None:
        self.schedule = schedule
        self.stuck_after_s = stuck_after_s  # a mapping syncing longer than this is named as stuck
        self.systemd = systemd
        self.wake = wake  # set to bring the loop round at once
        self.state: State | None = None  # once opened
        self.metrics: Metrics | None = None  # while the web surface is served
        self.ready = False
        self.sync_error: str | None = None
        self.state_trouble: StateUnavailable | None = None
        self.last_full_scan: float | None = None
        self.last_tick = time.monotonic()
        self._published: tuple[object, ...] = ()
        self._alive_at = -ALIVE_EVERY_S  # when the other sites of a shared state last heard from this one
        self.log = get_logger()

    @property
    def mode(self) -> str:
        return "paused" if self.schedule.paused else "running" if self.ready else "starting"

    @property
    def last_error(self) -> str | None:
        """What is wrong now, for `packsync status` and systemd; None once everything recovered."""
        folder_error = next((f.error for f in self.schedule.folders.values() if f.error), None)
        trouble = str(self.state_trouble) if self.state_trouble else None
        return self.schedule.paused_reason or trouble or self.sync_error or folder_error

    def came_round(self, now: float) -> None:
        """The loop came round (between rounds, or while one runs): the watchdog and the page hear of it."""
        self.last_tick = now
        self.systemd.ping(now)

    # -- the state database -----------------------------------------------------------------------

    def state_unusable(self, exc: StateUnavailable) -> None:
        """The state is locked or its disk full: say so once, and keep trying (nothing is lost meanwhile). A
        state replaced under the daemon is the loop's to start anew (and say), before its next round."""
        if exc.reason == "replaced":
            return
        if self.state_trouble is None or self.state_trouble.reason != exc.reason:
            self.log.error(f"{exc} Waiting for it; changes are synced once it is usable again")
        self.state_trouble = exc

    def state_usable(self) -> None:
        if self.state_trouble:
            self.log.info("the state database is usable again")
        self.state_trouble = None

    def save(self, **fields: object) -> bool:
        """Publish to the state for `packsync status`: best effort, never a reason to stop."""
        assert self.state is not None, "the state is not open yet"
        try:
            self.state.mappings.save_daemon(**fields)
        except StateUnavailable as exc:
            self.state_unusable(exc)
            return False
        return True

    def forget_published(self) -> None:
        """A new state knows nothing of the daemon yet: the next ``publish`` writes, changed or not."""
        self._published = ()

    def publish(self) -> None:
        """Tell `packsync status` and systemd what the daemon is doing, when that changed."""
        mode, queue = self.mode, len(self.schedule.changes)
        if self.metrics:
            self.metrics.queued.set(queue)
        news = (mode, queue, self.last_error, self.last_full_scan, len(self.schedule.folders))
        self._say_alive()
        if news == self._published:  # the idle loop calls this often: write only what changed
            return
        if not self.save(state=mode, queue=queue, last_error=self.last_error, last_full_scan=self.last_full_scan):
            return
        self._published = news
        self.systemd.status(f"{mode}: {len(self.schedule.folders)} folders watched, {queue} changes queued"
                            + (f", last error: {self.last_error}" if self.last_error else ""))

    def _say_alive(self) -> None:
        """In a shared state, tell the other sites this one is alive, every ``ALIVE_EVERY_S`` at most (a daemon
        at rest syncs nothing for an hour; its sites' ``status`` would call it silent)."""
        now = time.monotonic()
        if self.state is None or self.state.shared is None or now - self._alive_at < ALIVE_EVERY_S:
            return
        self._alive_at = now  # (tried once a while even when the database is away: each try may wait for it)
        try:
            self.state.heard_from()
        except StateUnavailable as exc:
            self.state_unusable(exc)

    # -- what the web surface sees and asks (web/health.py's Live) --------------------------------

    def live(self) -> LiveState:
        now = time.monotonic()
        return LiveState(
            state=self.mode, queue=len(self.schedule.changes), since_tick_s=now - self.last_tick,
            paused_reason=self.schedule.paused_reason,
            state_trouble=str(self.state_trouble) if self.state_trouble else None,
            last_full_scan=self.last_full_scan,
            retrying={label: f.error for label, f in self.schedule.folders.items()
                      if f.error and f.retry_at is not None},
            stuck={label: round(now - since) for label, since in self.schedule.in_flight.items()
                   if now - since > self.stuck_after_s and self.ready and self._apart(label)})

    def _apart(self, label: str) -> bool:
        """Whether ``label`` is a remote's mapping (an Astria pack), whose sync alone can be held by a remote
        answering slowly: a folder's sync is a run of requests each under its own deadline, however long a
        large first sync takes."""
        folder = self.schedule.folders.get(label)
        return folder is not None and folder.root is None

    def sync_now(self, label: str | None) -> None:
        """Sync one mapping (None: all) as soon as the loop comes round; a pause for a refused key ends too."""
        self.schedule.sync_now(label)
        self.wake.set()

    # -- what a person asks (the page's buttons, the commands over the control socket) ---------------

    def ask(self, labels: frozenset[str] | None, options: SyncOptions) -> asyncio.Future[SyncReport]:
        """A sync of ``labels`` (None: every mapping) with ``options``, as soon as the loop comes round (after
        the sync under way); its report, or its error, comes back in the future."""
        reply: asyncio.Future[SyncReport] = asyncio.get_running_loop().create_future()
        self.schedule.asked.append(Asked(labels, options, reply))
        self.wake.set()
        return reply

    def pause(self, label: str | None) -> list[str]:
        """Pause syncing ``label`` (None: every mapping) until ``resume``, across restarts; those paused."""
        return self._hold(label, True)

    def resume(self, label: str | None) -> list[str]:
        """Sync ``label`` (None: every mapping) again, at once, scanning it whole; those resumed."""
        labels = self._hold(label, False)
        for each in labels:
            self.sync_now(each)
        return labels

    def _hold(self, label: str | None, paused: bool) -> list[str]:
        assert self.state is not None, "the state is not open yet"
        labels = hold(self.schedule.config, self.state, [label] if label is not None else [], paused)
        self.log.info("paused" if paused else "resumed", mappings=labels)
        self.publish()
        return labels

    def allow_deletes(self, label: str) -> asyncio.Future[SyncReport] | None:
        """Approve, once, the deletes the safety stop of ``label`` withholds now: at most as many as it
        withholds (none deleted since is approved with them). None when it withholds none."""
        assert self.state is not None, "the state is not open yet"
        allow = withheld(self.schedule.config, self.state, label)
        if not allow:
            return None
        self.log.info("deletes allowed", deletes=allow)
        reply = self.ask(frozenset(allow), SyncOptions(wait=False, allow=dict(allow)))
        reply.add_done_callback(_heard)
        return reply

    def retry_failed(self) -> None:
        """Judge the skipped files again (someone fixed them) and retry every mapping now."""
        assert self.state is not None, "the state is not open yet"
        for label, folder in self.schedule.folders.items():
            try:
                if folder.root is not None:
                    self.state.files.forget_verdicts(label)
            except StateUnavailable as exc:
                self.state_unusable(exc)
            folder.retry.reset()
        self.sync_now(None)


def _heard(reply: asyncio.Future[SyncReport]) -> None:
    """A sync asked for from the page, whose outcome the page reads from the state: its error is logged
    by the round, never left unheard."""
    if not reply.cancelled():
        reply.exception()
