"""How many bytes a second may pass, and the waiting that keeps them to it.

It owns the ``Throttle`` the transport hands every chunk of a storage PUT and of a download to, the
``UNLIMITED`` one (the default), ``[genviral] bandwidth_limit``'s syntax — rclone's ``--bwlimit``, read as
rclone reads it — as a value (``BandwidthLimit``), and the ``Limiter`` that keeps a process's transfers to
it: one token bucket per direction, shared by every transfer, that reads the timetable again when one
of its entries' times comes. It knows nothing of HTTP: the transport calls ``take``.

The syntax (rclone's; sizes are binary, a bare number is KiB, as rclone reads it):

- ``"20M"``: 20 MiB/s each way; ``"512k"``, ``"1.5M"``, ``"1G"``, ``"4096B"`` (bytes), ``"100"`` (100 KiB);
- ``"off"`` or ``"0"`` (or ``""``): no limit;
- ``"10M:100M"``: 10 MiB/s up (uploads), 100 MiB/s down (downloads); either side may be ``off``;
- ``"08:00,2M 19:00,off"``: a timetable, entries apart by spaces (or ``;``): from 08:00 2 MiB/s, from 19:00
  none, every day; ``"Mon-08:00,1M Sat-00:00,off"``: an entry with a weekday holds on that day only. The
  entry in force is the latest one at or before now in the week; before the week's first, the week's last
  (so ``"08:00,2M 19:00,off"`` is off from 19:00 to 08:00 the next morning). Times are local.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal, NamedTuple, Protocol

Direction = Literal["up", "down"]


class Throttle(Protocol):
    """What every chunk of a storage PUT and of a download passes before it goes on."""

    async def take(self, n: int, direction: Direction) -> None:
        """Return once ``n`` bytes may pass ``direction`` ("up": uploads, "down": downloads)."""


class _Unlimited:
    """No limit: every ``take`` returns at once."""

    async def take(self, n: int, direction: Direction) -> None:
        return None


UNLIMITED: Throttle = _Unlimited()

#: rclone's size suffixes (binary), and what a bare number means to it: KiB.
_MULTIPLIERS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
#: ASCII digits only (``re.ASCII``): rclone reads no others, and ``float`` would take ``"٥"`` for 5.
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?:(?P<suffix>[kmgtp])(?:i|ib)?|(?P<bytes>b))?",
                   re.IGNORECASE | re.ASCII)
_WEEKDAYS = {name: day for day, names in enumerate((("mon", "monday"), ("tue", "tuesday"), ("wed", "wednesday"),
                                                     ("thu", "thursday"), ("fri", "friday"), ("sat", "saturday"),
                                                     ("sun", "sunday")))
             for name in names}
_HHMM = re.compile(r"(?P<hour>[01]\d|2[0-3]):(?P<minute>[0-5]\d)", re.ASCII)
_WEEK_MINUTES = 7 * 24 * 60


class Rates(NamedTuple):
    """Bytes per second up (uploads) and down (downloads); None: no limit that way."""

    up: float | None
    down: float | None


NO_LIMIT = Rates(None, None)


class _Entry(NamedTuple):
    minute: int  # of the week, from Monday 00:00
    rates: Rates


def _rate(text: str) -> float | None:
    """One side of a rate: bytes per second, None for no limit; ValueError saying what is wrong."""
    if text.lower() == "off":
        return None
    found = _SIZE.fullmatch(text)
    if not found:
        raise ValueError(f"{text!r} is not a rate (write a size like 512k, 20M or 1G a second, or off)")
    unit = 1 if found["bytes"] else _MULTIPLIERS[(found["suffix"] or "k").lower()]
    value = float(found["number"]) * unit
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a rate (a number that large is no limit: write off)")
    return value or None  # 0 is no limit, as in rclone


def _rates(text: str) -> Rates:
    up, colon, down = text.partition(":")
    if colon and ":" in down:
        raise ValueError(f"{text!r} is not a rate (one ':' at most, between the upload and the download rate)")
    return Rates(_rate(up), _rate(down) if colon else _rate(up))


def _when(text: str) -> list[int]:
    """``HH:MM`` (every day) or ``Day-HH:MM`` as the minutes of the week it stands for."""
    day, dash, hhmm = text.rpartition("-")
    if not (clock := _HHMM.fullmatch(hhmm)):
        raise ValueError(f"{text!r} is not a time (write HH:MM from 00:00 to 23:59, or Mon-HH:MM)")
    minute = int(clock["hour"]) * 60 + int(clock["minute"])
    if not dash:
        return [d * 24 * 60 + minute for d in range(7)]
    if day.lower() not in _WEEKDAYS:
        raise ValueError(f"{day!r} is not a weekday (write Mon, Tue, Wed, Thu, Fri, Sat or Sun)")
    return [_WEEKDAYS[day.lower()] * 24 * 60 + minute]


class BandwidthLimit:
    """A parsed ``bandwidth_limit``: the rates in force at any time (``rate_at``) and when they next change."""

    def __init__(self, text: str = "") -> None:
        """Parse ``text`` (rclone's ``--bwlimit`` syntax, see the module); ValueError saying what is wrong."""
        self.text = text.strip()
        tokens = self.text.replace(";", " ").split()
        if not tokens:
            self._entries = [_Entry(0, NO_LIMIT)]
        elif len(tokens) == 1 and "," not in tokens[0]:
            self._entries = [_Entry(0, _rates(tokens[0]))]
        else:
            entries: dict[int, Rates] = {}
            for token in tokens:
                when, comma, rates = token.partition(",")
                if not comma or "," in rates:
                    raise ValueError(f"{token!r} is not a timetable entry (write HH:MM,RATE or Mon-HH:MM,RATE, "
                                     "apart by spaces)")
                for minute in _when(when):
                    entries[minute] = _rates(rates)  # a later entry for the same minute wins, as it does in rclone
            self._entries = [_Entry(minute, rates) for minute, rates in sorted(entries.items())]

    def __repr__(self) -> str:
        return f"BandwidthLimit({self.text!r})"

    @property
    def unlimited(self) -> bool:
        return all(entry.rates == NO_LIMIT for entry in self._entries)

    def _index_at(self, at: datetime) -> int:
        minute = at.weekday() * 24 * 60 + at.hour * 60 + at.minute
        found = -1  # before the week's first entry: the week's last is still in force
        for index, entry in enumerate(self._entries):
            if entry.minute <= minute:
                found = index
        return found % len(self._entries)

    def rate_at(self, at: datetime) -> Rates:
        """The rates (up, down) in force at ``at`` (local time)."""
        return self._entries[self._index_at(at)].rates

    def next_change(self, at: datetime) -> datetime | None:
        """When the entry after the one in force at ``at`` starts; None when one entry holds all week."""
        if len(self._entries) == 1:
            return None
        following = self._entries[(self._index_at(at) + 1) % len(self._entries)]
        week_start = (at - timedelta(days=at.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        starts = week_start + timedelta(minutes=following.minute)
        return starts if starts > at else starts + timedelta(minutes=_WEEK_MINUTES)


#: How long the rates in force are kept before the time of day is read again, at most.
RECHECK_S = 60.0
#: The burst a bucket holds at most: this long at its rate (a transfer starting never bursts past the limit
#: by more), and no slower to refill than a chunk is to send.
BURST_S = 0.1


class _Bucket:
    """One direction's tokens (bytes that may pass), taken in the order asked for (``asyncio.Lock`` is FIFO):
    concurrent transfers take turns chunk by chunk, so they share the rate."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.turn = asyncio.Lock()
        self.tokens = 0.0
        self.stamp: float | None = None

    def refill(self, rate: float) -> None:
        now = self.clock()
        if self.stamp is None:
            self.tokens = rate * BURST_S
        else:
            self.tokens = min(rate * BURST_S, self.tokens + rate * (now - self.stamp))
        self.stamp = now


class Limiter:
    """A process's bandwidth limit: every transfer's chunks pass ``take``, one bucket per direction.

    ``take(n)`` spends ``n`` tokens (the bucket may go into debt for a chunk larger than the burst) and waits
    until the debt is paid at the rate in force; the wait ends early when the timetable's next entry
    starts, and goes on at the new rate (or ends, at ``off``). ``now`` (local wall time, for the timetable)
    and ``clock`` (monotonic seconds) are the real ones unless a test gives others.
    """

    def __init__(self, limit: BandwidthLimit, *, now: Callable[[], datetime] = datetime.now,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.now = now
        self.clock = clock
        self._buckets = {"up": _Bucket(clock), "down": _Bucket(clock)}
        #: The rates in force, and until when (``clock``) they surely are: a chunk's ``take`` reads no time of day.
        self._in_force, self._until = NO_LIMIT, -math.inf

    def __repr__(self) -> str:
        return f"Limiter({self.limit.text!r})"

    def rates(self) -> Rates:
        """The rates in force now."""
        return self._rates()[0]

    def _rates(self) -> tuple[Rates, float]:
        """The rates in force, and the seconds they surely are (to the timetable's next entry, RECHECK_S at most:
        the time of day may jump, with daylight saving time or a clock set right)."""
        clock = self.clock()
        if clock >= self._until:
            now = self.now()
            change = self.limit.next_change(now)
            lasting = RECHECK_S if change is None else min(RECHECK_S, (change - now).total_seconds())
            self._in_force, self._until = self.limit.rate_at(now), clock + max(0.0, lasting)
        return self._in_force, self._until - clock

    def _rate(self, direction: Direction) -> tuple[float | None, float]:
        """The rate in force one way, and the seconds before it is read again."""
        rates, lasting = self._rates()
        return rates.up if direction == "up" else rates.down, lasting

    async def take(self, n: int, direction: Direction) -> None:
        bucket = self._buckets[direction]
        rate, _ = self._rate(direction)
        if rate is None and not bucket.turn.locked():
            bucket.stamp = None  # back under a limit later, it starts with a burst's tokens
            return
        async with bucket.turn:
            rate, change_s = self._rate(direction)
            if rate is None:
                bucket.stamp = None
                return
            bucket.refill(rate)
            bucket.tokens -= n
            while bucket.tokens < 0:
                wait_s = -bucket.tokens / rate
                try:
                    await asyncio.sleep(min(wait_s, change_s + 0.001))
                except asyncio.CancelledError:  # these bytes never pass: the transfers after them owe nothing
                    bucket.tokens += n
                    raise
                bucket.refill(rate)  # the time slept was at the old rate
                rate, change_s = self._rate(direction)
                if rate is None:
                    bucket.stamp = None
                    return
