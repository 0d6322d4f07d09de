"""The application service: everything a command needs, built from a config in one place.

The CLI, the daemon, the demo, the tests and the benchmarks all open packsync through here: the
state (read-only for a dry run), the one HTTP transport, the API clients that speak through it, one
source per mapping, the pack resolver, the metadata poller and the syncer that ties them together.
Nothing else wires these parts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from packsync.config import ASTRIA_TOKEN_ENV, Config, MappingConfig, read_token
from packsync.engine.leases import Leases
from packsync.engine.metadata import MetadataPoller
from packsync.engine.packs import PackResolver
from packsync.engine.progress import QUIET
from packsync.engine.sync import Syncer, SyncOptions, SyncReport
from packsync.logs import register_secret
from packsync.remote.astria import AstriaClient
from packsync.remote.bandwidth import UNLIMITED, BandwidthLimit, Limiter
from packsync.remote.genviral import GenviralClient
from packsync.remote.transport import Observer, RetryPolicy, Transport
from packsync.sources.base import Source
from packsync.sources.folder import FolderSource, filters_for
from packsync.sources.kinds import RemoteSettings, settings_for
from packsync.views.progress import Progress

if TYPE_CHECKING:  # pulling (and its sidecars) is imported by `pull` alone; the state by what opens it
    from packsync.engine.pull import PullOptions, PullReport
    from packsync.state.store import State


def source_for(mapping: MappingConfig, clients: Mapping[str, AstriaClient], spool: Path | None) -> Source:
    """A mapping's source; one read through an API (by its client in ``clients``) keeps the images it
    downloaded in a folder of its own in ``spool`` until they are uploaded (None: nothing is kept, as in a
    dry run)."""
    if mapping.source is None:
        return FolderSource(mapping.folder, filters_for(mapping))
    settings: RemoteSettings = mapping.source
    return settings.source(clients[settings.api], int(mapping.max_file_mb * 1_000_000),
                           spool / settings.label.replace(":", "-") if spool else None)


def leases_for(state: State) -> Leases:
    """The leases a process keeps over ``state``: a shared state's (one writer per pack), else none needed
    (the state's lock keeps one packsync to a file). Every write transaction checks them (the unit's fence)."""
    if state.shared is None or state.readonly:
        return Leases(None)
    from packsync.state.leases import LeaseRepository

    leases = Leases(LeaseRepository(state.unit, state.shared.site, state.shared.lease_s))
    state.unit.fence = leases.fence
    return leases


def transport_for(config: Config, observer: Observer | None = None) -> Transport:
    """The process's one HTTP transport (one connection pool, ``concurrency`` slots, one run budget, one
    bandwidth limit), which every client and download shares; its maker closes it."""
    limits = config.genviral
    limit = BandwidthLimit(limits.bandwidth_limit)
    return Transport(concurrency=limits.concurrency, retry=RetryPolicy().wait_at_most(limits.retry_wait_max_s),
                     timeout=limits.timeout_s, observer=observer,
                     throttle=UNLIMITED if limit.unlimited else Limiter(limit))


def client_for(config: Config, token: str, transport: Transport) -> GenviralClient:
    """The Genviral client, speaking through ``transport`` (its maker's to close)."""
    return GenviralClient(config.genviral.base_url, token, transport)


#: Where an API's key is looked for when its table names no variable.
_TOKEN_ENVS = {"astria": (ASTRIA_TOKEN_ENV,)}


def read_api_token(config: Config, api: str) -> str:
    """The key of the API ``api`` (``"astria"``), kept out of every output from here on."""
    token = read_token(config.api_table(api), api, _TOKEN_ENVS[api])
    register_secret(token)
    return token


def api_client(config: Config, api: str, transport: Transport) -> AstriaClient:
    """The client of the API ``api``, with its key (and workspace), speaking through ``transport``."""
    table = config.api_table(api)
    return AstriaClient(table.base_url, read_api_token(config, api), transport, workspace=table.workspace)


def clients_for(config: Config, transport: Transport) -> dict[str, AstriaClient]:
    """The clients of the APIs the mappings' sources are read through, by API: none needed, none made (nor
    any key read)."""
    return {api: api_client(config, api, transport) for api in sorted(config.apis())}


class App(msgspec.Struct):
    """One config's working parts. ``state`` and ``api`` (with its transport, which ``clients`` share) are
    owned by whoever opened them."""

    config: Config
    state: State
    api: GenviralClient
    #: The clients of the APIs the sources are read through, by API (``"astria"``).
    clients: dict[str, AstriaClient]
    packs: PackResolver
    metadata: MetadataPoller
    syncer: Syncer

    @classmethod
    def wire(cls, config: Config, state: State, api: GenviralClient, progress: Progress | None = None) -> App:
        """Build the engine around an open state and client."""
        progress = progress or Progress(enabled=False)
        packs = PackResolver(api, state)
        metadata = MetadataPoller(api, state, progress)
        clients = clients_for(config, api.transport)
        spool = None if state.readonly else config.spool_path
        syncer = Syncer(config, state, api, lambda mapping: source_for(mapping, clients, spool), packs, metadata,
                        progress, leases_for(state))
        return cls(config, state, api, clients, packs, metadata, syncer)

    def close_sources(self) -> None:
        for source in self.syncer.sources.values():
            source.close()


@asynccontextmanager
async def open_app(config: Config, token: str, *, readonly: bool = False,
                   progress: Progress | None = None) -> AsyncIterator[App]:
    """Open the state and the API client for ``config``, and close both afterwards."""
    async with _opened(config, token, readonly, progress) as (state, api):
        app = App.wire(config, state, api, progress)
        try:
            yield app
        finally:
            app.close_sources()


@asynccontextmanager
async def _opened(config: Config, token: str, readonly: bool, progress: Progress | None,
                  holds_lock: bool = True) -> AsyncIterator[tuple[State, GenviralClient]]:
    from packsync.state.store import State  # sqlmodel's import is a third of a second: not for `astria packs`

    state = State.for_config(config, readonly=readonly, holds_lock=holds_lock)
    try:
        async with transport_for(config) as transport:
            if progress and isinstance(transport.throttle, Limiter):
                progress.limits = transport.throttle.rates
            yield state, client_for(config, token, transport)
    finally:
        if progress:
            progress.close()
        state.close()


async def pull_once(config: Config, token: str, pack: str, folder: Path, options: PullOptions, *,
                    progress: Progress | None = None, classes: Collection[str] | None = None,
                    sidecars: str = "none") -> PullReport:
    """``packsync pull``: lock the folder, open everything, pull one pack (``genviral:…``) or remote source
    (its label, ``astria:260``) into ``folder``, close everything.

    Not the state's lock: a pull runs beside the daemon or a ``run`` (``PullLock`` says why), so its state
    is opened as one that does not hold that lock. A dry run writes nothing, and locks nothing."""
    from packsync.engine.pull import Puller, resolved_folder
    from packsync.state.lock import PullLock

    system, _, wanted = pack.partition(":")
    remote = None if system == "genviral" else settings_for(pack, classes=classes)
    folder = resolved_folder(folder)
    with nullcontext() if options.dry_run else PullLock(config.state_path, folder):
        async with _opened(config, token, options.dry_run, progress, holds_lock=False) as (state, api):
            puller = Puller(api, state, progress or QUIET)
            if remote is not None:
                client = api_client(config, remote.api, api.transport)
                return await puller.pull_listed(await remote.listed(client), folder, options, sidecars,
                                                lambda names: remote.kept(client, names))
            return await puller.pull(wanted, folder, options, sidecars=sidecars)


async def sync_once(config: Config, token: str, options: SyncOptions, progress: Progress | None = None,
                    only: Collection[str] | None = None) -> SyncReport:
    """``packsync run``: open everything, sync once (every mapping, or those labelled ``only``), close everything."""
    async with open_app(config, token, readonly=options.dry_run, progress=progress) as app:
        return await app.syncer.sync(options, only=only)
