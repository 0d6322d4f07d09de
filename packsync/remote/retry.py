"""The one backoff every retry in packsync uses: API requests, failing mappings, metadata polls.

Delays double from ``start_s`` up to ``cap_s``. ``jitter`` spreads them so that many clients (or
many mappings) do not retry in step: ``"full"`` draws from [0, delay] (AWS's "full jitter", right
for requests to one server), a fraction ``j`` draws from delay·[1 − j, 1 + j], and 0 keeps the delay
exact (polling, where regular rounds are the point).
"""

from __future__ import annotations

import random
from typing import Literal

import msgspec


class Backoff(msgspec.Struct, frozen=True):
    start_s: float
    cap_s: float
    jitter: float | Literal["full"] = 0.0

    def delay(self, attempt: int, hint_s: float | None = None) -> float:
        """The pause before retry number ``attempt`` (1 for the first); a server's ``hint_s`` wins,
        within four times the cap."""
        if hint_s is not None:
            return min(max(hint_s, 0.0), self.cap_s * 4)
        base = min(self.cap_s, self.start_s * 2 ** max(attempt - 1, 0))
        if self.jitter == "full":
            return random.uniform(0, base)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else float(base)


class Retrying(msgspec.Struct):
    """A backoff with its own attempt count, for a loop that retries one thing until it works."""

    backoff: Backoff
    attempt: int = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return self.backoff.delay(self.attempt)

    def reset(self) -> None:
        self.attempt = 0
