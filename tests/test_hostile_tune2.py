"""Second hostile pass on an Astria tune as a source (issue 29): the config of a tune mapping, a hostile prompt
text in ``status --files`` and ``search``. A test whose comment names a finding (F1-F5) failed before its fix;
the others pin behaviour that held under attack and must keep holding.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import Env, image, write
from test_astria_tune_sync import (
    DAY,
    DELETE,
    DOWNLOAD,
    PAGES,
    UPLOAD,
    Tune,
    _emptied,
    pack_shas,
    run_json,
    sha,
    status_of,
    tune_of,
)
from test_browser import browser, page  # noqa: F401 - fixtures
from test_hostile_tune import _ids_changed, _listed_twice
from test_page import needs_chromium, ui  # noqa: F401 - fixture

from packsync.config import parse_config
from packsync.errors import ConfigError, ExitCode
from packsync.sandbox.server import Reply

BASE = '[astria]\ntoken_file = "/nonexistent/astria.key"\n'


def _config(text: str) -> object:
    return parse_config(tomllib.loads(BASE + text))


@pytest.mark.parametrize(("mapping", "named"), [
    ('astria_tune = 5\nprompts = ""\npack = "A"', "mappings[0].prompts"),
    ('astria_tune = 5\nastria_poll_s = 9\npack = "A"', "mappings[0].astria_poll_s"),
    ('astria_tune = 5\nastria_poll_s = nan\npack = "A"', "mappings[0].astria_poll_s"),
    ('astria_tune = 5\nastria_poll_s = "600"\npack = "A"', "mappings[0].astria_poll_s"),
    ('astria_tune = 5.0\npack = "A"', "mappings[0].astria_tune"),
    ('astria_tune = true\npack = "A"', "mappings[0].astria_tune"),
    ('astria_tune = 0\npack = "A"', "mappings[0].astria_tune"),
    ('astria_tune = 5\nastria_pack = 6\npack = "A"', "mappings[0].astria_pack"),
    ('astria_tune = 5\nclasses = ["man"]\npack = "A"', "mappings[0].classes"),
    ('astria_tune = 5\npath = "/tmp"\npack = "A"', "mappings[0].astria_tune"),
    ('astria_tune = 5\nsidecars = "xmp"\npack = "A"', "mappings[0].sidecars"),
    ('astria_tune = 5\npacks_from = "subfolders"', "mappings[0].packs_from"),
    ('astria_poll_s = 60\npath = "/tmp"\npack = "A"', "mappings[0].astria_poll_s"),
    ('prompts = "x"\npath = "/tmp"\npack = "A"', "mappings[0].prompts"),
    ('astria_tune = 5\nprompts = ["a"]\npack = "A"', "mappings[0].prompts"),
    ('astria_tune = 5\npack = "A"\n[[mappings]]\nastria_tune = 5\npack = "B"', "mappings[1].astria_tune"),
    ('astria_tune = 5\nprompts = "a"\npack = "A"\n[[mappings]]\nastria_tune = 5\nprompts = "b"\npack = "A"',
     "mappings[1].astria_tune"),
    ('astria_tune = 5\npack = "A"\n[[mappings]]\npath = "/tmp"\npack = "A"', "mappings[1].pack"),
    ('astria_tune = 5\npack_id = "p1"\n[[mappings]]\npath = "/tmp"\npack_id = "p1"', "mappings[1].pack_id"),
])
def test_a_wrong_tune_mapping_is_refused_naming_its_key(mapping: str, named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _config("[[mappings]]\n" + mapping)
    assert named in str(refused.value)


@pytest.mark.parametrize("workspace", ['"a b"', '"a\\nb"', '"wé"', '""', "42"])
def test_a_workspace_that_cannot_be_a_header_is_refused(workspace: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _config(f'workspace = {workspace}\n[[mappings]]\nastria_tune = 5\npack = "A"')
    assert "workspace" in str(refused.value)


# (F3, failed before its fix: astria_poll_s = inf was taken, and the daemon never read the tune again)
@pytest.mark.parametrize("value", ["inf", "1e30"])
def test_an_infinite_tune_poll_interval_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        _config(f'[[mappings]]\nastria_tune = 5\nastria_poll_s = {value}\npack = "A"')


# (F4, failed before its fix: a 10 KB workspace was taken, and sent as a header on every call)
def test_a_10_kb_workspace_is_refused() -> None:
    with pytest.raises(ConfigError):
        _config(f'workspace = "{"w" * 10240}"\n[[mappings]]\nastria_tune = 5\npack = "A"')


# (F5, failed before its fix: a filter of only spaces was taken, and took nearly every prompt)
def test_a_prompts_filter_of_only_spaces_is_refused() -> None:
    with pytest.raises(ConfigError):
        _config('[[mappings]]\nastria_tune = 5\nprompts = " "\npack = "A"')


HOSTILE = ('<script>alert(1)</script><img src=x onerror=alert(2)> \u202eevil\u202c \x00nul \x1b[31mred '
           + "x" * 2000)


def test_a_hostile_prompt_text_is_shown_clean_by_status_files_and_search(env: Env) -> None:
    tune = Tune(env)
    tune.prompt(HOSTILE, image(seed=7101))
    tune.prompt("plain headshot", image(seed=7102))
    env.map_astria_tune(tune.id, pack="Headshots")
    result, _ = run_json(env)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr

    for args in (("status", "--files"), ("search", "script"), ("search", "alert")):
        shown = env.cli(*args, token=None)
        out = shown.stdout + shown.stderr
        assert "Traceback" not in out, out
        assert shown.returncode == ExitCode.OK, (args, out)
        assert "\x00" not in out and "\x1b" not in out and "\u202e" not in out, (args, out[:500])
        assert "x" * 600 not in out, "capped"


# -- packsync astria tunes -------------------------------------------------------------------------------------


def test_astria_tunes_with_no_tunes_says_so_and_exits_0(env: Env) -> None:
    env.map_astria(1, pack="Unused")  # (the key, in its token file)

    as_text = env.cli("astria", "tunes", token=None)
    as_json = env.cli("astria", "tunes", "--json", token=None)

    assert (as_text.returncode, as_json.returncode) == (ExitCode.OK, ExitCode.OK), as_text.stderr + as_json.stderr
    assert json.loads(as_json.stdout) == {"tunes": []}
    assert "Traceback" not in as_text.stderr and as_text.stdout.strip(), "an empty list is said, not silent"


def test_astria_tunes_lists_100_tunes_and_one_whose_prompts_answer_500_is_unknown_not_fatal(env: Env) -> None:
    ids = [env.sandbox.astria.add_tune(f"tune {i}") for i in range(100)]
    for tune_id in ids[:3]:
        env.sandbox.astria.add_prompt(tune_id, "one", images=[image(seed=7200 + tune_id)])
    bad = ids[50]
    env.sandbox.astria.add_prompt(bad, "BOOM", images=[image(seed=7199)])  # (its page, and each retry, fail)
    env.map_astria(1, pack="Unused")

    def fails(reply: Reply) -> Reply:
        return Reply(500, b'{"error": "boom"}') if b"BOOM" in reply.body else reply

    env.sandbox.rewrite(*PAGES, fails)
    started = time.monotonic()
    as_json = env.cli("astria", "tunes", "--json", token=None)
    took = time.monotonic() - started

    assert "Traceback" not in as_json.stderr, as_json.stderr
    assert as_json.returncode == ExitCode.OK, as_json.stdout + as_json.stderr
    tunes = {t["id"]: t for t in json.loads(as_json.stdout)["tunes"]}
    assert set(tunes) == set(ids)
    assert tunes[bad]["prompts"] is None and tunes[ids[0]]["images"] == 1 and tunes[ids[99]]["prompts"] == 0
    assert took < 60, f"{took:.0f} s"


# -- pull astria-tune:ID --delete, --dry-run --json ------------------------------------------------------------


def _pulled(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def _pull_json(env: Env, label: str, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    result = env.cli("pull", label, str(out), "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout)


@pytest.mark.parametrize("why", ["removed", "emptied", "expired"])
def test_pull_delete_dry_run_json_removes_nothing_and_says_what_a_real_run_would(env: Env, why: str) -> None:
    tune, prompt_ids = tune_of(env, 4, trained_at=time.time() - (31 * DAY if why == "expired" else 0))
    env.map_astria_tune(tune.id, pack="unused")
    out = env.root / "out"
    assert env.cli("pull", tune.label, str(out)).returncode == ExitCode.OK
    before = _pulled(out)
    if why == "emptied":
        env.sandbox.rewrite(*PAGES, _emptied(prompt_ids[0]))
    else:
        tune.remove(prompt_ids[0])

    dry, planned = _pull_json(env, tune.label, out, "--delete", "--dry-run")
    assert _pulled(out) == before, "a dry run removes nothing"
    real, done = _pull_json(env, tune.label, out, "--delete")

    assert dry.returncode == real.returncode, (dry.stdout, real.stdout)
    assert json.dumps(planned).count(str(prompt_ids[0])) >= 1 or why != "removed", planned
    if why == "removed":
        assert {name.split("-")[0] for name in _pulled(out)} == {str(p) for p in prompt_ids[1:]}
    else:
        assert _pulled(out) == before, done


# -- the 3-day warning and the tune's date -----------------------------------------------------------------------

TUNE = ("GET", "astria:/tunes/{id}")


def _trained_at(value: Any) -> Callable[[Reply], Reply]:
    """A rewrite of a tune's answer: its ``trained_at`` is ``value`` (None: the key is missing)."""
    def change(reply: Reply) -> Reply:
        if reply.status != 200:
            return reply
        tune = json.loads(reply.body)
        if value is None:
            tune.pop("trained_at", None)
        else:
            tune["trained_at"] = value
        return Reply(reply.status, json.dumps(tune).encode(), reply.content_type, reply.headers)

    return change


@pytest.mark.parametrize("garbage", [None, "yesterday", 1700000000, "2026-13-45T00:00:00Z", "0001-01-01T00:00:00Z"])
def test_a_tune_whose_trained_at_is_missing_or_garbage_is_mirrored_without_a_date_or_a_traceback(
        env: Env, garbage: Any) -> None:
    tune, _ = tune_of(env, 2)
    env.sandbox.rewrite(*TUNE, _trained_at(garbage))
    env.map_astria_tune(tune.id, pack="Headshots")

    result, _ = run_json(env)
    listed = env.cli("astria", "tunes", "--json", token=None)
    shown = env.cli("status", token=None)

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert pack_shas(env) == tune.distinct()
    assert "Traceback" not in listed.stderr + shown.stderr
    assert status_of(env, tune.label).get("expiring") is None


def test_a_later_answer_without_trained_at_does_not_erase_the_known_deletion_date(env: Env) -> None:
    tune, _ = tune_of(env, 2, trained_at=time.time() - 28 * DAY)  # Astria deletes it in 2 days
    env.map_astria_tune(tune.id, pack="Headshots")
    env.sandbox.inject("500", "PUT", "storage", count=1000)
    assert env.cli("run", "--no-wait").returncode == ExitCode.SOME_FAILED
    assert status_of(env, tune.label)["expiring"], "warned"

    env.sandbox.rewrite(*TUNE, _trained_at(None))
    env.cli("run", "--no-wait")

    warned = status_of(env, tune.label)
    assert warned["expires_at"] and warned["expiring"], warned


# (F2, failed before its fix: an answer without trained_at lifted the keep past the tune's date: 1 deleted)
def test_past_the_known_date_an_answer_without_trained_at_still_keeps_removed_prompts(env: Env) -> None:
    tune, prompt_ids = tune_of(env, 4, trained_at=time.time() - 31 * DAY)
    env.map_astria_tune(tune.id, pack="Headshots")
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    assert status_of(env, tune.label)["expires_at"], "the date is on record"
    before = pack_shas(env)
    tune.remove(prompt_ids[0])
    env.sandbox.rewrite(*TUNE, _trained_at(None))

    result, _ = run_json(env)

    assert env.sandbox.calls[DELETE] == 0 and pack_shas(env) == before, result.stdout


def test_the_warning_at_exactly_3_days_and_past_the_date(env: Env) -> None:
    """At 3 days less a minute left the warning says 'deletes'; past the date it says 'deleted … unless'."""
    soon, _ = tune_of(env, 1, title="soon", trained_at=time.time() - 27 * DAY - 60)
    gone, _ = tune_of(env, 1, title="gone", trained_at=time.time() - 31 * DAY)
    far, _ = tune_of(env, 1, title="far", trained_at=time.time() - 27 * DAY + 3600)
    for tune, pack in ((soon, "Soon"), (gone, "Gone"), (far, "Far")):
        env.map_astria_tune(tune.id, pack=pack)
    env.sandbox.inject("500", "PUT", "storage", count=1000)
    assert env.cli("run", "--no-wait").returncode == ExitCode.SOME_FAILED

    assert "deletes these images" in (status_of(env, soon.label)["expiring"] or "")
    assert "deleted these images" in status_of(env, gone.label)["expiring"]
    assert not status_of(env, far.label).get("expiring"), "more than 3 days left"


# -- a tune and a folder into one pack, one after the other: adoption and ownership ------------------------------


def test_a_pack_a_folder_filled_then_mapped_to_a_tune_keeps_the_folder_s_images(env: Env) -> None:
    folder = env.map("photos", pack="Headshots")
    photos = [write(folder / f"p{i}.png", image(seed=7300 + i)) for i in range(3)]
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    tune, _ = tune_of(env, 2)
    env.mappings.clear()
    env.map_astria_tune(tune.id, pack="Headshots")

    result, document = run_json(env)

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert env.sandbox.calls[DELETE] == 0, "the folder's images are not the tune's to delete"
    assert pack_shas(env) == tune.distinct() | {sha(p.read_bytes()) for p in photos}


def test_a_pack_a_tune_filled_then_mapped_to_a_folder_with_one_of_its_images_adopts_it_and_deletes_none(
        env: Env) -> None:
    tune, prompt_ids = tune_of(env, 2)
    env.map_astria_tune(tune.id, pack="Headshots")
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    env.mappings.clear()
    folder = env.map("photos", pack="Headshots")
    write(folder / "same.png", tune.images[prompt_ids[0]][0])  # (the tune's bytes, saved by hand)
    env.sandbox.reset_calls()

    result, _ = run_json(env)

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert env.sandbox.calls[DELETE] == 0 and env.sandbox.calls[UPLOAD] == 0, "adopted, not uploaded again"
    assert pack_shas(env) == tune.distinct()


# -- the page --------------------------------------------------------------------------------------------------

PAGE_HOSTILE = ('pwn <script>window.pwned=1</script><img src=x onerror="window.pwned=2"> '
                '"><svg onload="window.pwned=3"> \u202eelif\u202c \x00 ' + "y" * (1 << 20))


@needs_chromium
def test_the_page_shows_a_hostile_1_mb_prompt_text_as_capped_inert_text(env: Env, ui: Any,  # noqa: F811
                                                                       page: Any) -> None:  # noqa: F811
    tune = Tune(env)
    tune.prompt(PAGE_HOSTILE, image(seed=7401))
    env.map_astria_tune(tune.id, pack="Headshots")
    result, _ = run_json(env)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    base = ui()

    html = httpx2.get(base, params={"q": "pwn"}).text
    dialogs: list[str] = []

    def dismissed(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismissed)
    for address in (base, base + "?q=pwn", base + "?show=synced"):
        page.goto(address)
        page.wait_for_load_state("load")
        assert page.evaluate("() => window.pwned === undefined"), address

    assert not dialogs
    assert "<script>window.pwned" not in html and "onerror=\"window" not in html
    assert "\x00" not in html and "\u202e" not in html
    assert len(html) < 200_000, "the 1 MB text is capped"
    assert "pwn" in html, "the match is shown"


# (F1, failed before its fix: images Astria would not serve counted as skipped, and no warning was given)
@pytest.mark.parametrize("failing", ["download", "prompt"])
def test_the_warning_counts_images_not_mirrored_because_astria_s_side_failed(env: Env, failing: str) -> None:
    """Two days before the deletion date, images that could not be downloaded from Astria, or whose prompt
    could not be read, are as unmirrored as those Genviral refused: the warning is given."""
    tune, prompt_ids = tune_of(env, 2, trained_at=time.time() - 28 * DAY)
    env.map_astria_tune(tune.id, pack="Headshots")
    if failing == "download":
        env.sandbox.inject("500", *DOWNLOAD, count=1000)
    else:
        env.sandbox.rewrite(*PAGES, _ids_changed({prompt_ids[0]: True}))

    result, _ = run_json(env)

    assert result.returncode == ExitCode.SOME_FAILED, result.stdout + result.stderr
    shown = status_of(env, tune.label)
    assert shown.get("expiring"), {key: shown.get(key) for key in ("synced", "pending", "skipped", "failed")}


@pytest.mark.parametrize("words", [['"'], ["NEAR(a b)"], ["a*", "OR", "b"], ["'; DROP TABLE files; --"], ["\u202e"],
                                   ["x" * 10_000], ["detail:portrait"], ["^portrait"]])
def test_search_of_a_tune_s_prompt_texts_takes_any_words_without_a_traceback(env: Env, words: list[str]) -> None:
    tune, _ = tune_of(env, 2)
    env.map_astria_tune(tune.id, pack="Headshots")
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK

    found = env.cli("search", *words, token=None)
    as_json = env.cli("search", "--json", *words, token=None)

    assert "Traceback" not in found.stderr + as_json.stderr, found.stderr + as_json.stderr
    assert found.returncode == ExitCode.OK and as_json.returncode == ExitCode.OK, found.stderr + as_json.stderr
    assert "studio" in env.cli("search", "studio", token=None).stdout, "the state still answers"


@pytest.mark.parametrize("odd", ["listed twice", "negative id"])
def test_pull_delete_of_a_contradictory_or_odd_listing_removes_nothing(env: Env, odd: str) -> None:
    """The walk's H2 and H4 rules hold for pull as for the mirror: a prompt listed twice with different images,
    or with an id Astria never gives, withholds pull's removals."""
    tune = Tune(env)
    two = tune.prompt("two takes", image(seed=7501), image(seed=7502))
    tune.prompt("one take", image(seed=7503))
    env.map_astria_tune(tune.id, pack="unused")
    out = env.root / "out"
    assert env.cli("pull", tune.label, str(out)).returncode == ExitCode.OK
    before = _pulled(out)
    env.sandbox.rewrite(*PAGES, _listed_twice(two, slice(1, 2)) if odd == "listed twice" else _ids_changed({two: -7}))

    result = env.cli("pull", tune.label, str(out), "--delete", "--force")

    assert "Traceback" not in result.stderr, result.stderr
    assert before <= _pulled(out), result.stdout + result.stderr
    assert result.returncode != ExitCode.OK, "what could not be read is said"
