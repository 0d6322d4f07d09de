"""Times as people read them: local, with the zone (``2026-12-07 09:43 CET``). One function, used by the
text views and the page's ``clock`` filter alike; the JSON documents keep ISO 8601 UTC (``views.json.when``),
which is for programs."""

from __future__ import annotations

import time


def local_time(at: float | None) -> str | None:
    """``at`` (Unix time) in this machine's zone (``TZ`` when set), to the minute, with the zone's name."""
    if at is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(at))
