"""How a sync ends, in the words every view uses: its counts (added, deleted, skipped, failed), why it exits
as it does (``exit_reason``), and, for files skipped, the ``.packsyncignore`` line that stops trying them.

The words: a file **skipped** cannot be synced as it is (not an image, unreadable, directly in a folder of
subfolder packs…) and is tried again only when it changes; a file **failed** when its upload or add failed
this time, and is tried again next sync; deletes are **withheld** by a safety stop. ``run`` (text and
``--json``), the daemon's answer to a run, and ``run --dry-run`` say them through this module alone.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from packsync.errors import ExitCode
from packsync.sources.patterns import IGNORE_FILE

if TYPE_CHECKING:  # only named: importing them would bring in the HTTP client
    from packsync.engine.sync import MappingReport, SyncReport
    from packsync.model import Problem

#: The counts of a run, in the order its lines say them; those after the first four are said only when not zero.
COUNTED = ("added", "deleted", "skipped", "failed", "adopted", "recovered", "deletes_failed")


def mapping_counts(mapping: MappingReport) -> dict[str, int]:
    """What one mapping's sync did, counted: what it added, deleted, skipped and what failed."""
    outcome = mapping.outcome
    return {"added": outcome.added if outcome else 0, "deleted": outcome.deleted if outcome else 0,
            "skipped": len(_skipped(mapping.problems)), "failed": len(outcome.failures) if outcome else 0,
            "adopted": outcome.adopted if outcome else 0, "recovered": outcome.recovered if outcome else 0,
            "deletes_failed": len(outcome.failed_deletes) if outcome else 0}


def failures(mapping: MappingReport) -> list[tuple[str, str]]:
    """The files whose add failed in one mapping's sync, by their path in the mapping, and why (a failed delete
    is not one: ``failed_deletes``)."""
    outcome = mapping.outcome
    return [(where.removeprefix(mapping.label + "/"), why) for where, why in (outcome.failures if outcome else [])]


def run_counts(report: SyncReport) -> dict[str, int]:
    """The counts of every mapping of a sync, summed, with the files skipped directly in folders of subfolder
    packs."""
    total = dict.fromkeys(COUNTED, 0)
    for mapping in report.mappings:
        for name, count in mapping_counts(mapping).items():
            total[name] += count
    total["skipped"] += len(_skipped(report.loose_files))
    return total


def failed_deletes(mapping: MappingReport) -> list[tuple[str, str]]:
    """The deletes that failed in one mapping's sync: the file each image was for (else ``image <id>``), and
    why. Tried again by the next sync."""
    return list(mapping.outcome.failed_deletes) if mapping.outcome else []


def counts_line(counts: dict[str, int]) -> str:
    """``2 added, 0 deleted, 1 skipped, 0 failed`` (adopted, recovered and deletes failed when not zero)."""
    return ", ".join(_count(counts[name], name) for name in COUNTED if counts[name] or name in COUNTED[:4])


def _count(count: int, name: str) -> str:
    if name == "deletes_failed":
        return f"{_deletes(count)} failed"
    return f"{count} {name}"


def _deletes(count: int) -> str:
    return "1 delete" if count == 1 else f"{count} deletes"


def ignore_line(rel_path: str) -> str:
    """The ``.packsyncignore`` line that excludes exactly this path of the mapped folder: anchored with a
    leading ``/``, its pattern characters made plain."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in rel_path)
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return "/" + escaped


def to_ignore(report: SyncReport) -> list[tuple[Path, str]]:
    """Each file skipped (a deliberate skip, a notice, aside) of a folder: the ``.packsyncignore`` that may
    list it (the mapped folder's) and the line to add there."""
    found: list[tuple[Path, str]] = []
    for mapping in report.mappings:
        config = mapping.config
        if config.path is None:
            continue  # an Astria pack has no ignore file
        parent = mapping.target.parent
        root, prefix = (parent.folder, config.folder.name + "/") if parent else (config.folder, "")
        found += [(root / IGNORE_FILE, ignore_line(prefix + p.rel_path)) for p in _skipped(mapping.problems)]
    for folder, loose in report.loose.items():
        found += [(Path(folder) / IGNORE_FILE, ignore_line(p.rel_path)) for p in _skipped(loose)]
    return found


def _skipped(problems: list[Problem]) -> list[Problem]:
    """The files skipped among ``problems``: a notice (a deliberate skip, a link not followed) is not one."""
    return [p for p in problems if p.skipped]


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def exit_reason(report: SyncReport) -> str | None:
    """Why a sync exits other than 0, in one short sentence (None: it exits 0)."""
    code = report.exit_code
    if code == ExitCode.SAFETY:
        return "; ".join(_stopped(m) for m in report.mappings if m.safety)
    if code == ExitCode.AUTH:
        return "; ".join(f"the key was refused ({m.error})" for m in report.mappings if m.refused)
    if code == ExitCode.USAGE:
        return "; ".join(str(m.error) for m in report.mappings if m.misconfigured)
    if code != ExitCode.SOME_FAILED:
        return None
    parts = _failures(report)
    skipped = run_counts(report)["skipped"]  # (an Astria pack's images too: they have no ignore file)
    if skipped:
        said = f"{_files(skipped)} skipped"
        ignore = to_ignore(report)
        if not parts and len(ignore) == skipped:  # only files the user can ignore: say how
            files = sorted({str(file) for file, _line in ignore})
            said += f"; list {'it' if skipped == 1 else 'them'} in {' or '.join(files)} to stop trying"
        parts.append(said)
    if report.waiting:  # (a shared state's: another site syncs the pack now)
        parts.append(f"{len(report.waiting)} mapping{'' if len(report.waiting) == 1 else 's'} not synced yet, "
                     "another site syncing its pack")
    return "; ".join(parts) or None


def ignorable(report: SyncReport) -> list[tuple[Path, str]]:
    """When files skipped are all that went wrong: each one's ``.packsyncignore`` and the line to add there
    (else nothing: the other problems come first)."""
    return to_ignore(report) if report.exit_code == ExitCode.SOME_FAILED and not _failures(report) else []


def _failures(report: SyncReport) -> list[str]:
    """What went wrong in a sync besides files skipped, a few words each."""
    parts = []
    errors = [m for m in report.mappings if m.fatal]
    if errors:
        parts.append(f"{errors[0].label}: {errors[0].fatal}"
                     + (f" (and {len(errors) - 1} more {'mapping' if len(errors) == 2 else 'mappings'} stopped)"
                        if len(errors) > 1 else ""))
    failed = sum(len(m.outcome.failures) for m in report.mappings if m.outcome)
    if failed:
        parts.append(f"{_files(failed)} failed (tried again next sync)")
    deletes = sum(len(m.outcome.failed_deletes) for m in report.mappings if m.outcome)
    if deletes:
        parts.append(f"{_deletes(deletes)} failed (tried again next sync)")
    waiting = sum(len(m.plan.waiting) for m in report.mappings if m.plan)
    if waiting:
        parts.append(f"{_files(waiting)} wait until the pack's unreadable images can be read")
    sidecars = sum(len(_skipped(m.sidecars.problems)) for m in report.mappings if m.sidecars)
    if sidecars:
        parts.append(f"{sidecars} sidecars not written")
    return parts


def _stopped(mapping: MappingReport) -> str:
    """A safety stop's reason: the deletes it withheld and how to let them go, or why it stopped."""
    withheld = len(mapping.plan.withheld) if mapping.plan else 0
    if not withheld:
        return mapping.safety or ""
    deletes = "1 delete" if withheld == 1 else f"{withheld} deletes"
    return f"{deletes} withheld in {mapping.label} (packsync allow-deletes {shlex.quote(mapping.label)})"


def closing_line(report: SyncReport) -> str:
    """The last line of ``run``: the sync summed, and its exit code with the reason for one not 0 (names as
    they are: a text view escapes them)."""
    counts = run_counts(report)
    in_sync = report.mappings and report.exit_code == ExitCode.OK  # (every mapping stopped: nothing synced)
    summed = counts_line(counts) if any(counts.values()) else "in sync" if in_sync else "nothing synced"
    reason = exit_reason(report)
    return f"run: {summed} — exit {int(report.exit_code)}" + (f": {reason}" if reason else "")
