"""``packsync pull`` of a pack of 1,000 images, 40 ms added to every call, then a second pull.

The first pull's time (whole process) is compared with the concurrency bound of its downloads
(N·40 ms ÷ concurrency); the second pull must read the pack once and download nothing. For scale, the
same downloads are also made by a bare aiohttp client in the same run (see ``harness.bare_downloads``).
"""

from __future__ import annotations

from harness import (
    Context,
    RecordingSandbox,
    Row,
    Setup,
    bare_downloads,
    calls_dict,
    floor_note,
    image_bytes,
    packsync_argv,
    run_child,
)

LATENCY_S = 0.040
CONCURRENCY = 8


def run(ctx: Context) -> list[Row]:
    files = 100 if ctx.smoke else 1000
    work = ctx.workdir / "pull"
    bound_s = files * LATENCY_S / CONCURRENCY
    with RecordingSandbox() as sandbox:
        pack_id = sandbox.new_pack("pull")
        for index in range(1, files + 1):
            sandbox.add_uploaded(pack_id, image_bytes(index, side=16), f"{index}.png")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY).write()
        sandbox.settle(pack_id)
        out = work / "out"
        sandbox.faults.latency_s = LATENCY_S
        sandbox.reset_calls()
        ctx.log(f"pull: {files} images, {LATENCY_S * 1000:.0f} ms per call, concurrency {CONCURRENCY}")
        first = run_child(packsync_argv(config, "pull", f"genviral:{pack_id}", str(out)), cwd=work, timeout=600)
        first_calls = calls_dict(sandbox.calls)
        sandbox.reset_calls()
        second = run_child(packsync_argv(config, "pull", f"genviral:{pack_id}", str(out)), cwd=work, timeout=600)
        second_calls = calls_dict(sandbox.calls)
        floor = bare_downloads([image["url"] for image in sandbox.pack(pack_id)["images"]], CONCURRENCY, work)
    pulled = sum(1 for _ in out.iterdir())
    ratio = bound_s / first.wall_s
    complete = first.returncode == 0 and pulled == files and first_calls.get("GET cdn") == files
    noop = second.returncode == 0 and second_calls == {"GET /packs/{id}": 1}
    return [
        Row("pull", f"pull of a pack of {files:,} images, +{LATENCY_S * 1000:.0f} ms per call, "
            f"concurrency = {CONCURRENCY}",
            "downloads/s ÷ concurrency bound (N·40 ms ÷ 8); whole-process wall time",
            ratio, "≥ 0.85", complete and ratio >= 0.85,
            f"{pulled:,} files in {first.wall_s:.2f} s (bound {bound_s:.2f} s); packsync CPU {first.cpu_s:.1f} s; "
            f"calls {first_calls}; {floor_note(floor, bound_s)}",
            {"wall_s": first.wall_s, "calls": first_calls, "floor_wall_s": floor.wall_s, "output_tail": first.tail()}),
        Row("pull-again", "a second pull of the same pack into the same folder",
            "API and storage calls made", float(sum(second_calls.values())), "1 pack read, 0 downloads", noop,
            f"calls {second_calls}; {second.wall_s:.2f} s", {"calls": second_calls, "output_tail": second.tail()}),
    ]
