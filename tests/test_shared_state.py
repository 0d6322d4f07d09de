"""A state shared by several machines (sites) on a real PostgreSQL: content shared across sites, nothing
duplicated or deleted while any site holds it, each site's own records its own.

Each site is an ``Env`` of its own (its folders, its config, its local state folder) on one sandbox, with
``[state] url`` naming one database of a real server started for this module (``tests/postgres.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from conftest import TOKEN, Env, image, site, write
from helpers import DaemonProcess, wait_until
from postgres import PASSWORD, PostgresServer, missing
from test_web import page_url

from packsync.app import open_app
from packsync.config import SharedState
from packsync.engine.leases import meta_key
from packsync.model import CachedFile
from packsync.sandbox import Sandbox
from packsync.state.store import State

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no PostgreSQL here: {missing()}")


def contents(env: Env, pack_id: str) -> list[str]:
    """The hash of each image's bytes in the pack, in pack order (a duplicate shows twice)."""
    return sorted(hashlib.sha256(data).hexdigest() for data in env.cdn_bytes(pack_id))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_two_sites_mirror_the_union_and_keep_what_either_holds(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    x, y, z = image(), image(), image()
    folder_a, folder_b = a.map("brand", pack="Brand Assets"), b.map("brand", pack="Brand Assets")
    write(folder_a / "x.png", x)
    write(folder_a / "y.png", y)
    write(folder_b / "y-copy.png", y)
    write(folder_b / "z.png", z)

    assert a.sync().exit_code == 0
    report = b.sync()
    assert report.exit_code == 0
    pack_id = a.pack_named("Brand Assets")["id"]
    assert contents(a, pack_id) == sorted(map(sha, (x, y, z)))  # the union, y once
    assert sandbox.calls[("POST", "/files")] == 3  # y was uploaded once, for both sites

    (folder_a / "y.png").unlink()  # laptop lets y go; nas still holds it: it stays
    assert a.sync().exit_code == 0
    assert contents(a, pack_id) == sorted(map(sha, (x, y, z)))
    assert b.sync().exit_code == 0
    assert contents(a, pack_id) == sorted(map(sha, (x, y, z)))

    (folder_b / "y-copy.png").unlink()  # now no site holds y: it goes
    assert b.sync().exit_code == 0
    assert contents(a, pack_id) == sorted(map(sha, (x, z)))
    assert a.sync().exit_code == 0 and b.sync().exit_code == 0  # and nothing more happens on either
    assert contents(a, pack_id) == sorted(map(sha, (x, z)))


def start_run(env: Env) -> subprocess.Popen[str]:
    """``packsync run`` of a site, as its own process (started, not waited for)."""
    environment = {**os.environ, "GENVIRAL_TOKEN": TOKEN}
    return subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "run", "--no-wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)


def test_first_syncs_of_two_sites_at_once_add_each_content_once(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    sandbox.faults.latency_s = 0.04  # (a real API's pace: both runs are mid-sync together)
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    shared = [image() for _ in range(6)]
    folder_a, folder_b = a.map("brand", pack="Brand Assets"), b.map("brand", pack="Brand Assets")
    for n, data in enumerate(shared):
        write(folder_a / f"{n}.png", data)
        write(folder_b / f"copy-{n}.png", data)
    only_a, only_b = image(), image()
    write(folder_a / "a.png", only_a)
    write(folder_b / "b.png", only_b)

    runs = [start_run(a), start_run(b)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0], outputs
    pack_id = a.pack_named("Brand Assets")["id"]  # (one pack: not one created by each)
    assert contents(a, pack_id) == sorted(map(sha, (*shared, only_a, only_b)))
    assert TOKEN not in "".join(outputs) and PASSWORD not in "".join(outputs)


def test_a_site_rides_out_its_database_going_away_and_catches_up(tmp_path: Path, sandbox: Sandbox,
                                                                   server: PostgresServer, url: str) -> None:
    env = site(tmp_path, sandbox, url, "studio")
    env.genviral["concurrency"] = 8
    env.daemon.update(debounce_s=0.3, rescan_interval_s=3600)
    env.http["listen"] = "127.0.0.1:0"
    folder = env.map("brand", pack="Brand Assets")
    write(folder / "one.png", image())
    env.write_config()
    environment = {**os.environ, "GENVIRAL_TOKEN": TOKEN, "WATCHDOG_USEC": "2000000"}
    daemon = DaemonProcess([sys.executable, "-m", "packsync", "-c", str(env.config_path), "daemon"], environment,
                           env.root)
    try:
        daemon.wait_ready()
        wait_until(lambda: len(sandbox.packs()) == 1 and sandbox.packs()[0]["image_count"] == 1, timeout=30,
                   what="the first image in the pack")
        base = page_url(daemon)
        server.stop()
        try:
            write(folder / "two.png", image())  # seen by the watcher while the database is away
            wait_until(lambda: httpx2.get(base + "healthz").json()["status"] == "degraded", timeout=30,
                       what="/healthz saying degraded")
            assert sandbox.packs()[0]["image_count"] == 1  # nothing is written while the state cannot be
        finally:
            server.start()
        wait_until(lambda: sandbox.packs()[0]["image_count"] == 2, timeout=60, what="the change synced after")
        wait_until(lambda: httpx2.get(base + "healthz").json()["status"] == "ok", timeout=30, what="/healthz ok")
        log = daemon.output()
        assert log.count("cannot be reached") == 1, log[-3000:]  # said once, not at every retry
        assert PASSWORD not in log and TOKEN not in log
    finally:
        daemon.close()


def test_a_site_killed_holding_the_pack_is_taken_over_after_its_lease(tmp_path: Path, sandbox: Sandbox,
                                                                      url: str) -> None:
    sandbox.faults.latency_s = 0.05
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    for env in (a, b):
        env.state["lease_s"] = 5
        env.genviral["concurrency"] = 2
    shared = [image() for _ in range(30)]
    folder_a, folder_b = a.map("brand", pack="Brand Assets"), b.map("brand", pack="Brand Assets")
    for n, data in enumerate(shared):
        write(folder_a / f"{n}.png", data)
        write(folder_b / f"{n}.png", data)
    write(folder_b / "b.png", only_b := image())

    first = start_run(a)
    wait_until(lambda: sandbox.packs() and sandbox.packs()[0]["image_count"] >= 3, timeout=60,
               what="laptop's sync under way")
    first.kill()  # SIGKILL: its lease is neither released nor renewed
    first.wait()
    killed_at = time.monotonic()
    second = start_run(b)
    output = second.communicate(timeout=120)[0]

    assert second.returncode == 0, output
    assert time.monotonic() - killed_at < 5 + 30  # the lease time, plus one sync
    pack_id = a.pack_named("Brand Assets")["id"]
    assert contents(a, pack_id) == sorted(map(sha, (*shared, only_b)))  # every content once


def test_search_on_one_site_finds_what_another_site_synced(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    write(a.map("brand", pack="Brand Assets") / "summer/beach_day.png", image())
    write(b.map("brand", pack="Brand Assets") / "winter/snow.png", image())
    assert a.sync().exit_code == 0 and b.sync().exit_code == 0

    found = b.cli("search", "summer", "beach", "--json")

    assert found.returncode == 0, found.stderr
    document = json.loads(found.stdout)
    assert [hit["file_name"] for hit in document["results"]] == ["beach_day.png"], document
    assert document["results"][0]["mapping"] == "laptop:" + str(tmp_path / "laptop" / "brand")  # another site's
    assert b.cli("search", "snow").stdout.count("snow.png") == 1


def health(daemon: DaemonProcess) -> str:
    """What the daemon's /healthz says."""
    return str(httpx2.get(page_url(daemon) + "healthz").json()["status"])


def start_daemon(env: Env) -> DaemonProcess:
    env.genviral["concurrency"] = 4
    env.daemon.update(debounce_s=0.3, rescan_interval_s=3600)
    env.write_config()
    environment = {**os.environ, "GENVIRAL_TOKEN": TOKEN, "WATCHDOG_USEC": "2000000"}
    daemon = DaemonProcess([sys.executable, "-m", "packsync", "-c", str(env.config_path), "daemon"], environment,
                           env.root)
    daemon.wait_ready()
    return daemon


def test_two_sites_resume_after_their_database_stops_mid_sync(tmp_path: Path, sandbox: Sandbox,
                                                               server: PostgresServer, url: str) -> None:
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    folder_a, folder_b = a.map("brand", pack="Brand Assets"), b.map("brand", pack="Brand Assets")
    write(folder_a / "seed.png", seed := image())
    daemons = [start_daemon(a), start_daemon(b)]
    try:
        wait_until(lambda: sandbox.packs() and sandbox.packs()[0]["image_count"] == 1, timeout=30,
                   what="the seed image")
        sandbox.faults.latency_s = 0.05  # (each add takes a while: the database goes while they are under way)
        batch_a, batch_b = [image() for _ in range(15)], [image() for _ in range(15)]
        for n, (one, two) in enumerate(zip(batch_a, batch_b, strict=True)):
            write(folder_a / f"a{n}.png", one)
            write(folder_b / f"b{n}.png", two)
            write(folder_b / f"shared{n}.png", one)  # nas holds laptop's too
        wait_until(lambda: sandbox.packs()[0]["image_count"] >= 4, timeout=30, what="the syncs under way")
        server.stop()
        try:  # both see it (the syncs under way fail and wait; the watchers go on)
            wait_until(lambda: all(health(daemon) == "degraded" for daemon in daemons), timeout=30,
                       what="each site degraded")
        finally:
            server.start()
        expected = sorted(map(sha, (seed, *batch_a, *batch_b)))
        wait_until(lambda: contents(a, sandbox.packs()[0]["id"]) == expected, timeout=120,
                   what="the union, each content once")
        wait_until(lambda: all(health(daemon) == "ok" for daemon in daemons), timeout=60,
                   what="each site healthy again")
    finally:
        for daemon in daemons:
            daemon.close()
    assert contents(a, sandbox.packs()[0]["id"]) == expected  # and nothing more since


def test_a_site_keeps_its_xmp_sidecars_in_the_shared_state(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    """A sidecar's row holds nanosecond times: they fit the shared state's columns (they did not, once)."""
    env = site(tmp_path, sandbox, url, "studio")
    write(env.map("brand", pack="Brand Assets", sidecars="xmp") / "a.png", image())

    assert env.sync(wait=True).exit_code == 0
    assert env.sync(wait=True).exit_code == 0

    assert b"<x:xmpmeta" in (tmp_path / "studio" / "brand" / "a.png.xmp").read_bytes()


def test_a_pack_named_on_one_site_and_given_by_id_on_another_is_synced_by_one_at_a_time(
        tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    """The name and the id are two leases: the pack a name resolves to is held too, before its plan."""
    sandbox.faults.latency_s = 0.04
    pack_id = sandbox.create_pack("Brand Assets")
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    shared = [image() for _ in range(6)]
    folder_a, folder_b = a.map("brand", pack="Brand Assets"), b.map("brand", pack_id=pack_id)
    for n, data in enumerate(shared):
        write(folder_a / f"{n}.png", data)
        write(folder_b / f"copy-{n}.png", data)

    runs = [start_run(a), start_run(b)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0], outputs
    assert contents(a, pack_id) == sorted(map(sha, shared))


def test_a_pack_s_metadata_is_polled_by_one_site_for_all(tmp_path: Path, sandbox: Sandbox, url: str) -> None:
    """Two sites' metadata rounds over the same pack at the same moment: one reads the pack, the other leaves
    it to that one (its ``meta:`` lease), and both see the metadata it recorded."""
    a, b = site(tmp_path, sandbox, url, "laptop"), site(tmp_path, sandbox, url, "nas")
    write(a.map("brand", pack="Brand Assets") / "x.png", data := image())
    write(b.map("brand", pack="Brand Assets") / "x-copy.png", data)
    assert a.sync().exit_code == 0 and b.sync().exit_code == 0
    pack_id = a.pack_named("Brand Assets")["id"]
    wait_until(lambda: a.pack(pack_id)["images"][0]["metadata"]["status"] == "completed", timeout=30,
               what="the pack's metadata ready")
    reads = sandbox.calls[("GET", "/packs/{id}")]

    async def both() -> None:
        async with open_app(a.config(), TOKEN) as laptop, open_app(b.config(), TOKEN) as nas:
            async with laptop.syncer.leases.hold([meta_key(pack_id)]):  # laptop's round, under way
                await nas.syncer.metadata_round([pack_id])
                assert sandbox.calls[("GET", "/packs/{id}")] == reads, "nas left the pack to laptop"
            await laptop.syncer.metadata_round([pack_id])
            assert sandbox.calls[("GET", "/packs/{id}")] == reads + 1

    asyncio.run(both())
    [laptop] = json.loads(a.cli("status", "--json", "--files").stdout)["mappings"]
    assert laptop["metadata"]["completed"] == 1, laptop  # (recorded by laptop's round, for both sites)
    [nas] = json.loads(b.cli("status", "--json", "--files").stdout)["mappings"]
    assert [f["state"] for f in nas["file_list"]] == ["synced"], nas  # (its content: laptop's image)


@pytest.mark.parametrize("label", ["astria:12", "astria-tune:12", "/srv/brand"])
def test_each_site_s_own_labels_are_qualified_whatever_kind_of_source_they_name(tmp_path: Path, url: str,
                                                                                label: str) -> None:
    """A label of this site's — a folder's path, or ``<kind>:<id>`` for a source of any kind, not only the
    kinds packsync knew when the rule was written — is stored qualified by the site (``nas:astria-tune:12``)
    and read back as the label: two sites mirroring the same tune keep their records apart, and each sees
    the other's mapping as that site's. A key already qualified (another site's) is left as it is."""
    nas = State(tmp_path / "nas.db", shared=SharedState(url, PASSWORD, "nas"))
    laptop = State(tmp_path / "laptop.db", shared=SharedState(url, PASSWORD, "laptop"))
    try:
        for state, version in ((nas, "n"), (laptop, "l")):
            item = CachedFile(version, 1, sha(version.encode()), "image/png", None)
            state.files.save_cache(label, {}, {"a.png": item})
            state.mappings.save(label, pack_id=f"pack-{version}")

        assert nas.files.cache(label)["a.png"].version == "n" and laptop.files.cache(label)["a.png"].version == "l"
        assert (record := nas.mappings.get(label)) is not None and (record.root, record.pack_id) == (label, "pack-n")
        assert [(m.site, m.record.root, m.record.pack_id) for ms in laptop.mappings.of_sites().values()
                for m in ms] == [("nas", label, "pack-n")]
        assert nas.unit.key(label) == f"nas:{label}" and laptop.unit.key(f"nas:{label}") == f"nas:{label}"
    finally:
        nas.close()
        laptop.close()
