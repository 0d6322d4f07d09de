"""Re-encoding, the only part that decodes pixels: resizing, converting to JPEG, and reading HEIF/AVIF.

Pillow (and pillow-heif, for HEIC/HEIF) are imported here, inside the functions, so a lossless strip
never loads them. Every image is decoded once, at a reduced scale when the JPEG decoder can (``draft``),
scaled down before it is turned upright (the smaller copy is the one turned; a second full-size copy
exists only while a conversion that does not scale turns or flattens it), encoded once. Any failure
to decode or encode -- Pillow raises many kinds on corrupt input -- becomes one PrepareError.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from packsync.prepare import exif, xmpedit
from packsync.prepare.base import MAX_PIXELS, PrepareError, within_limit
from packsync.prepare.containers import EXIF_SIGNATURE, Survey
from packsync.recipe import JPEG_QUALITY

if TYPE_CHECKING:
    from PIL import Image

_NAMES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP", "image/heic": "HEIC",
          "image/heif": "HEIF", "image/avif": "AVIF", "image/gif": "GIF"}
_PILLOW_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/heic": "HEIF",
                   "image/heif": "HEIF", "image/avif": "AVIF"}
_HEIF = ("image/heic", "image/heif")
#: Orientation -> the transposition that shows the image upright (EXIF 2.32, 4.6.4 A).
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
            7: "TRANSVERSE", 8: "ROTATE_90"}


def _open(data: bytes, content_type: str) -> Image.Image:
    """The image, opened lazily (headers read, no pixels), after the decoders it needs are registered."""
    from PIL import Image, features

    # packsync's own limit is the one checked below; Pillow's lower default would refuse first.
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    if content_type in _HEIF:
        import pillow_heif

        pillow_heif.register_heif_opener()
    if content_type == "image/avif" and not features.check("avif"):
        raise PrepareError("this Pillow cannot decode AVIF images (it needs Pillow 11.3 or later built with libavif)")
    try:
        image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[content_type]])
    except Exception as exc:  # Pillow, libheif and libavif raise many kinds for one cause: the bytes
        raise PrepareError(f"cannot decode the {_NAMES[content_type]} image: {exc}") from None
    within_limit(*image.size)
    return image


def _text(value: Any) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value) if isinstance(value, bytes | bytearray) and value else None


def survey(data: bytes, content_type: str, wanted: frozenset[str]) -> Survey:
    """A HEIC, HEIF or AVIF's size and metadata (as its decoder reports them, no pixels decoded), stripped
    of ``wanted``: what a conversion carries over. The file itself is never edited."""
    image = _open(data, content_type)
    raw_exif, raw_xmp = _text(image.info.get("exif")), _text(image.info.get("xmp"))
    raw_exif = raw_exif.removeprefix(EXIF_SIGNATURE) if raw_exif else None
    # libheif turns a HEIC upright as it decodes; Pillow leaves an AVIF's turn to its EXIF Orientation.
    orientation = exif.orientation(raw_exif) if raw_exif and content_type == "image/avif" else 1
    block, found = exif.strip(raw_exif, wanted) if raw_exif else (None, frozenset())
    packet, more = xmpedit.strip(raw_xmp, wanted) if raw_xmp else (None, frozenset())
    width, height = image.size
    return Survey(found | more, width, height, orientation if 1 <= orientation <= 8 else 1, block, packet)


def _target(size: tuple[int, int], max_edge: int) -> tuple[int, int]:
    width, height = size
    if not max_edge or max(width, height) <= max_edge:
        return size
    scale = max_edge / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode(data: bytes, content_type: str, max_edge: int) -> tuple[Image.Image, dict[str, Any]]:
    """The pixels, scaled down to ``max_edge`` (not yet upright), and the source's info (ICC, sampling)."""
    from PIL import Image, JpegImagePlugin

    image = _open(data, content_type)
    target = _target(image.size, max_edge)
    try:
        info: dict[str, Any] = {k: v for k, v in image.info.items() if isinstance(k, str)}
        if content_type == "image/jpeg":
            info["subsampling"] = JpegImagePlugin.get_sampling(image)
            if target != image.size:
                image.draft(image.mode, target)  # the DCT scales down by 1/2..1/8 as it decodes
        image.load()
        if image.mode in ("P", "1", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
        if target != image.size:
            image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    except Exception as exc:
        raise PrepareError(f"cannot decode the {_NAMES[content_type]} image: {exc}") from None
    return image, info


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    from PIL import Image

    method = _UPRIGHT.get(orientation)
    return image.transpose(getattr(Image.Transpose, method)) if method else image


def _flatten(image: Image.Image) -> Image.Image:
    """An image JPEG can hold: alpha laid on white, anything else as RGB."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, (0, 0), rgba)  # its own alpha as the mask: no band copied out
        return white
    return image if image.mode in ("RGB", "L", "CMYK") else image.convert("RGB")


def _options(fmt: str, survey: Survey, info: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if survey.exif:
        options["exif"] = EXIF_SIGNATURE + exif.upright(survey.exif, *size)
    if survey.xmp:
        options["xmp"] = survey.xmp
    if fmt == "JPEG":
        sampling = info.get("subsampling", -1)
        options.update(quality=JPEG_QUALITY, subsampling=sampling if sampling in (0, 1, 2) else 2)
    elif fmt == "WEBP":
        options.update({"lossless": True} if survey.lossless else {"quality": JPEG_QUALITY})
    elif fmt == "PNG" and survey.xmp:
        from PIL import PngImagePlugin

        text = PngImagePlugin.PngInfo()
        text.add_itxt("XML:com.adobe.xmp", options.pop("xmp").decode("utf-8", "replace"))
        options["pnginfo"] = text
    return options


def reencode(data: bytes, content_type: str, survey: Survey, max_edge: int, to_jpeg: bool) -> tuple[bytes, str]:
    """The image upright, scaled so its long edge is at most ``max_edge`` (0: kept), encoded once: as JPEG
    when ``to_jpeg``, else in its own format. Its ICC profile, EXIF and XMP (already stripped) go along."""
    within_limit(survey.width, survey.height)
    image, info = _decode(data, content_type, max_edge)
    fmt = "JPEG" if to_jpeg else _PILLOW_FORMATS[content_type]
    try:
        image = _upright(image, survey.orientation)
        if fmt == "JPEG":
            image = _flatten(image)
        out = io.BytesIO()
        image.save(out, fmt, **_options(fmt, survey, info, image.size))
    except PrepareError:
        raise
    except Exception as exc:
        raise PrepareError(f"cannot encode the image as {fmt}: {exc}") from None
    return out.getvalue(), "image/jpeg" if to_jpeg else content_type
