"""Adoption by content after the state was lost: 1,000 synced images, the state deleted, one run.

Setup (not measured): 1,000 images synced for real, no added latency; then the state is deleted and
every call gets 40 ms. The run must add and upload nothing (0 POST /files, 0 PUT, 0 add-image) and
download each image once; its time is compared with the concurrency bound of those downloads
(N·40 ms ÷ concurrency), whole process, start-up and hashing the 1,000 local files included; and its
CPU per image with a bare httpx2 client's making the same downloads in the same run.
"""

from __future__ import annotations

import shutil

from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    STORAGE_PUT,
    Context,
    Row,
    Setup,
    Throughput,
    bare_downloads,
    calls_dict,
    packsync_argv,
    run_child,
    write_images,
)

LATENCY_S = 0.040
CONCURRENCY = 8
TARGET = 0.90


def run(ctx: Context) -> list[Row]:
    files = 100 if ctx.smoke else 1000
    work = ctx.workdir / "adoption"
    with ctx.sandbox() as sandbox:
        pack_id = sandbox.new_pack("adoption")
        folder = work / "pics"
        write_images(folder, range(1, files + 1), side=16)
        setup = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)])
        config = setup.write()
        ctx.log(f"adoption: setup sync of {files} images (not measured)")
        first = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=600)
        if first.returncode != 0 or sandbox.image_count(pack_id) != files:
            raise RuntimeError(f"setup sync failed: {first.tail()}")
        shutil.rmtree(work / "state")
        sandbox.settle(pack_id)
        sandbox.set_latency(LATENCY_S)
        sandbox.reset_calls()
        ctx.log(f"adoption: run after the state was lost, {LATENCY_S * 1000:.0f} ms per call")
        done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=600, server=sandbox)
        calls = calls_dict(sandbox.calls)
        images = sandbox.image_count(pack_id)
        ctx.log("adoption: a bare httpx2 client making the same downloads")
        bare = bare_downloads(sandbox, sandbox.image_urls(pack_id), CONCURRENCY, work)
    measured = Throughput(files, files * LATENCY_S / CONCURRENCY, done, bare)
    mutating = sum(calls.get(f"{method} {route}", 0) for method, route in (CREATE_UPLOAD, STORAGE_PUT, ADD_IMAGE))
    downloads = calls.get("GET cdn", 0)
    clean = done.returncode == 0 and images == files and downloads == files
    scenario = (f"a run after losing the state, over {files:,} synced images, +{LATENCY_S * 1000:.0f} ms per "
                f"call, concurrency = {CONCURRENCY}")
    return [
        Row("adoption", scenario,
            "downloads/s ÷ concurrency bound (N·40 ms ÷ 8, 1 download per image); whole-process wall time",
            measured.ratio, f"≥ {TARGET:.2f}, 0 POST /files, 0 PUT, 0 add-image",
            clean and mutating == 0 and measured.ratio >= TARGET,
            f"{files:,} images adopted in {done.wall_s:.2f} s (bound {measured.bound_s:.2f} s); downloads "
            f"{downloads}; POST /files + PUT + add-image: {mutating}; {measured.note()}",
            {**measured.details(), "calls": calls, "output_tail": done.tail()}, clean and mutating == 0),
        measured.cpu_row("adoption", scenario, clean),
    ]
