"""A sync of the paths the daemon saw change (``engine/changes.py``): only those paths scanned, only the
contents they touch planned, no pack read — and the same adds, deletes and safety stops as a full sync."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from conftest import TOKEN, Env, image, write

from packsync.app import open_app
from packsync.engine.sync import SyncOptions, SyncReport

PACK_READ = ("GET", "/packs/{id}")
ADD = ("POST", "/packs/{id}/images")


def sync_changed(env: Env, folder: Path, paths: Collection[str], **options: Any) -> SyncReport:
    """One in-process sync as the daemon runs it for ``paths`` of ``folder`` that changed."""
    async def run() -> SyncReport:
        async with open_app(env.config(), TOKEN) as app:
            return await app.syncer.sync(SyncOptions(wait=False, **options), changed={str(folder): set(paths)})
    return asyncio.run(run())


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

    report = sync_changed(env, folder, ["sub"])

    assert report.mappings[0].hashed_files == 1
    assert report.mappings[0].outcome and report.mappings[0].outcome.added == 1
    assert len(env.pack(pack_id)["images"]) == 4
    assert env.sandbox.calls[PACK_READ] == 0, "the pack is taken as recorded: the full rescan reads it"
    assert_a_full_sync_agrees(env)


def test_a_file_removed_has_its_image_deleted_unless_another_file_holds_it(env: Env) -> None:
    folder, pack_id = synced(env, 4)
    shutil.copy(folder / "01.png", folder / "copy.png")
    sync_changed(env, folder, ["copy.png"])
    (folder / "00.png").unlink()
    (folder / "01.png").unlink()

    report = sync_changed(env, folder, ["00.png", "01.png"])

    outcome = report.mappings[0].outcome
    assert outcome and (outcome.added, outcome.deleted) == (0, 1)
    assert len(env.pack(pack_id)["images"]) == 3
    assert_a_full_sync_agrees(env)


def test_a_rename_moves_nothing(env: Env) -> None:
    folder, _pack_id = synced(env, 2)
    (folder / "00.png").rename(folder / "renamed.png")

    report = sync_changed(env, folder, ["00.png", "renamed.png"])

    plan = report.mappings[0].plan
    assert plan and (plan.adds, plan.deletes) == ([], [])


def test_max_delete_is_a_share_of_the_whole_mapping(env: Env) -> None:
    """3 of 10 files removed, max_delete = 50%: 3 ≤ 5, as a full sync counts, never 3 > 50% of 3."""
    folder, pack_id = synced(env, 10)
    for n in range(3):
        (folder / f"{n:02}.png").unlink()

    report = sync_changed(env, folder, [f"{n:02}.png" for n in range(3)])

    assert report.mappings[0].safety is None
    assert len(env.pack(pack_id)["images"]) == 7


def test_more_deletes_than_max_delete_allows_are_withheld(env: Env) -> None:
    folder, pack_id = synced(env, 10, max_delete=2)
    for n in range(3):
        (folder / f"{n:02}.png").unlink()

    report = sync_changed(env, folder, [f"{n:02}.png" for n in range(3)])

    assert report.mappings[0].safety and "more than max_delete allows" in report.mappings[0].safety
    assert len(env.pack(pack_id)["images"]) == 10


def test_a_folder_removed_takes_its_images_and_an_emptied_mapping_is_left_to_the_full_scan(env: Env) -> None:
    folder, pack_id = synced(env, 1, max_delete="100%")
    for n in range(2):
        write(folder / f"sub/{n}.png", image())
    sync_changed(env, folder, ["sub"])
    assert len(env.pack(pack_id)["images"]) == 3
    shutil.rmtree(folder / "sub")

    sync_changed(env, folder, ["sub"])
    assert len(env.pack(pack_id)["images"]) == 1
    (folder / "00.png").unlink()

    emptied = sync_changed(env, folder, ["00.png"])
    assert emptied.mappings[0].safety and "is empty" in emptied.mappings[0].safety
    assert env.sandbox.calls[PACK_READ] == 1, "the full scan reads the pack"


def test_a_changed_packsyncignore_is_a_full_scan(env: Env) -> None:
    folder, pack_id = synced(env, 2)
    (folder / ".packsyncignore").write_text("01.png\n", encoding="utf-8")

    sync_changed(env, folder, [".packsyncignore"])

    assert env.sandbox.calls[PACK_READ] == 1
    assert len(env.pack(pack_id)["images"]) == 1
