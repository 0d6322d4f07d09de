"""The sandbox under test, in a process of its own, and the proxy the scenarios drive it through.

A real API does not share an interpreter with its client: run on threads of the bench process, the
sandbox competed with the bench's own threads for the GIL. Here it is a separate Python process
(this file run as a script), and the bench talks to it over a ``multiprocessing.connection`` pipe:
:class:`SandboxProcess` is a thin proxy whose methods send ``(name, args, kwargs)`` and return the
picklable answer of the same method of :class:`RecordingSandbox` in the child. Only the names in
``REMOTE`` can be called.

Arrival times come back through that pipe as the child's ``time.monotonic()``. On Linux that is
``CLOCK_MONOTONIC``, one clock for the whole system (not per process), so they compare directly with
the bench's own ``time.monotonic()``, e.g. the moment it renamed a file.

The child's CPU time is read by ``os.wait4`` when it is stopped (``cpu_s``), and meanwhile on
request (``cpu_now``) to tell how much of it a single run cost.

Standard library and ``packsync.sandbox`` only: the child imports nothing else of the bench.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from types import TracebackType
from typing import Any

from packsync.sandbox import Account, Faults, LinkRate, Sandbox
from packsync.sandbox.store import ENRICH_MODEL, _Image

TOKEN = "gva_bench_key.not-a-real-secret"
SCOPE = "ws-bench"
READY_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 600.0


# -- the child: the sandbox itself ------------------------------------------------------------------

class RecordingSandbox(Sandbox):
    """The in-package sandbox, also noting the arrival time of every request (``time.monotonic``).

    ``_count`` runs when a request has been read and routed, before the configured latency, so an
    arrival time is when the server received the call.
    """

    def __init__(self, latency_s: float = 0.0, enrich_delays: tuple[float, float] = (0.2, 0.3)) -> None:
        super().__init__(accounts={TOKEN: Account(scope=SCOPE)}, enrich_delays=enrich_delays,
                         faults=Faults(latency_s=latency_s))
        self.arrivals: list[tuple[float, str, str]] = []
        self.arrived = threading.Condition()

    def _count(self, method: str, route: str) -> None:
        super()._count(method, route)
        with self.arrived:
            self.arrivals.append((time.monotonic(), method, route))
            self.arrived.notify_all()

    def set_latency(self, latency_s: float) -> None:
        """Add ``latency_s`` to every later API, storage and CDN call (counted from its arrival)."""
        self.faults.latency_s = latency_s

    def forget_arrivals(self) -> None:
        self.reset_calls()
        with self.arrived:
            self.arrivals.clear()

    def arrivals_of(self, method: str, route: str, since: float = 0.0) -> list[float]:
        with self.arrived:
            return [t for t, m, r in self.arrivals if (m, r) == (method, route) and t >= since]

    def last_arrival(self) -> float:
        """The arrival time of the latest request, 0.0 when none arrived since the last forget."""
        with self.arrived:
            return self.arrivals[-1][0] if self.arrivals else 0.0

    def first_arrival(self) -> float:
        """The arrival time of the earliest request since the last forget, 0.0 when none arrived."""
        with self.arrived:
            return self.arrivals[0][0] if self.arrivals else 0.0

    def wait_for_arrival(self, method: str, route: str, since: float, timeout: float) -> float | None:
        """The first arrival of (method, route) at or after ``since``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for t, m, r in self.arrivals:
                    if t >= since and (m, r) == (method, route):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.arrived.wait(left)

    def new_pack(self, name: str) -> str:
        return self.create_pack(name, scope=SCOPE)

    def settle(self, pack_id: str, timeout: float = 60.0) -> None:
        """Wait until the sandbox has decided every image's AI metadata, which it does lazily at the
        first read after the enrichment delay: that work is the sandbox's, not a measured run's."""
        deadline = time.monotonic() + timeout
        while self.pending_metadata([pack_id]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not settle pack {pack_id} within {timeout} s")
            time.sleep(0.05)

    def seed_settled(self, pack_id: str, names: list[str], description: str,
                     keywords: list[str]) -> list[tuple[str, str]]:
        """Images put straight into a pack, one per name, their AI metadata completed already (as a sync
        long finished leaves them; their URLs serve nothing): (image id, URL) of each, in order."""
        final = {"status": "completed", "description": description, "keywords": keywords, "model": ENRICH_MODEL,
                 "generated_at": "2026-01-01T00:00:00.000Z", "error": None}
        seeded = []
        with self.store.lock:
            pack = self.store._packs[pack_id]
            for name in names:
                image = _Image(str(uuid.uuid4()), f"{self.base_url}/cdn/{uuid.uuid4().hex}.png", name, "image/png",
                               time.time(), self.store._next_seq(), dict(final))
                pack.images.append(image)
                seeded.append((image.id, image.url))
        return seeded

    def image_count(self, pack_id: str) -> int:
        """The images in a pack, without building the pack's answer: the bench polls this while packsync
        runs, and must not cost the sandbox more than an answer's worth of CPU per poll."""
        with self.store.lock:
            pack = self.store._packs.get(pack_id)
            return len(pack.images) if pack is not None else 0

    def pending_metadata(self, pack_ids: list[str]) -> int:
        """Images in these packs whose metadata the sandbox has not finished yet."""
        count = 0
        for pack_id in pack_ids:
            pack = self.pack(pack_id) or {"images": []}
            count += sum(1 for image in pack["images"] if image["metadata"]["status"] not in ("completed", "failed"))
        return count

    def image_urls(self, pack_id: str) -> list[str]:
        pack = self.pack(pack_id)
        return [image["url"] for image in pack["images"]] if pack else []

    def astria_set_users(self, users: dict[str, int]) -> None:
        self.astria.users = dict(users)

    def astria_add_pack(self, title: str, public: bool = False) -> int:
        return self.astria.add_pack(title, public=public)

    def astria_add_image(self, pack_id: int, cls: str, data: bytes) -> str:
        return self.astria.add_image(pack_id, cls, data)

    def astria_add_tune(self, title: str) -> int:
        return self.astria.add_tune(title)

    def astria_add_prompt(self, tune_id: int, text: str, images: list[bytes]) -> int:
        return self.astria.add_prompt(tune_id, text, images)

    def save_snapshot(self, path: Path) -> None:
        """Write the whole store to ``path``.

        The sandbox has no public dump, and giving it a state file from the start would rewrite the
        whole file on every one of the setup's requests, so this borrows the store's own writer.
        """
        store = self.store
        with store.lock:
            store._state_path = path
            try:
                store._save()
            finally:
                store._state_path = None

    def load_snapshot(self, path: Path) -> None:
        """Fill the (empty) store from ``path`` without attaching the file, so nothing writes it back."""
        with self.store.lock:
            self.store._load(path)

    @staticmethod
    def cpu_now() -> float:
        """CPU seconds (user + system, every thread) this process has used so far."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


#: What the bench may call in the child: methods (called with the arguments sent) and the ``calls``
#: property (read).
REMOTE = frozenset({
    "calls", "reset_calls", "set_latency", "forget_arrivals", "arrivals_of", "last_arrival", "first_arrival",
    "wait_for_arrival",
    "new_pack", "settle", "image_count", "pending_metadata", "image_urls", "pack", "packs", "add_uploaded",
    "astria_set_users", "astria_add_pack", "astria_add_image", "astria_add_tune", "astria_add_prompt",
    "save_snapshot", "load_snapshot", "cpu_now",
    "seed_settled", "set_link_rate", "link_moved",
})


def serve(conn: Connection, latency_s: float, enrich_delays: tuple[float, float]) -> None:
    """The child's loop: start the sandbox, say where it listens, answer calls until told to stop.

    Each answer is ``(True, value)`` or ``(False, traceback)``. The loop also ends when the bench's end
    of the pipe closes (the bench died), so a sandbox never outlives its bench.
    """
    sandbox = RecordingSandbox(latency_s, enrich_delays)
    sandbox.start(0)
    try:
        conn.send((sandbox.base_url, sandbox.astria_url))
        while True:
            try:
                name, args, kwargs = conn.recv()
            except EOFError:
                return
            if name == "stop":
                break
            try:
                if name not in REMOTE:
                    raise AttributeError(f"the sandbox process does not offer {name!r}")
                attribute = getattr(sandbox, name)
                conn.send((True, attribute(*args, **kwargs) if callable(attribute) else attribute))
            except Exception:  # noqa: BLE001 - the bench raises it, with the child's traceback
                conn.send((False, traceback.format_exc()))
    finally:
        sandbox.stop()
    conn.send((True, None))


# -- the bench's side: the proxy --------------------------------------------------------------------

class SandboxProcess:
    """A :class:`RecordingSandbox` running in a child process, driven through a pipe.

    ``with SandboxProcess(latency_s=0.04) as sandbox:`` starts it; leaving the block stops it and
    collects its CPU time (``cpu_s``: user + system from ``os.wait4``).
    """

    def __init__(self, latency_s: float = 0.0, enrich_delays: tuple[float, float] = (0.2, 0.3)) -> None:
        self.latency_s = latency_s
        self.enrich_delays = enrich_delays
        self.base_url = self.astria_url = ""
        self.cpu_s: float | None = None
        self.astria = RemoteAstria(self)
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> SandboxProcess:
        ours, theirs = Pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(theirs.fileno()), repr(self.latency_s),
                 repr(self.enrich_delays[0]), repr(self.enrich_delays[1])],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=sys.stderr)
        finally:
            theirs.close()  # the child holds its own copy; ours must go, or its death would not show
        self._conn = ours
        if not ours.poll(READY_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"the sandbox process did not start within {READY_TIMEOUT_S:.0f} s")
        try:
            self.base_url, self.astria_url = ours.recv()
        except EOFError:
            self.stop()
            raise RuntimeError("the sandbox process ended as it started (its traceback is above)") from None
        return self

    def stop(self) -> float:
        """Ask the child to stop, reap it and return its CPU seconds; safe to call twice."""
        if self._proc is None:
            return self.cpu_s or 0.0
        proc, conn = self._proc, self._conn
        if conn is not None:
            try:
                conn.send(("stop", (), {}))
                if conn.poll(30):
                    conn.recv()
            except (OSError, EOFError):
                pass  # it is gone already
            conn.close()
        killer = threading.Timer(30, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        self._proc = self._conn = None
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return self.cpu_s

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, name: str, *args: Any, timeout: float = CALL_TIMEOUT_S, **kwargs: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("the sandbox process is not running")
        with self._lock:
            self._conn.send((name, args, kwargs))
            if not self._conn.poll(timeout):
                raise TimeoutError(f"the sandbox process did not answer {name} within {timeout:.0f} s")
            try:
                done, value = self._conn.recv()
            except EOFError:
                raise RuntimeError(f"the sandbox process ended during {name}") from None
        if not done:
            raise RuntimeError(f"the sandbox process failed in {name}:\n{value}")
        return value

    # -- the scenarios' vocabulary: each forwards to the RecordingSandbox method of the same name ----

    @property
    def calls(self) -> Counter[tuple[str, str]]:
        """Requests served so far, keyed by (method, route template)."""
        calls: Counter[tuple[str, str]] = self._call("calls")
        return calls

    def reset_calls(self) -> None:
        self._call("reset_calls")

    def set_latency(self, latency_s: float) -> None:
        self._call("set_latency", latency_s)

    def forget_arrivals(self) -> None:
        self._call("forget_arrivals")

    def arrivals_of(self, method: str, route: str, since: float = 0.0) -> list[float]:
        arrivals: list[float] = self._call("arrivals_of", method, route, since)
        return arrivals

    def last_arrival(self) -> float:
        return float(self._call("last_arrival"))

    def first_arrival(self) -> float:
        return float(self._call("first_arrival"))

    def wait_for_arrival(self, method: str, route: str, since: float, timeout: float) -> float | None:
        arrival: float | None = self._call("wait_for_arrival", method, route, since, timeout, timeout=timeout + 30)
        return arrival

    def new_pack(self, name: str) -> str:
        return str(self._call("new_pack", name))

    def settle(self, pack_id: str, timeout: float = 60.0) -> None:
        self._call("settle", pack_id, timeout, timeout=timeout + 30)

    def image_count(self, pack_id: str) -> int:
        return int(self._call("image_count", pack_id))

    def pending_metadata(self, pack_ids: list[str]) -> int:
        return int(self._call("pending_metadata", pack_ids))

    def image_urls(self, pack_id: str) -> list[str]:
        urls: list[str] = self._call("image_urls", pack_id)
        return urls

    def pack(self, pack_id: str) -> dict[str, Any] | None:
        pack: dict[str, Any] | None = self._call("pack", pack_id)
        return pack

    def packs(self) -> list[dict[str, Any]]:
        packs: list[dict[str, Any]] = self._call("packs")
        return packs

    def add_uploaded(self, pack_id: str, data: bytes, file_name: str = "image.png",
                     content_type: str = "image/png") -> str:
        return str(self._call("add_uploaded", pack_id, data, file_name, content_type))

    def set_link_rate(self, total: float = 0.0, per_connection: float = 0.0) -> None:
        """Storage PUT bodies come in, and CDN bodies go out, at these bytes per second from now on (0: no limit)."""
        self._call("set_link_rate", LinkRate(per_connection=per_connection, total=total))

    def link_moved(self) -> dict[str, int]:
        """Bytes of storage PUT bodies received (``up``) and of CDN bodies sent (``down``) so far."""
        moved: dict[str, int] = self._call("link_moved")
        return moved

    def seed_settled(self, pack_id: str, names: list[str], description: str,
                     keywords: list[str]) -> list[tuple[str, str]]:
        seeded: list[tuple[str, str]] = self._call("seed_settled", pack_id, names, description, keywords)
        return seeded

    def save_snapshot(self, path: Path) -> None:
        self._call("save_snapshot", path)

    def load_snapshot(self, path: Path) -> None:
        self._call("load_snapshot", path)

    def cpu_now(self) -> float:
        """The child's CPU seconds so far (user + system): read before and after a run, the run's share."""
        return float(self._call("cpu_now"))


class RemoteAstria:
    """The sandbox's Astria, seeded from the bench (``sandbox.astria``)."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        self._sandbox = sandbox

    def set_users(self, users: dict[str, int]) -> None:
        """The Astria keys the sandbox accepts, and their user ids."""
        self._sandbox._call("astria_set_users", users)

    def add_pack(self, title: str, public: bool = False) -> int:
        return int(self._sandbox._call("astria_add_pack", title, public))

    def add_image(self, pack_id: int, cls: str, data: bytes) -> str:
        """Store ``data`` and list it under ``cls`` in a new prompt of the pack; returns its URL."""
        return str(self._sandbox._call("astria_add_image", pack_id, cls, data))

    def add_tune(self, title: str) -> int:
        return int(self._sandbox._call("astria_add_tune", title))

    def add_prompt(self, tune_id: int, text: str, images: list[bytes]) -> int:
        """A generated prompt of the tune, its images stored each at its own URL; returns its id."""
        return int(self._sandbox._call("astria_add_prompt", tune_id, text, images))


def main() -> None:
    """``python bench/sandbox_process.py FD LATENCY_S ENRICH_MIN ENRICH_MAX``: serve on pipe end FD."""
    fd, latency_s, low, high = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the bench's to handle: it stops us by the pipe
    serve(Connection(fd), latency_s, (low, high))


if __name__ == "__main__":
    main()
