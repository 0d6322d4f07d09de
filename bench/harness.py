"""What every scenario needs: child processes measured on their own (wall time, CPU, peak RSS), the
bare httpx2 client that is the floor of the throughput scenarios, config files, image trees, a
file-open counter and a daemon driven the way systemd drives it.

packsync always runs as a separate process (``python -m packsync``), with the token in the
environment, so its wall time and memory are its own. So does the sandbox it talks to
(``sandbox_process.SandboxProcess``, started by ``Context.sandbox``): nothing measured shares an
interpreter, or a GIL, with anything else.
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
from sandbox_process import TOKEN, SandboxProcess

from packsync.sandbox.imaging import solid_png

BARE_CLIENT = Path(__file__).with_name("bare_client.py")
PACKS_GET = ("GET", "/packs/{id}")
ADD_IMAGE = ("POST", "/packs/{id}/images")
CREATE_UPLOAD = ("POST", "/files")
STORAGE_PUT = ("PUT", "storage")


# -- child processes --------------------------------------------------------------------------------

@dataclass
class Finished:
    """A child process that ended, measured on its own; ``server_cpu_s``: the sandbox process's CPU
    seconds meanwhile, when it was given."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_bytes: int
    stdout: str
    stderr: str
    server_cpu_s: float | None = None

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
    mark of the address space the child had before exec — a copy of this process, or this process's
    own when subprocess uses vfork — into the child's, so it reads max(bench, child). The bench no
    longer holds the sandbox, but it still holds tens of MB of its own. ``VmHWM`` belongs to the
    address space, which exec replaces, and only ever grows, so the last reading holds the peak unless
    it came in the final interval before exit.
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


def run_child(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 3600,
              server: SandboxProcess | None = None) -> Finished:
    """Run ``argv`` to its end: wall time from spawn to exit, CPU from its rusage, peak RSS from VmHWM;
    and, given the ``server`` it talks to, that sandbox process's CPU time over the same span."""
    server_before = server.cpu_now() if server is not None else 0.0
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
        server_cpu = server.cpu_now() - server_before if server is not None else None
        out.seek(0)
        err.seek(0)
        return Finished(list(argv), proc.returncode, wall, usage.ru_utime + usage.ru_stime, rss.stop(),
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"), server_cpu)


# -- the bare httpx2 client: the floor of the throughput scenarios ----------------------------------

def bare_uploads(sandbox: SandboxProcess, pack_id: str, folder: Path, concurrency: int, cwd: Path) -> Finished:
    """A process that only imports httpx2 and makes the three calls per file of ``folder``
    (``POST /files``, ``PUT``, add-image) into ``pack_id``, ``concurrency`` files in flight, remembering
    nothing (``bare_client.py uploads``)."""
    argv = [sys.executable, str(BARE_CLIENT), "uploads", sandbox.base_url, pack_id, str(folder), str(concurrency)]
    return run_child(argv, cwd=cwd, timeout=600, server=sandbox)


def bare_downloads(sandbox: SandboxProcess, urls: Sequence[str], concurrency: int, cwd: Path) -> Finished:
    """A process that only imports httpx2 and streams ``urls`` through ``concurrency`` connections,
    writing nothing anywhere (``bare_client.py downloads``)."""
    listed = cwd / "bare_urls.json"
    listed.write_text(json.dumps(list(urls)), encoding="utf-8")
    argv = [sys.executable, str(BARE_CLIENT), "downloads", str(listed), str(concurrency)]
    return run_child(argv, cwd=cwd, timeout=600, server=sandbox)


def bare_mirror(sandbox: SandboxProcess, pack_id: str, urls: Sequence[str], concurrency: int, cwd: Path) -> Finished:
    """A process that only imports httpx2 and, per URL, downloads it and makes the three upload calls
    into ``pack_id``, ``concurrency`` images in flight (``bare_client.py mirror``)."""
    listed = cwd / "bare_urls.json"
    listed.write_text(json.dumps(list(urls)), encoding="utf-8")
    argv = [sys.executable, str(BARE_CLIENT), "mirror", sandbox.base_url, pack_id, str(listed), str(concurrency)]
    return run_child(argv, cwd=cwd, timeout=600, server=sandbox)


CPU_TARGET = 1.5


@dataclass
class Throughput:
    """One measured packsync run of a throughput scenario, its concurrency bound, and the bare httpx2
    client making the same calls in the same run."""

    images: int
    bound_s: float
    packsync: Finished
    bare: Finished

    @property
    def ratio(self) -> float:
        """The run's rate ÷ the bound's: bound time ÷ wall time."""
        return self.bound_s / self.packsync.wall_s

    @property
    def cpu_ratio(self) -> float:
        """packsync's CPU per image ÷ the bare client's (the same images, so the totals' ratio)."""
        return self.packsync.cpu_s / self.bare.cpu_s

    def per_1000(self, cpu_s: float) -> float:
        return cpu_s / self.images * 1000

    def note(self) -> str:
        """The absolute figures of a throughput row: both CPU costs and what the bare client achieved."""
        ours, bare = self.packsync, self.bare
        text = (f"packsync CPU {self.per_1000(ours.cpu_s):.2f} s per 1,000 images ({ours.cpu_s:.2f} s)"
                f"{_server(ours)}; ")
        if bare.returncode != 0:
            return text + f"the bare httpx2 client failed: {bare.tail(3)}"
        return text + (f"a bare httpx2 client making the same calls: {bare.wall_s:.2f} s = "
                       f"{self.bound_s / bare.wall_s:.2f} of the bound, CPU {self.per_1000(bare.cpu_s):.2f} s per "
                       f"1,000 images ({bare.cpu_s:.2f} s){_server(bare)}")

    def cpu_row(self, id: str, scenario: str, complete: bool) -> Row:
        """The CPU figure of a throughput row: packsync's CPU per image ÷ the bare client's, ≤ 1.5."""
        ours, bare = self.packsync, self.bare
        measured = complete and bare.returncode == 0 and bare.cpu_s > 0
        value = self.cpu_ratio if measured else None
        return Row(
            f"{id}-cpu", scenario, "packsync's CPU per image ÷ a bare httpx2 client's making the same calls "
            "(user + system, whole processes, start-up included)",
            value, f"≤ {CPU_TARGET}", measured and self.cpu_ratio <= CPU_TARGET,
            f"packsync {self.per_1000(ours.cpu_s):.2f} s per 1,000 images, bare httpx2 client "
            f"{self.per_1000(bare.cpu_s):.2f} s per 1,000 images ({self.images:,} images each)"
            + ("" if measured else "; NOT MEASURED: " + ("the bare client failed" if complete else "the run failed")),
            self.details(), correct=measured)

    def details(self) -> dict[str, Any]:
        return {"images": self.images, "bound_s": self.bound_s, "wall_s": self.packsync.wall_s,
                "cpu_s": self.packsync.cpu_s, "max_rss_bytes": self.packsync.max_rss_bytes,
                "sandbox_cpu_s": self.packsync.server_cpu_s, "returncode": self.packsync.returncode,
                "bare_wall_s": self.bare.wall_s, "bare_cpu_s": self.bare.cpu_s,
                "bare_sandbox_cpu_s": self.bare.server_cpu_s, "bare_returncode": self.bare.returncode}


def _server(done: Finished) -> str:
    return "" if done.server_cpu_s is None else f", sandbox CPU meanwhile {done.server_cpu_s:.2f} s"


def packsync_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "packsync", "-c", str(config), *args]


# -- config and trees -------------------------------------------------------------------------------

@dataclass
class Setup:
    """A config file with its state (a SQLite file, or a PostgreSQL ``state_url`` with the environment
    variable holding its password and this site's name) and mappings, written as TOML."""

    root: Path
    base_url: str
    concurrency: int = 8
    daemon: dict[str, float] = field(default_factory=dict)
    mappings: list[tuple[Path, str]] = field(default_factory=list)
    state_path: Path | None = None
    state_url: str | None = None
    password_env: str | None = None
    site: str | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def write(self) -> Path:
        def q(value: object) -> str:
            return json.dumps(str(value))

        lines = ["[genviral]", f"base_url = {q(self.base_url)}", f"concurrency = {self.concurrency}", "[state]"]
        if self.state_url is not None:
            lines += [f"url = {q(self.state_url)}"]
            lines += [f"{key} = {q(value)}" for key, value in (("password_env", self.password_env),
                                                                ("site", self.site)) if value is not None]
        else:
            lines += [f"path = {q(self.state_path or self.root / 'state' / 'state.db')}"]
        if self.daemon:
            lines += ["[daemon]"] + [f"{k} = {v}" for k, v in self.daemon.items()]
        lines += ["[http]", 'listen = "127.0.0.1:0"']  # the page on, as shipped, on any free port
        for path, pack_id in self.mappings:
            lines += ["[[mappings]]", f"path = {q(path)}", f"pack_id = {q(pack_id)}"]
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return self.config_path


def add_astria_mapping(config: Path, astria_url: str, key: str, source: str, pack_id: str) -> None:
    """Append to ``config`` the sandbox's Astria (its key in a file of its own beside it, chmod 600) and a
    mapping of ``source`` (``astria_pack = 12``, ``astria_tune = 690200``) into ``pack_id``."""
    key_file = config.parent / "astria.key"
    key_file.write_text(key, encoding="utf-8")
    key_file.chmod(0o600)
    with config.open("a", encoding="utf-8") as handle:
        handle.write(f"[astria]\nbase_url = {json.dumps(astria_url)}\ntoken_file = {json.dumps(str(key_file))}\n"
                     f"[[mappings]]\n{source}\npack_id = {json.dumps(pack_id)}\n")


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
    """One line of the results table: a figure that is a ratio, its target, and the absolute numbers.

    ``passed``: the figure met its target and the run did what it must; ``correct``: the latter alone
    (complete, the calls expected, nothing read...), None when the figure is all the row checks. A
    smoke run, whose figures say nothing, is judged on ``correct``.
    """

    id: str
    scenario: str
    figure: str
    value: float | None
    target: str
    passed: bool | None
    info: str
    details: dict[str, Any] = field(default_factory=dict)
    correct: bool | None = None


@dataclass
class Context:
    """What a scenario gets: its sizes, a scratch folder, the cache folder, a logger, and its sandboxes."""

    smoke: bool
    workdir: Path
    cache_dir: Path
    log: Callable[[str], None]
    sandboxes: list[SandboxProcess] = field(default_factory=list)

    def sandbox(self, latency_s: float = 0.0, enrich_delays: tuple[float, float] = (0.2, 0.3)) -> SandboxProcess:
        """A sandbox process for this scenario, started by ``with``; its CPU time goes in the scenario's rows."""
        sandbox = SandboxProcess(latency_s, enrich_delays)
        self.sandboxes.append(sandbox)
        return sandbox

    def sandbox_cpu_s(self) -> float:
        """CPU seconds used by the scenario's sandbox processes, all stopped by now."""
        return sum(sandbox.stop() for sandbox in self.sandboxes)
