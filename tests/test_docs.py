"""The README and docs/: every relative link resolves to a file and a heading, every config shown is valid,
and the README keeps the commands a newcomer copies (the second is the one CI runs)."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path

import pytest

from packsync.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
TOML = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The text with its code blocks and code spans taken out: a link inside code is not a link."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, each space a hyphen."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file's headings give, the second of a name suffixed ``-1`` as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        name = slug(heading)
        found.add(f"{name}-{seen[name]}" if name in seen else name)
        seen[name] = seen.get(name, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_slug_is_github_s() -> None:
    assert slug("The page, health and metrics") == "the-page-health-and-metrics"
    assert slug("`run --json` and `sync --json`") == "run---json-and-sync---json"
    assert slug("Only packsync's images are packsync's — and each mapping's are its own") == \
        "only-packsyncs-images-are-packsyncs--and-each-mappings-are-its-own"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    """A link names an existing file (or folder), and its ``#anchor`` a heading of that file."""
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading gives #{anchor}")
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


def test_every_doc_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(ROOT / "README.md")}
    assert [doc.name for doc in DOCS if doc not in linked] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_a_doc_opens_with_its_title_a_summary_and_the_way_back(doc: Path) -> None:
    title, summary, back = [line for line in doc.read_text().split("\n") if line.strip()][:3]
    assert title.startswith("# ")
    assert summary and not summary.startswith(("#", "[", "!")), "the second line is a one-line summary"
    assert back.startswith("[← README](../README.md)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_config_shown_is_valid(page: Path) -> None:
    """A TOML block is a config packsync accepts; one without a table is a mapping's keys."""
    for block in TOML.findall(page.read_text()):
        data = tomllib.loads(block if re.search(r"^\[", block, re.MULTILINE)
                             else '[[mappings]]\npath = "photos"\npack = "Photos"\n' + block)
        parse_config(data)  # a config packsync would refuse raises ConfigError, naming the key


def test_the_readme_opens_with_the_two_commands() -> None:
    """Try it, then Run the tests, first of all; CI runs the second as it stands (``.ci/run``)."""
    readme = (ROOT / "README.md").read_text()
    first, second = re.findall(r"^```sh\n(.*?)\n```", readme, re.MULTILINE | re.DOTALL)[:2]
    assert first == "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/packsync demo"
    assert second == "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest -q"
    assert readme.index(first) < readme.index("\n## ")
    ci = (ROOT / ".ci" / "run").read_text()
    assert [step for step in second.split(" && ") if step not in ci] == []
