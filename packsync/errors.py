"""The exceptions packsync raises, and the exit code each one ends a command with.

Errors are classified by what the caller should do about them, not by where they came from::

    PacksyncError                 exit 1 unless a subclass says otherwise
    ├── ConfigError               exit 2  the config (or the command line) is wrong; names the key
    ├── LockedError               exit 2  another packsync holds the state lock
    ├── StateError                exit 2  the state database is corrupt, foreign or too new
    ├── SafetyStop                exit 4  syncing this mapping would delete what it should not
    └── ApiError                          the Genviral API (or its storage) answered with an error
        ├── AuthError             exit 3  401/402/403: the key itself is refused; stop everything
        ├── TransientError                429, 5xx, timeouts, dropped connections: retry with backoff
        ├── UploadRejected                storage refused a presigned PUT (expired, signature): ask for a new URL
        ├── NotFound                      404: the pack or image is gone or out of the key's scope
        └── PermanentError                other 4xx, malformed answers: give up on this item

Lower-layer exceptions (httpx, sqlite) are translated into these in exactly one place each:
``client.py`` for HTTP and ``state.py`` for the database.
"""

from __future__ import annotations

from enum import IntEnum


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


class LockedError(PacksyncError):
    exit_code = ExitCode.USAGE


class StateError(PacksyncError):
    exit_code = ExitCode.USAGE


class SafetyStop(PacksyncError):
    exit_code = ExitCode.SAFETY


class ApiError(PacksyncError):
    """An error answer from the API or storage: HTTP status, error code and a short excerpt."""

    def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class AuthError(ApiError):
    exit_code = ExitCode.AUTH


class TransientError(ApiError):
    """Worth retrying after a pause; ``retry_after`` is the server's own hint in seconds, if any."""

    def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status=status, error_code=error_code)
        self.retry_after = retry_after


class UploadRejected(ApiError):
    pass


class NotFound(ApiError):
    pass


class PermanentError(ApiError):
    pass
