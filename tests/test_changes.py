"""A sync of the paths the daemon saw change (``engine/changes.py``): only those paths scanned, only the
contents they touch planned, no pack read — and the same adds, deletes and safety stops as a full sync."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

from conftest import Env, image, write
from helpers import state_rows

from packsync.engine.actions import RecordPaths
from packsync.state.store import State

PACK_READ = ("GET", "/packs/{id}")
ADD = ("POST", "/packs/{id}/images")


def synced(env: Env, count: int, **options: Any) -> tuple[Path, str]:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("pics", pack_id=pack_id, **options)
    for n in range(count):
        write(folder / f"{n:02}.png", image())
    assert env.sync().exit_code == 0
    assert len(env.pack(pack_id)["images"]) == count
    env.sandbox.reset_calls()
    return folder, pack_id


def assert_a_full_sync_agrees(env: Env) -> None:
    plan = env.sync().mappings[0].plan
    assert plan and (plan.adds, plan.deletes, plan.withheld) == ([], [], [])


def test_a_file_dropped_in_is_added_from_its_path_alone(env: Env) -> None:
    folder, pack_id = synced(env, 3)
    write(folder / "sub/new.png", image())

    report = env.sync_changed(folder, ["sub"])

    assert report.mappings[0].hashed_files == 1
    assert report.mappings[0].outcome and report.mappings[0].outcome.added == 1
    assert len(env.pack(pack_id)["images"]) == 4
    assert env.sandbox.calls[PACK_READ] == 0, "the pack is taken as recorded: the full rescan reads it"
    assert_a_full_sync_agrees(env)


def test_a_file_removed_has_its_image_deleted_unless_another_file_holds_it(env: Env) -> None:
    folder, pack_id = synced(env, 4)
    shutil.copy(folder / "01.png", folder / "copy.png")
    env.sync_changed(folder, ["copy.png"])
    (folder / "00.png").unlink()
    (folder / "01.png").unlink()

    report = env.sync_changed(folder, ["00.png", "01.png"])

    outcome = report.mappings[0].outcome
    assert outcome and (outcome.added, outcome.deleted) == (0, 1)
    assert len(env.pack(pack_id)["images"]) == 3
    assert_a_full_sync_agrees(env)


def test_a_rename_moves_nothing(env: Env) -> None:
    folder, _pack_id = synced(env, 2)
    (folder / "00.png").rename(folder / "renamed.png")

    report = env.sync_changed(folder, ["00.png", "renamed.png"])

    plan = report.mappings[0].plan
    assert plan and (plan.adds, plan.deletes) == ([], [])


def test_max_delete_is_a_share_of_the_whole_mapping(env: Env) -> None:
    """3 of 10 files removed, max_delete = 50%: 3 ≤ 5, as a full sync counts, never 3 > 50% of 3."""
    folder, pack_id = synced(env, 10)
    for n in range(3):
        (folder / f"{n:02}.png").unlink()

    report = env.sync_changed(folder, [f"{n:02}.png" for n in range(3)])

    assert report.mappings[0].safety is None
    assert len(env.pack(pack_id)["images"]) == 7


def test_more_deletes_than_max_delete_allows_are_withheld(env: Env) -> None:
    folder, pack_id = synced(env, 10, max_delete=2)
    for n in range(3):
        (folder / f"{n:02}.png").unlink()

    report = env.sync_changed(folder, [f"{n:02}.png" for n in range(3)])

    assert report.mappings[0].safety and "more than max_delete allows" in report.mappings[0].safety
    assert len(env.pack(pack_id)["images"]) == 10


def test_a_withheld_share_is_said_as_the_user_set_it(env: Env) -> None:
    """The stop names the share of the whole mapping (``20%`` of 10: at most 2), as a full sync says it."""
    folder, _pack_id = synced(env, 10, max_delete="20%")
    for n in range(3):
        (folder / f"{n:02}.png").unlink()

    report = env.sync_changed(folder, [f"{n:02}.png" for n in range(3)])

    assert report.mappings[0].safety and "(20% of the 10 images it may delete here: at most 2)" in \
        report.mappings[0].safety


def test_a_standing_safety_stop_is_not_lifted_by_a_sync_of_other_paths(env: Env) -> None:
    """A full scan withheld deletes; a file dropped in later is synced by a full scan, which keeps the stop
    (and says so) rather than a plan of the new file alone, which would record the mapping as fine."""
    folder, pack_id = synced(env, 10, max_delete=2)
    for n in range(3):
        (folder / f"{n:02}.png").unlink()
    assert env.sync().mappings[0].safety
    write(folder / "new.png", image())

    report = env.sync_changed(folder, ["new.png"])

    assert report.mappings[0].safety and "more than max_delete allows" in report.mappings[0].safety
    assert state_rows(env.state_path, "SELECT safety IS NOT NULL FROM mappings WHERE root = ?", str(folder)) == \
        [(1,)]
    assert len(env.pack(pack_id)["images"]) == 11, "the new file is added; nothing is deleted"


def test_a_folder_removed_takes_its_images_and_an_emptied_mapping_is_left_to_the_full_scan(env: Env) -> None:
    folder, pack_id = synced(env, 1, max_delete="100%")
    for n in range(2):
        write(folder / f"sub/{n}.png", image())
    env.sync_changed(folder, ["sub"])
    assert len(env.pack(pack_id)["images"]) == 3
    shutil.rmtree(folder / "sub")

    env.sync_changed(folder, ["sub"])
    assert len(env.pack(pack_id)["images"]) == 1
    (folder / "00.png").unlink()

    emptied = env.sync_changed(folder, ["00.png"])
    assert emptied.mappings[0].safety and "is empty" in emptied.mappings[0].safety
    assert env.sandbox.calls[PACK_READ] == 1, "the full scan reads the pack"


def test_a_changed_packsyncignore_is_a_full_scan(env: Env) -> None:
    folder, pack_id = synced(env, 2)
    (folder / ".packsyncignore").write_text("01.png\n", encoding="utf-8")

    env.sync_changed(folder, [".packsyncignore"])

    assert env.sandbox.calls[PACK_READ] == 1
    assert len(env.pack(pack_id)["images"]) == 1


def test_a_daemon_sync_of_one_dropped_file_lists_no_folder_and_records_that_path_alone(env: Env) -> None:
    """One file dropped into a synced folder: its sync stats that file and lists no folder (a full walk
    lists every one), and the file cache changes at that path alone, by a ``record-paths`` action the
    executor runs."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("pics", pack_id=pack_id)
    for rel in ("a/0.png", "b/1.png", "2.png"):
        write(folder / rel, image())
    env.sync()
    before = recorded(env, folder)
    data = image()
    write(folder / "new.png", data)
    listed: list[object] = []
    watching = [False]

    def audit(event: str, args: tuple[object, ...]) -> None:
        if watching[0] and event in ("os.scandir", "os.listdir") and str(args[0]).startswith(str(folder)):
            listed.append(args[0])

    sys.addaudithook(audit)  # (a hook cannot be removed: ``watching`` ends it)
    watching[0] = True
    try:
        report = env.sync_changed(folder, ["new.png"])
    finally:
        watching[0] = False

    assert listed == []
    mapping = report.mappings[0]
    assert mapping.outcome and mapping.outcome.added == 1
    assert len(env.pack(pack_id)["images"]) == 4
    assert mapping.plan and [a.kind for a in mapping.plan.actions if a.kind.startswith("record-")] == [
        "record-paths", "record-sync"]
    (record,) = mapping.plan.of(RecordPaths)
    assert (record.scope, list(record.cache), record.previous) == (("new.png",), ["new.png"], {})
    after = recorded(env, folder)
    assert after.pop("new.png").sha256 == hashlib.sha256(data).hexdigest()
    assert after == before, "no other record is written"


def recorded(env: Env, folder: Path) -> dict[str, Any]:
    state = State(env.state_path, readonly=True)
    try:
        return state.files.cache(str(folder))
    finally:
        state.close()


def test_a_subfolder_replaced_under_its_name_is_synced_whole(env: Env, tmp_path: Path) -> None:
    """The daemon names the subfolder itself (a folder moved away, another moved in under its name): that
    subfolder's pack follows the new one, not just the paths below it."""
    root = env.map("brand", packs_from="subfolders")
    write(root / "a" / "old.png", image())
    assert env.sync().exit_code == 0
    (root / "a").rename(tmp_path / "away")
    new = image()
    write(tmp_path / "incoming" / "new.png", new)
    (tmp_path / "incoming").rename(root / "a")

    env.sync_changed(root, ["a"], force=True)

    assert env.cdn_bytes(env.pack_named("a")["id"]) == [new]
