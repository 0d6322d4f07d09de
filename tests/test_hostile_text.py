"""Hostile text and rows: half an emoji from any API, a sidecar no parser should trust, a state whose
rows are not what packsync wrote. Each ends in one sentence, never a traceback, and nothing else stops."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from contextlib import closing

import pytest
from conftest import Env, image, write

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
