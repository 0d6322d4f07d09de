"""The status read model: what ``packsync status`` (and any other view) shows, as typed values.

Built from the config and the state alone — no token, no API call, no look at the disk — by
``read_status``; rendered
by ``views/text.py`` and ``views/json.py``. A view never queries the database its own way.
In a state shared by several machines (PostgreSQL), it also holds each site sharing it, with when it was
last heard from and its mappings as that site recorded them (``Status.sites``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

import msgspec

from packsync.config import Config, MappingConfig
from packsync.logs import untrusted
from packsync.mappings import concrete, recorded_pack_id
from packsync.model import METADATA_SETTLED, ManagedImage, Metadata, Problem
from packsync.sources.kinds import kind_of
from packsync.state.records import DaemonRecord, MappingRecord
from packsync.views.clock import ago, local_day

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State


class FileStatus(msgspec.Struct, frozen=True):
    """One item of a source: ``state`` is synced, pending, skipped or failed (those two with ``problem``), or a
    notice (a deliberate skip, with ``problem``: a link not followed)."""

    path: str
    sha256: str | None
    state: str
    problem: str | None = None
    image_id: str | None = None
    metadata: Metadata | None = None
    #: What preparing it for upload changed (its image's recipe): "location", "resize:2160", "jpeg"…
    prepared: tuple[str, ...] = ()
    #: Its source's own words about it (an Astria prompt's text), made safe to show (``shown_detail``).
    detail: str | None = None


class MappingStatus(msgspec.Struct, frozen=True):
    """One mapping: its pack as the config and the state know it, and how its last sync went (``record``)."""

    path: str
    pack_id: str | None
    pack_name: str | None
    record: MappingRecord | None
    counts: dict[str, int]          # files by state: synced, pending, skipped, failed (``FILE_STATES``)
    images: int
    metadata: dict[str, int]        # images by metadata status: completed, pending, failed
    files: list[FileStatus] | None  # with ``files=True`` only
    problems: list[Problem] | None  # the files skipped, with ``problems=True`` only
    failures: list[Problem] | None = None  # the files whose add failed last time, with ``problems=True`` only
    pack_label: str = ""            # the pack as the config names it (a stable name for metrics)
    #: How many entries ``show`` selects in all (``files`` holds one page of them); None when not counted.
    listed: int | None = None
    #: A folder of subfolder packs itself (shown while files directly in it are skipped): it has no pack.
    subfolders: bool = False
    #: Its source deletes its items soon (or did) while some are not mirrored yet: the sentence that says so.
    expiring: str | None = None

    @property
    def problem_files(self) -> list[FileStatus] | None:
        """Its files not synced (``problems=True`` only): skipped, notices, then failed."""
        return None if self.problems is None else problem_files(self.problems, self.failures or [])

    @property
    def source(self) -> str:
        """The source as people read it: a folder's path, or ``astria:260 (Corporate Headshots)``."""
        name = self.record.source_name if self.record else None
        return f"{self.path} ({name})" if name else self.path

    @property
    def kind(self) -> str:
        """What kind of source it is: ``"folder"``, or a kind's name (``"astria"``: ``sources.kinds``)."""
        return kind_of(self.path)

    @property
    def file_count(self) -> int:
        return sum(self.counts.values())

    @property
    def last_sync(self) -> float | None:
        return self.record.synced_at if self.record else None

    @property
    def last_error(self) -> str | None:
        return self.record.last_error if self.record else None


class DaemonStatus(msgspec.Struct, frozen=True):
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


#: A site not heard from for longer than this is flagged: a site is heard from whenever it opens the state
#: to sync and at every sync of its daemon, so an hour's silence means it stopped — or syncs from a rare cron job.
SILENT_S = 3600.0


class SiteMappingStatus(msgspec.Struct, frozen=True):
    """A mapping of a site sharing the state, as its record says: ``path`` is its source as that site names it
    (``/srv/brand``, ``astria:12``), ``files`` how many files its last scan judged."""

    path: str
    pack_id: str | None
    pack_name: str | None
    files: int
    record: MappingRecord | None

    @property
    def source(self) -> str:
        """The source as people read it (``MappingStatus.source``)."""
        name = self.record.source_name if self.record else None
        return f"{self.path} ({name})" if name else self.path

    @property
    def last_sync(self) -> float | None:
        return self.record.synced_at if self.record else None

    @property
    def last_error(self) -> str | None:
        return self.record.last_error if self.record else None

    @property
    def safety(self) -> str | None:
        """The safety stop holding its deletes back, if any."""
        return self.record.safety if self.record else None

    @property
    def paused(self) -> float | None:
        return self.record.paused if self.record else None


class SiteStatus(msgspec.Struct, frozen=True):
    """A site sharing the state: its host and packsync version, how long ago it was last heard from (by the
    database server's clock; None: never — a site known only by its mappings' records), and its mappings.
    ``this``: the site this status was read on (its mappings are ``Status.mappings``, here in short)."""

    name: str
    host: str | None
    version: str | None
    pid: int | None
    seen_ago_s: float | None
    this: bool
    mappings: list[SiteMappingStatus]
    #: When it was last heard from, by this machine's clock (what the page shows as a time).
    seen_at: float | None = None

    @property
    def silent(self) -> bool:
        """Not heard from for longer than ``SILENT_S`` (or never)."""
        return self.seen_ago_s is None or self.seen_ago_s > SILENT_S

    @property
    def seen_ago(self) -> str | None:
        """How long ago it was last heard from, as people say it (``12 s``, ``3 days``)."""
        return None if self.seen_ago_s is None else ago(self.seen_ago_s)


class Status(msgspec.Struct, frozen=True):
    #: Where the state is: its file, or a shared state's server and database (``State.where``).
    state_path: str
    state_exists: bool
    daemon: DaemonStatus | None
    mappings: list[MappingStatus]
    #: The sites sharing the state, by name (none in a state of one machine's own).
    sites: list[SiteStatus] = []


#: What a file is to packsync (the words every view uses): synced; pending (not in the pack yet); skipped (it
#: cannot be synced as it is: tried again only when it changes); failed (its add failed: tried again next sync).
FILE_STATES = ("synced", "pending", "skipped", "failed")
METADATA_STATES = ("completed", "pending", "failed")
#: What a listing of files can be narrowed to: every item (then the problems), the synced or pending
#: items, the problems (failed and skipped files), or the items whose image's AI metadata is still to
#: come or failed.
SHOWN = ("all", "synced", "pending", "problems", "ai-pending", "ai-failed")


class Listing(msgspec.Struct, frozen=True):
    """Which files a status lists: those ``show`` selects (one of ``SHOWN``), ``limit`` of them (None: all)
    from the ``offset``-th on, of every mapping or of the one labelled ``mapping``."""

    show: str = "all"
    offset: int = 0
    limit: int | None = None
    mapping: str | None = None


#: How long before its source deletes its items (``MappingRecord.expires_at``) a mapping with items not yet
#: mirrored is warned of: time enough to extend the source's storage, or to find why they are not.
EXPIRY_WARNING_S = 3 * 86400
#: How much of a source's own words about an item a view shows (an Astria prompt may run to pages).
DETAIL_SHOWN = 500


def shown_detail(detail: str | None) -> str | None:
    """A source's own words about an item as every view shows them: text from the network, so redacted,
    without control characters, and capped."""
    return untrusted(detail, limit=DETAIL_SHOWN) if detail else None


def expiring(record: MappingRecord | None, counts: dict[str, int], now: float) -> str | None:
    """The warning a mapping's status carries when its source deletes its items within ``EXPIRY_WARNING_S``
    (or did, unless its storage was extended) and some are not mirrored: pending, failed, or skipped (an image
    its source could not serve, an entry it could not read)."""
    expires_at = record.expires_at if record else None
    missing = counts["pending"] + counts["failed"] + counts["skipped"]
    if expires_at is None or not missing or now < expires_at - EXPIRY_WARNING_S:
        return None
    if (day := local_day(expires_at)) is None:
        return None  # (a date past what one can hold, from a state written before it was checked: not known)
    if now < expires_at:
        return (f"its source deletes these images on {day} unless its storage is extended; {missing} "
                f"{'is' if missing == 1 else 'are'} not mirrored yet")
    return (f"its source deleted these images on {day} unless their storage was extended; {missing} "
            f"{'was' if missing == 1 else 'were'} not mirrored")


def read_status(config: Config, state: State, *, files: bool = False, problems: bool = False,
                lock_holder: int | None = None, files_limit: int | None = None,
                problems_limit: int | None = None, listing: Listing | None = None) -> Status:
    """The status of every mapping; ``lock_holder`` is the pid holding the state lock, if any.

    Counts are SQLite's (a status of 100,000 files builds no value per file); ``files`` lists the items,
    by key, the first ``files_limit`` of each mapping (None: all), then its problems (the first
    ``problems_limit``). A ``listing`` lists a page of the files it selects instead (and of its mapping
    alone, when it names one), with how many it selects in all (``MappingStatus.listed``).
    """
    listing = listing or Listing(limit=files_limit)
    mappings = [_mapping(mapping, state, files, problems, listing, problems_limit)
                for mapping in shown(config, state) if listing.mapping is None or mapping.label == listing.mapping]
    # a shared state exists once some site made its tables (a reader of one not made yet reads an empty state)
    exists = state.unit.shared if state.shared is not None else state.path.exists()
    return Status(state.where, exists, _daemon(state, lock_holder), mappings, _sites(state, mappings))


def _sites(state: State, own: list[MappingStatus]) -> list[SiteStatus]:
    """Every site sharing the state, by name: this one with its mappings as shown (``own``), the others with
    theirs as recorded — a site whose mappings are recorded but whose own row is gone too (never heard from)."""
    if not state.unit.shared:
        return []
    now, this = time.time(), state.unit.site
    theirs = {name: [SiteMappingStatus(m.record.root, m.record.pack_id, m.record.pack_name, m.files, m.record)
                     for m in recorded] for name, recorded in state.mappings.of_sites().items()}
    theirs[this] = [SiteMappingStatus(m.path, m.pack_id, m.pack_name, m.file_count, m.record) for m in own]
    found = {record.name: SiteStatus(record.name, record.host, record.version, record.pid, record.seen_ago_s,
                                     record.name == this, theirs.get(record.name, []), now - record.seen_ago_s)
             for record in state.sites()}
    for name in theirs.keys() - found.keys():
        found[name] = SiteStatus(name, None, None, None, None, name == this, theirs[name])
    return [found[name] for name in sorted(found)]


def shown(config: Config, state: State) -> list[MappingConfig]:
    """The mappings a status shows: every mapping as it is synced, and a folder of subfolder packs itself
    while files directly in it are skipped (they are its own; its notices alone do not show it)."""
    found = concrete(config, state)
    for mapping in config.mappings:
        problems, notices = state.files.problem_counts(mapping.label) if mapping.packs_from == "subfolders" else (0, 0)
        if problems > notices:
            found.append(mapping)
    return found


def _daemon(state: State, holder: int | None) -> DaemonStatus | None:
    row = state.mappings.daemon()
    return None if row is None else DaemonStatus(holder is not None and holder == row.pid, row)


def _mapping(mapping: MappingConfig, state: State, files: bool, with_problems: bool,
             listing: Listing, problems_limit: int | None) -> MappingStatus:
    label = mapping.label
    record = state.mappings.get(label)
    pack_id = recorded_pack_id(state, mapping)
    listed = state.files.problems(label, problems_limit) if files or with_problems else []
    failures = state.files.failures(label, problems_limit) if with_problems else None
    total, synced, failed = state.files.counts(label, pack_id)
    problems, notices = state.files.problem_counts(label)  # (a notice, a deliberate skip, is listed, not counted)
    counts = {"synced": synced, "pending": total - synced - failed, "skipped": problems - notices, "failed": failed}
    metadata: Counter[str] = Counter({state: 0 for state in METADATA_STATES})
    for status, count in (state.metadata.counts(pack_id, label) if pack_id else {}).items():
        metadata[status if status in METADATA_SETTLED else "pending"] += count
    shown, selected = _files(mapping, state, pack_id, listed, listing) if files else (None, None)
    return MappingStatus(label, pack_id, mapping.pack or (record.pack_name if record else None), record, counts,
                         sum(metadata.values()), dict(metadata), shown,
                         listed if with_problems else None, failures, mapping.pack_label,
                         _counted(listing.show, counts) if selected is None else selected,
                         mapping.packs_from == "subfolders", expiring(record, counts, time.time()))


def _counted(show: str, counts: dict[str, int]) -> int | None:
    """How many entries ``show`` selects, from a mapping's counts (None: they do not say)."""
    if show in ("synced", "pending"):
        return counts[show]
    if show == "problems":
        return counts["skipped"] + counts["failed"]
    return counts["synced"] + counts["pending"] + counts["failed"] if show == "all" else None


def _held(state: State, label: str, pack_id: str | None, shas: Collection[str]) -> dict[str, ManagedImage | None]:
    """The contents among ``shas`` that ``pack_id`` holds, each with this mapping's image of it (None: another
    mapping's image holds it)."""
    held: dict[str, ManagedImage | None] = {}
    for image in state.images.holding(pack_id, shas) if pack_id else []:
        if image.owner in (label, "") or image.sha256 not in held:
            held[image.sha256] = image if image.owner in (label, "") else None
    return held


def _selects(show: str, sha: str | None, held: dict[str, ManagedImage | None]) -> bool:
    """Whether an item of content ``sha`` is one ``show`` lists."""
    own = held.get(sha or "")
    if show in ("synced", "pending"):
        return ((sha or "") in held) == (show == "synced")
    if show == "ai-failed":
        return own is not None and own.metadata.status == "failed"
    return own is not None and not own.metadata.settled  # ai-pending


def _files(mapping: MappingConfig, state: State, pack_id: str | None, problems: list[Problem],
           listing: Listing) -> tuple[list[FileStatus], int | None]:
    """A page of the items of a mapping that ``listing`` selects, with their images (a content another
    mapping holds is synced, without this mapping's image) — then its problems, when it lists all — and
    how many it selects in all when that took counting here (None: the counts say)."""
    offset, limit, show = listing.offset, listing.limit, listing.show
    end = None if limit is None else offset + limit
    if show == "problems":
        found = problem_files(state.files.problems(mapping.label, end), state.files.failures(mapping.label, end))
        return sorted(found, key=lambda f: f.path)[offset:end], None
    # a state's filter needs each item's image: every key is read (two columns), a page of them is detailed
    page = state.files.page(mapping.label, end if show == "all" else None)
    held = _held(state, mapping.label, pack_id, {sha for _key, sha in page if sha})
    failed = {p.rel_path: p.reason for p in state.files.failures(mapping.label)}
    selected = None
    if show != "all":
        page = [(key, sha) for key, sha in page
                if _selects(show, sha, held) and not (show == "pending" and key in failed)]
        selected = len(page)
    page = page[offset:end]
    held = {sha: held[sha] for _key, sha in page if sha and sha in held}  # the prepared uploads of this page's
    recipes = {image.recipe for image in held.values() if image and image.recipe}
    made = state.uploads.prepared(held.keys(), recipes) if recipes else {}
    words = state.files.details(mapping.label, [key for key, _sha in page])
    detail = []
    for key, sha in page:
        own = held.get(sha or "")
        # a remote source's image (its key is no path: an Astria image's URL) is shown by the name it was added with
        shown = own.file_name if own and mapping.path is None else key
        changes = made[own.sha256, own.recipe].changes if own and (own.sha256, own.recipe) in made else ()
        synced = (sha or "") in held
        why = None if synced else failed.get(key)
        detail.append(FileStatus(shown, sha, "synced" if synced else "failed" if why else "pending", why,
                                 own.image_id if own else None, own.metadata if own else None, changes,
                                 shown_detail(words.get(key))))
    if show == "all":
        detail += problem_files(problems, [])
    return sorted(detail, key=lambda f: f.path), selected


def problem_files(problems: Iterable[Problem], failures: Iterable[Problem]) -> list[FileStatus]:
    """The files not synced, as every view lists them: each problem (``skipped``, or a ``notice``), then each
    file whose add failed (``failed``), with its reason."""
    return [FileStatus(p.rel_path, None, p.state, p.reason) for p in problems] \
        + [FileStatus(p.rel_path, None, "failed", p.reason) for p in failures]


class ImageDetail(msgspec.Struct, frozen=True):
    """One content of one mapping, for a closer look: the items that hold it (their keys: a folder's
    relative paths; an Astria image's name), its pack, and this mapping's image of it there (None: not
    added yet, or the pack holds another mapping's image of it: ``synced`` tells)."""

    mapping: str
    sha256: str
    paths: tuple[str, ...]
    pack_id: str | None
    pack_name: str | None
    synced: bool
    image: ManagedImage | None = None
    #: What preparing it for upload changed (its image's recipe), as ``FileStatus.prepared``.
    prepared: tuple[str, ...] = ()
    #: Its source's own words about the first item holding it, as ``FileStatus.detail``.
    detail: str | None = None


def read_image(mapping: MappingConfig, state: State, sha256: str) -> ImageDetail | None:
    """What the state knows of content ``sha256`` in ``mapping`` (None: no item of it holds that content)."""
    keys = state.files.paths_of(mapping.label, sha256)
    if not keys:
        return None
    record = state.mappings.get(mapping.label)
    pack_id = recorded_pack_id(state, mapping)
    held = _held(state, mapping.label, pack_id, {sha256})
    own = held.get(sha256)
    made = state.uploads.prepared({sha256}, {own.recipe}) if own and own.recipe else {}
    changes = made[sha256, own.recipe].changes if own and (sha256, own.recipe) in made else ()
    paths = (own.file_name,) if own and mapping.path is None else tuple(keys)
    return ImageDetail(mapping.label, sha256, paths, pack_id, mapping.pack or (record.pack_name if record else None),
                       sha256 in held, own, changes, shown_detail(state.files.detail_of(mapping.label, sha256)))
