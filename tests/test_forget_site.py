"""``packsync state forget-site``: a site that left a shared state for good stops holding the pack images its
files held and owning those it added; this machine's own site, a site heard from lately or connected now,
and a state of one machine's own are refused with one sentence; a dry run writes nothing; another site's
rows and images stay as they are; the password is never shown.

Each site is an ``Env`` of its own on one sandbox, sharing one fresh database of a server started for this
module (``tests/postgres.py``); the command is the real one, run in a child process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Env, image, site, write
from postgres import PASSWORD, USER, PostgresServer, missing
from test_shared_state import contents, sha

from packsync.sandbox import Sandbox
from packsync.state.postgres import site_lock_key

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no PostgreSQL here: {missing()}")

#: The per-site tables, and the column that names the site in each.
PER_SITE = {"files": "root", "problems": "root", "failed": "root", "sidecars": "root", "settled": "root",
            "mappings": "root", "activity": "root", "pulled": "folder"}


def connect(server: PostgresServer, url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection of the test's own to the database at ``url`` (autocommit)."""
    return psycopg.connect(host="127.0.0.1", port=server.port, user=USER, password=PASSWORD,
                           dbname=url.rsplit("/", 1)[1], autocommit=True)


def query(server: PostgresServer, url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(server, url) as connection:
        return list(connection.execute(sql, params).fetchall())


def execute(server: PostgresServer, url: str, sql: str, *params: Any) -> None:
    with connect(server, url) as connection:
        connection.execute(sql, params)


def forget(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command; whatever it prints, never the password nor a traceback."""
    done = env.cli("state", "forget-site", *args)
    output = done.stdout + done.stderr
    assert PASSWORD not in output, output
    assert "Traceback" not in output, output
    return done


def held(server: PostgresServer, url: str, name: str) -> dict[str, int]:
    """How many rows of site ``name`` each per-site table holds, its ``sites`` row, and the images it owns."""
    counts = {table: query(server, url, f"SELECT count(*) FROM {table} WHERE {column} LIKE %s", f"{name}:%")[0][0]
              for table, column in PER_SITE.items()}
    counts["sites"] = query(server, url, "SELECT count(*) FROM sites WHERE name = %s", name)[0][0]
    counts["images"] = query(server, url, "SELECT count(*) FROM images WHERE owner LIKE %s", f"{name}:%")[0][0]
    return counts


def snapshot(server: PostgresServer, url: str) -> dict[str, list[str]]:
    """Every row a forgetting may touch, to compare before and after: the sites by name alone (opening the state
    to write says this machine's site is alive, as every command that writes does)."""
    tables = {table: "*" for table in (*PER_SITE, "images", "daemon", "leases")} | {"sites": "name"}
    return {table: sorted(map(repr, query(server, url, f"SELECT {columns} FROM {table}")))
            for table, columns in tables.items()}


def age(server: PostgresServer, url: str, name: str, seconds: float = 3600) -> None:
    """Make site ``name`` look as if it was last heard from ``seconds`` ago, its leases run out as long ago: as
    when a machine left a while back."""
    execute(server, url, "UPDATE sites SET seen_at = seen_at - %s WHERE name = %s", seconds, name)
    execute(server, url, "UPDATE leases SET expires_at = expires_at - %s WHERE holder = %s", seconds, name)


def synced(env: Env, *files: bytes, pack: str = "Brand Assets") -> Path:
    """The env mapping a folder of these contents into ``pack``, synced once."""
    folder = env.map("brand", pack=pack)
    for n, data in enumerate(files):
        write(folder / f"{n}.png", data)
    assert env.sync().exit_code == 0
    return folder


def test_a_machine_gone_is_forgotten_and_its_images_become_any_mappings(tmp_path: Path, sandbox: Sandbox,
                                                                         server: PostgresServer, url: str) -> None:
    """The laptop mirrored x and y into the pack beside the studio, and left an hour ago. Forgetting it deletes
    each of its rows and gives its images to no one in particular; the studio's stay as they were. The studio
    then deletes x: it leaves the pack (no site holds it any more), y stays, nothing is added twice."""
    x, y, z = image(), image(), image()
    laptop = site(tmp_path, sandbox, url, "laptop")
    synced(laptop, x, y)
    studio = site(tmp_path, sandbox, url, "studio")
    folder = synced(studio, x, y, z)
    pack_id = studio.pack_named("Brand Assets")["id"]
    studio_before = held(server, url, "studio")
    assert held(server, url, "laptop")["files"] == 2
    (laptop_id,), = query(server, url, "SELECT id FROM sites WHERE name = 'laptop'")
    execute(server, url, "INSERT INTO daemon (id, pid, started_at, last_full_scan, queue, state, last_error, "
            "updated_at) VALUES (%s, 1, 0, 0, 0, 'idle', NULL, 0) ON CONFLICT DO NOTHING", laptop_id)  # (its daemon's)
    age(server, url, "laptop")

    done = forget(studio, "laptop")

    assert done.returncode == 0, done.stderr
    assert "forgot site laptop" in done.stdout, done.stdout
    assert not any(held(server, url, "laptop").values()), held(server, url, "laptop")
    assert held(server, url, "studio") == studio_before
    assert query(server, url, "SELECT count(*) FROM daemon WHERE id = %s", laptop_id) == [(0,)]
    owners = dict(query(server, url, "SELECT sha256, owner FROM images"))
    assert all(owner in ("", f"studio:{folder}") for owner in owners.values()), owners
    assert owners[sha(z)] == f"studio:{folder}"  # (the studio's own image keeps its owner)

    (folder / "0.png").unlink()
    assert studio.sync().exit_code == 0
    assert contents(studio, pack_id) == sorted(map(sha, (y, z)))


def test_an_image_given_up_stays_while_another_site_holds_it(tmp_path: Path, sandbox: Sandbox,
                                                             server: PostgresServer, url: str) -> None:
    """The laptop added x, the studio and the NAS hold x too. Once the laptop is forgotten, the studio
    deleting x hands it over to the NAS (the hand-over rule comes first): it stays; the NAS deleting it
    too takes it out of the pack."""
    x, y = image(), image()
    laptop = site(tmp_path, sandbox, url, "laptop")
    synced(laptop, x, y)
    studio, nas = site(tmp_path, sandbox, url, "studio"), site(tmp_path, sandbox, url, "nas")
    folders = {env.state["site"]: synced(env, x, y) for env in (studio, nas)}
    pack_id = studio.pack_named("Brand Assets")["id"]
    age(server, url, "laptop")
    assert forget(studio, "laptop").returncode == 0

    (folders["studio"] / "0.png").unlink()
    assert studio.sync().exit_code == 0
    assert contents(studio, pack_id) == sorted(map(sha, (x, y)))
    (owner,), = query(server, url, "SELECT owner FROM images WHERE sha256 = %s", sha(x))
    assert owner == f"nas:{folders['nas']}"
    (folders["nas"] / "0.png").unlink()
    assert nas.sync().exit_code == 0
    assert contents(nas, pack_id) == [sha(y)]


def test_this_machines_own_site_is_refused(tmp_path: Path, sandbox: Sandbox, server: PostgresServer,
                                           url: str) -> None:
    """Forgetting the site one runs as would forget what this machine syncs: refused, whatever --force says."""
    studio = site(tmp_path, sandbox, url, "studio")
    synced(studio, image())
    before = snapshot(server, url)

    for args in (("studio",), ("studio", "--force")):
        done = forget(studio, *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "this machine's own site" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert snapshot(server, url) == before


def test_a_site_heard_from_lately_is_refused_unless_forced(tmp_path: Path, sandbox: Sandbox, server: PostgresServer,
                                                           url: str) -> None:
    """The laptop synced a moment ago: it may be running, so forgetting it is refused with a sentence that
    says how to insist; with --force it is forgotten."""
    laptop = site(tmp_path, sandbox, url, "laptop")
    synced(laptop, image())
    studio = site(tmp_path, sandbox, url, "studio")
    synced(studio, image())
    before = snapshot(server, url)

    refused = forget(studio, "laptop")

    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "heard from" in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert snapshot(server, url) == before
    forced = forget(studio, "laptop", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not any(held(server, url, "laptop").values())


def test_a_site_holding_a_lease_is_refused_unless_forced(tmp_path: Path, sandbox: Sandbox, server: PostgresServer,
                                                         url: str) -> None:
    """Not heard from for an hour, but holding a pack's lease not yet run out (a packsync paused mid-sync):
    refused unless forced; forced, the lease is left to run out on its own (the laptop may still be writing
    under it, until its own deadline stops it), its epoch kept."""
    laptop = site(tmp_path, sandbox, url, "laptop")
    synced(laptop, image())
    studio = site(tmp_path, sandbox, url, "studio")
    synced(studio, image())
    age(server, url, "laptop")
    execute(server, url, "INSERT INTO leases (key, holder, epoch, expires_at) VALUES ('pack:held', 'laptop', 7, "
          "extract(epoch from clock_timestamp()) + 600)")

    refused = forget(studio, "laptop")

    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "lease" in refused.stderr and "--force" in refused.stderr, refused.stderr
    forced = forget(studio, "laptop", "--force")
    assert forced.returncode == 0, forced.stderr
    (expires_at, epoch), = query(server, url, "SELECT expires_at, epoch FROM leases WHERE key = 'pack:held'")
    now, = query(server, url, "SELECT extract(epoch from clock_timestamp())::float8")[0]
    assert expires_at > now and epoch == 7  # (left to run out: the others take the pack after it)
    assert "left to run out" in forced.stdout, forced.stdout


def test_a_site_connected_now_is_refused_even_forced(tmp_path: Path, sandbox: Sandbox, server: PostgresServer,
                                                     url: str) -> None:
    """A packsync connected as the laptop holds the site's lock: it would write its rows again at once, so
    forgetting it is refused even with --force."""
    laptop = site(tmp_path, sandbox, url, "laptop")
    synced(laptop, image())
    studio = site(tmp_path, sandbox, url, "studio")
    synced(studio, image())
    age(server, url, "laptop")
    before = snapshot(server, url)

    with connect(server, url) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (site_lock_key("laptop"),))
        refused = forget(studio, "laptop", "--force")

    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "connected" in refused.stderr, refused.stderr
    assert snapshot(server, url) == before


def test_a_dry_run_says_what_would_be_forgotten_and_writes_nothing(tmp_path: Path, sandbox: Sandbox,
                                                                    server: PostgresServer, url: str) -> None:
    """--dry-run counts the laptop's rows and images as a forgetting would, in words and as JSON, and
    changes no row; the forgetting then deletes exactly as many."""
    laptop = site(tmp_path, sandbox, url, "laptop")
    synced(laptop, image(), image())
    studio = site(tmp_path, sandbox, url, "studio")
    synced(studio, image())
    age(server, url, "laptop")
    before = snapshot(server, url)
    counts = held(server, url, "laptop")

    said = forget(studio, "laptop", "--dry-run")
    as_json = forget(studio, "laptop", "--dry-run", "--json")

    assert said.returncode == 0 and as_json.returncode == 0, said.stderr + as_json.stderr
    assert snapshot(server, url) == before
    assert "would forget site laptop" in said.stdout and "Nothing was written" in said.stdout, said.stdout
    assert "2 files" in said.stdout and "2 images to give up" in said.stdout, said.stdout
    document = json.loads(as_json.stdout)
    assert document["dry_run"] is True and document["site"] == "laptop"
    rows = {entry["table"]: entry["rows"] for entry in document["tables"]}
    assert {table: rows[table] for table in PER_SITE} == {table: counts[table] for table in PER_SITE}
    assert rows["sites"] == 1 and document["images"] == counts["images"] == 2
    done = forget(studio, "laptop", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {**document, "dry_run": False}


def test_an_unknown_site_a_bad_name_and_a_state_of_ones_own_are_one_sentence(tmp_path: Path, sandbox: Sandbox,
                                                                              url: str) -> None:
    """A site the state never heard of, a name no site can have, and a SQLite state: each a sentence, exit 2."""
    studio = site(tmp_path, sandbox, url, "studio")
    synced(studio, image())
    alone = Env(tmp_path / "alone", sandbox)
    alone.root.mkdir(parents=True)
    synced(alone, image())

    for env, name, words in ((studio, "nobody", "holds nothing of a site 'nobody' (its sites: studio)"),
                             (studio, "a:b", "NAME: a site's name is"),
                             (alone, "laptop", "one machine alone")):
        done = forget(env, name)
        assert done.returncode == 2, done.stdout + done.stderr
        assert words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
