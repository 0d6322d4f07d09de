"""`packsync init`: a first config that works as written, never holding the token, on a fresh home; and the
examples every command's ``--help`` ends with, for a newcomer's first steps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import TOKEN, Env, image, write

from packsync.cli import main
from packsync.config import load_config
from packsync.sandbox import Sandbox


def fresh_home(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with an empty home at ``root`` (no config, no state yet)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GENVIRAL_TOKEN", "GENVIRAL_API_KEY", "PACKSYNC_CONFIG") and not k.startswith("XDG_")}
    env.update(HOME=str(root), XDG_CONFIG_HOME=str(root / ".config"), XDG_STATE_HOME=str(root / ".local" / "state"))
    env.update(extra)
    return env


def packsync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a user on that home types it (no --config: the default path is the point)."""
    return subprocess.run([sys.executable, "-m", "packsync", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_init_then_run_on_a_fresh_home_syncs_the_folder(tmp_path: Path, sandbox: Sandbox) -> None:
    """Two commands from nothing: init writes the config where packsync looks, run syncs with it."""
    home = tmp_path / "home"
    folder = home / "Pictures" / "brand"
    env = fresh_home(home)
    init = packsync(env, "init", "--folder", str(folder), "--pack", "Brand Assets", "--base-url", sandbox.base_url)
    assert init.returncode == 0, init.stderr
    config_path = home / ".config" / "packsync" / "config.toml"
    assert f"wrote {config_path}" in init.stdout
    assert f"created the folder {folder}" in init.stdout
    assert "Neither GENVIRAL_TOKEN nor GENVIRAL_API_KEY is set" in init.stdout
    for step in ("packsync run --dry-run", "packsync run ", "packsync service install"):
        assert step in init.stdout
    text = config_path.read_text(encoding="utf-8")
    assert TOKEN not in text and "# The API token is never written here." in text
    assert "# max_delete" in text and "# sidecars" in text  # the commented examples
    # The page's port is the default's, not written down: a second config says its own.
    assert not re.search(r"^listen", text, re.MULTILINE) and "# listen = " in text
    write(folder / "logo.png", image())
    write(folder / "web" / "banner.png", image())

    run = packsync({**env, "GENVIRAL_TOKEN": TOKEN}, "run", "--no-wait")
    assert run.returncode == 0, run.stdout + run.stderr
    pack = next(p for p in sandbox.packs() if p["name"] == "Brand Assets")
    assert len(pack["images"]) == 2
    assert (home / ".local" / "state" / "packsync" / "state.db").is_file()
    assert TOKEN not in config_path.read_text(encoding="utf-8")


def test_init_writes_the_token_variable_it_is_given_and_says_it_is_unset(env: Env) -> None:
    result = env.cli("init", "--folder", str(env.root / "pics"), "--pack", "P", "--token-env", "BRAND_TOKEN")
    assert result.returncode == 0, result.stderr
    assert "BRAND_TOKEN is not set in this shell." in result.stdout
    assert "export BRAND_TOKEN=..." in result.stdout
    env_file = env.config_path.parent / "env"  # the service's: the exact commands, not a description
    assert f"  touch {env_file} && chmod 600 {env_file} && ${{EDITOR:-nano}} {env_file}\n" \
           "                               # for the service: one line, BRAND_TOKEN=...\n" in result.stdout
    assert f"packsync --config {env.config_path} run --dry-run" in result.stdout  # not the default path: said
    config = load_config(env.config_path)
    assert config.genviral.token_env == "BRAND_TOKEN"
    assert [m.pack for m in config.mappings] == ["P"] and config.mappings[0].path == env.root / "pics"


@pytest.mark.parametrize(("given", "missing"), [(("--pack", "P"), "--folder"), (("--folder", "pics"), "--pack")])
def test_init_off_a_terminal_names_the_missing_option(env: Env, given: tuple[str, str], missing: str) -> None:
    result = env.cli("init", *given)
    assert result.returncode == 2
    assert result.stderr.startswith(f"packsync: {missing}: required when not run on a terminal")
    assert "Traceback" not in result.stderr
    assert not env.config_path.exists()


def test_init_never_replaces_a_config(env: Env) -> None:
    env.config_path.write_text("# mine\n", encoding="utf-8")
    result = env.cli("init", "--folder", str(env.root / "pics"), "--pack", "P")
    assert result.returncode == 2
    assert f"{env.config_path}: a config is already there: edit it" in result.stderr
    assert env.config_path.read_text(encoding="utf-8") == "# mine\n"


def test_init_refuses_a_pack_name_the_config_would_refuse_and_writes_nothing(env: Env) -> None:
    """The text is read back as a config before it is written: what init writes always loads."""
    result = env.cli("init", "--folder", str(env.root / "pics"), "--pack", "x" * 200)
    assert result.returncode == 2
    assert result.stderr.startswith("packsync: --pack: genviral takes at most 120 characters")
    assert not env.config_path.exists() and not (env.root / "pics").exists()


def test_init_names_the_option_of_a_base_url_the_config_refuses(env: Env) -> None:
    result = env.cli("init", "--folder", str(env.root / "pics"), "--pack", "P", "--base-url", "http://example.com/api")
    assert result.returncode == 2
    assert result.stderr.startswith("packsync: --base-url: must be an https:// URL")


def test_a_folder_name_with_quotes_and_a_hash_is_written_as_toml_reads_it(env: Env) -> None:
    folder = env.root / 'odd "name" # not a comment \\ here'
    result = env.cli("init", "--folder", str(folder), "--pack", 'Pack "quoted"')
    assert result.returncode == 0, result.stderr
    mapping = tomllib.loads(env.config_path.read_text(encoding="utf-8"))["mappings"][0]
    assert (mapping["path"], mapping["pack"]) == (str(folder), 'Pack "quoted"')
    assert folder.is_dir()


def test_without_a_config_every_command_points_at_init(tmp_path: Path) -> None:
    result = packsync(fresh_home(tmp_path), "status")
    assert result.returncode == 2
    assert "no config file here; `packsync init` writes one" in result.stderr


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``group``, as the words that name it."""
    found = [prefix]
    for name, command in group.commands.items():
        found += _commands(command, (*prefix, name)) if isinstance(command, click.Group) else [(*prefix, name)]
    return found


@pytest.mark.parametrize("words", _commands(main), ids=lambda words: " ".join(words) or "packsync")
def test_every_command_s_help_shows_an_example(words: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*words, "--help"])
    assert result.exit_code == 0, result.output
    examples = result.output.partition("\n  Examples:\n")[2]
    # An example runs this very command (after `sudo` or an environment variable, when it needs one).
    command = rf"^    (sudo |[A-Z_]+=\S+ )?packsync {' '.join(words)}".rstrip()
    assert re.search(command, examples, re.MULTILINE), result.output


def test_init_on_a_terminal_asks_for_the_folder_and_the_pack(env: Env) -> None:
    """What the options leave out is asked for; the pack's name defaults to the folder's."""
    import pty

    controller, terminal = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "init"],
                                 stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(controller, f"{env.root / 'Brand Kit'}\n\n".encode())
        out, err = child.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert child.returncode == 0, err
    assert "Folder to mirror: " in out and "Pack name [Brand Kit]: " in out
    mapping, = load_config(env.config_path).mappings
    assert (mapping.path, mapping.pack) == (env.root / "Brand Kit", "Brand Kit")


def test_init_with_a_file_where_a_folder_must_go_says_which(env: Env) -> None:
    blocker = env.root / "conf"
    blocker.write_text("", encoding="utf-8")
    result = env.cli("-c", str(blocker / "config.toml"), "init", "--folder", str(env.root / "pics"), "--pack", "P")
    assert result.returncode == 2
    assert result.stderr == f"packsync: {blocker}: cannot create this folder (File exists).\n"
