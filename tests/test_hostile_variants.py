"""Variants of the hostile conditions already fixed: the same class of defect reached another way (a
long list of patterns instead of one pathological pattern, ...)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import Env, image, write
from test_astria import astria_pack
from test_hostile_pull import tree
from test_pull import pull

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


def test_pull_delete_with_classes_leaves_the_other_classes_files(env: Env) -> None:
    """``--classes woman`` pulls woman's images: what was pulled of the pack's other classes is no removal."""
    pack_id, _ = astria_pack(env, {"woman": 4, "man": 1})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"
    assert pull(env, f"astria:{pack_id}", str(out)).returncode == 0
    before = tree(out)
    assert any(name.startswith("man/") for name in before)

    result = pull(env, f"astria:{pack_id}", str(out), "--classes", "woman", "--delete")

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert tree(out) == before, "nothing deleted"


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
