"""Real photos through a real link: first sync, memory with 50 MB files, adoption, pull, bandwidth_limit.

Every call gets 40 ms (``LATENCY_S``) and the sandbox's link carries storage PUT and CDN bodies at
20 MB/s over all connections together (``LINK_RATE``, 10⁶ bytes: a 160 Mbit/s line), except in
``bandwidth-5M``, where packsync's own limit is what is measured. The photos are ``photo_files``'
4.2 MB camera JPEGs and 50 MB PNGs.

A run's bound is the slower of its two floors: the concurrency bound (calls × 40 ms ÷ 8 in flight)
and the link (the bytes of the photos ÷ 20 MB/s). A bare httpx2 client making the same calls through
the same link (``harness.bare_uploads``, ``bare_downloads``) checks the rig: it must come within 0.95
of the bound, or the sandbox, not packsync, is what the figure measures.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    STORAGE_PUT,
    Context,
    Finished,
    Row,
    Setup,
    bare_downloads,
    bare_uploads,
    calls_dict,
    packsync_argv,
    run_child,
)
from photo_files import big_pngs, photos
from prepared_sync import place_files
from sandbox_process import SandboxProcess

LATENCY_S = 0.040
CONCURRENCY = 8
LINK_RATE = 20_000_000  # bytes per second, all connections together
TARGET = 0.90
RIG_TARGET = 0.95
RSS_CEILING = 120_000_000
PHOTOS, SMOKE_PHOTOS = 100, 10
BIG_FILES, SMOKE_BIG_SIDE = 8, 1024
LIMIT = "5M"  # rclone's M: MiB
LIMIT_RATE = 5 * 2**20
LIMIT_BYTES, SMOKE_LIMIT_BYTES = 60_000_000, 12_000_000
LIMIT_TOLERANCE = 0.10


def bound_s(files: int, calls_per_file: int, total_bytes: int) -> float:
    """The slower floor: ``calls_per_file`` calls of 40 ms per file, 8 in flight; or the bytes through the link."""
    return max(files * calls_per_file * LATENCY_S / CONCURRENCY, total_bytes / LINK_RATE)


def run_first_sync(ctx: Context) -> list[Row]:
    """100 photos into an empty pack through the 20 MB/s link; then the bare client, the same files."""
    count = SMOKE_PHOTOS if ctx.smoke else PHOTOS
    work = ctx.workdir / "photos-first-sync"
    folder = place_files(photos(ctx.cache_dir, count, ctx.log), work / "photos")
    size = _bytes(folder)
    with ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        sandbox.set_link_rate(total=LINK_RATE)
        pack_id = sandbox.new_pack("photos")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)]).write()
        ctx.log(f"photos-first-sync: packsync run over {count} photos, {size / 1e6:.0f} MB")
        done = _measured(sandbox, packsync_argv(config, "run", "--no-wait"), work)
        calls = calls_dict(sandbox.calls)
        complete = done.returncode == 0 and sandbox.image_count(pack_id) == count
        ctx.log("photos-first-sync: a bare httpx2 client uploading the same files through the same link")
        bare_pack = sandbox.new_pack("bare")
        bare = bare_uploads(sandbox, bare_pack, folder, CONCURRENCY, work)
        bare_ok = bare.returncode == 0 and sandbox.image_count(bare_pack) == count
    bound = bound_s(count, 3, size)
    scenario = (f"first sync of {count} camera JPEGs ({size / 1e6:.0f} MB) through a 20 MB/s link, "
                f"+{LATENCY_S * 1000:.0f} ms per call, concurrency {CONCURRENCY}")
    return [_throughput("photos-first-sync", scenario, done, bound, size, complete, calls),
            _rig("photos-first-sync", scenario, bare, bound, bare_ok)]


def run_rss(ctx: Context) -> list[Row]:
    """8 files of 50 MB uploaded at once (concurrency 8, through the link so all 8 are in flight together)."""
    side = SMOKE_BIG_SIDE if ctx.smoke else None
    sources = big_pngs(ctx.cache_dir, BIG_FILES, ctx.log, *([side] if side else []))
    work = ctx.workdir / "photos-rss"
    folder = place_files(sources, work / "big")
    size = _bytes(folder)
    with ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        sandbox.set_link_rate(total=LINK_RATE)
        pack_id = sandbox.new_pack("big")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)]).write()
        ctx.log(f"photos-rss: packsync run over {BIG_FILES} files, {size / 1e6:.0f} MB")
        done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=900, server=sandbox)
        complete = done.returncode == 0 and sandbox.image_count(pack_id) == BIG_FILES
    scenario = (f"first sync of {BIG_FILES} PNGs of {size / BIG_FILES / 1e6:.1f} MB, concurrency {CONCURRENCY}, "
                "through a 20 MB/s link")
    return [_rss("photos-rss", scenario, done, complete)]


def run_adoption(ctx: Context) -> list[Row]:
    """100 photos synced for real (no latency, no link), the state deleted, then one run through the link."""
    count = SMOKE_PHOTOS if ctx.smoke else PHOTOS
    work = ctx.workdir / "photos-adoption"
    folder = place_files(photos(ctx.cache_dir, count, ctx.log), work / "photos")
    with ctx.sandbox() as sandbox:
        pack_id = sandbox.new_pack("adoption")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)]).write()
        ctx.log(f"photos-adoption: setup sync of {count} photos (not measured)")
        first = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, timeout=900)
        if first.returncode != 0 or sandbox.image_count(pack_id) != count:
            raise RuntimeError(f"setup sync failed: {first.tail()}")
        size = sandbox.link_moved()["up"]  # the pack's bytes: the photos as uploaded (their location stripped)
        shutil.rmtree(work / "state")
        sandbox.settle(pack_id)
        urls = sandbox.image_urls(pack_id)
        sandbox.set_latency(LATENCY_S)
        sandbox.set_link_rate(total=LINK_RATE)
        ctx.log(f"photos-adoption: run after the state was lost, {size / 1e6:.0f} MB in the pack")
        done = _measured(sandbox, packsync_argv(config, "run", "--no-wait"), work)
        calls = calls_dict(sandbox.calls)
        images = sandbox.image_count(pack_id)
        ctx.log("photos-adoption: a bare httpx2 client downloading the same images through the same link")
        bare = bare_downloads(sandbox, urls, CONCURRENCY, work)
    mutating = sum(calls.get(f"{method} {route}", 0) for method, route in (CREATE_UPLOAD, STORAGE_PUT, ADD_IMAGE))
    complete = done.returncode == 0 and images == count and calls.get("GET cdn") == count and mutating == 0
    bound = bound_s(count, 1, size)
    scenario = (f"a run after losing the state over {count} synced camera JPEGs ({size / 1e6:.0f} MB) through a "
                f"20 MB/s link, +{LATENCY_S * 1000:.0f} ms per call, concurrency {CONCURRENCY}; 0 uploads expected")
    return [_throughput("photos-adoption", scenario, done, bound, size, complete, calls),
            _rss("photos-adoption", scenario, done, complete),
            _rig("photos-adoption", scenario, bare, bound, bare.returncode == 0)]


def run_pull(ctx: Context) -> list[Row]:
    """``packsync pull`` of a pack of 100 photos (added as the web app does) through the link."""
    count = SMOKE_PHOTOS if ctx.smoke else PHOTOS
    work = ctx.workdir / "photos-pull"
    sources = photos(ctx.cache_dir, count, ctx.log)
    with ctx.sandbox() as sandbox:
        pack_id = sandbox.new_pack("pull")
        for source in sources:
            sandbox.add_uploaded(pack_id, source.read_bytes(), source.name, "image/jpeg")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY).write()
        sandbox.settle(pack_id)
        urls = sandbox.image_urls(pack_id)
        size = sum(source.stat().st_size for source in sources)
        out = work / "out"
        sandbox.set_latency(LATENCY_S)
        sandbox.set_link_rate(total=LINK_RATE)
        ctx.log(f"photos-pull: {count} photos, {size / 1e6:.0f} MB")
        done = _measured(sandbox, packsync_argv(config, "pull", f"genviral:{pack_id}", str(out)), work)
        calls = calls_dict(sandbox.calls)
        ctx.log("photos-pull: a bare httpx2 client downloading the same images through the same link")
        bare = bare_downloads(sandbox, urls, CONCURRENCY, work)
    pulled = sum(1 for _ in out.iterdir()) if out.is_dir() else 0
    complete = done.returncode == 0 and pulled == count and calls.get("GET cdn") == count
    bound = bound_s(count, 1, size)
    scenario = (f"packsync pull of a pack of {count} camera JPEGs ({size / 1e6:.0f} MB) through a 20 MB/s link, "
                f"+{LATENCY_S * 1000:.0f} ms per call, concurrency {CONCURRENCY}")
    return [_throughput("photos-pull", scenario, done, bound, size, complete, calls),
            _rss("photos-pull", scenario, done, complete),
            _rig("photos-pull", scenario, bare, bound, bare.returncode == 0)]


def run_bandwidth(ctx: Context) -> list[Row]:
    """A first sync of 60 MB with ``bandwidth_limit = "5M"`` and no limit in the sandbox: the bytes ÷ the span
    from the first ``POST /files`` reaching the sandbox to the last PUT body read whole, against 5 MiB/s."""
    wanted = SMOKE_LIMIT_BYTES if ctx.smoke else LIMIT_BYTES
    sources = photos(ctx.cache_dir, PHOTOS, ctx.log)
    chosen: list[Path] = []
    while sum(path.stat().st_size for path in chosen) < wanted:
        chosen.append(sources[len(chosen)])
    work = ctx.workdir / "bandwidth-5M"
    folder = place_files(chosen, work / "photos")
    size = _bytes(folder)
    scenario = (f"first sync of {len(chosen)} camera JPEGs ({size / 1e6:.0f} MB) with bandwidth_limit = "
                f'"{LIMIT}" (rclone\'s M: {LIMIT_RATE:,} bytes/s), no limit in the sandbox, '
                f"+{LATENCY_S * 1000:.0f} ms per call, concurrency {CONCURRENCY}")
    figure = "bytes ÷ (first POST /files arrival → last PUT body read), ÷ 5 MiB/s"
    target = f"{1 - LIMIT_TOLERANCE:.2f}–{1 + LIMIT_TOLERANCE:.2f}"
    with ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        pack_id = sandbox.new_pack("limited")
        config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)]).write()
        _add_to_genviral(config, f'bandwidth_limit = "{LIMIT}"')
        ctx.log(f"bandwidth-5M: packsync run over {size / 1e6:.0f} MB limited to {LIMIT}")
        done = _measured(sandbox, packsync_argv(config, "run", "--no-wait"), work)
        if done.returncode != 0 and "bandwidth_limit" in done.stdout + done.stderr:
            return [Row("bandwidth-5M", scenario, figure, None, target, False,
                        "not measurable: bandwidth_limit unknown to this packsync: " + done.tail(2),
                        {"output_tail": done.tail()}, correct=False)]
        asked = sandbox.arrivals_of(*CREATE_UPLOAD)
        put = sandbox.arrivals_of(*STORAGE_PUT)
        complete = done.returncode == 0 and sandbox.image_count(pack_id) == len(chosen) and bool(asked and put)
    span = max(put) - min(asked) if complete else 0.0
    value = size / span / LIMIT_RATE if span > 0 else None
    info = (f"{size / 1e6:.1f} MB in {span:.2f} s = {size / span / 2**20:.2f} MiB/s; whole process "
            f"{done.wall_s:.2f} s = {size / done.wall_s / 2**20:.2f} MiB/s (first call {done.before_calls_s:.2f} s "
            f"after the spawn)" if value is not None
            else f"RUN FAILED (exit {done.returncode}): {done.tail(3)}")
    met = value is not None and abs(value - 1) <= LIMIT_TOLERANCE
    return [Row("bandwidth-5M", scenario, figure, value, target, met, info,
                {"bytes": size, "span_s": span, "wall_s": done.wall_s, "output_tail": done.tail()}, complete)]


# -- rows -------------------------------------------------------------------------------------------

@dataclass
class Measured(Finished):
    """A measured packsync run, and where its wall time went outside the calls: from its spawn to the first
    call's arrival (start-up, scanning, preparing), and from the last call's arrival to its exit."""

    before_calls_s: float = 0.0
    after_calls_s: float = 0.0


def _measured(sandbox: SandboxProcess, argv: list[str], cwd: Path) -> Measured:
    """Run packsync (``run_child``) against a sandbox whose calls and arrivals are forgotten first."""
    sandbox.forget_arrivals()
    began = time.monotonic()
    done = run_child(argv, cwd=cwd, timeout=900, server=sandbox)
    first, last = sandbox.first_arrival(), sandbox.last_arrival()
    ended = began + done.wall_s
    return Measured(**vars(done), before_calls_s=first - began if first else 0.0,
                    after_calls_s=ended - last if last else 0.0)


def _throughput(id: str, scenario: str, done: Measured, bound: float, size: int, complete: bool,
                calls: dict[str, int]) -> Row:
    ratio = bound / done.wall_s
    link_s = size / LINK_RATE
    return Row(
        id, scenario, "bound ÷ wall time, bound = max(calls·40 ms ÷ 8, bytes ÷ 20 MB/s); whole process",
        ratio, f"≥ {TARGET:.2f}", complete and ratio >= TARGET,
        f"{done.wall_s:.2f} s = {size / done.wall_s / 1e6:.1f} MB/s (first call arrived "
        f"{done.before_calls_s:.2f} s after the spawn, the last {done.after_calls_s:.2f} s before the exit); "
        f"bound {bound:.2f} s "
        f"({'the link' if bound == link_s else 'concurrency'}); peak RSS {done.max_rss_bytes / 1e6:.0f} MB; "
        f"CPU {done.cpu_s:.2f} s{_server(done)}; calls {calls}"
        + ("" if complete else f"; RUN FAILED OR INCOMPLETE (exit {done.returncode}): {done.tail(3)}"),
        {"bound_s": bound, "bytes": size, "wall_s": done.wall_s, "cpu_s": done.cpu_s,
         "max_rss_bytes": done.max_rss_bytes, "sandbox_cpu_s": done.server_cpu_s, "calls": calls,
         "before_calls_s": done.before_calls_s, "after_calls_s": done.after_calls_s,
         "returncode": done.returncode, "output_tail": done.tail()}, complete)


def _rss(id: str, scenario: str, done: Finished, complete: bool) -> Row:
    peak = done.max_rss_bytes
    ratio = RSS_CEILING / peak if peak else None
    return Row(
        f"{id}-rss" if id != "photos-rss" else id, scenario, "120 MB (10⁶ bytes) ÷ packsync's peak RSS (VmHWM)",
        ratio, "≥ 1", complete and ratio is not None and ratio >= 1,
        f"peak RSS {peak / 1e6:.0f} MB; wall {done.wall_s:.2f} s; CPU {done.cpu_s:.2f} s"
        + ("" if complete else f"; RUN FAILED OR INCOMPLETE (exit {done.returncode}): {done.tail(3)}"),
        {"max_rss_bytes": peak, "wall_s": done.wall_s, "returncode": done.returncode, "output_tail": done.tail()},
        complete)


def _rig(id: str, scenario: str, bare: Finished, bound: float, ok: bool) -> Row:
    """The rig's own check: a bare httpx2 client through the same sandbox and link reaches the bound."""
    ratio = bound / bare.wall_s
    return Row(
        f"{id}-rig", scenario + "; a bare httpx2 client making the same calls",
        "bound ÷ the bare client's wall time (the rig's floor; below target the sandbox is the defect)",
        ratio, f"≥ {RIG_TARGET:.2f}", ok and ratio >= RIG_TARGET,
        f"{bare.wall_s:.2f} s, bound {bound:.2f} s; CPU {bare.cpu_s:.2f} s{_server(bare)}"
        + ("" if ok else f"; BARE CLIENT FAILED (exit {bare.returncode}): {bare.tail(3)}"),
        {"wall_s": bare.wall_s, "cpu_s": bare.cpu_s, "sandbox_cpu_s": bare.server_cpu_s,
         "returncode": bare.returncode}, ok)


def _server(done: Finished) -> str:
    return "" if done.server_cpu_s is None else f", sandbox CPU meanwhile {done.server_cpu_s:.2f} s"


# -- helpers ----------------------------------------------------------------------------------------

def _bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def _add_to_genviral(config: Path, line: str) -> None:
    """Put ``line`` into the config's ``[genviral]`` table (``Setup`` writes that table first)."""
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[genviral]\n", f"[genviral]\n{line}\n", 1), encoding="utf-8")

