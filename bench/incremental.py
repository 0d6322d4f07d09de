"""A change costs what changed: one file dropped into a synced folder of 100,000 under a real daemon, and
a metadata round over a sidecar mapping of 20,000 files where nothing changed.

Both start from a synced state that the bench seeds rather than syncs (syncing 100,000 images for real
takes tens of minutes and is not what is measured): the sandbox is given the pack's images, their AI
metadata settled (``RecordingSandbox.seed_settled``), and the state their records, made from a real
scan of the folder — exactly what a finished sync leaves. The daemon's own start-up sync then checks
it: a full walk, a pack read and a plan with nothing to do.

- ``daemon-drop-100k``: files renamed in one at a time, as in ``daemon-drop``. The daemon is traced
  with ``strace -f -c -e`` ``STRACE_CALLS`` from just before the first rename until its image
  is added and the daemon is quiet again: the stat/getdents calls of that one change's sync
  (target ≤ 2,000; a full walk makes ≥ 100,000). Then rename → add-image p95 over the drops, against
  debounce + 0.5 s as for the 50-file folder.
- ``sidecar-round``: in this process, on the engine the daemon runs (``MetadataPoller.poll`` then
  ``Syncer.write_sidecars``, as ``Daemon._metadata_loop`` calls them): a 20,000-file mapping with
  sidecars, every image's metadata completed and every sidecar written, and a second small pack with
  an image whose metadata is pending, so that rounds are made. The figure is the event loop's thread
  time (``time.thread_time`` in the loop's thread: the file work in worker threads is not the loop's)
  over one round, the median of 10 (target ≤ 10 ms); a loop-lag probe's worst delay is shown too, and
  so is the full pass every round made before (``sidecars.observe`` and ``apply`` over every file, as a
  full sync's ``sidecars`` action still does).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from daemon_scenarios import DEBOUNCE_S, SLACK_S, _holds, _stop, _wait_quiet, timed_drop
from harness import Context, Row, Setup, median, percentile, start_daemon, write_images
from helpers import DaemonProcess, wait_until
from sandbox_process import TOKEN, SandboxProcess

from packsync.config import load_config
from packsync.model import ManagedImage, Metadata
from packsync.sandbox.store import ENRICH_MODEL
from packsync.sources.folder import filters_for, scan_folder
from packsync.state.store import State

STAT_TARGET = 2_000
#: Every call of the stat family and the directory reads: strace 6.1's ``%stat`` class alone leaves out
#: ``newfstatat`` and ``statx``, which are what Python's ``os.stat`` and ``DirEntry.stat`` make here.
STRACE_CALLS = "trace=%stat,%lstat,%fstat,statx,newfstatat,getdents64"
LOOP_TARGET_S = 0.010
ROUNDS = 10
DESCRIPTION = "A 8×8 PNG image."
KEYWORDS = ("png", "square", "8x8")


def seed(sandbox: SandboxProcess, config_path: Path, folder: Path, pack_id: str) -> int:
    """Make ``folder`` synced into ``pack_id`` as a finished sync leaves it: the pack holds an image per
    content, their metadata completed; the state records them, with the scan's file cache."""
    config = load_config(config_path)
    (mapping,) = [m for m in config.mappings if m.path == folder]
    scan = scan_folder(folder, {}, filters_for(mapping))
    items = sorted(scan.items, key=lambda i: i.key)
    seeded = sandbox.seed_settled(pack_id, [i.key for i in items], DESCRIPTION, list(KEYWORDS))
    metadata = Metadata("completed", DESCRIPTION, KEYWORDS, None, ENRICH_MODEL)
    assert config.state.path is not None, "Setup writes the state path"
    state = State(config.state.path)
    try:
        state.files.save_cache(mapping.label, {}, scan.cache)
        state.images.record(ManagedImage(pack_id, image_id, item.sha256, url, item.key, mapping.label, metadata)
                            for item, (image_id, url) in zip(items, seeded, strict=True))
        state.mappings.save(mapping.label, pack_id=pack_id)
    finally:
        state.close()
    return len(items)


# -- one file dropped into 100,000 ------------------------------------------------------------------

def run_drop_100k(ctx: Context) -> list[Row]:
    files, drops = (2_000, 5) if ctx.smoke else (100_000, 20)
    work = ctx.workdir / "daemon-drop-100k"
    folder, staging = work / "watched", work / "staging"
    ctx.log(f"drop into {files:,}: writing the tree")
    write_images(folder, range(files), prefix="seed")
    write_images(staging, range(files, files + drops), prefix="drop")
    latencies: list[float] = []
    with ctx.sandbox(latency_s=0.040, enrich_delays=(0.0, 0.0)) as sandbox:
        pack_id = sandbox.new_pack("drop-100k")
        config = Setup(work, sandbox.base_url, mappings=[(folder, pack_id)],
                       daemon={"debounce_s": DEBOUNCE_S, "rescan_interval_s": 3600}).write()
        ctx.log(f"drop into {files:,}: seeding the pack and the state")
        seed(sandbox, config, folder, pack_id)
        started = time.monotonic()
        daemon = start_daemon(config, work)
        try:
            daemon.wait_ready(timeout=600)
            _wait_quiet(sandbox, 2.0, timeout=600)
            startup_s = time.monotonic() - started
            ctx.log(f"drop into {files:,}: the daemon's start-up sync took {startup_s:.1f} s; dropping")
            traced = _traced_drop(sandbox, daemon, sorted(staging.iterdir())[0], folder, work)
            latencies.append(traced.latency_s)
            wait_until(partial(_holds, sandbox, pack_id, files + 1), timeout=60, what="image in the pack")
            for i, source in enumerate(sorted(staging.iterdir())[1:]):
                time.sleep(0.2)
                latencies.append(timed_drop(sandbox, daemon, source, folder, i + 2))
                wait_until(partial(_holds, sandbox, pack_id, files + i + 2), timeout=60, what="image in the pack")
        finally:
            code = _stop(daemon)
        floor_s = _bare_pack_get(sandbox.base_url, pack_id)
    calls = traced.calls
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    limit = DEBOUNCE_S + SLACK_S
    shutil.rmtree(folder)
    scenario = f"daemon: one file dropped (renamed) into a synced folder of {files:,}, debounce_s = {DEBOUNCE_S}"
    return [
        Row("daemon-drop-100k", scenario, "stat-family + getdents64 calls of the daemon (strace -f -c) for that "
            f"change's sync ÷ {STAT_TARGET:,}", calls / STAT_TARGET, "≤ 1", calls <= STAT_TARGET,
            f"{calls} calls ({traced.by_call}); the start-up sync took {startup_s:.1f} s; daemon exit {code}",
            {"calls": calls, "by_call": traced.by_call, "startup_s": startup_s}),
        Row("daemon-drop-100k", scenario, f"rename → add-image p95 over {drops} drops ÷ (debounce + {SLACK_S} s)",
            p95 / limit, "≤ 1", p95 <= limit, f"p50 {p50:.3f} s, p95 {p95:.3f} s, max {max(latencies):.3f} s; "
            f"a bare httpx2 GET of the {files + drops:,}-image pack (the sandbox serialising it): {floor_s:.3f} s",
            {"latencies_s": latencies, "p50_s": p50, "p95_s": p95, "bare_pack_get_s": floor_s}),
    ]


def _bare_pack_get(base_url: str, pack_id: str, times: int = 5) -> float:
    """The floor of a metadata round on this machine: the median wall time of a bare httpx2 ``GET`` of the
    pack, whose answer the sandbox (another process, on the same cores) serialises afresh each time."""
    import httpx2

    took = []
    with httpx2.Client(timeout=120.0, trust_env=False, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for _ in range(times):
            started = time.monotonic()
            client.get(f"{base_url}/packs/{pack_id}").raise_for_status()
            took.append(time.monotonic() - started)
    return median(took)


class Traced(NamedTuple):
    latency_s: float
    calls: int
    by_call: dict[str, int]


def _traced_drop(sandbox: SandboxProcess, daemon: DaemonProcess, source: Path, folder: Path, work: Path) -> Traced:
    """Rename ``source`` into ``folder`` with the daemon under ``strace -c``, from just before the rename to
    one second after its image was added (the sync is over, its metadata poll made)."""
    out = work / "strace.txt"
    strace = subprocess.Popen(["strace", "-f", "-c", "-e", STRACE_CALLS, "-o", str(out), "-p", str(daemon.proc.pid)],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert strace.stderr is not None
        # strace says it attached (one line per thread) before it traces: wait for the first.
        strace.stderr.readline()
        time.sleep(0.5)
        latency_s = timed_drop(sandbox, daemon, source, folder, 1)
        _wait_quiet(sandbox, 1.0, timeout=60)
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=30)
    by_call: dict[str, int] = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] not in ("total", "syscall") and fields[3].isdigit():
            by_call[fields[-1]] = int(fields[3])
    return Traced(latency_s, sum(by_call.values()), by_call)


# -- a metadata round where nothing changed ----------------------------------------------------------

def run_sidecar_round(ctx: Context) -> list[Row]:
    files = 500 if ctx.smoke else 20_000
    work = ctx.workdir / "sidecar-round"
    folder, other = work / "described", work / "pending"
    write_images(folder, range(files), prefix="img")
    write_images(other, [files], prefix="wait")
    with ctx.sandbox(enrich_delays=(3600.0, 0.0)) as sandbox:
        pack_id, waiting = sandbox.new_pack("described"), sandbox.new_pack("pending")
        config = Setup(work, sandbox.base_url, mappings=[(folder, pack_id), (other, waiting)]).write()
        text = config.read_text(encoding="utf-8").replace(f'path = "{folder}"', f'path = "{folder}"\nsidecars = "xmp"')
        config.write_text(text, encoding="utf-8")
        ctx.log(f"sidecar round: seeding {files:,} files and writing their sidecars")
        seed(sandbox, config, folder, pack_id)
        result = asyncio.run(_rounds(config, sandbox.base_url))
    written = sum(1 for path in folder.iterdir() if path.suffix == ".xmp")
    shutil.rmtree(folder)
    loop_s, lag_s, full_s = result["loop_s"], result["lag_s"], result["full_pass_loop_s"]
    return [Row(
        "sidecar-round", f"a metadata round over a {files:,}-file sidecar mapping where nothing changed "
        "(another pack still pending, so rounds are made)",
        f"event-loop thread time of one round (poll + sidecars), median of {ROUNDS} ÷ {LOOP_TARGET_S * 1000:.0f} ms",
        loop_s / LOOP_TARGET_S, "≤ 1", loop_s <= LOOP_TARGET_S,
        f"{loop_s * 1000:.2f} ms per round (worst loop lag {lag_s * 1000:.1f} ms); a full sidecar pass, as every "
        f"round made before: {full_s * 1000:.0f} ms on the loop, {result['full_pass_wall_s']:.2f} s in all; "
        f"{written:,} sidecars", result | {"sidecars": written}, written == files)]


async def _rounds(config_path: Path, base_url: str) -> dict[str, Any]:
    from packsync.app import open_app
    from packsync.engine.sync import SyncOptions

    config = load_config(config_path)
    async with open_app(config, TOKEN) as app:
        await app.syncer.sync(SyncOptions(wait=False))  # a full sync: the pending image added, every sidecar written
        loop_times, lags = [], []
        for _ in range(ROUNDS):
            pending = app.state.metadata.pending(app.syncer.mapped_pack_ids())
            probe = _LagProbe()
            task = asyncio.create_task(probe.run())
            await asyncio.sleep(0.01)
            before = time.thread_time()
            await app.syncer.metadata_round(list(pending))
            loop_times.append(time.thread_time() - before)
            probe.stop = True
            await task
            lags.append(probe.worst)
        from packsync.engine import sidecars

        described = next(m for m in config.mappings if m.sidecars == "xmp")
        wall, before = time.monotonic(), time.thread_time()
        await sidecars.apply(sidecars.observe(app.state, described).actions)  # what a full sync's pass does
        full_loop, full_wall = time.thread_time() - before, time.monotonic() - wall
    return {"loop_s": median(loop_times), "lag_s": max(lags), "full_pass_loop_s": full_loop,
            "full_pass_wall_s": full_wall, "rounds_loop_s": loop_times}


class _LagProbe:
    """How late the loop wakes a task sleeping 1 ms at a time: the longest the loop was held."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            before = time.monotonic()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.monotonic() - before - 0.001)
