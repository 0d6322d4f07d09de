"""What packsync prints on stdout for people: plans, run summaries, ``status`` and pack lists.

Renderers only: they take the values the engine and the status read model produce and print them.
Every name and message is shown through ``printable``: a file named ``"a\n  failed …"`` must not
forge a line, and an escape sequence in a name or a description must not drive the terminal
(``--json`` keeps them exact).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from packsync.model import AstriaPack, AstriaPackSummary, AstriaTune, PackSummary, Problem, TunePrompts
from packsync.recipe import describe
from packsync.views.clock import local_time, utc
from packsync.views.closing import (
    closing_line,
    counts_line,
    exit_reason,
    failed_deletes,
    failures,
    ignorable,
    mapping_counts,
)
from packsync.views.status import FileStatus, SiteStatus, Status

if TYPE_CHECKING:  # only named: importing them would bring in the HTTP client, which `status` never needs
    from packsync.engine.actions import DeleteImage
    from packsync.engine.planner import MappingPlan
    from packsync.engine.pull import PullReport
    from packsync.engine.sync import MappingReport, SyncReport
    from packsync.views.search import SearchHit

#: Skipped files listed per reason before the rest are counted.
PROBLEMS_SHOWN = 5


def printable(text: object) -> str:
    """``text`` with control and format characters shown as escapes (``\\n``, ``\\x1b``), nothing else changed."""
    return "".join(c if not unicodedata.category(c).startswith("C") else
                   c.encode("unicode_escape").decode("ascii") for c in str(text))


def _header(path: object, pack: str, pack_id: str | None, new: bool = False) -> str:
    """``folder → pack (id)``; "new pack" only when the sync creates it (a pack given by id, or one that exists
    but is not read yet, is not new)."""
    named = pack_id and pack != f"pack {pack_id}"  # (a pack given by id and not read yet is named by its id)
    shown = " ".join(filter(None, ("new pack" if new else None, printable(pack_id) if named else None)))
    return f"{printable(path)} → {printable(pack)}" + (f" ({shown})" if shown else "")


def _pack_id(mapping: MappingReport) -> str | None:
    """The pack's id as far as this sync knows it: read, or given by the config (a stop before the read)."""
    return mapping.pack_id or mapping.config.pack_id


def _creates(mapping: MappingReport) -> bool:
    """Whether the mapping's sync creates its pack (a dry run's: would)."""
    return bool(mapping.plan and mapping.plan.create_pack)


def print_plan(report: SyncReport, out: TextIO, verbose: bool = False) -> None:
    """The ``--dry-run`` listing: every upload, add and delete, per mapping (``verbose``: and what the
    exclude patterns left out, and by which pattern). Changes nothing."""
    uploads = {upload.add.upload_key for upload in report.plan.uploads} if report.plan else set()
    for mapping in report.mappings:
        out.write(_header(mapping.label, mapping.pack_name, _pack_id(mapping), _creates(mapping)) + "\n")
        if mapping.notice:
            out.write(f"  notice     {printable(mapping.notice)}\n")
        if mapping.error or (mapping.safety and not mapping.plan):
            out.write(f"  error    {printable(mapping.error or mapping.safety)}\n")
        if mapping.plan:
            _planned(mapping.plan, uploads, out)
        _foreign(mapping, out)
        _problems(mapping.problems, out)
        for path, pattern in mapping.excluded if verbose else ():
            out.write(f"  {'excluded':<10} {printable(path)} (by {printable(pattern)})\n")
    _subfolders(report, out, dry_run=True)
    if report.plan:
        total = report.plan.mutations
        out.write(f"dry run: {len(report.plan.uploads)} uploads, "
                  f"{sum(len(m.adds) for m in report.plan.mappings)} adds, "
                  f"{sum(len(m.deletes) for m in report.plan.mappings)} deletes "
                  f"({total} API writes); nothing changed\n")
    reason = exit_reason(report)
    if reason:
        out.write(f"dry run: exit {int(report.exit_code)}: {printable(reason)}\n")


def _planned(plan: MappingPlan, uploads: set[str], out: TextIO) -> None:
    """One mapping's adds, adoptions, deletes and withheld deletes, as a dry run lists them."""
    for add in plan.adds:
        replaces = add.describe().get("replaces")
        verb = "replace" if replaces else "upload+add" if add.upload_key in uploads else "add"
        why = f" (image {printable(replaces)}, prepared otherwise, goes once this one is added)" if replaces else ""
        out.write(f"  {verb:<10} {printable(add.item.key)}{why}\n")
    for adopt in plan.adopts:
        if not adopt.recovered:
            out.write(f"  {'adopt':<10} image {printable(adopt.image.image_id)} as "
                      f"{printable(adopt.image.file_name)} (same bytes)\n")
    for delete in sorted(plan.deletes, key=_deleted):  # (by name, not in the order the pack lists its images)
        out.write(f"  {'delete':<10} {_deleted(delete)} ({delete.reason})\n")
    for delete in sorted(plan.withheld, key=_deleted):
        out.write(f"  {'withheld':<10} delete of {_deleted(delete)} ({delete.reason})\n")
    if plan.safety:
        out.write(f"  safety     {printable(plan.safety)}\n")
    if not (plan.adds or plan.deletes or plan.withheld or plan.adopts):
        out.write("  nothing to do\n")


def _deleted(delete: DeleteImage) -> str:
    """An image to delete by the name the user knew: the file it was added from (its image in brackets);
    one whose name packsync does not know (another program's, or adopted before names were kept), by its id."""
    if delete.name:
        return f"{printable(delete.name)} (image {printable(delete.image_id)})"
    return f"image {printable(delete.image_id)}"


def _subfolders(report: SyncReport, out: TextIO, *, dry_run: bool) -> None:
    """What a ``packs_from = "subfolders"`` folder said beside its packs: renames, and loose files."""
    for old, new in report.renamed:
        verb = "would rename" if dry_run else "renamed"
        out.write(f"{printable(old)} → {printable(new)}: subfolder renamed; {verb} its pack, nothing uploaded\n")
    for folder, loose in report.loose.items():
        if loose:
            skipped = sum(problem.skipped for problem in loose)
            out.write(f"{printable(folder)} → (a pack per subfolder)\n"
                      + ("" if dry_run else f"  {skipped} skipped\n"))
            _problems(loose, out)


def _foreign(mapping: MappingReport, out: TextIO) -> None:
    """Images in the pack that are not packsync's and are worth a word: copies, and unreadable ones."""
    for image in mapping.plan.duplicates if mapping.plan else []:
        out.write(f"  {'duplicate':<10} image {printable(image.image_id)}: the same bytes as another image "
                  "in the pack; not packsync's, left alone\n")
    for image_id, why in mapping.undownloadable:
        out.write(f"  {'foreign':<10} image {printable(image_id)}: {printable(why)}; left alone\n")
    if mapping.plan and mapping.plan.waiting:
        out.write(f"  {'waiting':<10} {len(mapping.plan.waiting)} files are not added until the images above "
                  "can be read: one may already hold them\n")


def _problems(problems: Iterable[Problem], out: TextIO, word: str = "skipped") -> None:
    """The skipped files (or what else ``word`` names), a few per reason: 50,000 empty files make six lines,
    not 50,000."""
    by_reason: dict[tuple[str, bool], list[str]] = {}
    for problem in problems:
        by_reason.setdefault((problem.reason, problem.notice), []).append(problem.rel_path)
    for (reason, notice), paths in by_reason.items():
        for path in paths[:PROBLEMS_SHOWN]:
            out.write(f"  {'notice' if notice else word:<10} {printable(path)}: {printable(reason)}\n")
        if len(paths) > PROBLEMS_SHOWN:
            out.write(f"  {'':<10} … and {len(paths) - PROBLEMS_SHOWN} more: {printable(reason)} "
                      "(`packsync status --problems` lists them)\n")


def print_run(report: SyncReport, out: TextIO) -> None:
    """The summary after ``run``: counts per mapping, then each failure by name."""
    for mapping in report.mappings:
        outcome = mapping.outcome
        out.write(_header(mapping.label, mapping.pack_name, _pack_id(mapping), _creates(mapping)) + "\n")
        if mapping.notice:
            out.write(f"  notice     {printable(mapping.notice)}\n")
        if outcome:
            out.write(f"  {counts_line(mapping_counts(mapping))}"
                      + (f", {outcome.deletes_skipped} deletes postponed" if outcome.deletes_skipped else "") + "\n")
            for where, why in failures(mapping):
                out.write(f"  {'failed':<10} {printable(where)}: {printable(why)}\n")
            for name, why in failed_deletes(mapping):
                out.write(f"  delete failed {printable(name)}: {printable(why)} (tried again next sync)\n")
            _prepared(outcome.prepared, out)
        if mapping.fatal:
            out.write(f"  error      {printable(mapping.fatal)}\n")
        if mapping.sidecars and (mapping.sidecars.written or mapping.sidecars.removed):
            out.write(f"  sidecars   {mapping.sidecars.written} written, {mapping.sidecars.removed} removed\n")
        _foreign(mapping, out)
        _problems(mapping.problems, out)
        _problems(mapping.sidecars.problems if mapping.sidecars else [], out, "sidecar")
    _subfolders(report, out, dry_run=False)
    _not_synced(report, out)
    if report.metadata_pending:
        out.write(f"metadata: {report.metadata_pending} images still pending; "
                  "`packsync status` shows them as they complete\n")
    _closing(report, out)


def _not_synced(report: SyncReport, out: TextIO) -> None:
    """The mappings this sync left alone: paused by a person, or whose pack another site syncs now."""
    for label in report.paused:
        out.write(f"{printable(label)}: paused, not synced (`packsync resume` syncs it again)\n")
    for label, why in report.waiting.items():
        out.write(f"{printable(label)}: not synced yet, {printable(why)}\n")


def _closing(report: SyncReport, out: TextIO) -> None:
    """The closing line, and when a few files skipped are all that went wrong, the lines that would ignore them."""
    out.write(printable(closing_line(report)) + "\n")
    ignore = ignorable(report)
    for file, line in ignore if len(ignore) <= PROBLEMS_SHOWN else ():  # (more: the closing line says where)
        out.write(f"  add to {printable(file)}: {printable(line)}\n")


def _prepared(prepared: list[tuple[str, tuple[str, ...]]], out: TextIO) -> None:
    """The files uploaded other than as they are, a line per kind of change."""
    by_changes: dict[tuple[str, ...], list[str]] = {}
    for key, changes in prepared:
        by_changes.setdefault(changes, []).append(key)
    for changes, keys in by_changes.items():
        shown = ", ".join(printable(key) for key in keys[:PROBLEMS_SHOWN])
        more = f" and {len(keys) - PROBLEMS_SHOWN} more" if len(keys) > PROBLEMS_SHOWN else ""
        out.write(f"  {'prepared':<10} {describe(changes)}: {shown}{more}\n")


def print_status(status: Status, out: TextIO) -> None:
    if not status.state_exists:
        out.write(f"no state yet at {status.state_path}: nothing has been synced (`packsync run` starts)\n")
    daemon = status.daemon
    if daemon and daemon.running:
        record = daemon.record
        out.write(f"daemon: {daemon.state} (pid {daemon.pid}) since {local_time(record.started_at)} · "
                  f"last full scan {local_time(record.last_full_scan) or 'not yet'} · {daemon.queue} changes queued"
                  + (f" · last error: {printable(record.last_error)}" if record.last_error else "") + "\n")
    elif daemon:
        out.write(f"daemon: not running (last seen {local_time(daemon.record.updated_at)})\n")
    for mapping in status.mappings:
        named = mapping.pack_name if mapping.pack_name != mapping.pack_id else None  # (a pack given by id, not read)
        pack = "(a pack per subfolder)" if mapping.subfolders else named or f"pack {mapping.pack_id or '?'}"
        out.write(_header(mapping.source, pack, mapping.pack_id) + "\n")
        counts, meta = mapping.counts, mapping.metadata
        out.write(f"  files {mapping.file_count} · synced {counts['synced']} · pending {counts['pending']} · "
                  f"skipped {counts['skipped']} · failed {counts['failed']} · metadata {meta['completed']} completed, "
                  f"{meta['pending']} pending, {meta['failed']} failed\n")
        if not mapping.subfolders:  # (a folder of subfolder packs is synced as its subfolders)
            out.write(f"  last sync {local_time(mapping.last_sync) or 'never'}"
                      + (f" · last error: {printable(mapping.last_error)}" if mapping.last_error else "") + "\n")
        if mapping.expiring:
            out.write(f"  warning: {mapping.expiring}\n")
        if mapping.record and mapping.record.paused:
            out.write(f"  paused since {local_time(mapping.record.paused)}: "
                      f"`packsync resume {printable(mapping.path)}` syncs it again\n")
        for item in mapping.files or []:
            out.write(_file_line(item) + "\n")
        for item in mapping.problem_files or []:
            out.write(f"    {item.state:<8} {printable(item.path)}: {printable(item.problem or '')}\n")
    _sites(status.sites, out)


def _sites(sites: list[SiteStatus], out: TextIO) -> None:
    """The sites sharing the state (none in a state of one machine's own: nothing is written)."""
    if sites:
        out.write("sites sharing the state:\n")
    for site in sites:
        _site(site, out)


def _site(site: SiteStatus, out: TextIO) -> None:
    """A site sharing the state: who it is, when it was last heard from, and its mappings as it recorded them
    (this site's are the ones above)."""
    about = [f"host {printable(site.host)}" if site.host else None,
             f"packsync {printable(site.version)}" if site.version else None,
             "never heard from" if site.seen_ago is None else
             f"not heard from for {site.seen_ago} (since {local_time(site.seen_at)})" if site.silent else
             f"last heard from {site.seen_ago} ago"]
    out.write(f"  {printable(site.name)}{' (this site)' if site.this else ''} · "
              + " · ".join(part for part in about if part) + "\n")
    if site.this:
        out.write("    its mappings are listed above\n")
    elif not site.mappings:
        out.write("    no mapping recorded\n")
    for mapping in [] if site.this else site.mappings:
        out.write("    " + _header(mapping.source, mapping.pack_name or f"pack {mapping.pack_id or '?'}",
                                   mapping.pack_id) + "\n")
        out.write(f"      files {mapping.files} · last sync {local_time(mapping.last_sync) or 'never'}"
                  + (f" · last error: {printable(mapping.last_error)}" if mapping.last_error else "") + "\n")
        if mapping.safety:
            out.write(f"      safety stop: {printable(mapping.safety)}\n")
        if mapping.paused:
            out.write(f"      paused since {local_time(mapping.paused)}\n")


def _file_line(item: FileStatus) -> str:
    """One file of ``status --files``: its state, and its image's AI metadata."""
    file_meta = item.metadata
    line = f"    {printable(item.path)}  [{item.state}"
    line += f", metadata {file_meta.status}]" if file_meta else "]"
    if item.problem:
        line += f"  {printable(item.problem)}"
    if item.detail:
        line += f"\n      from its source: {printable(item.detail)}"
    if item.prepared:
        line += f"\n      uploaded with {describe(item.prepared)}"
    if file_meta and file_meta.description:
        line += f"\n      {printable(file_meta.description)}"
    if file_meta and file_meta.keywords:
        line += f"\n      keywords: {printable(', '.join(file_meta.keywords))}"
    if file_meta and file_meta.error:
        line += f"\n      metadata error: {printable(file_meta.error)}"
    return line


def print_pull(report: PullReport, dry_run: bool, out: TextIO) -> None:
    pack = report.pack
    source = f"{printable(report.label)} ({printable(pack.name)})" if report.label \
        else f"genviral:{printable(pack.name)} ({printable(pack.pack_id)})"
    out.write(f"{source} → {printable(report.folder)}\n")
    plan = report.plan
    if plan.safety:
        out.write(f"  error    {printable(plan.safety)}\n")
    if dry_run:
        for kind, action in [*((a.kind, a) for a in plan.actions), *(("withheld", a) for a in plan.withheld)]:
            shown = action.describe()
            out.write(f"  {kind:<12} {printable(shown['file'])} (image {printable(shown['image'])})\n")
        _problems(report.problems, out)
        out.write(f"dry run: {len(plan.downloads)} downloads, {len(plan.removals)} removals, {plan.kept} "
                  "already here; nothing changed\n")
        return
    out.write(f"  {len(report.downloaded)} downloaded, {plan.kept} already here, {len(report.deleted)} deleted, "
              f"{len(report.failures)} failed" + (f", {len(plan.withheld)} withheld" if plan.withheld else "") + "\n")
    for image_id, why in report.failures:
        out.write(f"  {'failed':<10} image {printable(image_id)}: {printable(why)}\n")
    _problems(report.problems, out)
    if report.sidecars:
        out.write(f"  sidecars   {report.sidecars.written} written\n")
        _problems(report.sidecars.problems, out, "sidecar")


def print_packs(packs: list[PackSummary], out: TextIO) -> None:
    names = [printable(p.name) for p in packs]
    width = max(map(len, names), default=4)
    out.write(f"{'id':<36}  {'name':<{width}}  images\n")
    for pack, name in zip(packs, names, strict=True):
        out.write(f"{printable(pack.pack_id):<36}  {name:<{width}}  {pack.image_count}"
                  + ("  (public)" if pack.is_public else "") + "\n")



def print_astria_packs(packs: list[AstriaPackSummary], details: list[AstriaPack | None], out: TextIO) -> None:
    titles = [printable(p.title) for p in packs]
    width = max(map(len, titles), default=5)
    out.write(f"{'id':>8}  {'title':<{width}}  {'classes':<20}  images\n")
    for pack, title, detail in zip(packs, titles, details, strict=True):
        classes = ",".join(printable(c) for c in (detail.classes if detail else pack.classes))
        out.write(f"{pack.pack_id:>8}  {title:<{width}}  {classes:<20}  "
                  f"{len(detail.images) if detail else '?'}\n")


def print_astria_tunes(tunes: list[AstriaTune], walks: list[TunePrompts | None], out: TextIO) -> None:
    """One line per tune; its prompts and images as counted by walking them ("?": not readable now, a "+":
    the walk ended early, so there are more)."""
    titles = [printable(t.title) for t in tunes]
    width = max(map(len, titles), default=5)
    out.write(f"{'id':>8}  {'title':<{width}}  {'class':<10}  {'prompts':>7}  {'images':>6}  deleted by Astria on\n")
    for tune, title, walk in zip(tunes, titles, walks, strict=True):
        more = "" if walk is None or walk.complete else "+"
        prompts, images = (f"{len(walk.prompts)}{more}", f"{walk.images}{more}") if walk else ("?", "?")
        expires = utc(tune.expires_at)
        day = expires.strftime("%Y-%m-%d") if expires is not None else "?"
        out.write(f"{tune.tune_id:>8}  {title:<{width}}  {printable(tune.name):<10}  {prompts:>7}  {images:>6}  "
                  f"{day}\n")


def print_search(hits: list[SearchHit], total: int, out: TextIO) -> None:
    """Each hit's files and metadata, then how many of how many matches were shown."""
    if not hits:
        out.write("no image's name, description, keywords, folder, pack name or source's words match\n")
        return
    for hit in hits:
        meta = hit.image.metadata
        for path in hit.paths:
            out.write(f"{printable(path)}\n")
        if hit.detail:
            out.write(f"  from its source: {printable(hit.detail)}\n")
        if meta.description:
            out.write(f"  {printable(meta.description)}\n")
        if meta.keywords:
            out.write(f"  keywords: {printable(', '.join(meta.keywords))}\n")
    matches = "match" if total == 1 else "matches"
    out.write(f"{len(hits)} of {total} {matches} (--limit to see more)\n" if total > len(hits) else
              f"{total} {matches}\n")
