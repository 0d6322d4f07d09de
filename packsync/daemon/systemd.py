"""systemd's notify protocol, without a dependency: datagrams to ``$NOTIFY_SOCKET``.

``READY=1`` once the daemon is in service, ``STATUS=…`` lines for ``systemctl status``,
``WATCHDOG=1`` from the main loop, ``EXTEND_TIMEOUT_USEC=…`` while a long first scan runs,
``STOPPING=1`` on the way out (``Systemd`` says each). Outside systemd (no ``$NOTIFY_SOCKET``) every
call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``fields`` (``KEY=value`` strings) to the service manager; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the daemon's loop on a service manager that is not reading.
            sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec``), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


class Systemd:
    """What the daemon tells the service manager, each in its own words; the watchdog's ping paced."""

    def __init__(self) -> None:
        self.watchdog_s = watchdog_interval()
        self._last_ping = 0.0

    def ping(self, now: float) -> None:
        """The loop came round: ``WATCHDOG=1``, at most twice per watchdog interval."""
        if self.watchdog_s and now - self._last_ping >= self.watchdog_s / 2:
            notify("WATCHDOG=1")
            self._last_ping = now

    def ready(self) -> None:
        notify("READY=1")

    def status(self, text: str) -> None:
        notify(f"STATUS={text}")

    def extend_timeout(self, seconds: float) -> None:
        """Still starting (a long first scan): give us ``seconds`` more before calling the start failed."""
        notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self) -> None:
        notify("STOPPING=1")
