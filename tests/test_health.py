"""The health verdict as a pure function: which conditions make ``degraded`` and which ``failing``."""

from __future__ import annotations

import pytest

from packsync.state.records import DaemonRecord, MappingRecord
from packsync.web.health import STALL_S, LiveState, MappingHealth, health, http_status


def mapping(error: str | None = None, safety: str | None = None) -> MappingHealth:
    record = MappingRecord("/pics", synced_at=1.0, last_error=error or safety, safety=safety,
                           ok_at=None if error else 1.0)
    return MappingHealth("/pics", "Brand", record, error or safety)


RUNNING = LiveState("running")


@pytest.mark.parametrize(("mappings", "live", "status"), [
    ([mapping()], RUNNING, "ok"),
    ([mapping(), mapping(error="cannot read the pack: HTTP 503")], RUNNING, "degraded"),
    ([mapping()], LiveState("running", state_trouble="the state database is locked"), "degraded"),
    ([mapping(safety="the folder looks emptied; nothing is deleted")], RUNNING, "failing"),
    ([mapping()], LiveState("paused", paused_reason="the Genviral API refused the key"), "failing"),
    ([mapping()], LiveState("running", since_tick_s=STALL_S + 1), "failing"),
    ([mapping()], LiveState("running", since_tick_s=STALL_S - 1), "ok"),
])
def test_the_verdict_and_its_http_code(mappings: list[MappingHealth], live: LiveState, status: str) -> None:
    document = health(mappings, live, None)
    assert document["status"] == status
    assert http_status(document) == (503 if status == "failing" else 200)
    assert bool(document["reasons"]) == (status != "ok")


def test_without_a_live_daemon_a_paused_record_is_failing() -> None:
    paused = DaemonRecord(state="paused", last_error="the Genviral API refused the key")
    assert health([mapping()], None, paused)["status"] == "failing"
    assert health([mapping()], None, DaemonRecord(state="stopped"))["status"] == "ok"
