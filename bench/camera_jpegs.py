"""Camera-like JPEGs for the prepare benchmark: real size, real metadata, made once and cached.

Each photo is what a phone or camera writes: 4000×3000 pixels (12 MP) at quality 92, whose content is
not a flat colour but a blurred scene of shapes under sensor-like noise, so the file weighs 3–6 MB as
a real one does; and its metadata: EXIF with Make/Model, the date, exposure, the body's and lens's
serial numbers and the owner's name, a GPS IFD (position, altitude, time), an Orientation of 6 on one
photo in four (the others 1), an ICC profile (sRGB) and a small XMP packet. Every photo's pixels and
position differ, so no two files share bytes (packsync would dedupe them).

Making 200 takes minutes, so they are made once, on every core, and kept in the cache folder under
``photos-<VERSION>-<W>x<H>/`` (``IMG_0001.jpg``, …); a later run reuses those it finds and makes only
the missing ones. Changing how photos are made means changing ``VERSION``.
"""

from __future__ import annotations

import functools
import io
import os
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageChops, ImageCms, ImageDraw, ImageFilter
from PIL.TiffImagePlugin import IFDRational

VERSION = "v1"
FULL_SIZE = (4000, 3000)
SMOKE_SIZE = (800, 600)
QUALITY = 92
ROTATED_EVERY = 4  # one photo in four is taken upright: Orientation 6, pixels stored landscape
NOISE_SIGMA = 8.0  # sensor-like noise; sets the file size (about 3.7 MB at 12 MP, quality 92)
NOISE_TILE = 1024

# EXIF tags (TIFF/EXIF 2.32 numbers); Pillow's ExifTags names them too, but the numbers are the spec's.
IFD_EXIF, IFD_GPS = 0x8769, 0x8825
MAKE, MODEL, ORIENTATION, SOFTWARE, DATETIME, ARTIST = 0x010F, 0x0110, 0x0112, 0x0131, 0x0132, 0x013B
EXPOSURE_TIME, F_NUMBER, ISO, DATETIME_ORIGINAL, FOCAL_LENGTH = 0x829A, 0x829D, 0x8827, 0x9003, 0x920A
OWNER_NAME, BODY_SERIAL, LENS_MODEL, LENS_SERIAL = 0xA430, 0xA431, 0xA434, 0xA435
GPS_VERSION, GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 0x0000, 0x0001, 0x0002, 0x0003, 0x0004
GPS_ALT_REF, GPS_ALT, GPS_TIME, GPS_DATE = 0x0005, 0x0006, 0x0007, 0x001D

XMP = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="BenchCam firmware 1.2.0" '
       'xmp:CreateDate="2026-05-{day:02}T10:{minute:02}:00"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def photos(cache_dir: Path, count: int, smoke: bool, log: Callable[[str], None]) -> list[Path]:
    """``count`` camera-like JPEGs (smoke: small ones), from the cache, making the missing ones on every core."""
    size = SMOKE_SIZE if smoke else FULL_SIZE
    folder = cache_dir / f"photos-{VERSION}-{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"IMG_{index:04}.jpg" for index in range(1, count + 1)]
    missing = [(index, path) for index, path in enumerate(paths, 1) if not path.exists()]
    if missing:
        log(f"photos: making {len(missing)} of {count} {size[0]}×{size[1]} JPEGs in {folder} (cached for later runs)")
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(_make, [index for index, _ in missing], [path for _, path in missing],
                          [size] * len(missing)))
    return paths


def _make(index: int, path: Path, size: tuple[int, int]) -> None:
    """Write photo ``index`` to ``path`` atomically (a temporary name, then a rename), so an interrupted
    run leaves no half photo in the cache."""
    data = photo_bytes(index, size)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def photo_bytes(index: int, size: tuple[int, int] = FULL_SIZE) -> bytes:
    """Photo ``index`` as a JPEG file's bytes: its pixels, EXIF (GPS, serials, orientation), ICC and XMP."""
    rng = random.Random(index)
    image = _pixels(rng, size)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, exif=camera_exif(index, rng), icc_profile=srgb_profile(),
               xmp=XMP.format(day=1 + index % 28, minute=index % 60).encode())
    return out.getvalue()


def _pixels(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A scene: a sky-to-ground gradient with blurred shapes, drawn at a tenth of the size and scaled up
    (smooth, like optics), under per-channel noise (like a sensor at ISO 400) that makes the file's size."""
    width, height = size
    small_w, small_h = max(width // 10, 8), max(height // 10, 6)
    scene = Image.new("RGB", (small_w, small_h))
    draw = ImageDraw.Draw(scene)
    top, bottom = _colour(rng), _colour(rng)
    for y in range(small_h):
        share = y / (small_h - 1)
        fill = tuple(int(a + (b - a) * share) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (small_w - 1, y)], fill=fill)
    for _ in range(40):
        x, y, r = rng.randrange(small_w), rng.randrange(small_h), rng.randrange(small_w // 80 + 1, small_w // 5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
    base = scene.filter(ImageFilter.GaussianBlur(2)).resize(size, Image.Resampling.BICUBIC)
    # A noise tile repeated over the frame: JPEG blocks see noise either way, at a tenth of the cost.
    tile = Image.merge("RGB", [Image.effect_noise((NOISE_TILE, NOISE_TILE), NOISE_SIGMA) for _ in range(3)])
    noise = Image.new("RGB", size)
    for left in range(-rng.randrange(NOISE_TILE), width, NOISE_TILE):
        for upper in range(-rng.randrange(NOISE_TILE), height, NOISE_TILE):
            noise.paste(tile, (left, upper))
    return ImageChops.add(base, noise, scale=1.0, offset=-128)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def camera_exif(index: int, rng: random.Random) -> Image.Exif:
    """What a camera writes: who made it and with what, when, how, where, and which way up."""
    exif = Image.Exif()
    exif[MAKE], exif[MODEL], exif[SOFTWARE] = "BenchCam", "BenchCam X100", "BenchCam firmware 1.2.0"
    stamp = f"2026:05:{1 + index % 28:02} 10:{index % 60:02}:00"
    exif[DATETIME], exif[ARTIST] = stamp, "Alex Photographer"
    exif[ORIENTATION] = 6 if index % ROTATED_EVERY == 0 else 1
    exif.get_ifd(IFD_EXIF).update({
        EXPOSURE_TIME: IFDRational(1, 250), F_NUMBER: IFDRational(28, 10), ISO: 400, DATETIME_ORIGINAL: stamp,
        FOCAL_LENGTH: IFDRational(35, 1), OWNER_NAME: "Alex Photographer", BODY_SERIAL: f"BC{9_000_000 + index}",
        LENS_MODEL: "BenchLens 35mm F2.8", LENS_SERIAL: f"BL{7_000_000 + index}",
    })
    latitude, longitude = 52.3676 + rng.uniform(-0.05, 0.05), 4.9041 + rng.uniform(-0.05, 0.05)
    exif.get_ifd(IFD_GPS).update({
        GPS_VERSION: b"\x02\x03\x00\x00", GPS_LAT_REF: "N", GPS_LAT: _dms(latitude), GPS_LON_REF: "E",
        GPS_LON: _dms(longitude), GPS_ALT_REF: b"\x00", GPS_ALT: IFDRational(round(rng.uniform(0, 30) * 10), 10),
        GPS_TIME: (IFDRational(8, 1), IFDRational(index % 60, 1), IFDRational(0, 1)),
        GPS_DATE: f"2026:05:{1 + index % 28:02}",
    })
    return exif


def _dms(degrees: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    whole = int(degrees)
    minutes = (degrees - whole) * 60
    return IFDRational(whole, 1), IFDRational(int(minutes), 1), IFDRational(round((minutes % 1) * 60 * 100), 100)


@functools.cache
def srgb_profile() -> bytes:
    profile: bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile
