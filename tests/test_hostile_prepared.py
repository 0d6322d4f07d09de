"""A hostile tester's cases for images prepared before upload: the odd places location and serials hide,
and the engine's paths around preparing (the daemon, dry runs, lost states), against the real sandbox."""

from __future__ import annotations

import io
import shutil

import photos
import pytest
from conftest import Env, write
from helpers import StartDaemon, wait_until
from PIL import Image
from test_prepared_sync import only_upload, recorded, status_files, synced_as_they_are
from test_state import as_schema

from packsync import prepare
from packsync.errors import ExitCode
from packsync.recipe import Recipe

#: Values the fixtures write that must never be in an upload stripped by the default recipe.
SECRETS = (photos.BODY_SERIAL.encode(), photos.LENS_SERIAL.encode(), photos.CITY.encode(), b"52,22.056N",
           b"MAKERNOTE-SERIAL")


def leaked(data: bytes) -> list[bytes]:
    return [secret for secret in SECRETS if secret in data]


def adopted_after_losing_the_state(env: Env, pack_id: str) -> set[str]:
    """Lose the state, sync: every image of the pack is adopted and nothing uploaded, added or deleted.
    The pack's image ids."""
    before = {image["id"] for image in env.pack(pack_id)["images"]}
    shutil.rmtree(env.state_path.parent)
    env.sandbox.reset_calls()

    adopted = env.sync()

    assert adopted.exit_code == ExitCode.OK
    assert env.sandbox.mutating_calls() == 0, "nothing uploaded, added or deleted"
    assert {image["id"] for image in env.pack(pack_id)["images"]} == before
    return before


def test_a_jpeg_appended_after_the_image_without_an_index_is_stripped_too() -> None:
    """Some apps append the original (or a preview) after the image's end without an MPF index: its EXIF
    and XMP are as readable as the first image's, so they are stripped in place as an MPF image's are."""
    first, second = photos.jpeg(64, 48), photos.jpeg(32, 24, iptc=False)
    made = prepare.prepare(first + second, "image/jpeg", Recipe())
    assert leaked(made.data) == []
    assert len(made.data) == len(first + second)
    assert made.data[:len(first)] == prepare.prepare(first, "image/jpeg", Recipe()).data


@pytest.mark.parametrize("sixth", [b"\xff", b"\x01"])
def test_an_exif_segment_with_an_odd_signature_is_stripped(sixth: bytes) -> None:
    """exiftool (and carving) read ``Exif\\0`` followed by any byte as EXIF, as some old writers wrote it."""
    data = photos.jpeg(64, 48, iptc=False, xmp_location=False, serials=False)
    at = data.index(b"Exif\x00\x00")
    odd = data[:at + 5] + sixth + data[at + 6:]
    made = prepare.prepare(odd, "image/jpeg", Recipe())
    assert "location" in made.changes
    found = photos.exiftool(made.data)
    if found is not None:
        assert not [tag for tag in found if "GPS" in tag]


# -- the engine's paths, against the sandbox -------------------------------------------------------------

UPLOAD = ("POST", "/files")
PUT = ("PUT", "storage")
ADD = ("POST", "/packs/{id}/images")
DELETE = ("DELETE", "/packs/{id}/images/{image_id}")


def test_the_daemons_incremental_path_strips_a_new_photo_too(env: Env) -> None:
    folder = env.map("photos", pack="Trip")
    write(folder / "old.png", photos.png(32, 32, gps=False, serials=False, xmp_location=False))
    assert env.sync().exit_code == ExitCode.OK
    write(folder / "new.jpg", photos.jpeg(64, 48))

    report = env.sync_changed(folder, {"new.jpg"})

    assert report.exit_code == ExitCode.OK
    sent = env.cdn_bytes(env.pack_named("Trip")["id"])
    assert len(sent) == 2 and [leaked(data) for data in sent] == [[], []]


def test_a_recipe_change_and_a_file_change_at_once_upload_the_new_file_stripped(env: Env) -> None:
    folder, pack_id = synced_as_they_are(env, 1)
    write(folder / "gps-0.jpg", photos.jpeg(80, 60))
    env.sandbox.reset_calls()

    report = env.sync()

    assert report.exit_code == ExitCode.OK
    sent = only_upload(env, pack_id)
    assert leaked(sent) == [] and Image.open(io.BytesIO(sent)).size == (80, 60)
    assert (env.sandbox.calls[UPLOAD], env.sandbox.calls[ADD], env.sandbox.calls[DELETE]) == (1, 1, 1)
    env.sandbox.reset_calls()
    assert env.sync().exit_code == ExitCode.OK and env.sandbox.mutating_calls() == 0


def test_a_lost_state_with_resized_images_and_a_foreign_one_adopts_and_uploads_nothing(env: Env) -> None:
    folder = env.map("photos", pack="Trip", max_edge=256)
    write(folder / "a.jpg", photos.jpeg(640, 480))
    write(folder / "b.webp", photos.webp(600, 300))
    assert env.sync().exit_code == ExitCode.OK
    pack_id = env.pack_named("Trip")["id"]
    foreign = env.sandbox.add_uploaded(pack_id, photos.jpeg(64, 48), "from-the-web-app.jpg")

    before = adopted_after_losing_the_state(env, pack_id)

    assert foreign in before
    assert sorted(i.file_name for i in recorded(env, pack_id)) == ["a.jpg", "b.webp"]
    env.sandbox.reset_calls()
    assert env.sync().exit_code == ExitCode.OK and env.sandbox.mutating_calls() == 0


@pytest.mark.parametrize("strip", [["location", "serials"], []])
def test_an_upload_that_failed_resumes_with_its_ticket_and_leaves_one_image(env: Env, strip: list[str]) -> None:
    """The upload ticket is kept under the hash of the bytes uploaded (prepared ones: the recipe is
    deterministic): a run whose upload failed leaves it for the next, which sends the same bytes to it."""
    folder = env.map("photos", pack="Trip", strip=strip)
    write(folder / "gps.jpg", photos.jpeg(64, 48))
    env.sandbox.inject("500", "PUT", "storage", count=1000)

    failed = env.sync()

    assert failed.exit_code == ExitCode.SOME_FAILED
    assert env.sandbox.calls[UPLOAD] == 1
    env.sandbox.clear_faults()
    resumed = env.sync()

    assert resumed.exit_code == ExitCode.OK
    assert env.sandbox.calls[UPLOAD] == 1, "the ticket of the failed run is used again"
    assert bool(leaked(only_upload(env, env.pack_named("Trip")["id"]))) == (not strip)


def _unstrippable_jpeg() -> bytes:
    """A JPEG with a location in its EXIF that uploads as it is, but whose XMP packet is not XML: it cannot
    be stripped."""
    data = photos.jpeg(64, 48, iptc=False)
    packet = photos.xmp()
    return data.replace(packet, packet.replace(b"</rdf:RDF>", b"</rdf:RFD>"))


def test_turning_strip_on_for_a_file_that_cannot_be_stripped_says_so(env: Env) -> None:
    """Its image went up with its location before strip was on; now the recipe cannot make it: the user
    is told, file by file, rather than left to think its location is gone."""
    folder = env.map("photos", pack="Trip", strip=[])
    write(folder / "odd.jpg", _unstrippable_jpeg())
    assert env.sync().exit_code == ExitCode.OK
    del env.mappings[0]["strip"]
    env.sandbox.reset_calls()

    report = env.sync()

    problems = {p.rel_path: p.reason for p in report.mappings[0].problems}
    assert list(problems) == ["odd.jpg"] and "cannot be prepared for upload" in problems["odd.jpg"]
    assert "image in the pack" in problems["odd.jpg"]
    assert report.exit_code != ExitCode.OK
    assert env.sandbox.mutating_calls() == 0 and len(env.pack(env.pack_named("Trip")["id"])["images"]) == 1


@pytest.mark.parametrize("kind", ["png", "gif"])
def test_a_jpeg_appended_to_a_png_or_gif_is_stripped_too(kind: str) -> None:
    """Bytes after a PNG's IEND or a GIF's end are passed on; a JPEG appended there (an app's copy of the
    original) keeps its EXIF and XMP unless it is stripped in place as an appended JPEG is."""
    image = photos.png(32, 24) if kind == "png" else photos.gif(32, 24)
    second = photos.jpeg(32, 24, iptc=False)
    made = prepare.prepare(image + second, f"image/{kind}", Recipe())
    assert leaked(made.data) == []
    assert len(made.data) == len(image + second) and "location" in made.changes


def _gif_with_xmp() -> bytes:
    """A GIF with an XMP application extension (as Photoshop writes it) holding a location and a serial."""
    data = photos.gif(32, 24)
    flags = data[10]
    at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)  # past the global colour table
    extension = b"\x21\xff\x0bXMP DataXMP" + photos.xmp() + b"\x01" + bytes(range(255, -1, -1)) + b"\x00"
    return data[:at] + extension + data[at:]


def test_a_gifs_xmp_is_stripped_and_the_gif_still_decodes() -> None:
    """exiftool reads a GIF's XMP (its location, its serial): it is blanked in place like any packet."""
    data = _gif_with_xmp()
    made = prepare.prepare(data, "image/gif", Recipe())
    assert leaked(made.data) == [] and made.changes == ("location", "serials")
    assert prepare.inspect(data, "image/gif", Recipe()) == made.changes
    with Image.open(io.BytesIO(made.data)) as opened, Image.open(io.BytesIO(data)) as before:
        assert opened.convert("RGB").tobytes() == before.convert("RGB").tobytes()
    found = photos.exiftool(made.data)
    if found is not None:
        assert not [tag for tag in found if "GPS" in tag or "City" in tag or "Serial" in tag]
        assert photos.CREATOR_TOOL in str(found), "the rest of the packet is still read"


def _two_places() -> tuple[bytes, bytes]:
    """The same photo tagged at two places: two files, one upload once the location is stripped."""
    north = photos.jpeg(64, 48)
    south = north.replace(b"N\x00", b"S\x00", 1)  # the GPS latitude's reference
    assert north != south
    return north, south


def test_two_files_that_strip_to_the_same_bytes_sync_and_settle(env: Env) -> None:
    folder = env.map("photos", pack="Trip")
    north, south = _two_places()
    write(folder / "north.jpg", north)
    write(folder / "south.jpg", south)

    first = env.sync()
    env.sandbox.reset_calls()
    again = env.sync()

    assert first.exit_code == again.exit_code == ExitCode.OK
    assert env.sandbox.mutating_calls() == 0
    assert sorted(i.file_name for i in recorded(env, env.pack_named("Trip")["id"])) == ["north.jpg", "south.jpg"]


def test_a_lost_state_adopts_two_files_that_strip_to_the_same_bytes_and_uploads_nothing(env: Env) -> None:
    folder = env.map("photos", pack="Trip")
    north, south = _two_places()
    write(folder / "north.jpg", north)
    write(folder / "south.jpg", south)
    assert env.sync().exit_code == ExitCode.OK
    pack_id = env.pack_named("Trip")["id"]

    adopted_after_losing_the_state(env, pack_id)

    assert sorted(i.file_name for i in recorded(env, pack_id)) == ["north.jpg", "south.jpg"]


def test_a_photo_dropped_into_a_watched_folder_reaches_the_pack_stripped(daemon_env: Env, start: StartDaemon) -> None:
    """The daemon's own process, its watcher and its incremental plan: no location leaves with a new file."""
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "existing.png", photos.png(32, 32))
    start()
    assert len(daemon_env.pack(pack_id)["images"]) == 1

    write(folder / "dropped.jpg", photos.jpeg(64, 48))

    wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 2, timeout=10)
    assert [leaked(data) for data in daemon_env.cdn_bytes(pack_id)] == [[], []]


def test_status_files_shows_what_was_uploaded_before_and_after_strip_is_turned_on(env: Env) -> None:
    folder = env.map("photos", pack="Trip", strip=[])
    write(folder / "gps.jpg", photos.jpeg(64, 48))
    assert env.sync().exit_code == ExitCode.OK
    del env.mappings[0]["strip"]
    env.write_config()

    turned_on = status_files(env)
    dry = env.cli("run", "--dry-run")

    assert dry.returncode == 0 and "replace" in dry.stdout, dry.stdout
    assert [(f["path"], f["prepared"]) for f in turned_on] == [("gps.jpg", [])], "as uploaded, until replaced"
    assert env.sync().exit_code == ExitCode.OK
    assert [(f["path"], f["state"], f["prepared"]) for f in status_files(env)] == [
        ("gps.jpg", "synced", ["location", "serials"])]


def test_a_dry_run_after_a_lost_state_changes_nothing_and_the_run_then_adopts(env: Env) -> None:
    folder = env.map("photos", pack="Trip", max_edge=256)
    write(folder / "a.jpg", photos.jpeg(640, 480))
    assert env.sync().exit_code == ExitCode.OK
    shutil.rmtree(env.state_path.parent)
    env.sandbox.reset_calls()

    dry = env.cli("run", "--dry-run")

    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "add" not in dry.stdout.split() and env.sandbox.mutating_calls() == 0, dry.stdout
    assert env.sync().exit_code == ExitCode.OK and env.sandbox.mutating_calls() == 0


@pytest.mark.parametrize("header", [b"http://ns.adobe.com/xap/1.0/ ", b"XMP\x00://ns.adobe.com/xap/1.0/\x00",
                                    b"http://ns.adobe.com/xmp/1.0/\x00"])
def test_an_xmp_segment_with_an_odd_header_is_stripped(header: bytes) -> None:
    """exiftool reads an APP1 segment holding an XMP packet as XMP whatever its header says (a missing NUL,
    an old "XMP\\0" header, a mistyped namespace): so it is stripped."""
    data = photos.jpeg(64, 48, gps=False, serials=False, iptc=False)
    odd = data.replace(b"http://ns.adobe.com/xap/1.0/\x00", header, 1)
    made = prepare.prepare(odd, "image/jpeg", Recipe())
    assert "location" in made.changes and leaked(made.data) == []
    assert len(made.data) == len(odd)


def _photoshop_resource(ident: int, body: bytes) -> bytes:
    return b"8BIM" + ident.to_bytes(2, "big") + b"\x00\x00" + len(body).to_bytes(4, "big") + body + bytes(
        len(body) % 2)


@pytest.mark.parametrize("ident", [0x0422, 0x0424])
def test_exif_or_xmp_inside_the_photoshop_segment_is_stripped(ident: int) -> None:
    """Photoshop's image resources can hold EXIF (0x0422) and XMP (0x0424) besides IPTC; exiftool reads
    both there."""
    plain = photos.jpeg(64, 48, gps=False, serials=False, xmp_location=False, iptc=False)
    body = photos.exif().tobytes()[6:] if ident == 0x0422 else photos.xmp()  # (a TIFF block: no "Exif" header)
    payload = b"Photoshop 3.0\x00" + _photoshop_resource(ident, body)
    data = plain[:2] + b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload + plain[2:]
    made = prepare.prepare(data, "image/jpeg", Recipe())
    assert "location" in made.changes and leaked(made.data) == []
    found = photos.exiftool(made.data)
    if found is not None:
        assert not [tag for tag in found if "GPS" in tag or "City" in tag or "Serial" in tag], found


def test_xmp_properties_in_a_default_namespace_are_stripped() -> None:
    """``<GPSLatitude xmlns="http://ns.adobe.com/exif/1.0/">`` is the same property as ``exif:GPSLatitude``
    (and exiftool shows it): a default namespace is resolved like a prefix."""
    packet = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
              '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="">'
              '<GPSLatitude xmlns="http://ns.adobe.com/exif/1.0/">52,22.056N</GPSLatitude>'
              f'<City xmlns="http://ns.adobe.com/photoshop/1.0/">{photos.CITY}</City>'
              '<Label xmlns="http://ns.adobe.com/xap/1.0/">kept</Label>'
              '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>').encode()
    data = photos.jpeg(64, 48, iptc=False, xmp_location=False)
    data = data.replace(photos.xmp(location=False), packet, 1)
    segment = data.index(packet) - len(b"http://ns.adobe.com/xap/1.0/\x00") - 2
    data = data[:segment] + (len(packet) + 2 + 29).to_bytes(2, "big") + data[segment + 2:]
    made = prepare.prepare(data, "image/jpeg", Recipe())
    assert "location" in made.changes and leaked(made.data) == [] and b">kept<" in made.data


def test_a_lost_state_of_a_pack_synced_without_strip_adopts_then_replaces(env: Env) -> None:
    """The pack holds the files as they were (synced with ``strip = []``), the state is lost and strip is
    on now: the images are adopted as what they are (no second copy), then replaced like any recipe change."""
    folder = env.map("photos", pack="Trip", strip=[])
    write(folder / "gps.jpg", photos.jpeg(64, 48))
    assert env.sync().exit_code == ExitCode.OK
    pack_id = env.pack_named("Trip")["id"]
    shutil.rmtree(env.state_path.parent)
    del env.mappings[0]["strip"]
    env.sandbox.reset_calls()

    adopted = env.sync()
    assert adopted.exit_code == ExitCode.OK and env.sandbox.calls[ADD] == 0, "no second copy"
    replaced = env.sync()

    assert replaced.exit_code == ExitCode.OK
    assert leaked(only_upload(env, pack_id)) == []
    env.sandbox.reset_calls()
    assert env.sync().exit_code == ExitCode.OK and env.sandbox.mutating_calls() == 0


def test_a_replacement_whose_old_image_could_not_be_deleted_is_finished_by_the_next_run(env: Env) -> None:
    _folder, pack_id = synced_as_they_are(env, 1)
    env.sandbox.inject("500", "DELETE", "/packs/{id}/images/{image_id}", count=1000)

    cut_short = env.sync()

    assert cut_short.exit_code != ExitCode.OK and len(env.pack(pack_id)["images"]) == 2
    env.sandbox.clear_faults()
    env.sandbox.reset_calls()
    finished = env.sync()

    assert finished.exit_code == ExitCode.OK
    assert (env.sandbox.calls[UPLOAD], env.sandbox.calls[ADD], env.sandbox.calls[DELETE]) == (0, 0, 1)
    assert leaked(only_upload(env, pack_id)) == []


def test_an_exif_segment_between_the_scans_of_a_progressive_jpeg_is_stripped() -> None:
    """The format allows metadata segments before each scan, not only the first: one there is no less in
    the upload's bytes for coming after the first scan."""
    out = io.BytesIO()
    photos.pixels(64, 48).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    first = data.index(b"\xff\xda")
    second = data.index(b"\xff\xda", first + 2)
    block = photos.exif().tobytes()
    segment = b"\xff\xe1" + (len(block) + 2).to_bytes(2, "big") + block
    odd = data[:second] + segment + data[second:]
    with Image.open(io.BytesIO(odd)) as opened:
        opened.load()  # still a JPEG every decoder reads
    made = prepare.prepare(odd, "image/jpeg", Recipe())
    assert "serials" in made.changes and leaked(made.data) == [] and len(made.data) == len(odd)
    with Image.open(io.BytesIO(made.data)) as opened, Image.open(io.BytesIO(odd)) as before:
        assert opened.tobytes() == before.tobytes()


def test_a_schema_7_state_synced_as_is_replaces_located_images_under_the_safety_stop(env: Env) -> None:
    """Every image a schema-7 state records went up as it was; the default strips now: the first run
    after the upgrade replaces the images with a location, under ``max_delete`` like any recipe change."""
    folder = env.map("photos", pack="Trip", strip=[], max_delete=1)
    for n in range(3):
        write(folder / f"gps-{n}.jpg", photos.jpeg(48, 32 + n))
    write(folder / "plain.png", photos.png(32, 32, gps=False, serials=False, xmp_location=False))
    assert env.sync().exit_code == ExitCode.OK
    as_schema(env.state_path, 7)
    del env.mappings[0]["strip"]
    env.sandbox.reset_calls()

    stopped = env.sync()

    assert stopped.exit_code == ExitCode.SAFETY and env.sandbox.mutating_calls() == 0
    forced = env.sync(force=True)
    assert forced.exit_code == ExitCode.OK
    assert (env.sandbox.calls[UPLOAD], env.sandbox.calls[DELETE]) == (3, 3)
    assert [leaked(data) for data in env.cdn_bytes(env.pack_named("Trip")["id"])] == [[]] * 4
