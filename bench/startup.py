"""How quickly commands start: ``packsync --version`` and ``packsync status`` against a bare interpreter.

Each is run several times as a separate process (``python -m packsync``, as everywhere in the bench)
and the median wall time is compared with the median of ``python -c pass`` measured in the same run.
``status`` reads a real state of 1,000 synced files.
"""

from __future__ import annotations

import sys

from harness import Context, RecordingSandbox, Row, Setup, median, packsync_argv, run_child, write_images

RUNS = 7


def _median_wall(argv: list[str], ctx: Context, runs: int) -> float:
    walls = []
    for _ in range(runs):
        done = run_child(argv, cwd=ctx.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[3:]} failed: {done.tail()}")
        walls.append(done.wall_s)
    return median(walls)


def run(ctx: Context) -> list[Row]:
    runs = 3 if ctx.smoke else RUNS
    work = ctx.workdir / "startup"
    with RecordingSandbox() as sandbox:
        folder = work / "pics"
        write_images(folder, range(1, (100 if ctx.smoke else 1000) + 1))
        config = Setup(work, sandbox.base_url, mappings=[(folder, sandbox.new_pack("startup"))]).write()
        if run_child(packsync_argv(config, "run", "--no-wait"), cwd=work).returncode != 0:
            raise RuntimeError("setup sync failed")
        ctx.log(f"startup: {runs} runs each of python -c pass, packsync --version, packsync status")
        bare = _median_wall([sys.executable, "-c", "pass"], ctx, runs)
        version = _median_wall([sys.executable, "-m", "packsync", "--version"], ctx, runs)
        status = _median_wall(packsync_argv(config, "status"), ctx, runs)
    return [
        Row("startup-version", "`packsync --version`", "wall ÷ `python -c pass` wall (medians of "
            f"{runs})", version / bare, "information", None,
            f"{version * 1000:.0f} ms vs {bare * 1000:.0f} ms", {"version_s": version, "bare_s": bare}),
        Row("startup-status", "`packsync status` over 1,000 synced files", "wall ÷ `python -c pass` wall "
            f"(medians of {runs})", status / bare, "information", None,
            f"{status * 1000:.0f} ms vs {bare * 1000:.0f} ms", {"status_s": status, "bare_s": bare}),
    ]
