"""One sync: scan → plan → execute → wait for metadata. The pipeline ``run`` and the daemon share.

For each mapping it reads the pack once (remote truth, through the pack resolver), scans the source
against its cache (local truth), asks the pure planner what to do, and hands the plan to the
executor. Scanning runs in a worker thread while the packs are being fetched. A dry run plans and
stops there, writing nothing to the state. A mapping whose inputs are those of its last plan with
nothing to do (``_fingerprint``) is not planned again, and its pack's answer is not decoded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import operator
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

import msgspec

from packsync.config import Config, MappingConfig
from packsync.engine import changes
from packsync.engine.download import content_of
from packsync.engine.executor import Executor, MappingOutcome
from packsync.engine.metadata import POLL_BACKOFF, MetadataPoller
from packsync.engine.packs import PackResolver, recorded_pack_id
from packsync.engine.planner import MappingInput, MappingOptions, MappingPlan, Plan, plan_mapping, plan_uploads
from packsync.engine.subfolders import (
    concrete,
    derived,
    filters_below,
    gone,
    group_of,
    listed,
    packs_named,
    renamed,
)
from packsync.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ExitCode,
    NotFound,
    PacksyncError,
    PermanentError,
    SourceUnavailable,
    TransientError,
    first_error,
)
from packsync.logs import get_logger
from packsync.model import CachedFile, PackRead, Problem, RemotePack, Scan, UrlContent
from packsync.remote.answers import url_problem
from packsync.remote.genviral import GenviralClient
from packsync.remote.retry import Backoff
from packsync.sources.base import Source
from packsync.sources.folder import FolderSource, GoneFolder
from packsync.sources.patterns import IGNORE_FILE
from packsync.views.progress import Progress

if TYPE_CHECKING:  # sidecars are imported by the mappings that write them
    from packsync.engine.sidecars import SidecarReport
    from packsync.state.store import State

#: Mappings planned at once: enough to overlap pack reads with scans, few enough that only a few
#: sources' listings and packs are in memory together.
MAPPINGS_AT_ONCE = 3
#: How many of a safety stop's withheld deletes the state keeps by name, for the views.
WITHHELD_SHOWN = 50


class SyncOptions(msgspec.Struct, frozen=True):
    dry_run: bool = False
    wait: bool = True
    wait_timeout_s: float = 600.0
    force: bool = False
    poll_start_s: float = POLL_BACKOFF.start_s
    poll_cap_s: float = POLL_BACKOFF.cap_s


class MappingReport(msgspec.Struct):
    """How one mapping went: what the scan found, what was planned, what was done."""

    config: MappingConfig
    pack_name: str
    pack_id: str | None = None
    problems: list[Problem] = msgspec.field(default_factory=list)
    hashed_files: int = 0
    plan: MappingPlan | None = None
    outcome: MappingOutcome | None = None
    error: str | None = None
    safety: str | None = None
    notice: str | None = None
    undownloadable: list[tuple[str, str]] = msgspec.field(default_factory=list)  # (image id, why), this run
    excluded: list[tuple[str, str]] = msgspec.field(default_factory=list)  # (path, the exclude pattern), from the scan
    sidecars: SidecarReport | None = None
    refused: bool = False  # the source refused the key (an Astria pack's): ``error`` says which
    unchanged: bool = False  # its scan, pack and records were those of its last plan with nothing to do
    changed: set[str] | None = None  # the files a sync of changed paths looked at (None: all of them)

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def fatal(self) -> str | None:
        """Why the mapping as a whole did not sync (or not fully), if it did not."""
        return self.error or (self.outcome.error if self.outcome else None) or self.safety

    @property
    def last_error(self) -> str | None:
        """The one sentence ``status`` and the daemon show for this mapping: the fatal error, else the
        first item that failed."""
        if self.fatal or not (self.outcome and self.outcome.failures):
            return self.fatal
        (where, why), more = self.outcome.failures[0], len(self.outcome.failures) - 1
        return f"{where}: {why}" + (f" (and {more} more failed)" if more else "")

    @property
    def failed(self) -> bool:
        waiting = bool(self.plan and self.plan.waiting)
        sidecars = bool(self.sidecars and any(not p.notice for p in self.sidecars.problems))
        return bool(self.last_error or waiting or sidecars or any(not p.notice for p in self.problems))


class SyncReport(msgspec.Struct):
    mappings: list[MappingReport] = msgspec.field(default_factory=list)
    plan: Plan | None = None
    metadata_pending: int = 0
    #: Per ``packs_from = "subfolders"`` folder: the files directly in it (skipped), and its subfolders
    #: renamed this run (old path, new path; in a dry run: found, and left for the real run).
    loose: dict[str, list[Problem]] = msgspec.field(default_factory=dict)
    renamed: list[tuple[str, str]] = msgspec.field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if any(m.safety for m in self.mappings):
            return ExitCode.SAFETY
        if any(m.refused for m in self.mappings):
            return ExitCode.AUTH
        if any(m.failed for m in self.mappings):
            return ExitCode.SOME_FAILED
        return ExitCode.OK


class Syncer:
    """Runs the sync pipeline for a config, with one API client, one state and its sources."""

    def __init__(self, config: Config, state: State, api: GenviralClient,
                 source_for: Callable[[MappingConfig], Source], packs: PackResolver, metadata: MetadataPoller,
                 progress: Progress | None = None) -> None:
        self.config = config
        self.state = state
        self.api = api
        self.source_for = source_for
        self.sources: dict[str, Source] = {}
        self.sidecar_pass = asyncio.Lock()  # one pass at a time: a sync's and the metadata poller's
        self.packs = packs
        self.metadata = metadata
        self.progress = progress or Progress(enabled=False)
        self.log = get_logger()

    async def sync(self, options: SyncOptions = SyncOptions(), only: Collection[str] | None = None,
                   busy: Mapping[str, Collection[str]] | None = None,
                   changed: Mapping[str, Collection[str]] | None = None) -> SyncReport:
        """Sync every mapping (or those whose label is in ``only``) once.

        ``busy`` names, per mapping label, items still being written: their new content waits for a later sync.
        ``changed`` names, per mapping label, the paths that changed: only they are scanned (``changes.py``);
        None, or a label not in it, is a full scan.
        """
        self.api.start_run()
        result = SyncReport()
        mappings = await self._expand(result, options.dry_run)
        mappings = [m for m in mappings if only is None or m.label in only or self._group(m) in only]
        if busy:
            busy = {m.label: _below(busy.get(self._group(m), ()), m, self._group(m)) for m in mappings}
        paths = {m.label: _below(changed[self._group(m)], m, self._group(m)) for m in mappings
                 if changed is not None and self._group(m) in changed and IGNORE_FILE not in changed[self._group(m)]}
        reports = [MappingReport(m, m.pack_label) for m in mappings]
        self._check_sources(reports)
        slots = asyncio.Semaphore(MAPPINGS_AT_ONCE)
        live = [r for r in reports if not (r.error or r.safety)]
        try:
            async with asyncio.TaskGroup() as group:
                for report in live:
                    group.create_task(self._plan(report, options, (busy or {}).get(report.label, ()), slots,
                                                  paths.get(report.label)))
        except* PacksyncError as errors:
            raise first_error(errors) from None
        planned = [r for r in live if r.plan is not None]
        plans = [r.plan for r in planned if r.plan is not None]
        plan = plan_uploads(plans, self.state.uploads.blobs({add.sha256 for p in plans for add in p.adds}))
        result.mappings, result.plan = reports, plan
        if options.dry_run:
            return result
        self.api.start_run(planned_calls=plan.mutations)
        for kind, count in (("uploaded", len(plan.uploads)), ("added", sum(len(p.adds) for p in plans)),
                            ("deleted", sum(len(p.deletes) for p in plans))):
            if count:
                self.progress.total(kind, count)
        try:
            outcomes = await Executor(self.api, self.state, self.packs, self.sources, self.progress).run(plan)
        finally:
            for source in self.sources.values():
                source.close()  # what a source held for the uploads (an Astria pack's downloads)
        for report, outcome in zip(planned, outcomes, strict=True):
            report.outcome, report.pack_id = outcome, outcome.pack_id
        if options.wait:
            pack_ids = [r.pack_id for r in reports if r.pack_id and not (r.outcome and r.outcome.error)]
            result.metadata_pending = await self.metadata.wait(pack_ids, options.wait_timeout_s,
                                                               Backoff(options.poll_start_s, options.poll_cap_s))
        for report in reports:
            if report.config.sidecars == "xmp" and report.config.path is not None and not report.error \
                    and not isinstance(self.sources[report.label], GoneFolder):
                report.sidecars = await self._sidecars(report.config, report.changed)
            self._remember(report)
        return result

    async def write_sidecars(self, described: Mapping[str, Collection[str]]) -> None:
        """The sidecars of the files holding the contents whose metadata just came in (the daemon, after a
        metadata round: ``described`` are those contents, per pack)."""
        if not any(described.values()):
            return
        for mapping in concrete(self.config, self.state):
            contents = described.get(recorded_pack_id(self.state, mapping) or "")
            if contents and mapping.sidecars == "xmp" and mapping.path is not None and mapping.folder.is_dir():
                report = await self._sidecars(mapping, self.state.files.paths_holding(mapping.label, contents))
                for problem in report.problems:
                    self.log.warning(problem.reason, path=str(mapping.folder / problem.rel_path))

    async def _sidecars(self, mapping: MappingConfig, files: Collection[str] | None) -> SidecarReport:
        """One pass over ``mapping``'s sidecars, or those of ``files`` (one at a time: a run's and the
        daemon's never overlap)."""
        from packsync.engine.sidecars import write_sidecars

        async with self.sidecar_pass:
            return await write_sidecars(mapping, self.state, files)

    def _remember(self, report: MappingReport) -> None:
        """What the views show of this mapping's sync: when, how it ended, and a safety stop's withheld deletes."""
        now = time.time()
        name = self.sources[report.label].name  # None when the source could not be read: keep the last
        withheld = report.plan.withheld if report.plan and report.safety else []
        if withheld and report.plan and report.plan.pack_id:
            names = {image.image_id: image.file_name
                     for image in self.state.images.managed(report.plan.pack_id, details=False)}
            withheld_names = json.dumps([names.get(d.image_id, d.image_id) for d in withheld[:WITHHELD_SHOWN]])
        else:
            withheld_names = None
        self.state.mappings.save(report.label, synced_at=now, last_error=report.last_error, safety=report.safety,
                                withheld=withheld_names, **({"source_name": name} if name else {}),
                                **({} if report.last_error else {"ok_at": now}))

    async def _plan(self, report: MappingReport, options: SyncOptions, busy: Collection[str],
                    slots: asyncio.Semaphore, changed: Collection[str] | None = None) -> None:
        """Read the pack while scanning the source, then plan; a few mappings at a time, to bound memory."""
        async with slots:
            if changed is not None and await self._plan_changes(report, options, busy, changed):
                return
            source, settled = self.sources[report.label], self.state.files.settled(report.label)
            folder = source if isinstance(source, FolderSource) and settled and not (busy or options.dry_run) \
                else None
            if folder:
                # A folder whose last plan had nothing to do: if the walk sees what it saw then, and the
                # pack and the records are the same, its file cache is not even loaded.
                listed, read = await asyncio.gather(_listed(folder), self._read_pack(report))
                changes = self.state.mappings.changes()
                if listed and read and changes >= 0 and not report.error \
                        and _fingerprint(report.config, options.force, changes, read.digest, listed) == settled:
                    report.problems = self.state.files.problems(report.label)
                    self._unchanged(report, read)
                    return
            previous = self.state.files.cache(report.label)
            if folder:  # the pack is read already
                scan = await self._scan(report, previous, busy)
            else:
                # The scan first: its thread walks the folder while the pack is read here (and, in a new
                # process, while the HTTP library is imported for that first request).
                scan, read = await asyncio.gather(self._scan(report, previous, busy), self._read_pack(report))
            if scan is None:
                return
            if not options.dry_run and not isinstance(self.sources[report.label], GoneFolder):
                # (a gone subfolder's last listing is kept: it is how a rename is recognised later)
                self.state.files.save_cache(report.label, previous, scan.cache)
                self.state.files.save_problems(report.label, scan.problems)
            report.problems, report.hashed_files, report.excluded = scan.problems, scan.hashed_files, scan.excluded
            if report.error:
                return
            changes = self.state.mappings.changes()  # (-1: not counted, as in a state of an older schema read as is)
            fingerprint = _fingerprint(report.config, options.force, changes, read.digest, scan) \
                if read and changes >= 0 else ""
            if read and fingerprint and fingerprint == self.state.files.settled(report.label):
                self._unchanged(report, read)
                return
            try:
                remote = read.decode() if read else None
            except (TransientError, PermanentError) as exc:  # the answer's images are not as documented
                report.error, report.pack_id = f"cannot read the pack: {exc}", None
                return
            report.plan = plan_mapping(await self._input(report, remote, scan, options))
            if fingerprint and report.plan.settled and not (options.dry_run or scan.retry) \
                    and self.state.mappings.changes() == changes:
                self.state.files.save_settled(report.label, fingerprint)
            report.safety = report.plan.safety
            if report.plan.pack_id and not options.dry_run:  # what the pack read says of the AI metadata
                self.state.metadata.update(report.plan.pack_id, report.plan.metadata)

    async def _plan_changes(self, report: MappingReport, options: SyncOptions, busy: Collection[str],
                            paths: Collection[str]) -> bool:
        """Plan from the changed ``paths`` alone (``changes.py``); False when the mapping needs a full scan."""
        source, mapping = self.sources[report.label], report.config
        try:
            seen = await changes.observe(self.state, mapping, source.filters, paths, busy) \
                if isinstance(source, FolderSource) else None
        except SourceUnavailable:
            seen = None  # the full scan says why
        if seen is None:
            return False
        scan = seen.partial.scan
        if not options.dry_run:
            self.state.files.save_paths(report.label, seen.partial.scope, seen.previous, scan.cache, scan.problems)
        report.problems, report.hashed_files, report.excluded = scan.problems, scan.hashed_files, scan.excluded
        report.pack_id, report.changed = seen.pack_id, {*scan.cache, *seen.partial.gone}
        report.plan = plan_mapping(changes.restricted_input(seen, MappingOptions(
            mapping.delete, mapping.prune_foreign, mapping.max_delete, options.force)))
        report.safety = report.plan.safety
        return True

    def _unchanged(self, report: MappingReport, read: PackRead) -> None:
        """The same scan, the same pack and the same recorded images as when the plan last had nothing
        to do: the pure planner would say so again."""
        report.plan = MappingPlan(report.label, report.config.pack or read.name, read.pack_id)
        report.unchanged = True
        self.log.debug("unchanged since its last plan; nothing to do", mapping=report.label)

    async def _scan(self, report: MappingReport, previous: dict[str, CachedFile],
                    busy: Collection[str]) -> Scan | None:
        """Scan one source (it touches no state, only the given cache)."""
        try:
            return await self.sources[report.label].scan(previous, busy, lambda _n: self.progress.advance("hashed"))
        except SourceUnavailable as exc:
            report.safety = f"{exc}; nothing is deleted"
        except AuthError as exc:  # the source's own key (Genviral's goes up from the pack read)
            report.error, report.refused = str(exc), True
        return None

    def _check_sources(self, reports: list[MappingReport]) -> None:
        """A missing source is a config error — unless packsync synced it before (an unmounted disk?)."""
        for report in reports:
            if self.sources[report.label].exists():
                continue
            pack_id = recorded_pack_id(self.state, report.config)
            if self.state.files.count(report.label) or (pack_id and self.state.images.count(pack_id, report.label)):
                source = self.sources[report.label]
                why = source.unavailable if isinstance(source, GoneFolder) and source.unavailable else \
                    f"{report.label} is missing or not a folder"
                report.safety = f"{why}, but packsync synced files from it; nothing is deleted (is a disk unmounted?)"
                self.log.error("mapped folder missing; no deletes", path=report.label)
            elif self._group(report.config) != report.label:
                report.error = f"{report.label} vanished while it was being synced"
            else:
                index = self.config.mappings.index(report.config)
                raise ConfigError(f"mappings[{index}].path: the folder {report.label} does not exist.")

    async def _read_pack(self, report: MappingReport) -> PackRead | None:
        """Read the mapping's pack (None: it must be created); a mapping error leaves ``report.error``."""
        try:
            remote = await self.packs.read(report.config)
        except NotFound as exc:
            report.error = str(exc)
            return None
        except (TransientError, PermanentError) as exc:
            report.error = f"cannot read the pack: {exc}"
            return None
        report.notice = self.packs.notices.get(report.label)
        if remote is not None:
            report.pack_id = remote.pack_id
            report.pack_name = remote.name or report.pack_name
        return remote

    async def _input(self, report: MappingReport, remote: RemotePack | None, scan: Scan,
                     options: SyncOptions) -> MappingInput:
        mapping = report.config
        managed = self.state.images.managed(remote.pack_id, mapping.label, details=False) if remote else []
        others = self.state.images.others(remote.pack_id, mapping.label) if remote else {}
        recorded = {image.image_id for image in managed} | others.keys()
        unrecorded = {image.url for image in remote.images if image.image_id not in recorded} if remote else set()
        known_urls = self.state.uploads.known_urls(unrecorded)
        in_pack = {image.image_id for image in remote.images} if remote else set()
        present = {image.sha256 for image in managed if image.image_id in in_pack} | set(known_urls.values()) \
            | {sha256 for image_id, sha256 in others.items() if image_id in in_pack}
        missing = {item.sha256 for item in scan.items} - present
        contents: dict[str, str] = {}
        unknown = 0
        if mapping.adopt and remote and missing:  # only when a file may be in the pack already
            contents, unknown = await self._contents(report, remote, unrecorded - known_urls.keys(), mapping,
                                                     options)
        return MappingInput(
            label=mapping.label, pack_name=mapping.pack or (remote.name if remote else ""), scan=scan,
            managed=managed, remote=remote, known_urls=known_urls,
            options=MappingOptions(mapping.delete, mapping.prune_foreign, mapping.max_delete, options.force),
            others=others, contents=contents, unknown=unknown)

    async def _contents(self, report: MappingReport, remote: RemotePack, urls: set[str], mapping: MappingConfig,
                        options: SyncOptions) -> tuple[dict[str, str], int]:
        """The content behind each of these URLs — remembered, or downloaded once now — and how many
        could not be read this time but may be later."""
        known = self.state.uploads.url_contents(urls)
        new = sorted(urls - known.keys())
        self.progress.total("downloaded", self.progress.totals.get("downloaded", 0) + len(new))

        async def one(url: str) -> UrlContent:
            content = await content_of(self.api, url, int(mapping.max_file_mb * 1_000_000))
            self.progress.advance("downloaded")
            return content

        fetched = await asyncio.gather(*map(one, new))
        if not options.dry_run:
            # What a download taught, not what the URL check said without one (a key in a URL is never stored).
            self.state.uploads.save_url_contents(c for c in fetched if c.final and url_problem(c.url) is None)
        by_url = {image.url: image.image_id for image in remote.images}
        report.undownloadable = [(by_url[c.url], c.problem) for c in fetched if c.problem]
        contents = {url: c.sha256 for url, c in (*known.items(), *((c.url, c) for c in fetched)) if c.sha256}
        return contents, sum(not c.final for c in fetched)

    def mapped_pack_ids(self) -> list[str]:
        """The packs the config maps today (as the state remembers them)."""
        return [pack_id for mapping in concrete(self.config, self.state)
                if (pack_id := recorded_pack_id(self.state, mapping))]

    def _group(self, mapping: MappingConfig) -> str:
        return group_of(self.config, mapping.label)

    async def _expand(self, result: SyncReport, dry_run: bool) -> list[MappingConfig]:
        """The mappings to sync, each with its source in ``self.sources``: the config's, and a ``packs_from
        = "subfolders"`` one as one per subfolder. A renamed subfolder's records move to its new name and
        its pack is renamed (not in a dry run, which leaves both names out of its plan). A subfolder gone
        (or excluded now) is an emptied source; a folder that cannot be listed, or whose every subfolder
        vanished at once (an empty mount point?), makes each one a missing source: a safety stop that
        ``--force`` does not lift."""
        mappings: list[MappingConfig] = []
        taken = packs_named(self.config)
        for index, mapping in enumerate(self.config.mappings):
            if mapping.packs_from != "subfolders":
                mappings.append(mapping)
                self.sources.setdefault(mapping.label, self.source_for(mapping))
                continue
            missing: str | None = None
            present: list[MappingConfig] = []
            there: set[str] = set()
            try:
                present, result.loose[mapping.label], there = listed(mapping, taken)
            except SourceUnavailable as exc:
                missing = str(exc)
            old = gone(mapping, self.state, there)
            if missing is not None and not old:
                raise ConfigError(f"mappings[{index}].path: {missing}.")
            if old and not present:
                missing = missing or f"{mapping.label} holds none of the subfolders packsync synced"
            if missing is not None:
                for m in old:
                    self.sources[m.label] = GoneFolder(m.label, unavailable=missing)
                mappings += old
                continue
            new = [m for m in present if self.state.mappings.get(m.label) is None]
            moves = await asyncio.to_thread(renamed, {m.label: self.state.files.cache(m.label) for m in old},
                                            [m.folder for m in new]) if old and new else {}
            skipped: set[str] = set()
            for label, path in moves.items():
                done = not dry_run and await self._rename(label, derived(mapping, path))
                if done or dry_run:
                    result.renamed.append((label, str(path)))
                if not done:
                    skipped |= {label, str(path)}
            for m in present:
                if m.label not in skipped:
                    mappings.append(m)
                    self.sources[m.label] = FolderSource(m.folder, filters_below(mapping, m.folder))
            for m in old:
                if m.label not in moves:
                    mappings.append(m)
                    self.sources[m.label] = GoneFolder(m.label)
        return mappings

    async def _rename(self, old: str, new: MappingConfig) -> bool:
        """Move ``old``'s records to ``new`` and rename its pack; False when the pack could not be renamed
        (both are left for the next run: nothing is uploaded twice meanwhile)."""
        record = self.state.mappings.get(old)
        assert record is not None and record.pack_id is not None and new.pack is not None
        try:
            await self.api.rename_pack(record.pack_id, new.pack)
        except ApiError as exc:
            self.log.error("cannot rename the pack of a renamed subfolder; trying again next run", old=old,
                           new=new.label, error=str(exc))
            return False
        self.state.mappings.move_source(old, new.label)
        self.state.mappings.save(new.label, pack_id=record.pack_id, pack_name=new.pack)
        self.log.info("subfolder renamed: its pack follows", old=old, new=new.label, pack=new.pack)
        return True


def _below(paths: Collection[str], mapping: MappingConfig, group: str) -> set[str]:
    """Busy paths relative to ``group``'s folder, as paths relative to ``mapping``'s (a subfolder of it)."""
    if group == mapping.label:
        return set(paths)
    prefix = mapping.folder.name + "/"
    return {path[len(prefix):] for path in paths if path.startswith(prefix)}


async def _listed(source: FolderSource) -> Scan | None:
    try:
        return await source.listing()
    except SourceUnavailable:
        return None  # the scan that follows says why


def _fingerprint(mapping: MappingConfig, force: bool, changes: int, pack: str, scan: Scan) -> str:
    """Everything a mapping's plan is made from, as one digest: its config, the scan, the digest of the
    pack's answer, and the count of changes to the recorded images, uploads and downloads
    (``state.mappings.changes``). A folder's scan is its ``listing``: with the file cache, which only its scans
    change (and ``forget_verdicts``, which drops the fingerprint too), that decides its items."""
    seen = scan.listing or (sorted(scan.items, key=_KEY), sorted(scan.keep))
    inputs = (changes, force, mapping, pack, seen)
    return hashlib.blake2b(msgspec.json.encode(inputs, enc_hook=str), digest_size=16).hexdigest()


_KEY = operator.attrgetter("key")
