"""The daemon's metadata loop: AI metadata polled in the background, beside the syncs, and supervised.

Packs whose images still wait for their metadata are read once per round (one GET per pack), rounds
backing off while nothing arrives; a sync that added images wakes the loop at once, and a pause for a
refused key holds it. Each round is a run of its own for the transport: its retry budget and breakers
are the round's, and a sync starting meanwhile (a run of its own too) leaves them alone. The loop runs
under ``supervised``: an unexpected error is logged and the loop restarted, backing off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from packsync.daemon.schedule import Schedule
from packsync.daemon.status import Status
from packsync.daemon.timing import Timing
from packsync.errors import AuthError, StateUnavailable
from packsync.logs import get_logger
from packsync.remote.retry import Backoff, Retrying

if TYPE_CHECKING:
    from packsync.app import App


async def supervised(name: str, loop: Callable[[], Awaitable[None]], restart: Backoff) -> None:
    """Run a background loop for ever: an unexpected error is logged and the loop restarted, backing off."""
    restarts = Retrying(restart)
    log = get_logger()
    while True:
        started = time.monotonic()
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a supervisor: whatever it was, log it and go on
            if time.monotonic() - started > restart.cap_s:
                restarts.reset()
            delay = restarts.next_delay()
            log.error(f"{name} failed; restarting it", error=f"{type(exc).__name__}: {exc}",
                      retry_in_s=round(delay, 1), exc_info=exc)
            await asyncio.sleep(delay)


class MetadataLoop:
    def __init__(self, app: Callable[[], App], schedule: Schedule, status: Status, timing: Timing) -> None:
        self.app = app  # the current one: a reload replaces it
        self.schedule = schedule
        self.status = status
        self.timing = timing
        self.wake = asyncio.Event()  # set when a sync added images
        self.log = get_logger()

    async def run(self) -> None:
        await supervised("metadata polling", self._loop, self.timing.loop_restart)

    async def _loop(self) -> None:
        rounds = Retrying(self.timing.metadata_poll)
        while True:
            pending = self._pending()
            if pending == {}:  # nothing waits: sleep until a sync adds images
                await self.wake.wait()
                self.wake.clear()
                rounds.reset()
                continue
            try:
                # (asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that comes as the
                # wait ends, and the loop then slept on ``wake`` for good, holding up the daemon's stop)
                async with asyncio.timeout(rounds.next_delay()):
                    await self.wake.wait()
                self.wake.clear()
                rounds.reset()
            except TimeoutError:
                pass
            if pending and not self.schedule.paused:
                await self._round(list(pending))

    def _pending(self) -> dict[str, int] | None:
        """The packs whose images wait for metadata (None: the state cannot be read now)."""
        app = self.app()
        try:
            return app.state.metadata.pending(app.syncer.mapped_pack_ids())
        except StateUnavailable as exc:
            self.status.state_unusable(exc)
            return None

    async def _round(self, pack_ids: list[str]) -> None:
        app = self.app()
        app.api.start_run()
        try:
            await app.syncer.metadata_round(pack_ids)
        except AuthError as exc:
            self.log.warning("metadata poll refused", error=str(exc))
        except StateUnavailable as exc:
            self.status.state_unusable(exc)
