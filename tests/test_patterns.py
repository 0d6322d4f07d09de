"""Path-aware include and exclude patterns (gitignore's rules) against real trees, the folder's own
``.packsyncignore``, the NAS and desktop junk excluded by default, and ``run --dry-run -v`` naming the
pattern that left each path out."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Env, image, write
from helpers import StartDaemon, wait_until

from packsync.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from packsync.sources.folder import Filters, scan_folder
from packsync.sources.patterns import Patterns


def synced(root: Path, include: list[str], exclude: list[str], files: list[str]) -> set[str]:
    for rel in files:
        write(root / rel, image())
    scan = scan_folder(root, {}, Filters(include, exclude, max_file_bytes=10_000_000))
    assert scan.problems == []
    return {item.key for item in scan.items}


CASES = [
    # (what, exclude, files, the files synced)
    ("a name pattern matches at any depth", [".*", "*.tmp.png"],
     ["a.png", "d/.hidden.png", "d/e/x.tmp.png", "d/e/ok.png"], {"a.png", "d/e/ok.png"}),
    ("** matches any folders", ["**/Raw/**"],
     ["Raw/a.png", "x/Raw/b.png", "x/y/Raw/z/c.png", "x/raw.png", "x/Rawish/d.png"], {"x/raw.png", "x/Rawish/d.png"}),
    ("a pattern with a slash is anchored to the mapped folder", ["exports/*.png"],
     ["exports/a.png", "exports/sub/b.png", "x/exports/c.png"], {"exports/sub/b.png", "x/exports/c.png"}),
    ("a leading slash anchors a name", ["/top.png"], ["top.png", "sub/top.png"], {"sub/top.png"}),
    ("a trailing slash matches folders only", ["*.png/"], ["album.png/a.jpg", "b.png", "c/d.png"],
     {"b.png", "c/d.png"}),
    ("! re-includes what an earlier pattern excluded", ["*.png", "!keep*.png"],
     ["a.png", "keep.png", "sub/keep-too.png", "c.jpg"], {"keep.png", "sub/keep-too.png", "c.jpg"}),
    ("! cannot re-include below an excluded folder", ["old/", "!old/keep.png"], ["old/keep.png", "new.png"],
     {"new.png"}),
    ("the last matching pattern decides", ["!a.png", "*.png"], ["a.png", "b.jpg"], {"b.jpg"}),
    ("case does not matter", ["**/RAW/**", "*.PNG"], ["raw/a.jpg", "Raw/b.jpg", "c.png", "d.jpg"], {"d.jpg"}),
    ("a/**/b matches zero or more folders", ["a/**/b/"], ["a/b/1.png", "a/x/b/2.png", "a/x/y/b/3.png", "a/c/4.png"],
     {"a/c/4.png"}),
    ("escaped # and ! are names", ["\\#recycle/", "\\!draft.png"], ["#recycle/a.png", "!draft.png", "b.png"],
     {"b.png"}),
]


@pytest.mark.parametrize(("what", "exclude", "files", "expected"), CASES, ids=[case[0] for case in CASES])
def test_gitignore_rules_against_a_real_tree(tmp_path: Path, what: str, exclude: list[str], files: list[str],
                                              expected: set[str]) -> None:
    assert synced(tmp_path, DEFAULT_INCLUDE, exclude, files) == expected


def test_include_patterns_may_name_paths(tmp_path: Path) -> None:
    files = ["exports/a.jpg", "exports/2024/b.jpg", "exports/c.png", "raw/d.jpg", "e.jpg"]
    assert synced(tmp_path, ["exports/**/*.jpg"], [], files) == {"exports/a.jpg", "exports/2024/b.jpg"}


def test_the_usual_junk_is_excluded_by_default_and_reported_nowhere(tmp_path: Path) -> None:
    junk = ["@eaDir/a.jpg/SYNOFILE_THUMB_XL.jpg", "sub/@eaDir/b.jpg", "#recycle/old.jpg", ".thumbnails/t.png",
            "Thumbs.db", "sub/Thumbs.db", ".DS_Store", "._photo.jpg", "sub/._b.jpg", "desktop.ini", "x.jpg~",
            "upload.jpg.part"]
    assert synced(tmp_path, DEFAULT_INCLUDE, DEFAULT_EXCLUDE, [*junk, "photo.jpg", "sub/b.jpg"]) == \
        {"photo.jpg", "sub/b.jpg"}


def test_name_only_lists_take_the_quick_path_and_agree_with_pathspec() -> None:
    """The compiled-regex path for name lists decides as pathspec's gitignore rules do."""
    import pathspec

    quick = Patterns(DEFAULT_EXCLUDE)
    assert quick.simple
    spec = pathspec.GitIgnoreSpec.from_lines([p.lower() for p in DEFAULT_EXCLUDE])
    paths = [("a.jpg", False), (".x", False), ("d/.x", False), ("@eaDir", True), ("@eaDir", False),
             ("s/#recycle", True), ("#recycle", False), ("Thumbs.db", False), ("a/._b.jpg", False), ("x~", False),
             ("desktop.ini", False), (".thumbnails", True), ("thumbnails", True), ("a.part", False)]
    for rel, folder in paths:
        assert quick.matches(rel, rel.rsplit("/", 1)[-1], folder) == \
            spec.match_file(rel.lower() + "/" if folder else rel.lower()), rel
    assert not Patterns(["a/b.png"]).simple and not Patterns(["!a.png"]).simple


#: Patterns and paths on which packsync's own matcher must decide as pathspec's gitignore rules do.
AGREED_PATTERNS = ["a", "a/", "/a", "a/b", "a/**", "**/a", "a/**/b", "**/b/", "*.png", "/*.png", "a/*", "a/*/", "x*y",
                   "[ab]*", "[!a]", "[^a]", "a?", "**", "*/b", "a/**/", "\\*x", "a[", "**/a/**/b/**", "a**b", "/**/b",
                   "b/**/*.png", "[a-c]/[]x]", "A/B"]
AGREED_PATHS = ["a", "b", "a/b", "a/b/c", "x/a", "x/a/b", "a/x/b", "a.png", "x/a.png", "a/x/y/b", "ab", "xay", "a/c",
                "c", "*x", "a[", "b/c.png", "b/x/c.png", "aXb", "c/]", "b/x", "B/a.PNG"]


@pytest.mark.parametrize("pattern", AGREED_PATTERNS)
def test_every_pattern_decides_as_pathspecs_gitignore_rules_do(pattern: str) -> None:
    """A path is selected when the pattern matches it or a folder above it (the walk asks about folders
    first; an include list with a path pattern asks itself), as pathspec's ``match_file`` says of the
    whole path."""
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines([pattern.lower()])
    patterns = Patterns([pattern])
    for path in AGREED_PATHS:
        names = path.split("/")
        for folder in (False, True):
            ours = any(patterns.matches("/".join(names[:depth]), names[depth - 1], True)
                       for depth in range(1, len(names))) or patterns.matches(path, names[-1], folder)
            assert ours == spec.match_file(path.lower() + "/" if folder else path.lower()), (path, folder)
            include = Patterns([pattern], walked=False)
            assert include.simple or include.matches(path, names[-1], folder) == ours, (path, folder)


def test_the_folders_packsyncignore_is_honoured_and_read_again(tmp_path: Path) -> None:
    write(tmp_path / "private" / "a.png", image())
    write(tmp_path / "public" / "b.png", image())
    (tmp_path / ".packsyncignore").write_text("# not for the pack\nprivate/\n", encoding="utf-8")
    filters = Filters(DEFAULT_INCLUDE, DEFAULT_EXCLUDE, max_file_bytes=10_000_000)

    assert {item.key for item in scan_folder(tmp_path, {}, filters).items} == {"public/b.png"}

    (tmp_path / ".packsyncignore").write_text("public/\n", encoding="utf-8")
    assert {item.key for item in scan_folder(tmp_path, {}, filters).items} == {"private/a.png"}


def test_dry_run_verbose_lists_what_was_excluded_and_by_which_pattern(env: Env) -> None:
    folder = env.map("pics", pack="P", exclude=[".*", "**/Raw/**"])
    write(folder / "a.png", image())
    write(folder / "shoot" / "Raw" / "b.png", image())
    write(folder / ".cache" / "c.png", image())
    (folder / ".packsyncignore").write_text("drafts/\n", encoding="utf-8")
    write(folder / "drafts" / "d.png", image())

    done = env.cli("run", "--dry-run", "-v")

    assert done.returncode == 0, done.stderr
    assert "excluded   shoot/Raw/ (by **/Raw/**)" in done.stdout
    assert "excluded   .cache/ (by .*)" in done.stdout
    assert "excluded   drafts/ (by drafts/)" in done.stdout
    assert "upload+add a.png" in done.stdout
    assert "excluded" not in env.cli("run", "--dry-run").stdout, "only with -v"


def test_the_daemon_applies_a_changed_packsyncignore_at_once(daemon_env: Env, start: StartDaemon) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    (folder / ".packsyncignore").write_text("drafts/\n", encoding="utf-8")
    write(folder / "drafts" / "a.png", image())
    write(folder / "b.png", image())
    start()
    assert len(daemon_env.pack(pack_id)["images"]) == 1
    calls = daemon_env.sandbox.calls.total()

    (folder / "Thumbs.db").write_bytes(b"junk")  # junk: no event worth a sync
    (folder / ".packsyncignore").write_text("# drafts too\n", encoding="utf-8")  # the only change that counts

    wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 2, timeout=15, what="the drafts synced")
    assert daemon_env.sandbox.calls.total() > calls


# -- what a hostile review found (each failed before its fix) ---------------------------------------

@pytest.mark.parametrize(("include", "exclude", "files", "expected"), [
    (["Exports/"], [], ["Exports/a.png", "b.png"], {"Exports/a.png"}),  # a folder in an include list
    (DEFAULT_INCLUDE, ["[^a]*.png"], ["a.png", "b.png"], {"a.png"}),   # [^ negates, as [! does
    (DEFAULT_INCLUDE, ["star\\*.png"], ["star*.png", "starry.png"], {"starry.png"}),  # an escape
])
def test_a_pattern_means_the_same_whatever_else_is_in_its_list(tmp_path: Path, include: list[str],
                                                               exclude: list[str], files: list[str],
                                                               expected: set[str]) -> None:
    assert synced(tmp_path, include, exclude, files) == expected


def test_a_bad_pattern_is_a_config_error_naming_the_key(env: Env) -> None:
    env.map("pics", pack="P", exclude=["x/y", "!"])
    done = env.cli("run", "--dry-run")
    assert done.returncode == 2
    assert "mappings[0].exclude: '!' is not a pattern" in done.stderr


@pytest.mark.parametrize("ignore", [b"!\n", None])
def test_a_packsyncignore_that_cannot_be_used_fails_its_mapping_closed(env: Env, ignore: bytes | None) -> None:
    folder = env.map("pics", pack="P")
    other = env.map("other", pack="Q")
    write(folder / "private" / "a.png", image())
    write(other / "b.png", image())
    if ignore is None:
        (folder / ".packsyncignore").mkdir()  # there, and not readable as a file
    else:
        (folder / ".packsyncignore").write_bytes(ignore)

    done = env.cli("run", "--no-wait")

    assert done.returncode == 4, done.stdout + done.stderr
    assert ".packsyncignore" in done.stdout
    assert env.pack_named("Q")["images"] and not [p for p in env.sandbox.packs() if p["name"] == "P"]
