"""First sync of a folder of small images against an API that adds 40 ms to every call.

Figures: achieved files/s ÷ the concurrency bound (``concurrency`` calls in flight, 3 calls per image,
so N·3·latency ÷ concurrency seconds at best), and the speed-up over a plain sequential client.
packsync's time is the whole ``packsync run --no-wait`` process, interpreter start-up included. The
same calls are also made by a bare aiohttp client in the same run (``harness.bare_uploads``): the
floor this machine and this sandbox allow.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    PACKS_GET,
    STORAGE_PUT,
    Context,
    RecordingSandbox,
    Row,
    Setup,
    bare_uploads,
    calls_dict,
    child_env,
    floor_note,
    packsync_argv,
    run_child,
    write_images,
)

LATENCY_S = 0.040
CONCURRENCY = 8
CALLS_PER_IMAGE = 3


def run(ctx: Context) -> list[Row]:
    files = 100 if ctx.smoke else 1000
    baseline_files = 20 if ctx.smoke else 150
    work = ctx.workdir / "first-sync"
    bound_s = files * CALLS_PER_IMAGE * LATENCY_S / CONCURRENCY

    with RecordingSandbox(latency_s=LATENCY_S) as sandbox:
        pack_id = sandbox.new_pack("first-sync")
        folder = work / "pics"
        write_images(folder, range(1, files + 1), side=16)
        setup = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)])
        config = setup.write()
        ctx.log(f"first sync: packsync run over {files} images, {LATENCY_S * 1000:.0f} ms per call, "
                f"concurrency {CONCURRENCY}")
        done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=600)
        calls = sandbox.calls
        expected = {CREATE_UPLOAD: files, STORAGE_PUT: files, ADD_IMAGE: files, PACKS_GET: 1}
        complete = done.returncode == 0 and sandbox.image_count(pack_id) == files

        ctx.log("first sync: a bare aiohttp client making the same calls")
        floor_pack = sandbox.new_pack("bare-client")
        floor = bare_uploads(sandbox.base_url, floor_pack, folder, CONCURRENCY, work)
        if floor.returncode == 0 and sandbox.image_count(floor_pack) != files:
            raise RuntimeError(f"the bare client added {sandbox.image_count(floor_pack)} of {files} images")

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

    rate = files / done.wall_s
    bound_rate = files / bound_s
    seq_rate = seq_result["files"] / seq_result["seconds"]
    details = {"files": files, "latency_s": LATENCY_S, "concurrency": CONCURRENCY, "wall_s": done.wall_s,
               "cpu_s": done.cpu_s, "max_rss_bytes": done.max_rss_bytes, "bound_s": bound_s,
               "returncode": done.returncode, "calls": calls_dict(calls), "calls_as_expected": dict(calls) == expected,
               "output_tail": done.tail(), "bare_client_wall_s": floor.wall_s, "bare_client_cpu_s": floor.cpu_s}
    ratio = rate / bound_rate
    first = Row(
        "first-sync", f"first sync, {files:,} small images, +{LATENCY_S * 1000:.0f} ms per API and storage call, "
        f"concurrency = {CONCURRENCY}",
        "files/s ÷ concurrency bound (N·3·40 ms ÷ 8); whole-process wall time incl. Python start-up",
        ratio, "≥ 0.88", complete and ratio >= 0.88,
        f"{files:,} files in {done.wall_s:.2f} s = {rate:.1f} files/s; bound {bound_s:.2f} s = {bound_rate:.1f} "
        f"files/s; packsync CPU {done.cpu_s:.1f} s; {floor_note(floor, bound_s, 'calls')} (CPU {floor.cpu_s:.1f} s)"
        + ("" if complete else f"; RUN FAILED (exit {done.returncode})"),
        details)
    speedup = rate / seq_rate
    second = Row(
        "first-sync-vs-sequential", "same, against a plain sequential httpx client (POST /files, PUT, add-image)",
        f"speed-up: packsync files/s ÷ sequential files/s (baseline on {seq_result['files']} files, loop time only)",
        speedup, "≥ 6×", complete and speedup >= 6,
        f"packsync {rate:.1f} files/s; sequential {seq_result['files']} files in {seq_result['seconds']:.2f} s = "
        f"{seq_rate:.2f} files/s",
        {"sequential_files": seq_result["files"], "sequential_s": seq_result["seconds"], "sequential_rate": seq_rate,
         "packsync_rate": rate})
    return [first, second]
