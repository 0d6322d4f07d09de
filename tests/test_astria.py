"""Astria packs as a source: mirrored into Genviral packs over HTTP against the sandbox's two APIs."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ASTRIA_TOKEN, TOKEN, Env, image, write
from helpers import StartDaemon, state_rows, wait_until
from test_bad_input import stored_file_names
from test_state import as_schema

from packsync.errors import ExitCode
from packsync.sandbox.server import Reply


def astria_pack(env: Env, images: dict[str, int], title: str = "Corporate Headshots") -> tuple[int, list[str]]:
    """An Astria pack with ``images[class]`` images per class, each in its own prompt; returns its id
    and the image URLs in order."""
    pack_id = env.sandbox.astria.add_pack(title)
    urls = [env.sandbox.astria.add_image(pack_id, cls, image(seed=1000 * n + i))
            for n, (cls, count) in enumerate(images.items()) for i in range(count)]
    return pack_id, urls


def prompts_of(env: Env, pack_id: int) -> dict[str, list[dict[str, Any]]]:
    """The Astria pack's prompts per class, as the sandbox's Astria API shows them to user 1."""
    pack = env.sandbox.astria.get_pack(1, pack_id)
    assert pack is not None, f"Astria pack {pack_id} is not visible to user 1"
    prompts: dict[str, list[dict[str, Any]]] = pack["prompts_per_class"]
    return prompts


def genviral_bytes(env: Env, pack_name: str) -> list[bytes]:
    return sorted(env.cdn_bytes(env.pack_named(pack_name)["id"]))


def astria_bytes(env: Env, urls: list[str]) -> list[bytes]:
    import httpx2

    return sorted(httpx2.get(url).content for url in urls)


def test_an_astria_pack_is_mirrored_once_and_a_second_run_reads_it_once(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3, "man": 2})
    env.map_astria(pack_id, pack="Headshots")

    first = env.cli("run", "--no-wait")
    calls = env.sandbox.calls

    assert first.returncode == ExitCode.OK, first.stderr
    assert calls[("GET", "astria-img")] == 5 and calls[("POST", "/files")] == 5
    assert genviral_bytes(env, "Headshots") == astria_bytes(env, urls)
    genviral_id = env.pack_named("Headshots")["id"]
    prompts = prompts_of(env, pack_id)
    assert sorted(stored_file_names(env.sandbox, genviral_id)) == sorted(
        f"{cls}-{prompt['id']}-1.png" for cls, listed in prompts.items() for prompt in listed)
    env.sandbox.reset_calls()
    second = env.cli("run", "--no-wait")
    assert second.returncode == ExitCode.OK and "0 added, 0 deleted, 0 skipped, 0 failed" in second.stdout
    assert env.sandbox.calls == {("GET", "astria:/p/{id}"): 1, ("GET", "/packs/{id}"): 1}
    status = env.cli("status", token=None)
    assert f"astria:{pack_id} (Corporate Headshots) → Headshots" in status.stdout
    assert "files 5 · synced 5" in status.stdout


def test_a_state_of_schema_6_knows_every_image_it_downloaded_once_upgraded(env: Env) -> None:
    """Schema 6 kept zeros for an Astria image's stat key: its URL is its version, so no image is
    downloaded again after the upgrade. (Uploaded as they were, as every image before schema 8: with the
    default strip, each would be looked at once to see whether it carries a location.)"""
    pack_id, _urls = astria_pack(env, {"woman": 2, "man": 1})
    env.map_astria(pack_id, pack="Headshots", strip=[])
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    as_schema(env.state_path, 6)
    assert state_rows(env.state_path, "SELECT DISTINCT dev, inode, mtime_ns FROM files") == [(0, 0, 0)]
    env.sandbox.reset_calls()

    again = env.cli("run", "--no-wait")

    assert again.returncode == ExitCode.OK and "0 added, 0 deleted, 0 skipped, 0 failed" in again.stdout, again.stdout
    assert env.sandbox.calls[("GET", "astria-img")] == 0
    assert state_rows(env.state_path, "SELECT count(*) FROM files WHERE version = rel_path") == [(3,)]


def test_the_mirror_follows_images_added_and_removed_upstream(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3})
    env.map_astria(pack_id, pack="Headshots")
    assert env.cli("run", "--no-wait").returncode == 0

    env.sandbox.astria.remove_image(pack_id, urls[0])
    urls = urls[1:] + [env.sandbox.astria.add_image(pack_id, "woman", image(seed=77))]
    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.OK, result.stderr
    assert "1 added, 1 deleted, 0 skipped, 0 failed" in result.stdout
    assert genviral_bytes(env, "Headshots") == astria_bytes(env, urls)


def test_classes_choose_which_images_are_mirrored(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 2, "man": 3})
    env.map_astria(pack_id, pack="Women", classes=["woman"])

    assert env.cli("run", "--no-wait").returncode == 0
    assert env.sandbox.calls[("GET", "astria-img")] == 2, "images of other classes are not even downloaded"
    assert genviral_bytes(env, "Women") == astria_bytes(env, urls[:2])


def test_the_same_bytes_in_astria_and_in_a_folder_are_uploaded_once_per_name(env: Env) -> None:
    """Once for the folder's file, once under the Astria image's name (each pack's upload names its image);
    the Astria pack's second URL of the same bytes is no second upload."""
    pack_id = env.sandbox.astria.add_pack("Shared")
    shared = image(seed=5)
    env.sandbox.astria.add_image(pack_id, "woman", shared)
    env.sandbox.astria.add_image(pack_id, "man", shared)  # the same bytes under a second URL
    write(env.map("brand", pack="Brand") / "a.png", shared)
    env.map_astria(pack_id, pack="Mirror")

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.OK, result.stderr
    assert env.sandbox.calls[("POST", "/files")] == 2 and env.sandbox.calls[("PUT", "storage")] == 2
    assert genviral_bytes(env, "Brand") == genviral_bytes(env, "Mirror") == [shared]


@pytest.mark.parametrize("gone", ["emptied", "deleted"])
def test_an_emptied_or_vanished_astria_pack_deletes_nothing(env: Env, gone: str) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3})
    env.map_astria(pack_id, pack="Headshots")
    assert env.cli("run", "--no-wait").returncode == 0
    (env.sandbox.astria.clear if gone == "emptied" else env.sandbox.astria.delete_pack)(pack_id)

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.SAFETY, result.stdout + result.stderr
    assert f"astria:{pack_id}" in result.stdout + result.stderr
    assert len(env.pack_named("Headshots")["images"]) == 3
    assert env.sandbox.calls[("DELETE", "/packs/{id}/images/{image_id}")] == 0


def test_a_refused_astria_key_is_exit_3_naming_astria(env: Env) -> None:
    pack_id, _ = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.astria.users = {}

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.AUTH
    said = result.stdout + result.stderr
    assert "the Astria API refused the key" in said and "Genviral" not in said
    assert env.sandbox.calls[("POST", "/files")] == 0


def test_a_config_with_astria_mappings_and_no_key_is_exit_2_naming_the_variable(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    pack_id, _ = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    del env.astria["token_file"]
    env.write_config()
    monkeypatch.delenv("ASTRIA_API_KEY", raising=False)

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.USAGE
    assert "ASTRIA_API_KEY" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert env.sandbox.calls == {}


@pytest.mark.parametrize("key", ["include", "exclude", "follow_symlinks", "polling"])
def test_folder_keys_on_an_astria_mapping_are_refused_by_name(env: Env, key: str) -> None:
    env.map_astria(260, pack="Headshots", **{key: ["*.png"] if key in ("include", "exclude") else True})

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.USAGE
    assert f"mappings[0].{key}: applies to folders only" in result.stderr


def _hostile(reply: Reply) -> Reply:
    pack = json.loads(reply.body)
    prompts = pack["prompts_per_class"]
    prompts["woman"].append({"id": 1, "images": ["javascript:alert(1)", "file:///etc/passwd", 42]})
    prompts["woman"].append({"images": ["http://127.0.0.1:1/no-id"]})
    prompts["woman"].append("not a prompt")
    prompts["robot"] = "not a list"
    return Reply(reply.status, json.dumps(pack).encode())


def test_hostile_entries_are_reported_one_by_one_and_the_rest_is_mirrored(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3})
    env.sandbox.rewrite("GET", "astria:/p/{id}", _hostile)
    env.sandbox.rewrite("GET", "astria-img", lambda reply: Reply(200, reply.body, "image/png", {
        "Content-Length": "5000000000"}), count=1)  # one download claims 5 GB
    env.map_astria(pack_id, pack="Headshots")

    result = env.cli("run", "--no-wait")
    status = json.loads(env.cli("status", "--json", "--problems", token=None).stdout)["mappings"][0]

    assert result.returncode == ExitCode.SOME_FAILED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    reasons = [problem["reason"] for problem in status["problem_list"]]
    assert sum("not an http(s) address" in reason for reason in reasons) == 3
    assert sum("not a prompt" in reason for reason in reasons) == 2
    assert sum("not a list" in reason for reason in reasons) == 1
    assert sum("larger than" in reason for reason in reasons) == 1
    mirrored = genviral_bytes(env, "Headshots")
    assert len(mirrored) == 2 and set(mirrored) < set(astria_bytes(env, urls))


def test_pull_astria_writes_class_folders_with_exact_bytes_and_resumes(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 2, "man": 1})
    env.map_astria(pack_id, pack="unused")
    out = env.root / "out"

    first = env.cli("pull", f"astria:{pack_id}", str(out))
    again = env.cli("pull", f"astria:{pack_id}", str(out))

    assert first.returncode == ExitCode.OK, first.stderr
    assert env.sandbox.calls[("GET", "astria-img")] == 3, "the second pull downloads nothing"
    prompts = prompts_of(env, pack_id)
    expected = {f"{cls}/{prompt['id']}-1.png" for cls, listed in prompts.items() for prompt in listed}
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == expected
    assert sorted(p.read_bytes() for p in out.rglob("*.png")) == astria_bytes(env, urls)
    assert again.returncode == ExitCode.OK


def test_the_astria_key_is_never_printed(env: Env, tmp_path: Path) -> None:
    pack_id, _ = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.rewrite("GET", "astria:/p/{id}", lambda reply: Reply(500, json.dumps(
        {"error": f"bad key {ASTRIA_TOKEN}"}).encode()))

    outputs = [env.cli("-v", "run", "--no-wait"), env.cli("status", token=None), env.cli("-v", "astria", "packs")]

    for result in outputs:
        assert ASTRIA_TOKEN not in result.stdout + result.stderr
        assert TOKEN not in result.stdout + result.stderr


def test_astria_packs_lists_id_title_classes_and_image_count(env: Env) -> None:
    mine, _ = astria_pack(env, {"woman": 2, "man": 1}, title="Mine")
    public = env.sandbox.astria.add_pack("Gallery pick", user_id=2, public=True)
    env.sandbox.astria.add_image(public, "dog", image(seed=3))
    env.map_astria(mine, pack="unused")

    own = json.loads(env.cli("astria", "packs", "--json").stdout)["packs"]
    gallery = env.cli("astria", "packs", "--gallery")

    assert own == [{"id": mine, "title": "Mine", "classes": ["woman", "man"], "images": 3}]
    assert gallery.returncode == 0 and f"{public}  Gallery pick" in gallery.stdout and "dog" in gallery.stdout


def images_of(env: Env, name: str) -> int:
    return len(env.pack_named(name)["images"]) if any(p["name"] == name for p in env.sandbox.packs()) else 0


def test_the_daemon_reads_astria_packs_again_on_sighup(daemon_env: Env, start: StartDaemon) -> None:
    pack_id, _ = astria_pack(daemon_env, {"woman": 2})
    daemon_env.map_astria(pack_id, pack="Headshots")
    daemon = start()
    wait_until(lambda: images_of(daemon_env, "Headshots") == 2, timeout=15)

    daemon_env.sandbox.astria.add_image(pack_id, "man", image(seed=42))
    daemon.proc.send_signal(signal.SIGHUP)

    wait_until(lambda: images_of(daemon_env, "Headshots") == 3, timeout=15)


def test_the_daemon_reads_astria_packs_again_every_poll_interval(daemon_env: Env, start: StartDaemon) -> None:
    pack_id, urls = astria_pack(daemon_env, {"woman": 2})
    daemon_env.astria["poll_interval_s"] = 10  # the shortest allowed
    daemon_env.map_astria(pack_id, pack="Headshots")
    start()
    wait_until(lambda: images_of(daemon_env, "Headshots") == 2, timeout=15)
    reads = daemon_env.sandbox.calls[("GET", "astria:/p/{id}")]

    daemon_env.sandbox.astria.remove_image(pack_id, urls[0])

    wait_until(lambda: images_of(daemon_env, "Headshots") == 1, timeout=30)
    assert daemon_env.sandbox.calls[("GET", "astria:/p/{id}")] == reads + 1


def test_a_refused_astria_key_fails_that_mapping_only(env: Env) -> None:
    pack_id, _ = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    photo = write(env.map("brand", pack="Brand") / "a.png", image())
    env.sandbox.astria.users = {}

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.AUTH, result.stdout + result.stderr
    assert genviral_bytes(env, "Brand") == [photo.read_bytes()], "the folder is synced all the same"
    assert "Astria" in result.stdout + result.stderr


def test_downloads_are_held_beside_the_state_only_until_uploaded(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 3})
    env.map_astria(pack_id, pack="Headshots")
    spool = env.state_path.parent / "spool"

    assert env.cli("run", "--no-wait").returncode == 0
    assert genviral_bytes(env, "Headshots") == astria_bytes(env, urls)
    assert not spool.exists() or not any(spool.rglob("*")), "nothing is left in the spool"


def test_a_spool_that_cannot_be_written_is_a_problem_per_image(env: Env) -> None:
    pack_id, _ = astria_pack(env, {"woman": 2})
    env.map_astria(pack_id, pack="Headshots")
    env.state_path.parent.mkdir(parents=True)
    (env.state_path.parent / "spool").write_text("a file where the spool folder goes")

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.SOME_FAILED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot keep it until it is uploaded" in env.cli("status", "--problems", token=None).stdout


def test_a_class_the_pack_does_not_have_is_reported(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots", classes=["woman", "wmoan"])

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.SOME_FAILED
    assert "has no class 'wmoan'" in env.cli("status", "--problems", token=None).stdout
    assert genviral_bytes(env, "Headshots") == astria_bytes(env, urls)


def test_pulling_a_genviral_pack_needs_no_astria_key(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    genviral = env.sandbox.create_pack("Plain")
    env.sandbox.add_uploaded(genviral, image(seed=1))
    env.map_astria(260, pack="Headshots")
    del env.astria["token_file"]
    env.write_config()
    monkeypatch.delenv("ASTRIA_API_KEY", raising=False)

    result = env.cli("pull", f"genviral:{genviral}", str(env.root / "out"))

    assert result.returncode == ExitCode.OK, result.stderr


def test_the_title_survives_a_run_that_could_not_read_the_pack(env: Env) -> None:
    pack_id, _ = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    assert env.cli("run", "--no-wait").returncode == 0
    env.sandbox.inject("500", "GET", "astria:/p/{id}", count=100)

    assert env.cli("run", "--no-wait").returncode == ExitCode.SOME_FAILED  # an outage: retried, not a stop
    assert f"astria:{pack_id} (Corporate Headshots)" in env.cli("status", token=None).stdout


@pytest.mark.parametrize("pack", ["astria:²", "astria:-1", "astria:", "astria:12a"])
def test_a_bad_astria_pack_number_is_a_usage_error(env: Env, pack: str) -> None:
    result = env.cli("pull", pack, str(env.root / "out"))

    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr and "astria:ID" in result.stderr


def test_sighup_with_an_astria_mapping_and_no_key_keeps_the_daemon_running(
        daemon_env: Env, start: StartDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    pack_id = daemon_env.sandbox.create_pack("Brand")
    folder = daemon_env.map("brand", pack_id=pack_id)
    daemon = start()
    monkeypatch.delenv("ASTRIA_API_KEY", raising=False)
    daemon_env.mappings.append({"astria_pack": 260, "pack": "Headshots"})  # and no key anywhere
    daemon_env.write_config()

    daemon.proc.send_signal(signal.SIGHUP)
    photo = write(folder / "after.png", image())

    wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 1, timeout=15)
    assert daemon.proc.poll() is None
    assert daemon_env.cdn_bytes(pack_id) == [photo.read_bytes()]


def _class_not_a_list(reply: Reply) -> Reply:
    pack = json.loads(reply.body)
    pack["prompts_per_class"]["man"] = "oops"
    return Reply(reply.status, json.dumps(pack).encode())


def test_a_class_that_cannot_be_read_deletes_none_of_its_images(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 2, "man": 3})
    env.map_astria(pack_id, pack="Headshots")
    assert env.cli("run", "--no-wait").returncode == 0
    env.sandbox.rewrite("GET", "astria:/p/{id}", _class_not_a_list, count=1)

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.SOME_FAILED, result.stdout + result.stderr
    assert "0 added, 0 deleted" in result.stdout and "its prompts are not a list" in result.stdout
    assert genviral_bytes(env, "Headshots") == astria_bytes(env, urls)


def listing(*urls: str) -> Callable[[Reply], Reply]:
    """A rewrite of the pack's answer: one prompt of class woman, listing ``urls``."""
    def change(reply: Reply) -> Reply:
        pack = {**json.loads(reply.body), "prompts_per_class": {"woman": [{"id": 7, "images": list(urls)}]}}
        return Reply(200, json.dumps(pack).encode())

    return change


def test_a_key_inside_an_image_url_is_neither_printed_nor_stored(env: Env) -> None:
    pack_id, urls = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    leaky = f"http://127.0.0.1:1/{ASTRIA_TOKEN}"
    env.sandbox.rewrite("GET", "astria:/p/{id}", listing(urls[0], leaky))

    outputs = [env.cli("-v", "run", "--no-wait"), env.cli("status", "--files", "--problems", token=None),
               env.cli("-v", "pull", f"astria:{pack_id}", str(env.root / "out"))]

    assert "its URL holds an API key" in outputs[1].stdout
    for result in outputs:
        assert ASTRIA_TOKEN not in result.stdout + result.stderr
    for path in env.state_path.parent.rglob("*"):
        assert not path.is_file() or ASTRIA_TOKEN.encode() not in path.read_bytes(), path


class Trickle:
    """A server on loopback that answers every request with a 100,000-byte image, one byte at a time,
    twice a second (so no read of a second or more ever times out)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests = 0


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server = Trickle(f"http://127.0.0.1:{listener.getsockname()[1]}/slow")

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            server.requests += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89")
            while not stop.wait(0.5):
                try:
                    conn.sendall(b"P")
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    yield server
    stop.set()
    serving.join(5)
    listener.close()


def test_an_image_that_trickles_in_is_given_up_and_the_run_ends(env: Env, trickle: Trickle) -> None:
    pack_id, urls = astria_pack(env, {"woman": 1})
    env.genviral["timeout_s"] = 3  # the grace before a slow answer is judged (30 s by default)
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.rewrite("GET", "astria:/p/{id}", listing(urls[0], trickle.url))
    started = time.monotonic()

    result = env.cli("run", "--no-wait", timeout=90)

    assert time.monotonic() - started < 30, "given up after the 3 s grace"
    assert trickle.requests == 1, "given up, not retried"
    assert result.returncode == ExitCode.SOME_FAILED, result.stdout + result.stderr
    assert "too slow to finish" in result.stdout
    assert genviral_bytes(env, "Headshots") == astria_bytes(env, urls[:1])


def test_full_rescans_leave_astria_packs_to_their_poll_interval(daemon_env: Env, start: StartDaemon) -> None:
    pack_id, _ = astria_pack(daemon_env, {"woman": 1})
    daemon_env.daemon["rescan_interval_s"] = 10  # the shortest allowed; polls stay hourly
    daemon_env.map_astria(pack_id, pack="Headshots")
    daemon_env.map("brand", pack="Brand")
    start()
    wait_until(lambda: images_of(daemon_env, "Headshots") == 1, timeout=15)

    def full_scan() -> str | None:  # an ISO time
        daemon = json.loads(daemon_env.cli("status", "--json", token=None).stdout)["daemon"]
        last: str | None = daemon["last_full_scan"] if daemon else None
        return last

    first = wait_until(full_scan, timeout=15)
    reads = daemon_env.sandbox.calls[("GET", "astria:/p/{id}")]
    wait_until(lambda: (full_scan() or "") > first, timeout=30, interval=0.5)  # a periodic full rescan ran

    assert daemon_env.sandbox.calls[("GET", "astria:/p/{id}")] == reads


def test_the_astria_workspace_reaches_every_api_call_and_no_download(env: Env) -> None:
    """``[astria] workspace`` is sent as X-Workspace-Id with each Astria API call (a pack made in a workspace
    is seen only with it), and never with an image's download, which goes to public storage."""
    pack_id = env.sandbox.astria.add_pack("Team headshots", workspace="ws_42")
    urls = [env.sandbox.astria.add_image(pack_id, "woman", image(seed=n)) for n in range(2)]
    env.map_astria(pack_id, pack="Team")

    without = env.cli("run", "--no-wait")
    assert f"Astria has no pack {pack_id} the key can see" in without.stdout + without.stderr
    assert env.sandbox.calls[("GET", "astria-img")] == 0 and env.sandbox.calls[("POST", "/files")] == 0
    env.sandbox.astria.workspaces_seen.clear()
    env.astria["workspace"] = "ws_42"
    env.write_config()

    with_it = env.cli("run", "--no-wait")
    listed = env.cli("astria", "packs", "--json", token=None)

    assert with_it.returncode == ExitCode.OK, with_it.stderr
    assert genviral_bytes(env, "Team") == astria_bytes(env, urls)
    assert listed.returncode == ExitCode.OK and [p["id"] for p in json.loads(listed.stdout)["packs"]] == [pack_id]
    seen = env.sandbox.astria.workspaces_seen
    api = [(route, workspace) for route, workspace in seen if route != "astria-img"]
    downloads = [workspace for route, workspace in seen if route == "astria-img"]
    assert api and all(workspace == "ws_42" for _route, workspace in api), api
    assert {route for route, _ in api} >= {"astria:/p/{id}", "astria:/packs"}
    assert downloads[:2] == [None, None] and set(downloads) == {None}, "a download carries no workspace"
