"""The pack resolver: which Genviral pack a mapping syncs into — found by id or name, created, remembered.

A mapping names its pack by id (``pack_id``, which must exist) or by name (``pack``: the one the
state remembers for that name, else the oldest of the key's own packs with exactly that name, else
a new one). What was found is remembered per mapping in the state, so later runs read the pack by
id. Every other module asks here; none looks the pack up on its own.

A 404 for a remembered pack may be a glitch: it is believed only after a second look by id, after
a pause, and a look by name. Only then is the pack taken as gone (deleted in the web app?) and a
new one created; the records of the old one are dropped once the new one exists, never before.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from packsync.config import MappingConfig
from packsync.errors import AmbiguousError, MalformedAnswer, NotFound
from packsync.logs import get_logger
from packsync.model import PackRead

#: How long to wait before looking again at a pack that answered 404.
CONFIRM_PAUSE_S = 1.0

if TYPE_CHECKING:  # the views read ``recorded_pack_id`` without loading an HTTP client
    from packsync.remote.genviral import GenviralClient
    from packsync.state.store import State


def recorded_pack_id(state: State, mapping: MappingConfig) -> str | None:
    """The pack id ``mapping`` syncs into as far as the state knows — only while the config still
    names that pack (a renamed ``pack`` is another pack)."""
    if mapping.pack_id is not None:
        return mapping.pack_id
    record = state.mappings.get(mapping.label)
    return record.pack_id if record and record.pack_id and record.pack_name == mapping.pack else None


class PackResolver:
    def __init__(self, api: GenviralClient, state: State, *, remember: bool = True) -> None:
        self.api = api
        self.state = state
        self.remember = remember
        self.log = get_logger()
        #: Per mapping label, the remembered pack found gone this run (its records go once a new one exists).
        self.gone: dict[str, str] = {}
        #: Per mapping label, what the user should hear about its pack this run.
        self.notices: dict[str, str] = {}

    def start_run(self) -> None:
        """A new run: what the last one had to say about its packs is said."""
        self.notices.clear()

    async def read(self, mapping: MappingConfig) -> PackRead | None:
        """The mapping's pack as the API shows it now (its images decoded when asked for); None when it is
        to be created.

        Raises ``NotFound`` for a ``pack_id`` that is not there, and the client's errors otherwise.
        """
        remote: PackRead | None
        if mapping.pack_id is not None:
            try:
                remote = await self.api.read_pack(mapping.pack_id)
            except NotFound as exc:
                raise NotFound(f"pack_id {mapping.pack_id} not found, or outside the key's scope", method=exc.method,
                               route=exc.route, status=exc.status, error_code=exc.error_code) from None
        else:
            remote = await self._by_name(mapping)
        if remote is not None:
            self._remember(mapping.label, remote.pack_id, mapping.pack or remote.name)
        return remote

    async def _by_name(self, mapping: MappingConfig) -> PackRead | None:
        name = mapping.pack or ""
        remembered = recorded_pack_id(self.state, mapping)
        if remembered:
            try:
                return await self.api.read_pack(remembered)
            except NotFound:
                await asyncio.sleep(CONFIRM_PAUSE_S)
            try:
                return await self.api.read_pack(remembered)
            except NotFound:
                self.gone[mapping.label] = remembered
        found = await self._oldest_named(name)
        if remembered and not found:
            self.notices[mapping.label] = (f"the pack {name!r} ({remembered}) is gone (deleted in the web app?); "
                                           "a new one is created")
            self.log.warning("the pack is gone (deleted in the web app?); it will be created again", pack=name,
                             pack_id=remembered)
        return await self.api.read_pack(found) if found else None

    async def _oldest_named(self, name: str) -> str | None:
        candidates = [p for p in await self.api.list_packs(search=name) if p.name == name and not p.is_public]
        if len(candidates) > 1:
            self.log.warning("several packs have this name; using the oldest", pack=name, count=len(candidates))
        return min(candidates, key=lambda p: p.created_at).pack_id if candidates else None

    async def create(self, label: str, name: str) -> str:
        """Create the pack of the mapping labelled ``label``, exactly once even when the answer is lost,
        and remember it."""
        try:
            pack_id = await self.api.create_pack(name)
        except (AmbiguousError, MalformedAnswer) as exc:
            # The server may have created it before failing, or created it and answered badly: look
            # before creating another.
            found = await self._oldest_named(name)
            if found is None and isinstance(exc, MalformedAnswer):
                raise
            pack_id = found or await self.api.create_pack(name)
        self._remember(label, pack_id, name)
        self.log.info("pack created", pack=name, pack_id=pack_id)
        return pack_id

    def _remember(self, label: str, pack_id: str, name: str) -> None:
        record = self.state.mappings.get(label)
        if not self.remember or (record and record.pack_id == pack_id and record.pack_name == name):
            return
        self.state.mappings.save(label, pack_id=pack_id, pack_name=name)
        gone = self.gone.pop(label, None)
        if gone and gone != pack_id:
            self.state.images.forget(gone, owner=label)
