"""What packsync prints on stdout: plans, run summaries and ``status`` (text or stable JSON).

``status`` reads only the state database: it needs no token and makes no API call.
The JSON shape is documented in the README and versioned by its ``version`` key.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any, TextIO

from packsync.config import Config
from packsync.state import Store
from packsync.sync import SyncReport

STATUS_VERSION = 1


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _header(path: object, pack: str, pack_id: str | None) -> str:
    return f"{path} → {pack}" + (f" ({pack_id})" if pack_id else " (new pack)")


def print_plan(report: SyncReport, out: TextIO) -> None:
    """The ``--dry-run`` listing: every upload, add and delete, per mapping. Changes nothing."""
    uploads = {add.sha256 for add in report.plan.uploads} if report.plan else set()
    for mapping in report.mappings:
        out.write(_header(mapping.config.path, mapping.pack_name, mapping.pack_id) + "\n")
        if mapping.error or (mapping.safety and not mapping.plan):
            out.write(f"  error    {mapping.error or mapping.safety}\n")
        plan = mapping.plan
        if plan:
            for add in plan.adds:
                verb = "upload+add" if add.sha256 in uploads else "add"
                out.write(f"  {verb:<10} {add.file_name}\n")
            for delete in plan.deletes:
                out.write(f"  {'delete':<10} image {delete.image_id} ({delete.reason})\n")
            for delete in plan.withheld:
                out.write(f"  {'withheld':<10} delete of image {delete.image_id} ({delete.reason})\n")
            if plan.safety:
                out.write(f"  safety     {plan.safety}\n")
            if not (plan.adds or plan.deletes or plan.withheld):
                out.write("  nothing to do\n")
        _problems(mapping.problems, out)
    if report.plan:
        total = report.plan.mutations
        out.write(f"dry run: {len(report.plan.uploads)} uploads, "
                  f"{sum(len(m.adds) for m in report.plan.mappings)} adds, "
                  f"{sum(len(m.deletes) for m in report.plan.mappings)} deletes "
                  f"({total} API writes); nothing changed\n")


def _problems(problems: list[Any], out: TextIO) -> None:
    for problem in problems:
        out.write(f"  {'notice' if problem.notice else 'skipped':<10} {problem.rel_path}: {problem.reason}\n")


def print_run(report: SyncReport, out: TextIO) -> None:
    """The summary after ``run``: counts per mapping, then each failure by name."""
    for mapping in report.mappings:
        outcome = mapping.outcome
        out.write(_header(mapping.config.path, mapping.pack_name, mapping.pack_id) + "\n")
        if outcome:
            failed = len(outcome.failures)
            out.write(f"  {outcome.added} added, {outcome.deleted} deleted, {failed} failed"
                      + (f", {outcome.adopted} recovered" if outcome.adopted else "")
                      + (f", {outcome.deletes_skipped} deletes postponed" if outcome.deletes_skipped else "") + "\n")
            for where, why in outcome.failures:
                out.write(f"  failed     {where}: {why}\n")
        for error in (mapping.error, outcome.error if outcome else None, mapping.safety):
            if error:
                out.write(f"  error      {error}\n")
        _problems(mapping.problems, out)
    if report.metadata_pending:
        out.write(f"metadata: {report.metadata_pending} images still pending; "
                  "`packsync status` shows them as they complete\n")


def _daemon(store: Store, holder: int | None) -> dict[str, Any] | None:
    row = store.daemon()
    if row is None:
        return None
    running = holder is not None and holder == row.pid
    return {"running": running, "pid": row.pid if running else None, "state": row.state if running else "stopped",
            "since": _when(row.started_at), "last_full_scan": _when(row.last_full_scan),
            "queue": row.queue if running else 0, "last_error": row.last_error, "updated": _when(row.updated_at)}


def status_data(config: Config, store: Store, files: bool = False, lock_holder: int | None = None) -> dict[str, Any]:
    """The ``status --json`` document; ``lock_holder`` is the pid holding the state lock, if any."""
    mappings = []
    for mapping in config.mappings:
        record = store.mapping(mapping.path)
        pack_id = mapping.pack_id or (record.pack_id if record and record.pack_name == mapping.pack else None)
        images = store.managed(pack_id) if pack_id else []
        by_sha = {image.sha256: image for image in images}
        rows = store.file_rows(mapping.path)
        problems = {problem.rel_path: problem for problem in store.problems(mapping.path)}
        counts: Counter[str] = Counter()
        detail = []
        for row in rows:
            if row.rel_path in problems:
                continue
            image = by_sha.get(row.sha256 or "")
            state = "synced" if image else "pending"
            counts[state] += 1
            if files:
                meta = image.metadata if image else None
                detail.append({
                    "path": row.rel_path, "sha256": row.sha256, "state": state, "problem": None,
                    "image_id": image.image_id if image else None,
                    "metadata": {"status": meta.status, "description": meta.description,
                                 "keywords": list(meta.keywords), "error": meta.error} if meta else None,
                })
        for problem in problems.values():
            state = "skipped" if problem.notice else "failed"
            counts[state] += 1
            if files:
                detail.append({"path": problem.rel_path, "sha256": None, "state": state, "problem": problem.reason,
                               "image_id": None, "metadata": None})
        detail.sort(key=lambda item: str(item["path"]))
        metadata: Counter[str] = Counter()
        for image in images:
            metadata[image.metadata.status if image.metadata.settled else "pending"] += 1
        entry: dict[str, Any] = {
            "path": str(mapping.path), "pack_id": pack_id,
            "pack_name": mapping.pack or (record.pack_name if record else None),
            "last_sync": _when(record.synced_at if record else None),
            "last_error": record.last_error if record else None,
            "files": sum(counts.values()), "synced": counts["synced"], "pending": counts["pending"],
            "failed": counts["failed"], "skipped": counts["skipped"],
            "images": len(images),
            "metadata": {"completed": metadata["completed"], "pending": metadata["pending"],
                         "failed": metadata["failed"]},
        }
        if files:
            entry["file_list"] = detail
        mappings.append(entry)
    return {"version": STATUS_VERSION, "state": str(store.path), "daemon": _daemon(store, lock_holder),
            "mappings": mappings}


def print_status(data: dict[str, Any], out: TextIO, as_json: bool = False) -> None:
    if as_json:
        json.dump(data, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return
    daemon = data.get("daemon")
    if daemon and daemon["running"]:
        out.write(f"daemon: {daemon['state']} (pid {daemon['pid']}) since {daemon['since']} · "
                  f"last full scan {daemon['last_full_scan'] or 'not yet'} · {daemon['queue']} changes queued"
                  + (f" · last error: {daemon['last_error']}" if daemon["last_error"] else "") + "\n")
    elif daemon:
        out.write(f"daemon: not running (last seen {daemon['updated']})\n")
    for mapping in data["mappings"]:
        pack = mapping["pack_name"] or mapping["pack_id"] or "?"
        out.write(_header(mapping["path"], pack, mapping["pack_id"]) + "\n")
        meta = mapping["metadata"]
        out.write(f"  files {mapping['files']} · synced {mapping['synced']} · pending {mapping['pending']} · "
                  f"failed {mapping['failed']} · metadata {meta['completed']} completed, {meta['pending']} pending, "
                  f"{meta['failed']} failed\n")
        out.write(f"  last sync {mapping['last_sync'] or 'never'}"
                  + (f" · last error: {mapping['last_error']}" if mapping["last_error"] else "") + "\n")
        for row in mapping.get("file_list", []):
            meta = row["metadata"] or {}
            line = f"    {row['path']}  [{row['state']}"
            line += f", metadata {meta['status']}]" if meta else "]"
            if row["problem"]:
                line += f"  {row['problem']}"
            if meta.get("description"):
                line += f"\n      {meta['description']}"
            if meta.get("keywords"):
                line += f"\n      keywords: {', '.join(meta['keywords'])}"
            if meta.get("error"):
                line += f"\n      metadata error: {meta['error']}"
            out.write(line + "\n")


def print_packs(packs: list[Any], out: TextIO) -> None:
    width = max((len(p.name) for p in packs), default=4)
    out.write(f"{'id':<36}  {'name':<{width}}  images\n")
    for pack in packs:
        out.write(f"{pack.pack_id:<36}  {pack.name:<{width}}  {pack.image_count}"
                  + ("  (public)" if pack.is_public else "") + "\n")

