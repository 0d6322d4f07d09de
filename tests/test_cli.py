"""The command line as people type it: global options anywhere, the token's variables, one log pipeline."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import TOKEN, Env, image, write

from packsync.logs import configure, get_logger, register_secret


def packsync(env: Env, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``packsync ARGS`` with exactly these token variables (no -c added: the test places it)."""
    base = {k: v for k, v in os.environ.items() if k not in ("GENVIRAL_TOKEN", "GENVIRAL_API_KEY")}
    return subprocess.run([sys.executable, "-m", "packsync", *args], capture_output=True, text=True,
                          env={**base, **variables}, timeout=120)


@pytest.mark.parametrize("args", [
    ["run", "--config", "{config}", "--no-wait"],
    ["run", "--no-wait", "-c", "{config}"],
    ["-c", "{config}", "run", "--no-wait"],
    ["run", "-v", "--no-wait", "--config={config}"],
], ids=["--config after the command", "-c at the end", "before the command", "with -v after the command"])
def test_global_options_work_before_or_after_the_command(env: Env, args: list[str]) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    result = packsync(env, *[a.format(config=env.config_path) for a in args], GENVIRAL_TOKEN=TOKEN)

    assert result.returncode == 0, result.stderr
    assert "1 added" in result.stdout
    assert env.pack(pack_id)["image_count"] == 1


def test_verbose_after_the_command_shows_debug_events(env: Env) -> None:
    write(env.map("brand", pack="p") / "a.png", image())

    quiet = packsync(env, "run", "--dry-run", "-c", str(env.config_path), GENVIRAL_TOKEN=TOKEN)
    verbose = packsync(env, "run", "--dry-run", "-c", str(env.config_path), "--verbose", GENVIRAL_TOKEN=TOKEN)

    assert quiet.returncode == verbose.returncode == 0, verbose.stderr
    levels = [json.loads(line)["level"] for line in verbose.stderr.splitlines() if line.startswith("{")]
    assert "debug" in levels
    assert '"debug"' not in quiet.stderr


def test_the_key_of_genviral_s_own_cli_is_read_and_named_at_verbose(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    result = packsync(env, "run", "-v", "--no-wait", "-c", str(env.config_path), GENVIRAL_API_KEY=TOKEN)

    assert result.returncode == 0, result.stderr
    assert env.pack(pack_id)["image_count"] == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {"event": "token read from the environment", "variable": "GENVIRAL_API_KEY"}.items() <= \
        next(e for e in events if e["event"] == "token read from the environment").items()
    assert TOKEN not in result.stderr + result.stdout


def test_without_any_token_variable_the_error_names_both(env: Env) -> None:
    env.map("brand", pack="p")

    result = packsync(env, "run", "-c", str(env.config_path))

    assert result.returncode == 2
    assert "neither GENVIRAL_TOKEN nor GENVIRAL_API_KEY" in result.stderr


def test_library_records_go_through_the_same_renderer_and_only_at_verbose(env: Env) -> None:
    pack_id = env.sandbox.create_pack("p")
    write(env.map("brand", pack_id=pack_id) / "a.png", image())

    quiet = packsync(env, "run", "--no-wait", "-c", str(env.config_path), GENVIRAL_TOKEN=TOKEN)
    verbose = packsync(env, "run", "--no-wait", "-v", "-c", str(env.config_path), GENVIRAL_TOKEN=TOKEN)

    assert quiet.returncode == verbose.returncode == 0
    events = [json.loads(line) for line in verbose.stderr.splitlines()]
    requests = [e for e in events if e["event"] == "request"]
    assert [e["request"] for e in requests][:1] == ["GET /packs/{id}"], verbose.stderr[-2000:]
    assert all(e["level"] == "debug" and isinstance(e["status"], int) and "timestamp" in e for e in requests)
    library = [e for e in events if e.get("logger") == "asyncio"]
    assert library and all(e["level"] == "debug" for e in library), "the standard library's records, rendered alike"
    assert '"request"' not in quiet.stderr and "asyncio" not in quiet.stderr
    assert all(line.startswith("{") for line in verbose.stderr.splitlines()), "every line is one JSON event"


def test_a_library_record_holding_the_token_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "gva_live_abc.library-echo-secret"
    register_secret(secret)
    configure(verbose=True, tty=False)
    try:
        logging.getLogger("some.library").warning("echoing Authorization: Bearer %s", secret)
        get_logger(mapping="/photos").info("packsync's own event", header=f"Bearer {secret}")
    finally:
        logging.getLogger().handlers.clear()

    err = capsys.readouterr().err
    assert secret not in err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [line["event"] for line in lines] == ["echoing Authorization: Bearer ***", "packsync's own event"]
    assert lines[1]["mapping"] == "/photos", "context bound to the logger is in its events"


def test_a_command_started_without_standard_output_ends_cleanly() -> None:
    """packsync leaves at once when a command ends, flushing what it printed; a stream it was started
    without (a supervisor's ``>&-``) is not one to flush."""
    closed = subprocess.run([sys.executable, "-m", "packsync", "--version"], capture_output=False,
                            stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(1))
    assert (closed.returncode, closed.stderr) == (0, "")


def test_everything_a_command_prints_reaches_a_file(env: Env, tmp_path: Path) -> None:
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("brand", pack_id=pack_id)
    for i in range(300):
        write(folder / f"{i:03}.png", image())
    env.write_config()
    assert env.cli("run", "--no-wait").returncode == 0
    out = tmp_path / "status.txt"
    with out.open("w") as handle:
        done = subprocess.run([sys.executable, "-m", "packsync", "-c", str(env.config_path), "status", "--files"],
                              stdout=handle, text=True, timeout=60)
    assert done.returncode == 0
    assert out.read_text().count(".png") == 300


def test_a_terminal_s_log_lines_are_stamped_in_local_time_and_json_lines_in_utc(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # (UTC+5:30 all year: local time cannot pass for UTC)
    time.tzset()
    try:
        for tty in (True, False):
            configure(tty=tty)
            get_logger().info("stamped")
    finally:
        logging.getLogger().handlers.clear()
        monkeypatch.delenv("TZ")
        time.tzset()

    console, line = [text for text in capsys.readouterr().err.split("\n") if text]  # (the console's start with \r)
    now = datetime.now(ZoneInfo("Asia/Kolkata"))
    stamp = re.search(r"\d{4}-\d\d-\d\d (\d\d:\d\d):\d\d", console)
    assert stamp and stamp[1] in {now.strftime("%H:%M"), (now - timedelta(minutes=1)).strftime("%H:%M")}, console
    assert json.loads(line)["timestamp"].endswith("Z"), line


@pytest.mark.parametrize(("args", "said"), [
    (["astria-tune:0"], "packsync: 'astria-tune:0': an Astria tune's id is a whole number from 1, not '0'."),
    (["astria:0"], "packsync: 'astria:0': an Astria pack's id is a whole number from 1, not '0'."),
    (["astria-tune:5", "--classes", "man"], "packsync: --classes: applies to an Astria pack only."),
], ids=["a tune's id", "a pack's id", "an option"])
def test_pull_s_argument_errors_are_one_sentence_with_dashes_only_before_an_option(
        env: Env, tmp_path: Path, args: list[str], said: str) -> None:
    result = packsync(env, "-c", str(env.config_path), "pull", args[0], str(tmp_path / "out"), *args[1:],
                      GENVIRAL_TOKEN=TOKEN)

    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr.splitlines(), result.stderr
    assert not (tmp_path / "out").exists(), "refused before anything is read or made"
