"""The ``packsync`` command line: parse, load the config, run one command, map errors to exit codes.

Every user-caused error ends in one sentence on stderr and a distinct exit code (see ``errors.py``
and the README); bugs still show a traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from packsync import __version__
from packsync.client import GenviralClient
from packsync.config import Config, find_config_path, load_config
from packsync.errors import PacksyncError
from packsync.lock import StateLock
from packsync.logs import configure, redact, register_secret
from packsync.progress import Progress
from packsync.report import print_packs, print_plan, print_run, print_status, status_data
from packsync.state import Store
from packsync.sync import Syncer, SyncOptions, SyncReport


def _reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a PacksyncError into its one-sentence message and exit code."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PacksyncError as exc:
            click.echo(f"packsync: {redact(str(exc)) or 'failed'}", err=True)
            sys.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            click.echo("packsync: interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
              help="Config file (default: $PACKSYNC_CONFIG, then the user config dir).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug events too.")
@click.version_option(__version__, prog_name="packsync")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """Keep Genviral image packs an exact mirror of local folders."""
    configure(verbose)
    ctx.obj = {"config_path": config_path}


def _config(ctx: click.Context) -> Config:
    return load_config(find_config_path(ctx.obj["config_path"]))


async def sync_with(config: Config, token: str, options: SyncOptions, progress: Progress) -> SyncReport:
    """Open the state and the API client, and sync once."""
    store = Store(config.state_path)
    try:
        async with GenviralClient(config.genviral.base_url, token, concurrency=config.genviral.concurrency) as api:
            return await Syncer(config, store, api, progress).sync(options)
    finally:
        progress.close()
        store.close()


@main.command()
@click.option("--dry-run", is_flag=True, help="Print the plan (uploads, adds, deletes) and change nothing.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the images' AI metadata.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=600.0, show_default=True, metavar="S",
              help="Wait at most S seconds for the AI metadata.")
@click.option("--force", is_flag=True, help="Allow deletes that a safety check withheld.")
@click.pass_context
@_reports_errors
def run(ctx: click.Context, dry_run: bool, no_wait: bool, wait_timeout: float, force: bool) -> None:
    """Sync every mapped folder into its pack once."""
    config = _config(ctx)
    config.require_mappings()
    token = config.token()
    register_secret(token)
    options = SyncOptions(dry_run=dry_run, wait=not no_wait, wait_timeout_s=wait_timeout, force=force)
    progress = Progress()
    with StateLock(config.state_path):
        report = asyncio.run(sync_with(config, token, options, progress))
    (print_plan if dry_run else print_run)(report, sys.stdout)
    sys.exit(int(report.exit_code))


@main.command()
@click.option("--polling", is_flag=True, help="Poll every folder instead of using inotify (network shares).")
@click.pass_context
@_reports_errors
def daemon(ctx: click.Context, polling: bool) -> None:
    """Watch the mapped folders and keep their packs in sync until stopped (SIGHUP reloads)."""
    from packsync.daemon import run_daemon

    sys.exit(int(run_daemon(find_config_path(ctx.obj["config_path"]), polling=polling)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON document (see README).")
@click.option("--files", is_flag=True, help="List every file with its image id and AI metadata.")
@click.pass_context
@_reports_errors
def status(ctx: click.Context, as_json: bool, files: bool) -> None:
    """Show each mapping's files, images and metadata, from the state (no API call)."""
    config = _config(ctx)
    store = Store(config.state_path)
    try:
        holder = StateLock(config.state_path).holder()
        print_status(status_data(config, store, files=files, lock_holder=holder), sys.stdout, as_json=as_json)
    finally:
        store.close()


@main.command()
@click.option("--public", is_flag=True, help="Include public packs of other accounts.")
@click.pass_context
@_reports_errors
def packs(ctx: click.Context, public: bool) -> None:
    """List the key's packs (id, name, image count)."""
    config = _config(ctx)
    token = config.token()
    register_secret(token)

    async def fetch() -> list[Any]:
        async with GenviralClient(config.genviral.base_url, token, concurrency=config.genviral.concurrency) as api:
            return await api.list_packs(include_public=public)

    print_packs(asyncio.run(fetch()), sys.stdout)


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--state", "state_path", type=click.Path(path_type=Path), help="Keep the sandbox's data in this file.")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=0.0, help="Delay added to every request.")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of requests answered with 429/500/reset.")
@click.option("--upload-ttl", type=click.FloatRange(min=1), default=600.0, help="Seconds an upload URL stays valid.")
@_reports_errors
def sandbox(port: int, state_path: Path | None, latency_ms: float, fault_rate: float, upload_ttl: float) -> None:
    """Serve a local Genviral Partner API on 127.0.0.1 (accepts $GENVIRAL_TOKEN, or a demo token)."""
    from packsync.sandbox import main_serve

    main_serve(port=port, token=os.environ.get("GENVIRAL_TOKEN") or None, state_path=state_path,
               latency_ms=latency_ms, fault_rate=fault_rate, upload_ttl_s=upload_ttl)


@main.command()
@click.option("--keep", type=click.Path(path_type=Path), help="Make the demo in this folder and keep it.")
@_reports_errors
def demo(keep: Path | None) -> None:
    """Sync sample images into the built-in sandbox and show the result. Needs no set-up."""
    from packsync.demo import run_demo

    sys.exit(int(run_demo(keep)))


if __name__ == "__main__":
    main()

