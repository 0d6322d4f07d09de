"""The web surface over real HTTP: a running `packsync daemon` (or `packsync ui`) against the sandbox.

Health states and codes, metrics read back with prometheus_client's own parser, the page's actions
with and without their CSRF token, the Host check, basic auth off loopback, thumbnails that cannot be
turned into a path, and untrusted text escaped.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx2
import pytest
from conftest import TOKEN, Env, image, write
from helpers import DaemonProcess, StartDaemon, state_rows, wait_until
from prometheus_client.parser import text_string_to_metric_families

from packsync.sandbox import Account
from packsync.sandbox.server import Reply


def page_url(daemon: DaemonProcess) -> str:
    """The address the daemon says it serves (the tests' configs ask for any free port)."""
    found = wait_until(lambda: re.search(r'"url": "(http://127\.0\.0\.1:\d+/)"', daemon.output()), timeout=10,
                       what="the daemon's page address in its log")
    return str(found.group(1))


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client: (name, sorted labels) -> value."""
    answer = httpx2.get(base + "metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def sample(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def describe_every_image(env: Env, description: str, keywords: list[str]) -> None:
    """The sandbox answers every pack read with this (untrusted) AI description and these keywords."""
    def poison(reply: Reply) -> Reply:
        document = json.loads(reply.body)
        for item in document["data"]["images"]:
            item["metadata"].update(status="completed", description=description, keywords=keywords)
        return Reply(reply.status, json.dumps(document).encode(), reply.content_type, reply.headers)

    env.sandbox.rewrite("GET", "/packs/{id}", poison)


def csrf_of(html: str) -> str:
    match = re.search(r'action="/actions/[a-z]+\?(?:[^"]*&amp;)?csrf=([^"&]+)"', html)
    assert match, "the page carries a CSRF token in its forms' addresses"
    return match.group(1)


@pytest.fixture
def served(daemon_env: Env, start: StartDaemon) -> tuple[Env, DaemonProcess, str, str]:
    """A daemon syncing one folder with three images, its page address and its pack id."""
    pack_id = daemon_env.sandbox.create_pack("Brand")
    folder = daemon_env.map("pics", pack_id=pack_id)
    for n in range(3):
        write(folder / f"photo{n}.png", image(16, 16))
    daemon = start()
    return daemon_env, daemon, page_url(daemon), pack_id


def test_healthz_is_ok_with_each_mapping_and_cheap(served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, _pack_id = served
    before = env.sandbox.calls.total()

    answer = httpx2.get(base + "healthz")

    assert answer.status_code == 200
    document = answer.json()
    assert document["status"] == "ok"
    assert document["daemon"]["state"] == "running"
    (mapping,) = document["mappings"]
    assert mapping["source"] == str(env.root / "pics") and mapping["status"] == "ok"
    assert mapping["last_success"] is not None
    assert env.sandbox.calls.total() == before, "health makes no API call"


def test_a_refused_key_makes_health_failing_503(served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, pack_id = served
    env.sandbox.accounts[TOKEN] = Account(scope="ws-1", status=401)
    write(env.root / "pics" / "while-revoked.png", image())

    def failing() -> dict[str, Any] | None:
        answer = httpx2.get(base + "healthz")
        return answer.json() if answer.status_code == 503 else None

    document = wait_until(failing, timeout=15, interval=0.2, what="healthz 503")
    assert document["status"] == "failing"
    assert any("invalid or revoked" in reason for reason in document["reasons"])


def test_a_safety_stop_is_failing_and_the_page_lists_what_force_would_delete(
        served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, pack_id = served
    for path in (env.root / "pics").iterdir():
        path.unlink()  # the folder looks emptied: deletes are withheld

    document = wait_until(lambda: httpx2.get(base + "healthz").json() if httpx2.get(base + "healthz").status_code
                          == 503 else None, timeout=15, interval=0.2, what="healthz 503")
    assert document["mappings"][0]["safety_stop"]
    assert len(env.pack(pack_id)["images"]) == 3, "nothing deleted"
    html = httpx2.get(base).text
    assert "Safety stop" in html and "3 images it would delete" in html
    assert all(f"photo{n}.png" in html for n in range(3))


def test_metrics_parse_and_move_when_a_file_is_dropped(served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, pack_id = served
    first = samples(base)
    assert sample(first, "packsync_files", pack=f"pack {pack_id}", state="synced") == 3
    adds = sample(first, "packsync_api_requests_total", route="POST /packs/{id}/images", code="201")
    assert adds == 3
    uploaded = sample(first, "packsync_uploaded_bytes_total")
    assert uploaded > 0
    assert sample(first, "packsync_sync_seconds_count", pack=f"pack {pack_id}") >= 1
    assert sample(first, "packsync_last_success_timestamp_seconds", pack=f"pack {pack_id}") > 0

    write(env.root / "pics" / "dropped.png", image(16, 16))
    wait_until(lambda: len(env.pack(pack_id)["images"]) == 4, timeout=10)

    after = wait_until(lambda: (s := samples(base)) and sample(s, "packsync_files", pack=f"pack {pack_id}",
                                                                 state="synced") == 4 and s, timeout=10)
    assert sample(after, "packsync_api_requests_total", route="POST /packs/{id}/images", code="201") == adds + 1
    assert sample(after, "packsync_uploaded_bytes_total") > uploaded
    assert sample(after, "packsync_queued_paths") == 0
    labels = {value for (_name, pairs) in after for _key, value in pairs}
    assert not any("/" in value and value.startswith(str(env.root)) for value in labels), "no path as a label"
    assert TOKEN not in httpx2.get(base + "metrics").text


def test_actions_need_the_csrf_token_and_this_origin(served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, pack_id = served

    def reads() -> int:
        return env.sandbox.calls[("GET", "/packs/{id}")]

    # (the metadata loop reads the pack too, until every image's metadata has settled)
    wait_until(lambda: json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]["metadata"]
               == {"completed": 3, "pending": 0, "failed": 0}, timeout=30, what="metadata settled")
    html = httpx2.get(base).text
    token = csrf_of(html)
    key = re.search(r'action="/actions/sync\?mapping=([0-9a-f]{16})&amp;', html)
    assert key, "each mapping's button names it"
    before = reads()

    assert httpx2.post(base + "actions/sync", params={"mapping": key.group(1)}).status_code == 403
    assert httpx2.post(base + "actions/sync", params={"mapping": key.group(1), "csrf": "forged"}).status_code == 403
    assert httpx2.post(base + "actions/sync", params={"mapping": key.group(1)},
                       data={"csrf": token}).status_code == 403, "a token in the body is never read"
    assert httpx2.post(base + "actions/sync", params={"mapping": key.group(1), "csrf": token},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert reads() == before, "a refused action syncs nothing"

    answer = httpx2.post(base + "actions/sync", params={"mapping": key.group(1), "csrf": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    wait_until(lambda: reads() > before, timeout=10, what="the sync the button asked for")

    assert httpx2.post(base + "actions/retry", params={"csrf": token}).status_code == 303


def test_an_action_sends_the_browser_back_to_its_view_and_nowhere_else(
        served: tuple[Env, DaemonProcess, str, str]) -> None:
    _env, _daemon, base, _pack_id = served
    html = httpx2.get(base, params={"show": "synced"}).text
    token = csrf_of(html)
    assert "back=/%3Fshow%3Dsynced" in html, "the page's forms name the view they are on"

    def back(to: str) -> str:
        answer = httpx2.post(base + "actions/retry", params={"csrf": token, "back": to})
        assert answer.status_code == 303
        return str(answer.headers["location"])

    assert back("/?show=synced&page=2") == "/?show=synced&page=2"
    assert back("//evil.example/?q=x") == "/?q=x"
    assert back("https://evil.example/") == "/"
    assert back("/?show=%0d%0aSet-Cookie:x") == "/"


def test_pause_resume_and_allow_deletes_need_the_token_origin_and_a_mapping(
        served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, _pack_id = served
    html = httpx2.get(base).text
    token = csrf_of(html)
    key = re.search(r'action="/actions/pause\?mapping=([0-9a-f]{16})&amp;', html)
    assert key, "each mapping has a pause button"

    def paused() -> list[Any]:
        return [row[0] for row in state_rows(env.state_path, "SELECT paused FROM mappings")]

    for name in ("pause", "resume", "allow-deletes"):
        assert httpx2.post(base + f"actions/{name}", params={"mapping": key.group(1)}).status_code == 403
        assert httpx2.post(base + f"actions/{name}", params={"mapping": key.group(1), "csrf": token},
                           headers={"Origin": "null"}).status_code == 403
    assert paused() == [None], "a refused pause pauses nothing"
    assert httpx2.post(base + "actions/allow-deletes", params={"csrf": token}).status_code == 400
    assert httpx2.post(base + "actions/pause", params={"csrf": token, "mapping": "0" * 16}).status_code == 400

    assert httpx2.post(base + "actions/pause", params={"mapping": key.group(1), "csrf": token}).status_code == 303
    assert paused() != [None]
    assert 'action="/actions/resume?mapping=' in httpx2.get(base).text
    assert httpx2.post(base + "actions/resume", params={"mapping": key.group(1), "csrf": token}).status_code == 303
    assert paused() == [None]


def test_no_page_header_or_metric_holds_the_token(served: tuple[Env, DaemonProcess, str, str]) -> None:
    _env, daemon, base, _pack_id = served
    for path in ("", "view", "view?q=photo", "healthz", "metrics", "static/app.js"):
        answer = httpx2.get(base + path)
        assert answer.status_code == 200, path
        assert TOKEN not in answer.text and TOKEN not in str(answer.headers), path
    assert TOKEN not in daemon.output()


def test_a_foreign_host_is_refused(served: tuple[Env, DaemonProcess, str, str]) -> None:
    _env, _daemon, base, _pack_id = served
    for path in ("", "healthz", "metrics"):
        answer = httpx2.get(base + path, headers={"Host": "attacker.example:8780"})
        assert answer.status_code == 421
    port = base.rsplit(":", 1)[1].strip("/")
    assert httpx2.get(base, headers={"Host": f"localhost:{port}"}).status_code == 200


def test_thumbnails_only_for_files_the_state_knows(served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, _pack_id = served
    html = httpx2.get(base).text
    thumbs = re.findall(r'src="(/thumb/[0-9a-f]{16}/[0-9a-f]{64})"', html)
    assert len(thumbs) == 3
    served_bytes = {httpx2.get(base + t.lstrip("/")).content for t in thumbs}
    assert served_bytes == {p.read_bytes() for p in (env.root / "pics").iterdir()}

    known = thumbs[0].split("/")[2]
    for path in (f"thumb/{known}/" + "0" * 64, "thumb/" + "0" * 16 + "/" + thumbs[0][-64:],
                 f"thumb/{known}/..%2F..%2Fconfig.toml", f"thumb/{known}/../../config.toml",
                 "thumb/-1/" + thumbs[0][-64:], "static/..%2F..%2Fconfig.py"):
        assert httpx2.get(base + path).status_code == 404, path


def test_untrusted_descriptions_are_text_and_the_page_forbids_inline_script(
        daemon_env: Env, start: StartDaemon) -> None:
    hostile = '<script>document.title="owned"</script><img src=x onerror="alert(1)">'
    describe_every_image(daemon_env, hostile, ["<b>bold</b>"])
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "a.png", image())
    base = page_url(start())

    answer = wait_until(lambda: (a := httpx2.get(base)) and "&lt;script&gt;" in a.text and a, timeout=15)
    assert "<script>document" not in answer.text and "<img src=x" not in answer.text
    assert "&lt;b&gt;bold&lt;/b&gt;" in answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert "'unsafe-inline'" not in answer.headers["content-security-policy"]


def test_a_taken_port_is_logged_and_the_daemon_syncs_on(daemon_env: Env, start: StartDaemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon_env.http["listen"] = f"127.0.0.1:{taken.getsockname()[1]}"
        pack_id = daemon_env.sandbox.create_pack("p")
        folder = daemon_env.map("pics", pack_id=pack_id)
        daemon = start()
        write(folder / "new.png", image())
        wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 1, timeout=10)
    assert daemon.output().count("cannot serve the web page") == 1
    assert daemon.proc.poll() is None


def test_off_loopback_the_page_needs_the_password(daemon_env: Env, start: StartDaemon,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    daemon_env.http.update(listen="0.0.0.0:0", password_env="PACKSYNC_TEST_PASSWORD")
    monkeypatch.setenv("PACKSYNC_TEST_PASSWORD", "correct horse")
    daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("p"))
    daemon = start()
    port = re.search(r'"url": "http://0\.0\.0\.0:(\d+)/"', daemon.output())
    assert port, daemon.output()
    base = f"http://127.0.0.1:{port.group(1)}/"

    assert httpx2.get(base).status_code == 401
    assert httpx2.get(base, auth=("anyone", "wrong")).status_code == 401
    assert httpx2.get(base + "metrics").status_code == 401
    assert httpx2.get(base, auth=("anyone", "correct horse")).status_code == 200
    assert httpx2.get(base + "healthz").status_code == 200, "health stays open to monitors"
    assert "correct horse" not in daemon.output()


def test_off_loopback_without_a_password_is_refused_at_load(env: Env) -> None:
    env.http["listen"] = "0.0.0.0:8780"
    env.map("pics", pack_id="p1")
    done = env.cli("daemon")
    assert done.returncode == 2
    assert "http.password_env: required to listen on 0.0.0.0" in done.stderr


def test_ui_serves_the_state_alone_read_only(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("pics", pack_id=pack_id)
    write(folder / "a.png", image())
    env.sync()
    before = env.sandbox.calls.total()
    proc = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "ui", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, line
        base = match.group(1)
        html = httpx2.get(base).text
        assert "a.png" in html and "read-only" in html
        assert 'action="/actions' not in html, "no sync buttons without a daemon"
        assert httpx2.get(base + "healthz").json()["status"] == "ok"
        assert httpx2.post(base + "actions/sync", data={"csrf": "x"}).status_code == 403
        assert env.sandbox.calls.total() == before, "no API call, no token needed"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_ui_names_a_bad_listen_address(env: Env) -> None:
    env.map("pics", pack_id="p1")
    done = env.cli("ui", "--listen", "nowhere")
    assert done.returncode == 2
    assert "--listen: expected HOST:PORT" in done.stderr


# -- what a hostile review found (each failed before its fix) ---------------------------------------

def test_a_thumbnail_is_served_as_the_image_its_bytes_are_never_as_its_name_says(daemon_env: Env,
                                                                                 start: StartDaemon) -> None:
    folder = daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("p"), include=["*"])
    gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00<script>alert(1)</script>;"  # an image, and HTML by its name
    write(folder / "page.html", gif)
    (folder / "page.html.gz").write_bytes(b"not an image, never checked by packsync")
    base = page_url(start())
    (src,) = re.findall(r'src="(/thumb/[0-9a-f]{16}/[0-9a-f]{64})"', httpx2.get(base).text)

    answer = httpx2.get(base + src.lstrip("/"), headers={"Accept-Encoding": "gzip"})

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/gif"
    assert "content-encoding" not in answer.headers and answer.content == gif, "never the .gz beside it"
    assert "sandbox" in answer.headers["content-security-policy"]


def test_a_file_swapped_for_a_link_is_not_followed(served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, _daemon, base, _pack_id = served
    (src, *_rest) = re.findall(r'src="(/thumb/[0-9a-f]{16}/[0-9a-f]{64})"', httpx2.get(base).text)
    secret = env.root / "secret.txt"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n the key")
    for path in (env.root / "pics").iterdir():
        path.unlink()
        path.symlink_to(secret)

    assert httpx2.get(base + src.lstrip("/")).status_code == 404


def test_odd_numbers_in_paths_and_forms_are_404_not_500(served: tuple[Env, DaemonProcess, str, str]) -> None:
    _env, _daemon, base, _pack_id = served
    sha = "0" * 64
    for index in ("%C2%B2", "9" * 5000, "%D9%A1"):
        assert httpx2.get(f"{base}thumb/{index}/{sha}").status_code == 404, index
    token = csrf_of(httpx2.get(base).text)
    for index in ("²", "9" * 5000):
        assert httpx2.post(base + "actions/sync", params={"csrf": token, "mapping": index}).status_code == 400


def test_a_nul_in_a_search_is_no_match_not_a_corrupt_state(served: tuple[Env, DaemonProcess, str, str]) -> None:
    env, daemon, base, _pack_id = served
    assert httpx2.get(base, params={"q": "\x00"}).status_code == 200
    assert httpx2.get(base + "view", params={"q": "a\x00b"}).status_code == 200
    assert "corrupt" not in daemon.output()
    from packsync.state.store import State

    state = State(env.state_path, readonly=True)
    try:
        assert state.metadata.search(["\x00"]) == [] and len(state.metadata.search(["photo\x00"])) == 3
    finally:
        state.close()


def test_an_unchanged_view_is_304_under_the_daemon(served: tuple[Env, DaemonProcess, str, str]) -> None:
    _env, _daemon, base, _pack_id = served
    first = httpx2.get(base + "view")
    assert first.status_code == 200
    again = httpx2.get(base + "view", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


def test_each_view_has_its_own_etag_and_keeps_its_304(served: tuple[Env, DaemonProcess, str, str]) -> None:
    _env, _daemon, base, _pack_id = served
    everything = httpx2.get(base + "view")
    synced = httpx2.get(base + "view", params={"show": "synced"})
    assert synced.status_code == 200 and synced.headers["etag"] != everything.headers["etag"]
    assert 'class="filter on" aria-current="page" data-show="synced"' in synced.text
    again = httpx2.get(base + "view", params={"show": "synced"}, headers={"If-None-Match": synced.headers["etag"]})
    assert again.status_code == 304
    def odd_is_default() -> bool:  # (the state moves while metadata arrives: compared as one moment's)
        odd = httpx2.get(base + "view", params={"show": "<b>", "page": "²", "mapping": "../x"})
        return odd.status_code == 200 and odd.headers["etag"] == httpx2.get(base + "view").headers["etag"]

    wait_until(odd_is_default, timeout=10, what="odd values read as the default view")


def test_without_the_password_health_tells_the_verdict_only(daemon_env: Env, start: StartDaemon,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    daemon_env.http.update(listen="0.0.0.0:0", password_env="PACKSYNC_TEST_PASSWORD")
    monkeypatch.setenv("PACKSYNC_TEST_PASSWORD", "s3cret")
    daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("p"))
    daemon = start()
    port = re.search(r'"url": "http://0\.0\.0\.0:(\d+)/"', daemon.output())
    assert port
    base = f"http://127.0.0.1:{port.group(1)}/"

    assert httpx2.get(base + "healthz").json() == {"status": "ok"}
    assert "mappings" in httpx2.get(base + "healthz", auth=("x", "s3cret")).json()


def test_ui_says_when_the_daemon_died(env: Env) -> None:
    import os as _os

    from packsync.state.store import State

    env.map("pics", pack_id=env.sandbox.create_pack("p"))
    env.sync()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    state = State(env.state_path)
    state.mappings.save_daemon(pid=int(dead), state="running", queue=0)
    state.close()
    proc = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "ui", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": _os.environ.get("PATH", "/usr/bin:/bin")})
    try:
        assert proc.stdout is not None
        base = re.search(r"(http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
        assert base
        document = httpx2.get(base.group(1) + "healthz").json()
        assert document["status"] == "degraded"
        assert any("the daemon is not running" in reason for reason in document["reasons"])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def test_packs_that_read_alike_are_distinct_series(env: Env) -> None:
    env.map("a", pack="pack abc")
    env.map("b", pack_id="abc")
    from packsync.state.store import State
    from packsync.web.metrics import Metrics

    state = State(env.state_path)
    try:
        text = Metrics(env.config(), state).exposition().decode()
    finally:
        state.close()
    series = [(s.name, tuple(sorted(s.labels.items()))) for family in text_string_to_metric_families(text)
              for s in family.samples]
    assert len(series) == len(set(series))


def test_ui_listen_errors_name_what_is_missing(env: Env) -> None:
    env.map("pics", pack_id="p1")
    done = env.cli("ui", "--listen", "0.0.0.0:1")
    assert done.returncode == 2
    assert "--listen: password_env: required to listen on 0.0.0.0" in done.stderr


def test_a_scrape_counts_the_files_again_only_once_the_state_changed(env: Env) -> None:
    """A scrape comes every 15 s or so, changed or not: the state's gauges, whose counting costs as much as the
    tree, are read again once a commit changed the state, and a scrape of an unchanged state makes no query."""
    from sqlalchemy import event

    from packsync.state.store import State
    from packsync.web.metrics import Metrics

    pack_id = env.sandbox.create_pack("p")
    folder = env.map("pics", pack_id=pack_id)
    write(folder / "a.png", image(seed=1))
    env.sync()
    state = State(env.state_path, readonly=True)
    try:
        metrics = Metrics(env.config(), state)
        queries: list[str] = []
        event.listen(state.unit.connection, "before_cursor_execute",
                     lambda _conn, _cursor, statement, *_: queries.append(statement))

        def synced() -> float:
            text = metrics.exposition().decode()
            found = {(s.name, tuple(sorted(s.labels.items()))): s.value
                     for family in text_string_to_metric_families(text) for s in family.samples}
            return found[("packsync_files", (("pack", f"pack {pack_id}"), ("state", "synced")))]

        assert synced() == 1
        queries.clear()
        assert synced() == 1
        assert [q for q in queries if "data_version" not in q] == [], "a scrape of an unchanged state counted again"

        write(folder / "b.png", image(seed=2))
        env.sync()
        assert synced() == 2
    finally:
        state.close()
