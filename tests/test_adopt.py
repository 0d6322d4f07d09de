"""Content already in a pack is adopted, never added again: a lost state, a second machine, a pack filled
by hand in the web app. Against the sandbox over HTTP, whose CDN serves uploaded bytes at their URL."""

from __future__ import annotations

import json
import shutil

from conftest import Env, image, write

from packsync.errors import ExitCode

ADD = ("POST", "/packs/{id}/images")
CDN = ("GET", "cdn")


def test_a_lost_state_costs_one_download_per_image_and_nothing_else(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for i in range(6):
        write(folder / f"sub/{i}.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    shutil.rmtree(env.state_path.parent)
    env.sandbox.reset_calls()

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 adopted" in result.stdout
    assert env.sandbox.mutating_calls() == 0
    assert env.sandbox.calls[CDN] == 6
    assert env.pack(pack_id)["image_count"] == 6
    env.sandbox.reset_calls()
    again = env.cli("run", "--no-wait")
    assert "0 added, 0 deleted, 0 skipped, 0 failed" in again.stdout
    assert env.sandbox.calls[CDN] == 0 and env.sandbox.mutating_calls() == 0


def test_copies_filled_in_by_hand_are_adopted_and_unrelated_images_kept(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand Assets")
    folder = env.map("brand", pack_id=pack_id)
    files = [write(folder / f"{i}.png", image()) for i in range(3)]
    for path in files[:2]:
        env.sandbox.add_uploaded(pack_id, path.read_bytes(), path.name)
    campaign = image()
    unrelated = env.sandbox.add_uploaded(pack_id, campaign, "campaign.png")

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stdout
    assert "1 added, 0 deleted, 0 skipped, 0 failed, 2 adopted" in result.stdout
    assert env.sandbox.calls[ADD] == 1
    assert sorted(env.cdn_bytes(pack_id)) == sorted([p.read_bytes() for p in files] + [campaign])
    assert unrelated in {i["id"] for i in env.pack(pack_id)["images"]}

    files[0].unlink()
    assert env.cli("run", "--no-wait").returncode == 0
    assert len(env.pack(pack_id)["images"]) == 3, "an adopted image follows the folder: its file left, it left"
    assert unrelated in {i["id"] for i in env.pack(pack_id)["images"]}, "the unrelated image is never touched"


def test_the_same_bytes_added_twice_by_hand_one_adopted_one_reported(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    data = write(env.map("brand", pack_id=pack_id) / "logo.png", image()).read_bytes()
    first = env.sandbox.add_uploaded(pack_id, data, "logo.png")
    second = env.sandbox.add_uploaded(pack_id, data, "logo (1).png")

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stdout
    assert "1 adopted" in result.stdout
    assert f"duplicate  image {second}" in result.stdout
    assert {i["id"] for i in env.pack(pack_id)["images"]} == {first, second}
    status = json.loads(env.cli("status", "--json", "--files", token=None).stdout)["mappings"][0]
    assert status["file_list"][0]["image_id"] == first


def test_an_image_that_cannot_be_downloaded_is_reported_and_left_alone(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    gone = env.sandbox.add_image(pack_id, f"{env.sandbox.origin}/cdn/{'0' * 32}.png", "gone.png")
    page = env.sandbox.add_image(pack_id, env.sandbox.upload(b"<html>not an image</html>", "image/png"), "p.png")

    result = env.cli("run", "--no-wait")
    env.sandbox.reset_calls()
    again = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stdout
    assert f"image {gone}: cannot download it (download: HTTP 404)" in result.stdout
    assert f"image {page}: not an image" in result.stdout
    assert {gone, page} <= {i["id"] for i in env.pack(pack_id)["images"]}
    assert again.returncode == 0 and env.sandbox.calls[CDN] == 0, "reported once, not downloaded again"


def test_adopt_false_keeps_foreign_copies_foreign(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    data = write(env.map("brand", pack_id=pack_id, adopt=False) / "a.png", image()).read_bytes()
    env.sandbox.add_uploaded(pack_id, data, "a.png")

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0
    assert env.sandbox.calls[CDN] == 0 and env.sandbox.calls[ADD] == 1
    assert env.pack(pack_id)["image_count"] == 2


def test_a_dry_run_lists_what_it_would_adopt_and_writes_nothing(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    data = write(env.map("brand", pack_id=pack_id) / "a.png", image()).read_bytes()
    adopted = env.sandbox.add_uploaded(pack_id, data, "a.png")

    result = env.cli("run", "--dry-run")

    assert result.returncode == ExitCode.OK, result.stdout
    assert f"adopt      image {adopted} as a.png (same bytes)" in result.stdout
    assert "upload+add" not in result.stdout
    assert not env.state_path.parent.exists()


def test_a_normal_run_downloads_nothing(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "a.png", image())
    env.sandbox.add_uploaded(pack_id, image(), "web.png")
    assert env.cli("run", "--no-wait").returncode == 0
    write(folder / "b.png", image())

    assert env.cli("run", "--no-wait").returncode == 0

    assert env.sandbox.calls[CDN] == 1, "the web app's image was read once, on the first run only"


def test_an_image_deleted_and_uploaded_again_in_the_web_app_is_adopted_not_duplicated(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    data = write(env.map("brand", pack_id=pack_id) / "a.png", image()).read_bytes()
    assert env.cli("run", "--no-wait").returncode == 0
    env.sandbox.remove_image(pack_id, env.pack(pack_id)["images"][0]["id"])
    again = env.sandbox.add_uploaded(pack_id, data, "a.png")
    env.sandbox.reset_calls()

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0 and "1 adopted" in result.stdout, result.stdout
    assert [i["id"] for i in env.pack(pack_id)["images"]] == [again]
    assert env.sandbox.mutating_calls() == 0


def test_a_foreign_copy_older_than_packsync_s_image_is_not_adopted_over_it(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    data = image()
    copy = env.sandbox.add_uploaded(pack_id, data, "copy.png")
    folder = env.map("brand", pack_id=pack_id, adopt=False)
    write(folder / "a.png", data)
    assert env.cli("run", "--no-wait").returncode == 0  # packsync's own image of a.png, newer than the copy
    ours = next(i["id"] for i in env.pack(pack_id)["images"] if i["id"] != copy)
    env.mappings[0]["adopt"] = True
    env.write_config()
    write(folder / "c.png", image())  # something missing: the pack's unrecorded images are read

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0 and "1 added, 0 deleted" in result.stdout, result.stdout
    assert f"duplicate  image {copy}" in result.stdout
    assert {ours, copy} <= {i["id"] for i in env.pack(pack_id)["images"]}, "packsync's image and its metadata stay"


def test_while_an_image_cannot_be_read_for_now_its_content_is_not_uploaded_again(env: Env) -> None:
    from packsync.sandbox.server import Reply

    pack_id = env.sandbox.create_pack("p")
    data = write(env.map("brand", pack_id=pack_id) / "z.png", image()).read_bytes()
    web = env.sandbox.add_uploaded(pack_id, data, "web-z.png")
    env.sandbox.rewrite("GET", "cdn", lambda _reply: Reply(503, b"busy", "text/plain"))

    held = env.cli("run", "--no-wait")
    env.sandbox.clear_faults()
    later = env.cli("run", "--no-wait")

    assert held.returncode == ExitCode.SOME_FAILED, held.stdout
    assert "cannot download it now" in held.stdout and "1 files are not added" in held.stdout
    assert env.sandbox.calls[ADD] == 0
    assert later.returncode == 0 and "1 adopted" in later.stdout
    assert [i["id"] for i in env.pack(pack_id)["images"]] == [web], "one image, not a duplicate"


def test_an_image_on_a_host_that_cannot_be_reached_does_not_hold_back_new_files(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    dead = env.sandbox.add_image(pack_id, "http://127.0.0.1:9/gone.png", "gone.png")  # nothing listens on port 9
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    first = env.cli("run", "--no-wait")
    second = env.cli("run", "--no-wait")

    assert first.returncode == 0 and "1 added" in first.stdout, first.stdout
    assert f"image {dead}: cannot download it (download: cannot reach its host" in first.stdout
    assert second.returncode == 0 and "0 added, 0 deleted, 0 skipped, 0 failed" in second.stdout
