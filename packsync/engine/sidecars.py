"""XMP sidecars next to a folder mapping's files (``sidecars = "xmp"``; the packet itself is ``xmp.py``).

A file gets a sidecar once its image's AI metadata is ``completed``. It is written again only when what
it would say changed, or when someone else changed the file since (then merged again: packsync
replaces its own fields only). When the image file is gone, its sidecar goes too, if packsync alone
wrote it. A sidecar packsync cannot read is left as it is and reported. Writes are atomic (a temporary
file beside it, fsync'ed, renamed over it).

What to do is decided on the event loop against the state; the file work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packsync.config import MappingConfig
from packsync.errors import XmpError
from packsync.mappings import recorded_pack_id
from packsync.model import ManagedImage, Problem, RemoteImage
from packsync.state.records import SidecarRecord
from packsync.xmp import MAX_BYTES, Fields, render, without_ours

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State


@dataclass
class SidecarReport:
    written: int = 0
    removed: int = 0
    problems: list[Problem] = field(default_factory=list)  # a sidecar left alone, and why


def sidecar_path(file: Path, naming: str) -> Path:
    """``IMG_0001.jpg.xmp`` (``full``) or ``IMG_0001.xmp`` (``stem``)."""
    return file.with_name(file.name + ".xmp") if naming == "full" else file.with_suffix(".xmp")


def fields_of(image: ManagedImage | RemoteImage) -> Fields:
    meta = image.metadata
    return Fields(image.image_id, meta.description, meta.keywords, meta.model)


def digest(fields: Fields) -> str:
    text = json.dumps([fields.image_id, fields.description, list(fields.keywords), fields.model])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def write_beside(root: Path, naming: str, wanted: dict[str, Fields]) -> SidecarReport:
    """Sidecars for files below ``root`` that packsync keeps no record of (``packsync pull``'s): each is
    merged again, and written only when that changes it."""
    work = _Work(root, naming, wanted, {})
    await asyncio.to_thread(work.run)
    return work.report


async def write_sidecars(mapping: MappingConfig, state: State) -> SidecarReport:
    """Bring the sidecars of ``mapping``'s files up to date with the AI metadata in the state."""
    label = mapping.label
    pack_id = recorded_pack_id(state, mapping)
    files = state.files.page(label)
    described = {image.sha256: image for image in (state.images.holding(pack_id, {sha for _, sha in files if sha})
                                                   if pack_id else [])
                 if image.owner in (label, "") and image.metadata.status == "completed"}
    wanted = {rel: fields_of(described[sha]) for rel, sha in files if sha in described}
    recorded = state.files.sidecars(label)
    work = _Work(mapping.folder, mapping.sidecar_name, wanted, recorded)
    await asyncio.to_thread(work.run)
    state.files.save_sidecars(label, work.written, work.forgotten)
    return work.report


@dataclass
class _Work:
    """The file side of one pass: what was written (to record) and forgotten (to drop from the state)."""

    root: Path
    naming: str
    wanted: dict[str, Fields]
    recorded: dict[str, SidecarRecord]
    written: dict[str, SidecarRecord] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)
    report: SidecarReport = field(default_factory=SidecarReport)

    def run(self) -> None:
        holders: dict[Path, str] = {}
        for rel, fields in sorted(self.wanted.items()):
            path = sidecar_path(self.root / rel, self.naming)
            if path in holders:  # IMG_1.jpg and IMG_1.png with sidecar_name = "stem"
                self._problem(path, f"not written for {rel}: it belongs to {holders[path]}", notice=True)
                continue
            holders[path] = rel
            self._write(rel, fields)
        for rel in self.recorded.keys() - self.wanted.keys():
            self._remove(rel, holders)

    def _write(self, rel: str, fields: Fields) -> None:
        path = sidecar_path(self.root / rel, self.naming)
        said = digest(fields)
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            self._problem(path, f"cannot read it ({exc.strerror})")
            return
        record = self.recorded.get(rel)
        if record and st and (record.digest, record.size, record.mtime_ns) == (said, st.st_size, st.st_mtime_ns):
            return  # as packsync left it, and nothing new to say
        if st and not stat.S_ISREG(st.st_mode):
            self._problem(path, "left alone: a link or not a file", notice=True)
            return
        try:
            existing = _read(path, st)
            data = render(fields, existing)
            if data != existing:
                if not _atomic_write(path, data, st):
                    return  # someone else wrote it meanwhile: merged next time, never overwritten now
                self.report.written += 1
            st = path.stat()
        except XmpError as exc:
            self._problem(path, f"not changed: {exc}")
            return
        except OSError as exc:
            self._problem(path, f"cannot write it ({exc.strerror})")
            return
        self.written[rel] = SidecarRecord(said, st.st_size, st.st_mtime_ns)

    def _remove(self, rel: str, holders: dict[Path, str]) -> None:
        """The file has no completed metadata now: if the file itself is gone, so goes its sidecar (if
        packsync alone wrote it, and no other file's sidecar has its name; one with someone else's
        fields, or a link, is left as it is)."""
        if os.path.lexists(self.root / rel):
            return  # still there (its content changed, say): the sidecar is brought up to date later
        self.forgotten.append(rel)
        path = sidecar_path(self.root / rel, self.naming)
        if path not in holders and remove_if_ours(path):
            self.report.removed += 1

    def _problem(self, path: Path, reason: str, *, notice: bool = False) -> None:
        self.report.problems.append(Problem(str(path.relative_to(self.root)), f"sidecar {reason}", notice))


def remove_if_ours(path: Path) -> bool:
    """Delete the sidecar at ``path`` if packsync alone wrote it (one with someone else's fields, a link,
    one that cannot be read now, or one written again while it was being read, is left as it is); True
    when it was deleted."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and without_ours(_read(path, st) or b"") is None \
                and _identity(path) == _identity_of(st):
            path.unlink()
            return True
    except (XmpError, OSError):
        pass
    return False


def _identity_of(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        return _identity_of(os.lstat(path))
    except FileNotFoundError:
        return None


def _read(path: Path, st: os.stat_result | None) -> bytes | None:
    if st is None:
        return None
    if st.st_size > MAX_BYTES:
        raise XmpError(f"larger than {MAX_BYTES // (1024 * 1024)} MB")
    return path.read_bytes()


def _atomic_write(path: Path, data: bytes, read: os.stat_result | None) -> bool:
    """A temporary file of a unique, short name beside ``path``, fsync'ed, renamed over it, with the
    mode the file had (a new one: as the umask allows, like any file a program makes). False, and
    nothing changed, when ``path`` is no longer the file that was read (``read``; None: none was)."""
    temp = path.with_name(f".packsync-{secrets.token_hex(6)}.packsync-tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if read is not None:
            os.fchmod(fd, stat.S_IMODE(read.st_mode))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if _identity(path) != (_identity_of(read) if read else None):
            return False
        os.replace(temp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
