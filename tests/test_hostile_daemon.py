"""The daemon under hostile conditions that come after it started: inotify running out of watches, and
clients that open connections to its page and then stall."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import zlib

import httpx2
import msgspec
import pytest
from conftest import FAST, TOKEN, Env, image, write
from helpers import DaemonHere, DaemonProcess, StartHere, wait_until

from packsync.web.limits import MAX_CONNECTIONS

WATCH_LIMIT = "/proc/sys/user/max_inotify_watches"
#: The page's deadline for a request's headers (and for an answer not read) in these tests.
PAGE_REQUEST_S = 0.5


def _own_watch_limit_possible() -> bool:
    """Whether a child may run in a user namespace of its own with a lower inotify watch limit."""
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", f"echo 7 > {WATCH_LIMIT}"],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def start_with_watch_limit(env: Env, watches: int) -> DaemonProcess:
    """The real daemon, in a user namespace of its own whose inotify watch limit is ``watches``.

    The limit is the kernel's own, for this child alone: ``/proc/sys/user/max_inotify_watches`` belongs
    to the user namespace, so neither the machine's ``fs.inotify.max_user_watches`` nor tests running
    beside this one are touched (the root user of the namespace is the test's own user).
    """
    env.write_config()
    environ = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}
    environ.update(GENVIRAL_TOKEN=TOKEN, WATCHDOG_USEC="2000000")
    argv = ["unshare", "--user", "--map-root-user", "sh", "-c", f'echo {watches} > {WATCH_LIMIT} && exec "$@"', "sh",
            sys.executable, "-m", "packsync", "-c", str(env.config_path), "daemon"]
    daemon = DaemonProcess(argv, environ, env.root)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.close()
        raise
    return daemon


@pytest.mark.skipif(not _own_watch_limit_possible(), reason="no user namespaces here: no inotify limit of a test's own")
def test_inotify_watches_running_out_after_start_are_said_once_and_the_folder_is_polled(daemon_env: Env) -> None:
    """Watched by inotify at start, a folder whose new subfolders can no longer be watched (the user's
    watches all taken) is polled from then on: every file put in them is synced, and packsync names the
    limit and its sysctl once, instead of watchdog warning for every folder it could not watch."""
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    for i in range(8):
        write(folder / f"old{i}" / "seed.png", image())
    daemon = start_with_watch_limit(daemon_env, watches=12)  # the folder and its 8 subfolders fit; 3 more
    try:
        wait_until(lambda: '"daemon ready"' in daemon.output(), timeout=5, what="the daemon's watchers logged")
        assert '"inotify"' in daemon.output(), "watched by inotify at the start"
        for i in range(12):
            (folder / f"new{i}").mkdir()
        write(folder / "new0" / "marker.png", image())  # synced once the round that saw the new folders ends
        wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 9, timeout=10, what="the new folders seen")
        for i in range(12):  # files put in them later: no walk of a new folder finds them
            write(folder / f"new{i}" / "photo.png", image())

        wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 21, timeout=15,
                   what="every file of the new subfolders synced")
    finally:
        daemon.close()
    log = daemon.log_path.read_text(errors="replace")
    assert log.count("inotify limit reached") == 1, log[-3000:]
    assert "fs.inotify.max_user_watches" in log
    assert "Unable to watch" not in log, "watchdog's own warning, once per folder, reached the log"


# -- the page's server against clients that stall -----------------------------------------------------

def page_address(daemon: DaemonHere) -> tuple[str, int]:
    found = wait_until(lambda: re.search(r"url=http://(127\.0\.0\.1):(\d+)/", daemon.output()), timeout=10,
                       what="the page's address in the daemon's log")
    return found.group(1), int(found.group(2))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send(address: tuple[str, int], head: str) -> socket.socket:
    """A connection that sent ``head`` (the start of a request) and then nothing more."""
    client = socket.create_connection(address, timeout=5)
    client.sendall(head.encode())
    client.setblocking(False)
    return client


def answer_and_closed(client: socket.socket, received: bytearray) -> bool:
    """Whether the server closed ``client`` (what it answered before is added to ``received``)."""
    while True:
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionError:
            return True
        if not chunk:
            return True
        received += chunk


def stalled_post(address: tuple[str, int], target: str = "/actions/sync", origin: str | None = None) -> socket.socket:
    host = f"{address[0]}:{address[1]}"
    return send(address, f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
                         f"{f'Origin: {origin}' + chr(13) + chr(10) if origin else ''}"
                         "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 65000\r\n\r\n")


def serve_page(env: Env, start_here: StartHere, request_s: float) -> tuple[DaemonHere, tuple[str, int]]:
    """The daemon in this process (its descriptors are this process's), its page's deadline ``request_s``."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("pics", pack_id=pack_id) / "a.png", image())
    daemon = start_here(msgspec.structs.replace(FAST, page_request_s=request_s))
    return daemon, page_address(daemon)


@pytest.fixture
def page_daemon(daemon_env: Env, start_here: StartHere) -> tuple[DaemonHere, tuple[str, int]]:
    return serve_page(daemon_env, start_here, PAGE_REQUEST_S)


def test_connections_stalling_their_body_or_headers_are_closed_and_health_answers_meanwhile(
        page_daemon: tuple[DaemonHere, tuple[str, int]]) -> None:
    """50 POSTs that announce 65,000 bytes and send none, and 10 requests whose headers never end: each is
    closed within the page's request deadline, so the daemon's descriptors do not pile up, and
    ``/healthz`` answers while they are open."""
    _daemon, address = page_daemon
    before = open_fds()
    clients = [stalled_post(address) for _ in range(50)]
    clients += [send(address, f"GET / HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\nX-Slow: ") for _ in range(10)]
    try:
        health = httpx2.get(f"http://{address[0]}:{address[1]}/healthz", timeout=5)
        assert health.status_code == 200

        received = [bytearray() for _ in clients]
        wait_until(lambda: all(answer_and_closed(c, r) for c, r in zip(clients, received, strict=True)),
                   timeout=5, what="every stalled connection closed by the server")
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: open_fds() <= before + 3, timeout=5, what="the server's descriptors released")


def test_a_post_with_a_foreign_origin_or_a_wrong_token_is_refused_before_its_body(
        page_daemon: tuple[DaemonHere, tuple[str, int]]) -> None:
    """The checks a request's first line and headers allow come before any wait for its body: a POST
    from another origin, or without this page's token, is answered 403 at once, its 65,000 bytes unread."""
    _daemon, address = page_daemon
    refused = [stalled_post(address, origin="http://evil.example"), stalled_post(address, "/actions/sync?csrf=forged"),
               stalled_post(address, "/actions/retry")]
    try:
        received = [bytearray() for _ in refused]

        def answered() -> bool:
            for client, got in zip(refused, received, strict=True):
                answer_and_closed(client, got)
            return all(got.startswith(b"HTTP/1.1 403") for got in received)

        wait_until(answered, timeout=3, what="403 before the body")
    finally:
        for client in refused:
            client.close()


def test_past_the_connection_cap_new_connections_are_closed_at_once(daemon_env: Env, start_here: StartHere) -> None:
    """More connections than ``MAX_CONNECTIONS`` at once (each stalling, the deadline far off): the ones past
    the cap are closed as they open, and once the others go the page answers again."""
    _daemon, address = serve_page(daemon_env, start_here, request_s=60)
    base = f"http://{address[0]}:{address[1]}/"
    clients = [send(address, "GET / HTTP/1.1\r\nX-Slow: ") for _ in range(MAX_CONNECTIONS + 20)]
    try:
        received = [bytearray() for _ in clients]
        wait_until(lambda: sum([answer_and_closed(c, r) for c, r in zip(clients, received, strict=True)]) >= 20,
                   timeout=5, what="the connections past the cap closed")
        assert sum(answer_and_closed(c, r) for c, r in zip(clients, received, strict=True)) <= 25
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: httpx2.get(base + "healthz", timeout=5).status_code == 200, timeout=5,
               what="the page answering again")


def test_a_client_that_stops_reading_a_thumbnail_is_let_go(daemon_env: Env, start_here: StartHere) -> None:
    """A thumbnail asked for and never read (the answer fills the socket's buffers and waits): the
    connection is closed once nothing of it has been read for the page's deadline."""
    pack_id = daemon_env.sandbox.create_pack("p")
    png, filler = image(64, 64), os.urandom(16 * 1024 * 1024)  # more than the sockets' buffers hold
    chunk = struct.pack(">I", len(filler)) + b"prVt" + filler + struct.pack(">I", zlib.crc32(b"prVt" + filler))
    big = png[:-12] + chunk + png[-12:]  # a private chunk before IEND: a valid PNG of 16 MB
    write(daemon_env.map("pics", pack_id=pack_id) / "big.png", big)
    daemon = start_here(msgspec.structs.replace(FAST, page_request_s=PAGE_REQUEST_S))
    address = page_address(daemon)
    base = f"http://{address[0]}:{address[1]}/"
    (thumb,) = re.findall(r'src="(/thumb/[0-9a-f]{16}/[0-9a-f]{64})"', httpx2.get(base, timeout=5).text)
    before = open_fds()
    client = send(address, f"GET {thumb} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n\r\n")
    try:
        # The server's end of the connection is this process's too: it goes once the server lets go.
        wait_until(lambda: open_fds() >= before + 2, timeout=5, what="the connection taken by the server")
        wait_until(lambda: open_fds() <= before + 1, timeout=5, what="the stalled answer abandoned")
        received = bytearray()
        wait_until(lambda: answer_and_closed(client, received), timeout=5, what="the connection closed")
        assert len(received) < len(big), "the whole file was sent: the client did read it"
    finally:
        client.close()
