"""`packsync service`: the unit it installs runs this packsync, is hardened, and lets the config write where
it writes; systemd accepts it; off systemd it says so in one sentence."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Env
from helpers import StartDaemon

from packsync.service_unit import REFERENCE, render, user_namespaces

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
UNITS = Path(__file__).resolve().parents[1] / "systemd"


def dry_run(env: Env, *args: str) -> tuple[Path, str]:
    """The unit `service install --dry-run` prints, and where it would write it."""
    result = env.cli("service", "install", "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    first, _, rest = result.stdout.partition("\n")
    text, _, commands = rest.partition("\n# then:\n")
    assert first.startswith("# ")
    return Path(first[2:]), text


def directives(text: str, key: str) -> list[str]:
    return [line.partition("=")[2] for line in text.splitlines() if line.startswith(f"{key}=")]


def analyze(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)})


def test_the_unit_runs_this_packsync_with_this_config(env: Env) -> None:
    env.map("pics", pack="P")
    path, text = dry_run(env)
    assert path.name == "packsync.service" and path.parent.name == "user"
    # Started as `python -m packsync` (as the tests start it): that interpreter, absolutely.
    exec_start, = directives(text, "ExecStart")
    assert exec_start == f"{Path(sys.executable).absolute()} -m packsync --config {env.config_path} daemon"
    assert directives(text, "EnvironmentFile") == [f"-{env.config_path.parent / 'env'}"]
    assert not path.exists()  # a dry run writes nothing


def test_the_console_script_is_named_itself(env: Env) -> None:
    script = Path(sys.executable).with_name("packsync")
    if not script.is_file():
        pytest.skip("packsync is not installed as a console script beside this interpreter")
    env.map("pics", pack="P")
    result = subprocess.run([str(script), "-c", str(env.config_path), "service", "install", "--dry-run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"\nExecStart={script.resolve()} --config {env.config_path} daemon\n" in result.stdout


def test_only_the_state_and_the_sidecar_folders_are_writable(env: Env) -> None:
    """A mapping writing XMP sidecars beside its images needs its folder writable; the others are read-only."""
    sidecars = env.map("side", pack="S", sidecars="xmp")
    plain = env.map("plain", pack="P")
    _, text = dry_run(env)
    assert directives(text, "ReadWritePaths") == [str(env.state_path.parent), f"-{sidecars}"]
    assert directives(text, "ReadOnlyPaths") == [f"-{plain}"]
    if not user_namespaces():
        pytest.skip("this kernel gives no user namespaces: the user unit has no namespaced lines")
    assert directives(text, "ProtectSystem") == ["strict"] and directives(text, "ProtectHome") == ["read-only"]
    assert directives(text, "PrivateUsers") == ["yes"]  # what lets a user manager build the namespaces
    assert "MemoryDenyWriteExecute" not in "".join(line.partition("#")[0] for line in text.splitlines())
    # The tests' folders are below /tmp, which a private /tmp would hide from the daemon.
    assert "PrivateTmp=yes" not in text


def test_a_path_with_a_specifier_mark_or_a_dollar_is_taken_literally(tmp_path: Path) -> None:
    from packsync.config import parse_config
    from packsync.service_unit import unit_for

    folder = tmp_path / "50% off $HOME"
    config = parse_config({"state": {"path": str(tmp_path / "st%ate" / "state.db")},
                           "mappings": [{"path": str(folder), "pack": "P", "sidecars": "xmp"}]},
                          source=tmp_path / "config.toml")
    text = render(unit_for(config, "user"))
    assert directives(text, "ReadWritePaths") == [str(tmp_path / "st%%ate"), f'"-{tmp_path}/50%% off $HOME"']


def test_a_folder_with_a_line_break_cannot_smuggle_a_directive_into_the_unit(env: Env) -> None:
    """A path is written into the unit; a line break in it would start a directive of its own (run as root
    with ``ExecStartPre=+...``, in a system unit)."""
    from packsync.first_config import toml_string

    folder = env.folder("pics\nExecStartPre=+/bin/touch /tmp/owned")
    env.config_path.write_text(f"[state]\npath = {toml_string(str(env.state_path))}\n[[mappings]]\n"
                               f"path = {toml_string(str(folder))}\npack = \"P\"\n", encoding="utf-8")
    result = env.cli("service", "install", "--dry-run")
    assert result.returncode == 2
    assert "a path with a line break or a control character cannot go into a systemd unit" in result.stderr
    assert "ExecStartPre" not in result.stdout


@needs_analyze
def test_systemd_accepts_the_unit_and_rates_it_ok(env: Env, tmp_path: Path) -> None:
    """`systemd-analyze verify` takes the printed unit as is; `security` rates it well below the 8.9 the
    user unit had before it was namespaced (a regression guard: each hardening line is worth points)."""
    env.map("side", pack="S", sidecars="xmp")
    env.map("plain", pack="P")
    _, text = dry_run(env)
    units = tmp_path / "units"
    units.mkdir()
    (units / "packsync.service").write_text(text, encoding="utf-8")
    verify = analyze(units, "verify", "--man=no", "packsync.service")
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    for user in ((), ("--user",)):
        security = analyze(units, "security", "--offline=true", *user, "packsync.service")
        score = re.search(r"Overall exposure level for packsync\.service: (\d+\.\d)", security.stdout)
        assert score is not None, security.stdout + security.stderr
        assert float(score[1]) <= 2.5, security.stdout


def test_the_reference_units_are_what_the_renderer_writes() -> None:
    """systemd/*.service (for those who install by hand) and the installed unit share one source."""
    for name, unit in REFERENCE.items():
        text = (UNITS / name).read_text(encoding="utf-8")
        assert text[text.index("[Unit]"):] == render(unit), f"systemd/{name}: regenerate it from REFERENCE"


def test_install_off_systemd_says_so_in_one_sentence(env: Env, tmp_path: Path) -> None:
    """No user manager to talk to (as in a container): one sentence, exit 1, no traceback."""
    env.map("pics", pack="P")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    isolated = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k != "DBUS_SESSION_BUS_ADDRESS"}
    isolated.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"), XDG_RUNTIME_DIR=str(runtime),
                    DBUS_SESSION_BUS_ADDRESS=f"unix:path={runtime}/absent")
    result = subprocess.run([sys.executable, "-m", "packsync", "-c", str(env.config_path), "service", "install"],
                            capture_output=True, text=True, env=isolated, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    unit = tmp_path / ".config" / "systemd" / "user" / "packsync.service"
    assert re.fullmatch(rf"packsync: wrote {re.escape(str(unit))}, but (systemctl --user daemon-reload failed: .+|"
                        r"systemctl: not found; .+)\n", result.stderr), result.stderr
    status = subprocess.run([sys.executable, "-m", "packsync", "-c", str(env.config_path), "service", "status"],
                            capture_output=True, text=True, env=isolated, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"unit     {unit} (installed)" in status.stdout
    assert f"daemon   not running for {env.state_path}" in status.stdout


def test_uninstall_with_nothing_installed_says_so(env: Env, tmp_path: Path) -> None:
    env.map("pics", pack="P")
    isolated = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    isolated.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    result = subprocess.run([sys.executable, "-m", "packsync", "-c", str(env.config_path), "service", "uninstall"],
                            capture_output=True, text=True, env=isolated, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no unit here; nothing to remove." in result.stdout


def test_status_shows_the_daemon_s_own_answer(daemon_env: Env, start: StartDaemon) -> None:
    daemon_env.map("pics", pack="P")
    daemon = start()
    result = daemon_env.cli("service", "status")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^daemon   pid {daemon.proc.pid}, 1 mapping\(s\), paused: none, page: http://127\.0\.0\.1:\d+/",
                     result.stdout, re.MULTILINE), result.stdout


def test_without_user_namespaces_the_user_unit_keeps_what_needs_none(tmp_path: Path) -> None:
    """Where the kernel gives no unprivileged user namespaces, a user unit asking for them would not start
    (226/NAMESPACE): it leaves the namespaced lines out, and keeps the seccomp and privilege ones."""
    from packsync.config import parse_config
    from packsync.service_unit import unit_for

    config = parse_config({"mappings": [{"path": str(tmp_path / "pics"), "pack": "P"}]}, source=tmp_path / "c.toml")
    text = render(unit_for(config, "user", namespaces=False))
    for namespaced in ("PrivateUsers", "ProtectSystem", "ProtectHome", "ReadWritePaths", "ReadOnlyPaths",
                       "PrivateTmp", "PrivateDevices"):
        assert not directives(text, namespaced), namespaced
    assert directives(text, "SystemCallFilter") == ["@system-service", "~@privileged"]
    assert directives(text, "NoNewPrivileges") == ["yes"] and directives(text, "CapabilityBoundingSet") == [""]
    if ANALYZE is not None:
        (tmp_path / "packsync.service").write_text(text, encoding="utf-8")
        verify = analyze(tmp_path, "verify", "--man=no", "packsync.service")
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_init_and_service_import_no_heavy_library(env: Env) -> None:
    """Setting up talks to no API and opens no state: neither the HTTP client, the server nor SQLModel."""
    from test_startup import HEAVY, WEB, imported

    env.map("pics", pack="P")
    assert imported("-c", str(env.config_path), "service", "install", "--dry-run") & {*HEAVY, *WEB} == set()
    assert imported("-c", str(env.root / "new.toml"), "init", "--folder", str(env.root / "b"), "--pack", "B") \
        & {*HEAVY, *WEB} == set()
    assert (env.root / "new.toml").is_file()  # (the probe ran the command, not only its imports)
