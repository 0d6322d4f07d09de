"""The leases of a shared state (PostgreSQL only): which site may write to a pack now, under which epoch.

A lease is a row of ``leases`` keyed by what it guards: ``"pack:<id>"`` (a pack's images and name),
``"name:<casefolded pack name>"`` (creating a pack by that name) or ``"meta:<id>"`` (polling a pack's
metadata, one site for all). Each operation here is ONE statement, run on its own (the unit's connection
is in autocommit), so it is atomic without a transaction of ours; every time in it is the database
server's clock, the one every site agrees on, never this machine's.

A site takes a lease that has expired, or that is its own: then under a new epoch, so a write made under
the old one — by a process of the same site that was paused, say — is recognised as stale by ``fence``,
which a write transaction runs first and is rolled back on.

SQLite has no leases (one packsync per state file, by its lock): ``engine/leases.py`` grants everything
there without this repository. ``app.leases_for`` makes it for a shared state; ``engine/leases.py`` uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from sqlalchemy import ColumnElement, Float, and_, cast, extract, func, select, text, tuple_, update

from packsync.state.tables import LeaseRow, table
from packsync.state.unit import UnitOfWork

LEASES = table(LeaseRow)
#: Now, in seconds, on the database server's clock (its real time: ``now()`` stops at a transaction's start).
_NOW = cast(extract("epoch", func.clock_timestamp()), Float)
# The clock is read once (``now``), so that "expired" and the new expiry agree to the microsecond.
_ACQUIRE = text("""
    WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t)
    INSERT INTO leases (key, holder, epoch, expires_at)
    SELECT :key, :site, 1, now.t + :lease_s FROM now
    ON CONFLICT (key) DO UPDATE
        SET holder = excluded.holder, epoch = leases.epoch + 1, expires_at = excluded.expires_at
        WHERE leases.expires_at < excluded.expires_at - :lease_s OR leases.holder = excluded.holder
    RETURNING epoch
""")


class Holder(NamedTuple):
    """Who holds a lease, and for how many seconds more unless it renews it (by the database's clock)."""

    site: str
    seconds_left: float


def unfenced(unit: UnitOfWork, site: str, held: Mapping[str, int]) -> list[str]:
    """The keys of ``held`` (key → epoch) that ``site`` no longer holds at that epoch unexpired, sorted.

    One SELECT, on the unit's connection as it is: run right after a write transaction's BEGIN, it tells
    a writer whose lease another site took (or that ran out) to roll back instead of committing. It
    goes through no method of the unit (which would flush, and so begin another transaction); the
    transaction's own guard translates the database's errors.
    """
    if not held:
        return []
    # FOR SHARE: the rows stay as they are until the transaction ends, so another site's take (an update of
    # the row) waits for this commit, and a lease cannot pass to it between this check and the commit.
    query = select(LEASES.c.key).where(
        LEASES.c.holder == site, LEASES.c.expires_at > _NOW,
        tuple_(LEASES.c.key, LEASES.c.epoch).in_([(key, epoch) for key, epoch in held.items()])) \
        .with_for_update(read=True)
    ours = {str(row[0]) for row in unit.connection.execute(query)}
    return sorted(set(held) - ours)


def fence(unit: UnitOfWork, site: str, held: Mapping[str, int]) -> bool:
    """Whether ``site`` still holds every lease of ``held`` at its epoch, unexpired (``unfenced``): whether
    the write transaction open may commit."""
    return not unfenced(unit, site, held)


class LeaseRepository:
    """The leases of ``site``, each lasting ``lease_s`` seconds unless renewed, over ``unit`` (PostgreSQL)."""

    def __init__(self, unit: UnitOfWork, site: str, lease_s: float) -> None:
        assert unit.connection.dialect.name == "postgresql", "leases are a shared state's (PostgreSQL) only"
        self.unit, self.site, self.lease_s = unit, site, lease_s

    def acquire(self, key: str) -> int | None:
        """Take ``key``: its new epoch, or None while another site holds it unexpired. Our own lease is
        taken again under a new epoch (whatever of ours wrote under the old one is fenced out)."""
        rows = self.unit.alone(_ACQUIRE, {"key": key, "site": self.site, "lease_s": self.lease_s})
        return int(rows[0][0]) if rows else None

    def renew(self, key: str, epoch: int) -> bool:
        """Extend our lease on ``key`` taken under ``epoch`` by ``lease_s`` from now; False when it is no
        longer ours (expired, or taken since)."""
        statement = update(LEASES).where(self._ours(key, epoch), LEASES.c.expires_at > _NOW) \
            .values(expires_at=_NOW + self.lease_s)
        return self.unit.alone(statement) == [1]

    def release(self, key: str, epoch: int) -> None:
        """Let ``key`` go now, if it is still ours under ``epoch`` (a lease taken since is left alone)."""
        statement = update(LEASES).where(self._ours(key, epoch)).values(expires_at=_NOW)
        self.unit.alone(statement)

    def holder(self, key: str) -> Holder | None:
        """Who holds ``key`` unexpired (this site included), or None."""
        left = (LEASES.c.expires_at - _NOW).label("left")
        query = select(LEASES.c.holder, left).where(LEASES.c.key == key, LEASES.c.expires_at > _NOW)
        rows = self.unit.alone(query)
        return Holder(str(rows[0][0]), max(0.0, float(rows[0][1]))) if rows else None

    def fence(self, held: Mapping[str, int]) -> bool:
        """``fence`` for this site: inside a write transaction, whether it may commit."""
        return fence(self.unit, self.site, held)

    def unfenced(self, held: Mapping[str, int]) -> list[str]:
        """``unfenced`` for this site: the keys of ``held`` no longer its own."""
        return unfenced(self.unit, self.site, held)

    def _ours(self, key: str, epoch: int) -> ColumnElement[bool]:
        return and_(LEASES.c.key == key, LEASES.c.holder == self.site, LEASES.c.epoch == epoch)

