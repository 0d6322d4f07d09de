"""Bad input is named, never uploaded, and never stops the rest of the folder.

Each bad file (empty, truncated, not an image, an image type Genviral refuses, too large, a
symlink that cannot be followed, ...) must come with a per-file reason in `packsync run`'s output
and in `packsync status --json --files`; every good file next to it is synced; the run exits 1.
Odd but valid names (spaces, unicode, a newline, 255 characters) simply sync, with a display name
the API accepts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKEN, Env, image, write

from packsync.errors import ExitCode
from packsync.sandbox import Sandbox

PNG_NO_END = image()[:-12]  # the IEND chunk cut off
JPEG_NO_END = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(200)
BMP = b"BM" + bytes(60)
TIFF = b"II*\x00" + bytes(60)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"><rect width="1" height="1"/></svg>\n'
OVERSIZED_PNG = image() + os.urandom(20_000)  # a valid PNG with 20 kB of trailing data


def run_and_status(env: Env) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`packsync run --no-wait`, then `packsync status --json --files`; the status as JSON."""
    result = env.cli("run", "--no-wait")
    status = env.cli("status", "--json", "--files", token=None)
    assert status.returncode == 0, status.stderr
    return result, json.loads(status.stdout)


def file_rows(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["path"]: row for row in status["mappings"][0]["file_list"]}


def stored_file_names(sandbox: Sandbox, pack_id: str) -> list[str]:
    """The file_name each image of the pack was added with (kept by the sandbox's store only)."""
    store = sandbox.store
    with store.lock:
        return [img.file_name for img in store._packs[pack_id].images]  # noqa: SLF001 - test inspection


def _bytes(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        write(path, data)

    return make


def _symlink(target: str) -> Callable[[Path], None]:
    return lambda path: os.symlink(target, path)


def _non_utf8(path: Path) -> None:
    raw = os.fsencode(path.parent) + b"/caf\xe9.png"
    with open(raw, "wb") as handle:
        handle.write(image())


BAD_FILES = [
    pytest.param("empty.png", _bytes(b""), "empty file", {}, id="zero-bytes"),
    pytest.param("cut.png", _bytes(PNG_NO_END), "truncated or corrupt PNG", {}, id="truncated-png"),
    pytest.param("cut.jpg", _bytes(JPEG_NO_END), "truncated or corrupt JPEG", {}, id="truncated-jpeg"),
    pytest.param("notes.jpg", _bytes(b"shopping list: milk, eggs\n"), "not an image", {}, id="text-named-jpg"),
    pytest.param("bitmap.png", _bytes(BMP), "BMP images are not accepted", {}, id="bmp-named-png"),
    pytest.param("scan.jpg", _bytes(TIFF), "TIFF images are not accepted", {}, id="tiff-named-jpg"),
    pytest.param("logo.png", _bytes(SVG), "SVG images are not accepted", {}, id="svg-named-png"),
    pytest.param("bitmap.bmp", _bytes(BMP), "BMP images are not accepted", {"include": ["*.png", "*.bmp"]},
                 id="bmp-included"),
    pytest.param("scan.tiff", _bytes(TIFF), "TIFF images are not accepted", {"include": ["*.png", "*.tiff"]},
                 id="tiff-included"),
    pytest.param("logo.svg", _bytes(SVG), "SVG images are not accepted", {"include": ["*.png", "*.svg"]},
                 id="svg-included"),
    pytest.param("big.png", _bytes(OVERSIZED_PNG), "larger than max_file_mb", {"max_file_mb": 0.01},
                 id="over-max-file-mb"),
    pytest.param("dangling.png", _symlink("nowhere.png"), "dangling symbolic link", {"follow_symlinks": True},
                 id="dangling-symlink"),
    pytest.param("loop.png", _symlink("loop.png"), "symbolic link loop", {"follow_symlinks": True},
                 id="self-loop-symlink"),
    pytest.param("up", _symlink(".."), "symbolic link loop", {"follow_symlinks": True}, id="folder-loop-symlink"),
    pytest.param("caf\\xe9.png", _non_utf8, "not valid UTF-8", {}, id="name-not-utf8"),
]


@pytest.mark.parametrize("name,make,reason,options", BAD_FILES)
def test_bad_file_is_named_with_its_reason_and_the_rest_syncs(env: Env, name: str, make: Callable[[Path], None],
                                                             reason: str, options: dict[str, Any]) -> None:
    """The bad file appears with its reason in the run summary and in status; the good file beside
    it is synced; nothing of the bad file reaches storage; exit 1."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, **options)
    good = write(folder / "sub/good.png", image())
    make(folder / "sub" / name)

    result, status = run_and_status(env)

    assert result.returncode == ExitCode.SOME_FAILED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stdout.splitlines() if name in line]
    assert any(reason in line for line in lines), f"no line names {name!r} with {reason!r}:\n{result.stdout}"
    assert env.cdn_bytes(pack_id) == [good.read_bytes()]
    assert env.sandbox.calls[("POST", "/files")] == 1
    rows = file_rows(status)
    assert rows["sub/good.png"]["state"] == "synced"
    bad = rows.get(f"sub/{name}")
    assert bad is not None, f"status --json --files does not list sub/{name}: {sorted(rows)}"
    assert bad["state"] == "skipped" and reason in (bad["problem"] or "")


def test_bad_file_fixed_later_is_synced(env: Env) -> None:
    """A file reported as bad is picked up as soon as it becomes a good image."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    path = write(folder / "later.png", PNG_NO_END)
    assert env.cli("run", "--no-wait").returncode == ExitCode.SOME_FAILED

    path.write_bytes(image(width=10))
    result, status = run_and_status(env)

    assert result.returncode == ExitCode.OK, result.stdout
    assert env.cdn_bytes(pack_id) == [path.read_bytes()]
    assert file_rows(status)["later.png"]["state"] == "synced"


def test_symlinks_are_not_followed_by_default_and_do_not_fail_the_run(env: Env) -> None:
    """A symlink (to a file in the folder, a folder, or nowhere) is a notice, not a failure, by
    default; its target is not uploaded twice."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    good = write(folder / "a.png", image())
    os.symlink("a.png", folder / "alias.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    for name in ("alias.png", "dangling.png", "sub/up"):
        assert any(name in line and "not followed" in line for line in result.stdout.splitlines()), name
    assert env.cdn_bytes(pack_id) == [good.read_bytes()]


def test_followed_symlink_to_a_file_in_the_folder_adds_no_duplicate(env: Env) -> None:
    """With follow_symlinks, a link to a file already in the folder is the same content: one image."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, follow_symlinks=True)
    good = write(folder / "a.png", image())
    os.symlink("a.png", folder / "alias.png")

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.OK, result.stdout
    assert env.cdn_bytes(pack_id) == [good.read_bytes()]


@pytest.mark.timeout(60)
def test_fifo_named_like_an_image_neither_hangs_the_scan_nor_goes_unmentioned(env: Env) -> None:
    """A FIFO called x.png must not be opened (that would block for ever); it is named as skipped."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    good = write(folder / "good.png", image())
    os.mkfifo(folder / "x.png")

    child_env = {**{k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}, "GENVIRAL_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "run", "--no-wait"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the run hung on a FIFO named x.png")

    assert "Traceback" not in stderr
    assert env.cdn_bytes(pack_id) == [good.read_bytes()]
    assert any("x.png" in line for line in stdout.splitlines()), f"x.png is not mentioned:\n{stdout}"


# -- odd but valid names -------------------------------------------------------------------------


def _longest_name() -> str:
    return "L" * 251 + ".png"  # 255 characters and bytes: the most ext4 and the API allow


ODD_NAMES = {
    "with spaces.png": "with spaces.png",
    "ünïcødé 写真 🖼.png": "ünïcødé 写真 🖼.png",
    "line\nbreak.png": "line break.png",
    "tab\there.png": "tab here.png",
    _longest_name(): _longest_name(),
}


def test_odd_names_sync_with_a_display_name_the_api_accepts(env: Env) -> None:
    """Spaces, unicode, control characters and a 255-character name all sync; the image's
    file_name is printable and at most 255 characters."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    files = {name: write(folder / name, image()) for name in ODD_NAMES}

    result, status = run_and_status(env)

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert sorted(env.cdn_bytes(pack_id)) == sorted(p.read_bytes() for p in files.values())
    names = stored_file_names(env.sandbox, pack_id)
    assert sorted(names) == sorted(ODD_NAMES.values())
    for stored in names:
        assert 1 <= len(stored) <= 255 and stored.isprintable(), repr(stored)
    assert {row["state"] for row in file_rows(status).values()} == {"synced"}


def test_name_longer_than_255_characters_is_shortened_keeping_its_extension(env: Env) -> None:
    """Where the filesystem allows a name over 255 characters, its image's file_name is cut to 255,
    keeping the extension; where it does not (ext4: 255 bytes), there is nothing to test."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    name = "N" * 300 + ".png"
    try:
        write(folder / name, image())
    except OSError as exc:
        pytest.skip(f"this filesystem refuses a 304-character name ({exc.strerror})")

    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    (stored,) = stored_file_names(env.sandbox, pack_id)
    assert len(stored) == 255 and stored.endswith(".png")


def test_multibyte_name_at_the_byte_limit_keeps_its_full_name(env: Env) -> None:
    """A 255-byte name of 2-byte characters is well under 255 characters: it is not cut."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    name = "é" * 125 + ".png"  # 254 bytes, 129 characters
    write(folder / name, image())

    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    assert stored_file_names(env.sandbox, pack_id) == [name]
