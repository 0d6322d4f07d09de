"""A scan of the paths a watcher saw change (``scan_paths``): what the whole walk would have said of
them, from the few ``stat`` calls they need; and a full scan whenever only the whole walk can tell."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import image, write
from test_scanner import FILTERS, FOLLOW, make_unreadable, permission_bits_enforced  # noqa: F401 (a fixture)

from packsync.model import CachedFile, PathsScan, Scan
from packsync.sources.folder import scan_folder, scan_paths


def in_scope(rel: str, scope: tuple[str, ...]) -> bool:
    return any(rel == path or rel.startswith(path + "/") for path in scope)


def records_for(cache: dict[str, CachedFile], paths: list[str]) -> dict[str, CachedFile]:
    """What ``FileRepository.cache_for`` gives: the records of each path and of everything below it."""
    return {rel: c for rel, c in cache.items() if in_scope(rel, tuple(paths))}


def applied(before: Scan, partial: PathsScan) -> dict[str, CachedFile]:
    """The whole folder's records once the partial scan's are saved over the records of its scope."""
    kept = {rel: c for rel, c in before.cache.items() if not in_scope(rel, partial.scope)}
    return kept | partial.scan.cache


def judged(root: Path, paths: list[str], before: Scan, **options: object) -> tuple[PathsScan, Scan]:
    """The partial scan of ``paths`` against the records of the full scan ``before``, and a full scan now."""
    partial = scan_paths(root, paths, records_for(before.cache, paths), FILTERS, **options)  # type: ignore[arg-type]
    assert partial is not None
    full = scan_folder(root, before.cache, FILTERS, **options)  # type: ignore[arg-type]
    return partial, full


def assert_same_as_the_full_walk(partial: PathsScan, before: Scan, full: Scan) -> None:
    assert applied(before, partial) == full.cache
    assert {i.key: i for i in partial.scan.items} == {i.key: i for i in full.items if in_scope(i.key, partial.scope)}
    shown = tuple(path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for path in partial.scope)
    assert sorted(partial.scan.problems, key=str) == \
        sorted((p for p in full.problems if in_scope(p.rel_path.rstrip("/"), shown)), key=str)
    assert partial.gone == set(records_for(before.cache, list(partial.scope))) - full.cache.keys()


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Scan]]:
    for rel in ("a.png", "b.png", "sub/c.png", "sub/deeper/d.png", "subway.png", "drafts/e.png"):
        write(tmp_path / rel, image())
    yield tmp_path, scan_folder(tmp_path, {}, FILTERS)


def test_a_file_dropped_in_is_the_only_one_looked_at(tree: tuple[Path, Scan]) -> None:
    root, before = tree
    write(root / "new.png", image())
    reads: list[int] = []

    partial = scan_paths(root, ["new.png"], {}, FILTERS, on_file=reads.append)

    assert partial is not None and [i.key for i in partial.scan.items] == ["new.png"]
    assert partial.scan.hashed_files == 1 and len(reads) == 1
    assert partial.gone == set() and partial.scan.listing is None
    assert_same_as_the_full_walk(partial, before, scan_folder(root, before.cache, FILTERS))


@pytest.mark.parametrize(("change", "paths"), [
    (lambda root: (root / "a.png").unlink(), ["a.png"]),
    (lambda root: (root / "a.png").rename(root / "sub/renamed.png"), ["a.png", "sub/renamed.png"]),
    (lambda root: os.rename(root / "sub", root / "moved"), ["sub", "moved"]),
    (lambda root: write(root / "sub/deeper/new/f.png", image()), ["sub/deeper/new"]),
    (lambda root: write(root / "sub/c.png", image(20, 20)), ["sub/c.png"]),
    (lambda root: write(root / "sub/notes.txt", b"not an image"), ["sub/notes.txt"]),
    (lambda root: write(root / "sub/empty.png", b""), ["sub/empty.png"]),
    (lambda root: write(root / ".hidden/g.png", image()), [".hidden/g.png", ".hidden"]),
    (lambda root: write(root / "sub/\udcff.png", image()), ["sub/\udcff.png"]),
    (lambda root: (root / "sub/link.png").symlink_to(root / "a.png"), ["sub/link.png"]),
    (lambda root: None, ["never-there.png", "sub/deeper", "sub/c.png"]),
], ids=["removed", "renamed", "folder-renamed", "folder-new", "rewritten", "not-included", "bad-file",
        "hidden-folder", "not-utf8", "symlink", "untouched"])
def test_each_change_is_judged_as_the_full_walk_judges_it(tree: tuple[Path, Scan], change: Callable[[Path], object],
                                                          paths: list[str]) -> None:
    root, before = tree
    change(root)

    partial, full = judged(root, paths, before)

    assert_same_as_the_full_walk(partial, before, full)


def test_a_folder_removed_is_everything_it_held_gone(tree: tuple[Path, Scan]) -> None:
    root, before = tree
    for path in sorted((root / "sub").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "sub").rmdir()

    partial, full = judged(root, ["sub"], before)

    assert partial.gone == {"sub/c.png", "sub/deeper/d.png"}, "subway.png is not below sub/"
    assert_same_as_the_full_walk(partial, before, full)


def test_a_path_below_an_excluded_folder_is_not_the_mappings(tree: tuple[Path, Scan]) -> None:
    root, before = tree
    filters = replace(FILTERS, exclude=[*FILTERS.exclude, "drafts"])
    write(root / "drafts/new.png", image())

    partial = scan_paths(root, ["drafts/new.png"], {}, filters)

    assert partial is not None and partial.scan.items == [] and partial.scan.cache == {}


def test_a_busy_path_keeps_its_old_content(tree: tuple[Path, Scan]) -> None:
    root, before = tree
    (root / "a.png").write_bytes(b"half")

    partial, full = judged(root, ["a.png"], before, busy={"a.png"})

    assert partial.scan.keep == {before.cache["a.png"].sha256} and partial.gone == set()
    assert_same_as_the_full_walk(partial, before, full)


def test_an_unreadable_folder_walked_keeps_what_it_held(tree: tuple[Path, Scan],
                                                         make_unreadable: Callable[[Path], None]) -> None:  # noqa: F811
    root, before = tree
    write(root / "sub/deeper/new.png", image())
    make_unreadable(root / "sub/deeper")

    partial, full = judged(root, ["sub/deeper"], before)

    assert partial.scan.keep == {before.cache["sub/deeper/d.png"].sha256} and partial.gone == set()
    assert_same_as_the_full_walk(partial, before, full)


def test_a_path_that_cannot_be_looked_at_needs_the_full_walk(tree: tuple[Path, Scan],
                                                             make_unreadable: Callable[[Path], None]) -> None:  # noqa: F811
    root, before = tree
    make_unreadable(root / "sub")

    assert scan_paths(root, ["sub/c.png"], records_for(before.cache, ["sub/c.png"]), FILTERS) is None


@pytest.mark.parametrize("paths", [[".packsyncignore"], ["sub", ""], ["."], ["../elsewhere.png"]])
def test_what_decides_the_whole_folder_needs_the_full_walk(tree: tuple[Path, Scan], paths: list[str]) -> None:
    root, _before = tree

    assert scan_paths(root, paths, {}, FILTERS) is None


def test_followed_links_need_the_full_walk(tree: tuple[Path, Scan]) -> None:
    root, _before = tree

    assert scan_paths(root, ["a.png"], {}, FOLLOW) is None


def test_a_path_inside_another_is_judged_once(tree: tuple[Path, Scan]) -> None:
    root, before = tree
    write(root / "sub/new.png", image())

    partial, full = judged(root, ["sub/new.png", "sub", "sub/deeper/d.png"], before)

    assert partial.scope == ("sub",)
    assert sorted(i.key for i in partial.scan.items) == ["sub/c.png", "sub/deeper/d.png", "sub/new.png"]
    assert_same_as_the_full_walk(partial, before, full)
