"""A pack per subfolder (``packs_from = "subfolders"``) against the sandbox: packs created per subfolder,
files directly in the folder reported, a renamed subfolder keeping (and renaming) its pack with nothing
uploaded again, a removed one stopping for --force, and a missing folder never looking emptied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Env, image, write
from helpers import StartDaemon, wait_until

from packsync.errors import ExitCode

MUTATIONS = (("POST", "/files"), ("PUT", "storage"), ("POST", "/packs/{id}/images"),
             ("DELETE", "/packs/{id}/images/{image_id}"), ("POST", "/packs"))


def packs(env: Env) -> dict[str, int]:
    """Pack name → image count, for the sandbox's packs."""
    return {p["name"]: len(env.pack(p["id"])["images"]) for p in env.sandbox.packs()}


def mutations(env: Env) -> dict[str, int]:
    calls = env.sandbox.calls
    return {f"{m} {r}": calls[(m, r)] for m, r in MUTATIONS if calls[(m, r)]}


@pytest.fixture
def brand(env: Env) -> Path:
    root = env.map("brand", packs_from="subfolders", pack_prefix="Brand – ")
    write(root / "Logos" / "a.png", image())
    write(root / "Logos" / "b.png", image())
    write(root / "Backgrounds" / "sea.png", image())
    return root


def test_each_subfolder_syncs_into_a_pack_of_its_own(env: Env, brand: Path) -> None:
    """A file directly in the folder is skipped (exit 1) as any file packsync cannot sync as it is."""
    write(brand / "loose.png", image())
    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.SOME_FAILED, done.stderr
    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 1}
    assert "loose.png: directly in a folder whose subfolders are packs" in done.stdout
    (brand / "loose.png").unlink()
    status = json.loads(env.cli("status", "--json", token=None).stdout)
    assert sorted((m["path"], m["pack_name"] or "", m["synced"]) for m in status["mappings"]) == [
        (str(brand), "", 0), (str(brand / "Backgrounds"), "Brand – Backgrounds", 1),
        (str(brand / "Logos"), "Brand – Logos", 2)], "the folder itself too, while a file in it is skipped"

    write(brand / "Logos" / "c.png", image())
    write(brand / "Products" / "mug.png", image())
    assert env.sync().exit_code == ExitCode.OK
    assert packs(env) == {"Brand – Logos": 3, "Brand – Backgrounds": 1, "Brand – Products": 1}


def test_a_renamed_subfolder_keeps_its_pack_renames_it_and_uploads_nothing(env: Env, brand: Path) -> None:
    env.sync()
    (logos_id,) = [p["id"] for p in env.sandbox.packs() if p["name"] == "Brand – Logos"]
    env.sandbox.reset_calls()

    (brand / "Logos").rename(brand / "Logotypes")
    done = env.cli("run", "--no-wait")

    assert done.returncode == 0, done.stderr
    assert "Logos → " in done.stdout and "subfolder renamed" in done.stdout
    assert env.pack(logos_id)["name"] == "Brand – Logotypes"
    assert packs(env) == {"Brand – Logotypes": 2, "Brand – Backgrounds": 1}
    assert env.sandbox.calls[("PATCH", "/packs/{id}")] == 1
    assert mutations(env) == {}, "nothing uploaded, added or deleted"
    assert env.sync().exit_code == ExitCode.OK and env.sandbox.calls[("PATCH", "/packs/{id}")] == 1


def test_a_copied_then_removed_subfolder_is_a_rename_by_content(env: Env, brand: Path) -> None:
    env.sync()
    target = brand / "Logo files"
    target.mkdir()
    for path in (brand / "Logos").iterdir():
        (target / path.name).write_bytes(path.read_bytes())  # new inodes, the same bytes
        path.unlink()
    (brand / "Logos").rmdir()
    env.sandbox.reset_calls()

    assert env.sync().exit_code == ExitCode.OK
    assert packs(env) == {"Brand – Logo files": 2, "Brand – Backgrounds": 1}
    assert mutations(env) == {}


def test_a_dry_run_sees_the_rename_and_changes_nothing(env: Env, brand: Path) -> None:
    env.sync()
    (brand / "Logos").rename(brand / "Marks")
    env.sandbox.reset_calls()

    done = env.cli("run", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert "would rename its pack, nothing uploaded" in done.stdout
    assert "Brand – Marks" not in done.stdout, "no new pack planned for it"
    assert env.sandbox.calls[("PATCH", "/packs/{id}")] == 0 and mutations(env) == {}


def test_a_removed_subfolder_stops_for_force_and_its_pack_stays(env: Env, brand: Path) -> None:
    env.sync()
    for path in (brand / "Backgrounds").iterdir():
        path.unlink()
    (brand / "Backgrounds").rmdir()

    stopped = env.cli("run", "--no-wait")

    assert stopped.returncode == ExitCode.SAFETY, stopped.stdout + stopped.stderr
    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 1}

    forced = env.cli("run", "--no-wait", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 0}, "the images go, the pack stays"
    assert env.cli("run", "--no-wait").returncode == 0, "and it is settled"


def test_a_missing_folder_is_a_safety_stop_even_with_force(env: Env, brand: Path) -> None:
    env.sync()
    brand.rename(env.root / "unmounted")

    done = env.cli("run", "--no-wait", "--force")

    assert done.returncode == ExitCode.SAFETY
    assert "is a disk unmounted?" in done.stdout
    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 1}


@pytest.mark.parametrize(("options", "message"), [
    ({"packs_from": "subfolders", "pack": "X"}, "mappings[0].packs_from: each subfolder's pack is named after it"),
    ({"pack": "X", "pack_prefix": "Y"}, 'mappings[0].pack_prefix: applies to packs_from = "subfolders" only'),
])
def test_packs_from_keys_are_checked(env: Env, options: dict[str, Any], message: str) -> None:
    env.mappings.append({"path": str(env.folder("x")), **options})
    env.write_config()
    done = env.cli("status", token=None)
    assert done.returncode == ExitCode.USAGE
    assert message in done.stderr


def test_the_daemon_makes_a_pack_for_a_new_subfolder(daemon_env: Env, start: StartDaemon) -> None:
    root = daemon_env.map("brand", packs_from="subfolders")
    write(root / "One" / "a.png", image())
    start()
    assert packs(daemon_env) == {"One": 1}

    write(root / "Two" / "b.png", image())

    wait_until(lambda: packs(daemon_env) == {"One": 1, "Two": 1}, timeout=15, what="the new subfolder's pack")


# -- what a hostile review found (each failed before its fix) ---------------------------------------

def test_an_empty_mount_point_is_a_safety_stop_even_with_force(env: Env, brand: Path) -> None:
    env.sync()
    for sub in ("Logos", "Backgrounds"):
        for path in (brand / sub).iterdir():
            path.unlink()
        (brand / sub).rmdir()  # every subfolder gone at once: the share is not mounted

    done = env.cli("run", "--no-wait", "--force")

    assert done.returncode == ExitCode.SAFETY, done.stdout + done.stderr
    assert "holds none of the subfolders packsync synced" in done.stdout
    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 1}


def test_a_subfolder_named_in_bad_utf8_is_reported_and_the_others_sync(env: Env, brand: Path) -> None:
    import os

    os.mkdir(os.fsencode(brand) + b"/Caf\xe9")
    write(Path(os.fsdecode(os.fsencode(brand) + b"/Caf\xe9")) / "x.png", image())

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.SOME_FAILED, done.stderr  # (skipped, as a file packsync cannot sync)
    assert "Caf\\xe9: its name is not valid UTF-8; rename it" in done.stdout
    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 1}
    assert env.cli("status", token=None).returncode == 0


def test_the_mapped_folders_packsyncignore_reaches_into_subfolders(env: Env, brand: Path) -> None:
    write(brand / "Logos" / "raw" / "r.png", image())
    (brand / ".packsyncignore").write_text("\ufeffraw/\n", encoding="utf-8")  # as Notepad saves it

    env.sync()

    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 1}


def test_excluding_a_synced_subfolder_is_removing_it(env: Env, brand: Path) -> None:
    env.sync()
    (brand / ".packsyncignore").write_text("Backgrounds/\n", encoding="utf-8")
    write(brand / "Backgrounds" / "new.png", image())

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.SAFETY, done.stdout
    assert packs(env) == {"Brand – Logos": 2, "Brand – Backgrounds": 1}, "nothing uploaded from it"


def test_a_subfolder_seen_gone_is_still_known_when_it_comes_back_renamed(env: Env, brand: Path) -> None:
    env.sync()
    (brand / "Logos").rename(env.root / "away")
    assert env.cli("run", "--no-wait").returncode == ExitCode.SAFETY
    (env.root / "away").rename(brand / "Marks")
    env.sandbox.reset_calls()

    assert env.sync().exit_code == ExitCode.OK
    assert packs(env) == {"Brand – Marks": 2, "Brand – Backgrounds": 1}
    assert mutations(env) == {}


def test_a_subfolder_whose_pack_another_mapping_syncs_into_is_skipped(env: Env, brand: Path) -> None:
    env.map("shared", pack="Brand – Logos")
    write(env.root / "shared" / "s.png", image())

    done = env.cli("run", "--no-wait")

    assert "Logos: its pack would be 'Brand – Logos', which another mapping syncs into" in done.stdout
    assert packs(env) == {"Brand – Logos": 1, "Brand – Backgrounds": 1}


def test_a_linked_subfolder_is_a_notice(env: Env, brand: Path) -> None:
    (env.root / "elsewhere").mkdir()
    write(env.root / "elsewhere" / "e.png", image())
    (brand / "Linked").symlink_to(env.root / "elsewhere")

    done = env.cli("run", "--no-wait")

    assert done.returncode == 0, done.stdout
    assert "Linked: symbolic link to a folder, not followed" in done.stdout
    assert "Brand – Linked" not in packs(env)


# -- what a review of the whole change found (each failed before its fix) ----------------------------

def test_a_subfolder_skipped_for_its_pack_name_is_never_taken_as_removed(env: Env, brand: Path) -> None:
    env.sync()
    env.map("shared", pack="Brand – Logos")  # now another mapping claims the subfolder's pack

    done = env.cli("run", "--no-wait", "--force")

    assert "which another mapping syncs into" in done.stdout
    assert packs(env)["Brand – Logos"] == 2, "its images stay: the files are still there"


def test_no_sidecar_is_written_for_an_excluded_subfolder(env: Env) -> None:
    root = env.map("brand", packs_from="subfolders", sidecars="xmp")
    write(root / "A" / "a.png", image())
    write(root / "B" / "b.png", image())
    env.sync(wait=True)
    assert (root / "B" / "b.png.xmp").exists()
    (root / ".packsyncignore").write_text("B/\n", encoding="utf-8")
    (root / "B" / "b.png.xmp").unlink()

    env.cli("run", "--no-wait")

    assert not (root / "B" / "b.png.xmp").exists()


def test_a_thumbnail_address_holds_while_subfolders_come_and_go(daemon_env: Env, start: StartDaemon) -> None:
    import re

    import httpx2
    from test_web import page_url

    root = daemon_env.map("brand", packs_from="subfolders")
    write(root / "B" / "b.png", image())
    base = page_url(start())
    (src,) = re.findall(r'src="(/thumb/[0-9a-f]{16}/[0-9a-f]{64})"', httpx2.get(base).text)
    write(root / "A" / "a.png", image())  # sorts first: every position after it moves
    wait_until(lambda: packs(daemon_env).get("A") == 1, timeout=15)
    answer = httpx2.get(base + src.lstrip("/"))
    assert answer.status_code == 200 and answer.content == (root / "B" / "b.png").read_bytes()


def test_retrying_failed_files_reaches_the_subfolders_packs(env: Env, brand: Path) -> None:
    from packsync.state.store import State

    (brand / "Logos" / "empty.png").write_bytes(b"")  # a bad file: its verdict is cached
    env.sync()
    label = str(brand / "Logos")
    state = State(env.state_path)
    try:
        assert state.files.cache(label)["empty.png"].problem
        state.files.forget_verdicts(str(brand))  # what the page's "Retry skipped files" asks, per config mapping
        assert "empty.png" not in state.files.cache(label)
    finally:
        state.close()


# -- observe → plan → execute (issue 22; each failed before its change) ------------------------------

def test_a_refused_key_while_renaming_a_subfolders_pack_stops_the_run(env: Env, brand: Path) -> None:
    """The rename is an action like any other: a 401 on its PATCH stops everything with exit 3 (it was
    once caught with every other API error, logged, and the run went on)."""
    from packsync.sandbox.server import fail

    env.sync()
    (brand / "Logos").rename(brand / "Logotypes")
    env.sandbox.rewrite("PATCH", "/packs/{id}", lambda _reply: fail(401, "unauthorized", "the key was revoked"))
    env.sandbox.reset_calls()

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.AUTH, done.stdout + done.stderr
    assert mutations(env) == {}


def test_status_reads_the_subfolders_from_the_state_never_the_disk(env: Env, brand: Path) -> None:
    """``status`` (and the page and ``/healthz``, which read the same model) lists a ``packs_from =
    "subfolders"`` mapping's subfolders from the state: no folder is listed, so a hung share cannot stall
    it."""
    import sys

    from packsync.state.store import State
    from packsync.views.status import read_status

    env.sync()
    listed: list[object] = []
    watching = [False]

    def audit(event: str, args: tuple[object, ...]) -> None:
        if watching[0] and event in ("os.scandir", "os.listdir"):
            listed.append(args)

    sys.addaudithook(audit)
    state = State(env.state_path, readonly=True)
    try:
        watching[0] = True
        status = read_status(env.config(), state)
    finally:
        watching[0] = False
        state.close()

    assert listed == []
    assert sorted((m.path, m.pack_name) for m in status.mappings) == [
        (str(brand / "Backgrounds"), "Brand – Backgrounds"), (str(brand / "Logos"), "Brand – Logos")]


def test_a_renamed_subfolder_whose_pack_was_deleted_says_what_to_do_not_a_pack_id_to_look_up(env: Env,
                                                                                         brand: Path) -> None:
    """The config names no pack_id there: the sentence speaks of the pack the subfolder synced into, and
    what it says to do makes the pack again."""
    env.sync()
    (logos_id,) = [p["id"] for p in env.sandbox.packs() if p["name"] == "Brand – Logos"]
    env.sandbox.delete_pack(logos_id)
    (brand / "Logos").rename(brand / "Logotypes")

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.SOME_FAILED, done.stderr
    assert (f"error      the pack this subfolder synced into as 'Logos' ({logos_id}) is gone (deleted in the web "
            "app?); name the subfolder 'Logos' again for one sync, which makes its pack again, then rename it."
            ) in done.stdout, done.stdout
    assert "packsync packs" not in done.stdout
    (brand / "Logotypes").rename(brand / "Logos")
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    (brand / "Logos").rename(brand / "Logotypes")
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    assert packs(env) == {"Brand – Logotypes": 2, "Brand – Backgrounds": 1}
