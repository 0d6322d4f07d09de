"""The Astria API client (read only): packs and tunes in, typed values or classified errors out.

It owns Astria's base URL and key, its paths and the reading of its answers: plain JSON without an
envelope, an error status becoming the error it is through ``refusal`` (``transport.py``). Its requests
go through the process's one ``Transport``, so they share the slots, retry policy and run budget of
every other request; its images are downloaded by the same transport without the key: image URLs are
public, and the key goes to Astria's API only. It knows nothing of the Genviral client. Everything an
answer says is checked here; an entry that is not an image is a problem of that entry, never an error
of the pack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from packsync.errors import NotFound, PermanentError, TransientError
from packsync.logs import untrusted
from packsync.model import (
    ASTRIA_TUNE_KEPT_S,
    AstriaImage,
    AstriaPack,
    AstriaPackSummary,
    AstriaTune,
    Problem,
    TunePrompt,
    TunePrompts,
)
from packsync.remote.answers import url_problem
from packsync.remote.transport import Transport
from packsync.remote.wire import Answer, Headers, Route, S, path_segment, refusal, retry_after_of

_AUTH = "the Astria API refused the key: it is invalid or revoked ({status})"

GET_PACK = Route("GET", "astria /p/{id}", label="Astria GET /p/{id}")
LIST_PACKS = Route("GET", "astria /packs", label="Astria GET /packs")
LIST_GALLERY = Route("GET", "astria /gallery/packs", label="Astria GET /gallery/packs")
LIST_TUNES = Route("GET", "astria /tunes", label="Astria GET /tunes")
GET_TUNE = Route("GET", "astria /tunes/{id}", label="Astria GET /tunes/{id}")
LIST_PROMPTS = Route("GET", "astria /tunes/{id}/prompts", label="Astria GET /tunes/{id}/prompts")
GET_PROMPT = Route("GET", "astria /tunes/{id}/prompts/{id}", label="Astria GET /tunes/{id}/prompts/{id}")

#: Prompts in a full page of ``GET /tunes/{id}/prompts`` (Astria's documented page size).
PROMPTS_PER_PAGE = 20
#: Pages of a tune's prompts read at most (100,000 prompts): a server that pages for ever ends the walk.
MAX_PROMPT_PAGES = 5000


def json_of(answer: Answer, route: Route) -> Any:
    """An answer's JSON, or the error it is (reads only: repeating one is always harmless, a 504 included)."""
    status = answer.status
    if status >= 300:
        said = {429: "rate limited (429)", 404: "not found, or not visible to the key (404)"}.get(status) \
            or (f"server error {status}" if status >= 500 else f"HTTP {status}: {untrusted(answer.content, 120)}")
        raise refusal(route, status, said, retry_after=retry_after_of(answer),
                      auth=_AUTH.format(status=status) if status in (401, 403) else None)
    try:
        return answer.json()
    except ValueError:
        raise refusal(route, status, f"HTTP {status}, not a JSON answer") from None


def _shown(value: object) -> str:
    """A class name or title from Astria, as packsync shows and stores it."""
    return untrusted(str(value), 60)


def _prompt_id(value: object) -> int | None:
    """A prompt's id: a number (the docs), or a string of digits (said leniently); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def _title(raw: dict[str, Any], pack_id: int) -> str:
    title = raw.get("title")
    return untrusted(title, 120) if isinstance(title, str) and title.strip() else f"pack {pack_id}"


def pack_of(data: Any, pack_id: int) -> AstriaPack:
    """``GET /p/{id}``'s answer, checked entry by entry."""
    if not isinstance(data, dict) or not isinstance(data.get("prompts_per_class"), dict):
        raise PermanentError(f"Astria GET /p/{pack_id}: the answer lists no prompts_per_class")
    images: list[AstriaImage] = []
    problems: list[tuple[str, str, str]] = []
    classes = [_shown(cls) for cls in data["prompts_per_class"]]
    for name, prompts in zip(classes, data["prompts_per_class"].values(), strict=True):
        if not isinstance(prompts, list):
            problems.append((name, name, "its prompts are not a list"))
            continue
        for number, prompt in enumerate(prompts, 1):
            prompt_id = _prompt_id(prompt.get("id")) if isinstance(prompt, dict) else None
            urls = prompt.get("images") if isinstance(prompt, dict) else None
            if prompt_id is None or not isinstance(urls, list):
                problems.append((name, f"{name}/prompt {number}", "not a prompt with an id and a list of images"))
                continue
            for index, url in enumerate(urls, 1):
                if problem := url_problem(url):
                    problems.append((name, f"{name}-{prompt_id}-{index}", problem))
                else:
                    images.append(AstriaImage(url, name, prompt_id, index))
    return AstriaPack(pack_id, _title(data, pack_id), tuple(classes), tuple(images), tuple(problems))


#: The latest time Astria's answer may name: a tune's deletion date, ``ASTRIA_TUNE_KEPT_S`` on, is still a date.
_LATEST = datetime.max.replace(tzinfo=UTC).timestamp() - ASTRIA_TUNE_KEPT_S


def _instant(value: object) -> float | None:
    """An ISO-8601 time from Astria (``2026-05-01T10:00:00.000Z``) in epoch seconds; None if it is not one,
    or one so late that a date 30 days on could not be written (the year 9999 ends): not known."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return at if (at := moment.timestamp()) <= _LATEST else None


def tune_of(data: Any, tune_id: int | None = None) -> AstriaTune | None:
    """A tune's answer (one of ``GET /tunes``, or ``GET /tunes/{id}``'s), or None if it is not a tune."""
    found = data.get("id") if isinstance(data, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or (tune_id is not None and found != tune_id):
        return None
    title, name = data.get("title"), data.get("name")
    return AstriaTune(found, untrusted(title, 120) if isinstance(title, str) and title.strip() else f"tune {found}",
                      _shown(name) if isinstance(name, str) else "", _instant(data.get("trained_at")))


def prompt_of(raw: Any, where: str) -> TunePrompt | Problem:
    """One entry of a tune's prompts, checked: a prompt, or the problem of an entry that is not one
    (``where`` names it). ``images`` absent, null or empty is a prompt not generated yet, no problem; a
    ``text`` that is not a string is read as none, with a notice."""
    prompt_id = _prompt_id(raw.get("id")) if isinstance(raw, dict) else None
    if prompt_id is None or prompt_id < 1:  # (Astria's ids are positive: an image is named after its prompt's)
        return Problem(where, "not a prompt with an id")
    text = raw.get("text")
    urls = raw.get("images")
    images: list[str] = []
    problems: list[Problem] = []
    if text is not None and not isinstance(text, str):  # (it only describes: the source judges what it is for)
        problems.append(Problem(f"prompt {prompt_id}", "its text is not a string; it is shown without one",
                                notice=True))
    if urls is not None and not isinstance(urls, list):
        problems.append(Problem(f"prompt {prompt_id}", "its images are not a list"))
    for index, url in enumerate(urls if isinstance(urls, list) else (), 1):
        if problem := url_problem(url):
            problems.append(Problem(f"{prompt_id}-{index}", problem))
        else:
            images.append(url)
    return TunePrompt(prompt_id, text if isinstance(text, str) else None, tuple(images), tuple(problems))


def _grown(one: TunePrompt, other: TunePrompt) -> bool:
    """Whether two copies of a prompt differ only in that one lists more of its images, in the same order:
    a generation that finished while the pages were read."""
    shorter, longer = sorted((one.images, other.images), key=len)
    return one.text == other.text and len(shorter) < len(longer) and longer[:len(shorter)] == shorter


class AstriaClient:
    """Astria's packs and tunes, read with its own key through the process's ``transport``."""

    def __init__(self, base_url: str, token: str, transport: Transport, *, workspace: str | None = None) -> None:
        self.transport = transport
        self._base = base_url.rstrip("/")
        # (API calls only: an image's download goes to public storage, with neither the key nor the workspace)
        self._headers = Headers({"Authorization": f"Bearer {token}"}
                                | ({"X-Workspace-Id": workspace} if workspace is not None else {}))

    async def _get(self, route: Route, path: str) -> Any:
        return await self.transport.request(route, self._base + path, json_of, headers=self._headers,
                                            safe_to_repeat=True)

    async def pack(self, pack_id: int) -> AstriaPack:
        return pack_of(await self._get(GET_PACK, f"/p/{path_segment(str(pack_id))}"), pack_id)

    async def packs(self, *, gallery: bool = False) -> list[AstriaPackSummary]:
        """The key's packs (or the public gallery's), with their classes."""
        path = "/gallery/packs" if gallery else "/packs"
        data = await self._get(LIST_GALLERY if gallery else LIST_PACKS, path)
        if not isinstance(data, list):
            raise PermanentError(f"Astria GET {path}: the answer is not a list of packs")
        found = []
        for raw in data:
            pack_id = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(pack_id, int) and not isinstance(pack_id, bool):
                costs = raw.get("cost_mc_hash")
                classes = tuple(map(_shown, costs)) if isinstance(costs, dict) else ()
                found.append(AstriaPackSummary(pack_id, _title(raw, pack_id), classes))
        return found

    async def details(self, summaries: list[AstriaPackSummary]) -> list[AstriaPack | None]:
        """Each pack's detail (None for one that cannot be read now), fetched concurrently."""

        async def one(summary: AstriaPackSummary) -> AstriaPack | None:
            try:
                return await self.pack(summary.pack_id)
            except (NotFound, PermanentError, TransientError):
                return None

        return list(await asyncio.gather(*map(one, summaries)))

    async def tunes(self) -> list[AstriaTune]:
        """The key's tunes (in its workspace, when one is configured); an entry that is not a tune is left out."""
        data = await self._get(LIST_TUNES, "/tunes")
        if not isinstance(data, list):
            raise PermanentError("Astria GET /tunes: the answer is not a list of tunes")
        return [tune for raw in data if (tune := tune_of(raw)) is not None]

    async def tune(self, tune_id: int) -> AstriaTune:
        """One tune; ``NotFound`` when the key cannot see it."""
        tune = tune_of(await self._get(GET_TUNE, f"/tunes/{path_segment(str(tune_id))}"), tune_id)
        if tune is None:
            raise PermanentError(f"Astria GET /tunes/{tune_id}: the answer is not that tune")
        return tune

    async def prompt(self, tune_id: int, prompt_id: int) -> TunePrompt | Problem:
        """One prompt of a tune (``NotFound``: Astria has no such prompt, or the key cannot see it)."""
        path = f"/tunes/{path_segment(str(tune_id))}/prompts/{path_segment(str(prompt_id))}"
        return prompt_of(await self._get(GET_PROMPT, path), f"prompt {prompt_id}")

    async def prompts(self, tune_id: int) -> TunePrompts:
        """Every prompt of a tune, walking its pages by offset, each prompt once (by id).

        The walk is complete when a page is short or empty. A server that ignores ``offset``, or pages for
        ever, cannot make it loop: a full page that brings no new prompt, or ``MAX_PROMPT_PAGES`` pages,
        end it incomplete, and say why (a prompt it did not see may still exist). Prompts are listed newest
        first, so one added during the walk shows a prompt twice: ids are de-duplicated. Of two copies of a
        prompt, the one that lists more images is taken when the other's are its first (a generation that
        finished meanwhile); copies that differ otherwise are a problem (which to believe cannot be told, so
        nothing is deleted).
        """
        found: dict[int, TunePrompt] = {}
        problems: list[Problem] = []
        offset = 0
        base = f"/tunes/{path_segment(str(tune_id))}/prompts"
        for page_number in range(1, MAX_PROMPT_PAGES + 1):
            page = await self._get(LIST_PROMPTS, f"{base}?offset={offset}")
            if not isinstance(page, list):
                raise PermanentError(f"Astria GET /tunes/{tune_id}/prompts: the answer is not a list of prompts")
            new = 0
            for number, raw in enumerate(page, 1):
                entry = prompt_of(raw, f"prompt #{number} of page {page_number}")
                if isinstance(entry, Problem):  # (not counted as new: a server repeating it cannot loop the walk)
                    problems.append(entry)
                elif (seen := found.get(entry.prompt_id)) is None:
                    found[entry.prompt_id] = entry
                    new += 1
                elif _grown(seen, entry):  # (a generation finished between two pages: the later copy is whole)
                    found[entry.prompt_id] = max(seen, entry, key=lambda prompt: len(prompt.images))
                elif seen != entry:
                    problems.append(Problem(f"prompt {entry.prompt_id}", "listed twice, with different images or "
                                            "text; which is right cannot be told"))
            if len(page) < PROMPTS_PER_PAGE:
                return TunePrompts(tuple(found.values()), tuple(problems))
            if not new:
                why = f"Astria answered offset {offset} with prompts it had listed already"
                return TunePrompts(tuple(found.values()), tuple(problems), complete=False, why=why)
            offset += len(page)
        why = f"Astria listed more than {MAX_PROMPT_PAGES} pages of prompts; the rest were not read"
        return TunePrompts(tuple(found.values()), tuple(problems), complete=False, why=why)

    async def walks(self, tune_ids: list[int]) -> list[TunePrompts | None]:
        """Each tune's prompts (None for a tune whose prompts cannot be read now), walked concurrently."""

        async def one(tune_id: int) -> TunePrompts | None:
            try:
                return await self.prompts(tune_id)
            except (NotFound, PermanentError, TransientError):
                return None

        return list(await asyncio.gather(*map(one, tune_ids)))

    async def download(self, url: str, max_bytes: int, sink: Callable[[], S]) -> S:
        """An image's bytes, without the key (image URLs are public storage)."""
        return await self.transport.download(url, max_bytes, sink)
