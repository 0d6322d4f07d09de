"""The terminal's progress line: per phase done/total, percent, rate and time left; silent off a terminal."""

from __future__ import annotations

import io

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
