"""``packsync pull`` against hostile conditions: an emptied pack, a class named in the wrong case, a
malformed Astria entry, links in the folder, names Windows reserves. Pull deletes with the sync
direction's safety, writes and deletes nothing through a link, and names no file Windows refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Env, image, write
from test_astria import astria_pack, prompts_of
from test_pull import files, filled_pack, pull

from packsync.engine.planner import MappingOptions, SourceFacts
from packsync.engine.pull_plan import (
    LINK_SKIPPED,
    Download,
    PullSafety,
    RemoveFile,
    genviral_download,
    listed_download,
    name_from_url,
    plan_pull,
    safe_part,
)
from packsync.errors import ExitCode
from packsync.model import ListedImage, Problem, PulledFile, RemoteImage
from packsync.sandbox.server import Reply


def tree(folder: Path) -> dict[str, bytes]:
    """Every regular file below ``folder``, by its path relative to it (links neither followed nor listed)."""
    found = {}
    for top, _folders, names in os.walk(folder):  # (a link to a folder is not walked into)
        for name in names:
            if not (path := Path(top, name)).is_symlink():
                found[str(path.relative_to(folder))] = path.read_bytes()
    return found


# -- item: --delete has the sync direction's safety ------------------------------------------------

def test_an_emptied_pack_is_a_safety_stop_and_deletes_no_pulled_file(env: Env) -> None:
    pack_id, contents = filled_pack(env, 3)
    env.write_config()
    out = env.root / "out"
    assert pull(env, "genviral:Brand", str(out)).returncode == 0
    for image_id in contents:
        env.sandbox.remove_image(pack_id, image_id)

    stopped = pull(env, "genviral:Brand", str(out), "--delete")

    assert stopped.returncode == ExitCode.SAFETY, stopped.stdout + stopped.stderr
    assert "is empty" in stopped.stdout and "--force" in stopped.stdout
    assert sorted(files(out).values()) == sorted(contents.values()), "nothing deleted"
    forced = pull(env, "genviral:Brand", str(out), "--delete", "--force")
    assert forced.returncode == ExitCode.OK, forced.stdout + forced.stderr
    assert files(out) == {}


def test_more_removals_than_max_delete_are_a_safety_stop_lifted_by_force_or_a_higher_limit(env: Env) -> None:
    pack_id, contents = filled_pack(env, 4)
    env.write_config()
    out = env.root / "out"
    assert pull(env, "genviral:Brand", str(out)).returncode == 0
    for image_id in list(contents)[:3]:
        env.sandbox.remove_image(pack_id, image_id)

    stopped = pull(env, "genviral:Brand", str(out), "--delete")
    dry = pull(env, "genviral:Brand", str(out), "--delete", "--dry-run", "--json")
    allowed = pull(env, "genviral:Brand", str(out), "--delete", "--max-delete", "3")

    assert stopped.returncode == ExitCode.SAFETY, stopped.stdout + stopped.stderr
    assert "max_delete" in stopped.stdout and len(files(out)) in (1, 4)
    assert dry.returncode == ExitCode.SAFETY and json.loads(dry.stdout)["safety_stop"]
    assert allowed.returncode == ExitCode.OK, allowed.stdout + allowed.stderr
    assert list(files(out).values()) == [contents[list(contents)[3]]]


def test_a_bad_max_delete_is_a_usage_error(env: Env) -> None:
    filled_pack(env, 1)
    env.write_config()

    result = pull(env, "genviral:Brand", str(env.root / "out"), "--max-delete", "lots")

    assert result.returncode == ExitCode.USAGE and "max-delete" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_class_named_in_the_wrong_case_is_a_clear_error_and_deletes_nothing(env: Env) -> None:
    pack_id, _ = astria_pack(env, {"woman": 2, "man": 1})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"
    assert pull(env, f"astria:{pack_id}", str(out)).returncode == 0
    before = tree(out)

    result = pull(env, f"astria:{pack_id}", str(out), "--classes", "Man", "--delete")

    assert result.returncode == ExitCode.USAGE, result.stdout + result.stderr
    said = result.stderr
    assert "'Man'" in said and "'man'" in said and "woman" in said and "Traceback" not in said
    assert len(said.strip().splitlines()) == 1
    assert tree(out) == before, "nothing deleted"


def test_delete_with_classes_removes_nothing_of_the_other_classes(env: Env) -> None:
    """``--classes man --delete`` mirrors the man class: a woman image still in the pack is not one that
    "left the pack", so its pulled file stays (even with --force, which lifts only the safety stops)."""
    pack_id, _ = astria_pack(env, {"woman": 2, "man": 1})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"
    assert pull(env, f"astria:{pack_id}", str(out)).returncode == 0
    before = tree(out)

    result = pull(env, f"astria:{pack_id}", str(out), "--classes", "man", "--delete", "--force")

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert tree(out) == before, "the woman class's files are still in the pack: none deleted"


def _break_first_image(reply: Reply) -> Reply:
    pack = json.loads(reply.body)
    pack["prompts_per_class"]["woman"][0]["images"][0] = 42
    return Reply(reply.status, json.dumps(pack).encode())


def test_a_malformed_astria_entry_is_reported_and_no_file_is_deleted_even_with_force(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"
    assert pull(env, f"astria:{pack_id}", str(out)).returncode == 0
    before = tree(out)
    env.sandbox.astria.remove_image(pack_id, urls[2])  # one really gone, its removal held back all the same
    env.sandbox.rewrite("GET", "astria:/p/{id}", _break_first_image)

    result = pull(env, f"astria:{pack_id}", str(out), "--delete", "--force")
    listed = pull(env, f"astria:{pack_id}", str(out), "--delete", "--json")

    assert result.returncode in (ExitCode.SOME_FAILED, ExitCode.SAFETY), result.stdout + result.stderr
    prompt = prompts_of(env, pack_id)["woman"][0]["id"]
    assert f"woman-{prompt}-1" in result.stdout and "nothing is deleted" in result.stdout
    assert tree(out) == before
    document = json.loads(listed.stdout)
    assert [problem["item"] for problem in document["problems"]] == [f"woman-{prompt}-1"]
    assert document["deleted"] == [] and document["safety_stop"]


# -- item: nothing written or deleted through a link ------------------------------------------------

def test_a_class_folder_that_is_a_link_is_reported_and_nothing_is_written_through_it(
        env: Env, tmp_path: Path) -> None:
    pack_id, _ = astria_pack(env, {"woman": 2, "man": 1})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "woman").symlink_to(outside)

    result = pull(env, f"astria:{pack_id}", str(out))

    assert list(outside.iterdir()) == [], "nothing written outside the folder"
    assert "woman" in result.stdout and "link" in result.stdout, result.stdout
    assert [Path(name).parent.name for name in tree(out)] == ["man"]
    assert "Traceback" not in result.stderr


def test_a_class_folder_swapped_for_a_link_while_the_pull_runs_gets_nothing_more(env: Env, tmp_path: Path) -> None:
    pack_id, _ = astria_pack(env, {"woman": 2})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"
    outside = tmp_path / "outside"

    def swap(reply: Reply) -> Reply:  # as the first image is sent: its folder is made and open by then
        (out / "woman").rename(outside)
        (out / "woman").symlink_to(outside)
        return reply

    env.sandbox.rewrite("GET", "astria-img", swap, count=1)

    result = pull(env, f"astria:{pack_id}", str(out))

    assert list(outside.iterdir()) == [], "nothing placed in the folder moved out"
    assert "woman: a symbolic link" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr


def test_delete_removes_nothing_through_a_class_folder_swapped_for_a_link(env: Env, tmp_path: Path) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3, "man": 3})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"
    assert pull(env, f"astria:{pack_id}", str(out)).returncode == 0
    outside = tmp_path / "outside"
    (out / "woman").rename(outside)
    (out / "woman").symlink_to(outside)
    kept = {p.name: p.read_bytes() for p in outside.iterdir()}
    env.sandbox.astria.remove_image(pack_id, urls[0])  # a woman's image: its file is behind the link

    result = pull(env, f"astria:{pack_id}", str(out), "--delete")

    assert {p.name: p.read_bytes() for p in outside.iterdir()} == kept, "nothing deleted through the link"
    assert "link" in result.stdout and "Traceback" not in result.stderr


def test_a_pulled_file_replaced_by_a_link_is_neither_followed_nor_deleted(env: Env, tmp_path: Path) -> None:
    pack_id, contents = filled_pack(env, 2)
    env.write_config()
    out = env.root / "out"
    assert pull(env, "genviral:Brand", str(out)).returncode == 0
    gone = next(iter(contents))
    name = next(n for n, data in files(out).items() if data == contents[gone])
    target = write(tmp_path / "elsewhere.png", contents[gone])
    (out / name).unlink()
    (out / name).symlink_to(target)
    env.sandbox.remove_image(pack_id, gone)

    result = pull(env, "genviral:Brand", str(out), "--delete")

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert (out / name).is_symlink() and target.read_bytes() == contents[gone]


def test_a_recorded_name_leading_out_of_the_folder_is_never_followed(env: Env) -> None:
    """The state is packsync's, but a file someone edited must not make pull delete outside the folder."""
    import sqlite3

    pack_id, contents = filled_pack(env, 2)
    env.write_config()
    out = env.root / "out"
    assert pull(env, "genviral:Brand", str(out)).returncode == 0
    gone = next(iter(contents))
    victim = write(env.root / "victim.png", contents[gone])
    with sqlite3.connect(env.state_path) as db:
        db.execute("UPDATE pulled SET name = '../victim.png' WHERE image_id = ?", (gone,))
    env.sandbox.remove_image(pack_id, gone)

    result = pull(env, "genviral:Brand", str(out), "--delete", "--force")

    assert victim.read_bytes() == contents[gone], "nothing outside the folder deleted"
    assert result.returncode == ExitCode.OK and "Traceback" not in result.stderr, result.stdout + result.stderr


# -- also: names Windows reserves -------------------------------------------------------------------

@pytest.mark.parametrize(("url_name", "written"), [
    ("CON.png", "CON_.png"),
    ("aux.png", "aux_.png"),
    ("Lpt9.PNG", "Lpt9_.PNG"),
    ("com1.tar.png", "com1_.tar.png"),
    ("nul .png", "nul_.png"),
    ("console.png", "console.png"),
    ("photo .png", "photo .png"),
])
def test_a_url_name_windows_reserves_is_written_under_a_safe_one(url_name: str, written: str) -> None:
    assert name_from_url(f"https://cdn.example.com/u/{url_name.replace(' ', '%20')}") == written


@pytest.mark.parametrize(("cls", "folder"), [
    ("aux", "aux_"), ("NUL", "NUL_"), ("com0", "com0_"), ("prn.x", "prn_.x"),
    ("woman.", "woman_"), ("woman ", "woman_"), ("woman. .", "woman_"), ("woman", "woman"),
])
def test_a_class_windows_reserves_or_one_ending_in_a_dot_or_space_gets_a_safe_folder(cls: str, folder: str) -> None:
    assert safe_part(cls) == folder
    download = listed_download("/out", "astria:1", ListedImage("https://a.example.com/x", (cls, "12-1")))
    assert download.file_name("image/png") == f"{folder}/12-1.png"


def test_reserved_names_from_the_sandbox_are_renamed_and_said(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    data = image(seed=3)
    env.sandbox.add_image(pack_id, f"{env.sandbox.origin}/cdn/CON.png", "CON.png")
    env.sandbox.rewrite("GET", "cdn", lambda _: Reply(200, data, "image/png"))  # storage serves that name
    astria_id, _ = astria_pack(env, {"aux": 1})
    env.map_astria(astria_id, pack="unused")
    out = env.root / "out"

    genviral = pull(env, "genviral:Brand", str(out / "g"))
    astria = pull(env, f"astria:{astria_id}", str(out / "a"))

    assert genviral.returncode == ExitCode.OK, genviral.stdout + genviral.stderr
    assert files(out / "g") == {"CON_.png": data}
    assert "CON.png" in genviral.stdout and "CON_.png" in genviral.stdout
    assert astria.returncode == ExitCode.OK, astria.stdout + astria.stderr
    assert [p.name for p in (out / "a").iterdir()] == ["aux_"]
    assert "aux_" in astria.stdout


# -- the pull's plan (pure): the same safety stop as a sync's, and links ---------------------------

FOLDER = "/pulled"


def record(image_id: str, name: str | None = None) -> PulledFile:
    return PulledFile(FOLDER, "p1", name or f"{image_id}.png", image_id, f"https://cdn.example.com/{image_id}.png",
                      "ab" * 32)


def download(image_id: str) -> Download:
    return genviral_download(FOLDER, "p1", RemoteImage(image_id, f"https://cdn.example.com/{image_id}.png"))


def guarded(*, unreadable: str | None = None, max_delete: int | str = "50%", force: bool = False) -> PullSafety:
    return PullSafety("genviral:Brand", SourceFacts(unreadable=unreadable),
                      MappingOptions(max_delete=max_delete, force=force))


@pytest.mark.parametrize(("images", "safety", "stopped", "why"), [
    pytest.param([], guarded(), True, "genviral:Brand is empty but 4 files in /pulled came from it", id="emptied"),
    pytest.param([], guarded(force=True), False, None, id="emptied, --force"),
    pytest.param(["a"], guarded(), True, "would delete 3 files, more than max_delete allows (50% of the 4 files",
                 id="past max_delete"),
    pytest.param(["a"], guarded(max_delete=3), False, None, id="within a higher max_delete"),
    pytest.param(["a"], guarded(force=True), False, None, id="past max_delete, --force"),
    pytest.param(["a", "b", "c"], guarded(unreadable="astria:7: 1 of its entries could not be read"), True,
                 "astria:7: 1 of its entries could not be read; nothing is deleted", id="an entry unreadable"),
    pytest.param(["a", "b", "c"], guarded(unreadable="astria:7: 1 of its entries could not be read", force=True),
                 True, "nothing is deleted", id="an entry unreadable, --force"),
])
def test_removals_stop_where_a_sync_s_deletes_would(images: list[str], safety: PullSafety, stopped: bool,
                                                   why: str | None) -> None:
    records = [record(i) for i in "abcd"]
    ids = {r.image_id for r in records}

    plan = plan_pull([download(i) for i in images], records, ids, ids, delete=True, safety=safety)

    removed = tuple(RemoveFile(r) for r in records if r.image_id not in images)
    assert (plan.withheld, plan.removals) == ((removed, ()) if stopped else ((), removed))
    assert (plan.safety is not None) == stopped and (why is None or why in (plan.safety or ""))


def test_nothing_behind_a_link_is_downloaded_kept_or_removed_and_each_link_is_one_notice() -> None:
    behind = ListedImage("https://a.example.com/w1", ("woman", "1-1"))
    elsewhere = ListedImage("https://a.example.com/m1", ("man", "2-1"))
    images = [listed_download(FOLDER, "astria:7", i) for i in (behind, elsewhere)]
    records = [record("gone", "woman/9-1.png"), record("also-gone", "woman/deeper/9-2.png")]

    plan = plan_pull(images, records, set(), {"gone", "also-gone"}, delete=True, links={"woman"})

    assert [d.image_id for d in plan.downloads] == [elsewhere.url]
    assert plan.removals == () and plan.withheld == () and plan.kept == 0
    assert plan.notices == (Problem("woman", LINK_SKIPPED, notice=True),)
