"""Photos for the link benchmarks (``real_photos.py``): 4 MB camera JPEGs and 50 MB PNGs, made in seconds, cached.

Their bytes are what costs here, not their scene, so their pixels are noise (seeded per file, so no two
files share bytes and none compresses): a JPEG of 2000×1500 at quality 97 weighs about 4.2 MB and takes
a tenth of a second to make; it carries a camera's metadata (``camera_jpegs``: EXIF with GPS, serials
and the owner's name, an sRGB profile, XMP), so packsync's default recipe has something to strip. A
"50 MB file" is a 4080×4080 RGB PNG stored without compression (49.95 MB: just within packsync's default
``max_file_mb = 50``, 10⁶ bytes; about a second and a half to make).

Both are kept in the cache folder (``link-photos-<VERSION>/``, ``link-big-<VERSION>-<side>/``); a later
run reuses what it finds. Changing how they are made means changing ``VERSION``.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from pathlib import Path

from camera_jpegs import XMP, camera_exif, srgb_profile
from PIL import Image

VERSION = "v1"
PHOTO_SIZE = (2000, 1500)
PHOTO_QUALITY = 97
BIG_SIDE = 4080


def photos(cache_dir: Path, count: int, log: Callable[[str], None]) -> list[Path]:
    """``count`` camera JPEGs of about 4.2 MB each, from the cache, made when missing."""
    return _cached(cache_dir / f"link-photos-{VERSION}", [f"IMG_{i:04}.jpg" for i in range(1, count + 1)],
                   photo_bytes, log, "4 MB camera JPEGs")


def big_pngs(cache_dir: Path, count: int, log: Callable[[str], None], side: int = BIG_SIDE) -> list[Path]:
    """``count`` noise PNGs of ``side``×``side`` RGB, stored (49.95 MB each at the default side)."""
    return _cached(cache_dir / f"link-big-{VERSION}-{side}", [f"BIG_{i:02}.png" for i in range(1, count + 1)],
                   lambda index: big_png_bytes(index, side), log, f"{side}×{side} PNGs")


def photo_bytes(index: int) -> bytes:
    """Photo ``index``: noise pixels, a camera's EXIF (GPS, serials, orientation), ICC and XMP."""
    rng = random.Random(index)
    width, height = PHOTO_SIZE
    image = Image.frombytes("RGB", PHOTO_SIZE, rng.randbytes(width * height * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=PHOTO_QUALITY, exif=camera_exif(index, rng), icc_profile=srgb_profile(),
               xmp=XMP.format(day=1 + index % 28, minute=index % 60).encode())
    return out.getvalue()


def big_png_bytes(index: int, side: int) -> bytes:
    """PNG ``index``: ``side``×``side`` noise pixels, deflate level 0 (the file is its pixels' size)."""
    image = Image.frombytes("RGB", (side, side), random.Random(-index).randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()


def _cached(folder: Path, names: list[str], make: Callable[[int], bytes], log: Callable[[str], None],
            what: str) -> list[Path]:
    """The files ``names`` in ``folder``, file ``i`` (from 1) made by ``make(i)`` when missing; each written
    under a temporary name and renamed, so an interrupted run leaves no half file in the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    missing = [(index, path) for index, path in enumerate(paths, 1) if not path.exists()]
    if missing:
        log(f"photos: making {len(missing)} of {len(paths)} {what} in {folder} (cached for later runs)")
    for index, path in missing:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(make(index))
        temporary.replace(path)
    return paths
