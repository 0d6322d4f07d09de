"""The plain values the state hands out besides the model's (``packsync.model``): what it remembers of a
mapping, of the daemon, of a sidecar and of a site sharing the state (and where that state is:
``SharedState``, the config's). Importing them costs nothing: no database."""

from __future__ import annotations

import json

import msgspec

from packsync.config import SharedState

__all__ = ["ActivityRecord", "DaemonRecord", "MappingRecord", "SharedState", "SidecarRecord", "SiteRecord"]


class SidecarRecord(msgspec.Struct, frozen=True):
    """A sidecar as packsync last wrote it: what it said (``digest``), and the file's size and mtime then."""

    digest: str
    size: int
    mtime_ns: int


class MappingRecord(msgspec.Struct, frozen=True):
    """What the state remembers of a mapping: ``source_name`` is what its source calls itself (an Astria
    pack's title); ``ok_at`` when a sync last ended without error; ``safety`` the safety stop holding
    its deletes back, if any, ``withheld`` what ``--force`` would delete (JSON: a list of names, the first
    of ``withheld_count``); ``paused`` when a person paused its syncing; ``expires_at`` when its source
    itself deletes its items (an Astria tune's images), as its last scan that read it said."""

    root: str
    pack_id: str | None = None
    pack_name: str | None = None
    synced_at: float | None = None
    last_error: str | None = None
    source_name: str | None = None
    ok_at: float | None = None
    safety: str | None = None
    withheld: str | None = None
    withheld_count: int | None = None
    paused: float | None = None
    expires_at: float | None = None

    @property
    def withheld_names(self) -> list[str]:
        try:
            names = json.loads(self.withheld or "[]")
        except ValueError:
            return []
        return [str(name) for name in names] if isinstance(names, list) else []


class DaemonRecord(msgspec.Struct, frozen=True):
    """What a running daemon is doing, for `packsync status` (one row)."""

    pid: int | None = None
    started_at: float | None = None
    last_full_scan: float | None = None
    queue: int = 0
    state: str = "stopped"
    last_error: str | None = None
    updated_at: float | None = None


class ActivityRecord(msgspec.Struct, frozen=True):
    """Something a sync did (``kind``: added, deleted, replaced, renamed, failed) to ``name`` in the mapping
    ``root``'s pack, at ``at``; ``detail`` says more (why it failed, the name it had)."""

    at: float
    root: str
    kind: str
    name: str
    detail: str | None = None


class SiteRecord(msgspec.Struct, frozen=True):
    """A site sharing the state, and how long ago (by the server's clock) it was last heard from."""

    name: str
    host: str
    pid: int | None
    version: str
    seen_ago_s: float
