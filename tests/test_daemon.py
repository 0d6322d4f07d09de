"""`packsync daemon` as a real process: real folders watched, the sandbox over HTTP, a test NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKEN, Env, image, write
from helpers import StartDaemon, state_rows, wait_until

from packsync.errors import ExitCode
from packsync.sandbox.imaging import solid_png


def images(env: Env, pack_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = env.pack(pack_id)["images"]
    return listed


def test_ready_and_watchdog_reach_systemd_and_sigterm_exits_0_quickly(daemon_env: Env, start: StartDaemon) -> None:
    daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("p"))
    daemon = start()

    wait_until(lambda: daemon.received("WATCHDOG=1"), timeout=5)
    assert daemon.received("STATUS=")
    began = time.monotonic()
    code = daemon.stop()

    assert code == 0, daemon.output()
    assert time.monotonic() - began < 10
    assert daemon.received("STOPPING=1")


def test_dropped_file_appears_in_its_pack_and_deleted_file_disappears(daemon_env: Env, start: StartDaemon) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "existing.png", image())
    start()
    assert len(images(daemon_env, pack_id)) == 1

    dropped = write(folder / "new.png", image())
    wait_until(lambda: len(images(daemon_env, pack_id)) == 2, timeout=10)
    assert dropped.read_bytes() in daemon_env.cdn_bytes(pack_id)

    dropped.unlink()
    wait_until(lambda: len(images(daemon_env, pack_id)) == 1, timeout=10)
    assert daemon_env.cdn_bytes(pack_id) == [(folder / "existing.png").read_bytes()]


def test_file_written_slowly_is_uploaded_once_in_its_final_form(daemon_env: Env, start: StartDaemon) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    start()
    data = solid_png(300, 300, (10, 200, 30))
    chunks = [data[i:i + len(data) // 8 + 1] for i in range(0, len(data), len(data) // 8 + 1)]

    with (folder / "slow.png").open("wb") as handle:
        for chunk in chunks:  # about 3 s in all, each pause longer than the debounce
            handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
            time.sleep(0.4)

    wait_until(lambda: len(images(daemon_env, pack_id)) == 1, timeout=10)
    assert daemon_env.cdn_bytes(pack_id) == [data]
    assert daemon_env.sandbox.calls[("PUT", "storage")] == 1


def test_burst_of_500_files_is_one_plan_with_bounded_api_calls(daemon_env: Env, start: StartDaemon) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "seed.png", image())
    start()
    daemon_env.sandbox.reset_calls()
    staging = daemon_env.folder("staging")
    for i in range(500):
        write(staging / f"{i:03}.png", solid_png(4, 4, (i % 256, i // 256, 7)))

    for path in sorted(staging.iterdir()):
        path.rename(folder / path.name)

    wait_until(lambda: len(images(daemon_env, pack_id)) == 501, timeout=60)
    calls = daemon_env.sandbox.calls
    assert calls[("POST", "/files")] == calls[("PUT", "storage")] == calls[("POST", "/packs/{id}/images")] == 500
    # One pack read per sync round, plus metadata polls: a handful, not one per file.
    assert calls[("GET", "/packs/{id}")] <= 20, calls


def test_new_subfolder_filled_at_once_is_fully_synced(daemon_env: Env, start: StartDaemon) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "seed.png", image())
    start()

    outside = daemon_env.folder("prepared")
    for i in range(10):
        write(outside / "nested" / f"{i}.png", image())
    outside.rename(folder / "moved-in")                      # a whole tree moved in
    for i in range(10):
        write(folder / "made-here" / "deep" / f"{i}.png", image())  # created and filled at once

    wait_until(lambda: len(images(daemon_env, pack_id)) == 21, timeout=15)


def test_sighup_picks_up_a_new_mapping(daemon_env: Env, start: StartDaemon) -> None:
    first = daemon_env.sandbox.create_pack("first")
    write(daemon_env.map("one", pack_id=first) / "a.png", image())
    daemon = start()
    second = daemon_env.sandbox.create_pack("second")
    later = write(daemon_env.map("two", pack_id=second) / "b.png", image())
    daemon.proc.send_signal(signal.SIGHUP)

    wait_until(lambda: len(images(daemon_env, second)) == 1, timeout=15)
    assert daemon_env.cdn_bytes(second) == [later.read_bytes()]
    fresh = write(daemon_env.root / "two" / "c.png", image())  # and the new folder is watched
    wait_until(lambda: len(images(daemon_env, second)) == 2, timeout=10)
    assert fresh.read_bytes() in daemon_env.cdn_bytes(second)


def test_a_second_daemon_is_refused_with_the_running_pid_and_run_is_answered_by_the_first(
        daemon_env: Env, start: StartDaemon) -> None:
    folder = daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("p"))
    daemon = start()

    second = daemon_env.cli("daemon", timeout=30)
    one_shot = daemon_env.cli("run", "--no-wait", timeout=30)

    assert second.returncode == ExitCode.USAGE and f"pid {daemon.proc.pid}" in second.stderr
    assert one_shot.returncode == ExitCode.OK, one_shot.stderr
    assert str(folder) in one_shot.stdout and "0 added, 0 deleted, 0 skipped, 0 failed" in one_shot.stdout


def test_status_shows_the_running_daemon(daemon_env: Env, start: StartDaemon) -> None:
    daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("p"))
    daemon = start()

    doc = json.loads(daemon_env.cli("status", "--json", token=None).stdout)

    assert doc["daemon"]["running"] is True
    assert doc["daemon"]["pid"] == daemon.proc.pid
    assert doc["daemon"]["last_full_scan"] is not None
    daemon.stop()
    after = json.loads(daemon_env.cli("status", "--json", token=None).stdout)
    assert after["daemon"]["running"] is False


def test_polling_mode_sees_changes(daemon_env: Env, start: StartDaemon) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id, polling=True)
    write(folder / "seed.png", image())
    start()

    write(folder / "polled.png", image())

    wait_until(lambda: len(images(daemon_env, pack_id)) == 2, timeout=15)


def test_revoked_key_pauses_instead_of_dying(daemon_env: Env, start: StartDaemon) -> None:
    from packsync.sandbox import Account

    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "seed.png", image())
    daemon = start()
    daemon_env.sandbox.accounts[TOKEN] = Account(scope="ws-1", status=401)

    write(folder / "while-revoked.png", image())

    def paused() -> bool:
        doc = json.loads(daemon_env.cli("status", "--json", token=None).stdout)
        state: str = doc["daemon"]["state"]
        return state == "paused"

    wait_until(paused, timeout=15, interval=0.3)
    assert daemon.proc.poll() is None
    assert "invalid or revoked" in daemon.output()
    assert len(images(daemon_env, pack_id)) == 1

    daemon_env.sandbox.accounts[TOKEN] = Account(scope="ws-1")   # the user renews the key...
    daemon.proc.send_signal(signal.SIGHUP)                       # ...and tells the daemon
    wait_until(lambda: len(images(daemon_env, pack_id)) == 2, timeout=15)


def test_unit_files_declare_notify_watchdog_and_hardening() -> None:
    units = Path(__file__).resolve().parents[1] / "systemd"
    user = (units / "packsync.service").read_text()
    system = (units / "packsync@.service").read_text()
    for unit in (user, system):
        for line in ("Type=notify", "Restart=on-failure", "Environment=PYTHONUNBUFFERED=1", "WatchdogSec=",
                     "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes"):
            assert line in unit
        assert "\nMemoryDenyWriteExecute" not in unit
    for line in ("ProtectSystem=strict", "ReadWritePaths=/var/lib/packsync/%i", "ReadOnlyPaths=", "User=packsync"):
        assert line in system


@pytest.mark.skipif(not Path("/usr/bin/systemd-analyze").exists(), reason="systemd-analyze is not installed")
def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = Path(__file__).resolve().parents[1] / "systemd"
    executable = Path(sys.executable).with_name("packsync")
    for name, target in (("packsync.service", "packsync.service"), ("packsync@.service", "packsync@check.service")):
        text = (units / name).read_text()
        for path in ("%h/.local/bin/packsync", "/usr/local/bin/packsync"):
            text = text.replace(path, str(executable))
        (tmp_path / target).write_text(text)
        result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / target)], capture_output=True,
                                text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)})
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_out_of_inotify_instances_says_so_once_and_polls_instead(daemon_env: Env, start: StartDaemon) -> None:
    """With every inotify instance of the user taken, the daemon names the sysctl and polls."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    try:
        while len(held) < 4096:
            fd = libc.inotify_init()
            if fd < 0:
                assert ctypes.get_errno() == errno.EMFILE
                break
            held.append(fd)
        else:
            pytest.skip("could not exhaust inotify instances")
        pack_id = daemon_env.sandbox.create_pack("p")
        folder = daemon_env.map("pics", pack_id=pack_id)
        write(folder / "seed.png", image())
        daemon = start()

        write(folder / "polled.png", image())
        wait_until(lambda: len(images(daemon_env, pack_id)) == 2, timeout=20)
    finally:
        for fd in held:
            os.close(fd)
    log = daemon.output()
    assert log.count("inotify limit reached") == 1
    assert "sudo sysctl fs.inotify.max_user_instances=" in log and '"polling"' in log


def test_a_state_found_corrupt_mid_run_ends_the_daemon_in_its_sentence_with_the_state_closed(
        daemon_env: Env, start: StartDaemon) -> None:
    """A corrupt state never passes: the daemon says so and exits 2, as at start, having run its way out to
    the end (the state closed, then "daemon stopped" logged)."""
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    daemon = start()
    with closing(sqlite3.connect(daemon_env.state_path)) as other:
        other.execute("DROP TABLE daemon")
        other.commit()

    write(folder / "new.png", image())

    wait_until(lambda: daemon.proc.poll() is not None, timeout=20, what="the daemon exits")
    log = daemon.output()
    assert daemon.proc.returncode == ExitCode.USAGE, log[-2000:]
    assert "is corrupt (no such table: daemon)" in log and "Traceback" not in log
    assert '"daemon stopped"' in log, "the way out stopped half-way, the state left open"


def test_a_safety_stop_the_daemon_records_is_seen_by_another_process_reading_all_along(
        daemon_env: Env, start: StartDaemon) -> None:
    """Another program reading the state while the daemon runs (``status``, a sqlite3 shell; each read on a
    connection of its own, closed after it) sees every sync the daemon records, however early and often it
    reads: its reads never take the daemon's write-ahead log away from it. (The daemon opens the page's
    read-only connections beside its writer; opening the file by any other means than SQLite's there once
    dropped the writer's locks, and the next reader to close took itself for the file's last user.)"""
    roots = []
    for name in ("alpha", "beta"):
        folder = daemon_env.map(name, pack_id=daemon_env.sandbox.create_pack(name), max_delete=1)
        roots.append(str(folder))
        for n in range(3):
            write(folder / f"{n}.png", image())
    start()
    synced = "SELECT root, synced_at FROM mappings WHERE synced_at IS NOT NULL ORDER BY root"
    first = dict(wait_until(lambda: len(rows := state_rows(daemon_env.state_path, synced)) == 2 and rows,
                            timeout=30, what="both first syncs seen by another process"))

    for root in roots:
        for n in (0, 1):
            (Path(root) / f"{n}.png").unlink()

    stopped = "SELECT root, synced_at, withheld FROM mappings WHERE safety IS NOT NULL ORDER BY root"
    rows = wait_until(lambda: len(found := state_rows(daemon_env.state_path, stopped)) == 2 and found,
                      timeout=20, what="both safety stops seen by another process")
    assert [(root, sorted(json.loads(withheld))) for root, _, withheld in rows] == [
        (root, ["0.png", "1.png"]) for root in sorted(roots)]
    assert all(synced_at > first[root] for root, synced_at, _ in rows)


def test_each_state_trouble_is_said_once_by_its_reason_not_its_text(tmp_path: Path) -> None:
    """Decided on the error's ``reason``: the same trouble in other words is not news; another one is."""
    import asyncio

    from structlog.testing import capture_logs

    from packsync.config import parse_config
    from packsync.daemon.aggregator import Aggregator
    from packsync.daemon.schedule import Schedule
    from packsync.daemon.status import Status
    from packsync.daemon.systemd import Systemd
    from packsync.daemon.timing import PRODUCT
    from packsync.errors import StateUnavailable

    config = parse_config({"genviral": {"base_url": "http://127.0.0.1:9"}, "state": {"path": str(tmp_path / "s.db")},
                           "mappings": [{"path": str(tmp_path), "pack": "p"}]}, source=tmp_path / "config.toml")
    status = Status(Schedule(config, PRODUCT, Aggregator(1.0)), Systemd(), asyncio.Event())

    with capture_logs() as logs:
        status.state_unusable(StateUnavailable("the state database is locked by a backup tool.", reason="locked"))
        status.state_unusable(StateUnavailable("the state database is locked by a sqlite3 shell.", reason="locked"))
        status.state_unusable(StateUnavailable("no space left on the device.", reason="full"))
        status.state_usable()

    assert [entry["event"].split(".")[0] for entry in logs] == [
        "the state database is locked by a backup tool", "no space left on the device",
        "the state database is usable again"]
    assert status.last_error is None


def test_a_replaced_transport_is_let_go_once_closed() -> None:
    """A reload's old transport closes once nothing uses it, and is then no longer held."""
    import asyncio

    from packsync.daemon.reload import Retiring
    from packsync.remote.transport import Transport

    async def reload_twice() -> tuple[int, int]:
        retiring = Retiring()
        retiring.add(Transport())
        retiring.add(Transport())
        waiting = len(retiring)
        for _ in range(10):
            await asyncio.sleep(0)
        return waiting, len(retiring)

    assert asyncio.run(reload_twice()) == (2, 0)


def _switches(pid: int) -> dict[str, int]:
    """The context switches (voluntary and not) each thread of ``pid`` made so far, by name and id."""
    made = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines())
        except OSError:
            continue  # (it ended meanwhile)
        switches = int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
        made[f"{name} ({task.name})"] = switches
    return made


def _woken(pid: int, window_s: float) -> dict[str, int]:
    """The threads of ``pid`` that woke during the next ``window_s``, and how often."""
    before = _switches(pid)
    time.sleep(window_s)  # a measurement over a window, not a wait for a condition
    return {name: n - before.get(name, 0) for name, n in _switches(pid).items() if n > before.get(name, 0)}


def _inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd) == "anon_inode:inotify")


def test_twenty_folders_share_one_inotify_instance_and_the_daemon_sleeps_at_rest(daemon_env: Env,
                                                                                 start: StartDaemon) -> None:
    """Watching 20 folders takes one of the user's inotify instances (``fs.inotify.max_user_instances``, 128
    by default) and a thread per folder, not an instance and four threads each; at rest the daemon's
    threads wake at most a few times a second in all (its loop comes round at the watchdog's pace), and a
    file dropped into the last folder still syncs. It runs on the C allocator, which gives back what the
    rounds freed (``PYTHONMALLOC=malloc``, set by the daemon itself)."""
    packs = [daemon_env.sandbox.create_pack(f"p{n}") for n in range(20)]
    folders = [daemon_env.map(f"f{n:02}", pack_id=pack) for n, pack in enumerate(packs)]
    daemon = start()
    pid = daemon.proc.pid
    # At rest once the start-up's last work (its metadata look, the memory given back) is over.
    wait_until(lambda: sum(_woken(pid, 1.0).values()) <= 5, timeout=30, what="the daemon at rest")

    woken = _woken(pid, 5.0)
    threads = len(_switches(pid))
    assert _inotify_instances(pid) == 1, os.listdir(f"/proc/{pid}/fd")
    assert b"PYTHONMALLOC=malloc" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert threads <= len(folders) + 15, f"{threads} threads for {len(folders)} folders (one per folder, a few shared)"
    assert sum(woken.values()) <= 5 * 5.0, f"wakeups in 5 s at rest, by thread: {woken}"
    write(folders[-1] / "late.png", image(seed=7))
    wait_until(lambda: len(images(daemon_env, packs[-1])) == 1, timeout=15, what="the dropped file in the last pack")
