"""The metadata poller: read the AI metadata of packsync's images from their packs; what changed it hands
to the executor as ``RecordMetadata`` actions (it writes nothing itself).

Genviral has no webhook: metadata is read by polling ``GET /packs/{id}``, which returns every image
of a pack at once. So a round is one GET per pack that still has pending images, whatever their
number, and rounds back off while nothing settles. Of that answer only the pending images are decoded
and compared (the state knows which: ``images.unsettled``). ``run`` waits with ``wait``; the daemon calls
``poll`` from its own supervised loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING

import msgspec

from packsync.engine.actions import Action, RecordMetadata
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


#: Where a round's records go: the executor's ``record``.
Recorder = Callable[[Sequence[Action]], Awaitable[None]]


class MetadataRound(msgspec.Struct):
    """What one round found: the metadata to record (per pack), and per pack the contents it describes
    anew (their sidecars, and nothing else, are written again)."""

    records: list[RecordMetadata] = msgspec.field(default_factory=list)
    described: dict[str, set[str]] = msgspec.field(default_factory=dict)


class MetadataPoller:
    def __init__(self, api: GenviralClient, state: State, progress: ProgressObserver = QUIET) -> None:
        self.api = api
        self.state = state
        self.progress = progress
        self.log = get_logger()

    async def poll(self, pack_ids: Collection[str]) -> MetadataRound:
        """One round: one GET per pack, reading the metadata of packsync's images that still wait for it.
        Writes nothing: the round's ``records`` are actions for the executor. A round costs what waits:
        those images alone are read from the state and decoded from the answer, however many settled ones
        the pack holds beside them."""
        waiting = {pack_id: images for pack_id in pack_ids if (images := self.state.images.unsettled(pack_id))}
        reads = await asyncio.gather(*(self.api.pack_metadata(pack_id, [i.image_id for i in images])
                                       for pack_id, images in waiting.items()), return_exceptions=True)
        found = MetadataRound()
        for (pack_id, images), read in zip(waiting.items(), reads, strict=True):
            if isinstance(read, BaseException):
                if isinstance(read, AuthError) or not isinstance(read, ApiError):
                    raise read
                self.log.warning("metadata poll failed", pack_id=pack_id, error=str(read))
                continue
            if updates := metadata_updates(images, read):
                found.records.append(RecordMetadata("", pack_id, updates))
                found.described[pack_id] = {image.sha256 for image in images if image.image_id in updates}
        return found

    async def wait(self, pack_ids: list[str], timeout_s: float, record: Recorder,
                   backoff: Backoff = POLL_BACKOFF) -> int:
        """Poll until packsync's images in these packs settle or ``timeout_s`` passes, each round's records
        handed to ``record`` (the executor's); returns how many did not settle."""
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
            await record((await self.poll(list(pending))).records)
