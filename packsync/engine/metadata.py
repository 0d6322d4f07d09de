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
from packsync.errors import ApiError, AuthError
from packsync.logs import get_logger
from packsync.remote.genviral import GenviralClient
from packsync.remote.retry import Backoff
from packsync.views.progress import Progress

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State

#: Rounds start a second apart and back off to 30 s: enrichment takes seconds to minutes.
POLL_BACKOFF = Backoff(1.0, 30.0)


class MetadataPoller:
    def __init__(self, api: GenviralClient, state: State, progress: Progress | None = None) -> None:
        self.api = api
        self.state = state
        self.progress = progress or Progress(enabled=False)
        self.log = get_logger()

    async def poll(self, pack_ids: Collection[str]) -> dict[str, set[str]]:
        """One round: one GET per pack, copying the metadata of packsync's images that changed; per pack, the
        contents whose metadata changed (their sidecars, and nothing else, are written again)."""
        packs = await asyncio.gather(*(self.api.get_pack(p) for p in pack_ids), return_exceptions=True)
        described: dict[str, set[str]] = {}
        for pack_id, pack in zip(pack_ids, packs, strict=True):
            if isinstance(pack, BaseException):
                if isinstance(pack, AuthError) or not isinstance(pack, ApiError):
                    raise pack
                self.log.warning("metadata poll failed", pack_id=pack_id, error=str(pack))
                continue
            managed = self.state.images.managed(pack_id, details=False)
            updates = metadata_updates(managed, pack.images)
            self.state.metadata.update(pack_id, updates)
            described[pack_id] = {image.sha256 for image in managed if image.image_id in updates}
        return described

    async def wait(self, pack_ids: list[str], timeout_s: float, backoff: Backoff = POLL_BACKOFF) -> int:
        """Poll until packsync's images in these packs settle or ``timeout_s`` passes; returns how many did not."""
        deadline = time.monotonic() + timeout_s
        total = sum(map(self.state.images.count, pack_ids))
        self.progress.total("metadata", total)
        attempt = 0
        while True:
            pending = self.state.metadata.pending(pack_ids)
            settled = total - sum(pending.values())
            self.progress.advance("metadata", settled - self.progress.counts["metadata"])
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return sum(pending.values())
            attempt += 1
            await asyncio.sleep(min(backoff.delay(attempt), left))
            await self.poll(list(pending))
