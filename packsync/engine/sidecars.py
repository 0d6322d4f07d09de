"""XMP sidecars next to a folder mapping's files (``sidecars = "xmp"``; the packet itself is ``xmp.py``).

A file gets a sidecar once its image's AI metadata is ``completed``. It is written again only when what
it would say changed, or when someone else changed the file since (then merged again: packsync
replaces its own fields only). When the image file is gone, its sidecar goes too, if packsync alone
wrote it. A sidecar packsync cannot read is left as it is and reported. Writes are atomic (a temporary
file beside it, fsync'ed, renamed over it).

Deciding and doing are apart. ``plan_sidecars`` (pure) makes ``WriteSidecar`` and ``RemoveSidecar``
actions from what the state holds: for every file of a mapping on a full pass (a full sync, the truth
that also notices a sidecar someone else edited), or only for the files whose image metadata or file
changed (``files``: what a daemon sync or a metadata round touched, so that a round where nothing
changed reads nothing). ``observe`` reads those inputs from the state; ``apply`` does the file work in
a worker thread and returns the records to save (``SidecarReport``). The executor's ``sidecars``
action (``actions.SidecarPass``) runs the three and records the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from packsync.config import MappingConfig
from packsync.errors import XmpError
from packsync.files import read_regular
from packsync.mappings import recorded_pack_id
from packsync.model import ManagedImage, Problem, RemoteImage
from packsync.state.records import SidecarRecord
from packsync.xmp import MAX_BYTES, Fields, render, without_ours

if TYPE_CHECKING:  # a type only: the state is opened by whoever runs these
    from packsync.state.store import State


class WriteSidecar(msgspec.Struct, frozen=True):
    """Bring the sidecar of ``file`` (below ``root``) to say ``fields``; left as it is when it already
    does and nobody changed it since packsync wrote it (``recorded``)."""

    kind: ClassVar[str] = "write-sidecar"
    mapping: str
    root: str
    file: str
    naming: str
    fields: Fields
    recorded: SidecarRecord | None = None

    @property
    def path(self) -> Path:
        return sidecar_path(Path(self.root) / self.file, self.naming)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "mapping": self.mapping, "file": self.file, "image": self.fields.image_id}

    @property
    def news(self) -> bool:
        """Whether it says what packsync has not written yet (else it rewrites only a sidecar edited since)."""
        return self.recorded is None or self.recorded.digest != digest(self.fields)


class RemoveSidecar(msgspec.Struct, frozen=True):
    """``file`` has no completed metadata any more: if the file itself is gone, so goes its sidecar (if
    packsync alone wrote it and no other file's sidecar has its name, ``shared``)."""

    kind: ClassVar[str] = "remove-sidecar"
    mapping: str
    root: str
    file: str
    naming: str
    shared: bool = False

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "mapping": self.mapping, "file": self.file, "image": None}


SidecarAction = WriteSidecar | RemoveSidecar


class SidecarPlan(msgspec.Struct):
    """What one pass over a mapping's sidecars does, and the sidecars it leaves alone on purpose."""

    actions: list[SidecarAction] = msgspec.field(default_factory=list)
    problems: list[Problem] = msgspec.field(default_factory=list)


@dataclass
class SidecarReport:
    written: int = 0
    removed: int = 0
    problems: list[Problem] = field(default_factory=list)  # a sidecar left alone, and why
    records: dict[str, SidecarRecord] = field(default_factory=dict)  # by file: the sidecars to record
    forgotten: list[str] = field(default_factory=list)  # files whose sidecar record goes


def sidecar_path(file: Path, naming: str) -> Path:
    """``IMG_0001.jpg.xmp`` (``full``) or ``IMG_0001.xmp`` (``stem``)."""
    return file.with_name(file.name + ".xmp") if naming == "full" else file.with_suffix(".xmp")


def fields_of(image: ManagedImage | RemoteImage) -> Fields:
    meta = image.metadata
    return Fields(image.image_id, meta.description, meta.keywords, meta.model)


def digest(fields: Fields) -> str:
    text = json.dumps([fields.image_id, fields.description, list(fields.keywords), fields.model])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def plan_sidecars(mapping: str, root: Path, naming: str, wanted: Mapping[str, Fields],
                  recorded: Mapping[str, SidecarRecord], files: Collection[str] | None = None) -> SidecarPlan:
    """The actions that bring the sidecars of ``mapping``'s files (below ``root``) up to date. Pure.

    ``wanted`` says, per file, what its sidecar should say (its image's completed metadata); ``recorded``
    what packsync wrote. With ``files``, only those files are looked at (the others did not change);
    ``wanted`` and ``recorded`` must then hold them, and any file sharing a stem sidecar with one of them.
    """
    plan = SidecarPlan()
    holders: dict[PurePosixPath, str] = {}
    for rel, fields in sorted(wanted.items()):
        path = _named(rel, naming)
        if path in holders:  # IMG_1.jpg and IMG_1.png with sidecar_name = "stem"
            if files is None or rel in files:
                plan.problems.append(Problem(str(path), f"sidecar not written for {rel}: it belongs to "
                                                        f"{holders[path]}", notice=True))
            continue
        holders[path] = rel
        if files is None or rel in files:
            plan.actions.append(WriteSidecar(mapping, str(root), rel, naming, fields, recorded.get(rel)))
    for rel in sorted(recorded.keys() - wanted.keys()):
        if files is None or rel in files:
            plan.actions.append(RemoveSidecar(mapping, str(root), rel, naming, _named(rel, naming) in holders))
    return plan


def _named(rel: str, naming: str) -> PurePosixPath:
    file = PurePosixPath(rel)
    return file.with_name(file.name + ".xmp") if naming == "full" else file.with_suffix(".xmp")


def observe(state: State, mapping: MappingConfig, files: Collection[str] | None = None) -> SidecarPlan:
    """Plan ``mapping``'s sidecars from the state: every file's (``files`` None), or only those of ``files``
    (and of the files sharing a stem sidecar with one of them)."""
    label = mapping.label
    pack_id = recorded_pack_id(state, mapping)
    if files is None:
        holding = dict(state.files.page(label))
        recorded = state.files.sidecars(label)
    else:
        looked_at = set(files) | (state.files.same_stem(label, files) if mapping.sidecar_name == "stem" else set())
        holding = state.files.contents_at(label, looked_at)
        recorded = state.files.sidecars(label, looked_at)
    described = {image.sha256: image for image in (state.images.holding(pack_id, {s for s in holding.values() if s})
                                                   if pack_id else [])
                 if image.owner in (label, "") and image.metadata.status == "completed"}
    wanted = {rel: fields_of(described[sha]) for rel, sha in holding.items() if sha in described}
    return plan_sidecars(label, mapping.folder, mapping.sidecar_name, wanted, recorded, files)


async def apply(actions: Sequence[SidecarAction]) -> SidecarReport:
    """Carry out one mapping's sidecar actions in a worker thread (none while its folder is not there: an
    unmounted share); the report holds what to record (``FileRepository.save_sidecars(label,
    report.records, report.forgotten)``, the ``sidecars`` action's)."""
    report = SidecarReport()
    if actions:
        await asyncio.to_thread(_apply, actions, report)
    return report


async def write_beside(root: Path, naming: str, wanted: dict[str, Fields]) -> SidecarReport:
    """Sidecars for files below ``root`` that packsync keeps no record of (``packsync pull``'s): each is
    merged again, and written only when that changes it."""
    plan = plan_sidecars(str(root), root, naming, wanted, {})
    report = await apply(plan.actions)
    report.problems[:0] = plan.problems
    return report


def _apply(actions: Sequence[SidecarAction], report: SidecarReport) -> None:
    if not os.path.isdir(actions[0].root):
        return
    for action in actions:
        if isinstance(action, WriteSidecar):
            _write(action, report)
        else:
            _remove(action, report)


def _write(action: WriteSidecar, report: SidecarReport) -> None:
    path = action.path
    said = digest(action.fields)
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        _problem(report, action, f"cannot read it ({exc.strerror})")
        return
    record = action.recorded
    if record and st and (record.digest, record.size, record.mtime_ns) == (said, st.st_size, st.st_mtime_ns):
        return  # as packsync left it, and nothing new to say
    if st and not stat.S_ISREG(st.st_mode):
        _problem(report, action, "left alone: a link or not a file", notice=True)
        return
    try:
        existing = _read(path, st)
        data = render(action.fields, existing)
        if data != existing:
            if not _atomic_write(path, data, st):
                return  # someone else wrote it meanwhile: merged next time, never overwritten now
            report.written += 1
        st = path.stat()
    except XmpError as exc:
        _problem(report, action, f"not changed: {exc}")
        return
    except OSError as exc:
        _problem(report, action, f"cannot write it ({exc.strerror})")
        return
    report.records[action.file] = SidecarRecord(said, st.st_size, st.st_mtime_ns)


def _remove(action: RemoveSidecar, report: SidecarReport) -> None:
    if os.path.lexists(Path(action.root) / action.file):
        return  # still there (its content changed, say): the sidecar is brought up to date later
    report.forgotten.append(action.file)
    if not action.shared and remove_if_ours(sidecar_path(Path(action.root) / action.file, action.naming)):
        report.removed += 1


def _problem(report: SidecarReport, action: WriteSidecar, reason: str, *, notice: bool = False) -> None:
    report.problems.append(Problem(str(action.path.relative_to(action.root)), f"sidecar {reason}", notice))


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
    """The sidecar's bytes, at most what ``xmp`` parses (``XmpError`` past it, as ``st`` says; an ``OSError``
    when it grew since): never blocking on a FIFO or following a link put there since ``st`` was taken."""
    if st is None:
        return None
    if st.st_size > MAX_BYTES:
        raise XmpError(f"larger than {MAX_BYTES // (1024 * 1024)} MB")
    return read_regular(path, MAX_BYTES, follow=False)  # (a FIFO or link swapped in since the lstat is refused)


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
