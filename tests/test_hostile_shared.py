"""Hostile tests of a state shared by several sites on a real PostgreSQL: what a team's bad day, a careless
config or an odd database does to "one writer per pack, nothing duplicated, nothing lost, nothing held
forever".

Each site is an ``Env`` of its own on one sandbox, sharing one fresh database of a server started for this
module (``tests/postgres.py``), as in ``tests/test_shared_state.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import image, site, write
from helpers import wait_until
from postgres import PASSWORD, PASSWORD_ENV, USER, PostgresServer, missing
from test_shared_state import contents, sha, start_daemon, start_run

from packsync.sandbox import Sandbox

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no PostgreSQL here: {missing()}")


def connect(server: PostgresServer, url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection of the test's own to the database at ``url`` (autocommit)."""
    return psycopg.connect(host="127.0.0.1", port=server.port, user=USER, password=PASSWORD,
                           dbname=url.rsplit("/", 1)[1], autocommit=True)


def one_sentence(output: str) -> None:
    """What a user's mistake must look like: no traceback, no password."""
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output


# -- one writer per pack -----------------------------------------------------------------------------


def test_a_pack_named_on_one_site_and_given_by_id_on_the_other_has_one_writer(tmp_path: Path, sandbox: Sandbox,
                                                                               url: str) -> None:
    """The studio's config names the pack by its id (``pack_id``), a new laptop's by its name ("Brand
    Assets"), both mirroring the same photos into it. The studio's sync is under way when the laptop's
    first sync starts: the laptop must wait for the studio's turn (the pack is one pack), not add the
    photos the studio is adding at that moment. Both holding the same content, the pack must end up with
    each content once."""
    sandbox.faults.latency_s = 0.1  # (the studio's sync lasts a while: the laptop's starts during it)
    pack_id = sandbox.create_pack("Brand Assets")
    studio, laptop = site(tmp_path, sandbox, url, "studio"), site(tmp_path, sandbox, url, "laptop")
    for env in (studio, laptop):
        env.genviral["concurrency"] = 1
    shared = [image() for _ in range(40)]
    folder_s = studio.map("brand", pack_id=pack_id)
    folder_l = laptop.map("brand", pack="Brand Assets")
    for n, data in enumerate(shared):
        write(folder_s / f"{n}.png", data)
        write(folder_l / f"{n}.png", data)

    first = start_run(studio)
    wait_until(lambda: studio.pack(pack_id)["image_count"] >= 2, timeout=60, what="the studio's sync under way")
    second = start_run(laptop)
    outputs = [run.communicate(timeout=180)[0] for run in (first, second)]

    assert [run.returncode for run in (first, second)] == [0, 0], outputs
    assert contents(studio, pack_id) == sorted(map(sha, shared)), "a content added twice"
    assert "waiting for site studio" in outputs[1], outputs[1][-2000:]


def writes(sandbox: Sandbox) -> dict[tuple[str, str], int]:
    """The calls that changed a pack so far, by method and route (uploads to storage are no pack's: an upload
    is not fenced, and one made after the lease ran out leaves at most a file in no pack)."""
    return {call: count for call, count in sandbox.calls.items()
            if call[0] in ("POST", "PUT", "PATCH", "DELETE") and call[1].startswith("/packs")}


def test_a_site_paused_past_its_lease_writes_nothing_more_after_another_site_took_over(
        tmp_path: Path, sandbox: Sandbox, server: PostgresServer, url: str) -> None:
    """The laptop's sync is under way when its process is stopped (SIGSTOP: a closed lid, a frozen VM) for
    longer than its lease. The NAS, holding the same photos and one more, then syncs the pack to the end.
    When the laptop wakes (SIGCONT) it must write nothing more to the pack — the add it had in flight may
    have landed, and then the NAS adopted it — and nothing stale to the state: the pack holds each
    content once, and a later sync of either site changes nothing."""
    sandbox.faults.latency_s = 0.1
    laptop, nas = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    for env in (laptop, nas):
        env.state["lease_s"] = 5
        env.genviral["concurrency"] = 1
    shared = [image() for _ in range(30)]
    folder_l, folder_n = laptop.map("brand", pack="Brand Assets"), nas.map("brand", pack="Brand Assets")
    for n, data in enumerate(shared):
        write(folder_l / f"{n}.png", data)
        write(folder_n / f"{n}.png", data)
    write(folder_n / "nas-only.png", only_n := image())

    paused = start_run(laptop)
    stopped = False
    try:
        wait_until(lambda: paused.poll() is not None or sandbox.packs() and sandbox.packs()[0]["image_count"] >= 3,
                   timeout=60, what="the laptop's sync under way")
        assert paused.poll() is None, paused.communicate()[0]
        os.kill(paused.pid, signal.SIGSTOP)
        stopped = True
        pack_id = sandbox.packs()[0]["id"]
        with connect(server, url) as connection:  # (its lease run out by the database's own clock)
            wait_until(lambda: connection.execute(
                "SELECT bool_and(expires_at < extract(epoch from clock_timestamp())) FROM leases "
                "WHERE holder = 'laptop'").fetchone() == (True,),
                timeout=60, interval=0.2, what="the paused laptop's lease run out")
        taken_over = nas.cli("run", "--no-wait")
        assert taken_over.returncode == 0, taken_over.stdout + taken_over.stderr
        expected = sorted(map(sha, (*shared, only_n)))
        assert contents(nas, pack_id) == expected
        before = writes(sandbox)
    finally:
        if stopped:
            os.kill(paused.pid, signal.SIGCONT)
    output = paused.communicate(timeout=120)[0]

    woken = writes(sandbox)
    added = woken.pop(("POST", "/packs/{id}/images"), 0) - before.pop(("POST", "/packs/{id}/images"), 0)
    assert woken == before and added <= 1, f"the woken laptop wrote to the pack:\n{output[-3000:]}"
    for env in (laptop, nas, laptop):  # (the add it had in flight, if it landed after the NAS's sync, undone)
        again = env.cli("run", "--no-wait")
        assert again.returncode == 0, again.stdout + again.stderr
    assert contents(nas, pack_id) == expected, "a content twice in the pack"


def test_a_site_frozen_inside_a_transaction_does_not_hold_the_other_sites_writes(url: str) -> None:
    """A site stopped (SIGSTOP, a closed lid) between two statements of a write transaction holds the rows it
    wrote. The server ends such a transaction after ``IDLE_IN_TRANSACTION_MS``, before another site's wait for
    those rows times out: that site's write goes through (without it: "canceling statement due to lock
    timeout", which made the paused-site test above fail now and then)."""
    from sqlalchemy import text

    from packsync.config import SharedState
    from packsync.state.postgres import LOCK_TIMEOUT_MS, open_engine

    shared = SharedState(url, PASSWORD, "laptop")
    frozen, other = open_engine(shared).connect(), open_engine(shared).connect()
    try:
        frozen.exec_driver_sql("CREATE TABLE held (id INTEGER PRIMARY KEY, site VARCHAR)")
        frozen.exec_driver_sql("INSERT INTO held VALUES (1, 'nobody')")
        frozen.exec_driver_sql("BEGIN")
        frozen.exec_driver_sql("UPDATE held SET site = 'laptop' WHERE id = 1")  # ...and then frozen

        other.execute(text("UPDATE held SET site = 'nas' WHERE id = 1"))  # waits at most LOCK_TIMEOUT_MS

        assert other.execute(text("SELECT site FROM held")).scalar_one() == "nas", \
            f"the frozen transaction was not ended within {LOCK_TIMEOUT_MS} ms"
    finally:
        other.close()
        frozen.invalidate()


# -- nothing held forever ----------------------------------------------------------------------------


def test_a_mapping_another_site_dropped_does_not_keep_an_image_forever(tmp_path: Path, sandbox: Sandbox,
                                                                        url: str) -> None:
    """The laptop and the NAS both mirror x into "Brand Assets". The NAS's owner then drops that mapping
    from its config (the NAS now mirrors another folder into another pack) and the NAS syncs. No mapping
    of the NAS mirrors into "Brand Assets" any more, so when the laptop deletes x, x must leave the pack —
    not be handed over to the NAS's dropped mapping and stay in the pack for good."""
    laptop, nas = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    x, y = image(), image()
    folder_l, folder_n = laptop.map("brand", pack="Brand Assets"), nas.map("brand", pack="Brand Assets")
    write(folder_l / "x.png", x)
    write(folder_l / "y.png", y)
    write(folder_n / "x.png", x)
    assert laptop.sync().exit_code == 0 and nas.sync().exit_code == 0
    pack_id = laptop.pack_named("Brand Assets")["id"]
    assert contents(laptop, pack_id) == sorted(map(sha, (x, y)))

    nas.mappings = []
    write(nas.map("other", pack="Other") / "o.png", image())  # the NAS mirrors something else now
    assert nas.sync().exit_code == 0
    (folder_l / "x.png").unlink()
    for _ in range(2):  # (not later either)
        assert laptop.sync().exit_code == 0
        assert nas.sync().exit_code == 0

    assert contents(laptop, pack_id) == [sha(y)], "x is still in the pack, held by a mapping no site has"


# -- the database ------------------------------------------------------------------------------------


def test_a_database_with_another_program_s_images_table_is_refused_and_left_untouched(
        tmp_path: Path, sandbox: Sandbox, server: PostgresServer, url: str) -> None:
    """``[state] url`` names, by mistake, the database of another program that has a table called
    ``images`` (a common name) and no packsync table. packsync must refuse it in one sentence, as it
    refuses a database holding tables of other names — not create its own tables beside the other
    program's, nor read or write that program's ``images`` as if it were its own."""
    with connect(server, url) as connection:
        connection.execute("CREATE TABLE images (id serial PRIMARY KEY, caption text NOT NULL)")
        connection.execute("INSERT INTO images (caption) VALUES ('the other program''s row')")
    env = site(tmp_path, sandbox, url, "laptop")
    write(env.map("brand", pack="Brand Assets") / "x.png", image())

    ran = env.cli("run", "--no-wait")

    output = ran.stdout + ran.stderr
    one_sentence(output)
    assert ran.returncode == 2, output
    assert "another program" in output or "of its own" in output, output
    with connect(server, url) as connection:
        tables = {str(row[0]) for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        rows = connection.execute("SELECT caption FROM images").fetchall()
    assert tables == {"images"}, f"packsync created its tables in another program's database: {sorted(tables)}"
    assert rows == [("the other program's row",)]
    assert sandbox.packs() == []


@pytest.mark.parametrize("command", [("run", "--no-wait"), ("status",), ("status", "--json"), ("search", "x")])
def test_a_wrong_password_is_one_sentence_on_every_command(tmp_path: Path, sandbox: Sandbox, url: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          command: tuple[str, ...]) -> None:
    """The password in the variable ``[state] password_env`` names is wrong (a rotated secret): every
    command says the login was refused, in one sentence that shows neither password, exit 2."""
    wrong = "not-the-" + PASSWORD
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    env = site(tmp_path, sandbox, url, "laptop")
    write(env.map("brand", pack="Brand Assets") / "x.png", image())

    ran = env.cli(*command)

    output = ran.stdout + ran.stderr
    one_sentence(output)
    assert wrong not in output, output
    assert ran.returncode == 2, output
    assert "refused this site's login" in output, output


@pytest.mark.parametrize("command", [("run", "--no-wait"), ("status",), ("search", "x")])
def test_a_missing_database_is_one_sentence_on_every_command(tmp_path: Path, sandbox: Sandbox,
                                                            server: PostgresServer, url: str,
                                                            command: tuple[str, ...]) -> None:
    """``[state] url`` names a database no one created yet: every command says so in one sentence."""
    env = site(tmp_path, sandbox, server.url_of("nobody_made_this"), "laptop")
    write(env.map("brand", pack="Brand Assets") / "x.png", image())

    ran = env.cli(*command)

    output = ran.stdout + ran.stderr
    one_sentence(output)
    assert ran.returncode == 2, output
    assert "does not exist" in output, output


def test_a_second_packsync_claiming_a_running_site_s_name_is_refused(tmp_path: Path, sandbox: Sandbox,
                                                                     url: str) -> None:
    """The same config copied to a second machine (so the same ``[state] site``) while the first machine's
    daemon runs: the second's ``run`` is refused in one sentence naming the site, and writes nothing."""
    first = site(tmp_path, sandbox, url, "nas")
    write(first.map("brand", pack="Brand Assets") / "x.png", image())
    daemon = start_daemon(first)
    try:
        wait_until(lambda: sandbox.packs() and sandbox.packs()[0]["image_count"] == 1, timeout=60,
                   what="the first machine's image")
        copy = site(tmp_path / "other-machine", sandbox, url, "nas")
        write(copy.map("brand", pack="Brand Assets") / "y.png", image())

        ran = copy.cli("run", "--no-wait")

        output = ran.stdout + ran.stderr
        one_sentence(output)
        assert ran.returncode == 2, output
        assert "'nas'" in output and "another packsync" in output, output
        assert sandbox.packs()[0]["image_count"] == 1
    finally:
        daemon.close()


# -- names: site-qualified keys must not leak -----------------------------------------------------------


def pulled(folder: Path) -> list[str]:
    """The files a pull wrote below ``folder``, relative to it."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*.png"))


def test_a_pull_on_a_shared_state_names_the_files_as_their_site_holds_them(tmp_path: Path, sandbox: Sandbox,
                                                                            url: str) -> None:
    """The laptop mirrors a folder with subfolders into "Brand Assets"; the NAS restores that pack into a
    folder of its own with ``packsync pull``, as the README says one can (no need of the laptop). The pull
    must work on a shared state — and name the files by the paths they were pushed from."""
    laptop, nas = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    folder = laptop.map("brand", pack="Brand Assets")
    write(folder / "summer" / "x.png", image())
    write(folder / "winter" / "y.png", image())
    write(nas.map("mine", pack="Mine") / "m.png", image())
    assert laptop.sync().exit_code == 0 and nas.sync().exit_code == 0

    into = tmp_path / "restored"
    ran = nas.cli("pull", "genviral:Brand Assets", str(into))

    output = ran.stdout + ran.stderr
    one_sentence(output)
    assert ran.returncode == 0, output
    assert pulled(into) == ["summer/x.png", "winter/y.png"]


def test_a_machine_called_astria_is_asked_for_a_site_name(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    """A studio machine called ``astria`` (its host name: the default site) would store its folders as
    ``astria:/…``, the way Astria sources' labels begin: that name is refused, naming the key, and nothing
    is written."""
    studio = site(tmp_path, sandbox, url, "astria")
    write(studio.map("brand", pack="Brand Assets") / "x.png", image())

    ran = studio.cli("run", "--no-wait")

    assert ran.returncode == 2 and "state.site" in ran.stderr + ran.stdout, ran.stderr
    assert "Traceback" not in ran.stderr and sandbox.packs() == []


@pytest.fixture
def dropping_server() -> Iterator[int]:
    """A port where something accepts every connection and closes it at once (a server in a crash loop, a
    proxy with no backend): the port it listens on."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    done.set()
    thread.join(timeout=5)
    listener.close()


@pytest.mark.parametrize("command", [("run", "--no-wait"), ("status",), ("status", "--json"), ("search", "x")])
def test_a_server_that_drops_every_connection_is_one_sentence(tmp_path: Path, sandbox: Sandbox, url: str,
                                                             dropping_server: int,
                                                             command: tuple[str, ...]) -> None:
    """``[state] url`` names a port where something accepts the connection and drops it at once: every
    command says the shared state cannot be reached, in one sentence, soon — no traceback, no hang."""
    env = site(tmp_path, sandbox, f"postgresql+psycopg://{USER}@127.0.0.1:{dropping_server}/packsync", "laptop")
    write(env.map("brand", pack="Brand Assets") / "x.png", image())

    ran = env.cli(*command, timeout=90)

    output = ran.stdout + ran.stderr
    one_sentence(output)
    assert ran.returncode == 2, output
    assert "cannot be reached" in output, output


def test_a_verbose_run_and_status_never_show_the_password(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    """``-v`` logs the libraries' own records too (SQLAlchemy's, psycopg's): the database password must be
    in none of them, nor in ``status --json``."""
    env = site(tmp_path, sandbox, url, "laptop")
    write(env.map("brand", pack="Brand Assets") / "x.png", image())

    outputs = [env.cli("-v", "run", "--no-wait"), env.cli("-v", "status", "--json"), env.cli("-v", "search", "x")]

    for ran in outputs:
        assert ran.returncode == 0, ran.stdout + ran.stderr
        one_sentence(ran.stdout + ran.stderr)


def test_search_shows_the_path_of_another_site_s_file(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    """The NAS syncs ``summer/beach_day.png``; the laptop's ``search beach --json`` finds it. Its ``paths``
    must name that file (on the NAS: ``nas:<folder>/summer/beach_day.png``), as they do for the laptop's own
    files — not a made-up "<mapping> <image name>" that loses the subfolder."""
    laptop, nas = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    folder = nas.map("brand", pack="Brand Assets")
    write(folder / "summer" / "beach_day.png", image())
    write(laptop.map("mine", pack="Brand Assets") / "snow.png", image())
    assert nas.sync().exit_code == 0 and laptop.sync().exit_code == 0

    found = laptop.cli("search", "beach", "--json")

    assert found.returncode == 0, found.stderr
    [hit] = json.loads(found.stdout)["results"]
    assert hit["paths"] == [f"nas:{folder}/summer/beach_day.png"], hit


def test_a_second_packsync_of_a_running_site_is_refused_once_it_is_back_after_a_server_restart(
        tmp_path: Path, sandbox: Sandbox, server: PostgresServer, url: str) -> None:
    """The NAS's daemon runs; the database server restarts (an upgrade, a crash), which ends the session that
    held the site's lock. Once the daemon is back at work (its next statement makes a new connection and
    takes the lock again), a copy of the NAS's config on another machine is refused — one packsync per
    site. (Between the restart and that statement, a copy could get in: its pack writes still wait for
    the leases; docs/shared-state.md says so.)"""
    first = site(tmp_path, sandbox, url, "nas")
    write(first.map("brand", pack="Brand Assets") / "x.png", image())
    daemon = start_daemon(first)
    try:
        wait_until(lambda: sandbox.packs() and sandbox.packs()[0]["image_count"] == 1, timeout=60,
                   what="the first machine's image")
        server.stop()
        server.start()
        # Through the daemon: its sync makes a new connection and takes the lock again (the first statement on
        # the connection the restart dropped fails, "cannot be reached": the one after it reconnects).
        wait_until(lambda: first.cli("sync").returncode == 0, timeout=60, what="the daemon syncing again")
        copy = site(tmp_path / "other-machine", sandbox, url, "nas")
        write(copy.map("brand", pack="Brand Assets") / "y.png", image())

        ran = copy.cli("run", "--no-wait")

        output = ran.stdout + ran.stderr
        one_sentence(output)
        assert ran.returncode == 2, output
        assert "another packsync" in output, output
    finally:
        daemon.close()


def test_a_machine_renamed_can_still_delete_what_it_added(tmp_path: Path, sandbox: Sandbox, server: PostgresServer,
                                                         url: str) -> None:
    """A laptop syncs x and y into "Brand Assets" as site "laptop" — the default site is the host name — and
    is then renamed "laptop2" (a new host name, or ``[state] site`` set). Its folder and config are the
    same. Once it has forgotten its old name (``packsync state forget-site laptop``), deleting x must take
    x out of the pack: nothing else mirrors into it. Nothing else is deleted, nothing added twice."""
    laptop = site(tmp_path, sandbox, url, "laptop")
    folder = laptop.map("brand", pack="Brand Assets")
    write(folder / "x.png", x := image())
    write(folder / "y.png", y := image())
    assert laptop.sync().exit_code == 0
    pack_id = laptop.pack_named("Brand Assets")["id"]

    laptop.state["site"] = "laptop2"
    laptop.write_config()
    assert laptop.sync().exit_code == 0
    assert contents(laptop, pack_id) == sorted(map(sha, (x, y)))  # (nothing added twice either)
    with connect(server, url) as connection:  # (the rename was a while ago: "laptop" has not been heard from since)
        connection.execute("UPDATE sites SET seen_at = seen_at - 3600 WHERE name = 'laptop'")
    forgot = laptop.cli("state", "forget-site", "laptop")
    one_sentence(forgot.stdout + forgot.stderr)
    assert forgot.returncode == 0, forgot.stderr
    (folder / "x.png").unlink()
    assert laptop.sync().exit_code == 0

    assert contents(laptop, pack_id) == [sha(y)], "x stays: held by the site's old name"
    assert laptop.sync().exit_code == 0
    assert contents(laptop, pack_id) == [sha(y)]  # (y kept, and not added again)
