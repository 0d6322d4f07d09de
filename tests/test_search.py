"""`packsync search`: the AI descriptions, keywords and names of the synced images, searched locally."""

from __future__ import annotations

import json
import sqlite3

from conftest import Env, write

from packsync.errors import ExitCode
from packsync.sandbox.imaging import solid_png


def synced(env: Env) -> dict[str, str]:
    """Three coloured images synced with their AI metadata; returns name → local path."""
    pack_id = env.sandbox.create_pack("Brand")
    folder = env.map("brand", pack_id=pack_id)
    files = {name: write(folder / name, solid_png(32, 32, rgb)) for name, rgb in
             [("logo.png", (220, 30, 40)), ("sea.png", (30, 60, 210)), ("nested/leaf.png", (20, 150, 50))]}
    assert env.cli("run", "--wait-timeout", "30").returncode == 0
    return {name: str(path) for name, path in files.items()}


def test_search_finds_images_by_description_and_prints_their_files(env: Env) -> None:
    files = synced(env)

    red = env.cli("search", "red", token=None)
    both = json.loads(env.cli("search", "png", "squ", "--json", token=None).stdout)

    assert red.returncode == ExitCode.OK, red.stderr
    assert red.stdout.splitlines()[0] == files["logo.png"]
    assert "A 32×32 red PNG image." in red.stdout and files["sea.png"] not in red.stdout
    assert sorted(p for hit in both["results"] for p in hit["paths"]) == sorted(files.values())
    assert {hit["metadata_status"] for hit in both["results"]} == {"completed"}


def test_the_index_follows_new_descriptions_and_deleted_files(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "first.png", solid_png(32, 32, (220, 30, 40)))
    write(folder / "kept.png", solid_png(32, 32, (30, 60, 210)))
    assert env.cli("run", "--no-wait").returncode == 0
    assert env.cli("search", "red", token=None).stdout.startswith("no image"), "no description yet"

    assert env.cli("run", "--wait-timeout", "30").returncode == 0   # the description arrives
    assert str(folder / "first.png") in env.cli("search", "red", token=None).stdout
    (folder / "first.png").unlink()
    assert env.cli("run", "--no-wait").returncode == 0

    assert env.cli("search", "red", token=None).stdout.startswith("no image")


def test_any_query_text_is_taken_as_words(env: Env) -> None:
    synced(env)

    for query in ['"', "red OR", "NEAR(", "*", "a'b", "col:umn", "--"]:
        result = env.cli("search", "--", query, token=None)
        assert result.returncode == ExitCode.OK, (query, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_state_from_before_the_index_is_searched_without_being_changed(env: Env) -> None:
    files = synced(env)
    with sqlite3.connect(env.state_path) as db:
        for name in ("image_text_insert", "image_text_delete", "image_text_update"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE image_text")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    before = env.state_path.read_bytes()

    result = env.cli("search", "blue", token=None)

    assert result.stdout.splitlines()[0] == files["sea.png"]
    assert env.state_path.read_bytes() == before
    assert env.cli("run", "--no-wait").returncode == 0  # migrates, and indexes what was recorded
    assert env.cli("search", "green", token=None).stdout.splitlines()[0] == files["nested/leaf.png"]


def test_a_folder_s_name_finds_the_images_of_its_mapping(env: Env) -> None:
    """Each word matches the image's own text or the name of its mapping's folder: ``red bran`` is the
    red image of the folder ``brand``, not the red one elsewhere."""
    brand = env.map("brand", pack="Assets")
    logo = write(brand / "logo.png", solid_png(32, 32, (220, 30, 40)))
    sea = write(brand / "nested" / "sea.png", solid_png(32, 32, (30, 60, 210)))
    elsewhere = write(env.map("holiday", pack="Trip") / "red.png", solid_png(32, 32, (221, 31, 41)))
    assert env.cli("run", "--wait-timeout", "30").returncode == 0

    found = json.loads(env.cli("search", "brand", "--json", token=None).stdout)
    red_brand = env.cli("search", "red", "bran", token=None)
    red = json.loads(env.cli("search", "red", "--json", token=None).stdout)

    assert sorted(p for hit in found["results"] for p in hit["paths"]) == sorted([str(logo), str(sea)])
    assert red_brand.stdout.splitlines()[0] == str(logo) and str(elsewhere) not in red_brand.stdout
    assert {p for hit in red["results"] for p in hit["paths"]} == {str(logo), str(elsewhere)}


def test_a_pack_s_name_finds_its_images(env: Env) -> None:
    folder = env.map("misc", pack="Brand Assets")
    write(folder / "logo.png", solid_png(32, 32, (220, 30, 40)))
    other = write(env.map("others", pack="Other") / "sea.png", solid_png(32, 32, (30, 60, 210)))
    assert env.cli("run", "--wait-timeout", "30").returncode == 0

    found = env.cli("search", "assets", token=None)
    none = env.cli("search", "assets", "blue", token=None)

    assert found.returncode == ExitCode.OK, found.stderr
    assert found.stdout.splitlines()[0] == str(folder / "logo.png") and str(other) not in found.stdout
    assert found.stdout.splitlines()[-1] == "1 match"
    assert none.stdout.startswith("no image")


def test_search_says_how_many_of_how_many_it_shows(env: Env) -> None:
    synced(env)

    cut = env.cli("search", "png", "--limit", "2", token=None)
    whole = env.cli("search", "png", token=None)
    cut_json = json.loads(env.cli("search", "png", "--limit", "2", "--json", token=None).stdout)
    whole_json = json.loads(env.cli("search", "png", "--json", token=None).stdout)

    assert cut.stdout.splitlines()[-1] == "2 of 3 matches (--limit to see more)"
    assert whole.stdout.splitlines()[-1] == "3 matches"
    assert (cut_json["shown"], cut_json["total"], len(cut_json["results"])) == (2, 3, 2)
    assert (whole_json["shown"], whole_json["total"]) == (3, 3)


def test_a_folder_inside_a_mapping_finds_the_images_of_its_files_where_they_are_now(env: Env) -> None:
    brand = env.map("brand", pack="Assets")
    landscape = write(brand / "sub" / "landscape.png", solid_png(32, 32, (220, 30, 40)))
    write(brand / "logo.png", solid_png(32, 32, (221, 31, 41)))
    write(brand / "other" / "sea.png", solid_png(32, 32, (30, 60, 210)))
    assert env.cli("run", "--wait-timeout", "30").returncode == 0

    sub = json.loads(env.cli("search", "sub", "--json", token=None).stdout)
    red_sub = env.cli("search", "red", "sub", token=None)
    (brand / "sub").rename(brand / "trips")
    assert env.cli("run", "--no-wait").returncode == 0  # a move: nothing uploaded, the file cache follows

    assert [p for hit in sub["results"] for p in hit["paths"]] == [str(landscape)]
    assert red_sub.stdout.splitlines()[0] == str(landscape) and red_sub.stdout.splitlines()[-1] == "1 match"
    assert env.cli("search", "trips", token=None).stdout.splitlines()[0] == str(brand / "trips" / "landscape.png")
    assert env.cli("search", "sub", token=None).stdout.startswith("no image")


def test_a_state_from_before_the_folders_index_finds_folders_without_being_changed(env: Env) -> None:
    brand = env.map("brand", pack="Assets")
    landscape = write(brand / "sub" / "landscape.png", solid_png(32, 32, (220, 30, 40)))
    write(brand / "logo.png", solid_png(32, 32, (221, 31, 41)))
    assert env.cli("run", "--wait-timeout", "30").returncode == 0
    with sqlite3.connect(env.state_path) as db:
        for name in ("file_text_insert", "file_text_delete", "file_text_update"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE file_text")
        db.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    before = env.state_path.read_bytes()

    found = env.cli("search", "sub", token=None)

    assert found.stdout.splitlines()[0] == str(landscape) and found.stdout.splitlines()[-1] == "1 match"
    assert env.state_path.read_bytes() == before
    write(brand / "new" / "sea.png", solid_png(32, 32, (30, 60, 210)))
    assert env.cli("run", "--no-wait").returncode == 0  # migrates: the folders of every file recorded, and new ones
    assert env.cli("search", "sub", token=None).stdout.splitlines()[0] == str(landscape)
    assert env.cli("search", "new", token=None).stdout.splitlines()[0] == str(brand / "new" / "sea.png")
