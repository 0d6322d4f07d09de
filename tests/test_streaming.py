"""Uploads streamed from disk (``sources/body.py``, the transport's streamed PUT): a file that changes while
it is sent is caught before its last bytes leave and never recorded; a retried PUT sends it whole again
and counts it once; memory stays far below the size of the file, for a folder's file and an Astria
image alike (a real ``packsync run``, its peak RSS read from ``/proc``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import photos
import pytest
from conftest import TOKEN, Env, image, write
from helpers import state_rows

from packsync.app import open_app, pull_once
from packsync.engine.pull import PullOptions
from packsync.engine.sync import SyncOptions, SyncReport
from packsync.errors import ExitCode, ItemChanged
from packsync.remote.genviral import GenviralClient
from packsync.remote.transport import Transport
from packsync.sources.body import CHUNK, FileRange, UploadBody
from packsync.views.progress import Progress

MB = 1_000_000


def padded_png(size: int, seed: int = 1, small: bytes | None = None) -> bytes:
    """A valid PNG of exactly ``size`` bytes: a small image (``small``, else a plain one) with a private
    ancillary chunk before IEND."""
    small = small or image(seed=seed)
    head, end = small[:-12], small[-12:]
    filler = size - len(small) - 12
    data = bytes(range(256)) * (filler // 256) + bytes(filler % 256)
    chunk = struct.pack(">I", filler) + b"prVt" + data + struct.pack(">I", zlib.crc32(b"prVt" + data))
    return head + chunk + end


class Gate:
    """A throttle that lets every byte pass at once: it calls ``at_first`` when the first chunk of an upload
    is about to leave, counts the takes and the bytes they let pass, and notes the most bytes ever counted sent,
    and the total they were counted against."""

    def __init__(self, progress: Progress, at_first: Callable[[], None] = lambda: None) -> None:
        self.progress = progress
        self.at_first = at_first
        self.chunks = 0
        self.taken = 0
        self.peak_sent = 0
        self.over_total: list[tuple[int, int]] = []

    async def take(self, n: int, direction: Literal["up", "down"]) -> None:
        if direction != "up":
            return
        self.chunks += 1
        self.taken += n
        if self.chunks == 1:
            self.at_first()
        sent, total = self.progress.counts["sent"], self.progress.totals.get("sent", 0)
        self.peak_sent = max(self.peak_sent, sent)
        if sent + n > total:
            self.over_total.append((sent + n, total))


def sync_through(env: Env, gate: Callable[[Progress], Gate]) -> tuple[SyncReport, Gate]:
    """One in-process sync as ``packsync run`` makes it, its transport's throttle the ``Gate``."""
    progress = Progress(enabled=False)
    made = gate(progress)

    async def run() -> SyncReport:
        async with open_app(env.config(), TOKEN, progress=progress) as app:
            app.api.transport.throttle = made
            return await app.syncer.sync(SyncOptions(wait=False, poll_start_s=0.05))

    return asyncio.run(run()), made


def failures(report: SyncReport) -> list[str]:
    return [problem.reason for m in report.mappings if m.outcome for problem in m.outcome.failed_items]


def uploaded_blobs(env: Env) -> list[tuple[str, int]]:
    return [(sha, done) for sha, done in state_rows(env.state_path, "SELECT sha256, uploaded FROM blobs") if done]


def stored_files(env: Env) -> int:
    return len(env.sandbox.store.list_files("ws-1", 100, 0, None)[0])


# -- a file that changes while it is sent ------------------------------------------------------------


def grow(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"appended while it was uploaded")


def change_in_place(path: Path) -> None:
    """The same size, other bytes, past what the first chunks read (inside the padding chunk)."""
    with path.open("r+b") as handle:
        handle.seek(os.path.getsize(path) - 4096)
        handle.write(b"\xee" * 1024)


@pytest.mark.parametrize("change", [grow, change_in_place], ids=["grows", "changes-in-place"])
@pytest.mark.parametrize("strip", [[], None], ids=["as-is", "default-recipe"])
def test_a_file_that_changes_during_its_put_is_not_recorded_and_goes_next_run(
        env: Env, change: Callable[[Path], None], strip: list[str] | None) -> None:
    options = {} if strip is None else {"strip": strip}
    pack_id = env.sandbox.create_pack("Brand")
    photo = write(env.map("brand", pack_id=pack_id, **options) / "big.png", padded_png(4 * CHUNK + 1000))

    report, gate = sync_through(env, lambda progress: Gate(progress, lambda: change(photo)))

    assert gate.chunks >= 2, "the PUT went out in chunks"
    assert report.exit_code == ExitCode.SOME_FAILED
    assert any("changed while it was uploaded" in why for why in failures(report)), failures(report)
    assert env.cdn_bytes(pack_id) == [], "the pack does not get it"
    assert uploaded_blobs(env) == [], "no blob is recorded as uploaded"
    assert stored_files(env) == 0, "storage kept nothing of the PUT cut short"

    again = env.sync()

    assert again.exit_code == ExitCode.OK
    assert env.cdn_bytes(pack_id) == [photo.read_bytes()], "the next run uploads what the file holds now"


# -- prepared uploads wait in the spool ----------------------------------------------------------------


@pytest.mark.parametrize(("recipe", "name"), [({}, "beach.jpg"), ({"convert_to_jpeg": ["png"]}, "beach.png")],
                         ids=["stripped", "converted"])
def test_what_a_recipe_made_goes_up_whole_and_the_spool_keeps_only_a_running_processs_files(
        env: Env, recipe: dict[str, list[str]], name: str) -> None:
    """A photo whose location the default recipe strips goes up as its edited header and ranges of the file
    itself; one converted to JPEG (over a MiB of it) from a spool file. Either way the bytes sent are what the
    recipe made, counted once, and the spool holds nothing afterwards, nor what a killed run left there —
    but what a running packsync holds there (a daemon's, beside a pull of the same state) stays."""
    spool = env.state_path.parent / "spool" / "prepared"
    spool.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    (spool / f"{int(gone.stdout)}-left-by-a-killed-run").write_bytes(b"x" * 1000)
    (spool / "of-an-older-packsync").write_bytes(b"x" * 1000)
    beside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # (a daemon beside a pull, say)
    try:
        held = write(spool / f"{beside.pid}-held-by-a-running-packsync", b"y" * 1000)
        pack_id = env.sandbox.create_pack("Trip")
        data = photos.jpeg(64, 48) if name.endswith(".jpg") else photos.png(1800, 1300)
        original = write(env.map("trip", pack_id=pack_id, **recipe) / name, data).read_bytes()

        report, gate = sync_through(env, lambda progress: Gate(progress))

        assert report.exit_code == ExitCode.OK, failures(report)
        [uploaded] = env.cdn_bytes(pack_id)
        assert uploaded != original, "the photo as the recipe made it went up"
        assert gate.progress.counts["sent"] == gate.progress.totals["sent"] == len(uploaded)
    finally:
        beside.kill()
        beside.wait()
    assert sorted(spool.iterdir()) == [held], "nothing is left in the spool but a running process's file"


# -- the body alone -------------------------------------------------------------------------------------


def test_a_body_whose_file_was_cut_short_raises_before_its_last_chunk(tmp_path: Path) -> None:
    data = padded_png(3 * CHUNK)
    path = write(tmp_path / "a.png", data)
    body = UploadBody.of_file(path, len(data), hashlib.sha256(data).hexdigest())
    given: list[bytes] = []

    async def read() -> None:
        async for chunk in body.chunks():
            given.append(chunk)
            if len(given) == 1:
                os.truncate(path, 2 * CHUNK + 10)

    with pytest.raises(ItemChanged, match="changed while it was uploaded"):
        asyncio.run(read())
    assert sum(map(len, given)) < len(data) and len(given) == 2, "the last chunk never left"


# -- retries -------------------------------------------------------------------------------------------


def test_a_put_retried_after_a_dropped_connection_sends_the_whole_file_again_and_counts_it_once(env: Env) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    photo = write(env.map("brand", pack_id=pack_id, strip=[]) / "big.png", padded_png(3 * CHUNK + 77))
    env.sandbox.inject("reset", method="PUT", route="storage")

    report, gate = sync_through(env, lambda progress: Gate(progress))

    assert report.exit_code == ExitCode.OK, failures(report)
    assert env.sandbox.calls[("PUT", "storage")] == 2
    assert env.cdn_bytes(pack_id) == [photo.read_bytes()]
    assert gate.taken == 2 * len(photo.read_bytes()), "each attempt sent every byte of the file"
    assert gate.over_total == [], "the bytes counted sent never passed the bytes to send"
    assert gate.progress.counts["sent"] == gate.progress.totals["sent"] == len(photo.read_bytes())


class Slow:
    """A limit that holds every chunk up for ``wait_s``."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s

    async def take(self, n: int, direction: Literal["up", "down"]) -> None:
        await asyncio.sleep(self.wait_s)


def test_time_waiting_for_the_limit_is_not_a_stalled_server(env: Env) -> None:
    """The head deadline of a streamed PUT (HEAD_TIMEOUTS read timeouts of 0.1 s, and the time its bytes
    take at STALL_RATE) moves on by the time its chunks waited for the bandwidth limit: 8 small chunks held
    0.1 s each wait twice that deadline, and go."""
    data = image(seed=5)
    parts = [data[i:i + len(data) // 8 + 1] for i in range(0, len(data), len(data) // 8 + 1)]
    body = UploadBody(parts, len(data), hashlib.sha256(data).hexdigest())
    sent: list[int] = []

    async def upload() -> None:
        async with Transport(timeout=0.1, throttle=Slow(0.1)) as transport:
            api = GenviralClient(env.sandbox.base_url, TOKEN, transport)
            ticket = await api.create_upload("image/png", "a.png", len(data))
            await api.put_bytes(ticket.upload_url, body, "image/png", sent.append)

    asyncio.run(upload())

    assert sum(sent) == len(data) and len(sent) == len(parts) == 8
    assert env.sandbox.calls[("PUT", "storage")] == 1


# -- memory ---------------------------------------------------------------------------------------------


def peak_rss_of_run(env: Env) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """``packsync run`` in a child process of its own (exec'd, so its VmHWM is its own), and its peak RSS:
    ``VmHWM`` only grows, read from ``/proc`` until the process ends."""
    child_env = {k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"} | {"GENVIRAL_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "packsync", "-c", str(env.config_path), "run", "--no-wait"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env)
    peak, done = 0, threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                with open(f"/proc/{process.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            done.wait(0.005)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = process.communicate(timeout=240)
    done.set()
    poller.join()
    return subprocess.CompletedProcess(argv, process.returncode, out, err), peak


@pytest.mark.parametrize("strip", [[], None], ids=["as-is", "default-recipe"])
def test_a_200_mb_file_is_uploaded_with_memory_far_below_its_size(env: Env, strip: list[str] | None) -> None:
    """As it is, the file is streamed from disk; with the default recipe, its location is stripped from disk
    (the edited header and ranges of the file): either way the peak is a fraction of the file."""
    size = 200 * MB
    options = {"max_file_mb": 300} | ({} if strip is None else {"strip": strip})
    pack_id = env.sandbox.create_pack("Brand")
    original = padded_png(size, small=photos.png(64, 48))  # (with a location to strip)
    write(env.map("brand", pack_id=pack_id, **options) / "huge.png", original)

    done, peak = peak_rss_of_run(env)

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    [uploaded] = env.cdn_bytes(pack_id)
    assert (uploaded == original) == (strip == []), "as it is, or with its location stripped"
    assert abs(len(uploaded) - size) < 100_000
    assert 0 < peak < 150 * MB, f"peak RSS {peak / MB:.0f} MB for a {size / MB:.0f} MB file"


def test_an_astria_image_of_20_mb_is_downloaded_and_uploaded_with_memory_bounded(env: Env) -> None:
    size = 20 * MB
    pack_id = env.sandbox.astria.add_pack("Headshots")
    url = env.sandbox.astria.add_image(pack_id, "woman", padded_png(size, seed=3))
    env.map_astria(pack_id, pack="Headshots", max_file_mb=50, strip=[])

    done, peak = peak_rss_of_run(env)

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    pack = env.pack_named("Headshots")
    assert [len(data) for data in env.cdn_bytes(pack["id"])] == [size], url
    assert 0 < peak < 130 * MB, f"peak RSS {peak / MB:.0f} MB for a {size / MB:.0f} MB image"


# -- downloads ------------------------------------------------------------------------------------------


def test_a_pull_counts_the_bytes_it_receives_once_each(env: Env, tmp_path: Path) -> None:
    pack_id = env.sandbox.create_pack("Brand")
    contents = [padded_png(CHUNK + 100 * i, seed=i) for i in range(1, 4)]
    for i, data in enumerate(contents):
        env.sandbox.add_uploaded(pack_id, data, f"{i}.png")
    env.sandbox.inject("500", method="GET", route="cdn")
    env.write_config()
    progress = Progress(enabled=False)

    report = asyncio.run(pull_once(env.config(), TOKEN, f"genviral:{pack_id}", tmp_path / "pulled", PullOptions(),
                                   progress=progress))

    assert len(report.downloaded) == 3, report.failures
    assert env.sandbox.calls[("GET", "cdn")] == 4, "one download was tried again"
    assert progress.counts["received"] == sum(map(len, contents))


def test_an_adoption_counts_the_bytes_it_receives_once_each(env: Env) -> None:
    """Images already in the pack holding a folder's files (a lost state): the run downloads each to learn
    its content, and counts what it received as it came, a retried download once."""
    pack_id = env.sandbox.create_pack("Brand")
    folder = env.map("brand", pack_id=pack_id, strip=[])
    contents = [padded_png(CHUNK + 100 * i, seed=i) for i in range(1, 4)]
    for i, data in enumerate(contents):
        env.sandbox.add_uploaded(pack_id, data, f"{i}.png")
        write(folder / f"{i}.png", data)
    env.sandbox.inject("500", method="GET", route="cdn")

    report, gate = sync_through(env, lambda progress: Gate(progress))

    assert report.exit_code == ExitCode.OK, failures(report)
    assert env.sandbox.calls[("GET", "cdn")] == 4, "one download was tried again"
    assert gate.progress.counts["received"] == sum(map(len, contents))
    assert gate.progress.counts["sent"] == 0, "adopted, not uploaded again"


def test_a_read_error_while_a_body_is_sent_is_that_items_failure_not_the_runs() -> None:
    """A file whose reads fail (a failing disk, a share gone: /proc/self/mem answers EIO at offset 0) is an
    ``ItemChanged`` for its item, which the run reports and goes on from — never an OSError out of the run."""
    body = UploadBody((FileRange(Path("/proc/self/mem"), 0, 10, 0),), 10, hashlib.sha256(bytes(10)).hexdigest())

    async def read() -> None:
        async for _chunk in body.chunks():
            pass

    with pytest.raises(ItemChanged, match="cannot read it any more"):
        asyncio.run(read())
    with pytest.raises(ItemChanged, match="cannot read it any more"):
        asyncio.run(body.read())
