"""Mirroring an Astria pack of 500 images into an empty Genviral pack, 40 ms added to every call.

Each image costs 4 calls: its download from Astria's storage, then POST /files, the PUT and the
add-image. The run's time (whole ``packsync run --no-wait`` process) is compared with the
concurrency bound of those calls (N·4·40 ms ÷ concurrency), and its CPU per image with a bare httpx2
client's making the same 4 calls per image in the same run (``harness.bare_mirror``; it skips the one
read of the Astria pack's listing).
"""

from __future__ import annotations

from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    STORAGE_PUT,
    Context,
    Row,
    Setup,
    Throughput,
    add_astria_mapping,
    bare_mirror,
    calls_dict,
    image_bytes,
    packsync_argv,
    run_child,
)

LATENCY_S = 0.040
CONCURRENCY = 8
CALLS_PER_IMAGE = 4
TARGET = 0.85
KEY = "sd_bench_key.not-a-real-secret"


def run(ctx: Context) -> list[Row]:
    images = 50 if ctx.smoke else 500
    work = ctx.workdir / "astria"
    with ctx.sandbox() as sandbox:
        sandbox.astria.set_users({KEY: 1})
        astria_pack = sandbox.astria.add_pack("Bench")
        urls = [sandbox.astria.add_image(astria_pack, ("woman", "man")[index % 2], image_bytes(index + 1, side=16))
                for index in range(images)]
        pack_id = sandbox.new_pack("mirror")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY).write()
        add_astria_mapping(config, sandbox.astria_url, KEY, f"astria_pack = {astria_pack}", pack_id)
        sandbox.set_latency(LATENCY_S)
        sandbox.reset_calls()
        ctx.log(f"astria: mirroring {images} images, {LATENCY_S * 1000:.0f} ms per call, concurrency {CONCURRENCY}")
        done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=600, server=sandbox)
        calls = calls_dict(sandbox.calls)
        mirrored = sandbox.image_count(pack_id)
        ctx.log("astria: a bare httpx2 client making the same calls")
        bare_pack = sandbox.new_pack("bare-client")
        bare = bare_mirror(sandbox, bare_pack, urls, CONCURRENCY, work)
        if bare.returncode == 0 and sandbox.image_count(bare_pack) != images:
            raise RuntimeError(f"the bare client mirrored {sandbox.image_count(bare_pack)} of {images} images")
    measured = Throughput(images, images * CALLS_PER_IMAGE * LATENCY_S / CONCURRENCY, done, bare)
    per_image = {name: calls.get(name, 0) for name in ("GET astria-img", *(f"{m} {r}" for m, r in
                                                                          (CREATE_UPLOAD, STORAGE_PUT, ADD_IMAGE)))}
    exact = done.returncode == 0 and mirrored == images and set(per_image.values()) == {images}
    scenario = (f"an Astria pack of {images:,} images mirrored into an empty Genviral pack, "
                f"+{LATENCY_S * 1000:.0f} ms per call, concurrency = {CONCURRENCY}")
    return [
        Row("astria-mirror", scenario,
            "images/s ÷ concurrency bound (N·4·40 ms ÷ 8: a download and 3 Genviral calls per image); "
            "whole-process wall time", measured.ratio, f"≥ {TARGET:.2f}", exact and measured.ratio >= TARGET,
            f"{mirrored:,} images in {done.wall_s:.2f} s (bound {measured.bound_s:.2f} s); calls per kind {per_image}; "
            f"{measured.note()}",
            {**measured.details(), "calls": calls, "output_tail": done.tail()}, exact),
        measured.cpu_row("astria-mirror", scenario, exact),
    ]
