"""The daemon at rest: a real ``packsync daemon`` over 100,000 synced files in 20 folders, nothing changing.

The folders start synced as a finished sync leaves them (``incremental.seed``: the packs hold the images,
their metadata settled, and the state their records), so the daemon's start-up sync is a walk, a pack
read per folder and a plan with nothing to do. Once it is ready and the sandbox has heard nothing for a
while, the daemon is watched from ``/proc`` for the idle window (5 minutes; ``--smoke``: 15 s), with
``rescan_interval_s`` far longer than the window so that no rescan falls in it:

- CPU: utime + stime of the whole process (``/proc/PID/stat``, dead threads included) over the window,
  as a share of one core;
- wakeups: per thread, ``voluntary_ctxt_switches + nonvoluntary_ctxt_switches`` of
  ``/proc/PID/task/TID/status``, the increase over the window, summed (a thread that starts or ends
  inside the window counts what it made while sampled, every second); each thread named by its
  ``comm``, which the daemon sets from its Python thread names (``daemon/process.py``);
- memory: ``VmRSS`` every second, and ``VmHWM``; its growth from the end of the first fifth of the
  window (minute 1) to its end (minute 5).

Each figure is a ratio to issue 28's bound: CPU ÷ 0.5 % of a core, wakeups ÷ 1 per second, RSS ÷ 200 MB,
and the growth ÷ 1 MB (memory at rest must not grow; 1 MB is the allocator's noise, not a leak's rate).

After the window, what others make the daemon do periodically, each request's CPU measured the same way
over ``REQUESTS`` of them: a Prometheus scrape of ``/metrics`` (every 15 s, a common ``scrape_interval``),
a health probe of ``/healthz`` (every 10 s) and the open page's refresh of ``/view`` (every 2 s while the
tab is visible; 304 while nothing changed). Each is judged as the CPU share it costs at that pace ÷
0.5 % of a core: such work must not grow with the tree either.

Last, the daemon is started again with one of the folders polled (``polling = true``, what the daemon
falls back to when inotify runs out), and watched the same way for a fifth of the window: a polled
folder legitimately costs a walk of its tree every 2 s (or 50 times as long as a walk takes, when that is
longer: ``watcher.POLL_PACE``), shown for information (a minute; ``--smoke``: 10 s).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from daemon_scenarios import DEBOUNCE_S, _stop, _wait_quiet
from harness import Context, Row, Setup, start_daemon, write_images
from incremental import seed

CPU_BOUND = 0.005  # of one core
WAKEUPS_BOUND = 1.0  # per second
RSS_BOUND = 200_000_000
GROWTH_BOUND = 1_000_000
TICKS = os.sysconf("SC_CLK_TCK")
REQUESTS = 20
#: What others ask of a daemon at rest, and how often (seconds).
PERIODIC = {"/metrics": 15.0, "/healthz": 10.0, "/view": 2.0}


@dataclass
class Sample:
    """One look at the daemon from ``/proc``."""

    at: float
    cpu_s: float
    rss_bytes: int
    hwm_bytes: int
    #: Per thread id: (its name, its context switches so far).
    threads: dict[int, tuple[str, int]] = field(default_factory=dict)


def sample(pid: int) -> Sample:
    """The process's CPU and memory and every thread's context switches, now."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of proc(5))
    memory = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines())
        except OSError:
            continue  # it ended meanwhile: what it made up to the last sample is kept
        switches = int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
        threads[int(task.name)] = (name, switches)
    return Sample(time.monotonic(), cpu_s, _kib(memory["VmRSS"]), _kib(memory["VmHWM"]), threads)


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


def wakeups(samples: list[Sample]) -> Counter[str]:
    """The context switches each thread (by name) made between the first sample and the last."""
    first = samples[0].threads
    last: dict[int, tuple[str, int]] = {}
    for each in samples:
        last.update(each.threads)
    made: Counter[str] = Counter()
    for tid, (name, switches) in last.items():
        made[f"{name} ({tid})"] += switches - first.get(tid, (name, 0))[1]
    return made


def run(ctx: Context) -> list[Row]:
    files, folders, window_s = (2_000, 20, 15.0) if ctx.smoke else (100_000, 20, 300.0)
    work = ctx.workdir / "daemon-idle"
    roots = [work / "tree" / f"m{m:02}" for m in range(folders)]
    per_folder = files // folders
    ctx.log(f"daemon idle: writing {files:,} files in {folders} folders")
    for m, root in enumerate(roots):
        write_images(root, range(m * per_folder, (m + 1) * per_folder), prefix="seed")
    with ctx.sandbox(enrich_delays=(0.0, 0.0)) as sandbox:
        pack_ids = [sandbox.new_pack(f"idle-{m:02}") for m in range(folders)]
        config = Setup(work, sandbox.base_url, mappings=list(zip(roots, pack_ids, strict=True)),
                       daemon={"debounce_s": DEBOUNCE_S, "rescan_interval_s": max(3600, 10 * window_s)}).write()
        ctx.log("daemon idle: seeding the packs and the state")
        for root, pack_id in zip(roots, pack_ids, strict=True):
            seed(sandbox, config, root, pack_id)
        started = time.monotonic()
        daemon = start_daemon(config, work)
        try:
            daemon.wait_ready(timeout=900)
            _wait_quiet(sandbox, 5.0, timeout=600)
            settled_s = time.monotonic() - started
            calls_before = sum(sandbox.calls.values())
            ctx.log(f"daemon idle: settled after {settled_s:.1f} s; sampling for {window_s:.0f} s")
            samples = _watched(daemon.proc.pid, window_s)
            calls = sum(sandbox.calls.values()) - calls_before
            ctx.log("daemon idle: what /metrics, /healthz and /view cost")
            requests = _requests(daemon.proc.pid, _page_url(daemon.output()))
        finally:
            code = _stop(daemon)
        mapping = f'path = "{roots[0]}"'
        config.write_text(config.read_text(encoding="utf-8").replace(mapping, f"{mapping}\npolling = true"),
                          encoding="utf-8")
        (work / "polled").mkdir()
        daemon = start_daemon(config, work / "polled")
        try:
            daemon.wait_ready(timeout=900)
            _wait_quiet(sandbox, 5.0, timeout=600)
            polled_s = max(10.0, window_s / 5)
            ctx.log(f"daemon idle: one folder polled; sampling for {polled_s:.0f} s")
            polled = _watched(daemon.proc.pid, polled_s)
        finally:
            _stop(daemon)
    return (_rows(samples, files, folders, window_s, settled_s, calls, code) + _request_rows(requests, files)
            + [_polled_row(polled, per_folder, folders)])


def _watched(pid: int, window_s: float) -> list[Sample]:
    """The daemon sampled every second for ``window_s``."""
    samples = [sample(pid)]
    while time.monotonic() - samples[0].at < window_s:
        time.sleep(1.0)
        samples.append(sample(pid))
    return samples


def _polled_row(samples: list[Sample], per_folder: int, folders: int) -> Row:
    span_s = samples[-1].at - samples[0].at
    cpu = (samples[-1].cpu_s - samples[0].cpu_s) / span_s
    made = wakeups(samples)
    busiest = ", ".join(f"{name} {n / span_s:.2f}/s" for name, n in made.most_common(4) if n)
    return Row("daemon-idle-polled", f"the same daemon with one of its {folders} folders ({per_folder:,} files) "
               "polled (polling = true: the fallback when inotify runs out)",
               f"average CPU ÷ {CPU_BOUND:.1%} of one core (information: a polled folder is walked every 2 s, "
               "or 50 × its walk's time)",
               cpu / CPU_BOUND, "information", None,
               f"{cpu:.2%} of a core, {sum(made.values()) / span_s:.2f} wakeups/s over {span_s:.0f} s; busiest: "
               f"{busiest}", {"cpu_share": cpu, "wakeups_by_thread": dict(made)})


def _page_url(log: str) -> str:
    for line in log.splitlines():
        if '"web page, health and metrics served"' in line:
            url: str = json.loads(line)["url"]
            return url
    raise RuntimeError(f"the daemon did not say where its page is:\n{log[-2000:]}")


def _requests(pid: int, url: str) -> dict[str, float]:
    """The daemon's CPU seconds per request of each of ``PERIODIC``, over ``REQUESTS`` of each after one
    that is not counted (the page's first, whole, before its refreshes answer 304)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    cost = {}
    for path in PERIODIC:
        etag = _get(opener, url.rstrip("/") + path, None)
        before = sample(pid).cpu_s
        for _ in range(REQUESTS):
            _get(opener, url.rstrip("/") + path, etag)
        cost[path] = (sample(pid).cpu_s - before) / REQUESTS
    return cost


def _get(opener: urllib.request.OpenerDirector, url: str, etag: str | None) -> str | None:
    """GET ``url`` as the page's script does (``If-None-Match``: its last ETag); the answer's ETag."""
    headers = {"If-None-Match": etag} if etag else {}
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=60) as answer:
            answer.read()
            tag: str | None = answer.headers.get("ETag")
            return tag
    except urllib.error.HTTPError as exc:
        if exc.code != 304:  # (nothing changed)
            raise
        return etag


def _request_rows(cost: dict[str, float], files: int) -> list[Row]:
    rows = []
    for path, every_s in PERIODIC.items():
        share = cost[path] / every_s
        rows.append(Row(
            "daemon-idle-requests", f"a daemon at rest over {files:,} files asked for {path} every {every_s:.0f} s",
            f"the daemon's CPU per request (mean of {REQUESTS}) ÷ {every_s:.0f} s, ÷ {CPU_BOUND:.1%} of one core",
            share / CPU_BOUND, "≤ 1", share <= CPU_BOUND,
            f"{cost[path] * 1000:.1f} ms CPU per request: {share:.3%} of a core at that pace", {"cpu_s": cost[path]}))
    return rows


def _rows(samples: list[Sample], files: int, folders: int, window_s: float, settled_s: float, calls: int,
          code: int | None) -> list[Row]:
    first, last = samples[0], samples[-1]
    span_s = last.at - first.at
    cpu = (last.cpu_s - first.cpu_s) / span_s
    made = wakeups(samples)
    rate = sum(made.values()) / span_s
    minute_1 = next(s for s in samples if s.at - first.at >= span_s / 5)
    growth = last.rss_bytes - minute_1.rss_bytes
    peak = max(s.hwm_bytes for s in samples)
    threads = len(last.threads)
    busiest = ", ".join(f"{name} {n / span_s:.2f}/s" for name, n in made.most_common(6) if n)
    scenario = (f"daemon at rest over {files:,} synced files in {folders} folders, {span_s:.0f} s after settling "
                f"(no rescan in the window)")
    details = {"window_s": span_s, "settled_s": settled_s, "startup_cpu_s": first.cpu_s, "cpu_share": cpu,
               "wakeups_per_s": rate,
               "wakeups_by_thread": dict(made), "threads": threads, "rss_bytes": [s.rss_bytes for s in samples],
               "hwm_bytes": peak, "rss_growth_bytes": growth, "api_calls_in_window": calls, "daemon_exit": code}
    quiet = calls == 0 and code == 0
    return [
        Row("daemon-idle-cpu", scenario, "average CPU of the daemon process (utime + stime, /proc/PID/stat) "
            f"÷ {CPU_BOUND:.1%} of one core", cpu / CPU_BOUND, "≤ 1", cpu <= CPU_BOUND and quiet,
            f"{cpu:.3%} of a core ({last.cpu_s - first.cpu_s:.2f} CPU-s over {span_s:.0f} s); {calls} API calls "
            f"in the window; settled {settled_s:.0f} s after its start, using {first.cpu_s:.1f} CPU-s (its imports and "
            f"the start-up sync, a full scan as a rescan makes); daemon exit {code}", details, quiet),
        Row("daemon-idle-wakeups", scenario, "context switches of every thread (/proc/PID/task/*/status) per "
            f"second ÷ {WAKEUPS_BOUND:.0f}", rate / WAKEUPS_BOUND, "≤ 1", rate <= WAKEUPS_BOUND,
            f"{rate:.2f} wakeups/s over {threads} threads; busiest: {busiest or 'none'}", {}),
        Row("daemon-idle-rss", scenario, f"RSS at the end of the window ÷ {RSS_BOUND / 1e6:.0f} MB",
            last.rss_bytes / RSS_BOUND, "≤ 1", last.rss_bytes <= RSS_BOUND,
            f"VmRSS {last.rss_bytes / 1e6:.1f} MB, VmHWM {peak / 1e6:.1f} MB (the start-up sync's peak)", {}),
        Row("daemon-idle-growth", scenario, f"RSS growth from the end of the first fifth of the window to its end "
            f"÷ {GROWTH_BOUND / 1e6:.0f} MB", max(growth, 0) / GROWTH_BOUND, "≤ 1", growth <= GROWTH_BOUND,
            f"{minute_1.rss_bytes / 1e6:.2f} MB → {last.rss_bytes / 1e6:.2f} MB ({growth / 1e3:+.0f} kB)", {}),
    ]
