"""Helpers to drive a real packsync from tests and benchmarks (in the spirit of ``structlog.testing``).

Nothing here replaces a part of packsync: ``DaemonProcess`` runs the real ``packsync daemon`` in a
child process and listens on a notify socket of its own, exactly as systemd would.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from packsync.daemon.timing import Timing

T = TypeVar("T")


def wait_until(condition: Callable[[], T | Literal[False] | None], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``condition`` until it is truthy and return its value (so not None, not False); AssertionError
    past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


class DaemonProcess:
    """A running ``packsync daemon`` child with its own ``NOTIFY_SOCKET``, drained as systemd drains it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], workdir: Path, cwd: Path | None = None) -> None:
        self.socket_path = workdir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.log_path = workdir / "daemon.log"
        self.log = self.log_path.open("w")
        env = {**env, "NOTIFY_SOCKET": str(self.socket_path), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(list(argv), stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def _read(self) -> None:
        while self.sock.fileno() != -1:
            try:
                self.messages += self.sock.recv(4096).decode().split("\n")
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def received(self, prefix: str) -> bool:
        """Whether a notify message starting with ``prefix`` has arrived."""
        return any(m.startswith(prefix) for m in list(self.messages))

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: self.received("READY=1") or self.proc.poll() is not None, timeout=timeout,
                   what="READY=1 from packsync daemon")
        if self.proc.poll() is not None:
            raise AssertionError(f"packsync daemon exited with {self.proc.returncode}:\n{self.output()[-2000:]}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then the exit code; killed (and TimeoutExpired raised) if it outlives ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        time.sleep(0.05)  # let the reader take the last datagrams off the socket
        return code

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.sock.close()
            self.log.close()


class StartDaemon(Protocol):
    """The ``start`` fixture: launch ``packsync daemon`` with these extra arguments, once it is ready."""

    def __call__(self, *args: str) -> DaemonProcess: ...


class StartHere(Protocol):
    """The ``start_here`` fixture: run the daemon in this process with ``timing`` (``FAST`` unless given)."""

    def __call__(self, timing: Timing = ...) -> DaemonHere: ...


def unmeasured(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without coverage's variables, for a child coverage must stay out of: one that counts the
    modules it imported (coverage's own would count), or one run as a user who cannot write its data file."""
    return {k: v for k, v in environ.items() if k not in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")}


def state_rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows ``sql`` selects from the state file at ``path``, read as another program would: on a
    connection of the test's own, which sees committed rows only. Tests read the state through this,
    and assert what packsync wrote; packsync itself reads it through ``packsync.state`` alone."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as db:
        return list(db.execute(sql, params).fetchall())


def on_state_connection(state: Any, sql: str) -> list[tuple[Any, ...]]:
    """``sql`` (a pragma) on an open ``State``'s own connection: to stage what only that connection can
    see (a file that may not grow, a checkpointed log)."""
    return [tuple(row) for row in state.unit.connection.exec_driver_sql(sql).fetchall()]


class DaemonHere:
    """The real ``Daemon`` run in this process, on an event loop of its own thread, with the ``Timing`` a
    test gives: a test of a retry or a pause then waits milliseconds, not the product's seconds or minutes.

    It holds the state lock as ``packsync daemon`` does, and keeps what it logs (``output``). What only a
    process has (signals, systemd's socket, the exit deadline) is ``DaemonProcess``'s to test.
    """

    def __init__(self, config_path: Path, token: str, timing: Timing, bandwidth_limit: str | None = None) -> None:
        from structlog.testing import capture_logs

        from packsync.config import load_config, with_bandwidth_limit
        from packsync.daemon.service import Daemon
        from packsync.state.lock import StateLock

        config = load_config(config_path)
        self.lock = StateLock(config.state_path).acquire()
        config = with_bandwidth_limit(config, bandwidth_limit)  # as `packsync daemon --bwlimit` does
        self.daemon = Daemon(config_path, config, token, self.lock, timing=timing, bandwidth_limit=bandwidth_limit)
        self._capture = capture_logs()
        self.logs = self._capture.__enter__()
        self.error: BaseException | None = None
        self._loop: Any = None
        self.thread = threading.Thread(target=self._run, name="daemon-here", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import asyncio

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            await self.daemon.run()

        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which asserts on it
            self.error = exc

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(lambda: self.daemon.status.ready or not self.thread.is_alive(), timeout=timeout,
                   what="the daemon ready")
        assert self.thread.is_alive(), f"the daemon ended: {self.error!r}\n{self.output()[-2000:]}"

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def output(self) -> str:
        """What it logged, a line per event: the event, then its fields."""
        return "\n".join(" ".join([str(entry.get("event"))] + [f"{k}={v}" for k, v in entry.items() if k != "event"])
                         for entry in list(self.logs))

    def reload(self) -> None:
        """Ask it to read its config again, as SIGHUP does."""
        assert self._loop is not None, "not started"
        self._loop.call_soon_threadsafe(self.daemon.request_reload)

    def stop(self, timeout: float = 10) -> BaseException | None:
        """Stop it as SIGTERM does; the error it ended in, if any."""
        if self.thread.is_alive() and self._loop is not None:
            self._loop.call_soon_threadsafe(self.daemon.stop)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.error

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._capture.__exit__(None, None, None)
            self.lock.release()
