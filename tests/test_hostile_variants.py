"""Variants of the hostile conditions already fixed: the same class of defect reached another way (a
long list of patterns instead of one pathological pattern, ...)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import Env, image, write
from test_hostile_net import TIMEOUT_S, slow_env

from packsync.errors import ExitCode
from packsync.state.lock import lock_path

#: Compiles the lines of argv[1] (a file) as an exclude list, matches a name against it, and prints the
#: seconds it took — in a child process, so that a runaway compile can be given a deadline.
COMPILED = """
import sys, time
from packsync.sources.patterns import Patterns
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
start = time.perf_counter()
Patterns(lines).matches("a" * 60, "a" * 60, False)
print(time.perf_counter() - start)
"""


def test_a_long_packsyncignore_of_name_patterns_compiles_in_time_linear_in_its_length(env: Env) -> None:
    """Each pattern that names a file at any depth joined the one regular expression of its run by making
    it anew with every pattern before it: 1,000 lines took 43 s, 3,000 over two minutes, all holding
    the GIL. A run of such patterns is compiled once."""
    ignore = env.root / "ignore"
    ignore.write_text("".join(f"*x{i}*y*\n" for i in range(2000)), encoding="utf-8")

    done = subprocess.run([sys.executable, "-c", COMPILED, str(ignore)], capture_output=True, text=True,
                          timeout=30)

    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 5.0, f"took {float(done.stdout):.1f} s"


def test_a_run_beside_a_long_packsyncignore_ends_promptly(env: Env) -> None:
    folder = env.map("pics", pack="P")
    (folder / ".packsyncignore").write_text("".join(f"*x{i}*y*\n" for i in range(1500)) + "*b.png\n",
                                            encoding="utf-8")
    write(folder / "a.png", image())
    write(folder / "b.png", image())

    done = env.cli("run", "--dry-run", "-v", timeout=30)

    assert done.returncode == 0, done.stderr
    assert "upload+add a.png" in done.stdout
    assert "excluded   b.png (by *b.png)" in done.stdout


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("run", "--no-wait"), ("run", "--dry-run")])
def test_a_fifo_as_the_state_lock_file_is_one_sentence_and_waits_for_nothing(env: Env, args: tuple[str, ...]) -> None:
    """``status`` read the lock's holder by opening it for reading: a FIFO there waited for a writer for
    good. A lock file that is not a regular file is never waited on; ``run`` refuses it in one sentence."""
    folder = env.map("pics", pack="P")
    write(folder / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    lock = lock_path(env.state_path)
    lock.unlink()
    os.mkfifo(lock)

    done = env.cli(*args, timeout=20)

    assert "Traceback" not in done.stderr
    if args == ("run", "--no-wait"):
        assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
        assert f"cannot use the state database {lock} (a named pipe, not a regular file)." in done.stderr
    else:
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("route", ["/packs/{id}/images", "/packs"])
def test_a_trickling_answer_to_a_call_that_creates_is_not_repeated_in_the_run(env: Env, route: str) -> None:
    """An add-image (or create-pack) whose answer's head trickles was sent again after each look at the
    pack: six attempts of 4 T each for one image (12 minutes at T = 30 s), where a trickle costs one
    attempt. The next run recognises an image the server did add by its URL."""
    slow_env(env)
    folder = env.map("pics", pack="P")
    write(folder / "a.png", image())
    env.sandbox.inject("trickle-head", "POST", route, count=1000)
    started = time.monotonic()

    report = env.sync()

    took = time.monotonic() - started
    assert report.exit_code == ExitCode.SOME_FAILED
    assert "too slow" in (report.mappings[0].last_error or ""), report.mappings[0].last_error
    assert env.sandbox.calls[("POST", route)] == 1, "given up, not tried again"
    assert took < 7 * TIMEOUT_S + 1, f"the sync took {took:.1f} s"
    env.sandbox.clear_faults()
    assert env.sync().exit_code == ExitCode.OK
    assert len(env.pack_named("P")["images"]) == 1


def test_a_long_packsyncignore_is_compiled_once_for_all_the_subfolders_it_covers(env: Env) -> None:
    """With a pack per subfolder, each subfolder's mapping compiled the mapped folder's ignore file anew:
    3,000 lines (29 KB) cost 25 s over 20 subfolders, 256 KiB over 100 of them some 12 minutes a scan."""
    root = env.map("clients", packs_from="subfolders")
    (root / ".packsyncignore").write_text("".join(f"*x{i}*y*\n" for i in range(3000)), encoding="utf-8")
    for i in range(20):
        write(root / f"c{i}" / "a.png", image())
    started = time.monotonic()

    done = env.cli("run", "--dry-run", timeout=60)

    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < 10, f"the dry run took {took:.1f} s"
