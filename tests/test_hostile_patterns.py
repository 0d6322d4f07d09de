"""Patterns and ignore files written by someone else (a collaborator's ``.packsyncignore`` in a shared
folder, a config copied from a forum): matching costs time linear in the name whatever the pattern, an
ignore file that is not a regular file stops its mapping in one sentence instead of blocking it, and
the NAS and desktop junk stays excluded whatever ``exclude`` says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from conftest import Env, image, write
from helpers import StartDaemon, wait_until
from test_web import page_url

from packsync.errors import ExitCode
from packsync.sources.folder import filters_for, scan_folder

#: ``*a*a*...*b`` against a long run of ``a``: exponential for a backtracking regular expression.
STARS = "*a" * 13 + "*b"

#: Matches the pattern (argv[1]) against the path (argv[2]; a trailing ``/`` for a folder) as an exclude
#: list and as an include list, in a child process (a regex running away holds the GIL: only a process
#: can be given a deadline), and prints the seconds it took.
TIMED = """
import sys, time
from packsync.sources.patterns import Patterns
pattern, path = sys.argv[1], sys.argv[2]
folder = path.endswith("/")
rel = path.rstrip("/")
start = time.perf_counter()
for walked in (True, False):
    Patterns([pattern], walked=walked).matches(rel, rel.rsplit("/", 1)[-1], folder)
    Patterns(["!x", pattern], walked=walked).deciding(rel, rel.rsplit("/", 1)[-1], folder)
print(time.perf_counter() - start)
"""


@pytest.mark.parametrize(("pattern", "path"), [
    ("/" + STARS, "a" * 60),                                     # an anchored name: the issue's pattern
    (STARS, "a" * 60),                                           # a name at any depth
    ("x/" + STARS, "x/" + "a" * 60),                             # a path
    ("**/" + STARS + "/", "d/" + "a" * 60 + "/"),                # a folder, below any folders
    ("/" + "?*" * 13 + "b", "a" * 60),                           # any-character runs
    ("/" + "[a-z]*" * 13 + "b", "a" * 60),                       # character classes
    ("/" + "**/a/" * 12 + "b", "/".join(["a"] * 60)),           # globstars against a deep path
    ("/" + "*a/" * 12 + "**/b", "/".join(["aaaaaaaaaaaa"] * 40)),  # a mix of both
])
def test_matching_costs_time_linear_in_the_name_whatever_the_pattern(pattern: str, path: str) -> None:
    done = subprocess.run([sys.executable, "-c", TIMED, pattern, path], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 2.0, f"{pattern!r} took {float(done.stdout):.1f} s"


def test_a_hostile_packsyncignore_does_not_hold_up_a_run(env: Env) -> None:
    folder = env.map("pics", pack="P")
    (folder / ".packsyncignore").write_text(f"/{STARS}\n", encoding="utf-8")
    write(folder / ("a" * 60 + ".png"), image())
    write(folder / ("a" * 59 + "b"), image())  # matched by the pattern: excluded

    done = env.cli("run", "--dry-run", "-v", timeout=30)

    assert done.returncode == 0, done.stderr
    assert f"upload+add {'a' * 60}.png" in done.stdout
    assert f"excluded   {'a' * 59}b (by /{STARS})" in done.stdout



def test_a_pattern_line_longer_than_any_path_stops_its_mapping_naming_it(env: Env) -> None:
    """A line of 200,000 characters is no pattern anyone writes (no path is that long), and compiling it
    cost seconds each time the file changed: it is refused like any line that is not a pattern."""
    folder = env.map("pics", pack="P")
    (folder / ".packsyncignore").write_text("*.tmp\n" + "*a" * 100_000 + "*b\n", encoding="utf-8")
    write(folder / "a.png", image())

    done = env.cli("run", "--dry-run", timeout=30)

    assert done.returncode == ExitCode.SAFETY, done.stdout + done.stderr
    assert "longer than 4,096 characters" in done.stdout + done.stderr
    assert "upload+add" not in done.stdout


def test_the_daemon_stays_responsive_beside_a_hostile_and_a_fifo_packsyncignore(daemon_env: Env,
                                                                               start: StartDaemon) -> None:
    """A collaborator's hostile pattern no longer holds the GIL for minutes, and a FIFO stops only its own
    mapping: the other mappings sync, ``/healthz`` answers at once, SIGTERM ends the daemon promptly."""
    hostile = daemon_env.map("hostile", pack="H")
    (hostile / ".packsyncignore").write_text(f"/{STARS}\n", encoding="utf-8")
    write(hostile / ("a" * 60 + ".png"), image())
    piped = daemon_env.map("piped", pack="F")
    write(piped / "p.png", image())
    os.mkfifo(piped / ".packsyncignore")
    plain = daemon_env.map("plain", pack="P")
    write(plain / "q.png", image())
    daemon = start()
    base = page_url(daemon)

    wait_until(lambda: all(p["image_count"] == 1 for p in daemon_env.sandbox.packs() if p["name"] in "HP")
               and {p["name"] for p in daemon_env.sandbox.packs()} >= {"H", "P"}, timeout=30, what="H and P synced")
    answer = httpx2.get(base + "healthz", timeout=2)
    assert answer.status_code in (200, 503)
    assert "F" not in {p["name"] for p in daemon_env.sandbox.packs()}
    assert daemon.stop(timeout=10) == 0

# -- files that are not regular files ---------------------------------------------------------------

@pytest.mark.parametrize("dry_run", [True, False])
def test_a_fifo_named_packsyncignore_stops_its_mapping_in_one_sentence(env: Env, dry_run: bool) -> None:
    """Opening a FIFO waits for a writer that never comes: only regular files are read."""
    folder = env.map("pics", pack="P")
    other = env.map("other", pack="Q")
    write(folder / "a.png", image())
    write(other / "b.png", image())
    os.mkfifo(folder / ".packsyncignore")

    done = env.cli("run", *(["--dry-run"] if dry_run else ["--no-wait"]), timeout=30)

    assert done.returncode == 4, done.stdout + done.stderr
    assert f"{folder / '.packsyncignore'} cannot be read (a named pipe, not a regular file)" in done.stdout
    assert "Traceback" not in done.stderr
    if not dry_run:
        assert env.pack_named("Q")["images"] and not [p for p in env.sandbox.packs() if p["name"] == "P"]


def test_a_config_file_that_is_a_fifo_is_refused_in_one_sentence(env: Env) -> None:
    env.map("pics", pack="P")
    env.config_path.unlink()
    os.mkfifo(env.config_path)

    done = env.cli("run", "--dry-run", timeout=30)

    assert done.returncode == 2, done.stderr
    assert f"{env.config_path}: cannot read the config file (a named pipe, not a regular file)." in done.stderr


def test_a_token_file_that_is_a_fifo_is_refused_in_one_sentence(env: Env) -> None:
    env.map("pics", pack="P")
    token_file = env.root / "token"
    os.mkfifo(token_file)
    env.genviral["token_file"] = str(token_file)
    env.write_config()

    done = env.cli("run", "--no-wait", token=None, timeout=30)

    assert done.returncode == 2, done.stderr
    assert f"genviral.token_file: cannot read {token_file} (a named pipe, not a regular file)." in done.stderr


def test_a_state_file_that_is_a_fifo_is_refused_in_one_sentence(env: Env) -> None:
    env.map("pics", pack="P")
    env.state_path.parent.mkdir(parents=True)
    os.mkfifo(env.state_path)

    done = env.cli("status", token=None, timeout=30)

    assert done.returncode == 2, done.stderr
    assert str(env.state_path) in done.stderr and "a named pipe, not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


# -- the NAS and desktop junk ----------------------------------------------------------------------

JUNK = ["@eaDir/a.jpg/SYNOFILE_THUMB_M.png", "#recycle/old.png", ".DS_Store", "sub/._b.png", "Thumbs.db"]


@pytest.mark.parametrize(("options", "synced"), [
    ({"exclude": ["**/Raw/**"]}, {"a.png"}),
    ({"exclude": ["**/Raw/**"], "default_excludes": False}, {"a.png", "@eaDir/a.jpg/SYNOFILE_THUMB_M.png",
                                                            "#recycle/old.png", "sub/._b.png"}),
    ({"exclude": ["!.DS_Store"], "include": ["*.png", ".DS_Store"]}, {"a.png", "Raw/c.png", ".DS_Store"}),  # taken back
])
def test_a_users_exclude_adds_to_the_default_junk_unless_told_not_to(env: Env, options: dict[str, object],
                                                                      synced: set[str]) -> None:
    folder = env.map("pics", pack="P", **options)
    for rel in [*JUNK, "a.png", "Raw/c.png"]:
        write(folder / rel, image())

    scan = scan_folder(folder, {}, filters_for(env.config().mappings[0]))

    assert {item.key for item in scan.items} == synced


def test_default_excludes_of_the_wrong_type_is_named(env: Env) -> None:
    env.map("pics", pack="P", default_excludes="no")
    done = env.cli("run", "--dry-run")
    assert done.returncode == 2
    assert "mappings[0].default_excludes: expected true or false, got a string" in done.stderr


# -- what the file system says, said as it is ------------------------------------------------------

#: Opens the state at argv[1] (made first) with every file descriptor taken but argv[2], and prints the
#: sentence: with none left its own open fails, with one left SQLite's does (a daemon running long).
OUT_OF_FDS = """
import os, resource, sys
from pathlib import Path
from packsync.errors import StateError
from packsync.state.lock import StateLock
from packsync.state.store import State
path = Path(sys.argv[1])
State(path).close()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
taken = []
try:
    while True:
        taken.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for _ in range(int(sys.argv[2])):
    os.close(taken.pop())
for what in (lambda: State(path), lambda: StateLock(path).acquire()):
    try:
        what()
    except StateError as exc:
        print(exc)
"""


@pytest.mark.parametrize("free", [0, 1])
def test_too_many_open_files_is_not_called_permission_denied(tmp_path: Path, free: int) -> None:
    done = subprocess.run([sys.executable, "-c", OUT_OF_FDS, str(tmp_path / "state.db"), str(free)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 + (free == 0), done.stdout  # (with one left, the lock's open succeeds)
    for line in lines:
        assert "too many open files" in line and "permission denied" not in line, line
