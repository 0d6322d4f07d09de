"""The floor of the throughput scenarios: a bare ``httpx2.AsyncClient`` making the same calls as packsync.

Run as a process of its own and measured like packsync (wall time spawn → exit, CPU from ``os.wait4``;
see ``harness.bare_*``). It imports only httpx2, keeps ``concurrency`` calls in flight on as many
connections, checks each answer's status and remembers nothing:

    uploads BASE_URL PACK_ID FOLDER CONCURRENCY   # per PNG in FOLDER: POST /files, PUT, add-image
    downloads URLS_JSON CONCURRENCY               # GET each URL, reading the body, writing nothing
    mirror BASE_URL PACK_ID URLS_JSON CONCURRENCY # per URL: GET it, then the three upload calls

The API token comes from ``GENVIRAL_TOKEN``. Proxies from the environment are ignored: the sandbox is
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import httpx2

CHUNK = 65536
Item = TypeVar("Item")


def _client(concurrency: int) -> httpx2.AsyncClient:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx2.AsyncClient(limits=limits, timeout=60.0, trust_env=False)


async def _download(client: httpx2.AsyncClient, url: str) -> bytes:
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        return b"".join([chunk async for chunk in response.aiter_bytes(CHUNK)])


async def _upload(client: httpx2.AsyncClient, base: str, pack_id: str, name: str, data: bytes) -> None:
    auth = {"Authorization": "Bearer " + os.environ["GENVIRAL_TOKEN"]}
    ask = {"contentType": "image/png", "filename": name, "size": len(data)}
    ticket = (await client.post(base + "/files", json=ask, headers=auth)).raise_for_status().json()["data"]
    (await client.put(ticket["uploadUrl"], content=data, headers={"Content-Type": "image/png"})).raise_for_status()
    add = {"image_url": ticket["url"], "file_name": name}
    (await client.post(f"{base}/packs/{pack_id}/images", json=add, headers=auth)).raise_for_status()


async def _workers(concurrency: int, work: Iterator[Item], one: Callable[[Item], Awaitable[None]]) -> None:
    """``concurrency`` workers taking items from one shared iterator until it is empty."""
    async def worker() -> None:
        for item in work:
            await one(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def uploads(base: str, pack_id: str, folder: str, concurrency: int) -> None:
    entries = iter(sorted(os.scandir(folder), key=lambda entry: entry.name))
    async with _client(concurrency) as client:
        async def one(entry: os.DirEntry[str]) -> None:
            with open(entry.path, "rb") as handle:
                data = handle.read()
            await _upload(client, base, pack_id, entry.name, data)

        await _workers(concurrency, entries, one)


async def downloads(urls: list[str], concurrency: int) -> None:
    async with _client(concurrency) as client:
        async def one(url: str) -> None:
            await _download(client, url)

        await _workers(concurrency, iter(urls), one)


async def mirror(base: str, pack_id: str, urls: list[str], concurrency: int) -> None:
    async with _client(concurrency) as client:
        async def one(item: tuple[int, str]) -> None:
            index, url = item
            await _upload(client, base, pack_id, f"{index:07}.png", await _download(client, url))

        await _workers(concurrency, enumerate(urls), one)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "uploads":
        asyncio.run(uploads(args[0].rstrip("/"), args[1], args[2], int(args[3])))
    elif mode == "downloads":
        with open(args[0], encoding="utf-8") as handle:
            asyncio.run(downloads(json.load(handle), int(args[1])))
    elif mode == "mirror":
        with open(args[2], encoding="utf-8") as handle:
            asyncio.run(mirror(args[0].rstrip("/"), args[1], json.load(handle), int(args[3])))
    else:
        sys.exit(f"unknown mode {mode!r}: uploads, downloads or mirror")


if __name__ == "__main__":
    main()
