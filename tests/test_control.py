"""The running daemon as the control point: commands ask it over its socket, and act alone without one.

A real ``packsync daemon`` process, the real commands in child processes, the sandbox over HTTP: deletes
a safety stop withholds are allowed for one mapping only, a pause holds across a restart, ``run`` and
``sync`` are answered by the daemon, ``ui`` finds its page, and the socket lets no other user in.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import httpx2
import pytest
from conftest import Env, image, write
from helpers import StartDaemon, state_rows, wait_until
from test_web import page_url

from packsync.control import socket_path


def two_mappings(env: Env) -> tuple[tuple[Path, str], tuple[Path, str]]:
    """Two folders of three files, each into a pack of its own, where deleting two files is past ``max_delete``."""
    made = []
    for name in ("alpha", "beta"):
        pack_id = env.sandbox.create_pack(name)
        folder = env.map(name, pack_id=pack_id, max_delete=1)
        for n in range(3):
            write(folder / f"{n}.png", image())
        made.append((folder, pack_id))
    return made[0], made[1]


def images_in(env: Env, pack_id: str) -> int:
    return len(env.pack(pack_id)["images"])


def withheld(env: Env, folder: Path) -> int | None:
    rows = state_rows(env.state_path, "SELECT withheld_count FROM mappings WHERE root = ? AND safety IS NOT NULL",
                      str(folder))
    return rows[0][0] if rows else None


def test_allow_deletes_clears_one_mapping_s_safety_stop_while_the_other_s_stays_withheld(
        daemon_env: Env, start: StartDaemon) -> None:
    (alpha, alpha_pack), (beta, beta_pack) = two_mappings(daemon_env)
    daemon = start()
    wait_until(lambda: images_in(daemon_env, alpha_pack) == images_in(daemon_env, beta_pack) == 3, timeout=30)
    for folder in (alpha, beta):
        (folder / "0.png").unlink()
        (folder / "1.png").unlink()
    wait_until(lambda: withheld(daemon_env, alpha) == withheld(daemon_env, beta) == 2, timeout=30,
               what="both safety stops recorded")
    assert httpx2.get(page_url(daemon) + "healthz").status_code == 503

    allowed = daemon_env.cli("allow-deletes", str(alpha))

    assert allowed.returncode == 0, allowed.stderr + allowed.stdout
    assert "2 deleted" in allowed.stdout and "another packsync" not in allowed.stderr
    assert images_in(daemon_env, alpha_pack) == 1
    assert images_in(daemon_env, beta_pack) == 3, "the other mapping's withheld deletes were made too"
    assert withheld(daemon_env, alpha) is None and withheld(daemon_env, beta) == 2
    health = httpx2.get(page_url(daemon) + "healthz").json()
    assert health["status"] == "failing" and [m["status"] for m in health["mappings"]] == ["ok", "failing"]
    again = daemon_env.cli("allow-deletes", "alpha")  # (by the folder's own name)
    assert again.returncode == 0 and "no deletes are withheld" in again.stdout


def test_allow_deletes_approves_no_more_deletes_than_were_withheld(env: Env) -> None:
    """Acting alone (no daemon): a delete that appeared after the stop stops again, and nothing is deleted."""
    (alpha, alpha_pack), _beta = two_mappings(env)
    env.sync()
    (alpha / "0.png").unlink()
    (alpha / "1.png").unlink()
    assert env.cli("run", "--no-wait").returncode == 4
    assert withheld(env, alpha) == 2
    (alpha / "2.png").unlink()  # one more, never approved

    allowed = env.cli("allow-deletes", str(alpha))

    assert allowed.returncode == 4, allowed.stdout + allowed.stderr
    assert images_in(env, alpha_pack) == 3, "deletes past what was approved were made"
    assert withheld(env, alpha) == 3
    assert env.cli("allow-deletes", str(alpha)).returncode == 0  # now approving the three it withholds
    assert images_in(env, alpha_pack) == 0


def test_run_force_with_a_mapping_forces_that_mapping_only(env: Env) -> None:
    (alpha, alpha_pack), (beta, beta_pack) = two_mappings(env)
    env.sync()
    for folder in (alpha, beta):
        (folder / "0.png").unlink()
        (folder / "1.png").unlink()

    forced = env.cli("run", "--no-wait", "--force", "beta")

    assert forced.returncode == 4, forced.stdout + forced.stderr  # alpha's stop stands
    assert images_in(env, beta_pack) == 1 and images_in(env, alpha_pack) == 3
    assert env.cli("run", "--no-wait", "--force").returncode == 0
    assert images_in(env, alpha_pack) == 1


def test_a_pause_holds_across_a_daemon_restart_and_nothing_is_synced_meanwhile(
        daemon_env: Env, start: StartDaemon) -> None:
    (alpha, alpha_pack), (beta, beta_pack) = two_mappings(daemon_env)
    daemon = start()
    wait_until(lambda: images_in(daemon_env, alpha_pack) == images_in(daemon_env, beta_pack) == 3, timeout=30)

    paused = daemon_env.cli("pause", "alpha")
    assert paused.returncode == 0 and f"paused  {alpha}" in paused.stdout, paused.stdout + paused.stderr
    write(alpha / "new.png", image())
    write(beta / "new.png", image())
    synced = daemon_env.cli("sync", "--json")  # (answered once the daemon's sync of everything ended)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert json.loads(synced.stdout)["paused"] == [str(alpha)]
    assert images_in(daemon_env, beta_pack) == 4 and images_in(daemon_env, alpha_pack) == 3
    assert daemon.stop() == 0
    daemon.close()
    (daemon_env.root / "notify.sock").unlink()

    daemon = start()  # ready: its first full sync is done
    assert images_in(daemon_env, alpha_pack) == 3, "a paused mapping was synced after a restart"
    status = json.loads(daemon_env.cli("status", "--json", token=None).stdout)
    assert [m["paused"] is not None for m in status["mappings"]] == [True, False]
    assert "paused since" in daemon_env.cli("status", token=None).stdout
    health = httpx2.get(page_url(daemon) + "healthz").json()
    assert health["status"] == "degraded" and health["mappings"][0]["status"] == "paused"

    resumed = daemon_env.cli("resume")
    assert resumed.returncode == 0 and f"resumed  {alpha}" in resumed.stdout
    wait_until(lambda: images_in(daemon_env, alpha_pack) == 4, timeout=30, what="the resumed folder synced")
    again = daemon_env.cli("resume")
    assert again.returncode == 0 and again.stdout == "nothing is paused.\n"
    wait_until(lambda: httpx2.get(page_url(daemon) + "healthz").json()["status"] == "ok", timeout=10)


def test_run_while_the_daemon_syncs_is_answered_by_it_with_nothing_twice(daemon_env: Env,
                                                                         start: StartDaemon) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "first.png", image())
    start()
    for n in range(40):
        write(folder / f"{n:02}.png", image())

    ran = daemon_env.cli("run", "--json")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "another packsync" not in ran.stderr
    document = json.loads(ran.stdout)
    assert document["exit_code"] == 0 and document["metadata_pending"] == 0
    urls = [image["url"] for image in daemon_env.pack(pack_id)["images"]]
    assert len(urls) == 41 == len(set(urls)), "an image was added twice"
    recorded = state_rows(daemon_env.state_path, "SELECT count(*), count(DISTINCT sha256) FROM images")
    assert recorded == [(41, 41)]


def test_ui_with_the_daemon_running_names_its_page(daemon_env: Env, start: StartDaemon) -> None:
    daemon_env.map("pics", pack="P")
    daemon = start()
    shown = daemon_env.cli("ui", token=None, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert page_url(daemon) in shown.stdout


def test_commands_act_alone_without_a_daemon(env: Env) -> None:
    (alpha, alpha_pack), _beta = two_mappings(env)
    assert env.cli("pause", str(alpha)).returncode == 0
    ran = env.cli("run", "--no-wait")
    assert ran.returncode == 0 and f"{alpha}: paused" in ran.stdout
    assert images_in(env, alpha_pack) == 0
    assert env.cli("resume", "alpha").returncode == 0
    synced = env.cli("sync", "alpha")
    assert synced.returncode == 0 and "3 added" in synced.stdout
    wrong = env.cli("pause", "nowhere")
    assert wrong.returncode == 2 and "is no mapping of this config" in wrong.stderr


@pytest.mark.skipif(os.getuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="acting as another user needs root and a system python3 (CI has both)")
def test_the_control_socket_lets_no_other_user_in(daemon_env: Env, start: StartDaemon,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The state in a folder any user may pass through (the tests' own temporary folders are root's alone).
    shared = Path(tempfile.mkdtemp(prefix="packsync-control-"))
    shared.chmod(0o711)
    monkeypatch.setattr(Env, "state_path", property(lambda _env: shared / "state" / "state.db"))
    daemon_env.map("pics", pack="P")
    daemon = start()
    path = socket_path(daemon_env.state_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused'); sys.exit()\n"
             "s.sendall(b'POST /pause HTTP/1.1\\r\\nHost: packsync\\r\\nContent-Length: 0\\r\\n\\r\\n')\n"
             "print(s.recv(200).decode().splitlines()[0])\n")
    nobody = 65534

    def as_nobody() -> str:
        return subprocess.run(["/usr/bin/python3", "-c", probe, str(path)], user=nobody, capture_output=True, text=True,
                              timeout=30, cwd="/").stdout.strip()

    path.parent.chmod(0o711)  # (so that only the socket's own mode stands in the way)
    assert as_nobody() == "refused"
    path.chmod(0o666)  # even when its mode would let them in, their credentials do not
    assert as_nobody() == "HTTP/1.1 403 Forbidden"
    assert state_rows(daemon_env.state_path, "SELECT count(*) FROM mappings WHERE paused IS NOT NULL") == [(0,)]
    assert daemon.stop() == 0
    shutil.rmtree(shared)


def test_a_long_state_path_still_has_its_socket(tmp_path: Path, env: Env) -> None:
    """A socket's address holds 107 bytes: a longer state path is reached through its folder."""
    deep = tmp_path / ("d" * 100)
    long_state = deep / "state.db"
    deep.mkdir()
    from packsync.daemon.control import bind

    sock = bind(long_state)
    try:
        assert socket_path(long_state).exists()
        client = socket.socket(socket.AF_UNIX)
        from packsync.control import address

        with address(socket_path(long_state)) as where:
            client.connect(where)
        client.close()
    finally:
        sock.close()


def test_a_paused_folder_of_subfolder_packs_shows_each_pack_paused_and_asks_no_token(
        daemon_env: Env, start: StartDaemon) -> None:
    folder = daemon_env.map("brands", packs_from="subfolders")
    for name in ("acme", "globex"):
        write(folder / name / "logo.png", image())
    daemon = start()

    paused = daemon_env.cli("pause", "brands", token=None)  # the daemon holds the token: none is needed here

    assert paused.returncode == 0, paused.stderr
    assert all(f"paused  {folder / name}" in paused.stdout for name in ("acme", "globex"))
    status = json.loads(daemon_env.cli("status", "--json", token=None).stdout)
    assert [m["paused"] is not None for m in status["mappings"]] == [True, True]
    health = httpx2.get(page_url(daemon) + "healthz").json()
    assert [m["status"] for m in health["mappings"]] == ["paused", "paused"]
    synced = daemon_env.cli("sync", "--json", token=None)
    assert synced.returncode == 0 and json.loads(synced.stdout)["paused"] == [str(folder)]
