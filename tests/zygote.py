"""Children of the `packsync` command started from a process that imported it once (a zygote).

Most of a `packsync` child's CPU is its imports (sqlmodel, SQLAlchemy, pydantic: half a second), paid
again by each of the hundreds of commands the suite runs. A zygote imports them once, in a process of
its own with no threads, and forks a child per command: the child is still a process of its own — its
own pid, exit status, standard streams, working folder and environment, killed by a signal like any
other — that runs ``python -m packsync`` from ``main()`` on. Only the import is shared.

Where coverage measures the children (CI's gate), or the zygote cannot start, commands are started the
ordinary way. What a fresh interpreter's start-up costs is the benchmarks' to say (``bench/``), and
which modules a command imports is ``test_startup``'s: those never come through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

#: What a `packsync` command imports (the page's server and the daemon's watcher are imported by their commands).
PRELOAD = ("packsync.cli", "packsync.app", "packsync.state.store", "packsync.engine.sync", "packsync.views.text",
           "packsync.views.json", "httpx2")
_STATUS = struct.Struct("!qi")  # (pid, or -1 for the exit status that follows; value)


class Request(TypedDict):
    args: list[str]
    env: dict[str, str]
    cwd: str


def serve(path: str) -> None:
    """The zygote: import, then fork a child per connection on the socket at ``path`` while its parent lives."""
    import importlib

    parent = os.getppid()

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(0.2)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while os.getppid() == parent:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        if os.fork() == 0:
            listener.close()
            _session(connection)
        connection.close()


def _session(connection: socket.socket) -> None:
    """One command: fork it with the request's streams, folder, environment and arguments; say its pid,
    then its exit status (a negative one for a signal, as ``subprocess`` says it)."""
    code = 1
    try:
        connection.settimeout(None)
        message, fds, _flags, _address = socket.recv_fds(connection, 1 << 20, 3)
        request: Request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            connection.close()
            _command(request, fds)
        for fd in fds:
            os.close(fd)
        connection.sendall(_STATUS.pack(pid, 0))
        _, status = os.waitpid(pid, 0)
        connection.sendall(_STATUS.pack(-1, os.waitstatus_to_exitcode(status)))
        code = 0
    finally:
        os._exit(code)


def _command(request: Request, fds: list[int]) -> None:
    import random
    import runpy

    import packsync

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()  # its own zone (``TZ``), as a fresh process reads it at start
        random.seed()  # its own draws, as a fresh process has
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = [str(Path(packsync.__path__[0]) / "__main__.py"), *request["args"]]
        try:
            runpy.run_module("packsync", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if exit_.code is not None and not isinstance(exit_.code, int):
                sys.stderr.write(f"{exit_.code}\n")
        except BaseException:  # noqa: BLE001 - what an interpreter does with an uncaught exception
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class Zygote:
    """The test process's side: start the zygote once, then run commands through it."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="packsync-zygote-")
        self.path = os.path.join(self.folder, "socket")
        here = str(Path(__file__).parent)
        self.process = subprocess.Popen(
            [sys.executable, "-c",
             f"import sys; sys.path.insert(0, {here!r}); import zygote; zygote.serve({self.path!r})"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the zygote did not start")

    def run(self, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
        """``subprocess.run(["python", "-m", "packsync", *args], capture_output=True, text=True, env=env,
        timeout=timeout)``, forked from the zygote."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                open(os.devnull, "rb") as stdin, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(self.path)
            request: Request = {"args": args, "env": env, "cwd": os.getcwd()}
            socket.send_fds(connection, [json.dumps(request).encode()], [stdin.fileno(), out.fileno(), err.fileno()])
            connection.settimeout(timeout)
            pid, _ = _STATUS.unpack(_read(connection, _STATUS.size))
            try:
                _, code = _STATUS.unpack(_read(connection, _STATUS.size))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired([sys.executable, "-m", "packsync", *args], timeout) from None
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess([sys.executable, "-m", "packsync", *args], code, _text(out.read()),
                                               _text(err.read()))

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.folder)


def _read(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise RuntimeError("the zygote hung up")
        data += chunk
    return data


def _text(data: bytes) -> str:
    """As ``subprocess.run(text=True)`` reads a stream: UTF-8, universal newlines."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")
