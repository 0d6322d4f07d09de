"""The state's schema: every table packsync keeps, one SQLModel class each, read here and nowhere else.

The classes describe the tables exactly as SQLite keeps them in the files every release wrote (the
same names, columns and types), so that a state file of any release opens as it is. None has a
DEFAULT clause, and none may get one: packsync writes every column of every row explicitly, as the
files made by earlier versions require. The classes are the schema, not row objects: the
repositories read and write through SQLAlchemy Core statements on their tables (``table``), which
cost a fraction of an ORM object per row. What each table holds is said in ``packsync.state``'s
docstring. This module knows nothing of SQLite, of migrations or of the search index.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Index, Integer, Table, text
from sqlmodel import Field, SQLModel

#: The version of the schema below; a file of a newer one is refused, an older one upgraded.
SCHEMA_VERSION = 11
#: What ``meta``'s ``app`` row says in a state file of packsync's.
APP_ID = "packsync"
#: An image whose AI metadata is still to come (``model.METADATA_SETTLED`` are the others), as SQL with
#: its values written out: a query must say it in these words for SQLite to use the partial index below.
UNSETTLED = "meta_status NOT IN ('completed', 'failed')"
#: A size in bytes or a time in nanoseconds: SQLite's INTEGER holds 64 bits, PostgreSQL's only 32 (a file's
#: mtime_ns, ~1.8e18, is out of its range): BIGINT there, INTEGER as every release wrote it on SQLite.
BIG = Integer().with_variant(BigInteger(), "postgresql")


class MetaRow(SQLModel, table=True):
    """Which program wrote the file (``app``) and with which schema (``schema``)."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class FileRow(SQLModel, table=True):
    """An item of a source as its last scan saw it: the version its verdict is for (a token of the
    source's own, stored as given: a folder's stat key, an Astria image's URL), and the verdict."""

    __tablename__ = "files"
    root: str = Field(primary_key=True)
    rel_path: str = Field(primary_key=True)
    version: str
    size: int = Field(sa_type=BIG)
    sha256: str | None
    content_type: str | None
    problem: str | None
    detail: str | None  # the source's own words about the item (an Astria prompt's text)


class ProblemRow(SQLModel, table=True):
    """A file the last scan of its source did not sync, and why."""

    __tablename__ = "problems"
    root: str = Field(primary_key=True)
    rel_path: str = Field(primary_key=True)
    reason: str
    notice: bool


class FailedRow(SQLModel, table=True):
    """A file whose upload or add failed in the last sync that tried it, and why: tried again next sync."""

    __tablename__ = "failed"
    root: str = Field(primary_key=True)
    rel_path: str = Field(primary_key=True)
    reason: str


class SidecarRow(SQLModel, table=True):
    """An XMP sidecar as packsync last wrote it."""

    __tablename__ = "sidecars"
    root: str = Field(primary_key=True)
    rel_path: str = Field(primary_key=True)
    digest: str
    size: int = Field(sa_type=BIG)
    mtime_ns: int = Field(sa_type=BIG)


class BlobRow(SQLModel, table=True):
    """An upload of some content under a name (its ``POST /files`` filename, '' for uploads made before
    schema 10), possibly half done."""

    __tablename__ = "blobs"
    sha256: str = Field(primary_key=True)
    content_type: str
    url: str | None = Field(index=True)
    upload_url: str | None
    expires_at: float | None
    uploaded: bool
    name: str = Field(primary_key=True)


class ImageRow(SQLModel, table=True):
    """An image packsync added to a pack (or adopted), with its AI metadata and the mapping that owns it."""

    __tablename__ = "images"
    # The images still waiting for their metadata, per pack: what a metadata round reads, whatever the
    # number of images settled beside them.
    __table_args__ = (Index("ix_images_pack_sha256", "pack_id", "sha256"),
                      Index("ix_images_unsettled", "pack_id", sqlite_where=text(UNSETTLED),
                            postgresql_where=text(UNSETTLED)))
    pack_id: str = Field(primary_key=True)
    image_id: str = Field(primary_key=True)
    sha256: str = Field(index=True)
    url: str
    file_name: str
    meta_status: str
    description: str | None
    keywords: str  # JSON: a list of strings
    meta_error: str | None
    added_at: float
    owner: str  # '' (images recorded before schema 2 whose mapping was not known): any mapping's
    meta_model: str | None
    recipe: str  # the key of the recipe its upload was prepared with: '' for the file's bytes as they are


class PreparedRow(SQLModel, table=True):
    """What a recipe makes of a content: the changes (comma-separated; '' for none), the bytes uploaded
    (null until prepared, when only inspected), or why it cannot be prepared."""

    __tablename__ = "prepared"
    sha256: str = Field(primary_key=True)
    recipe: str = Field(primary_key=True)
    changes: str
    upload_sha256: str | None = Field(index=True)  # (what a URL of packsync's own was made from)
    size: int | None = Field(sa_type=BIG)
    content_type: str | None
    problem: str | None


class UrlContentRow(SQLModel, table=True):
    """What the bytes at an image URL packsync downloaded are (or why they could not be known)."""

    __tablename__ = "url_contents"
    url: str = Field(primary_key=True)
    sha256: str | None = Field(index=True)
    size: int = Field(sa_type=BIG)
    content_type: str | None
    problem: str | None


class PulledRow(SQLModel, table=True):
    """A file ``packsync pull`` wrote into a folder, and the image it came from."""

    __tablename__ = "pulled"
    folder: str = Field(primary_key=True)
    pack_id: str = Field(primary_key=True)
    image_id: str = Field(primary_key=True)
    name: str
    url: str
    sha256: str


class MappingRow(SQLModel, table=True):
    """A mapped source: its pack, its own name, and how its last sync went."""

    __tablename__ = "mappings"
    root: str = Field(primary_key=True)
    pack_id: str | None
    pack_name: str | None
    synced_at: float | None
    last_error: str | None
    source_name: str | None
    ok_at: float | None
    safety: str | None
    withheld: str | None  # JSON: the names --force would delete
    withheld_count: int | None  # how many deletes the safety stop withholds (what ``allow-deletes`` approves)
    paused: float | None  # when a person paused its syncing (``packsync pause``); None: not paused
    expires_at: float | None  # when the source itself deletes its items (its last scan's word); None: never known


class ActivityRow(SQLModel, table=True):
    """Something a sync did to a mapping's pack (an image added, deleted, replaced, a pack renamed, an item
    that failed), for the page's feed: the newest ``ACTIVITY_KEPT`` are kept."""

    __tablename__ = "activity"
    id: int | None = Field(default=None, primary_key=True)
    at: float
    root: str
    kind: str
    name: str
    detail: str | None


class DaemonRow(SQLModel, table=True):
    """What the running daemon is doing (one row, ``id`` 1)."""

    __tablename__ = "daemon"
    id: int = Field(primary_key=True)
    pid: int | None
    started_at: float | None
    last_full_scan: float | None
    queue: int
    state: str
    last_error: str | None
    updated_at: float | None


class ChangeCountRow(SQLModel, table=True):
    """How often the rows a plan reads changed (one row, ``id`` 0): kept by the database itself."""

    __tablename__ = "changes"
    id: int = Field(primary_key=True)
    count: int


class SettledRow(SQLModel, table=True):
    """The fingerprint of the inputs of a source's last plan that had nothing to do."""

    __tablename__ = "settled"
    root: str = Field(primary_key=True)
    fingerprint: str


class LeaseRow(SQLModel, table=True):
    """A shared state's hold on a pack (PostgreSQL only): which site syncs it now, under which epoch, until
    when (seconds on the database server's clock: the one clock every site agrees on). A site takes it
    when it has expired or is its own, and the epoch then grows, so a write made under an older epoch is
    known stale (fencing)."""

    __tablename__ = "leases"
    key: str = Field(primary_key=True)  # "pack:<id>", "name:<pack name>", "meta:<id>"
    holder: str
    epoch: int
    expires_at: float


class SiteRow(SQLModel, table=True):
    """A machine sharing the state (PostgreSQL only): its name, and when it was last heard from. ``id`` is
    the id of its ``daemon`` row."""

    __tablename__ = "sites"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    host: str
    pid: int | None
    version: str
    seen_at: float


def table(model: type[SQLModel]) -> Table:
    """The Core table of a table class, for the statements of the hot paths."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]  # set by SQLModel's metaclass


METADATA = SQLModel.metadata
#: Every table, by name.
TABLES: dict[str, Table] = {table(model).name: table(model) for model in (
    MetaRow, FileRow, ProblemRow, FailedRow, SidecarRow, BlobRow, ImageRow, UrlContentRow, PulledRow, MappingRow,
    DaemonRow, ChangeCountRow, SettledRow, PreparedRow, ActivityRow)}
#: The tables only a shared state (PostgreSQL) has besides those.
SHARED_ONLY: dict[str, Table] = {table(model).name: table(model) for model in (LeaseRow, SiteRow)}
#: The tables a mapping's plan reads besides its scan and its pack: every change to one of them is
#: counted (``changes``), so a fingerprint of a plan's inputs can hold the state's part as a number.
PLANNED_FROM = ("images", "blobs", "url_contents", "prepared")
