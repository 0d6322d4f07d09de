"""Hostile text and rows: half an emoji from any API, a sidecar no parser should trust, a state whose
rows are not what packsync wrote. Each ends in one sentence, never a traceback, and nothing else stops."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest
from conftest import ASTRIA_TOKEN, Env, image, write
from helpers import StartHere, wait_until

from packsync.remote import answers
from packsync.sandbox.server import Reply
from packsync.xmp import MAX_BYTES, Fields, render, without_ours

PACK = ("GET", "/packs/{id}")
#: Half an emoji, as a JavaScript ``slice`` through one leaves it.
HALF = "\ud83d"

#: Rows a state can hold that packsync never writes (another tool, a damaged disk, a hand edit).
CORRUPT_ROWS = [
    pytest.param("UPDATE meta SET value = 'abc' WHERE key = 'schema'", id="schema-not-a-number"),
    pytest.param("UPDATE images SET keywords = 'not json'", id="keywords-not-json"),
    pytest.param("UPDATE images SET keywords = '{\"a\": 1}'", id="keywords-not-a-list"),
    pytest.param("UPDATE files SET sha256 = NULL", id="file-sha256-null"),
    pytest.param("UPDATE files SET size = 'big'", id="file-size-text"),
    pytest.param("UPDATE images SET added_at = 'yesterday'", id="image-added-at-text"),
    pytest.param("UPDATE images SET description = x'ff00'", id="description-a-blob"),
    pytest.param("UPDATE blobs SET uploaded = 'yes'", id="blob-uploaded-text"),
    pytest.param("UPDATE mappings SET synced_at = 'noon'", id="mapping-synced-at-text"),
    pytest.param("UPDATE mappings SET pack_id = x'07'", id="mapping-pack-id-a-blob"),
    pytest.param("UPDATE daemon SET queue = 'many'", id="daemon-queue-text"),
]


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    for text in (result.stdout, result.stderr):
        assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("corruption", CORRUPT_ROWS)
def test_a_row_packsync_never_wrote_is_a_corrupt_state_in_one_sentence(env: Env, corruption: str) -> None:
    """A value of the wrong type, JSON that is not, a NULL where packsync always writes one: every command
    that reads the state ends in the corrupt-state sentence (exit 2), never a traceback, and changes nothing."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    assert env.cli("run", "--wait-timeout", "5").returncode == 0
    with closing(sqlite3.connect(env.state_path, isolation_level=None)) as db:
        db.execute("INSERT OR REPLACE INTO daemon (id, pid, started_at, last_full_scan, queue, state, last_error,"
                   " updated_at) VALUES (1, NULL, NULL, NULL, 0, 'stopped', NULL, NULL)")
        db.execute(corruption)
        before = list(db.iterdump())

    for args in (("status",), ("status", "--json", "--files"), ("search", "a"), ("run", "--dry-run"), ("run",)):
        result = env.cli(*args)
        _no_traceback(result)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "is corrupt" in result.stderr and "Move it away" in result.stderr, (args, result.stderr)
    with closing(sqlite3.connect(env.state_path, isolation_level=None)) as db:
        assert list(db.iterdump()) == before


def test_keywords_on_record_that_are_not_words_count_as_none(env: Env) -> None:
    """As in an answer, a keyword that is not text (a number, a null) is left out, in every view and sidecar."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, sidecars="xmp")
    write(folder / "a.png", image())
    assert env.cli("run", "--wait-timeout", "5").returncode == 0
    with closing(sqlite3.connect(env.state_path, isolation_level=None)) as db:
        db.execute("UPDATE images SET keywords = '[1, null, \"kept\"]'")
        db.execute("DELETE FROM sidecars")

    results = [env.cli(*args) for args in (("status", "--files"), ("status", "--json", "--files"), ("search", "kept"),
                                           ("run",))]

    for result in results:
        _no_traceback(result)
        assert result.returncode == 0, (result.stdout, result.stderr)
    listed = json.loads(results[1].stdout)["mappings"][0]["file_list"][0]["metadata"]
    assert listed["keywords"] == ["kept"]
    assert b"<rdf:li>kept</rdf:li>" in (folder / "a.png.xmp").read_bytes()


# -- half an emoji, whatever carries it -----------------------------------------------------------------

def _encoded(value: Any, encoding: str) -> bytes:
    """``value`` as a JSON text in ``encoding``: ASCII with escapes (``\\ud83d``), or, for an encoding
    named ``…+raw``, each character as that encoding writes it, a lone surrogate included."""
    if encoding.endswith("+raw"):
        return json.dumps(value, ensure_ascii=False).encode(encoding.removesuffix("+raw"), "surrogatepass")
    return json.dumps(value).encode(encoding)


def _json_rewrite(change: Callable[[Any], None], encoding: str) -> Callable[[Reply], Reply]:
    def rewrite(reply: Reply) -> Reply:
        body = json.loads(reply.body)
        change(body)
        return Reply(reply.status, _encoded(body, encoding), reply.content_type, reply.headers)

    return rewrite


def _described_by_halves(envelope: dict[str, Any]) -> None:
    envelope["data"]["name"] = f"Brand {HALF}"
    for item in envelope["data"]["images"]:
        item["metadata"] = {"status": "completed", "description": f"a smile {HALF}", "keywords": ["grin\udc00"],
                            "model": f"vision-{HALF}"}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le+raw", "utf-32", "utf-8+raw"])
def test_half_an_emoji_in_json_of_any_unicode_encoding_arrives_whole(env: Env, encoding: str) -> None:
    """JSON may come as UTF-16 or UTF-32 (``json`` reads them all): half an emoji in it, escaped or
    not, arrives as U+FFFD however the answer was encoded, in the description, keywords and pack name."""
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())
    env.sandbox.rewrite(*PACK, _json_rewrite(_described_by_halves, encoding))

    def names(envelope: dict[str, Any]) -> None:
        for entry in envelope["data"]["packs"]:
            entry["name"] = f"Brand {HALF}"

    env.sandbox.rewrite("GET", "/packs", _json_rewrite(names, encoding))

    result = env.cli("run", "--wait-timeout", "5")
    document = env.cli("status", "--json", "--files", token=None)
    found = env.cli("search", "smile", token=None)
    listed = env.cli("packs")

    assert "Brand \ufffd" in listed.stdout
    for output in (result, document, found, listed):
        _no_traceback(output)
        assert output.returncode == 0, output.stdout + output.stderr
    assert json.loads(document.stdout)["mappings"][0]["file_list"][0]["metadata"] == {
        "status": "completed", "description": "a smile \ufffd", "keywords": ["grin\ufffd"], "error": None}
    assert "a.png" in found.stdout


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8+raw"])
def test_the_quick_decoders_leave_half_an_emoji_to_the_one_that_makes_it_whole(encoding: str) -> None:
    """A pack's answer is decoded in one pass (msgspec) only when it is exactly as documented; msgspec
    refuses a lone surrogate, so such an answer goes through ``Answer.json``, which makes it whole."""
    envelope = {"ok": True, "data": {"id": "p1", "name": "n", "images": [
        {"id": "i1", "url": "https://x/1", "metadata": {"status": "completed", "description": "a",
                                                         "keywords": [], "model": None}}]}}
    _described_by_halves(envelope)
    body = _encoded(envelope, encoding)

    assert answers.pack_answer(body) is None
    assert answers.pack_metadata(body, {"i1"}) is None
    assert answers.pack_head(body) is None


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8+raw", "utf-16"])
def test_half_an_emoji_in_an_astria_pack_is_stored_and_shown_whole(env: Env, encoding: str) -> None:
    """An Astria pack's title, class names and prompt texts (gallery packs are written by strangers) with
    half an emoji: the pack is mirrored, listed and shown, each half a U+FFFD."""
    pack_id = env.sandbox.astria.add_pack("Headshots")
    env.sandbox.astria.add_image(pack_id, "woman", image())
    env.map_astria(pack_id, pack="Mirror")

    def pack(body: dict[str, Any]) -> None:
        body["title"] = f"Heads {HALF}"
        body["prompts_per_class"] = {f"wo{HALF}man": [dict(prompt, text=f"a {HALF}", title=HALF)
                                                      for prompt in body["prompts_per_class"]["woman"]]}

    def packs(body: list[dict[str, Any]]) -> None:
        for entry in body:
            entry["title"] = f"Heads {HALF}"
            entry["cost_mc_hash"] = {f"wo{HALF}man": 1}

    env.sandbox.rewrite("GET", "astria:/p/{id}", _json_rewrite(pack, encoding))
    env.sandbox.rewrite("GET", "astria:/packs", _json_rewrite(packs, encoding))

    result = env.cli("run", "--wait-timeout", "5")
    status = env.cli("status", "--json", "--files", token=None)
    listed = env.cli("astria", "packs", "--json")

    for output in (result, status, listed):
        _no_traceback(output)
        assert output.returncode == 0, output.stdout + output.stderr
    assert env.pack_named("Mirror")["image_count"] == 1
    mapping = json.loads(status.stdout)["mappings"][0]
    assert mapping["source"] == f"astria:{pack_id} (Heads \ufffd)"
    assert [f["path"].split("-")[0] for f in mapping["file_list"]] == ["wo\ufffdman"]
    summaries = json.loads(listed.stdout)["packs"]
    assert [(p["title"], p["classes"]) for p in summaries] == [("Heads \ufffd", ["wo\ufffdman"])]
    assert ASTRIA_TOKEN not in listed.stdout


def test_the_daemon_s_metadata_rounds_store_half_an_emoji_whole(daemon_env: Env, start_here: StartHere) -> None:
    """The daemon's metadata round reads the same answers: it stores them and goes on, never restarting."""
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    daemon_env.sandbox.rewrite(*PACK, _json_rewrite(_described_by_halves, "utf-16"))
    daemon = start_here()
    write(folder / "a.png", image())

    def described() -> bool:
        listed = json.loads(daemon_env.cli("status", "--json", "--files", token=None).stdout)["mappings"][0]
        # (a file listed before its image is added has no metadata yet: that is a wait, not an answer)
        metadata = (listed["file_list"][0]["metadata"] if listed["file_list"] else None) or {}
        return bool(metadata.get("description") == "a smile \ufffd")

    wait_until(described, timeout=60, what="the description stored")
    assert "Traceback" not in daemon.output() and "restart" not in daemon.output()
    assert daemon.stop() is None


# -- sidecars no parser should trust -------------------------------------------------------------------

_OPEN = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
         b'<rdf:Description rdf:about="">')
_CLOSE = b"</rdf:Description></rdf:RDF></x:xmpmeta>"
_LAUGHS = b'<!DOCTYPE x:xmpmeta [<!ENTITY a "lol">' + b"".join(
    b'<!ENTITY %s "%s">' % (bytes([98 + i]), bytes([97 + i]) * 0 + (b"&" + bytes([97 + i]) + b";") * 10)
    for i in range(9)) + b"]>"

HOSTILE_SIDECARS = [
    pytest.param(_OPEN + b"<a>" * 1100 + b"</a>" * 1100 + _CLOSE, "nested deeper than", id="1100-deep"),
    pytest.param(_LAUGHS + _OPEN + b"<t>&j;</t>" + _CLOSE, "a DTD", id="entity-expansion"),
    pytest.param(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + _OPEN + b"<t>&e;</t>" + _CLOSE,
                 "a DTD", id="external-entity"),
    pytest.param(b'<?xml version="1.0" encoding="no-such-codec"?>' + _OPEN + _CLOSE, "encoding", id="unknown-encoding"),
    pytest.param(b'<?xml version="1.0" encoding="utf-16"?>' + _OPEN + _CLOSE, "encoding", id="multibyte-declared"),
    pytest.param(_OPEN + b"<t>\xff\xfe</t>" + _CLOSE, "not well-formed", id="invalid-utf8"),
    pytest.param(_OPEN + b"<t>" + b"x" * (MAX_BYTES + 1) + b"</t>" + _CLOSE, "larger than", id="huge"),
]


@pytest.mark.parametrize(("hostile", "said"), HOSTILE_SIDECARS)
def test_a_sidecar_that_cannot_be_parsed_or_written_is_left_alone_and_the_others_are_written(
        env: Env, hostile: bytes, said: str) -> None:
    """However a sidecar fails (too deep to serialise, entities to expand, an encoding expat refuses,
    bytes UTF-8 forbids, too large), it is left as it is and reported; every other sidecar is written."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("pics", pack_id=pack_id, sidecars="xmp")
    write(folder / "a.png", image())
    write(folder / "b.png", image())
    (folder / "a.png.xmp").write_bytes(hostile)

    done = env.cli("run", "--wait-timeout", "5")

    _no_traceback(done)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (folder / "a.png.xmp").read_bytes() == hostile
    assert "a.png.xmp: sidecar not changed: " in done.stdout and said in done.stdout, done.stdout
    assert b"packsync:imageId" in (folder / "b.png.xmp").read_bytes()


def test_a_sidecar_that_cannot_be_parsed_is_kept_when_its_file_goes(env: Env) -> None:
    """Deleting the file asks whether packsync alone wrote its sidecar: one it cannot read is not."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("pics", pack_id=pack_id, sidecars="xmp")
    write(folder / "a.png", image())
    assert env.cli("run", "--wait-timeout", "5").returncode == 0
    deep = _OPEN + b"<a>" * 1100 + b"</a>" * 1100 + _CLOSE
    (folder / "a.png.xmp").write_bytes(deep)
    (folder / "a.png").unlink()

    done = env.cli("run", "--force")

    _no_traceback(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (folder / "a.png.xmp").read_bytes() == deep


def test_comments_and_processing_instructions_survive_a_merge() -> None:
    """What another program wrote besides elements (a comment, a processing instruction), inside the
    packet or around it, stays where it was; only packsync's own xpacket wrapper is written anew."""
    existing = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<!-- written by darktable -->\n'
                + _OPEN + b"<!-- the user's note --><?darktable keep=yes?>" + _CLOSE
                + b'\n<?app after-the-packet?>\n<?xpacket end="w"?>')

    merged = render(Fields("img-1", "a cat", ("cat",), "m"), existing)
    left = without_ours(merged)

    for packet in (merged, left):
        assert packet is not None
        assert b"<!-- written by darktable -->" in packet and b"<!-- the user's note -->" in packet
        assert b"<?darktable keep=yes?>" in packet and b"<?app after-the-packet?>" in packet
        assert packet.count(b"<?xpacket") == 2
    assert merged.index(b"written by darktable") < merged.index(b"<x:xmpmeta")
    assert merged.index(b"after-the-packet") > merged.index(b"</x:xmpmeta>")
    assert b"a cat" in merged
    ours = render(Fields("img-1", "a cat", ("cat",), "m"))
    assert without_ours(ours) is None
    assert without_ours(ours.replace(b"<x:xmpmeta", b"<!-- mine --><x:xmpmeta")) is not None, "a comment is someone's"
