"""SIGHUP's two halves that are not the schedule's: reading the config (and keys) again, all or nothing,
and closing the HTTP transport a changed ``[genviral]`` section or key replaced once nothing uses it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from packsync.app import read_api_token
from packsync.config import Config, load_config, read_token
from packsync.logs import register_secret
from packsync.remote.transport import Transport


def reread(config_path: Path) -> tuple[Config, str]:
    """The config and the Genviral key, read again; raises the ``PacksyncError`` that stops the reload."""
    config = load_config(config_path)
    token = read_token(config.genviral)
    for api in sorted(config.apis()):
        read_api_token(config, api)  # a missing key is found here, not half-way through the reload
    register_secret(token)
    return config, token


class Retiring:
    """Transports a reload replaced: each closes once the metadata round still using it is over."""

    def __init__(self) -> None:
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """How many are still waiting to close."""
        return len(self._closing)

    def add(self, transport: Transport) -> None:
        task = asyncio.create_task(self._close_later(transport))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)  # closed: nothing left to keep

    async def _close_later(self, transport: Transport) -> None:
        try:
            await transport.retire()
        finally:  # a daemon stopping meanwhile closes it now
            await transport.aclose()

    async def close(self) -> None:
        """The daemon stops: close them all now."""
        closing = list(self._closing)
        for task in closing:
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
