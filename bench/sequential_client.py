"""The baseline of the first-sync speed-up: a plain httpx2 client that adds images one at a time.

For each PNG in a folder: ``POST /files``, ``PUT`` the bytes to the presigned URL, ``POST
/packs/{id}/images`` — one after the other, no concurrency, no state, no hashing. Prints
``{"files": n, "seconds": s}``, timing only the loop (interpreter start-up and imports are left
out, which favours this baseline).

    GENVIRAL_TOKEN=... python bench/sequential_client.py BASE_URL PACK_ID FOLDER
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx2


def main() -> None:
    base_url, pack_id, folder = sys.argv[1:4]
    paths = sorted(Path(folder).glob("*.png"))
    headers = {"Authorization": f"Bearer {os.environ['GENVIRAL_TOKEN']}"}
    # Proxies from the environment are ignored: the sandbox is on 127.0.0.1.
    with httpx2.Client(base_url=base_url.rstrip("/") + "/", headers=headers, trust_env=False) as api, \
            httpx2.Client(trust_env=False) as storage:
        start = time.perf_counter()
        for path in paths:
            data = path.read_bytes()
            ticket = api.post("files", json={"contentType": "image/png", "filename": path.name, "size": len(data)})
            upload = ticket.raise_for_status().json()["data"]
            storage.put(upload["uploadUrl"], content=data, headers={"Content-Type": "image/png"}).raise_for_status()
            api.post(f"packs/{pack_id}/images", json={"image_url": upload["url"], "file_name": path.name}) \
                .raise_for_status()
        seconds = time.perf_counter() - start
    print(json.dumps({"files": len(paths), "seconds": seconds}))


if __name__ == "__main__":
    main()
