"""Hostile ``packsync init``: options a script or a careless shell gives it. Each is refused with one
sentence and exit 2, and nothing is written (no config, no folder), or it works as typed."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Env

from packsync.config import load_config
from packsync.errors import ExitCode


def init(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """``packsync init`` as a shell runs it: its arguments as bytes (``os.fsencode``), so a name that is no
    UTF-8 text reaches it as it is on disk."""
    command = [os.fsencode(sys.executable), b"-m", b"packsync", b"-c", os.fsencode(env.config_path), b"init",
               *map(os.fsencode, args)]
    return subprocess.run(command, capture_output=True, env={**os.environ, "GENVIRAL_TOKEN": ""},
                          stdin=subprocess.DEVNULL, timeout=120, text=True, errors="replace")


def test_a_pack_name_that_is_not_utf8_is_refused_as_the_pack(env: Env) -> None:
    result = init(env, "--folder", str(env.root / "pics"), "--pack", os.fsdecode(b"caf\xe9"))

    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.startswith("packsync: --pack: ") and "UTF-8" in result.stderr
    assert not env.config_path.exists() and not (env.root / "pics").exists()


def test_a_folder_whose_name_is_not_utf8_is_refused_and_leaves_nothing(env: Env) -> None:
    """Linux names are bytes; a config is UTF-8 text. The config was opened, then its write failed with a
    traceback, leaving an empty config (every later init: "a config is already there") and the folder."""
    folder = os.fsdecode(os.fsencode(env.root) + b"/caf\xe9")  # Latin-1, as an old camera card names it

    result = init(env, "--folder", folder, "--pack", "P")

    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("packsync: --folder: ") and "UTF-8" in result.stderr
    assert not env.config_path.exists() and not os.path.lexists(folder)


@pytest.mark.parametrize("variable", ["A=B", "MY TOKEN", "1TOKEN", "TOKEN$"])
def test_a_token_env_no_environment_can_hold_is_refused(env: Env, variable: str) -> None:
    """`--token-env A=B` was written, and init said `export A=B=...`: no shell can set such a variable, so
    every run would say the token is missing."""
    result = init(env, "--folder", str(env.root / "pics"), "--pack", "P", "--token-env", variable)

    assert result.returncode == ExitCode.USAGE, result.stdout
    assert result.stderr.startswith("packsync: --token-env: ") and "Traceback" not in result.stderr
    assert not env.config_path.exists() and not (env.root / "pics").exists()


def test_an_empty_folder_option_is_refused_not_taken_as_the_current_folder(env: Env) -> None:
    """``init --folder "$FOLDER"`` with FOLDER unset mirrored whatever folder the command ran in (a home,
    say) into the pack."""
    result = init(env, "--folder", "", "--pack", "P")

    assert result.returncode == ExitCode.USAGE, result.stdout
    assert result.stderr.startswith("packsync: --folder: ")
    assert not env.config_path.exists()


def test_a_dot_is_the_current_folder_as_typed(env: Env) -> None:
    command = [sys.executable, "-m", "packsync", "-c", str(env.config_path), "init", "--folder", ".", "--pack", "P"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=env.root, stdin=subprocess.DEVNULL,
                            timeout=120)

    assert result.returncode == 0, result.stderr
    assert load_config(env.config_path).mappings[0].path == env.root


def test_the_commands_init_prints_work_when_pasted_for_a_config_path_with_spaces(env: Env) -> None:
    """The config in ``My Configs $HOME``: the printed ``touch … && chmod 600 …`` made ``My`` and
    ``Configs`` and never the env file, and ``packsync --config …`` named a config that is not there."""
    config = env.root / "My Configs $HOME" / "config.toml"
    command = [sys.executable, "-m", "packsync", "-c", str(config), "init", "--folder", str(env.root / "pics"),
               "--pack", "P"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=env.root, stdin=subprocess.DEVNULL,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    touch = next(line for line in lines if line.strip().startswith("touch "))
    subprocess.run(["bash", "-c", touch], check=True, cwd=env.root, timeout=30, env={**os.environ, "EDITOR": "true"})
    assert stat.S_IMODE((config.parent / "env").stat().st_mode) == 0o600
    dry_run = next(line for line in lines if "run --dry-run" in line).partition("#")[0]
    assert shlex.split(dry_run) == ["packsync", "--config", str(config), "run", "--dry-run"]


def test_a_system_unit_for_a_user_this_system_does_not_know_is_one_sentence(env: Env) -> None:
    """``$SUDO_USER`` names who the system unit runs as; one ``getpwnam`` cannot find (a user removed, a
    variable inherited into a container) was a KeyError traceback without a ``[state] path``, and with one a
    unit whose ``User=`` systemd cannot start."""
    env.map("pics", pack="P")
    env.write_config()
    result = subprocess.run([sys.executable, "-m", "packsync", "-c", str(env.config_path), "service", "install",
                             "--system", "--dry-run"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SUDO_USER": "packsync-no-such-user"})

    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.startswith("packsync: ") and "packsync-no-such-user" in result.stderr
    assert result.stderr.count("\n") == 1, "one sentence"


def test_the_same_config_by_another_path_is_not_another_config(env: Env, tmp_path: Path) -> None:
    """Installed as ``-c ~/brand.toml`` (a link to the config), installed again by the config's own path: the
    same file, yet install refused it as "another config" and asked for an uninstall first."""
    from test_service import FakeSystemd

    systemd = FakeSystemd(tmp_path / "systemd")
    env.map("pics", pack="P")
    env.write_config()
    link = tmp_path / "brand.toml"
    link.symlink_to(env.config_path)
    assert systemd.packsync(link, "service", "install").returncode == 0

    again = systemd.packsync(env.config_path, "service", "install")

    assert again.returncode == 0, again.stderr
