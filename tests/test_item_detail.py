"""A source's own words about an item (``files.detail``: an Astria prompt's text) and when a source deletes its
items (``mappings.expires_at``), from the state to every view: ``status --files`` (text and JSON), ``search``
(SQLite's FTS5 and PostgreSQL's index), the page; and the warning ``status`` gives before a source deletes
items not mirrored yet.

No source fills them yet (a tune's source is to come): the words and the date are written here through the
repositories the engine writes with (``FileRepository.save_cache``, ``MappingRepository.save``), into a real
state that a real sync made, and read back by the real CLI, page and browser.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
import postgres
import pytest
from conftest import Env, image, site, write
from msgspec.structs import replace
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from test_browser import browser, page  # noqa: F401 - fixtures
from test_page import needs_chromium, sync, ui  # noqa: F401 - fixtures

from packsync.model import CachedFile
from packsync.sandbox import Sandbox
from packsync.state.store import State
from packsync.state.tables import SCHEMA_VERSION
from packsync.views.status import EXPIRY_WARNING_S, expiring

DAY = 86400.0
WORDS = "a zeppelin over the harbour at dawn"


def described(env: Env, label: str, words: Mapping[str, str | None]) -> dict[str, CachedFile]:
    """The items of ``label`` (by key) given these words (None: none), as a scan would record them."""
    state = State.for_config(env.config())
    try:
        cached = state.files.cache(label)
        now = {key: replace(item, detail=words[key]) if key in words else item for key, item in cached.items()}
        state.files.save_cache(label, cached, now)
        return state.files.cache(label)
    finally:
        state.close()


def astria_pack(env: Env, count: int = 2) -> str:
    """An Astria pack of ``count`` images mirrored into a pack; its mapping's label."""
    pack = env.sandbox.astria.add_pack("Headshots")
    for n in range(count):
        env.sandbox.astria.add_image(pack, "woman", image(20 + n, 30))
    label = env.map_astria(pack, pack="Headshots")
    assert env.cli("run").returncode == 0
    return label


def first_key(env: Env, label: str) -> str:
    state = State.for_config(env.config())
    try:
        return sorted(state.files.cache(label))[0]
    finally:
        state.close()


def test_an_item_s_words_are_kept_and_shown_by_status_files(env: Env) -> None:
    label = astria_pack(env)
    key = first_key(env, label)
    hostile = "\x1b[31mred\n    synced  forged.png " + "long " * 200

    cached = described(env, label, {key: WORDS})

    assert cached[key].detail == WORDS, "the cache reads back what was written"
    assert [item.detail for other, item in cached.items() if other != key] == [None]
    shown = env.cli("status", "--files", token=None).stdout
    assert f"\n      from its source: {WORDS}\n" in shown
    assert shown.count("from its source:") == 1, "only the item with words shows any"
    files = json.loads(env.cli("status", "--json", "--files", token=None).stdout)["mappings"][0]["file_list"]
    assert sorted(f["detail"] or "" for f in files) == ["", WORDS]

    described(env, label, {key: hostile})

    shown = env.cli("status", "--files", token=None).stdout
    line = next(line for line in shown.splitlines() if "from its source:" in line)
    assert "\x1b" not in shown and "forged.png" in line, "the words stay on their own line, escapes gone"
    assert len(line) < 600, "long words are cut"


def test_search_finds_an_image_by_a_word_of_its_source_s_words_alone(env: Env) -> None:
    label = astria_pack(env)
    key = first_key(env, label)
    assert "no image" in env.cli("search", "zeppelin", token=None).stdout, "no word of it is anywhere yet"

    described(env, label, {key: WORDS})

    found = env.cli("search", "zeppel", token=None).stdout
    assert "1 match" in found and f"  from its source: {WORDS}" in found
    (hit,) = json.loads(env.cli("search", "--json", "harbour", "dawn", token=None).stdout)["results"]
    assert hit["detail"] == WORDS and hit["mapping"] == label
    assert json.loads(env.cli("search", "--json", "zeppelin", "nowhere", token=None).stdout)["total"] == 0

    described(env, label, {key: None})  # (the words gone: the index follows the row)

    assert "no image" in env.cli("search", "zeppelin", token=None).stdout


def test_a_folder_s_subfolders_are_still_searched_by_name(env: Env) -> None:
    """The files' index, made anew in schema 11, still holds a folder's subfolders (a folder is known by its
    absolute label), and not the parts of a remote item's URL."""
    folder = env.map("pics", pack="Pics")
    write(folder / "lighthouses" / "one.png", image())
    assert env.cli("run").returncode == 0
    label = astria_pack(env)
    url_part = first_key(env, label).rstrip("/").split("/")[-2]

    assert str(folder / "lighthouses" / "one.png") in env.cli("search", "lighthouses", token=None).stdout
    assert "no image" in env.cli("search", url_part, token=None).stdout, url_part


# -- expiry ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expires_in", "pending", "failed", "skipped", "warned"), [
    (None, 3, 0, 0, None),
    (EXPIRY_WARNING_S + 60, 3, 0, 0, None),  # not yet within the warning's reach
    (EXPIRY_WARNING_S - 60, 0, 0, 0, None),  # everything is mirrored
    (EXPIRY_WARNING_S - 60, 1, 0, 0, "deletes these images on {day} unless its storage is extended; 1 is not mirrored"),
    (DAY, 0, 2, 0, "deletes these images on {day} unless its storage is extended; 2 are not mirrored yet"),
    (DAY, 0, 0, 2, "deletes these images on {day} unless its storage is extended; 2 are not mirrored yet"),
    (-DAY, 2, 1, 0, "deleted these images on {day} unless their storage was extended; 3 were not mirrored"),
])
def test_the_expiry_warning_is_given_inside_three_days_with_images_not_mirrored(
        expires_in: float | None, pending: int, failed: int, skipped: int, warned: str | None) -> None:
    """Not mirrored: pending, failed, or skipped (an image its source would not serve: the hostile pass's F1)."""
    from packsync.state.records import MappingRecord

    now = 1_800_000_000.0
    at = None if expires_in is None else now + expires_in
    record = MappingRecord("astria-tune:1", expires_at=at)
    said = expiring(record, {"synced": 5, "pending": pending, "skipped": skipped, "failed": failed}, now)

    if warned is None:
        assert said is None
    else:
        assert at is not None and said is not None
        assert warned.format(day=time.strftime("%Y-%m-%d", time.localtime(at))) in said


def pending_item(env: Env, label: str) -> None:
    """An item its last scan saw that is not in the pack yet."""
    state = State.for_config(env.config())
    try:
        cached = state.files.cache(label)
        state.files.save_cache(label, cached, {**cached, "later.png": CachedFile("v1", 10, "ab" * 32, "image/png",
                                                                                  None, WORDS)})
    finally:
        state.close()


def expires(env: Env, label: str, at: float | None) -> None:
    state = State.for_config(env.config())
    try:
        state.mappings.save(label, expires_at=at)
    finally:
        state.close()


def test_status_and_the_page_warn_before_a_source_deletes_images_not_mirrored(env: Env, ui: Any) -> None:  # noqa: F811
    folder = env.map("pics", pack="Pics")
    write(folder / "one.png", image())
    assert env.cli("run").returncode == 0
    label = str(folder)
    at = time.time() + 2 * DAY
    day = time.strftime("%Y-%m-%d", time.localtime(at))
    expires(env, label, at)

    assert "warning" not in env.cli("status", token=None).stdout, "every image is mirrored"

    pending_item(env, label)

    shown = env.cli("status", token=None).stdout
    assert f"  warning: its source deletes these images on {day} unless its storage is extended; 1 is not " \
           "mirrored yet\n" in shown
    mapping = json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]
    assert mapping["expiring"] and day in mapping["expiring"] and mapping["expires_at"]
    html = httpx2.get(ui()).text
    assert '<div class="safety expiring"><strong>Expiring at its source:</strong> its source deletes these ' \
           f"images on {day}" in html

    assert env.cli("run").returncode == 0  # (a folder says nothing of expiry: the date read last is kept)

    assert json.loads(env.cli("status", "--json", token=None).stdout)["mappings"][0]["expires_at"]


# -- the page ---------------------------------------------------------------------------------------------

@needs_chromium
def test_the_page_shows_an_item_s_words_on_its_card_and_its_own_page(env: Env, ui: Any,  # noqa: F811
                                                                      page: Any) -> None:  # noqa: F811
    label = astria_pack(env, count=1)
    described(env, label, {first_key(env, label): WORDS + " <b>not bold</b>"})
    base = ui()

    page.goto(base)
    card = page.locator(".mapping .card").first
    assert card.locator(".words").inner_text() == WORDS + " <b>not bold</b>", "shown as text, never as markup"
    card.locator(".name a").click()

    page.wait_for_url(lambda url: "/image/" in url)
    assert page.locator(".about .words").inner_text() == WORDS + " <b>not bold</b>"

    page.goto(base + "?q=zeppelin")
    assert page.locator(".results .card .words").inner_text() == WORDS + " <b>not bold</b>"


# -- a shared state (PostgreSQL) ------------------------------------------------------------------------

@pytest.fixture
def database(url: str) -> Iterator[Any]:
    """The shared state's database, as its owner sees it (to take it back to an older schema)."""
    engine = create_engine(make_url(url).set(password=postgres.PASSWORD))
    yield engine
    engine.dispose()


def schema_10(database: Any) -> None:
    """The shared state as the release of schema 10 left it (every row kept)."""
    with database.begin() as db:
        for statement in ("DROP INDEX files_search_detail", "ALTER TABLE files DROP COLUMN detail",
                          "ALTER TABLE mappings DROP COLUMN expires_at",
                          "UPDATE meta SET value = '10' WHERE key = 'schema'"):
            db.execute(text(statement))


def rows(database: Any) -> dict[str, list[Any]]:
    with database.connect() as db:
        return {"files": sorted(tuple(r) for r in db.execute(text(
                    "SELECT root, rel_path, version, size, sha256, content_type, problem FROM files"))),
                "images": sorted(tuple(r) for r in db.execute(text("SELECT pack_id, image_id, sha256 FROM images"))),
                "schema": [tuple(r) for r in db.execute(text("SELECT value FROM meta WHERE key = 'schema'"))],
                "columns": sorted(tuple(r) for r in db.execute(text(
                    "SELECT table_name, column_name FROM information_schema.columns WHERE column_name IN "
                    "('detail', 'expires_at') AND table_name IN ('files', 'mappings')"))),
                "index": [tuple(r) for r in db.execute(text(
                    "SELECT indexname FROM pg_indexes WHERE indexname = 'files_search_detail'"))]}


def test_a_schema_10_shared_state_is_read_as_it_is_then_upgraded_in_place(tmp_path: Path, sandbox: Sandbox,
                                                                          url: str, database: Any) -> None:
    env = site(tmp_path, sandbox, url, "nas")
    label = astria_pack(env)
    schema_10(database)
    before = rows(database)
    assert before["schema"] == [("10",)] and before["columns"] == [] and before["files"]

    status = json.loads(env.cli("status", "--json", "--files", token=None).stdout)["mappings"][0]
    found = env.cli("search", "Headshots", token=None)

    assert status["synced"] == 2 and [f["detail"] for f in status["file_list"]] == [None, None]
    assert found.returncode == 0 and "2 matches" in found.stdout, found.stdout + found.stderr
    assert rows(database) == before, "reading a shared state of schema 10 changed it"

    env.sandbox.reset_calls()
    assert env.cli("run", "--no-wait").returncode == 0

    after = rows(database)
    assert after["schema"] == [(str(SCHEMA_VERSION),)]
    assert after["columns"] == [("files", "detail"), ("mappings", "expires_at")]
    assert after["index"] == [("files_search_detail",)]
    assert (after["files"], after["images"]) == (before["files"], before["images"]), "every row is kept"
    assert env.sandbox.mutating_calls() == 0

    described(env, label, {first_key(env, label): WORDS})

    (hit,) = json.loads(env.cli("search", "--json", "zeppelin", token=None).stdout)["results"]
    assert hit["detail"] == WORDS
    assert json.loads(env.cli("search", "--json", "zeppelin", "nowhere", token=None).stdout)["total"] == 0


@pytest.mark.skipif(postgres.missing() is not None, reason=f"no PostgreSQL here: {postgres.missing()}")
def test_a_reader_of_a_schema_10_shared_state_reads_on_after_another_site_upgraded_it(
        tmp_path: Path, sandbox: Sandbox, url: str, database: Any) -> None:
    """A reader (``packsync ui``) opened the shared state at schema 10, through views adding the columns it lacks.
    Another site then upgrades it; when the reader's connection is lost and made again, its views must not name
    columns the tables have now ("column "detail" specified more than once": every read failed after)."""
    env = site(tmp_path, sandbox, url, "nas")
    astria_pack(env)
    schema_10(database)
    env.write_config()
    reader = State.for_config(env.config(), readonly=True)
    try:
        files = reader.unit.rows(text("SELECT count(*) FROM files"))[0][0]
        assert env.cli("run", "--no-wait").returncode == 0, "the run upgrades the state to schema 11"
        with database.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                    "current_database() AND pid <> pg_backend_pid()"))
            connection.commit()

        def read() -> Any:
            try:
                return reader.unit.rows(text("SELECT count(*), count(detail) FROM files"))[0]
            except Exception as exc:  # noqa: BLE001 - the first read after the cut may fail: the next reconnects
                return exc

        answers = [read() for _ in range(3)]
        assert not isinstance(answers[-1], Exception), answers
        assert answers[-1][0] == files
    finally:
        reader.close()
