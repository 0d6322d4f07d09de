"""Request-body validation for the sandbox API, worded like the vendor's schema errors.

Owns the body schemas of POST/PATCH /packs, POST /packs/{id}/images and POST /files and
produces the ``issues`` object of a 422 ``invalid_payload`` answer:
``{"formErrors": [...], "fieldErrors": {field: [...]}}``. Pure functions only. As the vendor's
(JavaScript) schema does, a pack's name is trimmed before its length is checked and is stored trimmed,
and lengths count UTF-16 code units.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "IMAGE_CONTENT_TYPES",
    "Issues",
    "PayloadError",
    "validate_create_pack",
    "validate_update_pack",
    "validate_add_image",
    "validate_upload_request",
]

IMAGE_CONTENT_TYPES: dict[str, str] = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
}

Issues = dict[str, Any]

#: What JavaScript's ``String.prototype.trim`` strips (its WhiteSpace and LineTerminator characters): the
#: vendor's schema trims a pack's name with it before checking its length, and stores it trimmed. (The
#: product's ``config.pack_name`` says the same on its own side: the sandbox stands for the vendor and
#: imports nothing of the product's, so that a mistake in one is caught by the other.)
JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u2028\u2029\u202f\u205f\u3000\ufeff"


def js_length(text: str) -> int:
    """A string's length as JavaScript counts it (UTF-16 code units): what the schema's limits count."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


class PayloadError(Exception):
    """A body that parsed as JSON but failed the schema."""

    def __init__(self, issues: Issues) -> None:
        super().__init__("invalid payload")
        self.issues = issues


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Checker:
    def __init__(self, body: object, allowed: tuple[str, ...]) -> None:
        self.form: list[str] = []
        self.fields: dict[str, list[str]] = {}
        self.body: dict[str, Any] = {}
        if not isinstance(body, dict):
            self.form.append(f"Expected object, received {_type_name(body)}")
            return
        self.body = body
        unknown = [k for k in body if k not in allowed]
        if unknown:
            self.form.append("Unrecognized key(s) in object: " + ", ".join(f"'{k}'" for k in unknown))

    def fail(self, field: str, message: str) -> None:
        self.fields.setdefault(field, []).append(message)

    def string(self, field: str, lo: int, hi: int, *, required: bool, trim: bool = False) -> str | None:
        """The field's string (trimmed first when ``trim``, as the schema's ``.trim()`` does), its length
        checked in UTF-16 code units."""
        if field not in self.body:
            if required:
                self.fail(field, "Required")
            return None
        value = self.body[field]
        if not isinstance(value, str):
            self.fail(field, f"Expected string, received {_type_name(value)}")
            return None
        if trim:
            value = value.strip(JS_SPACE)
        if js_length(value) < lo:
            self.fail(field, f"String must contain at least {lo} character(s)")
        elif js_length(value) > hi:
            self.fail(field, f"String must contain at most {hi} character(s)")
        return value

    def boolean(self, field: str) -> bool | None:
        if field not in self.body:
            return None
        value = self.body[field]
        if not isinstance(value, bool):
            self.fail(field, f"Expected boolean, received {_type_name(value)}")
            return None
        return value

    def raise_if_failed(self) -> None:
        if self.form or self.fields:
            raise PayloadError({"formErrors": self.form, "fieldErrors": self.fields})


def validate_create_pack(body: object) -> tuple[str, bool]:
    """``{"name": 1..120 chars once trimmed, "is_public": bool = false}`` -> (name as stored, is_public)."""
    c = _Checker(body, ("name", "is_public"))
    name = c.string("name", 1, 120, required=True, trim=True)
    is_public = c.boolean("is_public")
    c.raise_if_failed()
    assert name is not None
    return name, bool(is_public)


def validate_update_pack(body: object) -> tuple[str | None, bool | None]:
    """``{"name"?: 1..120 chars once trimmed, "is_public"?: bool}``, at least one -> (name, is_public)."""
    c = _Checker(body, ("name", "is_public"))
    name = c.string("name", 1, 120, required=False, trim=True)
    is_public = c.boolean("is_public")
    if isinstance(body, dict) and not c.form and not body:
        c.form.append("At least one of 'name' or 'is_public' must be provided")
    c.raise_if_failed()
    return name, is_public


def validate_add_image(body: object) -> tuple[str, str]:
    """``{"image_url": absolute http(s) url, "file_name": 1..255 chars = "image"}``."""
    c = _Checker(body, ("image_url", "file_name"))
    url = c.string("image_url", 1, 2048, required=True)
    if url is not None and "image_url" not in c.fields:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            c.fail("image_url", "Invalid url")
    file_name = c.string("file_name", 1, 255, required=False)
    c.raise_if_failed()
    assert url is not None
    return url, file_name if file_name is not None else "image"


def validate_upload_request(body: object) -> tuple[str, str | None]:
    """``{"contentType": image type, "filename"?: str, "size"?: int}`` -> (content type, filename)."""
    c = _Checker(body, ("contentType", "filename", "size"))
    content_type = c.string("contentType", 1, 255, required=True)
    if content_type is not None and "contentType" not in c.fields and content_type not in IMAGE_CONTENT_TYPES:
        allowed = " | ".join(f"'{t}'" for t in IMAGE_CONTENT_TYPES)
        c.fail("contentType", f"Invalid enum value. Expected {allowed}, received '{content_type}'")
    filename = c.string("filename", 1, 1024, required=False)
    if "size" in c.body:
        size = c.body["size"]
        if isinstance(size, bool) or not isinstance(size, (int, float)):
            c.fail("size", f"Expected number, received {_type_name(size)}")
        elif isinstance(size, float) and not size.is_integer():
            c.fail("size", "Expected integer, received float")
        elif size < 0:
            c.fail("size", "Number must be greater than or equal to 0")
    c.raise_if_failed()
    assert content_type is not None
    return content_type, filename
