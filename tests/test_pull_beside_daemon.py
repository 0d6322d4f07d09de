"""``packsync pull`` beside a running daemon or ``run``: it takes a lock of its own folder, not the state's.

Each test holds a real process mid-way by holding one kind of the sandbox's answers (``held``): a daemon
or a ``run`` waiting for the answers to its adds is syncing for sure, for as long as the test needs,
without a sleep. What each checks afterwards: the pulled files' exact bytes, the records the pull wrote
(found again by a ``--delete``), and the sync's mirror exact — each image once in its pack, a record of
each file and image in the state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import ASTRIA_TOKEN, TOKEN, Env, image, write
from helpers import StartDaemon, state_rows, wait_until

from packsync.errors import ExitCode
from packsync.sandbox import Sandbox
from packsync.sandbox.server import Reply

ADD = ("POST", "/packs/{id}/images")
CDN = ("GET", "cdn")
LOCK_REFUSAL = "another packsync (pid"


@contextmanager
def held(sandbox: Sandbox, method: str, route: str) -> Iterator[threading.Event]:
    """Answers to (method, route) held back until the event is set (at the latest when the block ends): the
    sandbox has done the work, the client waits for its answer."""
    gate = threading.Event()

    def hold(reply: Reply) -> Reply:
        gate.wait(60)
        return reply

    sandbox.rewrite(method, route, hold)
    try:
        yield gate
    finally:
        gate.set()


def filled_pack(env: Env, count: int, name: str = "Brand") -> tuple[str, dict[str, bytes]]:
    """A pack filled in the web app; its id and each image's bytes by id."""
    pack_id = env.sandbox.create_pack(name)
    contents = {}
    for _ in range(count):
        data = image(12, 12)
        contents[env.sandbox.add_uploaded(pack_id, data, "x.png")] = data
    return pack_id, contents


def contents_of(folder: Path) -> list[bytes]:
    """Every file below ``folder``, hidden ones too (a pull's leftover would be one), sorted by bytes."""
    return sorted(path.read_bytes() for path in folder.rglob("*") if path.is_file())


def mapped(env: Env, count: int) -> tuple[str, Path]:
    """A folder of ``count`` images mapped to a pack of its own."""
    pack_id = env.sandbox.create_pack("Mirror")
    folder = env.map("pics", pack_id=pack_id)
    for i in range(count):
        write(folder / f"{i:02}.png", image())
    return pack_id, folder


def assert_mirror_exact(env: Env, pack_id: str, folder: Path) -> None:
    """The pack holds each file of the folder once, and the state a record of each file and each image."""
    local = contents_of(folder)
    assert sorted(env.cdn_bytes(pack_id)) == local, "each file once in the pack, nothing else"
    assert state_rows(env.state_path, "SELECT count(*) FROM images WHERE pack_id = ?", pack_id) == [(len(local),)]
    assert state_rows(env.state_path, "SELECT count(*) FROM files WHERE root = ? AND sha256 IS NOT NULL",
                      str(folder)) == [(len(local),)]


def pulled_records(env: Env, folder: Path) -> int:
    rows = state_rows(env.state_path, "SELECT count(*) FROM pulled WHERE folder = ?", str(folder))
    return int(rows[0][0])


def test_pulls_from_genviral_and_astria_while_the_daemon_runs(daemon_env: Env, start: StartDaemon) -> None:
    """Failed before pull took a lock of its own: both were refused with the daemon's pid."""
    env = daemon_env
    mirror, folder = mapped(env, 2)
    pack_id, contents = filled_pack(env, 4)
    astria_id = env.sandbox.astria.add_pack("Headshots")
    astria = [("woman", image()), ("woman", image()), ("man", image())]
    for cls, data in astria:
        env.sandbox.astria.add_image(astria_id, cls, data)
    token_file = write(env.root / "astria.key", ASTRIA_TOKEN.encode())
    token_file.chmod(0o600)
    env.astria["token_file"] = str(token_file)
    daemon = start()

    from_genviral = env.cli("pull", "genviral:Brand", str(env.root / "brand"))
    from_astria = env.cli("pull", f"astria:{astria_id}", str(env.root / "headshots"))

    assert from_genviral.returncode == ExitCode.OK, from_genviral.stderr
    assert from_astria.returncode == ExitCode.OK, from_astria.stderr
    assert LOCK_REFUSAL not in from_genviral.stderr + from_astria.stderr
    assert contents_of(env.root / "brand") == sorted(contents.values())
    assert contents_of(env.root / "headshots") == sorted(data for _, data in astria)
    assert {p.name for p in (env.root / "headshots").iterdir()} == {"woman", "man"}
    assert pulled_records(env, env.root / "brand") == 4 and pulled_records(env, env.root / "headshots") == 3
    assert daemon.proc.poll() is None, "the daemon runs on"
    assert_mirror_exact(env, mirror, folder)
    assert pack_id != mirror


def test_a_pull_during_a_daemon_sync_leaves_both_exact(daemon_env: Env, start: StartDaemon) -> None:
    """A pull while the daemon is mid-sync (its adds held): exit 0, exact bytes, its records found by a
    second pull with --delete; the daemon's mirror exact once it is done. Failed before: the lock error."""
    env = daemon_env
    mirror, folder = mapped(env, 1)
    pack_id, contents = filled_pack(env, 5)
    daemon = start()
    out = env.root / "out"

    with held(env.sandbox, *ADD) as gate:
        for i in range(20):
            write(folder / f"new-{i:02}.png", image())
        wait_until(lambda: env.sandbox.calls[ADD] >= 1, timeout=30, what="the daemon adding (syncing)")
        result = env.cli("pull", "genviral:Brand", str(out), "--json")
        still_syncing = '"added": 20' not in daemon.output()  # (said once the sync ends)
        gate.set()

    assert result.returncode == ExitCode.OK, result.stderr
    assert LOCK_REFUSAL not in result.stderr
    assert still_syncing, "the pull ran while the daemon was syncing"
    assert contents_of(out) == sorted(contents.values()), "exact bytes, each once, no leftover"
    assert pulled_records(env, out) == 5
    wait_until(lambda: '"added": 20' in daemon.output(), timeout=60, what="the daemon's sync done")
    assert_mirror_exact(env, mirror, folder)  # (before the page stopped opening the state anew: 1 image of 21)

    gone = next(iter(contents))
    env.sandbox.remove_image(pack_id, gone)
    again = env.cli("pull", "genviral:Brand", str(out), "--delete", "--json")

    assert again.returncode == ExitCode.OK, again.stderr
    summary = json.loads(again.stdout)
    assert len(summary["deleted"]) == 1 and summary["already_here"] == 4, summary
    assert contents_of(out) == sorted(data for image_id, data in contents.items() if image_id != gone)
    assert pulled_records(env, out) == 4
    assert_mirror_exact(env, mirror, folder)


def test_a_run_and_a_pull_under_way_together_each_finish_exact(env: Env) -> None:
    """No daemon: a run started while a pull is under way (its downloads held), then a pull while a run is
    under way (its adds held). Neither is refused, and nothing is lost or doubled."""
    mirror, folder = mapped(env, 3)
    pack_id, contents = filled_pack(env, 4)
    first, second = env.root / "first", env.root / "second"

    with held(env.sandbox, *CDN) as downloads:
        puller = _pull_process(env, "genviral:Brand", first)
        wait_until(lambda: env.sandbox.calls[CDN] >= 1, timeout=30, what="the pull downloading")
        during_pull = env.cli("run", "--no-wait")
        downloads.set()
        puller.wait(60)
    with held(env.sandbox, *ADD) as adds:
        for i in range(5):
            write(folder / f"new-{i}.png", image())
        runner = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "run", "--no-wait"],
                                  env={**os.environ, "GENVIRAL_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        wait_until(lambda: env.sandbox.calls[ADD] >= 1, timeout=30, what="the run adding")
        during_run = env.cli("pull", "genviral:Brand", str(second))
        adds.set()
        _, run_errors = runner.communicate(timeout=60)

    assert during_pull.returncode == ExitCode.OK, during_pull.stderr
    assert puller.returncode == ExitCode.OK
    assert during_run.returncode == ExitCode.OK, during_run.stderr
    assert runner.returncode == ExitCode.OK, run_errors
    for out in (first, second):
        assert contents_of(out) == sorted(contents.values())
        assert pulled_records(env, out) == 4
    assert_mirror_exact(env, mirror, folder)
    assert pack_id != mirror


def test_a_second_pull_into_the_same_folder_is_refused_while_the_first_runs(env: Env) -> None:
    """Two pulls into one folder would each place its own copy of an image: the second is refused at
    once, naming the folder and the first's pid; a pull into another folder meanwhile is not."""
    _, contents = filled_pack(env, 3)
    env.write_config()
    out, elsewhere = env.root / "out", env.root / "elsewhere"

    with held(env.sandbox, *CDN) as downloads:
        first = _pull_process(env, "genviral:Brand", out)
        wait_until(lambda: env.sandbox.calls[CDN] >= 1, timeout=30, what="the first pull downloading")
        refused = env.cli("pull", "genviral:Brand", str(out))
        beside = _pull_process(env, "genviral:Brand", elsewhere)
        wait_until(lambda: env.sandbox.calls[CDN] >= 4, timeout=30, what="the other folder's pull downloading")
        downloads.set()
        assert first.wait(60) == ExitCode.OK
        assert beside.wait(60) == ExitCode.OK

    assert refused.returncode == ExitCode.USAGE, refused.stdout + refused.stderr
    assert f"another packsync pull (pid {first.pid}) is writing into {out}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert contents_of(out) == contents_of(elsewhere) == sorted(contents.values()), "each image once"
    again = env.cli("pull", "genviral:Brand", str(out), "--json")
    assert again.returncode == ExitCode.OK and json.loads(again.stdout)["already_here"] == 3


def _pull_process(env: Env, source: str, folder: Path) -> subprocess.Popen[bytes]:
    """``packsync pull`` started in a process of its own (the test goes on while it runs)."""
    return subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "pull", source,
                             str(folder)], env={**os.environ, "GENVIRAL_TOKEN": TOKEN},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_state_opened_again_in_a_process_keeps_that_process_seen_by_others(env: Env) -> None:
    """The daemon opens its state, then its page opens it again to read: that must not drop the daemon's
    locks on the file, or the next writer beside it to close (a pull) takes the write-ahead log with it,
    and what the daemon writes afterwards goes to a log nobody else reads. Failed before: the row was lost."""
    from packsync.model import UrlContent
    from packsync.state.store import State

    env.state_path.parent.mkdir(parents=True)
    writer = State(env.state_path)
    reader = State(env.state_path, readonly=True)  # as the page's
    try:
        beside = subprocess.run([sys.executable, "-c", (
            "import sys; from pathlib import Path; from packsync.model import UrlContent; "
            "from packsync.state.store import State; state = State(Path(sys.argv[1]), holds_lock=False); "
            "state.uploads.save_url_contents([UrlContent('https://cdn.example/pulled', 'a' * 64, 1)]); "
            "state.close()"), str(env.state_path)], capture_output=True, text=True, timeout=60)
        assert beside.returncode == 0, beside.stderr
        writer.uploads.save_url_contents([UrlContent("https://cdn.example/synced", "b" * 64, 1)])

        seen = state_rows(env.state_path, "SELECT url FROM url_contents ORDER BY url")
    finally:
        reader.close()
        writer.close()
    assert seen == [("https://cdn.example/pulled",), ("https://cdn.example/synced",)]
