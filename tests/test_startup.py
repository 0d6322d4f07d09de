"""Commands start instantly: what each one imports, checked in a fresh interpreter (not timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TOKEN, Env, image, write

#: The HTTP client, needed only by commands that talk to an API: httpx2 and what it imports.
CLIENT = ("httpx2", "httpcore2", "h11", "anyio", "truststore")
#: The page's server, needed only when serving it.
SERVER = ("aiohttp", "yarl", "multidict")
#: The libraries too heavy for a command that does not talk to the API or watch folders.
HEAVY = (*CLIENT, *SERVER, "httpx", "httpcore", "sqlalchemy", "sqlmodel", "pydantic", "watchdog")
#: What only serving the page needs.
WEB = ("aiohttp.web", "jinja2", "prometheus_client")
#: What only pulling, or a mapping that writes sidecars, needs.
ONLY_PULL = ("packsync.engine.pull", "packsync.engine.pull_plan", "packsync.engine.sidecars", "packsync.xmp")

PROBE = """
import json, runpy, sys
sys.argv = ["packsync", *json.loads(sys.argv[1])]
try:
    runpy.run_module("packsync", run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("\\nIMPORTED " + json.dumps(sorted(sys.modules)))
"""


def imported(*args: str, token: str | None = None) -> set[str]:
    """The modules a command imports, and the packages they are in."""
    env = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"} | ({"GENVIRAL_TOKEN": token} if token else {})
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                            timeout=60, env=env)
    marker = result.stderr.rpartition("IMPORTED ")[2]
    modules = set(json.loads(marker))
    return modules | {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["pull", "--help"],
                                  ["daemon", "--help"], ["status", "--help"], ["astria", "packs", "--help"],
                                  ["ui", "--help"]],
                         ids=" ".join)
def test_help_and_version_import_no_heavy_library(args: list[str]) -> None:
    assert imported(*args) & {*HEAVY, *WEB} == set()


def test_status_imports_neither_the_http_client_nor_the_watcher(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0

    modules = imported("-c", str(env.config_path), "status", "--files")

    assert "sqlmodel" in modules, "the probe ran the real status command"
    assert modules & {*CLIENT, *SERVER, "httpx", "httpcore", "watchdog", *WEB} == set()


def test_run_pays_nothing_for_the_page(env: Env) -> None:
    write(env.map("brand", pack_id=env.sandbox.create_pack("p")) / "a.png", image())
    env.write_config()
    modules = imported("-c", str(env.config_path), "run", "--dry-run", token=TOKEN)
    assert "anyio._backends._asyncio" in modules, "the probe ran the real run command, to its pack read"
    assert modules & {*WEB, *SERVER, *ONLY_PULL, "httpx", "httpcore"} == set()


def test_commands_that_read_no_state_do_not_load_it(env: Env) -> None:
    """Listing the key's packs talks to the API alone: it pays nothing for the state's libraries."""
    env.sandbox.create_pack("p")
    env.write_config()
    modules = imported("-c", str(env.config_path), "packs", token=TOKEN)
    assert "anyio._backends._asyncio" in modules, "the probe ran the real packs command"
    assert modules & {"sqlmodel", "sqlalchemy", "pydantic", "packsync.state.store"} == set()
