"""The pack resolver: which Genviral pack a mapping syncs into — found by id or name, created, remembered.

A mapping names its pack by id (``pack_id``, which must exist) or by name (``pack``: the one the
state remembers for that name, else the oldest of the key's own packs with exactly that name, else
a new one). What was found is remembered per mapping in the state, so later runs read the pack by
id. Every other module asks here; none looks the pack up on its own.

Reading writes nothing: ``read`` says what to remember (a ``RememberPack`` for the plan), and the
executor records it — and a pack created, through ``create`` — once the API confirmed it.

Names are compared as Genviral stores them (``config.pack_name``: trimmed). Two clients that find no pack
of a name at the same moment both create one: right after creating, the packs of the name are listed
again: the oldest stays (``_first_of``); if that is another, the one just created, still empty, is deleted.

A 404 for a remembered pack may be a glitch: it is believed only after a second look by id, after
a pause, and a look by name. Only then is the pack taken as gone (deleted in the web app?) and a
new one created; the records of the old one are dropped once the new one exists, never before.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from packsync.config import MappingConfig, pack_name
from packsync.engine.actions import RememberPack
from packsync.errors import (
    AmbiguousError,
    MalformedAnswer,
    NotFound,
    PackNotVisible,
    PermanentError,
    Stalled,
    TransientError,
)
from packsync.logs import get_logger
from packsync.mappings import recorded_pack_id
from packsync.model import PackRead, PackSummary

#: How long to wait before looking again at a pack that answered 404.
CONFIRM_PAUSE_S = 1.0

if TYPE_CHECKING:  # types only: the client and the state are opened by whoever runs these
    from packsync.remote.genviral import GenviralClient
    from packsync.state.store import State


class Resolved(msgspec.Struct, frozen=True):
    """A mapping's pack as found: the pack read (None: it is to be created), what the state should
    remember of it, the remembered pack found deleted (its records go once another exists), and what
    the user should hear about it."""

    pack: PackRead | None
    remember: RememberPack | None = None
    gone: str | None = None
    notice: str | None = None


class Created(msgspec.Struct, frozen=True):
    """The pack ``create`` leaves the mapping with: the one it created, or (``raced``) an older one of the
    same name that another client created at the same moment."""

    pack_id: str
    raced: bool = False


def _age(pack: PackSummary) -> tuple[datetime, str]:
    """A pack's place among packs of its name: when it was created (a date not as documented: last), its id."""
    try:
        created = datetime.fromisoformat(pack.created_at)
    except ValueError:
        created = datetime.max
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created, pack.pack_id


class PackResolver:
    def __init__(self, api: GenviralClient, state: State) -> None:
        self.api = api
        self.state = state
        self.log = get_logger()

    async def read(self, mapping: MappingConfig) -> Resolved:
        """The mapping's pack as the API shows it now (its images decoded when asked for), and what to
        remember of it. Writes nothing.

        Raises ``PackNotVisible`` for a ``pack_id`` that is not there (believed at once: an id the config
        names is no remembered pack that may be glitching), and the client's errors otherwise.
        """
        if mapping.pack_id is not None:
            try:
                remote = await self.api.read_pack(mapping.pack_id)
            except NotFound:
                raise PackNotVisible(mapping.pack_id) from None
            return Resolved(remote, self._remember(mapping.label, remote.pack_id, mapping.pack or remote.name))
        return await self._by_name(mapping)

    async def named(self, mapping: MappingConfig) -> str | None:
        """The id of the pack a mapping's name gives now, if the key has one (one read; nothing resolved)."""
        return await self._oldest_named(mapping.pack) if mapping.pack_id is None and mapping.pack else None

    async def _by_name(self, mapping: MappingConfig) -> Resolved:
        name = mapping.pack or ""
        remembered = recorded_pack_id(self.state, mapping)
        gone = None
        if remembered:
            try:
                return Resolved(await self.api.read_pack(remembered))
            except NotFound:
                await asyncio.sleep(CONFIRM_PAUSE_S)
            try:
                return Resolved(await self.api.read_pack(remembered))
            except NotFound:
                gone = remembered
        found = await self._oldest_named(name)
        notice = None
        if remembered and not found:
            notice = f"the pack {name!r} ({remembered}) is gone (deleted in the web app?); a new one is created"
            self.log.warning("the pack is gone (deleted in the web app?); it will be created again", pack=name,
                             pack_id=remembered)
        if not found:
            return Resolved(None, gone=gone, notice=notice)
        remote = await self.api.read_pack(found)
        return Resolved(remote, self._remember(mapping.label, remote.pack_id, name, gone), gone)

    async def _oldest_named(self, name: str) -> str | None:
        candidates = await self._named(name)
        if len(candidates) > 1:
            self.log.warning("several packs have this name; using the oldest", pack=name, count=len(candidates))
        return candidates[0].pack_id if candidates else None

    async def _named(self, name: str) -> list[PackSummary]:
        """The key's own packs named ``name`` (as the server stores names), oldest first: by ``created_at``,
        then by id, so that every client agrees on which is the first."""
        return sorted((p for p in await self.api.list_packs(search=name) if pack_name(p.name) == name
                       and not p.is_public), key=_age)

    async def create(self, name: str) -> Created:
        """Create a pack named ``name``, exactly once even when the answer is lost (remembering it is
        the caller's); and, another pack of that name being older, give way to it (``_first_of``)."""
        try:
            pack_id = await self.api.create_pack(name)
        except (AmbiguousError, MalformedAnswer) as exc:
            # The server may have created it before failing, or created it and answered badly: look
            # before creating another.
            found = await self._oldest_named(name)
            if found is None and isinstance(exc, MalformedAnswer | Stalled):
                raise  # (a trickle costs one attempt: not sent again in this run)
            if found is not None:
                return Created(found)
            pack_id = await self.api.create_pack(name)
        self.log.info("pack created", pack=name, pack_id=pack_id)
        return await self._first_of(name, pack_id)

    async def _first_of(self, name: str, pack_id: str) -> Created:
        """Two clients that found no pack of this name at the same moment (two machines' first runs)
        both create one; until they share a state, each looks again right after creating: the oldest
        stays, and the one just created — still empty, so nothing of anyone's is lost — is deleted."""
        named = await self._named(name)
        if pack_id not in {p.pack_id for p in named} or named[0].pack_id == pack_id:
            return Created(pack_id)  # (not listed yet: kept, as nothing says it came second)
        first = named[0].pack_id
        self.log.warning("another pack of this name was created at the same moment; using the older one",
                         pack=name, pack_id=first, deleted=pack_id)
        try:
            await self.api.delete_pack(pack_id)
        except (TransientError, PermanentError) as exc:
            self.log.warning("the empty pack just created could not be deleted; delete it in the web app",
                             pack=name, pack_id=pack_id, error=str(exc))
        return Created(first, raced=True)

    def _remember(self, label: str, pack_id: str, name: str, gone: str | None = None) -> RememberPack | None:
        """What the state should remember of the mapping's pack, when it does not know it already."""
        record = self.state.mappings.get(label)
        if record and record.pack_id == pack_id and record.pack_name == name:
            return None
        return RememberPack(label, pack_id, name, gone)
