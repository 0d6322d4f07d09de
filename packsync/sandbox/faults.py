"""Fault injection for the sandbox: configuration and the per-request fault draw.

Owns :class:`Faults` (latency, random fault rate and kinds, seed) and :class:`FaultPlan`,
which decides for each request whether it gets a fault: scripted one-shot faults queued
with ``inject`` come first, then random faults at ``rate`` (API and storage only, never
CDN). The server module carries the chosen fault out.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

__all__ = ["Faults", "FaultPlan", "FAULT_KINDS", "AFTER_KINDS", "TRICKLE_KINDS"]

FAULT_KINDS = frozenset({
    "429", "429-bare", "500", "502", "503", "504", "reset",
    "500-after", "reset-after", "expire", "not-json", "422",
    "trickle-head", "trickle-body",
})
AFTER_KINDS = frozenset({"500-after", "reset-after"})
#: A server that answers one byte at a time, every ``Faults.trickle_s``, so that no read ever times out:
#: its head (which never ends), or the body of its real answer (after the work is done).
TRICKLE_KINDS = frozenset({"trickle-head", "trickle-body"})


@dataclass
class Faults:
    """Latency and random faults applied by a sandbox.

    ``latency_s`` is added to every API, storage and CDN request; ``rate`` is the
    probability that an API or storage request gets a fault drawn from ``kinds``; a trickling
    answer sends one byte every ``trickle_s``.
    """

    latency_s: float = 0.0
    trickle_s: float = 0.2
    rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "500", "reset")
    seed: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - FAULT_KINDS
        if unknown:
            raise ValueError(f"unknown fault kind(s): {sorted(unknown)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be between 0 and 1")


@dataclass
class _Scripted:
    kind: str
    method: str | None
    route: str | None
    remaining: int


def applicable(kind: str, method: str, route: str) -> bool:
    """Whether a fault kind makes sense for a request ("expire" is storage PUT only)."""
    return kind != "expire" or (route == "storage" and method == "PUT")


class FaultPlan:
    """Thread-safe source of the fault (or None) for each incoming request."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._scripted: list[_Scripted] = []
        self._lock = threading.Lock()

    def inject(self, kind: str, method: str | None = None, route: str | None = None,
               count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind: {kind!r}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._scripted.append(_Scripted(kind, method.upper() if method else None, route, count))

    def clear(self) -> None:
        with self._lock:
            self._scripted.clear()

    def draw(self, method: str, route: str) -> str | None:
        with self._lock:
            for s in self._scripted:
                if ((s.method is None or s.method == method)
                        and (s.route is None or s.route == route)
                        and applicable(s.kind, method, route)):
                    s.remaining -= 1
                    if s.remaining == 0:
                        self._scripted.remove(s)
                    return s.kind
            if route == "cdn" or self.faults.rate <= 0.0 or not self.faults.kinds:
                return None
            if self._rng.random() >= self.faults.rate:
                return None
            kind = self._rng.choice(self.faults.kinds)
            return kind if applicable(kind, method, route) else None
