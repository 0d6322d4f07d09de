"""What ``packsync pull`` does, decided: a plan of small action values that the executor
(``engine/pull.py``) runs one by one and ``pull --dry-run`` prints. Pure, like the planner: no I/O.

Its inputs are the pack's images (each as the ``Download`` that would fetch it: where its bytes are
and what its file will be called), the files pull recorded writing into the folder from that pack,
and what was observed of those files: which are still there (``present``), and which still hold the
bytes that were pulled (``unchanged``). The rules:

1. An image whose recorded file is there is kept; every other image of the pack is downloaded
   (again, when its file was removed or renamed).
2. With ``--delete``, a recorded file whose image left the pack is removed if it still holds what was
   pulled (``RemoveFile``); one changed or removed since is the user's now (``DisownFile``): its
   record goes, the file stays. A file pull did not record is never in the plan.
3. The removals have the sync direction's safety (``planner.safety_stop``, the same rule): none while
   an entry of the pack could not be read, even with ``--force``; none when the pack is empty while
   the folder holds files pulled from it, or when they exceed ``max_delete``, unless ``--force``.
   Withheld, they are in the plan as ``withheld``, with the reason as ``safety``.
4. Nothing goes through a link below the folder (``links``, as observed): an image whose directory is
   behind one is not downloaded, a file behind one is neither kept nor removed, and each link is one
   notice.

Names are decided here too. A Genviral image is named by the path it was uploaded from when that is
known (``given``: from the state that pushed it, or the ``filename`` ``GET /files`` gives back;
``engine/names.py``), sub-folders and all; else after its URL's last segment when that is a safe file
name with an image extension; else after the image id made safe; with the extension its bytes give. A
remote source's image (``Listed``) is named by its parts, each made safe (an Astria pack's:
``<class>/<prompt id>-<n>``). Given paths, URLs and ids are untrusted: no name leads outside the
folder (a path that is absolute, or has an empty, ``.``, ``..`` or hidden part, or one too long, is not
used, which is a notice), and every name is one Windows (SMB, NTFS) accepts: a character it refuses
becomes ``_``, a name it reserves (``CON``, ``aux.png``, ``LPT9.tar.png``) gets a ``_`` after its
reserved part, and one ending in dots or spaces has them turned into one ``_``; a name or class changed
so is a notice. A name another file already has is the executor's matter (it gets a suffix when the
file is placed).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import msgspec

from packsync.engine.names import MAX_PARTS, usable_part
from packsync.engine.planner import Deletes, MappingOptions, SourceFacts, safety_stop
from packsync.logs import untrusted
from packsync.model import EXTENSIONS, ListedImage, Problem, PulledFile, RemoteImage

_EXTENSIONS = {*EXTENSIONS.values(), "jpeg"}
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,150}")
LINK_SKIPPED = "a symbolic link: nothing is written or deleted through it; skipped"
#: Characters Windows refuses in a name (``/`` separates parts): each becomes ``_``.
_REFUSED = re.compile(r'[<>:"\\|?*]')
#: A given path's length at most (its parts' limits are those of the names packsync gives: ``names.py``).
MAX_PATH = 1024
#: How much of a given name a notice shows.
SHOWN = 160
BLOCKED = "a file holds the place of one of its folders: named as if unknown"
UNUSABLE = "not a name below the folder (absolute, empty, hidden or '..' parts, or too long): named as if unknown"
#: The device names Windows reserves, whatever extension follows and in any case (its digits: superscripts too).
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])", re.IGNORECASE)


class Download(msgspec.Struct, frozen=True):
    """Download the image ``image_id`` of the pack ``pack_id`` into ``folder``: as ``name`` (its URL's),
    or as ``stem`` with the extension its bytes give."""

    kind: ClassVar[str] = "download"
    folder: str
    pack_id: str
    image_id: str
    url: str
    stem: str
    name: str | None = None
    #: The name (or class) the source gave and the one written instead, when it had to be changed.
    renamed: tuple[str, str] | None = None
    #: The name the source gave and why it was not used, when it could not be.
    unused: tuple[str, str] | None = None

    def file_name(self, content_type: str) -> str:
        """The file's name, once its bytes said what they are."""
        return self.name or f"{self.stem}.{EXTENSIONS[content_type]}"

    @property
    def directory(self) -> str:
        """The directory the file goes in, relative to the folder (``""``: the folder itself)."""
        return (self.name or self.stem).rpartition("/")[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "mapping": self.folder, "file": self.name or f"{self.stem}.*",
                "image": self.image_id}


class RemoveFile(msgspec.Struct, frozen=True):
    """Delete a file pull wrote (and its sidecar, if pull wrote one) whose image left the pack, and its
    record — provided it still holds what was pulled when it is removed."""

    kind: ClassVar[str] = "remove-file"
    record: PulledFile

    def describe(self) -> dict[str, Any]:
        return _described(self.kind, self.record)


class DisownFile(msgspec.Struct, frozen=True):
    """Forget a file pull wrote whose image left the pack but that someone changed or removed since:
    the file is theirs now, and stays."""

    kind: ClassVar[str] = "disown-file"
    record: PulledFile

    def describe(self) -> dict[str, Any]:
        return _described(self.kind, self.record)


def _described(kind: str, record: PulledFile) -> dict[str, Any]:
    return {"kind": kind, "mapping": record.folder, "file": record.name, "image": record.image_id}


class PullPlan(msgspec.Struct, frozen=True):
    """What a pull does: ``downloads`` first, then the ``removals`` (``--delete``); ``kept`` images are
    there already. ``withheld`` removals wait for ``--force`` (or for the pack to be read whole), and
    ``safety`` says why; ``notices`` are links skipped and names changed."""

    downloads: tuple[Download, ...] = ()
    removals: tuple[RemoveFile | DisownFile, ...] = ()
    kept: int = 0
    withheld: tuple[RemoveFile | DisownFile, ...] = ()
    safety: str | None = None
    notices: tuple[Problem, ...] = ()

    @property
    def actions(self) -> tuple[Download | RemoveFile | DisownFile, ...]:
        return (*self.downloads, *self.removals)


class PullSafety(msgspec.Struct, frozen=True):
    """What the removals' safety stop depends on: the pack (``source``, as the user knows it), what
    reading it found (``facts``: entries it could not read) and ``max_delete`` and ``--force``."""

    source: str = "the pack"
    facts: SourceFacts = SourceFacts()
    options: MappingOptions = MappingOptions()


def plan_pull(images: Sequence[Download], records: Iterable[PulledFile], present: Collection[str],
              unchanged: Collection[str], *, delete: bool, links: Collection[str] = (),
              safety: PullSafety | None = None) -> PullPlan:
    """The plan for the pack's ``images`` (as downloads), given the ``records`` of the files pull wrote
    from it into the folder, the image ids of those still ``present`` and ``unchanged``, and the
    ``links`` met below the folder (paths relative to it)."""
    records = list(records)
    safety = safety or PullSafety()
    downloads = tuple(image for image in images if image.image_id not in present
                      and not _behind(image.directory, links))
    kept = sum(1 for image in images if image.image_id in present)
    in_pack = {image.image_id for image in images}
    left = [r for r in records if r.image_id not in in_pack and not _behind(r.name.rpartition("/")[0], links)] \
        if delete else []
    removals = tuple(RemoveFile(r) if r.image_id in unchanged else DisownFile(r) for r in left)
    stop = safety_stop(safety.facts, Deletes(
        safety.source, sum(isinstance(r, RemoveFile) for r in removals), not images, len(records), len(records),
        "file", f"in {records[0].folder}" if records else "here", "an emptied pack?"),
        safety.options) if removals else None
    return PullPlan(downloads, () if stop else removals, kept, removals if stop else (), stop,
                    _notices(links, downloads))


def _notices(links: Collection[str], downloads: Iterable[Download]) -> tuple[Problem, ...]:
    """Each link skipped, and each name (or class) written under another, once."""
    downloads = list(downloads)
    renamed = sorted({download.renamed for download in downloads if download.renamed})
    unused = sorted({download.unused for download in downloads if download.unused})
    return (*(Problem(link, LINK_SKIPPED, notice=True) for link in sorted(links)),
            *(Problem(given, f"written as {written}: not a name every file system takes (Windows and SMB refuse "
                             "some)", notice=True) for given, written in renamed),
            *(Problem(given, why, notice=True) for given, why in unused))


def _behind(directory: str, links: Collection[str]) -> bool:
    """Whether ``directory`` is one of the ``links`` or below one."""
    return any(directory == link or directory.startswith(f"{link}/") for link in links)


def _url_name(url: str) -> str | None:
    """The URL's last path segment, when it is a safe file name with an image extension; else None."""
    segment = unquote(PurePosixPath(urlsplit(url).path).name)
    stem, dot, ext = segment.rpartition(".")
    if not (dot and stem and ext.lower() in _EXTENSIONS and _SAFE.fullmatch(segment)):
        return None
    return segment


def name_from_url(url: str) -> str | None:
    """The file name the URL gives (its last segment, made ``portable``), or None when it gives none."""
    segment = _url_name(url)
    return portable(segment) if segment else None


def portable(name: str) -> str:
    """``name`` as Windows accepts it on SMB and NTFS (the characters it refuses are never in a safe
    name): a reserved device name before the first dot gets a ``_`` after it, trailing dots and spaces
    become one ``_``. The same name always gives the same result."""
    if name != (trimmed := name.rstrip(". ")):
        name = f"{trimmed}_"
    base, dot, rest = name.partition(".")
    if _RESERVED.fullmatch(base.rstrip(" ")):
        name = f"{base.rstrip(' ')}_{dot}{rest}"
    return name


def safe_part(text: str, dots: bool = True) -> str:
    """``text`` as one safe, ``portable`` path segment, or a digest of it (without ``dots``: one with no
    dot at all, so that no extension is taken for part of it)."""
    safe = _SAFE.fullmatch(text) and (dots or "." not in text)  # (never "." or "..": it starts with a letter)
    return portable(text) if safe else hashlib.sha256(text.encode()).hexdigest()[:16]


def given_path(given: str) -> str | None:
    """The path ``given`` for an image (untrusted), as a name below the folder every file system takes
    (each part ``portable``, each character Windows refuses a ``_``), or None when it is not one."""
    parts = given.split("/")
    if len(given) > MAX_PATH or len(parts) > MAX_PARTS:
        return None
    made = []
    for part in parts:
        part = _REFUSED.sub("_", "".join("_" if unicodedata.category(c).startswith("C") else c for c in part))
        if not usable_part(part):
            return None  # (an empty part: an absolute path, or "a//b"; ".", ".." and hidden names start with ".")
        made.append(portable(part))
    return "/".join(made)


def genviral_download(folder: str, pack_id: str, image: RemoteImage, given: str | None = None) -> Download:
    """A Genviral image's download: named as ``given`` (the path it was uploaded from) when that is a
    usable name, else after its URL when that is safe, else ``<image id>.<ext>``; a path without an
    image extension gets the one its bytes give."""
    stem = safe_part(image.image_id, dots=False)
    if given and (path := given_path(given)) is not None:
        renamed = (untrusted(given, SHOWN), path) if given != path else None
        if path.rpartition(".")[2].lower() in _EXTENSIONS and "." in path.rpartition("/")[2]:
            return Download(folder, pack_id, image.image_id, image.url, stem, path, renamed)
        return Download(folder, pack_id, image.image_id, image.url, path, None, renamed)
    from_url = _url_name(image.url)
    name = portable(from_url) if from_url else None
    unusable = (untrusted(given, SHOWN), UNUSABLE) if given else None
    return Download(folder, pack_id, image.image_id, image.url, stem, name,
                    (from_url, name) if from_url and name and from_url != name else None, unusable)


def as_if_unknown(download: Download) -> Download:
    """``download`` named in the folder itself, after its URL when that is safe, else its image id: where
    the path it was given cannot be had (a file holds the place of one of its folders)."""
    return Download(download.folder, download.pack_id, download.image_id, download.url,
                    safe_part(download.image_id, dots=False), name_from_url(download.url))


def listed_download(folder: str, label: str, image: ListedImage) -> Download:
    """A remote source's image's download (a ``Listed`` one): named by its ``parts``, ``<part>/…/<stem>.<ext>``
    (an Astria pack's: ``<class>/<prompt id>-<n>``), each part made safe: a part that is not one safe name
    (``..``, a separator, a control character) becomes a digest of itself, a reserved one gets its ``_``. A
    change is a notice, said once for all the files of a folder whose name changed."""
    given = image.parts or (image.url,)
    parts = tuple(safe_part(part, dots=n < len(given) - 1) for n, part in enumerate(given))
    folders, written = "/".join(given[:-1]), "/".join(parts[:-1])
    renamed = (untrusted(folders, SHOWN), written) if folders != written else \
        (untrusted(given[-1], SHOWN), parts[-1]) if given[-1] != parts[-1] else None
    return Download(folder, label, image.url, image.url, "/".join(parts), renamed=renamed)
