"""packsync's benchmark suite: run every scenario on this machine and print the results table.

    python bench/run.py                 # full sizes (see bench/README.md)
    python bench/run.py --smoke         # tiny sizes, well under a minute once the cache exists
    python bench/run.py --only noop     # one scenario (repeatable)
    python bench/run.py --out DIR       # where results.md and results.json go (default bench/results/)

Every figure is a ratio to a bound or to a baseline measured in the same run; absolute times are
printed alongside for information. Not part of the test suite (pytest only collects ``tests/``).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers: helpers.py

import adoption  # noqa: E402
import astria_mirror  # noqa: E402
import astria_tune  # noqa: E402
import bad_input  # noqa: E402
import daemon_idle  # noqa: E402
import daemon_scenarios  # noqa: E402
import first_sync  # noqa: E402
import hashing  # noqa: E402
import incremental  # noqa: E402
import metadata_polling  # noqa: E402
import noop_rerun  # noqa: E402
import prepared_sync  # noqa: E402
import pull  # noqa: E402
import real_photos  # noqa: E402
import shared_state  # noqa: E402
import startup  # noqa: E402
from harness import Context, Row  # noqa: E402

import packsync  # noqa: E402

BENCH = Path(__file__).resolve().parent
SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "first-sync": first_sync.run,
    "first-sync-150ms": first_sync.run_slow,
    "noop": noop_rerun.run,
    "hashing": hashing.run,
    "daemon-drop": daemon_scenarios.run_drops,
    "daemon-burst": daemon_scenarios.run_burst,
    "daemon-drop-100k": incremental.run_drop_100k,
    "daemon-idle": daemon_idle.run,
    "sidecar-round": incremental.run_sidecar_round,
    "metadata": metadata_polling.run,
    "bad-input": bad_input.run,
    "adoption": adoption.run,
    "pull": pull.run,
    "astria": astria_mirror.run,
    "astria-tune": astria_tune.run,
    "prepare": prepared_sync.run,
    "startup": startup.run,
    "first-sync-pg": shared_state.run_first_sync,
    "noop-pg": shared_state.run_noop,
    "photos-first-sync": real_photos.run_first_sync,
    "photos-rss": real_photos.run_rss,
    "photos-adoption": real_photos.run_adoption,
    "photos-pull": real_photos.run_pull,
    "bandwidth-5M": real_photos.run_bandwidth,
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run packsync's benchmarks and write results.md / results.json.")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the suite works")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="results folder (default: bench/results/)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "packsync-bench-cache",
                        help="where the no-op scenario keeps its synced 100,000-file setup between runs")
    args = parser.parse_args()

    names = args.only or list(SCENARIOS)
    began = time.monotonic()
    # packsync as installed: with its bytecode written (a source checkout run under PYTHONDONTWRITEBYTECODE
    # would compile every changed module again in every measured process).
    compileall.compile_dir(Path(packsync.__file__).parent, quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="packsync-bench-"))

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:7.1f} s] {message}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    timings: dict[str, float] = {}
    others: dict[str, float] = {}
    try:
        for name in names:
            log(f"== {name}")
            started = time.monotonic()
            scratch = workdir / name
            scratch.mkdir()
            foreign = ForeignCpu()
            ctx = Context(args.smoke, scratch, args.cache_dir, log)
            try:
                produced = SCENARIOS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                traceback.print_exc()
                produced = [Row(name, name, "(scenario failed)", None, "", False, f"ERROR: {exc}"[:500],
                                {"traceback": traceback.format_exc()}, correct=False)]
            if ctx.sandboxes:
                sandbox_cpu = ctx.sandbox_cpu_s()
                for row in produced:
                    row.info += f"; sandbox process CPU {sandbox_cpu:.1f} s over the whole scenario"
                    row.details["scenario_sandbox_cpu_s"] = sandbox_cpu
            rows += produced
            timings[name] = time.monotonic() - started
            others[name] = foreign.seconds()
            if others[name] > 0.1 * timings[name]:
                log(f"warning: other processes used {others[name]:.0f} CPU-s during {name}; its timings are disturbed")
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - began
    table = render(rows, args.smoke, elapsed, timings, others)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table, encoding="utf-8")
    document = {"smoke": args.smoke, "suite_wall_s": elapsed, "scenario_wall_s": timings,
                "other_processes_cpu_s": others, "machine": machine(),
                "rows": [asdict(row) for row in rows]}
    (args.out / "results.json").write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    sys.exit(0 if succeeded(rows, args.smoke) else 1)


def succeeded(rows: list[Row], smoke: bool) -> bool:
    """Every figure met its target; in a smoke run, whose tiny sizes make the figures say nothing, every
    scenario ran to its end and did what it must (``Row.correct``)."""
    if smoke:
        return all(row.correct is not False for row in rows)
    return all(row.passed is not False for row in rows)


class ForeignCpu:
    """CPU time used on this machine by processes other than the bench and its (reaped) children.

    Other work on a small machine (a test suite, a build) disturbs wall times; this says how much.
    """

    def __init__(self) -> None:
        self.start = self._machine() - self._ours()

    @staticmethod
    def _machine() -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def seconds(self) -> float:
        return max(0.0, self._machine() - self._ours() - self.start)


def render(rows: list[Row], smoke: bool, elapsed: float, timings: dict[str, float], others: dict[str, float]) -> str:
    lines = []
    if smoke:
        lines += ["**Smoke run: tiny sizes, the figures say nothing about performance.** It passes when every "
                  "scenario ran to its end and each run did what it must (complete, the calls expected).", ""]
    lines += ["| scenario | figure | measured | target | result | absolute figures (information) |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        value = "—" if row.value is None else f"{row.value:.2f}"
        result = "—" if row.passed is None else "pass" if row.passed else "**MISS**"
        cells = [row.scenario, row.figure, value, row.target, result, row.info]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    per = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    disturbed = ", ".join(f"{name} {cpu:.0f} CPU-s" for name, cpu in others.items() if cpu > 0.1 * timings[name])
    m = machine()
    lines += ["", f"Suite wall time {elapsed:.0f} s ({per}). {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
              f"packsync {m['packsync_commit']}."]
    if disturbed:
        lines += ["", f"Other processes on the machine used CPU during: {disturbed} — those timings are disturbed."]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, object]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH.parent, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "packsync"], cwd=BENCH.parent,
                               capture_output=True, text=True).stdout.strip()
        commit = head + (" + uncommitted changes in packsync/" if dirty else "")
    except OSError:
        commit = "unknown"
    import packsync

    source = Path(packsync.__file__).resolve().parent.parent
    if source != BENCH.parent:
        commit = f"imported from {source}"  # e.g. an exported commit put first on PYTHONPATH
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "packsync_commit": commit}


if __name__ == "__main__":
    main()
