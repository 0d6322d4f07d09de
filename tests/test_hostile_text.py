"""Hostile text and rows: half an emoji from any API, a sidecar no parser should trust, a state whose
rows are not what packsync wrote. Each ends in one sentence, never a traceback, and nothing else stops."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from contextlib import closing

import pytest
from conftest import Env, image, write

from packsync.xmp import MAX_BYTES, Fields, render, without_ours

#: Rows a state can hold that packsync never writes (another tool, a disk's bit flip, a hand edit), and
#: the table they are in.
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

    for args in (("status",), ("status", "--json", "--files"), ("search", "a"), ("run", "--dry-run"), ("run",)):
        result = env.cli(*args)
        _no_traceback(result)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "is corrupt" in result.stderr and "Move it away" in result.stderr, (args, result.stderr)


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
