"""A one-line progress display on a terminal, like ``rclone -P``: per phase (hashing, downloading,
uploading, adding, deleting, waiting for metadata) done/total, percent, rate and time left; and, next to
the file counts, the bytes sent of the bytes to send (and received), their rate over the last few seconds,
the time left and the bandwidth limit in force.

It writes to stderr and only when stderr is a terminal; anywhere else (systemd, CI, a pipe) it
is silent and the structured logs tell the story.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TextIO

_ORDER = ("hashed", "downloaded", "uploaded", "added", "deleted", "metadata")
#: The kinds that count bytes, and which side of the bandwidth limit (up, down) holds for each.
_BYTES = {"sent": 0, "received": 1}
#: The bytes' rate is theirs over this many seconds, not since the start: a limit changed, or a slow
#: first file, shows within a few seconds.
RATE_WINDOW_S = 5.0
#: A rate measured over less than this is not shown (the first chunks say nothing yet).
MIN_SPAN_S = 0.5


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02}m" if hours else f"{minutes}m{secs:02}s" if minutes else f"{secs}s"


def _size(count: float) -> str:
    """Bytes in binary units, to three figures: ``512 B``, ``1.5 KiB``, ``12.3 MiB``, ``5 MiB``; past a
    thousand PiB, ``8.88e+284 PiB`` (a limit may be that large: the line must still fit)."""
    value, unit = float(count), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, larger
    if abs(value) >= 1000 and unit == "PiB":
        return f"{value:.3g} {unit}"
    return f"{value:.0f} {unit}" if abs(value) >= 100 or unit == "B" else f"{value:.3g} {unit}"


class Progress:
    """The engine's ``ProgressObserver`` on a terminal. ``limits``, when a bandwidth limit is set, says the
    rates (up, down; None: none that way) in force now; ``clock`` is the monotonic one unless a test gives one."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None, interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.counts: Counter[str] = Counter()
        self.totals: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.current: str | None = None
        self.interval_s = interval_s
        self.clock = clock
        self.limits: Callable[[], tuple[float | None, float | None]] | None = None
        #: Per byte kind, (time, count so far) as it advanced, over the last ``RATE_WINDOW_S`` and one before.
        self._samples: dict[str, deque[tuple[float, int]]] = {kind: deque() for kind in _BYTES}
        self._shown_at = 0.0
        self._dirty = False

    def total(self, kind: str, count: int) -> None:
        self.totals[kind] = count

    def advance(self, kind: str, count: int = 1) -> None:
        now = self.clock()
        self.started.setdefault(kind, now)
        self.counts[kind] += count
        if kind in _BYTES:
            self._samples[kind].append((now, self.counts[kind]))
            self._window(kind, now)
        else:  # bytes go out beside a phase, they are not one
            self.current = kind
        if self.enabled and now - self._shown_at >= self.interval_s:
            self._shown_at = now
            self._show(now)

    def _window(self, kind: str, now: float) -> deque[tuple[float, int]]:
        """``kind``'s samples from the last one at least ``RATE_WINDOW_S`` old (or the first) on."""
        samples = self._samples[kind]
        while len(samples) >= 2 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()
        return samples

    def rate(self, kind: str, now: float) -> float | None:
        """Bytes a second of ``kind`` over the last ``RATE_WINDOW_S`` or so (None: too early to say)."""
        if not (samples := self._window(kind, now)):
            return None
        since, count = samples[0]
        span = now - since
        return max(0.0, (self.counts[kind] - count) / span) if span >= MIN_SPAN_S else None

    def _bytes(self, kind: str, now: float) -> str:
        done, total = self.counts[kind], self.totals.get(kind)
        part = f"{kind} {_size(done)}" + (f"/{_size(total)}" if total is not None else "")
        if total:
            part += f" ({100 * max(0, min(done, total)) // total}%)"
        if rate := self.rate(kind, now):
            part += f" {_size(rate)}/s"
            if total and done < total:
                part += f", {_duration((total - done) / rate)} left"
        if self.limits and (limit := self.limits()[_BYTES[kind]]) is not None:
            part += f" · limit {_size(limit)}/s"
        return part

    def line(self, now: float) -> str:
        """The line as shown: the phase in progress in full, the others as done/total, then the bytes."""
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
        parts += [self._bytes(kind, now) for kind in _BYTES if kind in self.counts or kind in self.totals]
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
