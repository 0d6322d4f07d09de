"""The terminal's progress line: per phase done/total, percent, rate and time left; silent off a terminal."""

from __future__ import annotations

import asyncio
import io

from conftest import TOKEN, Env

from packsync.app import open_app
from packsync.views.progress import Progress


def test_the_phase_in_progress_shows_percent_rate_and_time_left() -> None:
    progress = Progress(enabled=True, stream=io.StringIO())
    progress.total("uploaded", 100)
    progress.total("added", 100)
    progress.advance("hashed", 100)
    progress.advance("uploaded", 50)
    started = progress.started["uploaded"]

    line = progress.line(started + 10)

    assert line == "hashed 100 · uploaded 50/100 (50%) 5.0/s, 10s left · added 0/100"
    progress.advance("uploaded", 50)
    assert "uploaded 100/100 (100%)" in progress.line(started + 10) and "left" not in progress.line(started + 10)


def test_long_waits_read_as_minutes_and_hours() -> None:
    progress = Progress(enabled=True, stream=io.StringIO())
    progress.total("metadata", 10_000)
    progress.advance("metadata", 10)
    started = progress.started["metadata"]

    assert progress.line(started + 10).endswith("1.0/s, 2h46m left")
    assert Progress(enabled=True, stream=io.StringIO()).line(started) == ""


def test_nothing_is_written_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream=stream, interval_s=0)
    progress.total("uploaded", 10)
    progress.advance("uploaded", 3)
    progress.close()

    assert stream.getvalue() == ""


class _Clock:
    """Monotonic seconds a test moves on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bytes_sent_show_beside_the_file_counts_with_rate_time_left_and_the_limit() -> None:
    clock = _Clock()
    progress = Progress(enabled=True, stream=io.StringIO(), clock=clock)
    progress.limits = lambda: (5 * 2**20, None)
    progress.total("uploaded", 10)
    progress.total("sent", 40 * 2**20)
    progress.advance("uploaded", 2)
    for _ in range(10):  # 1 MiB a second for 10 s
        clock.now += 1
        progress.advance("sent", 2**20)

    line = progress.line(clock.now)

    assert line == "uploaded 2/10 (20%) 0.2/s, 40s left · sent 10 MiB/40 MiB (25%) 1 MiB/s, 30s left · limit 5 MiB/s"
    assert "uploaded 2/10 (20%)" in line, "bytes going out do not take the phase's place"


def test_the_bytes_rate_is_over_the_last_seconds_not_since_the_start() -> None:
    clock = _Clock()
    progress = Progress(enabled=True, stream=io.StringIO(), clock=clock)
    progress.total("sent", 200 * 2**20)
    for _ in range(30):  # 4 MiB/s for 30 s...
        clock.now += 1
        progress.advance("sent", 4 * 2**20)
    for _ in range(10):  # ...then a limit of 512 KiB/s
        clock.now += 1
        progress.advance("sent", 512 * 2**10)

    assert progress.rate("sent", clock.now) == 512 * 2**10
    assert progress.line(clock.now) == "sent 125 MiB/200 MiB (62%) 512 KiB/s, 2m30s left"
    clock.now += 5
    assert progress.rate("sent", clock.now) == 0, "nothing sent in the last seconds: nothing a second"
    assert progress.line(clock.now) == "sent 125 MiB/200 MiB (62%)"


def test_received_bytes_show_without_a_total_and_the_down_limit_holds_for_them() -> None:
    clock = _Clock()
    progress = Progress(enabled=True, stream=io.StringIO(), clock=clock)
    progress.limits = lambda: (None, 2 * 2**20)
    progress.advance("downloaded", 3)
    progress.advance("received", 1536)
    clock.now += 1
    progress.advance("received", 1536)

    assert progress.line(clock.now) == "downloaded 3 3.0/s · received 3 KiB 1.5 KiB/s · limit 2 MiB/s"


def test_a_retried_attempt_taken_back_leaves_the_bytes_within_the_total() -> None:
    clock = _Clock()
    progress = Progress(enabled=True, stream=io.StringIO(), clock=clock)
    progress.total("sent", 1000)
    progress.advance("sent", 800)
    clock.now += 1
    progress.advance("sent", -800)
    progress.advance("sent", 1000)

    assert progress.line(clock.now).startswith("sent 1000 B/1000 B (100%)")
    assert "left" not in progress.line(clock.now)


def test_no_limit_no_limit_shown() -> None:
    clock = _Clock()
    progress = Progress(enabled=True, stream=io.StringIO(), clock=clock)
    progress.limits = lambda: (None, None)
    progress.advance("sent", 100)

    assert progress.line(clock.now) == "sent 100 B"


def test_the_limit_in_force_is_the_one_the_transport_keeps_to(env: Env) -> None:
    env.map("photos", pack="Photos")
    env.genviral["bandwidth_limit"] = "5M:off"
    progress = Progress(enabled=True, stream=io.StringIO())

    async def opened() -> tuple[float | None, float | None]:
        async with open_app(env.config(), TOKEN, progress=progress):
            assert progress.limits is not None
            return progress.limits()

    assert asyncio.run(opened()) == (5 * 2**20, None)
