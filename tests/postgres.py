"""A real PostgreSQL server for the tests: a cluster of its own in a temporary folder (``initdb``), started
with ``pg_ctl`` on a free loopback port, with a password (scram) for TCP, as a shared state's server is.

Debian's ``postgresql`` package provides the programs (``.ci/run`` installs it); ``missing()`` says how to
get them when they are not here, and the tests that need a server skip with that sentence. ``initdb``
refuses to run as root: as root, the cluster is made and run as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "packsync"
PASSWORD = "pg-s3cret-password"
#: The environment variable the tests' configs name for the password (``[state] password_env``).
PASSWORD_ENV = "PACKSYNC_TEST_PG_PASSWORD"


def _bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, else Debian's versioned folder (newest first)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def missing() -> str | None:
    """Why no server can be started here (None: one can)."""
    if _bin_dir() is None:
        return "PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root with no postgres user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One cluster: ``start``, ``stop`` (as a crash or an outage would: at once), ``database()`` a fresh one.

    ``settings``: server settings (``postgres -c NAME=VALUE``) over the tests' own, e.g. the bench's sizing
    for the machine and a durable ``fsync=on``."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.settings = dict(settings or {})
        bin_dir = _bin_dir()
        assert bin_dir is not None, missing()
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="packsync-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._databases = 0
        if self._as:
            shutil.chown(self.root, "postgres")
        self.root.chmod(0o755)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            shutil.chown(pwfile, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "-A", "scram-sha-256",
                  "--no-sync", "-E", "UTF8", "--locale", "C")
        pwfile.unlink()
        self.start()

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / program), *args], check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        """The URL of the cluster's ``postgres`` database, without its password (as a config says it)."""
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # fsync off: a stop kills the server, not the machine, so what it committed is in the OS's cache still
        # (synchronous_commit stays on: a commit said done must survive the stop).
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=100")
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "-t", "60",
                  "start")

    def stop(self) -> None:
        """Stop at once, dropping every connection (``-m immediate``: as a crash or a network cut would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def database(self) -> str:
        """A new, empty database's URL (without the password)."""
        import psycopg

        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def close(self) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
