"""An Astria tune as a source: the images its prompts generated, each known by its URL, mirrored into a pack
(or pulled to a folder) with the prompt's text as its description. The whole kind is this module: its
mapping keys (``AstriaTuneSettings``), its source, and what ``pull astria-tune:<id>`` downloads.

A tune's prompts come 20 a page (``remote/astria.py`` walks them). A listing decides deletes, so a miss
never becomes one: a walk that ended early, or an entry it could not read, keeps every image synced before;
a prompt on record that a complete walk did not show is asked for by its id, and only Astria's 404 lets its
images go; a prompt whose images went empty, and a tune past the date Astria deletes its images, keep
theirs. (An image also goes when the ``prompts`` filter no longer takes its prompt, or its prompt no longer
lists it: the source says so.) With a filter, a prompt whose text cannot be read is a problem, not one the
filter left out. Downloads are held until uploaded by ``downloads.py``, as an Astria pack's are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import msgspec
from msgspec import Meta

from packsync.errors import ApiError, AuthError, NotFound
from packsync.logs import untrusted
from packsync.model import (
    AstriaTune,
    CachedFile,
    ContentItem,
    Listed,
    ListedImage,
    Problem,
    Scan,
    TunePrompt,
    TunePrompts,
)
from packsync.sources.base import MAX_POLL_S
from packsync.sources.body import UploadBody
from packsync.sources.downloads import Download, Downloader, HeldDownloads, Wanted, listing_failures


class TuneReader(Downloader, Protocol):
    """What the tune source needs of Astria (``remote/astria.py``'s client is one)."""

    async def tune(self, tune_id: int) -> AstriaTune: ...

    async def prompts(self, tune_id: int) -> TunePrompts: ...

    async def prompt(self, tune_id: int, prompt_id: int) -> TunePrompt | Problem: ...

    async def download(self, url: str, max_bytes: int, sink: Callable[[], Download]) -> Download: ...


class AstriaTuneSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                         tag_field="kind", tag="astria-tune"):
    """A mapping (or a pull) of an Astria tune's generated images: its keys are this struct's fields."""

    name: ClassVar[str] = "astria-tune"
    noun: ClassVar[str] = "an Astria tune"
    api: ClassVar[str] = "astria"
    described: ClassVar[bool] = True
    id_key: ClassVar[str] = "astria_tune"

    astria_tune: Annotated[int, Meta(ge=1)]
    #: Only the prompts whose text holds this (case-insensitive); None: every prompt.
    prompts: Annotated[str, Meta(min_length=1)] | None = None
    #: How often the daemon reads the tune, in seconds: generations finish within minutes.
    astria_poll_s: Annotated[float, Meta(ge=10, le=MAX_POLL_S)] = 600.0

    def __post_init__(self) -> None:
        if self.prompts is not None and not self.prompts.strip():
            raise ValueError("prompts: a filter of only spaces would take nearly every prompt; remove it to take all")

    @property
    def id(self) -> int:
        return self.astria_tune

    @property
    def label(self) -> str:
        return tune_label(self.astria_tune)

    @property
    def poll_s(self) -> float | None:
        return self.astria_poll_s

    def source(self, client: Any, max_bytes: int, spool: Path | None) -> AstriaTuneSource:
        return AstriaTuneSource(client, self.astria_tune, self.prompts, max_bytes, spool)

    async def listed(self, client: Any) -> Listed:
        """What ``packsync pull astria-tune:<id>`` downloads: ``<prompt id>-<n>`` per image, its prompt's
        text as its description. Raises what reading the tune raises (``NotFound``: no such tune). A pull's
        ``--delete`` removes nothing (``unreadable``) while the walk ended early or an entry cannot be read,
        nor once the tune is past the date Astria deletes its images; else ``kept`` says which files stay."""
        reader: TuneReader = client
        tune = await reader.tune(self.astria_tune)  # (first: a tune that is not there has no pages to walk)
        walk = await reader.prompts(self.astria_tune)
        chosen = _chosen(walk, self.prompts)
        problems = list(_problems(walk, self.prompts))
        if not walk.complete:
            problems.append(Problem(self.label, f"{walk.why}; nothing is removed"))
        withheld = []
        if not walk.complete:
            withheld.append(walk.why or "its prompts were not all read")
        elif unread := [problem for problem in problems if not problem.notice]:
            withheld.append(f"{len(unread)} of its entries could not be read")
        if tune.expires_at is not None and time.time() >= tune.expires_at:
            withheld.append(f"Astria deletes its images after {_day(tune.expires_at)}")
        images = tuple(ListedImage(url, (f"{prompt.prompt_id}-{n}",), prompt.text)
                       for url, (prompt, n) in chosen.items())
        return Listed(self.label, tune.title, images, tuple(problems),
                      unreadable=f"{self.label}: {'; '.join(withheld)}" if withheld else None)

    async def kept(self, client: Any, names: Collection[str]) -> set[str]:
        """Of the files a pull made from the tune that its listing no longer shows (``<prompt id>-<n>.<ext>``),
        those whose prompt Astria still has: a miss of the walk (a page shifted by a prompt deleted meanwhile)
        or an emptied prompt is never a removal. Only Astria's 404 for its prompt lets a file go."""
        reader: TuneReader = client
        by_prompt: dict[int, list[str]] = {}
        kept = set()
        for name in names:
            head = name.rpartition("/")[2].partition("-")[0]
            if head.isascii() and head.isdigit():
                by_prompt.setdefault(int(head), []).append(name)
            else:
                kept.add(name)  # (not a name this kind gives: nothing to ask Astria by)

        async def gone(prompt_id: int) -> bool:
            try:
                await reader.prompt(self.astria_tune, prompt_id)
            except NotFound:
                return True
            except ApiError as exc:
                if isinstance(exc, AuthError):
                    raise
                return False
            return False

        answers = await asyncio.gather(*map(gone, by_prompt))
        for prompt_names, answer in zip(by_prompt.values(), answers, strict=True):
            if not answer:
                kept.update(prompt_names)
        return kept


#: What a tune Astria no longer shows may be: its storage policy at work (the images mirrored stay).
_GONE = (" (a tune trained over 30 days ago may have been deleted by Astria with its images, unless its storage "
         "was extended; what was mirrored stays in the pack)")


def tune_label(tune_id: int) -> str:
    """How an Astria tune is named as a source (in messages, the state, the views and pull's argument)."""
    return f"{AstriaTuneSettings.name}:{tune_id}"


def _matches(prompt: TunePrompt, wanted: str | None) -> bool:
    """Whether ``prompts = wanted`` takes the prompt: a case-insensitive substring of its text."""
    return wanted is None or (prompt.text is not None and wanted.casefold() in prompt.text.casefold())


def _chosen(walk: TunePrompts, wanted: str | None) -> dict[str, tuple[TunePrompt, int]]:
    """The images of the prompts ``wanted`` takes, one per URL (the same URL under several prompts is one
    image, named after its first), each with its prompt and its number in it (from 1)."""
    found: dict[str, tuple[TunePrompt, int]] = {}
    for prompt in walk.prompts:
        if _matches(prompt, wanted):
            for n, url in enumerate(prompt.images, 1):
                found.setdefault(url, (prompt, n))
    return found


def _problems(walk: TunePrompts, wanted: str | None) -> Iterator[Problem]:
    """The walk's entries that could not be read: those of no prompt, those of the prompts taken, and, with
    a filter, the prompts whose text cannot be read (the filter cannot tell whether it takes them, so they
    are not taken, and their images on record must not be deleted as if the user's choice had left them)."""
    yield from walk.problems
    for prompt in walk.prompts:
        if _matches(prompt, wanted):
            yield from prompt.problems
        elif prompt.text is None:
            yield Problem(f"prompt {prompt.prompt_id}", "its text cannot be read, so the prompts filter cannot "
                          "tell whether it is taken; nothing synced from this tune is deleted")


def _version(prompt_id: int, url: str) -> str:
    """An image's version token: its URL (whose bytes never change), after the prompt it came from."""
    return f"{prompt_id}:{url}"


def _prompt_of(cached: CachedFile) -> int | None:
    """The prompt an image on record came from (its version token's), or None."""
    head, _, _url = cached.version.partition(":")
    return int(head) if head.isdigit() else None


def _known(cached: CachedFile | None, url: str) -> bool:
    """Whether an image was downloaded and judged already (its URL's bytes never change)."""
    return cached is not None and cached.sha256 is not None and cached.version.partition(":")[2] == url


def _day(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%d")


class AstriaTuneSource:
    """One Astria tune's generated images (of the prompts ``wanted`` takes, or all), mirrored (the
    ``Source`` interface)."""

    kind: str = AstriaTuneSettings.name
    gone = False
    unavailable: str | None = None  # a tune that cannot be read is a scan's SourceUnavailable

    def __init__(self, client: TuneReader, tune_id: int, wanted: str | None, max_bytes: int, spool: Path | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.tune_id = tune_id
        self.wanted = wanted
        self.label = tune_label(tune_id)
        self.name: str | None = None
        #: When Astria deletes the tune's images (once scanned; None: not known).
        self.expires_at: float | None = None
        self.downloads = HeldDownloads(client, max_bytes, spool)
        self._clock = clock

    def exists(self) -> bool:
        return True  # known only by reading it: a tune that is gone is a scan's SourceUnavailable

    async def listing(self) -> None:
        return None  # reading the tune's prompts is the only way to see it

    async def scan_paths(self, paths: Collection[str], previous: Mapping[str, CachedFile],
                         busy: Collection[str] = (), on_item: Callable[[int], None] | None = None) -> None:
        return None  # the same: one walk of the whole tune

    async def _read(self) -> tuple[AstriaTune, TunePrompts]:
        """The tune and its prompts; what cannot be read makes the source unavailable (nothing deleted)."""
        with listing_failures(self.label, "tune", self.tune_id, _GONE):
            tune = await self.client.tune(self.tune_id)  # (first: a tune that is not there has no pages to walk)
            return tune, await self.client.prompts(self.tune_id)

    async def scan(self, previous: Mapping[str, CachedFile], busy: Collection[str] = (),
                   on_item: Callable[[int], None] | None = None) -> Scan:
        tune, walk = await self._read()
        self.name = tune.title
        if tune.expires_at is not None:  # (an answer without the date keeps the one known: ``Source.expires_at``)
            self.expires_at = tune.expires_at
        chosen = _chosen(walk, self.wanted)
        scan = Scan(self.label, problems=list(_problems(walk, self.wanted)))
        if not walk.complete:
            scan.problems.append(Problem(self.label, f"{walk.why}; nothing synced from it is deleted"))
        gone = {url: cached for url, cached in previous.items() if url not in chosen}
        for url in await self._kept(walk, gone, scan) if gone else ():
            cached = gone[url]
            if cached.sha256 and not cached.problem:
                scan.keep.add(cached.sha256)
                scan.cache[url] = cached  # (its record, and so its prompt, stays known)
        self.close()
        await self.downloads.gather(scan, [
            Wanted(url, _version(prompt.prompt_id, url), f"{prompt.prompt_id}-{n}", prompt.text,
                   _known(previous.get(url), url)) for url, (prompt, n) in chosen.items()], previous, on_item)
        return scan

    async def _kept(self, walk: TunePrompts, gone: Mapping[str, CachedFile], scan: Scan) -> Collection[str]:
        """Of the images on record that are not listed now (``gone``), those that must not be deleted (see
        the module's docstring); ``scan.problems`` gain why."""
        expires_at = self.expires_at
        if expires_at is not None and self._clock() >= expires_at:
            scan.problems.append(Problem(self.label, f"Astria deletes this tune's images after {_day(expires_at)}: "
                                         "no image synced from it is deleted since", notice=True))
            return gone.keys()
        # An entry it could not read may be one it listed before: nothing synced from it goes. (A notice is
        # no such entry: a text that only describes, read as none.)
        if any(not problem.notice for problem in scan.problems):
            return gone.keys()
        listed = {prompt.prompt_id: prompt for prompt in walk.prompts}
        by_prompt: dict[int, list[str]] = {}
        kept: set[str] = set()
        for url, cached in gone.items():
            if (prompt_id := _prompt_of(cached)) is None:
                kept.add(url)  # (a record of no prompt is not this source's making: nothing to confirm it by)
            else:
                by_prompt.setdefault(prompt_id, []).append(url)
        for prompt_id, urls in by_prompt.items():
            prompt = listed.get(prompt_id)
            if prompt is not None and not prompt.images and _matches(prompt, self.wanted):
                kept.update(urls)  # Astria's clean-up, not the user's choice
                scan.problems.append(Problem(f"prompt {prompt_id}", f"lists no images now; the {len(urls)} "
                                             "synced from it are kept", notice=True))
        vanished = [prompt_id for prompt_id in by_prompt if prompt_id not in listed]
        answers = await asyncio.gather(*(self._confirm(prompt_id) for prompt_id in vanished))
        for prompt_id, why in zip(vanished, answers, strict=True):
            if why is not None:
                kept.update(by_prompt[prompt_id])
                scan.problems.append(Problem(f"prompt {prompt_id}", why))
        return kept

    async def _confirm(self, prompt_id: int) -> str | None:
        """None if Astria confirms the prompt is deleted (404); else why its images are kept."""
        try:
            await self.client.prompt(self.tune_id, prompt_id)
        except NotFound:
            return None
        except AuthError:
            raise
        except ApiError as exc:
            return (f"not listed, and Astria could not confirm it was deleted ({untrusted(str(exc), 120)}); "
                    "its images are kept")
        return "not listed by the walk, but Astria still has it; its images are kept"

    async def open(self, item: ContentItem) -> UploadBody:
        """The bytes held in memory or in the spool, or downloaded again (an image hashed by an earlier run)."""
        return await self.downloads.open(item)

    def close(self) -> None:
        """Drop what is held, in memory and in the spool (done before each scan too)."""
        self.downloads.close()
