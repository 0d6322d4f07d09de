"""A hostile tester's cases for images prepared before upload: the odd places location and serials hide,
and the engine's paths around preparing (the daemon, dry runs, lost states), against the real sandbox."""

from __future__ import annotations

import photos
import pytest

from packsync import prepare
from packsync.recipe import Recipe

#: Values the fixtures write that must never be in an upload stripped by the default recipe.
SECRETS = (photos.BODY_SERIAL.encode(), photos.LENS_SERIAL.encode(), photos.CITY.encode(), b"52,22.056N",
           b"MAKERNOTE-SERIAL")


def leaked(data: bytes) -> list[bytes]:
    return [secret for secret in SECRETS if secret in data]


def test_a_jpeg_appended_after_the_image_without_an_index_is_stripped_too() -> None:
    """Some apps append the original (or a preview) after the image's end without an MPF index: its EXIF
    and XMP are as readable as the first image's, so they are stripped in place as an MPF image's are."""
    first, second = photos.jpeg(64, 48), photos.jpeg(32, 24, iptc=False)
    made = prepare.prepare(first + second, "image/jpeg", Recipe())
    assert leaked(made.data) == []
    assert len(made.data) == len(first + second)
    assert made.data[:len(first)] == prepare.prepare(first, "image/jpeg", Recipe()).data


@pytest.mark.parametrize("sixth", [b"\xff", b"\x01"])
def test_an_exif_segment_with_an_odd_signature_is_stripped(sixth: bytes) -> None:
    """exiftool (and carving) read ``Exif\\0`` followed by any byte as EXIF, as some old writers wrote it."""
    data = photos.jpeg(64, 48, iptc=False, xmp_location=False, serials=False)
    at = data.index(b"Exif\x00\x00")
    odd = data[:at + 5] + sixth + data[at + 6:]
    made = prepare.prepare(odd, "image/jpeg", Recipe())
    assert "location" in made.changes
    found = photos.exiftool(made.data)
    if found is not None:
        assert not [tag for tag in found if "GPS" in tag]
