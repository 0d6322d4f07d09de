"""The shared state's two speed targets (issue 27): packsync on a PostgreSQL state against the same run on
SQLite, both measured in the same scenario, so the figure is a ratio of two runs on one machine at one time.

- ``first-sync-pg``: the ``first-sync`` run (1,000 small images into an empty pack, 40 ms added to every call,
  ``concurrency = 8``) on a fresh SQLite file and on a fresh PostgreSQL database, in pairs whose order
  alternates; figure = median SQLite wall ÷ median PostgreSQL wall (PostgreSQL's throughput relative to
  SQLite's), ≥ 0.90.
- ``noop-pg``: the ``noop`` run (an unchanged ``packsync run --no-wait`` over 100,000 synced files in 20
  mappings) on SQLite and on PostgreSQL, interleaved; figure = median PostgreSQL wall ÷ median SQLite wall,
  ≤ 2. The SQLite side is the ``noop`` scenario's cached setup (built by it when missing); the PostgreSQL
  side is the same 20 folders synced once for real through a PostgreSQL state into 20 other packs of the
  same sandbox, and cached beside it (``postgresql/``: a ``pg_dump`` of that database and the sandbox's
  snapshot holding both sets of packs). Each run restores the dump into a fresh database and analyzes it, as
  a server that has been running would have its statistics; the cache is never written by a measured run.

The server is a real PostgreSQL (``tests/postgres.py``), a cluster of its own on loopback started for the
scenario, in processes of its own as a database server is, sized for this machine (2 cores, 24 GiB) and
durable as a deployed one is (``fsync``, ``full_page_writes`` and ``synchronous_commit`` on; SQLite's state
runs in WAL with ``synchronous=NORMAL``, which syncs at checkpoints only, so it is the cheaper of the two
on commits). Not measured: starting the server, making or restoring a database. Measured: the whole
``packsync`` process, as everywhere in the bench; the server's CPU meanwhile (the postmaster's and its
backends') is shown for information. Without PostgreSQL's programs or psycopg the rows say so and are
skipped, not failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import noop_rerun
import postgres
from harness import (
    ADD_IMAGE,
    CREATE_UPLOAD,
    PACKS_GET,
    STORAGE_PUT,
    Context,
    FileOpenCounter,
    Finished,
    Row,
    Setup,
    calls_dict,
    child_env,
    median,
    packsync_argv,
    run_child,
    write_images,
)
from sandbox_process import SandboxProcess

LATENCY_S = 0.040
CONCURRENCY = 8
CALLS_PER_IMAGE = 3
FIRST_SYNC_TARGET = 0.90
NOOP_TARGET = 2.0
NOOP_RUNS = 5
SMOKE_NOOP_RUNS = 2
PG_CACHE_VERSION = 1
SITE = "bench"
BACKENDS = ("sqlite", "postgresql")

#: The server as this machine (2 cores, 24 GiB, shared with the bench and packsync) would run it: the state's
#: working set in shared buffers, the rest in the OS's cache; and durable (the tests' server is not).
SERVER_SETTINGS = {
    "fsync": "on", "full_page_writes": "on", "synchronous_commit": "on",
    "shared_buffers": "2GB", "effective_cache_size": "12GB", "work_mem": "32MB", "maintenance_work_mem": "512MB",
    "wal_buffers": "64MB", "max_wal_size": "4GB", "checkpoint_timeout": "15min", "random_page_cost": "1.1",
    "max_worker_processes": "2", "max_parallel_workers": "2", "max_parallel_workers_per_gather": "1",
}


# -- the server -------------------------------------------------------------------------------------

def _env(work: Path) -> dict[str, str]:
    """A packsync child's environment: the token, the database password in the variable the configs name, and
    ``XDG_STATE_HOME`` in ``work``: a PostgreSQL state's run still takes the lock file of the default SQLite
    state's path (``~/.local/state/packsync/state.db.lock``), which must be neither the user's nor shared with
    another run."""
    return child_env(**{postgres.PASSWORD_ENV: postgres.PASSWORD, "XDG_STATE_HOME": str(work / "xdg-state")})


def _setup(root: Path, base_url: str, backend: str, server: postgres.PostgresServer, mappings: list[tuple[Path, str]],
           concurrency: int, database: str | None = None, state_path: Path | None = None) -> Path:
    """A config whose state is the SQLite file ``state_path`` (default: the root's) or the database ``database``
    (default: a fresh one), as site ``bench``."""
    if backend == "sqlite":
        return Setup(root, base_url, concurrency=concurrency, mappings=mappings, state_path=state_path).write()
    return Setup(root, base_url, concurrency=concurrency, mappings=mappings, state_url=database or server.database(),
                 password_env=postgres.PASSWORD_ENV, site=SITE).write()


@contextmanager
def _server(ctx: Context) -> Iterator[postgres.PostgresServer]:
    ctx.log("starting a PostgreSQL server on loopback (not measured)")
    server = postgres.PostgresServer(SERVER_SETTINGS)
    try:
        yield server
    finally:
        server.close()


def _server_cpu_s(server: postgres.PostgresServer) -> float:
    """CPU seconds of the server so far: its postmaster's, its reaped backends' and its live processes'."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime (the backends it reaped)
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _client(server: postgres.PostgresServer, program: str, *args: str) -> None:
    """Run one of the server's client programs against it, the password in the environment, never in argv."""
    argv = [str(server.bin / program), "-h", "127.0.0.1", "-p", str(server.port), "-U", postgres.USER, *args]
    done = subprocess.run(argv, env={**os.environ, "PGPASSWORD": postgres.PASSWORD}, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{program} failed: {done.stderr.strip()[-500:]}")


def _restore(server: postgres.PostgresServer, dump: Path) -> str:
    """A fresh database holding ``dump``, vacuumed and analyzed as a long-running server's would be."""
    url = server.database()
    _client(server, "pg_restore", "--no-owner", "--exit-on-error", "-d", _database_name(url), str(dump))
    _client(server, "psql", "-q", "-d", _database_name(url), "-c", "VACUUM ANALYZE")
    return url


def _skipped(id: str, scenario: str, figure: str, target: str, why: str) -> Row:
    return Row(id, scenario, figure, None, target, None, f"SKIPPED: {why}", {"skipped": why})


# -- first sync -------------------------------------------------------------------------------------

def run_first_sync(ctx: Context) -> list[Row]:
    files, pairs = (40, 2) if ctx.smoke else (1000, 3)
    scenario = (f"first sync, {files:,} small images, +{LATENCY_S * 1000:.0f} ms per API and storage call, "
                f"concurrency = {CONCURRENCY}: PostgreSQL state vs SQLite state")
    figure = (f"median SQLite wall ÷ median PostgreSQL wall (PostgreSQL's throughput relative to SQLite's), "
              f"{pairs} pairs of runs in alternating order; whole processes")
    why = postgres.missing()
    if why is not None:
        return [_skipped("first-sync-pg", scenario, figure, f"≥ {FIRST_SYNC_TARGET:.2f}", why)]
    work = ctx.workdir / "first-sync-pg"
    folder = work / "pics"
    write_images(folder, range(1, files + 1), side=16)
    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    with _server(ctx) as server, ctx.sandbox(latency_s=LATENCY_S) as sandbox:
        for i in range(pairs):  # alternating, so a slow spell of the machine hits both alike
            for backend in BACKENDS if i % 2 == 0 else BACKENDS[::-1]:
                run = _first_sync(sandbox, server, work / f"{backend}-{i}", folder, files, backend)
                ctx.log(f"first-sync-pg: {backend} run {i + 1}: {run['wall_s']:.2f} s, CPU {run['cpu_s']:.2f} s"
                        f"{'' if run['complete'] else ' INCOMPLETE: ' + run['output_tail']}")
                runs[backend].append(run)
    sqlite_s, pg_s = (median([r["wall_s"] for r in runs[b]]) for b in BACKENDS)
    ratio = sqlite_s / pg_s
    complete = all(r["complete"] for b in BACKENDS for r in runs[b])
    bound_s = files * CALLS_PER_IMAGE * LATENCY_S / CONCURRENCY

    def cpu(backend: str, key: str) -> float:
        return median([r[key] for r in runs[backend]])

    info = (f"median wall SQLite {sqlite_s:.2f} s ({bound_s / sqlite_s:.2f} of the concurrency bound "
            f"{bound_s:.1f} s), PostgreSQL {pg_s:.2f} s ({bound_s / pg_s:.2f} of it); packsync CPU median SQLite "
            f"{cpu('sqlite', 'cpu_s'):.2f} s, PostgreSQL {cpu('postgresql', 'cpu_s'):.2f} s; PostgreSQL server CPU "
            f"per run {cpu('postgresql', 'db_cpu_s'):.2f} s; walls SQLite "
            f"{[round(r['wall_s'], 2) for r in runs['sqlite']]}, PostgreSQL "
            f"{[round(r['wall_s'], 2) for r in runs['postgresql']]}"
            + ("" if complete else "; A RUN WAS INCOMPLETE (see results.json)"))
    details = {"files": files, "latency_s": LATENCY_S, "concurrency": CONCURRENCY, "bound_s": bound_s,
               "server_settings": SERVER_SETTINGS, "runs": runs}
    return [Row("first-sync-pg", scenario, figure, ratio, f"≥ {FIRST_SYNC_TARGET:.2f}",
                complete and ratio >= FIRST_SYNC_TARGET, info, details, complete)]


def _first_sync(sandbox: SandboxProcess, server: postgres.PostgresServer, work: Path, folder: Path, files: int,
                backend: str) -> dict[str, Any]:
    """One first sync of ``folder`` into a new pack, on a fresh state of ``backend``."""
    pack_id = sandbox.new_pack(f"first-sync-{backend}")
    config = _setup(work, sandbox.base_url, backend, server, [(folder, pack_id)], CONCURRENCY)
    sandbox.reset_calls()
    db_before = _server_cpu_s(server)
    done = run_child(packsync_argv(config, "run", "--no-wait"), cwd=work, env=_env(work), timeout=900,
                     server=sandbox)
    db_cpu = _server_cpu_s(server) - db_before
    calls = sandbox.calls
    expected = {CREATE_UPLOAD: files, STORAGE_PUT: files, ADD_IMAGE: files, PACKS_GET: 1}
    complete = done.returncode == 0 and sandbox.image_count(pack_id) == files and dict(calls) == expected
    return {"wall_s": done.wall_s, "cpu_s": done.cpu_s, "max_rss_bytes": done.max_rss_bytes,
            "sandbox_cpu_s": done.server_cpu_s, "db_cpu_s": db_cpu, "returncode": done.returncode,
            "calls": calls_dict(calls), "complete": complete, "output_tail": done.tail(5)}


# -- no-op ------------------------------------------------------------------------------------------

def run_noop(ctx: Context) -> list[Row]:
    files, mappings = (400, 4) if ctx.smoke else (100_000, 20)
    scenario = (f"no-op re-run over {files:,} synced files in {mappings} mappings (packs of {files // mappings:,}): "
                "PostgreSQL state vs SQLite state")
    figure = (f"median PostgreSQL wall ÷ median SQLite wall of the whole `packsync run --no-wait`, "
              f"{SMOKE_NOOP_RUNS if ctx.smoke else NOOP_RUNS} runs each, interleaved")
    target = f"≤ {NOOP_TARGET:.0f}×, 0 file reads, 1 API read per pack"
    why = postgres.missing()
    if why is not None:
        return [_skipped("noop-pg", scenario, figure, target, why)]
    cache = ctx.cache_dir / f"noop-{files}x{mappings}"
    work = ctx.workdir / "noop-pg"
    built_now = False
    with _server(ctx) as server:
        while True:
            manifest = noop_rerun._load_manifest(cache, files, mappings)
            if manifest is None:
                manifest, built_now = noop_rerun._build(ctx, cache, files, mappings), True
            pg = _load_pg_manifest(cache, manifest)
            if pg is None:
                pg, built_now = _build_pg(ctx, cache, manifest, server), True
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            result = _measure_noop(ctx, cache, manifest, pg, server, work, validate=not built_now)
            if result is not None:
                break
            ctx.log("noop-pg: the cached setups are not a no-op any more; building them again")
            shutil.rmtree(cache)
    sqlite_s, pg_s = (median([r["wall_s"] for r in result[b]]) for b in BACKENDS)
    ratio = pg_s / sqlite_s
    clean = all(r["clean"] for b in BACKENDS for r in result[b])
    peak = {b: max(r["max_rss_bytes"] for r in result[b]) for b in BACKENDS}

    def cpu(backend: str, key: str) -> float:
        return median([r[key] for r in result[backend]])

    info = (f"median wall PostgreSQL {pg_s:.2f} s (CPU {cpu('postgresql', 'cpu_s'):.2f} s, server CPU "
            f"{cpu('postgresql', 'db_cpu_s'):.2f} s), SQLite {sqlite_s:.2f} s (CPU {cpu('sqlite', 'cpu_s'):.2f} s); "
            f"peak RSS PostgreSQL {peak['postgresql'] / 1e6:.0f} MB, SQLite {peak['sqlite'] / 1e6:.0f} MB; "
            f"every run clean (exit 0, nothing added or deleted, 0 files opened, {mappings} GETs): {clean}; "
            f"setup {'built in this run' if built_now else 'reused from cache, built ' + pg['built_at']}: "
            f"PostgreSQL's first real sync {pg['setup_sync_s']:.0f} s, SQLite's {manifest['setup_sync_s']:.0f} s")
    details = {**result, "manifest": manifest, "postgresql_manifest": pg, "built_now": built_now,
               "server_settings": SERVER_SETTINGS}
    return [Row("noop-pg", scenario, figure, ratio, target, clean and ratio <= NOOP_TARGET, info, details, clean)]


def _pg_cache(cache: Path) -> Path:
    return cache / "postgresql"


def _load_pg_manifest(cache: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The cached PostgreSQL setup's manifest, when it belongs to this SQLite setup and is whole."""
    folder = _pg_cache(cache)
    try:
        pg: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if (pg.get("version"), pg.get("sqlite_built_at")) != (PG_CACHE_VERSION, manifest["built_at"]):
        return None
    if not (folder / "state.dump").exists() or not (folder / "sandbox.json").exists():
        return None
    return pg


def _build_pg(ctx: Context, cache: Path, manifest: dict[str, Any], server: postgres.PostgresServer) -> dict[str, Any]:
    """Sync the SQLite setup's folders once for real through a PostgreSQL state into 20 new packs of the same
    sandbox, then once more after the metadata is finished; keep a dump of the database and the snapshot."""
    folder = _pg_cache(cache)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    mappings = manifest["mappings"]
    folders = noop_rerun._folders(cache, mappings)
    started = time.monotonic()
    with ctx.sandbox() as sandbox:
        sandbox.load_snapshot(cache / "sandbox.json")
        pack_ids = [sandbox.new_pack(f"noop-pg-{m:02}") for m in range(mappings)]
        database = server.database()
        root = ctx.workdir / "noop-pg-setup"
        config = _setup(root, sandbox.base_url, "postgresql", server, list(zip(folders, pack_ids, strict=True)),
                        noop_rerun.SETUP_CONCURRENCY, database=database)
        ctx.log(f"noop-pg setup: first real sync of {manifest['files']:,} files through PostgreSQL (not measured)")
        sync = run_child(packsync_argv(config, "run", "--no-wait"), cwd=root, env=_env(root), timeout=4 * 3600)
        per_folder = manifest["files"] // mappings
        if sync.returncode != 0 or any(sandbox.image_count(p) != per_folder for p in pack_ids):
            raise RuntimeError(f"PostgreSQL setup sync failed (exit {sync.returncode}): {sync.tail()}")
        for pack_id in pack_ids:
            sandbox.settle(pack_id)
        sandbox.reset_calls()
        settle = run_child(packsync_argv(config, "run", "--no-wait"), cwd=root, env=_env(root), timeout=3600)
        if settle.returncode != 0 or dict(sandbox.calls) != {PACKS_GET: mappings}:
            raise RuntimeError(f"PostgreSQL setup re-run was not a no-op (exit {settle.returncode}): {settle.tail()}")
        sandbox.save_snapshot(folder / "sandbox.json")
    _client(server, "pg_dump", "-Fc", "-d", _database_name(database), "-f", str(folder / "state.dump"))
    pg = {"version": PG_CACHE_VERSION, "sqlite_built_at": manifest["built_at"], "pack_ids": pack_ids,
          "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "setup_sync_s": sync.wall_s,
          "setup_sync_cpu_s": sync.cpu_s, "settle_s": settle.wall_s, "build_s": time.monotonic() - started}
    (folder / "manifest.json").write_text(json.dumps(pg, indent=2))
    ctx.log(f"noop-pg setup: built in {pg['build_s']:.0f} s (first sync {sync.wall_s:.0f} s)")
    return pg


def _measure_noop(ctx: Context, cache: Path, manifest: dict[str, Any], pg: dict[str, Any],
                  server: postgres.PostgresServer, work: Path, validate: bool) -> dict[str, Any] | None:
    """The no-op runs on both states, interleaved; None when a validation run shows a cache is not a no-op."""
    mappings = manifest["mappings"]
    folders = noop_rerun._folders(cache, mappings)
    state = work / "sqlite" / "state" / "state.db"
    state.parent.mkdir(mode=0o700, parents=True)
    shutil.copy2(cache / "state.db", state)
    database = _restore(server, _pg_cache(cache) / "state.dump")
    with ctx.sandbox() as sandbox:
        sandbox.load_snapshot(_pg_cache(cache) / "sandbox.json")
        configs = {
            "sqlite": _setup(work / "sqlite", sandbox.base_url, "sqlite", server,
                             list(zip(folders, manifest["pack_ids"], strict=True)), noop_rerun.SETUP_CONCURRENCY,
                             state_path=state),
            "postgresql": _setup(work / "postgresql", sandbox.base_url, "postgresql", server,
                                 list(zip(folders, pg["pack_ids"], strict=True)), noop_rerun.SETUP_CONCURRENCY,
                                 database=database),
        }

        def one_run(backend: str) -> dict[str, Any]:
            sandbox.reset_calls()
            counter = FileOpenCounter(folders)
            db_before = _server_cpu_s(server)
            try:
                done: Finished = run_child(packsync_argv(configs[backend], "run", "--no-wait"), cwd=work,
                                           env=_env(work), timeout=1800)
                reads = counter.collect()
            finally:
                counter.close()
            calls = calls_dict(sandbox.calls)
            return {"wall_s": done.wall_s, "cpu_s": done.cpu_s, "max_rss_bytes": done.max_rss_bytes,
                    "db_cpu_s": _server_cpu_s(server) - db_before, "returncode": done.returncode,
                    "file_reads": reads, "calls": calls, "clean": noop_rerun._clean(done, reads, calls, mappings),
                    "output_tail": done.tail(5)}

        ctx.log("noop-pg: a validation run on each state (also warms the page cache and the server's buffers)")
        validation = {backend: one_run(backend) for backend in BACKENDS}
        if validate and not all(v["clean"] for v in validation.values()):
            ctx.log(f"noop-pg: a validation run was not a no-op: {validation}")
            return None
        result: dict[str, Any] = {"validation": validation, "sqlite": [], "postgresql": []}
        for i in range(SMOKE_NOOP_RUNS if ctx.smoke else NOOP_RUNS):  # interleaved, alternating which goes first
            for backend in BACKENDS if i % 2 == 0 else BACKENDS[::-1]:
                run = one_run(backend)
                ctx.log(f"noop-pg: {backend} run {i + 1}: {run['wall_s']:.2f} s (CPU {run['cpu_s']:.2f} s, "
                        f"server CPU {run['db_cpu_s']:.2f} s), files opened {run['file_reads']['opens']}, "
                        f"calls {run['calls']}")
                result[backend].append(run)
    return result
