"""Shared fixtures: a real sandbox on loopback, real folders, a real state file, the real CLI."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonHere, DaemonProcess, StartDaemon, StartHere
from postgres import PASSWORD, PASSWORD_ENV, PostgresServer, missing
from zygote import Zygote

from packsync.app import open_app, sync_once
from packsync.config import Config, parse_config
from packsync.daemon.timing import Timing
from packsync.engine.sync import SyncOptions, SyncReport
from packsync.remote.retry import Backoff
from packsync.sandbox import Account, Sandbox
from packsync.sandbox.imaging import solid_png
from packsync.views.progress import Progress

TOKEN = "gva_live_testkey.s3cr3t-token-value"
ASTRIA_TOKEN = "sd_testkey.astria-s3cr3t-value"
_colours = itertools.count(1)
#: The daemon's delays, shortened for tests that wait for a retry, a metadata round or a restart.
FAST = Timing(mapping_retry=Backoff(0.05, 0.5, 0.2), loop_restart=Backoff(0.05, 0.5, 0.2),
              metadata_poll=Backoff(0.05, 0.5), tick_s=0.5)


def image(width: int = 8, height: int = 8, seed: int | None = None) -> bytes:
    """A small valid PNG; each call without ``seed`` gives different bytes."""
    n = next(_colours) if seed is None else seed
    return solid_png(width, height, ((n * 37) % 256, (n * 91) % 256, (n * 53 + n // 256) % 256))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path



_ZYGOTES: list[Zygote | None] = []


def _zygote() -> Zygote | None:
    """This worker's zygote (``zygote.py``), started at its first command; None while coverage measures the
    children (they are started the ordinary way, so that coverage starts in them)."""
    if not _ZYGOTES:
        import coverage

        measured = coverage.Coverage.current() is not None or "COVERAGE_PROCESS_CONFIG" in os.environ \
            or "COVERAGE_PROCESS_START" in os.environ
        _ZYGOTES.append(None if measured else Zygote())
        if _ZYGOTES[0] is not None:
            atexit.register(_ZYGOTES[0].close)
    return _ZYGOTES[0]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(accounts={TOKEN: Account(scope="ws-1")}, enrich_delays=(0.05, 0.05)) as sb:
        sb.astria.users = {ASTRIA_TOKEN: 1}
        yield sb


class Env:
    """One test's world: a sandbox, a home folder with mapped folders, a config file and a state DB."""

    def __init__(self, root: Path, sandbox: Sandbox) -> None:
        self.root = root
        self.sandbox = sandbox
        self.mappings: list[dict[str, Any]] = []
        # A failing request is tried again within half a second, not after pauses of up to 30 s: a test
        # that fails requests on purpose waits for the attempts, not the default's pauses.
        self.genviral: dict[str, Any] = {"base_url": sandbox.base_url, "retry_wait_max_s": 0.5}
        self.astria: dict[str, Any] = {"base_url": sandbox.astria_url}
        self.daemon: dict[str, Any] = {}
        self.state: dict[str, Any] = {}  # [state] keys besides its path (a shared state's url, site...)
        self.http: dict[str, Any] = {"listen": "127.0.0.1:0"}  # any free port: tests never take the default

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def state_path(self) -> Path:
        return self.root / "state" / "state.db"

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def map(self, folder: str, **options: Any) -> Path:
        path = self.folder(folder)
        self.mappings.append({"path": str(path), **options})
        self.write_config()
        return path

    def map_astria(self, astria_pack: int, **options: Any) -> str:
        """Mirror an Astria pack (the key in a private token file); returns the mapping's label."""
        return self._map_remote("astria", "astria_pack", astria_pack, options)

    def map_astria_tune(self, astria_tune: int, **options: Any) -> str:
        """Mirror an Astria tune's generated images (``prompts``, ``astria_poll_s`` among ``options``; the key
        in a private token file); returns the mapping's label."""
        return self._map_remote("astria-tune", "astria_tune", astria_tune, options)

    def _map_remote(self, kind: str, id_key: str, source_id: int, options: dict[str, Any]) -> str:
        token_file = self.root / "astria.key"
        if not token_file.exists():
            token_file.write_text(ASTRIA_TOKEN, encoding="utf-8")
            token_file.chmod(0o600)
        self.astria.setdefault("token_file", str(token_file))
        self.mappings.append({id_key: source_id, **options})
        self.write_config()
        return f"{kind}:{source_id}"

    def data(self) -> dict[str, Any]:
        return {"genviral": self.genviral, "astria": self.astria, "state": {"path": str(self.state_path), **self.state},
                "daemon": self.daemon, "http": self.http, "mappings": self.mappings}

    def config(self) -> Config:
        return parse_config(self.data(), source=self.config_path)

    def write_config(self) -> None:
        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, (int, float)):
                return str(v)
            if isinstance(v, list):
                return "[" + ", ".join(value(x) for x in v) + "]"
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ["[genviral]"] + [f"{k} = {value(v)}" for k, v in self.genviral.items()]
        lines += ["[astria]"] + [f"{k} = {value(v)}" for k, v in self.astria.items()]
        lines += ["[state]", f"path = {value(str(self.state_path))}"]
        lines += [f"{k} = {value(v)}" for k, v in self.state.items()]
        lines += ["[daemon]"] + [f"{k} = {value(v)}" for k, v in self.daemon.items()]
        lines += ["[http]"] + [f"{k} = {value(v)}" for k, v in self.http.items()]
        for mapping in self.mappings:
            lines.append("[[mappings]]")
            lines += [f"{k} = {value(v)}" for k, v in mapping.items()]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def sync(self, token: str = TOKEN, **options: Any) -> SyncReport:
        """One in-process sync, exactly as `packsync run` does it."""
        options.setdefault("wait", False)
        options.setdefault("poll_start_s", 0.05)
        return asyncio.run(sync_once(self.config(), token, SyncOptions(**options), Progress(enabled=False)))

    def sync_changed(self, folder: Path, paths: Collection[str], **options: Any) -> SyncReport:
        """One in-process sync as the daemon runs it when ``paths`` of the mapped ``folder`` changed."""
        options.setdefault("wait", False)
        options.setdefault("poll_start_s", 0.05)

        async def run() -> SyncReport:
            async with open_app(self.config(), TOKEN) as app:
                return await app.syncer.sync(SyncOptions(**options), changed={str(folder): set(paths)})
        return asyncio.run(run())

    def cli(self, *args: str, token: str | None = TOKEN, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real `packsync` command in a child process."""
        env = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
        if token is not None:
            env["GENVIRAL_TOKEN"] = token
        command = ["-c", str(self.config_path), *args]
        if (zygote := _zygote()) is not None:
            return zygote.run(command, env, timeout)
        return subprocess.run([sys.executable, "-m", "packsync", *command], capture_output=True, text=True, env=env,
                              timeout=timeout)

    def pack(self, pack_id: str) -> dict[str, Any]:
        pack = self.sandbox.pack(pack_id)
        assert pack is not None, f"pack {pack_id} does not exist"
        return pack

    def pack_named(self, name: str) -> dict[str, Any]:
        matches = [p for p in self.sandbox.packs() if p["name"] == name]
        assert len(matches) == 1, f"expected one pack named {name!r}, found {len(matches)}"
        return matches[0]

    def cdn_bytes(self, pack_id: str) -> list[bytes]:
        """The bytes behind every image URL of the pack, in pack order."""
        import httpx2

        return [httpx2.get(image["url"]).content for image in self.pack(pack_id)["images"]]


@pytest.fixture(scope="session")
def server() -> Iterator[PostgresServer]:
    """A real PostgreSQL of this worker's (``postgres.py``), for the shared-state tests; they skip, saying
    why, where none can start (Debian's ``postgresql`` package and psycopg are needed)."""
    if (why := missing()) is not None:
        pytest.skip(f"no PostgreSQL here: {why}")
    pg = PostgresServer()
    yield pg
    pg.close()


@pytest.fixture
def url(server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database of the server's, with its password in the environment variable the sites' configs
    name (``[state] password_env``)."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    if not server.running():  # (a test that stopped it, and failed before starting it again)
        server.start()
    return server.database()


def site(root: Path, sandbox: Sandbox, url: str, name: str) -> Env:
    """One machine sharing the state at ``url`` as site ``name``: its folders, config and local files."""
    env = Env(root / name, sandbox)
    env.root.mkdir(parents=True, exist_ok=True)
    env.state = {"url": url, "password_env": PASSWORD_ENV, "site": name}
    return env


@pytest.fixture
def env(tmp_path: Path, sandbox: Sandbox) -> Env:
    return Env(tmp_path, sandbox)


@pytest.fixture
def daemon_env(env: Env) -> Env:
    env.genviral["concurrency"] = 8
    env.daemon.update(debounce_s=0.3, rescan_interval_s=3600)
    return env


@pytest.fixture
def start(daemon_env: Env) -> Iterator[StartDaemon]:
    started: list[DaemonProcess] = []

    def launch(*args: str) -> DaemonProcess:
        daemon_env.write_config()
        env = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
        env.update(GENVIRAL_TOKEN=TOKEN, WATCHDOG_USEC="2000000")
        argv = [sys.executable, "-m", "packsync", "-c", str(daemon_env.config_path), "daemon", *args]
        daemon = DaemonProcess(argv, env, daemon_env.root)
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield launch
    for daemon in started:
        daemon.close()


@pytest.fixture
def start_here(daemon_env: Env) -> Iterator[StartHere]:
    """Start the daemon in this process with ``timing`` (``FAST`` unless given), once ready."""
    started: list[DaemonHere] = []

    def launch(timing: Timing = FAST) -> DaemonHere:
        daemon_env.write_config()
        daemon = DaemonHere(daemon_env.config_path, TOKEN, timing)
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield launch
    for daemon in started:
        daemon.close()
