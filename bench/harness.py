"""What every scenario needs: a sandbox that remembers when requests arrived, child processes measured
on their own (wall time, CPU, peak RSS), config files, image trees, a file-open counter and a daemon
driven the way systemd drives it.

packsync always runs as a separate process (``python -m packsync``), with the token in the
environment, so its wall time and memory are its own; the sandbox runs on threads of this process so
the bench can read its counters and timestamps directly.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import DaemonProcess

from packsync.sandbox import Account, Faults, Sandbox
from packsync.sandbox.imaging import solid_png

TOKEN = "gva_bench_key.not-a-real-secret"
SCOPE = "ws-bench"
PACKS_GET = ("GET", "/packs/{id}")
ADD_IMAGE = ("POST", "/packs/{id}/images")
CREATE_UPLOAD = ("POST", "/files")
STORAGE_PUT = ("PUT", "storage")


# -- the sandbox ------------------------------------------------------------------------------------

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

    def __enter__(self) -> RecordingSandbox:
        super().__enter__()
        return self

    def forget_arrivals(self) -> None:
        self.reset_calls()
        with self.arrived:
            self.arrivals.clear()

    def arrivals_of(self, method: str, route: str, since: float = 0.0) -> list[float]:
        with self.arrived:
            return [t for t, m, r in self.arrivals if (m, r) == (method, route) and t >= since]

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
        while any(image["metadata"]["status"] not in ("completed", "failed") for image in self.pack(pack_id)["images"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not settle pack {pack_id} within {timeout} s")
            time.sleep(0.05)

    def image_count(self, pack_id: str) -> int:
        pack = self.pack(pack_id)
        return len(pack["images"]) if pack else 0

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


# -- child processes --------------------------------------------------------------------------------

@dataclass
class Finished:
    """A child process that ended, measured on its own."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_bytes: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 15) -> str:
        return "\n".join((self.stdout + self.stderr).strip().splitlines()[-lines:])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GENVIRAL_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["GENVIRAL_TOKEN"] = TOKEN
    env.update(extra)
    return env


class PeakRss:
    """Polls the peak RSS (``VmHWM``) of a child process after its exec, every ``interval_s``.

    ``ru_maxrss`` from ``wait4`` (or ``RUSAGE_CHILDREN``) would not do: Linux carries the high-water
    mark of the pre-exec fork — a copy of this process, sandbox and all — into the child's. ``VmHWM``
    belongs to the address space, which exec replaces, and only ever grows, so the last reading holds
    the peak unless it came in the final interval before exit.
    """

    def __init__(self, pid: int, argv: Sequence[str], interval_s: float = 0.005) -> None:
        self.pid = pid
        self.cmdline = "\0".join(argv).encode() + b"\0"
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        status, cmdline = f"/proc/{self.pid}/status", f"/proc/{self.pid}/cmdline"
        while not self.done.is_set():
            try:
                with open(cmdline, "rb") as handle:
                    execed = handle.read() == self.cmdline
                if execed:
                    with open(status) as handle:
                        for line in handle:
                            if line.startswith("VmHWM:"):
                                self.peak_bytes = max(self.peak_bytes, int(line.split()[1]) * 1024)
                                break
            except (OSError, ValueError):
                return
            self.done.wait(self.interval_s)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak_bytes


def run_child(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 3600) -> Finished:
    """Run ``argv`` to its end: wall time from spawn to exit, CPU from its rusage, peak RSS from VmHWM."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, cwd=cwd, env=env or child_env())
        rss = PeakRss(proc.pid, list(argv))
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(list(argv), proc.returncode, wall, usage.ru_utime + usage.ru_stime, rss.stop(),
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"))


_BARE_CLIENT = """
import asyncio, json, sys, aiohttp
urls, concurrency = json.load(open(sys.argv[1])), int(sys.argv[2])
async def main():
    slots = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async def one(url):
            async with slots, client.get(url) as response:
                async for _ in response.content.iter_chunked(65536):
                    pass
        await asyncio.gather(*map(one, urls))
asyncio.run(main())
"""


def bare_downloads(urls: Sequence[str], concurrency: int, cwd: Path) -> Finished:
    """The floor of a download scenario, measured like packsync: a separate Python process that only
    imports aiohttp (packsync's HTTP client) and streams ``urls`` through as many connections, writing
    nothing anywhere."""
    script, listed = cwd / "bare_client.py", cwd / "bare_urls.json"
    script.write_text(_BARE_CLIENT, encoding="utf-8")
    listed.write_text(json.dumps(list(urls)), encoding="utf-8")
    return run_child([sys.executable, str(script), str(listed), str(concurrency)], cwd=cwd)


_BARE_UPLOADS = """
import asyncio, os, sys, aiohttp
base, pack, folder, concurrency = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3], int(sys.argv[4])
auth = {"Authorization": "Bearer " + os.environ["GENVIRAL_TOKEN"]}
async def main():
    files = iter(sorted(os.scandir(folder), key=lambda entry: entry.name))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async def worker():
            for entry in files:
                with open(entry.path, "rb") as handle:
                    data = handle.read()
                ask = {"contentType": "image/png", "filename": entry.name, "size": len(data)}
                async with client.post(base + "/files", json=ask, headers=auth) as response:
                    ticket = (await response.json())["data"]
                png = {"Content-Type": "image/png"}
                async with client.put(ticket["uploadUrl"], data=data, headers=png) as response:
                    await response.read()
                add = {"image_url": ticket["url"], "file_name": entry.name}
                async with client.post(f"{base}/packs/{pack}/images", json=add, headers=auth) as response:
                    await response.read()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
asyncio.run(main())
"""


def bare_uploads(base_url: str, pack_id: str, folder: Path, concurrency: int, cwd: Path) -> Finished:
    """The floor of an upload scenario, measured like packsync: a separate Python process that only
    imports aiohttp and makes the three calls per file (``POST /files``, ``PUT``, add-image) with
    ``concurrency`` of them in flight, remembering nothing."""
    script = cwd / "bare_uploads.py"
    script.write_text(_BARE_UPLOADS, encoding="utf-8")
    return run_child([sys.executable, str(script), base_url, pack_id, str(folder), str(concurrency)], cwd=cwd)


def floor_note(floor: Finished, bound_s: float, what: str = "downloads") -> str:
    if floor.returncode != 0:
        return f"the bare client failed: {floor.tail(3)}"
    return (f"a bare aiohttp client making only the same {what}: {floor.wall_s:.2f} s, "
            f"{bound_s / floor.wall_s:.2f} of the bound")


def packsync_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "packsync", "-c", str(config), *args]


# -- config and trees -------------------------------------------------------------------------------

@dataclass
class Setup:
    """A config file with its state path and mappings, written as TOML."""

    root: Path
    base_url: str
    concurrency: int = 8
    daemon: dict[str, float] = field(default_factory=dict)
    mappings: list[tuple[Path, str]] = field(default_factory=list)
    state_path: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def write(self) -> Path:
        def q(value: object) -> str:
            return json.dumps(str(value))

        state = self.state_path or self.root / "state" / "state.db"
        lines = ["[genviral]", f"base_url = {q(self.base_url)}", f"concurrency = {self.concurrency}",
                 "[state]", f"path = {q(state)}"]
        if self.daemon:
            lines += ["[daemon]"] + [f"{k} = {v}" for k, v in self.daemon.items()]
        lines += ["[http]", 'listen = "127.0.0.1:0"']  # the page on, as shipped, on any free port
        for path, pack_id in self.mappings:
            lines += ["[[mappings]]", f"path = {q(path)}", f"pack_id = {q(pack_id)}"]
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return self.config_path


def image_bytes(index: int, side: int = 8) -> bytes:
    """A small valid PNG whose colour (and so content) is unique to ``index`` (< 2**24)."""
    return solid_png(side, side, (index & 255, (index >> 8) & 255, (index >> 16) & 255))


def write_images(folder: Path, indices: Iterable[int], side: int = 8, prefix: str = "img") -> list[Path]:
    """Write one distinct PNG per index into ``folder`` (flat)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in indices:
        path = folder / f"{prefix}{index:07}.png"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, image_bytes(index, side))
        finally:
            os.close(fd)
        paths.append(path)
    return paths


# -- file reads -------------------------------------------------------------------------------------

_IN_ACCESS, _IN_OPEN, _IN_Q_OVERFLOW, _IN_ISDIR = 0x1, 0x20, 0x4000, 0x40000000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class FileOpenCounter:
    """Counts opens and reads of the files directly inside some folders, through inotify.

    The kernel queues an event for every open(2) and read(2) of a watched file by any process, so
    "zero opens" proves the files were not read, without tracing the reader. Opens of the folders
    themselves (listing them) are not counted.
    """

    def __init__(self, folders: Iterable[Path]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for folder in folders:
            if libc.inotify_add_watch(self.fd, os.fsencode(folder), _IN_OPEN | _IN_ACCESS) < 0:
                raise OSError(ctypes.get_errno(), f"cannot watch {folder}")

    def collect(self) -> dict[str, int | bool]:
        """Opens and reads queued so far (``overflow``: more than the kernel queue holds)."""
        opens = reads = 0
        overflow = False
        while True:
            try:
                buffer = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(buffer):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buffer, offset)
                offset += 16 + length
                if mask & _IN_Q_OVERFLOW:
                    overflow = True
                elif mask & _IN_ISDIR:
                    continue
                elif mask & _IN_OPEN:
                    opens += 1
                elif mask & _IN_ACCESS:
                    reads += 1
        return {"opens": opens, "reads": reads, "overflow": overflow}

    def close(self) -> None:
        os.close(self.fd)


# -- the daemon -------------------------------------------------------------------------------------

def start_daemon(config: Path, workdir: Path, watchdog_usec: int = 120_000_000) -> DaemonProcess:
    """A real ``packsync daemon`` on ``config``, with a notify socket of its own (``tests/helpers.py``)."""
    return DaemonProcess(packsync_argv(config, "daemon"), child_env(WATCHDOG_USEC=str(watchdog_usec)), workdir,
                         cwd=workdir)


def status_json(config: Path, cwd: Path) -> dict[str, Any]:
    """``packsync status --json`` (reads only the state; no API call)."""
    done = run_child(packsync_argv(config, "status", "--json"), cwd=cwd, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"packsync status failed: {done.tail()}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document


# -- numbers ----------------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def calls_dict(calls: Counter[tuple[str, str]]) -> dict[str, int]:
    return {f"{method} {route}": n for (method, route), n in sorted(calls.items())}


@dataclass
class Row:
    """One line of the results table: a figure that is a ratio, its target, and the absolute numbers."""

    id: str
    scenario: str
    figure: str
    value: float | None
    target: str
    passed: bool | None
    info: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What a scenario gets: its sizes, a scratch folder, the cache folder and a logger."""

    smoke: bool
    workdir: Path
    cache_dir: Path
    log: Callable[[str], None]
