"""The pack resolver: which pack a mapping syncs into, as the state remembers it and the API shows it."""

from __future__ import annotations

import asyncio
import json

from conftest import TOKEN, Env, image, write
from helpers import StartDaemon, wait_until

from packsync.app import client_for, open_app, transport_for
from packsync.config import Config
from packsync.errors import ExitCode


def packs_polled(config: Config) -> list[str]:
    """The packs the daemon's metadata polling would read for ``config``."""

    async def read() -> list[str]:
        async with open_app(config, TOKEN) as app:
            return app.syncer.mapped_pack_ids()

    return asyncio.run(read())


def test_a_renamed_pack_in_the_config_is_no_longer_the_mapping_s_pack(env: Env) -> None:
    """The state remembers "Old" for the folder; once the config says "New", nothing — metadata
    polling, status — may still treat "Old" as the mapping's pack."""
    write(env.map("brand", pack="Old") / "a.png", image())
    env.sync()
    old_id = env.pack_named("Old")["id"]
    assert packs_polled(env.config()) == [old_id]

    env.mappings[0]["pack"] = "New"
    env.write_config()

    assert packs_polled(env.config()) == []
    status = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]
    assert (status["pack_id"], status["pack_name"], status["images"]) == (None, "New", 0)

    env.sync()
    new_id = env.pack_named("New")["id"]
    assert packs_polled(env.config()) == [new_id] and new_id != old_id


def test_a_pack_created_after_a_lost_answer_is_created_once(env: Env) -> None:
    """``POST /packs`` answered 500 after the pack was made: the resolver finds it instead of making another."""
    write(env.map("brand", pack="Fresh") / "a.png", image())
    env.sandbox.inject("500-after", method="POST", route="/packs")

    report = env.sync()

    assert report.exit_code == 0
    assert env.pack_named("Fresh")["image_count"] == 1


def test_list_packs_reads_every_page(env: Env) -> None:
    for i in range(230):
        env.sandbox.create_pack(f"pack {i:03}")

    async def read() -> list[str]:
        async with transport_for(env.config()) as transport:
            return [p.name for p in await client_for(env.config(), TOKEN, transport).list_packs()]

    names = asyncio.run(read())

    assert sorted(names) == [f"pack {i:03}" for i in range(230)]
    assert env.sandbox.calls[("GET", "/packs")] == 3


def test_packs_json_lists_every_pack_of_the_key_with_its_count(env: Env) -> None:
    brand = env.sandbox.create_pack("Brand Assets")
    write(env.map("brand", pack_id=brand) / "a.png", image())
    env.sync()

    listed = env.cli("packs", "--json")

    assert listed.returncode == 0, listed.stderr
    packs = {p["id"]: p for p in json.loads(listed.stdout)["packs"]}
    assert packs[brand]["name"] == "Brand Assets" and packs[brand]["images"] == 1
    assert packs[brand]["public"] is False and packs[brand]["created_at"]


def test_a_pack_s_notice_is_said_in_the_run_that_found_it_only(env: Env) -> None:
    """The daemon syncs with one resolver for ever: a pack found gone is said in that run's report, not in
    every later one."""
    from packsync.engine.sync import SyncOptions

    write(env.map("brand", pack="Brand") / "a.png", image())
    env.sync()
    env.sandbox.delete_pack(env.pack_named("Brand")["id"])

    async def two_runs() -> list[str | None]:
        async with open_app(env.config(), TOKEN) as app:
            notices = []
            for _ in range(2):
                report = await app.syncer.sync(SyncOptions(wait=False))
                notices.append(report.mappings[0].notice)
            return notices

    first, second = asyncio.run(two_runs())

    assert first is not None and "is gone (deleted in the web app?)" in first
    assert second is None


def test_a_pack_id_the_key_cannot_see_is_a_config_error_and_the_other_mappings_sync(env: Env) -> None:
    """A ``pack_id`` that is no pack of the key (404) is a mistake in the config: ``run`` exits 2 with a
    sentence naming the key and pointing at ``packsync packs``; the other mappings sync all the same."""
    write(env.map("brand", pack="Brand") / "a.png", image())
    write(env.map("wrong", pack_id="0b5d0d3e-0000-4000-8000-00000000dead") / "b.png", image())

    result = env.cli("run", "--no-wait")

    said = ("mappings[1].pack_id: no pack 0b5d0d3e-0000-4000-8000-00000000dead is visible to this key (404); "
            "`packsync packs` lists the key's packs.")
    assert result.returncode == ExitCode.USAGE, result.stdout + result.stderr
    assert said in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert env.pack_named("Brand")["image_count"] == 1
    closing = result.stdout.rstrip().rpartition("\n")[2]
    assert closing == f"run: 1 added, 0 deleted, 0 skipped, 0 failed — exit 2: {said}"
    # status names the pack it never read by its id, once
    assert f"{env.root / 'wrong'} → pack 0b5d0d3e-0000-4000-8000-00000000dead\n" in env.cli("status").stdout


def test_the_daemon_says_a_pack_id_the_key_cannot_see_and_syncs_the_other_mappings(daemon_env: Env,
                                                                                  start: StartDaemon) -> None:
    wrong = "0b5d0d3e-0000-4000-8000-00000000beef"
    write(daemon_env.map("wrong", pack_id=wrong) / "b.png", image())
    folder = daemon_env.map("brand", pack="Brand")
    write(folder / "a.png", image())
    daemon = start()

    write(folder / "later.png", image())
    wait_until(lambda: daemon_env.pack_named("Brand")["image_count"] == 2, timeout=15)
    status = json.loads(daemon_env.cli("status", "--json", token=None).stdout)

    assert daemon.proc.poll() is None, daemon.output()
    assert status["mappings"][0]["last_error"] == (
        f"mappings[0].pack_id: no pack {wrong} is visible to this key (404); `packsync packs` lists the key's packs.")
