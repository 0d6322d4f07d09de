"""One round of the daemon: the schedule's ``Round`` run through the same pipeline as ``packsync run``.

The sync runs as a task while the loop stays responsive (the watchdog pinged, a long first scan's
start extended, a stop obeyed within ``stop_grace_s``). An Astria pack's mapping is synced in a task of
its own, beside the loop (``remote``): a remote that answers slowly or not at all holds up its own
mapping only, never the folders' rounds (each request ends by its deadline; meanwhile the schedule
keeps the mapping out of other rounds, and the page names it once it has been at it for
``Timing.stuck_after_s``). A mapping that shares its pack with a folder stays in the folders' rounds:
two syncs never race over one pack. Its outcome goes back to the schedule: a
failing folder is retried with backoff, a refused key pauses syncing, a state that cannot be used
now is waited out; a state that can never be used (corrupt, not writable) ends the daemon, as it
ends a start. What went well is logged per mapping, and the metadata loop is woken for new images.
Every outcome is also handed to the notifications (``alerts.py``), which tell a person what needs one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from packsync.daemon.alerts import Notifications
from packsync.daemon.schedule import Folder, Round, Schedule
from packsync.daemon.status import Status
from packsync.daemon.systemd import Systemd
from packsync.daemon.timing import Timing
from packsync.engine.sync import MappingReport, SyncOptions, SyncReport
from packsync.errors import AuthError, ExitCode, PacksyncError, StateError, StateUnavailable
from packsync.logs import get_logger

if TYPE_CHECKING:
    from packsync.app import App


class Rounds:
    def __init__(self, schedule: Schedule, status: Status, systemd: Systemd, timing: Timing,
                 stopping: asyncio.Event, added: Callable[[], None], notifications: Notifications) -> None:
        self.schedule = schedule
        self.status = status
        self.systemd = systemd
        self.timing = timing
        self.stopping = stopping
        self.added = added  # told when a sync added images (they wait for metadata)
        self.notifications = notifications  # told each outcome: a person hears what needs one (``alerts.py``)
        self.tick_s = timing.tick(systemd.watchdog_s)
        self.log = get_logger()
        self.remote: dict[str, asyncio.Task[None]] = {}  # an Astria mapping's sync under way, by label
        self.waiting: set[str] = set()  # the mappings whose pack another site was syncing at their last try

    async def run(self, app: App, due: Round) -> None:
        """Run ``due``: its own mappings' remotes (Astria packs) each in a task of its own, the rest here.
        Every error a sync may end in is handled, but a state that can never be used."""
        self.reap()
        for label in self._apart(due):
            due = dataclasses.replace(due, labels=(due.labels or frozenset(self.schedule.folders)) - {label})
            apart = Round(frozenset({label}))
            self.remote[label] = task = asyncio.create_task(self._sync(app, apart, self._begin(apart), apart=True))
            task.add_done_callback(lambda _task: self.status.wake.set())  # its outcome is the loop's to reap
        if due.labels is None or due.labels:
            await self._sync(app, due, self._begin(due))
        elif due.full:
            self.schedule.started(due, time.monotonic())

    def _begin(self, due: Round) -> list[Folder]:
        """``due``'s folders, taken off the schedule until their sync ends (``_sync``)."""
        now = time.monotonic()
        targets = self.schedule.started(due, now)
        self.schedule.in_flight.update((folder.label, now) for folder in targets)
        return targets

    def _apart(self, due: Round) -> list[str]:
        """The mappings of ``due`` synced apart: Astria packs, each sharing its pack with no folder (none of a
        sync asked for: it is one sync, run as asked, once none of its mappings syncs apart — ``Schedule``)."""
        if due.asked is not None:
            return []
        folders = self.schedule.folders
        labels = due.labels if due.labels is not None else frozenset(folders)
        packs = {(f.mapping.pack, f.mapping.pack_id) for f in folders.values() if f.root is not None}
        return [label for label in sorted(labels) if (folder := folders.get(label)) is not None
                and folder.root is None and (folder.mapping.pack, folder.mapping.pack_id) not in packs]

    def reap(self) -> None:
        """Forget the remote syncs that ended; one that ended in a state that can never be used ends the daemon."""
        for label, task in list(self.remote.items()):
            if task.done():
                del self.remote[label]
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error

    async def abandon(self) -> None:
        """A stop: the remote syncs under way are abandoned (the next start resumes them)."""
        for task in self.remote.values():
            task.cancel()
        await asyncio.gather(*self.remote.values(), return_exceptions=True)
        self.remote.clear()

    async def _sync(self, app: App, due: Round, targets: list[Folder], *, apart: bool = False) -> None:
        """Sync ``due``'s mappings (``targets``, begun) and hand the outcome to the schedule; ``apart``: beside
        the loop, which alone comes round for the watchdog (a hung loop must not look alive)."""
        started = time.monotonic()
        # (a pack another site syncs now is left for a moment later: the other folders do not wait for it)
        options = msgspec.structs.replace(due.asked.options if due.asked else SyncOptions(wait=False),
                                          wait_turn=False)
        task = asyncio.create_task(app.syncer.sync(options, only=due.labels, busy=due.busy, changed=due.changed))
        try:
            try:
                if not await self._finished(task, apart):
                    return
            except asyncio.CancelledError:  # abandoned (``abandon``): the sync under it too
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            try:
                report = task.result()
            except PacksyncError as exc:
                self._failed(targets, exc)
                return
        finally:
            for folder in targets:
                self.schedule.in_flight.pop(folder.label, None)
            if due.asked is not None and not due.asked.reply.done():  # (abandoned: the daemon is stopping)
                _answer(due.asked.reply, task)
        self.status.state_usable()
        self.status.sync_error = self.schedule.paused_reason = None
        if due.full:
            self.status.last_full_scan = time.time()
        if self.status.metrics:
            self.status.metrics.synced([m.config.pack_label for m in report.mappings], time.monotonic() - started,
                                       [m.config.pack_label for m in report.mappings if m.safety])
        self._after(report)

    async def _finished(self, task: asyncio.Task[SyncReport], apart: bool) -> bool:
        """Wait for ``task``, coming round every tick; False when a stop made us abandon it."""
        while not task.done():
            await asyncio.wait({task}, timeout=self.tick_s)
            if not apart:
                self.status.came_round(time.monotonic())
                if not self.status.ready:
                    self.systemd.extend_timeout(self.tick_s * 3)
            if self.stopping.is_set() and not task.done():
                try:
                    await asyncio.wait_for(task, timeout=self.timing.stop_grace_s)
                except (TimeoutError, asyncio.CancelledError):
                    self.log.info("abandoned the sync in flight; the next start resumes it")
                    return False
        return True

    def _failed(self, targets: list[Folder], exc: PacksyncError) -> None:
        """A round that failed as a whole: paused for a refused key, else retried with backoff."""
        now = time.monotonic()
        if isinstance(exc, AuthError):
            self.notifications.refused(str(exc))
            self.schedule.pause(targets, str(exc), now)
            self.log.error(f"{exc}; syncing paused, retrying in {self.timing.auth_pause_s / 60:.0f} min or on SIGHUP")
            self.status.publish()
            return
        if isinstance(exc, StateUnavailable):
            self.status.state_unusable(exc)
        elif isinstance(exc, StateError) or (not self.status.ready and exc.exit_code == ExitCode.USAGE):
            raise exc  # a state that never passes, or a config error at start: say so and exit
        else:
            self.status.sync_error = str(exc)
            self.log.error("sync failed; will retry", error=str(exc))
        self.notifications.failed([folder.label for folder in targets], str(exc), now)
        for folder in targets:
            self.schedule.retry(folder, now)

    def _after(self, report: SyncReport) -> None:
        """Each folder's outcome (the first error of its mappings) back to the schedule, and logged."""
        added = 0
        errors: dict[str, str | None] = {}   # per daemon folder: the first error of its mappings
        failing: dict[str, bool] = {}        # ...and whether one failed otherwise than by a safety stop
        for mapping in report.mappings:
            folder = self.schedule.folder_of(mapping.label)
            if folder is None:
                continue
            errors[folder.label] = errors.get(folder.label) or mapping.last_error
            failing[folder.label] = failing.get(folder.label, False) or bool(mapping.last_error and not mapping.safety)
            added += self._logged(mapping)
        now = time.monotonic()
        for label, error in errors.items():
            self.schedule.synced(self.schedule.folders[label], error, failing[label], now)
        for label, why in report.waiting.items():
            if (folder := self.schedule.folder_of(label)) is not None:
                self.schedule.wait_turn(folder, now)
                if label not in self.waiting:  # (said once a wait, not at every try)
                    self.log.info("waiting for another site's sync of the pack", path=label, why=why)
        self.waiting = set(report.waiting) | (self.waiting - {m.label for m in report.mappings})
        self.notifications.synced(report.mappings, {m.label: f.label for m in report.mappings
                                                    if (f := self.schedule.folder_of(m.label)) is not None}, now)
        if added:
            self.added()
        self.status.publish()

    def _logged(self, mapping: MappingReport) -> int:
        """Log how one mapping went; the images it added."""
        log = self.log.bind(path=mapping.label)
        if mapping.safety:
            # Not retried: nothing changes until the folder does (or a person says --force).
            log.error("safety stop: deletes withheld", reason=mapping.safety)
        outcome = mapping.outcome
        if outcome and (outcome.added or outcome.deleted or outcome.failures or outcome.failed_deletes):
            log.info("synced", added=outcome.added, deleted=outcome.deleted, failed=len(outcome.failures),
                     deletes_failed=len(outcome.failed_deletes))
        return outcome.added if outcome else 0


def _answer(reply: asyncio.Future[SyncReport], task: asyncio.Task[SyncReport]) -> None:
    """Hand a sync's end to whoever asked for it: its report, its error, or that the daemon stopped first."""
    if not task.done() or task.cancelled():
        reply.set_exception(PacksyncError("the daemon stopped before the sync ended; the next start resumes it"))
    elif (error := task.exception()) is not None:
        reply.set_exception(error)
    else:
        reply.set_result(task.result())
