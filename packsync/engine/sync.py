"""One sync: observe → plan → execute → wait for metadata. The pipeline ``run`` and the daemon share.

Observing writes nothing: which mappings there are (``packs_from = "subfolders"`` folders listed),
each pack read once (through the pack resolver, which says what to remember instead of recording
it), each source scanned against its cache, and the unknown images of a pack downloaded to learn
their content. Scanning runs in a worker thread while the packs are being fetched. The pure planner
then turns each mapping's observations into a complete plan of actions — the pack created, renamed
or remembered, adds, deletes, withheld deletes, the scan and metadata records, the sidecars and the
mapping's "last sync" record — and the executor alone carries it out and writes the state. A dry
run returns the plan unexecuted. A mapping whose inputs are those of its last plan with nothing to
do (``_fingerprint``) is not planned again, and its pack's answer is not decoded.

A daemon sync names the paths that changed (``changed``): a folder's mapping then has its source scan
those alone and is planned for the contents they touch (``changes.py``), with no walk, pack read or
cache load; the records of those paths are a ``record-paths`` action, and the sidecars pass covers the
files looked at. Whatever that cannot decide falls back to the full scan, which stays the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import operator
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from packsync.config import Config, MappingConfig
from packsync.engine import changes as incremental
from packsync.engine import recipes
from packsync.engine.actions import (
    Action,
    RecordDownloads,
    RecordPaths,
    RecordPrepared,
    RecordScan,
    RecordSync,
    RenamePack,
    SidecarPass,
    last_error,
)
from packsync.engine.download import content_of
from packsync.engine.executor import Executor, MappingOutcome
from packsync.engine.leases import Leases, Turn, describe, meta_key, name_key, pack_key
from packsync.engine.metadata import POLL_BACKOFF, MetadataPoller
from packsync.engine.packs import PackResolver, Resolved
from packsync.engine.planner import (
    MappingInput,
    MappingOptions,
    MappingPlan,
    Plan,
    SourceFacts,
    plan_mapping,
    plan_uploads,
    safety_stop,
    uploaded_as,
)
from packsync.engine.preparer import Preparer
from packsync.engine.progress import QUIET, ProgressObserver
from packsync.engine.subfolders import Target, observe, source_of, targets
from packsync.errors import (
    AuthError,
    ConfigError,
    ExitCode,
    NotFound,
    PackNotVisible,
    PacksyncError,
    PermanentError,
    SourceUnavailable,
    TransientError,
    first_error,
)
from packsync.logs import get_logger
from packsync.mappings import concrete, group_of, packs_named, recorded_pack_id
from packsync.model import CachedFile, PackRead, Problem, RemotePack, Scan, UrlContent
from packsync.remote.answers import url_problem
from packsync.remote.genviral import GenviralClient
from packsync.remote.retry import Backoff
from packsync.sources.base import Source

if TYPE_CHECKING:  # sidecars are imported by the mappings that write them
    from packsync.engine.sidecars import SidecarReport
    from packsync.state.leases import Holder
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
    #: Every mapping's withheld deletes allowed (``run --force``).
    force: bool = False
    poll_start_s: float = POLL_BACKOFF.start_s
    poll_cap_s: float = POLL_BACKOFF.cap_s
    #: Per mapping label (a config mapping's covers its subfolders): the deletes allowed past the safety
    #: stops — None any number (``run --force MAPPING``), a count at most that many (``allow-deletes``: what
    #: the stop withheld when a person approved it, so nothing deleted since is approved with it).
    allow: dict[str, int | None] = msgspec.field(default_factory=dict)
    #: In a shared state, wait while another site syncs a mapping's pack (``run``), rather than leave that
    #: mapping for a later sync (the daemon, which has other folders to sync meanwhile).
    wait_turn: bool = True

    def for_mapping(self, mapping: MappingConfig, group: str) -> MappingOptions:
        """The options the planner weighs for ``mapping`` (of the config mapping ``group``)."""
        allowed = self.allow.get(mapping.label, self.allow.get(group, 0))
        return MappingOptions(mapping.delete, mapping.prune_foreign, mapping.max_delete,
                              self.force or allowed is None, allowed or 0)


class MappingReport(msgspec.Struct):
    """How one mapping went: what observing found, what was planned, what was done."""

    config: MappingConfig
    pack_name: str
    target: Target
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
    refused: bool = False  # the source refused the key (an Astria pack's): ``error`` says which
    misconfigured: bool = False  # a mistake in the config that is this mapping's alone: ``error`` names the key
    unchanged: bool = False  # its scan, pack and records were those of its last plan with nothing to do
    #: Another site sharing the state syncs its pack now (whom it waits for): left for a later sync.
    waiting: str | None = None
    changed: frozenset[str] | None = None  # the files a sync of changed paths looked at (None: all of them)
    #: What observing found to record whatever the plan (the scan, the downloads' contents).
    records: list[Action] = msgspec.field(default_factory=list)

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def sidecars(self) -> SidecarReport | None:
        return self.outcome.sidecars if self.outcome else None

    @property
    def fatal(self) -> str | None:
        """Why the mapping as a whole did not sync (or not fully), if it did not."""
        return self.error or (self.outcome.error if self.outcome else None) or self.safety

    @property
    def last_error(self) -> str | None:
        """The one sentence ``status`` and the daemon show for this mapping: the fatal error, else the
        first item that failed."""
        return last_error(self.fatal, self.outcome.said_failed if self.outcome else [])

    @property
    def failed(self) -> bool:
        waiting = bool(self.plan and self.plan.waiting)
        sidecars = bool(self.sidecars and any(p.skipped for p in self.sidecars.problems))
        return bool(self.last_error or waiting or sidecars or any(p.skipped for p in self.problems))


class SyncReport(msgspec.Struct):
    mappings: list[MappingReport] = msgspec.field(default_factory=list)
    plan: Plan | None = None
    metadata_pending: int = 0
    #: Per ``packs_from = "subfolders"`` folder listed: what is skipped directly in it (its files, and the
    #: subfolders that cannot be packs), recorded as that folder's skipped files.
    loose: dict[str, list[Problem]] = msgspec.field(default_factory=dict)
    dry_run: bool = False
    #: The mappings not synced because a person paused them (``packsync pause``).
    paused: list[str] = msgspec.field(default_factory=list)
    #: The mappings left for a later sync because another site sharing the state syncs their pack now,
    #: each with who holds it (``Hold.waiting_for``).
    waiting: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def renamed(self) -> list[tuple[str, str]]:
        """Subfolders renamed (old path, new path): in a dry run, found and left for the real run."""
        return [(m.target.renamed_from, m.label) for m in self.mappings if m.target.renamed_from
                and (self.dry_run or (m.outcome and m.outcome.renamed_from))]

    @property
    def loose_files(self) -> list[Problem]:
        return [problem for loose in self.loose.values() for problem in loose]

    @property
    def exit_code(self) -> ExitCode:
        if any(m.safety for m in self.mappings):
            return ExitCode.SAFETY
        if any(m.refused for m in self.mappings):
            return ExitCode.AUTH
        if any(m.misconfigured for m in self.mappings):
            return ExitCode.USAGE
        if any(m.failed for m in self.mappings) or any(p.skipped for p in self.loose_files) or self.waiting:
            return ExitCode.SOME_FAILED
        return ExitCode.OK


class Syncer:
    """Runs the sync pipeline for a config, with one API client, one state and its sources."""

    def __init__(self, config: Config, state: State, api: GenviralClient,
                 source_for: Callable[[MappingConfig], Source], packs: PackResolver, metadata: MetadataPoller,
                 progress: ProgressObserver = QUIET, leases: Leases | None = None) -> None:
        self.config = config
        self.leases = leases or Leases(None)
        self.state = state
        self.api = api
        self.source_for = source_for
        self.sources: dict[str, Source] = {}
        self.sidecar_pass = asyncio.Lock()  # one pass at a time: a sync's and the metadata poller's
        self.packs = packs
        self.metadata = metadata
        self.progress = progress
        self.log = get_logger()
        # (what a recipe made waits for its upload in the state's folder; a read-only state's sync uploads nothing)
        self.preparer = Preparer(spool=None if state.readonly else config.spool_path / "prepared")
        self._downloads = 0
        self.configured: frozenset[str] = frozenset()  # the labels of every mapping of the last sync's config

    async def sync(self, options: SyncOptions = SyncOptions(), only: Collection[str] | None = None,
                   busy: Mapping[str, Collection[str]] | None = None,
                   changed: Mapping[str, Collection[str]] | None = None) -> SyncReport:
        """Sync every mapping (or those whose label is in ``only``) once.

        ``busy`` names, per mapping label, items still being written: their new content waits for a later sync.
        ``changed`` names, per mapping label, the paths that changed (the daemon's hint); None, or a label
        missing from it, is a full scan of that mapping.
        """
        self.api.start_run()
        result = SyncReport(dry_run=options.dry_run)
        paused = self.state.mappings.paused()
        found = await self._targets(result, paused)
        # (what this machine maps now: a mapping dropped from the config no longer holds a pack's images)
        self.configured = frozenset({*(t.label for t in found), *result.paused})
        if only is None and not options.dry_run:
            self.state.mappings.retire([mapping.label for mapping in self.config.mappings])
        selected = [t for t in found if only is None or t.label in only or self._group(t.config) in only]
        result.paused = [label for label in result.paused
                         if only is None or label in only or group_of(self.config, label) in only]
        result.mappings = [MappingReport(t.config, t.config.pack_label, t) for t in selected]
        for report in result.mappings:
            self._check_source(report)
        async with contextlib.AsyncExitStack() as held:
            turn = Turn(self.leases, held)
            if not options.dry_run:  # (a plan only shown writes nothing: it needs no turn)
                await self._hold(turn, result, options)
            slots = asyncio.Semaphore(MAPPINGS_AT_ONCE)
            try:
                async with asyncio.TaskGroup() as group:
                    for report in result.mappings:
                        if not (report.error or report.safety or report.waiting):
                            group.create_task(self._plan(report, options, self._below(busy, report) or (),
                                                         self._below(changed, report), slots, turn))
            except* PacksyncError as errors:
                raise first_error(errors) from None
            result.waiting = {report.label: report.waiting for report in result.mappings if report.waiting}
            result.mappings = [report for report in result.mappings if not report.waiting]
            plans = [self._complete(report) for report in result.mappings]
            result.plan = self._uploads(plans)
            if options.dry_run:
                for plan in result.plan.mappings:  # (the sidecars a run would write: shown, as every other step)
                    plan.actions = [action.previewed(self.state) for action in plan.actions]
                return result
            executor = self._executor(turn.fence)
            outcomes = await self._execute(result, executor)
        # The packs' writes are done: other sites may take their turn while the metadata comes.
        await self._finish(result, options, executor, outcomes)
        self.state.heard_from_if_can()
        return result

    def _lease_keys(self, report: MappingReport) -> list[str]:
        """The leases a mapping's sync holds: its pack's (as far as it is known), and its pack's name's when
        the config names the pack (a pack two sites would create at once is created once)."""
        mapping = report.config
        pack_id = recorded_pack_id(self.state, mapping)
        keys = [pack_key(pack_id)] if pack_id else []
        return keys + [name_key(report.pack_name)] if mapping.pack_id is None and report.pack_name else keys

    async def _hold(self, turn: Turn, result: SyncReport, options: SyncOptions) -> None:
        """Take this sync's turn on its mappings' packs (a shared state's leases; nothing to take on a state of
        its own), kept until the packs' writes are done. Waiting (``wait_turn``), every key is taken in
        one hold, in one order, so two sites never each hold what the other waits for; not waiting, each
        mapping's apart, and a mapping whose pack another site syncs now is left for a later sync."""
        if self.leases.repository is None:
            return
        keys = {report.label: self._lease_keys(report) for report in result.mappings
                if not (report.error or report.safety)}
        if options.wait_turn:
            # A first sync by name waits for the pack the name gives too, if it exists: taken mid-sync, it
            # could not be waited for (the sync would hold other keys meanwhile).
            for report in result.mappings:
                unresolved = report.label in keys and not any(key.startswith("pack:") for key in keys[report.label])
                if unresolved and (found := await self.packs.named(report.config)) is not None:
                    keys[report.label].append(pack_key(found))

            def waiting(key: str, holder: Holder) -> None:
                self.log.info(f"waiting for site {holder.site}, which syncs {describe(key)} now",
                              left_s=round(holder.seconds_left))
            await turn.take_all(keys, on_busy=waiting)
            return
        for report in result.mappings:
            if report.label in keys:
                report.waiting = await turn.take(report.label, keys[report.label])

    def _uploads(self, plans: list[MappingPlan]) -> Plan:
        """The plans with the uploads they need, and the URLs of those already in storage."""
        adds = [add for plan in plans for add in plan.adds]
        prepared = self.state.uploads.prepared({add.sha256 for add in adds},
                                               {add.recipe.key for add in adds if not add.recipe.as_is})
        sent = {upload for add in adds if (upload := uploaded_as(add, prepared))}
        return plan_uploads(plans, self.state.uploads.blobs(sent), prepared)

    async def _execute(self, result: SyncReport, executor: Executor) -> list[MappingOutcome]:
        """Carry the plan out, up to its ``finish`` phase."""
        plan = result.plan
        assert plan is not None
        self.api.start_run(planned_calls=plan.mutations)
        for kind, count in (("uploaded", len(plan.uploads)), ("added", sum(len(p.adds) for p in plan.mappings)),
                            ("deleted", sum(len(p.deletes) + len(p.replacements) for p in plan.mappings))):
            if count:
                self.progress.total(kind, count)
        try:
            outcomes = await executor.run(plan)
        finally:
            # What this sync's sources held for the uploads (an Astria pack's downloads); a sync under way
            # beside it (the daemon's, of an Astria pack) keeps its own.
            for report in result.mappings:
                if (source := self.sources.get(report.label)) is not None:
                    source.close()
        for report, outcome in zip(result.mappings, outcomes, strict=True):
            if report.plan is not None:
                report.outcome, report.pack_id = outcome, outcome.pack_id
            if outcome.renamed_from:
                report.pack_name = report.config.pack or report.pack_name
        return outcomes

    async def _finish(self, result: SyncReport, options: SyncOptions, executor: Executor,
                      outcomes: list[MappingOutcome]) -> None:
        """Wait for the metadata if asked; then the sidecars and the records."""
        plan = result.plan
        assert plan is not None
        if options.wait:
            pack_ids = [r.pack_id for r in result.mappings if r.pack_id and not (r.outcome and r.outcome.error)]
            result.metadata_pending = await self.metadata.wait(pack_ids, options.wait_timeout_s, executor.record,
                                                               Backoff(options.poll_start_s, options.poll_cap_s))
        await executor.finish(plan, outcomes)
        # What is skipped directly in a folder of subfolder packs: that folder's skipped files on record.
        await executor.record([RecordScan(folder, problems=loose) for folder, loose in result.loose.items()])

    def _complete(self, report: MappingReport) -> MappingPlan:
        """The mapping's plan with what every sync records: the scan, the sidecars, how it ended."""
        plan = report.plan or MappingPlan(report.label, report.pack_name, report.pack_id)
        plan.actions[:0] = report.records
        source = self.sources.get(report.label)
        if report.plan is not None and report.config.sidecars == "xmp" and report.config.path is not None \
                and source is not None and not source.gone:
            plan.actions.append(SidecarPass(report.label, report.config, report.changed))
        withheld = report.plan.withheld if report.plan and report.safety else []
        plan.actions.append(RecordSync(report.label, report.error, report.safety,
                                       tuple(d.name or d.image_id for d in withheld[:WITHHELD_SHOWN]),
                                       source.name if source else None, plan.weighed if withheld else 0,
                                       report.changed if report.plan is not None else frozenset(),
                                       expires_at=source.expires_at if source else None))
        return plan

    async def metadata_round(self, pack_ids: Collection[str]) -> None:
        """One round of the daemon's metadata loop: poll, have the executor record what changed, then write
        the sidecars of the files holding the contents it describes anew. In a shared state, a pack another
        site polls now is left to it: each pack is polled once for all sites."""
        async with contextlib.AsyncExitStack() as held:
            ours = [pack_id for pack_id in pack_ids
                    if (await held.enter_async_context(self.leases.hold([meta_key(pack_id)]))).granted]
            found = await self.metadata.poll(ours)
            await self._executor().record(found.records)
        await self.write_sidecars(found.described)

    async def write_sidecars(self, described: Mapping[str, Collection[str]]) -> None:
        """The sidecars of the files holding the contents whose metadata just arrived (``described``, per
        pack: what a metadata round found), as ``sidecars`` actions the executor runs."""
        plans = []
        for mapping in concrete(self.config, self.state):
            pack_id = recorded_pack_id(self.state, mapping)
            contents = described.get(pack_id or "")
            if contents and mapping.sidecars == "xmp" and mapping.path is not None:
                files = frozenset(self.state.files.paths_holding(mapping.label, contents))
                plans.append(MappingPlan(mapping.label, mapping.pack_label, pack_id,
                                         [SidecarPass(mapping.label, mapping, files)]))
        if not plans:
            return
        outcomes = [MappingOutcome(plan.label, plan.pack_id) for plan in plans]
        await self._executor().finish(Plan(plans, []), outcomes)
        for outcome in outcomes:
            for problem in outcome.sidecars.problems if outcome.sidecars else ():
                self.log.warning(problem.reason, mapping=outcome.label, path=problem.rel_path)

    def _executor(self, fence: Callable[[str], None] = lambda _label: None) -> Executor:
        return Executor(self.api, self.state, self.packs, self.sources, self.progress, self.sidecar_pass,
                        self.preparer, fence)

    # -- observing ----------------------------------------------------------------------------------

    async def _targets(self, result: SyncReport, paused: Collection[str]) -> list[Target]:
        """The mappings this sync has, each with its source in ``self.sources``: the config's, and a
        ``packs_from = "subfolders"`` one as one per subfolder; those ``paused`` are named in ``result``."""
        found: list[Target] = []
        taken = packs_named(self.config)
        for index, mapping in enumerate(self.config.mappings):
            if mapping.label in paused:
                result.paused.append(mapping.label)
                continue
            if mapping.packs_from != "subfolders":
                found.append(Target(mapping))
                self.sources.setdefault(mapping.label, self.source_for(mapping))
                continue
            seen = await observe(mapping, self.state, taken)
            if seen.unlisted is None:
                result.loose[mapping.label] = seen.skipped
            for target in targets(index, mapping, seen):
                if target.label in paused:
                    result.paused.append(target.label)
                    continue
                found.append(target)
                self.sources[target.label] = source_of(target)
        return found

    def _check_source(self, report: MappingReport) -> None:
        """A missing source is a safety stop if packsync synced from it (an unmounted disk?); else a
        subfolder that vanished meanwhile, or a mistake in the config."""
        source = self.sources[report.label]
        if source.exists():
            return
        pack_id = recorded_pack_id(self.state, report.config)
        synced = bool(self.state.files.count(report.label)
                      or (pack_id and self.state.images.count(pack_id, report.label)))
        facts = SourceFacts(missing=source.unavailable or f"{report.label} is missing or not a folder",
                            synced_before=synced)
        report.safety = safety_stop(facts)
        if report.safety:
            self.log.error("mapped folder missing; no deletes", path=report.label)
        elif report.target.parent is not None:
            report.error = f"{report.label} vanished while it was being synced"
        else:
            index = self.config.mappings.index(report.config)
            raise ConfigError(f"mappings[{index}].path: the folder {report.label} does not exist.")

    async def _plan(self, report: MappingReport, options: SyncOptions, busy: Collection[str],
                    changed: Collection[str] | None, slots: asyncio.Semaphore, turn: Turn) -> None:
        """Read the pack while scanning the source, then plan; a few mappings at a time, to bound memory."""
        async with slots:
            if changed is not None and await self._plan_changes(report, options, busy, changed):
                return
            read: Resolved | None = None
            if self.state.files.settled(report.label) and not (busy or options.dry_run):
                # A source whose last plan had nothing to do: if a walk sees what it saw then, and the
                # pack and the records are the same, its file cache is not even loaded.
                listing, read = await asyncio.gather(self._listing(report), self._read_pack(report))
                if listing and self._same_as_settled(report, options, read, listing):
                    return
            records = report.target.renamed_from or report.label
            previous = self.state.files.cache(records)
            if read is None:
                # The scan first: its thread walks the folder while the pack is read here (and, in a new
                # process, while the HTTP library is imported for that first request).
                scan, read = await asyncio.gather(self._scan(report, previous, busy),
                                                  self._read_pack(report))
            else:
                scan = await self._scan(report, previous, busy)
            if scan is not None:
                await self._plan_scanned(report, options, scan, previous, read, turn)

    async def _plan_changes(self, report: MappingReport, options: SyncOptions, busy: Collection[str],
                            paths: Collection[str]) -> bool:
        """Plan from the changed ``paths`` alone (``changes.py``); False when the mapping needs a full scan."""
        if report.target.renamed_from:
            return False  # its records and pack are taken over by the full plan
        try:
            seen = await incremental.observe(self.state, report.config, self.sources[report.label], paths, busy,
                                             self.configured)
        except SourceUnavailable:
            return False  # the full scan says why
        if seen is None:
            return False
        scan, config = seen.partial.scan, report.config
        recipes.unuploadable(scan, config.recipe)
        report.records.append(RecordPaths(report.label, seen.partial.scope, seen.previous, scan.cache,
                                          scan.problems))
        report.problems, report.hashed_files, report.excluded = scan.problems, scan.hashed_files, scan.excluded
        report.pack_id, report.pack_name = seen.pack_id, seen.pack_name
        report.changed = frozenset({*scan.cache, *seen.partial.gone})
        report.plan = plan_mapping(incremental.restricted_input(seen, self._options(report, options), config.recipe))
        report.safety = report.plan.safety
        return True

    def _same_as_settled(self, report: MappingReport, options: SyncOptions, read: Resolved | None,
                         listing: Scan) -> bool:
        """Whether the walk, the pack and the records are those the last plan with nothing to do saw:
        the pure planner would say so again."""
        changes = self.state.mappings.changes()
        pack = read.pack if read else None
        if not (pack and changes >= 0 and not report.error) or _fingerprint(
                report.config, self._options(report, options), changes, pack.digest, listing) \
                != self.state.files.settled(report.label):
            return False
        report.problems = self.state.files.problems(report.label)
        self._unchanged(report, pack)
        return True

    def _unchanged(self, report: MappingReport, pack: PackRead) -> None:
        """The same scan, the same pack and the same recorded images as when the plan last had nothing
        to do: the pure planner would say so again."""
        report.plan = MappingPlan(report.label, report.config.pack or pack.name, pack.pack_id)
        report.unchanged = True
        self.log.debug("unchanged since its last plan; nothing to do", mapping=report.label)

    async def _plan_scanned(self, report: MappingReport, options: SyncOptions, scan: Scan,
                            previous: dict[str, CachedFile], read: Resolved | None, turn: Turn) -> None:
        if read is not None and read.pack is not None and not options.dry_run:
            # The pack the mapping resolved to, if the state did not know it (a first sync by name, a
            # renamed subfolder's): its lease too, and the pack read again under it.
            key = pack_key(read.pack.pack_id)
            if key not in turn.keys.get(report.label, ()) and self.leases.repository is not None:
                report.waiting = await turn.take_more(report.label, key)
                if report.waiting is not None:
                    return
                read = await self._read_pack(report)
                if read is not None and read.pack is not None and pack_key(read.pack.pack_id) != key:
                    report.waiting = "its pack changed while this site took its turn; it syncs next time"
                    return
        recipes.unuploadable(scan, report.config.recipe)
        report.problems, report.hashed_files, report.excluded = scan.problems, scan.hashed_files, scan.excluded
        changes = self.state.mappings.changes()  # (-1: not counted, as in a state of an older schema read as is)
        pack = read.pack if read and not report.error else None
        fingerprint = _fingerprint(report.config, self._options(report, options), changes, pack.digest, scan) \
            if pack and changes >= 0 else ""
        if pack and fingerprint and fingerprint == self.state.files.settled(report.label):
            self._record_scan(report, previous, scan)
            self._unchanged(report, pack)
            return
        remote = self._decoded(report, pack)
        if report.error or read is None:
            self._record_scan(report, previous, scan)
            return
        report.plan = plan_mapping(await self._input(report, read, remote, scan, options))
        report.safety = report.plan.safety
        self._record_scan(report, previous, scan, fingerprint if report.plan.settled and not scan.retry else None)

    def _record_scan(self, report: MappingReport, previous: dict[str, CachedFile], scan: Scan,
                     settled: str | None = None) -> None:
        if not self.sources[report.label].gone:
            report.records.append(RecordScan(report.label, previous, scan.cache, scan.problems, settled or None))
        elif settled:  # (a gone subfolder's last listing is kept: it is how a rename is recognised later)
            report.records.append(RecordScan(report.label, settled=settled))

    @staticmethod
    def _decoded(report: MappingReport, pack: PackRead | None) -> RemotePack | None:
        try:
            return pack.decode() if pack else None
        except (TransientError, PermanentError) as exc:  # the answer's images are not as documented
            report.error, report.pack_id = f"cannot read the pack: {exc}", None
            return None

    async def _listing(self, report: MappingReport) -> Scan | None:
        try:
            return await self.sources[report.label].listing()
        except SourceUnavailable:
            return None  # the scan that follows says why

    async def _scan(self, report: MappingReport, previous: dict[str, CachedFile], busy: Collection[str]) -> Scan | None:
        """Scan one source (it touches no state, only the given cache). A source that deletes its items learns
        the date it said last (an answer that omits it must not lift what the date keeps)."""
        source = self.sources[report.label]
        if source.expires_at is None and (record := self.state.mappings.get(report.label)) is not None:
            source.expires_at = record.expires_at
        try:
            return await source.scan(previous, busy, lambda _n: self.progress.advance("hashed"))
        except SourceUnavailable as exc:
            report.safety = safety_stop(SourceFacts(unreadable=str(exc)))
        except AuthError as exc:  # the source's own key (Genviral's goes up from the pack read)
            report.error, report.refused = str(exc), True
        except TransientError as exc:  # a source behind an API that cannot answer now: retried, not a stop
            report.error = str(exc)
        return None

    async def _read_pack(self, report: MappingReport) -> Resolved | None:
        """Read the mapping's pack (its ``pack`` None: it must be created); a mapping error leaves
        ``report.error``. A renamed subfolder's pack is the one its old name synced into."""
        config = report.config
        if report.target.renamed_from:
            record = self.state.mappings.get(report.target.renamed_from)
            if record and record.pack_id:
                config = msgspec.structs.replace(config, pack=None, pack_id=record.pack_id)
        try:
            read = await self.packs.read(config)
        except PackNotVisible as exc:
            if report.config.pack_id is None:  # a renamed subfolder's pack: the config names no pack_id
                old = Path(report.target.renamed_from or report.label).name
                report.error = (f"the pack this subfolder synced into as {old!r} ({exc.pack_id}) is gone (deleted in "
                                f"the web app?); name the subfolder {old!r} again for one sync, which makes its pack "
                                "again, then rename it.")
            else:
                index = self.config.mappings.index(report.config)
                report.error, report.misconfigured = f"mappings[{index}].pack_id: {exc}", True
            return None
        except NotFound as exc:
            report.error = str(exc)
            return None
        except (TransientError, PermanentError) as exc:
            report.error = f"cannot read the pack: {exc}"
            return None
        report.notice = read.notice
        if read.pack is not None:
            report.pack_id = read.pack.pack_id
            report.pack_name = read.pack.name or report.pack_name
        return read

    async def _input(self, report: MappingReport, read: Resolved, remote: RemotePack | None, scan: Scan,
                     options: SyncOptions) -> MappingInput:
        mapping = report.config
        owner = report.target.renamed_from or mapping.label
        managed = self.state.images.managed(remote.pack_id, owner, details=False) if remote else []
        others = self.state.images.others(remote.pack_id, owner) if remote else {}
        recorded = {image.image_id for image in managed} | others.keys()
        unrecorded = {image.url for image in remote.images if image.image_id not in recorded} if remote else set()
        known = self.state.uploads.known_urls(unrecorded)
        known_urls = {url: sha for url, (sha, _recipe) in known.items()}
        in_pack = {image.image_id for image in remote.images} if remote else set()
        present = {image.sha256 for image in managed if image.image_id in in_pack} | set(known_urls.values()) \
            | {sha256 for image_id, sha256 in others.items() if image_id in in_pack}
        missing = {item.sha256 for item in scan.items} - present
        gone = {image.sha256 for image in managed} - {item.sha256 for item in scan.items} - scan.keep
        elsewhere = self.state.images.held_elsewhere(remote.pack_id, owner, gone, self.configured) \
            if remote and gone else {}
        contents: dict[str, str] = {}
        unknown = 0
        if mapping.adopt and remote and missing:  # only when a file may be in the pack already
            contents, unknown = await self._contents(report, remote, unrecorded - known_urls.keys(), mapping)
        unmatched = bool(set(contents.values()) - {item.sha256 for item in scan.items})
        seen = await recipes.observe(self.state, self.sources[report.label], self.preparer, mapping.recipe, scan,
                                     managed, missing, unmatched)
        if seen.learnt:
            report.records.append(RecordPrepared(report.label, tuple(seen.learnt)))
        return MappingInput(
            label=mapping.label, pack_name=mapping.pack or (remote.name if remote else ""), scan=scan,
            managed=managed, remote=remote, known_urls=known_urls,
            known_recipes={url: recipe for url, (_sha, recipe) in known.items()},
            options=self._options(report, options),
            others=others, contents=contents, unknown=unknown, remember=None if report.target.renamed_from
            else read.remember, gone_pack=read.gone, renamed=self._rename(report, remote), recipe=mapping.recipe,
            prepared=seen.prepared, held_elsewhere=elsewhere)

    def _rename(self, report: MappingReport, remote: RemotePack | None) -> RenamePack | None:
        old = report.target.renamed_from
        if old is None or remote is None or report.config.pack is None:
            return None
        return RenamePack(report.label, old, remote.pack_id, report.config.pack, report.target.renames)

    async def _contents(self, report: MappingReport, remote: RemotePack, urls: set[str],
                        mapping: MappingConfig) -> tuple[dict[str, str], int]:
        """The content behind each of these URLs — remembered, or downloaded once now — and how many
        could not be read this time but may be later. What a download taught is for the executor to
        record (a key in a URL is never stored)."""
        known = self.state.uploads.url_contents(urls)
        new = sorted(urls - known.keys())
        self._downloads += len(new)
        self.progress.total("downloaded", self._downloads)

        async def one(url: str) -> UrlContent:
            content = await content_of(self.api, url, int(mapping.max_file_mb * 1_000_000),
                                       lambda n: self.progress.advance("received", n))
            self.progress.advance("downloaded")
            return content

        fetched = await asyncio.gather(*map(one, new))
        learnt = tuple(c for c in fetched if c.final and url_problem(c.url) is None)
        if learnt:
            report.records.append(RecordDownloads(report.label, learnt))
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

    def _options(self, report: MappingReport, options: SyncOptions) -> MappingOptions:
        return options.for_mapping(report.config, self._group(report.config))

    def _below(self, paths: Mapping[str, Collection[str]] | None, report: MappingReport) -> set[str] | None:
        """Paths the daemon names relative to a config mapping's folder, as paths relative to ``report``'s
        (a subfolder of it); None when ``paths`` says nothing of it, or names the subfolder itself (moved
        away, or another moved in under its name): then the subfolder is scanned whole."""
        group = self._group(report.config)
        if paths is None or group not in paths:
            return None
        if group == report.label:
            return set(paths[group])
        if report.config.folder.name in paths[group]:
            return None
        prefix = report.config.folder.name + "/"
        return {path[len(prefix):] for path in paths[group] if path.startswith(prefix)}


def _fingerprint(mapping: MappingConfig, options: MappingOptions, changes: int, pack: str, scan: Scan) -> str:
    """Everything a mapping's plan is made from, as one digest: its config, the scan, the digest of the
    pack's answer, and the count of changes to the recorded images, uploads and downloads
    (``state.mappings.changes``). A folder's scan is its ``listing``: with the file cache, which only its scans
    change (a sync of changed paths among them: the walk then sees those files' new stat keys; and
    ``forget_verdicts``, which drops the fingerprint too), that decides its items."""
    seen = scan.listing or (sorted(scan.items, key=_KEY), sorted(scan.keep))
    inputs = (changes, options, mapping, pack, seen)
    return hashlib.blake2b(msgspec.json.encode(inputs, enc_hook=str), digest_size=16).hexdigest()


_KEY = operator.attrgetter("key")

