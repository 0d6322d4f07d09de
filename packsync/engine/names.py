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


def upload_name(path: str, name: str) -> str:
    """The name of the upload of the file at ``path`` (POSIX, relative to the folder its pack mirrors),
    whose image is named ``name``: ``name`` in the file's directory; ``name`` alone when the directory
    holds a character that is no name's (a control character) or the whole would be longer than
    ``MAX_NAME``."""
    directory = path.rpartition("/")[0]
    if not directory or any(unicodedata.category(c).startswith("C") for c in directory):
        return name
    whole = f"{directory}/{name}"
    return whole if len(whole) <= MAX_NAME else name
