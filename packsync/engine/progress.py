"""How the engine reports progress: a small observer it calls, which a view implements.

The engine names phases (``hashed``, ``downloaded``, ``uploaded``, ``added``, ``deleted``,
``metadata``) and counts; how they are shown (``views/progress.py``'s terminal line, or nothing) is
the view's. The engine never imports a view.
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
