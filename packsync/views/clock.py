"""Times as people read them: local, with the zone (``2026-12-07 09:43 CET``), and spans as how long ago
(``3 h``). Used by the text views and the page alike; the JSON documents keep ISO 8601 UTC
(``views.json.when``) and seconds, which are for programs.

A time read from the network or from a state written before it was checked may be past what a date can
hold (the year 9999, or this platform's ``time_t``): it is shown as not known, never a traceback.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

#: What converting a time past what a date can hold raises (by the size: ValueError, OverflowError, OSError).
OUT_OF_RANGE = (ValueError, OverflowError, OSError)


def utc(at: float | None) -> datetime | None:
    """``at`` (Unix time) as a UTC date and time; None if none, or past what one can hold."""
    if at is None:
        return None
    try:
        return datetime.fromtimestamp(at, UTC)
    except OUT_OF_RANGE:
        return None


def local_day(at: float) -> str | None:
    """``at``'s day in this machine's zone (``2026-12-07``); None if past what a date can hold."""
    try:
        return time.strftime("%Y-%m-%d", time.localtime(at))
    except OUT_OF_RANGE:
        return None


def local_time(at: float | None) -> str | None:
    """``at`` (Unix time) in this machine's zone (``TZ`` when set), to the minute, with the zone's name."""
    if at is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(at))


def ago(seconds: float) -> str:
    """A span as people say how long ago something was: ``12 s``, ``5 min``, ``3 h`` (to 47 h), ``3 days``."""
    seconds = max(0.0, seconds)  # (a clock a little ahead of the server's is "now")
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"
