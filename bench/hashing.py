"""Hashing one changed 1 GiB file: packsync's own code path against ``sha256sum``.

``packsync.sources.media.digest_file`` (the scanner's one read per changed file: SHA-256 plus the head and
tail checks) is timed inside a Python process around the call; ``sha256sum`` is timed as a whole
process. Both read the same file from a warm page cache; best of 3 each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import Context, Row, run_child

REPEATS = 3

#: Times digest_file on the file given, REPEATS times, in a fresh interpreter.
DIGEST = """
import json, sys, time
from packsync.sources.media import digest_file
times, digest = [], None
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    digest = digest_file(sys.argv[1])
    times.append(time.perf_counter() - start)
print(json.dumps({"times": times, "sha256": digest.sha256, "size": digest.size}))
"""


def run(ctx: Context) -> list[Row]:
    size = (64 if ctx.smoke else 1024) * 1024 * 1024
    path = ctx.workdir / "hashing" / "big.png"
    path.parent.mkdir(parents=True)
    ctx.log(f"hashing: writing a {size / 2**30:.2f} GiB file")
    block = os.urandom(16 * 1024 * 1024)
    with path.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        written = 8
        while written < size:
            chunk = block[: size - written]
            handle.write(chunk)
            written += len(chunk)
    try:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        ctx.log("hashing: digest_file ×3, sha256sum ×3")
        done = run_child([sys.executable, "-c", DIGEST, str(path), str(REPEATS)], cwd=path.parent, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"digest_file failed: {done.tail()}")
        ours = json.loads(done.stdout)
        theirs, reference = [], ""
        for _ in range(REPEATS):
            tool = run_child(["sha256sum", str(path)], cwd=path.parent, timeout=900)
            if tool.returncode != 0:
                raise RuntimeError(f"sha256sum failed: {tool.tail()}")
            theirs.append(tool.wall_s)
            reference = tool.stdout.split()[0]
    finally:
        path.unlink()
    best_ours, best_theirs = min(ours["times"]), min(theirs)
    ratio = best_theirs / best_ours  # throughput ratio: (size / ours) ÷ (size / theirs)
    same = ours["sha256"] == reference and ours["size"] == size
    return [Row(
        "hashing", f"one changed {size / 2**30:g} GiB file",
        "hashing throughput of packsync.sources.media.digest_file ÷ sha256sum on the same file (warm cache, best of 3)",
        ratio, "≥ 0.9", same and ratio >= 0.9,
        f"digest_file {size / best_ours / 1e6:.0f} MB/s ({best_ours:.2f} s); sha256sum {size / best_theirs / 1e6:.0f} "
        f"MB/s ({best_theirs:.2f} s, whole process)" + ("" if same else "; DIGESTS DIFFER"),
        {"size": size, "digest_file_s": ours["times"], "sha256sum_s": theirs, "same_digest": same}, same)]
