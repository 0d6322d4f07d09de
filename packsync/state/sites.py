"""The machines sharing a state (PostgreSQL): each site's row — its host, its packsync's pid and version,
when it was last heard from — kept by the site itself and read by ``status`` on every site.

A site's row is made (or taken over, by name) when it opens the state for writing; its ``id`` is the id of
the site's ``daemon`` row, so each site keeps its own. ``touch`` says the site is alive (each sync, each
daemon heartbeat); times are the database server's, the one clock all sites share. A state of one
machine's own (SQLite) has no sites: its daemon row is row 1.
"""

from __future__ import annotations

import os
import socket

from sqlalchemy import select, text

from packsync import __version__
from packsync.state.records import SiteRecord
from packsync.state.tables import SiteRow, table
from packsync.state.unit import UnitOfWork

SITES = table(SiteRow)
_NOW = "extract(epoch from clock_timestamp())"
_REGISTER = text(f"INSERT INTO sites (name, host, pid, version, seen_at) VALUES (:name, :host, :pid, :version, {_NOW}) "
                 "ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
                 "version = excluded.version, seen_at = excluded.seen_at RETURNING id")
_TOUCH = text(f"UPDATE sites SET seen_at = {_NOW} WHERE name = :name")


def register(unit: UnitOfWork, *, readonly: bool) -> int:
    """This site's daemon row id: its row made or refreshed (a reader only looks it up: 0 when missing)."""
    if readonly:
        rows = unit.rows(select(SITES.c.id).where(SITES.c.name == unit.site))
        return int(rows[0][0]) if rows else 0
    with unit.transaction():
        rows = unit.connection.execute(_REGISTER, {"name": unit.site, "host": socket.gethostname(),
                                                   "pid": os.getpid(), "version": __version__}).all()
    return int(rows[0][0])


def touch(unit: UnitOfWork) -> None:
    """Say this site is alive now."""
    if unit.shared:
        unit.run(_TOUCH.bindparams(name=unit.site))


def all_sites(unit: UnitOfWork) -> list[SiteRecord]:
    """Every site sharing the state, by name (none in a state of one machine's own)."""
    if not unit.shared:
        return []
    c = SITES.c
    rows = unit.rows(select(c.name, c.host, c.pid, c.version, text(f"{_NOW} - seen_at")).order_by(c.name))
    return [SiteRecord(name, host, pid, version, float(ago)) for name, host, pid, version, ago in rows]
