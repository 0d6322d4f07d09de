"""A mapping whose scan, pack and records are those of its last plan with nothing to do is not planned
again — and every change to any of them is still seen."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from conftest import Env, image, write
from helpers import state_rows

from packsync.engine.sync import SyncReport


def settle(env: Env, runs: int = 2) -> list[SyncReport]:
    """Sync until the mapping is a mirror with its AI metadata in, and that has been noted (the first
    plan with nothing to do)."""
    return [env.sync(wait=True) for _ in range(runs)]


def settled_file(env: Env) -> tuple[str, Path]:
    """A pack mirroring a folder of one file, settled; its id and the file."""
    pack_id = env.sandbox.create_pack("p")
    path = write(env.map("brand", pack_id=pack_id) / "a.png", image())
    settle(env)
    return pack_id, path


def one(report: SyncReport) -> tuple[bool, int, int]:
    mapping = report.mappings[0]
    assert mapping.plan is not None and mapping.outcome is not None, mapping.fatal
    return mapping.unchanged, mapping.outcome.added, mapping.outcome.deleted


def test_an_unchanged_mapping_is_not_planned_again(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for i in range(3):
        write(folder / f"{i}.png", image())

    first, second, third = settle(env, 3)

    assert [one(r) for r in (first, second, third)] == [(False, 3, 0), (False, 0, 0), (True, 0, 0)]
    assert third.mappings[0].pack_id == pack_id and third.mappings[0].pack_name == "p"
    assert env.pack(pack_id)["image_count"] == 3


def test_an_image_deleted_in_the_web_app_is_added_again(env: Env) -> None:
    pack_id, path = settled_file(env)
    env.sandbox.remove_image(pack_id, env.pack(pack_id)["images"][0]["id"])

    assert one(env.sync()) == (False, 1, 0)
    assert sorted(env.cdn_bytes(pack_id)) == [path.read_bytes()]


def test_a_file_changed_in_place_is_uploaded(env: Env) -> None:
    pack_id, path = settled_file(env)
    write(path, image())

    assert one(env.sync()) == (False, 1, 1)
    assert sorted(env.cdn_bytes(pack_id)) == [path.read_bytes()]


def test_a_record_lost_from_the_state_is_found_again(env: Env) -> None:
    """The state restored from an older backup: the pack and the folder are as before, the records not."""
    pack_id, _ = settled_file(env)
    with sqlite3.connect(env.state_path) as db:
        db.execute("DELETE FROM images")
    env.sandbox.reset_calls()

    report = env.sync()

    mapping = report.mappings[0]
    assert not mapping.unchanged and mapping.plan is not None and len(mapping.plan.adopts) == 1
    assert env.sandbox.calls[("POST", "/packs/{id}/images")] == 0 and env.pack(pack_id)["image_count"] == 1
    assert state_rows(env.state_path, "SELECT count(*) FROM images") == [(1,)]


def test_a_changed_setting_is_planned(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    foreign = env.sandbox.add_image(pack_id, "https://cdn.example.com/from-web-app.jpg", "web.jpg")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    assert one(settle(env, 3)[-1]) == (True, 0, 0)

    env.mappings[0]["prune_foreign"] = True

    assert one(env.sync()) == (False, 0, 1)
    assert foreign not in [i["id"] for i in env.pack(pack_id)["images"]]


def test_a_dry_run_notes_nothing(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    env.sync(wait=True)
    before = _settled(env.state_path)

    env.sync(dry_run=True)

    assert _settled(env.state_path) == before == []
    assert one(env.sync())[0] is False, "a dry run's empty plan is not taken as the mapping settled"


def _settled(state: Path) -> list[tuple[str, str]]:
    return state_rows(state, "SELECT root, fingerprint FROM settled")


def test_a_state_that_cannot_count_its_changes_is_always_planned(env: Env) -> None:
    """Without its count (a state edited by hand), a change could go unseen: no shortcut then."""
    settled_file(env)
    with sqlite3.connect(env.state_path) as db:
        db.execute("DELETE FROM changes")

    assert one(env.sync())[0] is False
    assert one(env.sync())[0] is False


def test_an_unchanged_folder_still_reports_its_bad_files(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    (folder / "empty.png").write_bytes(b"")

    third = settle(env, 3)[-1].mappings[0]

    assert third.unchanged
    assert [(p.rel_path, p.reason) for p in third.problems] == [("empty.png", "empty file")]


def test_an_unchanged_folder_is_recognised_by_its_walk_alone(env: Env) -> None:
    """Every file is still `stat`ed, but a settled folder whose walk sees what it saw then needs nothing
    else from its files: not its file cache, not a byte of them."""
    pack_id, path = settled_file(env)
    with closing(sqlite3.connect(env.state_path)) as db, db:
        db.execute("DELETE FROM files")

    report = env.sync().mappings[0]
    assert report.unchanged and report.hashed_files == 0

    path.write_bytes(image())  # and a change is still a change
    assert one(env.sync()) == (False, 1, 1)
    assert sorted(env.cdn_bytes(pack_id)) == [path.read_bytes()]


def test_an_unchanged_folder_reports_the_problems_of_the_scan_it_settled_on(env: Env) -> None:
    """A run between that did not settle (here a safety stop) recorded other problems; the folder then
    back as it was must report its own bad file again, not that run's."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, max_delete=0)
    write(folder / "a.png", image())
    (folder / "empty.png").write_bytes(b"")
    settle(env)
    away = env.root / "away"
    away.mkdir()
    for name in ("a.png", "empty.png"):  # moved, not copied: the same stat keys when they come back
        (folder / name).rename(away / name)
    (folder / "broken.png").write_bytes(b"")

    stopped = env.sync().mappings[0]
    assert stopped.safety and [p.rel_path for p in stopped.problems] == ["broken.png"]

    (folder / "broken.png").unlink()
    for name in ("a.png", "empty.png"):
        (away / name).rename(folder / name)
    back = env.sync().mappings[0]
    assert [(p.rel_path, p.reason) for p in back.problems] == [("empty.png", "empty file")]
    assert env.sandbox.calls[("POST", "/packs/{id}/images")] == 1 and env.pack(pack_id)["image_count"] == 1
