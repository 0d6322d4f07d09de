"""The cost of bad input: an unchanged re-run over 50,000 bad files against one over 50,000 good ones.

Bad: 50,000 empty ``.png`` files in 10 folders of 5,000, each a mapping; a first run records their
problems (not measured). Good: 10 of the no-op scenario's cached, synced folders of 5,000 images (the
cache is built by that scenario if missing). Both are re-run unchanged, interleaved, whole process
against whole process; the bad re-run must also print a few lines per reason, not one per file.
"""

from __future__ import annotations

import shutil

import noop_rerun
from harness import Context, Row, Setup, median, packsync_argv, run_child

TIMED_RUNS = 3
MAPPINGS = 10


def run(ctx: Context) -> list[Row]:
    files, cached_mappings = (400, 4) if ctx.smoke else (100_000, 20)
    mappings = 2 if ctx.smoke else MAPPINGS
    per_folder = files // cached_mappings
    cache = ctx.cache_dir / f"noop-{files}x{cached_mappings}"
    manifest = noop_rerun._load_manifest(cache, files, cached_mappings)
    if manifest is None:
        manifest = noop_rerun._build(ctx, cache, files, cached_mappings)
    work = ctx.workdir / "bad-input"
    bad_folders = [work / "bad" / f"b{m:02}" for m in range(mappings)]
    for folder in bad_folders:
        folder.mkdir(parents=True)
        for i in range(per_folder):
            (folder / f"empty{i:06}.png").touch()
    good_state = work / "good" / "state.db"
    good_state.parent.mkdir(parents=True, mode=0o700)
    shutil.copy2(cache / "state.db", good_state)
    with ctx.sandbox() as sandbox:
        sandbox.load_snapshot(cache / "sandbox.json")
        good = Setup(work / "good", sandbox.base_url, state_path=good_state,
                     mappings=list(zip(noop_rerun._folders(cache, cached_mappings)[:mappings],
                                       manifest["pack_ids"][:mappings], strict=True))).write()
        bad_packs = [sandbox.new_pack(f"bad-{m:02}") for m in range(mappings)]
        bad = Setup(work / "bad-config", sandbox.base_url,
                    mappings=list(zip(bad_folders, bad_packs, strict=True))).write()
        ctx.log(f"bad input: first runs over {per_folder * mappings:,} bad and {per_folder * mappings:,} good files")
        first_bad = run_child(packsync_argv(bad, "run", "--no-wait"), cwd=work)
        first_good = run_child(packsync_argv(good, "run", "--no-wait"), cwd=work)
        if first_bad.returncode != 1 or first_good.returncode != 0:
            raise RuntimeError(f"setup runs: bad exit {first_bad.returncode}, good exit {first_good.returncode}: "
                               f"{first_bad.tail()} {first_good.tail()}")
        bad_s, good_s, lines = [], [], []
        for i in range(TIMED_RUNS):
            done_bad = run_child(packsync_argv(bad, "run", "--no-wait"), cwd=work)
            done_good = run_child(packsync_argv(good, "run", "--no-wait"), cwd=work)
            if done_bad.returncode != 1 or done_good.returncode != 0:
                raise RuntimeError(f"re-run {i + 1}: bad exit {done_bad.returncode}, good exit {done_good.returncode}")
            bad_s.append(done_bad.wall_s)
            good_s.append(done_good.wall_s)
            lines.append(len(done_bad.stdout.splitlines()))
            ctx.log(f"bad input: re-run {i + 1}: bad {done_bad.wall_s:.2f} s ({lines[-1]} lines), "
                    f"good {done_good.wall_s:.2f} s")
    ratio = median(bad_s) / median(good_s)
    total = per_folder * mappings
    short = max(lines) <= 10 * mappings
    return [Row(
        "bad-input", f"unchanged re-run over {total:,} empty .png files in {mappings} mappings",
        f"wall time of the whole `packsync run --no-wait` over the bad files ÷ the same over {total:,} synced good "
        f"files in {mappings} mappings; medians of {TIMED_RUNS}, interleaved",
        ratio, "≤ 3×, a few output lines per mapping", ratio <= 3 and short,
        f"bad {median(bad_s):.2f} s vs good {median(good_s):.2f} s; lines printed per bad re-run: {lines} "
        f"(first run {first_bad.wall_s:.1f} s)",
        {"bad_s": bad_s, "good_s": good_s, "lines": lines, "first_bad_s": first_bad.wall_s}, short)]
