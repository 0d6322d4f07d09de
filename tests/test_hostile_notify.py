"""Hostile notifications: a service that never finishes answering (the daemon's stop, ``notify test``), a
URL whose secret is written into it, and a variable whose value is short, met as a demanding user would
meet them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Env, image, write
from helpers import StartDaemon, wait_until
from test_notify import Inbox, NotifyEnv, notify_env

from packsync.errors import ExitCode
from packsync.sandbox import Sandbox


class Trickle:
    """A webhook that takes the request, then sends one header line a second and never ends its answer:
    each read is quick, so no read timeout ever fires."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.requests = 0
        self.closing = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            self.requests += 1
            try:
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self.closing.wait(1):
                    connection.sendall(b"X-Wait: 1\r\n")
            except OSError:
                return

    def close(self) -> None:
        self.closing.set()
        self.listener.close()


@pytest.fixture
def env(tmp_path: Path, sandbox: Sandbox) -> NotifyEnv:
    """An ``Env`` with a ``[notify]`` table (``daemon_env`` builds on it)."""
    return NotifyEnv(tmp_path, sandbox)


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    server = Trickle()
    yield server
    server.close()


def test_a_stop_is_not_held_by_a_service_that_never_finishes_answering(
        daemon_env: Env, start: StartDaemon, trickle: Trickle) -> None:
    """The docs promise a stop waits at most a second for a message under way. A service trickling its
    answer held the stop until the process deadline (8 s), which then logged "shutdown is taking too
    long" with every thread's traceback: at each stop or restart, for as long as the service hangs."""
    notify_env(daemon_env).notify = {"urls": [trickle.url]}
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id, max_delete=1)
    for n in range(3):
        write(folder / f"{n}.png", image())
    daemon = start()
    (folder / "0.png").unlink()
    (folder / "1.png").unlink()
    assert daemon_env.cli("sync").returncode == ExitCode.SAFETY  # told: the safety stop
    wait_until(lambda: trickle.requests == 1, timeout=30, what="the safety stop's notification under way")

    began = time.monotonic()
    code = daemon.stop(timeout=30)

    assert code == ExitCode.OK
    assert "taking too long" not in daemon.output(), daemon.output()[-2000:]
    assert time.monotonic() - began < 5


def test_a_secret_written_into_a_notify_url_is_not_logged_with_verbose(env: Env) -> None:
    """A webhook's secret path written as it is (not as ``${VAR}``): apprise's own log is silenced for
    this, but the HTTP library apprise sends with logged each request's path at ``-v``."""
    inbox = Inbox()
    try:
        notify_env(env).notify = {"urls": [f"{inbox.url}/SUPERSECRETPATH42"]}
        env.write_config()

        result = env.cli("-v", "notify", "test")

        assert result.returncode == ExitCode.OK, result.stderr
        assert len(inbox.received) == 1
        assert "SUPERSECRETPATH42" not in result.stdout + result.stderr
    finally:
        inbox.close()


def test_a_short_value_in_a_notify_url_leaves_the_log_lines_readable(env: Env) -> None:
    """A variable holding a port or a chat id ("2") is no credential: it is not starred out of every log line
    (it was: every 2 of every timestamp); the whole URL stays a secret."""
    inbox = Inbox()
    try:
        port = inbox.url.rpartition(":")[2].partition("/")[0]
        notify_env(env).notify = {"urls": [inbox.url.replace(f":{port}/", ":${HOOK_PORT}/") + "/${HOOK_ID}"]}
        env.write_config()

        result = subprocess.run(
            [sys.executable, "-m", "packsync", "-v", "-c", str(env.config_path), "notify", "test"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HOOK_PORT": port, "HOOK_ID": "2"})

        assert result.returncode == ExitCode.OK, result.stderr
        assert "***" not in result.stderr, result.stderr
    finally:
        inbox.close()


def test_notify_test_gives_up_a_service_that_never_finishes_answering(env: Env, trickle: Trickle) -> None:
    """``packsync notify test`` against a service trickling its answer waited for as long as the service
    cared to trickle (minutes: apprise's timeout bounds each read, not the answer). It says FAILED at the
    deadline (``SEND_TIMEOUT_S``; one second here)."""
    from packsync.config import load_config
    from packsync.daemon.alerts import TEST, Notifier

    notify_env(env).notify = {"urls": [trickle.url]}
    env.write_config()
    notifier = Notifier.open(load_config(env.config_path), timeout_s=1.0)
    assert notifier is not None
    began = time.monotonic()

    sent = notifier.each(TEST)

    assert sent == [("notify.urls[0] (json)", False)] and trickle.requests == 1
    assert time.monotonic() - began < 5
