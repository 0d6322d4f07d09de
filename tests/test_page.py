"""The page as a place to work: search results first, filters by state, a mapping's files a page at a
time, an image's own page, portraits kept whole, light and dark on a laptop and a phone.

Real parts throughout: the sandbox over HTTP, the state a real sync wrote, ``packsync ui`` (or the
daemon) serving it, Debian's Chromium driven by Playwright. ``$PACKSYNC_SCREENSHOT_DIR``, when set,
receives full-page screenshots of the demo's samples (light and dark, 1280×900 and 390×844, and an
image's page) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import Env, image, write
from helpers import StartDaemon, wait_until
from test_browser import CHROMIUM, browser, demo_folders, page, sync_api  # noqa: F401 - fixtures, the demo
from test_control import images_in, two_mappings
from test_web import page_url

from packsync.sandbox.imaging import solid_png
from packsync.sandbox.server import Reply, fail
from packsync.state.store import State
from packsync.views.search import count, search

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: install Debian's `chromium` "
                                    "package or set PACKSYNC_CHROMIUM")
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SHOTS = os.environ.get("PACKSYNC_SCREENSHOT_DIR")


@pytest.fixture
def ui(env: Env) -> Iterator[Any]:
    """Start ``packsync ui`` on the env's state (after the test synced): returns its address."""
    started: list[subprocess.Popen[str]] = []

    def launch() -> str:
        env.write_config()
        proc = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "ui", "--listen",
                                 "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert found, line
        return found.group(1)

    yield launch
    for proc in started:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def sync(env: Env, **options: Any) -> None:
    """``env.sync`` on a thread of its own: Playwright's loop runs on this one once a browser is open."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(env.sync, **options).result()


def names(html: str) -> list[str]:
    """The file names the page's cards show, in order."""
    return re.findall(r'<div class="name" title="[^"]*">(?:<a href="[^"]*">)?([^<]*)', html)


def key_of_page(html: str, index: int = 0) -> str:
    found = re.findall(r'class="mapping" id="mapping-\d+" data-key="([0-9a-f]{16})"', html)
    return str(found[index])


# -- search ------------------------------------------------------------------------------------------

def three_mappings(env: Env, files: int = 20) -> None:
    for n in range(3):
        folder = env.map(f"set{n}", pack=f"Pack {n}")
        for i in range(files):
            write(folder / ("sub" if i == 0 else "") / f"shot{n}-{i:02d}.png", image(16, 16))
    sync(env, wait=True, wait_timeout_s=30)


def test_the_count_of_matches_is_the_true_total_whatever_the_limit(env: Env) -> None:
    three_mappings(env, files=4)
    state = State(env.state_path, readonly=True)
    try:
        assert len(search(state, ["png"], 5)) == 5
        assert count(state, ["png"]) == 12
        assert count(state, ["shot1"]) == 4
        assert count(state, ["nothing-like-it"]) == 0 and count(state, []) == 0
    finally:
        state.close()


@needs_chromium
def test_search_results_come_first_above_the_fold(env: Env, ui: Any, page: Any) -> None:  # noqa: F811
    three_mappings(env)
    base = ui()

    page.goto(base + "?q=png")

    first = page.locator(".results .card").first
    first.wait_for()
    box = first.bounding_box()
    assert box is not None and box["y"] + box["height"] < 900, f"the first result is below the fold: {box}"
    assert page.locator(".results .count").inner_text() == "60 of 60 matches for “png”"
    results = page.locator(".results").bounding_box()
    mappings = page.locator(".mapping").first.bounding_box()
    assert results is not None and mappings is not None and results["y"] < mappings["y"], "results come first"


def test_a_result_says_its_file_name_folder_and_pack(env: Env, ui: Any) -> None:
    three_mappings(env, files=3)
    base = ui()

    html = httpx2.get(base, params={"q": "shot1-00"}).text

    assert "1 of 1 match for “shot1-00”" in html
    card = html[html.index('class="results"'):html.index("</section>")]
    assert names(card) == ["shot1-00.png"], "the name alone, never a path cut before it"
    assert '<div class="folder" title="set1/sub">set1/sub</div>' in card
    assert '<span class="pack">Pack 1</span>' in card
    assert re.search(r'href="/image/[0-9a-f]{16}/[0-9a-f]{64}"', card), "a result links to its image's page"


def test_no_matches_is_said_where_the_results_would_be(env: Env, ui: Any) -> None:
    three_mappings(env, files=2)
    base = ui()

    html = httpx2.get(base, params={"q": "zebra"}).text

    assert "No matches for “zebra”" in html
    assert html.index("No matches for") < html.index('class="mapping"'), "said first, not at the bottom"


# -- filters -----------------------------------------------------------------------------------------

def four_states(env: Env) -> Path:
    """One mapping: two images described, one whose description failed, one that could not be added
    (failed), one file that is no image (skipped): those two are its problems."""
    def describe(reply: Reply) -> Reply:  # the 13×13 image's description fails
        document = json.loads(reply.body)
        for item in document["data"]["images"]:
            meta = item["metadata"]
            if meta["status"] == "completed" and "13×13" in meta["description"]:
                meta.update(status="failed", error="no words for it", description=None, keywords=[])
        return Reply(reply.status, json.dumps(document).encode(), reply.content_type, reply.headers)

    def refuse(reply: Reply) -> Reply:
        return fail(422, "validation_error", "the image was refused")

    env.sandbox.rewrite("GET", "/packs/{id}", describe)
    folder = env.map("pics", pack="Four")
    for name in ("a.png", "b.png"):
        write(folder / name, image(12, 12))
    write(folder / "undescribed.png", image(13, 13))
    write(folder / "broken.png", b"\x89PNG\r\n\x1a\n but nothing after")
    sync(env, wait=True, wait_timeout_s=30)
    env.sandbox.rewrite("POST", "/packs/{id}/images", refuse, count=1)
    write(folder / "refused.png", image(12, 12))
    sync(env)
    return folder


def test_filters_list_the_files_in_each_state_with_their_counts(env: Env, ui: Any) -> None:
    four_states(env)
    base = ui()

    def shown(show: str) -> tuple[list[str], str]:
        html = httpx2.get(base, params={"show": show}).text
        return sorted(names(html)), html

    assert shown("all")[0] == ["a.png", "b.png", "refused.png", "undescribed.png"]
    not_synced = re.findall(r'<tr class="([a-z]+)"><td>[^<]*/([^</]+)</td><td>\1</td>', shown("all")[1])
    assert "Files not synced" in shown("all")[1]
    assert not_synced == [("skipped", "broken.png"), ("failed", "refused.png")]
    assert shown("synced")[0] == ["a.png", "b.png", "undescribed.png"]
    assert shown("pending")[0] == []
    problems, html = shown("problems")
    assert problems == ["broken.png", "refused.png"] and "Files not synced" not in html
    assert re.findall(r'<li class="card" data-state="([a-z]+)">', html) == ["skipped", "failed"]
    assert shown("ai-failed")[0] == ["undescribed.png"]
    assert shown("ai-pending")[0] == []
    assert "No files here are ai pending." in shown("ai-pending")[1]
    counts = dict(re.findall(r'data-show="([a-z-]+)">[^<]*<span class="n">(\d+)</span>', html))
    assert counts == {"all": "4", "synced": "3", "pending": "0", "problems": "2", "ai-pending": "0", "ai-failed": "1"}
    assert re.search(r'href="/\?show=problems" class="filter on" aria-current="page"', html)


@needs_chromium
def test_the_live_refresh_keeps_the_filter(daemon_env: Env, start: StartDaemon, page: Any) -> None:  # noqa: F811
    folder = daemon_env.map("pics", pack="Live")
    write(folder / "first.png", image(16, 16))
    base = page_url(start())
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url) if "/view" in request.url else None)
    page.goto(base + "?show=synced")
    page.locator(".card .name", has_text="first.png").wait_for()

    write(folder / "second.png", image(16, 16))

    page.locator(".card .name", has_text="second.png").wait_for()
    assert asked and all("show=synced" in url for url in asked), asked
    assert page.locator(".filters a.on").get_attribute("data-show") == "synced"
    assert page.evaluate("location.search") == "?show=synced"


# -- a mapping's files a page at a time --------------------------------------------------------------

def test_a_thousand_files_page_to_the_last(env: Env, ui: Any) -> None:
    folder = env.map("many", pack="Many")
    for i in range(1000):
        write(folder / f"f{i:04d}.png", solid_png(2, 2, (i % 256, i // 256, 7)))
    sync(env)
    base = ui()

    front = httpx2.get(base).text
    assert len(names(front)) == 120
    more = re.search(r'<a href="(/\?mapping=[0-9a-f]{16}&amp;page=2)">880 more files →</a>', front)
    assert more, "the main page links to the rest"
    seen = names(httpx2.get(base, params={"mapping": key_of_page(front)}).text)
    url, pages = more.group(1).replace("&amp;", "&"), 1
    while url:
        html = httpx2.get(base.rstrip("/") + url).text
        seen += names(html)
        pages += 1
        following = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = following.group(1).replace("&amp;", "&") if following else ""
    assert pages == 9 and "Page 9 of 9 · files 961–1000 of 1000" in html
    assert seen == [f"f{i:04d}.png" for i in range(1000)], "every file once, in order, to the last"
    back = re.search(r'<a rel="prev" href="([^"]+)"', html)
    assert back and "page=8" in back.group(1)


def test_a_page_past_the_end_says_so(env: Env, ui: Any) -> None:
    folder = env.map("few", pack="Few")
    write(folder / "one.png", image())
    sync(env)
    base = ui()
    key = key_of_page(httpx2.get(base).text)

    html = httpx2.get(base, params={"mapping": key, "page": "7"}).text

    assert "No files on this page." in html and "Page 7 of 1" in html
    assert 'rel="prev" href="/?mapping=' + key + '"' in html, "previous goes back to the last page"
    for odd in ("0", "-1", "x", "9" * 40):
        assert httpx2.get(base, params={"mapping": key, "page": odd}).status_code == 200


# -- an image's own page ------------------------------------------------------------------------------

@needs_chromium
def test_an_image_page_shows_everything_known_of_it(env: Env, ui: Any, page: Any) -> None:  # noqa: F811
    folder = env.map("pics", pack="Portraits")
    write(folder / "people" / "tall.png", solid_png(40, 120, (30, 60, 210)))
    sync(env, wait=True, wait_timeout_s=30)
    (pack,) = [p for p in env.sandbox.packs() if p["name"] == "Portraits"]
    (added,) = env.pack(pack["id"])["images"]
    base = ui()
    page.goto(base)

    card = page.locator(".card", has=page.locator(".name", has_text="tall.png"))
    assert card.locator("img").evaluate("img => getComputedStyle(img).objectFit") == "contain", "never cropped"
    card.locator(".name a").click()

    page.wait_for_url(re.compile(r"/image/[0-9a-f]{16}/[0-9a-f]{64}$"))
    assert page.locator("h2.title").inner_text() == "tall.png"
    picture = page.locator(".picture img")
    natural = picture.evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]")
    assert natural == [40, 120]
    box = picture.bounding_box()
    assert box is not None and abs(box["width"] / box["height"] - 40 / 120) < 0.02, "a portrait keeps its shape"
    assert page.locator(".description").inner_text() == "A 40×120 blue PNG image."
    assert "portrait" in page.locator(".about .keywords").inner_text()
    facts = page.locator(".facts").inner_text()
    assert str(folder / "people" / "tall.png") in facts
    assert added["id"] in facts and pack["id"] in facts and "Portraits" in facts
    assert page.locator(".meta-status").inner_text().startswith("completed")
    assert page.locator(".recipe").inner_text() == "its bytes as they are"

    page.get_by_text("Open its folder's pack →").click()
    page.wait_for_url(re.compile(r"/\?mapping=[0-9a-f]{16}$"))
    assert page.locator(".mapping").count() == 1
    assert "tall.png" in page.locator(".mapping .card").inner_text()


def test_an_image_page_is_only_for_a_content_the_mapping_holds(env: Env, ui: Any) -> None:
    folder = env.map("pics", pack="P")
    write(folder / "a.png", image())
    sync(env)
    base = ui()
    (link,) = set(re.findall(r'href="(/image/[0-9a-f]{16}/[0-9a-f]{64})"', httpx2.get(base).text))
    key = link.split("/")[2]

    answer = httpx2.get(base + link.lstrip("/"))
    assert answer.status_code == 200 and "a.png" in answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    for path in (f"image/{key}/" + "0" * 64, "image/" + "0" * 16 + link[-65:], f"image/{key}/..%2F..",
                 f"image/{key.upper()}/{link[-64:]}"):
        assert httpx2.get(base + path).status_code == 404, path


# -- how it looks ---------------------------------------------------------------------------------------

@needs_chromium
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_page_fits_a_laptop_and_a_phone(daemon_env: Env, start: StartDaemon, browser: Any,  # noqa: F811
                                            scheme: str) -> None:
    demo_folders(daemon_env)
    write(daemon_env.root / "brand" / "a folder with a rather long name indeed" / "portrait-of-the-founder.png",
          solid_png(60, 140, (200, 170, 140)))
    base = page_url(start())
    for label, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        context = browser.new_context(color_scheme=scheme, viewport=viewport)
        try:
            tab = context.new_page()
            tab.goto(base)
            tab.locator(".card .name", has_text="portrait-of-the-founder.png").wait_for()
            sync_api.expect(tab.locator(".chip.meta-pending")).to_have_count(0, timeout=15_000)
            tab.wait_for_load_state("networkidle")
            assert tab.evaluate("document.documentElement.scrollWidth <= innerWidth"), f"{label}: no sideways scroll"
            cut = tab.evaluate("[...document.querySelectorAll('.card .name')]"
                               ".filter(n => n.scrollWidth > n.clientWidth).map(n => n.textContent)")
            assert cut == [], f"{label}: names cut off"
            _shoot(tab, f"page-{scheme}-{label}")
            tab.locator("#mapping-0 h2 a.source").click()
            tab.locator(".pager").wait_for()
            assert tab.locator(".mapping").count() == 1
            _shoot(tab, f"mapping-{scheme}-{label}")
            tab.go_back()
            tab.locator(".card .name a", has_text="portrait-of-the-founder.png").click()
            tab.locator(".picture img").wait_for()
            assert tab.evaluate("document.documentElement.scrollWidth <= innerWidth"), f"{label}: image page fits"
            _shoot(tab, f"image-{scheme}-{label}")
            tab.goto(base + "?q=png")
            tab.locator(".results .card").first.wait_for()
            assert tab.evaluate("document.documentElement.scrollWidth <= innerWidth"), f"{label}: results fit"
            _shoot(tab, f"search-{scheme}-{label}")
        finally:
            context.close()


def _shoot(tab: Any, name: str) -> None:
    shot = tab.screenshot(path=str(Path(SHOTS) / f"{name}.png") if SHOTS else None, full_page=True)
    assert shot.startswith(b"\x89PNG")


# -- acting on a mapping (the daemon's page) ---------------------------------------------------------------

@needs_chromium
def test_allow_these_deletes_clears_one_mapping_s_safety_stop_only(daemon_env: Env, start: StartDaemon,
                                                                    page: Any) -> None:  # noqa: F811
    (alpha, alpha_pack), (beta, beta_pack) = two_mappings(daemon_env)
    base = page_url(start())
    wait_until(lambda: images_in(daemon_env, alpha_pack) == images_in(daemon_env, beta_pack) == 3, timeout=30)
    for folder in (alpha, beta):
        (folder / "0.png").unlink()
        (folder / "1.png").unlink()
    page.goto(base)
    first, second = page.locator("#mapping-0"), page.locator("#mapping-1")
    for mapping in (first, second):
        mapping.locator(".safety", has_text="2 images it would delete").wait_for()
    assert "alpha" in first.locator("h2").inner_text()
    first.locator("summary").click()
    _shoot(page, "safety-stop-light-laptop")

    first.get_by_role("button", name="Allow these deletes").click()

    wait_until(lambda: images_in(daemon_env, alpha_pack) == 1, timeout=30, what="alpha's two deletes made")
    first.locator(".safety").wait_for(state="detached")
    assert images_in(daemon_env, beta_pack) == 3, "the other mapping's withheld deletes stay withheld"
    assert second.locator(".safety").inner_text().startswith("Safety stop:")
    assert second.get_by_role("button", name="Allow these deletes").count() == 1
    assert page.errors == []


@needs_chromium
def test_pause_from_the_page_then_resume(daemon_env: Env, start: StartDaemon, page: Any) -> None:  # noqa: F811
    pack_id = daemon_env.sandbox.create_pack("Held")
    folder = daemon_env.map("held", pack_id=pack_id)
    write(folder / "before.png", image())
    base = page_url(start())
    page.goto(base)
    page.locator(".card .name", has_text="before.png").wait_for()

    page.get_by_role("button", name="Pause").click()

    page.locator("#mapping-0 .chip.paused", has_text="paused since").wait_for()
    _shoot(page, "paused-light-laptop")
    assert page.locator("#mapping-0").get_attribute("class") == "mapping paused"
    health = httpx2.get(base + "healthz").json()
    assert [m["status"] for m in health["mappings"]] == ["paused"]
    write(folder / "while-paused.png", image())
    page.get_by_role("button", name="Resume").click()
    page.locator(".card .name", has_text="while-paused.png").wait_for()
    wait_until(lambda: images_in(daemon_env, pack_id) == 2, timeout=30, what="the file dropped meanwhile synced")
    assert page.locator("#mapping-0 .chip.paused").count() == 0
    assert page.errors == []


@needs_chromium
def test_retry_skipped_files_is_offered_only_while_a_file_is_skipped(daemon_env: Env, start: StartDaemon,
                                                                     page: Any) -> None:  # noqa: F811
    folder = daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("Retry"))
    write(folder / "good.png", image())
    page.goto(page_url(start()))
    page.locator(".card .name", has_text="good.png").wait_for()
    retry = page.get_by_role("button", name="Retry skipped files")
    assert retry.count() == 0, "nothing is skipped: nothing to retry"

    write(folder / "broken.png", b"not an image")

    retry.wait_for()
    assert "broken.png" in page.locator("section.problems").inner_text()
    assert page.errors == []


def test_read_only_ui_has_no_buttons_and_refuses_them(env: Env, ui: Any) -> None:
    folder = env.map("pics", pack="P")
    write(folder / "a.png", image())
    sync(env)
    base = ui()
    html = httpx2.get(base).text
    key = key_of_page(html)

    assert "<button" not in html and 'action="/actions' not in html
    for name in ("pause", "resume", "allow-deletes", "sync"):
        assert httpx2.post(base + f"actions/{name}", params={"mapping": key, "csrf": "x"}).status_code == 403


@needs_chromium
def test_the_feed_lists_an_added_file_by_name(daemon_env: Env, start: StartDaemon, page: Any) -> None:  # noqa: F811
    folder = daemon_env.map("pics", pack_id=daemon_env.sandbox.create_pack("Feed"))
    write(folder / "first.png", image())
    base = page_url(start())
    page.goto(base)
    page.locator("#activity li", has_text="first.png").wait_for()

    write(folder / "sub" / "newcomer.png", image())

    entry = page.locator("#activity li", has_text="newcomer.png")
    entry.wait_for()
    assert entry.locator(".chip").inner_text() == "added"
    assert "sub/newcomer.png" in entry.inner_text() and "Feed" in entry.inner_text()
    assert page.locator("#activity li").first.inner_text() == entry.inner_text(), "newest first"
    page.locator("#activity summary").click()
    assert page.locator("#activity").get_attribute("open") is None
    write(folder / "third.png", image())
    page.locator(".card .name", has_text="third.png").wait_for()
    assert page.locator("#activity").get_attribute("open") is None, "a closed feed stays closed as the view refreshes"


def test_an_astria_image_has_a_page_without_a_local_picture(env: Env, ui: Any) -> None:
    astria = env.sandbox.astria.add_pack("Headshots")
    env.sandbox.astria.add_image(astria, "woman", image(20, 30))
    env.map_astria(astria, pack="Headshots")
    sync(env, wait=True, wait_timeout_s=30)
    base = ui()
    front = httpx2.get(base).text
    (link,) = set(re.findall(r'href="(/image/[0-9a-f]{16}/[0-9a-f]{64})"', front))
    (name,) = names(front)

    answer = httpx2.get(base + link.lstrip("/"))

    assert answer.status_code == 200
    assert f'<h2 class="title">{name}</h2>' in answer.text and "/thumb/" not in answer.text
    assert "Headshots" in answer.text and "A 20×30" in answer.text
