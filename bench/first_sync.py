"""First sync of a folder of small images against an API that adds 40 ms (or 150 ms) to every call.

Figures: achieved files/s ÷ the concurrency bound (``concurrency`` calls in flight, 3 calls per image,
so N·3·latency ÷ concurrency seconds at best); packsync's CPU per image ÷ a bare httpx2 client's
making the same calls in the same run (``harness.bare_uploads``, also the floor this machine and this
sandbox allow); and, at 40 ms, the speed-up over a plain sequential client. packsync's time is the
whole ``packsync run --no-wait`` process, interpreter start-up included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    PACKS_GET,
    STORAGE_PUT,
    Context,
    Row,
    Setup,
    Throughput,
    bare_uploads,
    calls_dict,
    child_env,
    packsync_argv,
    run_child,
    write_images,
)
from sandbox_process import SandboxProcess

LATENCY_S = 0.040
SLOW_LATENCY_S = 0.150
CONCURRENCY = 8
CALLS_PER_IMAGE = 3
TARGET = 0.90
SLOW_TARGET = 0.95
SPEEDUP_TARGET = 6


def run(ctx: Context) -> list[Row]:
    """40 ms per call: the bound, the CPU per image, and the speed-up over a sequential client."""
    files = 100 if ctx.smoke else 1000
    baseline_files = 20 if ctx.smoke else 150
    work = ctx.workdir / "first-sync"
    with ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        measured, complete, details = _measure(ctx, sandbox, work, files, LATENCY_S)

        ctx.log(f"first sync: sequential baseline over {baseline_files} images")
        baseline_pack = sandbox.new_pack("sequential-baseline")
        baseline_folder = work / "baseline"
        write_images(baseline_folder, range(100_001, 100_001 + baseline_files), side=16)
        script = Path(__file__).with_name("sequential_client.py")
        seq = run_child([sys.executable, str(script), sandbox.base_url, baseline_pack, str(baseline_folder)],
                        cwd=work, env=child_env(), timeout=600)
        if seq.returncode != 0 or sandbox.image_count(baseline_pack) != baseline_files:
            raise RuntimeError(f"sequential baseline failed: {seq.tail()}")
        seq_result = json.loads(seq.stdout)

    rate = files / measured.packsync.wall_s
    seq_rate = seq_result["files"] / seq_result["seconds"]
    speedup = rate / seq_rate
    return [
        *_rows("first-sync", measured, LATENCY_S, TARGET, complete, details),
        Row("first-sync-vs-sequential", "same, against a plain sequential httpx2 client (POST /files, PUT, add-image)",
            "speed-up: packsync files/s ÷ sequential files/s "
            f"(baseline on {seq_result['files']} files, loop time only)",
            speedup, f"≥ {SPEEDUP_TARGET}×", complete and speedup >= SPEEDUP_TARGET,
            f"packsync {rate:.1f} files/s; sequential {seq_result['files']} files in {seq_result['seconds']:.2f} s = "
            f"{seq_rate:.2f} files/s",
            {"sequential_files": seq_result["files"], "sequential_s": seq_result["seconds"],
             "sequential_rate": seq_rate, "packsync_rate": rate}, complete),
    ]


def run_slow(ctx: Context) -> list[Row]:
    """150 ms per call, as a distant API: packsync must come closer still to the bound, and its
    start-up weighs less. 1,000 images: a bound of 1000·3·0.15 ÷ 8 ≈ 56 s, and the bare client's run
    as long again."""
    files = 40 if ctx.smoke else 1000
    work = ctx.workdir / "first-sync-150ms"
    with ctx.sandbox(latency_s=SLOW_LATENCY_S) as sandbox:
        measured, complete, details = _measure(ctx, sandbox, work, files, SLOW_LATENCY_S)
    return _rows("first-sync-150ms", measured, SLOW_LATENCY_S, SLOW_TARGET, complete, details)


def _measure(ctx: Context, sandbox: SandboxProcess, work: Path, files: int,
             latency_s: float) -> tuple[Throughput, bool, dict[str, Any]]:
    """packsync's first sync of ``files`` new images into an empty pack, then the bare client's of the
    same files into another; the measurements, whether packsync's run was complete, and its details."""
    pack_id = sandbox.new_pack("first-sync")
    folder = work / "pics"
    write_images(folder, range(1, files + 1), side=16)
    config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)]).write()
    ctx.log(f"first sync: packsync run over {files} images, {latency_s * 1000:.0f} ms per call, "
            f"concurrency {CONCURRENCY}")
    done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=900, server=sandbox)
    calls = sandbox.calls
    expected = {CREATE_UPLOAD: files, STORAGE_PUT: files, ADD_IMAGE: files, PACKS_GET: 1}
    complete = done.returncode == 0 and sandbox.image_count(pack_id) == files

    ctx.log("first sync: a bare httpx2 client making the same calls")
    bare_pack = sandbox.new_pack("bare-client")
    bare = bare_uploads(sandbox, bare_pack, folder, CONCURRENCY, work)
    if bare.returncode == 0 and sandbox.image_count(bare_pack) != files:
        raise RuntimeError(f"the bare client added {sandbox.image_count(bare_pack)} of {files} images")
    measured = Throughput(files, files * CALLS_PER_IMAGE * latency_s / CONCURRENCY, done, bare)
    details = {**measured.details(), "latency_s": latency_s, "concurrency": CONCURRENCY, "calls": calls_dict(calls),
               "calls_as_expected": dict(calls) == expected, "output_tail": done.tail()}
    return measured, complete, details


def _rows(id: str, measured: Throughput, latency_s: float, target: float, complete: bool,
          details: dict[str, Any]) -> list[Row]:
    done, files, bound_s = measured.packsync, measured.images, measured.bound_s
    scenario = (f"first sync, {files:,} small images, +{latency_s * 1000:.0f} ms per API and storage call, "
                f"concurrency = {CONCURRENCY}")
    rate = files / done.wall_s
    throughput = Row(
        id, scenario,
        f"files/s ÷ concurrency bound (N·3·{latency_s * 1000:.0f} ms ÷ {CONCURRENCY}); whole-process wall time "
        "incl. Python start-up",
        measured.ratio, f"≥ {target:.2f}", complete and measured.ratio >= target,
        f"{files:,} files in {done.wall_s:.2f} s = {rate:.1f} files/s; bound {bound_s:.2f} s = "
        f"{files / bound_s:.1f} files/s; {measured.note()}"
        + ("" if complete else f"; RUN FAILED (exit {done.returncode}): {done.tail(3)}"),
        details, complete)
    return [throughput, measured.cpu_row(id, scenario, complete)]
