"""The pure planner, rule by rule (see the rules in ``packsync/planner.py``'s docstring).

Every case is built from model values alone: no sandbox, no folder, no database. Contents are
named by a letter ("A", "B", ...); an image of content "A" has the URL ``url("A")``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import unmeasured

from packsync.engine.actions import HandOverImage
from packsync.engine.planner import (
    MappingInput,
    MappingOptions,
    MappingPlan,
    Plan,
    delete_limit,
    file_name_for,
    plan_mapping,
    plan_uploads,
)
from packsync.model import (
    Blob,
    ContentItem,
    ManagedImage,
    PreparedContent,
    Problem,
    RemoteImage,
    RemotePack,
    Scan,
    Uploaded,
)
from packsync.recipe import Recipe

ROOT = Path("/photos")
PACK = "pack-1"


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def url(content: str) -> str:
    return f"https://cdn.example.com/{content}.png"


CONTENT_OF = {sha(c): c for c in "ABCDEFGHIJ"}


@dataclass
class World:
    """One mapping as the planner sees it, written compactly.

    ``folder`` maps relative paths to contents; ``recorded`` maps image ids to contents (what the
    state says packsync added); ``pack`` lists the pack's image ids oldest first, where an id that
    is not recorded is either one of our uploads (in ``ours``: id -> content) or a foreign image.
    """

    folder: dict[str, str] = field(default_factory=dict)
    recorded: dict[str, str] = field(default_factory=dict)
    pack: list[str] | None = field(default_factory=list)
    ours: dict[str, str] = field(default_factory=dict)
    theirs: dict[str, str] = field(default_factory=dict)
    downloaded: dict[str, str] = field(default_factory=dict)  # foreign image id -> the content its URL serves
    keep: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    options: MappingOptions = MappingOptions()
    elsewhere: dict[str, str] = field(default_factory=dict)  # content -> another mapping into the pack holding it

    def source(self) -> MappingInput:
        scan = Scan(source=str(ROOT),
                    items=[ContentItem(rel, sha(c), 100, "image/png") for rel, c in self.folder.items()],
                    problems=[Problem(rel, "not an image") for rel in self.problems],
                    keep={sha(c) for c in self.keep})
        managed = [ManagedImage(PACK, image_id, sha(c), url(c), f"{c}.png", "photos")
                   for image_id, c in self.recorded.items()]
        remote = None if self.pack is None else RemotePack(PACK, "Pack", tuple(self._remote(i) for i in self.pack))
        known = {url(c): sha(c) for c in {*self.recorded.values(), *self.ours.values()}}
        return MappingInput("photos", "Pack", scan, managed, remote, known, self.options,
                            others={image_id: sha(c) for image_id, c in self.theirs.items()},
                            contents={self._remote(i).url: sha(c) for i, c in self.downloaded.items()},
                            held_elsewhere={sha(c): holder for c, holder in self.elsewhere.items()})

    def _remote(self, image_id: str) -> RemoteImage:
        content = self.recorded.get(image_id) or self.ours.get(image_id) or self.theirs.get(image_id)
        return RemoteImage(image_id, url(content) if content else f"https://web.example.com/{image_id}.jpg")


def summary(plan: MappingPlan) -> dict[str, Any]:
    """The plan in the tables' terms; empty action lists are left out."""
    result: dict[str, Any] = {
        "add": sorted(CONTENT_OF[a.sha256] for a in plan.adds),
        "adopt": sorted(a.image.image_id for a in plan.adopts),
        "forget": sorted(f.image.image_id for f in plan.forgets),
        "delete": sorted((d.image_id, d.reason) for d in plan.deletes),
        "withheld": sorted((d.image_id, d.reason) for d in plan.withheld),
        "duplicate": sorted(image.image_id for image in plan.duplicates),
        "hand over": sorted((h.image_id, h.to) for h in plan.of(HandOverImage)),
    }
    return {key: value for key, value in result.items() if value}


RULES = [
    pytest.param(
        World(folder={"a.png": "A"}, pack=["w1"], downloaded={"w1": "A"}),
        {"adopt": ["w1"]}, id="a foreign image holding a file's bytes is adopted, not added again"),
    pytest.param(
        World(folder={"a.png": "A"}, pack=["w1", "w2"], downloaded={"w1": "A", "w2": "A"},
              options=MappingOptions(prune_foreign=False)),
        {"adopt": ["w1"], "duplicate": ["w2"]}, id="of two foreign copies the oldest is adopted, the other reported"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["i1", "w1"], downloaded={"w1": "A"}),
        {"duplicate": ["w1"]}, id="a foreign copy newer than our image is a duplicate, left alone"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["w1", "i1"], downloaded={"w1": "A"}),
        {"duplicate": ["w1"]}, id="a foreign copy older than our image is a duplicate too: ours stays"),
    pytest.param(
        World(folder={"a.png": "A"}, pack=["w1"], downloaded={"w1": "B"}),
        {"add": ["A"]}, id="a foreign image holding other bytes stays foreign"),
    pytest.param(
        World(folder={"a.png": "A"}, theirs={"t1": "A", "t2": "B"}, pack=["t1", "t2"],
              options=MappingOptions(prune_foreign=True)),
        {}, id="another mapping's images in the pack are neither deleted nor pruned, and their content is there"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, theirs={"t1": "A"}, pack=["t1", "i1"]),
        {"delete": [("i1", "duplicate")]}, id="our copy of a content another mapping holds first is a duplicate"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, theirs={"t1": "A"}, pack=["i1", "t1"]),
        {}, id="our copy that is older than another mapping's stays: that mapping deletes its own"),
    pytest.param(
        World(folder={"a.png": "A", "b.png": "B"}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"]),
        {}, id="a folder already mirrored needs nothing"),
    pytest.param(
        World(folder={"a.png": "A", "b.png": "B"}, recorded={"i1": "A"}, pack=["i1"]),
        {"add": ["B"]}, id="a new file is added"),
    pytest.param(
        World(folder={"old.png": "A"}, recorded={"i1": "A"}, pack=["i1"],
              options=MappingOptions(max_delete=0)),
        {}, id="a renamed or moved file costs nothing"),
    # 1. adopt
    pytest.param(
        World(folder={"a.png": "A"}, pack=["i1"], ours={"i1": "A"}),
        {"adopt": ["i1"]}, id="an unrecorded image with our upload's URL is adopted, not added again"),
    pytest.param(
        World(folder={"b.png": "B"}, recorded={"i2": "B"}, pack=["i1", "i2"], ours={"i1": "A"}),
        {"adopt": ["i1"], "delete": [("i1", "file removed")]},
        id="an adopted image whose file is gone is deleted like any other"),
    # 2. forget
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=[]),
        {"forget": ["i1"], "add": ["A"]}, id="a recorded image gone from the pack is forgotten and added again"),
    pytest.param(
        World(folder={"b.png": "B"}, recorded={"i1": "A", "i2": "B"}, pack=["i2"]),
        {"forget": ["i1"]}, id="a recorded image gone from the pack whose file is gone too is only forgotten"),
    # 3. one image per distinct content
    pytest.param(
        World(folder={"a.png": "A", "copy/a.png": "A", "b.png": "B"}, pack=[]),
        {"add": ["A", "B"]}, id="files with the same bytes need one image"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "A", "i3": "A"}, pack=["i1", "i2", "i3"]),
        {"delete": [("i2", "duplicate"), ("i3", "duplicate")]}, id="extra copies are deleted, the oldest stays"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "A"}, pack=["i2", "i1"]),
        {"delete": [("i1", "duplicate")]}, id="the oldest is the first in the pack, whatever its id"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["i1", "i2"], ours={"i2": "A"}),
        {"adopt": ["i2"], "delete": [("i2", "duplicate")]},
        id="an adopted copy of a content already in the pack is a duplicate"),
    # 4. deletes of removed contents
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"]),
        {"delete": [("i2", "file removed")]}, id="a removed file's image is deleted"),
    pytest.param(
        World(folder={"a.png": "C"}, recorded={"i1": "A"}, pack=["i1"]),
        {"add": ["C"], "delete": [("i1", "file removed")]}, id="a modified file's image is replaced"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"],
              options=MappingOptions(delete=False)),
        {}, id="with delete off a removed file's image stays"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"],
              elsewhere={"B": "nas:/srv/brand"}),
        {"hand over": [("i2", "nas:/srv/brand")]},
        id="a removed file's image another mapping into the pack still holds is handed over, not deleted"),
    pytest.param(
        World(folder={}, recorded={"i1": "A"}, pack=["i1"], elsewhere={"A": "nas:/srv/brand"}),
        {"hand over": [("i1", "nas:/srv/brand")]},
        id="an emptied folder hands over what others hold: no delete to withhold"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "A"}, pack=["i1", "i2"],
              elsewhere={"A": "nas:/srv/brand"}),
        {"delete": [("i2", "duplicate")]}, id="a duplicate is deleted even when another mapping holds its content"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "A"}, pack=["i1", "i2"],
              options=MappingOptions(delete=False)),
        {"delete": [("i2", "duplicate")]}, id="with delete off duplicates are still removed"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "B", "i3": "C"}, pack=["i1", "i2", "i3"],
              keep={"B", "C"}, options=MappingOptions(max_delete=0)),
        {}, id="contents the scan could not see gone are never deleted"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"], keep={"B"},
              options=MappingOptions(force=True)),
        {}, id="force does not delete kept contents either"),
    pytest.param(
        World(folder={}, recorded={"i1": "B"}, pack=["i1"], keep={"B"}, problems=["sub/"]),
        {}, id="a kept content is not added again"),
    # 5. foreign images
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["i1", "web"]),
        {}, id="images packsync did not add are left alone"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["web", "i1"],
              options=MappingOptions(prune_foreign=True)),
        {"delete": [("web", "not in the folder (prune_foreign)")]}, id="prune_foreign deletes foreign images"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["i1", "web"],
              options=MappingOptions(delete=False, force=True)),
        {}, id="force alone never deletes foreign images"),
    # the pack to be created
    pytest.param(
        World(folder={"a.png": "A", "b.png": "B"}, pack=None),
        {"add": ["A", "B"]}, id="a pack still to be created gets every distinct content"),
]


@pytest.mark.parametrize(("world", "expected"), RULES)
def test_planning_rules(world: World, expected: dict[str, Any]) -> None:
    plan = plan_mapping(world.source())

    assert summary(plan) == expected
    assert plan.safety is None


def test_pack_to_be_created_has_no_id_and_counts_its_creation() -> None:
    plan = plan_mapping(World(folder={"a.png": "A"}, pack=None).source())

    assert plan.pack_id is None and plan.create_pack
    assert plan.mutations == 2


def test_existing_pack_keeps_its_id() -> None:
    plan = plan_mapping(World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["i1"]).source())

    assert plan.pack_id == PACK and not plan.create_pack
    assert plan.mutations == 0


def test_an_add_names_its_file_and_carries_what_the_upload_needs() -> None:
    world = World(folder={"sub/zebra.png": "A", "copy/apple.png": "A"}, pack=[])

    (add,) = plan_mapping(world.source()).adds

    # Of several files with the same bytes, the first by path gives the image its name.
    assert (add.file_name, add.item.key, add.mapping) == ("apple.png", "copy/apple.png", "photos")
    assert (add.sha256, add.item.content_type, add.item.size) == (sha("A"), "image/png", 100)


def test_an_adopted_image_is_recorded_under_its_file_name_and_content() -> None:
    world = World(folder={"sub/logo.png": "A"}, pack=["i9"], ours={"i9": "A"})

    (adopt,) = plan_mapping(world.source()).adopts

    assert adopt.image == ManagedImage(PACK, "i9", sha("A"), url("A"), "logo.png", "photos")


SAFETY = [
    pytest.param(
        World(folder={}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"], options=MappingOptions(max_delete="100%")),
        "is empty", id="an empty folder whose pack holds its images looks unmounted"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={f"i{n}": c for n, c in enumerate("ABCD")}, pack=["i0", "i1", "i2", "i3"],
              options=MappingOptions(max_delete=2)),
        "would delete 3 images, more than max_delete allows (2:", id="more deletes than a max_delete count"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"],
              options=MappingOptions(max_delete=0)),
        "would delete 1 image, more than max_delete allows (0:", id="max_delete 0 withholds every delete"),
    pytest.param(
        World(folder={c: c for c in "ABCD"}, recorded={f"i{n}": c for n, c in enumerate("ABCDEFGHIJ")},
              pack=[f"i{n}" for n in range(10)], options=MappingOptions(max_delete="50%")),
        "would delete 6 images, more than max_delete allows (50% of the 10 images",
        id="more deletes than a max_delete percentage"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A"}, pack=["i1", "web1", "web2"],
              options=MappingOptions(prune_foreign=True, max_delete=1)),
        "would delete 2 images", id="pruned foreign images count towards max_delete"),
    pytest.param(
        World(folder={"a.png": "A"}, pack=["web1", "web2", "web3", "web4"],
              options=MappingOptions(prune_foreign=True, max_delete="50%")),
        "would delete 4 images, more than max_delete allows (50% of the 4 images it may delete here: at most 2)",
        id="a share of max_delete is a share of the images that may be deleted, foreign ones included"),
]


@pytest.mark.parametrize(("world", "reason"), SAFETY)
def test_safety_stop_withholds_every_delete(world: World, reason: str) -> None:
    plan = plan_mapping(world.source())

    assert plan.safety is not None and reason in plan.safety
    assert plan.deletes == [] and plan.withheld
    assert "--force" in plan.safety


@pytest.mark.parametrize(("world", "_reason"), SAFETY)
def test_force_overrides_every_safety_stop(world: World, _reason: str) -> None:
    unforced = plan_mapping(world.source())
    world.options = MappingOptions(world.options.delete, world.options.prune_foreign, world.options.max_delete,
                                   force=True)

    plan = plan_mapping(world.source())

    assert plan.safety is None and plan.withheld == []
    assert [(d.image_id, d.reason) for d in plan.deletes] == [(d.image_id, d.reason) for d in unforced.withheld]


def test_allowing_what_a_stop_weighed_allows_no_more_deletes_than_it_withholds() -> None:
    """A stop's weighed count (what ``allow-deletes`` approves) leaves out a duplicate's delete, which the stop
    does not count either: approving the number of withheld actions instead would let one more delete through."""
    world = World(folder={"a.png": "A", "d.png": "D"}, recorded={"i1": "A", "i2": "B", "i3": "C", "i4": "D"},
                  theirs={"t1": "A"}, pack=["t1", "i1", "i2", "i3", "i4"], options=MappingOptions(max_delete=1))
    stopped = plan_mapping(world.source())
    assert stopped.safety is not None and "would delete 2 images" in stopped.safety
    assert (stopped.weighed, len(stopped.withheld)) == (2, 3)  # (i1 is a duplicate of t1's content)

    world.options = MappingOptions(max_delete=1, allow=stopped.weighed)
    assert plan_mapping(world.source()).safety is None
    world.folder = {"a.png": "A"}  # one more file gone since the approval: a third real delete
    world.options = MappingOptions(max_delete=1, allow=stopped.weighed)
    assert plan_mapping(world.source()).safety is not None


NO_SAFETY_STOP = [
    pytest.param(
        World(folder={c: c for c in "ABCDE"}, recorded={f"i{n}": c for n, c in enumerate("ABCDEFGHIJ")},
              pack=[f"i{n}" for n in range(10)]),
        5, id="exactly max_delete percent of the pack"),
    pytest.param(
        World(folder={"b.png": "B"}, recorded={"i1": "A"}, pack=["i1"]),
        1, id="removing the one file of a one-image pack when another took its place"),
    pytest.param(
        World(folder={"a.png": "A", "b.png": "B"}, recorded={"i1": "A", "i2": "B", "i3": "C"}, pack=["i1", "i2", "i3"]),
        1, id="a percentage of a small pack still allows one delete"),
    pytest.param(
        World(folder={"a.png": "A"}, recorded={"i1": "A", "i2": "A", "i3": "A"}, pack=["i1", "i2", "i3"],
              options=MappingOptions(max_delete=0)),
        2, id="duplicates do not count as deletes"),
    pytest.param(
        World(folder={}, problems=["bad.jpg"], recorded={"i1": "A"}, pack=["i1"]),
        1, id="a folder holding only bad files is not taken for an unmounted disk"),
    pytest.param(
        World(folder={}, recorded={}, pack=["web"], options=MappingOptions(max_delete=0)),
        0, id="an empty folder whose pack holds only foreign images deletes nothing"),
]


@pytest.mark.parametrize(("world", "deletes"), NO_SAFETY_STOP)
def test_deletes_within_the_limits_run(world: World, deletes: int) -> None:
    plan = plan_mapping(world.source())

    assert plan.safety is None and plan.withheld == []
    assert len(plan.deletes) == deletes


def test_adds_go_ahead_while_deletes_are_withheld() -> None:
    world = World(folder={"c.png": "C"}, recorded={"i1": "A", "i2": "B"}, pack=["i1", "i2"],
                  options=MappingOptions(max_delete=1))

    plan = plan_mapping(world.source())

    assert plan.safety and len(plan.withheld) == 2
    assert [CONTENT_OF[a.sha256] for a in plan.adds] == ["C"]


@pytest.mark.parametrize(("max_delete", "managed", "limit"), [
    (0, 10, 0),
    (3, 10, 3),
    (3, 0, 3),
    ("50%", 10, 5),
    ("50%", 3, 1),
    ("50%", 1, 1),
    ("50%", 0, 1),
    ("0%", 100, 1),
    ("12.5%", 16, 2),
    ("100%", 7, 7),
])
def test_delete_limit(max_delete: int | str, managed: int, limit: int) -> None:
    """A count is taken as it is; a percentage rounds down but always allows one delete."""
    assert delete_limit(max_delete, managed) == limit


@pytest.mark.parametrize(("rel_path", "name"), [
    ("a.png", "a.png"),
    ("sub/deeper/b.JPG", "b.JPG"),
    ("with space.png", "with space.png"),
    ("café ☕ 写真.png", "café ☕ 写真.png"),
    ("line\nbreak.png", "line break.png"),
    ("tab\there\r.png", "tab here .png"),
    ("\x01\x02", "image"),
    ("x" * 300 + ".jpeg", "x" * 250 + ".jpeg"),
    ("x" * 300, "x" * 255),
    ("x" * 300 + ".notreallyanextension", ("x" * 300 + ".notreallyanextension")[:255]),
    ("x" * 255, "x" * 255),
])
def test_file_name_for(rel_path: str, name: str) -> None:
    """The display name is the file's own name, printable, at most 255 characters, extension kept."""
    assert file_name_for(rel_path) == name
    assert len(name) <= 255


def plan_sync(sources: list[MappingInput], blobs: dict[tuple[str, str], Blob]) -> Plan:
    """What the sync pipeline does: plan each mapping, then the uploads they need."""
    return plan_uploads([plan_mapping(source) for source in sources], blobs)


def mapping(label: str, folder: dict[str, str]) -> MappingInput:
    source = World(folder=folder, pack=[]).source()
    return MappingInput(label, label, source.scan, [], RemotePack(f"pack-{label}", label), {})


def test_same_content_under_the_same_path_in_two_mappings_is_uploaded_once_and_added_to_both() -> None:
    plan = plan_sync([mapping("one", {"a.png": "A", "b.png": "B"}), mapping("two", {"a.png": "A"})], blobs={})

    assert sorted(CONTENT_OF[u.add.sha256] for u in plan.uploads) == ["A", "B"]
    assert [len(m.adds) for m in plan.mappings] == [2, 1]
    assert plan.mutations == 2 + 3


def test_same_content_under_another_path_in_another_mapping_is_uploaded_under_each_name() -> None:
    """The upload's name is what ``GET /files`` gives back to a pull on another machine: each pack's image
    needs its own path, so the content is uploaded once per name."""
    plan = plan_sync([mapping("one", {"sub/a.png": "A"}), mapping("two", {"other/x.png": "A"})], blobs={})

    assert sorted(u.add.upload_name for u in plan.uploads) == ["other/x.png", "sub/a.png"]
    assert [len(m.adds) for m in plan.mappings] == [1, 1]


def test_content_already_in_storage_under_its_name_is_added_without_an_upload() -> None:
    blobs = {(sha("A"), "a.png"): Blob(sha("A"), "image/png", url=url("A"), uploaded=True, name="a.png"),
             (sha("B"), "x.png"): Blob(sha("B"), "image/png", url=url("B"), uploaded=True, name="x.png")}

    plan = plan_sync([mapping("one", {"a.png": "A", "b.png": "B"})], blobs)

    assert [CONTENT_OF[u.add.sha256] for u in plan.uploads] == ["B"], "B's upload carries another name"
    assert plan.urls == {f"{sha('A')}/a.png": Uploaded(url("A"), sha("A"))}, "the executor is told the URL"
    assert len(plan.mappings[0].adds) == 2


@pytest.mark.parametrize("blob", [
    Blob(sha("A"), "image/png", url=url("A"), upload_url="https://storage.example.com/put", expires_at=1e12),
    Blob(sha("A"), "image/png", uploaded=True),
], ids=["bytes not yet confirmed", "upload without a URL"])
def test_content_half_uploaded_is_uploaded(blob: Blob) -> None:
    plan = plan_sync([mapping("one", {"a.png": "A"})], {(sha("A"), "a.png"): blob})

    assert [CONTENT_OF[u.add.sha256] for u in plan.uploads] == ["A"]
    assert plan.uploads[0].resume == blob and plan.urls == {}, "the upload resumes what the state recorded"


def test_plan_sync_keeps_the_mappings_in_order() -> None:
    plan = plan_sync([mapping(label, {"a.png": "A"}) for label in ("one", "two", "three")], blobs={})

    assert [m.label for m in plan.mappings] == ["one", "two", "three"]


@pytest.mark.parametrize("planner", ["packsync.engine.planner", "packsync.engine.pull_plan"])
def test_planner_imports_no_network_database_or_watcher_library(planner: str) -> None:
    """The planners are pure: importing one pulls in none of the I/O libraries."""
    code = (f"import sys, {planner}\n"
            "heavy = ('aiohttp', 'httpx2', 'httpcore2', 'sqlite3', 'sqlalchemy', 'sqlmodel', 'watchdog')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=unmeasured(os.environ))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_replacement_waiting_for_unknown_images_deletes_nothing() -> None:
    """An image made with another recipe goes only with the add that replaces it: while adds wait for
    images that could not be read, so does the replacement, old image and all."""
    item = ContentItem("a.jpg", sha("A"), 10, "image/jpeg")
    old = ManagedImage("pack-1", "i0", sha("A"), url("A"), "a.jpg", "photos", recipe="")
    recipe = Recipe()
    source = MappingInput("photos", "Pack", Scan("photos", items=[item]), [old],
                          RemotePack("pack-1", "Pack", (RemoteImage("i0", url("A")), RemoteImage("f1", url("F")))),
                          {}, unknown=1, recipe=recipe,
                          prepared={(sha("A"), recipe.key): PreparedContent(sha("A"), recipe.key, ("location",))})

    plan = plan_mapping(source)

    assert plan.deletes == [] and [a.kind for a in plan.waiting] == ["replace"]
    assert not any(a.kind in ("replace", "delete") for a in plan.actions)
