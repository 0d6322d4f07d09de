"""Every exception packsync raises, and the exit code each one ends a command with.

Errors are classified by what the caller should do about them, not by where they came from::

    PacksyncError                 exit 1 unless a subclass says otherwise
    ├── ConfigError               exit 2  the config (or the command line) is wrong; names the key
    │   └── PackNotVisible                a mapping's pack_id is no pack of the key: that mapping's alone
    ├── LockedError               exit 2  another packsync holds the state lock
    ├── StateError                exit 2  the state database is corrupt, foreign, too new or not writable
    │   └── StateUnavailable      exit 2  locked by another program, disk full, I/O error, a shared
    │       │                             state's server away: may pass, so the daemon waits and tries again
    │       └── LeaseLost                 this site's hold on a pack ran out (a shared state)
    ├── SourceError                       a source of content could not be read
    │   ├── SourceUnavailable             the whole source (a mapped folder) is missing or unreadable
    │   ├── ItemChanged                   one item's bytes are no longer those that were listed
    │   ├── XmpError                      a sidecar that is not an XMP packet packsync can read: left alone
    │   ├── PrepareError                  an image that cannot be prepared for upload (corrupt, hostile, too large)
    │   └── LinkInTheWay                  a link below a pull's folder: nothing is written or deleted through it
    └── ApiError                          an API (Genviral's, its storage, Astria's) or a download failed
        ├── AuthError             exit 3  401/402/403: the key itself is refused; stop everything
        ├── TransientError                429, 5xx, timeouts, dropped connections: retry with backoff
        │   └── AmbiguousError            …after which the server may have done the work: look first
        │       └── Stalled               an answer trickling in too slowly to finish: not retried this run
        ├── UploadRejected                storage refused a presigned PUT (expired, signature): ask again
        ├── NotFound                      404: the pack or image is gone or out of the key's scope
        └── PermanentError                other 4xx: give up on this item
            └── MalformedAnswer           an answer that is not what the API documents

An ``ApiError`` carries what a decision needs as fields, never in its text: the request's ``method``
and ``route`` (a template such as ``/packs/{id}``, never an id or a URL), the HTTP ``status`` (None: no
answer), the API's ``error_code`` and the payload ``fields`` it named as wrong. Its message is the one
sentence the user reads.

Lower-layer exceptions are translated into these in exactly one place each: httpx2's exceptions and
HTTP statuses in ``remote/wire.py``, malformed JSON answers in ``remote/answers.py``, SQLite's in
``state/translate.py``, the file system's in ``sources/folder.py``.
"""

from __future__ import annotations

import errno
from enum import IntEnum
from typing import Literal, TypeVar

E = TypeVar("E", bound=BaseException)


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    AUTH = 3
    SAFETY = 4


class PacksyncError(Exception):
    """Base of every error packsync reports to the user in one sentence."""

    exit_code: ExitCode = ExitCode.SOME_FAILED


class ConfigError(PacksyncError):
    exit_code = ExitCode.USAGE


class PackNotVisible(ConfigError):
    """A mapping's ``pack_id`` that the key cannot see (404): a mistake in the config, which stops that
    mapping only. Its sentence is what follows the key (``mappings[1].pack_id: …``), named by the sync."""

    def __init__(self, pack_id: str) -> None:
        super().__init__(f"no pack {pack_id} is visible to this key (404); `packsync packs` lists the key's packs.")
        self.pack_id = pack_id


class LockedError(PacksyncError):
    exit_code = ExitCode.USAGE


class DaemonError(PacksyncError):
    """What the running daemon answered a command's request with (over its control socket), in its own
    sentence and exit code."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.SOME_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DaemonStarting(DaemonError):
    """The daemon is still opening its state (it waits out a busy or full one)."""


class StateError(PacksyncError):
    exit_code = ExitCode.USAGE


class StateUnavailable(StateError):
    """The state cannot be used right now (locked by another program, disk full): it may pass.

    ``reason`` says which trouble it is, for a decision (a daemon says each trouble once): ``"locked"``,
    ``"full"``, ``"io"``, ``"replaced"`` (the file or its lock was deleted or replaced: packsync stops
    writing to it; a daemon starts on the new one), ``"unreachable"`` (a shared state's server) or
    ``"lease"`` (``LeaseLost``)."""

    def __init__(self, message: str, *,
                 reason: Literal["locked", "full", "io", "replaced", "unreachable", "lease"]) -> None:
        super().__init__(message)
        self.reason = reason


class LeaseLost(StateUnavailable):
    """This site's lease on a pack (``what``: "pack X", say) ran out or was taken by another site, in a
    shared state: this sync writes nothing more (it may pass: the next sync takes the lease again, and
    resumes from what was recorded)."""

    def __init__(self, site: str, what: str) -> None:
        super().__init__(f"site {site}'s hold on {what} ran out (another site may hold it now); this sync "
                         "stops writing, and the next one resumes.", reason="lease")
        self.site, self.what = site, what


class SourceError(PacksyncError):
    pass


class SourceUnavailable(SourceError):
    """The source itself (a mapped folder) is missing, not a folder, or unreadable."""


class ItemChanged(SourceError):
    """An item's bytes are no longer those its listing hashed."""


#: Why an item whose bytes changed after its scan is not synced now (the sources' and the preparer's word).
CHANGED_SINCE_SCAN = "changed since it was scanned; it will be synced on the next run"


class XmpError(SourceError):
    """A sidecar packsync cannot read as an XMP packet: it is left as it is, and reported."""


class PrepareError(SourceError):
    """An image packsync cannot prepare for upload (``packsync/prepare``): corrupt, hostile, too large, or a
    form it does not edit. A per-file problem; its text is the one sentence the user reads."""


class LinkInTheWay(SourceError):
    """A symbolic link where a pull would go below its folder: skipped, never followed. ``where`` is its
    path, relative to the folder."""

    def __init__(self, where: str) -> None:
        super().__init__(f"{where} is a symbolic link: nothing is written or deleted through it")
        self.where = where


class ApiError(PacksyncError):
    """A failed request: an error answer from an API or storage, or no answer at all (``status`` None)."""

    def __init__(self, message: str, *, method: str | None = None, route: str | None = None,
                 status: int | None = None, error_code: str | None = None, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.method = method
        self.route = route
        self.status = status
        self.error_code = error_code
        self.fields = fields


class AuthError(ApiError):
    exit_code = ExitCode.AUTH


class TransientError(ApiError):
    """Worth retrying after a pause; ``retry_after`` is the server's own hint in seconds, if any."""

    def __init__(self, message: str, *, method: str | None = None, route: str | None = None,
                 status: int | None = None, error_code: str | None = None, fields: tuple[str, ...] = (),
                 retry_after: float | None = None) -> None:
        super().__init__(message, method=method, route=route, status=status, error_code=error_code, fields=fields)
        self.retry_after = retry_after


class AmbiguousError(TransientError):
    """A transient failure after which the server may or may not have done the work."""


class Stalled(AmbiguousError):
    """An answer (a download's, an API's) that trickles in too slowly to finish: given up for this run,
    tried again next run. Its head came: the server may have done the work."""


class UploadRejected(ApiError):
    pass


class NotFound(ApiError):
    pass


class PermanentError(ApiError):
    pass


class MalformedAnswer(PermanentError):
    """The API answered, but not with what its documentation promises (a missing id, a wrong type)."""


#: What the file system said, in a user's words, where the C library's would mislead or say too little.
_FILE_SYSTEM_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied (check the owner and mode of the file and of its folder)",
    errno.EPERM: "permission denied (check the owner and mode of the file and of its folder)",
    errno.EMFILE: "too many open files (raise the limit: ulimit -n, or LimitNOFILE= for the service)",
    errno.ENFILE: "too many open files on this system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
}


def file_system_reason(code: int | None) -> str:
    """Why the file system refused, for a sentence: a read-only mount, a full disk, too many open files
    and a refusal are each named as what they are (the owner and mode are no answer to a read-only
    mount)."""
    return _FILE_SYSTEM_REASONS.get(code or 0, "an error of the file system")


def first_error(group: BaseExceptionGroup[E]) -> E:
    """The first leaf of a (possibly nested) exception group: concurrent work that failed for one
    reason (a refused key, an unusable state) is reported in one sentence, not as a group."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first
