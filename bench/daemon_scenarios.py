"""A real ``packsync daemon`` watching a folder, the API adding 40 ms to every call.

Files are written in a staging folder outside the watched one (same file system) and renamed in, as
a finished download or export would arrive. The rename is timed in this process, each request's
arrival in the sandbox's (``sandbox_process``): both read ``time.monotonic()``, which on Linux is the
system-wide ``CLOCK_MONOTONIC``, so the two compare directly.
"""

from __future__ import annotations

import os
import subprocess
import time
from functools import partial
from pathlib import Path

from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    PACKS_GET,
    STORAGE_PUT,
    Context,
    Row,
    Setup,
    calls_dict,
    percentile,
    start_daemon,
    status_json,
    write_images,
)
from helpers import DaemonProcess, wait_until
from sandbox_process import SandboxProcess

LATENCY_S = 0.040
DEBOUNCE_S = 1.0
CONCURRENCY = 8
SLACK_S = 0.5


def _stop(daemon: DaemonProcess) -> int | None:
    """Stop the daemon; its exit code, or None when it had to be killed."""
    try:
        return daemon.stop(timeout=15)
    except subprocess.TimeoutExpired:
        return None
    finally:
        daemon.sock.close()
        daemon.log.close()


def _start(work: Path, sandbox: SandboxProcess, name: str) -> tuple[Path, str, Path, DaemonProcess]:
    pack_id = sandbox.new_pack(name)
    folder = work / "watched"
    write_images(folder, [1], prefix="seed")  # a folder that already holds a synced image
    config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)],
                   daemon={"debounce_s": DEBOUNCE_S, "rescan_interval_s": 3600}).write()
    daemon = start_daemon(config, work)
    daemon.wait_ready()
    wait_until(partial(_holds, sandbox, pack_id, 1), timeout=30, what="seed image in the pack")
    _wait_quiet(sandbox, 2.0, timeout=60)  # the start-up sync and its metadata polls are over
    return folder, pack_id, config, daemon


def _holds(sandbox: SandboxProcess, pack_id: str, count: int) -> bool:
    return sandbox.image_count(pack_id) == count


def timed_drop(sandbox: SandboxProcess, daemon: DaemonProcess, source: Path, folder: Path, n: int) -> float:
    """Rename ``source`` into the watched ``folder`` (drop ``n``): seconds until the sandbox receives its
    add-image call."""
    dropped_at = time.monotonic()
    os.rename(source, folder / source.name)
    added_at = sandbox.wait_for_arrival(*ADD_IMAGE, since=dropped_at, timeout=60)
    if added_at is None:
        raise RuntimeError(f"no add-image call within 60 s of drop {n}:\n{daemon.output()[-2000:]}")
    return added_at - dropped_at


def _wait_quiet(sandbox: SandboxProcess, quiet_s: float, timeout: float) -> None:
    def quiet() -> bool:
        return time.monotonic() - sandbox.last_arrival() >= quiet_s

    wait_until(quiet, timeout=timeout, interval=0.1, what=f"{quiet_s} s without API calls")


def run_drops(ctx: Context) -> list[Row]:
    drops = 5 if ctx.smoke else 50
    work = ctx.workdir / "daemon-drop"
    staging = work / "staging"
    write_images(staging, range(1000, 1000 + drops), prefix="drop")
    latencies = []
    with ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        folder, pack_id, _config, daemon = _start(work, sandbox, "drops")
        try:
            ctx.log(f"daemon drop: {drops} files, one at a time")
            for i, source in enumerate(sorted(staging.iterdir())):
                latencies.append(timed_drop(sandbox, daemon, source, folder, i + 1))
                wait_until(partial(_holds, sandbox, pack_id, i + 2), timeout=30, what="image in the pack")
                time.sleep(0.2)
        finally:
            code = _stop(daemon)
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    limit = DEBOUNCE_S + SLACK_S
    return [Row(
        "daemon-drop", f"daemon: a file dropped (renamed) into a watched folder, debounce_s = {DEBOUNCE_S}, "
        f"+{LATENCY_S * 1000:.0f} ms per call",
        f"time from rename to the sandbox receiving its add-image call, p95 over {drops} drops ÷ "
        f"(debounce + {SLACK_S} s)",
        p95 / limit, "≤ 1", p95 <= limit,
        f"p50 {p50:.3f} s, p95 {p95:.3f} s, max {max(latencies):.3f} s (nearest-rank); bound {limit:.1f} s; "
        f"daemon exit {code}",
        {"latencies_s": latencies, "p50_s": p50, "p95_s": p95, "debounce_s": DEBOUNCE_S, "daemon_exit": code})]


def run_burst(ctx: Context) -> list[Row]:
    files = 100 if ctx.smoke else 1000
    work = ctx.workdir / "daemon-burst"
    staging = work / "staging"
    write_images(staging, range(1000, 1000 + files), prefix="burst")
    with ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        folder, pack_id, config, daemon = _start(work, sandbox, "burst")
        try:
            sandbox.forget_arrivals()
            ctx.log(f"daemon burst: {files} files renamed in at once")
            started = time.monotonic()
            for source in sorted(staging.iterdir()):
                os.rename(source, folder / source.name)
            renamed_s = time.monotonic() - started
            wait_until(lambda: sandbox.image_count(pack_id) == files + 1, timeout=600, interval=0.1,
                       what="every burst image in the pack")
            landed_s = time.monotonic() - started

            def settled() -> bool:
                return bool(status_json(config, work)["mappings"][0]["metadata"]["pending"] == 0)

            wait_until(settled, timeout=300, interval=1.0, what="metadata of every image in the state")
            settled_s = time.monotonic() - started
            _wait_quiet(sandbox, 3.0, timeout=120)
        finally:
            code = _stop(daemon)
        calls = sandbox.calls
        last_add = max(sandbox.arrivals_of(*ADD_IMAGE))
        gets = sandbox.arrivals_of(*PACKS_GET)
    polls_after = sum(1 for t in gets if t > last_add)
    reads_before = len(gets) - polls_after
    minimum = 3 * files + 1 + polls_after
    total = sum(calls.values())
    transfers = calls[CREATE_UPLOAD] == calls[STORAGE_PUT] == calls[ADD_IMAGE] == files
    return [Row(
        "daemon-burst", f"daemon: {files:,} files renamed into a watched folder at once",
        "all API calls ÷ minimum, minimum = 3 per file + 1 pack read for the sync + the metadata polls "
        "(GET /packs/{id}) made after the last add-image",
        total / minimum, "≤ 1.1", transfers and total / minimum <= 1.1,
        f"{total} calls vs minimum {minimum}; GET /packs/{{id}}: {reads_before} up to the last add-image, "
        f"{polls_after} after; all in the pack after {landed_s:.1f} s, metadata in the state after {settled_s:.1f} s",
        {"calls": calls_dict(calls), "minimum": minimum, "pack_reads_before_last_add": reads_before,
         "metadata_polls_after_last_add": polls_after, "renamed_s": renamed_s, "landed_s": landed_s,
         "settled_s": settled_s, "get_times_s": [round(t - started, 3) for t in gets],
         "last_add_s": round(last_add - started, 3), "daemon_exit": code}, transfers)]
