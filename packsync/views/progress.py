"""A one-line progress display on a terminal: files hashed, uploaded, added, metadata settled.

It writes to stderr and only when stderr is a terminal; anywhere else (systemd, CI, a pipe) it
is silent and the structured logs tell the story.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

_ORDER = ("hashed", "uploaded", "added", "deleted", "metadata")


class Progress:
    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None, interval_s: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.counts: Counter[str] = Counter()
        self.totals: dict[str, int] = {}
        self.interval_s = interval_s
        self._shown_at = 0.0
        self._dirty = False

    def total(self, kind: str, count: int) -> None:
        self.totals[kind] = count

    def advance(self, kind: str, count: int = 1) -> None:
        self.counts[kind] += count
        now = time.monotonic()
        if self.enabled and now - self._shown_at >= self.interval_s:
            self._shown_at = now
            self._show()

    def _show(self) -> None:
        parts = []
        for kind in _ORDER:
            if kind in self.counts or kind in self.totals:
                total = self.totals.get(kind)
                parts.append(f"{kind} {self.counts[kind]}" + (f"/{total}" if total is not None else ""))
        self.stream.write("\r\x1b[2K" + " · ".join(parts))
        self.stream.flush()
        self._dirty = True

    def close(self) -> None:
        """Clear the line so that what follows starts on a clean one."""
        if self.enabled and self._dirty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._dirty = False
