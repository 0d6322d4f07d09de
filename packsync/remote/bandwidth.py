"""How many bytes a second may pass, and the waiting that keeps them to it.

It owns the ``Throttle`` the transport hands every chunk of a storage PUT and of a download to, and the
``UNLIMITED`` one (the default). It knows nothing of HTTP: the transport calls ``take``.
"""

from __future__ import annotations

from typing import Literal, Protocol


class Throttle(Protocol):
    async def take(self, n: int, direction: Literal["up", "down"]) -> None: ...  # waits until n bytes may pass


class _Unlimited:
    """No limit: every ``take`` returns at once."""

    async def take(self, n: int, direction: Literal["up", "down"]) -> None:
        return None


UNLIMITED: Throttle = _Unlimited()
