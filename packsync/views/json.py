"""The stable JSON documents: ``status --json`` (``"version": 2``, documented in docs/json.md).

New keys may be added; existing ones keep their meaning.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TextIO

from packsync.model import AstriaPack, AstriaPackSummary, AstriaTune, Metadata, PackSummary, TunePrompts
from packsync.views.clock import utc
from packsync.views.closing import exit_reason, failed_deletes, failures, mapping_counts, run_counts
from packsync.views.status import DaemonStatus, FileStatus, MappingStatus, SiteMappingStatus, SiteStatus, Status

if TYPE_CHECKING:  # `status --json` does not load the HTTP client
    from packsync.engine.pull import PullReport
    from packsync.engine.sync import SyncReport
    from packsync.views.search import SearchHit

STATUS_VERSION = 2


def when(timestamp: float | None) -> str | None:
    """A timestamp as ISO 8601 UTC, to the second; None if none, or past what a date can hold."""
    moment = utc(timestamp)
    return None if moment is None else moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def status_document(status: Status) -> dict[str, Any]:
    return {"version": STATUS_VERSION, "state": status.state_path, "state_exists": status.state_exists,
            "daemon": _daemon(status.daemon) if status.daemon else None,
            "mappings": [_mapping(m) for m in status.mappings], "sites": [_site(s) for s in status.sites]}


def _site(site: SiteStatus) -> dict[str, Any]:
    """A site sharing the state, and its mappings as it recorded them."""
    return {"name": site.name, "this": site.this, "host": site.host, "version": site.version,
            "seen_ago_s": None if site.seen_ago_s is None else round(site.seen_ago_s, 1), "silent": site.silent,
            "mappings": [_site_mapping(m) for m in site.mappings]}


def _site_mapping(mapping: SiteMappingStatus) -> dict[str, Any]:
    return {"path": mapping.path, "source": mapping.source, "pack_id": mapping.pack_id,
            "pack_name": mapping.pack_name, "files": mapping.files, "last_sync": when(mapping.last_sync),
            "last_error": mapping.last_error, "safety_stop": mapping.safety, "paused": when(mapping.paused)}


def _daemon(daemon: DaemonStatus) -> dict[str, Any]:
    record = daemon.record
    return {"running": daemon.running, "pid": daemon.pid, "state": daemon.state, "since": when(record.started_at),
            "last_full_scan": when(record.last_full_scan), "queue": daemon.queue, "last_error": record.last_error,
            "updated": when(record.updated_at)}


def _mapping(mapping: MappingStatus) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": mapping.path, "source": mapping.source, "pack_id": mapping.pack_id, "pack_name": mapping.pack_name,
        "last_sync": when(mapping.last_sync), "last_error": mapping.last_error,
        "paused": when(mapping.record.paused if mapping.record else None),
        "files": mapping.file_count, **mapping.counts, "images": mapping.images, "metadata": mapping.metadata,
        "expires_at": when(mapping.record.expires_at if mapping.record else None), "expiring": mapping.expiring,
    }
    if mapping.files is not None:
        entry["file_list"] = [_file(f) for f in mapping.files]
    if mapping.problems is not None:
        entry["problem_list"] = [{"path": f.path, "state": f.state, "reason": f.problem, "notice": f.state == "notice"}
                                 for f in mapping.problem_files or []]
    return entry


def _file(item: FileStatus) -> dict[str, Any]:
    return {"path": item.path, "sha256": item.sha256, "state": item.state, "problem": item.problem,
            "image_id": item.image_id, "metadata": _metadata(item.metadata) if item.metadata else None,
            "prepared": list(item.prepared), "detail": item.detail}


def _metadata(meta: Metadata) -> dict[str, Any]:
    return {"status": meta.status, "description": meta.description, "keywords": list(meta.keywords),
            "error": meta.error}


def pull_document(report: PullReport, dry_run: bool) -> dict[str, Any]:
    """The ``pull --json`` summary."""
    return {"pack_id": report.pack.pack_id, "pack_name": report.pack.name, "folder": str(report.folder),
            "dry_run": dry_run, "downloaded": report.downloaded, "already_here": report.plan.kept,
            "deleted": report.deleted, "failed": [{"image_id": i, "reason": r} for i, r in report.failures],
            "sidecars_written": report.sidecars.written if report.sidecars else 0,
            "safety_stop": report.plan.safety, "withheld": [action.describe() for action in report.plan.withheld],
            "problems": [{"item": p.rel_path, "reason": p.reason, "notice": p.notice} for p in report.problems],
            **({"actions": [action.describe() for action in report.plan.actions]} if dry_run else {})}


def packs_document(packs: list[PackSummary]) -> dict[str, Any]:
    """``packs --json``: the key's packs (and the public ones asked for)."""
    return {"packs": [{"id": pack.pack_id, "name": pack.name, "images": pack.image_count,
                       "public": pack.is_public, "created_at": pack.created_at} for pack in packs]}


def astria_packs_document(packs: list[AstriaPackSummary], details: list[AstriaPack | None]) -> dict[str, Any]:
    return {"packs": [{"id": pack.pack_id, "title": pack.title,
                       "classes": list(detail.classes if detail else pack.classes),
                       "images": len(detail.images) if detail else None} for pack, detail in zip(packs, details,
                                                                                                  strict=True)]}


def astria_tunes_document(tunes: list[AstriaTune], walks: list[TunePrompts | None]) -> dict[str, Any]:
    """``astria tunes --json``: ``prompts`` and ``images`` null when the prompts cannot be read now;
    ``complete`` false when the walk ended early (there are more); ``expires_at``: when Astria deletes them."""
    return {"tunes": [{"id": tune.tune_id, "title": tune.title, "class": tune.name,
                       "prompts": len(walk.prompts) if walk else None, "images": walk.images if walk else None,
                       "complete": walk.complete if walk else None, "expires_at": when(tune.expires_at)}
                      for tune, walk in zip(tunes, walks, strict=True)]}


def run_document(report: SyncReport) -> dict[str, Any]:
    """``run --json``: one summary object, per mapping what was done and what failed, and why."""
    mappings = []
    for mapping in report.mappings:
        outcome, counts = mapping.outcome, mapping_counts(mapping)
        mappings.append({
            "source": mapping.label, "pack_id": mapping.pack_id, "pack_name": mapping.pack_name,
            **{name: counts[name] for name in ("added", "deleted", "adopted", "recovered")}, "counts": counts,
            "failed": [{"path": path, "reason": why} for path, why in failures(mapping)],
            "failed_deletes": [{"file": name, "reason": why} for name, why in failed_deletes(mapping)],
            "prepared": [{"item": key, "changes": list(changes)} for key, changes in (outcome.prepared if outcome
                                                                                      else [])],
            "skipped": [{"path": p.rel_path, "reason": p.reason, "notice": p.notice} for p in mapping.problems],
            "error": mapping.fatal, "safety_stop": mapping.safety,
            "withheld_deletes": len(mapping.plan.withheld) if mapping.plan else 0,
            "sidecars": None if mapping.sidecars is None else {
                "written": mapping.sidecars.written, "removed": mapping.sidecars.removed,
                "problems": [{"path": p.rel_path, "reason": p.reason} for p in mapping.sidecars.problems]},
        })
    return {"exit_code": int(report.exit_code), "exit_reason": exit_reason(report), "counts": run_counts(report),
            "metadata_pending": report.metadata_pending, "mappings": mappings,
            "renamed_subfolders": [{"from": old, "to": new} for old, new in report.renamed],
            "paused": report.paused, "waiting": report.waiting,
            "loose_files": [{"folder": folder, "path": p.rel_path, "reason": p.reason}
                            for folder, loose in report.loose.items() for p in loose]}


def plan_document(report: SyncReport) -> dict[str, Any]:
    """``run --dry-run --json``: the plan, every action as the executor would take it (its ``kind``, the
    ``mapping`` it is for, the ``file`` and the ``image`` it is about), and per mapping why it would stop."""
    return {"dry_run": True, "exit_code": int(report.exit_code), "exit_reason": exit_reason(report),
            "actions": [shown for action in report.plan.actions() for shown in action.shown()] if report.plan else [],
            "mappings": [{"source": m.label, "pack_id": m.pack_id, "pack_name": m.pack_name, "error": m.fatal,
                          "safety_stop": m.safety,
                          "skipped": [{"path": p.rel_path, "reason": p.reason, "notice": p.notice}
                                      for p in m.problems]} for m in report.mappings]}


def search_document(words: list[str], hits: list[SearchHit], total: int) -> dict[str, Any]:
    """``search --json``: the hits shown, how many (``shown``) of how many matches (``total``)."""
    return {"query": " ".join(words), "total": total, "shown": len(hits), "results": [
        {"paths": list(hit.paths), "mapping": hit.mapping, "pack_id": hit.image.pack_id,
         "image_id": hit.image.image_id, "file_name": hit.image.file_name,
         "metadata_status": hit.image.metadata.status, "description": hit.image.metadata.description,
         "keywords": list(hit.image.metadata.keywords), "detail": hit.detail} for hit in hits]}


def write_json(document: dict[str, Any], out: TextIO) -> None:
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")
