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

Names are decided here too. URLs and ids are the API's, so untrusted: a file is named after its URL's
last segment only when that is a safe file name with an image extension, else after the image id
made safe (an Astria image: ``<class>/<prompt id>-<n>``, its class made safe), with the extension its
bytes give. No name leads outside the folder. A name another file already has is the executor's
matter (it gets a suffix when the file is placed).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import msgspec

from packsync.model import SUPPORTED, AstriaImage, PulledFile, RemoteImage

_EXTENSIONS = {*SUPPORTED.values(), "jpeg"}
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,150}")


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

    def file_name(self, content_type: str) -> str:
        """The file's name, once its bytes said what they are."""
        return self.name or f"{self.stem}.{SUPPORTED[content_type]}"

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
    there already."""

    downloads: tuple[Download, ...] = ()
    removals: tuple[RemoveFile | DisownFile, ...] = ()
    kept: int = 0

    @property
    def actions(self) -> tuple[Download | RemoveFile | DisownFile, ...]:
        return (*self.downloads, *self.removals)


def plan_pull(images: Sequence[Download], records: Iterable[PulledFile], present: Collection[str],
              unchanged: Collection[str], *, delete: bool) -> PullPlan:
    """The plan for the pack's ``images`` (as downloads), given the ``records`` of the files pull wrote
    from it into the folder, and the image ids of those still ``present`` and ``unchanged``."""
    downloads = tuple(image for image in images if image.image_id not in present)
    in_pack = {image.image_id for image in images}
    left = [record for record in records if record.image_id not in in_pack] if delete else []
    return PullPlan(downloads, tuple(RemoveFile(r) if r.image_id in unchanged else DisownFile(r) for r in left),
                    len(images) - len(downloads))


def name_from_url(url: str) -> str | None:
    """The URL's last path segment, when it is a safe file name with an image extension; else None."""
    segment = unquote(PurePosixPath(urlsplit(url).path).name)
    stem, dot, ext = segment.rpartition(".")
    if not (dot and stem and ext.lower() in _EXTENSIONS and _SAFE.fullmatch(segment)):
        return None
    return segment


def safe_part(text: str, dots: bool = True) -> str:
    """``text`` as one safe path segment, or a digest of it (without ``dots``: one with no dot at all,
    so that no extension is taken for part of it)."""
    safe = _SAFE.fullmatch(text) and (dots or "." not in text)  # (never "." or "..": it starts with a letter)
    return text if safe else hashlib.sha256(text.encode()).hexdigest()[:16]


def genviral_download(folder: str, pack_id: str, image: RemoteImage) -> Download:
    """A Genviral image's download: named after its URL when that is safe, else ``<image id>.<ext>``."""
    return Download(folder, pack_id, image.image_id, image.url, safe_part(image.image_id, dots=False),
                    name_from_url(image.url))


def astria_download(folder: str, pack_id: str, image: AstriaImage) -> Download:
    """An Astria image's download, into its class's sub-folder: ``<class>/<prompt id>-<n>.<ext>``."""
    return Download(folder, pack_id, image.url, image.url, f"{safe_part(image.cls)}/{image.prompt_id}-{image.index}")
