"""``packsync pull`` of a pack of 1,000 images, 40 ms added to every call, then a second pull.

The first pull's time (whole process) is compared with the concurrency bound of its downloads
(N·40 ms ÷ concurrency), and its CPU per image with a bare httpx2 client's making the same downloads
in the same run (see ``harness.bare_downloads``); the second pull must read the pack once and
download nothing.
"""

from __future__ import annotations

from harness import (
    Context,
    Row,
    Setup,
    Throughput,
    bare_downloads,
    calls_dict,
    image_bytes,
    packsync_argv,
    run_child,
)

LATENCY_S = 0.040
CONCURRENCY = 8
TARGET = 0.90


def run(ctx: Context) -> list[Row]:
    files = 100 if ctx.smoke else 1000
    work = ctx.workdir / "pull"
    with ctx.sandbox() as sandbox:
        pack_id = sandbox.new_pack("pull")
        for index in range(1, files + 1):
            sandbox.add_uploaded(pack_id, image_bytes(index, side=16), f"{index}.png")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY).write()
        sandbox.settle(pack_id)
        out = work / "out"
        sandbox.set_latency(LATENCY_S)
        sandbox.reset_calls()
        ctx.log(f"pull: {files} images, {LATENCY_S * 1000:.0f} ms per call, concurrency {CONCURRENCY}")
        first = run_child(packsync_argv(config, "pull", f"genviral:{pack_id}", str(out)), cwd=work, timeout=600,
                          server=sandbox)
        first_calls = calls_dict(sandbox.calls)
        sandbox.reset_calls()
        second = run_child(packsync_argv(config, "pull", f"genviral:{pack_id}", str(out)), cwd=work, timeout=600)
        second_calls = calls_dict(sandbox.calls)
        ctx.log("pull: a bare httpx2 client making the same downloads")
        bare = bare_downloads(sandbox, sandbox.image_urls(pack_id), CONCURRENCY, work)
    measured = Throughput(files, files * LATENCY_S / CONCURRENCY, first, bare)
    pulled = sum(1 for _ in out.iterdir())
    complete = first.returncode == 0 and pulled == files and first_calls.get("GET cdn") == files
    noop = second.returncode == 0 and second_calls == {"GET /packs/{id}": 1}
    scenario = f"pull of a pack of {files:,} images, +{LATENCY_S * 1000:.0f} ms per call, concurrency = {CONCURRENCY}"
    return [
        Row("pull", scenario, "downloads/s ÷ concurrency bound (N·40 ms ÷ 8); whole-process wall time",
            measured.ratio, f"≥ {TARGET:.2f}", complete and measured.ratio >= TARGET,
            f"{pulled:,} files in {first.wall_s:.2f} s (bound {measured.bound_s:.2f} s); calls {first_calls}; "
            f"{measured.note()}",
            {**measured.details(), "calls": first_calls, "output_tail": first.tail()}, complete),
        measured.cpu_row("pull", scenario, complete),
        Row("pull-again", "a second pull of the same pack into the same folder",
            "API and storage calls made", float(sum(second_calls.values())), "1 pack read, 0 downloads", noop,
            f"calls {second_calls}; {second.wall_s:.2f} s", {"calls": second_calls, "output_tail": second.tail()},
            noop),
    ]
