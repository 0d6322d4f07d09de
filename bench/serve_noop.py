"""Serve the no-op scenario's cached setup, so a run can be profiled by hand.

Starts a sandbox process as the bench does and loads the snapshot into it, copies the cached state to
a scratch folder, writes a config and waits (Ctrl-C or SIGTERM ends it). Build the cache first with
``python bench/run.py --only noop``.

    python bench/serve_noop.py [--smoke] [--cache-dir DIR]
    # in another shell, with the printed config:
    GENVIRAL_TOKEN=gva_bench_key.not-a-real-secret \
        py-spy record -o noop.svg -- python -m packsync -c CONFIG run --no-wait
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test helpers: helpers.py

from harness import Setup, calls_dict  # noqa: E402
from noop_rerun import _folders  # noqa: E402
from sandbox_process import TOKEN, SandboxProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the smoke run's small setup")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "packsync-bench-cache")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on kill, too
    files, mappings = (400, 4) if args.smoke else (100_000, 20)
    cache = args.cache_dir / f"noop-{files}x{mappings}"
    manifest = json.loads((cache / "manifest.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="packsync-noop-"))
    state = work / "state" / "state.db"
    state.parent.mkdir(mode=0o700)
    shutil.copy2(cache / "state.db", state)
    with SandboxProcess() as sandbox:
        sandbox.load_snapshot(cache / "sandbox.json")
        config = Setup(work, sandbox.base_url, concurrency=10, state_path=state,
                       mappings=list(zip(_folders(cache, mappings), manifest["pack_ids"], strict=True))).write()
        print(f"config: {config}\ntoken:  GENVIRAL_TOKEN={TOKEN}\nCtrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(5)
                if sandbox.calls:
                    print(f"calls so far: {calls_dict(sandbox.calls)}", flush=True)
                    sandbox.reset_calls()
        except KeyboardInterrupt:
            pass
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
