"""Leases in a shared state: one site writes to a pack at a time, a lease runs out when not renewed, a
stale holder is fenced out (``packsync/state/leases.py``, ``packsync/engine/leases.py``).

Two sites are two shared states (two units of work, two connections) on one real PostgreSQL database
(``tests/postgres.py``).
Every time a lease's expiry is compared to is the database server's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import postgres
import pytest
from helpers import wait_until
from sqlalchemy import insert, select, text
from structlog.testing import capture_logs

from packsync.config import SharedState
from packsync.engine.leases import Hold, Leases, Turn, describe, meta_key, name_key, pack_key
from packsync.errors import LeaseLost, PacksyncError
from packsync.state.leases import LEASES, Holder, LeaseRepository, fence
from packsync.state.store import State
from packsync.state.tables import ActivityRow, table
from packsync.state.unit import UnitOfWork

pytestmark = pytest.mark.skipif(postgres.missing() is not None, reason=postgres.missing() or "")

ACTIVITY = table(ActivityRow)


def shared_unit(url: str, folder: Path, site: str) -> UnitOfWork:
    """The unit of work of site ``site``'s state shared at ``url`` (its own connection, its local files in
    ``folder``)."""
    folder.mkdir()
    return State(folder / "state.db", shared=SharedState(url, postgres.PASSWORD, site)).unit


@pytest.fixture
def units(server: postgres.PostgresServer, tmp_path: Path) -> Iterator[tuple[UnitOfWork, UnitOfWork]]:
    """Two sites' units of work (nas's, laptop's) on one fresh database."""
    url = server.database()
    first = shared_unit(url, tmp_path / "nas", "nas")
    second = shared_unit(url, tmp_path / "laptop", "laptop")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def sites(units: tuple[UnitOfWork, UnitOfWork], lease_s: float) -> tuple[LeaseRepository, LeaseRepository]:
    return LeaseRepository(units[0], "nas", lease_s), LeaseRepository(units[1], "laptop", lease_s)


async def until_async(condition: Callable[[], object], within: float = 15.0) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, "the condition never came true"
        await asyncio.sleep(0.05)


def database_now(unit: UnitOfWork) -> float:
    return float(unit.connection.execute(text("SELECT extract(epoch FROM clock_timestamp())::float8")).scalar_one())


def expires_at(unit: UnitOfWork, key: str) -> float:
    return float(unit.connection.execute(select(LEASES.c.expires_at).where(LEASES.c.key == key)).scalar_one())


# --- the repository: one statement each, the database's clock ---

def test_a_lease_is_one_sites_at_a_time(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas, laptop = sites(units, 60)
    assert nas.acquire("pack:1") == 1
    assert laptop.acquire("pack:1") is None, "another site's unexpired lease is not taken"
    holder = laptop.holder("pack:1")
    assert holder is not None and holder.site == "nas" and 55 < holder.seconds_left <= 60
    assert laptop.acquire("pack:2") == 1, "a lease guards its key only"
    assert nas.holder("pack:3") is None


def test_a_lease_expires_by_the_database_clock_and_the_taker_gets_a_new_epoch(
        units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas, laptop = sites(units, 1.5)
    assert nas.acquire("pack:1") == 1
    expiry = expires_at(units[0], "pack:1")
    assert laptop.acquire("pack:1") is None
    wait_until(lambda: laptop.acquire("pack:1") is not None, timeout=15, interval=0.05, what="the lease ran out")
    assert database_now(units[1]) >= expiry, "taken only once the database's clock passed its expiry"
    holder = nas.holder("pack:1")
    assert holder is not None and holder.site == "laptop"
    assert units[0].connection.execute(select(LEASES.c.epoch)).scalar_one() == 2, "a takeover is a new epoch"
    assert not nas.renew("pack:1", 1), "the old holder cannot renew what it lost"
    assert not nas.fence({"pack:1": 1}) and laptop.fence({"pack:1": 2})


def test_a_sites_own_lease_taken_again_fences_its_older_epoch(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas, _ = sites(units, 60)
    assert nas.acquire("pack:1") == 1
    assert nas.acquire("pack:1") == 2, "a zombie process of the same site is fenced out"
    assert not nas.fence({"pack:1": 1}) and nas.fence({"pack:1": 2})


def test_renewal_keeps_a_lease_past_its_first_expiry(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas, laptop = sites(units, 1.5)
    assert nas.acquire("pack:1") == 1
    first_expiry = expires_at(units[0], "pack:1")

    def renewed_past_first_expiry() -> bool:
        assert nas.renew("pack:1", 1), "renewed in time, it stays ours"
        return database_now(units[0]) > first_expiry + 0.5

    wait_until(renewed_past_first_expiry, timeout=15, interval=0.05, what="renewed past the first expiry")
    assert laptop.acquire("pack:1") is None
    assert nas.fence({"pack:1": 1})


def test_release_lets_another_site_take_it_at_once_and_only_the_holder_releases(
        units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas, laptop = sites(units, 60)
    assert nas.acquire("pack:1") == 1
    laptop.release("pack:1", 1)  # not laptop's: nothing happens
    assert laptop.acquire("pack:1") is None
    nas.release("pack:1", 1)
    assert nas.holder("pack:1") is None
    assert laptop.acquire("pack:1") == 2
    nas.release("pack:1", 1)  # an old epoch's release leaves the new holder alone
    holder = nas.holder("pack:1")
    assert holder is not None and holder.site == "laptop"


def test_fence_needs_every_lease_held(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas, laptop = sites(units, 60)
    assert nas.acquire("pack:1") == 1 and nas.acquire("name:brand") == 1
    assert nas.fence({}) and nas.fence({"pack:1": 1, "name:brand": 1})
    assert not nas.fence({"pack:1": 1, "name:brand": 1, "meta:1": 1}), "a key never taken is not held"
    assert not laptop.fence({"pack:1": 1}), "a lease is its holder's only"
    units[0].connection.execute(text("UPDATE leases SET expires_at = 0 WHERE key = 'pack:1'"))
    assert not nas.fence({"pack:1": 1}), "run out, even if no one took it yet: another site may at any moment"


def test_a_stale_holders_write_transaction_is_rolled_back(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    """What the unit does on PostgreSQL: BEGIN, fence, and roll back when the fence says no."""
    nas, laptop = sites(units, 60)
    assert nas.acquire("pack:1") == 1
    units[0].connection.execute(text("UPDATE leases SET expires_at = 0"))  # nas paused past its lease
    assert laptop.acquire("pack:1") == 2

    def write(unit: UnitOfWork, site: str, held: dict[str, int]) -> bool:
        connection = unit.connection
        connection.exec_driver_sql("BEGIN")
        connection.execute(insert(ACTIVITY).values(at=0.0, root=f"{site}:/brand", kind="added", name="x.png"))
        if fence(unit, site, held):
            connection.exec_driver_sql("COMMIT")
            return True
        connection.exec_driver_sql("ROLLBACK")
        return False

    assert not write(units[0], "nas", {"pack:1": 1})
    assert write(units[1], "laptop", {"pack:1": 2})
    assert [row[0] for row in units[1].connection.execute(select(ACTIVITY.c.root))] == ["laptop:/brand"]


# --- the manager: holds, sharing, renewal, the local deadline ---

def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())

def test_the_managers_fence_rolls_a_stale_write_back_and_marks_its_lease_lost(
        units: tuple[UnitOfWork, UnitOfWork]) -> None:
    """Wired as the unit's fence (run right after every write transaction's BEGIN), with a sync's turn."""
    nas_repo, laptop_repo = sites(units, 60)
    nas = Leases(nas_repo)
    unit = units[0]
    unit.fence = nas.fence

    def record(name: str) -> None:
        with unit.transaction():
            unit.run(insert(ACTIVITY).values(at=0.0, root="nas:/brand", kind="added", name=name))

    async def scenario() -> None:
        async with AsyncExitStack() as stack:  # (a sync's turn: its writes are fenced by its leases)
            await Turn(nas, stack).take("/brand", [pack_key("1"), pack_key("2")])
            record("kept.png")  # ours: committed
            units[1].connection.execute(text("UPDATE leases SET expires_at = 0 WHERE key = 'pack:2'"))
            assert laptop_repo.acquire("pack:2") == 2
            nas.check(pack_key("2"))  # no renewal has said so yet
            with pytest.raises(LeaseLost, match="hold on pack 2 ran out"):
                record("stale.png")
            assert _raises_lost(nas, pack_key("2")), "known lost from then on"
            nas.check(pack_key("1"))
        record("after.png")  # no hold, nothing to fence

    run(scenario)
    names = [row[0] for row in units[1].connection.execute(select(ACTIVITY.c.name).order_by(ACTIVITY.c.id))]
    assert names == ["kept.png", "after.png"]


def test_a_hold_takes_all_keys_or_none_and_says_who_holds_them(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas_repo, laptop_repo = sites(units, 60)
    nas, laptop = Leases(nas_repo), Leases(laptop_repo)

    async def scenario() -> None:
        async with nas.hold([pack_key("1")]) as got:
            assert got.granted and nas.held() == {"pack:1": 1}
            async with laptop.hold([pack_key("2"), pack_key("1"), meta_key("1")]) as busy:
                assert not busy.granted and laptop.held() == {}, "none of them, not even the free ones"
                assert set(busy.busy) == {"pack:1"} and busy.busy["pack:1"].site == "nas"
                assert "waiting for site nas's sync of pack 1" in busy.waiting_for()
            assert laptop_repo.holder("meta:1") is None and nas_repo.holder("pack:2") is None, \
                "keys after the busy one are not taken"
        assert nas.held() == {} and nas_repo.holder("pack:1") is None, "released when the block ends"
        async with laptop.hold([pack_key("1")]) as got:
            assert got.granted and laptop.held() == {"pack:1": 2}

    run(scenario)


def test_two_holds_of_one_process_share_a_lease(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas_repo, laptop_repo = sites(units, 60)
    nas = Leases(nas_repo)

    async def scenario() -> None:
        async with nas.hold([pack_key("1")]) as first:
            async with nas.hold([pack_key("1"), name_key("Brand")]) as second:
                assert first.granted and second.granted
                assert nas.held() == {"pack:1": 1, "name:brand": 1}, "not taken again: a new epoch fences us"
                nas.check(pack_key("1"))
            assert nas.held() == {"pack:1": 1}, "the first hold keeps it"
            nas.check(pack_key("1"))
            assert laptop_repo.acquire("pack:1") is None
            assert laptop_repo.acquire("name:brand") == 2, "the second's own key went with it"
        assert laptop_repo.acquire("pack:1") == 2

    run(scenario)


def test_a_waiting_hold_gets_the_lease_once_released(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas_repo, laptop_repo = sites(units, 60)
    nas, laptop = Leases(nas_repo), Leases(laptop_repo)
    laptop.poll_s = 0.05
    told: list[tuple[str, Holder]] = []

    async def scenario() -> None:
        released = asyncio.Event()

        async def nas_sync() -> None:
            async with nas.hold([pack_key("1")]):
                await until_async(lambda: told)
                released.set()

        async def laptop_sync() -> Hold:
            async with laptop.hold([pack_key("1")], wait=True,
                                   on_busy=lambda key, holder: told.append((key, holder))) as got:
                assert released.is_set(), "not before the holder let go"
                assert laptop.held() == {"pack:1": 2}
                return got

        results = await asyncio.gather(nas_sync(), laptop_sync())
        assert results[1].granted
        assert [(key, holder.site) for key, holder in told] == [("pack:1", "nas")], "told once whom it waits for"

    run(scenario)


def test_keys_are_taken_in_sorted_order(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    """Two sites wanting {A, B} never each hold one: the second finds A busy before it takes B."""
    nas_repo, laptop_repo = sites(units, 60)
    nas, laptop = Leases(nas_repo), Leases(laptop_repo)

    async def scenario() -> None:
        async with nas.hold(["pack:b", "pack:a"]) as first:
            assert first.granted
            async with laptop.hold(["pack:b", "pack:a"]) as second:
                assert list(second.busy) == ["pack:a", "pack:b"], "a first, then the rest is only looked at"
        async with laptop.hold(["pack:c"]), nas.hold(["pack:c", "pack:a"]) as partly:
            assert set(partly.busy) == {"pack:c"}
            assert nas_repo.holder("pack:a") is None, "a, taken before c was found busy, was let go"

    run(scenario)


def test_renewal_keeps_a_hold_and_a_lost_one_stops_the_writes(units: tuple[UnitOfWork, UnitOfWork]) -> None:
    nas_repo, laptop_repo = sites(units, 1.5)
    nas = Leases(nas_repo)

    async def scenario() -> None:
        async with nas.hold([pack_key("1")]):
            first_expiry = expires_at(units[0], "pack:1")
            await until_async(lambda: database_now(units[1]) > first_expiry + 0.5)
            nas.check(pack_key("1"))
            assert laptop_repo.acquire("pack:1") is None, "renewed in the background"
            units[1].connection.execute(text("UPDATE leases SET expires_at = 0"))  # nas was cut off past it
            assert laptop_repo.acquire("pack:1") == 2
            await until_async(lambda: nas.held() and _raises_lost(nas, pack_key("1")))
            assert not nas_repo.fence(nas.held())
        holder = laptop_repo.holder("pack:1")
        assert holder is not None and holder.site == "laptop", "releasing a lost lease leaves the new holder's"

    run(scenario)


def _raises_lost(leases: Leases, key: str) -> bool:
    try:
        leases.check(key)
    except LeaseLost:
        return True
    return False


def test_the_local_deadline_stops_a_paused_process_before_its_lease_can_run_out(
        units: tuple[UnitOfWork, UnitOfWork]) -> None:
    """Paused past its lease (SIGSTOP, a closed lid), a process checks its own clock before it writes: the
    database's lease may be another site's by then, and no renewal ran to say so."""
    nas_repo, _ = sites(units, 60)
    now = [1000.0]
    nas = Leases(nas_repo, clock=lambda: now[0])

    async def scenario() -> None:
        async with nas.hold([pack_key("7")]):
            now[0] += 60 - 6 - 0.01  # just within the lease less its margin (a tenth)
            nas.check(pack_key("7"))
            now[0] += 0.02
            with pytest.raises(LeaseLost) as lost:
                nas.check(pack_key("7"))
            assert str(lost.value) == ("site nas's hold on pack 7 ran out (another site may hold it now); "
                                       "this sync stops writing, and the next one resumes.")
            assert isinstance(lost.value, PacksyncError)
            nas.renew()  # still ours in the database (no one took it): trusted again
            nas.check(pack_key("7"))
        with pytest.raises(RuntimeError):
            nas.check(pack_key("7"))

    run(scenario)


def test_a_site_cut_off_from_the_database_stops_writing_within_its_lease(
        server: postgres.PostgresServer, units: tuple[UnitOfWork, UnitOfWork]) -> None:
    """A renewal that cannot reach the database does not extend the hold: the local deadline ends the
    writes before the database's lease could run out; the hold still ends cleanly (its lease runs out on
    the server on its own)."""
    nas = Leases(sites(units, 1.5)[0])
    nas.renew_s = 1.0  # one renewal, which fails, before the deadline (1.35 s)

    async def scenario() -> None:
        async with nas.hold([pack_key("1")]):
            nas.check(pack_key("1"))
            cut = time.monotonic()
            server.stop()
            await until_async(lambda: _raises_lost(nas, pack_key("1")))
            assert time.monotonic() - cut < 1.5, "before the database's lease could run out"

    try:
        with capture_logs() as logs:
            run(scenario)
    finally:
        server.start()
    events = [entry["event"] for entry in logs]
    assert "lease: could not be renewed" in events and "lease: could not be released" in events
    assert nas.held() == {}


def test_a_hold_outlives_a_short_outage_of_the_database(
        server: postgres.PostgresServer, units: tuple[UnitOfWork, UnitOfWork]) -> None:
    """The server back before the lease ran out: the next renewal (on a connection made again) finds the
    lease still this site's, and the sync goes on; the outage is said once."""
    nas = Leases(sites(units, 8)[0])
    nas.renew_s = 0.5

    async def scenario() -> None:
        async with nas.hold([pack_key("1")]):
            taken = time.monotonic()
            server.stop()
            await until_async(lambda: nas.unreachable)
            server.start()
            await until_async(lambda: not nas.unreachable)
            await until_async(lambda: time.monotonic() - taken > 8 - 0.8 + 0.1)
            nas.check(pack_key("1"))  # past the first deadline: renewed since
            assert nas.held() == {"pack:1": 1}

    try:
        with capture_logs() as logs:
            run(scenario)
    finally:
        if not server.running():
            server.start()
    events = [entry["event"] for entry in logs]
    assert events.count("lease: could not be renewed") == 1 and "lease: renewed again" in events


def test_without_a_shared_state_everything_is_granted() -> None:
    """A SQLite state has no leases: one packsync per state file already (its lock)."""
    leases = Leases(None)

    async def scenario() -> None:
        async with leases.hold([pack_key("1"), name_key("Brand")], wait=True) as got:
            assert got.granted and got.busy == {}
            leases.check(pack_key("1"))
            leases.check("pack:never-held")
            assert leases.held() == {}

    run(scenario)


def test_keys_and_their_words() -> None:
    assert (pack_key("12"), name_key("Brand Assets"), meta_key("12")) == \
        ("pack:12", "name:brand assets", "meta:12")
    assert name_key("STRASSE") == name_key("straße"), "casefolded, not lowered"
    assert describe("name:brand") == "the pack name 'brand'" and describe("meta:3") == "the metadata of pack 3"
