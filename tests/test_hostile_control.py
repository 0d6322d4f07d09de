"""The control point attacked: commands racing the daemon, killed clients and daemons, bad names, a hostile
peer on the socket, a server that echoes the key.

A real ``packsync daemon`` process, the real commands in child processes, the sandbox over HTTP; the
sandbox's latency keeps a sync in flight long enough to act on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TOKEN, Env, image, write
from helpers import StartDaemon, state_rows, wait_until
from test_control import withheld

from packsync.control import socket_path
from packsync.sandbox.server import Reply


def background(env: Env, *args: str) -> subprocess.Popen[str]:
    """The real ``packsync`` command, started and left running."""
    environ = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
    environ["GENVIRAL_TOKEN"] = TOKEN
    return subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), *args], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ended(process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def images_in(env: Env, pack_id: str) -> list[str]:
    return [image["url"] for image in env.pack(pack_id)["images"]]


def adds(env: Env) -> int:
    return env.sandbox.calls[("POST", "/packs/{id}/images")]


def a_mapping_of(env: Env, name: str, files: int, **options: object) -> tuple[Path, str]:
    pack_id = env.sandbox.create_pack(name)
    folder = env.map(name, pack_id=pack_id, **options)
    for n in range(files):
        write(folder / f"{n:02}.png", image())
    return folder, pack_id


def connections(path: Path) -> int:
    """How many clients are connected to the daemon's control socket now (the kernel's table of them)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[5:6] in (["02"], ["03"]) and line.endswith(" " + str(path)))


def hold_adds(env: Env) -> threading.Event:
    """Hold every answer to an image's add (done, unanswered) until the event returned is set: a sync in flight
    for as long as a test needs it."""
    release = threading.Event()

    def held(reply: Reply) -> Reply:
        release.wait(60)
        return reply

    env.sandbox.rewrite("POST", "/packs/{id}/images", held)
    return release


def asked_under_way(env: Env, folder: Path, files: int,
                    *commands: tuple[str, ...]) -> tuple[list[subprocess.Popen[str]], threading.Event]:
    """``files`` new files in ``folder`` and ``commands`` asked of the daemon, once every one is connected and
    a sync is under way, its adds held back until the event returned is set."""
    release = hold_adds(env)
    for n in range(files):
        write(folder / f"new{n:02}.png", image())
    path = socket_path(env.state_path)
    asking = connections(path)
    asked = [background(env, *command) for command in commands]
    wait_until(lambda: connections(path) >= asking + len(commands) and adds(env) >= 1, timeout=30,
               what="every command asked, a sync under way")
    return asked, release


# -- killed clients, killed daemons, several clients at once -------------------------------------------


def test_a_run_whose_client_is_killed_leaves_the_daemon_to_finish_record_and_answer(
        daemon_env: Env, start: StartDaemon) -> None:
    folder, pack_id = a_mapping_of(daemon_env, "pics", 1)
    start()
    (run,), release = asked_under_way(daemon_env, folder, 20, ("run", "--no-wait"))
    run.kill()
    run.wait()
    release.set()

    wait_until(lambda: len(images_in(daemon_env, pack_id)) == 21, timeout=60, what="the sync finished")
    synced = daemon_env.cli("sync", "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert json.loads(synced.stdout)["exit_code"] == 0
    urls = images_in(daemon_env, pack_id)
    assert len(urls) == 21 == len(set(urls))
    assert state_rows(daemon_env.state_path, "SELECT count(*) FROM images") == [(21,)]


def test_several_runs_at_once_are_each_answered_with_nothing_added_twice(daemon_env: Env,
                                                                         start: StartDaemon) -> None:
    folder, pack_id = a_mapping_of(daemon_env, "pics", 1)
    start()
    for n in range(15):
        write(folder / f"new{n:02}.png", image())
    runs = [background(daemon_env, "run", "--no-wait", "--json") for _ in range(4)]
    results = [ended(run) for run in runs]

    for code, out, err in results:
        assert code == 0, out + err
        assert json.loads(out)["exit_code"] == 0
    urls = images_in(daemon_env, pack_id)
    assert len(urls) == 16 == len(set(urls)), "an image was added twice"


def test_a_daemon_stopped_while_runs_wait_on_it_ends_each_never_hanging(daemon_env: Env, start: StartDaemon) -> None:
    """One run's sync in flight, one asked for behind it: SIGTERM ends the daemon at once, the run in flight with
    its result (the sync ends within the stop's grace) or a sentence, the one behind it with a sentence and a
    non-zero code."""
    folder, _pack_id = a_mapping_of(daemon_env, "pics", 1)
    daemon = start()
    (first, queued), release = asked_under_way(daemon_env, folder, 5, ("run", "--no-wait"), ("sync", "pics"))
    begun = time.monotonic()

    try:
        assert daemon.stop(timeout=90) == 0
    finally:
        release.set()
    stop_took = time.monotonic() - begun
    code, out, err = ended(queued, timeout=30)
    assert code != 0 and err.startswith("packsync: ") and "Traceback" not in err, out + err
    code, out, err = ended(first, timeout=30)
    assert code == 0 or err.startswith("packsync: ") and "Traceback" not in err, out + err
    assert stop_took < 15, f"the daemon took {stop_took:.0f} s to stop with a request waiting"


def test_sighup_removing_a_mapping_while_a_sync_of_it_waits_says_so(daemon_env: Env, start: StartDaemon) -> None:
    busy, _busy_pack = a_mapping_of(daemon_env, "busy", 1)
    _gone, gone_pack = a_mapping_of(daemon_env, "gone", 1)
    daemon = start()
    (first, waiting), release = asked_under_way(daemon_env, busy, 1, ("sync", "busy"), ("sync", "gone"))
    daemon_env.mappings.pop()
    daemon_env.write_config()
    daemon.proc.send_signal(signal.SIGHUP)
    release.set()

    code, out, err = ended(waiting)
    assert ended(first)[0] == 0
    assert code != 0, f"a sync of a mapping the daemon no longer has succeeded: {out!r} {err!r}"
    assert "no longer syncs" in err and "gone" in err and "Traceback" not in err, out + err
    assert len(images_in(daemon_env, gone_pack)) == 1


def test_commands_answered_by_the_daemon_print_its_answer_and_no_log_line(daemon_env: Env,
                                                                           start: StartDaemon) -> None:
    daemon_env.map("pics", pack="P")
    start()
    for command in (("pause", "pics"), ("resume",), ("sync", "pics"), ("run", "--no-wait"), ("ui",)):
        answered = daemon_env.cli(*command)
        assert answered.returncode == 0 and answered.stdout, answered.stderr
        assert answered.stderr == "", (command, answered.stderr)


# -- the socket's file, and what is left of a killed daemon ----------------------------------------------


def test_a_directory_where_the_socket_goes_stops_the_daemon_with_a_sentence(daemon_env: Env) -> None:
    daemon_env.map("pics", pack="P")
    daemon_env.state_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path(daemon_env.state_path).mkdir()
    started = daemon_env.cli("daemon", timeout=60)
    assert started.returncode != 0
    assert "control socket" in started.stderr and "Traceback" not in started.stderr, started.stderr


def test_a_file_or_link_where_the_socket_goes_is_replaced_and_a_link_s_target_kept(
        daemon_env: Env, start: StartDaemon, tmp_path: Path) -> None:
    daemon_env.map("pics", pack="P")
    daemon_env.state_path.parent.mkdir(parents=True, exist_ok=True)
    target = write(tmp_path / "precious.txt", b"keep me")
    socket_path(daemon_env.state_path).symlink_to(target)
    daemon = start()
    assert target.read_bytes() == b"keep me"
    assert daemon_env.cli("pause", "pics").returncode == 0
    daemon.close()
    (daemon_env.root / "notify.sock").unlink()
    socket_path(daemon_env.state_path).write_text("left here")
    start()
    assert daemon_env.cli("resume", "pics").returncode == 0


def test_a_stale_socket_while_a_run_holds_the_lock_names_the_run(daemon_env: Env) -> None:
    folder, _pack_id = a_mapping_of(daemon_env, "pics", 40)
    daemon_env.state_path.parent.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path(daemon_env.state_path)))  # bound, never listened on, closed: a killed daemon's
    stale.close()
    release = hold_adds(daemon_env)
    run = background(daemon_env, "run", "--no-wait")
    wait_until(lambda: adds(daemon_env) >= 1, timeout=30, what="the run under way")

    for command in (("sync",), ("pause", "pics"), ("run", "--no-wait")):
        other = daemon_env.cli(*command, timeout=30)
        assert other.returncode != 0
        assert f"pid {run.pid}" in other.stderr and "Traceback" not in other.stderr, other.stdout + other.stderr
    assert run.poll() is None, "the run ended before the others asked"
    release.set()
    assert ended(run)[0] == 0
    assert state_rows(daemon_env.state_path, "SELECT count(*) FROM mappings WHERE paused IS NOT NULL") == [(0,)]
    del folder


# -- a hostile peer on the socket ----------------------------------------------------------------------


def raw(path: Path, data: bytes, read: bool = True) -> bytes:
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(10)
    client.connect(str(path))
    try:
        client.sendall(data)
    except OSError:
        pass
    answer = b""
    while read:
        try:
            chunk = client.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    client.close()
    return answer


def test_garbage_huge_headers_a_body_and_a_slowloris_leave_the_daemon_serving(daemon_env: Env,
                                                                            start: StartDaemon) -> None:
    folder, pack_id = a_mapping_of(daemon_env, "pics", 2)
    daemon = start()
    path = socket_path(daemon_env.state_path)
    slowloris = socket.socket(socket.AF_UNIX)
    slowloris.connect(str(path))
    slowloris.sendall(b"POST /pause HTTP/1.1\r\nHost: packsync\r\nX-")

    assert raw(path, b"\x00\xff garbage \r\n\r\n").split(b"\r\n")[0].endswith(b" 400 Bad Request")
    huge = raw(path, b"GET / HTTP/1.1\r\nHost: p\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert huge.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    body = b"x" * 1_000_000
    answer = raw(path, b"POST /resume HTTP/1.1\r\nHost: p\r\nConnection: close\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 413")), answer[:200]
    unreadable_wait = raw(path, b"POST /sync?wait=soon HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert unreadable_wait.startswith(b"HTTP/1.1 400"), unreadable_wait[:200]

    paused = daemon_env.cli("pause", "pics", timeout=30)
    assert paused.returncode == 0, paused.stderr
    assert daemon_env.cli("resume", "pics", timeout=30).returncode == 0
    write(folder / "late.png", image())
    assert daemon_env.cli("sync", "pics", timeout=30).returncode == 0
    assert len(images_in(daemon_env, pack_id)) == 3
    assert daemon.proc.poll() is None
    slowloris.close()


def test_a_raw_client_s_unreadable_allowance_lifts_no_safety_stop(daemon_env: Env, start: StartDaemon) -> None:
    folder, pack_id = a_mapping_of(daemon_env, "pics", 3, max_delete=1)
    start()
    wait_until(lambda: len(images_in(daemon_env, pack_id)) == 3, timeout=30)
    (folder / "00.png").unlink()
    (folder / "01.png").unlink()
    wait_until(lambda: state_rows(daemon_env.state_path, "SELECT withheld_count FROM mappings WHERE root = ?",
                                  str(folder)) == [(2,)], timeout=30, what="the safety stop")
    query = f"mapping={folder}&allow={folder}=lots".replace("/", "%2F")
    answer = raw(socket_path(daemon_env.state_path),
                 f"POST /sync?{query} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 4"), answer[:300]
    assert len(images_in(daemon_env, pack_id)) == 3, "an allowance packsync never sends deleted the images"


# -- names ------------------------------------------------------------------------------------------


def test_a_pack_named_exactly_is_chosen_over_one_differing_in_case(env: Env) -> None:
    env.map("one", pack="Shots")
    two = env.map("two", pack="shots")
    paused = env.cli("pause", "shots")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.splitlines()[0] == f"paused  {two}"


@pytest.mark.parametrize(("name", "said"), [
    ("", "is no mapping"), ("..", "is no mapping"), ("pics", "names 2 mappings"), ("SHARED", "names 2 mappings"),
    ("astria:999", "is no mapping")])
def test_bad_mapping_names_get_a_sentence(env: Env, name: str, said: str) -> None:
    env.map("a/pics", pack="Shared")
    env.map("b/pics", pack="shared")
    for command in (("pause", name), ("sync", name), ("run", "--force", name), ("allow-deletes", name)):
        answered = env.cli(*command)
        assert answered.returncode == 2, (command, answered.stdout, answered.stderr)
        assert said in answered.stderr and "Traceback" not in answered.stderr


def test_names_with_spaces_and_astria_labels_are_found(env: Env) -> None:
    spaced = env.map("my pics", pack="Product Shots")
    label = env.map_astria(1, pack="From Astria")
    for name, chosen in ((str(spaced), spaced), ("my pics", spaced), ("product shots", spaced),
                         (label, label), (str(spaced) + "/", spaced)):
        paused = env.cli("pause", name)
        assert paused.returncode == 0 and paused.stdout.splitlines()[0] == f"paused  {chosen}", (name, paused)


# -- the key ---------------------------------------------------------------------------------------


def test_a_key_the_server_echoes_is_in_no_answer_of_the_daemon_nor_the_command(daemon_env: Env,
                                                                              start: StartDaemon) -> None:
    folder, pack_id = a_mapping_of(daemon_env, "pics", 1)
    start()
    echoed = json.dumps({"ok": False, "code": 422, "message": f"bad image; you sent {TOKEN} (Bearer {TOKEN})"})
    daemon_env.sandbox.rewrite("GET", "/packs/{id}", lambda _reply: Reply(422, echoed.encode()))
    write(folder / "new.png", image())
    for args in (("sync", "pics"), ("sync", "--json"), ("run", "--no-wait"), ("run", "--no-wait", "--json")):
        answered = daemon_env.cli(*args)
        assert answered.returncode == 1, answered.stdout + answered.stderr
        assert TOKEN not in answered.stdout + answered.stderr
        assert "s3cr3t" not in answered.stdout + answered.stderr
    path = socket_path(daemon_env.state_path)
    for request in (b"GET / HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
                    b"POST /sync HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"):
        assert b"s3cr3t" not in raw(path, request)
    # A key refused, with the key echoed: the sync fails as a whole, in the daemon's sentence.
    daemon_env.sandbox.clear_faults()
    refused = json.dumps({"ok": False, "code": 401, "message": f"invalid key {TOKEN}"})
    daemon_env.sandbox.rewrite("GET", "/packs/{id}", lambda _reply: Reply(401, refused.encode()))
    answered = daemon_env.cli("sync", "pics")
    assert answered.returncode == 3, answered.stdout + answered.stderr
    assert "s3cr3t" not in answered.stdout + answered.stderr
    del pack_id


# -- approving deletes: one mapping's, never another's ----------------------------------------------------


def test_allow_deletes_of_a_subfolder_s_pack_approves_its_own_and_of_the_parent_every_one(
        daemon_env: Env, start: StartDaemon) -> None:
    root = daemon_env.map("brand", packs_from="subfolders", pack_prefix="Brand ", max_delete=1)
    for sub in ("one", "two", "three"):
        for n in range(3):
            write(root / sub / f"{n}.png", image())
    start()
    packs = {sub: daemon_env.pack_named(f"Brand {sub}")["id"] for sub in ("one", "two", "three")}
    for sub in ("one", "two", "three"):
        for n in range(2):
            (root / sub / f"{n}.png").unlink()
    wait_until(lambda: all(withheld(daemon_env, root / sub) == 2 for sub in packs), timeout=30,
               what="three safety stops")

    one = daemon_env.cli("allow-deletes", "Brand one")
    assert one.returncode == 0 and "2 deleted" in one.stdout, one.stdout + one.stderr
    assert [len(images_in(daemon_env, packs[sub])) for sub in ("one", "two", "three")] == [1, 3, 3]
    assert daemon_env.cli("allow-deletes", str(root / "two")).returncode == 0
    assert [len(images_in(daemon_env, packs[sub])) for sub in ("one", "two", "three")] == [1, 1, 3]
    every = daemon_env.cli("allow-deletes", "brand")
    assert every.returncode == 0, every.stdout + every.stderr
    assert [len(images_in(daemon_env, packs[sub])) for sub in ("one", "two", "three")] == [1, 1, 1]


def test_run_force_naming_a_pack_two_mappings_share_is_refused_and_a_folder_forces_its_own_only(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Shared")  # (one by its id, the other by its name)
    first, second = env.map("first", pack_id=pack_id, max_delete=1), env.map("second", pack="Shared", max_delete=1)
    for folder in (first, second):
        for n in range(3):
            write(folder / f"{n}.png", image())
    env.sync()
    for folder in (first, second):
        (folder / "0.png").unlink()
        (folder / "1.png").unlink()

    for name in ("Shared", "shared"):
        refused = env.cli("run", "--no-wait", "--force", name)
        assert refused.returncode == 2 and "names 2 mappings" in refused.stderr, refused.stderr
    assert len(images_in(env, pack_id)) == 6
    forced = env.cli("run", "--no-wait", "--force", str(first))
    assert forced.returncode == 4, forced.stdout + forced.stderr
    assert len(images_in(env, pack_id)) == 4
    assert withheld(env, first) is None and withheld(env, second) == 2


# -- pause and resume at odd moments ---------------------------------------------------------------------


def test_a_pause_during_a_sync_in_flight_is_answered_at_once_and_holds_after_it(daemon_env: Env,
                                                                              start: StartDaemon) -> None:
    folder, pack_id = a_mapping_of(daemon_env, "pics", 1)
    start()
    (run,), release = asked_under_way(daemon_env, folder, 30, ("run", "--no-wait"))

    try:
        paused = daemon_env.cli("pause", "pics", timeout=30)
        assert paused.returncode == 0 and run.poll() is None, paused.stderr
    finally:
        release.set()
    assert ended(run)[0] == 0
    write(folder / "after.png", image())
    synced = daemon_env.cli("sync", "--json")
    assert json.loads(synced.stdout)["paused"] == [str(folder)]
    assert "after.png" not in {image.get("file_name") for image in daemon_env.pack(pack_id)["images"]}
    assert len(images_in(daemon_env, pack_id)) == 31


def test_resume_with_nothing_paused_changes_nothing(env: Env, daemon_env: Env, start: StartDaemon) -> None:
    root = daemon_env.map("brand", packs_from="subfolders")
    write(root / "one" / "a.png", image())
    plain, _pack = a_mapping_of(daemon_env, "plain", 1)
    env.sync()
    before = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"]
    alone = env.cli("resume")
    assert alone.returncode == 0, alone.stderr
    assert json.loads(env.cli("status", "--json", token=None).stdout)["mappings"] == before
    start()
    through = daemon_env.cli("resume")
    assert through.returncode == 0, through.stderr
    assert state_rows(env.state_path, "SELECT count(*) FROM mappings WHERE paused IS NOT NULL") == [(0,)]
    after = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"]
    assert [(m["path"], m["paused"]) for m in after] == [(m["path"], m["paused"]) for m in before]
    del plain


def test_a_daemon_killed_while_a_run_waits_ends_the_run_and_the_next_acts_alone(daemon_env: Env,
                                                                              start: StartDaemon) -> None:
    folder, pack_id = a_mapping_of(daemon_env, "pics", 1)
    daemon = start()
    (run,), release = asked_under_way(daemon_env, folder, 30, ("run", "--no-wait"))
    daemon.proc.kill()
    daemon.proc.wait()
    release.set()  # (the adds in flight were made: the next run finds them, never adds them again)

    code, out, err = ended(run, timeout=30)
    assert code != 0 and err.startswith("packsync: ") and "Traceback" not in err, out + err
    again = daemon_env.cli("run", "--no-wait")
    assert again.returncode == 0, again.stdout + again.stderr
    urls = images_in(daemon_env, pack_id)
    assert len(urls) == 31 == len(set(urls))


def test_allow_deletes_racing_a_new_delete_through_the_daemon_deletes_nothing(daemon_env: Env,
                                                                            start: StartDaemon) -> None:
    """The approval is asked for while another sync holds the daemon; a file goes before it runs: the stop
    stands, now withholding three, and nothing is deleted."""
    folder, pack_id = a_mapping_of(daemon_env, "pics", 3, max_delete=1)
    busy, _busy_pack = a_mapping_of(daemon_env, "busy", 1)
    start()
    (folder / "00.png").unlink()
    (folder / "01.png").unlink()
    wait_until(lambda: withheld(daemon_env, folder) == 2, timeout=30, what="the safety stop")
    release = hold_adds(daemon_env)
    path = socket_path(daemon_env.state_path)
    asking = connections(path)
    write(busy / "new.png", image())
    holding = background(daemon_env, "sync", "busy")
    wait_until(lambda: connections(path) > asking and adds(daemon_env) >= 1, timeout=30,
               what="the busy sync asked for, a sync in flight")
    approving = background(daemon_env, "allow-deletes", "pics")
    wait_until(lambda: connections(path) > asking + 1, timeout=30, what="the approval asked for")
    (folder / "02.png").unlink()
    release.set()

    code, out, err = ended(approving)
    assert code == 4, out + err
    assert ended(holding)[0] == 0
    assert len(images_in(daemon_env, pack_id)) == 3, "a delete never approved was made"
    assert withheld(daemon_env, folder) == 3
