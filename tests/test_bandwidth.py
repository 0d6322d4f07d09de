"""``bandwidth_limit``: rclone's ``--bwlimit`` syntax read as rclone reads it, the timetable's entry in force at
any time, the shared buckets that hold every transfer of a process to it, and a limited download end to end."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from conftest import FAST, TOKEN, Env, image, write
from helpers import DaemonHere, StartHere, wait_until
from photos import png

from packsync.config import parse_config
from packsync.engine.sync import SyncOptions
from packsync.errors import ConfigError
from packsync.remote.bandwidth import BURST_S, NO_LIMIT, UNLIMITED, BandwidthLimit, Limiter, Rates

KiB, MiB, GiB = 2**10, 2**20, 2**30
#: A Monday (2026-12-07), for timetables with weekdays.
MONDAY = datetime(2026, 12, 7)


def at(day: int, hhmm: str) -> datetime:
    """``day`` days after MONDAY (0: Monday … 6: Sunday, 7: the next Monday), at ``hhmm``."""
    hour, minute = map(int, hhmm.split(":"))
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute)


# -- the syntax --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "rates"), [
    ("20M", Rates(20 * MiB, 20 * MiB)),
    ("512k", Rates(512 * KiB, 512 * KiB)),
    ("512K", Rates(512 * KiB, 512 * KiB)),
    ("100", Rates(100 * KiB, 100 * KiB)),  # a bare number is KiB, as in rclone
    ("1.5M", Rates(1.5 * MiB, 1.5 * MiB)),
    ("0.5m", Rates(0.5 * MiB, 0.5 * MiB)),
    ("1G", Rates(GiB, GiB)),
    ("4096B", Rates(4096, 4096)),
    ("4096b", Rates(4096, 4096)),
    ("2Mi", Rates(2 * MiB, 2 * MiB)),
    ("2MiB", Rates(2 * MiB, 2 * MiB)),
    ("10M:100M", Rates(10 * MiB, 100 * MiB)),
    ("666:333", Rates(666 * KiB, 333 * KiB)),  # rclone's own test
    ("1M:off", Rates(MiB, None)),
    ("off:1M", Rates(None, MiB)),
    ("off", NO_LIMIT),
    ("OFF", NO_LIMIT),
    ("0", NO_LIMIT),  # rclone's 0 is no limit too
    ("", NO_LIMIT),
    ("  ", NO_LIMIT),
])
def test_a_single_rate_holds_all_the_time(text: str, rates: Rates) -> None:
    limit = BandwidthLimit(text)

    assert limit.rate_at(at(0, "00:00")) == rates == limit.rate_at(at(4, "13:37"))
    assert limit.next_change(at(2, "12:00")) is None
    assert limit.unlimited is (rates == NO_LIMIT)


def test_a_daily_timetable_holds_from_each_entry_to_the_next_and_wraps_around_midnight() -> None:
    limit = BandwidthLimit("08:00,2M 19:00,off")

    assert limit.rate_at(at(0, "07:59")) == NO_LIMIT, "before the day's first entry, yesterday's last holds"
    assert limit.rate_at(at(0, "08:00")) == Rates(2 * MiB, 2 * MiB)
    assert limit.rate_at(at(0, "18:59")) == Rates(2 * MiB, 2 * MiB)
    assert limit.rate_at(at(0, "19:00")) == NO_LIMIT
    assert limit.rate_at(at(1, "03:00")) == NO_LIMIT
    assert limit.next_change(at(0, "12:30")) == at(0, "19:00")
    assert limit.next_change(at(0, "19:00")) == at(1, "08:00")
    assert limit.next_change(at(6, "23:00")) == at(7, "08:00"), "Sunday night's next entry is Monday's"


def test_a_limit_set_late_at_night_holds_past_midnight() -> None:
    limit = BandwidthLimit("22:00,1M 06:00,off")

    assert limit.rate_at(at(2, "02:00")) == Rates(MiB, MiB)
    assert limit.rate_at(at(2, "06:00")) == NO_LIMIT
    assert limit.rate_at(at(2, "21:59")) == NO_LIMIT
    assert limit.rate_at(at(0, "00:30")) == Rates(MiB, MiB), "Monday's small hours: Sunday's 22:00 entry"


def test_rclone_s_documented_daily_timetable() -> None:
    limit = BandwidthLimit("08:00,512k 12:00,10M 13:00,512k 18:00,30M 23:00,off")

    assert [limit.rate_at(at(3, hhmm)).up for hhmm in ("07:00", "08:00", "12:30", "13:00", "18:00", "23:30")] == \
        [None, 512 * KiB, 10 * MiB, 512 * KiB, 30 * MiB, None]


def test_weekday_entries_hold_from_their_day_and_time_through_the_week() -> None:
    limit = BandwidthLimit("Mon-08:00,1M Sat-00:00,off")

    assert limit.rate_at(at(0, "07:59")) == NO_LIMIT, "Monday before 08:00: last Saturday's off still holds"
    assert limit.rate_at(at(0, "08:00")) == Rates(MiB, MiB)
    assert limit.rate_at(at(4, "23:59")) == Rates(MiB, MiB)
    assert limit.rate_at(at(5, "00:00")) == NO_LIMIT
    assert limit.rate_at(at(6, "12:00")) == NO_LIMIT
    assert limit.next_change(at(2, "10:00")) == at(5, "00:00")
    assert limit.next_change(at(6, "12:00")) == at(7, "08:00")


def test_rclone_s_documented_weekly_timetable_with_up_down_pairs_and_semicolons() -> None:
    limit = BandwidthLimit("Mon-00:00,512;Fri-23:59,10M:1M Sat-10:00,1M Sunday-20:00,off")

    assert limit.rate_at(at(0, "00:00")) == Rates(512 * KiB, 512 * KiB)
    assert limit.rate_at(at(4, "23:58")) == Rates(512 * KiB, 512 * KiB)
    assert limit.rate_at(at(4, "23:59")) == Rates(10 * MiB, MiB)
    assert limit.rate_at(at(5, "10:00")) == Rates(MiB, MiB)
    assert limit.rate_at(at(6, "20:00")) == NO_LIMIT


def test_entries_written_out_of_order_hold_in_the_order_of_the_week() -> None:
    assert BandwidthLimit("19:00,off 08:00,2M").rate_at(at(1, "09:00")) == Rates(2 * MiB, 2 * MiB)
    assert BandwidthLimit("Sat-00:00,off Mon-08:00,1M").rate_at(at(6, "10:00")) == NO_LIMIT


@pytest.mark.parametrize(("value", "message"), [
    ("fast", "genviral.bandwidth_limit: 'fast' is not a rate"),
    ("1000X", "genviral.bandwidth_limit: '1000X' is not a rate"),
    ("-5M", "genviral.bandwidth_limit: '-5M' is not a rate"),
    ("1M:2M:3M", "genviral.bandwidth_limit: '1M:2M:3M' is not a rate (one ':' at most"),
    ("08:00,2M 19:00", "genviral.bandwidth_limit: '19:00' is not a timetable entry"),
    ("08:00,2M,3M", "genviral.bandwidth_limit: '08:00,2M,3M' is not a timetable entry"),
    ("24:00,1M", "genviral.bandwidth_limit: '24:00' is not a time"),
    ("08:60,1M", "genviral.bandwidth_limit: '08:60' is not a time"),
    ("8:00,1M", "genviral.bandwidth_limit: '8:00' is not a time"),
    ("Mon-bad,1M", "genviral.bandwidth_limit: 'Mon-bad' is not a time"),
    ("Someday-08:00,1M", "genviral.bandwidth_limit: 'Someday' is not a weekday"),
    ("08:00,bad", "genviral.bandwidth_limit: 'bad' is not a rate"),
    (5, "genviral.bandwidth_limit: expected a string, got an integer"),
])
def test_a_bad_limit_is_one_sentence_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"genviral": {"bandwidth_limit": value}})

    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value) and str(raised.value).endswith(".")


# -- the limiter -------------------------------------------------------------------------------------

async def _pass(limiter: Limiter, total: int, chunk: int, passed: list[int],
                direction: Literal["up", "down"] = "up") -> None:
    """``total`` bytes through ``limiter`` in chunks, counting them into ``passed`` as they pass."""
    for _ in range(total // chunk):
        await limiter.take(chunk, direction)
        passed.append(chunk)


def test_bytes_through_the_limiter_take_at_least_their_time_at_the_rate() -> None:
    rate, total = 256 * KiB, 128 * KiB
    limiter = Limiter(BandwidthLimit("256k"))

    started = time.monotonic()
    asyncio.run(_pass(limiter, total, 16 * KiB, []))

    assert time.monotonic() - started >= total / rate - BURST_S


def test_each_direction_has_its_own_rate() -> None:
    limiter = Limiter(BandwidthLimit("off:64k"))
    down_total = 32 * KiB

    async def both() -> tuple[float, float]:
        started = time.monotonic()
        await _pass(limiter, 4 * MiB, 64 * KiB, [], "up")  # no limit up: at once
        up_s = time.monotonic() - started
        await _pass(limiter, down_total, 8 * KiB, [], "down")
        return up_s, time.monotonic() - started - up_s

    _up_s, down_s = asyncio.run(both())

    assert down_s >= down_total / (64 * KiB) - BURST_S


def test_two_concurrent_transfers_share_the_rate_and_take_turns() -> None:
    rate, each, chunk = 512 * KiB, 128 * KiB, 8 * KiB
    limiter = Limiter(BandwidthLimit("512k"))
    first: list[int] = []
    second: list[int] = []
    when_first_ended: list[int] = []

    async def both() -> None:
        async def the_first() -> None:
            await _pass(limiter, each, chunk, first)
            when_first_ended.append(sum(second))
        await asyncio.gather(the_first(), _pass(limiter, each, chunk, second))

    started = time.monotonic()
    asyncio.run(both())

    assert time.monotonic() - started >= 2 * each / rate - BURST_S, "the two together keep to one rate"
    assert when_first_ended[0] >= each - rate * BURST_S - 2 * chunk, \
        "past the first's burst, the two took turns: the second was not starved while the first went on"


def test_a_waiter_goes_on_at_once_when_the_timetable_lifts_the_limit() -> None:
    """At 1 KiB/s a MiB takes 17 minutes: the timetable's "off" 0.3 s later ends the wait, no restart needed."""
    real = datetime.now()
    boundary = (real + timedelta(minutes=1)).replace(second=0, microsecond=0)
    offset = boundary - real - timedelta(seconds=0.3)
    before = boundary - timedelta(minutes=1)
    limiter = Limiter(BandwidthLimit(f"{before:%H:%M},1k {boundary:%H:%M},off"), now=lambda: datetime.now() + offset)
    assert limiter.rates() == Rates(KiB, KiB)

    asyncio.run(asyncio.wait_for(limiter.take(MiB, "down"), timeout=60))

    assert limiter.rates() == NO_LIMIT


def test_unlimited_takes_return_at_once() -> None:
    async def many() -> None:
        for _ in range(10_000):
            await UNLIMITED.take(MiB, "up")
        await Limiter(BandwidthLimit("off")).take(10 * GiB, "down")

    asyncio.run(asyncio.wait_for(many(), timeout=60))


# -- end to end --------------------------------------------------------------------------------------

def _filled_pack(env: Env, images: list[bytes]) -> int:
    pack_id = env.sandbox.create_pack("Brand")
    for i, data in enumerate(images):
        env.sandbox.add_uploaded(pack_id, data, f"{i}.png")
    return sum(map(len, images))


def test_a_pull_under_a_limit_takes_at_least_its_bytes_at_the_rate(env: Env) -> None:
    size = _filled_pack(env, [png(200, 200) for _ in range(3)])
    env.genviral["bandwidth_limit"] = "100k"
    env.write_config()

    started = time.monotonic()
    pulled = env.cli("pull", "genviral:Brand", str(env.root / "out"))

    assert pulled.returncode == 0, pulled.stderr
    assert "3 downloaded" in pulled.stdout
    assert time.monotonic() - started >= size / (100 * KiB) - BURST_S


def test_a_download_slowed_by_the_limit_is_not_taken_for_a_stalled_server(env: Env) -> None:
    """8 KiB/s is half the rate below which a server is judged too slow (STALL_RATE), and the read timeout is
    half a second: the time spent waiting for the limit is packsync's own, not the server's (fails without the
    stall deadline moved on by the time waited: "too slow to finish")."""
    _filled_pack(env, [png(120, 120)])
    env.genviral.update(bandwidth_limit="8k", timeout_s=0.5)
    env.write_config()

    pulled = env.cli("pull", "genviral:Brand", str(env.root / "out"))

    assert pulled.returncode == 0, pulled.stderr + pulled.stdout
    assert "1 downloaded" in pulled.stdout


class _Counting:
    """A throttle that lets everything pass, counting the bytes of each direction."""

    def __init__(self) -> None:
        self.bytes = {"up": 0, "down": 0}

    async def take(self, n: int, direction: Literal["up", "down"]) -> None:
        self.bytes[direction] += n


def _uploads_pass_the_throttle(env: Env) -> bool:
    """Whether a sync's storage PUTs pass the transport's throttle: one image synced (into a pack of its own,
    with a state of its own) through a transport that counts."""
    from packsync.app import App, client_for
    from packsync.remote.transport import Transport
    from packsync.state.store import State

    probe = Env(env.root / "probe", env.sandbox)
    (probe.map("folder", pack="Probe") / "a.png").write_bytes(image(16, 16))
    config = probe.config()
    counting = _Counting()

    async def sync() -> None:
        async with Transport(throttle=counting) as transport:
            app = App.wire(config, state, client_for(config, TOKEN, transport))
            try:
                await app.syncer.sync(SyncOptions(wait=False))
            finally:
                app.close_sources()

    state = State.for_config(config)
    try:
        asyncio.run(sync())
    finally:
        state.close()
    return counting.bytes["up"] > 0


def _photos(folder: Path, count: int) -> int:
    """``count`` photos of noise (~68 KB each) written into ``folder``; their bytes in all."""
    return sum(write(folder / f"{i:02}.png", png(200, 200)).stat().st_size for i in range(count))


def test_a_run_under_a_limit_takes_at_least_its_bytes_at_the_rate(env: Env) -> None:
    if not _uploads_pass_the_throttle(env):
        pytest.skip("storage PUTs do not pass the transport's throttle yet (the streamed upload's per-chunk hook)")
    size = _photos(env.map("photos", pack="Photos"), 15)

    started = time.monotonic()
    ran = env.cli("run", "--no-wait", "--bwlimit", "200k")

    assert ran.returncode == 0, ran.stderr
    assert time.monotonic() - started >= size / (200 * KiB) - BURST_S


@pytest.mark.parametrize("command", ["run", "daemon"])
def test_a_bad_bwlimit_flag_is_one_sentence_naming_it(env: Env, command: str) -> None:
    env.map("photos", pack="Photos")

    ran = env.cli(command, "--bwlimit", "fast")

    assert ran.returncode == 2
    assert "Invalid value for '--bwlimit': 'fast' is not a rate" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_long_run_on_a_terminal_shows_bytes_sent_rate_time_left_and_the_limit(env: Env) -> None:
    """On a real pty: ``sent 300 KiB/1 MiB (30%) 200 KiB/s, 4s left · limit 200 KiB/s`` beside the file counts."""
    _photos(env.map("photos", pack="Photos"), 15)
    main, terminal = pty.openpty()
    environ = {**os.environ, "GENVIRAL_TOKEN": TOKEN, "COLUMNS": "200"}
    child = subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "run", "--no-wait",
                              "--bwlimit", "200k"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=terminal, env=environ)
    os.close(terminal)
    shown = bytearray()
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal's last end
                break
            if not chunk:
                break
            shown += chunk
        assert child.wait(timeout=120) == 0, shown.decode(errors="replace")
    finally:
        os.close(main)
        if child.poll() is None:
            child.kill()
        if child.stdout:
            child.stdout.close()
    lines = shown.decode(errors="replace").replace("\x1b[2K", "").split("\r")
    if not any(" sent " in f" {line}" for line in lines):
        pytest.skip("the run never advanced \"sent\": the engine's byte counts (the streamed upload) are not there yet")
    limited = [line for line in lines if "sent " in line and "/s, " in line and " left" in line]
    assert limited, lines
    assert any(re.search(r"uploaded \d+/15.* · sent [\d.]+ KiB/[\d.]+ [KM]iB \(\d+%\) [\d.]+ KiB/s, \d+s left "
                         r"· limit 200 KiB/s", line) for line in limited), limited


def test_a_reload_applies_a_new_limit(daemon_env: Env, start_here: StartHere, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENVIRAL_TOKEN", TOKEN)  # a reload reads the key again
    daemon_env.map("photos", pack="Photos")
    daemon_env.genviral["bandwidth_limit"] = "1k"
    here = start_here()

    def throttle() -> object:
        return here.daemon.app.api.transport.throttle

    first = throttle()
    assert isinstance(first, Limiter) and first.rates() == Rates(KiB, KiB)
    daemon_env.genviral["bandwidth_limit"] = "08:00,2M 19:00,off"
    daemon_env.write_config()
    here.reload()

    fresh = wait_until(lambda: (limiter := throttle()) is not first and limiter, what="a new transport")
    assert isinstance(fresh, Limiter) and fresh.limit.text == "08:00,2M 19:00,off"


def test_bwlimit_holds_over_the_config_s_limit_through_a_reload(daemon_env: Env,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENVIRAL_TOKEN", TOKEN)
    daemon_env.map("photos", pack="Photos")
    daemon_env.genviral["bandwidth_limit"] = "1k"
    daemon_env.write_config()
    here = DaemonHere(daemon_env.config_path, TOKEN, FAST, bandwidth_limit="3M")
    try:
        here.wait_ready()
        first = here.daemon.app.api.transport.throttle
        assert isinstance(first, Limiter) and first.rates() == Rates(3 * MiB, 3 * MiB)
        daemon_env.genviral.update(bandwidth_limit="2k", timeout_s=20)  # [genviral] changed: a new transport
        daemon_env.write_config()
        here.reload()

        fresh = wait_until(lambda: (throttle := here.daemon.app.api.transport.throttle) is not first and throttle,
                           what="a new transport")
        assert isinstance(fresh, Limiter) and fresh.rates() == Rates(3 * MiB, 3 * MiB)
    finally:
        here.close()


def test_a_transfer_cancelled_while_it_waits_leaves_no_debt_to_the_next() -> None:
    """A chunk whose transfer was cancelled while it waited (a sync stopped, a request given up) never
    passes: the next transfer does not wait for it (a minute of debt at this rate; it waited that minute)."""
    limiter = Limiter(BandwidthLimit("64k"))

    async def cancelled_then_another() -> None:
        waiting = asyncio.ensure_future(limiter.take(60 * 64 * KiB, "up"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(limiter.take(KiB, "up"), timeout=20)

    asyncio.run(cancelled_then_another())
