"""Hostile conditions: none may crash, stall, leak or duplicate.

Each test drives packsync as a user would (the CLI or a real daemon, a real SQLite file, the sandbox
over HTTP). Answers the API never documents are made with the sandbox's ``rewrite`` mode: the
server does the work, then answers as a buggy proxy or a broken deployment would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import photos
import pytest
from conftest import FAST, TOKEN, Env, image, write
from helpers import StartDaemon, StartHere, on_state_connection, state_rows, unmeasured, wait_until

from packsync.errors import ExitCode
from packsync.remote.retry import Backoff
from packsync.sandbox.server import Reply, fail

ADD = ("POST", "/packs/{id}/images")
PACK = ("GET", "/packs/{id}")


def data(change: Callable[[dict[str, Any]], Any]) -> Callable[[Reply], Reply]:
    """A rewrite of a successful answer's ``data`` (``change`` edits it in place)."""

    def rewrite(reply: Reply) -> Reply:
        envelope = json.loads(reply.body)
        change(envelope["data"])
        return Reply(reply.status, json.dumps(envelope).encode(), reply.content_type, reply.headers)

    return rewrite


def answer(status: int, body: bytes, content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> Callable[[Reply], Reply]:
    return lambda _reply: Reply(status, body, content_type, headers or {})


def clean(result: subprocess.CompletedProcess[str]) -> None:
    """One sentence, never a traceback or an unretrieved task."""
    for text in (result.stdout, result.stderr):
        assert "Traceback" not in text and "Task exception was never retrieved" not in text, text[-3000:]
        assert "ExceptionGroup" not in text, text[-3000:]


def synced_pack(env: Env, files: int = 2, **mapping: Any) -> tuple[str, Path]:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, **mapping)
    for i in range(files):
        write(folder / f"{i}.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    env.sandbox.reset_calls()
    return pack_id, folder


# -- 1. a transient 404 ------------------------------------------------------------------------------


def test_a_single_404_for_a_remembered_pack_makes_no_second_pack(env: Env) -> None:
    write(env.map("brand", pack="Brand") / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    pack_id = env.pack_named("Brand")["id"]
    env.sandbox.reset_calls()
    env.sandbox.rewrite(*PACK, answer(404, fail(404, "not_found", "Pack not found").body), count=1)

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stdout + result.stderr
    assert env.pack_named("Brand")["id"] == pack_id and env.pack(pack_id)["image_count"] == 1
    assert env.sandbox.mutating_calls() == 0


def test_a_404_under_dry_run_forgets_nothing(env: Env) -> None:
    write(env.map("brand", pack="Brand") / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    before = env.state_path.read_bytes()
    env.sandbox.rewrite(*PACK, answer(404, fail(404, "not_found", "Pack not found").body), count=2)
    env.sandbox.rewrite("GET", "/packs", data(lambda d: d.update(packs=[], total=0)), count=1)

    result = env.cli("run", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "is gone (deleted in the web app?)" in result.stdout and "(new pack)" in result.stdout
    assert env.state_path.read_bytes() == before
    env.sandbox.reset_calls()
    assert env.cli("run", "--no-wait").returncode == 0
    assert env.sandbox.mutating_calls() == 0, "the records survived: nothing is added again"


def test_a_pack_deleted_in_the_web_app_is_said_and_created_again(env: Env) -> None:
    folder = env.map("brand", pack="Brand")
    write(folder / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    old = env.pack_named("Brand")["id"]
    env.sandbox.delete_pack(old)

    result = env.cli("run", "--no-wait")

    assert result.returncode == 0, result.stderr
    assert "is gone (deleted in the web app?)" in result.stdout
    new = env.pack_named("Brand")
    assert new["id"] != old and new["image_count"] == 1
    status = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]
    assert (status["pack_id"], status["images"], status["synced"]) == (new["id"], 1, 1)


# -- 2. mappings that share a pack ---------------------------------------------------------------------


def second_config(env: Env, folder: Path, **mapping: Any) -> Path:
    """Another config over the same state file, with one mapping."""
    path = env.root / "other.toml"
    lines = [f'[genviral]\nbase_url = "{env.sandbox.base_url}"', f'[state]\npath = "{env.state_path}"',
             f'[[mappings]]\npath = "{folder}"'] + [f"{k} = {json.dumps(v)}" for k, v in mapping.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_with(env: Env, config: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "GENVIRAL_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "packsync", "run", "--no-wait", "-c", str(config)],
                          capture_output=True, text=True, env=environment, timeout=120)


def test_two_configs_sharing_a_state_and_a_pack_keep_each_other_s_images(env: Env) -> None:
    pack_id = env.sandbox.create_pack("shared")
    one = env.map("one", pack_id=pack_id)
    two = env.folder("two")
    for i in range(4):
        write(one / f"{i}.png", image())
        write(two / f"{i}.png", image())
    other = second_config(env, two, pack_id=pack_id)

    for _ in range(3):
        assert run_with(env, env.config_path).returncode == 0
        assert run_with(env, other).returncode == 0

    assert env.sandbox.calls[ADD] == 8
    assert env.sandbox.calls[("DELETE", "/packs/{id}/images/{image_id}")] == 0
    assert env.pack(pack_id)["image_count"] == 8

    (two / "0.png").unlink()
    assert run_with(env, other).returncode == 0
    assert run_with(env, env.config_path).returncode == 0
    assert env.pack(pack_id)["image_count"] == 7, "each mapping still deletes its own"


def test_nested_folders_in_two_configs_into_one_pack_settle_without_churn(env: Env) -> None:
    pack_id = env.sandbox.create_pack("shared")
    outer = env.map("photos", pack_id=pack_id)
    write(outer / "top.png", image())
    write(outer / "sub/inner.png", image())
    inner = second_config(env, outer / "sub", pack_id=pack_id)

    for _ in range(3):
        assert run_with(env, env.config_path).returncode == 0
        assert run_with(env, inner).returncode == 0

    assert env.sandbox.calls[ADD] == 2 and env.pack(pack_id)["image_count"] == 2


# -- 3. upload answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("url", None), ("url", "/relative/a.png"),
                                              ("uploadUrl", "javascript:alert(1)"), ("uploadUrl", None),
                                              ("uploadUrl", "http://[bad/upload")])
def test_an_upload_answer_with_an_invalid_url_fails_that_file_and_is_never_recorded(
        env: Env, field: str, value: Any) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    env.sandbox.rewrite("POST", "/files", data(lambda d: d.update({field: value})), count=1)

    first = env.cli("run", "--no-wait")
    second = env.cli("run", "--no-wait")

    clean(first)
    assert first.returncode == ExitCode.SOME_FAILED and "a.png" in first.stdout
    assert "not an absolute http(s) URL" in first.stdout
    assert second.returncode == 0, second.stdout
    assert env.pack(pack_id)["image_count"] == 1
    assert env.sandbox.calls[ADD] == 1, "no add-image with a bad URL was ever sent"


@pytest.mark.parametrize("name", ["a.png", "beach.jpg"], ids=["as it is", "prepared (its location stripped)"])
def test_an_uploaded_url_the_api_refuses_is_uploaded_afresh(env: Env, name: str) -> None:
    """The upload forgotten is the one of the bytes sent (a prepared file's, not the file's own)."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / name, image() if name.endswith(".png") else photos.jpeg(48, 32))
    env.sandbox.inject("422", *ADD)

    first = env.cli("run", "--no-wait")
    env.sandbox.reset_calls()
    second = env.cli("run", "--no-wait")

    assert first.returncode == ExitCode.SOME_FAILED and "image_url" in first.stdout
    assert second.returncode == 0, second.stdout
    assert env.sandbox.calls[("POST", "/files")] == 1 and env.sandbox.calls[ADD] == 1
    assert env.pack(pack_id)["image_count"] == 1


# -- 4, 5, 6. a locked, full or read-only state ---------------------------------------------------------


def test_a_state_locked_by_another_program_ends_run_in_one_sentence(env: Env) -> None:
    pack_id, folder = synced_pack(env)
    write(folder / "new.png", image())
    holder = sqlite3.connect(env.state_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = env.cli("run", "--no-wait")
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    clean(result)
    assert result.returncode == ExitCode.USAGE
    assert f"the state database {env.state_path} is locked by another program" in result.stderr
    assert env.cli("run", "--no-wait").returncode == 0


def test_the_daemon_waits_out_a_locked_state_and_syncs_what_came_meanwhile(daemon_env: Env,
                                                                           start_here: StartHere) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "a.png", image())
    daemon = start_here()
    holder = sqlite3.connect(daemon_env.state_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        write(folder / "b.png", image())
        wait_until(lambda: "locked by another program" in daemon.output(), timeout=30, what="the lock is reported")
        assert daemon.running, daemon.output()[-2000:]
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] == 2, timeout=60, what="b.png synced")
    assert daemon.running
    assert daemon.output().count("locked by another program") == 1, "said once, not on every retry"
    assert "usable again" in daemon.output()
    assert daemon.stop() is None


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MB tmpfs of its own (root only): a disk that can really fill up."""
    mount = Path(tempfile.mkdtemp(prefix="packsync-disk-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    # Unbuffered: a buffered file would keep what the last write could not place, and fail again on close.
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_disk_ends_run_in_one_sentence_and_loses_nothing(env: Env, small_disk: Path) -> None:
    env.state_path.parent.symlink_to(small_disk)
    pack_id, folder = synced_pack(env)
    for i in range(20):
        write(folder / f"more-{i}.png", image(64, 64))
    filler = fill(small_disk)

    result = env.cli("run", "--no-wait")

    clean(result)
    assert result.returncode == ExitCode.USAGE
    assert f"no space left on the device of {env.state_path.resolve()}" in result.stderr
    filler.unlink()
    assert env.cli("run", "--no-wait").returncode == 0
    assert env.pack(pack_id)["image_count"] == 22
    assert env.cli("run", "--no-wait").stdout.count("0 added, 0 deleted, 0 skipped, 0 failed") == 1


def test_the_daemon_survives_a_full_disk_and_resumes_when_space_is_back(daemon_env: Env, start: StartDaemon,
                                                                        small_disk: Path) -> None:
    daemon_env.state_path.parent.parent.mkdir(parents=True, exist_ok=True)
    daemon_env.state_path.parent.symlink_to(small_disk)
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "a.png", image())
    daemon = start()
    filler = fill(small_disk)
    for i in range(20):
        write(folder / f"b-{i}.png", image(64, 64))

    wait_until(lambda: "no space left" in daemon.output(), timeout=30, what="the full disk is reported")
    assert daemon.proc.poll() is None, daemon.output()[-2000:]
    filler.unlink()

    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] == 21, timeout=90, what="all synced after")
    assert daemon.proc.poll() is None and daemon.stop() == 0


def test_a_read_only_state_is_said_to_be_on_a_read_only_file_system(env: Env, small_disk: Path) -> None:
    env.state_path.parent.parent.mkdir(parents=True, exist_ok=True)
    env.state_path.parent.symlink_to(small_disk)
    _pack_id, folder = synced_pack(env)
    write(folder / "new.png", image())
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)]).returncode == 0

    result = env.cli("run", "--no-wait")

    clean(result)
    assert result.returncode == ExitCode.USAGE
    assert str(env.state_path.resolve()) in result.stderr and "read-only file system" in result.stderr
    assert "permission denied" not in result.stderr and "owner and mode" not in result.stderr
    assert "corrupt" not in result.stderr and "move it away" not in result.stderr.lower()
    assert env.cli("status", token=None).returncode == 0, "a read-only state can still be looked at"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to "
                    "run packsync as another user")
def test_a_state_file_of_mode_444_is_a_permission_sentence(tmp_path: Path, env: Env) -> None:
    _pack_id, folder = synced_pack(env)
    write(folder / "new.png", image())
    shared = Path(tempfile.mkdtemp(prefix="packsync-perm-"))
    try:
        shared.chmod(0o777)
        state = shared / "state.db"
        shutil.copy(env.state_path, state)
        state.chmod(0o444)
        config = shared / "config.toml"
        config.write_text(env.config_path.read_text().replace(str(env.state_path), str(state)))
        folder_root = env.root
        for path in [folder_root, *folder_root.parents]:
            if path == Path("/"):
                break
            path.chmod(path.stat().st_mode | 0o005)
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                 "-m", "packsync", "run", "--no-wait", "-c", str(config)],
                                capture_output=True, text=True, timeout=120,
                                env={**unmeasured(os.environ), "GENVIRAL_TOKEN": TOKEN, "HOME": str(shared)})
    finally:
        shutil.rmtree(shared, ignore_errors=True)

    clean(result)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert str(state) in result.stderr and "permission denied" in result.stderr


# -- 7, 8, 9. malformed answers ------------------------------------------------------------------------


def _no_id(d: dict[str, Any]) -> None:
    d.pop("id")


def _image_without_id(d: dict[str, Any]) -> None:
    d["images"].append({"url": "https://cdn.example.com/x.png"})


def _bad_utf8_in_a_url(reply: Reply) -> Reply:
    body = re.sub(rb'("url":\s*")', lambda found: found.group(1) + b"\xff", reply.body, count=1)
    return Reply(reply.status, body, reply.content_type, reply.headers)


MALFORMED = [
    pytest.param(PACK, data(_no_id), "no valid id", id="a pack without id"),
    pytest.param(PACK, _bad_utf8_in_a_url, "not a JSON answer", id="invalid UTF-8 in an image's URL"),
    pytest.param(PACK, data(lambda d: d.update(id=None)), "no valid id", id="a pack with a null id"),
    pytest.param(PACK, data(_image_without_id), "no valid id", id="an image without id"),
    pytest.param(PACK, data(lambda d: d.update(images="lots")), "images is str, not a list", id="images a string"),
    pytest.param(PACK, data(lambda d: d.update(images=[None, None])), "not an object", id="images a list of nulls"),
]


@pytest.mark.parametrize(("route", "rewrite", "said"), MALFORMED)
def test_a_malformed_pack_answer_is_an_error_for_that_mapping_only(env: Env, route: tuple[str, str],
                                                                   rewrite: Callable[[Reply], Reply],
                                                                   said: str) -> None:
    broken, healthy = env.sandbox.create_pack("broken"), env.sandbox.create_pack("healthy")
    write(env.map("a", pack_id=broken) / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    write(env.map("b", pack_id=healthy) / "b.png", image())
    env.sandbox.rewrite(*route, lambda reply: rewrite(reply) if broken in json.dumps(
        json.loads(reply.body).get("data") or {}) else reply)

    result = env.cli("run", "--no-wait")

    clean(result)
    assert result.returncode == ExitCode.SOME_FAILED
    assert said in result.stdout, result.stdout
    assert env.pack(healthy)["image_count"] == 1, "the other mapping synced"
    assert env.pack(broken)["image_count"] == 1, "nothing was added or deleted blindly"


def test_a_pack_whose_images_cannot_be_read_is_not_waited_for(env: Env) -> None:
    """Its images' metadata stays pending in the state, but no poll of that pack can read it."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("a", pack_id=pack_id) / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    env.sandbox.rewrite(*PACK, data(_image_without_id))

    result = env.cli("run", "--wait-timeout", "120")

    clean(result)
    assert result.returncode == ExitCode.SOME_FAILED and "no valid id" in result.stdout
    assert "metadata poll failed" not in result.stdout + result.stderr


def test_a_created_pack_answered_with_a_null_id_is_found_not_made_again(env: Env) -> None:
    write(env.map("brand", pack="Fresh") / "a.png", image())
    env.sandbox.rewrite("POST", "/packs", data(lambda d: d.update(id=None)), count=1)

    result = env.cli("run", "--no-wait")

    clean(result)
    assert result.returncode == 0, result.stdout
    assert env.pack_named("Fresh")["image_count"] == 1, "one pack, not a stray empty one beside it"


def test_an_added_image_answered_without_id_is_adopted_next_run_not_added_again(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    env.sandbox.rewrite(*ADD, data(lambda d: d.update(id=None)), count=1)

    first = env.cli("run", "--no-wait")
    second = env.cli("run", "--no-wait")

    clean(first)
    assert first.returncode == ExitCode.SOME_FAILED and "no valid id" in first.stdout
    assert second.returncode == 0
    assert env.pack(pack_id)["image_count"] == 1 and env.sandbox.calls[ADD] == 1


def test_keywords_of_the_wrong_type_count_as_none(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    def numbers(d: dict[str, Any]) -> None:
        for item in d["images"]:
            item["metadata"] = {"status": "completed", "description": 42, "keywords": 7}

    env.sandbox.rewrite(*PACK, data(numbers))
    result = env.cli("run", "--wait-timeout", "5")

    clean(result)
    assert result.returncode == 0, result.stdout
    meta = json.loads(env.cli("status", "--json", "--files", token=None).stdout)["mappings"][0]["file_list"][0]
    assert meta["metadata"] == {"status": "completed", "description": None, "keywords": [], "error": None}


def _halves_of_emoji(encoding: str) -> Callable[[Reply], Reply]:
    """Every image's AI text ending in half an emoji (what a JavaScript ``slice`` through one makes), as a
    JSON escape (``\\ud83d``) or as the bytes UTF-8 never allows (``\\xed\\xa0\\xbd``)."""
    def rewrite(reply: Reply) -> Reply:
        envelope = json.loads(reply.body)
        for item in envelope["data"]["images"]:
            item["metadata"] = {"status": "completed", "description": "a smile \ud83d", "keywords": ["grin\udc00"],
                                "model": "vision-\ud83d"}
        body = json.dumps(envelope).encode() if encoding == "escape" else \
            json.dumps(envelope, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return Reply(reply.status, body, reply.content_type, reply.headers)

    return rewrite


@pytest.mark.parametrize("encoding", ["escape", "bytes"])
def test_half_an_emoji_from_the_api_arrives_as_a_replacement_character(env: Env, encoding: str) -> None:
    """Python decodes a lone UTF-16 surrogate into a str that SQLite, files and terminals refuse to
    encode: text from the network is made whole where it is decoded, each half a U+FFFD."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    env.sandbox.rewrite(*PACK, _halves_of_emoji(encoding))

    result = env.cli("run", "--wait-timeout", "5")
    document = json.loads(env.cli("status", "--json", "--files", token=None).stdout)
    found = env.cli("search", "smile", token=None)
    listed = env.cli("status", "--files", token=None)

    for output in (result, found, listed):
        clean(output)
        assert output.returncode == 0, output.stdout + output.stderr
    assert document["mappings"][0]["file_list"][0]["metadata"] == {
        "status": "completed", "description": "a smile \ufffd", "keywords": ["grin\ufffd"], "error": None}
    assert "a.png" in found.stdout


def test_a_retry_after_that_is_not_a_number_or_a_date_is_just_a_retry(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    limited = fail(429, "rate_limited", "Too many requests").body
    env.sandbox.rewrite(*PACK, answer(429, limited, headers={"Retry-After": "soon"}), count=1)

    result = env.cli("run", "--no-wait")

    clean(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert env.sandbox.calls[PACK] == 2 and env.pack(pack_id)["image_count"] == 1


def test_daemon_metadata_polling_survives_a_malformed_pack_and_says_so(daemon_env: Env, start_here: StartHere) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    daemon = start_here()
    write(folder / "a.png", image())
    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] == 1, timeout=30, what="a.png added")
    daemon_env.sandbox.rewrite(*PACK, data(_image_without_id), count=2)

    def completed() -> bool:
        status = json.loads(daemon_env.cli("status", "--json", token=None).stdout)
        completed: int = status["mappings"][0]["metadata"]["completed"]
        return completed == 1

    wait_until(completed, timeout=90, what="metadata completed after the malformed answers stopped")
    assert "no valid id" in daemon.output(), "the malformed answer was logged, not swallowed"
    assert daemon.stop() is None


def test_pagination_that_never_ends_is_cut_short(env: Env) -> None:
    for i in range(150):
        env.sandbox.create_pack(f"pack {i}")
    env.map("brand", pack="p")

    def ignore_offset(reply: Reply) -> Reply:
        envelope = json.loads(reply.body)
        envelope["data"]["total"] = 10**9
        return Reply(reply.status, json.dumps(envelope).encode(), reply.content_type, reply.headers)

    env.sandbox.rewrite("GET", "/packs", ignore_offset)

    result = env.cli("packs", timeout=60)

    assert result.returncode == 0, result.stderr
    assert env.sandbox.calls[("GET", "/packs")] <= 3
    assert result.stdout.count("pack ") == 150


# -- 10, 11. secrets and terminal safety ---------------------------------------------------------------


ECHOES = [
    pytest.param(PACK, answer(400, json.dumps({"ok": False, "code": 400, "error_code": "bad_request",
                                                "message": f"bad header Authorization: Bearer {TOKEN}"}).encode()),
                 id="an API error message"),
    pytest.param(PACK, answer(400, f"<html><pre>Authorization: Bearer {TOKEN}</pre></html>".encode(), "text/html"),
                 id="a proxy's HTML page"),
    pytest.param(("PUT", "storage"), answer(400, (f"<Error><Code>InvalidArgument</Code><Message>Only one auth "
                                                  f"mechanism allowed; got Bearer {TOKEN}</Message></Error>").encode(),
                                            "application/xml"), id="a storage error"),
]


@pytest.mark.parametrize(("route", "rewrite"), ECHOES)
def test_a_server_echoing_the_token_gets_it_nowhere(env: Env, route: tuple[str, str],
                                                    rewrite: Callable[[Reply], Reply]) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    env.sandbox.rewrite(*route, rewrite)

    outputs = [env.cli("run", "--no-wait"), env.cli("-v", "run", "--no-wait"),
               env.cli("status", "--json", "--files", token=None), env.cli("status", token=None)]

    assert outputs[0].returncode == ExitCode.SOME_FAILED
    assert "Bearer ***" in outputs[0].stdout, outputs[0].stdout
    for result in outputs:
        assert TOKEN not in result.stdout + result.stderr
    for path in env.state_path.parent.iterdir():
        assert TOKEN.encode() not in path.read_bytes(), path


def test_names_with_control_characters_cannot_forge_lines_or_drive_the_terminal(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    forged = "a\n  failed     everything.png: forged.png"
    escape = "b\x1b[2J\x1b[31m.png"
    write(folder / forged, b"not an image")
    write(folder / escape, image())

    run = env.cli("run", "--no-wait")
    files = env.cli("status", "--files", token=None)
    document = json.loads(env.cli("status", "--json", "--files", token=None).stdout)

    for text in (run.stdout, files.stdout):
        assert "\x1b" not in text
        assert not any(line.lstrip().startswith("failed     everything.png") for line in text.splitlines())
    assert "a\\n  failed" in run.stdout and "b\\x1b[2J" in files.stdout
    assert {row["path"] for row in document["mappings"][0]["file_list"]} == {forged, escape}, "exact in JSON"


# -- 12, 13. the cost of bad input; small ones ---------------------------------------------------------


def test_many_bad_files_are_counted_not_listed_and_not_saved_again(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    write(folder / "good.png", image())
    for i in range(2000):
        write(folder / f"empty-{i:04}.png", b"")

    first = env.cli("run", "--no-wait")
    problems = json.loads(env.cli("status", "--json", "--problems", token=None).stdout)["mappings"][0]

    assert first.returncode == ExitCode.SOME_FAILED
    assert len(first.stdout.splitlines()) < 12, first.stdout
    assert "… and 1995 more: empty file (`packsync status --problems` lists them)" in first.stdout
    assert len(problems["problem_list"]) == 2000 and problems["skipped"] == 2000 and problems["failed"] == 0
    assert "empty-0000.png: empty file" in env.cli("status", "--problems", token=None).stdout


def test_problems_unchanged_since_the_last_scan_are_not_written_again(tmp_path: Path) -> None:
    from packsync.model import Problem
    from packsync.state.store import State

    state = State(tmp_path / "state.db")
    problems = [Problem(f"empty-{i}.png", "empty file") for i in range(500)]
    state.files.save_problems("/photos", problems)
    wal = tmp_path / "state.db-wal"
    on_state_connection(state, "PRAGMA wal_checkpoint(TRUNCATE)")
    assert wal.stat().st_size == 0

    state.files.save_problems("/photos", reversed(problems))
    assert wal.stat().st_size == 0, "the same problems were written again"
    state.files.save_problems("/photos", problems[1:] + [Problem("new.png", "not an image")])
    assert {p.rel_path for p in state.files.problems("/photos")} == {p.rel_path for p in problems[1:]} | {"new.png"}
    state.close()


def test_the_daemon_s_last_error_clears_once_it_recovers(daemon_env: Env, start_here: StartHere) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    # Retried after half a second: the error stays long enough to be read.
    daemon = start_here(msgspec.structs.replace(FAST, mapping_retry=Backoff(0.5, 1.0)))
    daemon_env.sandbox.inject("expire", method="PUT", route="storage", count=3)
    write(folder / "a.png", image())

    def daemon_error() -> Any:
        return json.loads(daemon_env.cli("status", "--json", token=None).stdout)["daemon"]["last_error"]

    wait_until(lambda: state_rows(daemon_env.state_path, "SELECT last_error FROM daemon")[0][0], timeout=30,
               what="the failure is reported")
    wait_until(lambda: daemon_env.pack(pack_id)["image_count"] == 1, timeout=60, what="the retry syncs it")
    wait_until(lambda: daemon_error() is None, timeout=30, what="the error is cleared")
    assert daemon.stop() is None


def test_one_pack_named_by_name_and_by_id_in_one_config_settles_on_one_copy(env: Env) -> None:
    """Two mappings of one config reach one pack (by name and by id) and both add the same content in
    the same run; afterwards the newer copy goes and nothing churns."""
    pack_id = env.sandbox.create_pack("Shared")
    write(env.map("one", pack="Shared") / "same.png", image(seed=7))
    write(env.map("two", pack_id=pack_id) / "same.png", image(seed=7))

    codes = [env.cli("run", "--no-wait").returncode for _ in range(4)]

    assert codes == [0, 0, 0, 0]
    assert env.pack(pack_id)["image_count"] == 1
    assert env.sandbox.calls[ADD] <= 2 and env.sandbox.calls[("DELETE", "/packs/{id}/images/{image_id}")] <= 1


@pytest.mark.parametrize("pack_id", ["../files", "x/../../files", "..", "a?b=c"])
def test_an_id_is_one_path_segment_never_another_endpoint(env: Env, pack_id: str) -> None:
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    result = env.cli("run", "--no-wait")

    clean(result)
    assert result.returncode == ExitCode.USAGE and f"no pack {pack_id} is visible to this key" in result.stdout
    assert set(env.sandbox.calls) == {PACK}, "only GET /packs/{id} was asked, with the id as one segment"


def full_for_a_moment(state: Any) -> None:
    """The state's file may grow by two pages at most: SQLite's own "database or disk is full"."""
    pages = on_state_connection(state, "PRAGMA page_count")[0][0]
    on_state_connection(state, f"PRAGMA max_page_count = {pages + 2}")


def test_a_failed_transaction_keeps_the_steps_queued_before_it(tmp_path: Path) -> None:
    """The executor's steps wait in a queue; another part of the daemon (a scan's file cache) failing
    to commit must not take them with it, or an add would go out with its URL unrecorded."""
    from packsync.errors import StateError
    from packsync.model import Blob, CachedFile
    from packsync.state.store import State

    state = State(tmp_path / "state.db")
    url = "https://cdn.example.com/a.png"
    with state.write_behind():
        state.uploads.save_blob(Blob("a" * 64, "image/png", url, None, None, True))
        full_for_a_moment(state)
        cache = {f"f{i}.png": CachedFile(f"1:{i}:10:1", 10, "b" * 64, "image/png", None) for i in range(5000)}
        with pytest.raises(StateError, match="no space left"):
            state.files.save_cache("/watched", {}, cache)
        on_state_connection(state, "PRAGMA max_page_count = 1073741823")  # space again
        state.flush()  # what the executor does before it sends the add
        # committed, for any connection
        assert state_rows(tmp_path / "state.db", "SELECT url FROM blobs") == [(url,)]
    state.close()


def test_a_statement_packsync_got_wrong_is_a_bug_not_a_corrupt_state(tmp_path: Path) -> None:
    """The driver refusing how packsync used it (a value of a type it cannot bind) is packsync's bug, shown
    as one: not the sentence that calls the state corrupt and tells the user to move it away."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from packsync.errors import StateError
    from packsync.state.store import State

    state = State(tmp_path / "state.db")
    state.mappings.save("/photos", pack_id="p")
    try:
        with pytest.raises(DBAPIError) as caught:
            state.unit.rows(text("SELECT :value"), {"value": object()})
        assert not isinstance(caught.value, StateError)
        assert state.mappings.get("/photos") is not None, "the state is as usable as before"
    finally:
        state.close()


def test_an_error_ending_the_queued_steps_is_the_one_raised_when_their_commit_fails_too(tmp_path: Path) -> None:
    """A refused key (or a cancellation) that ends the executor's run is what the run reports, even
    when the state cannot take the last queued steps at that moment."""
    from packsync.errors import AuthError
    from packsync.model import Blob, ManagedImage
    from packsync.state.store import State

    state = State(tmp_path / "state.db")
    images = [ManagedImage("p", f"i{n}", "c" * 64, f"https://cdn.example.com/{n}.png", f"{n}.png", "/photos")
              for n in range(5000)]
    with pytest.raises(AuthError, match="refused"), state.write_behind():
        state.images.record(images)
        full_for_a_moment(state)
        raise AuthError("the key was refused")
    on_state_connection(state, "PRAGMA max_page_count = 1073741823")
    state.uploads.save_blob(Blob("d" * 64, "image/png"))  # the state is usable again, and writes at once
    assert state.uploads.blobs(["d" * 64])
    state.close()
