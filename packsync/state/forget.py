"""Forgetting a site that left a shared state (PostgreSQL) for good: ``packsync state forget-site``.

A machine retired, or renamed (the default site is its host name), leaves its rows behind: its file cache
keeps holding every content it held (``images.held_elsewhere`` counts any other site's mappings' files),
and the images it added keep its name as their owner, so no mapping of another site ever deletes them.
Forgetting it deletes the site's rows of every per-site table (migrate's ``SITE_TABLES``), its ``daemon``
and ``sites`` rows, lets go of the leases it holds, and gives its images to no one in particular: owner
'' (``images.managed_by``: every mapping's own), so each mapping into such a pack may delete one its source
no longer holds — after the hand-over rule, which still keeps it when another site's files hold it.

Everything in ONE transaction; a dry run counts the same and writes nothing. A site that may still be
running is refused unless forced: heard from lately, or holding a lease not yet run out; one connected
right now (holding its site's lock) is refused always, since it would write its rows again at once.
Knows no command line.
"""

from __future__ import annotations

import msgspec
from sqlalchemy import ColumnElement, delete, func, select, text, update

from packsync.config import SITE_RULE, is_site
from packsync.errors import ConfigError, StateError
from packsync.state.leases import LEASES
from packsync.state.migrate import SITE_TABLES, count
from packsync.state.sites import SITES
from packsync.state.store import State
from packsync.state.tables import TABLES, DaemonRow, table
from packsync.state.unit import UnitOfWork

#: A site heard from more recently than this (by the database server's clock) may be running still.
RECENT_S = 15 * 60
DAEMON = table(DaemonRow)
IMAGES = TABLES["images"]
_NOW = text("extract(epoch from clock_timestamp())")


class TableRows(msgspec.Struct, frozen=True):
    """How many of a table's rows the site held (and were, or would be, deleted)."""

    table: str
    rows: int


class Forgetting(msgspec.Struct, frozen=True):
    """What forgetting a site did (or, ``dry_run``, would do): its rows per table, the leases it held (let
    go of), and ``images``: how many images it owned, given to no one in particular."""

    site: str
    where: str
    dry_run: bool
    tables: list[TableRows]
    leases: int
    images: int


def forget_site(state: State, name: str, *, force: bool = False, dry_run: bool = False) -> Forgetting:
    """Forget site ``name`` of the shared state ``state`` (opened as this machine's site; to read only, for a
    ``dry_run``). StateError, writing nothing, for this machine's own site, a site unknown, a state of one
    machine's own, or a site that may be running (unless ``force``; always when connected now)."""
    unit = state.unit
    if not is_site(name):
        raise ConfigError(f"NAME: {SITE_RULE}, not {name!r}.")
    if not unit.shared:
        raise StateError(f"{state.where} is the state of one machine alone (no [state] url): it has no other "
                         "sites to forget.")
    if name == unit.site:
        raise StateError(f"{name!r} is this machine's own site; forget a site from another machine sharing "
                         "the state.")
    with unit.transaction():
        _refuse_if_running(unit, name, force)
        counts = [TableRows(table_name, count(unit, TABLES[table_name], unit.own(TABLES[table_name].c[column], name)))
                  for table_name, column in SITE_TABLES.items()]
        site_id = _site_id(unit, name)
        counts += [TableRows("daemon", 0 if site_id is None else count(unit, DAEMON, DAEMON.c.id == site_id)),
                   TableRows("sites", 0 if site_id is None else 1)]
        leases = count(unit, LEASES, _held_by(name))
        images = count(unit, IMAGES, unit.own(IMAGES.c.owner, name))
        if not (sum(each.rows for each in counts) or leases or images):
            known = ", ".join(site.name for site in state.sites()) or "none"
            raise StateError(f"the shared state {state.where} holds nothing of a site {name!r} (its sites: {known}).")
        if not dry_run:
            _forget(unit, name, site_id)
    return Forgetting(name, state.where, dry_run, counts, leases, images)


def _held_by(name: str) -> ColumnElement[bool]:
    """The site's leases not yet run out (nor let go of: a sync lets go of its leases as it ends)."""
    return (LEASES.c.holder == name) & (LEASES.c.expires_at > _NOW)


def _site_id(unit: UnitOfWork, name: str) -> int | None:
    rows = unit.rows(select(SITES.c.id).where(SITES.c.name == name))
    return int(rows[0][0]) if rows else None


def _refuse_if_running(unit: UnitOfWork, name: str, force: bool) -> None:
    """Refuse to forget a site a packsync is connected as now (it holds the site's lock, which this
    transaction then holds until it ends: the site cannot start meanwhile), and, unless ``force``, one heard
    from in the last ``RECENT_S`` or holding a lease not yet run out (its packsync may only be paused)."""
    from packsync.state.postgres import site_lock_key

    if not unit.rows(select(func.pg_try_advisory_xact_lock(site_lock_key(name))))[0][0]:
        raise StateError(f"a packsync is connected to the shared state as site {name!r} now; stop it first (or, "
                         "if its machine is gone, wait a minute for the server to drop its session).")
    if force:
        return
    seen = unit.rows(select(_NOW - SITES.c.seen_at).where(SITES.c.name == name))
    if seen and float(seen[0][0]) < RECENT_S:
        raise StateError(f"site {name!r} was heard from {_ago(float(seen[0][0]))} and may be running; if it left "
                         "for good, give --force.")
    held = count(unit, LEASES, _held_by(name))
    if held:
        raise StateError(f"site {name!r} holds {held} lease(s) on packs not yet run out and may be running; if it "
                         "left for good, give --force.")


def _ago(seconds: float) -> str:
    return "less than a minute ago" if seconds < 60 else f"{seconds / 60:.0f} minutes ago"


def _forget(unit: UnitOfWork, name: str, site_id: int | None) -> None:
    """Delete the site's rows; its images become any mapping's. Its leases are left to run out on their own
    (within ``lease_s``): a site forgotten with ``--force`` may still be writing under one, until its own
    deadline stops it — the lease is what keeps the others out until then."""
    for table_name, column in SITE_TABLES.items():
        unit.run(delete(TABLES[table_name]).where(unit.own(TABLES[table_name].c[column], name)))
    if site_id is not None:
        unit.run(delete(DAEMON).where(DAEMON.c.id == site_id))
        unit.run(delete(SITES).where(SITES.c.id == site_id))
    unit.run(update(IMAGES).where(unit.own(IMAGES.c.owner, name)).values(owner=""))
