"""The control channel: how a ``packsync`` command reaches the daemon that holds the state.

The daemon owns the state while it runs (it holds its lock for its life), so the commands that would
write it — ``run``, ``sync``, ``pause``, ``resume``, ``allow-deletes`` — ask the daemon instead, as
Syncthing's clients ask its REST API; with no daemon they act alone, taking the lock as before.

One mechanism: HTTP over a Unix socket beside the state (``<state>.sock``), made mode 0600, and a peer
of any other user refused by its credentials (``SO_PEERCRED``): the file system says who may ask, as it
does for the state itself. No token, no port, nothing a browser or another machine can reach (the
page's own buttons are POSTs to the page, with its CSRF token and Origin check). A socket's address
holds 107 bytes: a longer path is reached through its folder's descriptor (``/proc/self/fd/N/…``).

The daemon's routes (JSON answers; an error is ``{"error": sentence, "exit_code": n}``):

- ``GET  /``                                    who it is: pid, its page's address, its mappings, the paused;
- ``POST /pause?mapping=L…`` / ``/resume?…``    (no ``mapping``: every one);
- ``POST /sync?mapping=L…&force=1&allow=L=N…&wait=S``  a sync now, answered once it ended: the text and
  the JSON document ``run`` would print, and its exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from packsync.errors import DaemonError, DaemonStarting, ExitCode, LockedError
from packsync.state.lock import StateLock

#: The longest path a Unix socket's address holds (``sun_path`` less its NUL).
MAX_ADDRESS = 107
#: How long a command waits for the socket of a daemon that holds the lock (it binds it just after).
STARTING_S = 2.0
#: How long a command asks again while the daemon opens its state.
OPENING_S = 30.0


def socket_path(state_path: Path) -> Path:
    """Where the daemon of the state at ``state_path`` listens."""
    return state_path.with_name(state_path.name + ".sock")


@contextlib.contextmanager
def address(path: Path) -> Iterator[str]:
    """``path`` as a socket address: itself, or through its folder's descriptor when it is too long."""
    if len(os.fsencode(path)) <= MAX_ADDRESS:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


class Daemon:
    """The running daemon, as a command asks it."""

    def __init__(self, state_path: Path, pid: int) -> None:
        self.path = socket_path(state_path)
        self.pid = pid

    def ask(self, method: str, route: str, params: Sequence[tuple[str, str]] = (), *,
            timeout: float | None = 30.0) -> dict[str, Any]:
        """The daemon's answer to one request (``timeout`` None: as long as it takes, for a sync); asked again
        for a while when the daemon is still opening its state."""
        deadline = time.monotonic() + OPENING_S
        while True:
            try:
                return self._ask(method, route, params, timeout)
            except DaemonStarting:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _ask(self, method: str, route: str, params: Sequence[tuple[str, str]], timeout: float | None) -> dict[str, Any]:
        import httpx2

        # Its INFO line per request is no output of a command's (it printed on stderr before every answer).
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        with address(self.path) as where, httpx2.Client(transport=httpx2.HTTPTransport(uds=where),
                                                        timeout=httpx2.Timeout(timeout, connect=5.0)) as client:
            try:
                answer = client.request(method, f"http://packsync{route}", params=list(params))
            except httpx2.ConnectError:  # a socket a killed daemon left: the lock's holder is a command
                raise LockedError(f"another packsync (pid {self.pid}) is using {self.path.with_suffix('')}; "
                                  "wait for it to finish or stop it first.") from None
            except httpx2.TransportError as exc:
                raise DaemonError(f"the daemon (pid {self.pid}) did not answer on {self.path}: "
                                  f"{exc or type(exc).__name__}") from None
        try:
            document = json.loads(answer.content)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise DaemonError(f"the daemon (pid {self.pid}) gave an answer packsync cannot read "
                              f"(HTTP {answer.status_code}).")
        if answer.status_code == 503:
            raise DaemonStarting(str(document.get("error")))
        if answer.status_code >= 400:
            code = document.get("exit_code")
            raise DaemonError(str(document.get("error") or f"the daemon refused (HTTP {answer.status_code})"),
                              ExitCode(code) if code in set(ExitCode) else ExitCode.SOME_FAILED)
        return document


def find_daemon(state_path: Path) -> Daemon | None:
    """The daemon holding the state at ``state_path``, or None when no packsync holds its lock (the command
    acts alone then). Another command holding it (a ``run``) is a ``LockedError``, as it always was."""
    lock = StateLock(state_path)
    deadline = time.monotonic() + STARTING_S
    while (pid := lock.holder()) is not None:
        daemon = Daemon(state_path, pid)
        if daemon.path.exists():
            return daemon
        if time.monotonic() > deadline:
            lock.acquire()  # (raises the sentence that names who holds it)
            lock.release()  # (it let go in between: act alone)
            return None
        time.sleep(0.1)  # a daemon that just took the lock binds its socket next
    return None
