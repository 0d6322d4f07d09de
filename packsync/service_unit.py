"""``packsync service``: the systemd unit that runs ``packsync daemon``, rendered, installed and asked about.

It owns the unit's text — one renderer for the user unit, the system unit and the reference units in
``systemd/`` (a test holds those to it) — and the ``systemctl`` calls that install, remove and inspect
it. The daemon itself is ``daemon/service.py``; this module only starts it.

The unit is as hardened as its manager allows. A user manager can build namespaces only inside a user
namespace (``PrivateUsers=yes``), so the user unit asks for one when the kernel offers it; the whole
file system is read-only to the daemon but for what the config makes it write: its state's folder
(with the control socket and lock beside the state), and the folders of mappings that write XMP
sidecars beside their images. Every other mapped folder is listed read-only, to say so.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from packsync.errors import ConfigError, PacksyncError

if TYPE_CHECKING:
    from packsync.config import Config

Kind = Literal["user", "system"]
UNIT_NAME = "packsync.service"
SYSTEM_DIR = Path("/etc/systemd/system")
#: Folders that ``PrivateTmp=yes`` hides: a mapped folder or a state there needs the real one.
TEMPORARY = (Path("/tmp"), Path("/var/tmp"))


@dataclass(frozen=True)
class Unit:
    """What a unit says, in systemd's own terms (paths may hold specifiers such as ``%h``)."""

    kind: Kind
    exec_start: Sequence[str]
    env_file: str
    writable: Sequence[str] = ()
    readonly: Sequence[str] = ()
    #: Run as this user (a system unit; None: the unit's own User= is not set).
    user: str | None = None
    #: The user manager can build a user namespace (a user unit's namespaced hardening needs one).
    namespaces: bool = True
    private_tmp: bool = True
    #: The variable the environment file gives the token in (the config's ``token_env``).
    token_env: str = "GENVIRAL_TOKEN"
    description: str = "packsync: keep Genviral packs an exact mirror of local folders"
    #: More [Service] lines after User= (the reference system unit's Group= and StateDirectory=).
    extra: Sequence[str] = field(default=())


#: Hardening any manager applies (seccomp and no privileges: no namespace needed).
COMMON = """\
# Nothing to gain or keep: no privileges, no capabilities, no set-uid files, no odd personalities.
NoNewPrivileges=yes
CapabilityBoundingSet=
KeyringMode=private
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
# The control socket and NOTIFY_SOCKET (AF_UNIX), the APIs (AF_INET/6); inotify needs no socket.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
# MemoryDenyWriteExecute stays off: watchdog's inotify binding uses ctypes callbacks, which it breaks.
"""

#: Hardening that needs a mount (and, in a user manager, a user) namespace.
NAMESPACED = """\
PrivateMounts=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
"""


def render(unit: Unit) -> str:
    """The unit file's text."""
    lines = ["[Unit]", f"Description={unit.description}", "After=network-online.target",
             "Wants=network-online.target", "", "[Service]", "Type=notify", "NotifyAccess=main"]
    if unit.user is not None:
        lines += [f"User={unit.user}"]
    lines += unit.extra
    lines += [f"ExecStart={' '.join(_quoted(arg) for arg in unit.exec_start)}",
              "ExecReload=/bin/kill -HUP $MAINPID",
              f"# The API token: {unit.token_env}=... in this file (chmod 600); never on the command line.",
              f"EnvironmentFile=-{unit.env_file}", "Environment=PYTHONUNBUFFERED=1",
              "Restart=on-failure", "RestartSec=10",
              "# READY=1 comes after the first full sync; EXTEND_TIMEOUT_USEC keeps a long first scan alive.",
              "TimeoutStartSec=120", "TimeoutStopSec=20", "WatchdogSec=120", "UMask=0077", ""]
    lines += COMMON.splitlines()
    if unit.namespaces:
        lines += ["", "# Everything read-only but the state's folder and the folders that get sidecars."]
        if unit.kind == "user":
            lines += ["# A user manager builds the namespaces below inside a user namespace of its own.",
                      "PrivateUsers=yes"]
        else:
            lines += ["ProtectProc=invisible"]
        lines += NAMESPACED.splitlines()
        lines += [f"ReadWritePaths={_quoted(path)}" for path in unit.writable]
        lines += [f"ReadOnlyPaths=-{_quoted(path)}" for path in unit.readonly]
        lines += ["PrivateTmp=yes"] if unit.private_tmp else \
            ["# PrivateTmp stays off: packsync, its config, state or a mapped folder is below /tmp or /var/tmp."]
    else:
        lines += ["", "# This kernel gives no user namespaces, so a user manager can build no mount namespace:",
                  "# the file system is protected by its permissions alone."]
    lines += ["", "[Install]", f"WantedBy={'default.target' if unit.kind == 'user' else 'multi-user.target'}"]
    return "\n".join(lines) + "\n"


def _quoted(word: str) -> str:
    """A word of a unit's command line or path list, quoted when it holds a space or a quote."""
    if word and not any(c in word for c in " \t\"'\\;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(text: str, dollars: bool = False) -> str:
    """A real path or word in a unit: its ``%`` (a specifier's mark) and, on a command line, ``$`` doubled."""
    text = text.replace("%", "%%")
    return text.replace("$", "$$") if dollars else text


def executable() -> list[str]:
    """The running packsync, absolutely: its console script, else this interpreter with ``-m packsync``."""
    script = Path(sys.argv[0])
    if script.name == "packsync" and script.is_file() and os.access(script, os.X_OK):
        return [str(script.resolve())]
    return [str(Path(sys.executable).absolute()), "-m", "packsync"]


def user_namespaces() -> bool:
    """Whether an unprivileged process may create a user namespace here (what a user unit's mount
    namespaces are built in)."""
    for knob, off in (("/proc/sys/user/max_user_namespaces", "0"), ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
                      ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1")):
        try:
            if Path(knob).read_text(encoding="ascii").strip() == off:
                return False
        except OSError:
            continue  # no such knob: this kernel does not restrict it that way
    return True


#: The units in the project's systemd/ folder, for those who install by hand (a test holds them to these).
REFERENCE = {
    "packsync.service": Unit(kind="user", exec_start=["%h/.local/bin/packsync", "daemon"],
                             env_file="%h/.config/packsync/env", writable=["%h/.local/state/packsync"]),
    "packsync@.service": Unit(kind="system", user="packsync", description="packsync mirror for /etc/packsync/%i.toml",
                              extra=["Group=packsync", "StateDirectory=packsync/%i", "StateDirectoryMode=0700"],
                              exec_start=["/usr/local/bin/packsync", "--config", "/etc/packsync/%i.toml", "daemon"],
                              env_file="/etc/packsync/%i.env", writable=["/var/lib/packsync/%i"],
                              readonly=["/srv/packsync/%i"]),
}


def env_file_for(config_path: Path) -> Path:
    """The file the unit reads its environment (the token) from: ``env`` beside the config."""
    return Path(os.path.abspath(config_path)).parent / "env"


def config_for(explicit: Path | None, user: str | None) -> Config:
    """The config a unit will run, read as the user it runs as (``None``: this process's user).

    A system unit is installed with sudo, whose HOME is root's: the config's default path, its ``~``
    paths (folders, state, token file) and the state's default are read with the unit's user's home
    instead, and the state's path is pinned, so that every path in the unit is the one its daemon sees."""
    from packsync.config import find_config_path, load_config

    with _home_of(user):
        config = load_config(find_config_path(explicit))
        state = msgspec.structs.replace(config.state, path=config.state_path)  # (its default is read now)
    return msgspec.structs.replace(config, state=state)


@contextmanager
def _home_of(user: str | None) -> Iterator[None]:
    """HOME is ``user``'s meanwhile; the XDG folders, which belonged to the HOME replaced, default from it."""
    home = None if user is None else _entry(user).pw_dir
    if home is None or os.environ.get("HOME") == home:
        yield
        return
    saved = dict(os.environ)
    os.environ["HOME"] = home
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        os.environ.pop(name, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _entry(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"{user}: no such user on this system (the user a system unit runs as).") from None


def unit_for(config: Config, kind: Kind, user: str | None = None, namespaces: bool = True) -> Unit:
    """The unit that runs this config's daemon (read by ``config_for``): what it may write and read follows
    the config."""
    from packsync.config import TOKEN_ENVS

    assert config.source is not None, "a service runs a config file"
    config_path = Path(os.path.abspath(config.source))
    state_dir = config.state_path.parent
    sidecars = [m.folder for m in config.mappings if m.path is not None and m.sidecars != "none"]
    readonly = [m.folder for m in config.mappings if m.path is not None and m.sidecars == "none"]
    token_files = [api.token_file for api in (config.genviral, config.astria) if api.token_file is not None]
    program = [Path(word) for word in executable() if word.startswith("/")]
    touched = [config_path, state_dir, *sidecars, *readonly, *token_files, *program]
    for path in touched:
        if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
            # A line break would end the directive and start another, of the path's choosing.
            raise ConfigError(f"{str(path)!r}: a path with a line break or a control character cannot go into a "
                              "systemd unit; rename it.")
    return Unit(kind=kind, exec_start=[_literal(word, dollars=True) for word in
                                       (*executable(), "--config", str(config_path), "daemon")],
                env_file=_literal(str(env_file_for(config_path))),
                # The state's folder must be writable (install makes it); a missing mapped folder (an
                # unmounted drive) is skipped ("-"), as the daemon goes on with the other mappings.
                writable=[_literal(str(state_dir)), *(f"-{_literal(str(path))}" for path in sidecars)],
                readonly=[_literal(str(path)) for path in readonly], user=user, namespaces=namespaces,
                # A private /tmp hides what is below it: the mapped folders, the state, packsync itself (a venv
                # there: 203/EXEC).
                private_tmp=not any(p.is_relative_to(t) for p in touched for t in TEMPORARY),
                token_env=config.genviral.token_env or TOKEN_ENVS[0])


def unit_path(kind: Kind) -> Path:
    if kind == "system":
        return SYSTEM_DIR / UNIT_NAME
    import platformdirs

    return platformdirs.user_config_path("systemd") / "user" / UNIT_NAME


def own_user() -> str:
    """The user running this (whose user manager a user unit goes to)."""
    return pwd.getpwuid(os.getuid()).pw_name


def invoking_user() -> str:
    """Who a system unit runs as: the user behind sudo, else the one running this, never root (a sync
    daemon needs no privileges, and root's would reach every file of every user)."""
    user = os.environ.get("SUDO_USER") or own_user()
    if user == "root" or _entry(user).pw_uid == 0:
        raise ConfigError("service install --system: the unit runs as the user behind sudo, and here that is root; "
                          "run it with sudo from the account whose config it runs "
                          "(sudo packsync -c CONFIG service install --system).")
    return user


def systemctl_argv(kind: Kind, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if kind == "user" else []), *args]


@dataclass(frozen=True)
class Plan:
    """An install: the unit's text, where it goes, the commands that follow it, and the one that applies it
    to a service already running."""

    kind: Kind
    path: Path
    text: str
    commands: list[list[str]]
    restart: list[str]


def install_plan(kind: Kind, unit: Unit) -> Plan:
    # --no-block: a Type=notify start waits for READY=1, which comes after the first full sync (minutes,
    # for a big folder); install returns once the start is queued.
    enable = systemctl_argv(kind, "enable", "--now", "--no-block", UNIT_NAME)
    return Plan(kind, unit_path(kind), render(unit), [systemctl_argv(kind, "daemon-reload"), enable],
                systemctl_argv(kind, "restart", "--no-block", UNIT_NAME))


def installed_config(kind: Kind) -> Path | None:
    """The ``--config`` of the unit installed now (None: none is, or its ExecStart names none)."""
    try:
        text = unit_path(kind).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            try:
                words = shlex.split(line.removeprefix("ExecStart="))
            except ValueError:
                return None
            if "--config" in words[:-1]:
                return Path(words[words.index("--config") + 1].replace("$$", "$").replace("%%", "%"))
    return None


def require_root(kind: Kind, action: str) -> None:
    if kind == "system" and os.geteuid() != 0:
        raise ConfigError(f"service {action} --system: writes {SYSTEM_DIR}, which needs root: run it with sudo "
                          "(or use --user).")


def write_unit(plan: Plan, state_dir: Path, user: str | None) -> None:
    """Write the unit, and make the state's folder it makes writable (it must exist when the unit starts),
    owned by ``user`` when it runs as another."""
    try:
        missing = [folder for folder in (state_dir, *state_dir.parents) if not folder.exists()]
        state_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        if user is not None and missing:
            entry = _entry(user)
            for folder in missing:
                os.chown(folder, entry.pw_uid, entry.pw_gid)
        plan.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = plan.path.with_name(plan.path.name + ".new")
        temporary.write_text(plan.text, encoding="utf-8")
        temporary.chmod(0o644)
        temporary.replace(plan.path)
    except OSError as exc:
        raise PacksyncError(f"{exc.filename or plan.path}: cannot write it ({exc.strerror}).") from None


def start(plan: Plan) -> bool:
    """Reload systemd, enable and start the unit — restarted when it ran already, so that it runs the unit
    just written. Whether it ran already."""
    systemctl(plan.commands[0])
    running = is_active(plan.kind)
    for command in plan.commands[1:]:
        systemctl(command)
    if running:
        systemctl(plan.restart)
    return running


def systemctl(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``systemctl``; a failure is one sentence (this machine may not run systemd at all)."""
    if shutil.which(argv[0]) is None:
        raise PacksyncError(f"{argv[0]}: not found; this system does not seem to run systemd.")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise PacksyncError(f"{shlex.join(argv)}: no answer within 60 s.") from None
    except OSError as exc:
        raise PacksyncError(f"{shlex.join(argv)}: cannot run it ({exc.strerror}).") from None
    if check and done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[0]
        raise PacksyncError(f"{shlex.join(argv)} failed: {why.rstrip('.')}.")
    return done


def lingering(user: str) -> bool | None:
    """Whether the user's manager runs without a login session (None: cannot tell)."""
    if shutil.which("loginctl") is None:
        return None
    try:
        done = subprocess.run(["loginctl", "show-user", user, "-p", "Linger", "--value"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() == "yes" if done.returncode == 0 else None


def state_of(kind: Kind) -> tuple[str, str]:
    """``systemctl is-enabled`` and ``is-active``, in their own words; ``unknown`` with systemctl's reason when
    one cannot say (no service manager to ask, say)."""
    answers = []
    for question in ("is-enabled", "is-active"):
        done = systemctl(systemctl_argv(kind, question, UNIT_NAME), check=False)
        said = done.stderr.strip().splitlines()
        answers.append(done.stdout.strip() or (f"unknown ({said[-1]})" if said else "unknown"))
    return answers[0], answers[1]


def is_active(kind: Kind) -> bool:
    """Whether the unit runs (or is starting, or reloading) now."""
    done = systemctl(systemctl_argv(kind, "is-active", UNIT_NAME), check=False)
    return done.stdout.strip() in ("active", "activating", "reloading")
