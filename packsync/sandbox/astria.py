"""The sandbox's Astria: packs of prompt templates, and a user's tunes with the prompts they generated.

Served under ``/astria`` on the sandbox's port, Bearer auth, plain JSON without an envelope and exactly
the documented fields: packs (``GET /astria/packs``, ``/astria/gallery/packs``, ``/astria/p/{id}``, example
images listed by class) and tunes (``GET /astria/tunes``, ``/astria/tunes/{id}``,
``/astria/tunes/{id}/prompts?offset=N`` 20 a page newest first, ``/astria/tunes/{tid}/prompts/{id}``).
An ``X-Workspace-Id`` header selects a workspace: a tune (or a key's own pack) made in one is seen only with
that header, one made outside any only without it, so a client's use of the header is observable (and
``workspaces_seen`` says what each request, an image's download too, came with).
The images' bytes are served at extension-less URLs (``/astria-img/{key}``), as on Astria's storage.
Nothing here can be written through the API: tests and the demo seed packs and tunes, and ``generate``
plays a prompt's generation finishing later. Owns no HTTP: ``server.py`` routes requests to ``answer``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .imaging import sniff_format
from .store import iso_ms

ASTRIA_PREFIX = "/astria"
IMAGE_PREFIX = "/astria-img/"
ASTRIA_DEMO_TOKEN = "sd_sandbox_demo.secret"
#: Prompts per page of ``GET /tunes/{id}/prompts``, as documented.
PROMPTS_PER_PAGE = 20
NOT_FOUND = {"error": "Not found"}


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
    workspace: str | None = None  # its owner sees it only with this X-Workspace-Id (as a tune)

    @property
    def slug(self) -> str:
        return "-".join(self.title.lower().split())


@dataclass
class _TunePrompt:
    """A generation request of a tune; ``images`` is None until it has run."""

    id: int
    text: str
    created_at: float
    images: list[str] | None = None
    generated_at: float | None = None


@dataclass
class _Tune:
    id: int
    user_id: int
    title: str
    name: str
    created_at: float
    trained_at: float
    workspace: str | None
    prompts: list[_TunePrompt] = field(default_factory=list)


class AstriaStore:
    """Astria's packs, tunes and image bytes, in memory.

    ``ignore_offset``: a hostile server whose prompt pages all answer the first page, whatever ``offset``
    asks for (a client must end its walk rather than loop)."""

    def __init__(self, origin: Callable[[], str], clock: Callable[[], float] = time.time) -> None:
        self._origin = origin
        self._clock = clock
        self.lock = threading.Lock()
        self.users: dict[str, int] = {ASTRIA_DEMO_TOKEN: 1}
        self._packs: dict[int, _AstriaPack] = {}
        self._bytes: dict[str, tuple[str, bytes]] = {}
        self._tunes: dict[int, _Tune] = {}
        self._next_pack = 260
        self._next_tune = 690_200
        self._next_prompt = 18_154_000
        self.ignore_offset = False
        #: Every request's route (an image's: "astria-img") and the X-Workspace-Id it came with (None: none).
        self.workspaces_seen: list[tuple[str, str | None]] = []

    def add_pack(self, title: str, *, user_id: int = 1, public: bool = False, workspace: str | None = None) -> int:
        with self.lock:
            pack_id, self._next_pack = self._next_pack, self._next_pack + 1
            self._packs[pack_id] = _AstriaPack(pack_id, user_id, title, public, self._clock(), workspace=workspace)
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

    def add_tune(self, title: str, name: str = "woman", *, user_id: int = 1, trained_at: float | None = None,
                 workspace: str | None = None) -> int:
        """A trained tune of ``user_id`` (``name`` is its class); ``trained_at`` (epoch seconds) defaults to
        now, the start of Astria's 30 days; ``workspace``: seen only with that ``X-Workspace-Id``."""
        with self.lock:
            tune_id, self._next_tune = self._next_tune, self._next_tune + 1
            now = self._clock()
            self._tunes[tune_id] = _Tune(tune_id, user_id, title, name, now,
                                         now if trained_at is None else trained_at, workspace)
            return tune_id

    def add_prompt(self, tune_id: int, text: str, images: list[bytes] | None = None) -> int:
        """A prompt of the tune, generated with ``images`` (each stored at its own URL, its type from its
        bytes) or, with None, not generated yet. Returns its id."""
        urls = None if images is None else [self.store_bytes(data, _content_type(data)) for data in images]
        with self.lock:
            tune = self._tunes[tune_id]
            prompt_id, self._next_prompt = self._next_prompt, self._next_prompt + 1
            now = self._clock()
            tune.prompts.append(_TunePrompt(prompt_id, text, now, urls, None if urls is None else now))
            return prompt_id

    def generate(self, tune_id: int, prompt_id: int, data: bytes, content_type: str = "image/png") -> str:
        """One more image of the prompt, which may have had none until now: a generation finishing while a
        client follows the tune. Returns the image's URL."""
        url = self.store_bytes(data, content_type)
        with self.lock:
            prompt = self._tune_prompt(tune_id, prompt_id)
            prompt.images = [*(prompt.images or []), url]
            prompt.generated_at = self._clock()
        return url

    def remove_prompt(self, tune_id: int, prompt_id: int) -> None:
        with self.lock:
            self._tunes[tune_id].prompts.remove(self._tune_prompt(tune_id, prompt_id))

    def delete_tune(self, tune_id: int) -> None:
        with self.lock:
            del self._tunes[tune_id]

    def _tune_prompt(self, tune_id: int, prompt_id: int) -> _TunePrompt:
        prompt = next((p for p in self._tunes[tune_id].prompts if p.id == prompt_id), None)
        if prompt is None:
            raise KeyError(prompt_id)
        return prompt

    def image(self, key: str) -> tuple[str, bytes] | None:
        with self.lock:
            return self._bytes.get(key)

    # -- the API's answers ---------------------------------------------------------------------------

    def list_packs(self, user_id: int | None, *, gallery: bool, workspace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            packs = [p for p in self._packs.values()
                     if (p.public if gallery else p.user_id == user_id and p.workspace == workspace)]
            return [self._summary(p) for p in sorted(packs, key=lambda p: p.id)]

    def get_pack(self, user_id: int, pack_id: int, workspace: str | None = None) -> dict[str, Any] | None:
        with self.lock:
            pack = self._packs.get(pack_id)
            if pack is None or not (pack.public or pack.user_id == user_id and pack.workspace == workspace):
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

    def list_tunes(self, user_id: int, workspace: str | None) -> list[dict[str, Any]]:
        with self.lock:
            tunes = [t for t in self._tunes.values() if t.user_id == user_id and t.workspace == workspace]
            return [_tune_answer(t) for t in sorted(tunes, key=lambda t: t.id, reverse=True)]

    def get_tune(self, user_id: int, workspace: str | None, tune_id: int) -> dict[str, Any] | None:
        with self.lock:
            tune = self._visible_tune(user_id, workspace, tune_id)
            return None if tune is None else _tune_answer(tune)

    def tune_prompts(self, user_id: int, workspace: str | None, tune_id: int,
                     offset: int) -> list[dict[str, Any]] | None:
        """The page of the tune's prompts (newest first) from ``offset``; None: no such tune for the user."""
        with self.lock:
            tune = self._visible_tune(user_id, workspace, tune_id)
            if tune is None:
                return None
            start = 0 if self.ignore_offset else offset
            newest_first = sorted(tune.prompts, key=lambda p: p.id, reverse=True)
            return [self._prompt_answer(tune, p) for p in newest_first[start:start + PROMPTS_PER_PAGE]]

    def tune_prompt(self, user_id: int, workspace: str | None, tune_id: int,
                    prompt_id: int) -> dict[str, Any] | None:
        with self.lock:
            tune = self._visible_tune(user_id, workspace, tune_id)
            prompt = None if tune is None else next((p for p in tune.prompts if p.id == prompt_id), None)
            return None if tune is None or prompt is None else self._prompt_answer(tune, prompt)

    def _visible_tune(self, user_id: int, workspace: str | None, tune_id: int) -> _Tune | None:
        tune = self._tunes.get(tune_id)
        return tune if tune is not None and tune.user_id == user_id and tune.workspace == workspace else None

    def _prompt_answer(self, tune: _Tune, prompt: _TunePrompt) -> dict[str, Any]:
        done = prompt.generated_at
        answer: dict[str, Any] = {
            "id": prompt.id, "text": prompt.text, "negative_prompt": "", "cfg_scale": None, "steps": None,
            "seed": None, "trained_at": None if done is None else iso_ms(done),
            "started_training_at": iso_ms(prompt.created_at), "created_at": iso_ms(prompt.created_at),
            "updated_at": iso_ms(prompt.created_at if done is None else done), "tune_id": tune.id,
            "url": f"{self._origin()}{ASTRIA_PREFIX}/tunes/{tune.id}/prompts/{prompt.id}",
        }
        if prompt.images is not None:  # Astria's answer has no ``images`` until the prompt has run
            answer["images"] = list(prompt.images)
        return answer

    def _summary(self, pack: _AstriaPack) -> dict[str, Any]:
        return {"id": pack.id, "base_tune_id": 1, "user_id": pack.user_id, "slug": pack.slug, "title": pack.title,
                "token": "ohwx", "created_at": iso_ms(pack.created_at), "updated_at": iso_ms(pack.created_at),
                "multiplier": 10, "model_type": None,
                "public_at": iso_ms(pack.created_at) if pack.public else None,
                "cost_mc_hash": {cls: 100000 for cls in pack.classes}}


def _tune_answer(tune: _Tune) -> dict[str, Any]:
    return {"id": tune.id, "title": tune.title, "name": tune.name, "created_at": iso_ms(tune.created_at),
            "updated_at": iso_ms(tune.trained_at), "trained_at": iso_ms(tune.trained_at)}


def _content_type(data: bytes) -> str:
    kind = sniff_format(data)
    return f"image/{kind}" if kind is not None else "application/octet-stream"


def _json(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


def _number(text: str) -> int | None:
    """A path or query number (ASCII digits only), or None."""
    return int(text) if text.isascii() and text.isdigit() else None


def answer(store: AstriaStore, route: str, params: dict[str, str], query: str,
           headers: dict[str, str]) -> tuple[int, bytes]:
    """The status and JSON body Astria gives for an API ``route`` (``astria:/packs`` and the like);
    ``headers`` by lower-case name (``authorization``, ``x-workspace-id``)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    user_id = store.users.get(token.strip()) if scheme.lower() == "bearer" else None
    if user_id is None:
        return _json(401, {"error": "Unauthorized"})
    workspace = headers.get("x-workspace-id") or None
    if route == "astria:/packs":
        return _json(200, store.list_packs(user_id, gallery=False, workspace=workspace))
    if route == "astria:/gallery/packs":
        return _json(200, store.list_packs(None, gallery=True))
    if route.startswith("astria:/tunes"):
        return _answer_tunes(store, route, params, query, user_id, workspace)
    pack_id = _number(params["id"])
    pack = store.get_pack(user_id, pack_id, workspace) if pack_id is not None else None
    return _json(200, pack) if pack is not None else _json(404, NOT_FOUND)


def _answer_tunes(store: AstriaStore, route: str, params: dict[str, str], query: str, user_id: int,
                  workspace: str | None) -> tuple[int, bytes]:
    if route == "astria:/tunes":
        return _json(200, store.list_tunes(user_id, workspace))
    tune_id = _number(params["id"])
    found: Any = None
    if route == "astria:/tunes/{id}/prompts":
        offset = _number(parse_qs(query, keep_blank_values=True).get("offset", ["0"])[-1])
        if offset is None:
            return _json(422, {"offset": ["must be a non-negative integer"]})
        if tune_id is not None:
            found = store.tune_prompts(user_id, workspace, tune_id, offset)
    elif route == "astria:/tunes/{id}/prompts/{prompt_id}":
        prompt_id = _number(params["prompt_id"])
        if tune_id is not None and prompt_id is not None:
            found = store.tune_prompt(user_id, workspace, tune_id, prompt_id)
    elif tune_id is not None:
        found = store.get_tune(user_id, workspace, tune_id)
    return _json(200, found) if found is not None else _json(404, NOT_FOUND)
