"""The promise, as a property: after any sync, the pack holds exactly the folder's distinct contents.

Hypothesis writes random histories of a folder (new files, copies, edits, deletions, renames and
moves into sub-folders, images deleted from the pack behind packsync's back) and syncs at random
points through the real pipeline: real files, a real state database, the sandbox over HTTP.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TOKEN, Env, image, write
from hypothesis import given, settings
from hypothesis import strategies as st

from packsync.errors import ExitCode
from packsync.sandbox import Account, Sandbox

FOLDERS = st.sampled_from(["", "sub/", "sub/deeper/", "other dir/"])
NAMES = st.sampled_from(["a.png", "b.png", "c d.png", "ü.png"])
PICK = st.integers(min_value=0, max_value=50)  # which existing file or image, modulo how many there are

OPERATIONS = st.one_of(
    st.tuples(st.just("add"), FOLDERS, NAMES),
    st.tuples(st.just("copy"), PICK, FOLDERS, NAMES),
    st.tuples(st.just("modify"), PICK),
    st.tuples(st.just("delete"), PICK),
    st.tuples(st.just("move"), PICK, FOLDERS, NAMES),
    st.tuples(st.just("remove image"), PICK),
    st.tuples(st.just("sync")),
)


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    """One sandbox for every example; each example gets its own pack, folder and state."""
    with Sandbox(accounts={TOKEN: Account(scope="ws-1")}, enrich_delays=(0.05, 0.05)) as sandbox:
        yield sandbox


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


class History:
    """Applies operations to one real folder and its pack."""

    def __init__(self, env: Env, folder: Path, pack_id: str) -> None:
        self.env, self.folder, self.pack_id = env, folder, pack_id
        self.fresh = itertools.count(1)

    def new_bytes(self) -> bytes:
        n = next(self.fresh)
        return image(width=8 + n % 5, seed=n)

    def pick(self, index: int) -> Path | None:
        present = files(self.folder)
        return present[index % len(present)] if present else None

    def apply(self, operation: tuple[object, ...]) -> None:
        name, *arguments = operation
        getattr(self, "do_" + str(name).replace(" ", "_"))(*arguments)

    def do_add(self, sub: str, name: str) -> None:
        write(self.folder / sub / name, self.new_bytes())

    def do_copy(self, index: int, sub: str, name: str) -> None:
        source, target = self.pick(index), self.folder / sub / name
        if source is not None and source != target:
            write(target, source.read_bytes())

    def do_modify(self, index: int) -> None:
        if path := self.pick(index):
            path.write_bytes(self.new_bytes())

    def do_delete(self, index: int) -> None:
        if path := self.pick(index):
            path.unlink()

    def do_move(self, index: int, sub: str, name: str) -> None:
        source, target = self.pick(index), self.folder / sub / name
        if source is not None and source != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.replace(target)

    def do_remove_image(self, index: int) -> None:
        images = self.env.pack(self.pack_id)["images"]
        if images:
            self.env.sandbox.remove_image(self.pack_id, images[index % len(images)]["id"])

    def do_sync(self) -> None:
        self.sync_and_check()

    def sync_and_check(self) -> None:
        report = self.env.sync(force=True)

        assert report.exit_code == ExitCode.OK, [(m.error, m.safety, m.problems)
                                                 for m in report.mappings]
        in_pack = self.env.cdn_bytes(self.pack_id)
        assert len(in_pack) == len(set(in_pack)), "the pack holds duplicates"
        assert set(in_pack) == {path.read_bytes() for path in files(self.folder)}

        self.env.sandbox.reset_calls()
        again = self.env.sync()
        assert again.plan is not None and again.plan.mutations == 0
        assert self.env.sandbox.mutating_calls() == 0


@settings(max_examples=20, deadline=None)
@given(operations=st.lists(OPERATIONS, max_size=10))
def test_after_every_sync_the_pack_is_exactly_the_folders_distinct_contents(
        shared_sandbox: Sandbox, operations: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(Path(tmp), shared_sandbox)
        pack_id = shared_sandbox.create_pack("property")
        history = History(env, env.map("folder", pack_id=pack_id), pack_id)

        for operation in [*operations, ("sync",)]:
            history.apply(operation)

    shared_sandbox.delete_pack(pack_id)


def test_a_history_with_every_kind_of_operation(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    """One fixed history, so that each operation is exercised on every run whatever hypothesis draws."""
    env = Env(tmp_path, shared_sandbox)
    pack_id = shared_sandbox.create_pack("fixed")
    folder = env.map("folder", pack_id=pack_id)
    history = History(env, folder, pack_id)

    for operation in [("add", "", "a.png"), ("add", "sub/", "b.png"), ("copy", 0, "other dir/", "c d.png"),
                      ("sync",), ("modify", 1), ("move", 0, "sub/deeper/", "ü.png"), ("remove image", 0),
                      ("sync",), ("delete", 2), ("copy", 0, "", "a.png"), ("remove image", 1), ("sync",),
                      ("delete", 0), ("delete", 0), ("delete", 0), ("sync",)]:
        history.apply(operation)

    assert files(folder) == [] and env.pack(pack_id)["images"] == []
