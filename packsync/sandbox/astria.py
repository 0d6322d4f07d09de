"""The sandbox's Astria: packs of prompt templates whose example images are listed by class.

Served under ``/astria`` on the sandbox's port (``GET /astria/packs``, ``/astria/gallery/packs``,
``/astria/p/{id}``), Bearer auth, plain JSON without an envelope and exactly the documented fields.
The images' bytes are served at extension-less URLs (``/astria-img/{key}``), as on Astria's storage.
Astria packs cannot be written through the API: tests and the demo seed them here.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .store import iso_ms

ASTRIA_PREFIX = "/astria"
IMAGE_PREFIX = "/astria-img/"
ASTRIA_DEMO_TOKEN = "sd_sandbox_demo.secret"


@dataclass
class _Prompt:
    id: int
    images: list[str] = field(default_factory=list)


@dataclass
class _AstriaPack:
    id: int
    user_id: int
    title: str
    public: bool
    created_at: float
    classes: dict[str, list[_Prompt]] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return "-".join(self.title.lower().split())


class AstriaStore:
    """Astria's packs and image bytes, in memory."""

    def __init__(self, origin: Callable[[], str], clock: Callable[[], float] = time.time) -> None:
        self._origin = origin
        self._clock = clock
        self.lock = threading.Lock()
        self.users: dict[str, int] = {ASTRIA_DEMO_TOKEN: 1}
        self._packs: dict[int, _AstriaPack] = {}
        self._bytes: dict[str, tuple[str, bytes]] = {}
        self._next_pack = 260
        self._next_prompt = 18_154_000

    def add_pack(self, title: str, *, user_id: int = 1, public: bool = False) -> int:
        with self.lock:
            pack_id, self._next_pack = self._next_pack, self._next_pack + 1
            self._packs[pack_id] = _AstriaPack(pack_id, user_id, title, public, self._clock())
            return pack_id

    def add_image(self, pack_id: int, cls: str, data: bytes, *, content_type: str = "image/png",
                  prompt_id: int | None = None) -> str:
        """Store ``data`` at a new extension-less URL and list it under ``cls`` — in a new prompt, or in
        prompt ``prompt_id`` of that class (created if missing). Returns the URL."""
        url = self.store_bytes(data, content_type)
        with self.lock:
            prompts = self._packs[pack_id].classes.setdefault(cls, [])
            prompt = next((p for p in prompts if p.id == prompt_id), None) if prompt_id is not None else None
            if prompt is None:
                if prompt_id is None:
                    prompt_id, self._next_prompt = self._next_prompt, self._next_prompt + 1
                prompt = _Prompt(prompt_id)
                prompts.append(prompt)
            prompt.images.append(url)
        return url

    def store_bytes(self, data: bytes, content_type: str = "image/png") -> str:
        key = uuid.uuid4().hex[:28]
        with self.lock:
            self._bytes[key] = (content_type, data)
        return f"{self._origin()}{IMAGE_PREFIX}{key}"

    def remove_image(self, pack_id: int, url: str) -> None:
        with self.lock:
            for prompts in self._packs[pack_id].classes.values():
                for prompt in prompts:
                    if url in prompt.images:
                        prompt.images.remove(url)
                        return
        raise KeyError(url)

    def clear(self, pack_id: int) -> None:
        """Empty the pack: every class keeps its prompts, with no images."""
        with self.lock:
            for prompts in self._packs[pack_id].classes.values():
                for prompt in prompts:
                    prompt.images.clear()

    def delete_pack(self, pack_id: int) -> None:
        with self.lock:
            del self._packs[pack_id]

    def image(self, key: str) -> tuple[str, bytes] | None:
        with self.lock:
            return self._bytes.get(key)

    # -- the API's answers ---------------------------------------------------------------------------

    def list_packs(self, user_id: int | None, *, gallery: bool) -> list[dict[str, Any]]:
        with self.lock:
            packs = [p for p in self._packs.values() if (p.public if gallery else p.user_id == user_id)]
            return [self._summary(p) for p in sorted(packs, key=lambda p: p.id)]

    def get_pack(self, user_id: int, pack_id: int) -> dict[str, Any] | None:
        with self.lock:
            pack = self._packs.get(pack_id)
            if pack is None or not (pack.public or pack.user_id == user_id):
                return None
            first = next((url for prompts in pack.classes.values() for p in prompts for url in p.images), None)
            return {
                "id": pack.id, "slug": pack.slug, "title": pack.title, "cover_url": first,
                "created_at": iso_ms(pack.created_at), "updated_at": iso_ms(pack.created_at),
                "public_at": iso_ms(pack.created_at) if pack.public else None, "unlisted_at": None,
                "costs": {cls: {"cost": 300, "num_images": sum(len(p.images) for p in prompts)}
                          for cls, prompts in pack.classes.items()},
                "logo": None,
                "prompts_per_class": {cls: [{"id": p.id, "images": list(p.images)} for p in prompts]
                                      for cls, prompts in pack.classes.items()},
            }

    def _summary(self, pack: _AstriaPack) -> dict[str, Any]:
        return {"id": pack.id, "base_tune_id": 1, "user_id": pack.user_id, "slug": pack.slug, "title": pack.title,
                "token": "ohwx", "created_at": iso_ms(pack.created_at), "updated_at": iso_ms(pack.created_at),
                "multiplier": 10, "model_type": None,
                "public_at": iso_ms(pack.created_at) if pack.public else None,
                "cost_mc_hash": {cls: 100000 for cls in pack.classes}}


def answer(store: AstriaStore, route: str, params: dict[str, str], authorization: str) -> tuple[int, bytes]:
    """The status and JSON body Astria gives for an API ``route`` (``astria:/packs`` and the like)."""
    scheme, _, token = authorization.partition(" ")
    user_id = store.users.get(token.strip()) if scheme.lower() == "bearer" else None
    if user_id is None:
        return 401, json.dumps({"error": "Unauthorized"}).encode()
    if route == "astria:/packs":
        return 200, json.dumps(store.list_packs(user_id, gallery=False)).encode()
    if route == "astria:/gallery/packs":
        return 200, json.dumps(store.list_packs(None, gallery=True)).encode()
    pack_id = params["id"]
    pack = store.get_pack(user_id, int(pack_id)) if pack_id.isascii() and pack_id.isdigit() else None
    if pack is None:
        return 404, json.dumps({"error": "Not found"}).encode()
    return 200, json.dumps(pack).encode()
