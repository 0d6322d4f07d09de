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

from packsync.service_unit import REFERENCE, render, unit_for, user_namespaces

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
    """A mapping writing XMP sidecars beside its images needs its folder writable; the others are read-only.
    (Where the kernel gives no user namespaces, the user unit has no such lines: the system unit always has.)"""
    sidecars = env.map("side", pack="S", sidecars="xmp")
    plain = env.map("plain", pack="P")
    _, text = dry_run(env)
    with_namespaces = render(unit_for(env.config(), "user", namespaces=True))
    assert text == (with_namespaces if user_namespaces() else render(unit_for(env.config(), "user", namespaces=False)))
    assert directives(with_namespaces, "ReadWritePaths") == [str(env.state_path.parent), f"-{sidecars}"]
    assert directives(with_namespaces, "ReadOnlyPaths") == [f"-{plain}"]
    assert directives(with_namespaces, "ProtectSystem") == ["strict"]
    assert directives(with_namespaces, "ProtectHome") == ["read-only"]
    assert directives(with_namespaces, "PrivateUsers") == ["yes"]  # what lets a user manager build the namespaces
    assert "MemoryDenyWriteExecute" not in "".join(line.partition("#")[0] for line in with_namespaces.splitlines())
    # The tests' folders are below /tmp, which a private /tmp would hide from the daemon.
    assert "PrivateTmp=yes" not in with_namespaces


def test_a_path_with_a_specifier_mark_or_a_dollar_is_taken_literally(tmp_path: Path) -> None:
    from packsync.config import parse_config

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


#: `systemd-analyze security` (systemd 252) rates the unit 1.8 with its namespaced lines, 3.8 without them
#: (a kernel without unprivileged user namespaces): each bound leaves a little room, no more.
BOUNDS = {True: 2.5, False: 4.2}


@needs_analyze
@pytest.mark.parametrize("namespaces", [True, False])
def test_systemd_accepts_the_unit_and_rates_it_ok(env: Env, tmp_path: Path, namespaces: bool) -> None:
    """`systemd-analyze verify` takes the unit as is; `security` rates it well below the 8.9 the user unit had
    before it was hardened (a regression guard: each hardening line is worth points), on either kind of
    kernel; the printed unit is the one for this host's."""
    env.map("side", pack="S", sidecars="xmp")
    env.map("plain", pack="P")
    text = render(unit_for(env.config(), "user", namespaces=namespaces))
    if namespaces == user_namespaces():
        assert dry_run(env)[1] == text
    units = tmp_path / "units"
    units.mkdir()
    (units / "packsync.service").write_text(text, encoding="utf-8")
    verify = analyze(units, "verify", "--man=no", "packsync.service")
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    for user in ((), ("--user",)):
        security = analyze(units, "security", "--offline=true", *user, "packsync.service")
        score = re.search(r"Overall exposure level for packsync\.service: (\d+\.\d)", security.stdout)
        assert score is not None, security.stdout + security.stderr
        assert float(score[1]) <= BOUNDS[namespaces], security.stdout


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


FAKE_SYSTEMCTL = """#!/bin/sh
# Stands in for systemd's systemctl: records its arguments, answers is-active from a file, fails on demand.
printf '%s\\n' "$*" >> "$FAKE_SYSTEMD/calls"
case "$*" in *is-active*) cat "$FAKE_SYSTEMD/active" 2>/dev/null || { echo inactive; exit 3; }; exit 0;; esac
for failing in $(cat "$FAKE_SYSTEMD/failing" 2>/dev/null); do
  case "$*" in *"$failing"*) echo "Failed to connect to bus: No medium found" >&2; exit 1;; esac
done
"""


class FakeSystemd:
    """A `systemctl` (and `loginctl`) first on PATH, in a home of the test's own: install, uninstall and status
    run their real code, and the test reads the commands they ran."""

    def __init__(self, root: Path) -> None:
        self.root = root
        bin = root / "bin"
        bin.mkdir(parents=True)
        for name, script in (("systemctl", FAKE_SYSTEMCTL), ("loginctl", "#!/bin/sh\necho yes\n")):
            (bin / name).write_text(script, encoding="utf-8")
            (bin / name).chmod(0o755)
        self.home = root / "home"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k != "GENVIRAL_TOKEN"}
        environ.update(PATH=f"{bin}:{os.environ['PATH']}", FAKE_SYSTEMD=str(root), HOME=str(self.home),
                       XDG_CONFIG_HOME=str(self.home / ".config"))
        self.environ = environ
        self.unit = self.home / ".config" / "systemd" / "user" / "packsync.service"

    def packsync(self, config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
        """The real command, with this config (None: none given, and none at this home's default path)."""
        given = ("-c", str(config)) if config is not None else ()
        return subprocess.run([sys.executable, "-m", "packsync", *given, *args], capture_output=True, text=True,
                              env=self.environ, timeout=120)

    def calls(self) -> list[str]:
        """The systemctl commands run since the last look."""
        log = self.root / "calls"
        calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    def running(self, active: bool) -> None:
        (self.root / "active").write_text("active\n" if active else "inactive\n", encoding="utf-8")

    def failing(self, *commands: str) -> None:
        (self.root / "failing").write_text("\n".join(commands), encoding="utf-8")


@pytest.fixture
def systemd(tmp_path: Path) -> FakeSystemd:
    return FakeSystemd(tmp_path / "systemd")


def test_install_queues_the_start_and_returns(env: Env, systemd: FakeSystemd) -> None:
    """A Type=notify start waits for READY=1, after the first full sync (minutes for a big folder): install
    queues it (--no-block) rather than wait for it and call that a failure."""
    env.map("pics", pack="P")
    result = systemd.packsync(env.config_path, "service", "install")
    assert result.returncode == 0, result.stderr
    assert systemd.calls() == ["--user daemon-reload", "--user is-active packsync.service",
                               "--user enable --now --no-block packsync.service"]
    assert f"installed {systemd.unit}; enabled and started it; its first sync may take a while: " \
           "`packsync service status` shows it, `journalctl --user -u packsync -f` follows it." in result.stdout
    assert f"--config {env.config_path} daemon" in systemd.unit.read_text(encoding="utf-8")


def test_installing_again_restarts_the_running_service_with_the_new_unit(env: Env, systemd: FakeSystemd) -> None:
    """`enable --now` leaves a running service on its old unit: install restarts it (after the reload)."""
    env.map("pics", pack="P")
    assert systemd.packsync(env.config_path, "service", "install").returncode == 0
    systemd.calls()
    env.map("side", pack="S", sidecars="xmp")  # a mapping with sidecars: a folder the old unit cannot write
    systemd.running(True)
    result = systemd.packsync(env.config_path, "service", "install")
    assert result.returncode == 0, result.stderr
    assert systemd.calls() == ["--user daemon-reload", "--user is-active packsync.service",
                               "--user enable --now --no-block packsync.service",
                               "--user restart --no-block packsync.service"]
    assert "restarted the running service with it" in result.stdout
    assert f"ReadWritePaths=-{env.root / 'side'}" in systemd.unit.read_text(encoding="utf-8") \
        or not user_namespaces()


def test_a_failing_systemctl_is_one_sentence(env: Env, systemd: FakeSystemd) -> None:
    env.map("pics", pack="P")
    systemd.failing("enable")
    result = systemd.packsync(env.config_path, "service", "install")
    assert result.returncode == 1
    assert result.stderr == f"packsync: wrote {systemd.unit}, but systemctl --user enable --now --no-block " \
                            "packsync.service failed: Failed to connect to bus: No medium found.\n"


def test_install_does_not_replace_another_config_s_unit(env: Env, systemd: FakeSystemd) -> None:
    """One unit runs one config: a second config's install would silently take the first one's service."""
    env.map("pics", pack="P")
    assert systemd.packsync(env.config_path, "service", "install").returncode == 0
    first = systemd.unit.read_text(encoding="utf-8")
    other = env.root / "other.toml"
    other.write_text(f'[state]\npath = "{env.root / "other-state" / "state.db"}"\n[[mappings]]\n'
                     f'path = "{env.folder("other")}"\npack = "O"\n', encoding="utf-8")
    systemd.calls()
    result = systemd.packsync(other, "service", "install")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"packsync: {systemd.unit}: runs packsync with another config, {env.config_path}, and " \
                            f"one unit runs one config: to switch to {other}, first `packsync service uninstall` " \
                            "(that config and its state stay).\n"
    assert systemd.unit.read_text(encoding="utf-8") == first and systemd.calls() == []
    # The same config again is no conflict.
    assert systemd.packsync(env.config_path, "service", "install").returncode == 0


def test_install_says_when_a_daemon_holds_the_state_already(daemon_env: Env, start: StartDaemon,
                                                            systemd: FakeSystemd) -> None:
    """The service's daemon cannot take the state's lock while another daemon holds it."""
    daemon_env.map("pics", pack="P")
    daemon = start()
    result = systemd.packsync(daemon_env.config_path, "service", "install")
    assert result.returncode == 0, result.stderr
    assert f"A packsync daemon (pid {daemon.proc.pid}) already holds {daemon_env.state_path}: the service fails " \
           f"and tries again every 10 s until that one stops (kill {daemon.proc.pid})." in result.stdout


def test_uninstall_stops_disables_and_removes(env: Env, systemd: FakeSystemd) -> None:
    env.map("pics", pack="P")
    assert systemd.packsync(env.config_path, "service", "install").returncode == 0
    systemd.calls()
    result = systemd.packsync(env.config_path, "service", "uninstall")
    assert result.returncode == 0, result.stderr
    assert systemd.calls() == ["--user disable --now packsync.service", "--user daemon-reload"]
    assert not systemd.unit.exists()
    assert f"stopped, disabled and removed {systemd.unit}." in result.stdout


def test_uninstall_removes_the_unit_even_when_systemctl_fails(env: Env, systemd: FakeSystemd) -> None:
    """No user bus (a login over su, say): the file goes anyway, so that nothing starts it again, and the
    sentence says how to stop what may still run."""
    env.map("pics", pack="P")
    assert systemd.packsync(env.config_path, "service", "install").returncode == 0
    systemd.failing("disable")
    result = systemd.packsync(env.config_path, "service", "uninstall")
    assert result.returncode == 1
    assert not systemd.unit.exists()
    assert result.stderr == f"packsync: removed {systemd.unit}, but systemctl --user disable --now packsync.service " \
                            "failed: Failed to connect to bus: No medium found. If it still runs, stop it: " \
                            "systemctl --user stop packsync.service\n"


def test_status_asks_systemd(env: Env, systemd: FakeSystemd) -> None:
    env.map("pics", pack="P")
    systemd.running(True)
    result = systemd.packsync(env.config_path, "service", "status")
    assert result.returncode == 0, result.stderr
    assert "systemd  unknown, active" in result.stdout  # (the fake answers is-enabled with nothing)
    assert systemd.calls() == ["--user is-enabled packsync.service", "--user is-active packsync.service"]


def test_status_says_why_systemd_cannot_answer(env: Env, systemd: FakeSystemd) -> None:
    """No user bus (a shell without a login session): systemctl's own reason, not a bare "unknown"."""
    env.map("pics", pack="P")
    systemd.running(True)
    systemd.failing("is-enabled")
    result = systemd.packsync(env.config_path, "service", "status")
    assert result.returncode == 0, result.stderr
    assert "systemd  unknown (Failed to connect to bus: No medium found), active\n" in result.stdout


def test_status_speaks_of_the_config_the_installed_unit_runs(env: Env, systemd: FakeSystemd) -> None:
    env.map("pics", pack="P")
    assert systemd.packsync(env.config_path, "service", "install").returncode == 0
    result = systemd.packsync(None, "service", "status")
    assert result.returncode == 0, result.stderr
    assert f"daemon   not running for {env.state_path}" in result.stdout


def test_a_system_unit_reads_the_config_as_the_user_it_runs_as(tmp_path: Path) -> None:
    """Under sudo HOME is root's, but the unit runs as the user behind sudo: `~` in the config (folders, token
    file) and the state's default are that user's, with root's XDG folders left out."""
    import pwd

    try:
        home = Path(pwd.getpwnam("nobody").pw_dir)
    except KeyError:
        pytest.skip("no user `nobody` here")
    config = tmp_path / "config.toml"
    config.write_text('[genviral]\ntoken_file = "~/.config/packsync/token"\n'
                      '[[mappings]]\npath = "~/Pictures/brand"\npack = "B"\nsidecars = "xmp"\n'
                      '[[mappings]]\npath = "~/Pictures/plain"\npack = "P"\n', encoding="utf-8")
    root = tmp_path / "root"
    environ = {**os.environ, "HOME": str(root), "SUDO_USER": "nobody", "XDG_STATE_HOME": str(root / ".local/state")}
    result = subprocess.run([sys.executable, "-m", "packsync", "-c", str(config), "service", "install", "--system",
                             "--dry-run"], capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# /etc/systemd/system/packsync.service\n")
    assert directives(result.stdout, "User") == ["nobody"]
    assert directives(result.stdout, "ReadWritePaths") == [f"{home}/.local/state/packsync", f"-{home}/Pictures/brand"]
    assert directives(result.stdout, "ReadOnlyPaths") == [f"-{home}/Pictures/plain"]
    assert str(root) not in result.stdout


def test_a_system_unit_never_runs_as_root(env: Env) -> None:
    """Run as root without sudo (or sudo from root), a system unit would run the daemon as root."""
    env.map("pics", pack="P")
    environ = {**{k: v for k, v in os.environ.items() if k != "SUDO_USER"}, "SUDO_USER": "root"}
    result = subprocess.run([sys.executable, "-m", "packsync", "-c", str(env.config_path), "service", "install",
                             "--system", "--dry-run"], capture_output=True, text=True, env=environ, timeout=120)
    assert result.returncode == 2, result.stdout
    assert "the unit runs as the user behind sudo, and here that is root" in result.stderr
    assert "User=" not in result.stdout


def test_packsync_below_tmp_keeps_tmp_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv below /tmp: a private /tmp would hide the program itself (203/EXEC)."""
    from packsync.config import parse_config

    config = parse_config({"state": {"path": "/srv/packsync/state.db"},
                           "mappings": [{"path": "/srv/pictures", "pack": "P"}]}, source=Path("/srv/packsync/c.toml"))
    script = tmp_path / "packsync"
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    script.chmod(0o755)
    if not any(script.resolve().is_relative_to(t) for t in (Path("/tmp"), Path("/var/tmp"))):
        pytest.skip("the test's folder is not below /tmp")
    monkeypatch.setattr(sys, "argv", [str(script)])  # (how the console script is found: sys.argv[0])
    text = render(unit_for(config, "system", user="nobody"))
    assert directives(text, "ExecStart") == [f"{script.resolve()} --config /srv/packsync/c.toml daemon"]
    assert "PrivateTmp=yes" not in text
    monkeypatch.setattr(sys, "argv", ["/srv/bin/packsync"])  # not a file: `python -m packsync`, not below /tmp
    if not Path(sys.executable).is_relative_to("/tmp"):
        assert directives(render(unit_for(config, "system", user="nobody")), "PrivateTmp") == ["yes"]


def test_the_unit_names_the_config_s_token_variable(tmp_path: Path) -> None:
    from packsync.config import parse_config

    config = parse_config({"genviral": {"token_env": "BRAND_TOKEN"}, "mappings": [{"path": "/srv/p", "pack": "P"}]},
                          source=tmp_path / "c.toml")
    assert "# The API token: BRAND_TOKEN=... in this file (chmod 600)" in render(unit_for(config, "user"))
