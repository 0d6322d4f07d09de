"""``packsync pull genviral:PACK DIR``: a pack's images into a folder, exact, atomic, resumable, contained."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import TOKEN, Env, image, write
from helpers import wait_until
from test_astria import astria_pack

from packsync.app import open_app
from packsync.engine.pull import Puller, PullOptions, PullReport
from packsync.engine.pull_folder import TEMP_PREFIX
from packsync.engine.pull_plan import (
    DisownFile,
    Download,
    PullPlan,
    RemoveFile,
    genviral_download,
    listed_download,
    name_from_url,
    plan_pull,
)
from packsync.errors import ExitCode
from packsync.model import Listed, ListedImage, PulledFile, RemoteImage
from packsync.sources.astria import pack_listed

CDN = ("GET", "cdn")


def pull(env: Env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return env.cli("pull", *args, timeout=timeout)


def listed_pull(env: Env, pack_id: int, out: Path, change: Callable[[Listed], Listed], sidecars: str = "none",
                **options: Any) -> PullReport:
    """Pull what the sandbox's Astria pack ``pack_id`` lists, ``change``d (as another remote source would
    list it): in process, over HTTP, as ``packsync pull`` does."""
    async def run() -> PullReport:
        async with open_app(env.config(), TOKEN) as app:
            listed = change(await pack_listed(app.clients["astria"], pack_id, None))
            return await Puller(app.api, app.state).pull_listed(listed, out, PullOptions(**options), sidecars)
    return asyncio.run(run())


def filled_pack(env: Env, count: int, name: str = "Brand") -> tuple[str, dict[str, bytes]]:
    """A pack filled in the web app; returns its id and each image's bytes by id."""
    pack_id = env.sandbox.create_pack(name)
    contents = {}
    for i in range(count):
        data = image(12, 12)
        contents[env.sandbox.add_uploaded(pack_id, data, f"{i}.png")] = data
    return pack_id, contents


def file_name_of(url: str) -> str:
    """The name pull gives the image at ``url`` (which the test made safe to name a file)."""
    name = name_from_url(url)
    assert name is not None, url
    return name


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_pull_writes_each_image_once_and_a_second_pull_downloads_nothing(env: Env) -> None:
    pack_id, contents = filled_pack(env, 5)
    env.write_config()
    out = env.root / "out"

    first = pull(env, "genviral:Brand", str(out))
    env.sandbox.reset_calls()
    second = pull(env, f"genviral:{pack_id}", str(out), "--json")

    assert first.returncode == 0, first.stderr
    assert "5 downloaded, 0 already here" in first.stdout
    assert sorted(files(out).values()) == sorted(contents.values())
    assert second.returncode == 0
    assert json.loads(second.stdout)["already_here"] == 5
    assert env.sandbox.calls == {("GET", "/packs/{id}"): 1}, "one pack read, no download"


def test_mapping_a_pulled_folder_to_its_pack_uploads_and_adds_nothing(env: Env) -> None:
    pack_id, _ = filled_pack(env, 4)
    out = env.map("out", pack_id=pack_id)
    assert pull(env, f"genviral:{pack_id}", str(out)).returncode == 0
    env.sandbox.reset_calls()

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stdout
    assert "4 adopted" in result.stdout
    assert env.sandbox.mutating_calls() == 0 and env.sandbox.calls[CDN] == 0


def test_a_killed_pull_leaves_no_partial_file_and_the_next_finishes_it(env: Env) -> None:
    _, contents = filled_pack(env, 24)
    env.write_config()
    out = env.root / "out"
    env.sandbox.faults.latency_s = 0.15
    process = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "pull", "genviral:Brand",
                                str(out)], env={**os.environ, "GENVIRAL_TOKEN": TOKEN},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: out.exists() and len([p for p in out.iterdir() if not p.name.startswith(".")]) >= 3,
                   timeout=60, what="a few files pulled")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    complete = set(contents.values())
    assert all(data in complete for name, data in files(out).items() if not name.startswith(TEMP_PREFIX)), \
        "a file under its final name is whole"
    assert len(files(out)) < 24

    env.sandbox.faults.latency_s = 0.0
    again = pull(env, "genviral:Brand", str(out))

    assert again.returncode == 0, again.stderr
    assert sorted(files(out).values()) == sorted(contents.values()), "exact bytes, each once, no leftovers"


def test_delete_removes_only_what_pull_wrote_and_nobody_changed(env: Env) -> None:
    pack_id, contents = filled_pack(env, 3)
    env.write_config()
    out = env.root / "out"
    assert pull(env, "genviral:Brand", str(out)).returncode == 0
    names = {data: name for name, data in files(out).items()}
    gone, changed, kept = list(contents)
    write(out / "mine.png", image())
    env.sandbox.remove_image(pack_id, gone)
    env.sandbox.remove_image(pack_id, changed)
    (out / names[contents[changed]]).write_bytes(image())

    without = pull(env, "genviral:Brand", str(out))
    assert without.returncode == 0 and names[contents[gone]] in files(out), "no --delete, nothing deleted"
    result = pull(env, "genviral:Brand", str(out), "--delete")

    assert result.returncode == 0, result.stderr
    remaining = files(out)
    assert names[contents[gone]] not in remaining
    assert names[contents[changed]] in remaining, "changed since pulled: the user's now"
    assert remaining[names[contents[kept]]] == contents[kept] and "mine.png" in remaining


def test_a_name_taken_by_another_file_gets_a_suffix_never_an_overwrite(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    data = image()
    url = env.sandbox.upload(data)
    env.sandbox.add_image(pack_id, url, "a.png")
    env.write_config()
    out = env.root / "out"
    taken = write(out / file_name_of(url), b"the user's own file")

    assert pull(env, "genviral:Brand", str(out)).returncode == 0

    assert taken.read_bytes() == b"the user's own file"
    assert sorted(files(out).values()) == sorted([b"the user's own file", data])


def test_hostile_urls_stay_inside_the_folder_and_are_reported(env: Env) -> None:
    pack_id, contents = filled_pack(env, 1)
    origin = env.sandbox.origin
    hostile = [f"{origin}/cdn/%2e%2e%2f%2e%2e%2fescape.png", f"{origin}/cdn/{'a' * 400}.png",
               f"{origin}/cdn/x%00.png", "file:///etc/passwd", f"{origin}/cdn/..%2Fx.jpg"]
    for url in hostile:
        env.sandbox.add_image(pack_id, url, "x.png")
    env.write_config()
    out = env.root / "box" / "out"
    around = sorted(os.listdir(env.root))

    result = pull(env, "genviral:Brand", str(out))

    assert result.returncode == ExitCode.SOME_FAILED
    assert result.stdout.count("failed     image") == len(hostile)
    assert sorted(os.listdir(env.root)) == sorted({*around, "box", "state"}) and os.listdir(env.root / "box") == ["out"]
    assert list(files(out).values()) == list(contents.values())


def test_dry_run_changes_nothing(env: Env) -> None:
    filled_pack(env, 2)
    env.write_config()
    out = env.root / "out"

    result = pull(env, "genviral:Brand", str(out), "--dry-run")

    assert result.returncode == 0 and result.stdout.count("download     ") == 2
    assert not out.exists() and not env.state_path.parent.exists()


def test_dry_run_json_prints_the_plan_each_action_with_its_kind_folder_file_and_image(env: Env) -> None:
    pack_id, contents = filled_pack(env, 3)
    env.write_config()
    out = env.root / "out"
    assert pull(env, "genviral:Brand", str(out)).returncode == 0
    names = {data: name for name, data in files(out).items()}
    gone, changed, kept = list(contents)
    env.sandbox.remove_image(pack_id, gone)
    env.sandbox.remove_image(pack_id, changed)
    (out / names[contents[changed]]).write_bytes(image())
    (out / names[contents[kept]]).unlink()
    before = files(out)

    result = pull(env, "genviral:Brand", str(out), "--delete", "--dry-run", "--json")

    assert result.returncode == 0, result.stderr
    actions = json.loads(result.stdout)["actions"]
    assert sorted(actions, key=lambda a: a["kind"]) == [
        {"kind": "disown-file", "mapping": str(out), "file": names[contents[changed]], "image": changed},
        {"kind": "download", "mapping": str(out), "file": names[contents[kept]], "image": kept},
        {"kind": "remove-file", "mapping": str(out), "file": names[contents[gone]], "image": gone}]
    assert files(out) == before, "a dry run changes nothing"


# -- the pull's plan (pure) -----------------------------------------------------------------------

FOLDER = "/pulled"


def record(image_id: str) -> PulledFile:
    return PulledFile(FOLDER, "p1", f"{image_id}.png", image_id, f"https://cdn.example.com/{image_id}.png", "ab" * 32)


def download(image_id: str) -> Download:
    return genviral_download(FOLDER, "p1", RemoteImage(image_id, f"https://cdn.example.com/{image_id}.png"))


@pytest.mark.parametrize(("present", "unchanged", "delete", "expected"), [
    # every image of the pack whose file is not there is downloaded; the others are kept
    (set(), set(), False, PullPlan((download("a"), download("b")), (), 0)),
    ({"a", "b"}, set(), False, PullPlan((), (), 2)),
    ({"a"}, set(), False, PullPlan((download("b"),), (), 1)),
    # a file whose image left the pack: removed with --delete only, and only if it is unchanged
    ({"a", "b", "gone"}, {"gone"}, False, PullPlan((), (), 2)),
    ({"a", "b", "gone"}, {"gone"}, True, PullPlan((), (RemoveFile(record("gone")),), 2)),
    ({"a", "b", "gone"}, set(), True, PullPlan((), (DisownFile(record("gone")),), 2)),
    ({"a", "b"}, set(), True, PullPlan((), (DisownFile(record("gone")),), 2)),
])
def test_the_plan_downloads_what_is_not_here_and_removes_only_unchanged_files_it_pulled(
        present: set[str], unchanged: set[str], delete: bool, expected: PullPlan) -> None:
    records = [record("a"), record("b"), record("gone")]

    assert plan_pull([download("a"), download("b")], records, present, unchanged, delete=delete) == expected


def test_a_file_pull_did_not_record_is_never_in_the_plan() -> None:
    plan = plan_pull([], [], present=set(), unchanged={"mine"}, delete=True)

    assert plan == PullPlan()


def test_each_action_describes_itself_with_its_kind_folder_file_and_image() -> None:
    astria = listed_download(FOLDER, "astria:7", ListedImage("https://a.example.com/x", ("../woman", "12-3")))

    assert download("a").describe() == {"kind": "download", "mapping": FOLDER, "file": "a.png", "image": "a"}
    assert astria.describe()["file"].endswith("/12-3.*") and astria.file_name("image/jpeg").endswith("/12-3.jpg")
    assert ".." not in astria.file_name("image/jpeg")
    assert RemoveFile(record("a")).describe() == {"kind": "remove-file", "mapping": FOLDER, "file": "a.png",
                                                  "image": "a"}
    assert DisownFile(record("a")).describe()["kind"] == "disown-file"


@pytest.mark.parametrize("parts", [
    ("..", "12-3"), ("../..", "12-3"), ("a/b", "12-3"), ("/etc", "passwd"), ("woman\x00", "1-1"), ("", "1-1"),
    (".hidden", "1-1"), ("woman", ".."), ("woman", "../1-1"), ("woman", "a/b"), ("woman", "1-1.png.exe"),
    ("woman", "\x1b[31m"), (),
])
def test_each_part_of_a_listed_image_becomes_one_safe_name_below_the_folder(parts: tuple[str, ...]) -> None:
    download = listed_download(FOLDER, "astria-tune:7", ListedImage("https://a.example.com/x", parts))
    name = download.file_name("image/png")

    written = name.split("/")
    assert len(written) == max(len(parts), 1), "a part is one folder level, never more"
    assert all(part and not part.startswith(".") and part.isprintable() for part in written), name
    assert os.path.normpath(os.path.join(FOLDER, name)).startswith(f"{FOLDER}/")
    assert name.endswith(".png") and written[-1].count(".") == 1, "the extension is the one the bytes give"
    assert download.renamed is not None, "a name changed is said"
    assert (download.image_id, download.pack_id) == ("https://a.example.com/x", "astria-tune:7")


def test_a_listed_image_with_safe_parts_keeps_its_name() -> None:
    nested = listed_download(FOLDER, "astria:7", ListedImage("https://a.example.com/x", ("woman", "12-3")))
    flat = listed_download(FOLDER, "astria-tune:7", ListedImage("https://a.example.com/y", ("12-3",), "a text"))

    assert (nested.file_name("image/jpeg"), nested.directory, nested.renamed) == ("woman/12-3.jpg", "woman", None)
    assert (flat.file_name("image/webp"), flat.directory, flat.renamed) == ("12-3.webp", "", None)


def test_an_image_listed_twice_is_one_file_named_after_its_first_listing(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 2})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"

    report = listed_pull(env, pack_id, out, lambda listed: msgspec.structs.replace(
        listed, images=(*listed.images, ListedImage(urls[0], ("again", "9-9")))))

    assert report.failures == [] and len(report.downloaded) == 2
    assert env.sandbox.calls[("GET", "astria-img")] == 2
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == sorted(report.downloaded)
    assert not (out / "again").exists()


def test_a_pack_name_finds_the_key_s_own_pack_before_a_public_one(env: Env) -> None:
    public = env.sandbox.create_pack("Shared", scope="ws-2", is_public=True)
    env.sandbox.add_uploaded(public, image(), "theirs.png")
    own, contents = filled_pack(env, 1, name="Shared")
    env.write_config()

    assert pull(env, "genviral:Shared", str(env.root / "out")).returncode == 0
    assert list(files(env.root / "out").values()) == list(contents.values())

    missing = pull(env, "genviral:No Such Pack", str(env.root / "none"))
    assert missing.returncode == ExitCode.SOME_FAILED and "no pack has the id or the name" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize(("url", "expected"), [
    ("https://cdn.example.com/u/photo.jpg", "photo.jpg"),
    ("https://cdn.example.com/u/My%20Photo%20(2).PNG", "My Photo (2).PNG"),
    ("https://cdn.example.com/u/..%2Fx.jpg", None),
    ("https://cdn.example.com/u/%2e%2e", None),
    ("https://cdn.example.com/u/.hidden.png", None),
    ("https://cdn.example.com/u/x%00.png", None),
    ("https://cdn.example.com/u/a%0Ab.png", None),
    ("https://cdn.example.com/u/" + "a" * 300 + ".png", None),
    ("https://cdn.example.com/u/notes.txt", None),
    ("https://cdn.example.com/", None),
])
def test_a_url_names_a_file_only_when_the_name_is_safe(url: str, expected: str | None) -> None:
    assert name_from_url(url) == expected


def fallback_name(image_id: str, content_type: str) -> str:
    """The name of an image whose URL gives none."""
    return genviral_download(FOLDER, "p1", RemoteImage(image_id, "https://cdn.example.com/")).file_name(content_type)


def test_the_fallback_name_is_the_image_id_made_safe() -> None:
    assert fallback_name("0b1c-22", "image/webp") == "0b1c-22.webp"
    unsafe = fallback_name("../../etc/passwd", "image/png")
    assert "/" not in unsafe and unsafe.endswith(".png") and not unsafe.startswith(".")


def test_pulling_another_pack_into_the_folder_deletes_none_of_the_first_s_files(env: Env) -> None:
    _, first = filled_pack(env, 2, name="First")
    filled_pack(env, 1, name="Second")
    env.write_config()
    out = env.root / "out"
    assert pull(env, "genviral:First", str(out)).returncode == 0

    result = pull(env, "genviral:Second", str(out), "--delete")

    assert result.returncode == 0 and "0 deleted" in result.stdout
    assert set(first.values()) <= set(files(out).values())


def test_a_user_s_own_copy_under_the_same_name_is_never_taken_for_a_pulled_file(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    data = image()
    url = env.sandbox.upload(data)
    image_id = env.sandbox.add_image(pack_id, url, "a.png")
    env.write_config()
    out = env.root / "out"
    original = write(out / file_name_of(url), data)

    assert pull(env, "genviral:Brand", str(out)).returncode == 0
    env.sandbox.remove_image(pack_id, image_id)
    assert pull(env, "genviral:Brand", str(out), "--delete", "--force").returncode == 0  # (the pack is empty)

    assert original.read_bytes() == data, "the user's file was never pull's to delete"
    assert list(files(out)) == [original.name]


def test_a_state_from_before_pull_existed_is_read_and_written_without_complaint(env: Env) -> None:
    import sqlite3

    filled_pack(env, 1)
    write(env.map("brand", pack="Brand") / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    with sqlite3.connect(env.state_path) as db:
        db.execute("DROP TABLE pulled")
        db.execute("DROP TABLE url_contents")

    dry_pull = pull(env, "genviral:Brand", str(env.root / "out"), "--dry-run")
    dry_run = env.cli("run", "--dry-run")
    real = pull(env, "genviral:Brand", str(env.root / "out"))

    assert dry_pull.returncode == 0 and "corrupt" not in dry_pull.stderr, dry_pull.stderr
    assert dry_run.returncode == 0, dry_run.stderr
    assert real.returncode == 0 and "2 downloaded" in real.stdout, real.stderr  # the web app's and a.png


def test_a_folder_that_is_a_file_is_one_sentence(env: Env) -> None:
    filled_pack(env, 1)
    env.write_config()
    blocker = write(env.root / "blocker", b"a file")

    result = pull(env, "genviral:Brand", str(blocker / "out"))

    assert result.returncode != 0 and "cannot be used as the pull's folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_symlink_loop_for_a_folder_is_one_sentence(env: Env) -> None:
    filled_pack(env, 1)
    env.write_config()
    loop = env.root / "loop"
    loop.symlink_to(loop)

    result = pull(env, "genviral:Brand", str(loop))

    assert result.returncode != 0 and "cannot be used as the pull's folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_only_pull_s_own_leftovers_are_cleaned_up(env: Env) -> None:
    _, contents = filled_pack(env, 1)
    env.write_config()
    out = env.root / "out"
    mine = write(out / f"{TEMP_PREFIX}notes.txt", b"the user's")
    leftover = write(out / f"{TEMP_PREFIX}0123456789ab.part", b"half an image")

    assert pull(env, "genviral:Brand", str(out)).returncode == 0

    assert mine.read_bytes() == b"the user's" and not leftover.exists()


def test_an_empty_folder_argument_is_a_usage_error(env: Env) -> None:
    filled_pack(env, 1)
    env.write_config()

    result = pull(env, "genviral:Brand", "")

    assert result.returncode == ExitCode.USAGE and "FOLDER" in result.stderr
