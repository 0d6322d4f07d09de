"""The kinds of source packsync knows, and how a label names one: the only module that reads a label's spelling.

A folder's label is its path (so it starts with "/"); a source read through an API is named
``<kind>:<id>`` (``astria:260``). Each such kind is the msgspec struct of its own mapping keys
(``RemoteSettings``), defined beside its source; ``RemoteSource`` is their union, and the one line a new
kind adds here. Everything else (``KINDS``, ``KEYS``, the label rules, ``settings_for``) is read from it.

Whoever holds only a label (read from the state, say) asks ``kind_of`` what kind of source it names, and
an image's owner (a label, or another site's qualified key) ``owner_kind``: no code outside ``sources/``
reads a label's spelling.
"""

from __future__ import annotations

import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar, Protocol

import msgspec

from packsync.model import Listed
from packsync.sources.astria import AstriaPackSettings
from packsync.sources.astria_tune import AstriaTuneSettings
from packsync.sources.base import Source

#: Every kind of source read through an API: the one line a new kind changes.
RemoteSource = AstriaPackSettings | AstriaTuneSettings

#: What a folder is, as ``kind_of`` says it.
FOLDER = "folder"


class RemoteSettings(Protocol):
    """A kind of source read through an API, as a mapping (or a pull) names it: its fields are the keys."""

    #: The labels' prefix (``astria:260``), pull's system and msgspec's tag: "astria", "astria-tune".
    name: ClassVar[str]
    #: How messages name one: "an Astria pack".
    noun: ClassVar[str]
    #: The config's ``[table]`` (base_url, key, workspace) and the client it is read through: "astria".
    api: ClassVar[str]
    #: Its items carry a text of their own (a prompt's): ``pull --sidecars xmp`` may write it.
    described: ClassVar[bool]
    #: The key holding its id (``astria_pack``): the one that says a mapping is of this kind.
    id_key: ClassVar[str]

    @property
    def id(self) -> int: ...

    @property
    def label(self) -> str:
        """``<name>:<id>``: how messages, the state, the views and ``pull`` name it."""

    @property
    def poll_s(self) -> float | None:
        """How often the daemon reads it; None: the ``[<api>] poll_interval_s``."""

    def source(self, client: Any, max_bytes: int, spool: Path | None) -> Source:
        """The source, read through ``client`` (the api's), holding downloads in ``spool`` (None: none kept)."""

    async def listed(self, client: Any) -> Listed:
        """What ``packsync pull <label>`` downloads."""

    async def kept(self, client: Any, names: Collection[str]) -> set[str]:
        """Of the files (by name) a pull made from the source that ``listed`` no longer shows, those the source
        still has all the same, which ``pull --delete`` must not remove."""


def _members() -> tuple[type[RemoteSource], ...]:
    return typing.get_args(RemoteSource) or (RemoteSource,)  # (a union of one is that one)


#: Each kind by its name.
KINDS: dict[str, type[RemoteSource]] = {kind.name: kind for kind in _members()}
#: Each mapping key a kind of source owns (its id and its options), to that kind.
KEYS: dict[str, type[RemoteSource]] = {key: kind for kind in _members() for key in kind.__struct_fields__}


def kind_of(label: str) -> str:
    """The kind of source ``label`` names: the name of the kind its prefix names (``astria:260``: "astria"),
    else "folder": a folder's label is its path, and whatever else is given here is no source this packsync
    reads through an API (a Genviral pack's id, which pull's records hold in the same place)."""
    prefix, colon, _ = label.partition(":")
    return prefix if colon and prefix in KINDS else FOLDER


def owner_kind(owner: str) -> str:
    """The kind of source an image's owner is: a label of this site's, or another site's qualified key
    (``nas:/srv/brand``, ``nas:astria:12``). A remote label holds one ":" and never a "/", and no site is
    named as a kind (``config.is_site``), so a second ":" means a site's name comes first."""
    if "/" in owner:
        return FOLDER
    return kind_of(owner.partition(":")[2] if owner.count(":") >= 2 else owner)


def settings_for(label: str, **options: Any) -> RemoteSource:
    """The settings ``pull <label>`` reads a remote source with (``astria:260``, with ``classes=[…]``), or a
    ValueError in one sentence: a kind packsync does not know, an id that is not one, an option the kind
    does not take."""
    name, _, given = label.partition(":")
    if (kind := KINDS.get(name)) is None:
        raise ValueError(f"{label!r} names no kind of source packsync reads (it knows {', '.join(KINDS)})")
    if not (given.isascii() and given.isdigit() and int(given) >= 1):
        raise ValueError(f"{label!r}: {kind.noun}'s id is a whole number from 1, not {given!r}")
    options = {key: value for key, value in options.items() if value is not None}
    for key in options:
        if key not in kind.__struct_fields__ or key == kind.id_key:
            raise ValueError(f"{key}: applies to {KEYS[key].noun} only" if key in KEYS and key != KEYS[key].id_key
                             else f"{key}: {kind.noun} takes no such option")
    try:
        return msgspec.convert({kind.id_key: int(given), **options}, kind)
    except msgspec.ValidationError as exc:  # e.g. "Expected `array` of length >= 1 - at `$.classes`"
        message, _, where = str(exc).partition(" - at `$.")
        raise ValueError(f"{where.rstrip('`') or label}: {message[:1].lower()}{message[1:]}") from None
