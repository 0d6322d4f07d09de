"""The plain values that flow between the sources, the state, the API client and the planner.

Nothing here does I/O: the planner is built from these alone, so it can be tested (and reasoned
about) without a network, a database or a file system. The values a pack's answer holds by the
thousand are msgspec structs, and so is every other value here: a struct is built several times
faster than a frozen dataclass, and its class is made some 80 times faster (every command pays for
the classes it imports). ``RemotePack``, ``RemoteImage`` and ``Metadata`` the API client decodes
straight from a pack's JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import msgspec

METADATA_SETTLED = frozenset({"completed", "failed"})

#: The image types the Genviral API accepts, with the extension its CDN URLs get.
SUPPORTED = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
}
#: Every image type packsync recognises (``sources.media.sniff``), with its files' extension: those the
#: API accepts, and AVIF, which a mapping's recipe may convert.
EXTENSIONS = {**SUPPORTED, "image/avif": "avif"}


class CachedFile(msgspec.Struct, frozen=True):
    """What the state remembers of one item of a source: the version its verdict is for, and the verdict.

    ``version`` is a token of the source's own making, opaque to everyone else: a folder's stat key
    (``sources.folder.stat_version``: device, inode, size and mtime), an Astria image's URL (whose
    bytes never change). An item whose version is the one remembered is not read again.
    """

    version: str
    size: int
    sha256: str | None
    content_type: str | None
    problem: str | None

    def matches(self, version: str) -> bool:
        return self.version == version


class ContentItem(msgspec.Struct, frozen=True):
    """A syncable image a source holds, known by its content (SHA-256 of its bytes).

    ``key`` is how its source names it: a path relative to a mapped folder, an Astria image's URL.
    Several items may hold the same content; the pack then holds that content once.
    """

    key: str
    sha256: str
    size: int
    content_type: str
    #: Its name in a pack, when that is not the key's last segment (an Astria image's key is its URL).
    name: str | None = None


class Problem(msgspec.Struct, frozen=True):
    """An item (a file, a folder) the scan did not sync, and why, in words for the user.

    A ``notice`` is a deliberate skip (a symlink that is not followed): it is reported but does
    not make the run fail.
    """

    rel_path: str
    reason: str
    notice: bool = False

    @property
    def skipped(self) -> bool:
        """Whether it is a file skipped (counted, an exit 1): every problem but a notice."""
        return not self.notice

    @property
    def state(self) -> str:
        """Its word as a file's state: ``skipped``, or ``notice`` (listed, never counted)."""
        return "notice" if self.notice else "skipped"


class Scan(msgspec.Struct):
    """Everything one scan of one source found.

    ``items`` are the good images. ``problems`` are the items that were skipped. ``keep`` are the
    contents that must not be deleted remotely although no good item holds them now: files that
    could not be read this time, and everything below folders that could not be listed. A scan
    never lets a read error look like a deletion. ``cache`` is what each item looked like, to be
    remembered for the next scan. ``excluded`` are the paths an exclude pattern left out (a folder's
    with a trailing ``/``, its contents not walked), with that pattern.

    ``listing`` (a folder's) is a digest of what the walk alone saw: each file's path and ``stat`` key,
    and what it could not walk. With the same file cache it decides the items, so a listing the same
    as a settled plan's is that plan's scan again (``Syncer._plan``). ``retry``: a file could not be
    judged this time (a read failed, or it changed while read), so the scan is not one to settle on.
    """

    source: str
    items: list[ContentItem] = msgspec.field(default_factory=list)
    problems: list[Problem] = msgspec.field(default_factory=list)
    keep: set[str] = msgspec.field(default_factory=set)
    cache: dict[str, CachedFile] = msgspec.field(default_factory=dict)
    hashed_files: int = 0
    excluded: list[tuple[str, str]] = msgspec.field(default_factory=list)
    listing: str | None = None
    retry: bool = False


class PathsScan(msgspec.Struct):
    """What a scan of some paths of a source found (``Source.scan_paths``), a folder among them with
    everything below it.

    ``scan`` holds the items, problems, kept contents and cache records of those paths only (no
    ``listing``: it is not the whole source's). ``scope`` are the paths looked at, each standing for
    itself and everything below it: the records and the problems on record there are replaced by
    ``scan``'s. ``gone`` are the recorded paths in scope the folder no longer holds as files of the
    mapping (removed, renamed away, excluded now).
    """

    scan: Scan
    scope: tuple[str, ...]
    gone: set[str]


class Blob(msgspec.Struct, frozen=True):
    """An upload of some content to Genviral's storage under ``name`` (the ``POST /files`` filename that
    ``GET /files`` gives back; '' for an upload made before packsync named them), possibly half done."""

    sha256: str
    content_type: str
    url: str | None = None
    upload_url: str | None = None
    expires_at: float | None = None
    uploaded: bool = False
    name: str = ""


class UploadNames(msgspec.Struct, frozen=True):
    """What a walk of the key's files (``GET /files``) found: the name each wanted URL's upload was given,
    and whether the list changed under the walk (its ``total`` moved, or a file came again on a later page):
    a name not found may then have been missed."""

    names: dict[str, str]
    shifted: bool = False


class Uploaded(msgspec.Struct, frozen=True):
    """A content in storage as a recipe made it: its URL, the hash of the bytes sent (the upload's key), and
    what preparing changed (none: the file's own bytes)."""

    url: str
    sent: str
    changes: tuple[str, ...] = ()


class Metadata(msgspec.Struct, frozen=True):
    """An image's AI enrichment as the API reports it (other fields of the answer are ignored)."""

    status: str = "pending"
    description: str | None = None
    keywords: tuple[str, ...] = ()
    error: str | None = None
    model: str | None = None

    @property
    def settled(self) -> bool:
        return self.status in METADATA_SETTLED


class ManagedImage(msgspec.Struct, frozen=True):
    """An image packsync added to a pack (and so may delete), as the state recorded it.

    ``owner`` is the label of the mapping that added it: only that mapping deletes it, so mappings
    that share a pack (from two configs sharing one state) never delete each other's images.
    """

    pack_id: str
    image_id: str
    sha256: str
    url: str
    file_name: str
    owner: str
    metadata: Metadata = Metadata()
    #: The key of the recipe its upload was prepared with (or, since, found to give the same bytes): ''
    #: for the file's bytes as they are.
    recipe: str = ""


class PreparedContent(msgspec.Struct, frozen=True):
    """What a recipe (``recipe``, its key) makes of a content (``sha256``): the ``changes`` it makes (none:
    the bytes go as they are), the bytes uploaded (``upload_sha256``, ``size``, ``content_type``: known once
    prepared, not when only inspected), or why the file cannot be prepared (``problem``)."""

    sha256: str
    recipe: str
    changes: tuple[str, ...] = ()
    upload_sha256: str | None = None
    size: int | None = None
    content_type: str | None = None
    problem: str | None = None

    @property
    def uploaded_as(self) -> str | None:
        """The hash of the bytes this recipe uploads, where known: the content's own when it changes nothing."""
        return self.sha256 if not self.changes and self.problem is None else self.upload_sha256


class RemoteImage(msgspec.Struct, frozen=True):
    """An image of a pack, as ``GET /packs/{id}`` lists it."""

    image_id: str = msgspec.field(name="id")
    url: str
    metadata: Metadata = Metadata()


class RemotePack(msgspec.Struct, frozen=True):
    pack_id: str = msgspec.field(name="id")
    name: str = ""
    images: tuple[RemoteImage, ...] = ()


class PackRead(msgspec.Struct, frozen=True):
    """A pack as the API answered it, its images not decoded yet: a sync whose mapping has not changed
    needs only to know that the answer's bytes (``digest``) are the ones it planned from last time."""

    pack_id: str
    name: str
    digest: str
    decode: Callable[[], RemotePack]

    def __repr__(self) -> str:  # not the answer ``decode`` holds: tens of MB for a large pack
        return f"PackRead(pack_id={self.pack_id!r}, name={self.name!r}, digest={self.digest!r})"


class UrlContent(msgspec.Struct, frozen=True):
    """What the bytes at an image's URL are, once downloaded: its content, or why it is not known.

    ``final`` is False for a failure that may pass (a timeout, a 503): it is tried again next run.
    """

    url: str
    sha256: str | None
    size: int = 0
    content_type: str | None = None
    problem: str | None = None
    final: bool = True


class PackSummary(msgspec.Struct, frozen=True):
    """A pack as ``GET /packs`` lists it."""

    pack_id: str
    name: str
    image_count: int
    is_public: bool
    created_at: str


class UploadTicket(msgspec.Struct, frozen=True):
    """The answer to ``POST /files``: where to PUT the bytes, and the URL they will have."""

    upload_url: str
    url: str
    content_type: str
    expires_at: float


class AstriaImage(msgspec.Struct, frozen=True):
    """One example image of an Astria pack: ``index`` counts from 1 within its prompt."""

    url: str
    cls: str
    prompt_id: int
    index: int

    @property
    def stem(self) -> str:
        """``<class>-<prompt id>-<n>``: the image's name, before an extension from its bytes."""
        return f"{self.cls}-{self.prompt_id}-{self.index}"


class AstriaPack(msgspec.Struct, frozen=True):
    """An Astria pack as ``GET /p/{id}`` describes it; ``problems`` are entries it listed but that are
    not images (a missing field, a URL that is not http(s)), each as (class, where, why)."""

    pack_id: int
    title: str
    classes: tuple[str, ...]
    images: tuple[AstriaImage, ...]
    problems: tuple[tuple[str, str, str], ...] = ()

    def chosen(self, classes: Collection[str] | None) -> dict[str, AstriaImage]:
        """The images of ``classes`` (None: all), one per URL: the same URL under several prompts is
        one image, named after its first."""
        found: dict[str, AstriaImage] = {}
        for image in self.images:
            if classes is None or image.cls in classes:
                found.setdefault(image.url, image)
        return found


class AstriaPackSummary(msgspec.Struct, frozen=True):
    """An Astria pack as ``GET /packs`` lists it."""

    pack_id: int
    title: str
    classes: tuple[str, ...]


class PulledFile(msgspec.Struct, frozen=True):
    """A file ``packsync pull`` wrote into ``folder``, and the image it came from."""

    folder: str
    pack_id: str
    name: str
    image_id: str
    url: str
    sha256: str


class ListedImage(msgspec.Struct, frozen=True):
    """One image a pull downloads: ``parts`` name it below the pull's folder, without its extension
    (``("woman", "12-3")``, ``("12-3",)``); ``detail`` is the source's text for its sidecar."""

    url: str
    parts: tuple[str, ...]
    detail: str | None = None


class Listed(msgspec.Struct, frozen=True):
    """What ``packsync pull <label>`` of a remote source downloads: its images, and what it could not read
    (``problems``; ``unreadable`` withholds every removal). ``scope``: the first parts this pull mirrors
    (an Astria pack's ``--classes``), None: all."""

    label: str
    title: str
    images: tuple[ListedImage, ...]
    problems: tuple[Problem, ...] = ()
    scope: frozenset[str] | None = None
    unreadable: str | None = None
