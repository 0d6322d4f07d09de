"""One writer per pack in a shared state: the leases a sync holds while it writes, kept alive, and checked.

``Leases`` is the one manager of a process's leases (one per state). A sync holds the keys of what it will
write (``pack_key``, ``name_key`` for a pack it creates, ``meta_key`` for the metadata poller) in
``async with leases.hold(keys)``; while held, a background task renews them every third of the lease
time, and ``check(key)`` — called by the executor before every pack mutation — raises ``LeaseLost`` once
a renewal failed or the lease's local deadline passed. That deadline is this machine's MONOTONIC clock
read before the statement that took or renewed the lease was sent, plus the lease time, minus a margin:
it passes before the database's lease can run out, so a process paused (SIGSTOP, a laptop's lid) or cut
off from the database past its lease stops writing to the pack before another site may start. ``fence()``
is what a write transaction runs right after its BEGIN (``held()`` is what it compares), for the writes
``check`` could not stop: it raises ``LeaseLost``, and the transaction rolls back.

Two holds of one process on one key (two mappings into one pack) share its lease: taking it again would
give it a new epoch and fence the first. Keys are taken in sorted order, so two sites wanting the same
keys never each hold one while waiting for the other's.

A SQLite state has no leases (one packsync per state file, by its lock): ``Leases(None)`` grants every
hold and every check. The database calls are synchronous and short, made on the event loop's thread, the
one the unit of work is used from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packsync.errors import LeaseLost, StateError
from packsync.logs import get_logger

if TYPE_CHECKING:  # (the engine imports no database library: a state's own opener brings it)
    from packsync.state.leases import Holder, LeaseRepository


#: The sync writing in this task (and the tasks it starts): whose leases a write transaction is fenced by.
_WRITING: ContextVar[Turn | None] = ContextVar("packsync_turn", default=None)


def pack_key(pack_id: str) -> str:
    """The lease on a pack's images and name."""
    return f"pack:{pack_id}"


def name_key(pack_name: str) -> str:
    """The lease on creating a pack named ``pack_name`` (as configured; case does not tell two apart)."""
    return f"name:{pack_name.casefold()}"


def meta_key(pack_id: str) -> str:
    """The lease on polling a pack's metadata: one site polls it for all."""
    return f"meta:{pack_id}"


def describe(key: str) -> str:
    """What a lease's key guards, for a sentence ("pack 123", "the pack name 'brand'")."""
    kind, _, rest = key.partition(":")
    return {"pack": f"pack {rest}", "name": f"the pack name {rest!r}",
            "meta": f"the metadata of pack {rest}"}.get(kind, key)


@dataclass
class _Lease:
    epoch: int
    valid_until: float  # on the monotonic clock
    holds: int = 1  # the holds of this process sharing it
    lost: bool = False  # a renewal found it no longer ours


@dataclass(frozen=True)
class Hold:
    """What ``Leases.hold`` got: every key (``granted``), or none, and then who holds which (``busy``)."""

    busy: dict[str, Holder]

    @property
    def granted(self) -> bool:
        return not self.busy

    def waiting_for(self) -> str:
        """Whom a sync waits for, in a sentence ("waiting for site nas's sync of pack 12 (…)")."""
        return "; ".join(f"waiting for site {holder.site}'s sync of {describe(key)} "
                         f"(its hold runs out in {holder.seconds_left:.0f} s unless renewed)"
                         for key, holder in self.busy.items())


class Leases:
    """The leases of one process over one state (``repository`` None: a SQLite state, which needs none)."""

    def __init__(self, repository: LeaseRepository | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.repository = repository
        self._clock = clock
        self._held: dict[str, _Lease] = {}
        self._renewing: asyncio.Task[None] | None = None
        #: The last renewal could not reach the database (said once, until one can again).
        self.unreachable = False
        lease_s = repository.lease_s if repository is not None else 60.0
        #: How long a lease lasts unless renewed; how long before that this process stops trusting it
        #: (for a clock running at another rate, and the request in flight when ``check`` said yes).
        self.lease_s, self.margin_s = lease_s, lease_s / 10
        #: How often it is renewed, and how often a waiting hold asks again.
        self.renew_s, self.poll_s = lease_s / 3, min(1.0, lease_s / 10)

    @property
    def site(self) -> str:
        return self.repository.site if self.repository is not None else ""

    @asynccontextmanager
    async def hold(self, keys: Collection[str], *, wait: bool = False,
                   on_busy: Callable[[str, Holder], None] | None = None) -> AsyncIterator[Hold]:
        """Hold every key of ``keys`` inside the block, or none of them.

        A key another site holds makes the block run without any (``Hold.busy`` says who holds which) —
        or, with ``wait``, the hold asks again every ``poll_s`` until it is free (``on_busy`` is told
        once per key that it waits), keeping the keys it already has.
        """
        if self.repository is None:
            yield Hold({})
            return
        taken: list[str] = []
        try:
            ordered = sorted(set(keys))
            busy: dict[str, Holder] = {}
            for index, key in enumerate(ordered):
                holder = await self._take(key, wait, on_busy)
                if holder is not None:
                    busy = {key: holder, **self._busy_among(ordered[index + 1:])}
                    break
                taken.append(key)
                self._keep_renewing()  # already, for those kept while waiting for the next
            while busy and taken:
                self._let_go(taken.pop())
            yield Hold(busy)
        finally:
            while taken:
                self._let_go(taken.pop())

    def check(self, key: str) -> None:
        """Raise ``LeaseLost`` unless this process may still write what ``key`` guards (a held key)."""
        if self.repository is None:
            return
        lease = self._held.get(key)
        if lease is None:
            raise RuntimeError(f"no hold on {key}: a write outside `Leases.hold`")
        if lease.lost or self._clock() >= lease.valid_until:
            raise LeaseLost(self.site, describe(key))

    def held(self) -> dict[str, int]:
        """The keys this process holds and their epochs: what a write transaction's fence compares."""
        return {key: lease.epoch for key, lease in self._held.items()}

    def fence(self) -> None:
        """Raise ``LeaseLost`` unless every lease the writing sync holds (its ``Turn``: the one of the task
        writing, through a context variable) is still this site's at its epoch: what a write transaction
        runs right after its BEGIN (the unit's hook), so that it rolls back instead of committing a stale
        writer's rows. Another sync's lost lease stops that sync only; a write of no sync's (the daemon's
        heartbeat) is not fenced. The leases found lost stay lost (``check`` says so at once)."""
        turn = _WRITING.get()
        held = {key: self._held[key].epoch for key in turn.held() if key in self._held} if turn else {}
        if self.repository is None or not held:
            return
        stale = self.repository.unfenced(held)
        for key in stale:
            self._held[key].lost = True
        if stale:
            raise LeaseLost(self.site, describe(stale[0]))

    async def _take(self, key: str, wait: bool, on_busy: Callable[[str, Holder], None] | None) -> Holder | None:
        """Take ``key`` (None), or who holds it."""
        assert self.repository is not None
        told = False
        while True:
            # Asked again after every pause: another hold of this process may have taken it meanwhile.
            lease = self._held.get(key)
            if lease is not None:  # shared as it is: lost, it is lost to this hold too
                lease.holds += 1
                return None
            sent = self._clock()
            epoch = self.repository.acquire(key)
            if epoch is not None:
                self._held[key] = _Lease(epoch, sent + self.lease_s - self.margin_s)
                return None
            holder = self.repository.holder(key)
            if holder is None:
                continue  # it ran out between the two statements: take it now
            if not wait:
                return holder
            if on_busy is not None and not told:
                on_busy(key, holder)
                told = True
            await asyncio.sleep(self.poll_s)

    def _busy_among(self, keys: list[str]) -> dict[str, Holder]:
        """Who else holds any of ``keys`` (read only: nothing is taken)."""
        assert self.repository is not None
        holders = {key: self.repository.holder(key) for key in keys if key not in self._held}
        return {key: holder for key, holder in holders.items() if holder is not None and holder.site != self.site}

    def _let_go(self, key: str) -> None:
        lease = self._held[key]
        lease.holds -= 1
        if lease.holds:
            return
        del self._held[key]
        if not self._held and self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None
        assert self.repository is not None
        try:
            self.repository.release(key, lease.epoch)
        except StateError as exc:  # it runs out on its own
            get_logger().warning("lease: could not be released", key=key, error=str(exc))

    def _keep_renewing(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew_forever(), name="leases")

    async def _renew_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self.renew_s)
            self.renew()

    def renew(self) -> None:
        """Renew every lease held (what the background task does every ``renew_s``)."""
        assert self.repository is not None
        for key, lease in list(self._held.items()):
            if lease.lost:
                continue
            sent = self._clock()
            try:
                renewed = self.repository.renew(key, lease.epoch)
            except StateError as exc:
                # The database is out of reach: the local deadline runs on, and ``check`` stops the writes.
                if not self.unreachable:
                    get_logger().warning("lease: could not be renewed", key=key, error=str(exc))
                self.unreachable = True
                continue
            if self.unreachable:
                get_logger().info("lease: renewed again", key=key)
                self.unreachable = False
            if renewed:
                lease.valid_until = sent + self.lease_s - self.margin_s
            else:
                lease.lost = True
                get_logger().warning("lease: lost to another site", key=key, site=self.site)


class Turn:
    """The leases one sync holds, per mapping, kept in ``stack`` until the sync's pack writes are done: what
    its executor fences each mapping's writes with, and what the state's write transactions of the task
    that made it (and of the tasks it starts) are fenced by. Two syncs of one process (the daemon's
    folders, and an Astria pack's apart) each have their own."""

    def __init__(self, leases: Leases, stack: AsyncExitStack) -> None:
        self.leases, self.stack = leases, stack
        self.keys: dict[str, list[str]] = {}  # per mapping label
        _WRITING.set(self)

    def held(self) -> set[str]:
        """Every key this sync holds."""
        return {key for keys in self.keys.values() for key in keys}

    async def take(self, label: str, keys: Collection[str], *, wait: bool = False,
                   on_busy: Callable[[str, Holder], None] | None = None) -> str | None:
        """Hold ``keys`` for the mapping ``label`` until the sync ends: None once held, else whom it waits for."""
        hold = await self.stack.enter_async_context(self.leases.hold(keys, wait=wait, on_busy=on_busy))
        if not hold.granted:
            return hold.waiting_for()
        self.keys.setdefault(label, []).extend(keys)
        return None

    async def take_all(self, keys: Mapping[str, Collection[str]],
                       on_busy: Callable[[str, Holder], None] | None = None) -> None:
        """Hold every mapping's keys (by label) in one hold, waiting for those another site holds: in one order,
        so that two sites never each hold what the other waits for."""
        await self.stack.enter_async_context(self.leases.hold({key for each in keys.values() for key in each},
                                                              wait=True, on_busy=on_busy))
        self.keys = {label: list(each) for label, each in keys.items()}

    async def take_more(self, label: str, key: str) -> str | None:
        """Hold one more key for ``label`` mid-sync (the pack it resolved to): never waiting, since the sync
        holds others already (two sites each waiting for what the other holds would wait for ever)."""
        if self.leases.repository is None or key in self.keys.get(label, ()):
            return None
        return await self.take(label, [key])

    def fence(self, label: str) -> None:
        """Raise ``LeaseLost`` unless this site still holds what the mapping ``label`` writes to."""
        for key in self.keys.get(label, ()):
            self.leases.check(key)
