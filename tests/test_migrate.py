"""``packsync state migrate``: one machine's SQLite state moved into a state shared on a real PostgreSQL, after
which a sync there has nothing to do; a second site's merges; a dry run writes nothing; the same site twice
is refused unless replaced; a daemon holding the state is refused; the password is never shown.

Each site is an ``Env`` of its own (its folders, its config, its SQLite state) on one sandbox, migrated with
the real command into one database of a server started for this module (``tests/postgres.py``).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import Env, image, write
from helpers import StartDaemon
from postgres import PASSWORD, PASSWORD_ENV, PostgresServer, missing

from packsync.sandbox import Sandbox

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no PostgreSQL here: {missing()}")

ADDS = ("POST", "/packs/{id}/images")
UPLOADS = ("POST", "/files")


def tables(server: PostgresServer, url: str) -> set[str]:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user="packsync", password=PASSWORD,
                         dbname=url.rpartition("/")[2]) as connection:
        return {row[0] for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def rows(server: PostgresServer, url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user="packsync", password=PASSWORD,
                         dbname=url.rpartition("/")[2]) as connection:
        return list(connection.execute(sql).fetchall())


def execute(server: PostgresServer, url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user="packsync", password=PASSWORD,
                         dbname=url.rpartition("/")[2]) as connection:
        connection.execute(sql)


def migrate(env: Env, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command; whatever it prints, never the password."""
    done = env.cli("state", "migrate", "--to", url, "--password-env", PASSWORD_ENV, *args)
    assert PASSWORD not in done.stdout + done.stderr
    return done


def share(env: Env, url: str, site: str) -> None:
    """Point the env's config at the shared state, as the migration's closing lines say to."""
    env.state = {"url": url, "password_env": PASSWORD_ENV, "site": site}
    env.write_config()


def run_json(env: Env) -> dict[str, Any]:
    done = env.cli("run", "--no-wait", "--json")
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def added_deleted(document: dict[str, Any]) -> list[tuple[int, int]]:
    return [(mapping["added"], mapping["deleted"]) for mapping in document["mappings"]]


def test_a_run_after_the_migration_has_nothing_to_do(env: Env, sandbox: Sandbox, server: PostgresServer,
                                                     url: str) -> None:
    folder = env.map("brand", pack="Brand Assets")
    for n in range(3):
        write(folder / f"sub/{n}.png", image())
    assert env.sync().exit_code == 0
    calls = (sandbox.calls[UPLOADS], sandbox.calls[ADDS])

    done = migrate(env, url, "--site", "laptop")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:2] == ["files", "3"] for line in lines), done.stdout
    assert f"migrated site laptop into 127.0.0.1:{server.port}/" in done.stdout
    assert "3 files, 3 images" in done.stdout
    assert f'url = "{url}"' in done.stdout and f'password_env = "{PASSWORD_ENV}"' in done.stdout
    assert rows(server, url, "SELECT DISTINCT root FROM files") == [(f"laptop:{folder}",)]
    assert rows(server, url, "SELECT DISTINCT owner FROM images") == [(f"laptop:{folder}",)]

    share(env, url, "laptop")
    assert added_deleted(run_json(env)) == [(0, 0)]
    assert (sandbox.calls[UPLOADS], sandbox.calls[ADDS]) == calls
    assert len(env.pack_named("Brand Assets")["images"]) == 3


def test_a_second_site_merges_and_both_have_nothing_to_do(tmp_path: Path, sandbox: Sandbox, server: PostgresServer,
                                                          url: str) -> None:
    laptop, nas = Env(tmp_path / "laptop", sandbox), Env(tmp_path / "nas", sandbox)
    for env in laptop, nas:
        env.root.mkdir(parents=True)
    x, y, z = image(), image(), image()
    write(laptop.map("brand", pack="Brand Assets") / "x.png", x)
    write(laptop.folder("brand") / "y.png", y)
    write(nas.map("brand", pack="Brand Assets") / "y-copy.png", y)
    write(nas.folder("brand") / "z.png", z)
    assert laptop.sync().exit_code == 0
    assert nas.sync().exit_code == 0  # adopts laptop's y in its own state
    pack_id = laptop.pack_named("Brand Assets")["id"]
    assert len(laptop.pack(pack_id)["images"]) == 3
    calls = (sandbox.calls[UPLOADS], sandbox.calls[ADDS])

    assert migrate(laptop, url, "--site", "laptop").returncode == 0
    done = migrate(nas, url, "--site", "nas", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    images = next(t for t in document["tables"] if t["table"] == "images")
    assert (images["rows"], images["kept"]) == (2, 1), "y was recorded by laptop first: its record stays"
    assert document["site"] == "nas" and document["dry_run"] is False
    assert rows(server, url, "SELECT count(*), count(DISTINCT image_id) FROM images") == [(3, 3)]

    share(laptop, url, "laptop")
    share(nas, url, "nas")
    assert added_deleted(run_json(laptop)) == [(0, 0)]
    assert added_deleted(run_json(nas)) == [(0, 0)]
    assert (sandbox.calls[UPLOADS], sandbox.calls[ADDS]) == calls
    assert len(laptop.pack(pack_id)["images"]) == 3  # no duplicate, nothing lost


def test_a_dry_run_writes_nothing(env: Env, server: PostgresServer, url: str) -> None:
    write(env.map("brand", pack="Brand Assets") / "a.png", image())
    assert env.sync().exit_code == 0

    done = migrate(env, url, "--site", "laptop", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "would migrate site laptop" in done.stdout and "1 files, 1 images" in done.stdout
    assert "Nothing was written" in done.stdout
    assert tables(server, url) == set(), "not even the schema"

    document = json.loads(migrate(env, url, "--site", "laptop", "--dry-run", "--json").stdout)
    assert document["dry_run"] is True
    assert {t["table"]: t["rows"] for t in document["tables"]}["files"] == 1
    assert tables(server, url) == set()


def test_the_same_site_twice_is_refused_unless_replaced(env: Env, sandbox: Sandbox, server: PostgresServer,
                                                         url: str) -> None:
    folder = env.map("brand", pack="Brand Assets")
    write(folder / "a.png", image())
    assert env.sync().exit_code == 0
    assert migrate(env, url, "--site", "laptop").returncode == 0

    again = migrate(env, url, "--site", "laptop")
    assert again.returncode == 2
    assert again.stdout == "" and len(again.stderr.strip().splitlines()) == 1
    assert "already holds" in again.stderr and "--replace" in again.stderr
    assert rows(server, url, "SELECT count(*) FROM files") == [(1,)]

    write(folder / "b.png", image())
    assert env.sync().exit_code == 0  # (the SQLite state moved on: b)
    replaced = migrate(env, url, "--site", "laptop", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "of this site's replaced" in replaced.stdout
    assert rows(server, url, "SELECT count(*) FROM files") == [(2,)]
    assert rows(server, url, "SELECT count(*) FROM mappings") == [(1,)]
    calls = (sandbox.calls[UPLOADS], sandbox.calls[ADDS])
    share(env, url, "laptop")
    assert added_deleted(run_json(env)) == [(0, 0)]
    assert (sandbox.calls[UPLOADS], sandbox.calls[ADDS]) == calls


def test_a_running_daemon_is_refused(daemon_env: Env, start: StartDaemon, server: PostgresServer, url: str) -> None:
    write(daemon_env.map("brand", pack="Brand Assets") / "a.png", image())
    assert daemon_env.sync().exit_code == 0
    daemon = start()
    done = migrate(daemon_env, url, "--site", "laptop")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "stop it first" in done.stderr, done.stderr
    assert tables(server, url) == set()
    daemon.close()


@pytest.mark.parametrize(("args", "option"), [
    (("--to", "mysql://packsync@127.0.0.1/db"), "--to"),
    (("--to", f"postgresql+psycopg://packsync:{PASSWORD}@127.0.0.1/db"), "--to"),
    (("--password-env", "PACKSYNC_TEST_UNSET_VARIABLE"), "--password-env"),
    (("--site", "a:b"), "--site"),
])
def test_bad_input_is_one_sentence(env: Env, url: str, args: tuple[str, ...], option: str) -> None:
    write(env.map("brand", pack="Brand Assets") / "a.png", image())
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["state", "migrate", "--to", given.pop("--to", url),
            "--password-env", given.pop("--password-env", PASSWORD_ENV), *(x for kv in given.items() for x in kv)]
    done = env.cli(*argv)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"packsync: {option}: "), done.stderr
    assert PASSWORD not in done.stderr and "Traceback" not in done.stderr


def refuse_uploads(server: PostgresServer, url: str, errcode: str) -> None:
    """The shared state's schema made, then a trigger that refuses every insert into its uploads' table."""
    from packsync.state.records import SharedState
    from packsync.state.store import State

    State(Path(tempfile.mkdtemp()) / "elsewhere.db", shared=SharedState(url, PASSWORD, "nas")).close()
    execute(server, url, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                         f"$$ BEGIN RAISE EXCEPTION 'no more uploads here' USING ERRCODE = '{errcode}'; END $$")
    execute(server, url, "CREATE TRIGGER refused BEFORE INSERT ON blobs FOR EACH STATEMENT EXECUTE FUNCTION refuse()")


def test_a_failure_half_way_leaves_nothing_migrated(env: Env, server: PostgresServer, url: str) -> None:
    """The server runs out of space at the uploads' rows, copied after the files, mappings and images: nothing
    of the migration stays."""
    write(env.map("brand", pack="Brand Assets") / "a.png", image())
    assert env.sync().exit_code == 0
    refuse_uploads(server, url, "disk_full")
    counts = ("SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM mappings), (SELECT count(*) FROM images), "
              "(SELECT count(*) FROM activity), (SELECT count(*) FROM blobs)")
    assert rows(server, url, counts) == [(0, 0, 0, 0, 0)]

    done = migrate(env, url, "--site", "laptop")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.strip().splitlines() == [f"packsync: the shared state {url.partition('@')[2]} has no space "
                                                "left (no more uploads here)."]
    assert rows(server, url, counts) == [(0, 0, 0, 0, 0)]


def test_a_server_refusal_is_one_sentence(env: Env, server: PostgresServer, url: str) -> None:
    write(env.map("brand", pack="Brand Assets") / "a.png", image())
    assert env.sync().exit_code == 0
    refuse_uploads(server, url, "P0001")
    done = migrate(env, url, "--site", "laptop")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_rows_are_copied_in_batches(env: Env, sandbox: Sandbox, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches smaller than a table: every row copied once, and the images another site has counted across them."""
    from packsync.config import read_state_password
    from packsync.state import migrate as migration
    from packsync.state.records import SharedState
    from packsync.state.store import State

    folder = env.map("brand", pack="Brand Assets")
    for n in range(7):
        write(folder / f"{n}.png", image())
    assert env.sync().exit_code == 0
    calls = (sandbox.calls[UPLOADS], sandbox.calls[ADDS])
    monkeypatch.setattr(migration, "BATCH", 3)
    env.state = {"url": url, "password_env": PASSWORD_ENV, "site": "laptop"}
    password = read_state_password(env.config())
    for site in ("nas", "laptop"):  # nas first: laptop's images are all recorded by "another site" then
        source = State(env.state_path, readonly=True)
        target = State(env.state_path, shared=SharedState(url, password, site))
        try:
            done = migration.migrate(source, target)
        finally:
            target.close()
            source.close()
        assert (done.count("files").rows, done.count("images").rows) == (7, 7)
        assert done.count("images").kept == (7 if site == "laptop" else 0)
        assert done.count("blobs").kept == (7 if site == "laptop" else 0)
    env.write_config()
    report = env.sync()
    assert report.exit_code == 0
    assert (sandbox.calls[UPLOADS], sandbox.calls[ADDS]) == calls


def test_the_password_from_a_file_and_the_sites_own_lock(env: Env, server: PostgresServer, url: str) -> None:
    """``--password-file`` reads it (never shown); a packsync running on the shared state as the same site is
    refused, as a second one on one state file is."""
    from packsync.state.records import SharedState
    from packsync.state.store import State

    write(env.map("brand", pack="Brand Assets") / "a.png", image())
    assert env.sync().exit_code == 0
    secret = env.root / "pg.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    both = env.cli("state", "migrate", "--to", url, "--password-env", PASSWORD_ENV, "--password-file", str(secret))
    assert both.returncode == 2 and both.stderr.startswith("packsync: --password-file: give --password-env or")

    running = State(Path(tempfile.mkdtemp()) / "state.db", shared=SharedState(url, PASSWORD, "laptop"))
    try:
        refused = env.cli("state", "migrate", "--to", url, "--password-file", str(secret), "--site", "laptop")
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "another packsync is using the shared state" in refused.stderr
    finally:
        running.close()
    done = env.cli("state", "migrate", "--to", url, "--password-file", str(secret), "--site", "laptop")
    assert done.returncode == 0, done.stderr
    assert f'password_file = "{secret}"' in done.stdout
    assert PASSWORD not in done.stdout + done.stderr + refused.stderr + both.stderr
    assert rows(server, url, "SELECT count(*) FROM files WHERE root LIKE 'laptop:%'") == [(1,)]


def test_a_state_of_an_old_release_migrates_as_upgraded(tmp_path: Path, server: PostgresServer, url: str) -> None:
    """A schema-6 file (the last release on plain sqlite3) is read as upgraded, without being written: the shared
    state gets the rows an upgrade of it would hold, each qualified by the site."""
    import shutil
    import sqlite3
    from contextlib import closing

    from test_state import digest, load_dump

    from packsync.state.migrate import SHARED_TABLES, SITE_TABLES, migrate
    from packsync.state.records import SharedState
    from packsync.state.store import State
    from packsync.state.tables import TABLES

    old, upgraded = tmp_path / "old" / "state.db", tmp_path / "upgraded" / "state.db"
    load_dump(old, tmp_path)
    upgraded.parent.mkdir()
    shutil.copy(old, upgraded)
    State(upgraded).close()
    before = digest(old)

    source = State(old, readonly=True)
    target = State(tmp_path / "local" / "state.db", shared=SharedState(url, PASSWORD, "old"))
    try:
        done = migrate(source, target)
    finally:
        target.close()
        source.close()
    assert digest(old) == before, "the old file is read, never written"

    def plain(row: tuple[Any, ...], at: int | None) -> tuple[Any, ...]:
        values: list[Any] = [int(v) if isinstance(v, bool) else v for v in row]
        if at is not None and values[at]:
            assert str(values[at]).startswith("old:")
            values[at] = str(values[at]).removeprefix("old:")
        return tuple(values)

    compared = 0
    for name, column in {**SITE_TABLES, **SHARED_TABLES}.items():
        names = [c.name for c in TABLES[name].columns if c.name != "id"]
        at = None if column is None else names.index(column)
        with closing(sqlite3.connect(upgraded)) as db:
            expected = sorted(db.execute(f"SELECT {', '.join(names)} FROM {name}").fetchall(), key=repr)
        got = sorted((plain(row, at) for row in rows(server, url, f"SELECT {', '.join(names)} FROM {name}")), key=repr)
        assert got == expected, name
        assert done.count(name).rows == len(expected)
        compared += len(expected)
    assert compared > 30 and done.count("images").rows > 0 and done.count("files").rows > 0


def test_images_of_no_known_owner_become_the_migrating_mappings(env: Env, server: PostgresServer, url: str) -> None:
    """An image an old release recorded without its mapping ('': any mapping's) is this site's mapping's there:
    in a shared state, '' would let every site's mapping into the pack delete it."""
    folder = env.map("brand", pack="Brand Assets")
    write(folder / "a.png", image())
    assert env.sync().exit_code == 0
    with sqlite3.connect(env.state_path) as connection:
        connection.execute("UPDATE images SET owner = ''")

    assert migrate(env, url, "--site", "laptop").returncode == 0

    assert rows(server, url, "SELECT owner FROM images") == [(f"laptop:{folder}",)]
