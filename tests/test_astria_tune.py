"""An Astria tune as a source (``sources/astria_tune.py``) and its client calls (``remote/astria.py``),
against the sandbox's Astria API over HTTP with a real transport: the paged walk, the items and their
details, the checks of each answer, and the rules that never let a miss become a delete."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import ASTRIA_TOKEN, Env, image

from packsync.errors import AuthError, ExitCode, SourceUnavailable
from packsync.model import CachedFile, Listed, Scan
from packsync.remote.astria import AstriaClient
from packsync.remote.transport import RetryPolicy, Transport
from packsync.sandbox import Sandbox
from packsync.sandbox.server import Reply
from packsync.sources.astria_tune import AstriaTuneSettings, AstriaTuneSource

PAGES = ("GET", "astria:/tunes/{id}/prompts")
ONE_PROMPT = ("GET", "astria:/tunes/{id}/prompts/{prompt_id}")
DAY = 86400.0


def scan(sandbox: Sandbox, tune_id: int, previous: Mapping[str, CachedFile] | None = None, *,
         prompts: str | None = None, spool: Path | None = None, attempts: int | None = None,
         token: str = ASTRIA_TOKEN) -> tuple[Scan, AstriaTuneSource]:
    """One scan of the tune as a mapping's source would run it (``previous``: the last scan's cache)."""

    async def run() -> tuple[Scan, AstriaTuneSource]:
        retry = RetryPolicy(attempts=attempts) if attempts else RetryPolicy()
        async with Transport(retry=retry) as transport:
            client = AstriaClient(sandbox.astria_url, token, transport)
            source = AstriaTuneSettings(astria_tune=tune_id, prompts=prompts).source(client, 50_000_000, spool)
            try:
                return await source.scan(previous or {}), source
            finally:
                source.close()

    return asyncio.run(run())


def listed(sandbox: Sandbox, tune_id: int, prompts: str | None = None) -> Listed:
    async def run() -> Listed:
        async with Transport() as transport:
            return await AstriaTuneSettings(astria_tune=tune_id, prompts=prompts).listed(
                AstriaClient(sandbox.astria_url, ASTRIA_TOKEN, transport))

    return asyncio.run(run())


def prompt_page(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Reply], Reply]:
    """A rewrite of a prompts page changing each prompt with ``change``."""

    def rewrite(reply: Reply) -> Reply:
        reply.body = json.dumps([change(p) for p in json.loads(reply.body)]).encode()
        return reply

    return rewrite


def kept_shas(found: Scan, previous: Mapping[str, CachedFile]) -> set[str]:
    return {c.sha256 for url, c in previous.items() if c.sha256 and url not in {i.key for i in found.items}} \
        & found.keep


@pytest.fixture
def sb(sandbox: Sandbox) -> Iterator[Sandbox]:
    yield sandbox


def test_45_prompts_are_read_in_3_pages_and_every_image_is_an_item_with_its_prompt(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me, professionally", trained_at=time.time())
    ids = [sb.astria.add_prompt(tune, f"ohwx woman, photo {n}", images=[image(seed=2 * n), image(seed=2 * n + 1)])
           for n in range(45)]

    found, source = scan(sb, tune)

    assert sb.calls[PAGES] == 3 and sb.calls[("GET", "astria:/tunes/{id}")] == 1
    assert found.problems == [] and found.keep == set()
    assert len(found.items) == 90 and len({i.sha256 for i in found.items}) == 90
    assert sorted(i.name or "" for i in found.items) == sorted(f"{p}-{n}.png" for p in ids for n in (1, 2))
    first = next(i for i in found.items if i.name == f"{ids[7]}-2.png")
    assert found.cache[first.key].detail == "ohwx woman, photo 7"
    assert found.cache[first.key].version == f"{ids[7]}:{first.key}"
    assert (source.name, source.kind, source.label) == ("Me, professionally", "astria-tune", f"astria-tune:{tune}")
    assert source.expires_at is not None and abs(source.expires_at - (time.time() + 30 * DAY)) < 60


def test_a_second_scan_downloads_nothing(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    sb.astria.add_prompt(tune, "a", images=[image(seed=1), image(seed=2)])
    first, _ = scan(sb, tune)
    sb.reset_calls()

    second, _ = scan(sb, tune, first.cache)

    assert sb.calls[("GET", "astria-img")] == 0 and second.hashed_files == 0
    assert sorted(second.items, key=lambda i: i.key) == sorted(first.items, key=lambda i: i.key)


def test_the_same_url_under_two_prompts_is_one_item_named_after_the_first(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    older = sb.astria.add_prompt(tune, "older", images=[image(seed=3)])
    newer = sb.astria.add_prompt(tune, "newer", images=[image(seed=4)])
    shared = sb.astria.generate(tune, newer, image(seed=5))

    def older_lists_it_too(prompt: dict[str, Any]) -> dict[str, Any]:
        return {**prompt, "images": [*prompt["images"], shared]} if prompt["id"] == older else prompt

    sb.rewrite(*PAGES, prompt_page(older_lists_it_too))
    found, _ = scan(sb, tune)

    assert [i.key for i in found.items].count(shared) == 1 and len(found.items) == 3
    assert next(i.name for i in found.items if i.key == shared) == f"{newer}-2.png"  # newest first: it came first


def test_the_same_bytes_under_two_urls_are_two_items_of_one_content(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    prompt = sb.astria.add_prompt(tune, "twice", images=[image(seed=6), image(seed=6)])

    found, _ = scan(sb, tune)

    assert sorted(i.name or "" for i in found.items) == [f"{prompt}-1.png", f"{prompt}-2.png"]
    assert len({i.key for i in found.items}) == 2 and len({i.sha256 for i in found.items}) == 1


def test_a_prompt_not_generated_yet_has_no_items_and_no_problem(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    sb.astria.add_prompt(tune, "pending")
    sb.astria.add_prompt(tune, "empty", images=[])
    done = sb.astria.add_prompt(tune, "done", images=[image(seed=7)])

    found, _ = scan(sb, tune)

    assert [i.name for i in found.items] == [f"{done}-1.png"] and found.problems == []


def test_the_prompts_filter_takes_a_case_insensitive_part_of_the_text(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    office = sb.astria.add_prompt(tune, "ohwx woman, HEADSHOT in an office", images=[image(seed=8)])
    sb.astria.add_prompt(tune, "ohwx woman on a beach", images=[image(seed=9)])
    studio = sb.astria.add_prompt(tune, "studio headshot", images=[image(seed=10)])

    found, _ = scan(sb, tune, prompts="Headshot")

    assert sorted(i.name or "" for i in found.items) == sorted([f"{office}-1.png", f"{studio}-1.png"])


def test_a_server_ignoring_offset_ends_the_walk_incomplete_and_deletes_nothing(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    ids = [sb.astria.add_prompt(tune, f"p{n}", images=[image(seed=100 + n)]) for n in range(45)]
    first, _ = scan(sb, tune)
    sb.astria.ignore_offset = True
    sb.reset_calls()

    found, _ = scan(sb, tune, first.cache)

    assert sb.calls[PAGES] == 2  # the second page brought no new prompt
    assert [p.rel_path for p in found.problems] == [f"astria-tune:{tune}"]
    assert "offset 20 with prompts it had listed already" in found.problems[0].reason
    assert len(found.items) == 20  # the first page's prompts (the newest), still mirrored
    assert {c.sha256 for c in first.cache.values()} == {i.sha256 for i in found.items} | found.keep
    assert {found.cache[url].version.partition(":")[0] for url in found.cache} == {str(p) for p in ids}


def test_a_prompt_added_during_the_walk_shows_one_prompt_twice_and_it_is_read_once(sb: Sandbox) -> None:
    """Prompts come newest first: one added after page 1 pushes page 1's last onto page 2."""
    tune = sb.astria.add_tune("Me")
    ids = [sb.astria.add_prompt(tune, f"p{n}", images=[image(seed=400 + n)]) for n in range(25)]

    def add_one(reply: Reply) -> Reply:
        sb.astria.add_prompt(tune, "added during the walk", images=[image(seed=450)])
        return reply

    sb.rewrite(*PAGES, add_one, count=1)

    async def walk() -> list[int]:
        async with Transport() as transport:
            walked = await AstriaClient(sb.astria_url, ASTRIA_TOKEN, transport).prompts(tune)
            assert walked.complete and walked.problems == ()
            return [p.prompt_id for p in walked.prompts]

    assert sorted(asyncio.run(walk())) == ids and sb.calls[PAGES] == 2


def test_downloads_wait_in_the_spool_and_are_opened_from_there(sb: Sandbox, tmp_path: Path) -> None:
    tune = sb.astria.add_tune("Me")
    data = [image(seed=460), image(width=900, height=900, seed=461)]
    sb.astria.add_prompt(tune, "two", images=data)

    async def run() -> list[bytes]:
        async with Transport() as transport:
            source = AstriaTuneSettings(astria_tune=tune).source(
                AstriaClient(sb.astria_url, ASTRIA_TOKEN, transport), 50_000_000, tmp_path / "spool")
            found = await source.scan({})
            sb.reset_calls()
            try:
                return [await (await source.open(item)).read() for item in found.items]
            finally:
                source.close()

    assert sorted(asyncio.run(run())) == sorted(data) and sb.calls[("GET", "astria-img")] == 0
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize("change, where, why", [
    (lambda p: {**p, "images": [*p["images"][:1], "ftp://example.com/x.png"]}, "{id}-2", "not an http(s) address"),
    (lambda p: {**p, "images": "https://example.com/x.png"}, "prompt {id}", "its images are not a list"),
    (lambda p: {**p, "id": "12a"}, "prompt #2 of page 1", "not a prompt with an id"),
    (lambda p: {**p, "images": [42]}, "{id}-1", "not an http(s) address"),
])
def test_an_entry_that_is_not_a_prompt_or_an_image_is_its_own_problem_and_deletes_nothing(
        sb: Sandbox, change: Callable[[dict[str, Any]], dict[str, Any]], where: str, why: str) -> None:
    tune = sb.astria.add_tune("Me")
    hostile = sb.astria.add_prompt(tune, "hostile", images=[image(seed=11)])
    first, _ = scan(sb, tune)
    other = sb.astria.add_prompt(tune, "fine", images=[image(seed=12)])
    gone = sb.astria.add_prompt(tune, "gone", images=[image(seed=13)])
    second, _ = scan(sb, tune, first.cache)
    sb.astria.remove_prompt(tune, gone)
    sb.rewrite(*PAGES, prompt_page(lambda p: change(p) if p["id"] == hostile else p))

    found, _ = scan(sb, tune, second.cache)

    assert [(p.rel_path, why in p.reason, p.notice) for p in found.problems] == [
        (where.format(id=hostile), True, False)]
    assert f"{other}-1.png" in {i.name for i in found.items}
    assert {c.sha256 for c in second.cache.values()} <= {i.sha256 for i in found.items} | found.keep
    assert sb.calls[ONE_PROMPT] == 0  # (a walk with problems confirms nothing: it deletes nothing)


def test_a_prompt_astria_confirms_deleted_lets_its_images_go(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    stays = sb.astria.add_prompt(tune, "stays", images=[image(seed=14)])
    goes = sb.astria.add_prompt(tune, "goes", images=[image(seed=15), image(seed=16)])
    first, _ = scan(sb, tune)
    sb.astria.remove_prompt(tune, goes)
    sb.reset_calls()

    found, _ = scan(sb, tune, first.cache)

    assert sb.calls[ONE_PROMPT] == 1 and found.problems == [] and found.keep == set()
    assert [i.name for i in found.items] == [f"{stays}-1.png"]
    assert set(found.cache) == {i.key for i in found.items}


def test_a_vanished_prompt_astria_cannot_confirm_deleted_keeps_its_images(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    sb.astria.add_prompt(tune, "stays", images=[image(seed=17)])
    goes = sb.astria.add_prompt(tune, "goes", images=[image(seed=18)])
    first, _ = scan(sb, tune)
    sb.astria.remove_prompt(tune, goes)
    sb.inject("500", *ONE_PROMPT, count=10)

    found, _ = scan(sb, tune, first.cache, attempts=1)

    assert [(p.rel_path, "could not confirm it was deleted" in p.reason) for p in found.problems] == [
        (f"prompt {goes}", True)]
    assert kept_shas(found, first.cache) == {c.sha256 for c in first.cache.values()} - {
        i.sha256 for i in found.items} != set()


def test_a_prompt_the_walk_missed_but_astria_still_has_keeps_its_images(sb: Sandbox) -> None:
    """A prompt deleted during a walk shifts the pages under it: another may be missed although it exists."""
    tune = sb.astria.add_tune("Me")
    missed = sb.astria.add_prompt(tune, "missed", images=[image(seed=19)])
    sb.astria.add_prompt(tune, "seen", images=[image(seed=20)])
    first, _ = scan(sb, tune)
    sb.rewrite(*PAGES, lambda reply: Reply(200, json.dumps(
        [p for p in json.loads(reply.body) if p["id"] != missed]).encode()))

    found, _ = scan(sb, tune, first.cache)

    assert [p.rel_path for p in found.problems] == [f"prompt {missed}"]
    assert len(kept_shas(found, first.cache)) == 1


def test_a_prompt_whose_images_went_empty_keeps_them_with_a_notice(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    emptied = sb.astria.add_prompt(tune, "emptied", images=[image(seed=21), image(seed=22)])
    first, _ = scan(sb, tune)
    sb.rewrite(*PAGES, prompt_page(lambda p: {k: v for k, v in p.items() if k != "images"}))

    found, _ = scan(sb, tune, first.cache)

    assert found.items == [] and found.keep == {c.sha256 for c in first.cache.values()}
    assert [(p.rel_path, p.notice) for p in found.problems] == [(f"prompt {emptied}", True)]
    assert sb.calls[ONE_PROMPT] == 0


def test_past_the_date_astria_deletes_the_images_everything_is_kept(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me", trained_at=time.time() - 31 * DAY)
    goes = sb.astria.add_prompt(tune, "goes", images=[image(seed=23)])
    sb.astria.add_prompt(tune, "stays", images=[image(seed=24)])
    first, _ = scan(sb, tune)
    sb.astria.remove_prompt(tune, goes)

    found, source = scan(sb, tune, first.cache)

    assert source.expires_at is not None and source.expires_at < time.time()
    assert len(found.items) == 1 and found.keep == {c.sha256 for c in first.cache.values()} - {found.items[0].sha256}
    assert [(p.rel_path, p.notice) for p in found.problems] == [(f"astria-tune:{tune}", True)]
    assert sb.calls[ONE_PROMPT] == 0 and set(found.cache) == set(first.cache)


def test_a_tune_the_key_cannot_see_is_unavailable_and_a_refused_key_is_an_auth_error(sb: Sandbox) -> None:
    hidden = sb.astria.add_tune("Someone else's", user_id=2)

    with pytest.raises(SourceUnavailable, match=f"astria-tune:{hidden}: Astria has no tune {hidden}"):
        scan(sb, hidden)
    with pytest.raises(AuthError) as refused:
        scan(sb, hidden, token="sd_wrong.key")
    assert "sd_wrong" not in str(refused.value)


def test_a_pull_lists_each_image_once_as_prompt_id_and_number_with_its_text(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    one = sb.astria.add_prompt(tune, "one", images=[image(seed=25), image(seed=26)])
    sb.astria.add_prompt(tune, "pending")
    two = sb.astria.add_prompt(tune, "two", images=[image(seed=27)])

    found = listed(sb, tune)

    assert (found.label, found.title, found.problems, found.unreadable) == (f"astria-tune:{tune}", "Me", (), None)
    assert sorted((i.parts, i.detail) for i in found.images) == sorted(
        [((f"{one}-1",), "one"), ((f"{one}-2",), "one"), ((f"{two}-1",), "two")])
    assert [i.parts for i in listed(sb, tune, prompts="TWO").images] == [(f"{two}-1",)]
    sb.astria.ignore_offset = True
    for n in range(25):
        sb.astria.add_prompt(tune, f"more {n}", images=[image(seed=300 + n)])
    assert "listed already" in (listed(sb, tune).unreadable or "")


def test_with_a_filter_a_pull_of_a_prompt_whose_text_cannot_be_read_removes_nothing(sb: Sandbox) -> None:
    tune = sb.astria.add_tune("Me")
    garbled = sb.astria.add_prompt(tune, "headshot a", images=[image(seed=28)])
    kept = sb.astria.add_prompt(tune, "headshot b", images=[image(seed=29)])
    sb.rewrite(*PAGES, prompt_page(lambda p: {**p, "text": None} if p["id"] == garbled else p))

    found = listed(sb, tune, prompts="headshot")
    plain = listed(sb, tune)

    assert [i.parts for i in found.images] == [(f"{kept}-1",)]
    assert [(p.rel_path, "prompts filter" in p.reason, p.notice) for p in found.problems] == \
        [(f"prompt {garbled}", True, False)]
    assert found.unreadable, "its files pulled before are not removed as if the filter had left them"
    assert (len(plain.images), plain.problems, plain.unreadable) == (2, (), None), "without a filter: no problem"


def test_the_client_sends_the_workspace_only_when_one_is_given(sb: Sandbox) -> None:
    team = sb.astria.add_tune("Team's", workspace="ws_42")
    mine = sb.astria.add_tune("Mine")

    async def seen(workspace: str | None) -> list[int]:
        async with Transport() as transport:
            client = AstriaClient(sb.astria_url, ASTRIA_TOKEN, transport, workspace=workspace)
            return [t.tune_id for t in await client.tunes()]

    assert asyncio.run(seen("ws_42")) == [team] and asyncio.run(seen(None)) == [mine]


# -- packsync astria tunes ---------------------------------------------------------------------------

def test_astria_tunes_lists_each_tune_with_its_prompts_images_and_deletion_date(env: Env) -> None:
    trained = float(int(time.time() - 2 * DAY))
    tune = env.sandbox.astria.add_tune("Me, professionally", "woman", trained_at=trained)
    env.sandbox.astria.add_prompt(tune, "one", images=[image(seed=28), image(seed=29)])
    env.sandbox.astria.add_prompt(tune, "pending")
    hidden = env.sandbox.astria.add_tune("Another user's", user_id=2)
    env.map_astria(1, pack="Unused")  # (the key, in its token file)

    as_json = env.cli("astria", "tunes", "--json", token=None)
    as_text = env.cli("astria", "tunes", token=None)

    assert as_json.returncode == ExitCode.OK, as_json.stderr
    deleted = time.gmtime(trained + 30 * DAY)
    assert json.loads(as_json.stdout) == {"tunes": [
        {"id": tune, "title": "Me, professionally", "class": "woman", "prompts": 2, "images": 2,
         "complete": True, "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", deleted)}]}
    assert as_text.returncode == ExitCode.OK, as_text.stderr
    assert as_text.stdout.splitlines()[0].split() == ["id", "title", "class", "prompts", "images", "deleted", "by",
                                                      "Astria", "on"]
    assert as_text.stdout.splitlines()[1].split() == [str(tune), "Me,", "professionally", "woman", "2", "2",
                                                      time.strftime("%Y-%m-%d", deleted)]
    assert str(hidden) not in as_text.stdout + as_json.stdout


def test_astria_tunes_never_prints_the_key_even_when_astria_echoes_it(env: Env) -> None:
    tune = env.sandbox.astria.add_tune(f"echo {ASTRIA_TOKEN}")
    env.map_astria(1, pack="Unused")
    env.sandbox.rewrite("GET", "astria:/tunes/{id}/prompts", lambda r: Reply(
        422, json.dumps({"error": f"bad key Bearer {ASTRIA_TOKEN}"}).encode()))

    listed = [env.cli(*args, token=None) for args in (("astria", "tunes"), ("astria", "tunes", "--json"))]
    env.sandbox.rewrite("GET", "astria:/tunes", lambda r: Reply(
        422, json.dumps({"error": f"bad key Bearer {ASTRIA_TOKEN}"}).encode()))
    refused = env.cli("astria", "tunes", token=None)

    for done in (*listed, refused):
        assert ASTRIA_TOKEN not in done.stdout + done.stderr and "s3cr3t" not in done.stdout + done.stderr
    assert [done.returncode for done in listed] == [ExitCode.OK, ExitCode.OK]
    assert listed[0].stdout.splitlines()[1].split()[-3:-1] == ["?", "?"]
    assert json.loads(listed[1].stdout)["tunes"][0]["prompts"] is None
    assert "echo" in listed[0].stdout and str(tune) in listed[0].stdout
    assert refused.returncode != ExitCode.OK and "422" in refused.stderr


# -- the settings: a mapping's keys --------------------------------------------------------------------

def test_a_tune_s_mapping_keys_are_its_settings_fields_checked_as_they_are_decoded() -> None:
    import msgspec

    settings = msgspec.convert({"kind": "astria-tune", "astria_tune": 690200, "prompts": "headshot"},
                               AstriaTuneSettings)

    assert (settings.label, settings.id, settings.poll_s) == ("astria-tune:690200", 690200, 600.0)
    assert (AstriaTuneSettings.name, AstriaTuneSettings.api, AstriaTuneSettings.id_key,
            AstriaTuneSettings.described) == ("astria-tune", "astria", "astria_tune", True)
    for bad, said in [({"astria_tune": 0}, "Expected `int` >= 1 - at `$.astria_tune`"),
                      ({"astria_tune": 1, "prompts": ""}, "Expected `str` of length >= 1 - at `$.prompts`"),
                      ({"astria_tune": 1, "astria_poll_s": 5}, "Expected `float` >= 10.0 - at `$.astria_poll_s`"),
                      ({"astria_tune": 1, "classes": ["woman"]}, "Object contains unknown field `classes`")]:
        with pytest.raises(msgspec.ValidationError, match=re.escape(said)):
            msgspec.convert(bad, AstriaTuneSettings)
