"""The search index of a shared state (PostgreSQL): the answers of SQLite's FTS5 index (``search``), from a
real server — words cut at punctuation, matched as a word's start, every word needed, in an image's own
text, its files' folders or its mapping's names; best match first; any text asked taken as words."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import postgres
import psycopg
import pytest
from helpers import wait_until
from sqlalchemy import create_engine, insert, text, update
from sqlalchemy.engine import make_url

from packsync.state import pg_search, search
from packsync.state.store import State
from packsync.state.tables import METADATA, TABLES
from packsync.state.unit import UnitOfWork

#: A role that may create tables and functions in its database's schema, but not an extension there.
PLAIN, PLAIN_PASSWORD = "plain_user", "plain-password"


def shared_state(url: str, password: str = postgres.PASSWORD) -> UnitOfWork:
    """A state's unit of work on the PostgreSQL database at ``url``, with every table and the search index
    (the one place that makes one: the shared state's own opening will replace it)."""
    engine = create_engine(make_url(url).set(password=password))
    METADATA.create_all(engine, tables=list(TABLES.values()))
    unit = UnitOfWork(Path("pg"), engine)
    pg_search.create(unit)
    return unit


@pytest.fixture
def unit(server: postgres.PostgresServer) -> Iterator[UnitOfWork]:
    unit = shared_state(server.database())
    try:
        yield unit
    finally:
        unit.close()


def plain_database(server: postgres.PostgresServer) -> str:
    """A fresh database that ``PLAIN`` may fill but where it may install no extension, as on a managed server."""
    url = server.database()
    database = make_url(url).database
    with psycopg.connect(host="127.0.0.1", port=server.port, user=postgres.USER, password=postgres.PASSWORD,
                         dbname=database, autocommit=True) as connection:
        connection.execute(f"DO $$ BEGIN CREATE ROLE {PLAIN} LOGIN PASSWORD '{PLAIN_PASSWORD}'; "
                           "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        connection.execute(f"GRANT CREATE ON SCHEMA public TO {PLAIN}")
    return str(make_url(url).set(username=PLAIN))


def image(image_id: str, file_name: str, description: str | None = None, keywords: Sequence[str] = (), *,
          owner: str = "nas:/srv/brand", pack_id: str = "p1", sha256: str | None = None) -> dict[str, Any]:
    """A row of ``images``, added in the order of its id."""
    return dict(pack_id=pack_id, image_id=image_id, sha256=sha256 or f"sha-{image_id}", url=f"https://cdn/{image_id}",
                file_name=file_name, meta_status="completed", description=description, keywords=json.dumps(keywords),
                meta_error=None, added_at=float(image_id), owner=owner, meta_model=None, recipe="")


def file(root: str, rel_path: str, sha256: str, problem: str | None = None) -> dict[str, Any]:
    return dict(root=root, rel_path=rel_path, version="v", size=1, sha256=sha256, content_type="image/png",
                problem=problem)


def mapping(root: str, pack_id: str, pack_name: str | None = None, source_name: str | None = None) -> dict[str, Any]:
    return dict(root=root, pack_id=pack_id, pack_name=pack_name, source_name=source_name, synced_at=None,
                last_error=None, ok_at=None, safety=None, withheld=None, withheld_count=None, paused=None)


def add(unit: UnitOfWork, table: str, rows: list[dict[str, Any]]) -> None:
    unit.connection.execute(insert(TABLES[table]), rows)


def found(unit: UnitOfWork, *words: str, limit: int = 100) -> list[str]:
    """The ids of the images ``find`` gives, in its order — after checking that ``count`` agrees."""
    ids = [row[1] for row in pg_search.find(unit, words, limit)]
    assert pg_search.count(unit, words) == len(ids) or len(ids) == limit, words
    return ids


def test_names_are_cut_into_words_at_punctuation_and_each_word_matches_a_word_s_start(unit: UnitOfWork) -> None:
    add(unit, "images", [image("1", "trips/beach_day-2.png"), image("2", "Night.JPG", "A café, by the sea."),
                         image("3", "x.gif", None, ["Red Square", "logo"])])

    for word in ("beach", "day", "2", "png", "trips", "bea", "BEACH", "Beach_Day", "beach_d", "day-2", "trips/beach"):
        assert found(unit, word) == ["1"], word
    for word in ("each", "ay", "day_beach", "tripsbeach", "pngx"):
        assert found(unit, word) == [], word
    assert found(unit, "night", "jpg") == ["2"] and found(unit, "sea.") == ["2"] and found(unit, "caf") == ["2"]
    assert found(unit, "square") == ["3"] and found(unit, "red", "squ") == ["3"] and found(unit, "\"logo\"") == ["3"]


def test_every_word_must_match(unit: UnitOfWork) -> None:
    add(unit, "images", [image("1", "red.png", "A red square."), image("2", "blue.png", "A blue square.")])

    assert found(unit, "square") == ["1", "2"]
    assert found(unit, "square", "red") == ["1"]
    assert found(unit, "square", "red", "blue") == []


def test_a_folder_inside_a_mapped_folder_finds_the_images_of_its_files_where_they_are_now(unit: UnitOfWork) -> None:
    add(unit, "images", [image("1", "landscape.png", "A red square.", sha256="a"),
                         image("2", "logo.png", "A red circle.", sha256="b"),
                         image("3", "other.png", sha256="c", owner="nas:/srv/other"),
                         image("4", "item.png", sha256="d", owner="nas:astria:12", pack_id="p2")])
    add(unit, "files", [file("nas:/srv/brand", "sub/deeper/landscape.png", "a"),
                        file("nas:/srv/brand", "logo.png", "b"),
                        file("nas:/srv/brand", "broken/logo.png", "b", problem="unreadable"),
                        file("nas:/srv/brand", "sub/copy.png", "c"),  # another owner's content
                        file("nas:astria:12", "https://cdn.example/sub/item.png", "d")])  # a URL: no folders

    assert found(unit, "sub") == ["1"] and found(unit, "deeper") == ["1"] and found(unit, "red", "sub") == ["1"]
    assert found(unit, "broken") == [] and found(unit, "cdn") == [] and found(unit, "example") == []
    unit.connection.execute(update(TABLES["files"]).where(TABLES["files"].c.rel_path == "sub/deeper/landscape.png")
                            .values(rel_path="trips/landscape.png"))

    assert found(unit, "trips") == ["1"] and found(unit, "sub") == [] and found(unit, "deeper") == []


def test_a_mapping_s_folder_pack_and_source_names_find_its_images(unit: UnitOfWork) -> None:
    add(unit, "images", [image("1", "a.png", owner="nas:/srv/brand/Summer_2024", pack_id="p1"),
                         image("2", "b.png", owner="nas:/srv/other", pack_id="p1"),  # another mapping, same pack
                         image("3", "c.png", owner="nas:astria:12", pack_id="p2"),
                         image("4", "d.png", owner="laptop:/home/me/misc", pack_id="p3")])
    add(unit, "mappings", [mapping("nas:/srv/brand/Summer_2024", "p1", "Brand Assets"),
                           mapping("nas:astria:12", "p2", "Portraits", "Studio shoot"),
                           mapping("laptop:/home/me/misc", "p3")])

    assert found(unit, "summer") == ["1", "2"] and found(unit, "2024", "b.png") == ["2"]  # (by the mapping's pack)
    assert found(unit, "assets") == ["1", "2"] and found(unit, "brand", "b.png") == ["2"]
    assert found(unit, "portraits") == ["3"] and found(unit, "studio", "shoot") == ["3"]
    assert found(unit, "astria") == ["3"] and found(unit, "12") == ["3"] and found(unit, "misc") == ["4"]
    # Only a folder's own name is its name; the site is no name of a mapping.
    assert found(unit, "srv") == [] and found(unit, "home") == [] and found(unit, "nas") == [] \
        and found(unit, "laptop") == []


def test_the_best_match_of_an_image_s_own_text_comes_first_then_the_order_they_were_added(unit: UnitOfWork) -> None:
    add(unit, "images", [image("1", "a.png", "A landscape.", owner="nas:/srv/red"),  # by its folder's name only
                         image("2", "b.png", "A red square."),
                         image("3", "c.png", "Red, red, red: a red square.", ["red"]),
                         image("4", "d.png", "A red circle.")])
    add(unit, "mappings", [mapping("nas:/srv/red", "p1")])

    assert found(unit, "red") == ["3", "2", "4", "1"]
    assert found(unit, "red", limit=2) == ["3", "2"] and pg_search.count(unit, ["red"]) == 4


@pytest.mark.parametrize("word", ['"', "'", "a'b", "\\", "\\'", "&", "|", "!", ":", "*", "()", "red & !blue",
                                  "a:*", "'red':*", "NEAR(", "red OR", "--", "\x00", "red\x00", "x" * 1000,
                                  "\U0001f389", "\udcff", "$$", "$body$", "%s", "%(x)s", ":w0", "é" * 1500])
def test_any_text_asked_is_taken_as_words(unit: UnitOfWork, word: str) -> None:
    """Never an error: its words, in order, as a word's start ('red':* is the word red; red & !blue is
    red followed by blue); nothing when it has none (no word at all when nothing printable is left)."""
    add(unit, "images", [image("1", "red.png", "Crimson.")])

    assert found(unit, word) == (["1"] if word in ("'red':*", "red\x00") else [])
    assert found(unit, "red", word) == (["1"] if word in ("'red':*", "red\x00", "\x00", "\udcff") else [])


def test_a_word_of_no_letters_matches_nothing_and_no_word_at_all_finds_nothing(unit: UnitOfWork) -> None:
    add(unit, "images", [image("1", "red.png", "A red square.")])

    assert found(unit, "red", "--") == [] and found(unit, "red", "\"") == []
    assert found(unit, "\x00") == [] and found(unit, " ") == [] and found(unit) == []
    assert found(unit, "red", " ") == ["1"]  # a blank word is no word


def test_accents_case_and_scripts(unit: UnitOfWork) -> None:
    add(unit, "images", [image("1", "CAFÉ.png"), image("2", "Ωmega.png", "東京 tower"), image("3", "naïve-art.jpg")])

    assert found(unit, "café") == ["1"] and found(unit, "cafe") == ["1"] and found(unit, "CAFE") == ["1"]
    assert found(unit, "ωmeg") == ["2"] and found(unit, "東京") == ["2"] and found(unit, "naive", "art") == ["3"]


def test_without_unaccent_search_works_and_only_accents_must_be_asked_as_written(
        server: postgres.PostgresServer) -> None:
    """A server where the extension may not be installed: the index is made without it (nothing fails,
    even inside a transaction), and "cafe" no longer finds "café" — the one difference."""
    unit = shared_state(plain_database(server), PLAIN_PASSWORD)
    try:
        add(unit, "images", [image("1", "café.png"), image("2", "CAFE.png")])

        assert unit.rows(text("SELECT count(*) FROM pg_extension WHERE extname = 'unaccent'"))[0][0] == 0
        assert found(unit, "café") == ["1"] and found(unit, "cafe") == ["2"] and found(unit, "CAFÉ") == ["1"]
    finally:
        unit.close()


def test_the_index_is_made_inside_the_caller_s_transaction_once(server: postgres.PostgresServer) -> None:
    url = plain_database(server)
    engine = create_engine(make_url(url).set(password=PLAIN_PASSWORD))
    METADATA.create_all(engine, tables=list(TABLES.values()))
    unit = UnitOfWork(Path("pg"), engine)
    driver = unit.connection.connection.driver_connection
    assert driver is not None
    try:
        assert not pg_search.exists(unit)
        driver.execute("BEGIN")
        pg_search.create(unit)  # the extension refused inside: the transaction goes on
        assert pg_search.exists(unit)
        driver.execute("ROLLBACK")
        assert not pg_search.exists(unit)

        driver.execute("BEGIN")
        pg_search.create(unit)
        pg_search.create(unit)
        driver.execute("COMMIT")
        pg_search.create(unit)

        assert pg_search.exists(unit)
        add(unit, "images", [image("1", "beach.png")])
        assert found(unit, "bea") == ["1"]
    finally:
        unit.close()


def test_a_state_from_before_the_index_is_readable_without_one(server: postgres.PostgresServer) -> None:
    engine = create_engine(make_url(server.database()).set(password=postgres.PASSWORD))
    METADATA.create_all(engine, tables=list(TABLES.values()))
    unit = UnitOfWork(Path("pg"), engine)
    try:
        add(unit, "images", [image("1", "beach.png")])
        pg_search.ensure_readable(unit)
        pg_search.ensure_readable(unit)

        assert found(unit, "beach") == ["1"]
        assert not pg_search.exists(unit)  # no index made: a reader changes no table
        pg_search.create(unit)
        assert pg_search.exists(unit) and found(unit, "beach") == ["1"]
    finally:
        unit.close()


def plans(unit: UnitOfWork, *words: str) -> str:
    """The plans of ``find``'s and ``count``'s statements for ``words``, as the server ran them."""
    driver = unit.connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    said: list[str] = []
    driver.add_notice_handler(lambda notice: said.append(notice.message_primary or ""))
    for statement in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                      "SET auto_explain.log_level = notice", "SET client_min_messages = notice"):
        unit.execute(statement)
    try:
        for _ in range(8):  # the driver prepares a statement run often: its plans are for any word
            pg_search.find(unit, words, 50)
            pg_search.count(unit, words)
    finally:
        unit.execute("SET auto_explain.log_min_duration = -1")
    return "\n".join(said)


def test_a_search_reads_the_indexes(unit: UnitOfWork) -> None:
    unit.execute("INSERT INTO images SELECT 'p' || mod(n, 10), n::text, 'sha' || n, 'u', 'img' || n || '.png', "
                 "'completed', 'A photo number ' || n, '[\"k' || n || '\"]', NULL, n, '/srv/brand', NULL, '' "
                 "FROM generate_series(1, 5000) n")
    unit.execute("INSERT INTO files SELECT '/srv/brand', 'folder' || mod(n, 1000) || '/f' || n || '.png', 'v', 1, "
                 "'sha' || mod(n, 5000), NULL, NULL FROM generate_series(1, 20000) n")
    unit.execute("ANALYZE images")
    unit.execute("ANALYZE files")

    explained = plans(unit, "img123")

    assert explained.count("Bitmap Index Scan on images_search_text") == 16, explained
    assert explained.count("Bitmap Index Scan on files_search_folders") == 16, explained
    # No text but a mapping's (a few rows) is cut row by row: the images' and the files' only where the
    # index found them.
    lines = [line.strip() for line in explained.splitlines()]
    cut = [(before, line) for before, line in pairwise(lines) if "@@" in line and "Query Text" not in line]
    assert cut and all(line.startswith(("Index Cond:", "Recheck Cond:")) or "Seq Scan on mappings" in before
                       for before, line in cut), explained
    assert found(unit, "folder999", "img") == [str(n) for n in range(999, 5000, 1000)]


#: Rows for both backends' indexes, and words whose answers must be the same on both.
CORPUS = [image("1", "trips/beach_day-2.png", "A red square on the beach.", ["red", "beach"], owner="/srv/brand"),
          image("2", "Night.JPG", "A café, by the sea.", ["café"], owner="/srv/brand", sha256="b"),
          image("3", "東京.png", "Tokyo at night.", ["city"], owner="astria:12", pack_id="p2"),
          image("4", "red-red.png", "Red, red, red.", [], owner="/srv/other/Summer", pack_id="p3")]
WORDS = [["beach"], ["day"], ["2"], ["png"], ["trips"], ["red"], ["red", "beach"], ["cafe"], ["café"], ["night"],
         ["東京"], ["sub"], ["deeper"], ["summer"], ["brand"], ["assets"], ["astria"], ["12"], ["portraits"],
         ["beach_d"], ["day_beach"], ["--"], ['"'], ["red", "--"], ["a'b"], ["NEAR("], ["red OR"], ["*"], ["srv"],
         ["\x00"], ["red", "\x00"], ["x" * 1000], ["\U0001f389"], ["tok", "cit"], ["re"], ["r", "s"]]


def test_the_answers_are_sqlite_s(unit: UnitOfWork, tmp_path: Path) -> None:
    sqlite = State(tmp_path / "state.db")
    try:
        for state in (sqlite.unit, unit):
            add(state, "images", CORPUS)
            add(state, "files", [file("/srv/brand", "sub/deeper/Night.JPG", "b"),
                                 file("astria:12", "https://cdn/x/東京.png", "sha-3")])
            add(state, "mappings", [mapping("/srv/brand", "p1", "Brand Assets"),
                                    mapping("astria:12", "p2", "Portraits", "Tokyo shoot")])

        for words in WORDS:
            expected = sorted(tuple(row) for row in search.find(sqlite.unit, words, 100))
            assert sorted(tuple(row) for row in pg_search.find(unit, words, 100)) == expected, words
            assert pg_search.count(unit, words) == search.count(sqlite.unit, words), words
    finally:
        sqlite.close()


def bare_state(url: str) -> UnitOfWork:
    """A state's unit of work with every table but no search index yet."""
    engine = create_engine(make_url(url).set(password=postgres.PASSWORD))
    METADATA.create_all(engine, tables=list(TABLES.values()))
    return UnitOfWork(Path("pg"), engine)


def test_two_sites_making_the_index_at_once_make_it_once(server: postgres.PostgresServer) -> None:
    """The second waits for the first's transaction, then finds the index made (without the wait, its
    functions would collide with the first's as it commits)."""
    url = server.database()
    first, second = bare_state(url), bare_state(url)
    first.execute("CREATE EXTENSION unaccent")  # (there already, as the second run of a site finds it)
    driver = first.connection.connection.driver_connection
    assert driver is not None
    errors: list[BaseException] = []

    def make() -> None:
        try:
            pg_search.create(second)
        except BaseException as exc:  # noqa: BLE001 (said by the test's thread)
            errors.append(exc)

    try:
        driver.execute("BEGIN")
        pg_search.create(first)
        other = threading.Thread(target=make)
        other.start()
        wait_until(lambda: first.rows(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))[0][0],
                   what="the second site waiting")
        driver.execute("COMMIT")
        other.join(timeout=30)

        assert not other.is_alive() and errors == []
        assert pg_search.exists(second) and pg_search.exists(first)
    finally:
        first.close()
        second.close()
