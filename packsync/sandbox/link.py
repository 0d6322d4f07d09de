"""The sandbox's network link: how fast storage PUT bodies come in and CDN bodies go out.

Owns :class:`LinkRate` (bytes per second per connection and in total; 0 = unlimited), the token
buckets that enforce it, and :class:`Link`, which the server passes every chunk of a throttled body
through. A body is read from the socket (or written to it) a chunk at a time, each chunk waiting for
its share of both buckets, so a client's send blocks as it would on a real uplink; API calls are not
throttled (their bodies are small, and latency models them). Standard library only.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["CHUNK", "Direction", "Link", "LinkRate", "parse_rate"]

Direction = Literal["up", "down"]

#: Bytes read from or written to the socket per step of a throttled body.
CHUNK = 64 * 1024
#: How far behind its schedule a bucket may fall and still catch up, as a real link's queue lets it: a
#: server thread the machine ran late (a busy core, the GIL) does not cost the link that time.
BURST_S = 0.02
#: rclone's suffixes (binary), and what a bare number means to it: KiB, as ``bandwidth_limit`` reads it.
_SUFFIXES = {"": 1 << 10, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_RATE_RE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<suffix>[bkmg]?)", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """Bytes per second from rclone's notation: ``"20M"`` (MiB/s), ``"512k"`` or ``"512"`` (KiB/s), ``"4096B"``
    (bytes/s); ``"0"``, ``"off"`` or ``""``: unlimited (0). ``ValueError`` with one sentence for anything else."""
    text = text.strip()
    if text.lower() in ("", "off"):
        return 0.0
    match = _RATE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: write bytes per second, e.g. 20M (MiB/s), 512k (KiB/s), "
                         "4096B or off")
    return float(match["number"]) * _SUFFIXES[match["suffix"].lower()]


@dataclass(frozen=True)
class LinkRate:
    """Bytes per second a body may move at: on each connection, and over all connections together.
    0 leaves that limit off."""

    per_connection: float = 0.0
    total: float = 0.0

    def __post_init__(self) -> None:
        if self.per_connection < 0 or self.total < 0:
            raise ValueError("a link rate is bytes per second, 0 or more")


class TokenBucket:
    """Bytes per second through one bucket, first come first served.

    Each ``book`` takes the next free span of the bucket's time (n ÷ rate seconds, starting no earlier
    than ``BURST_S`` before now) and says when that span ends; callers sleep until then, outside the
    lock. An idle bucket saves up no more than ``BURST_S`` of its rate, so any span of t seconds moves
    at most rate·(t + ``BURST_S``) bytes plus one chunk.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free_at = 0.0

    def book(self, n: int, rate: float, now: float) -> float:
        """The moment the ``n`` bytes booked now may have passed (``now`` when ``rate`` is 0: no limit)."""
        if rate <= 0:
            return now
        with self._lock:
            start = max(now - BURST_S, self._free_at)
            self._free_at = start + n / rate
            return self._free_at


class Link:
    """The link every throttled body crosses: a bucket shared by all connections, one per connection
    (handed out by :meth:`connection`), and the rates, which may change while bodies move."""

    def __init__(self, rate: LinkRate | None = None) -> None:
        self.rate = rate or LinkRate()
        self._shared = TokenBucket()
        self._moved_lock = threading.Lock()
        self._moved: dict[Direction, int] = {"up": 0, "down": 0}

    def set_rate(self, rate: LinkRate) -> None:
        """Apply ``rate`` to every chunk from now on, including those of bodies already moving."""
        self.rate = rate

    def connection(self) -> ConnectionLink:
        return ConnectionLink(self)

    def pass_chunk(self, own: TokenBucket, n: int, direction: Direction) -> None:
        """Wait until ``n`` bytes may have crossed, on their connection's bucket and the shared one."""
        rate, now = self.rate, time.monotonic()
        until = max(own.book(n, rate.per_connection, now), self._shared.book(n, rate.total, now))
        with self._moved_lock:
            self._moved[direction] += n
        if (wait := until - time.monotonic()) > 0:
            time.sleep(wait)

    def moved(self) -> dict[Direction, int]:
        """Bytes of throttled bodies so far: ``up`` (storage PUTs received), ``down`` (CDN bodies sent)."""
        with self._moved_lock:
            return dict(self._moved)


class ConnectionLink:
    """One connection's side of the link: its own bucket, the shared one behind it."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._own = TokenBucket()

    def passed(self, n: int, direction: Direction) -> None:
        self._link.pass_chunk(self._own, n, direction)
