"""One sync: scan → plan → execute → wait for metadata. The pipeline ``run`` and the daemon share.

For each mapping it reads the pack once (remote truth), scans the folder against the hash cache
(local truth), asks the pure planner what to do, and hands the plan to the executor. Scanning runs
in a worker thread while the packs are being fetched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packsync.client import GenviralClient
from packsync.config import Config, MappingConfig
from packsync.errors import ApiError, AuthError, ConfigError, ExitCode, NotFound, PermanentError, TransientError
from packsync.executor import Executor, MappingOutcome
from packsync.logs import get_logger
from packsync.model import CachedFile, Problem, RemotePack, Scan
from packsync.planner import (
    MappingInput,
    MappingOptions,
    MappingPlan,
    Plan,
    metadata_updates,
    plan_mapping,
    plan_uploads,
)
from packsync.progress import Progress
from packsync.scanner import Filters, FolderUnavailable, scan_folder
from packsync.state import Store

#: Mappings planned at once: enough to overlap pack reads with scans, few enough that only a few
#: folders' file lists and packs are in memory together.
MAPPINGS_AT_ONCE = 3


@dataclass(frozen=True, slots=True)
class SyncOptions:
    dry_run: bool = False
    wait: bool = True
    wait_timeout_s: float = 600.0
    force: bool = False
    poll_start_s: float = 1.0
    poll_cap_s: float = 30.0


@dataclass(slots=True)
class MappingReport:
    """How one mapping went: what the scan found, what was planned, what was done."""

    config: MappingConfig
    pack_name: str
    pack_id: str | None = None
    problems: list[Problem] = field(default_factory=list)
    hashed_files: int = 0
    plan: MappingPlan | None = None
    outcome: MappingOutcome | None = None
    error: str | None = None
    safety: str | None = None

    @property
    def failed(self) -> bool:
        failures = self.outcome.failures if self.outcome else []
        return bool(self.error or failures or any(not p.notice for p in self.problems)
                    or (self.outcome and self.outcome.error))


@dataclass(slots=True)
class SyncReport:
    mappings: list[MappingReport] = field(default_factory=list)
    plan: Plan | None = None
    metadata_pending: int = 0

    @property
    def exit_code(self) -> ExitCode:
        if any(m.safety for m in self.mappings):
            return ExitCode.SAFETY
        if any(m.failed for m in self.mappings):
            return ExitCode.SOME_FAILED
        return ExitCode.OK


def mapping_filters(mapping: MappingConfig) -> Filters:
    """The scanner's (and the watcher's) view of which files a mapping syncs."""
    return Filters(mapping.include, mapping.exclude, int(mapping.max_file_mb * 1_000_000), mapping.follow_symlinks)


def pack_label(mapping: MappingConfig) -> str:
    return mapping.pack if mapping.pack is not None else f"pack {mapping.pack_id}"


class Syncer:
    """Runs the sync pipeline for a config, with one API client and one state store."""

    def __init__(self, config: Config, store: Store, api: GenviralClient, progress: Progress | None = None) -> None:
        self.config = config
        self.store = store
        self.api = api
        self.progress = progress or Progress(enabled=False)
        self.log = get_logger()

    async def sync(self, options: SyncOptions = SyncOptions(), only: Collection[Path] | None = None,
                   busy: Mapping[Path, Collection[str]] | None = None) -> SyncReport:
        """Sync every mapping (or those whose folder is in ``only``) once.

        ``busy`` names, per folder, files still being written: their new content waits for a later sync.
        """
        self.api.start_run()
        mappings = [m for m in self.config.mappings if only is None or m.path in only]
        reports = [MappingReport(m, pack_label(m)) for m in mappings]
        self._check_folders(reports)
        slots = asyncio.Semaphore(MAPPINGS_AT_ONCE)
        live = [r for r in reports if not (r.error or r.safety)]
        await asyncio.gather(*(self._plan(report, options, (busy or {}).get(report.config.path, ()), slots)
                               for report in live))
        planned = [r for r in live if r.plan is not None]
        plans = [r.plan for r in planned if r.plan is not None]
        plan = plan_uploads(plans, self.store.blobs({add.sha256 for p in plans for add in p.adds}))
        result = SyncReport(reports, plan)
        if options.dry_run:
            return result
        self.api.start_run(planned_calls=plan.mutations)
        roots = {report.config.label: report.config.path for report in planned}
        outcomes = await Executor(self.api, self.store, self.progress).run(plan, roots)
        for report, outcome in zip(planned, outcomes, strict=True):
            report.outcome, report.pack_id = outcome, outcome.pack_id
        if options.wait:
            pack_ids = [r.pack_id for r in reports if r.pack_id and not (r.outcome and r.outcome.error)]
            result.metadata_pending = await self.wait_for_metadata(pack_ids, options)
        for report in reports:
            error = report.error or (report.outcome.error if report.outcome else None) or report.safety
            self.store.save_mapping(report.config.path, synced_at=time.time(), last_error=error)
        return result

    async def _plan(self, report: MappingReport, options: SyncOptions, busy: Collection[str],
                    slots: asyncio.Semaphore) -> None:
        """Read the pack while scanning the folder, then plan; a few mappings at a time, to bound memory."""
        mapping = report.config
        async with slots:
            previous = self.store.file_cache(mapping.path)
            remote, scan = await asyncio.gather(
                self._resolve_pack(report),
                asyncio.to_thread(self._scan, report, previous, busy))
            if scan is None:
                return
            self.store.save_file_cache(mapping.path, previous, scan.cache)
            self.store.save_problems(mapping.path, scan.problems)
            report.problems, report.hashed_files = scan.problems, scan.hashed_files
            if report.error:
                return
            report.plan = plan_mapping(self._input(report, remote, scan, options))
            report.safety = report.plan.safety
            if report.plan.pack_id:  # what the pack read says of the AI metadata, dry run or not
                self.store.update_metadata(report.plan.pack_id, report.plan.metadata)

    def _scan(self, report: MappingReport, previous: dict[str, CachedFile], busy: Collection[str]) -> Scan | None:
        """Scan one folder (in a worker thread: it touches no state, only the given cache)."""
        try:
            return scan_folder(report.config.path, previous, mapping_filters(report.config),
                               on_file=lambda _n: self.progress.advance("hashed"), busy=busy)
        except FolderUnavailable as exc:
            report.safety = f"{exc}; nothing is deleted"
            return None

    def _check_folders(self, reports: list[MappingReport]) -> None:
        """A missing folder is a config error — unless packsync synced it before (an unmounted disk?)."""
        for report in reports:
            root = report.config.path
            if root.is_dir():
                continue
            if self.store.count_files(root) or self._known_pack(report):
                report.safety = (f"{root} is missing or not a folder, but packsync synced files from it; "
                                 "nothing is deleted (is a disk unmounted?)")
                self.log.error("mapped folder missing; no deletes", path=str(root))
            else:
                index = self.config.mappings.index(report.config)
                raise ConfigError(f"mappings[{index}].path: the folder {root} does not exist.")

    def _known_pack(self, report: MappingReport) -> bool:
        record = self.store.mapping(report.config.path)
        return bool(record and record.pack_id and self.store.count_images(record.pack_id))

    async def _resolve_pack(self, report: MappingReport) -> RemotePack | None:
        """Read the mapping's pack (None: it must be created); a mapping error leaves ``report.error``."""
        mapping = report.config
        record = self.store.mapping(mapping.path)
        remote: RemotePack | None
        try:
            if mapping.pack_id is not None:
                try:
                    remote = await self.api.get_pack(mapping.pack_id)
                except NotFound:
                    report.error = f"pack_id {mapping.pack_id} not found, or outside the key's scope"
                    return None
            else:
                remote = await self._pack_by_name(mapping, record.pack_id if record and
                                                  record.pack_name == mapping.pack else None)
        except (TransientError, PermanentError) as exc:
            report.error = f"cannot read the pack: {exc}"
            return None
        if remote is not None:
            report.pack_id = remote.pack_id
            report.pack_name = remote.name or report.pack_name
            if not record or record.pack_id != remote.pack_id:
                self.store.save_mapping(mapping.path, pack_id=remote.pack_id, pack_name=mapping.pack or remote.name)
        return remote

    async def _pack_by_name(self, mapping: MappingConfig, remembered: str | None) -> RemotePack | None:
        name = mapping.pack or ""
        if remembered:
            try:
                return await self.api.get_pack(remembered)
            except NotFound:
                self.log.warning("pack is gone; it will be created again", pack=name, pack_id=remembered)
                self.store.forget_images(remembered)
                return None
        candidates = [p for p in await self.api.list_packs(search=name) if p.name == name and not p.is_public]
        if not candidates:
            return None
        if len(candidates) > 1:
            self.log.warning("several packs have this name; using the oldest", pack=name, count=len(candidates))
        return await self.api.get_pack(sorted(candidates, key=lambda p: p.created_at)[0].pack_id)

    def _input(self, report: MappingReport, remote: RemotePack | None, scan: Scan,
               options: SyncOptions) -> MappingInput:
        mapping = report.config
        managed = self.store.managed(remote.pack_id, details=False) if remote else []
        recorded = {image.image_id for image in managed}
        unrecorded = {image.url for image in remote.images if image.image_id not in recorded} if remote else set()
        return MappingInput(
            label=mapping.label, pack_name=mapping.pack or (remote.name if remote else ""), scan=scan,
            managed=managed, remote=remote, known_urls=self.store.known_urls(unrecorded),
            options=MappingOptions(mapping.delete, mapping.prune_foreign, mapping.max_delete, options.force))

    def mapped_pack_ids(self) -> list[str]:
        ids = []
        for mapping in self.config.mappings:
            record = self.store.mapping(mapping.path)
            if record and record.pack_id:
                ids.append(record.pack_id)
        return ids

    async def poll_metadata(self, pack_ids: Collection[str]) -> None:
        """One polling round: one GET per pack, copying the metadata of packsync's images."""
        packs = await asyncio.gather(*(self.api.get_pack(p) for p in pack_ids), return_exceptions=True)
        for pack_id, pack in zip(pack_ids, packs, strict=True):
            if isinstance(pack, BaseException):
                if isinstance(pack, AuthError) or not isinstance(pack, ApiError):
                    raise pack
                self.log.warning("metadata poll failed", pack_id=pack_id, error=str(pack))
                continue
            known = self.store.managed(pack_id, details=False)
            self.store.update_metadata(pack_id, metadata_updates(known, pack.images))

    async def wait_for_metadata(self, pack_ids: list[str], options: SyncOptions) -> int:
        """Poll until packsync's images in these packs settle, backing off; returns how many did not."""
        deadline = time.monotonic() + options.wait_timeout_s
        delay = options.poll_start_s
        self.progress.total("metadata", sum(map(self.store.count_images, pack_ids)))
        while True:
            pending = self.store.metadata_pending(pack_ids)
            self.progress.advance("metadata", self.progress.totals["metadata"] - sum(pending.values())
                                  - self.progress.counts["metadata"])
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return sum(pending.values())
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, options.poll_cap_s)
            await self.poll_metadata(list(pending))
