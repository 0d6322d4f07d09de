"""The API key stays secret: where it is read from, and where it must never end up.

Complements ``test_run.py::test_token_never_reaches_output_state_or_logs`` (normal runs, errors)
with the paths that test does not take: a key read from ``token_file`` (and a warning when that
file is readable by others), a run killed mid-way (an uncheckpointed SQLite WAL must not hold the
key either), and the command line of the running process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TOKEN, Env, image, write
from helpers import wait_until

from packsync.errors import ApiError, ExitCode
from packsync.logs import register_secret


def all_files_below(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def token_file_env(env: Env, mode: int) -> Path:
    """Point the config at a token file with permissions ``mode`` (and no GENVIRAL_TOKEN)."""
    path = env.root / "secrets" / "genviral.token"
    path.parent.mkdir(exist_ok=True)
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    env.genviral["token_file"] = str(path)
    env.write_config()
    return path


def test_world_readable_token_file_warns_and_the_key_still_works(env: Env) -> None:
    """A token file others can read gets a warning that says chmod 600; the key is never printed."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    path = token_file_env(env, 0o644)

    result = env.cli("-v", "run", "--no-wait", token=None)

    assert result.returncode == ExitCode.OK, result.stderr
    assert "readable by other users" in result.stderr and "chmod 600" in result.stderr
    assert str(path) in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert len(env.pack(pack_id)["images"]) == 1


def test_private_token_file_gives_no_warning(env: Env) -> None:
    write(env.map("brand", pack="p") / "a.png", image())
    token_file_env(env, 0o600)

    result = env.cli("run", "--no-wait", token=None)

    assert result.returncode == ExitCode.OK, result.stderr
    assert "readable by other users" not in result.stderr


def test_key_from_token_file_is_redacted_from_error_output(env: Env) -> None:
    """With the key read from a file, a failing verbose run still never shows it."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    token_file_env(env, 0o600)
    env.sandbox.inject("500", route="/packs/{id}", count=10)

    result = env.cli("-v", "run", "--no-wait", token=None)

    assert result.returncode == ExitCode.SOME_FAILED
    assert TOKEN not in result.stdout + result.stderr
    assert TOKEN.split(".")[1] not in result.stdout + result.stderr, "the secret half leaked"


def test_key_is_in_no_file_after_a_killed_run_nor_in_the_process_command_line(env: Env) -> None:
    """SIGKILL mid-run leaves a state folder (database, WAL, lock) without the key, and the running
    process never carried the key in its argv (visible to every user through ps)."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for i in range(40):
        write(folder / f"{i}.png", image())
    env.sandbox.faults.latency_s = 0.02
    child_env = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
    child_env["GENVIRAL_TOKEN"] = TOKEN
    process = subprocess.Popen([sys.executable, "-m", "packsync", "-v", "-c", str(env.config_path), "run"],
                               env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: env.sandbox.calls[("POST", "/packs/{id}/images")] >= 5, timeout=30)
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == -signal.SIGKILL
    assert TOKEN.encode() not in cmdline
    assert TOKEN.encode() not in stdout + stderr
    state_files = all_files_below(env.state_path.parent)
    assert env.state_path in state_files, "no state was written before the kill"
    for path in state_files:
        assert TOKEN.encode() not in path.read_bytes(), path
        assert TOKEN.split(".")[1].encode() not in path.read_bytes(), path


def test_state_folder_and_database_are_private_to_the_user(env: Env) -> None:
    """The state database (which holds presigned upload URLs) is readable by its owner only."""
    write(env.map("brand", pack="p") / "a.png", image())

    assert env.cli("run", "--no-wait").returncode == ExitCode.OK

    assert env.state_path.stat().st_mode & 0o077 == 0, oct(env.state_path.stat().st_mode)
    for path in all_files_below(env.state_path.parent):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"


def _genviral_error(body: bytes) -> str:
    from packsync.remote.genviral import data_of
    from packsync.remote.wire import Answer, Route

    with pytest.raises(ApiError) as caught:
        data_of(Answer(400, {}, body), Route("GET", "/packs/{id}"))
    return str(caught.value)


def _astria_error(body: bytes) -> str:
    from packsync.remote.astria import json_of
    from packsync.remote.wire import Answer, Route

    with pytest.raises(ApiError) as caught:
        json_of(Answer(400, {}, body), Route("GET", "astria /p/{id}"))
    return str(caught.value)


def _id_error(body: bytes) -> str:
    from packsync.remote.answers import created_id

    with pytest.raises(ApiError) as caught:
        created_id({"id": [body.decode()]}, "POST /packs")
    return str(caught.value)


@pytest.mark.parametrize("error", [_genviral_error, _astria_error, _id_error],
                         ids=["a Genviral error page", "an Astria error page", "a value shown in an error"])
def test_a_key_echoed_where_an_error_s_excerpt_is_cut_is_not_shown_in_part(error: Callable[[bytes], str]) -> None:
    """An excerpt shows the start of a long text: wherever the key sits in it, the excerpt never ends
    in the first part of the key, cut in two before the key could be recognised."""
    register_secret(TOKEN)
    secret = TOKEN.split(".")[1]
    for padding in range(0, 9000, 17):
        message = error((" " * padding + TOKEN + " and the rest").encode())
        assert secret[:6] not in message, f"{padding} spaces before the key: {message}"
