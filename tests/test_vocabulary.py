"""One vocabulary for what could not be synced (``views/closing.py``, ``views/status.py``): a file is
**skipped** (packsync cannot sync it as it is), **failed** (its add failed this time) or a delete is
**withheld** — the same words and the same counts for the same files in ``run`` (text and ``--json``),
``status`` (text, ``--json``, ``--problems``), the page and ``/metrics``; ``run``'s closing line sums the run
and says why it exits as it does; times are local for people.

Real parts: the sandbox over HTTP (a 422 on the add makes a file fail), real folders, ``packsync ui``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx2
import pytest
from conftest import ASTRIA_TOKEN, Env, image, write
from helpers import StartDaemon, state_rows
from test_astria import astria_pack
from test_page import ui  # noqa: F401 - the fixture: ``packsync ui`` on the env's state
from test_web import sample, samples

from packsync.errors import ExitCode

ADD = ("POST", "/packs/{id}/images")
#: (mapped folder's name, file, word) of every file the scenario below could not sync.
EXPECTED = {("photos", "bad.png", "skipped"), ("photos", "refused.png", "failed"), ("brand", "loose.png", "skipped")}


def troubles(env: Env) -> tuple[Path, Path]:
    """A folder with a file that is no image and one whose add the API refuses, and a folder of subfolder packs
    with a file directly in it; synced once before the refusal (which is armed for the next sync)."""
    photos = env.map("photos", pack="Photos")
    write(photos / "good.png", image())
    write(photos / "bad.png", b"not an image at all")
    brand = env.map("brand", packs_from="subfolders")
    write(brand / "Acme" / "x.png", image())
    write(brand / "loose.png", image())
    first = env.cli("run", "--no-wait")
    assert first.returncode == ExitCode.SOME_FAILED, first.stdout + first.stderr
    write(photos / "refused.png", image())
    return photos, brand


def said(text: str) -> set[tuple[str, str, str]]:
    """(mapped folder's name, file, word) of each ``skipped``/``failed`` line under a ``folder → pack`` header."""
    found, folder = set(), ""
    for line in text.splitlines():
        if " → " in line and not line.startswith(" "):
            folder = Path(line.split(" → ")[0].split(" (")[0]).name
        elif match := re.match(r"\s+(skipped|failed)\s+(\S+): ", line):
            found.add((folder, match.group(2), match.group(1)))
    return found


def on_page(html: str) -> set[tuple[str, str, str]]:
    """(mapping's folder name, file, state) of each card of the page, per mapping."""
    found = set()
    for article in html.split('<article class="mapping')[1:]:
        source = re.search(r'<a class="source" href="[^"]*">([^<]*)</a>', article)
        assert source is not None
        cards = re.findall(r'<li class="card" data-state="([a-z]+)">.*?<div class="name" title="[^"]*">'
                           r'(?:<a href="[^"]*">)?([^<]*)', article, re.S)
        found |= {(source.group(1), name, state) for state, name in cards}
    return found


def test_the_same_files_have_the_same_words_and_counts_in_every_view(env: Env, ui: Any) -> None:  # noqa: F811
    troubles(env)
    env.sandbox.inject("422", *ADD)
    text = env.cli("run", "--no-wait")
    env.sandbox.inject("422", *ADD)
    document = json.loads(env.cli("run", "--no-wait", "--json").stdout)
    status = env.cli("status", token=None).stdout
    problems = env.cli("status", "--problems", token=None).stdout
    status_json = json.loads(env.cli("status", "--json", "--problems", token=None).stdout)
    base = ui()
    page = httpx2.get(base, params={"show": "problems"}).text
    metrics = samples(base)

    assert text.returncode == ExitCode.SOME_FAILED
    assert said(text.stdout) == EXPECTED, text.stdout
    assert "run: 0 added, 0 deleted, 2 skipped, 1 failed — exit 1: 1 file failed (tried again next sync); " \
           "2 files skipped" in text.stdout
    assert document["exit_code"] == ExitCode.SOME_FAILED and document["counts"]["skipped"] == 2 \
        and document["counts"]["failed"] == 1
    from_json = {(Path(m["source"]).name, p["path"], word) for m in document["mappings"]
                 for word in ("skipped", "failed") for p in m[word]}
    from_json |= {(Path(p["folder"]).name, p["path"], "skipped") for p in document["loose_files"]}
    assert from_json == EXPECTED
    assert re.search(r"photos → Photos .*\n  files 3 · synced 1 · pending 0 · skipped 1 · failed 1 ·", status), status
    assert re.search(r"brand → \(a pack per subfolder\)\n  files 1 · synced 0 · pending 0 · skipped 1 · failed 0",
                     status), status
    assert said(problems) == EXPECTED, problems
    from_status = {(Path(m["path"]).name, p["path"], p["state"]) for m in status_json["mappings"]
                   for p in m["problem_list"]}
    assert from_status == EXPECTED
    counts = {Path(m["path"]).name: (m["skipped"], m["failed"]) for m in status_json["mappings"]}
    assert counts == {"photos": (1, 1), "Acme": (0, 0), "brand": (1, 0)}
    assert on_page(page) == EXPECTED, page
    assert re.search(r'data-show="problems">[^<]*<span class="n">3</span>', page)
    assert (sample(metrics, "packsync_files", pack="Photos", state="skipped"),
            sample(metrics, "packsync_files", pack="Photos", state="failed"),
            sample(metrics, "packsync_files", pack="<subfolder>", state="skipped")) == (1, 1, 1)


def test_a_failed_file_is_no_longer_failed_once_it_is_added(env: Env) -> None:
    troubles(env)
    env.sandbox.inject("422", *ADD)
    env.cli("run", "--no-wait")

    again = env.cli("run", "--no-wait")
    status = json.loads(env.cli("status", "--json", "--problems", token=None).stdout)

    assert "1 added, 0 deleted, 2 skipped, 0 failed" in again.stdout, again.stdout
    photos = status["mappings"][0]
    assert (photos["synced"], photos["skipped"], photos["failed"]) == (2, 1, 0)
    assert [p["path"] for p in photos["problem_list"]] == ["bad.png"]


def test_a_run_whose_only_problem_is_a_skipped_file_says_how_to_ignore_it(env: Env) -> None:
    photos = env.map("photos", pack="Photos")
    write(photos / "good.png", image())
    write(photos / "sub" / "not [an] image*.png", b"text, not pixels")

    first = env.cli("run", "--no-wait")
    document = json.loads(env.cli("run", "--no-wait", "--json").stdout)

    ignore = photos / ".packsyncignore"
    assert first.returncode == ExitCode.SOME_FAILED
    assert f"— exit 1: 1 file skipped; list it in {ignore} to stop trying" in first.stdout, first.stdout
    line = re.search(rf"  add to {re.escape(str(ignore))}: (.+)\n", first.stdout)
    assert line is not None and line.group(1) == r"/sub/not \[an\] image\*.png"
    assert document["exit_reason"] == f"1 file skipped; list it in {ignore} to stop trying"
    ignore.write_text(line.group(1) + "\n", encoding="utf-8")
    then = env.cli("run", "--no-wait")
    assert then.returncode == ExitCode.OK, then.stdout + then.stderr
    assert then.stdout.splitlines()[-1] == "run: in sync — exit 0"


def test_a_skipped_file_of_a_subfolder_pack_is_ignored_in_the_folder_s_own_ignore_file(env: Env) -> None:
    brand = env.map("brand", packs_from="subfolders")
    write(brand / "Acme" / "x.png", image())
    write(brand / "Acme" / "broken.png", b"")
    write(brand / "loose.png", image())

    first = env.cli("run", "--no-wait")

    lines = re.findall(r"  add to (.+): (.+)\n", first.stdout)
    assert sorted(lines) == [(str(brand / ".packsyncignore"), "/Acme/broken.png"),
                             (str(brand / ".packsyncignore"), "/loose.png")], first.stdout
    (brand / ".packsyncignore").write_text("".join(line + "\n" for _file, line in lines), encoding="utf-8")
    then = env.cli("run", "--no-wait")
    status = env.cli("status", "--problems", token=None).stdout
    assert then.returncode == ExitCode.OK, then.stdout + then.stderr
    assert not said(status) and "a pack per subfolder" not in status, status


def test_the_closing_line_of_a_clean_run_and_of_one_in_sync(env: Env) -> None:
    write(env.map("photos", pack="Photos") / "a.png", image())

    first = env.cli("run", "--no-wait")
    second = env.cli("run", "--no-wait", "--json")

    assert first.returncode == ExitCode.OK
    assert first.stdout.splitlines()[-1] == "run: 1 added, 0 deleted, 0 skipped, 0 failed — exit 0"
    assert json.loads(second.stdout)["exit_reason"] is None


def test_the_closing_line_of_a_safety_stop_names_the_withheld_deletes_and_allow_deletes(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, max_delete=1)
    files = [write(folder / f"{i:02d}.png", image()) for i in range(4)]
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    for path in files[:3]:
        path.unlink()

    stopped = env.cli("run", "--no-wait")
    document = json.loads(env.cli("run", "--no-wait", "--json").stdout)

    assert stopped.returncode == ExitCode.SAFETY
    reason = f"3 deletes withheld in {folder} (packsync allow-deletes {folder})"
    assert stopped.stdout.splitlines()[-1] == f"run: nothing synced — exit 4: {reason}", stopped.stdout
    assert document["exit_reason"] == reason


def test_the_closing_line_of_a_refused_key(env: Env) -> None:
    pack_id, _ = astria_pack(env, {"woman": 1})
    env.map_astria(pack_id, pack="Headshots")
    env.sandbox.astria.users = {}

    result = env.cli("run", "--no-wait")

    assert result.returncode == ExitCode.AUTH
    assert re.fullmatch(r"run: nothing synced — exit 3: the key was refused \(.*Astria.*\)",
                        result.stdout.splitlines()[-1]), result.stdout
    assert ASTRIA_TOKEN not in result.stdout + result.stderr


def test_a_dry_run_names_the_file_of_a_withheld_delete(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id, max_delete=1)
    for i in range(3):
        write(folder / f"shot-{i}.png", image())
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    (folder / "shot-0.png").unlink()
    (folder / "shot-1.png").unlink()

    plan = env.cli("run", "--dry-run")
    document = json.loads(env.cli("run", "--dry-run", "--json").stdout)

    withheld_files = [str(a["file"]) for a in document["actions"] if a["kind"] == "withheld-delete"]
    assert sorted(withheld_files) == ["shot-0.png", "shot-1.png"], document["actions"]
    assert plan.returncode == ExitCode.SAFETY
    withheld = [line for line in plan.stdout.splitlines() if line.lstrip().startswith("withheld")]
    assert [re.sub(r" \(image [^)]*\)", "", line).split()[3] for line in withheld] == ["shot-0.png", "shot-1.png"]
    assert f"exit 4: 2 deletes withheld in {folder}" in plan.stdout


def test_new_pack_is_said_only_of_a_pack_the_sync_creates(env: Env) -> None:
    by_id = env.sandbox.create_pack("Given")
    env.sandbox.create_pack("Existing")
    for name, options in (("a", {"pack_id": by_id}), ("b", {"pack": "Existing"}), ("c", {"pack": "Fresh"})):
        write(env.map(name, **options) / "x.png", image(seed=ord(name)))

    plan = env.cli("run", "--dry-run").stdout
    done = env.cli("run", "--no-wait").stdout

    headers = [line for line in plan.splitlines() if " → " in line]
    assert [("(new pack" in line) for line in headers] == [False, False, True], plan
    created = env.pack_named("Fresh")["id"]
    assert f"→ Fresh (new pack {created})" in done and "→ Existing (new pack" not in done, done


def test_status_shows_times_in_the_local_zone(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    write(env.map("photos", pack="Photos") / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    (synced_at,), = state_rows(env.state_path, "SELECT synced_at FROM mappings")
    monkeypatch.setenv("TZ", "Asia/Kolkata")

    status = env.cli("status", token=None).stdout

    local = datetime.fromtimestamp(synced_at, ZoneInfo("Asia/Kolkata")).strftime("%Y-%m-%d %H:%M")
    assert f"last sync {local} IST" in status, status


def test_a_pack_given_by_id_is_named_by_its_id_when_its_folder_stops_the_sync(env: Env) -> None:
    by_id = env.sandbox.create_pack("Given")
    folder = env.map("a", pack_id=by_id)
    write(folder / "x.png", image())
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()

    plan = env.cli("run", "--dry-run")

    assert plan.returncode == ExitCode.SAFETY
    assert plan.stdout.splitlines()[0] == f"{folder} → pack {by_id}", plan.stdout


def test_a_run_the_daemon_answers_ends_with_the_same_closing_line(daemon_env: Env, start: StartDaemon) -> None:
    photos = daemon_env.map("photos", pack="Photos")
    write(photos / "good.png", image())
    write(photos / "bad.png", b"not an image at all")
    start()

    text = daemon_env.cli("run", "--no-wait")
    document = json.loads(daemon_env.cli("run", "--no-wait", "--json").stdout)

    ignore = photos / ".packsyncignore"
    assert text.returncode == document["exit_code"] == ExitCode.SOME_FAILED, text.stdout + text.stderr
    assert "another packsync" not in text.stderr
    # (the daemon may have added good.png before the run asked)
    assert re.fullmatch(rf"run: [01] added, 0 deleted, 1 skipped, 0 failed — exit 1: 1 file skipped; "
                        rf"list it in {re.escape(str(ignore))} to stop trying", text.stdout.splitlines()[-2])
    assert text.stdout.splitlines()[-1] == f"  add to {ignore}: /bad.png"
    assert document["exit_reason"] == f"1 file skipped; list it in {ignore} to stop trying"


def test_a_run_of_paused_mappings_alone_says_nothing_was_synced(env: Env) -> None:
    write(env.map("photos", pack="Photos") / "a.png", image())
    assert env.cli("pause", token=None).returncode == ExitCode.OK

    ran = env.cli("run", "--no-wait")

    assert ran.returncode == ExitCode.OK, ran.stdout + ran.stderr
    assert ran.stdout.splitlines()[-1] == "run: nothing synced — exit 0", ran.stdout


DELETE = ("DELETE", "/packs/{id}/images/{image_id}")


def test_a_mapping_that_stopped_is_not_said_to_be_in_sync(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Photos")
    write(env.map("photos", pack_id=pack_id) / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    env.sandbox.delete_pack(pack_id)

    stopped = env.cli("run", "--no-wait")

    assert stopped.returncode != ExitCode.OK, stopped.stdout + stopped.stderr
    last = stopped.stdout.splitlines()[-1]
    assert last.startswith(f"run: nothing synced — exit {stopped.returncode}: "), stopped.stdout


def test_a_run_whose_only_problem_is_a_skipped_astria_image_says_why_it_exits_1(env: Env) -> None:
    pack_id, _ = astria_pack(env, {"woman": 1})
    env.sandbox.astria.add_image(pack_id, "woman", b"not an image at all")
    env.map_astria(pack_id, pack="Headshots")

    text = env.cli("run", "--no-wait")
    document = json.loads(env.cli("run", "--no-wait", "--json").stdout)

    assert text.returncode == ExitCode.SOME_FAILED, text.stdout + text.stderr
    assert text.stdout.splitlines()[-1] == "run: 1 added, 0 deleted, 1 skipped, 0 failed — exit 1: 1 file skipped", \
        text.stdout
    assert document["exit_reason"] == "1 file skipped"
    assert ".packsyncignore" not in text.stdout


def test_a_failed_delete_is_a_delete_that_failed_not_a_file(env: Env) -> None:
    photos = env.map("photos", pack="Photos")
    write(photos / "keep.png", image(seed=1))
    gone = write(photos / "sub" / "gone.png", image(seed=2))
    assert env.cli("run", "--no-wait").returncode == ExitCode.OK
    gone.unlink()
    env.sandbox.inject("422", *DELETE)

    text = env.cli("run", "--no-wait")
    env.sandbox.inject("422", *DELETE)
    document = json.loads(env.cli("run", "--no-wait", "--json").stdout)
    status = json.loads(env.cli("status", "--json", token=None).stdout)

    assert text.returncode == ExitCode.SOME_FAILED, text.stdout + text.stderr
    assert text.stdout.splitlines()[-1] == "run: 0 added, 0 deleted, 0 skipped, 0 failed, 1 delete failed — exit 1: " \
        "1 delete failed (tried again next sync)", text.stdout
    assert re.search(r"  delete failed gone\.png: .* \(tried again next sync\)", text.stdout), text.stdout
    mapping = document["mappings"][0]
    assert (mapping["failed"], document["counts"]["failed"], document["counts"]["deletes_failed"]) == ([], 0, 1)
    assert [d["file"] for d in mapping["failed_deletes"]] == ["gone.png"]
    assert status["version"] == 2
    assert status["mappings"][0]["failed"] == 0
    assert status["mappings"][0]["last_error"].startswith("gone.png: delete failed: "), status
    again = env.cli("run", "--no-wait")
    assert again.stdout.splitlines()[-1] == "run: 0 added, 1 deleted, 0 skipped, 0 failed — exit 0", again.stdout


def test_a_mapping_that_stops_before_its_plan_keeps_its_failed_files(env: Env) -> None:
    photos, _brand = troubles(env)
    env.sandbox.inject("422", *ADD)
    env.cli("run", "--no-wait")
    moved = photos.with_name("photos-away")
    photos.rename(moved)

    stopped = env.cli("run", "--no-wait")
    status = json.loads(env.cli("status", "--json", "--problems", token=None).stdout)

    assert stopped.returncode == ExitCode.SAFETY, stopped.stdout + stopped.stderr
    mapping = next(m for m in status["mappings"] if Path(m["path"]).name == "photos")
    assert mapping["failed"] == 1, mapping
