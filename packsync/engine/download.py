"""Downloading an image to learn its content: streamed, hashed on the fly, bounded, never with the key.

Genviral stores a URL per image, and for uploaded files that URL serves exactly the bytes that were
PUT. So the SHA-256 of what a URL serves is the content of the image: what adoption by content and
``packsync pull`` need. Bytes are checked like a file's (``sources/media.py``): a page that is not an
image, or one over the size limit, is a problem for that image, never an error for the run.
"""

from __future__ import annotations

from collections.abc import Callable

from packsync.errors import PermanentError, TransientError
from packsync.logs import untrusted
from packsync.model import UrlContent
from packsync.remote.answers import url_problem
from packsync.remote.genviral import GenviralClient
from packsync.sources.media import Digester


async def content_of(api: GenviralClient, url: str, max_bytes: int,
                     on_received: Callable[[int], None] | None = None) -> UrlContent:
    """Download ``url`` once and say what it holds (its bytes told to ``on_received`` as they come)."""
    if problem := url_problem(url):
        return UrlContent(url, None, problem=problem)
    try:
        digest = (await api.download(url, max_bytes, Digester, on_received)).digest()
    except PermanentError as exc:
        return UrlContent(url, None, problem=f"cannot download it ({untrusted(str(exc), 120)})")
    except TransientError as exc:
        return UrlContent(url, None, problem=f"cannot download it now ({untrusted(str(exc), 120)})", final=False)
    if digest.content_type is None or digest.problem:
        return UrlContent(url, None, digest.size, problem=digest.problem or "not an image")
    return UrlContent(url, digest.sha256, digest.size, digest.content_type)
