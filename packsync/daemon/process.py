"""What makes the daemon a process: the signals it obeys, the deadline of its exit, its file limit, the
names its threads show outside it, its allocator, and the memory it gives back when it comes to rest.

SIGTERM and SIGINT stop the daemon, and past ``Timing.stop_deadline_s`` the process exits where it
is; SIGHUP reloads the config. ``Daemon`` itself installs no signal handler and never exits the
process, so that a test runs one in its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import gc
import os
import resource
import signal
import sys
import threading
from typing import TYPE_CHECKING

from packsync.errors import ExitCode
from packsync.logs import get_logger

if TYPE_CHECKING:
    from packsync.daemon.service import Daemon


async def on_signals(daemon: Daemon) -> ExitCode:
    """Run ``daemon`` as a process: SIGTERM and SIGINT stop it (within a deadline), SIGHUP reloads it."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        daemon.stop()
        deadline = threading.Timer(daemon.timing.stop_deadline_s, _exit_now, (daemon.timing.stop_deadline_s,))
        deadline.daemon = True
        deadline.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    return await daemon.run()


def _exit_now(deadline_s: float) -> None:
    """The promise is an exit within 10 s of SIGTERM: past the deadline, show where it hangs and go.

    Leaving mid-step is safe, like a kill: the steps still queued (``State.write_behind``) are each
    found again by the next start, which resumes.
    """
    get_logger().error("shutdown is taking too long; exiting now", deadline_s=deadline_s)
    faulthandler.dump_traceback(all_threads=True)
    os._exit(0)


class ThreadNames:
    """Every thread's Python name given to the kernel too (``/proc/PID/task/TID/comm``, 15 bytes), so that
    ``top -H``, ``ps -L`` and the bench's wakeup count say which thread it is: Python before 3.14 leaves
    every thread called ``python``. Each thread is named once, by the loop, when it first sees it."""

    def __init__(self) -> None:
        self._named: set[int] = set()

    def update(self) -> None:
        threads = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for tid in threads.keys() - self._named:
            # (it ended meanwhile; or no /proc)
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm", "w") as comm:
                comm.write(threads[tid].encode("ascii", "replace").decode()[:15])
        self._named = set(threads)


def on_c_allocator() -> None:
    """Run the daemon on the C library's allocator (``PYTHONMALLOC=malloc``), executing it again so if it
    is not yet: the same process (its pid, its command's arguments, its environment), before it opened
    anything. A ``PYTHONMALLOC`` set by the user is obeyed.

    Python's own allocator keeps each 1 MiB arena while one object in it lives: the start-up sync of
    100,000 files leaves a few long-lived objects scattered over the arenas its transient ones filled, and
    the daemon at rest held some 80 MB it no longer used (182–198 MB). On malloc, ``release_memory`` hands
    the freed pages back (117 MB).
    """
    if "PYTHONMALLOC" in os.environ:
        return
    os.environ["PYTHONMALLOC"] = "malloc"
    os.execv(sys.executable, [sys.executable, "-m", "packsync", *sys.argv[1:]])


#: glibc's ``malloc_trim``; None under a C library without it (musl), where nothing is trimmed.
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_memory(collect: bool) -> None:
    """Give back to the system the memory the rounds before a rest freed: glibc keeps what a thread freed in
    that thread's heap for its next allocation, which at rest never comes (a first sync of 100,000 files
    leaves tens of MB so). ``collect``: after a full round, whose garbage holds as much as the tree, its
    reference cycles are collected first (tens of ms at that size: not after every small round)."""
    if collect:
        gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def raise_file_limit() -> None:
    """Take the hard limit of open files as the soft one (systemd's soft default is 1,024): watches, the
    state and the page's connections all hold descriptors, and a flood of idle connections must not
    leave none for a sync."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
