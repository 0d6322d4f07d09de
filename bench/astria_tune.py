"""Mirroring an Astria tune's 500 generated images (500 prompts: 25 pages) into an empty Genviral pack, 40 ms
added to every call; then the same run again, which has nothing to do.

Each image costs 4 calls, as an Astria pack's does (its download, POST /files, the PUT, the add-image); the
tune adds its listing: the tune, then its prompts 20 a page, read one page after another (a page says whether
another follows). The first run's time (whole ``packsync run --no-wait`` process) is compared with the bound
of those calls: N·4·40 ms ÷ concurrency for the images, plus the serial walk's (1 + pages)·40 ms; its CPU per
image with a bare httpx2 client's making the same 4 calls per image in the same run (``harness.bare_mirror``:
it skips the listing). The second run is judged by its calls: the listing and the one read of the Genviral
pack every run makes, no download, no upload.
"""

from __future__ import annotations

import math

from astria_mirror import CALLS_PER_IMAGE, CONCURRENCY, KEY, LATENCY_S, TARGET
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

PAGE = 20


def run(ctx: Context) -> list[Row]:
    images = 60 if ctx.smoke else 500
    pages = images // PAGE + 1  # (the last, short or empty, ends the walk)
    work = ctx.workdir / "astria-tune"
    with ctx.sandbox() as sandbox:
        sandbox.astria.set_users({KEY: 1})
        tune = sandbox.astria.add_tune("Bench")
        datas = [image_bytes(index + 1, side=16) for index in range(images)]
        for index, data in enumerate(datas):
            sandbox.astria.add_prompt(tune, f"portrait {index}, studio light", [data])
        pack_id = sandbox.new_pack("tune-mirror")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY).write()
        add_astria_mapping(config, sandbox.astria_url, KEY, f"astria_tune = {tune}", pack_id)
        sandbox.set_latency(LATENCY_S)
        sandbox.reset_calls()
        ctx.log(f"astria-tune: mirroring {images} images of {images} prompts, {LATENCY_S * 1000:.0f} ms per call, "
                f"concurrency {CONCURRENCY}")
        done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=600, server=sandbox)
        calls = calls_dict(sandbox.calls)
        mirrored = sandbox.image_count(pack_id)
        sandbox.reset_calls()
        ctx.log("astria-tune: the same run again")
        again = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=600, server=sandbox)
        again_calls = calls_dict(sandbox.calls)
        urls = sandbox.image_urls(pack_id)
        ctx.log("astria-tune: a bare httpx2 client making the same calls per image")
        bare_pack = sandbox.new_pack("bare-client")
        bare = bare_mirror(sandbox, bare_pack, _sources(sandbox.astria_url, tune, images), CONCURRENCY, work)
        if bare.returncode == 0 and sandbox.image_count(bare_pack) != images:
            raise RuntimeError(f"the bare client mirrored {sandbox.image_count(bare_pack)} of {images} images")
    walk = (1 + pages) * LATENCY_S
    measured = Throughput(images, images * CALLS_PER_IMAGE * LATENCY_S / CONCURRENCY + walk, done, bare)
    per_image = {name: calls.get(name, 0) for name in ("GET astria-img", *(f"{m} {r}" for m, r in
                                                                          (CREATE_UPLOAD, STORAGE_PUT, ADD_IMAGE)))}
    listing = {"GET astria:/tunes/{id}": 1, "GET astria:/tunes/{id}/prompts": pages}
    exact = (done.returncode == 0 and mirrored == images == len(urls) and set(per_image.values()) == {images}
             and all(calls.get(name) == n for name, n in listing.items()))
    scenario = (f"an Astria tune of {images:,} prompts ({pages} pages), an image each, mirrored into an empty "
                f"Genviral pack, +{LATENCY_S * 1000:.0f} ms per call, concurrency = {CONCURRENCY}")
    listed_again = sum(again_calls.values())
    expected_again = {**listing, "GET /packs/{id}": 1}
    quiet = again.returncode == 0 and again_calls == expected_again
    return [
        Row("astria-tune", scenario,
            "images/s ÷ bound (N·4·40 ms ÷ 8 for the images, + (1 + pages)·40 ms for the serial walk); "
            "whole-process wall time", measured.ratio, f"≥ {TARGET:.2f}", exact and measured.ratio >= TARGET,
            f"{mirrored:,} images in {done.wall_s:.2f} s (bound {measured.bound_s:.2f} s, of which the walk "
            f"{walk:.2f} s); calls per kind {per_image}; {measured.note()}",
            {**measured.details(), "calls": calls, "output_tail": done.tail()}, exact),
        measured.cpu_row("astria-tune", scenario, exact),
        Row("astria-tune-noop", f"the same run again ({images:,} images mirrored, the tune unchanged)",
            "calls made ÷ the listing's and the pack read's (2 + pages): no download, no upload, no pack change",
            listed_again / (2 + pages),
            "= 1.00", quiet, f"{listed_again} calls in {again.wall_s:.2f} s: {again_calls}",
            {"calls": again_calls, "output_tail": again.tail()}, quiet),
    ]


def _sources(astria_url: str, tune: int, images: int) -> list[str]:
    """The tune's image URLs, as the bare client downloads them (the sandbox lists them by prompt)."""
    import httpx2

    with httpx2.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        urls: list[str] = []
        for page in range(math.ceil(images / PAGE)):
            answer = client.get(f"{astria_url}/tunes/{tune}/prompts", params={"offset": page * PAGE})
            urls += [url for prompt in answer.json() for url in prompt.get("images", [])]
        return urls
