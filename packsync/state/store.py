"""The state: what packsync remembers, as the rest of packsync sees it — a few repositories by concern
sharing one connection and one unit of work.

``State(path)`` opens (or creates) the file; ``State(path, readonly=True)`` (``--dry-run``, ``status``,
the page) never writes: not the file, and not a missing file into existence — the one exception being
SQLite's own crash recovery, which rolls back a transaction a killed process left half done.
``State(path, holds_lock=False)`` (``pull``) writes beside the holder of the state's lock, in short
transactions of its own, and so does not watch that lock's file. Its parts:

- ``files``    — the file cache, the problems of the last scans, sidecars, settled fingerprints;
- ``uploads``  — uploads by content, the contents of downloaded URLs, files ``pull`` wrote;
- ``images``   — the images packsync added, and which mapping owns each;
- ``metadata`` — their AI metadata, and the search over it;
- ``mappings`` — each mapping's pack and last sync, the daemon's row, the count of changes;
- ``activity`` — what the syncs did lately, by name, for the page's feed;

and ``write_behind``/``flush``, the unit of work's (see ``unit``). The database's errors, at opening
or at any later moment, come out as ``StateUnavailable`` or ``StateError`` (see ``translate``). No
module outside ``packsync.state`` runs SQL or imports a database library.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from packsync.config import SharedState
from packsync.errors import StateError, StateUnavailable
from packsync.files import file_id
from packsync.logs import get_logger
from packsync.state import rows, sites, sqlite, upgrade
from packsync.state.activity import ActivityRepository
from packsync.state.files import FileRepository
from packsync.state.images import ImageRepository
from packsync.state.lock import lock_path
from packsync.state.mappings import MappingRepository
from packsync.state.metadata import MetadataRepository
from packsync.state.records import SiteRecord
from packsync.state.tables import SHARED_ONLY
from packsync.state.unit import DATABASE_ERRORS, UnitOfWork, raise_unusable
from packsync.state.uploads import UploadRepository

if TYPE_CHECKING:
    from packsync.config import Config


class State:
    """The state database, used from one thread at a time."""

    def __init__(self, path: Path, *, readonly: bool = False, holds_lock: bool = True,
                 shared: SharedState | None = None) -> None:
        """``holds_lock``: the opener holds the state's lock (``run``, the daemon), whose file is then watched
        with the database's; False for one that runs beside them without it (``pull``): only the database is.
        ``shared``: the state is on PostgreSQL, shared with other sites (``path`` then names only the local
        files beside it: the lock, the daemon's socket)."""
        self.path = path
        self.readonly = readonly
        self.shared = shared
        if shared is not None:
            self._opened = {file: file_id(file) for file in (() if readonly or not holds_lock else (lock_path(path),))}
            self._repositories(_open_shared(path, shared, readonly=readonly, holds_lock=holds_lock))
            return
        unit: UnitOfWork | None = None
        try:
            try:
                if not sqlite.has_header(path):
                    raise StateError(f"{path} is not a SQLite database; packsync will not overwrite it. "
                                     "Move it away, or set [state] path to another file.")
            except FileNotFoundError:
                pass
            version, tables = upgrade.inspect(path)
            if readonly and version is None:
                # Nothing to read yet (no file, or one a first run left unfinished): an empty state in
                # memory, so that a dry run or `status` creates nothing.
                unit = UnitOfWork(path, sqlite.open_engine(None))
                upgrade.create_empty(unit)
            elif readonly:
                unit = UnitOfWork(path, sqlite.open_engine(path, readonly=True))
                upgrade.read_as_current(unit, version, tables)
                rows.check(unit)
            else:
                sqlite.private_file(path)
                unit = UnitOfWork(path, sqlite.open_engine(path))
                upgrade.set_up(unit, version, tables)
                rows.check(unit)
        except DATABASE_ERRORS as exc:
            if unit is not None:
                unit.close()
            raise_unusable(path, exc)
        except StateError:
            if unit is not None:
                unit.close()
            raise
        # The files opened (the lock: the one packsync locked before opening it), so that a write never goes
        # on to a file deleted or replaced meanwhile — nor under a lock that excludes no one any more.
        watched = () if readonly else (path, lock_path(path)) if holds_lock else (path,)
        self._opened = {file: file_id(file) for file in watched}
        self._repositories(unit)

    def _repositories(self, unit: UnitOfWork) -> None:
        self.unit = unit
        unit.before_write = self.check
        self.files = FileRepository(unit)
        self.uploads = UploadRepository(unit)
        self.images = ImageRepository(unit)
        self.metadata = MetadataRepository(unit)
        self.mappings = MappingRepository(unit)
        self.activity = ActivityRepository(unit)

    @classmethod
    def for_config(cls, config: Config, *, readonly: bool = False, holds_lock: bool = True) -> State:
        """The state a config names: its file, or the state it shares with other machines (``[state] url``)."""
        return cls(config.state_path, readonly=readonly, holds_lock=holds_lock, shared=config.shared_state())

    def close(self) -> None:
        self.unit.close()

    def replaced(self) -> Path | None:
        """The file (the database, else its lock) deleted or replaced since the state was opened, if any.
        A lock file that did not exist then (a state opened without the lock, as a test does) is not watched."""
        for path, opened in self._opened.items():
            if opened is not None and file_id(path) != opened:
                return path
        return None

    def check(self) -> None:
        """Raise ``StateUnavailable`` (``"replaced"``) when the state's file or lock was deleted or replaced:
        what would be written now would go to a file nobody sees, or beside another packsync."""
        if (path := self.replaced()) == self.path:
            raise StateUnavailable(f"the state database {path} was deleted or replaced while packsync ran; nothing "
                                   "more is written to it. Run packsync again: it starts a new one, adopting what "
                                   "the packs hold.", reason="replaced")
        if path is not None:
            raise StateUnavailable(f"the lock file {path} was deleted or replaced while packsync ran, so it no longer "
                                   "keeps another packsync out; nothing more is written to the state. Run packsync "
                                   "again.",
                                   reason="replaced")

    @contextmanager
    def write_behind(self) -> Iterator[None]:
        """Steps written inside are queued and committed together (``UnitOfWork.write_behind``)."""
        with self.unit.write_behind():
            yield

    def flush(self) -> None:
        """Commit the steps ``write_behind`` queued; checked even when none are (an add is sent after it)."""
        self.check()
        self.unit.flush()

    def sites(self) -> list[SiteRecord]:
        """Every site sharing the state, by name (none in a state of one machine's own)."""
        return sites.all_sites(self.unit)

    def heard_from(self) -> None:
        """Say this site is alive (a shared state's ``sites``; nothing in a state of one machine's own)."""
        sites.touch(self.unit)

    def heard_from_if_can(self) -> None:
        """``heard_from``, unless the state cannot be written now: a sync that ended well stays so (the
        next one says it)."""
        try:
            self.heard_from()
        except StateUnavailable as exc:
            get_logger().debug("could not say this site is alive", error=str(exc))

    def data_version(self) -> int:
        """A number that changes whenever another connection (a sync, another site's) commits: what a reader
        polls."""
        self.unit.reconnected()
        with self.unit.guarded():
            if self.unit.shared:
                from packsync.state import postgres

                return postgres.data_version(self.unit.connection)
            return sqlite.data_version(self.unit.connection)

    @property
    def where(self) -> str:
        """How messages name the state: its file, or a shared state's server and database."""
        if self.shared is None:
            return str(self.path)
        from packsync.state import postgres

        return postgres.where(self.shared)


def _open_shared(path: Path, shared: SharedState, *, readonly: bool, holds_lock: bool) -> UnitOfWork:
    """The unit of work of a shared state: its schema made if missing (not by a reader, who sees an empty
    state then, as on a missing file), the site registered, and — for ``run`` and the daemon — the site's
    own lock taken, and taken again on every connection made after the server was lost."""
    from packsync.state import postgres

    if (problem := postgres.missing_driver()) is not None:
        raise StateError(problem)
    place = postgres.where(shared)
    unit = UnitOfWork(path, postgres.open_engine(shared), site=shared.site,
                      unusable=lambda exc: postgres.unusable(shared, exc))
    try:
        if holds_lock and not readonly:
            postgres.lock_site(unit.connection, shared)
            unit.on_connect.append(lambda connection: postgres.lock_site(connection, shared, again=True))
        if readonly and not ({"meta", *SHARED_ONLY} <= postgres.tables_of(unit.connection)):
            unit.close()
            unit = UnitOfWork(path, sqlite.open_engine(None), site=shared.site)
            upgrade.create_empty(unit)
            return unit
        if not readonly:
            upgrade.set_up_shared(unit, place)
        else:
            upgrade.read_shared_as_current(unit)
        unit.daemon_id = sites.register(unit, readonly=readonly)
    except BaseException:
        unit.close()
        raise
    return unit
