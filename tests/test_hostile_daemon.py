"""The daemon under hostile conditions that come after it started: inotify running out of watches, and
clients that open connections to its page and then stall."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import TOKEN, Env, image, write
from helpers import DaemonProcess, wait_until

WATCH_LIMIT = "/proc/sys/user/max_inotify_watches"


def _own_watch_limit_possible() -> bool:
    """Whether a child may run in a user namespace of its own with a lower inotify watch limit."""
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", f"echo 7 > {WATCH_LIMIT}"],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def start_with_watch_limit(env: Env, watches: int) -> DaemonProcess:
    """The real daemon, in a user namespace of its own whose inotify watch limit is ``watches``.

    The limit is the kernel's own, for this child alone: ``/proc/sys/user/max_inotify_watches`` belongs
    to the user namespace, so neither the machine's ``fs.inotify.max_user_watches`` nor tests running
    beside this one are touched (the root user of the namespace is the test's own user).
    """
    env.write_config()
    environ = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
    environ.update(GENVIRAL_TOKEN=TOKEN, WATCHDOG_USEC="2000000")
    argv = ["unshare", "--user", "--map-root-user", "sh", "-c", f'echo {watches} > {WATCH_LIMIT} && exec "$@"', "sh",
            sys.executable, "-m", "packsync", "-c", str(env.config_path), "daemon"]
    daemon = DaemonProcess(argv, environ, env.root)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.close()
        raise
    return daemon


@pytest.mark.skipif(not _own_watch_limit_possible(), reason="no user namespaces here: no inotify limit of a test's own")
def test_inotify_watches_running_out_after_start_are_said_once_and_the_folder_is_polled(daemon_env: Env) -> None:
    """Watched by inotify at start, a folder whose new subfolders can no longer be watched (the user's
    watches all taken) is polled from then on: every file put in them is synced, and packsync names the
    limit and its sysctl once, instead of watchdog warning for every folder it could not watch."""
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    for i in range(8):
        write(folder / f"old{i}" / "seed.png", image())
    daemon = start_with_watch_limit(daemon_env, watches=12)  # the folder and its 8 subfolders fit; 3 more
    try:
        assert '"inotify"' in daemon.output()
        for i in range(12):
            (folder / f"new{i}").mkdir()
        write(folder / "new0" / "marker.png", image())  # synced once the round that saw the new folders ends
        wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 9, timeout=10, what="the new folders seen")
        for i in range(12):  # files put in them later: no walk of a new folder finds them
            write(folder / f"new{i}" / "photo.png", image())

        wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 21, timeout=15,
                   what="every file of the new subfolders synced")
    finally:
        daemon.close()
    log = daemon.log_path.read_text(errors="replace")
    assert log.count("inotify limit reached") == 1, log[-3000:]
    assert "fs.inotify.max_user_watches" in log
    assert "Unable to watch" not in log, "watchdog's own warning, once per folder, reached the log"
