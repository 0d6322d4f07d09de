"""How the engine reports progress: a small observer it calls, which a view implements.

The engine names phases (``hashed``, ``downloaded``, ``uploaded``, ``added``, ``deleted``,
``metadata``) and counts; how they are shown (``views/progress.py``'s terminal line, or nothing) is
the view's. The engine never imports a view.

Two kinds count bytes, not items: ``sent`` (the bodies of uploads: ``total("sent", bytes to send)`` once the
plan is known, ``advance("sent", n)`` as each chunk goes out) and ``received`` (download bodies, the same way;
a total only when it is known). A retried attempt's bytes are taken back with a negative ``advance``, so
the count never passes the total.
"""

from __future__ import annotations

from typing import Protocol


class ProgressObserver(Protocol):
    def total(self, kind: str, count: int) -> None:
        """``count`` items of ``kind`` are to be done (this run, so far)."""

    def advance(self, kind: str, count: int = 1) -> None:
        """``count`` more items of ``kind`` are done."""


class _Quiet:
    """Progress nobody watches."""

    def total(self, kind: str, count: int) -> None:
        pass

    def advance(self, kind: str, count: int = 1) -> None:
        pass


QUIET: ProgressObserver = _Quiet()
