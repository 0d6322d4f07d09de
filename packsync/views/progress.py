"""A one-line progress display on a terminal, like ``rclone -P``: per phase (hashing, downloading,
uploading, adding, deleting, waiting for metadata) done/total, percent, rate and time left.

It writes to stderr and only when stderr is a terminal; anywhere else (systemd, CI, a pipe) it
is silent and the structured logs tell the story.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

_ORDER = ("hashed", "downloaded", "uploaded", "added", "deleted", "metadata")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02}m" if hours else f"{minutes}m{secs:02}s" if minutes else f"{secs}s"


class Progress:
    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None, interval_s: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.counts: Counter[str] = Counter()
        self.totals: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.current: str | None = None
        self.interval_s = interval_s
        self._shown_at = 0.0
        self._dirty = False

    def total(self, kind: str, count: int) -> None:
        self.totals[kind] = count

    def advance(self, kind: str, count: int = 1) -> None:
        now = time.monotonic()
        self.started.setdefault(kind, now)
        self.counts[kind] += count
        self.current = kind
        if self.enabled and now - self._shown_at >= self.interval_s:
            self._shown_at = now
            self._show(now)

    def line(self, now: float) -> str:
        """The line as shown: the phase in progress in full, the others as done/total."""
        parts = []
        for kind in _ORDER:
            if kind not in self.counts and kind not in self.totals:
                continue
            done, total = self.counts[kind], self.totals.get(kind)
            part = f"{kind} {done}" + (f"/{total}" if total is not None else "")
            if kind == self.current:
                elapsed = now - self.started.get(kind, now)
                rate = done / elapsed if elapsed >= 0.5 else None
                if total:
                    part += f" ({100 * done // total}%)"
                if rate:
                    part += f" {rate:.1f}/s" if rate < 10 else f" {rate:.0f}/s"
                    if total and done < total:
                        part += f", {_duration((total - done) / rate)} left"
            parts.append(part)
        return " · ".join(parts)

    def _show(self, now: float) -> None:
        self.stream.write("\r\x1b[2K" + self.line(now))
        self.stream.flush()
        self._dirty = True

    def close(self) -> None:
        """Clear the line so that what follows starts on a clean one."""
        if self.enabled and self._dirty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._dirty = False
