"""Hostile servers: an answer that trickles in, a redirect to the machine's own services, a rate limit.

Every request packsync makes — each API call and download, Genviral's and Astria's — ends within a
total deadline made of the read timeout (``[genviral] timeout_s``, short here), whatever the server
does with its head or its body; a download follows redirects only to where its first URL could reach
already; Astria's 429 is waited out like Genviral's. All against the sandbox, over HTTP on loopback.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx2
import msgspec
import pytest
from conftest import FAST, Env, image, write
from helpers import StartHere, wait_until
from test_astria import astria_bytes, astria_pack, genviral_bytes, listing
from test_network import Listener, _Noted, listening

from packsync.errors import ApiError, ExitCode
from packsync.sandbox.server import Reply

#: The read timeout of these tests (30 s in the product): a trickle is judged within a few of them.
TIMEOUT_S = 0.5


def slow_env(env: Env) -> Env:
    env.genviral["timeout_s"] = TIMEOUT_S
    env.sandbox.faults.trickle_s = TIMEOUT_S / 5  # never long enough for one read to time out
    return env


TRICKLED = [("trickle-body", "GET", "astria:/p/{id}"), ("trickle-head", "GET", "astria:/p/{id}"),
            ("trickle-body", "GET", "astria-img"), ("trickle-head", "GET", "astria-img"),
            ("trickle-body", "GET", "/packs"), ("trickle-head", "GET", "/packs"),
            ("trickle-head", "POST", "/files"), ("trickle-head", "PUT", "storage")]


@pytest.mark.parametrize(("kind", "method", "route"), TRICKLED, ids=[f"{k} {m} {r}" for k, m, r in TRICKLED])
def test_a_trickling_answer_ends_the_run_within_its_deadline(env: Env, kind: str, method: str, route: str) -> None:
    """A server sending its head or its body a byte at a time, never slowly enough for a read to time out,
    costs one attempt of a few read timeouts: each attempt has a total deadline, and a trickle is not
    tried again (a download's or an API call's, Astria's or Genviral's)."""
    slow_env(env)
    pack_id, _urls = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.inject(kind, method, route, count=1000)
    started = time.monotonic()

    try:
        report = env.sync()
    except ApiError as exc:  # the pack list itself: the sync as a whole fails, in its sentence
        said = str(exc)
    else:
        assert report.exit_code == ExitCode.SOME_FAILED
        said = " ".join(filter(None, [m.last_error or "" for m in report.mappings]
                               + [p.reason for m in report.mappings for p in m.problems]))

    took = time.monotonic() - started
    assert took < 7 * TIMEOUT_S + 1, f"the sync took {took:.1f} s"
    assert env.sandbox.calls[(method, route)] == 1, "given up, not tried again"
    assert "too slow" in said, said


def test_a_host_whose_downloads_trickle_is_given_up_for_the_run_after_a_few(env: Env) -> None:
    """Twenty images at a host that trickles every download: a run does not spend a stalled attempt on
    each (twenty times four read timeouts, four at a time); once a few have stalled, the rest of that
    host's downloads are not sent this run, each named, tried again next run."""
    slow_env(env)
    pack_id, urls = astria_pack(env, {"woman": 20})
    label = env.map_astria(pack_id, pack="Headshots")
    env.sandbox.inject("trickle-head", "GET", "astria-img", count=1000)
    started = time.monotonic()

    report = env.sync()

    took = time.monotonic() - started
    (mapping,) = [m for m in report.mappings if m.label == label]
    assert len(mapping.problems) == len(urls)
    assert all("tried again next run" in p.reason for p in mapping.problems)
    # Four at a time (the concurrency), and two more sent while the first three stalls came in.
    assert env.sandbox.calls[("GET", "astria-img")] <= 4 + 2, "only those sent before the host was given up"
    assert took < 2 * 4 * TIMEOUT_S + 1, f"the sync took {took:.1f} s"


def test_an_astria_429_is_waited_out_as_its_retry_after_says(env: Env) -> None:
    """Astria answering 429 (with Retry-After: 1) is a pause, then the same request again."""
    pack_id, urls = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.inject("429", "GET", "astria:/p/{id}", count=2)
    env.sandbox.inject("429", "GET", "astria-img", count=1)
    started = time.monotonic()

    report = env.sync()

    assert report.exit_code == ExitCode.OK, [m.last_error for m in report.mappings]
    assert time.monotonic() - started >= 3 * 0.9, "each Retry-After of 1 s waited out"
    assert env.sandbox.calls[("GET", "astria:/p/{id}")] == 3
    assert len(env.pack_named("Headshots")["images"]) == len(urls)


def test_an_astria_pack_rate_limited_throughout_is_an_error_retried_not_a_safety_stop(env: Env) -> None:
    """A pack Astria will not answer now (429 at every attempt) is that mapping's error, tried again later
    (the daemon's backoff, the next run): a safety stop is for a source that is gone, and is not retried.
    Nothing is deleted meanwhile, and the folder beside it syncs."""
    pack_id, urls = astria_pack(env, {"woman": 2})
    label = env.map_astria(pack_id, pack="Headshots")
    folder = env.map("photos", pack="Photos")
    write(folder / "a.png", image(seed=7))
    assert env.sync().exit_code == ExitCode.OK
    env.sandbox.inject("429", "GET", "astria:/p/{id}", count=1000)
    write(folder / "b.png", image(seed=8))

    report = env.sync()

    astria = next(m for m in report.mappings if m.label == label)
    assert report.exit_code == ExitCode.SOME_FAILED
    assert astria.safety is None
    assert astria.error and "rate limited (429)" in astria.error, astria.error
    assert len(env.pack_named("Headshots")["images"]) == len(urls), "nothing deleted"
    assert len(env.pack_named("Photos")["images"]) == 2


# -- redirects ------------------------------------------------------------------------------------------

#: A public address (an internet host) the tests' proxy answers for, with the sandbox's answers.
PUBLIC = "93.184.215.14"


class _Internet(_Noted):
    """A forward proxy that plays the internet: whatever host a request names, the sandbox answers it."""

    sandbox_port = 0

    def _relay(self) -> None:
        target = urlsplit(self.path)  # a proxy is sent the absolute URL
        upstream = http.client.HTTPConnection("127.0.0.1", self.sandbox_port, timeout=30)
        try:
            upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""))
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _relay


@pytest.fixture
def internet(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """Requests to hosts other than this machine go through a proxy that answers with the sandbox."""
    with listening(type("_ToSandbox", (_Internet,), {"sandbox_port": env.sandbox.port})) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield proxy


def moved(location: str) -> Callable[[Reply], Reply]:
    return lambda _reply: Reply(302, b"", None, {"Location": location})


INNER = ["http://127.0.0.1:{port}/astria-img/{key}", "http://localhost:{port}/astria-img/{key}",
         "http://2130706433:{port}/astria-img/{key}", "http://[::ffff:127.0.0.1]:{port}/astria-img/{key}",
         "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/secret.png", "file:///etc/passwd"]


CARRIED = ["http://[64:ff9b::7f00:1]:{port}/astria-img/{key}", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
           "http://[2002:7f00:1::1]:{port}/astria-img/{key}", "http://[::127.0.0.1]:{port}/astria-img/{key}",
           "http://[::ffff:0:7f00:1]:{port}/astria-img/{key}", "http://[64:ff9b:1::a00:1]/secret.png"]


@pytest.mark.parametrize("location", INNER + CARRIED, ids=[
    "loopback", "localhost", "a loopback written as a number", "IPv4 in IPv6", "link-local", "private", "a file URL",
    "NAT64 loopback", "NAT64 metadata service", "6to4", "IPv4-compatible", "IPv4-translated", "local-use NAT64"])
def test_an_image_redirected_from_the_internet_into_this_machine_is_not_followed(
        env: Env, internet: Listener, location: str) -> None:
    """An Astria image at a public host that answers 302 to this machine (a secret served on loopback),
    its metadata service or its network: the redirect is refused in one sentence, the secret never read
    and nothing uploaded. Judged by the address a host resolves to, however it is written. An IPv6
    address that carries an IPv4 one (NAT64, 6to4, IPv4-compatible or -translated) leads to that IPv4
    address — a NAT64 gateway forwards ``[64:ff9b::a9fe:a9fe]`` to the metadata service — so it is judged
    as that address is (here the proxy plays the gateway)."""
    pack_id, _urls = astria_pack(env, {"woman": 1})
    secret = env.sandbox.astria.store_bytes(image(seed=99))
    key = secret.rsplit("/", 1)[1]
    env.sandbox.rewrite("GET", "astria:/p/{id}", listing(f"http://{PUBLIC}/astria-img/public"))
    env.sandbox.rewrite("GET", "astria-img", moved(location.format(port=env.sandbox.port, key=key)), count=1)
    label = env.map_astria(pack_id, pack="Headshots")

    report = env.sync()

    (mapping,) = [m for m in report.mappings if m.label == label]
    (problem,) = mapping.problems
    assert "not following a redirect to" in problem.reason, problem.reason
    assert location in CARRIED or "…" not in problem.reason, problem.reason
    assert internet.seen == [f"GET http://{PUBLIC}/astria-img/public"]
    assert env.sandbox.calls[("GET", "astria-img")] == 1, "the secret was never asked for"
    assert env.sandbox.calls[("POST", "/files")] == 0
    assert env.pack_named("Headshots")["images"] == []


def test_a_download_follows_redirects_within_its_own_network_and_at_most_five(env: Env) -> None:
    """The sandbox is on loopback: a loopback image may be redirected within loopback (a NAS or a test
    server works as before), but a chain of more than five redirects is given up in one sentence."""
    # (one image: the first download redirected, whichever it is, is that image's own)
    pack_id, urls = astria_pack(env, {"woman": 1})
    env.sandbox.rewrite("GET", "astria-img", moved(urls[0]), count=1)
    env.map_astria(pack_id, pack="Headshots")

    assert env.sync().exit_code == ExitCode.OK
    assert env.sandbox.calls[("GET", "astria-img")] == 2, "redirected once, then fetched"
    assert genviral_bytes(env, "Headshots") == astria_bytes(env, urls)

    looping, more = astria_pack(env, {"man": 1}, title="Loop")
    env.sandbox.rewrite("GET", "astria-img", moved(more[0]), count=6)
    label = env.map_astria(looping, pack="Loop")
    report = env.sync()
    (mapping,) = [m for m in report.mappings if m.label == label]
    (problem,) = mapping.problems
    assert "cannot download it (download: more than 5 redirects; not followed)" in problem.reason


# -- the daemon -----------------------------------------------------------------------------------------


def test_the_daemon_syncs_its_folders_while_an_astria_pack_trickles_and_health_names_it(
        daemon_env: Env, start_here: StartHere) -> None:
    """An Astria pack whose answer trickles in holds up its own mapping only: the folder beside it syncs
    a new file at once, and /healthz says degraded, naming the Astria mapping, while it is stuck."""
    env = slow_env(daemon_env)
    env.genviral["timeout_s"] = 1.0  # a trickling head is given up after 4 s
    env.sandbox.faults.trickle_s = 0.2
    pack_id, _urls = astria_pack(env, {"woman": 1})
    label = env.map_astria(pack_id, pack="Headshots")
    folder = env.map("photos", pack="Photos")
    write(folder / "a.png", image(seed=1))
    daemon = start_here(msgspec.structs.replace(FAST, stuck_after_s=1.0))
    assert len(env.pack_named("Photos")["images"]) == 1
    env.sandbox.inject("trickle-head", "GET", "astria:/p/{id}", count=1000)
    daemon._loop.call_soon_threadsafe(daemon.daemon.status.sync_now, label)
    wait_until(lambda: env.sandbox.calls[("GET", "astria:/p/{id}")] >= 2, timeout=5, what="the pack read again")

    write(folder / "b.png", image(seed=2))

    wait_until(lambda: len(env.pack_named("Photos")["images"]) == 2, timeout=3, interval=0.1,
               what="the folder synced while the Astria pack trickles")
    assert daemon.daemon.web is not None
    healthz = f"http://127.0.0.1:{daemon.daemon.web.served.port}/healthz"
    document = wait_until(lambda: (d := httpx2.get(healthz).json())["status"] == "degraded" and d, timeout=5,
                          interval=0.1, what="/healthz degraded")
    assert any(reason.startswith(f"{label}: ") for reason in document["reasons"]), document


@pytest.mark.parametrize("how", ["adopting a pack", "pull"])
def test_a_pack_image_redirected_into_this_machine_is_neither_adopted_nor_pulled(
        env: Env, internet: Listener, how: str) -> None:
    """The same for a Genviral pack's images: those packsync downloads to learn what a pack it adopts
    holds, and those ``pull`` writes. The secret is never asked for, and nothing of it written."""
    secret = env.sandbox.upload(image(seed=99))
    pack_id = env.sandbox.create_pack("Shared")
    env.sandbox.add_image(pack_id, f"http://{PUBLIC}/cdn/public.png", "public.png")
    env.sandbox.rewrite("GET", "cdn", moved(secret), count=1)
    out = env.root / "out"

    if how == "pull":
        env.write_config()
        result = env.cli("pull", f"genviral:{pack_id}", str(out))
        said = result.stdout + result.stderr
        assert result.returncode == ExitCode.SOME_FAILED, said
        assert not out.exists() or not any(out.iterdir())
    else:
        folder = env.map("photos", pack_id=pack_id)
        write(folder / "a.png", image(seed=5))
        (mapping,) = env.sync().mappings
        said = " ".join(why for _image, why in mapping.undownloadable)

    assert "not following a redirect to 127.0.0.1, a loopback address" in said, said
    assert "Traceback" not in said
    assert env.sandbox.calls[("GET", "cdn")] == 1, "the secret was never asked for"


def test_a_folder_s_long_sync_is_not_called_stuck(daemon_env: Env, start_here: StartHere) -> None:
    """A folder's sync is a run of requests each under its own deadline: however long a large sync
    takes, /healthz never names it as a remote answering slowly (only a remote's mapping can be held)."""
    env = daemon_env
    folder = env.map("photos", pack="Photos")
    write(folder / "a.png", image(seed=1))
    daemon = start_here(msgspec.structs.replace(FAST, stuck_after_s=0.3))
    assert daemon.daemon.web is not None
    healthz = f"http://127.0.0.1:{daemon.daemon.web.served.port}/healthz"
    env.sandbox.faults.latency_s = 0.5  # each call slow, none stuck: the sync takes seconds
    for seed in range(2, 6):
        write(folder / f"{seed}.png", image(seed=seed))
    written, during = time.monotonic(), []

    def synced() -> bool:
        document = httpx2.get(healthz).json()
        done = len(env.pack_named("Photos")["images"]) == 5
        if not done and time.monotonic() - written > 1.0:
            during.append(document)
        return done

    wait_until(synced, timeout=30, interval=0.1, what="the folder's slow sync done")
    assert during, "health was asked while the sync had run longer than stuck_after_s"
    called_stuck = [d for d in during if any("still syncing" in r for r in d["reasons"])]
    assert not called_stuck, called_stuck[0]
