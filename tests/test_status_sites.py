"""`status` in a state shared by several sites (a real PostgreSQL): after this site's own mappings, each site
sharing the state — this one marked — with its host, its packsync version, when it was last heard from, and
its mappings as that site recorded them; a site silent for long is flagged. In text, in ``--json`` and on
the page. A state of one machine's own (SQLite) shows no sites.

Each site is an ``Env`` of its own on one sandbox and one database (as in ``tests/test_shared_state.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, LiteralString

import httpx2
import pytest
from conftest import Env, image, site, write
from postgres import PASSWORD, PASSWORD_ENV, USER, PostgresServer

from packsync import __version__
from packsync.sandbox import Sandbox
from packsync.views.clock import ago


def sql(server: PostgresServer, url: str, statement: LiteralString) -> None:
    """Change the shared state behind packsync's back, as time passing or a site's row lost would."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user=USER, password=PASSWORD,
                         dbname=url.rsplit("/", 1)[1], autocommit=True) as connection:
        connection.execute(statement)


def status_json(env: Env) -> dict[str, Any]:
    done = env.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@pytest.fixture
def two_sites(tmp_path: Path, sandbox: Sandbox, url: str) -> tuple[Env, Env, Path, Path]:
    """Sites laptop and nas, each with a folder of its own mirrored into "Brand Assets", both synced once."""
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    folder_a, folder_b = a.map("brand", pack="Brand Assets"), b.map("brand", pack="Brand Assets")
    write(folder_a / "x.png", image())
    write(folder_b / "y.png", image())
    write(folder_b / "z.png", image())
    write(folder_b / "broken.png", b"not an image")
    assert a.sync().exit_code == 0
    assert b.sync().exit_code in (0, 1)  # (1: broken.png is skipped)
    return a, b, folder_a, folder_b


def test_status_shows_each_site_its_mappings_and_last_contact(two_sites: tuple[Env, Env, Path, Path]) -> None:
    a, _b, folder_a, folder_b = two_sites
    done = a.cli("status")
    assert done.returncode == 0, done.stderr
    own, _, sites = done.stdout.partition("sites sharing the state:\n")
    assert "no state yet" not in own, "a shared state some site made exists"
    assert f"{folder_a} → Brand Assets" in own, "this site's mappings come first, as ever"
    assert str(folder_b) not in own
    lines = sites.splitlines()
    laptop = next(i for i, line in enumerate(lines) if line.startswith("  laptop (this site) · "))
    assert re.search(rf"· packsync {re.escape(__version__)} · last heard from \d+ (s|min) ago$", lines[laptop])
    assert lines[laptop + 1] == "    its mappings are listed above"
    nas = next(i for i, line in enumerate(lines) if line.startswith("  nas · "))
    assert "(this site)" not in lines[nas] and "last heard from" in lines[nas]
    assert lines[nas + 1].startswith(f"    {folder_b} → Brand Assets ("), "nas's mapping, as nas names its source"
    assert re.fullmatch(r"      files 3 · last sync \d{4}-\d\d-\d\d \d\d:\d\d \S+", lines[nas + 2]), lines[nas + 2]
    assert "nas:" not in done.stdout, "no site-qualified key shows"


def test_status_json_lists_both_sites(two_sites: tuple[Env, Env, Path, Path]) -> None:
    a, b, folder_a, folder_b = two_sites
    document = status_json(a)
    assert document["version"] == 2
    assert [m["path"] for m in document["mappings"]] == [str(folder_a)], "this site's mappings, as ever"
    sites = {s["name"]: s for s in document["sites"]}
    assert list(sites) == ["laptop", "nas"]
    laptop, nas = sites["laptop"], sites["nas"]
    assert laptop["this"] is True and nas["this"] is False
    for entry in (laptop, nas):
        assert entry["version"] == __version__ and entry["host"]
        assert 0 <= entry["seen_ago_s"] < 120 and entry["silent"] is False
    (theirs,) = nas["mappings"]
    pack_id = a.pack_named("Brand Assets")["id"]
    assert theirs["path"] == str(folder_b) and theirs["pack_id"] == pack_id and theirs["pack_name"] == "Brand Assets"
    assert theirs["files"] == 3 and theirs["last_sync"] is not None
    assert theirs["last_error"] is None and theirs["safety_stop"] is None and theirs["paused"] is None
    (mine,) = laptop["mappings"]
    assert mine["path"] == str(folder_a) and mine["files"] == 1
    assert [s["this"] for s in status_json(b)["sites"]] == [False, True], "each site marks itself"


def test_a_site_silent_for_long_is_flagged(two_sites: tuple[Env, Env, Path, Path], server: PostgresServer,
                                           url: str) -> None:
    a, b, _folder_a, _folder_b = two_sites
    sql(server, url, "UPDATE sites SET seen_at = seen_at - 3 * 86400 - 60 WHERE name = 'nas'")
    done = a.cli("status")
    flagged = r"^  nas · .* · not heard from for 3 days \(since \d{4}-\d\d-\d\d \d\d:\d\d \S+\)$"
    assert re.search(flagged, done.stdout, re.MULTILINE), done.stdout
    sites = {s["name"]: s for s in status_json(a)["sites"]}
    assert sites["nas"]["silent"] is True and sites["nas"]["seen_ago_s"] > 3 * 86400
    assert sites["laptop"]["silent"] is False
    assert b.sync().exit_code in (0, 1)  # nas syncs again: heard from
    nas = {s["name"]: s for s in status_json(a)["sites"]}["nas"]
    assert nas["silent"] is False and nas["seen_ago_s"] < 120


def test_a_site_known_only_by_its_mappings_is_never_heard_from(two_sites: tuple[Env, Env, Path, Path],
                                                               server: PostgresServer, url: str) -> None:
    a, _b, _folder_a, folder_b = two_sites
    sql(server, url, "DELETE FROM sites WHERE name = 'nas'")
    done = a.cli("status")
    assert re.search(r"^  nas · never heard from$", done.stdout, re.MULTILINE), done.stdout
    assert f"    {folder_b} → Brand Assets" in done.stdout, "its mappings are still shown"
    nas = {s["name"]: s for s in status_json(a)["sites"]}["nas"]
    assert nas["seen_ago_s"] is None and nas["host"] is None and nas["silent"] is True


def test_another_site_s_safety_stop_shows(two_sites: tuple[Env, Env, Path, Path]) -> None:
    a, b, _folder_a, folder_b = two_sites
    for png in folder_b.glob("*.png"):
        png.unlink()  # nas's folder looks emptied (an unmounted disk?): its deletes are held back
    assert b.sync().exit_code != 0
    done = a.cli("status")
    assert re.search(r"^      safety stop: .+$", done.stdout, re.MULTILINE), done.stdout
    (theirs,) = {s["name"]: s for s in status_json(a)["sites"]}["nas"]["mappings"]
    assert theirs["safety_stop"]


def test_the_page_shows_the_sites(two_sites: tuple[Env, Env, Path, Path]) -> None:
    a, _b, _folder_a, folder_b = two_sites
    proc = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(a.config_path), "ui", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/bin:/bin", PASSWORD_ENV: os.environ[PASSWORD_ENV]})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, line
        html = httpx2.get(match.group(1)).text
        _, _, sites = html.partition('<details class="activity sites" id="sites" open>')
        assert sites, "the page has a Sites section"
        laptop, _, nas = sites.partition('data-site="nas"')
        assert 'data-site="laptop"' in laptop and "this site" in laptop
        assert "last heard from <time" in nas and str(folder_b) in nas and "3 files" in nas
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_a_state_of_one_s_own_shows_no_sites(env: Env) -> None:
    """SQLite: the status reads as it always did, and ``--json``'s ``sites`` is an empty list."""
    folder = env.map("pics", pack="Pics")
    write(folder / "a.png", image())
    assert env.sync().exit_code == 0
    done = env.cli("status")
    assert done.returncode == 0 and f"{folder} → Pics" in done.stdout
    assert "sites" not in done.stdout and "heard from" not in done.stdout
    assert status_json(env)["sites"] == []


@pytest.mark.parametrize(("seconds", "said"), [
    (-3, "0 s"), (0, "0 s"), (12.7, "12 s"), (59.9, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"),
    (47 * 3600 + 59, "47 h"), (48 * 3600, "2 days"), (3 * 86400 + 60, "3 days"),
])
def test_how_long_ago_reads(seconds: float, said: str) -> None:
    assert ago(seconds) == said


def test_a_shared_state_no_site_made_yet_is_no_state_yet(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    """Before any site synced, ``status`` names the server and database (never the user or password), makes
    nothing, and lists no site."""
    a = site(tmp_path, sandbox, url, "laptop")
    a.map("brand", pack="Brand Assets")
    a.write_config()
    done = a.cli("status")
    where = url.split("@", 1)[1]
    assert done.returncode == 0 and done.stdout.startswith(f"no state yet at {where}: "), done.stdout
    assert "sites sharing" not in done.stdout and PASSWORD not in done.stdout
    document = status_json(a)
    assert document["state"] == where and document["state_exists"] is False and document["sites"] == []
