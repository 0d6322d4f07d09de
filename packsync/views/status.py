"""The status read model: what ``packsync status`` (and any other view) shows, as typed values.

Built from the config and the state alone — no token, no API call — by ``read_status``; rendered
by ``views/text.py`` and ``views/json.py``. A view never queries the database its own way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from packsync.config import Config, MappingConfig
from packsync.engine.packs import recorded_pack_id
from packsync.model import Metadata, Problem
from packsync.state.store import DaemonRecord, MappingRecord, Store


@dataclass(frozen=True, slots=True)
class FileStatus:
    """One item of a source: ``state`` is synced, pending, failed (with ``problem``) or skipped."""

    path: str
    sha256: str | None
    state: str
    problem: str | None = None
    image_id: str | None = None
    metadata: Metadata | None = None


@dataclass(frozen=True, slots=True)
class MappingStatus:
    """One mapping: its pack as the config and the state know it, and how its last sync went (``record``)."""

    path: str
    pack_id: str | None
    pack_name: str | None
    record: MappingRecord | None
    counts: dict[str, int]          # files by state: synced, pending, failed, skipped
    images: int
    metadata: dict[str, int]        # images by metadata status: completed, pending, failed
    files: list[FileStatus] | None  # with ``files=True`` only
    problems: list[Problem] | None  # with ``problems=True`` only

    @property
    def source(self) -> str:
        """The source as people read it: a folder's path, or ``astria:260 (Corporate Headshots)``."""
        name = self.record.source_name if self.record else None
        return f"{self.path} ({name})" if name else self.path

    @property
    def file_count(self) -> int:
        return sum(self.counts.values())

    @property
    def last_sync(self) -> float | None:
        return self.record.synced_at if self.record else None

    @property
    def last_error(self) -> str | None:
        return self.record.last_error if self.record else None


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What the daemon last published (``record``), and whether it is the process running now."""

    running: bool
    record: DaemonRecord

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.running else None

    @property
    def state(self) -> str:
        return self.record.state if self.running else "stopped"

    @property
    def queue(self) -> int:
        return self.record.queue if self.running else 0


@dataclass(frozen=True, slots=True)
class Status:
    state_path: str
    state_exists: bool
    daemon: DaemonStatus | None
    mappings: list[MappingStatus]


FILE_STATES = ("synced", "pending", "failed", "skipped")
METADATA_STATES = ("completed", "pending", "failed")


def read_status(config: Config, store: Store, *, files: bool = False, problems: bool = False,
                lock_holder: int | None = None) -> Status:
    """The status of every mapping; ``lock_holder`` is the pid holding the state lock, if any."""
    return Status(str(store.path), store.path.exists(), _daemon(store, lock_holder),
                  [_mapping(mapping, store, files, problems) for mapping in config.mappings])


def _daemon(store: Store, holder: int | None) -> DaemonStatus | None:
    row = store.daemon()
    return None if row is None else DaemonStatus(holder is not None and holder == row.pid, row)


def _mapping(mapping: MappingConfig, store: Store, files: bool, with_problems: bool) -> MappingStatus:
    record = store.mapping(mapping.label)
    pack_id = recorded_pack_id(store, mapping)
    images = store.managed(pack_id, mapping.label) if pack_id else []
    by_sha = {image.sha256: image for image in images}
    shared = set(store.others(pack_id, mapping.label).values()) if pack_id else set()  # held by another mapping
    problems = {problem.rel_path: problem for problem in store.problems(mapping.label)}
    counts: Counter[str] = Counter({state: 0 for state in FILE_STATES})
    detail: list[FileStatus] = []
    for rel_path, cached in store.file_cache(mapping.label).items():
        if rel_path in problems:
            continue
        image = by_sha.get(cached.sha256 or "")
        state = "synced" if image or cached.sha256 in shared else "pending"
        counts[state] += 1
        if files:  # an Astria image (its key is its URL) by the name it was added with
            shown = image.file_name if image and mapping.astria_pack is not None else rel_path
            detail.append(FileStatus(shown, cached.sha256, state, None, image.image_id if image else None,
                                     image.metadata if image else None))
    for problem in problems.values():
        state = "skipped" if problem.notice else "failed"
        counts[state] += 1
        if files:
            detail.append(FileStatus(problem.rel_path, None, state, problem.reason))
    metadata: Counter[str] = Counter({state: 0 for state in METADATA_STATES})
    for image in images:
        metadata[image.metadata.status if image.metadata.settled else "pending"] += 1
    return MappingStatus(mapping.label, pack_id, mapping.pack or (record.pack_name if record else None), record,
                         dict(counts), len(images), dict(metadata),
                         sorted(detail, key=lambda f: f.path) if files else None,
                         list(problems.values()) if with_problems else None)
