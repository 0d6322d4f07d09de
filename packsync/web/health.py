"""Health: ``ok``, ``degraded`` or ``failing``, from what the daemon knows now and what the state
remembers of each mapping — no API call, no disk walk (a pure function of its inputs).

- ``failing`` (HTTP 503): the key was refused (syncing paused), a safety stop waits for ``--force``,
  or the main loop has not come round for longer than it ever should.
- ``degraded`` (HTTP 200): some mapping's last sync failed and is being retried, a mapping has been
  syncing for longer than it should (its remote answers slowly or not at all), a person paused a
  mapping (its pack is not kept a mirror meanwhile), or the state database is busy or full.
- ``ok`` (HTTP 200): everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from packsync.state.records import DaemonRecord, MappingRecord

#: The daemon's loop comes round every few seconds, even mid-sync: this long without a turn is a stall.
STALL_S = 60.0


@dataclass(frozen=True, slots=True)
class LiveState:
    """What a running daemon knows that the state does not say (or not yet)."""

    state: str                       # starting, running, paused
    queue: int = 0                   # changed paths waiting for their folder to settle
    since_tick_s: float = 0.0        # since the main loop last came round
    paused_reason: str | None = None
    state_trouble: str | None = None
    last_full_scan: float | None = None
    retrying: dict[str, str] = field(default_factory=dict)  # mapping label -> its error
    stuck: dict[str, float] = field(default_factory=dict)  # mapping label -> seconds its sync has been running


class Live(Protocol):
    """The daemon, as the web surface sees it (absent under ``packsync ui``)."""

    def live(self) -> LiveState: ...

    def sync_now(self, label: str | None) -> None: ...

    def retry_failed(self) -> None: ...

    def pause(self, label: str | None) -> list[str]: ...

    def resume(self, label: str | None) -> list[str]: ...

    def allow_deletes(self, label: str) -> object: ...


@dataclass(frozen=True, slots=True)
class MappingHealth:
    label: str
    pack: str
    record: MappingRecord | None
    error: str | None

    @property
    def status(self) -> str:
        if self.record and self.record.safety:
            return "failing"
        if self.record and self.record.paused:
            return "paused"
        return "degraded" if self.error else "ok"


def health(mappings: list[MappingHealth], live: LiveState | None, daemon: DaemonRecord | None,
           daemon_gone: bool = False, unreadable: str | None = None) -> dict[str, Any]:
    """The ``/healthz`` document; its ``status`` decides the HTTP code (``http_status``). ``daemon_gone``:
    (seen from ``packsync ui``) the daemon's record says it runs, but no process holds the state.
    ``unreadable``: why the state could not be read just now (it passes: degraded)."""
    reasons: list[str] = []
    if live is not None:
        if live.paused_reason:
            reasons.append(live.paused_reason)
        if live.since_tick_s > STALL_S:
            reasons.append(f"the main loop has not come round for {live.since_tick_s:.0f} s")
    elif daemon is not None and daemon.state == "paused" and daemon.last_error:
        reasons.append(daemon.last_error)
    reasons += [f"{m.label}: {m.record.safety}" for m in mappings if m.record and m.record.safety]
    degraded = [m for m in mappings if m.status == "degraded"]
    paused = [f"{m.label}: paused (`packsync resume` syncs it again)" for m in mappings if m.status == "paused"]
    stuck = [f"{label}: still syncing after {seconds:.0f} s (its remote answers slowly, or not at all)"
             for label, seconds in sorted(live.stuck.items())] if live else []
    trouble = unreadable or (live.state_trouble if live else None)
    if daemon_gone and daemon is not None:
        trouble = f"the daemon is not running (it was {daemon.state}; last seen at {daemon.updated_at})"
    status = "failing" if reasons else "degraded" if degraded or trouble or stuck or paused else "ok"
    return {
        "status": status,
        "reasons": reasons + ([trouble] if trouble else []) + [f"{m.label}: {m.error}" for m in degraded] + stuck
        + paused,
        "daemon": None if live is None else {"state": live.state, "queue": live.queue,
                                             "last_full_scan": live.last_full_scan,
                                             "since_loop_s": round(live.since_tick_s, 1)},
        "mappings": [{"source": m.label, "pack": m.pack, "status": m.status, "error": m.error,
                      "last_sync": m.record.synced_at if m.record else None,
                      "last_success": m.record.ok_at if m.record else None,
                      "safety_stop": m.record.safety if m.record else None} for m in mappings],
    }


def http_status(document: dict[str, Any]) -> int:
    return 503 if document["status"] == "failing" else 200
