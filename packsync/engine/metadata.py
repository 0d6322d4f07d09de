"""The metadata poller: copy the AI metadata of packsync's images from their packs into the state.

Genviral has no webhook: metadata is read by polling ``GET /packs/{id}``, which returns every image
of a pack at once. So a round is one GET per pack that still has pending images, whatever their
number, and rounds back off while nothing settles. Of that answer only the pending images are decoded
and compared (the state knows which: ``images.unsettled``). ``run`` waits with ``wait``; the daemon calls
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

    async def poll(self, pack_ids: Collection[str]) -> dict[str, set[str]]:
        """One round: one GET per pack, copying the metadata of packsync's images that still wait for it;
        per pack, the contents whose metadata changed (their sidecars, and nothing else, are written
        again). A round costs what waits: those images alone are read from the state and decoded from
        the answer, however many settled ones the pack holds beside them."""
        waiting = {pack_id: images for pack_id in pack_ids if (images := self.state.images.unsettled(pack_id))}
        reads = await asyncio.gather(*(self.api.pack_metadata(pack_id, [i.image_id for i in images])
                                       for pack_id, images in waiting.items()), return_exceptions=True)
        described: dict[str, set[str]] = {}
        for (pack_id, images), read in zip(waiting.items(), reads, strict=True):
            if isinstance(read, BaseException):
                if isinstance(read, AuthError) or not isinstance(read, ApiError):
                    raise read
                self.log.warning("metadata poll failed", pack_id=pack_id, error=str(read))
                continue
            updates = metadata_updates(images, read)
            self.state.metadata.update(pack_id, updates)
            described[pack_id] = {image.sha256 for image in images if image.image_id in updates}
        return described

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
