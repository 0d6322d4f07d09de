"""How quickly commands start: ``packsync --version`` and ``packsync status`` against a bare interpreter.

Each is run several times as a separate process (``python -m packsync``, as everywhere in the bench),
interleaved with ``python -c pass`` so a slow spell of the machine hits all three alike, and the
median wall times are compared. ``status`` reads a real state of 1,000 synced files.
"""

from __future__ import annotations

import sys

from harness import Context, Row, Setup, median, packsync_argv, run_child, write_images

RUNS = 7
STATUS_TARGET = 10


def run(ctx: Context) -> list[Row]:
    runs = 3 if ctx.smoke else RUNS
    files = 100 if ctx.smoke else 1000
    work = ctx.workdir / "startup"
    with ctx.sandbox() as sandbox:
        folder = work / "pics"
        write_images(folder, range(1, files + 1))
        config = Setup(work, sandbox.base_url, mappings=[(folder, sandbox.new_pack("startup"))]).write()
        if run_child(packsync_argv(config, "run", "--no-wait"), cwd=work).returncode != 0:
            raise RuntimeError("setup sync failed")
    commands = {"bare": [sys.executable, "-c", "pass"], "version": [sys.executable, "-m", "packsync", "--version"],
                "status": packsync_argv(config, "status")}
    ctx.log(f"startup: {runs} runs each of python -c pass, packsync --version, packsync status, interleaved")
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            done = run_child(argv, cwd=work)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed: {done.tail()}")
            walls[name].append(done.wall_s)
    bare, version, status = (median(walls[name]) for name in commands)
    figure = f"wall ÷ `python -c pass` wall (medians of {runs}, interleaved)"
    return [
        Row("startup-version", "`packsync --version`", figure, version / bare, "information", None,
            f"{version * 1000:.0f} ms vs {bare * 1000:.0f} ms", {"walls_s": walls}),
        Row("startup-status", f"`packsync status` over {files:,} synced files", figure, status / bare,
            f"≤ {STATUS_TARGET}×", status / bare <= STATUS_TARGET,
            f"{status * 1000:.0f} ms vs {bare * 1000:.0f} ms", {"walls_s": walls}),
    ]
