"""The page in a real browser: Playwright driving the system's Chromium against a running daemon.

The browser is Debian's ``chromium`` package (or ``$PACKSYNC_CHROMIUM``); Playwright downloads none.
These tests skip, saying how to get one, only when no Chromium is found. The first test's setup takes
the README's screenshot (light theme, the demo's sample images) into ``$PACKSYNC_SCREENSHOT`` when set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Env, image, write
from helpers import StartDaemon, wait_until
from test_web import describe_every_image, page_url

from packsync.demo import SAMPLES
from packsync.sandbox.imaging import solid_png

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is a test dependency: "
                               "pip install -e '.[test]'")

CHROMIUM = os.environ.get("PACKSYNC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found: install Debian's `chromium` package "
                                "(apt-get install chromium) or set PACKSYNC_CHROMIUM to a Chromium binary")
#: What a browser needs on a machine with no network beyond loopback (and as root, in CI).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(color_scheme="light", viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.errors = errors
    yield opened
    context.close()


def demo_folders(env: Env) -> None:
    """The demo's sample images, in the demo's two mappings."""
    for rel, (width, height, rgb) in SAMPLES.items():
        write(env.root / rel, solid_png(width, height, rgb))
    env.map("brand", pack="Brand Assets")
    env.map("products", pack="Product Shots")


def test_the_page_lists_every_file_with_its_description(daemon_env: Env, start: StartDaemon, page: Any) -> None:
    demo_folders(daemon_env)
    base = page_url(start())
    page.goto(base)

    page.get_by_text("A 64×64 red PNG image.").first.wait_for()
    cards = page.locator("#mapping-0 .card")
    assert cards.count() == 5
    assert page.locator("#mapping-1 .card").count() == 2
    sunset = page.locator("#mapping-0 .card", has=page.locator(".name", has_text="sunset.png"))
    assert sunset.locator(".folder").inner_text() == "backgrounds", "a file's name, then its folder"
    page.locator(".card .keywords li", has_text="landscape").first.wait_for()
    wait_until(lambda: page.locator(".chip.meta-pending").count() == 0, timeout=15, what="every description in")
    page.wait_for_load_state("networkidle")
    assert page.errors == []
    shot = page.screenshot(path=os.environ.get("PACKSYNC_SCREENSHOT"), full_page=True)
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000


def test_search_narrows_the_gallery_as_one_types(daemon_env: Env, start: StartDaemon, page: Any) -> None:
    demo_folders(daemon_env)
    base = page_url(start())
    page.goto(base)
    page.get_by_text("A 80×100 white PNG image.").wait_for()

    page.locator("#q").fill("orange")
    page.get_by_text("1 of 1 match for “orange”").wait_for()
    results = page.locator(".results .card")
    assert results.count() == 1
    assert "sunset.png" in results.inner_text()
    assert page.url.endswith("/?q=orange")

    page.locator("#q").fill("landscape")
    page.get_by_text("2 of 2 matches for “landscape”").wait_for()
    page.locator("#q").fill("")
    page.locator("#mapping-0 .card").first.wait_for()
    assert page.locator(".results").count() == 0


def test_a_dropped_file_appears_without_a_reload(daemon_env: Env, start: StartDaemon, page: Any) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "first.png", image(16, 16))
    base = page_url(start())
    page.goto(base)
    page.locator(".card .name", has_text="first.png").wait_for()
    page.evaluate("window.packsyncMarker = 'the same document'")

    write(folder / "dropped.png", solid_png(40, 30, (20, 60, 220)))

    page.locator(".card .name", has_text="dropped.png").wait_for()
    page.get_by_text("A 40×30 blue PNG image.").wait_for()
    assert page.evaluate("window.packsyncMarker") == "the same document", "the page was not reloaded"
    assert page.errors == []


def test_a_hostile_description_is_shown_as_text_and_runs_nothing(daemon_env: Env, start: StartDaemon,
                                                                  page: Any) -> None:
    hostile = '<script>window.owned = 1</script><img src=x onerror="window.owned = 2">'
    describe_every_image(daemon_env, hostile, ['"><svg onload=alert(1)>'])
    pack_id = daemon_env.sandbox.create_pack("p")
    write(daemon_env.map("pics", pack_id=pack_id) / "a.png", image())
    base = page_url(start())
    dialogs: list[str] = []
    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.goto(base)

    description = page.locator(".card .desc")
    description.wait_for()
    assert description.inner_text() == hostile
    assert page.locator(".card .keywords li").inner_text() == '"><svg onload=alert(1)>'
    with page.expect_response(lambda answer: "/view" in answer.url and answer.status == 200):
        page.locator("#q").fill("png")  # the view re-rendered by the page's script, with the same text
    page.locator(".results .desc").wait_for()
    assert page.evaluate("window.owned") is None
    assert dialogs == []
    assert page.locator(".card img[src='x'], .card svg, .card script").count() == 0
    assert page.title() == "packsync"
