"""When the daemon syncs a folder (``packsync/daemon/schedule.py``), driven by a made-up clock: no sleeps.

A folder whose events settled is synced with the paths that changed; a retry, a full rescan or a
changed ignore file scan it whole; a refused key pauses everything until it is over or asked to end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from packsync.config import Config, parse_config
from packsync.daemon.aggregator import Aggregator, StatKey
from packsync.daemon.schedule import FIRST, Asked, Round, Schedule
from packsync.daemon.timing import Timing
from packsync.engine.sync import SyncOptions, SyncReport
from packsync.remote.retry import Backoff
from packsync.sources.patterns import IGNORE_FILE

TIMING = Timing(mapping_retry=Backoff(5.0, 300.0), auth_pause_s=900.0)


def config(tmp_path: Path, *folders: str) -> Config:
    for name in folders:
        (tmp_path / name).mkdir()
    return parse_config({"genviral": {"base_url": "http://127.0.0.1:9"}, "state": {"path": str(tmp_path / "s.db")},
                         "daemon": {"rescan_interval_s": 600},
                         "mappings": [{"path": str(tmp_path / name), "pack": name} for name in folders]},
                        source=tmp_path / "config.toml")


def schedule(tmp_path: Path, *folders: str) -> tuple[Schedule, Aggregator]:
    """A schedule whose first full rescan is done (at 0): the next is due around 600."""
    def unchanged(path: Path) -> StatKey:
        return (1, 1)

    changes = Aggregator(2.0, stat=unchanged)
    planned = Schedule(config(tmp_path, *folders), TIMING, changes)
    planned.started(FIRST, 0.0)
    return planned, changes


def test_a_settled_change_is_a_round_for_its_folder_with_the_paths_that_changed(tmp_path: Path) -> None:
    planned, changes = schedule(tmp_path, "a", "b")
    a = tmp_path / "a"
    changes.changed(a, a / "new.png", closed=False, now=100.0)
    changes.changed(a, a / "sub", closed=False, now=100.0)

    assert planned.due(101.0) is None
    assert planned.next_deadline(101.0) == 1.0
    assert planned.due(102.0) == Round(frozenset({str(a)}), busy={str(a): frozenset()},
                                       changed={str(a): frozenset({"new.png", "sub"})})


def test_a_retry_or_a_full_rescan_scans_the_folder_whole(tmp_path: Path) -> None:
    planned, changes = schedule(tmp_path, "a", "b")
    a, b = tmp_path / "a", tmp_path / "b"
    planned.retry(planned.folders[str(a)], 100.0)  # due at 105
    changes.changed(a, a / "x.png", closed=False, now=104.0)
    changes.changed(b, b / "y.png", closed=False, now=104.0)

    due = planned.due(106.0)

    assert due is not None and due.labels == frozenset({str(a), str(b)}) and not due.full
    assert due.changed == {str(b): frozenset({"y.png"})}, "the retried folder has no entry: scanned whole"
    changes.changed(b, b / "z.png", closed=False, now=700.0)
    full = planned.due(703.0)
    assert full is not None and full.full and full.labels == frozenset({str(a), str(b)}) and full.changed == {}


def test_a_changed_ignore_file_scans_the_folder_whole(tmp_path: Path) -> None:
    planned, changes = schedule(tmp_path, "a")
    a = tmp_path / "a"
    changes.changed(a, a / IGNORE_FILE, closed=True, now=100.0)
    changes.changed(a, a / "x.png", closed=True, now=100.0)

    due = planned.due(101.0)

    assert due is not None and due.labels == frozenset({str(a)}) and due.changed == {}


def test_a_refused_key_pauses_every_folder_until_the_pause_ends_or_someone_asks(tmp_path: Path) -> None:
    planned, changes = schedule(tmp_path, "a")
    a = tmp_path / "a"
    folders = planned.started(Round(frozenset({str(a)})), 100.0)
    planned.pause(folders, "the key is refused", 100.0)
    changes.changed(a, a / "x.png", closed=True, now=101.0)

    assert planned.paused and planned.due(500.0) is None, "events wait during the pause"
    assert planned.next_deadline(500.0) == 500.0, "the loop sleeps until the pause is over, not at once"
    resumed = planned.due(1000.0)
    assert resumed is not None and resumed.labels == frozenset({str(a)}) and resumed.changed == {}, "retried whole"
    assert not planned.paused and planned.paused_reason == "the key is refused", "said until a sync succeeds"

    planned.pause(folders, "the key is refused", 1000.0)
    planned.sync_now(None)
    assert planned.due(1000.0) is not None


def test_a_failing_folder_backs_off_and_a_success_resets_it(tmp_path: Path) -> None:
    planned, _ = schedule(tmp_path, "a")
    folder = planned.folders[str(tmp_path / "a")]

    planned.synced(folder, "boom", failing=True, now=100.0)
    first = folder.retry_at
    planned.synced(folder, "boom", failing=True, now=100.0)

    assert first == 105.0 and folder.retry_at == 110.0
    planned.synced(folder, None, failing=False, now=200.0)
    assert folder.error is None and folder.retry.attempt == 0


def test_a_safety_stop_is_not_retried(tmp_path: Path) -> None:
    planned, _ = schedule(tmp_path, "a")
    folder = planned.folders[str(tmp_path / "a")]

    planned.synced(folder, "safety stop: 10 deletes withheld", failing=False, now=100.0)

    assert folder.error and folder.retry_at is None


def test_a_reload_makes_new_and_changed_folders_due_and_lists_the_gone_ones(tmp_path: Path) -> None:
    planned, _ = schedule(tmp_path, "a", "b")
    kept = planned.folders[str(tmp_path / "a")]
    (tmp_path / "c").mkdir()
    mappings = [{"path": str(tmp_path / name), "pack": name} for name in ("a", "c")]
    later = parse_config({"genviral": {"base_url": "http://127.0.0.1:9"}, "state": {"path": str(tmp_path / "s.db")},
                          "mappings": mappings}, source=tmp_path / "config.toml")

    fresh, gone = planned.reconfigure(later)

    assert planned.folders[str(tmp_path / "a")] is kept
    assert [f.label for f in fresh] == [str(tmp_path / "c")] and fresh[0].retry_at == 0.0
    assert gone == [tmp_path / "b"]


def test_a_sync_asked_for_waits_for_its_mapping_s_sync_beside_the_loop_while_the_others_go_on(
        tmp_path: Path) -> None:
    planned, changes = schedule(tmp_path, "a", "b")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    loop = asyncio.new_event_loop()
    try:
        reply: asyncio.Future[SyncReport] = loop.create_future()
        planned.asked.append(Asked(frozenset({a}), SyncOptions(), reply))
        planned.in_flight[a] = 90.0  # (a's sync runs beside the loop, as an Astria pack's does)
        changes.changed(Path(b), Path(b) / "x.png", closed=False, now=100.0)

        assert planned.next_deadline(101.0) == 1.0  # nothing asked may run yet: b's change is next
        waited = planned.due(102.0)
        assert waited is not None and waited.asked is None and waited.labels == frozenset({b})
        del planned.in_flight[a]
        assert planned.next_deadline(103.0) == 0.0
        asked = planned.due(103.0)
        assert asked is not None and asked.asked is not None and asked.labels == frozenset({a})
        assert not planned.asked
    finally:
        loop.close()


def test_a_source_read_through_an_api_is_read_again_after_its_mapping_s_poll_interval(tmp_path: Path) -> None:
    """No watcher tells of a remote source's changes: after each sync it is due again once its mapping's
    ``Config.poll_interval_s`` is up (``[astria] poll_interval_s`` for an Astria pack), not at a rescan."""
    remote = parse_config({"astria": {"poll_interval_s": 1800}, "daemon": {"rescan_interval_s": 600},
                           "mappings": [{"astria_pack": 260, "pack": "Headshots"}]},
                          source=tmp_path / "config.toml")
    planned = Schedule(remote, TIMING, Aggregator(2.0))
    planned.started(FIRST, 0.0)
    pack = planned.folders["astria:260"]

    planned.synced(pack, None, failing=False, now=100.0)

    assert pack.retry_at == 100.0 + remote.poll_interval_s(pack.mapping) == 1900.0
    assert planned.due(1000.0) == Round(frozenset(), full=True), "a full rescan leaves it to its interval"
    later = planned.due(1900.0)
    assert later is not None and later.labels == frozenset({"astria:260"})
