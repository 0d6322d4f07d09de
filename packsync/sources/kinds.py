"""The kinds of source packsync knows, and how a label names one: the only module that reads a label's spelling.

A folder's label is its path (so it starts with "/"); a source read through an API is named
``<kind>:<id>`` (``astria:260``). Whoever holds only a label (read from the state, say) asks ``kind_of``
what kind of source it names, and an image's owner (a label, or another site's qualified key)
``owner_kind``: no code outside ``sources/`` reads a label's spelling.
"""

from __future__ import annotations

#: The prefix of an Astria pack's label.
_ASTRIA = "astria:"


def astria_label(pack_id: int | str) -> str:
    """How an Astria pack is named as a source (in messages, the state and the views)."""
    return f"{_ASTRIA}{pack_id}"


def kind_of(label: str) -> str:
    """The kind of source ``label`` names: "folder" (a folder's label is its path) or "astria"."""
    return "astria" if label.startswith(_ASTRIA) else "folder"


def owner_kind(owner: str) -> str:
    """The kind of source an image's owner is: a label of this site's, or another site's qualified key
    (``nas:/srv/brand``, ``nas:astria:12``), whose site's name may itself be ``astria``. A folder's label
    is a path, so it always holds "/"; an Astria pack's never does."""
    return "folder" if "/" in owner else "astria"
