"""``packsync pull`` gives back the names and folders of what packsync pushed: from the state that pushed
it, else from the names its uploads were given (``GET /files``), else the CDN's names."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import photos
import pytest
from conftest import TOKEN, Env, image, write
from helpers import wait_until
from test_bad_input import stored_file_names

from packsync.engine.names import MAX_NAME, upload_name
from packsync.engine.planner import file_name_for
from packsync.engine.pull import NAMES_SHIFTED
from packsync.engine.pull_plan import UNUSABLE, genviral_download, given_path, name_from_url
from packsync.model import RemoteImage
from packsync.sandbox import Sandbox
from packsync.sandbox.server import Reply

LIST_FILES = ("GET", "/files")

TREE = {
    "top.png": image(9, 9, seed=1),
    "backgrounds/sunset.png": image(10, 9, seed=2),
    "logos/dark/mark one.png": image(11, 9, seed=3),
    "équipe/café ü.png": image(12, 9, seed=4),
}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (no link followed), by its path relative to it."""
    found = {}
    for directory, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(directory) / name
            found[path.relative_to(folder).as_posix()] = path.read_bytes()
    return found


def laptop(env: Env, name: str = "laptop") -> Env:
    """Another machine on the same account: its own home, config and (fresh) state."""
    other = Env(env.root / name, env.sandbox)
    other.root.mkdir()
    other.write_config()
    return other


def pushed(env: Env, files: dict[str, bytes] = TREE, pack: str = "Brand") -> Path:
    folder = env.map("brand", pack=pack)
    for rel, data in files.items():
        write(folder / rel, data)
    result = env.cli("run", "--no-wait")
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def pull(env: Env, *args: str) -> Any:
    result = env.cli("pull", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_a_pushed_tree_comes_back_on_a_fresh_machine(env: Env) -> None:
    """Same relative paths, sub-folders, spaces and accents, same bytes: named from GET /files."""
    pushed(env)
    other = laptop(env)
    env.sandbox.reset_calls()

    pull(other, "genviral:Brand", str(other.root / "restored"))

    assert tree(other.root / "restored") == TREE
    assert env.sandbox.calls[LIST_FILES] == 1, "one walk of the key's files"


def test_a_pull_on_the_machine_that_pushed_names_from_its_state_without_asking(env: Env) -> None:
    pushed(env)
    env.sandbox.reset_calls()

    pull(env, "genviral:Brand", str(env.root / "copy"))

    assert tree(env.root / "copy") == TREE
    assert env.sandbox.calls[LIST_FILES] == 0


def test_uploads_carry_the_path_and_images_keep_their_file_name(env: Env) -> None:
    """The path goes to POST /files only: the pack's images keep the name they always had, so an
    upgrade renames (deletes and adds again) nothing."""
    pushed(env)

    files = env.sandbox.store.list_files("ws-1", 100, 0, None)[0]

    assert sorted(f["filename"] for f in files) == sorted(TREE)
    assert sorted(stored_file_names(env.sandbox, env.pack_named("Brand")["id"])) == sorted(
        rel.rpartition("/")[2] for rel in TREE)


def test_a_pack_per_subfolder_gives_back_the_paths_in_its_subfolder(env: Env) -> None:
    folder = env.map("brands", packs_from="subfolders")
    write(folder / "acme" / "bg" / "sky.png", sky := image(8, 9, seed=5))
    write(folder / "acme" / "logo.png", logo := image(9, 8, seed=6))
    assert env.cli("run", "--no-wait").returncode == 0
    other = laptop(env)

    pull(other, "genviral:acme", str(other.root / "acme"))

    assert tree(other.root / "acme") == {"bg/sky.png": sky, "logo.png": logo}


def test_an_image_added_by_hand_keeps_its_cdn_name(env: Env) -> None:
    pushed(env, {"a/one.png": (one := image(8, 8, seed=7))})
    by_hand = env.sandbox.add_uploaded(env.pack_named("Brand")["id"], (two := image(9, 9, seed=8)))
    url = next(i["url"] for i in env.pack_named("Brand")["images"] if i["id"] == by_hand)
    other = laptop(env)

    pull(other, "genviral:Brand", str(other.root / "out"))

    assert tree(other.root / "out") == {"a/one.png": one, name_from_url(url): two}


def test_dry_run_and_json_show_the_names(env: Env) -> None:
    pushed(env)
    other = laptop(env)
    out = other.root / "out"

    text = pull(other, "genviral:Brand", str(out), "--dry-run")
    document = pull(other, "genviral:Brand", str(out), "--dry-run", "--json")
    done = pull(other, "genviral:Brand", str(out), "--json")

    assert all(f"download     {rel} " in text for rel in TREE), text
    assert sorted(action["file"] for action in document["actions"]) == sorted(TREE)
    assert sorted(done["downloaded"]) == sorted(TREE)
    assert not out.exists() or tree(out) == TREE, "the dry runs wrote nothing"


def test_two_images_given_one_name_get_the_suffix(env: Env) -> None:
    """Names that differ only in case are one name on many file systems: whichever image is placed
    second gets the suffix, nothing is overwritten."""
    pack_id = env.sandbox.create_pack("Twins")
    env.sandbox.add_uploaded(pack_id, (a := image(8, 8, seed=9)), named="same/a.png")
    env.sandbox.add_uploaded(pack_id, (b := image(9, 9, seed=10)), named="same/A.png")
    env.write_config()

    pull(env, "genviral:Twins", str(out := env.root / "out"))

    found = tree(out)
    assert sorted(found.values()) == sorted([a, b])
    plain = [name for name in found if name in ("same/a.png", "same/A.png")]
    assert len(plain) == 1, found.keys()
    assert all(re.fullmatch(r"same/[aA]-[0-9a-f]{8}\.png", name) for name in found if name not in plain)


HOSTILE = ["../../etc/passwd.png", "/etc/absolute.png", "sub/../../up.png", ".hidden/x.png", "a//b.png",
           "x" * 1000 + ".png", "/".join(["d"] * 40) + "/deep.png"]


def test_names_from_a_hostile_file_list_stay_inside_the_folder(env: Env) -> None:
    """Names the API gives are untrusted: one that would lead outside the folder, or is hidden or too
    long, is not used (a notice; the CDN's name instead); one Windows refuses is made one it takes."""
    pack_id = env.sandbox.create_pack("Hostile")
    for n, name in enumerate([*HOSTILE, "CON.png", 'what?<is>"this".png', "notes", "\x1b[31mred\x1b[0m.png"]):
        env.sandbox.add_uploaded(pack_id, image(8 + n, 8, seed=20 + n), named=name)
    env.write_config()
    out = env.root / "deep" / "out"

    document = pull(env, "genviral:Hostile", str(out), "--json")

    names = set(tree(out))
    assert len(names) == len(HOSTILE) + 4
    assert {"CON_.png", "what__is__this_.png", "notes.png", "_[31mred_[0m.png"} <= names
    assert all("/" not in name for name in names), "no unusable name made a folder"
    assert not (env.root / "etc").exists() and not (env.root / "up.png").exists()
    assert sorted(env.root.rglob("*.png")) == sorted(out / name for name in names), "nothing outside the folder"
    unused = [p for p in document["problems"] if p["reason"] == UNUSABLE]
    assert len(unused) == len(HOSTILE) and all(p["notice"] for p in unused)
    assert all(len(p["item"]) <= 160 and "\x1b" not in p["item"] for p in document["problems"])


def _ignoring_offset(reply: Reply) -> Reply:
    """The first page again whatever the offset, claiming a billion files."""
    body = json.loads(reply.body)
    body["data"]["total"] = 1_000_000_000
    return Reply(reply.status, json.dumps(body).encode(), reply.content_type, reply.headers)


def test_a_file_list_ignoring_offset_ends_the_walk(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Loop")
    for n in range(3):
        env.sandbox.add_uploaded(pack_id, image(8 + n, 8, seed=40 + n), named=f"kept/{n}.png")
    env.sandbox.add_uploaded(pack_id, image(20, 8, seed=50))  # never named: the walk cannot end by finding all
    env.write_config()
    env.sandbox.rewrite("GET", "/files", _ignoring_offset)

    pull(env, "genviral:Loop", str(out := env.root / "out"))

    assert {"kept/0.png", "kept/1.png", "kept/2.png"} <= set(tree(out)) and len(tree(out)) == 4
    assert env.sandbox.calls[LIST_FILES] == 2, "a page bringing nothing new ends it"


@pytest.mark.parametrize("answer", [
    {"ok": True, "code": 200, "message": "", "data": {"files": "many"}},
    {"ok": True, "code": 200, "message": "", "data": {"files": [["not", "an", "object"]]}},
    {"ok": False, "code": 400, "message": "no", "error_code": "invalid_offset"},
])
def test_a_file_list_that_cannot_be_read_leaves_the_cdn_names(env: Env, answer: dict[str, Any]) -> None:
    pack_id = env.sandbox.create_pack("Broken")
    image_id = env.sandbox.add_uploaded(pack_id, (data := image(8, 8, seed=60)), named="a/b.png")
    env.write_config()
    env.sandbox.rewrite("GET", "/files", lambda _reply: Reply(answer["code"], json.dumps(answer).encode()))

    result = env.cli("pull", "genviral:Broken", str(out := env.root / "out"), "--json")

    assert result.returncode == 0, result.stderr
    url = next(i["url"] for i in env.pack(pack_id)["images"] if i["id"] == image_id)
    assert tree(out) == {name_from_url(url): data}
    problems = json.loads(result.stdout)["problems"]
    assert [p["item"] for p in problems] == ["GET /files"] and problems[0]["notice"]
    assert "Traceback" not in result.stderr


def test_file_entries_without_a_usable_url_or_name_are_passed_over(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Odd")
    env.sandbox.add_uploaded(pack_id, (data := image(8, 8, seed=61)), named="good/one.png")

    def odd(reply: Reply) -> Reply:
        body = json.loads(reply.body)
        body["data"]["files"] = [{"url": 5}, {"url": "file:///etc/passwd", "filename": "x.png"},
                                 {"id": 7, "filename": ["x"]}, *body["data"]["files"]]
        return Reply(reply.status, json.dumps(body).encode(), reply.content_type, reply.headers)

    env.write_config()
    env.sandbox.rewrite("GET", "/files", odd)

    pull(env, "genviral:Odd", str(out := env.root / "out"))

    assert tree(out) == {"good/one.png": data}


def a_pack_among_uploads(env: Env, before: int, after: int) -> tuple[str, bytes]:
    """Pack ``Many`` holding one image, named ``deep/wanted.png``, uploaded after ``before`` other uploads
    of the key and before ``after`` more (named, in no pack); the CDN name it would have unnamed."""
    filler = image(8, 8, seed=81)
    for n in range(before):
        env.sandbox.upload(filler, named=f"filler/{n}.png")
    pack_id = env.sandbox.create_pack("Many")
    image_id = env.sandbox.add_uploaded(pack_id, (data := image(9, 9, seed=80)), named="deep/wanted.png")
    for n in range(after):
        env.sandbox.upload(filler, named=f"filler/{before + n}.png")
    env.write_config()
    url = next(i["url"] for i in env.pack(pack_id)["images"] if i["id"] == image_id)
    cdn_name = name_from_url(url)
    assert cdn_name
    return cdn_name, data


def listed(env: Env, arrange: Any) -> Any:
    """A GET /files rewrite answering from the key's whole list (oldest first) as ``arrange(files, offset)``
    lays it out: (the page's entries, the total)."""
    def change(reply: Reply) -> Reply:
        body = json.loads(reply.body)
        files = env.sandbox.store.list_files("ws-1", 10_000, 0, None)[0]
        body["data"]["files"], body["data"]["total"] = arrange(files, body["data"]["offset"])
        return Reply(reply.status, json.dumps(body).encode(), reply.content_type, reply.headers)
    return change


def test_a_file_list_newest_first_names_the_files(env: Env) -> None:
    """The walk assumes no order: the wanted upload, the oldest, is on the last page of a newest-first list."""
    a_pack_among_uploads(env, before=0, after=150)
    env.sandbox.rewrite("GET", "/files", listed(env, lambda files, offset: (files[::-1][offset:offset + 100],
                                                                             len(files))))

    result = pull(env, "genviral:Many", str(out := env.root / "out"), "--json")

    assert set(tree(out)) == {"deep/wanted.png"} and result["problems"] == []
    assert env.sandbox.calls[LIST_FILES] == 2


def _passed_over(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The page with its first three entries' URLs not http ones."""
    return [{**entry, "url": "file:///etc/passwd"} if n < 3 else entry for n, entry in enumerate(page)]


def test_the_next_page_starts_after_every_entry_the_page_held(env: Env) -> None:
    """Entries passed over (no http URL) still move the offset: a walk counting only the files it kept
    would ask for overlapping pages and, its pages spent, never see the last files."""
    a_pack_among_uploads(env, before=199, after=0)
    env.sandbox.rewrite("GET", "/files", listed(env, lambda files, offset: (_passed_over(files[offset:offset + 100]),
                                                                             len(files))))

    pull(env, "genviral:Many", str(out := env.root / "out"))

    assert set(tree(out)) == {"deep/wanted.png"}
    assert env.sandbox.calls[LIST_FILES] == 2


def test_a_file_list_that_shifts_during_the_walk_names_the_missed_images_by_cdn_name_with_one_notice(
        env: Env) -> None:
    """Five files deleted between the first page and the second shift the list up: the file that moved
    onto the first page is missed; it keeps its CDN name, and the pull says so once."""
    cdn_name, data = a_pack_among_uploads(env, before=102, after=97)

    def deleting(files: list[dict[str, Any]], offset: int) -> tuple[list[dict[str, Any]], int]:
        left = files if offset == 0 else files[5:]
        return left[offset:offset + 100], len(left)

    env.sandbox.rewrite("GET", "/files", listed(env, deleting))

    result = pull(env, "genviral:Many", str(out := env.root / "out"), "--json")

    assert tree(out) == {cdn_name: data}
    assert [(p["item"], p["reason"]) for p in result["problems"]] == [
        ("GET /files", f"1 image named by their CDN name: {NAMES_SHIFTED}")]


@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest first", "newest first"])
def test_uploads_during_the_walk_miss_no_name(env: Env, newest_first: bool) -> None:
    """Uploads while the list is read change its total: oldest first, they shift no page; newest first,
    they push files of the first page onto the second, read once (by id)."""
    a_pack_among_uploads(env, before=0 if newest_first else 150, after=150 if newest_first else 0)
    calls = []

    def uploading(files: list[dict[str, Any]], offset: int) -> tuple[list[dict[str, Any]], int]:
        calls.append(offset)
        if len(calls) == 2:  # (after the first page was read)
            for n in range(3):
                env.sandbox.upload(image(8, 8, seed=82), named=f"meanwhile/{n}.png")
            files = env.sandbox.store.list_files("ws-1", 10_000, 0, None)[0]
        ordered = files[::-1] if newest_first else files
        return ordered[offset:offset + 100], len(ordered)

    env.sandbox.rewrite("GET", "/files", listed(env, uploading))

    result = pull(env, "genviral:Many", str(out := env.root / "out"), "--json")

    assert set(tree(out)) == {"deep/wanted.png"} and result["problems"] == []
    assert calls == [0, 100]


# -- the rules, pure ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "made"), [
    ("backgrounds/sunset.png", "backgrounds/sunset.png"),
    ("équipe/café ü.png", "équipe/café ü.png"),
    ("CON.png", "CON_.png"),
    ("aux/x.png", "aux_/x.png"),
    ("dots./x.png", "dots_/x.png"),
    ("a\\b.png", "a_b.png"),
    ("../x.png", None),
    ("/abs.png", None),
    ("a/./b.png", None),
    ("a//b.png", None),
    (".packsync-pull-0123456789ab.part", None),
    ("語" * 78 + ".png", "語" * 78 + ".png"),  # 238 bytes in UTF-8: a name packsync may give
    ("é" * 119 + ".png", None),  # 242 bytes
    ("/".join(["d"] * 32) + "/x.png", None),
])
def test_given_path(given: str, made: str | None) -> None:
    assert given_path(given) == made


def test_a_given_name_without_an_image_extension_takes_its_bytes_one() -> None:
    download = genviral_download("/f", "p", RemoteImage("i", "https://cdn/abc.png"), "docs/readme")

    assert download.file_name("image/png") == "docs/readme.png" and download.directory == "docs"


@pytest.mark.parametrize(("path", "name", "expected"), [
    ("a/b/c.heic", "c.jpg", "a/b/c.jpg"),
    ("top.png", "top.png", "top.png"),
    ("bad\x07dir/c.png", "c.png", "c.png"),
    ("d" * 300 + "/c.png", "c.png", "c.png"),
    ("語" * 81 + "/c.png", "c.png", "c.png"),  # a directory a pull would not take: 243 bytes
    ("/".join("d" * 32) + "/c.png", "c.png", "c.png"),  # 33 parts
    (".cache/c.png", "c.png", "c.png"),
    ("a/" + "語" * 85 + ".png", "語" * 85 + ".png", "a/" + "語" * 78 + ".png"),  # cut to 238 bytes
])
def test_upload_name(path: str, name: str, expected: str) -> None:
    assert upload_name(path, name) == expected
    assert len(upload_name(path, name)) <= MAX_NAME


@pytest.mark.parametrize("path", [
    "a/b/c.png", "語" * 80 + "/" + "語" * 80 + ".png", "/".join("d" * 31) + "/c.png", "é" * 200 + ".png",
    "x" * 250 + ".jpeg", "dir/" + "x" * 300,
])
def test_a_name_packsync_gives_is_a_name_a_pull_takes(path: str) -> None:
    """What an upload is named (within the API's 255 characters) is what a pull names the file."""
    name = upload_name(path, file_name_for(path))

    assert given_path(name) == name


def test_the_sandbox_lists_files_by_page_camel_case_and_for_its_key_only(sandbox: Sandbox) -> None:
    import httpx2

    for n in range(3):
        sandbox.upload(image(8, 8, seed=n), named=f"n{n}.png")
    sandbox.upload(image(8, 8, seed=9), named="theirs.png", scope="ws-2")
    sandbox.upload(image(8, 8, seed=10))  # the web app's: no file of the API's

    with httpx2.Client(base_url=sandbox.base_url, headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=5) as api:
        first = api.get("/files", params={"limit": 2}).json()["data"]
        second = api.get("/files", params={"limit": 2, "offset": 2}).json()["data"]
        refused = api.get("/files", params={"limit": 101})

    assert [f["filename"] for f in first["files"] + second["files"]] == ["n0.png", "n1.png", "n2.png"], \
        "oldest first, the key's own (not another scope's, not the web app's)"
    assert first["total"] == 3 and (first["limit"], second["offset"]) == (2, 2)
    assert set(first["files"][0]) == {"id", "url", "contentType", "filename", "size", "createdAt"}
    assert refused.status_code == 400


# -- what a pushed folder holds besides plain files ---------------------------------------------------

needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


@needs_exiftool
def test_prepared_images_come_back_under_their_paths_with_their_upload_bytes(env: Env) -> None:
    """A photo whose location packsync stripped, a HEIC it converted: the bytes are the upload's, the
    names the files' (a converted file's extension is its bytes' one)."""
    folder = env.map("photos", pack="Trip", convert_to_jpeg=["heic"])
    write(folder / "day 1" / "beach.jpg", photos.jpeg(64, 48))
    write(folder / "day 2" / "IMG_0001.HEIC", photos.heic(64, 48))
    assert env.cli("run", "--no-wait").returncode == 0
    other = laptop(env)

    pull(other, "genviral:Trip", str(out := other.root / "out"))

    found = tree(out)
    assert sorted(found) == ["day 1/beach.jpg", "day 2/IMG_0001.jpg"]
    assert found["day 1/beach.jpg"] != (folder / "day 1" / "beach.jpg").read_bytes(), "the stripped upload"
    assert sorted(found.values()) == sorted(env.cdn_bytes(env.pack_named("Trip")["id"]))


def test_one_content_under_two_names_comes_back_once_under_the_first(env: Env) -> None:
    """The pack holds a content once, whatever the number of files holding it: one file comes back,
    named as the first of them (the one its upload was named after)."""
    same = image(8, 8, seed=70)
    pushed(env, {"b/copy.png": same, "a/original.png": same})

    pull(env, "genviral:Brand", str(here := env.root / "here"))
    pull(other := laptop(env), "genviral:Brand", str(there := other.root / "there"))

    assert tree(here) == tree(there) == {"a/original.png": same}


def uploaded_names(env: Env) -> list[str]:
    """The filename of every upload the key made, in order."""
    return sorted(f["filename"] for f in env.sandbox.store.list_files("ws-1", 100, 0, None)[0])


def test_one_content_in_two_packs_under_two_paths_comes_back_under_each_pack_s_path(env: Env) -> None:
    """GET /files has one name per upload: a content another pack holds under another path is uploaded
    again under that path, so that each pack comes back with its own names on a fresh machine."""
    same = image(9, 9, seed=71)
    write(env.map("a", pack="A") / "sub" / "x.png", same)
    write(env.map("b", pack="B") / "other" / "y.png", same)
    assert env.cli("run", "--no-wait").returncode == 0
    env.sandbox.reset_calls()

    rerun = env.cli("run", "--no-wait")
    pull(env, "genviral:B", str(here := env.root / "hereB"))
    pull(other := laptop(env), "genviral:B", str(there := other.root / "thereB"))
    pull(other, "genviral:A", str(there_a := other.root / "thereA"))

    assert uploaded_names(env) == ["other/y.png", "sub/x.png"]
    assert rerun.returncode == 0 and env.sandbox.mutating_calls() == 0, "both uploads are known as packsync's"
    assert tree(here) == tree(there) == {"other/y.png": same}
    assert tree(there_a) == {"sub/x.png": same}


def test_a_moved_file_comes_back_under_its_current_path_here_and_its_first_one_elsewhere(env: Env) -> None:
    """A move costs no upload and Genviral keeps an upload's name: the state that saw the move names the
    file by its current path, another machine by the path it was uploaded from (docs/guarantees.md)."""
    folder = pushed(env, {"old/x.png": (data := image(9, 9, seed=74))})
    (folder / "new").mkdir()
    (folder / "old" / "x.png").rename(folder / "new" / "x.png")
    env.sandbox.reset_calls()
    assert env.cli("run", "--no-wait").returncode == 0
    assert env.sandbox.mutating_calls() == 0

    pull(env, "genviral:Brand", str(here := env.root / "here"))
    pull(other := laptop(env), "genviral:Brand", str(there := other.root / "there"))

    assert tree(here) == {"new/x.png": data}
    assert tree(there) == {"old/x.png": data}


def test_one_content_in_two_subfolder_packs_comes_back_under_each_pack_s_path(env: Env) -> None:
    """The same between packs per subfolder; under the same path in both, it is uploaded once."""
    folder = env.map("brands", packs_from="subfolders")
    same, both = image(9, 9, seed=72), image(10, 9, seed=73)
    write(folder / "acme" / "bg" / "x.png", same)
    write(folder / "beta" / "logo" / "y.png", same)
    write(folder / "acme" / "shared.png", both)
    write(folder / "beta" / "shared.png", both)
    assert env.cli("run", "--no-wait").returncode == 0
    other = laptop(env)

    pull(other, "genviral:acme", str(other.root / "acme"))
    pull(other, "genviral:beta", str(other.root / "beta"))

    assert uploaded_names(env) == ["bg/x.png", "logo/y.png", "shared.png"]
    assert tree(other.root / "acme") == {"bg/x.png": same, "shared.png": both}
    assert tree(other.root / "beta") == {"logo/y.png": same, "shared.png": both}


def test_sidecars_go_beside_files_in_sub_folders_and_leave_with_them(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Described")
    image_id = env.sandbox.add_uploaded(pack_id, image(20, 10, seed=71), named="leaves/green leaf.png")
    wait_until(lambda: env.pack(pack_id)["images"][0]["metadata"]["status"] == "completed", timeout=10)
    env.write_config()
    out = env.root / "out"

    pull(env, "genviral:Described", str(out), "--sidecars", "xmp")
    env.sandbox.remove_image(pack_id, image_id)
    pull(env, "genviral:Described", str(out), "--sidecars", "xmp", "--delete", "--force")

    assert sorted(tree(out)) == [] and (out / "leaves").is_dir()


def test_sidecars_in_sub_folders_are_written(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Described")
    env.sandbox.add_uploaded(pack_id, image(20, 10, seed=72), named="leaves/green leaf.png")
    wait_until(lambda: env.pack(pack_id)["images"][0]["metadata"]["status"] == "completed", timeout=10)
    env.write_config()

    text = pull(env, "genviral:Described", str(out := env.root / "out"), "--sidecars", "xmp")

    assert sorted(tree(out)) == ["leaves/green leaf.png", "leaves/green leaf.png.xmp"]
    assert "sidecars   1 written" in text


def test_the_sandbox_keeps_the_files_names_across_restarts(tmp_path: Path) -> None:
    from packsync.sandbox import Account

    state = tmp_path / "sandbox.json"
    with Sandbox(accounts={TOKEN: Account(scope="ws-1")}, state_path=state) as first:
        url = first.upload(image(8, 8, seed=80), named="kept/name.png")
    with Sandbox(accounts={TOKEN: Account(scope="ws-1")}, state_path=state) as second:
        files, total = second.store.list_files("ws-1", 10, 0, None)

    assert total == 1 and files[0]["filename"] == "kept/name.png" and files[0]["url"] == url


def test_a_name_that_is_another_image_s_folder_takes_the_suffix(env: Env) -> None:
    """``x.png`` an image and ``x.png/y.png`` another: one of them cannot have its name; neither is lost
    or overwritten, and the pull ends."""
    pack_id = env.sandbox.create_pack("Clash")
    env.sandbox.add_uploaded(pack_id, (a := image(8, 8, seed=81)), named="x.png")
    env.sandbox.add_uploaded(pack_id, (b := image(9, 9, seed=82)), named="x.png/y.png")
    env.write_config()

    result = env.cli("pull", "genviral:Clash", str(out := env.root / "out"), "--json")

    assert result.returncode == 0 and "Traceback" not in result.stderr
    found = tree(out)
    if "x.png/y.png" in found:  # the folder was made first (its download starts by making it): the file moves aside
        assert found.pop("x.png/y.png") == b
        ((name, data),) = found.items()
        assert re.fullmatch(r"x-[0-9a-f]{8}\.png", name) and data == a
    else:  # the file came first: the other image is named as if unknown (test_hostile_names.py)
        assert found.pop("x.png") == a and list(found.values()) == [b]
