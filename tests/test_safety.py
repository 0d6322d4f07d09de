"""Nothing is deleted by accident: safety stops, unreadable entries, a foreign state file, the lock.

The classic mirror disaster is an unmounted or emptied source that makes the tool delete the whole
remote. These tests stage each way packsync could be fooled into that, run the real CLI, and check
that the pack keeps its images, the exit code says why (4 for a safety stop, 2 for a state or lock
problem) and the message tells the user what to do.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TOKEN, Env, image, write
from helpers import state_rows, wait_until
from test_state import stat_key_row

from packsync.errors import ExitCode
from packsync.state.tables import SCHEMA_VERSION

DELETE = ("DELETE", "/packs/{id}/images/{image_id}")


def synced_pack(env: Env, count: int, **options: object) -> tuple[str, Path, list[Path]]:
    """A pack (by id) and a mapped folder of ``count`` images, synced once."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, **options)
    files = [write(folder / f"{i:02d}.png", image()) for i in range(count)]
    result = env.cli("run", "--no-wait")
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert len(env.pack(pack_id)["images"]) == count
    env.sandbox.reset_calls()
    return pack_id, folder, files


def image_count(env: Env, pack_id: str) -> int:
    return len(env.pack(pack_id)["images"])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- missing and empty folders -------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_mapped_folder_gone_after_a_sync_is_a_safety_stop(env: Env, force: bool) -> None:
    """A synced folder renamed away (an unmounted disk) → exit 4, a reason, and no delete at all,
    not even with --force: a folder that is not there cannot be mirrored."""
    pack_id, folder, _ = synced_pack(env, 3)
    folder.rename(folder.with_name("elsewhere"))

    result = env.cli("run", "--no-wait", *(["--force"] if force else []))

    assert result.returncode == ExitCode.SAFETY, result.stderr
    output = result.stdout + result.stderr
    assert str(folder) in output and "missing" in output and "unmounted" in output
    assert env.sandbox.calls[DELETE] == 0
    assert image_count(env, pack_id) == 3


def test_mapped_folder_that_never_existed_is_a_config_error(env: Env) -> None:
    """A mapping to a folder packsync never synced is a mistake in the config, not a safety stop."""
    pack_id = env.sandbox.create_pack("p")
    env.mappings.append({"path": str(env.root / "typo"), "pack_id": pack_id})
    env.write_config()

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.USAGE
    assert "mappings[0].path" in result.stderr.lower() and "typo" in result.stderr
    assert env.sandbox.mutating_calls() == 0


def test_emptied_folder_stops_unless_forced(env: Env) -> None:
    """An emptied folder looks like an unmounted one: exit 4 with --force in the message; --force deletes."""
    pack_id, folder, files = synced_pack(env, 4)
    for path in files:
        path.unlink()

    stopped = env.cli("run", "--no-wait")

    assert stopped.returncode == ExitCode.SAFETY
    assert "empty" in stopped.stdout and "--force" in stopped.stdout
    assert env.sandbox.calls[DELETE] == 0 and image_count(env, pack_id) == 4

    forced = env.cli("run", "--no-wait", "--force")

    assert forced.returncode == ExitCode.OK, forced.stdout + forced.stderr
    assert image_count(env, pack_id) == 0


def test_folder_holding_only_bad_files_does_not_delete_the_good_ones_images(env: Env) -> None:
    """Files that turned to garbage (e.g. a failed restore) are not a reason to delete their images."""
    pack_id, folder, files = synced_pack(env, 3)
    for path in files:
        path.write_bytes(b"")

    result = env.cli("run", "--no-wait")

    assert result.returncode != ExitCode.OK
    assert env.sandbox.calls[DELETE] == 0
    assert image_count(env, pack_id) == 3


# -- max_delete ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_delete", [2, "20%"])
def test_max_delete_withholds_deletes_until_forced(env: Env, max_delete: int | str) -> None:
    """More deletes than max_delete (a count, or a share of the pack) → exit 4, nothing deleted, a
    message naming max_delete and --force; the additions still happen; --force then deletes."""
    pack_id, folder, files = synced_pack(env, 10, max_delete=max_delete)
    for path in files[:3]:
        path.unlink()
    added = write(folder / "new.png", image())

    stopped = env.cli("run", "--no-wait")

    assert stopped.returncode == ExitCode.SAFETY, stopped.stdout + stopped.stderr
    assert "max_delete" in stopped.stdout and "--force" in stopped.stdout
    assert env.sandbox.calls[DELETE] == 0
    assert image_count(env, pack_id) == 11
    assert added.read_bytes() in env.cdn_bytes(pack_id)

    forced = env.cli("run", "--no-wait", "--force")

    assert forced.returncode == ExitCode.OK, forced.stdout + forced.stderr
    assert env.sandbox.calls[DELETE] == 3
    assert sorted(env.cdn_bytes(pack_id)) == sorted(p.read_bytes() for p in folder.glob("*.png"))


@pytest.mark.parametrize("max_delete", [2, "20%"])
def test_deletes_within_max_delete_need_no_force(env: Env, max_delete: int | str) -> None:
    """At or under the limit, deletes simply happen."""
    pack_id, _folder, files = synced_pack(env, 10, max_delete=max_delete)
    for path in files[:2]:
        path.unlink()

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.OK, result.stdout
    assert image_count(env, pack_id) == 8


def test_dry_run_lists_withheld_deletes_and_changes_nothing(env: Env) -> None:
    """--dry-run shows which deletes a safety stop withholds, and makes no API write."""
    pack_id, _folder, files = synced_pack(env, 4, max_delete=1)
    for path in files[:2]:
        path.unlink()

    result = env.cli("run", "--dry-run")

    assert result.stdout.count("withheld   delete of ") == 2
    assert f"withheld   delete of {files[0].name} (image " in result.stdout, "named by its file"
    assert "max_delete" in result.stdout
    assert env.sandbox.mutating_calls() == 0
    assert image_count(env, pack_id) == 4


# -- what the scan could not see -----------------------------------------------------------------


def _drop_dac_capabilities() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding
    set, so that even root is refused by chmod 000 (root's permitted set is its bounding set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli_bound_by_permissions(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI so that file permissions bind it, even when the tests run as root."""
    child_env = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
    child_env["GENVIRAL_TOKEN"] = TOKEN
    return subprocess.run([sys.executable, "-m", "packsync", "-c", str(env.config_path), *args],
                          capture_output=True, text=True, env=child_env, timeout=120,
                          preexec_fn=_drop_dac_capabilities if os.geteuid() == 0 else None)


@pytest.fixture
def permissions_bind() -> Iterator[None]:
    """Skip unless a chmod 000 really makes a file unreadable to the CLI child."""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"packsync-probe-{os.getpid()}"
    probe.write_text("x")
    probe.chmod(0)
    try:
        check = subprocess.run(["cat", str(probe)], capture_output=True,
                               preexec_fn=_drop_dac_capabilities if os.geteuid() == 0 else None)
    except OSError as exc:
        pytest.skip(f"cannot drop capabilities to simulate a read error: {exc}")
    finally:
        probe.unlink()
    if check.returncode == 0:
        pytest.skip("chmod 000 does not stop reads here (root with CAP_DAC_OVERRIDE that cannot be dropped)")
    yield


def test_unreadable_folder_and_file_delete_nothing_they_hid(env: Env, permissions_bind: None) -> None:
    """A sub-folder that cannot be listed and a changed file that cannot be read are reported by
    name; the images of what they held stay; the rest of the folder still syncs.

    (An unchanged file is not read again at all — its stat key matches the cache — so only a
    changed one can meet a read error.)"""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for rel in ("a.png", "locked/b.png", "locked/deeper/c.png", "secret.png"):
        write(folder / rel, image())
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    env.sandbox.reset_calls()
    new = write(folder / "new.png", image())
    write(folder / "secret.png", image(width=12))
    (folder / "locked").chmod(0)
    (folder / "secret.png").chmod(0)
    try:
        result = cli_bound_by_permissions(env, "run", "--no-wait")
    finally:
        (folder / "locked").chmod(0o755)
        (folder / "secret.png").chmod(0o644)

    assert result.returncode == ExitCode.SOME_FAILED, result.stdout + result.stderr
    assert "locked/" in result.stdout and "secret.png" in result.stdout
    assert "cannot" in result.stdout
    assert env.sandbox.calls[DELETE] == 0
    assert image_count(env, pack_id) == 5
    assert new.read_bytes() in env.cdn_bytes(pack_id)


def test_unreadable_mapped_folder_itself_is_a_safety_stop(env: Env, permissions_bind: None) -> None:
    """The mapped folder itself unreadable → exit 4 and no delete (like an unmounted disk)."""
    pack_id, folder, _ = synced_pack(env, 3)
    folder.chmod(0)
    try:
        result = cli_bound_by_permissions(env, "run", "--no-wait", "--force")
    finally:
        folder.chmod(0o755)

    assert result.returncode == ExitCode.SAFETY, result.stdout + result.stderr
    assert str(folder) in result.stdout and "cannot be read" in result.stdout
    assert env.sandbox.calls[DELETE] == 0
    assert image_count(env, pack_id) == 3


# -- the state database --------------------------------------------------------------------------


def _foreign_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE bookmarks (id INTEGER PRIMARY KEY, url TEXT)")
        db.execute("INSERT INTO bookmarks (url) VALUES ('https://example.com')")
    db.close()


def _text_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("my shopping list\nmilk\neggs\n")


def _corrupt_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 1024)


def _newer_packsync(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("app", "packsync"), ("schema", "999")])
    db.close()


def _garbled_schema(path: Path) -> None:
    """packsync's own file, whose schema version is no number (a bit flipped, an editor's slip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("app", "packsync"), ("schema", "6\x00six")])
    db.close()


@pytest.mark.parametrize("make,words", [(_text_file, "not a SQLite database"),
                                        (_foreign_sqlite, "another program"),
                                        (_corrupt_sqlite, "corrupt"),
                                        (_newer_packsync, "newer packsync"),
                                        (_garbled_schema, "corrupt")],
                         ids=["text-file", "foreign-sqlite", "corrupt-sqlite", "newer-schema", "garbled-schema"])
@pytest.mark.parametrize("command", [("run", "--no-wait"), ("status",)], ids=["run", "status"])
def test_unusable_state_file_is_refused_by_path_and_left_untouched(env: Env, make: Callable[[Path], None], words: str,
                                                                   command: tuple[str, ...]) -> None:
    """A state file that is not packsync's (or is damaged, or too new) → exit 2 naming its path and
    what is wrong; the file keeps its exact bytes and no companion file appears; no API call."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    make(env.state_path)
    before = digest(env.state_path)
    siblings = {p.name for p in env.state_path.parent.iterdir()}

    result = env.cli(*command)

    assert result.returncode == ExitCode.USAGE, result.stdout + result.stderr
    assert str(env.state_path) in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr
    assert digest(env.state_path) == before, "packsync changed a state file it refused"
    leftovers = {p.name for p in env.state_path.parent.iterdir()} - siblings - {env.state_path.name + ".lock"}
    assert not leftovers, f"packsync left {leftovers} next to a file it refused"
    assert env.sandbox.mutating_calls() == 0


# -- the lock ------------------------------------------------------------------------------------


def test_second_run_while_another_holds_the_lock_exits_2_naming_its_pid(env: Env) -> None:
    """Only one packsync per state: a second `run` is refused with the holder's pid, touching nothing."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    holder_code = ("import sys; from pathlib import Path; from packsync.state.lock import StateLock; "
                   "StateLock(Path(sys.argv[1])).acquire(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", holder_code, str(env.state_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        result = env.cli("run", "--no-wait")

        assert result.returncode == ExitCode.USAGE
        assert f"pid {holder.pid}" in result.stderr
        assert sum(env.sandbox.calls.values()) == 0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)

    assert env.cli("run", "--no-wait").returncode == ExitCode.OK


def test_lock_of_a_killed_run_does_not_block_the_next(env: Env) -> None:
    """A run killed with SIGKILL leaves no stale lock: the kernel released it."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for i in range(30):
        write(folder / f"{i}.png", image())
    env.sandbox.faults.latency_s = 0.05
    child_env = {**{k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}, "GENVIRAL_TOKEN": TOKEN}
    first = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "run", "--no-wait"],
                             env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = env.state_path.with_name(env.state_path.name + ".lock")
    wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid)
               and env.sandbox.calls[("POST", "/packs/{id}/images")] >= 1, timeout=30)
    first.kill()
    first.wait()
    env.sandbox.faults.latency_s = 0.0

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.OK, result.stderr
    assert sorted(env.cdn_bytes(pack_id)) == sorted(p.read_bytes() for p in folder.glob("*.png"))


def _as_schema_1(state: Path) -> None:
    """Turn a state into what packsync wrote before images had an owner (schema 1)."""
    with sqlite3.connect(state) as db:
        db.execute("ALTER TABLE images DROP COLUMN owner")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")


def test_a_state_of_schema_1_is_read_as_migrated_and_migrated_on_the_next_run(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    _as_schema_1(env.state_path)
    before = env.state_path.read_bytes()

    status = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]
    dry = env.cli("run", "--dry-run")

    assert (status["images"], status["synced"]) == (2, 2)
    assert dry.returncode == 0 and "nothing to do" in dry.stdout
    assert env.state_path.read_bytes() == before, "reading an older state does not upgrade it"
    env.sandbox.reset_calls()
    assert env.cli("run", "--no-wait").returncode == 0
    assert env.sandbox.mutating_calls() == 0
    assert state_rows(env.state_path, "SELECT DISTINCT owner FROM images") == [(str(folder),)]
    assert state_rows(env.state_path, "SELECT value FROM meta WHERE key = 'schema'") == [(str(SCHEMA_VERSION),)]


def test_a_migration_cut_short_is_finished_by_the_next_run(env: Env) -> None:
    """The column was added but the schema version not yet written (a kill, a full disk)."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    with sqlite3.connect(env.state_path) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stderr
    assert "0 added, 0 deleted, 0 skipped, 0 failed" in result.stdout


def _as_made_by_sqlmodel(state: Path) -> None:
    """Rebuild a state file, rows and all, on the exact schema packsync's sqlmodel version created."""
    schema = (Path(__file__).parent / "data" / "state-schema-2-sqlmodel.sql").read_text(encoding="utf-8")
    rebuilt = state.with_name("rebuilt.db")
    with sqlite3.connect(state) as old, sqlite3.connect(rebuilt) as new:
        new.executescript(schema)
        for (table,) in old.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            columns = [row[1] for row in new.execute(f"PRAGMA table_info({table})")]  # those it had then
            if not columns:  # a table (or index) from after that version
                continue
            rows = map(stat_key_row, old.execute("SELECT * FROM files")) if table == "files" else \
                old.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            new.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                            rows)
        new.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    for leftover in state.parent.glob(state.name + "-*"):
        leftover.unlink()
    os.replace(rebuilt, state)


def test_a_state_made_by_the_sqlmodel_version_is_used_as_it_is(env: Env) -> None:
    """Its tables have no DEFAULT clauses (sqlmodel filled defaults in Python): every write must still work."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    _as_made_by_sqlmodel(env.state_path)
    before = env.state_path.read_bytes()
    assert "synced 2" in env.cli("status", token=None).stdout
    assert env.state_path.read_bytes() == before, "reading an older state does not upgrade it"
    env.sandbox.reset_calls()

    assert env.cli("run", "--no-wait").returncode == 0
    assert env.sandbox.mutating_calls() == 0
    write(folder / "c.png", image())
    (folder / "a.png").unlink()
    result = env.cli("run", "--no-wait")
    status = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]

    assert result.returncode == 0, result.stderr
    assert "1 added, 1 deleted, 0 skipped, 0 failed" in result.stdout
    assert sorted(env.cdn_bytes(pack_id)) == sorted(p.read_bytes() for p in folder.glob("*.png"))
    assert (status["images"], status["synced"]) == (2, 2)
