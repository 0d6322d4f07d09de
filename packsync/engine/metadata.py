"""The metadata poller: copy the AI metadata of packsync's images from their packs into the state.

Genviral has no webhook: metadata is read by polling ``GET /packs/{id}``, which returns every image
of a pack at once. So a round is one GET per pack that still has pending images, whatever their
number, and rounds back off while nothing settles. ``run`` waits with ``wait``; the daemon calls
``poll`` from its own supervised loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from packsync.engine.planner import metadata_updates
from packsync.engine.progress import QUIET, ProgressObserver
from packsync.errors import ApiError, AuthError
from packsync.logs import get_logger
from packsync.remote.genviral import GenviralClient
from packsync.remote.retry import Backoff

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

#: Rounds start a second apart and back off to 30 s: enrichment takes seconds to minutes.
POLL_BACKOFF = Backoff(1.0, 30.0)


class MetadataPoller:
    def __init__(self, api: GenviralClient, state: State, progress: ProgressObserver = QUIET) -> None:
        self.api = api
        self.state = state
        self.progress = progress
        self.log = get_logger()

    async def poll(self, pack_ids: Collection[str]) -> None:
        """One round: one GET per pack, copying the metadata of packsync's images that changed."""
        packs = await asyncio.gather(*(self.api.get_pack(p) for p in pack_ids), return_exceptions=True)
        for pack_id, pack in zip(pack_ids, packs, strict=True):
            if isinstance(pack, BaseException):
                if isinstance(pack, AuthError) or not isinstance(pack, ApiError):
                    raise pack
                self.log.warning("metadata poll failed", pack_id=pack_id, error=str(pack))
                continue
            self.state.metadata.update(pack_id, metadata_updates(self.state.images.managed(pack_id, details=False),
                                                                 pack.images))

    async def wait(self, pack_ids: list[str], timeout_s: float, backoff: Backoff = POLL_BACKOFF) -> int:
        """Poll until packsync's images in these packs settle or ``timeout_s`` passes; returns how many did not."""
        deadline = time.monotonic() + timeout_s
        total = sum(map(self.state.images.count, pack_ids))
        self.progress.total("metadata", total)
        attempt = shown = 0
        while True:
            pending = self.state.metadata.pending(pack_ids)
            settled = total - sum(pending.values())
            self.progress.advance("metadata", settled - shown)
            shown = settled
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return sum(pending.values())
            attempt += 1
            await asyncio.sleep(min(backoff.delay(attempt), left))
            await self.poll(list(pending))
