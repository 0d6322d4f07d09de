"""Fault injection over real HTTP: a flaky API never costs a duplicate, a lost file or a hang.

Each test runs packsync against the in-process sandbox on loopback and makes it misbehave the way
the real API and its storage can (see ``packsync/sandbox/faults.py``): rate limits, 5xx, dropped
connections, answers lost after the work was done, expired upload URLs, garbage bodies, a key
revoked mid-run, a pack deleted mid-run. The promise under test: packsync converges to an exact
mirror, never adds an image twice, never deletes what it should not, and says what went wrong.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from conftest import TOKEN, Env, image, write
from helpers import state_rows, wait_until

from packsync.errors import ApiError, AuthError, ExitCode, TransientError
from packsync.remote.genviral import GenviralClient
from packsync.remote.transport import RetryPolicy
from packsync.sandbox import Account, Faults, Sandbox
from packsync.sandbox.server import Reply

ADD = ("POST", "/packs/{id}/images")
DELETE = ("DELETE", "/packs/{id}/images/{image_id}")


# -- helpers -------------------------------------------------------------------------------------


def folder_contents(folder: Path) -> set[bytes]:
    """The distinct contents of the syncable images below ``folder``."""
    return {p.read_bytes() for p in folder.rglob("*.png") if p.is_file()}


def assert_exact_mirror(env: Env, pack_id: str, folder: Path) -> None:
    """The pack holds each distinct content of the folder exactly once, and nothing else."""
    remote = env.cdn_bytes(pack_id)
    assert len(remote) == len(set(remote)), f"{len(remote) - len(set(remote))} duplicate images in the pack"
    assert set(remote) == folder_contents(folder)


def recorded_image_ids(env: Env, pack_id: str) -> set[str]:
    """The image ids the state database says packsync added to ``pack_id``."""
    return {row[0] for row in state_rows(env.state_path, "SELECT image_id FROM images WHERE pack_id = ?", pack_id)}


def assert_no_orphans(env: Env, pack_id: str) -> None:
    """Every image in the pack is one packsync recorded (so it can later delete it)."""
    in_pack = {image["id"] for image in env.pack(pack_id)["images"]}
    assert in_pack == recorded_image_ids(env, pack_id)


def popen_cli(env: Env, *args: str) -> subprocess.Popen[str]:
    """Start the real `packsync` command in a child process (not waiting for it)."""
    child_env = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
    child_env["GENVIRAL_TOKEN"] = TOKEN
    return subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)


def sync_until_clean(env: Env, runs: int = 5) -> list[ExitCode]:
    """Run plain syncs until one exits 0, at most ``runs`` times; the exit codes seen."""
    codes: list[ExitCode] = []
    while len(codes) < runs and (not codes or codes[-1] != ExitCode.OK):
        codes.append(env.sync().exit_code)
    return codes


@pytest.fixture
def flaky_env(tmp_path: Path) -> Iterator[Env]:
    """An Env whose sandbox adds latency and fails 15% of API/storage requests: 429s, 5xx, resets,
    and 500s or resets that come after the server did the work."""
    seed = int(os.environ.get("PACKSYNC_FAULT_SEED", "20240611"))
    faults = Faults(latency_s=0.003, rate=0.15, seed=seed,
                    kinds=("429", "429-bare", "500", "503", "reset", "500-after", "reset-after"))
    with Sandbox(accounts={TOKEN: Account(scope="ws-1")}, enrich_delays=(0.05, 0.05), faults=faults) as sandbox:
        yield Env(tmp_path, sandbox)


# -- (1) random faults ---------------------------------------------------------------------------


def test_random_faults_converge_to_an_exact_mirror_without_duplicates(flaky_env: Env) -> None:
    """Under random 429s, 5xx and resets (some after the work was done), a few plain re-runs end in
    exit 0 and an exact mirror, with every image recorded.

    A pack given by id and a pack given by name (so pack creation is faulted too); identical bytes
    in two places of one folder must still make one image.
    """
    env = flaky_env
    by_id = env.sandbox.create_pack("By Id")
    first = env.map("first", pack_id=by_id)
    second = env.map("second", pack="By Name")
    for i in range(16):
        write(first / f"sub{i % 3}/{i}.png", image())
    write(first / "copy-of-0.png", (first / "sub0/0.png").read_bytes())
    for i in range(8):
        write(second / f"{i}.png", image())

    codes = sync_until_clean(env)

    assert codes[-1] == ExitCode.OK, f"no clean run in 5 attempts: {codes}"
    # Without faults: GET pack, list + create the named pack, then 3 requests per distinct content.
    fault_free_calls = 3 + 3 * (16 + 8)
    assert sum(env.sandbox.calls.values()) > fault_free_calls, "the fault plan injected nothing"
    by_name = env.pack_named("By Name")["id"]
    for pack_id, folder in ((by_id, first), (by_name, second)):
        assert_exact_mirror(env, pack_id, folder)
        assert_no_orphans(env, pack_id)

    # Then deletes and replacements, under the same faults.
    for path in sorted(first.rglob("*.png"))[:4]:
        path.unlink()
    for path in sorted(second.glob("*.png"))[:2]:
        path.write_bytes(image(width=11))
    codes = sync_until_clean(env)

    assert codes[-1] == ExitCode.OK, f"no clean run in 5 attempts after changes: {codes}"
    for pack_id, folder in ((by_id, first), (by_name, second)):
        assert_exact_mirror(env, pack_id, folder)
        assert_no_orphans(env, pack_id)


# -- (2) (3) answers lost after the work was done ------------------------------------------------


@pytest.mark.parametrize("kind", ["500-after", "reset-after", "500", "reset", "504"])
def test_failed_add_image_is_not_repeated_blindly(env: Env, kind: str) -> None:
    """An add-image that fails (possibly after the server added it) never leaves two images.

    For "-after" faults the server did the work: packsync must find the image in the pack and adopt
    it instead of adding it again (one POST). For the others it must add it once more.
    """
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    env.sandbox.inject(kind, method="POST", route="/packs/{id}/images")

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    assert_exact_mirror(env, pack_id, folder)
    assert_no_orphans(env, pack_id)
    expected_posts = 1 if kind.endswith("-after") else 2
    assert env.sandbox.calls[ADD] == expected_posts
    assert env.sandbox.calls[("GET", "/packs/{id}")] >= 2, "the pack was not looked at before repeating"

    env.sandbox.reset_calls()
    assert env.sync().exit_code == ExitCode.OK
    assert env.sandbox.mutating_calls() == 0, "the adopted image was not recorded"


@pytest.mark.parametrize("kind", ["500-after", "reset-after"])
def test_create_pack_answer_lost_makes_exactly_one_pack(env: Env, kind: str) -> None:
    """When POST /packs created the pack but the answer was lost, the next step finds it by name."""
    folder = env.map("brand", pack="Brand Assets")
    write(folder / "a.png", image())
    env.sandbox.inject(kind, method="POST", route="/packs")

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    pack = env.pack_named("Brand Assets")  # asserts there is exactly one
    assert env.sandbox.calls[("POST", "/packs")] == 1
    assert_exact_mirror(env, pack["id"], folder)

    write(folder / "b.png", image())
    assert env.sync().exit_code == ExitCode.OK
    assert_exact_mirror(env, env.pack_named("Brand Assets")["id"], folder)


@pytest.mark.parametrize("kind", ["500-after", "reset-after", "503"])
def test_delete_whose_answer_is_lost_is_repeated_harmlessly(env: Env, kind: str) -> None:
    """A delete that failed (possibly after it took effect) is retried; "already gone" counts as done."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    keep = write(folder / "keep.png", image())
    gone = write(folder / "gone.png", image())
    write(folder / "also.png", image())
    env.sync()
    gone.unlink()
    env.sandbox.inject(kind, method="DELETE", route="/packs/{id}/images/{image_id}")

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    assert env.sandbox.calls[DELETE] == 2
    assert_exact_mirror(env, pack_id, folder)
    assert_no_orphans(env, pack_id)
    assert keep.read_bytes() in env.cdn_bytes(pack_id)


# -- (4) expired upload URL ----------------------------------------------------------------------


def test_expired_upload_url_asks_for_a_fresh_one(env: Env) -> None:
    """Storage refusing the PUT as expired makes packsync ask POST /files again; the file lands."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    env.sandbox.inject("expire", method="PUT", route="storage")

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    assert env.sandbox.calls[("POST", "/files")] == 2
    assert env.sandbox.calls[("PUT", "storage")] == 2
    assert_exact_mirror(env, pack_id, folder)


def test_upload_url_that_keeps_expiring_fails_that_file_only(env: Env) -> None:
    """A storage that refuses every fresh URL fails the file after a bounded number of tries,
    with the storage's own answer (403 AccessDenied) in the reason."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    env.sync()
    write(folder / "b.png", image())
    env.sandbox.inject("expire", method="PUT", route="storage", count=50)

    report = env.sync()

    assert report.exit_code == ExitCode.SOME_FAILED
    outcome = report.mappings[0].outcome
    assert outcome is not None and [Path(p).name for p, _ in outcome.failures] == ["b.png"]
    assert "403" in outcome.failures[0][1], "the storage's last answer is not in the reason"
    assert env.sandbox.calls[("POST", "/files")] <= 5
    assert len(env.pack(pack_id)["images"]) == 1


# -- (5) rate limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("route,method", [("/files", "POST"), ("storage", "PUT"),
                                          ("/packs/{id}/images", "POST"), ("/packs/{id}", "GET")])
@pytest.mark.parametrize("kind", ["429", "429-bare"])
def test_rate_limit_is_retried_and_succeeds(env: Env, kind: str, route: str, method: str) -> None:
    """A 429, with or without Retry-After, on any step is waited out and the run succeeds."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    env.sandbox.inject(kind, method=method, route=route)

    started = time.monotonic()
    report = env.sync()
    elapsed = time.monotonic() - started

    assert report.exit_code == ExitCode.OK
    assert env.sandbox.calls[(method, route)] == 2
    assert_exact_mirror(env, pack_id, folder)
    if kind == "429":
        assert elapsed >= 0.9, "the server's Retry-After: 1 was not honoured"


# -- (6) a persistent outage ---------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_persistent_503_ends_the_run_and_names_what_is_left(env: Env) -> None:
    """A route that answers 503 for ever must not be retried for ever: exit 1, the files named.

    The default retry policy (6 attempts, full-jitter backoff 1 s · 2^n, capped at 30 s) sleeps at
    most 1+2+4+8+16 = 31 s for one request; the run here waits at most 0.2 s between tries (the config's
    ``retry_wait_max_s``), so it must end within the attempts' pauses and the process's start.
    """
    default = RetryPolicy()
    exact = msgspec.structs.replace(default.backoff, jitter=0.0)
    assert sum(exact.delay(attempt) for attempt in range(1, default.attempts)) == 31
    env.genviral["retry_wait_max_s"] = 0.2
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "kept.png", image())
    env.sync()
    write(folder / "new-1.png", image())
    write(folder / "new-2.png", image())
    env.sandbox.reset_calls()
    env.sandbox.inject("503", method="POST", route="/packs/{id}/images", count=10_000)

    started = time.monotonic()
    result = env.cli("run", "--no-wait", timeout=80)
    elapsed = time.monotonic() - started

    assert result.returncode == ExitCode.SOME_FAILED, result.stderr
    assert "new-1.png" in result.stdout and "new-2.png" in result.stdout
    assert "503" in result.stdout
    assert "Traceback" not in result.stderr
    assert env.sandbox.calls[ADD] <= 2 * 6, "more attempts than the retry policy allows"
    assert elapsed < 20, f"a persistent 503 kept the run busy for {elapsed:.0f} s"
    assert len(env.pack(pack_id)["images"]) == 1


# -- (7) malformed answers -----------------------------------------------------------------------


@pytest.mark.parametrize("kind,status,excerpt", [("not-json", 200, "<html>oops</html>"),
                                                 ("502", 502, "502 Bad Gateway")])
def test_malformed_answer_is_an_error_with_status_and_excerpt(env: Env, kind: str, status: int,
                                                             excerpt: str) -> None:
    """An HTML body where JSON was promised becomes an ApiError carrying the status and an excerpt."""
    pack_id = env.sandbox.create_pack("p")
    env.sandbox.inject(kind, method="GET", route="/packs/{id}")

    async def read() -> None:
        async with GenviralClient(env.sandbox.base_url, TOKEN, retry=RetryPolicy(attempts=1)) as api:
            await api.get_pack(pack_id)

    with pytest.raises(ApiError) as caught:
        asyncio.run(read())

    assert caught.value.status == status
    assert str(status) in str(caught.value) and excerpt in str(caught.value)
    assert len(str(caught.value)) < 300
    assert isinstance(caught.value, TransientError), "a gateway's HTML page is worth retrying"


@pytest.mark.parametrize("kind,status,excerpt", [("not-json", 200, "<html>oops</html>"),
                                                 ("502", 502, "502 Bad Gateway")])
def test_cli_reports_malformed_answers_without_traceback(env: Env, kind: str, status: int, excerpt: str) -> None:
    """The CLI names the failing step with the status and excerpt; stderr carries no traceback."""
    folder = env.map("brand", pack="New Pack")
    write(folder / "a.png", image())
    env.sandbox.inject(kind, method="POST", route="/packs", count=2)

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.SOME_FAILED
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert f"HTTP {status}" in result.stdout and excerpt in result.stdout
    assert env.sandbox.packs() == [], "a pack was created although every answer was garbage"

    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    assert_exact_mirror(env, env.pack_named("New Pack")["id"], folder)


# -- (8) key revoked mid-run ---------------------------------------------------------------------


def test_key_revoked_mid_run_exits_3_deletes_nothing_and_the_state_survives(env: Env) -> None:
    """A 401 in the middle of a run stops it (exit 3, one sentence), before any delete.

    The state database is intact, and once the key works again the next run converges.
    """
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, max_delete="100%")
    old = [write(folder / f"old-{i}.png", image()) for i in range(6)]
    assert env.sync().exit_code == ExitCode.OK
    for path in old[:3]:
        path.unlink()
    for i in range(40):
        write(folder / f"new-{i}.png", image())
    env.sandbox.faults.latency_s = 0.02
    env.sandbox.reset_calls()

    process = popen_cli(env, "run", "--no-wait")
    try:
        wait_until(lambda: env.sandbox.calls[("PUT", "storage")] >= 3, timeout=30)
        env.sandbox.accounts[TOKEN] = Account("ws-1", status=401)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == ExitCode.AUTH, stderr
    assert "invalid or revoked" in stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert env.sandbox.calls[DELETE] == 0
    assert len(env.pack(pack_id)["images"]) < 6 + 40, "the run was not interrupted; the test proves nothing"
    assert state_rows(env.state_path, "PRAGMA integrity_check") == [("ok",)]

    env.sandbox.accounts[TOKEN] = Account("ws-1")
    env.sandbox.faults.latency_s = 0.0
    assert env.sync().exit_code == ExitCode.OK
    assert_exact_mirror(env, pack_id, folder)
    assert_no_orphans(env, pack_id)


def test_a_run_stopped_by_a_refused_key_has_recorded_every_image_it_added(env: Env) -> None:
    """The executor commits its steps a few at a time; when a 401 stops the run, what it queued is
    committed on the way out: every image in the pack is in the state before the next run starts."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for i in range(40):
        write(folder / f"{i}.png", image())
    env.sandbox.faults.latency_s = 0.02

    def revoke_after(reply: Reply) -> Reply:
        if env.sandbox.calls[("POST", "/packs/{id}/images")] >= 10:
            env.sandbox.accounts[TOKEN] = Account("ws-1", status=401)
        return reply

    env.sandbox.rewrite("POST", "/packs/{id}/images", revoke_after)
    with pytest.raises(AuthError):
        env.sync()

    in_pack = {image["id"] for image in env.pack(pack_id)["images"]}
    assert 0 < len(in_pack) < 40, "the run was not stopped half-way; the test proves nothing"
    assert recorded_image_ids(env, pack_id) == in_pack


def test_key_revoked_between_runs_deletes_nothing(env: Env) -> None:
    """A run with a revoked key stops before planning deletes: the pack keeps every image."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    files = [write(folder / f"{i}.png", image()) for i in range(3)]
    env.sync()
    files[0].unlink()
    env.sandbox.accounts[TOKEN] = Account("ws-1", status=401)
    env.sandbox.reset_calls()

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.AUTH
    assert "Traceback" not in result.stderr
    assert env.sandbox.mutating_calls() == 0
    assert len(env.pack(pack_id)["images"]) == 3


# -- (9) pack deleted mid-run --------------------------------------------------------------------


def test_pack_deleted_mid_run_fails_that_mapping_clearly_and_the_other_still_syncs(env: Env) -> None:
    """A pack (mapped by id) deleted while its images are being added ends that mapping with a
    clear error; the other mapping is synced completely; exit 1."""
    doomed, kept = env.sandbox.create_pack("doomed"), env.sandbox.create_pack("kept")
    doomed_folder = env.map("doomed", pack_id=doomed)
    kept_folder = env.map("kept", pack_id=kept)
    for i in range(60):
        write(doomed_folder / f"{i}.png", image())
    for i in range(10):
        write(kept_folder / f"{i}.png", image())
    env.sandbox.faults.latency_s = 0.01
    deleted = threading.Event()

    def delete_when_filling() -> None:
        wait_until(lambda: (env.sandbox.pack(doomed) or {"image_count": 0})["image_count"] >= 1, timeout=30)
        env.sandbox.delete_pack(doomed)
        deleted.set()

    deleter = threading.Thread(target=delete_when_filling, daemon=True)
    deleter.start()
    report = env.sync()
    deleter.join(timeout=30)

    assert deleted.is_set()
    assert report.exit_code == ExitCode.SOME_FAILED
    doomed_report = report.mappings[0]
    error = doomed_report.error or (doomed_report.outcome.error if doomed_report.outcome else None)
    assert error is not None, "the doomed mapping reported no error"
    assert "doomed" in error or doomed in error, error
    assert "gone" in error or "not found" in error, error
    outcome = doomed_report.outcome
    assert outcome is None or outcome.failures == [], "files failed one by one instead of the mapping"
    env.sandbox.faults.latency_s = 0.0
    assert_exact_mirror(env, kept, kept_folder)
    assert report.mappings[1].outcome is not None and report.mappings[1].outcome.error is None
