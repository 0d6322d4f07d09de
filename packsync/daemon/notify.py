"""systemd's notify protocol, without a dependency: datagrams to ``$NOTIFY_SOCKET``.

``READY=1`` once the daemon is in service, ``STATUS=…`` lines for ``systemctl status``,
``WATCHDOG=1`` from the main loop, ``EXTEND_TIMEOUT_USEC=…`` while a long first scan runs,
``STOPPING=1`` on the way out. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
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
