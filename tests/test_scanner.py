"""The scanner on real folders: what it syncs, what it skips and why, and what it never reads twice."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import image, write

from packsync.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from packsync.errors import SourceUnavailable
from packsync.model import CachedFile, Scan
from packsync.sources.folder import Filters, scan_folder, stat_version

FILTERS = Filters(DEFAULT_INCLUDE, DEFAULT_EXCLUDE, max_file_bytes=10_000_000)
FOLLOW = replace(FILTERS, follow_symlinks=True)


def synced(scan: Scan) -> dict[str, str]:
    """rel_path -> sha256 of the good files."""
    return {f.key: f.sha256 for f in scan.items}


def problems(scan: Scan) -> dict[str, str]:
    """rel_path -> reason of the skipped files and folders."""
    return {p.rel_path: p.reason for p in scan.problems}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- walking and filtering ------------------------------------------------------------------------

def test_nested_folders_are_walked_and_files_known_by_content(tmp_path: Path) -> None:
    data = {rel: image() for rel in ("a.png", "sub/b.png", "sub/deeper/still/c.png")}
    for rel, content in data.items():
        write(tmp_path / rel, content)
    write(tmp_path / "sub/notes.txt", b"not an image, not included")

    scan = scan_folder(tmp_path, {}, FILTERS)

    assert synced(scan) == {rel: sha(content) for rel, content in data.items()}
    assert {f.key: (f.size, f.content_type) for f in scan.items} == \
        {rel: (len(content), "image/png") for rel, content in data.items()}
    assert scan.problems == [] and not scan.keep
    assert scan.hashed_files == 3


def test_an_empty_folder_has_nothing_and_is_clean(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)

    scan = scan_folder(tmp_path / "empty", {}, FILTERS)

    assert (scan.items, scan.problems, not scan.keep) == ([], [], True)


def test_the_type_comes_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(100) + b"\xff\xd9"
    write(tmp_path / "really-a-jpeg.png", jpeg)

    (local,) = scan_folder(tmp_path, {}, FILTERS).items

    assert local.content_type == "image/jpeg"


@pytest.mark.parametrize(("name", "include", "exclude", "is_synced"), [
    ("a.png", ["*.png"], [], True),
    ("A.PNG", ["*.png"], [], True),
    ("a.png", ["*.PNG"], [], True),
    ("Photo.JpEg", DEFAULT_INCLUDE, DEFAULT_EXCLUDE, True),
    ("a.png", ["*.jpg"], [], False),
    ("a.png", ["*.png"], ["A.*"], False),
    (".hidden.png", DEFAULT_INCLUDE, DEFAULT_EXCLUDE, False),
    ("draft.PNG.part", DEFAULT_INCLUDE + ["*.part"], DEFAULT_EXCLUDE, False),
    ("edit.png~", DEFAULT_INCLUDE + ["*~"], DEFAULT_EXCLUDE, False),
    ("export.TMP", ["*"], DEFAULT_EXCLUDE, False),
])
def test_include_and_exclude_are_case_insensitive_globs(tmp_path: Path, name: str, include: list[str],
                                                        exclude: list[str], is_synced: bool) -> None:
    write(tmp_path / name, image())

    scan = scan_folder(tmp_path, {}, Filters(include, exclude, max_file_bytes=10_000_000))

    assert [f.key for f in scan.items] == ([name] if is_synced else [])
    assert scan.problems == []


def test_excluded_folders_are_not_entered(tmp_path: Path) -> None:
    # If the scanner went into these folders, the fake images there would be reported.
    write(tmp_path / ".git/objects/fake.png", b"text")
    write(tmp_path / "Drafts/fake.png", b"text")
    write(tmp_path / "sub/DRAFTS/fake.png", b"text")
    good = write(tmp_path / "sub/good.png", image())

    scan = scan_folder(tmp_path, {}, replace(FILTERS, exclude=[*DEFAULT_EXCLUDE, "drafts"]))

    assert synced(scan) == {"sub/good.png": sha(good.read_bytes())}
    assert scan.problems == []


@pytest.mark.parametrize("name", ["with space.png", "  leading.png", "café ☕ 写真.png", "line\nbreak.png",
                                  "tab\there.png", "quote'\"back\\slash.png", "-dash.png"])
def test_unusual_names_are_synced_under_their_own_name(tmp_path: Path, name: str) -> None:
    data = write(tmp_path / "sub dir" / name, image()).read_bytes()

    scan = scan_folder(tmp_path, {}, FILTERS)

    assert synced(scan) == {f"sub dir/{name}": sha(data)}


def bytes_path(folder: Path, name: bytes) -> bytes:
    return os.path.join(os.fsencode(folder), name)


def test_a_name_that_is_not_utf8_is_reported_legibly(tmp_path: Path) -> None:
    with open(bytes_path(tmp_path, b"caf\xe9.png"), "wb") as handle:
        handle.write(image())

    scan = scan_folder(tmp_path, {}, FILTERS)

    assert scan.items == []
    assert problems(scan) == {"caf\\xe9.png": "its name is not valid UTF-8; rename it"}
    (problem,) = scan.problems
    assert not problem.notice
    problem.rel_path.encode("utf-8")  # printable in any report


def test_a_folder_whose_name_is_not_utf8_is_reported_and_not_entered(tmp_path: Path) -> None:
    os.mkdir(bytes_path(tmp_path, b"\xff\xfe"))
    with open(bytes_path(tmp_path, b"\xff\xfe/inside.png"), "wb") as handle:
        handle.write(image())

    scan = scan_folder(tmp_path, {}, FILTERS)

    assert scan.items == []
    assert list(problems(scan)) == ["\\xff\\xfe"]


def test_a_file_the_mapping_does_not_include_is_ignored_whatever_its_name(tmp_path: Path) -> None:
    """A badly named file that would never be synced is no problem of the mapping's."""
    with open(bytes_path(tmp_path, b"notes-\xe9.txt"), "wb") as handle:
        handle.write(b"text")
    with open(bytes_path(tmp_path, b".hidden-\xe9.png"), "wb") as handle:
        handle.write(image())

    scan = scan_folder(tmp_path, {}, FILTERS)

    assert scan.items == [] and scan.problems == []


# -- bad files ------------------------------------------------------------------------------------

PNG = image()
JPEG = b"\xff\xd8\xff\xe0" + bytes(100) + b"\xff\xd9"
GIF = b"GIF89a" + bytes(40) + b";"


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("empty.png", b"", "empty file"),
    ("notes.jpg", b"this is text, not a JPEG", "not an image"),
    ("scan.bmp", b"BM" + bytes(100), "BMP images are not accepted"),
    ("scan.tif", b"II*\x00" + bytes(100), "TIFF images are not accepted"),
    ("logo.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG images are not accepted"),
    ("cut.png", PNG[:-12], "truncated or corrupt PNG"),
    ("cut.jpg", JPEG[:-2], "truncated or corrupt JPEG"),
    ("cut.gif", GIF[:-1], "truncated or corrupt GIF"),
])
def test_bad_files_are_reported_with_a_reason(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    write(tmp_path / "sub" / name, data)
    filters = replace(FILTERS, include=[*DEFAULT_INCLUDE, "*.bmp", "*.tif", "*.svg"])

    scan = scan_folder(tmp_path, {}, filters)

    assert scan.items == []
    assert list(problems(scan)) == [f"sub/{name}"] and reason in problems(scan)[f"sub/{name}"]
    assert not scan.problems[0].notice
    assert not scan.keep, "a file positively seen bad is not a read error"


def test_a_file_over_the_size_limit_is_reported_without_being_read(tmp_path: Path) -> None:
    write(tmp_path / "huge.png", PNG + bytes(2_000_000))
    small = write(tmp_path / "small.png", image())

    scan = scan_folder(tmp_path, {}, replace(FILTERS, max_file_bytes=1_000_000))

    assert synced(scan) == {"small.png": sha(small.read_bytes())}
    assert problems(scan) == {"huge.png": "larger than max_file_mb (2.0 MB > 1 MB)"}
    assert scan.hashed_files == 1


def test_a_good_file_that_turned_bad_no_longer_holds_its_old_content(tmp_path: Path) -> None:
    """Corruption is seen, not guessed: the old content is not kept, so its image may go."""
    path = write(tmp_path / "a.png", image())
    first = scan_folder(tmp_path, {}, FILTERS)
    path.write_bytes(path.read_bytes()[:-12])

    scan = scan_folder(tmp_path, first.cache, FILTERS)

    assert scan.items == [] and "truncated" in problems(scan)["a.png"]
    assert scan.keep == set() and not scan.keep


# -- the hash cache -------------------------------------------------------------------------------

def test_an_unchanged_tree_is_not_read_again(tmp_path: Path) -> None:
    for rel in ("a.png", "sub/b.png", "sub/c.png"):
        write(tmp_path / rel, image())
    write(tmp_path / "bad.jpg", b"text")
    first = scan_folder(tmp_path, {}, FILTERS)
    reads: list[int] = []

    second = scan_folder(tmp_path, first.cache, FILTERS, on_file=reads.append)

    assert (second.hashed_files, reads) == (0, [])
    assert synced(second) == synced(first) and problems(second) == problems(first)
    assert second.cache == first.cache


def test_a_cached_file_with_the_same_stat_is_trusted_not_read(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png", image())
    st = path.stat()
    previous = {"a.png": CachedFile(stat_version(st), st.st_size, "f" * 64, "image/png", None)}

    scan = scan_folder(tmp_path, previous, FILTERS)

    assert synced(scan) == {"a.png": "f" * 64}
    assert scan.hashed_files == 0


@pytest.mark.parametrize("change", ["mtime", "size", "inode", "path"])
def test_a_changed_stat_key_makes_the_file_read_again(tmp_path: Path, change: str) -> None:
    path = write(tmp_path / "a.png", image(8, 8))
    write(tmp_path / "other.png", image())
    first = scan_folder(tmp_path, {}, FILTERS)
    st = path.stat()
    if change == "mtime":
        data = image(8, 8)  # same size, other bytes
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "size":
        data = image(40, 40)
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "inode":
        data = image(8, 8)
        replacement = write(tmp_path / "new.tmp", data)
        os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
        replacement.replace(path)
    else:
        data = path.read_bytes()
        path.rename(tmp_path / "renamed.png")
    reads: list[int] = []

    scan = scan_folder(tmp_path, first.cache, FILTERS, on_file=reads.append)

    assert (scan.hashed_files, reads) == (1, [len(data)])
    assert sha(data) in synced(scan).values()
    assert len(scan.items) == 2


def test_a_bad_files_verdict_is_cached_too(tmp_path: Path) -> None:
    write(tmp_path / "fake.jpg", b"text")
    first = scan_folder(tmp_path, {}, FILTERS)

    second = scan_folder(tmp_path, first.cache, FILTERS)

    assert second.hashed_files == 0
    assert "not an image" in problems(second)["fake.jpg"]


def test_deleted_files_drop_out_of_the_cache(tmp_path: Path) -> None:
    gone = write(tmp_path / "gone.png", image())
    write(tmp_path / "kept.png", image())
    first = scan_folder(tmp_path, {}, FILTERS)
    gone.unlink()

    scan = scan_folder(tmp_path, first.cache, FILTERS)

    assert list(scan.cache) == ["kept.png"] and list(synced(scan)) == ["kept.png"]
    assert scan.keep == set()


def test_a_busy_file_is_not_read_and_keeps_its_old_content(tmp_path: Path) -> None:
    """A file still being written is left for later; its image must not go meanwhile."""
    path = write(tmp_path / "growing.png", image())
    first = scan_folder(tmp_path, {}, FILTERS)
    path.write_bytes(path.read_bytes()[:20])
    write(tmp_path / "new-and-busy.png", b"half")

    scan = scan_folder(tmp_path, first.cache, FILTERS, busy={"growing.png", "new-and-busy.png"})

    assert (scan.items, scan.problems, scan.hashed_files) == ([], [], 0)
    assert scan.keep == {first.cache["growing.png"].sha256}
    assert scan.cache == {"growing.png": first.cache["growing.png"]}


# -- read errors never look like deletions --------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522
_CAP_READ_OVERRIDES = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


@contextmanager
def permission_bits_enforced() -> Iterator[None]:
    """Make this thread obey permission bits even as root, by dropping root's read overrides.

    Capabilities are per thread on Linux, and the scanner runs in the test's thread.
    """
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAP_V3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("running as root and cannot read this thread's capabilities")
    saved = data[0].effective
    data[0].effective &= ~_CAP_READ_OVERRIDES
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("running as root and cannot drop read overrides")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


@pytest.fixture
def make_unreadable() -> Iterator[Callable[[Path], None]]:
    """chmod 000 that holds for the test even when it runs as root; modes are restored afterwards."""
    changed: list[Path] = []

    def unreadable(path: Path) -> None:
        path.chmod(0)
        changed.append(path)

    with permission_bits_enforced():
        try:
            yield unreadable
        finally:
            for path in changed:
                path.chmod(0o700)


def test_an_unchanged_file_is_not_read_so_losing_read_access_goes_unnoticed(
        tmp_path: Path, make_unreadable: Callable[[Path], None]) -> None:
    locked = write(tmp_path / "locked.png", image())
    first = scan_folder(tmp_path, {}, FILTERS)
    make_unreadable(locked)

    scan = scan_folder(tmp_path, first.cache, FILTERS)

    assert synced(scan) == synced(first) and scan.problems == []


def test_a_changed_file_that_cannot_be_read_is_reported_and_its_old_content_kept(
        tmp_path: Path, make_unreadable: Callable[[Path], None]) -> None:
    locked = write(tmp_path / "locked.png", image())
    write(tmp_path / "open.png", image())
    first = scan_folder(tmp_path, {}, FILTERS)
    locked.write_bytes(image(40, 40))
    make_unreadable(locked)

    scan = scan_folder(tmp_path, first.cache, FILTERS)

    assert list(synced(scan)) == ["open.png"]
    assert problems(scan) == {"locked.png": "cannot read (Permission denied)"}
    assert scan.keep == {first.cache["locked.png"].sha256} and bool(scan.keep)
    assert scan.cache["locked.png"] == first.cache["locked.png"], "the old verdict stays cached"
    assert scan.retry and not first.retry, "a scan that could not read a file is not one to settle on"


def test_an_unreadable_file_never_seen_before_has_nothing_to_keep(tmp_path: Path,
                                                                  make_unreadable: Callable[[Path], None]) -> None:
    make_unreadable(write(tmp_path / "locked.png", image()))

    scan = scan_folder(tmp_path, {}, FILTERS)

    assert scan.items == [] and list(problems(scan)) == ["locked.png"]
    assert scan.keep == set() and "locked.png" not in scan.cache
    assert scan.retry


def test_an_unreadable_folder_keeps_everything_it_held(tmp_path: Path,
                                                       make_unreadable: Callable[[Path], None]) -> None:
    inside = {rel: image() for rel in ("sub/a.png", "sub/deeper/b.png")}
    for rel, data in inside.items():
        write(tmp_path / rel, data)
    write(tmp_path / "sub/bad.jpg", b"text")
    write(tmp_path / "subway.png", image())
    first = scan_folder(tmp_path, {}, FILTERS)
    make_unreadable(tmp_path / "sub")

    scan = scan_folder(tmp_path, first.cache, FILTERS)

    assert list(synced(scan)) == ["subway.png"]
    assert problems(scan) == {"sub/": "cannot list this folder (Permission denied)"}
    assert scan.keep == {sha(data) for data in inside.values()}
    assert set(scan.cache) == set(first.cache), "what could not be seen stays cached"


def test_an_unreadable_root_is_unavailable(tmp_path: Path, make_unreadable: Callable[[Path], None]) -> None:
    root = tmp_path / "root"
    write(root / "a.png", image())
    make_unreadable(root)

    with pytest.raises(SourceUnavailable, match="cannot be read"):
        scan_folder(root, {}, FILTERS)


@pytest.mark.parametrize("root", ["missing", "a-file.png"])
def test_a_missing_root_or_a_file_as_root_is_unavailable(tmp_path: Path, root: str) -> None:
    write(tmp_path / "a-file.png", image())

    with pytest.raises(SourceUnavailable, match=str(tmp_path / root)):
        scan_folder(tmp_path / root, {}, FILTERS)


# -- symbolic links -------------------------------------------------------------------------------

def test_symlinks_are_not_followed_by_default_and_say_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    target = write(root / "real.png", image())
    (root / "link.png").symlink_to(target)
    (root / "linkdir").symlink_to(root / "sub", target_is_directory=True)
    write(root / "sub/b.png", image())
    (root / "link.txt").symlink_to(tmp_path / "elsewhere.txt")

    scan = scan_folder(root, {}, FILTERS)

    assert sorted(synced(scan)) == ["real.png", "sub/b.png"]
    assert sorted(problems(scan)) == ["link.png", "linkdir"]
    assert all(p.notice and "not followed" in p.reason for p in scan.problems)


def test_followed_symlinks_inside_the_folder_are_synced(tmp_path: Path) -> None:
    root = tmp_path / "root"
    real = write(root / "real/a.png", image()).read_bytes()
    (root / "link.png").symlink_to(root / "real/a.png")
    (root / "linkdir").symlink_to("real", target_is_directory=True)

    scan = scan_folder(root, {}, FOLLOW)

    assert synced(scan) == {"real/a.png": sha(real), "link.png": sha(real), "linkdir/a.png": sha(real)}
    assert scan.problems == []


@pytest.mark.parametrize(("link", "target", "reason"), [
    ("out.png", "../outside.png", "points outside the mapped folder"),
    ("outdir", "../outside-dir", "points outside the mapped folder"),
    ("dangling.png", "missing.png", "dangling symbolic link"),
    ("self.png", "self.png", "symbolic link loop"),
    ("sub/up", "..", "symbolic link loop"),
])
def test_followed_symlinks_that_cannot_be_synced_are_reported(tmp_path: Path, link: str, target: str,
                                                              reason: str) -> None:
    root = tmp_path / "root"
    write(tmp_path / "outside.png", image())
    write(tmp_path / "outside-dir/x.png", image())
    good = write(root / "sub/good.png", image())
    (root / link).symlink_to(target)

    scan = scan_folder(root, {}, FOLLOW)

    assert synced(scan) == {"sub/good.png": sha(good.read_bytes())}
    assert list(problems(scan)) == [link] and reason in problems(scan)[link]
    assert not scan.problems[0].notice


def test_the_walk_alone_lists_what_the_scan_lists_and_sees_every_change(tmp_path: Path) -> None:
    """A settled folder is recognised by its listing, made by a walk that reads nothing: it must be the
    full scan's listing for the same tree, and change with any file's stat key or the walk's problems."""
    write(tmp_path / "a.png", image())
    write(tmp_path / "sub" / "b.png", image())
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    full = scan_folder(tmp_path, {}, FILTERS)
    walked = scan_folder(tmp_path, {}, FILTERS, judge=False)

    assert full.listing == walked.listing and full.listing is not None
    assert walked.items == [] and walked.cache == {} and walked.hashed_files == 0
    assert scan_folder(tmp_path, full.cache, FILTERS).listing == full.listing, "the same tree, the same listing"

    os.utime(tmp_path / "sub" / "b.png", ns=(1, 1))
    touched = scan_folder(tmp_path, {}, FILTERS, judge=False).listing
    (tmp_path / "link.png").unlink()
    unlinked = scan_folder(tmp_path, {}, FILTERS, judge=False).listing
    assert len({full.listing, touched, unlinked}) == 3


# -- the Source interface -------------------------------------------------------------------------

def test_every_source_says_what_it_is_without_being_asked_its_type(tmp_path: Path) -> None:
    """The engine and the views ask a source (or a label, ``kind_of``) what it is: never its class."""
    from packsync.remote.astria import AstriaClient
    from packsync.remote.transport import Transport
    from packsync.sources.astria import AstriaSource
    from packsync.sources.base import Source
    from packsync.sources.folder import FolderSource, GoneFolder
    from packsync.sources.kinds import kind_of

    write(tmp_path / "a.png", image())
    astria = AstriaSource(AstriaClient("http://127.0.0.1:9", "key", Transport()), 260, None, 1_000_000, None)
    sources: list[Source] = [FolderSource(tmp_path, FILTERS), GoneFolder(str(tmp_path / "old")),
                             GoneFolder(str(tmp_path / "old"), unavailable="the disk is not mounted"), astria]

    assert [(s.kind, s.gone, s.unavailable) for s in sources] == [
        ("folder", False, None), ("folder", True, None), ("folder", True, "the disk is not mounted"),
        ("astria", False, None)]
    assert [kind_of(s.label) for s in sources] == ["folder", "folder", "folder", "astria"]
    listings = [asyncio.run(s.listing()) for s in sources]
    assert listings[0] is not None and listings[0].listing and listings[0].items == []
    assert listings[1] == Scan(str(tmp_path / "old")) and listings[3] is None, "no cheap listing of an Astria pack"


def test_a_folder_file_s_version_is_its_stat_key(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png", image())
    st = path.stat()

    scan = scan_folder(tmp_path, {}, FILTERS)

    assert scan.cache["a.png"].version == f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}" == stat_version(st)
    assert scan.cache["a.png"].matches(stat_version(st)) and not scan.cache["a.png"].matches("a.png")
