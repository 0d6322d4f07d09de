"""First sync of 200 camera JPEGs (12 MP, EXIF with GPS and serials) prepared before upload, 40 ms per call.

For each recipe — the default (``strip = ["location", "serials"]``, no key in the config) and the default
plus ``max_edge = 2160`` — one ``packsync run --no-wait`` (whole process) uploads the photos into an
empty pack of the sandbox process at 40 ms per call, ``concurrency = 8``. Its time is compared with
the slower of two floors measured or computed in the same run:

- the concurrency bound, as ``first_sync`` computes it: N·3·40 ms ÷ 8 (3 calls per image, 8 in flight);
- a bare loop doing the same preparing on both cores: ``bare_prepare.py`` (``packsync.prepare.prepare``
  over the same files, read from a warm page cache, by 2 threads and, in another process, by 2 worker
  processes), whole process, start-up included as in packsync's; the faster of the two is the floor.

Figures: bound ÷ packsync's wall time (≥ 0.85), and packsync's peak RSS ÷ 250 MB (≤ 1). A run counts
only when it is complete (every photo in the pack, 3 calls each and one pack read) and a sample of the
uploaded images, read back from the sandbox's CDN, carries no GPS and no serial number, keeps the ICC
profile, and is either the same pixels with the same orientation (strip) or scaled to the long edge as
displayed (resize). A bare httpx2 client uploading the originals (no preparing) is run once for
information: it tells how close this sandbox lets uploads of 3–6 MB files come to the concurrency bound.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camera_jpegs import BODY_SERIAL, FULL_SIZE, IFD_EXIF, IFD_GPS, LENS_SERIAL, ORIENTATION, SMOKE_SIZE, photos
from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    PACKS_GET,
    STORAGE_PUT,
    Context,
    Finished,
    Row,
    Setup,
    bare_uploads,
    calls_dict,
    packsync_argv,
    run_child,
)
from PIL import Image
from sandbox_process import SandboxProcess

LATENCY_S = 0.040
CONCURRENCY = 8
CALLS_PER_IMAGE = 3
TARGET = 0.85
RSS_LIMIT_BYTES = 250_000_000
MAX_EDGE = 2160
BARE_WORKERS = 2  # "both cores": the machine the targets were set on has two
BARE_PREPARE = Path(__file__).with_name("bare_prepare.py")
SAMPLES = 4  # uploaded images read back and checked per run; the 4th photo is an Orientation 6 one
FILES, SMOKE_FILES = 200, 10


@dataclass
class Bare:
    """One bare preparing loop: how it ran (threads or processes), its process, and what it printed."""

    mode: str
    done: Finished
    result: dict[str, Any]


def run(ctx: Context) -> list[Row]:
    """Both recipes, each with its own bare loops, in one sandbox process."""
    count = SMOKE_FILES if ctx.smoke else FILES
    size = SMOKE_SIZE if ctx.smoke else FULL_SIZE
    # Smoke photos are small: the resize recipe scales them by the same share as a full-size one.
    max_edge = round(MAX_EDGE * size[0] / FULL_SIZE[0])
    sources = photos(ctx.cache_dir, count, ctx.smoke, ctx.log)
    work = ctx.workdir / "prepare"
    folder = place_files(sources, work / "photos")
    listed = work / "files.json"
    listed.write_text(json.dumps([str(path) for path in sorted(folder.iterdir())]), encoding="utf-8")
    total = sum(path.stat().st_size for path in folder.iterdir())
    ctx.log(f"prepare: {count} photos of {size[0]}×{size[1]}, {total / 1e6:.0f} MB in all")
    with ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        ctx.log("prepare: a bare httpx2 client uploading the originals (information)")
        uploads = bare_uploads(sandbox, sandbox.new_pack("bare-uploads"), folder, CONCURRENCY, work)
        rows = []
        for key, edge in (("strip", 0), ("resize", max_edge)):
            rows += _recipe(ctx, sandbox, work, folder, listed, key, edge, uploads)
    return rows


def place_files(sources: list[Path], folder: Path) -> Path:
    """The cached photos in a folder of this run's own (hard links where the file system allows), read
    once so that every run, bare or packsync's, finds them in the page cache."""
    folder.mkdir(parents=True)
    for source in sources:
        target = folder / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        target.read_bytes()
    return folder


def _recipe(ctx: Context, sandbox: SandboxProcess, work: Path, folder: Path, listed: Path, key: str,
            max_edge: int, uploads: Finished) -> list[Row]:
    """One recipe: its bare loops, then packsync's first sync into an empty pack; the two rows."""
    count = len(json.loads(listed.read_text(encoding="utf-8")))
    bares = [_bare(ctx, mode, max_edge, listed, work) for mode in ("threads", "processes")]
    best = min(bares, key=lambda bare: bare.done.wall_s)
    concurrency_bound_s = count * CALLS_PER_IMAGE * LATENCY_S / CONCURRENCY
    bound_s = max(concurrency_bound_s, best.done.wall_s)

    pack_id = sandbox.new_pack(f"prepare-{key}")
    root = work / f"run-{key}"
    config = Setup(root, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)]).write()
    if max_edge:
        with config.open("a", encoding="utf-8") as handle:
            handle.write(f"max_edge = {max_edge}\n")  # into the one [[mappings]] table, the file's last
    sandbox.reset_calls()
    ctx.log(f"prepare ({key}): packsync run over {count} photos, {LATENCY_S * 1000:.0f} ms per call, "
            f"concurrency {CONCURRENCY}")
    done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=root, timeout=900, server=sandbox)
    calls = sandbox.calls
    expected = {CREATE_UPLOAD: count, STORAGE_PUT: count, ADD_IMAGE: count, PACKS_GET: 1}
    added = sandbox.image_count(pack_id)
    problems = [] if done.returncode == 0 else [f"exit {done.returncode}: {done.tail(3)}"]
    problems += [] if added == count else [f"{added} of {count} photos in the pack"]
    problems += [] if dict(calls) == expected else [f"calls {calls_dict(calls)}"]
    problems += _check_uploads(sandbox, pack_id, folder, config, max_edge)
    return _rows(key, max_edge, count, done, bares, best, concurrency_bound_s, bound_s, uploads, problems,
                 {"calls": calls_dict(calls), "output_tail": done.tail()})


def _bare(ctx: Context, mode: str, max_edge: int, listed: Path, work: Path) -> Bare:
    ctx.log(f"prepare: bare loop, {BARE_WORKERS} {mode}, max_edge {max_edge}")
    argv = [sys.executable, str(BARE_PREPARE), mode, str(BARE_WORKERS), str(max_edge), str(listed)]
    done = run_child(argv, cwd=work, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the bare preparing loop ({mode}) failed: {done.tail()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return Bare(mode, done, result)


def _rows(key: str, max_edge: int, count: int, done: Finished, bares: list[Bare], best: Bare,
          concurrency_bound_s: float, bound_s: float, uploads: Finished, problems: list[str],
          extra: dict[str, Any]) -> list[Row]:
    recipe = "default strip (location, serials)" + (f" + max_edge = {max_edge}" if max_edge else "")
    scenario = (f"first sync, {count:,} camera JPEGs with EXIF, {recipe}, +{LATENCY_S * 1000:.0f} ms per call, "
                f"concurrency = {CONCURRENCY}")
    correct = not problems
    ratio = bound_s / done.wall_s
    floors = "; ".join(
        f"bare loop, {BARE_WORKERS} {bare.mode}: {bare.done.wall_s:.2f} s whole process "
        f"({bare.result['seconds']:.2f} s loop, CPU {bare.done.cpu_s:.2f} s, {bare.result['changed']} files changed, "
        f"{bare.result['bytes_in'] / 1e6:.0f} MB → {bare.result['bytes_out'] / 1e6:.0f} MB)" for bare in bares)
    measured_floor_s = max(uploads.wall_s, best.done.wall_s)
    info = (f"packsync {done.wall_s:.2f} s, CPU {done.cpu_s:.2f} s{_server(done)}; bound {bound_s:.2f} s = the "
            f"{'bare loop' if best.done.wall_s > concurrency_bound_s else 'concurrency bound'} (concurrency bound "
            f"{concurrency_bound_s:.2f} s; fastest bare loop: {best.mode}); {floors}; a bare httpx2 client uploading "
            f"the originals, no preparing: {uploads.wall_s:.2f} s = {concurrency_bound_s / uploads.wall_s:.2f} of the "
            f"concurrency bound, CPU {uploads.cpu_s:.2f} s{_server(uploads)}; against the slower of the measured "
            f"floors (bare uploads, bare loop) packsync reaches {measured_floor_s / done.wall_s:.2f}"
            + ("" if correct else "; RUN WRONG: " + "; ".join(problems)))
    details = {"images": count, "max_edge": max_edge, "wall_s": done.wall_s, "cpu_s": done.cpu_s,
               "max_rss_bytes": done.max_rss_bytes, "sandbox_cpu_s": done.server_cpu_s,
               "returncode": done.returncode, "bound_s": bound_s, "concurrency_bound_s": concurrency_bound_s,
               "bare_fastest": best.mode, "problems": problems, "bare_uploads_wall_s": uploads.wall_s,
               "bare_uploads_returncode": uploads.returncode, "bare_uploads_cpu_s": uploads.cpu_s,
               "bare_uploads_sandbox_cpu_s": uploads.server_cpu_s, "measured_floor_s": measured_floor_s,
               "bare": [{**bare.result, "wall_s": bare.done.wall_s, "cpu_s": bare.done.cpu_s,
                         "max_rss_bytes": bare.done.max_rss_bytes} for bare in bares], **extra}
    rss = done.max_rss_bytes
    return [
        Row(f"prepare-{key}", scenario,
            "bound ÷ packsync's wall time, bound = the slower of N·3·40 ms ÷ 8 and a bare prepare loop on "
            f"{BARE_WORKERS} cores (whole processes, start-up included)",
            ratio, f"≥ {TARGET:.2f}", correct and ratio >= TARGET, info, details, correct),
        Row(f"prepare-{key}-rss", scenario, "packsync's peak RSS (VmHWM) ÷ 250 MB (10⁶ bytes)",
            rss / RSS_LIMIT_BYTES, "≤ 1", correct and rss <= RSS_LIMIT_BYTES,
            f"peak RSS {rss / 1e6:.0f} MB; the bare loop's with {BARE_WORKERS} threads "
            f"{bares[0].done.max_rss_bytes / 1e6:.0f} MB"
            + ("" if correct else "; RUN WRONG"), details, correct),
    ]


def _server(done: Finished) -> str:
    return "" if done.server_cpu_s is None else f", sandbox CPU meanwhile {done.server_cpu_s:.2f} s"


# -- what was uploaded ------------------------------------------------------------------------------

def _check_uploads(sandbox: SandboxProcess, pack_id: str, folder: Path, config: Path, max_edge: int) -> list[str]:
    """Read back the first ``SAMPLES`` photos' uploads from the sandbox's CDN and say what is wrong with them.

    The pack's answer holds no file names (as the real API's), so ``packsync status --json --files`` (the
    state only) says which image each file became."""
    listing = run_child(packsync_argv(config, "status", "--json", "--files"), cwd=config.parent, timeout=60)
    if listing.returncode != 0:
        return [f"packsync status failed: {listing.tail(3)}"]
    images = {f["image_id"]: Path(f["path"]).name for m in json.loads(listing.stdout)["mappings"]
              for f in m["file_list"]}
    pack = sandbox.pack(pack_id) or {"images": []}
    urls = {images[image["id"]]: image["url"] for image in pack["images"] if image["id"] in images}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the sandbox is on loopback
    problems = []
    for source in sorted(folder.iterdir())[:SAMPLES]:
        url = urls.get(source.name)
        if url is None:
            problems.append(f"{source.name}: not in the pack")
            continue
        with opener.open(url, timeout=60) as response:
            uploaded: bytes = response.read()
        problems += [f"{source.name}: {problem}" for problem in _compare(source.read_bytes(), uploaded, max_edge)]
    return problems


def _compare(original: bytes, uploaded: bytes, max_edge: int) -> list[str]:
    """What is wrong with ``uploaded``, prepared from ``original``: location or a serial left, the ICC
    profile lost; for a strip, pixels or orientation changed; for a resize, the wrong size as displayed."""
    before, after = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(uploaded))
    exif_before, exif_after = before.getexif(), after.getexif()
    problems = [] if after.format == "JPEG" else [f"uploaded as {after.format}"]
    problems += ["GPS tags uploaded"] if exif_after.get_ifd(IFD_GPS) else []
    serials = [str(exif_before.get_ifd(IFD_EXIF)[tag]).encode() for tag in (BODY_SERIAL, LENS_SERIAL)]
    problems += ["a serial number uploaded"] if any(serial in uploaded for serial in serials) else []
    problems += [] if after.info.get("icc_profile") == before.info.get("icc_profile") else ["ICC profile lost"]
    if max_edge == 0:
        problems += [] if exif_after.get(ORIENTATION) == exif_before.get(ORIENTATION) else ["orientation changed"]
        problems += [] if after.tobytes() == before.tobytes() else ["pixels changed by a strip"]
        return problems
    shown_before, shown_after = _displayed(before.size, exif_before), _displayed(after.size, exif_after)
    scale = max_edge / max(shown_before)
    expected = (round(shown_before[0] * scale), round(shown_before[1] * scale))
    if any(abs(got - want) > 1 for got, want in zip(shown_after, expected, strict=True)):
        problems.append(f"displayed as {shown_after[0]}×{shown_after[1]}, not {expected[0]}×{expected[1]}")
    return problems


def _displayed(size: tuple[int, int], exif: Image.Exif) -> tuple[int, int]:
    """The size an image is shown at: its stored size, turned by a quarter when its Orientation is 5–8."""
    return (size[1], size[0]) if exif.get(ORIENTATION, 1) in (5, 6, 7, 8) else size
