"""The one HTTP transport (``packsync/remote/transport.py``): errors with their route, status and code,
keys only where they belong, one transport shared by every client of a run — over real HTTP, to the
sandbox or to a recording server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import ASTRIA_TOKEN, TOKEN, Env, image, write
from helpers import wait_until
from test_network import Listener, _Noted, listening

from packsync.app import open_app
from packsync.errors import (
    AmbiguousError,
    ApiError,
    AuthError,
    NotFound,
    PermanentError,
    TransientError,
    UploadRejected,
)
from packsync.remote.astria import AstriaClient
from packsync.remote.genviral import GenviralClient
from packsync.remote.transport import RetryPolicy, Transport
from packsync.remote.wire import Answer, Headers, retry_after_of
from packsync.sandbox import Account

ONCE = RetryPolicy(attempts=1)


def failure(call: Callable[[], Awaitable[Any]]) -> ApiError:
    """The error ``call`` ends with."""
    async def run() -> None:
        await call()

    with pytest.raises(ApiError) as caught:
        asyncio.run(run())
    return caught.value


def fields_of(error: ApiError) -> tuple[type[ApiError], str | None, str | None, int | None, str | None]:
    return type(error), error.method, error.route, error.status, error.error_code


# -- errors carry what a decision needs ------------------------------------------------------------


def test_a_404_names_its_route_template_status_and_code_never_the_id(env: Env) -> None:
    async def read() -> None:
        async with GenviralClient(env.sandbox.base_url, TOKEN, retry=ONCE) as api:
            await api.get_pack("no-such-pack-4711")

    error = failure(read)

    assert fields_of(error) == (NotFound, "GET", "/packs/{id}", 404, "not_found")
    assert "4711" not in (error.route or "")
    assert env.sandbox.base_url not in str(error) and "127.0.0.1" not in str(error)


@pytest.mark.parametrize("kind,method,route,expected", [
    ("500", "POST", "/files", (AmbiguousError, "POST", "/files", 500, "internal_error")),
    ("503", "POST", "/files", (AmbiguousError, "POST", "/files", 503, "service_unavailable")),
    ("429", "POST", "/files", (ApiError, "POST", "/files", 429, "rate_limited")),
    ("502", "POST", "/files", (AmbiguousError, "POST", "/files", 502, None)),
], ids=["500", "503", "429", "a gateway's page"])
def test_a_5xx_or_429_names_its_route_status_and_code(env: Env, kind: str, method: str, route: str,
                                                      expected: tuple[Any, ...]) -> None:
    env.sandbox.inject(kind, method=method, route=route)

    async def ask() -> None:
        async with GenviralClient(env.sandbox.base_url, TOKEN, retry=ONCE) as api:
            await api.create_upload("image/png", "a.png", 10)

    error = failure(ask)

    assert isinstance(error, expected[0])
    assert fields_of(error)[1:] == expected[1:]


def test_a_422_names_the_payload_fields_the_api_refused(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    env.sandbox.inject("422", method="POST", route="/packs/{id}/images")

    async def add() -> None:
        async with GenviralClient(env.sandbox.base_url, TOKEN) as api:
            await api.add_image(pack_id, "https://cdn.example.com/a.png", "a.png")

    error = failure(add)

    assert fields_of(error) == (PermanentError, "POST", "/packs/{id}/images", 422, "invalid_payload")
    assert error.fields == ("image_url",)


def test_a_refused_key_is_an_auth_error_with_its_status_and_code(env: Env) -> None:
    env.sandbox.accounts[TOKEN] = Account("ws-1", status=401)

    async def list_packs() -> None:
        async with GenviralClient(env.sandbox.base_url, TOKEN) as api:
            await api.list_packs()

    assert fields_of(failure(list_packs)) == (AuthError, "GET", "/packs", 401, "invalid_token")


def test_storage_refusing_a_presigned_put_names_the_route_not_the_url(env: Env) -> None:
    env.sandbox.inject("expire", method="PUT", route="storage")

    async def upload() -> None:
        async with GenviralClient(env.sandbox.base_url, TOKEN) as api:
            ticket = await api.create_upload("image/png", "a.png", 10)
            await api.put_bytes(ticket.upload_url, image(), "image/png")

    error = failure(upload)

    assert fields_of(error) == (UploadRejected, "PUT", "upload URL", 403, "AccessDenied")
    assert "signature=" not in str(error) and "/storage/" not in str(error)


def test_astria_and_download_errors_carry_their_routes(env: Env) -> None:
    async def read() -> None:
        async with Transport(retry=ONCE) as transport:
            await AstriaClient(env.sandbox.astria_url, ASTRIA_TOKEN, transport).pack(987654)

    async def download() -> None:
        async with Transport(retry=ONCE) as transport:
            await transport.download(env.sandbox.origin + "/cdn/" + "0" * 32 + ".png", 1000, hashlib.sha256)

    assert fields_of(failure(read)) == (NotFound, "GET", "astria /p/{id}", 404, None)
    assert fields_of(failure(download)) == (PermanentError, "GET", "download", 404, None)


# -- one transport, shared ------------------------------------------------------------------------


def test_the_astria_client_speaks_through_a_transport_of_its_own(env: Env) -> None:
    """No Genviral client anywhere: Astria's key, Astria's base URL, the transport's slots and counts."""
    pack_id = env.sandbox.astria.add_pack("Headshots")
    images = [image(), image()]
    urls = [env.sandbox.astria.add_image(pack_id, "woman", data) for data in images]

    async def mirror() -> tuple[list[str], list[str], dict[str, int]]:
        async with Transport(concurrency=2) as transport:
            astria = AstriaClient(env.sandbox.astria_url, ASTRIA_TOKEN, transport)
            pack = await astria.pack(pack_id)
            digests = [(await astria.download(i.url, 10_000, hashlib.sha256)).hexdigest() for i in pack.images]
            return [i.url for i in pack.images], digests, dict(transport.calls)

    listed, digests, calls = asyncio.run(mirror())

    assert listed == urls
    assert digests == [hashlib.sha256(data).hexdigest() for data in images]
    assert calls == {"GET astria /p/{id}": 1, "GET download": 2}
    assert env.sandbox.calls == {("GET", "astria:/p/{id}"): 1, ("GET", "astria-img"): 2}


def test_one_transport_serves_a_run_and_astria_reads_spend_its_budget(env: Env) -> None:
    """The app builds one transport: the Genviral and Astria clients share its pool, slots and run
    budget, so a retried Astria read counts against the run like any other retry."""
    pack_id = env.sandbox.astria.add_pack("Headshots")
    env.sandbox.astria.add_image(pack_id, "woman", image())
    env.map_astria(pack_id, pack="Mirror")
    write(env.map("brand", pack="Brand") / "a.png", image())
    env.sandbox.inject("503", method="GET", route="astria:/p/{id}")

    async def read() -> tuple[bool, int, int]:
        async with open_app(env.config(), TOKEN) as app:
            astria = app.clients["astria"]
            app.api.start_run()
            before = app.api.transport.retries_left
            await astria.pack(pack_id)
            await app.api.list_packs()
            return astria.transport is app.api.transport, before, app.api.transport.retries_left

    shared, before, after = asyncio.run(read())

    assert shared
    assert after == before - 1
    assert env.sandbox.calls[("GET", "astria:/p/{id}")] == 2


# -- keys only where they belong ------------------------------------------------------------------


class _Keys(_Noted):
    """Notes each request's Authorization header and answers no packs (Genviral's or Astria's way);
    ``…/moved`` redirects."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(f"  key: {self.headers.get('Authorization')}")
        if self.path.endswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/img/final.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"[]" if self.path.startswith("/astria/") else \
            json.dumps({"ok": True, "code": 200, "message": "", "data": {"packs": [], "total": 0}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_PATCH = _answer


def test_each_key_goes_to_its_own_api_and_storage_and_downloads_get_none() -> None:
    """A presigned URL goes out as given, a dot segment and its escapes kept: its signature covers them."""
    async def calls(server: Listener) -> None:
        async with Transport() as transport:
            genviral = GenviralClient(server.url + "/genviral", "gva_live_key.secret", transport)
            astria = AstriaClient(server.url + "/astria", "sd_astria.secret", transport)
            await genviral.list_packs()
            await astria.packs(gallery=True)
            await genviral.put_bytes(server.url + "/up/./x.png?sig=a%2Fb", b"x", "image/png")
            await transport.download(server.url + "/img/a.png", 1000, hashlib.sha256)

    with listening(_Keys) as server:
        asyncio.run(calls(server))

    assert server.seen == [
        "GET /genviral/packs?limit=100&offset=0&include_public=false", "  key: Bearer gva_live_key.secret",
        "GET /astria/gallery/packs", "  key: Bearer sd_astria.secret",
        "PUT /up/./x.png?sig=a%2Fb", "  key: None",
        "GET /img/a.png", "  key: None",
    ]


def test_a_download_follows_a_redirect_and_an_api_call_does_not() -> None:
    """Downloads follow redirects (to the Location's own path, even from a URL sent byte for byte with a
    dot segment); an API call answered with a redirect is an error of that call."""
    async def calls(server: Listener) -> ApiError | None:
        async with Transport(retry=ONCE) as transport:
            await transport.download(server.url + "/img/../img/moved", 1000, hashlib.sha256)
            try:
                await GenviralClient(server.url, "gva_live_key.secret", transport).rename_pack("moved", "n")
            except ApiError as exc:
                return exc
        return None

    with listening(_Keys) as server:
        error = asyncio.run(calls(server))

    requests = [line for line in server.seen if not line.startswith("  ")]
    assert requests == ["GET /img/../img/moved", "GET /img/final.png", "PATCH /packs/moved"]
    assert isinstance(error, PermanentError) and error.status == 302


def test_headers_show_their_names_never_their_values() -> None:
    assert "secret" not in repr(Headers({"Authorization": "Bearer gva_live_key.secret"}))


def test_a_verbose_run_logs_no_presigned_url_and_no_request_line_of_the_library(env: Env) -> None:
    """httpx2 logs every request with its URL at INFO: a presigned URL's signature would reach the log."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    result = env.cli("-v", "run", "--no-wait")

    assert result.returncode == 0, result.stderr
    assert env.pack(pack_id)["image_count"] == 1
    assert "signature=" not in result.stderr and "/storage/" not in result.stderr
    assert "HTTP Request" not in result.stderr


# -- what a server says of when to come back -------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-5", "1e999", "soon", ""])
def test_a_retry_after_that_is_no_number_of_seconds_ahead_is_no_hint(value: str) -> None:
    """A pause that is not a number (``nan`` parses as a float: a sleep of nan returns at once, and puts
    a timer the event loop cannot order among the others), endless or in the past is the backoff's to
    choose."""
    assert retry_after_of(Answer(429, {"Retry-After": value}, b"")) is None


@pytest.mark.parametrize("value,seconds", [("0", 0.0), ("7", 7.0), ("2.5", 2.5)])
def test_a_retry_after_in_seconds_is_honoured(value: str, seconds: float) -> None:
    assert retry_after_of(Answer(429, {"Retry-After": value}, b"")) == seconds


# -- an answer ends, and fits in memory -------------------------------------------------------------


class _Endless(_Noted):
    """Below ``/declared``: a body of 10 GB, said so; ``/chunked``: an endless one, never said; ``/head``: a
    head that trickles in, a byte at a time; ``/body``: a body that does. Each request is noted once it ends."""

    def _answer(self) -> None:
        kind = self.path.split("/")[1]
        try:
            if kind == "head":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                while True:
                    for byte in b"X-Pad: 1\r\n":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.05)
            self.send_response(200)
            if kind == "declared":
                self.send_header("Content-Length", str(10**10))
            elif kind == "body":
                self.send_header("Content-Length", "100000")
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                if kind == "body":
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
                elif kind == "chunked":
                    self.wfile.write(b"10000\r\n" + b" " * 65536 + b"\r\n")
                else:
                    self.wfile.write(b" " * 65536)
        except OSError:
            self.server.seen.append("  ended")

    do_GET = do_POST = _answer


@pytest.mark.parametrize("path,error", [("declared", "larger than 1 MiB"), ("chunked", "larger than 1 MiB"),
                                        ("head", "head is not whole after 2 s, too slow to finish"),
                                        ("body", "too slow to finish")],
                         ids=["declared too large", "endless", "a head trickling in", "a body trickling in"])
def test_an_api_answer_too_large_or_too_slow_is_given_up(path: str, error: str) -> None:
    """An answer is read within bounds, whatever the server does: no larger than the transport's
    ``max_answer`` (a pack of a few hundred thousand images fits the default), its head within four read
    timeouts, its body at STALL_RATE once one has passed; a trickle is not tried again. A read timeout
    alone resets at every byte."""
    async def read(server: Listener) -> tuple[ApiError, float]:
        async with Transport(retry=ONCE, timeout=0.5, max_answer=2**20) as transport:
            started = time.monotonic()
            try:
                await GenviralClient(server.url + "/" + path, "gva_live_key.secret", transport).list_packs()
            except ApiError as exc:
                return exc, time.monotonic() - started
        raise AssertionError("the answer was read")

    with listening(_Endless) as server:
        failed, seconds = asyncio.run(read(server))
        wait_until(lambda: "  ended" in server.seen, timeout=5, what="the connection closed")

    assert error in str(failed), failed
    assert (failed.method, failed.route) == ("GET", "/packs")
    assert seconds < 5


# -- closing ----------------------------------------------------------------------------------------


class _Slow(_Noted):
    """Answers no packs after a second; notes each connection as it closes."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(1.0)
        body = json.dumps({"ok": True, "code": 200, "message": "", "data": {"packs": [], "total": 0}}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def finish(self) -> None:
        super().finish()
        self.server.seen.append("  closed")


def test_a_retired_transport_closes_once_its_requests_end_and_sends_nothing_after() -> None:
    """SIGHUP with a new key: the daemon retires the old transport, which a metadata poll may still be
    using. That poll's request ends as it would have, then the transport's connections close, and
    nothing goes out through it again (no connection opened behind its back)."""
    async def retire(server: Listener) -> tuple[list[Any], ApiError | None]:
        transport = Transport()
        api = GenviralClient(server.url, "gva_live_key.secret", transport)
        polling = asyncio.create_task(api.list_packs())
        await asyncio.sleep(0.3)
        await transport.retire()
        listed = await polling
        try:
            await api.list_packs()
        except ApiError as exc:
            return listed, exc
        return listed, None

    with listening(_Slow) as server:
        listed, after = asyncio.run(retire(server))
        wait_until(lambda: "  closed" in server.seen, timeout=5, what="the connection closed")

    assert listed == []
    assert isinstance(after, TransientError) and "not sent" in str(after) and after.route == "/packs"
    assert [line for line in server.seen if not line.startswith("  ")] == [
        "GET /packs?limit=100&offset=0&include_public=false"]


def test_a_transport_closed_mid_request_opens_no_connection_again() -> None:
    """A request cut by ``aclose`` ends in its own error and is not sent again: retried, it would open a
    connection of a new pool that nobody closes (one leaked per reload of a daemon)."""
    async def close(server: Listener) -> BaseException | None:
        transport = Transport()
        polling = asyncio.create_task(GenviralClient(server.url, "gva_live_key.secret", transport).list_packs())
        await asyncio.sleep(0.3)
        await transport.aclose()
        await transport.aclose()  # twice: nothing to do
        try:
            await polling
        except ApiError as exc:
            return exc
        return None

    with listening(_Slow) as server:
        error = asyncio.run(close(server))
        time.sleep(1.5)

    assert isinstance(error, TransientError), error
    assert [line for line in server.seen if not line.startswith("  ")] == [
        "GET /packs?limit=100&offset=0&include_public=false"]


def test_a_sync_starting_leaves_a_metadata_round_s_budget_and_breaker_alone(env: Env) -> None:
    """The daemon's metadata round and its syncs are runs of their own over the one transport: a sync
    starting neither refills the round's retry budget nor mends the route the round gave up on, and the
    round's retries are not spent from the sync's budget."""
    from packsync.remote.retry import Backoff

    pack_id = env.sandbox.create_pack("p")
    env.sandbox.inject("503", method="GET", route="/packs/{id}", count=100)
    policy = RetryPolicy(attempts=2, backoff=Backoff(0.0, 0.0), run_budget=5, breaker=2)

    async def runs() -> tuple[int, int]:
        async with GenviralClient(env.sandbox.base_url, TOKEN, retry=policy) as api:
            gave_up, sync_started = asyncio.Event(), asyncio.Event()

            async def metadata_round() -> int:
                api.start_run()
                with pytest.raises(TransientError):
                    await api.get_pack(pack_id)  # two attempts, one retry: the route is given up
                gave_up.set()
                await sync_started.wait()
                with pytest.raises(TransientError, match="gives up on it"):
                    await api.get_pack(pack_id)
                return api.transport.retries_left

            async def sync() -> int:
                await gave_up.wait()
                api.start_run()
                sync_started.set()
                return api.transport.retries_left

            left_in_round, left_in_sync = await asyncio.gather(metadata_round(), sync())
            return left_in_round, left_in_sync

    left_in_round, left_in_sync = asyncio.run(runs())

    assert (left_in_round, left_in_sync) == (4, 5)
    assert env.sandbox.calls[("GET", "/packs/{id}")] == 2, "the route the round gave up on was not tried again"


def test_a_metadata_round_decodes_the_images_it_asks_about_alone() -> None:
    """``GET /packs/{id}`` for a metadata round: the images asked about are decoded, the others skipped
    over unread (a pack of 100,000 costs what waits); one asked about that is not as documented sends
    the answer to the full check."""
    from packsync.model import Metadata
    from packsync.remote import answers

    body = json.dumps({"ok": True, "data": {"id": "p", "images": [
        {"id": "a", "url": "https://cdn.example/a.png", "metadata": {"status": "completed", "description": "d",
                                                                     "keywords": ["k"], "generated_at": "x"}},
        {"id": "b", "url": "https://cdn.example/b.png", "metadata": "not an object"}]}}).encode()

    assert answers.pack_metadata(body, {"a", "not-in-the-pack"}) == {"a": Metadata("completed", "d", ("k",))}
    assert answers.pack_metadata(body, {"b"}) is None
    without_id = body.replace(b'"id": "b", ', b"")
    assert answers.pack_metadata(without_id, {"a"}) is None, "an image without its id is never skipped over"
