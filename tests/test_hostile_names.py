"""Hostile names for ``packsync pull``: what ``GET /files`` gives back meets a folder as it is. No
traceback, nothing outside the folder, nothing of the user's replaced, and every image on disk."""

from __future__ import annotations

import json

import pytest
from conftest import Env, image
from test_pull_names import tree

from packsync.engine.pull_plan import BLOCKED, given_path, name_from_url


def test_a_file_where_a_given_path_needs_a_folder_leaves_the_image_named_as_if_unknown(env: Env) -> None:
    """The user's file ``a`` holds the place the folder ``a`` of the name ``a/b.png`` needs. The image
    failed (``Not a directory``, exit 1) at this pull and at every pull after it, never reaching the disk,
    until the user renamed their file. It is named as the CDN names it instead, with a notice, and the
    next pull finds it there."""
    pack_id = env.sandbox.create_pack("E")
    image_id = env.sandbox.add_uploaded(pack_id, (data := image(8, 8, seed=1)), named="a/b.png")
    env.write_config()
    out = env.root / "out"
    out.mkdir()
    (out / "a").write_bytes(b"mine")
    url = next(i["url"] for i in env.pack(pack_id)["images"] if i["id"] == image_id)

    first = env.cli("pull", "genviral:E", str(out), "--json")
    again = env.cli("pull", "genviral:E", str(out), "--json")

    assert first.returncode == 0, first.stdout + first.stderr
    assert tree(out) == {"a": b"mine", name_from_url(url): data}
    problems = json.loads(first.stdout)["problems"]
    assert [(p["item"], p["notice"]) for p in problems] == [("a/b.png", True)] and BLOCKED in problems[0]["reason"]
    assert again.returncode == 0 and json.loads(again.stdout)["already_here"] == 1
    assert tree(out) == {"a": b"mine", name_from_url(url): data}


def test_an_image_whose_folder_is_another_image_pulled_before_is_named_as_if_unknown(env: Env) -> None:
    """``x.png`` pulled, then ``x.png/y.png`` added to the pack: the second failed at every pull."""
    pack_id = env.sandbox.create_pack("Clash")
    env.sandbox.add_uploaded(pack_id, (a := image(8, 8, seed=81)), named="x.png")
    env.write_config()
    assert env.cli("pull", "genviral:Clash", str(out := env.root / "out")).returncode == 0
    image_id = env.sandbox.add_uploaded(pack_id, (b := image(9, 9, seed=82)), named="x.png/y.png")
    url = next(i["url"] for i in env.pack(pack_id)["images"] if i["id"] == image_id)

    result = env.cli("pull", "genviral:Clash", str(out))

    assert result.returncode == 0, result.stdout + result.stderr
    assert tree(out) == {"x.png": a, name_from_url(url): b}


@pytest.mark.parametrize(("given", "made"), [("COM¹.png", "COM¹_.png"), ("lpt³/x.png", "lpt³_/x.png"),
                                             ("Com².tar.png", "Com²_.tar.png")])
def test_the_device_names_windows_reserves_with_superscript_digits_are_made_safe(given: str, made: str) -> None:
    """Windows reserves ``COM¹``-``COM³`` and ``LPT¹``-``LPT³`` as it does ``COM1``: a URL's name never held
    one (ASCII only), a name ``GET /files`` gives may."""
    assert given_path(given) == made
