"""Images prepared before upload, end to end: what reaches the pack is read back from the sandbox's storage
(and checked with Debian's exiftool where it is installed); the file on disk stays the identity."""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2
import photos
import pytest
from conftest import Env, write
from helpers import state_rows
from PIL import Image

from packsync.errors import ExitCode
from packsync.model import ManagedImage
from packsync.state.store import State

UPLOAD = ("POST", "/files")
ADD = ("POST", "/packs/{id}/images")
DELETE = ("DELETE", "/packs/{id}/images/{image_id}")
LOCATION = ("GPSLatitude", "GPSLongitude", "GPSPosition", "City", "Country", "LocationCreated", "LocationShown")
SERIALS = ("SerialNumber", "LensSerialNumber", "InternalSerialNumber")
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed: apt-get "
                                    "install libimage-exiftool-perl (the uploads are then checked by a real reader)")


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.convert("RGBA").tobytes()


def tags_named(tags: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The tags (exiftool's ``Group:Name`` keys) whose name is one of ``names``."""
    return [key for key in tags if key.split(":")[-1] in names]


def only_upload(env: Env, pack_id: str) -> bytes:
    found = env.cdn_bytes(pack_id)
    assert len(found) == 1, f"the pack holds {len(found)} images"
    return found[0]


def status_files(env: Env) -> list[dict[str, Any]]:
    document = json.loads(env.cli("status", "--json", "--files", token=None).stdout)
    return [file for mapping in document["mappings"] for file in mapping["file_list"]]


def recorded(env: Env, pack_id: str) -> list[ManagedImage]:
    """The images the state records in the pack (with the names they were added as)."""
    state = State(env.state_path, readonly=True)
    try:
        return state.images.managed(pack_id)
    finally:
        state.close()


MAKERS: dict[str, Callable[[int, int], bytes]] = {"jpeg": photos.jpeg, "png": photos.png, "webp": photos.webp}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_location_and_serials_never_leave_the_machine_and_nothing_else_changes(env: Env, kind: str) -> None:
    folder = env.map("photos", pack="Trip")
    original = write(folder / f"beach.{kind}", MAKERS[kind](64, 48)).read_bytes()

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    pack_id = env.pack_named("Trip")["id"]
    sent = only_upload(env, pack_id)
    assert sent != original
    assert pixels(sent) == pixels(original), "stripping tags never re-encodes the pixels"
    with Image.open(io.BytesIO(sent)) as opened, Image.open(io.BytesIO(original)) as before:
        opened.load()
        before.load()
        assert opened.info.get("icc_profile") == before.info["icc_profile"], "the colour profile is kept"
        assert opened.getexif().get(0x0112) == before.getexif().get(0x0112), "the orientation is kept"
        assert 0x8825 not in opened.getexif() and 0x8825 in before.getexif(), "no GPS directory any more"
    assert original == (folder / f"beach.{kind}").read_bytes(), "the file itself is never changed"
    files = status_files(env)
    assert [(f["path"], f["state"], f["prepared"]) for f in files] == [
        (f"beach.{kind}", "synced", ["location", "serials"])]


@needs_exiftool
def test_exiftool_finds_no_location_or_serial_in_an_upload_but_the_orientation_and_profile(env: Env) -> None:
    folder = env.map("photos", pack="Trip")
    write(folder / "beach.jpg", photos.jpeg(64, 48))
    before = photos.exiftool(folder / "beach.jpg")
    assert before is not None and tags_named(before, LOCATION) and tags_named(before, SERIALS), "the fixture is honest"

    assert env.sync().exit_code == ExitCode.OK

    tags = photos.exiftool(only_upload(env, env.pack_named("Trip")["id"]))
    assert tags is not None
    assert tags_named(tags, LOCATION) == [] and tags_named(tags, SERIALS) == []
    assert [tags[key] for key in tags_named(tags, ("Orientation",))] == [6]
    assert tags_named(tags, ("ProfileDescription",)), "the ICC profile is still there"


def test_strip_nothing_uploads_the_exact_bytes(env: Env) -> None:
    folder = env.map("photos", pack="Trip", strip=[])
    original = write(folder / "beach.jpg", photos.jpeg(64, 48)).read_bytes()

    assert env.sync().exit_code == ExitCode.OK

    assert only_upload(env, env.pack_named("Trip")["id"]) == original
    assert status_files(env)[0]["prepared"] == []


def test_max_edge_scales_a_large_photo_down_as_it_is_displayed(env: Env) -> None:
    folder = env.map("photos", pack="Trip", max_edge=400)
    write(folder / "tall.jpg", photos.jpeg(1200, 900))  # stored landscape, shown portrait (orientation 6)

    assert env.sync().exit_code == ExitCode.OK

    sent = only_upload(env, env.pack_named("Trip")["id"])
    with Image.open(io.BytesIO(sent)) as opened:
        assert opened.format == "JPEG"
        assert opened.size == (300, 400), "rotated as displayed, then the long edge scaled to max_edge"
        assert opened.getexif().get(0x0112, 1) == 1, "the rotation is in the pixels now"
        assert opened.info.get("icc_profile"), "the colour profile is kept"
        assert 0x8825 not in opened.getexif()
    assert status_files(env)[0]["prepared"] == ["location", "serials", "resize:400"]


def test_a_heic_photo_is_uploaded_as_a_jpeg_named_so(env: Env) -> None:
    folder = env.map("photos", pack="Trip", convert_to_jpeg=["heic", "heif"])
    write(folder / "IMG_0001.HEIC", photos.heic(64, 48))

    assert env.sync().exit_code == ExitCode.OK

    pack_id = env.pack_named("Trip")["id"]
    image, = env.pack(pack_id)["images"]
    assert image["url"].endswith(".jpg")
    assert [i.file_name for i in recorded(env, pack_id)] == ["IMG_0001.jpg"]
    sent = only_upload(env, env.pack_named("Trip")["id"])
    with Image.open(io.BytesIO(sent)) as opened:
        opened.load()
        assert opened.format == "JPEG" and opened.size == (48, 64)


def test_an_avif_photo_is_a_problem_until_it_is_converted(env: Env) -> None:
    folder = env.map("photos", pack="Trip", include=["*.avif"])
    write(folder / "a.avif", photos.avif(64, 48))

    refused = env.sync()

    assert [(p.rel_path, "convert_to_jpeg" in p.reason) for p in refused.mappings[0].problems] == [("a.avif", True)]
    env.mappings[0]["convert_to_jpeg"] = ["avif"]
    assert env.sync().exit_code == ExitCode.OK
    with Image.open(io.BytesIO(only_upload(env, env.pack_named("Trip")["id"]))) as opened:
        assert opened.format == "JPEG"


def test_a_lost_state_adopts_the_prepared_images_and_uploads_nothing(env: Env) -> None:
    folder = env.map("photos", pack="Trip", max_edge=400)
    write(folder / "a.jpg", photos.jpeg(1200, 900))
    write(folder / "b.png", photos.png(64, 48))
    assert env.cli("run", "--no-wait").returncode == 0
    pack_id = env.pack_named("Trip")["id"]
    before = {image["id"] for image in env.pack(pack_id)["images"]}
    shutil.rmtree(env.state_path.parent)
    env.sandbox.reset_calls()

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 adopted" in result.stdout
    assert env.sandbox.mutating_calls() == 0, "nothing uploaded, added or deleted"
    assert {image["id"] for image in env.pack(pack_id)["images"]} == before
    env.sandbox.reset_calls()
    assert "0 added, 0 deleted, 0 skipped, 0 failed" in env.cli("run", "--no-wait").stdout
    assert env.sandbox.mutating_calls() == 0


def test_turning_strip_on_replaces_only_the_images_that_carried_the_tags(env: Env) -> None:
    folder = env.map("photos", pack="Trip", strip=[])
    write(folder / "gps.jpg", photos.jpeg(64, 48))
    write(folder / "plain.jpg", photos.jpeg(64, 48, gps=False, serials=False, people=False, xmp_location=False,
                                            iptc=False))
    for n in range(2):
        write(folder / f"more-{n}.png", photos.png(32, 32, gps=False, serials=False, xmp_location=False))
    assert env.sync().exit_code == ExitCode.OK
    pack_id = env.pack_named("Trip")["id"]
    ids = {image.file_name: image.image_id for image in recorded(env, pack_id)}
    del env.mappings[0]["strip"]  # the default: location and serials
    env.write_config()
    env.sandbox.reset_calls()

    dry = env.cli("run", "--dry-run")
    assert "replace    gps.jpg" in dry.stdout and "plain.jpg" not in dry.stdout, dry.stdout
    assert env.sandbox.mutating_calls() == 0

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    after = {image.file_name: image.image_id for image in recorded(env, pack_id)}
    assert after.keys() == ids.keys()
    assert {image["id"] for image in env.pack(pack_id)["images"]} == set(after.values())
    assert after["gps.jpg"] != ids["gps.jpg"], "the image with a location was replaced"
    assert {k: v for k, v in after.items() if k != "gps.jpg"} == {k: v for k, v in ids.items() if k != "gps.jpg"}
    assert (env.sandbox.calls[UPLOAD], env.sandbox.calls[ADD], env.sandbox.calls[DELETE]) == (1, 1, 1)
    env.sandbox.reset_calls()
    again = env.sync()
    assert again.exit_code == ExitCode.OK and env.sandbox.mutating_calls() == 0, "settled"


def synced_as_they_are(env: Env, photos_with_gps: int, **options: Any) -> tuple[Path, str]:
    """A folder of photos carrying a location, synced with ``strip = []``; then the default strip is
    configured. Its folder and its pack."""
    folder = env.map("photos", pack="Trip", strip=[], **options)
    for n in range(photos_with_gps):
        write(folder / f"gps-{n}.jpg", photos.jpeg(48, 32))
    assert env.sync().exit_code == ExitCode.OK
    del env.mappings[0]["strip"]
    return folder, env.pack_named("Trip")["id"]


def test_a_replacement_withheld_by_the_safety_stop_adds_no_second_copy(env: Env) -> None:
    _folder, pack_id = synced_as_they_are(env, 3, max_delete=1)
    env.sandbox.reset_calls()

    stopped = env.sync()

    assert stopped.exit_code == ExitCode.SAFETY
    assert env.sandbox.mutating_calls() == 0, "no replacement is added while its old image must stay"
    assert len(env.pack(pack_id)["images"]) == 3
    forced = env.sync(force=True)
    assert forced.exit_code == ExitCode.OK
    assert len(env.pack(pack_id)["images"]) == 3
    assert all(photos.exiftool(data) is None or not tags_named(photos.exiftool(data) or {}, LOCATION)
               for data in env.cdn_bytes(pack_id))


def test_a_file_that_cannot_be_decoded_is_a_problem_of_its_own_and_the_rest_syncs(env: Env) -> None:
    folder = env.map("photos", pack="Trip", max_edge=400)
    good = photos.jpeg(64, 48)
    # A JPEG's start and end around bytes no decoder reads: the scan takes it, preparing cannot.
    write(folder / "broken.jpg", good[:200] + bytes(range(256)) * 40 + b"\xff\xd9")
    write(folder / "good.jpg", good)

    first = env.sync()

    assert first.exit_code == ExitCode.SOME_FAILED
    outcome = first.mappings[0].outcome
    assert outcome is not None and outcome.added == 1
    assert [where.rsplit("/", 1)[-1] for where, _why in outcome.failures] == ["broken.jpg"]
    second = env.sync()
    problems = {p.rel_path: p.reason for p in second.mappings[0].problems}
    assert list(problems) == ["broken.jpg"] and "cannot be prepared for upload" in problems["broken.jpg"]
    assert env.sandbox.calls[UPLOAD] == 1, "it is not tried again until the file changes"


def test_the_same_photo_into_two_packs_with_two_recipes_is_two_uploads_and_one_with_one(env: Env) -> None:
    a = env.map("a", pack="A")
    b = env.map("b", pack="B", strip=[])
    c = env.map("c", pack="C")
    data = photos.jpeg(64, 48)
    for folder in (a, b, c):
        write(folder / "same.jpg", data)

    assert env.sync().exit_code == ExitCode.OK

    assert env.sandbox.calls[UPLOAD] == 2
    assert only_upload(env, env.pack_named("B")["id"]) == data
    assert only_upload(env, env.pack_named("A")["id"]) == only_upload(env, env.pack_named("C")["id"]) != data


def test_prepared_files_are_shown_in_run_json(env: Env, tmp_path: Path) -> None:
    folder = env.map("photos", pack="Trip")
    write(folder / "beach.jpg", photos.jpeg(64, 48))
    write(folder / "plain.png", photos.png(32, 32, gps=False, serials=False, xmp_location=False))

    result = env.cli("run", "--no-wait", "--json")

    document = json.loads(result.stdout)
    assert document["mappings"][0]["prepared"] == [{"item": "beach.jpg", "changes": ["location", "serials"]}]


def test_the_page_shows_what_was_changed_in_each_upload(env: Env) -> None:
    folder = env.map("photos", pack="Trip", max_edge=256)
    write(folder / "beach.jpg", photos.jpeg(640, 480))
    write(folder / "plain.png", photos.png(32, 32, gps=False, serials=False, xmp_location=False))
    assert env.sync().exit_code == ExitCode.OK
    proc = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "ui", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        assert match
        html = httpx2.get(match.group(1)).text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    cards = {m.group(1): m.group(0) for m in re.finditer(r'title="([^"]+)">(?:(?!</li>).)*</li>', html, re.S)}
    assert "uploaded with location and serial numbers stripped; resized to 256 px" in cards["beach.jpg"]
    assert "uploaded with" not in cards["plain.png"]


def test_an_astria_avif_is_a_problem_until_converted_then_a_jpeg(env: Env) -> None:
    pack_id = env.sandbox.astria.add_pack("Headshots")
    env.sandbox.astria.add_image(pack_id, "woman", photos.avif(48, 32))
    env.map_astria(pack_id, pack="Headshots")

    refused = env.sync()

    assert [("convert_to_jpeg" in p.reason) for p in refused.mappings[0].problems] == [True]
    env.mappings[0]["convert_to_jpeg"] = ["avif"]
    assert env.sync().exit_code == ExitCode.OK
    with Image.open(io.BytesIO(only_upload(env, env.pack_named("Headshots")["id"]))) as opened:
        assert opened.format == "JPEG"


def test_a_failing_file_leaves_no_picture_twice_while_the_others_are_replaced(env: Env) -> None:
    folder, pack_id = synced_as_they_are(env, 4, max_delete=10)
    good = photos.jpeg(64, 48)
    write(folder / "broken.jpg", good[:200] + bytes(range(256)) * 40 + b"\xff\xd9")
    env.mappings[0].update(max_edge=400)

    report = env.sync()

    assert report.exit_code == ExitCode.SOME_FAILED
    assert len(env.pack(pack_id)["images"]) == 4, "each replacement deleted the image it replaced"
    assert all(not tags_named(photos.exiftool(data) or {}, LOCATION) for data in env.cdn_bytes(pack_id))


def broken_exif(data: bytes) -> bytes:
    """A JPEG whose EXIF points outside itself: its pixels decode, its tags cannot be stripped."""
    at = data.index(b"Exif\x00\x00") + 6
    offset = (0xFFFFFF00).to_bytes(4, "little" if data[at:at + 2] == b"II" else "big")
    return data[:at + 4] + offset + data[at + 8:]


def changes_counted(env: Env) -> int:
    (count,), = state_rows(env.state_path, "SELECT count FROM changes")
    return int(count)


def test_a_file_whose_tags_cannot_be_stripped_is_never_uploaded_with_them(env: Env) -> None:
    folder = env.map("photos", pack="Trip")
    write(folder / "odd.jpg", broken_exif(photos.jpeg(48, 32)))

    report = env.sync()

    assert report.exit_code == ExitCode.SOME_FAILED
    assert env.pack(env.pack_named("Trip")["id"])["images"] == []


def test_an_image_its_new_recipe_cannot_prepare_is_kept_and_said_so_every_run(env: Env) -> None:
    folder = env.map("photos", pack="Trip", strip=[])
    write(folder / "odd.jpg", broken_exif(photos.jpeg(48, 32)))
    assert env.sync().exit_code == ExitCode.OK
    pack_id = env.pack_named("Trip")["id"]
    before = env.pack(pack_id)["images"]
    del env.mappings[0]["strip"]

    for _run in range(2):
        report = env.sync()
        assert report.exit_code == ExitCode.SOME_FAILED, "a location that cannot be stripped is worth a word"
        assert [(p.rel_path, "its image in the pack is the file as uploaded before" in p.reason)
                for p in report.mappings[0].problems] == [("odd.jpg", True)]
    assert [i["id"] for i in env.pack(pack_id)["images"]] == [i["id"] for i in before], \
        "its image stays: deleting it would lose the picture from the pack"


def test_a_file_that_cannot_be_prepared_is_not_prepared_again_beside_a_foreign_image(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Trip")
    env.sandbox.add_uploaded(pack_id, photos.png(24, 24, gps=False, serials=False, xmp_location=False), "web.png")
    folder = env.map("photos", pack_id=pack_id)
    write(folder / "odd.jpg", broken_exif(photos.jpeg(48, 32)))
    write(folder / "good.jpg", photos.jpeg(40, 30))
    env.sync()
    env.sync(wait=True)  # (the metadata settled: what the next run records of it is nothing)
    counted = changes_counted(env)

    third = env.sync()

    assert [p.rel_path for p in third.mappings[0].problems] == ["odd.jpg"]
    assert changes_counted(env) == counted, "nothing was learnt anew, so nothing was recorded anew"


def test_an_upload_recovered_after_a_crash_keeps_the_recipe_that_made_it(env: Env) -> None:
    """An image added but never recorded (a run killed in between) is found by its URL; if the recipe has
    changed since, it is recorded as what made it, and so replaced, not taken for the new recipe's."""
    folder = env.map("photos", pack="Trip", strip=[])
    write(folder / "beach.jpg", photos.jpeg(48, 32))
    assert env.sync().exit_code == ExitCode.OK
    with closing(sqlite3.connect(env.state_path)) as db, db:
        db.execute("DELETE FROM images")  # as if the run died after the add, before its record
    del env.mappings[0]["strip"]

    recovered = env.sync()
    replaced = env.sync(force=True)

    assert recovered.mappings[0].outcome is not None and recovered.mappings[0].outcome.recovered == 1
    assert replaced.exit_code == ExitCode.OK
    tags = photos.exiftool(only_upload(env, env.pack_named("Trip")["id"]))
    assert tags is None or not tags_named(tags, LOCATION)
    with Image.open(io.BytesIO(only_upload(env, env.pack_named("Trip")["id"]))) as opened:
        assert 0x8825 not in opened.getexif(), "the location is gone from the pack"


def test_an_avif_judged_by_an_older_release_is_converted_once_the_state_is_upgraded(env: Env) -> None:
    folder = env.map("photos", pack="Trip", include=["*.avif"])
    write(folder / "a.avif", photos.avif(48, 32))
    env.sync()
    with closing(sqlite3.connect(env.state_path)) as db, db:  # the file as schema 7 judged it, for good
        db.execute("UPDATE files SET content_type = NULL, problem = 'AVIF images are not accepted by Genviral "
                   "(use JPEG, PNG, GIF, WebP or HEIC)'")
        for statement in ("DROP TABLE prepared", "ALTER TABLE images DROP COLUMN recipe",
                          "UPDATE meta SET value = '7' WHERE key = 'schema'"):
            db.execute(statement)
    env.mappings[0]["convert_to_jpeg"] = ["avif"]

    report = env.sync()

    assert report.exit_code == ExitCode.OK and report.mappings[0].problems == []
    with Image.open(io.BytesIO(only_upload(env, env.pack_named("Trip")["id"]))) as opened:
        assert opened.format == "JPEG"
