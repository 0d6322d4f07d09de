"""Tests for packsync.sandbox: the local Genviral Partner API, exercised over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
import pytest
from helpers import wait_until

from packsync.sandbox import ASTRIA_DEMO_TOKEN, DEMO_TOKEN, Account, Faults, LinkRate, Sandbox, seed_astria_tune_demo
from packsync.sandbox.link import parse_rate

T = TypeVar("T")

TOKEN = "gva_live_ws1.secret"
OTHER = "gva_live_ws2.secret"
ACCOUNTS = {
    TOKEN: Account(scope="ws-1"),
    OTHER: Account(scope="ws-2"),
    "gva_live_revoked.secret": Account(scope="ws-1", status=401),
    "gva_live_unpaid.secret": Account(scope="ws-1", status=402),
    "gva_live_scheduler.secret": Account(scope="ws-1", status=403),
}

PLAIN = httpx2.Client(timeout=5)  # no Authorization header: storage and CDN calls


@pytest.fixture(scope="module", autouse=True)
def _close_plain_client() -> Iterator[None]:
    yield
    PLAIN.close()


def make_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid 8-bit RGB PNG of one colour, rows alternating Sub/Up filters."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b""
    for y in range(height):
        if y % 2 == 0:  # Sub: first pixel raw, then zero deltas
            raw += b"\x01" + bytes(rgb) + b"\x00" * 3 * (width - 1)
        else:  # Up: identical to the row above
            raw += b"\x02" + b"\x00" * 3 * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(accounts=ACCOUNTS, enrich_delays=(0.05, 0.05)) as sandbox:
        yield sandbox


@pytest.fixture
def api(sb: Sandbox) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sb.base_url, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=5) as client:
        yield client


def upload(api: httpx2.Client, data: bytes, content_type: str = "image/png") -> str:
    """POST /files then PUT the bytes; returns the CDN url."""
    ticket = api.post("/files", json={"contentType": content_type, "filename": "a"}).json()["data"]
    put = PLAIN.put(ticket["uploadUrl"], content=data, headers={"Content-Type": content_type})
    assert put.status_code == 200, put.text
    return str(ticket["url"])


def image_status(sb: Sandbox, pack_id: str, image_id: str) -> dict[str, Any] | None:
    pack = sb.pack(pack_id)
    assert pack is not None
    meta = next(i["metadata"] for i in pack["images"] if i["id"] == image_id)
    return meta if meta["status"] in ("completed", "failed") else None


# --------------------------------------------------------------------------- envelope/auth
def test_envelope_success_and_failure_shapes(sb: Sandbox, api: httpx2.Client) -> None:
    r = api.get("/packs")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["ok"] is True and body["code"] == 200 and isinstance(body["message"], str)
    assert body["data"] == {"packs": [], "total": 0, "limit": 20, "offset": 0}
    r = api.get("/packs/nope")
    assert r.status_code == 404
    assert r.json() == {"ok": False, "code": 404, "message": r.json()["message"], "error_code": "not_found"}
    assert "data" not in r.json()
    r = api.get("/nothing-here")
    assert r.status_code == 404 and r.json()["error_code"] == "not_found"
    r = api.put("/packs")
    assert r.status_code == 405 and r.json()["ok"] is False and r.json()["code"] == 405


@pytest.mark.parametrize("token, status, code", [
    (None, 401, "invalid_token"),
    ("gva_live_unknown.secret", 401, "invalid_token"),
    ("gva_live_revoked.secret", 401, "invalid_token"),
    ("gva_live_unpaid.secret", 402, "subscription_required"),
    ("gva_live_scheduler.secret", 403, "tier_not_allowed"),
])
def test_auth_failures(sb: Sandbox, token: str | None, status: int, code: str) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for method, path in (("GET", "/packs"), ("POST", "/packs")):
        r = PLAIN.request(method, sb.base_url + path, headers=headers, json={"name": "x"})
        assert (r.status_code, r.json()["code"], r.json()["error_code"]) == (status, status, code)
    assert sb.packs() == []


# --------------------------------------------------------------------------------- packs
def test_list_packs_pagination_search_and_public(sb: Sandbox, api: httpx2.Client) -> None:
    ids = [api.post("/packs", json={"name": f"Trip {i}"}).json()["data"]["id"] for i in range(5)]
    api.post("/packs", json={"name": "Cats"})
    public = sb.create_pack("Public trip", scope="ws-2", is_public=True)
    sb.create_pack("Private trip", scope="ws-2")
    page = api.get("/packs", params={"limit": 2, "offset": 1, "search": "TRIP"}).json()["data"]
    assert page["total"] == 6 and page["limit"] == 2 and page["offset"] == 1
    assert [p["id"] for p in page["packs"]] == ids[1:3]
    assert set(page["packs"][0]) == {"id", "name", "image_count", "preview_image_url", "is_public", "created_at"}
    everything = api.get("/packs", params={"limit": 100}).json()["data"]
    assert [p["id"] for p in everything["packs"]][-1] == public and everything["total"] == 7
    own = api.get("/packs", params={"include_public": "false", "limit": 100}).json()["data"]
    assert own["total"] == 6 and public not in [p["id"] for p in own["packs"]]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
        r = api.get("/packs", params=bad)
        assert r.status_code == 400 and r.json()["error_code"] == "invalid_limit"
    assert api.get("/packs", params={"offset": -1}).status_code == 400


def test_scope_public_readable_but_not_mutable(sb: Sandbox, api: httpx2.Client) -> None:
    public = sb.create_pack("Theirs", scope="ws-2", is_public=True)
    private = sb.create_pack("Secret", scope="ws-2")
    image = sb.add_image(public, "https://example.com/a.jpg")
    r = api.get(f"/packs/{public}", params={"include_public": "false"})
    assert r.status_code == 200 and r.json()["data"]["images"][0]["id"] == image
    assert api.get(f"/packs/{private}").status_code == 404
    attempts = [
        api.patch(f"/packs/{public}", json={"name": "Mine"}),
        api.delete(f"/packs/{public}"),
        api.post(f"/packs/{public}/images", json={"image_url": "https://example.com/b.jpg"}),
        api.delete(f"/packs/{public}/images/{image}"),
        api.patch(f"/packs/{private}", json={"name": "Mine"}),
    ]
    assert [(r.status_code, r.json()["error_code"]) for r in attempts] == [(404, "not_found")] * 5
    pack = sb.pack(public)
    assert pack is not None and pack["name"] == "Theirs" and pack["image_count"] == 1


def test_create_patch_delete_validation(sb: Sandbox, api: httpx2.Client) -> None:
    cases = [
        ({}, "name", "Required"),
        ({"name": ""}, "name", "String must contain at least 1 character(s)"),
        ({"name": "x" * 121}, "name", "String must contain at most 120 character(s)"),
        ({"name": "ok", "is_public": "yes"}, "is_public", "Expected boolean, received string"),
        ({"name": 5}, "name", "Expected string, received number"),
    ]
    for body, field, message in cases:
        r = api.post("/packs", json=body)
        assert r.status_code == 422, body
        assert r.json()["error_code"] == "invalid_payload"
        assert r.json()["issues"]["fieldErrors"][field] == [message]
    r = api.post("/packs", json={"name": "ok", "x": 1})
    assert r.status_code == 422
    assert r.json()["issues"] == {"formErrors": ["Unrecognized key(s) in object: 'x'"], "fieldErrors": {}}
    r = api.post("/packs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error_code"] == "invalid_json"
    assert sb.packs() == []

    created = api.post("/packs", json={"name": "x" * 120, "is_public": True})
    assert created.status_code == 201 and created.json()["data"]["is_public"] is True
    pid = created.json()["data"]["id"]
    assert api.patch(f"/packs/{pid}", json={}).status_code == 422
    r = api.patch(f"/packs/{pid}", json={"name": "Renamed"})
    assert r.status_code == 200 and r.json()["data"]["name"] == "Renamed"
    assert r.json()["data"]["is_public"] is True
    r = api.delete(f"/packs/{pid}")
    assert r.json()["data"] == {"id": pid, "deleted": True}
    assert api.get(f"/packs/{pid}").status_code == 404
    assert api.delete(f"/packs/{pid}").status_code == 404


def test_image_add_and_delete(sb: Sandbox, api: httpx2.Client) -> None:
    pid = sb.create_pack("P")
    first = api.post(f"/packs/{pid}/images", json={"image_url": "https://cdn.x/y/photo.JPEG?v=1"})
    assert first.status_code == 201
    data = first.json()["data"]
    assert data["file_name"] == "image" and data["content_type"] == "image/jpeg"
    again = api.post(f"/packs/{pid}/images",
                     json={"image_url": "https://cdn.x/y/photo.JPEG?v=1", "file_name": "b"})
    assert again.json()["data"]["id"] != data["id"]
    other = api.post(f"/packs/{pid}/images", json={"image_url": "https://cdn.x/raw"}).json()["data"]
    assert other["content_type"] is None
    bad = api.post(f"/packs/{pid}/images", json={"image_url": "ftp://x/a.png"})
    assert bad.status_code == 422 and "image_url" in bad.json()["issues"]["fieldErrors"]
    pack = api.get(f"/packs/{pid}").json()["data"]
    assert [i["id"] for i in pack["images"]] == [data["id"], again.json()["data"]["id"], other["id"]]
    assert pack["image_count"] == 3
    assert pack["images"][0]["metadata"] == {"status": "pending", "description": None, "keywords": [],
                                             "model": "gpt-4.1-nano", "generated_at": None, "error": None}
    r = api.delete(f"/packs/{pid}/images/{data['id']}")
    assert r.status_code == 200 and r.json()["data"] == {"id": data["id"], "deleted": True}
    r = api.delete(f"/packs/{pid}/images/{data['id']}")
    assert r.status_code == 404 and r.json()["error_code"] == "image_not_found"
    listed = api.get("/packs").json()["data"]["packs"][0]
    assert listed["image_count"] == 2 and listed["preview_image_url"] == "https://cdn.x/y/photo.JPEG?v=1"


# ------------------------------------------------------------------------ files/storage
def test_full_upload_flow(sb: Sandbox, api: httpx2.Client) -> None:
    png = make_png(4, 3, (250, 20, 20))
    r = api.post("/files", json={"contentType": "image/png", "filename": "a.png", "size": len(png)})
    assert r.status_code == 201
    ticket = r.json()["data"]
    assert ticket["contentType"] == "image/png" and ticket["expiresIn"] == 600
    assert ticket["uploadUrl"].startswith(f"http://127.0.0.1:{sb.port}/storage/")
    assert ticket["url"].startswith(f"http://127.0.0.1:{sb.port}/cdn/") and ticket["url"].endswith(".png")
    assert PLAIN.get(ticket["url"]).status_code == 404
    put = PLAIN.put(ticket["uploadUrl"], content=png, headers={"Content-Type": "image/png"})
    assert put.status_code == 200 and put.content == b""
    assert put.headers["etag"] == f'"{hashlib.md5(png).hexdigest()}"'
    pid = sb.create_pack("P")
    added = api.post(f"/packs/{pid}/images", json={"image_url": ticket["url"], "file_name": "a.png"})
    assert added.status_code == 201 and added.json()["data"]["content_type"] == "image/png"
    cdn = PLAIN.get(ticket["url"])
    assert cdn.status_code == 200 and cdn.content == png and cdn.headers["content-type"] == "image/png"
    overwrite = PLAIN.put(ticket["uploadUrl"], content=png + b"x", headers={"Content-Type": "image/png"})
    assert overwrite.status_code == 200 and PLAIN.get(ticket["url"]).content == png + b"x"


def test_files_rejects_non_image_types(api: httpx2.Client) -> None:
    r = api.post("/files", json={"contentType": "text/plain"})
    assert r.status_code == 422 and "contentType" in r.json()["issues"]["fieldErrors"]
    r = api.post("/files", json={})
    assert r.json()["issues"]["fieldErrors"]["contentType"] == ["Required"]


def test_storage_rejections(sb: Sandbox, api: httpx2.Client) -> None:
    ticket = api.post("/files", json={"contentType": "image/jpeg"}).json()["data"]
    url = ticket["uploadUrl"]

    def put(target: str, **headers: str) -> httpx2.Response:
        return PLAIN.put(target, content=b"\xff\xd8\xff\xe0", headers={"Content-Type": "image/jpeg", **headers})

    r = put(url, Authorization=f"Bearer {TOKEN}")
    assert r.status_code == 400 and r.headers["content-type"] == "application/xml"
    assert r.text.startswith("<?xml") and "<Code>InvalidArgument</Code>" in r.text
    r = PLAIN.put(url, content=b"x", headers={"Content-Type": "image/png"})
    assert r.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in r.text
    sig_at = url.index("signature=") + len("signature=")
    tampered = url[:sig_at] + ("0" if url[sig_at] != "0" else "1") + url[sig_at + 1:]
    r = put(tampered)
    assert r.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in r.text
    assert PLAIN.get(ticket["url"]).status_code == 404
    assert put(url).status_code == 200


def test_storage_rejects_expired_url(tmp_path: Path) -> None:
    with Sandbox(accounts=ACCOUNTS, upload_ttl_s=0.01) as sb, \
            httpx2.Client(base_url=sb.base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        ticket = api.post("/files", json={"contentType": "image/png"}).json()["data"]
        assert ticket["expiresIn"] == 1
        expires = int(ticket["uploadUrl"].split("expires=")[1].split("&")[0])
        wait_until(lambda: time.time() >= expires, timeout=3)
        r = PLAIN.put(ticket["uploadUrl"], content=b"x", headers={"Content-Type": "image/png"})
        assert r.status_code == 403 and "<Code>AccessDenied</Code>" in r.text
        assert "Request has expired" in r.text
        cdn = PLAIN.get(ticket["url"])
        assert cdn.status_code == 404 and "<Code>NoSuchKey</Code>" in cdn.text


# --------------------------------------------------------------------------- enrichment
def test_enrichment_completes_for_real_png(sb: Sandbox, api: httpx2.Client) -> None:
    url = upload(api, make_png(64, 48, (240, 10, 10)))
    pid = sb.create_pack("P")
    iid = api.post(f"/packs/{pid}/images", json={"image_url": url}).json()["data"]["id"]
    first = api.get(f"/packs/{pid}").json()["data"]["images"][0]["metadata"]
    assert first["status"] in ("pending", "processing")
    meta = wait_until(lambda: image_status(sb, pid, iid))
    assert meta["status"] == "completed" and meta["error"] is None
    assert meta["description"] == "A 64×48 red PNG image."
    assert meta["keywords"] == ["png", "red", "landscape", "64x48"]
    assert meta["generated_at"].endswith("Z") and len(meta["generated_at"]) == 24
    again = api.get(f"/packs/{pid}").json()["data"]["images"][0]["metadata"]
    assert again == meta


def test_enrichment_fails_for_text_and_foreign_urls(sb: Sandbox, api: httpx2.Client) -> None:
    url = upload(api, b"just some text, not an image", "image/jpeg")
    pid = sb.create_pack("P")
    text_id = api.post(f"/packs/{pid}/images", json={"image_url": url}).json()["data"]["id"]
    foreign_id = sb.add_image(pid, "https://elsewhere.example/p.png")
    text_meta = wait_until(lambda: image_status(sb, pid, text_id))
    assert text_meta["status"] == "failed" and text_meta["error"] == "image bytes are not a supported image"
    foreign_meta = wait_until(lambda: image_status(sb, pid, foreign_id))
    assert foreign_meta["status"] == "failed" and foreign_meta["error"] == "image URL could not be fetched"
    assert text_meta["description"] is None and text_meta["keywords"] == []


# ------------------------------------------------------------------------------- faults
def test_fault_429_with_and_without_retry_after(sb: Sandbox, api: httpx2.Client) -> None:
    sb.inject("429", "GET", "/packs")
    sb.inject("429-bare", "GET", "/packs")
    r = api.get("/packs")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error_code"] == "rate_limited"
    r = api.get("/packs")
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert api.get("/packs").status_code == 200


def test_fault_reset_drops_connection(sb: Sandbox, api: httpx2.Client) -> None:
    sb.inject("reset", "POST", "/packs")
    with pytest.raises(httpx2.TransportError):
        api.post("/packs", json={"name": "a"})
    assert sb.packs() == []
    sb.inject("reset-after", "POST", "/packs")
    with pytest.raises(httpx2.TransportError):
        api.post("/packs", json={"name": "b"})
    assert [p["name"] for p in sb.packs()] == ["b"]
    assert api.get("/packs").status_code == 200


def test_fault_500_after_did_the_work(sb: Sandbox, api: httpx2.Client) -> None:
    pid = sb.create_pack("P")
    sb.inject("500-after", route="/packs/{id}/images")
    r = api.post(f"/packs/{pid}/images", json={"image_url": "https://x/a.png"})
    assert r.status_code == 500 and r.json()["ok"] is False
    pack = sb.pack(pid)
    assert pack is not None and pack["image_count"] == 1
    sb.inject("500", route="/packs/{id}/images")
    assert api.post(f"/packs/{pid}/images", json={"image_url": "https://x/b.png"}).status_code == 500
    pack = sb.pack(pid)
    assert pack is not None and pack["image_count"] == 1


def test_fault_gateway_and_garbage_answers(sb: Sandbox, api: httpx2.Client) -> None:
    sb.inject("502", count=2)
    for _ in range(2):
        r = api.get("/packs")
        assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
        assert r.text == "<html><body><h1>502 Bad Gateway</h1></body></html>"
    for kind in ("503", "504"):
        sb.inject(kind)
        r = api.get("/packs")
        assert r.status_code == int(kind) and r.json()["code"] == int(kind)
    sb.inject("not-json", "GET")
    r = api.get("/packs")
    assert r.status_code == 200 and r.text == "<html>oops</html>"
    with pytest.raises(json.JSONDecodeError):
        r.json()
    assert api.get("/packs").json()["ok"] is True


def test_fault_expire_and_route_matching(sb: Sandbox, api: httpx2.Client) -> None:
    sb.inject("expire")  # only storage PUTs qualify, so API calls pass untouched
    ticket = api.post("/files", json={"contentType": "image/png"}).json()["data"]
    r = PLAIN.put(ticket["uploadUrl"], content=b"x", headers={"Content-Type": "image/png"})
    assert r.status_code == 403 and "Request has expired" in r.text
    assert PLAIN.put(ticket["uploadUrl"], content=b"x", headers={"Content-Type": "image/png"}).status_code == 200
    sb.inject("500", "DELETE", "/packs/{id}")
    assert api.get("/packs").status_code == 200
    assert api.post("/packs", json={"name": "a"}).status_code == 201


def test_random_faults_and_latency() -> None:
    faults = Faults(latency_s=0.05, rate=1.0, kinds=("503",), seed=7)
    with Sandbox(accounts=ACCOUNTS, faults=faults) as sb:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        start = time.monotonic()
        assert [PLAIN.get(sb.base_url + "/packs", headers=headers).status_code for _ in range(3)] == [503] * 3
        assert time.monotonic() - start >= 0.15
        pid = sb.create_pack("P")
        sb.add_image(pid, "https://x/a.png")
        ticket_url = f"{sb.origin}/cdn/{'0' * 32}.png"
        assert PLAIN.get(ticket_url).status_code == 404  # CDN never gets random faults
        faults.rate = 0.0
        assert PLAIN.get(sb.base_url + "/packs", headers=headers).status_code == 200


# ----------------------------------------------------------------------- calls/lifecycle
def test_calls_counting(sb: Sandbox, api: httpx2.Client) -> None:
    pid = api.post("/packs", json={"name": "a"}).json()["data"]["id"]
    api.get(f"/packs/{pid}")
    sb.inject("429")
    api.get(f"/packs/{pid}")
    url = upload(api, make_png(2, 2, (0, 0, 255)))
    iid = api.post(f"/packs/{pid}/images", json={"image_url": url}).json()["data"]["id"]
    api.delete(f"/packs/{pid}/images/{iid}")
    PLAIN.get(url)
    assert sb.calls == {
        ("POST", "/packs"): 1, ("GET", "/packs/{id}"): 2, ("POST", "/files"): 1, ("PUT", "storage"): 1,
        ("POST", "/packs/{id}/images"): 1, ("DELETE", "/packs/{id}/images/{image_id}"): 1, ("GET", "cdn"): 1,
    }
    assert sb.mutating_calls() == 5
    sb.reset_calls()
    assert sb.calls == {} and sb.mutating_calls() == 0


def test_keep_alive_has_no_delayed_ack_stalls(api: httpx2.Client) -> None:
    api.get("/packs")
    start = time.monotonic()
    for i in range(20):
        assert api.post("/packs", json={"name": f"p{i}"}).status_code == 201
    assert time.monotonic() - start < 0.6


def test_helpers_and_stop(sb: Sandbox) -> None:
    pid = sb.create_pack("Seeded", scope="ws-9")
    iid = sb.add_image(pid, "https://x/a.gif", file_name="a.gif")
    pack = sb.pack(pid)
    assert pack is not None and [i["id"] for i in pack["images"]] == [iid]
    sb.remove_image(pid, iid)
    pack = sb.pack(pid)
    assert pack is not None and pack["image_count"] == 0
    with pytest.raises(KeyError):
        sb.remove_image(pid, iid)
    sb.delete_pack(pid)
    assert sb.pack(pid) is None and sb.packs() == []
    base = sb.base_url
    sb.stop()
    with pytest.raises(httpx2.ConnectError):
        PLAIN.get(base + "/packs", headers={"Authorization": f"Bearer {TOKEN}"})


def test_state_persists_across_instances(tmp_path: Path) -> None:
    state = tmp_path / "state" / "sandbox.json"
    png = make_png(8, 8, (20, 200, 40))
    with Sandbox(accounts=ACCOUNTS, state_path=state, enrich_delays=(0.0, 0.0)) as first, \
            httpx2.Client(base_url=first.base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        pid = api.post("/packs", json={"name": "Kept", "is_public": True}).json()["data"]["id"]
        url = upload(api, png)
        iid = api.post(f"/packs/{pid}/images", json={"image_url": url}).json()["data"]["id"]
        before = first.pack(pid)
        first_port = first.port
    assert state.exists() and [p.name for p in state.parent.iterdir()] == ["sandbox.json"]
    with Sandbox(accounts=ACCOUNTS, state_path=state) as second:
        after = second.pack(pid)
        assert after == before and after is not None
        assert after["images"][0]["id"] == iid
        assert after["images"][0]["metadata"]["keywords"][:2] == ["png", "green"]
        moved = url.replace(f":{first_port}/", f":{second.port}/")
        assert PLAIN.get(moved).content == png
        second.delete_pack(pid)
    with Sandbox(accounts=ACCOUNTS, state_path=state) as third:
        assert third.packs() == []


# ---------------------------------------------------------------------------------- link
MB = 1_000_000


def timed_put(sb: Sandbox, api: httpx2.Client, size: int) -> float:
    """Seconds from asking for an upload URL's PUT to its answer, for ``size`` bytes (a PNG's signature
    first, the rest zeros: the bytes only have to be carried)."""
    ticket = api.post("/files", json={"contentType": "image/png", "filename": "big.png"}).json()["data"]
    body = b"\x89PNG\r\n\x1a\n" + bytes(size - 8)
    start = time.monotonic()
    with httpx2.Client(timeout=60) as plain:  # a connection of its own: the per-connection bucket is its
        put = plain.put(ticket["uploadUrl"], content=body, headers={"Content-Type": "image/png"})
    assert put.status_code == 200, put.text
    return time.monotonic() - start


def concurrent_puts(sb: Sandbox, api: httpx2.Client, size: int, count: int) -> tuple[list[float], float]:
    """``count`` PUTs of ``size`` bytes started together: each one's seconds, and the seconds until the last."""
    barrier = threading.Barrier(count)

    def one() -> float:
        barrier.wait()
        return timed_put(sb, api, size)

    start = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        each = list(pool.map(lambda _: one(), range(count)))
    return each, time.monotonic() - start


def test_link_rate_paces_a_storage_put() -> None:
    """A 2 MB PUT through a 1 MB/s link takes at least 2 s (the body is read at the rate), and the link
    counts the bytes it carried."""
    with Sandbox(accounts=ACCOUNTS, link_rate=LinkRate(total=1 * MB)) as sb, \
            httpx2.Client(base_url=sb.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as api:
        assert timed_put(sb, api, 2 * MB) >= 2.0 * 0.98
        assert sb.link_moved() == {"up": 2 * MB, "down": 0}


def test_link_total_is_shared_by_concurrent_puts(sb: Sandbox, api: httpx2.Client) -> None:
    """Two 2 MB PUTs started together through a 2 MB/s link: 4 MB need 2 s, and neither gets the link to
    itself (alone, one would take 1 s)."""
    sb.set_link_rate(LinkRate(total=2 * MB))
    each, both = concurrent_puts(sb, api, 2 * MB, 2)
    assert both >= 2.0 * 0.98
    assert min(each) >= 1.5


def test_link_per_connection_rate_applies_alone(sb: Sandbox, api: httpx2.Client) -> None:
    """A per-connection rate of 1 MB/s, no total: each of four 1 MB PUTs takes at least 1 s, and they
    move side by side (one after another, or through a shared 1 MB/s, they would need 4 s)."""
    sb.set_link_rate(LinkRate(per_connection=1 * MB))
    each, all_four = concurrent_puts(sb, api, 1 * MB, 4)
    assert min(each) >= 1.0 * 0.98
    assert all_four < 3.0


def test_link_paces_cdn_downloads(sb: Sandbox) -> None:
    """A CDN body goes out at the link's rate: 2 MB at 1 MB/s take at least 2 s; the link counts them."""
    url = sb.upload(b"\x89PNG\r\n\x1a\n" + bytes(2 * MB - 8))
    sb.set_link_rate(LinkRate(per_connection=1 * MB, total=4 * MB))
    start = time.monotonic()
    got = PLAIN.get(url, timeout=60)
    assert got.status_code == 200 and len(got.content) == 2 * MB
    assert time.monotonic() - start >= 2.0 * 0.98
    assert sb.link_moved()["down"] == 2 * MB


def test_link_rate_zero_is_unlimited(sb: Sandbox, api: httpx2.Client) -> None:
    """Rates of 0 switch the limits off, also at run time: 2 MB after a 1 kB/s link was lifted take far
    less than the 2,000 s that link would need."""
    sb.set_link_rate(LinkRate(per_connection=1000, total=1000))
    sb.set_link_rate(LinkRate())
    assert timed_put(sb, api, 2 * MB) < 30


@pytest.mark.parametrize(("text", "rate"), [("20M", 20 * 2**20), ("512k", 512 * 1024), ("100", 100 * 1024),
                                            ("4096B", 4096), ("1.5M", 1.5 * 2**20), ("0", 0.0), ("off", 0.0),
                                            ("", 0.0)])
def test_parse_rate_reads_rclone_units(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


def test_parse_rate_refuses_in_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"^'fast' is not a rate: write bytes per second, e\.g\. 20M"):
        parse_rate("fast")
    with pytest.raises(ValueError, match="0 or more"):
        LinkRate(total=-1)


def test_packsync_sandbox_takes_its_link_rate_at_start(tmp_path: Path) -> None:
    """``packsync sandbox --link-rate 1M`` serves storage PUTs at 1 MiB/s: 2 MiB take at least 2 s."""
    env = {k: v for k, v in os.environ.items() if k not in ("GENVIRAL_TOKEN", "ASTRIA_API_KEY")}
    proc = subprocess.Popen([sys.executable, "-m", "packsync", "sandbox", "--port", "0", "--link-rate", "1M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        listening = wait_until(lambda: next((line for line in lines if "listening on" in line), None), timeout=30)
        base_url = listening.split("listening on ")[1].split()[0]
        with httpx2.Client(base_url=base_url, headers={"Authorization": f"Bearer {DEMO_TOKEN}"}, timeout=30) as api:
            ticket = api.post("/files", json={"contentType": "image/png"}).json()["data"]
            start = time.monotonic()
            put = PLAIN.put(ticket["uploadUrl"], content=b"\x89PNG\r\n\x1a\n" + bytes(2 * 2**20 - 8),
                            headers={"Content-Type": "image/png"}, timeout=30)
            assert put.status_code == 200
            assert time.monotonic() - start >= 2.0 * 0.98
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def test_packsync_sandbox_refuses_a_rate_in_one_sentence() -> None:
    done = subprocess.run([sys.executable, "-m", "packsync", "sandbox", "--connection-rate", "fast"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Invalid value for '--connection-rate': 'fast' is not a rate" in done.stderr
    assert "Traceback" not in done.stderr


def test_storage_keeps_nothing_of_a_put_cut_short(sb: Sandbox, api: httpx2.Client) -> None:
    """A client that hangs up part-way through its PUT body leaves nothing in storage (as S3 does), with the
    link on or off."""
    sb.set_link_rate(LinkRate(total=10 * MB))
    ticket = api.post("/files", json={"contentType": "image/png"}).json()["data"]
    target = urlsplit(ticket["uploadUrl"])
    with socket.create_connection((target.hostname or "", target.port or 80), timeout=10) as conn:
        conn.sendall(f"PUT {target.path}?{target.query} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {MB}\r\n\r\n".encode() + b"\x89PNG\r\n\x1a\n" + bytes(100_000))
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(100).startswith(b"HTTP/1.1 400")
    assert PLAIN.get(ticket["url"]).status_code == 404


# --------------------------------------------------------------------------- Astria tunes
ASTRIA_KEY = "sd_tunes.secret"
ASTRIA_OTHER = "sd_other_user.secret"
PROMPT_FIELDS = {"id", "text", "negative_prompt", "cfg_scale", "steps", "seed", "trained_at",
                 "started_training_at", "created_at", "updated_at", "tune_id", "url"}
TUNE_ROUTES = ("/tunes", "/tunes/{tune}", "/tunes/{tune}/prompts", "/tunes/{tune}/prompts/{prompt}")


@pytest.fixture
def astria(sb: Sandbox) -> Iterator[httpx2.Client]:
    """A client of the sandbox's Astria API with user 1's key (user 2 has ``ASTRIA_OTHER``)."""
    sb.astria.users = {ASTRIA_KEY: 1, ASTRIA_OTHER: 2}
    with httpx2.Client(base_url=sb.astria_url, headers={"Authorization": f"Bearer {ASTRIA_KEY}"},
                       timeout=5) as client:
        yield client


def prompt_page(astria: httpx2.Client, tune_id: int, offset: int | None = None,
                **headers: str) -> list[dict[str, Any]]:
    params = {} if offset is None else {"offset": offset}
    r = astria.get(f"/tunes/{tune_id}/prompts", params=params, headers=headers)
    assert r.status_code == 200, r.text
    page: list[dict[str, Any]] = r.json()
    return page


def test_tune_prompts_come_twenty_a_page_newest_first_until_an_empty_page(
        sb: Sandbox, astria: httpx2.Client) -> None:
    tune = sb.astria.add_tune("Me, 2026", "man")
    ids = [sb.astria.add_prompt(tune, f"ohwx man, portrait {n}") for n in range(45)]
    sb.reset_calls()

    pages = [prompt_page(astria, tune, offset) for offset in (0, 20, 40, 60)]

    assert [len(page) for page in pages] == [20, 20, 5, 0]
    assert [p["id"] for page in pages for p in page] == ids[::-1]
    assert sb.calls == {("GET", "astria:/tunes/{id}/prompts"): 4}
    assert prompt_page(astria, tune) == pages[0]  # no offset: the first page
    assert [p["id"] for p in prompt_page(astria, tune, 5)] == ids[::-1][5:25]  # an offset counts prompts
    assert prompt_page(astria, tune, 45) == []


@pytest.mark.parametrize("offset", ["-1", "abc", "", "1.5", "\u0663"])
def test_a_bad_offset_is_refused_with_422(sb: Sandbox, astria: httpx2.Client, offset: str) -> None:
    tune = sb.astria.add_tune("Me")
    sb.astria.add_prompt(tune, "ohwx woman")
    r = astria.get(f"/tunes/{tune}/prompts", params={"offset": offset})
    assert (r.status_code, r.json()) == (422, {"offset": ["must be a non-negative integer"]})


def test_a_prompt_has_no_images_field_until_generated_then_its_urls(sb: Sandbox, astria: httpx2.Client) -> None:
    tune = sb.astria.add_tune("Me")
    pending = sb.astria.add_prompt(tune, "ohwx woman, studio light")
    png, jpeg = make_png(4, 4, (10, 200, 30)), b"\xff\xd8\xff\xe0" + b"\x00" * 64
    done = sb.astria.add_prompt(tune, "ohwx woman, beach", images=[png, jpeg])

    listed = {p["id"]: p for p in prompt_page(astria, tune)}
    assert set(listed[pending]) == PROMPT_FIELDS and listed[pending]["trained_at"] is None
    assert set(listed[done]) == PROMPT_FIELDS | {"images"} and listed[done]["trained_at"] is not None
    assert listed[pending]["text"] == "ohwx woman, studio light" and listed[done]["tune_id"] == tune
    served = [PLAIN.get(url) for url in listed[done]["images"]]
    assert [(r.content, r.headers["content-type"]) for r in served] == [(png, "image/png"), (jpeg, "image/jpeg")]
    assert all("." not in urlsplit(url).path.rsplit("/", 1)[1] for url in listed[done]["images"])

    later = make_png(4, 4, (1, 2, 3))
    url = sb.astria.generate(tune, pending, later)
    one = astria.get(f"/tunes/{tune}/prompts/{pending}").json()
    assert set(one) == PROMPT_FIELDS | {"images"} and one["images"] == [url] and one["trained_at"] is not None
    assert PLAIN.get(url).content == later
    again = sb.astria.generate(tune, pending, make_png(4, 4, (3, 2, 1)))
    assert {p["id"]: p for p in prompt_page(astria, tune)}[pending]["images"] == [url, again]
    assert astria.get(f"/tunes/{tune}/prompts/{done}").json() == listed[done]


def test_tunes_answer_the_documented_fields_to_their_own_user_only(sb: Sandbox, astria: httpx2.Client) -> None:
    trained = 1_790_000_000.0
    mine = sb.astria.add_tune("Product shots", "shirt", trained_at=trained)
    newer = sb.astria.add_tune("Me", "woman")
    theirs = sb.astria.add_tune("Not mine", user_id=2)
    prompt = sb.astria.add_prompt(theirs, "ohwx man", images=[make_png(2, 2, (0, 0, 0))])
    own_prompt = sb.astria.add_prompt(mine, "ohwx shirt")

    listed = astria.get("/tunes").json()
    assert [t["id"] for t in listed] == [newer, mine]
    assert listed[1] == astria.get(f"/tunes/{mine}").json()
    assert set(listed[1]) == {"id", "title", "name", "created_at", "updated_at", "trained_at"}
    assert (listed[1]["title"], listed[1]["name"], listed[1]["trained_at"]) == (
        "Product shots", "shirt", "2026-09-21T14:13:20.000Z")
    for path in (f"/tunes/{theirs}", f"/tunes/{theirs}/prompts", f"/tunes/{theirs}/prompts/{prompt}",
                 f"/tunes/{mine}/prompts/{prompt}", f"/tunes/{theirs}/prompts/{own_prompt}",
                 "/tunes/999999", "/tunes/999999/prompts", "/tunes/x", f"/tunes/{mine}/prompts/x"):
        r = astria.get(path)
        assert (r.status_code, r.json()) == (404, {"error": "Not found"}), path
    other = astria.get(f"/tunes/{theirs}", headers={"Authorization": f"Bearer {ASTRIA_OTHER}"})
    assert other.status_code == 200 and other.json()["title"] == "Not mine"


def test_a_workspace_tune_is_seen_only_with_its_workspace_header(sb: Sandbox, astria: httpx2.Client) -> None:
    plain = sb.astria.add_tune("Personal")
    shared = sb.astria.add_tune("Team", workspace="ws-team")
    prompt = sb.astria.add_prompt(shared, "ohwx woman", images=[make_png(2, 2, (9, 9, 9))])
    team = {"X-Workspace-Id": "ws-team"}

    assert [t["id"] for t in astria.get("/tunes").json()] == [plain]
    assert [t["id"] for t in astria.get("/tunes", headers=team).json()] == [shared]
    assert astria.get("/tunes", headers={"X-Workspace-Id": "ws-other"}).json() == []
    assert astria.get(f"/tunes/{shared}", headers=team).status_code == 200
    assert [p["id"] for p in prompt_page(astria, shared, 0, **team)] == [prompt]
    assert astria.get(f"/tunes/{shared}/prompts/{prompt}", headers=team).status_code == 200
    for headers in ({}, {"X-Workspace-Id": "ws-other"}):
        for path in (f"/tunes/{shared}", f"/tunes/{shared}/prompts", f"/tunes/{shared}/prompts/{prompt}"):
            assert astria.get(path, headers=headers).status_code == 404, (path, headers)
    assert astria.get(f"/tunes/{plain}", headers=team).status_code == 404


def test_ignore_offset_answers_the_first_page_to_every_offset(sb: Sandbox, astria: httpx2.Client) -> None:
    tune = sb.astria.add_tune("Me")
    for n in range(45):
        sb.astria.add_prompt(tune, f"ohwx woman {n}")
    first = prompt_page(astria, tune, 0)

    sb.astria.ignore_offset = True

    assert [prompt_page(astria, tune, offset) for offset in (20, 40, 60)] == [first, first, first]
    assert len(first) == 20
    sb.astria.ignore_offset = False
    assert len(prompt_page(astria, tune, 40)) == 5


def test_removed_prompts_and_deleted_tunes_leave_the_answers(sb: Sandbox, astria: httpx2.Client) -> None:
    tune = sb.astria.add_tune("Me")
    kept, removed = (sb.astria.add_prompt(tune, text) for text in ("kept", "removed"))

    sb.astria.remove_prompt(tune, removed)

    assert [p["id"] for p in prompt_page(astria, tune)] == [kept]
    assert astria.get(f"/tunes/{tune}/prompts/{removed}").status_code == 404
    with pytest.raises(KeyError):
        sb.astria.remove_prompt(tune, removed)
    with pytest.raises(KeyError):
        sb.astria.generate(tune, removed, b"x")
    sb.astria.delete_tune(tune)
    assert astria.get("/tunes").json() == []
    assert [astria.get(path).status_code for path in (f"/tunes/{tune}", f"/tunes/{tune}/prompts")] == [404, 404]


def test_rewrite_reaches_the_tune_routes(sb: Sandbox, astria: httpx2.Client) -> None:
    tune = sb.astria.add_tune("Me")
    sb.astria.add_prompt(tune, "ohwx woman", images=[make_png(2, 2, (5, 5, 5))])

    def drop_images(reply: Any) -> Any:
        reply.body = json.dumps([{k: v for k, v in p.items() if k != "images"}
                                 for p in json.loads(reply.body)]).encode()
        return reply

    sb.rewrite("GET", "astria:/tunes/{id}/prompts", drop_images, count=1)

    assert "images" not in prompt_page(astria, tune)[0]
    assert "images" in prompt_page(astria, tune)[0]


@pytest.mark.parametrize("authorization", [None, "Bearer sd_unknown.secret", f"Basic {ASTRIA_KEY}",
                                           f"Bearer {TOKEN}"])
def test_the_tune_routes_refuse_a_missing_or_wrong_key(sb: Sandbox, astria: httpx2.Client,
                                                       authorization: str | None) -> None:
    tune = sb.astria.add_tune("Me")
    prompt = sb.astria.add_prompt(tune, "ohwx woman", images=[make_png(2, 2, (7, 7, 7))])
    headers = {"Authorization": authorization} if authorization else {}
    for route in TUNE_ROUTES:
        r = PLAIN.get(sb.astria_url + route.format(tune=tune, prompt=prompt), headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"}), route
    assert astria.get(f"/tunes/{tune}/prompts/{prompt}").status_code == 200


def test_a_prompt_added_during_a_walk_shifts_the_later_pages(sb: Sandbox, astria: httpx2.Client) -> None:
    """Pages are newest first by offset, as on Astria: a generation requested mid-walk pushes the last
    prompt of a page read onto the next page, so a client meets it twice (and must count it once)."""
    tune = sb.astria.add_tune("Me")
    ids = [sb.astria.add_prompt(tune, f"ohwx woman {n}") for n in range(25)]
    first = prompt_page(astria, tune, 0)

    sb.astria.add_prompt(tune, "ohwx woman, requested mid-walk")
    second = prompt_page(astria, tune, 20)

    assert [p["id"] for p in second] == [first[-1]["id"], *ids[4::-1]]


def test_the_demo_tune_has_generated_prompts_and_one_pending(sb: Sandbox) -> None:
    tune = seed_astria_tune_demo(sb)
    with httpx2.Client(base_url=sb.astria_url, headers={"Authorization": f"Bearer {ASTRIA_DEMO_TOKEN}"},
                       timeout=5) as client:
        assert [t["id"] for t in client.get("/tunes").json()] == [tune]
        prompts = prompt_page(client, tune)
    assert [len(p.get("images", [])) for p in prompts] == [0, 1, 2]
    assert "images" not in prompts[0]
    assert all(PLAIN.get(url).content.startswith(b"\x89PNG") for p in prompts for url in p.get("images", []))
