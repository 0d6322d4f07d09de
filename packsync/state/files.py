"""What the state remembers of each source's files: the file cache, the problems of the last scan (the
files skipped), the files whose add failed in the last sync that tried them, the sidecars packsync
wrote, and the fingerprint of a source's last plan with nothing to do.

The file cache is the hot path of a no-op run (100,000 rows for a large folder): it is read as plain
columns straight into ``CachedFile`` values, and written as the rows that changed, many to a statement.
A change the daemon saw reads and writes the rows of its paths alone (``cache_for``, ``save_paths``),
and asks how many files hold a content (``holders``) rather than load the rest.
This repository knows nothing of uploads, images or packs beyond counting which files a pack holds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import PurePosixPath

from msgspec.structs import astuple
from sqlalchemy import ColumnElement, Exists, bindparam, case, delete, exists, func, or_, select

from packsync.model import CachedFile, Problem
from packsync.state.dialects import upsert
from packsync.state.records import SidecarRecord
from packsync.state.tables import FailedRow, FileRow, ImageRow, ProblemRow, SettledRow, SidecarRow, table
from packsync.state.unit import Bulk, UnitOfWork
from packsync.state.uploads import batches

FILES, PROBLEMS, SIDECARS, SETTLED = table(FileRow), table(ProblemRow), table(SidecarRow), table(SettledRow)
FAILED = table(FailedRow)
IMAGES = table(ImageRow)


def _by_key(target: type[FileRow] | type[ProblemRow] | type[FailedRow] | type[SidecarRow]) -> Bulk:
    t = table(target)
    return Bulk(delete(t).where(t.c.root == bindparam("root"), t.c.rel_path == bindparam("rel_path")),
                "root", "rel_path")


_SAVE_FILE = Bulk(upsert(FILES), *FILES.c.keys())
_FORGET_FILE = _by_key(FileRow)
_SAVE_PROBLEM = Bulk(upsert(PROBLEMS), *PROBLEMS.c.keys())
_FORGET_PROBLEM = _by_key(ProblemRow)
_SAVE_FAILED = Bulk(upsert(FAILED), *FAILED.c.keys())
_FORGET_FAILED = _by_key(FailedRow)
_SAVE_SIDECAR = Bulk(upsert(SIDECARS), *SIDECARS.c.keys())
_FORGET_SIDECAR = _by_key(SidecarRow)
_SAVE_SETTLED = Bulk(upsert(SETTLED), "root", "fingerprint")
_UNSETTLE = Bulk(delete(SETTLED).where(SETTLED.c.root == bindparam("root")), "root")
#: A file cache row as read: its key, then ``CachedFile``'s fields in order.
_CACHE_COLUMNS = (FILES.c.rel_path, FILES.c.version, FILES.c.size, FILES.c.sha256, FILES.c.content_type,
                  FILES.c.problem, FILES.c.detail)


def _at_or_below(column: ColumnElement[str], path: str) -> ColumnElement[bool]:
    """``column`` is ``path`` or a path below it, as a range the primary key's index answers (byte order:
    "/" is followed by "0")."""
    return or_(column == path, (column >= path + "/") & (column < path + "0"))


def _below(column: ColumnElement[str], folder: str) -> ColumnElement[bool]:
    """``column`` names ``folder`` or a source inside it (an exact prefix: LIKE would ignore case)."""
    below = folder.rstrip("/") + "/"
    return or_(column == folder, func.substr(column, 1, len(below)) == below)


def _changed_rows(source: str, previous: Mapping[str, CachedFile],
                  current: Mapping[str, CachedFile]) -> tuple[list[tuple[str, str]], list[tuple[object, ...]]]:
    """The file cache's rows to forget and to write for a scan that saw ``current`` where ``previous`` was."""
    gone = [(source, rel) for rel in previous if rel not in current]
    changed: list[tuple[object, ...]] = [(source, rel, *astuple(c)) for rel, c in current.items()
                                         if previous.get(rel) is not c and previous.get(rel) != c]
    return gone, changed


class FileRepository:
    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit

    def cache(self, source: str) -> dict[str, CachedFile]:
        """What the last scan of ``source`` saw, by item key."""
        source = self.unit.key(source)
        c = FILES.c
        rows = self.unit.stream(select(*_CACHE_COLUMNS).where(c.root == source))
        return {rel: CachedFile(version, size, sha256, kind, problem, detail)
                for rel, version, size, sha256, kind, problem, detail in rows}

    def cache_for(self, source: str, paths: Collection[str]) -> dict[str, CachedFile]:
        """What the last scan of ``source`` saw at these paths and below them (a path may be a folder)."""
        source = self.unit.key(source)
        c = FILES.c
        found: dict[str, CachedFile] = {}
        for batch in batches(sorted(paths), 100):
            rows = self.unit.rows(select(*_CACHE_COLUMNS).where(
                c.root == source, or_(*(_at_or_below(c.rel_path, path) for path in batch))))
            found.update((rel, CachedFile(*values)) for rel, *values in rows)
        return found

    def holders(self, source: str, shas: Collection[str]) -> dict[str, int]:
        """How many files of ``source`` hold each of these contents (as good items, or kept while they could
        not be read); contents none holds are left out."""
        source = self.unit.key(source)
        c = FILES.c
        return {sha: int(count) for batch in batches(shas) for sha, count in self.unit.rows(
            select(c.sha256, func.count()).where(c.root == source, c.sha256.in_(batch), c.problem.is_(None))
            .group_by(c.sha256))}

    def some_items(self, source: str, limit: int) -> dict[str, CachedFile]:
        """The first ``limit`` good files of ``source`` (by path): some of what it holds besides a change."""
        source = self.unit.key(source)
        c = FILES.c
        rows = self.unit.rows(select(*_CACHE_COLUMNS).where(c.root == source, c.sha256.is_not(None),
                                                            c.problem.is_(None)).order_by(c.rel_path).limit(limit))
        return {rel: CachedFile(*values) for rel, *values in rows}

    def save_paths(self, source: str, scope: Collection[str], previous: Mapping[str, CachedFile],
                   current: Mapping[str, CachedFile], problems: Iterable[Problem]) -> None:
        """Store what a scan of some paths of ``source`` saw: ``previous`` were the records of ``scope`` (its
        paths and what is below them), ``current`` and ``problems`` replace them there; nothing else changes."""
        in_scope = self.problems_for(source, scope)
        source = self.unit.key(source)
        new = set(problems)
        gone, changed = _changed_rows(source, previous, current)
        with self.unit.transaction():
            self.unit.write(_FORGET_FILE, gone)
            self.unit.write(_SAVE_FILE, changed)
            if set(in_scope) != new:
                self.unit.write(_FORGET_PROBLEM, [(source, p.rel_path) for p in in_scope])
                self.unit.write(_SAVE_PROBLEM, [(source, p.rel_path, p.reason, p.notice) for p in new])
                self.unit.write(_UNSETTLE, [(source,)])

    def problems_for(self, source: str, paths: Collection[str]) -> list[Problem]:
        """The problems on record of ``source`` at these paths and below them (a folder's with its "/")."""
        source = self.unit.key(source)
        c = PROBLEMS.c
        return [Problem(rel, reason, bool(notice)) for batch in batches(sorted(paths), 100)
                for rel, reason, notice in self.unit.rows(select(c.rel_path, c.reason, c.notice).where(
                    c.root == source, or_(*(_at_or_below(c.rel_path, path) for path in batch))))]

    def save_cache(self, source: str, previous: Mapping[str, CachedFile], current: Mapping[str, CachedFile]) -> None:
        """Store what a scan saw, writing only the rows that changed (nothing, not even the write lock,
        when none did)."""
        source = self.unit.key(source)
        gone, changed = _changed_rows(source, previous, current)
        if not (gone or changed):
            return
        with self.unit.transaction():
            self.unit.write(_FORGET_FILE, gone)
            self.unit.write(_SAVE_FILE, changed)

    def count(self, source: str) -> int:
        source = self.unit.key(source)
        return int(self.unit.rows(select(func.count()).select_from(FILES).where(FILES.c.root == source))[0][0])

    def counts(self, source: str, pack_id: str | None) -> tuple[int, int, int]:
        """(items, items whose content is in the pack, items not in it whose add failed) of ``source``,
        problems aside, counted by the database."""
        source = self.unit.key(source)
        held = exists().where(IMAGES.c.pack_id == pack_id, IMAGES.c.sha256 == FILES.c.sha256)
        failed = exists().where(FAILED.c.root == FILES.c.root, FAILED.c.rel_path == FILES.c.rel_path)
        row = self.unit.rows(select(func.count(), func.coalesce(func.sum(case((held, 1), else_=0)), 0),
                                    func.coalesce(func.sum(case((~held & failed, 1), else_=0)), 0))
                             .where(FILES.c.root == source, ~self._problem(FILES.c.root, FILES.c.rel_path)))[0]
        return int(row[0]), int(row[1]), int(row[2])

    def page(self, source: str, limit: int | None = None) -> list[tuple[str, str | None]]:
        """(item key, content) of ``source``'s items that are not problems, by key, the first ``limit``."""
        source = self.unit.key(source)
        c = FILES.c
        rows = self.unit.rows(select(c.rel_path, c.sha256).where(c.root == source, ~self._problem(c.root, c.rel_path))
                              .order_by(c.rel_path).limit(limit))
        return [(rel, sha) for rel, sha in rows]

    def details(self, source: str, keys: Collection[str]) -> dict[str, str]:
        """The source's own words about these items of ``source`` (``CachedFile.detail``), by key; items
        without any are left out."""
        source = self.unit.key(source)
        c = FILES.c
        return {rel: detail for batch in batches(keys) for rel, detail in self.unit.rows(
            select(c.rel_path, c.detail).where(c.root == source, c.rel_path.in_(batch), c.detail.is_not(None)))}

    def detail_of(self, source: str, sha256: str) -> str | None:
        """The source's own words about its first item (by key) holding content ``sha256``, if it has any."""
        source = self.unit.key(source)
        c = FILES.c
        rows = self.unit.rows(select(c.detail).where(c.root == source, c.sha256 == sha256, c.problem.is_(None),
                                                     c.detail.is_not(None)).order_by(c.rel_path).limit(1))
        return str(rows[0][0]) if rows else None

    def paths_of(self, source: str, sha256: str) -> list[str]:
        """The items of ``source`` whose content is ``sha256`` (its files that hold it), by key."""
        source = self.unit.key(source)
        c = FILES.c
        return [row[0] for row in self.unit.rows(select(c.rel_path).where(
            c.root == source, c.sha256 == sha256, c.problem.is_(None)).order_by(c.rel_path))]

    def forget_verdicts(self, source: str) -> None:
        """Let the next scan of ``source`` (and of its subfolders' packs) judge again the files it skipped
        as bad (someone fixed them)."""
        source = self.unit.key(source)
        with self.unit.transaction():  # and their last plans: a settled walk would not read the files again
            self.unit.run(delete(FILES).where(_below(FILES.c.root, source), FILES.c.problem.is_not(None)))
            self.unit.run(delete(SETTLED).where(_below(SETTLED.c.root, source)))

    # -- problems ----------------------------------------------------------------------------------

    @staticmethod
    def _problem(root: ColumnElement[str], rel_path: ColumnElement[str]) -> Exists:
        return exists().where(PROBLEMS.c.root == root, PROBLEMS.c.rel_path == rel_path)

    def problems(self, source: str, limit: int | None = None) -> list[Problem]:
        source = self.unit.key(source)
        c = PROBLEMS.c
        rows = self.unit.rows(select(c.rel_path, c.reason, c.notice).where(c.root == source).order_by(c.rel_path)
                              .limit(limit))
        return [Problem(rel_path, reason, bool(notice)) for rel_path, reason, notice in rows]

    def problem_counts(self, source: str) -> tuple[int, int]:
        """(problems, notices among them) of ``source``."""
        source = self.unit.key(source)
        row = self.unit.rows(select(func.count(), func.coalesce(func.sum(case((PROBLEMS.c.notice, 1), else_=0)), 0))
                             .where(PROBLEMS.c.root == source))[0]
        return int(row[0]), int(row[1])

    def save_problems(self, source: str, problems: Iterable[Problem]) -> None:
        """Make what the last scan of ``source`` reported the problems on record, writing only what changed
        (a folder of 50,000 bad files rescanned unchanged writes nothing). New problems void the
        source's settled fingerprint: a run it matches reports the problems on record."""
        old = set(self.problems(source))
        source = self.unit.key(source)
        new = set(problems)
        if old == new:
            return
        kept = {problem.rel_path for problem in new}
        with self.unit.transaction():
            self.unit.write(_FORGET_PROBLEM, [(source, p.rel_path) for p in old if p.rel_path not in kept])
            self.unit.write(_SAVE_PROBLEM, [(source, p.rel_path, p.reason, p.notice) for p in new - old])
            self.unit.write(_UNSETTLE, [(source,)])

    # -- failed adds --------------------------------------------------------------------------------

    def failures(self, source: str, limit: int | None = None) -> list[Problem]:
        """The files of ``source`` whose add failed in the last sync that tried them, and why, by path."""
        source = self.unit.key(source)
        c = FAILED.c
        rows = self.unit.rows(select(c.rel_path, c.reason).where(c.root == source).order_by(c.rel_path).limit(limit))
        return [Problem(rel_path, reason) for rel_path, reason in rows]

    def save_failures(self, source: str, failures: Iterable[Problem], scope: Collection[str] | None = None) -> None:
        """Make ``failures`` the failed adds on record of ``source``: of all its files (``scope`` None: a full
        sync tried every file), or of the files in ``scope`` alone (a sync of changed paths)."""
        new = {problem.rel_path: problem for problem in failures}
        old = self.failures(source)
        source = self.unit.key(source)
        gone = [(source, p.rel_path) for p in old if p.rel_path not in new and (scope is None or p.rel_path in scope)]
        added = [(source, p.rel_path, p.reason) for p in new.values() if p not in old]
        if gone or added:
            with self.unit.transaction():
                self.unit.write(_FORGET_FAILED, gone)
                self.unit.write(_SAVE_FAILED, added)

    # -- sidecars ----------------------------------------------------------------------------------

    def sidecars(self, source: str, files: Collection[str] | None = None) -> dict[str, SidecarRecord]:
        """The sidecars packsync wrote next to ``source``'s files (or to these ``files``), by the file's key."""
        source = self.unit.key(source)
        c = SIDECARS.c
        query = select(c.rel_path, c.digest, c.size, c.mtime_ns).where(c.root == source)
        rows = self.unit.rows(query) if files is None else \
            [row for batch in batches(files) for row in self.unit.rows(query.where(c.rel_path.in_(batch)))]
        return {rel: SidecarRecord(digest, size, mtime_ns) for rel, digest, size, mtime_ns in rows}

    def contents_at(self, source: str, files: Collection[str]) -> dict[str, str | None]:
        """The content of each of these files of ``source`` that is an item (not a problem), by key."""
        source = self.unit.key(source)
        c = FILES.c
        return {rel: sha for batch in batches(files) for rel, sha in self.unit.rows(
            select(c.rel_path, c.sha256).where(c.root == source, c.rel_path.in_(batch),
                                               ~self._problem(c.root, c.rel_path)))}

    def paths_holding(self, source: str, shas: Collection[str]) -> set[str]:
        """The files of ``source`` whose content is one of ``shas``."""
        source = self.unit.key(source)
        c = FILES.c
        return {row[0] for batch in batches(shas) for row in self.unit.rows(
            select(c.rel_path).where(c.root == source, c.sha256.in_(batch), c.problem.is_(None)))}

    def same_stem(self, source: str, files: Collection[str]) -> set[str]:
        """The files of ``source`` whose name is one of ``files``' but for the extension (``IMG_1.jpg`` for
        ``IMG_1.png``): they share a sidecar named after the stem."""
        source = self.unit.key(source)
        c = FILES.c
        found: set[str] = set()
        for rel in files:
            stem = str(PurePosixPath(rel).with_suffix(""))
            found |= {row[0] for row in self.unit.rows(select(c.rel_path).where(
                c.root == source, c.rel_path >= stem, c.rel_path < stem + "/"))
                if PurePosixPath(row[0]).with_suffix("") == PurePosixPath(stem)}
        return found

    def save_sidecars(self, source: str, written: Mapping[str, SidecarRecord], gone: Iterable[str]) -> None:
        """Remember the sidecars just written, and forget those removed or given up."""
        source = self.unit.key(source)
        with self.unit.transaction():
            self.unit.write(_FORGET_SIDECAR, [(source, rel) for rel in gone])
            self.unit.write(_SAVE_SIDECAR, [(source, rel, *astuple(record)) for rel, record in written.items()])

    # -- settled sources ---------------------------------------------------------------------------

    def settled(self, source: str) -> str | None:
        """The fingerprint of the inputs of the last plan of ``source`` that had nothing to do."""
        source = self.unit.key(source)
        rows = self.unit.rows(select(SETTLED.c.fingerprint).where(SETTLED.c.root == source))
        return str(rows[0][0]) if rows else None

    def save_settled(self, source: str, fingerprint: str) -> None:
        label, source = source, self.unit.key(source)
        if self.settled(label) != fingerprint:
            self.unit.write(_SAVE_SETTLED, [(source, fingerprint)])
