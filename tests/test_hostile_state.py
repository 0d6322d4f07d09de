"""Hostile conditions on the state itself: its file (and its lock) deleted or replaced under a running packsync.

A running packsync writes on to the file it opened: deleted, its writes go to an inode nobody sees, and
the lock on a deleted path excludes no one — a ``run`` started meanwhile locks a new file, starts a new
state and syncs beside the daemon. Each test drives the real daemon (or the real CLI) on real files,
and asserts the pack ends without a duplicate content whatever the interleaving.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, Env, image, write
from helpers import StartDaemon, StartHere, wait_until

from packsync.errors import ExitCode, StateUnavailable
from packsync.state.lock import StateLock

SAID = "was deleted or replaced while packsync ran"


def contents(env: Env, pack_id: str) -> list[str]:
    """The SHA-256 of every image of the pack, in pack order (a content twice is a duplicate)."""
    import httpx2

    with httpx2.Client() as client:  # one client: making one per image costs a tenth of a second each
        return [hashlib.sha256(client.get(image["url"]).content).hexdigest() for image in env.pack(pack_id)["images"]]


def remove_state(env: Env) -> None:
    """``rm state.db*``: the database, its log, its shared memory and its lock."""
    for path in env.state_path.parent.glob(env.state_path.name + "*"):
        path.unlink()


def test_a_state_deleted_under_the_daemon_while_a_run_starts_leaves_no_duplicate(daemon_env: Env,
                                                                                  start: StartDaemon) -> None:
    folder = daemon_env.map("pics", pack="Brand")
    for i in range(10):
        write(folder / f"{i}.png", image())
    daemon = start()
    pack_id = daemon_env.pack_named("Brand")["id"]
    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] == 10, timeout=30, what="10 images synced")

    remove_state(daemon_env)
    for i in range(10):
        write(folder / f"new-{i}.png", image())
    result = daemon_env.cli("run", "--no-wait")

    # The run either synced (the daemon waited for its lock) or was refused (the daemon locked first).
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == ExitCode.OK or "another packsync (pid" in result.stderr, result.stderr[-2000:]
    later = image()  # the daemon keeps working, on the new state
    write(folder / "later.png", later)
    wait_until(lambda: hashlib.sha256(later).hexdigest() in contents(daemon_env, pack_id), timeout=30,
               what="a later file synced by the daemon")
    held = contents(daemon_env, pack_id)
    assert len(held) == len(set(held)) == 21, f"{len(held)} images, {len(set(held))} contents: no content twice"
    assert daemon.proc.poll() is None, daemon.output()[-3000:]
    assert daemon.output().count(SAID) == 1, "said once"

    refused = daemon_env.cli("run", "--no-wait")  # the daemon holds the new lock: it excludes a run again
    assert refused.returncode == ExitCode.USAGE, refused.stdout + refused.stderr
    assert f"another packsync (pid {daemon.proc.pid})" in refused.stderr, refused.stderr
    assert daemon.stop() == 0
    again = daemon_env.cli("run", "--no-wait")
    assert again.returncode == 0 and "0 added, 0 deleted, 0 skipped, 0 failed" in again.stdout, \
        again.stdout + again.stderr


def test_a_state_and_lock_moved_over_under_the_daemon_wait_for_the_run_holding_them(daemon_env: Env,
                                                                                    start_here: StartHere) -> None:
    """The other interleaving: a run holds the new lock when the daemon notices. The daemon waits for it, then
    takes the state the run left and syncs on; the pack ends with each content once."""
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    for i in range(3):
        write(folder / f"{i}.png", image())
    daemon = start_here(FAST)
    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] == 3, timeout=30, what="3 images synced")

    # A run's lock, moved over the daemon's: at no moment can the daemon lock the path before the run.
    run_lock = StateLock(daemon_env.root / "elsewhere.db").acquire()
    try:
        os.replace(run_lock.path, StateLock(daemon_env.state_path).path)
        other = daemon_env.root / "other.db"
        sqlite3.connect(other).close()  # an empty database, as a restored backup or a mistake would be
        os.replace(other, daemon_env.state_path)
        for i in range(5):
            write(folder / f"new-{i}.png", image())
        report = daemon_env.sync()  # the run, under that lock, on the new state
        assert report.exit_code == ExitCode.OK
        wait_until(lambda: "waiting for the other packsync" in daemon.output(), timeout=30,
                   what="the daemon waits for the run's lock")
    finally:
        run_lock.release()

    later = image()
    write(folder / "later.png", later)
    wait_until(lambda: hashlib.sha256(later).hexdigest() in contents(daemon_env, pack_id), timeout=30,
               what="a later file synced by the daemon")
    held = contents(daemon_env, pack_id)
    assert len(held) == len(set(held)) == 9, f"{len(held)} images, {len(set(held))} contents: no content twice"
    assert daemon.running, daemon.output()[-3000:]
    assert daemon.output().count(SAID) == 1, daemon.output()[-3000:]
    assert StateLock(daemon_env.state_path).holder() == os.getpid(), "the daemon holds the lock again"
    assert daemon.stop() is None


@pytest.mark.parametrize("removed", ["state.db*", "state.db.lock"])
def test_a_run_whose_state_or_lock_is_deleted_stops_writing_in_one_sentence(env: Env, removed: str) -> None:
    from packsync.state.store import State

    env.state_path.parent.mkdir(parents=True)
    with StateLock(env.state_path):
        state = State(env.state_path)
        try:
            state.mappings.save_daemon(state="running")
            for path in env.state_path.parent.glob(removed):
                path.unlink()
            with pytest.raises(StateUnavailable) as raised:
                state.mappings.save_daemon(state="stopped")
        finally:
            state.close()
    assert raised.value.reason == "replaced"
    which = f"the state database {env.state_path}" if removed == "state.db*" else f"the lock file {env.state_path}.lock"
    assert str(raised.value).startswith(f"{which} {SAID}"), str(raised.value)
    if removed == "state.db*":
        assert not env.state_path.exists(), "nothing written on to a new file behind the run's back"


def read_elsewhere(path: Path, sql: str) -> list[list[Any]]:
    """``sql``'s rows, read by another process on a connection of its own, closed after it (``status``, a
    sqlite3 shell): the last one to close a database takes the write-ahead log away with it."""
    code = ("import json, sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
            "print(json.dumps(db.execute(sys.argv[2]).fetchall())); db.close()")
    done = subprocess.run([sys.executable, "-c", code, str(path), sql], capture_output=True, text=True, timeout=30,
                          check=True)
    rows: list[list[Any]] = json.loads(done.stdout)
    return rows


@pytest.mark.parametrize("readonly", [True, False], ids=["reader", "writer"])
def test_a_state_opened_again_beside_its_writer_leaves_every_commit_seen_by_other_processes(env: Env,
                                                                                            readonly: bool) -> None:
    """The page opens read-only states in the daemon's process, beside its writer. That drops none of the
    writer's locks: another program that reads and closes meanwhile never takes itself for the file's last
    user (checkpointing the log and deleting it under the writer), so every later commit stays seen."""
    from packsync.state.store import State

    env.state_path.parent.mkdir(parents=True)
    writer = State(env.state_path)
    try:
        writer.mappings.save_daemon(state="starting")
        beside = State(env.state_path, readonly=readonly)
        try:
            assert read_elsewhere(env.state_path, "SELECT state FROM daemon") == [["starting"]]
            writer.mappings.save_daemon(state="running")
            assert read_elsewhere(env.state_path, "SELECT state FROM daemon") == [["running"]]
        finally:
            beside.close()
        writer.mappings.save_daemon(state="stopping")
        assert read_elsewhere(env.state_path, "SELECT state FROM daemon") == [["stopping"]]
    finally:
        writer.close()


def test_a_state_deleted_mid_round_stops_the_daemon_s_writes_and_adopts_what_it_added(daemon_env: Env,
                                                                                      start_here: StartHere) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "a.png", image())
    daemon = start_here(FAST)
    daemon_env.sandbox.faults.latency_s = 0.05  # a round long enough to be cut in the middle
    for i in range(12):
        write(folder / f"new-{i}.png", image())
    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] > 3, timeout=30, what="the daemon adding")

    remove_state(daemon_env)

    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] >= 13, timeout=30, what="every file synced")
    wait_until(lambda: SAID in daemon.output(), timeout=30, what="the deleted state is said")
    later = image()
    write(folder / "later.png", later)
    wait_until(lambda: hashlib.sha256(later).hexdigest() in contents(daemon_env, pack_id), timeout=30,
               what="a later file synced")
    held = contents(daemon_env, pack_id)
    assert len(held) == len(set(held)) == 14, f"{len(held)} images, {len(set(held))} contents: no content twice"
    assert daemon.running and daemon.output().count(SAID) == 1, daemon.output()[-3000:]
    assert "sync failed" not in daemon.output(), daemon.output()[-3000:]
    assert daemon.stop() is None


def test_a_lock_file_deleted_under_the_daemon_is_taken_again(daemon_env: Env, start_here: StartHere) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "a.png", image())
    daemon = start_here(FAST)
    lock = StateLock(daemon_env.state_path)

    lock.path.unlink()

    wait_until(lambda: lock.holder() == os.getpid(), timeout=30, what="the daemon locks the new lock file")
    assert f"the lock file {lock.path} {SAID}; locking it again" in daemon.output()
    write(folder / "b.png", image())
    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] == 2, timeout=30, what="b.png synced")
    assert daemon.running and daemon.output().count(SAID) == 1, daemon.output()[-3000:]
    assert daemon.stop() is None


def test_a_state_deleted_while_an_astria_pack_syncs_beside_the_rounds_keeps_the_daemon_running(
        daemon_env: Env, start_here: StartHere) -> None:
    """An Astria mapping syncs in a task beside the loop. When the state goes under it, the loop starts a
    new one: the sync beside it must not go on with the state (and the sources) the loop has closed."""
    from test_astria import astria_pack

    env = daemon_env
    env.genviral["timeout_s"] = 0.5  # a trickling head is given up after 2 s
    env.sandbox.faults.trickle_s = 0.1
    pack_id, _urls = astria_pack(env, {"woman": 1})
    label = env.map_astria(pack_id, pack="Headshots")
    folder = env.map("photos", pack="Photos")
    write(folder / "a.png", image())
    daemon = start_here(FAST)
    wait_until(lambda: len(env.pack_named("Headshots")["images"]) == 1, timeout=30, what="the Astria pack synced")
    reads = env.sandbox.calls[("GET", "astria:/p/{id}")]
    env.sandbox.inject("trickle-head", "GET", "astria:/p/{id}", count=1)
    daemon._loop.call_soon_threadsafe(daemon.daemon.status.sync_now, label)
    wait_until(lambda: env.sandbox.calls[("GET", "astria:/p/{id}")] > reads, timeout=10, what="the pack read again")

    remove_state(env)

    wait_until(lambda: SAID in daemon.output(), timeout=30, what="the deleted state is said")
    later = image()
    write(folder / "later.png", later)
    wait_until(lambda: len(env.pack_named("Photos")["images"]) == 2 or not daemon.running, timeout=30,
               what="a later file synced")
    wait_until(lambda: not daemon.daemon.rounds.remote or not daemon.running, timeout=30,
               what="the Astria sync ended")
    assert daemon.running, f"the daemon ended: {daemon.error!r}\n{daemon.output()[-3000:]}"
    assert "Traceback" not in daemon.output() and "sync failed" not in daemon.output(), daemon.output()[-3000:]
    assert len(env.pack_named("Headshots")["images"]) == 1, "adopted by the new state, not added again"
    assert daemon.stop() is None
