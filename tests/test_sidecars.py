"""XMP sidecars: Genviral's AI description and keywords next to each file, read back by a real exiftool
(Debian's ``libimage-exiftool-perl``); merged into sidecars other programs wrote, never destroying
them; written again only when needed; removed with their file when packsync alone wrote them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import TOKEN, Env, image, write
from helpers import StartDaemon, state_rows, wait_until
from test_astria import astria_pack, prompts_of
from test_pull import listed_pull

from packsync.app import open_app
from packsync.daemon.watcher import Watcher
from packsync.engine.actions import SidecarPass
from packsync.engine.pull import PullReport
from packsync.engine.sidecars import RemoveSidecar, WriteSidecar, plan_sidecars
from packsync.errors import ExitCode
from packsync.model import Listed
from packsync.sandbox.imaging import solid_png
from packsync.sources.folder import Filters
from packsync.state.records import SidecarRecord
from packsync.xmp import Fields, read_fields, render, without_ours

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed: apt-get install "
                                    "libimage-exiftool-perl (the sidecars are then checked by a real reader)")

USER_SIDECAR = b"""<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:darktable="http://darktable.sf.net/"
    xmp:Rating="4" darktable:xmp_version="5">
   <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li><rdf:li>Greece</rdf:li></rdf:Bag></dc:subject>
   <dc:description><rdf:Alt><rdf:li xml:lang="de-DE">Ein Foto</rdf:li></rdf:Alt></dc:description>
   <darktable:history><rdf:Seq><rdf:li darktable:operation="exposure" darktable:enabled="1"/></rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def exif(path: Path) -> dict[str, Any]:
    """Every tag exiftool reads from ``path``, by group:name."""
    assert EXIFTOOL is not None
    done = subprocess.run([EXIFTOOL, "-j", "-G1", "-struct", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)[0]
    return document


def as_list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def mapped(env: Env, **options: Any) -> tuple[Path, str]:
    pack_id = env.sandbox.create_pack("p")
    return env.map("pics", pack_id=pack_id, sidecars="xmp", **options), pack_id


@needs_exiftool
def test_the_sidecar_carries_the_description_and_keywords_for_exiftool(env: Env) -> None:
    folder, pack_id = mapped(env)
    write(folder / "IMG_0001.png", solid_png(40, 30, (220, 30, 40)))

    report = env.sync(wait=True)

    assert report.mappings[0].sidecars and report.mappings[0].sidecars.written == 1
    tags = exif(folder / "IMG_0001.png.xmp")
    (image_id,) = [i["id"] for i in env.pack(pack_id)["images"]]
    assert tags["XMP-dc:Description"] == "A 40×30 red PNG image."
    assert set(as_list(tags["XMP-dc:Subject"])) == {"png", "red", "landscape", "40x30"}
    assert tags["XMP-packsync:ImageId"] == image_id
    assert tags["XMP-packsync:AiModel"]


@needs_exiftool
def test_a_sidecar_another_program_wrote_keeps_everything_but_packsyncs_fields(env: Env) -> None:
    folder, _pack_id = mapped(env)
    write(folder / "IMG_0002.png", solid_png(30, 30, (30, 60, 210)))
    (folder / "IMG_0002.png.xmp").write_bytes(USER_SIDECAR)

    env.sync(wait=True)

    tags = exif(folder / "IMG_0002.png.xmp")
    assert {"holiday", "Greece", "blue", "square"} <= set(as_list(tags["XMP-dc:Subject"]))
    assert tags["XMP-xmp:Rating"] == 4
    assert tags["XMP-darktable:Xmp_version"] == 5
    assert tags["XMP-darktable:History"]
    text = (folder / "IMG_0002.png.xmp").read_text(encoding="utf-8")
    assert 'xml:lang="de-DE">Ein Foto<' in text, "other languages of the description are kept"
    assert tags["XMP-dc:Description"] == "A 30×30 blue PNG image."

    (folder / "IMG_0002.png").unlink()
    env.sync(wait=True)
    kept = exif(folder / "IMG_0002.png.xmp")  # not packsync's alone: it stays, as it was
    assert {"holiday", "Greece"} <= set(as_list(kept["XMP-dc:Subject"]))


def test_a_sidecar_packsync_cannot_read_is_left_alone_and_reported(env: Env) -> None:
    folder, _pack_id = mapped(env)
    write(folder / "a.png", image())
    corrupt = b"<x:xmpmeta><rdf:RDF>not closed"
    (folder / "a.png.xmp").write_bytes(corrupt)

    done = env.cli("run")

    assert done.returncode == 1, done.stderr  # reported like a bad file: the run did not do all it should
    assert (folder / "a.png.xmp").read_bytes() == corrupt
    assert "a.png.xmp: sidecar not changed: not well-formed XML" in done.stdout


def test_written_once_then_only_when_what_it_says_changes_and_removed_with_its_file(env: Env) -> None:
    folder, _pack_id = mapped(env)
    photo = write(folder / "a.png", image())
    env.sync(wait=True)
    sidecar = folder / "a.png.xmp"
    first = sidecar.stat().st_mtime_ns

    again = env.sync(wait=True)

    assert again.mappings[0].sidecars and again.mappings[0].sidecars.written == 0
    assert sidecar.stat().st_mtime_ns == first
    description, keywords = read_fields(sidecar.read_bytes())
    assert description and keywords

    photo.rename(folder / "b.png")  # a rename: the sidecar follows the name
    env.sync(wait=True)
    assert not sidecar.exists() and (folder / "b.png.xmp").exists()

    (folder / "b.png").unlink()
    gone = env.sync(wait=True)
    assert not (folder / "b.png.xmp").exists()
    assert gone.mappings[0].sidecars and gone.mappings[0].sidecars.removed == 1
    assert sorted(p.name for p in folder.iterdir()) == []


def test_stem_names_and_a_stem_two_files_share(env: Env) -> None:
    folder, _pack_id = mapped(env, sidecar_name="stem")
    write(folder / "IMG_1.png", image())
    write(folder / "IMG_2.png", image())
    write(folder / "IMG_2.jpg", solid_png(9, 9, (1, 2, 3)))  # PNG bytes under a .jpg name: still an image

    report = env.sync(wait=True)

    assert (folder / "IMG_1.xmp").exists() and not (folder / "IMG_1.png.xmp").exists()
    sidecars = report.mappings[0].sidecars
    assert sidecars and [p.rel_path for p in sidecars.problems] == ["IMG_2.xmp"]
    assert "belongs to IMG_2.jpg" in sidecars.problems[0].reason


def test_sidecars_are_never_synced_nor_reported_as_bad_files(env: Env) -> None:
    folder, pack_id = mapped(env, include=["*"])
    write(folder / "a.png", image())
    env.sync(wait=True)
    assert (folder / "a.png.xmp").exists()

    report = env.sync(wait=True)

    assert report.mappings[0].problems == []
    assert len(env.pack(pack_id)["images"]) == 1


def test_writing_a_sidecar_is_no_event_for_the_watcher(tmp_path: Path) -> None:
    seen: list[str] = []
    watcher = Watcher(lambda _root, path, _closed: seen.append(path.name))
    watcher.watch(tmp_path, Filters(["*.png"], [".*"], max_file_bytes=10_000_000))
    try:
        (tmp_path / "a.png.xmp").write_bytes(render(Fields("i", "d", ("k",), None)))
        (tmp_path / ".a.png.xmp.packsync-tmp").write_bytes(b"x")
        write(tmp_path / "b.png", image())  # events come in order: once this one is in, the others were not
        wait_until(lambda: "b.png" in seen, timeout=10)
    finally:
        watcher.stop()
    assert set(seen) == {"b.png"}


def test_a_daemon_writes_sidecars_as_metadata_arrives(daemon_env: Env, start: StartDaemon) -> None:
    folder, _pack_id = mapped(daemon_env)
    start()
    write(folder / "new.png", image())

    wait_until(lambda: (folder / "new.png.xmp").exists(), timeout=20, what="the sidecar")
    description, _keywords = read_fields((folder / "new.png.xmp").read_bytes())
    assert description and description.startswith("A 8×8")


def test_sidecars_are_planned_for_the_files_named_alone() -> None:
    """What changed names the files whose sidecars are looked at: the others' are left unread; a file
    with no completed metadata any more has its sidecar removed (if the file is gone, when it runs)."""
    fields = {rel: Fields(f"img-{rel}", "d", ("k",), None) for rel in ("a.png", "b.png", "c.png")}
    recorded = {"a.png": SidecarRecord("x", 1, 1), "gone.png": SidecarRecord("y", 1, 1)}

    plan = plan_sidecars("/m", Path("/m"), "full", fields, recorded, files={"b.png", "gone.png"})

    assert [(type(a), a.file) for a in plan.actions] == [(WriteSidecar, "b.png"), (RemoveSidecar, "gone.png")]
    assert [a.describe() for a in plan.actions] == [
        {"kind": "write-sidecar", "mapping": "/m", "file": "b.png", "image": "img-b.png"},
        {"kind": "remove-sidecar", "mapping": "/m", "file": "gone.png", "image": None}]
    assert len(plan_sidecars("/m", Path("/m"), "full", fields, recorded).actions) == 4, "a full pass: every file"


def test_a_sync_of_changed_paths_writes_the_sidecars_of_those_files_alone(env: Env) -> None:
    """A daemon sync of a dropped file plans the sidecar of that file and no other: a sidecar someone
    removed meanwhile is put back by the next full sync, the truth, not by every change."""
    folder, _pack_id = mapped(env)
    write(folder / "a.png", image())
    env.sync(wait=True)
    (folder / "a.png.xmp").unlink()
    write(folder / "b.png", image())

    report = env.sync_changed(folder, ["b.png"], wait=True)

    plan = report.mappings[0].plan
    assert plan and [a.files for a in plan.of(SidecarPass)] == [frozenset({"b.png"})]
    assert (folder / "b.png.xmp").exists() and not (folder / "a.png.xmp").exists()
    env.sync(wait=True)
    assert (folder / "a.png.xmp").exists()


def test_a_metadata_round_writes_the_sidecars_of_the_images_it_described_alone(env: Env) -> None:
    """A metadata round reads the images still waiting (none of the settled ones) and writes the sidecars
    of the files holding those whose metadata arrived, and no other file's."""
    folder, pack_id = mapped(env)
    write(folder / "a.png", image())
    env.sync(wait=True)
    data = write(folder / "b.png", image()).read_bytes()
    env.sync()  # b's image added; its metadata comes later
    (folder / "a.png.xmp").unlink()  # (a full sync's sidecar pass would put it back)
    wait_until(lambda: all(i["metadata"]["status"] == "completed" for i in env.pack(pack_id)["images"]),
               timeout=10, what="the sandbox's metadata")

    async def round_() -> dict[str, set[str]]:
        async with open_app(env.config(), TOKEN) as app:
            found = await app.metadata.poll([pack_id])
            assert state_rows(env.state_path, "SELECT COUNT(*) FROM images WHERE meta_status = 'completed'") == \
                [(1,)], "the poll itself records nothing"
            await app.syncer.metadata_round([pack_id])
            return found.described

    assert asyncio.run(round_()) == {pack_id: {hashlib.sha256(data).hexdigest()}}
    assert state_rows(env.state_path, "SELECT COUNT(*) FROM images WHERE meta_status = 'completed'") == [(2,)]
    assert (folder / "b.png.xmp").exists() and not (folder / "a.png.xmp").exists()


@needs_exiftool
def test_pull_writes_the_same_sidecars(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    env.sandbox.add_uploaded(pack_id, solid_png(20, 10, (20, 150, 50)), "leaf.png")
    wait_until(lambda: env.pack(pack_id)["images"][0]["metadata"]["status"] == "completed", timeout=10)
    target = env.root / "pulled"
    env.write_config()

    done = env.cli("pull", f"genviral:{pack_id}", str(target), "--sidecars", "xmp")

    assert done.returncode == 0, done.stderr
    (picture,) = [p for p in target.iterdir() if p.suffix == ".png"]
    tags = exif(picture.with_name(picture.name + ".xmp"))
    assert tags["XMP-dc:Description"] == "A 20×10 green PNG image."
    assert "2 written" not in done.stdout and "sidecars   1 written" in done.stdout
    again = env.cli("pull", f"genviral:{pack_id}", str(target), "--sidecars", "xmp")
    assert "sidecars   0 written" in again.stdout


def test_without_ours_keeps_a_file_with_anything_else_in_it() -> None:
    ours = render(Fields("i", "d", ("k",), "m"))
    assert without_ours(ours) is None
    merged = render(Fields("i", "d", ("k",), "m"), USER_SIDECAR)
    rest = without_ours(merged)
    assert rest is not None
    assert read_fields(rest) == (None, ["holiday", "Greece"])


# -- what a hostile review found (each failed before its fix) ---------------------------------------

DIGIKAM = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>
<rdf:li xml:lang="x-default">My own caption</rdf:li></rdf:Alt></dc:description></rdf:Description>
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Seq><rdf:li>Kids</rdf:li>
</rdf:Seq></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"""


@needs_exiftool
def test_keywords_join_the_list_and_block_another_program_keeps_them_in(tmp_path: Path) -> None:
    sidecar = tmp_path / "a.jpg.xmp"
    sidecar.write_bytes(render(Fields("i", "AI words", ("sea",), None), DIGIKAM))

    tags = exif(sidecar)

    assert set(as_list(tags["XMP-dc:Subject"])) == {"Kids", "sea"}
    assert tags["XMP-dc:Description"] == "My own caption", "a caption someone wrote is theirs"
    assert "Warning" not in json.dumps(tags)


def test_the_users_caption_stays_whatever_the_ai_says(tmp_path: Path) -> None:
    for description in (None, "", "AI words"):
        assert read_fields(render(Fields("i", description, ("sea",), None), DIGIKAM))[0] == "My own caption"
    ours = render(Fields("i", "AI words", (), None))
    assert read_fields(render(Fields("i", "better AI words", (), None), ours))[0] == "better AI words"
    edited = ours.replace(b">AI words<", b">my edit<", 1)  # the x-default entry, edited by its owner
    assert read_fields(render(Fields("i", "better AI words", (), None), edited))[0] == "my edit"


def test_control_characters_from_the_api_never_make_a_sidecar_unreadable() -> None:
    data = render(Fields("i\x00", "a\x0bb\x1b", ("bell\x07", "\ud800", "ok"), "m\x01"))
    assert read_fields(data) == ("ab", ["bell", "ok"])
    assert read_fields(render(Fields("i", "again", (), None), data))[0] == "again"


def test_a_linked_sidecar_is_left_alone_and_a_long_name_is_no_trouble(env: Env) -> None:
    folder, _pack_id = mapped(env)
    write(folder / "a.png", image())
    elsewhere = env.root / "elsewhere.xmp"
    elsewhere.write_bytes(USER_SIDECAR)
    (folder / "a.png.xmp").symlink_to(elsewhere)
    long_name = "x" * 240 + ".png"
    write(folder / long_name, image())

    report = env.sync(wait=True)

    assert (folder / "a.png.xmp").is_symlink() and elsewhere.read_bytes() == USER_SIDECAR
    sidecars = report.mappings[0].sidecars
    assert sidecars and [p.rel_path for p in sidecars.problems] == ["a.png.xmp"]
    assert (folder / (long_name + ".xmp")).exists()


def test_a_stem_two_files_shared_stays_with_the_one_left(env: Env) -> None:
    folder, _pack_id = mapped(env, sidecar_name="stem")
    write(folder / "IMG_1.png", image())
    env.sync(wait=True)
    write(folder / "IMG_1.jpg", solid_png(9, 9, (1, 2, 3)))
    env.sync(wait=True)
    (folder / "IMG_1.jpg").unlink()

    env.sync(wait=True)

    assert (folder / "IMG_1.xmp").exists()


def test_a_pass_never_shares_its_temporary_file_with_another(env: Env) -> None:
    """Each write has a temporary file of its own: another pass's (here, one that cannot be opened
    at the name every pass used to share) never mixes with it."""
    folder, _pack_id = mapped(env)
    write(folder / "a.png", image())
    (folder / ".a.png.xmp.packsync-tmp").mkdir()

    report = env.sync(wait=True)

    assert report.mappings[0].sidecars and report.mappings[0].sidecars.problems == []
    assert read_fields((folder / "a.png.xmp").read_bytes())[0]


def test_pull_delete_takes_the_sidecars_it_wrote_along(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    image_id = env.sandbox.add_uploaded(pack_id, solid_png(20, 10, (20, 150, 50)), "leaf.png")
    wait_until(lambda: env.pack(pack_id)["images"][0]["metadata"]["status"] == "completed", timeout=10)
    target = env.root / "pulled"
    env.write_config()
    assert env.cli("pull", f"genviral:{pack_id}", str(target), "--sidecars", "xmp").returncode == 0
    assert len(list(target.glob("*.xmp"))) == 1
    env.sandbox.remove_image(pack_id, image_id)

    done = env.cli("pull", f"genviral:{pack_id}", str(target), "--delete", "--force", "--sidecars", "xmp")  # (emptied)

    assert done.returncode == 0, done.stderr
    assert [p for p in target.iterdir() if not p.name.startswith(".")] == []


def test_a_sidecar_is_as_readable_as_any_file_and_keeps_its_mode(env: Env) -> None:
    import os
    import stat as st

    folder, _pack_id = mapped(env)
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    (folder / "b.png.xmp").write_bytes(USER_SIDECAR)
    (folder / "b.png.xmp").chmod(0o640)
    umask = os.umask(0o022)
    os.umask(umask)

    env.sync(wait=True)

    assert st.S_IMODE((folder / "a.png.xmp").stat().st_mode) == 0o666 & ~umask
    assert st.S_IMODE((folder / "b.png.xmp").stat().st_mode) == 0o640


def test_a_sidecar_left_alone_on_purpose_fails_no_run(env: Env) -> None:
    folder, _pack_id = mapped(env)
    write(folder / "a.png", image())
    (env.root / "elsewhere.xmp").write_bytes(USER_SIDECAR)
    (folder / "a.png.xmp").symlink_to(env.root / "elsewhere.xmp")

    done = env.cli("run")

    assert done.returncode == 0, done.stdout
    assert "a.png.xmp: sidecar left alone: a link or not a file" in done.stdout


# -- a remote source's items with a text of their own (``Listed.images[].detail``) --------------------

def described_pull(env: Env, pack_id: int, out: Path, details: dict[str, str], **options: Any) -> PullReport:
    """Pull the Astria pack ``pack_id`` as a source whose images carry a text (``details``, by the image's
    last part; the others none) would list it, with ``--sidecars xmp``."""
    def described(listed: Listed) -> Listed:
        return msgspec.structs.replace(listed, images=tuple(
            msgspec.structs.replace(image, detail=details.get(image.parts[-1])) for image in listed.images))
    return listed_pull(env, pack_id, out, described, "xmp", **options)


@needs_exiftool
def test_a_listed_image_s_detail_is_its_sidecar_s_description_for_exiftool(env: Env) -> None:
    pack_id, _urls = astria_pack(env, {"woman": 2, "man": 1})
    env.map_astria(pack_id, pack="unused")
    stems = [f"{prompt['id']}-1" for prompts in prompts_of(env, pack_id).values() for prompt in prompts]
    details = {stems[0]: "portrait of ohwx woman, 85mm, <soft light> & \"bokeh\"", stems[2]: "ohwx man, studio"}
    out = env.root / "out"

    report = described_pull(env, pack_id, out, details)
    again = described_pull(env, pack_id, out, details)

    assert report.failures == [] and len(report.downloaded) == 3
    assert report.sidecars is not None and report.sidecars.written == 2
    sidecars = sorted(out.rglob("*.xmp"))
    assert {p.name.partition(".")[0] for p in sidecars} == set(details), "none without a text"
    for sidecar in sidecars:
        tags = exif(sidecar)
        assert tags["XMP-dc:Description"] == details[sidecar.name.partition(".")[0]]
        assert "XMP-dc:Subject" not in tags, "a listed image has no keywords"
        assert Path(str(sidecar).removesuffix(".xmp")).is_file()
    assert again.sidecars is not None and again.sidecars.written == 0 and again.downloaded == []


def test_a_listed_pull_deletes_the_sidecars_it_wrote_and_never_a_user_s(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3})
    env.map_astria(pack_id, pack="unused")
    stems = [f"{prompt['id']}-1" for prompt in prompts_of(env, pack_id)["woman"]]
    out = env.root / "out"
    described_pull(env, pack_id, out, {stem: f"prompt {stem}" for stem in stems})
    theirs = next(out.glob(f"woman/{stems[1]}.*.xmp"))
    theirs.write_bytes(USER_SIDECAR)
    for url in urls[:2]:
        env.sandbox.astria.remove_image(pack_id, url)

    report = described_pull(env, pack_id, out, {stems[2]: "still here"}, delete=True, force=True)

    assert sorted(report.deleted) == sorted([f"woman/{stems[0]}.png", f"woman/{stems[1]}.png"])
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted([f"woman/{stems[1]}.png.xmp", f"woman/{stems[2]}.png", f"woman/{stems[2]}.png.xmp"])
    assert theirs.read_bytes() == USER_SIDECAR, "a sidecar someone else wrote stays"


def test_sidecars_are_refused_for_a_source_whose_images_carry_no_text(env: Env) -> None:
    pack_id, _urls = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"

    done = env.cli("pull", f"astria:{pack_id}", str(out), "--sidecars", "xmp")

    assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
    assert f"--sidecars: astria:{pack_id}'s images carry no text" in done.stderr
    assert "Traceback" not in done.stderr and env.sandbox.calls[("GET", "astria-img")] == 0
    assert not out.exists() or list(out.rglob("*.png")) == []
