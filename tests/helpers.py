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
from typing import Any, Literal, Protocol, TypeVar

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
