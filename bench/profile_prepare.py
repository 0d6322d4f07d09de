"""Profile one of the prepare scenario's first syncs by hand: py-spy over ``packsync run --no-wait``.

Starts a sandbox process at 40 ms per call as the bench does, places the cached photos (made if
missing) in a scratch folder, writes a config with ``concurrency = 8`` and the recipe asked for, and
runs packsync under ``py-spy record`` (every thread, idle samples included, or with ``--gil`` only the
thread holding the GIL; collapsed stacks), then
prints the run's wall time, the calls it made and the heaviest frames.

    python bench/profile_prepare.py [--max-edge 2160] [--count 200] [--out prepare.txt] [--gil]
        [--cache-dir DIR]

py-spy must be installed in the venv (``.venv/bin/pip install py-spy``); it needs ptrace, which a
container may only allow as root.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers: helpers.py

from camera_jpegs import photos  # noqa: E402
from harness import Setup, calls_dict, child_env, packsync_argv  # noqa: E402
from prepared_sync import CONCURRENCY, LATENCY_S, place_files  # noqa: E402
from sandbox_process import SandboxProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-edge", type=int, default=0, help="the mapping's max_edge (default 0: strip only)")
    parser.add_argument("--count", type=int, default=200, help="photos to sync (default 200)")
    parser.add_argument("--out", type=Path, default=Path("prepare-profile.txt"), help="py-spy's collapsed stacks")
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (default: every thread, idle ones too)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "packsync-bench-cache")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="packsync-prepare-profile-"))
    try:
        folder = place_files(photos(args.cache_dir, args.count, False, print), work / "photos")
        with SandboxProcess(latency_s=LATENCY_S) as sandbox:
            pack_id = sandbox.new_pack("profile")
            config = Setup(work, sandbox.base_url, concurrency=CONCURRENCY, mappings=[(folder, pack_id)]).write()
            if args.max_edge:
                with config.open("a", encoding="utf-8") as handle:
                    handle.write(f"max_edge = {args.max_edge}\n")
            py_spy = Path(sys.executable).with_name("py-spy")
            argv = [str(py_spy), "record", "--format", "raw", "--threads", "--gil" if args.gil else "--idle",
                    "--rate", "250", "-o", str(args.out), "--", *packsync_argv(config, "run", "--no-wait")]
            start = time.perf_counter()
            done = subprocess.run(argv, env=child_env(), cwd=work, capture_output=True, text=True)
            print(f"exit {done.returncode} after {time.perf_counter() - start:.2f} s (py-spy's overhead included); "
                  f"{sandbox.image_count(pack_id)} images; calls {calls_dict(sandbox.calls)}")
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-2000:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summarise(args.out)


def summarise(path: Path, top: int = 25) -> None:
    """Per thread, the frames most often on the stack (inclusive) and at its top (exclusive)."""
    inclusive: Counter[tuple[str, str]] = Counter()
    exclusive: Counter[tuple[str, str]] = Counter()
    threads: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread, samples = frames[0], int(count)
        threads[thread] += samples
        for frame in set(frames[1:]):
            inclusive[thread, frame] += samples
        exclusive[thread, frames[-1]] += samples
    for thread, total in threads.most_common():
        print(f"\n== {thread}: {total} samples")
        for label, counts in (("incl", inclusive), ("self", exclusive)):
            heaviest = [(frame, samples) for (owner, frame), samples in counts.most_common() if owner == thread]
            for frame, samples in heaviest[:top]:
                if samples >= total * 0.01:
                    print(f"  {samples / total:6.1%} {label}  {frame}")


if __name__ == "__main__":
    main()
