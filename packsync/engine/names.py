"""The name an image's upload carries: the file's path in the folder its pack mirrors.

``POST /files`` takes a ``filename`` (display only) that ``GET /files`` gives back — the only place the
API keeps a file's name, since a pack's images have none. packsync gives each upload the path of the
file it was made from, relative to the folder its pack mirrors (``backgrounds/sunset.png``; for a pack
per subfolder, relative to that subfolder), with the name the image has in the pack as its last part (a
converted file's extension made ``.jpg``), so that ``packsync pull`` can give the names and folders back
on a machine whose state knows nothing of them. The image's own ``file_name`` stays its last part: a new
``file_name`` would mean deleting and adding every existing image again.

Pure: a rule both the executor (naming uploads) and the pull (naming files from the state) follow.
"""

from __future__ import annotations

import unicodedata

#: The longest name given: the API's ``file_name`` limit, which a ``filename`` is kept within too.
MAX_NAME = 255
#: The most UTF-8 bytes a part of a name may have: a file system's 255, less room for the suffix a pull
#: adds to a name another file has (``-<8 characters>-<n>``). A pull takes no longer part (``pull_plan``).
MAX_PART_BYTES = 240
#: The most parts a name may have (a pull takes no deeper path).
MAX_PARTS = 32


def usable_part(part: str) -> bool:
    """Whether ``part`` may be a part of a name a pull writes: not empty, not hidden (nor ``.``/``..``: a
    pull's own temporary files are hidden), and within ``MAX_PART_BYTES``."""
    return bool(part.strip()) and not part.startswith(".") and len(part.encode()) <= MAX_PART_BYTES


def upload_name(path: str, name: str) -> str:
    """The name of the upload of the file at ``path`` (POSIX, relative to the folder its pack mirrors),
    whose image is named ``name``: ``name`` in the file's directory — a name a pull takes as it is. ``name``
    alone when the directory holds a character that is no name's (a control character) or a part a pull
    would not take (hidden, longer than ``MAX_PART_BYTES``), is more than ``MAX_PARTS`` deep, or the whole
    would be longer than ``MAX_NAME``; ``name`` longer than ``MAX_PART_BYTES`` is cut, its extension kept."""
    name = _within(name)
    directory = path.rpartition("/")[0]
    if not directory or any(unicodedata.category(c).startswith("C") for c in directory):
        return name
    parts = directory.split("/")
    whole = f"{directory}/{name}"
    usable = len(parts) < MAX_PARTS and all(map(usable_part, parts)) and len(whole) <= MAX_NAME
    return whole if usable else name


def _within(name: str) -> str:
    """``name`` cut to ``MAX_PART_BYTES`` (at a character's end), its extension kept."""
    if len(name.encode()) <= MAX_PART_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 10:
        stem, dot, ext = name, "", ""
    room = MAX_PART_BYTES - len(f"{dot}{ext}".encode())
    return stem.encode()[:room].decode(errors="ignore") + dot + ext
