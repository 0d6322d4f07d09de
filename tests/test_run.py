"""`packsync run` end to end: real folders, a real state file, the sandbox over real HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import TOKEN, Env, image, write
from helpers import wait_until

from packsync.errors import ExitCode
from packsync.sandbox import Account, Sandbox


def contents(env: Env, pack_id: str) -> list[bytes]:
    return sorted(env.cdn_bytes(pack_id))


def test_first_sync_mirrors_nested_folders_into_a_pack_given_by_id(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand Assets")
    folder = env.map("brand", pack_id=pack_id)
    files = [write(folder / rel, image()) for rel in ("a.png", "sub/b.png", "sub/deeper/c.png")]
    write(folder / "notes.txt", b"not an image and not included")

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    assert contents(env, pack_id) == sorted(f.read_bytes() for f in files)
    assert env.sandbox.calls[("POST", "/files")] == 3
    assert env.sandbox.calls[("PUT", "storage")] == 3


def test_pack_given_by_name_is_created_once_and_reused(env: Env) -> None:
    folder = env.map("brand", pack="Brand Assets")
    write(folder / "a.png", image())

    env.sync()
    write(folder / "b.png", image())
    env.sync()

    pack = env.pack_named("Brand Assets")
    assert pack["image_count"] == 2
    assert env.sandbox.calls[("POST", "/packs")] == 1


def test_pack_given_by_name_finds_an_existing_pack(env: Env) -> None:
    existing = env.sandbox.create_pack("Brand Assets")
    write(env.map("brand", pack="Brand Assets") / "a.png", image())

    env.sync()

    assert env.sandbox.calls[("POST", "/packs")] == 0
    assert env.pack(existing)["image_count"] == 1


def test_rename_and_move_cost_no_api_call(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    env.sync()
    before = env.pack(pack_id)["images"]
    env.sandbox.reset_calls()

    (folder / "a.png").rename(folder / "renamed.png")
    (folder / "moved").mkdir()
    (folder / "b.png").rename(folder / "moved" / "b.png")
    report = env.sync()

    assert report.exit_code == ExitCode.OK
    assert env.sandbox.mutating_calls() == 0
    assert [i["id"] for i in env.pack(pack_id)["images"]] == [i["id"] for i in before]


def test_modified_file_replaces_its_image(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    path = write(folder / "a.png", image())
    env.sync()
    old_id = env.pack(pack_id)["images"][0]["id"]
    env.sandbox.reset_calls()

    path.write_bytes(image(width=9))
    env.sync()

    images = env.pack(pack_id)["images"]
    assert len(images) == 1 and images[0]["id"] != old_id
    assert contents(env, pack_id) == [path.read_bytes()]
    assert env.sandbox.calls[("POST", "/packs/{id}/images")] == 1
    assert env.sandbox.calls[("DELETE", "/packs/{id}/images/{image_id}")] == 1


def test_deleted_file_deletes_its_image(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    keep = write(folder / "keep.png", image())
    gone = write(folder / "gone.png", image())
    write(folder / "also-kept.png", image())
    env.sync()

    gone.unlink()
    env.sync()

    remaining = contents(env, pack_id)
    assert len(remaining) == 2 and keep.read_bytes() in remaining


def test_identical_bytes_in_one_mapping_make_one_image(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    data = image()
    write(folder / "a.png", data)
    write(folder / "copy/a again.png", data)

    env.sync()

    assert contents(env, pack_id) == [data]


def test_same_bytes_under_the_same_path_in_two_mappings_upload_once_and_add_twice(env: Env) -> None:
    """(Under another path, they are uploaded once per path: test_pull_names.)"""
    first, second = env.sandbox.create_pack("one"), env.sandbox.create_pack("two")
    data = image()
    write(env.map("one", pack_id=first) / "a.png", data)
    write(env.map("two", pack_id=second) / "a.png", data)

    env.sync()

    assert env.sandbox.calls[("POST", "/files")] == 1
    assert env.sandbox.calls[("PUT", "storage")] == 1
    assert env.sandbox.calls[("POST", "/packs/{id}/images")] == 2
    assert contents(env, first) == contents(env, second) == [data]


def test_foreign_images_are_never_deleted_unless_prune_foreign(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    foreign = env.sandbox.add_image(pack_id, "https://cdn.example.com/from-web-app.jpg", "web.jpg")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())

    env.sync()
    (folder / "a.png").unlink()
    env.sync(force=True)

    assert [i["id"] for i in env.pack(pack_id)["images"]] == [foreign]

    env.mappings[0]["prune_foreign"] = True
    write(folder / "b.png", image())
    env.sync()
    ids = [i["id"] for i in env.pack(pack_id)["images"]]
    assert foreign not in ids and len(ids) == 1


def test_image_deleted_out_of_band_is_added_again(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    path = write(env.map("brand", pack_id=pack_id) / "a.png", image())
    env.sync()
    env.sandbox.remove_image(pack_id, env.pack(pack_id)["images"][0]["id"])
    env.sandbox.reset_calls()

    env.sync()

    assert contents(env, pack_id) == [path.read_bytes()]
    # The bytes are already in storage: only the add-image call is repeated.
    assert env.sandbox.calls[("POST", "/files")] == 0
    assert env.sandbox.calls[("POST", "/packs/{id}/images")] == 1


def test_no_op_second_run_reads_each_pack_once_and_changes_nothing(env: Env) -> None:
    packs = [env.sandbox.create_pack(name) for name in ("one", "two")]
    for n, pack_id in enumerate(packs):
        folder = env.map(f"folder{n}", pack_id=pack_id)
        for i in range(5):
            write(folder / f"sub{i % 2}/{i}.png", image())
    env.sync()
    env.sandbox.reset_calls()

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    assert report.plan is not None and report.plan.mutations == 0
    assert env.sandbox.calls == {("GET", "/packs/{id}"): 2}


def test_unchanged_files_are_not_read_again(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for i in range(4):
        write(folder / f"{i}.png", image())
    first = env.sync()
    second = env.sync()

    assert first.mappings[0].hashed_files == 4
    assert second.mappings[0].hashed_files == 0


def test_pack_deleted_remotely_is_recreated_when_mapped_by_name(env: Env) -> None:
    folder = env.map("brand", pack="Brand Assets")
    data = image()
    write(folder / "a.png", data)
    env.sync()
    env.sandbox.delete_pack(env.pack_named("Brand Assets")["id"])

    env.sync()

    assert contents(env, env.pack_named("Brand Assets")["id"]) == [data]


def test_pack_deleted_remotely_fails_that_mapping_only_when_mapped_by_id(env: Env) -> None:
    gone, kept = env.sandbox.create_pack("gone"), env.sandbox.create_pack("kept")
    write(env.map("a", pack_id=gone) / "a.png", image())
    write(env.map("b", pack_id=kept) / "b.png", image())
    env.sandbox.delete_pack(gone)

    report = env.sync()

    assert report.exit_code == ExitCode.USAGE  # the config names a pack the key cannot see (issue 26)
    assert report.mappings[0].error == (f"mappings[0].pack_id: no pack {gone} is visible to this key (404); "
                                        "`packsync packs` lists the key's packs.")
    assert env.pack(kept)["image_count"] == 1


def test_cli_dry_run_prints_the_plan_and_changes_nothing(env: Env) -> None:
    folder = env.map("brand", pack="New Pack")
    write(folder / "a.png", image())
    write(folder / "b.png", image())

    result = env.cli("run", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "upload+add a.png" in result.stdout and "upload+add b.png" in result.stdout
    assert "(new pack)" in result.stdout
    assert env.sandbox.mutating_calls() == 0
    assert env.sandbox.packs() == []


def test_cli_run_waits_for_metadata_and_status_shows_it(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image(16, 8))
    write(folder / "sub/b.png", image(8, 16))

    result = env.cli("run")
    status = env.cli("status", "--json", "--files", token=None)

    assert result.returncode == 0, result.stderr
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    mapping = doc["mappings"][0]
    assert (mapping["files"], mapping["synced"], mapping["pending"], mapping["failed"]) == (2, 2, 0, 0)
    assert mapping["metadata"] == {"completed": 2, "pending": 0, "failed": 0}
    for row in mapping["file_list"]:
        assert row["metadata"]["status"] == "completed"
        assert row["metadata"]["description"] and row["metadata"]["keywords"]


def test_cli_no_wait_leaves_metadata_pending_and_a_later_run_picks_it_up(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    assert env.cli("run", "--no-wait").returncode == 0
    first = json.loads(env.cli("status", "--json").stdout)["mappings"][0]["metadata"]
    assert first["pending"] == 1

    wait_until(lambda: env.pack(pack_id)["images"][0]["metadata"]["status"] == "completed")
    assert env.cli("run", "--no-wait").returncode == 0
    second = json.loads(env.cli("status", "--json").stdout)["mappings"][0]["metadata"]
    assert second == {"completed": 1, "pending": 0, "failed": 0}


def test_cli_bad_files_are_named_and_the_rest_syncs(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    good = write(folder / "good.png", image())
    write(folder / "fake.jpg", b"this is text, not a JPEG")

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.SOME_FAILED
    assert "fake.jpg" in result.stdout and "not an image" in result.stdout
    assert contents(env, pack_id) == [good.read_bytes()]


def test_cli_refused_key_exits_3_with_one_sentence(env: Env) -> None:
    write(env.map("brand", pack="p") / "a.png", image())

    result = env.cli("run", token="gva_live_wrong.key")

    assert result.returncode == ExitCode.AUTH
    assert "invalid or revoked" in result.stderr
    assert "Traceback" not in result.stderr
    assert env.sandbox.mutating_calls() == 0


def test_plan_and_subscription_errors_are_told_apart(tmp_path: Path) -> None:
    accounts = {"gva_live_402.k": Account("ws-1", status=402), "gva_live_403.k": Account("ws-1", status=403)}
    with Sandbox(accounts=accounts) as sandbox:
        env = Env(tmp_path, sandbox)
        write(env.map("brand", pack="p") / "a.png", image())
        needs_plan = env.cli("run", token="gva_live_402.k")
        wrong_tier = env.cli("run", token="gva_live_403.k")

    assert needs_plan.returncode == wrong_tier.returncode == ExitCode.AUTH
    assert "subscription" in needs_plan.stderr and "tier" in wrong_tier.stderr


def test_cli_missing_token_is_a_usage_error(env: Env) -> None:
    env.map("brand", pack="p")

    result = env.cli("run", token=None)

    assert result.returncode == ExitCode.USAGE
    assert "GENVIRAL_TOKEN" in result.stderr


def test_cli_packs_lists_the_keys_packs(env: Env) -> None:
    env.sandbox.create_pack("Mine")
    env.sandbox.create_pack("Someone else's", scope="ws-2")
    env.map("brand", pack="p")

    result = env.cli("packs")

    assert result.returncode == 0, result.stderr
    assert "Mine" in result.stdout and "Someone else's" not in result.stdout


def test_token_never_reaches_output_state_or_logs(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "bad.jpg", b"garbage")

    outputs = [env.cli("-v", "run"), env.cli("-v", "status", "--json", "--files"), env.cli("-v", "packs")]
    env.sandbox.inject("500", route="/packs/{id}", count=2)
    outputs.append(env.cli("-v", "run"))

    for result in outputs:
        assert TOKEN not in result.stdout and TOKEN not in result.stderr
    for path in env.state_path.parent.iterdir():
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in env.config_path.read_text()


def test_demo_runs_with_zero_set_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "packsync", "demo", "--keep", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("metadata 3 completed, 0 pending") == 2
    assert "A 64×64 red PNG image." in result.stdout
    assert "astria:260 (Corporate Headshots) → Headshots" in result.stdout
    assert "astria-tune:690200 (Me, studio portraits) → My generations" in result.stdout
    assert "files 4 · synced 4" in result.stdout.split("astria-tune:690200 (Me")[-1], "a generation followed"
    assert "from its source: ohwx woman, on a beach at golden hour" in result.stdout
    assert "files 4 · synced 4" in result.stdout and "woman-18154000-1.png  [synced" in result.stdout
    assert "prepared   location stripped: cap.jpg" in result.stdout
    assert "cap.jpg  [synced" in result.stdout and "uploaded with location stripped" in result.stdout
    shutil.rmtree(tmp_path / "demo")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.exists() else {}


def test_dry_run_leaves_the_state_database_byte_for_byte_as_it_was(env: Env) -> None:
    """Everything that would be written — hashes of new and changed files, problems, metadata that
    completed, records of images deleted out of band — is only planned."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    wait_until(lambda: all(i["metadata"]["status"] == "completed" for i in env.pack(pack_id)["images"]))
    env.sandbox.remove_image(pack_id, env.pack(pack_id)["images"][0]["id"])
    write(folder / "a.png", image())
    write(folder / "c.png", image())
    write(folder / "bad.png", b"not an image")
    (folder / "b.png").unlink()
    before = _files(env.state_path.parent)
    env.sandbox.reset_calls()

    result = env.cli("run", "--dry-run")

    assert result.returncode == 1, result.stderr  # bad.png is named
    assert "upload+add c.png" in result.stdout and "bad.png" in result.stdout
    after = _files(env.state_path.parent)
    assert after[env.state_path.name] == before[env.state_path.name]
    assert {name: data for name, data in after.items() if name not in before} in ({}, {
        f"{env.state_path.name}-wal": b"", f"{env.state_path.name}-shm": after.get(f"{env.state_path.name}-shm")}), \
        "at most SQLite's own empty side files for a reader"
    assert env.sandbox.mutating_calls() == 0


def test_dry_run_without_a_state_creates_none(env: Env) -> None:
    write(env.map("brand", pack="New") / "a.png", image())

    result = env.cli("run", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "upload+add a.png" in result.stdout
    assert not env.state_path.parent.exists()


def test_dry_run_works_while_another_packsync_holds_the_lock(env: Env) -> None:
    from packsync.state.lock import StateLock

    write(env.map("brand", pack="New") / "a.png", image())
    with StateLock(env.state_path):
        assert env.cli("run", "--dry-run").returncode == 0
        assert env.cli("run").returncode == ExitCode.USAGE


def test_status_without_a_state_creates_nothing_and_says_so(env: Env) -> None:
    env.map("brand", pack="p")

    text = env.cli("status", token=None)
    document = env.cli("status", "--json", token=None)

    assert text.returncode == document.returncode == 0, text.stderr + document.stderr
    assert "no state yet" in text.stdout
    assert json.loads(document.stdout)["state_exists"] is False
    assert not env.state_path.parent.exists()


def test_status_shows_the_last_error_of_a_mapping_whose_files_failed(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "b.png", image())
    env.sandbox.inject("expire", method="PUT", route="storage", count=50)

    assert env.cli("run", "--no-wait").returncode == ExitCode.SOME_FAILED
    text = env.cli("status", token=None).stdout
    mapping = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]

    assert mapping["last_error"] and "b.png" in mapping["last_error"] and "403" in mapping["last_error"]
    assert f"last error: {mapping['last_error']}" in text

    env.sandbox.clear_faults()
    assert env.cli("run", "--no-wait").returncode == 0
    assert json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]["last_error"] is None


def test_run_json_is_one_summary_object(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    write(folder / "empty.png", b"")

    result = env.cli("run", "--no-wait", "--json")

    assert result.returncode == ExitCode.SOME_FAILED
    summary = json.loads(result.stdout)
    (mapping,) = summary["mappings"]
    assert summary["exit_code"] == ExitCode.SOME_FAILED
    assert (mapping["source"], mapping["pack_id"], mapping["added"], mapping["deleted"]) == (str(folder), pack_id, 2, 0)
    assert [p["path"] for p in mapping["skipped"]] == ["empty.png"] and mapping["error"] is None


def test_a_dry_run_prints_its_plan_as_json_action_by_action(env: Env) -> None:
    """``run --dry-run --json``: every action the executor would take, with its kind, mapping, file and
    image — and nothing done."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    (folder / "a.png").unlink()
    write(folder / "c.png", image())
    env.sandbox.reset_calls()

    done = env.cli("run", "--dry-run", "--json")

    assert done.returncode == ExitCode.OK, done.stderr
    plan = json.loads(done.stdout)
    actions = plan["actions"]
    assert all(set(a) >= {"kind", "mapping", "file", "image"} for a in actions)
    assert [(a["kind"], a["file"]) for a in actions if a["kind"] in ("upload", "add")] == [
        ("upload", "c.png"), ("add", "c.png")]
    (delete,) = [a for a in actions if a["kind"] == "delete"]
    assert delete["mapping"] == str(folder) and delete["image"] and delete["reason"] == "file removed"
    assert {"record-scan", "record-sync"} <= {a["kind"] for a in actions}
    assert env.sandbox.mutating_calls() == 0 and len(env.pack(pack_id)["images"]) == 2



def test_a_dry_run_lists_the_sidecars_it_would_write_and_writes_none(env: Env) -> None:
    """The sidecars are steps of the plan too: a dry run lists each sidecar a run would write (with the
    metadata the state holds) and writes none; a sidecar already saying that is not listed again."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    assert env.cli("run", "--wait-timeout", "30").returncode == ExitCode.OK  # both described
    env.mappings[0]["sidecars"] = "xmp"
    env.write_config()

    done = env.cli("run", "--dry-run", "--json")

    assert done.returncode == ExitCode.OK, done.stderr
    shown = [(a["kind"], a["file"]) for a in json.loads(done.stdout)["actions"] if "sidecar" in a["kind"]]
    assert shown == [("write-sidecar", "a.png"), ("write-sidecar", "b.png")]
    assert list(folder.glob("*.xmp")) == []
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    again = json.loads(env.cli("run", "--dry-run", "--json").stdout)["actions"]
    assert [a for a in again if "sidecar" in a["kind"]] == [], "written: nothing new to say"

def test_a_sync_told_which_paths_changed_still_mirrors_the_folder(env: Env) -> None:
    """``changed`` (the daemon's hint: per mapping, the paths that changed) is accepted by ``Syncer.sync``;
    a sync given it, or given it for another mapping, mirrors the folder as a full scan does."""
    import asyncio

    from packsync.app import open_app
    from packsync.engine.sync import SyncOptions

    folder = env.map("brand", pack="Brand")
    write(folder / "a.png", image())
    env.sync()
    write(folder / "b.png", image())

    async def sync() -> ExitCode:
        async with open_app(env.config(), TOKEN) as app:
            hinted = await app.syncer.sync(SyncOptions(wait=False), changed={str(folder): ["b.png"]})
            elsewhere = await app.syncer.sync(SyncOptions(wait=False), changed={"/elsewhere": ["x.png"]})
            return max(hinted.exit_code, elsewhere.exit_code)

    assert asyncio.run(sync()) == ExitCode.OK
    assert len(env.pack_named("Brand")["images"]) == 2
