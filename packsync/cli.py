"""The ``packsync`` command line: arguments in, one command run, exit code out.

Parsing and exit codes only: what a command does lives in the application service (``app.py``),
the daemon and the views. Every user-caused error ends in one sentence on stderr and a distinct
exit code (see ``errors.py`` and the README); bugs still show a traceback. The global options
``-c/--config`` and ``-v/--verbose`` work before or after the command name. The parts a command
needs are imported when it runs, so ``--help`` and ``--version`` stay quick.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from packsync import __version__
from packsync.errors import ConfigError, PacksyncError

if TYPE_CHECKING:
    from packsync.config import Config, MappingConfig, StateConfig
    from packsync.engine.sync import SyncOptions
    from packsync.state.forget import Forgetting
    from packsync.state.migrate import Migration
    from packsync.state.records import SharedState


def _examples(*lines: str) -> str:
    """A command's ``--help`` examples, kept as written (``\\b``: click does not rewrap the paragraph)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep a global option wherever it was given; ``ctx.meta`` is shared by the group and its command."""
    if value:
        ctx.meta[f"packsync.{param.name}"] = value
    return value


def _global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_remember,
                           help="Log debug events too, and the libraries' own records.")(command)
    return click.option("-c", "--config", type=click.Path(path_type=Path), expose_value=False, callback=_remember,
                        help="Config file (default: $PACKSYNC_CONFIG, then the user config dir).")(command)


def _command(group: click.Group, **settings: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """A subcommand with the global options, logging set up, and errors turned into their sentence and exit code."""

    def decorate(function: Callable[..., Any]) -> click.Command:
        @wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            from packsync.logs import configure, redact

            configure(bool(click.get_current_context().meta.get("packsync.verbose")))
            try:
                return function(*args, **kwargs)
            except PacksyncError as exc:
                click.echo(f"packsync: {redact(str(exc)) or 'failed'}", err=True)
                sys.exit(int(exc.exit_code))
            except KeyboardInterrupt:
                click.echo("packsync: interrupted", err=True)
                sys.exit(130)

        return group.command(**settings)(_global_options(run))

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_examples("packsync init                 # write a first config",
                              "packsync run --dry-run        # what a sync would do",
                              "packsync run                  # sync once",
                              "packsync service install      # keep syncing, as a systemd service",
                              "packsync COMMAND --help       # each command's options and examples"))
@_global_options
@click.version_option(__version__, prog_name="packsync")
def main() -> None:
    """Keep Genviral image packs an exact mirror of local folders."""


def _bandwidth_limit(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--bwlimit``, checked as ``[genviral] bandwidth_limit`` is."""
    from packsync.remote.bandwidth import BandwidthLimit

    if value is not None:
        try:
            BandwidthLimit(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


#: ``run``'s and ``daemon``'s ``--bwlimit``.
_bwlimit = click.option("--bwlimit", metavar="RATE", callback=_bandwidth_limit,
                        help="Bandwidth limit for this process, over [genviral] bandwidth_limit: 20M, 10M:100M "
                             "(up:down), \"08:00,2M 19:00,off\" or off.")


def _config_path() -> Path:
    from packsync.config import find_config_path

    return find_config_path(click.get_current_context().meta.get("packsync.config"))


def _config() -> Config:
    from packsync.config import load_config

    return load_config(_config_path())


def _token(config: Config) -> str:
    from packsync.logs import register_secret

    token = config.token()
    register_secret(token)
    return token


#: ``--force`` given without a mapping: every mapping's withheld deletes.
EVERY = "\0every"


def _named(config: Config, names: tuple[str, ...]) -> list[MappingConfig]:
    """The mappings a command names (``mappings.named``), read from the state without writing it."""
    from packsync.mappings import named
    from packsync.state.store import State

    state = State.for_config(config, readonly=True)
    try:
        return [named(config, state, name) for name in names]
    finally:
        state.close()


def _sync(config: Config, options: SyncOptions, only: list[str] | None, as_json: bool) -> None:
    """Sync (``only`` those mappings): through the daemon when one holds the state, else here with its lock.
    Prints what ``run`` prints, and exits with its code."""
    import asyncio

    from packsync.app import sync_once
    from packsync.control import find_daemon
    from packsync.state.lock import StateLock
    from packsync.views.json import run_document, write_json
    from packsync.views.progress import Progress
    from packsync.views.text import print_run

    if (daemon := find_daemon(config.state_path)) is not None:  # it holds the token: none is read here
        params = [("mapping", label) for label in only or ()]
        params += [("force", "1")] if options.force else []
        params += [("allow", f"{label}={'' if n is None else n}") for label, n in options.allow.items()]
        params += [("wait", str(options.wait_timeout_s))] if options.wait else []
        answer = daemon.ask("POST", "/sync", params, timeout=None)
        if as_json:
            write_json(answer["json"], sys.stdout)
        else:
            sys.stdout.write(answer["text"])
        sys.exit(int(answer["exit_code"]))
    token = _token(config)
    with StateLock(config.state_path):
        report = asyncio.run(sync_once(config, token, options, Progress(), only=only))
    if as_json:
        write_json(run_document(report), sys.stdout)
    else:
        print_run(report, sys.stdout)
    sys.exit(int(report.exit_code))


@_command(main, epilog=_examples("packsync run --dry-run              # the plan; changes nothing",
                                 "packsync run                        # sync every mapping once (cron: add --no-wait)",
                                 "packsync run --force ~/Pictures/brand   # with the deletes withheld there",
                                 "packsync run --json | jq '.mappings[] | {source, added, deleted}'"))
@click.option("--dry-run", is_flag=True, help="Print the plan (uploads, adds, deletes) and change nothing.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the images' AI metadata.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=600.0, show_default=True, metavar="S",
              help="Wait at most S seconds for the AI metadata.")
@click.option("--force", is_flag=False, flag_value=EVERY, default=None, metavar="[MAPPING]",
              help="Allow the deletes a safety check withheld: of every mapping, or of MAPPING only.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON summary object (with --dry-run: the plan, action by action).")
@_bwlimit
def run(dry_run: bool, no_wait: bool, wait_timeout: float, force: str | None, as_json: bool,
        bwlimit: str | None) -> None:
    """Sync every mapped folder into its pack once.

    While the daemon runs, it is asked to do the sync (it holds the state) and this prints its result
    (the daemon's bandwidth limit holds then, not --bwlimit).
    """
    import asyncio

    from packsync.app import sync_once
    from packsync.config import with_bandwidth_limit
    from packsync.engine.sync import SyncOptions
    from packsync.views.progress import Progress
    from packsync.views.text import print_plan

    config = with_bandwidth_limit(_config(), bwlimit)
    config.require_mappings()
    allow: dict[str, int | None] = {} if force in (None, EVERY) else \
        {m.label: None for m in _named(config, (str(force),))}
    options = SyncOptions(dry_run=dry_run, wait=not no_wait, wait_timeout_s=wait_timeout, force=force == EVERY,
                          allow=allow)
    if not dry_run:
        _sync(config, options, None, as_json)
    # A dry run only reads the state (a consistent snapshot, even while the daemon writes): no lock.
    report = asyncio.run(sync_once(config, _token(config), options, Progress()))
    if as_json:
        from packsync.views.json import plan_document, write_json

        write_json(plan_document(report), sys.stdout)
    else:
        print_plan(report, sys.stdout, verbose=bool(click.get_current_context().meta.get("packsync.verbose")))
    sys.exit(int(report.exit_code))


@_command(main, name="sync", epilog=_examples("packsync sync                     # every mapping, now",
                                              "packsync sync ~/Pictures/brand    # that folder's mapping only",
                                              "packsync sync \"Brand Assets\" --wait 120"))
@click.argument("mappings", nargs=-1, metavar="[MAPPING]...")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Also wait up to S seconds for the new images' AI metadata.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")
def sync_now(mappings: tuple[str, ...], wait_s: float | None, as_json: bool) -> None:
    """Sync now: every mapping, or those named (by folder, pack name or label), and print the result.

    Asks the running daemon when there is one, else syncs here, as `run` does.
    """
    from packsync.engine.sync import SyncOptions

    config = _config()
    config.require_mappings()
    only = [m.label for m in _named(config, mappings)] if mappings else None
    _sync(config, SyncOptions(wait=wait_s is not None, wait_timeout_s=wait_s or 0.0), only, as_json)


def _hold(names: tuple[str, ...], paused: bool) -> None:
    """``pause``/``resume``: through the daemon when one holds the state, else in the state, with its lock."""
    from packsync.control import find_daemon
    from packsync.mappings import hold
    from packsync.state.lock import StateLock
    from packsync.state.store import State

    config = _config()
    config.require_mappings()
    labels = [m.label for m in _named(config, names)]
    verb = "pause" if paused else "resume"
    if (daemon := find_daemon(config.state_path)) is not None:
        done = daemon.ask("POST", f"/{verb}", [("mapping", label) for label in labels])[f"{verb}d"]
    else:
        with StateLock(config.state_path):
            state = State.for_config(config)
            try:
                done = hold(config, state, labels, paused)
            finally:
                state.close()
    for label in done:
        click.echo(f"{verb}d  {label}")
    if not done:
        click.echo("nothing is paused.")
    elif paused:
        click.echo("A sync under way finishes; no other starts until `packsync resume`, across daemon restarts.")


@_command(main, epilog=_examples("packsync pause                    # every mapping",
                                 "packsync pause ~/Pictures/brand"))
@click.argument("mappings", nargs=-1, metavar="[MAPPING]...")
def pause(mappings: tuple[str, ...]) -> None:
    """Stop syncing every mapping (or those named) until `packsync resume`, across daemon restarts."""
    _hold(mappings, True)


@_command(main, epilog=_examples("packsync resume                   # every paused mapping",
                                 "packsync resume ~/Pictures/brand"))
@click.argument("mappings", nargs=-1, metavar="[MAPPING]...")
def resume(mappings: tuple[str, ...]) -> None:
    """Sync every paused mapping (or those named) again, starting with a full scan."""
    _hold(mappings, False)


@_command(main, name="allow-deletes", epilog=_examples("packsync status       # what is withheld, and where",
                                                       "packsync allow-deletes ~/Pictures/brand"))
@click.argument("mapping")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")
def allow_deletes(mapping: str, as_json: bool) -> None:
    """Approve, once, the deletes a safety stop withholds in MAPPING (a folder, or a subfolder's pack).

    At most as many as were withheld are deleted: any delete that appeared since stops again. Asks the
    running daemon when there is one, else syncs that mapping here. `packsync status` lists what is withheld.
    """
    from packsync.engine.sync import SyncOptions
    from packsync.mappings import group_of, withheld
    from packsync.state.store import State

    config = _config()
    chosen, = _named(config, (mapping,))
    state = State.for_config(config, readonly=True)
    try:
        allow: dict[str, int | None] = dict(withheld(config, state, chosen.label))
        paused = state.mappings.paused() & {chosen.label, group_of(config, chosen.label), *allow}
    finally:
        state.close()
    if not allow:
        click.echo(f"{chosen.label}: no deletes are withheld; nothing to allow.")
        return
    if paused:
        raise ConfigError(f"{min(paused)} is paused: `packsync resume` it first, then allow its deletes.")
    _sync(config, SyncOptions(wait=False, allow=allow), sorted(allow), as_json)


@_command(main, epilog=_examples("packsync pull \"genviral:Brand Assets\" ~/restore/brand",
                                 "packsync pull genviral:Brand ~/Pictures/brand --delete --dry-run",
                                 "packsync pull astria:260 ~/astria/headshots --classes woman,man",
                                 "packsync pull astria-tune:690200 ~/astria/tune --sidecars xmp"))
@click.argument("source", metavar="genviral:PACK|astria:ID|astria-tune:ID")
@click.argument("folder")
@click.option("--delete", is_flag=True, help="Also delete files pulled earlier whose images left the source.")
@click.option("--max-delete", default="50%", show_default=True, metavar="N|P%",
              help="With --delete: at most this many files (or this share of those pulled) deleted at once.")
@click.option("--force", is_flag=True, help="With --delete: delete even from an emptied pack or past --max-delete.")
@click.option("--dry-run", is_flag=True, help="Print what would be downloaded and deleted; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")
@click.option("--classes", metavar="A,B", help="astria: only these classes (default: all).")
@click.option("--sidecars", type=click.Choice(["none", "xmp"]), default="none", show_default=True,
              help="Write each image's text into NAME.xmp beside it (genviral: its AI description and keywords; "
                   "a source whose images carry a text of their own: that text).")
def pull(source: str, folder: str, delete: bool, max_delete: str, force: bool, dry_run: bool, as_json: bool,
         classes: str | None, sidecars: str) -> None:
    """Download a pack's or a tune's images into FOLDER (created if missing).

    A Genviral PACK is an id or an exact name. An Astria pack (by its number) is written one sub-folder
    per class: FOLDER/<class>/<prompt id>-<n>.<ext>. An Astria tune (by its id) is written
    FOLDER/<prompt id>-<n>.<ext>, its prompt's text as the sidecar's description. --delete stops as run
    does (exit 4) when the source is empty or past --max-delete, and deletes nothing while an entry cannot
    be read. No link below FOLDER is followed. It runs beside a running daemon or run; a second pull into
    the same FOLDER meanwhile is refused.
    """
    import asyncio

    from packsync.app import pull_once
    from packsync.config import max_delete_of
    from packsync.engine.pull import PullOptions
    from packsync.sources.kinds import KINDS, settings_for
    from packsync.views.json import pull_document, write_json
    from packsync.views.progress import Progress
    from packsync.views.text import print_pull

    system, _, pack = source.partition(":")
    forms = " or ".join(["genviral:PACK (an id or an exact name)", *(f"{name}:ID" for name in KINDS)])
    if not (system == "genviral" and pack or system in KINDS and pack.isascii() and pack.isdigit()):
        raise ConfigError(f"{source}: give the source as {forms}.")
    if classes is not None and system == "genviral":
        raise ConfigError("--classes: applies to astria: packs only.")
    if system in KINDS:
        given = {"classes": classes.split(",") if classes else None}
        try:
            remote = settings_for(source, **given)
        except ValueError as exc:  # (it names the option, "classes: …", or else the source: no "--" then)
            raise ConfigError(f"{'--' if str(exc).startswith(tuple(given)) else ''}{exc}.") from None
        if sidecars != "none" and not remote.described:
            raise ConfigError(f"--sidecars: {source}'s images carry no text of their own to write beside them.")
    if not folder.strip():
        raise ConfigError("FOLDER: name the folder to pull into (it is created if missing).")
    if (limit := max_delete_of(max_delete)) is None:
        raise ConfigError(f"--max-delete: {max_delete!r} is neither a count >= 0 nor a percentage like \"50%\".")
    config = _config()
    token = _token(config)
    options = PullOptions(delete=delete, dry_run=dry_run, max_delete=limit, force=force)
    report = asyncio.run(pull_once(config, token, source, Path(folder), options, progress=Progress(),
                                   classes=classes.split(",") if classes else None, sidecars=sidecars))
    if as_json:
        write_json(pull_document(report, dry_run), sys.stdout)
    else:
        print_pull(report, dry_run, sys.stdout)
    sys.exit(int(report.exit_code))


@_command(main, epilog=_examples("packsync daemon                   # in the foreground, until Ctrl-C",
                                 "packsync service install          # or as a systemd service"))
@click.option("--polling", is_flag=True, help="Poll every folder instead of using inotify (network shares).")
@_bwlimit
def daemon(polling: bool, bwlimit: str | None) -> None:
    """Watch the mapped folders and keep their packs in sync until stopped (SIGHUP reloads)."""
    from packsync.daemon.process import on_c_allocator

    on_c_allocator()  # (before the daemon's imports: it may start this process again)
    from packsync.daemon.service import run_daemon

    sys.exit(int(run_daemon(_config_path(), polling=polling, bandwidth_limit=bwlimit)))


@_command(main, epilog=_examples("packsync status",
                                 "packsync status --problems        # every file not synced, and why",
                                 "packsync status --json | jq '.mappings[] | {path, files, images}'"))
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON document (see README).")
@click.option("--files", is_flag=True, help="List every file with its image id and AI metadata.")
@click.option("--problems", is_flag=True, help="List every file that was skipped, with the reason.")
def status(as_json: bool, files: bool, problems: bool) -> None:
    """Show each mapping's files, images and metadata, from the state (no API call, writes nothing)."""
    from packsync.state.lock import StateLock
    from packsync.state.store import State
    from packsync.views.json import status_document, write_json
    from packsync.views.status import read_status
    from packsync.views.text import print_status

    config = _config()
    state = State.for_config(config, readonly=True)
    try:
        model = read_status(config, state, files=files, problems=problems,
                            lock_holder=StateLock(config.state_path).holder())
    finally:
        state.close()
    if as_json:
        write_json(status_document(model), sys.stdout)
    else:
        print_status(model, sys.stdout)


def _daemon_page(config: Config) -> str | None:
    """The address of the running daemon's page, if a daemon holding this state serves one."""
    from packsync.control import find_daemon

    try:
        daemon = find_daemon(config.state_path)
        page = daemon.ask("GET", "/")["page"] if daemon else None
    except PacksyncError:
        return None  # a `run` holds the state, or the daemon cannot say: reading the state is fine
    return str(page) if page else None


@_command(main, epilog=_examples("packsync ui                       # http://127.0.0.1:8780/",
                                 "packsync ui --listen 127.0.0.1:9000"))
@click.option("--listen", metavar="HOST:PORT", help="Where to serve (default: [http] listen, else 127.0.0.1:8780).")
def ui(listen: str | None) -> None:
    """Serve the web page from the state alone, until Ctrl-C: for people who sync with `run` from cron.

    Read-only: no sync actions (the daemon serves the same page with them). No token, no API call. While
    the daemon runs and serves its page, this prints that page's address instead.
    """
    import asyncio

    import msgspec

    from packsync.config import DEFAULT_LISTEN, HttpConfig
    from packsync.web.server import serve_until_stopped

    config = _config()
    if (page := _daemon_page(config)) is not None:
        click.echo(f"packsync ui: the daemon serves this state's page, with its actions: {page}")
        return
    try:
        http = HttpConfig(listen=listen or config.http.listen or DEFAULT_LISTEN, password_env=config.http.password_env)
    except ValueError as exc:
        raise ConfigError(f"--listen: {str(exc).removeprefix('listen: ')}.") from None
    asyncio.run(serve_until_stopped(msgspec.structs.replace(config, http=http)))


@_command(main, epilog=_examples("packsync search sunset beach",
                                 "packsync search logo --limit 500 --json"))
@click.argument("words", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="At most this many.")
def search(words: tuple[str, ...], as_json: bool, limit: int) -> None:
    """Find images by their AI description, keywords or name; print the local files that hold them.

    A word matches an image whose file name, AI description or keywords hold it, whose file is in a
    folder of that name (the mapped folder, by its own name, not its parents', or a folder inside it), or
    whose pack or Astria source has it in its name (an Astria source's images: also `astria` and its
    pack id). Every word must match (as the start of a word). Reads only the state: no token, no API call.
    """
    from packsync.state.store import State
    from packsync.views.json import search_document, write_json
    from packsync.views.search import count
    from packsync.views.search import search as find
    from packsync.views.text import print_search

    config = _config()
    state = State.for_config(config, readonly=True)
    try:
        hits = find(state, words, limit)
        total = count(state, words)
    finally:
        state.close()
    if as_json:
        write_json(search_document(list(words), hits, total), sys.stdout)
    else:
        print_search(hits, total, sys.stdout)


@_command(main, epilog=_examples("packsync packs", "packsync packs --json | jq -r '.packs[].id'"))
@click.option("--public", is_flag=True, help="Include public packs of other accounts.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def packs(public: bool, as_json: bool) -> None:
    """List the key's packs (id, name, image count)."""
    import asyncio

    from packsync.app import client_for, transport_for
    from packsync.views.text import print_packs

    config = _config()
    token = _token(config)

    async def fetch() -> Any:
        async with transport_for(config) as transport:
            return await client_for(config, token, transport).list_packs(include_public=public)

    found = asyncio.run(fetch())
    if as_json:
        from packsync.views.json import packs_document, write_json

        write_json(packs_document(found), sys.stdout)
    else:
        print_packs(found, sys.stdout)


@main.group(epilog=_examples("packsync astria packs", "packsync pull astria:260 ~/astria/headshots"))
def astria() -> None:
    """Astria packs and tunes (read only): list them; mirror one with an astria_pack or astria_tune mapping,
    or pull it."""


@_command(astria, name="packs", epilog=_examples("ASTRIA_API_KEY=sd_... packsync astria packs",
                                                  "packsync astria packs --gallery --json"))
@click.option("--gallery", is_flag=True, help="The public gallery's packs instead of the key's own.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def astria_packs(gallery: bool, as_json: bool) -> None:
    """List Astria packs: id, title, classes, image count."""
    import asyncio

    from packsync.app import api_client, transport_for
    from packsync.views.json import astria_packs_document, write_json
    from packsync.views.text import print_astria_packs

    config = _config()

    async def fetch() -> Any:
        async with transport_for(config) as transport:
            client = api_client(config, "astria", transport)
            summaries = await client.packs(gallery=gallery)
            return summaries, await client.details(summaries)

    summaries, details = asyncio.run(fetch())
    if as_json:
        write_json(astria_packs_document(summaries, details), sys.stdout)
    else:
        print_astria_packs(summaries, details, sys.stdout)


@_command(astria, name="tunes", epilog=_examples("ASTRIA_API_KEY=sd_... packsync astria tunes",
                                                  "packsync astria tunes --json"))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def astria_tunes(as_json: bool) -> None:
    """List the key's Astria tunes: id, title, class, prompts, images, and when Astria deletes their images."""
    import asyncio

    from packsync.app import api_client, transport_for
    from packsync.views.json import astria_tunes_document, write_json
    from packsync.views.text import print_astria_tunes

    config = _config()

    async def fetch() -> Any:
        async with transport_for(config) as transport:
            client = api_client(config, "astria", transport)
            tunes = await client.tunes()
            return tunes, await client.walks([tune.tune_id for tune in tunes])

    tunes, walks = asyncio.run(fetch())
    if as_json:
        write_json(astria_tunes_document(tunes, walks), sys.stdout)
    else:
        print_astria_tunes(tunes, walks, sys.stdout)


@_command(main, epilog=_examples("packsync sandbox --port 8765      # then base_url = \"http://127.0.0.1:8765/api/partner/v1\"",
                                 "packsync sandbox --fault-rate 0.1 --latency-ms 200",
                                 "packsync sandbox --link-rate 2M --connection-rate 512k   # an uplink of 2 MiB/s"))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--state", "state_path", type=click.Path(path_type=Path), help="Keep the sandbox's data in this file.")
@click.option("--latency-ms", type=click.FloatRange(min=0), default=0.0, help="Delay added to every request.")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of requests answered with 429/500/reset.")
@click.option("--upload-ttl", type=click.FloatRange(min=1), default=600.0, help="Seconds an upload URL stays valid.")
@click.option("--link-rate", metavar="RATE", default="off", callback=lambda _c, _p, v: _sandbox_rate(v),
              help="Bytes per second of all storage uploads and CDN downloads together, as rclone writes it: "
                   "20M (MiB/s), 512k (KiB/s), off (the default).")
@click.option("--connection-rate", metavar="RATE", default="off", callback=lambda _c, _p, v: _sandbox_rate(v),
              help="Bytes per second of each connection's uploads and downloads, as --link-rate.")
def sandbox(port: int, state_path: Path | None, latency_ms: float, fault_rate: float, upload_ttl: float,
            link_rate: float, connection_rate: float) -> None:
    """Serve a local Genviral Partner API on 127.0.0.1 (accepts $GENVIRAL_TOKEN, or a demo token).

    The same port also serves a local Astria API under /astria (base_url http://127.0.0.1:PORT/astria;
    accepts $ASTRIA_API_KEY, or a demo key) with a demo pack, whose images are at extension-less URLs.
    """
    from packsync.sandbox import LinkRate, main_serve

    main_serve(port=port, token=os.environ.get("GENVIRAL_TOKEN") or None, state_path=state_path,
               latency_ms=latency_ms, fault_rate=fault_rate, upload_ttl_s=upload_ttl,
               astria_token=os.environ.get("ASTRIA_API_KEY") or None,
               link_rate=LinkRate(per_connection=connection_rate, total=link_rate))


def _sandbox_rate(text: str) -> float:
    """A ``sandbox`` rate option's bytes per second, or click's one-sentence refusal."""
    from packsync.sandbox.link import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@_command(main, epilog=_examples("packsync init                                  # asks for the folder and the pack",
                                  "packsync init --folder ~/Pictures/brand --pack \"Brand Assets\"",
                                  "packsync -c ./brand.toml init --folder brand --pack Brand --token-env BRAND_TOKEN"))
@click.option("--folder", type=click.Path(), help="The folder to mirror (created if missing).")
@click.option("--pack", help="The pack to mirror it into: an exact name, created if missing.")
@click.option("--token-env", metavar="VAR",
              help="Read the token from $VAR (default: $GENVIRAL_TOKEN, else $GENVIRAL_API_KEY).")
@click.option("--base-url", metavar="URL", default=None,
              help="The Partner API (default: Genviral's; `packsync sandbox` prints its own).")
def init(folder: str | None, pack: str | None, token_env: str | None, base_url: str | None) -> None:
    """Write a first config, with comments: one folder mirrored into one pack.

    Asks on a terminal for what the options do not say. The config goes where packsync looks for it
    (or --config PATH); it never holds the token: this says where the token goes, and what to run next.
    """
    from packsync.config import DEFAULT_BASE_URL, find_config_path
    from packsync.first_config import next_steps, write_config

    interactive = sys.stdin.isatty()
    if folder is None:
        if not interactive:
            raise ConfigError("--folder: required when not run on a terminal (the folder to mirror).")
        folder = str(click.prompt("Folder to mirror", type=click.Path()))
    if not folder.strip():  # ``--folder "$UNSET"``: not the folder this runs in (``.`` says that)
        raise ConfigError("--folder: empty; name the folder to mirror (`.` for the current one).")
    if pack is None:
        if not interactive:
            raise ConfigError("--pack: required when not run on a terminal (the pack to mirror the folder into).")
        pack = str(click.prompt("Pack name", default=Path(folder).expanduser().resolve().name or None))
    path = _config_path()
    written = write_config(path, Path(folder), pack, token_env, base_url or DEFAULT_BASE_URL)
    click.echo("\n".join(next_steps(written, config_given=path != find_config_path(None))))


@main.group(epilog=_examples("packsync service install --dry-run    # print the unit; change nothing",
                             "packsync service install              # a user unit, started now and at boot",
                             "sudo packsync -c ~/.config/packsync/config.toml service install --system",
                             "packsync service status"))
def service() -> None:
    """Run `packsync daemon` as a systemd service: install, uninstall, status."""


def _unit_kind(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--user`` (the default) or ``--system``: which service manager's unit a ``service`` command means."""
    command = click.option("--system", "kind", flag_value="system",
                           help="The system's unit, /etc/systemd/system/ (root needed to change it), run as the "
                                "user behind sudo.")(command)
    return click.option("--user", "kind", flag_value="user", default=True,
                        help="Your user manager's unit, ~/.config/systemd/user/ (the default).")(command)


@_command(service, name="install", epilog=_examples("packsync service install --dry-run",
                                                    "packsync service install",
                                                    "sudo packsync -c /home/me/.config/packsync/config.toml "
                                                    "service install --system"))
@_unit_kind
@click.option("--dry-run", is_flag=True, help="Print the unit and the commands; change nothing.")
def service_install(kind: Literal["user", "system"], dry_run: bool) -> None:
    """Write the unit that runs `packsync daemon` with this config, then enable and start it (restarted when
    it runs already).

    The unit runs this very packsync (its absolute path), reads the token from `env` beside the config,
    and is hardened: the file system is read-only to it but its state's folder and the folders that get
    XMP sidecars. A system unit runs as the user behind sudo, with that user's config and paths.
    See docs/service.md.
    """
    import shlex

    from packsync import service_unit as units
    from packsync.control import find_daemon

    user = units.invoking_user() if kind == "system" else None
    config = units.config_for(click.get_current_context().meta.get("packsync.config"), user)
    config.require_mappings()
    if not dry_run:
        units.require_root(kind, "install")
    unit = units.unit_for(config, kind, user, namespaces=kind == "system" or units.user_namespaces())
    plan = units.install_plan(kind, unit)
    if dry_run:
        click.echo(f"# {plan.path}\n{plan.text}")
        click.echo("# then:\n" + "\n".join(shlex.join(command) for command in plan.commands))
        click.echo(f"# and, when it runs already:\n{shlex.join(plan.restart)}")
        return
    system = " --system" if kind == "system" else ""
    this = Path(os.path.abspath(config.source or ""))
    if (other := units.installed_config(kind)) is not None and not _same_file(other, this):
        raise ConfigError(f"{plan.path}: runs packsync with another config, {other}, and one unit runs one config: "
                          f"to switch to {this}, first `packsync service uninstall{system}` "
                          "(that config and its state stay).")
    try:
        holder = find_daemon(config.state_path)
    except PacksyncError:  # a `run` holds it: it lets go when done
        holder = None
    units.write_unit(plan, config.state_path.parent, user)
    try:
        restarted = units.start(plan)
    except PacksyncError as exc:
        raise PacksyncError(f"wrote {plan.path}, but {exc}") from None
    journal = f"journalctl{' --user' if kind == 'user' else ''} -u packsync -f"
    click.echo(f"installed {plan.path}; " + ("restarted the running service with it" if restarted else
                                              "enabled and started it") +
               f"; its first sync may take a while: `packsync service status{system}` shows it, `{journal}` "
               "follows it.")
    if holder is not None and not restarted:
        click.echo(f"A packsync daemon (pid {holder.pid}) already holds {config.state_path}: the service fails and "
                   f"tries again every 10 s until that one stops (kill {holder.pid}).")
    if not unit.namespaces:
        click.echo("This kernel gives no user namespaces: the unit runs without its file-system protections.")
    if kind == "user" and units.lingering(me := units.own_user()) is False:
        click.echo(f"It runs while you are logged in; to keep it running after you log out: "
                   f"loginctl enable-linger {me}")


def _same_file(one: Path, other: Path) -> bool:
    """Whether two paths name one file (a link to a config is that config)."""
    try:
        return one == other or os.path.samefile(one, other)
    except OSError:
        return False


@_command(service, name="uninstall", epilog=_examples("packsync service uninstall",
                                                      "sudo packsync service uninstall --system"))
@_unit_kind
def service_uninstall(kind: Literal["user", "system"]) -> None:
    """Stop and disable the unit, remove its file, and reload systemd. The config and state stay."""
    from packsync.service_unit import UNIT_NAME, require_root, systemctl, systemctl_argv, unit_path

    path = unit_path(kind)
    if not path.exists():
        click.echo(f"{path}: no unit here; nothing to remove.")
        return
    require_root(kind, "uninstall")
    try:
        systemctl(systemctl_argv(kind, "disable", "--now", UNIT_NAME))
        stopped = None
    except PacksyncError as exc:  # (no user bus, say): the file goes anyway, so that nothing starts it again
        stopped = exc
    try:
        path.unlink()
    except OSError as exc:
        raise PacksyncError(f"{path}: cannot remove it ({exc.strerror}).") from None
    if stopped is not None:
        raise PacksyncError(f"removed {path}, but {stopped} If it still runs, stop it: "
                            f"{' '.join(systemctl_argv(kind, 'stop', UNIT_NAME))}")
    systemctl(systemctl_argv(kind, "daemon-reload"))
    click.echo(f"stopped, disabled and removed {path}.")


@_command(service, name="status", epilog=_examples("packsync service status", "packsync service status --system"))
@_unit_kind
def service_status(kind: Literal["user", "system"]) -> None:
    """Where the unit is, whether it is enabled and running, and what the daemon itself says."""
    from packsync.control import find_daemon
    from packsync.service_unit import config_for, installed_config, state_of, unit_path

    path = unit_path(kind)
    click.echo(f"unit     {path} ({'installed' if path.exists() else 'not installed'})")
    try:
        enabled, active = state_of(kind)
        click.echo(f"systemd  {enabled}, {active}")
    except PacksyncError as exc:
        click.echo(f"systemd  cannot say: {exc}")
    try:  # the config the unit runs, unless one is given; read as the user it runs as
        given = click.get_current_context().meta.get("packsync.config") or installed_config(kind)
        config = config_for(given, os.environ.get("SUDO_USER") if kind == "system" else None)
        daemon = find_daemon(config.state_path)
        answer = daemon.ask("GET", "/") if daemon else None
    except PacksyncError as exc:
        click.echo(f"daemon   cannot say: {exc}")
        return
    if answer is None:
        click.echo(f"daemon   not running for {config.state_path}")
        return
    paused = ", ".join(answer["paused"]) or "none"
    click.echo(f"daemon   pid {answer['pid']}, {len(answer['mappings'])} mapping(s), paused: {paused}, "
               f"page: {answer['page'] or 'none'}")


@_command(main, epilog=_examples("packsync demo", "packsync demo --keep ./demo    # keep its folders, config, state"))
@click.option("--keep", type=click.Path(path_type=Path), help="Make the demo in this folder and keep it.")
def demo(keep: Path | None) -> None:
    """Sync sample images into the built-in sandbox and show the result. Needs no set-up."""
    from packsync.demo import run_demo

    sys.exit(int(run_demo(keep)))


@main.group(epilog=_examples("packsync state migrate --to postgresql+psycopg://packsync@db.lan:5432/packsync "
                             "--password-env PACKSYNC_DB_PASSWORD --dry-run"))
def state() -> None:
    """The state itself: move this machine's into a state shared by several machines (PostgreSQL), forget a
    machine that left it."""


def _target(config: Config, to: str, site: str | None, password_env: str | None,
            password_file: Path | None) -> tuple[StateConfig, SharedState]:
    """The ``[state]`` naming the shared state ``migrate`` copies into, and that state: ``--to``, the password's
    place (the options', else the config's), the site (``--site``, else the config's, else the host name).
    Checked and read as the config's own keys are (``config.shared_state``), each error naming its option."""
    import msgspec

    from packsync.config import StateConfig, default_site

    if password_env is not None and password_file is not None:
        raise ConfigError("--password-file: give --password-env or --password-file, not both.")
    given = password_env is not None or password_file is not None
    current = config.state

    def options(sentence: str) -> str:
        return sentence.replace("state.password_env", "--password-env").replace("state.password_file",
                                                                                "--password-file")
    try:
        wanted = StateConfig(path=config.state_path, url=to,
                             password_env=password_env if given else current.password_env,
                             password_file=password_file if given else current.password_file,
                             site=site or current.site or default_site(config.source), lease_s=current.lease_s)
    except ValueError as exc:
        key, _, sentence = str(exc).partition(": ")
        option = {"url": "--to", "site": "--site"}.get(key, f"--{key.replace('_', '-')}")
        raise ConfigError(f"{option}: {options(sentence)}.") from None
    try:  # (the config's file named in a password's error only when the config named the password)
        shared = msgspec.structs.replace(config, state=wanted, source=None if given else config.source).shared_state()
    except ConfigError as exc:
        raise ConfigError(options(str(exc)) if given else str(exc)) from None
    assert shared is not None  # (``wanted`` names a url)
    return wanted, shared


@_command(state, name="migrate", epilog=_examples(
    "packsync state migrate --to postgresql+psycopg://packsync@db.lan:5432/packsync --password-env PGPW --dry-run",
    "packsync state migrate --to postgresql+psycopg://packsync@db.lan:5432/packsync --password-env PGPW",
    "packsync state migrate --to postgresql+psycopg://packsync@db.lan/packsync --site nas --replace --json"))
@click.option("--to", "to", required=True, metavar="URL",
              help="The shared state: postgresql+psycopg://USER@HOST:PORT/DATABASE (no password in it).")
@click.option("--site", metavar="NAME", help="This machine's name there (default: [state] site, else the host name).")
@click.option("--password-env", metavar="VAR",
              help="Read the database's password from $VAR (default: [state] password_env).")
@click.option("--password-file", type=click.Path(path_type=Path), metavar="PATH",
              help="Read the database's password from this file (default: [state] password_file).")
@click.option("--replace", is_flag=True, help="Replace this site's rows the shared state holds already.")
@click.option("--dry-run", is_flag=True, help="Say what would be copied and merged; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def state_migrate(to: str, site: str | None, password_env: str | None, password_file: Path | None, replace: bool,
                  dry_run: bool, as_json: bool) -> None:
    """Copy this machine's state ([state] path) into a state shared with other machines on PostgreSQL.

    This machine's records become those of its site; what other sites recorded stays, and the uploads
    and pack images both know are merged. All in one transaction: a failure leaves nothing copied. It
    takes the state's lock: stop the daemon first. The password never goes on the command line.
    """
    import msgspec

    from packsync.errors import LockedError, StateError
    from packsync.state.lock import StateLock
    from packsync.state.migrate import migrate
    from packsync.state.store import State
    from packsync.views.json import write_json

    config = _config()
    path = config.state_path
    wanted, shared = _target(config, to, site, password_env, password_file)
    if not path.exists():
        raise StateError(f"{path}: no state here to migrate ([state] path); nothing to do.")
    lock = StateLock(path)
    try:
        if not dry_run:
            lock.acquire()
    except LockedError:
        raise LockedError(f"a packsync (pid {lock.holder() or 'unknown'}) is using {path}: stop it first (the daemon: "
                          "`packsync service uninstall`, or Ctrl-C), then migrate.") from None
    try:
        source = State(path, readonly=True)
        try:
            target = State(path, readonly=dry_run, shared=shared)
            try:
                done = migrate(source, target, replace=replace, dry_run=dry_run)
            finally:
                target.close()
        finally:
            source.close()
    finally:
        lock.release()
    if as_json:
        write_json({"url": shared.url, **msgspec.to_builtins(done)}, sys.stdout)
        return
    for line in _migration_lines(done, config, wanted):
        click.echo(line)


def _migration_lines(done: Migration, config: Config, state: StateConfig) -> list[str]:
    """What ``state migrate`` prints: a line a table, the sum, and (done) what to put in the config next."""
    from packsync.state.migrate import NOUNS

    copied = "to copy" if done.dry_run else "copied"
    lines, summary = [], []
    for count in done.tables:
        line = f"{count.table:<13}{count.rows:>10,}  {copied}"
        already = f"{count.kept:,} already recorded by another site" if count.table == "images" \
            else f"{count.kept:,} already there"
        if count.kept:
            line = f"{count.table:<13}{count.copied:>10,}  {copied}, {already} (kept as it is)"
        if count.replaced:
            line += f"; {count.replaced:,} of this site's {'to be ' if done.dry_run else ''}replaced"
        lines.append(line)
        if count.rows or count.table in ("files", "images"):
            summary.append(f"{count.rows:,} {NOUNS[count.table]}" + (f" ({already})" if count.kept else ""))
    summary.sort(key=lambda part: not part.split()[1].startswith(("files", "images")))  # (stable: the rest stay)
    lines.append(f"{'would migrate' if done.dry_run else 'migrated'} site {done.site} into {done.where}: "
                 f"{', '.join(summary)}.")
    if done.dry_run:
        lines.append("Nothing was written (--dry-run).")
        return lines
    keys = [f'url = "{state.url}"']
    keys += [f'password_env = "{state.password_env}"'] if state.password_env else []
    keys += [f'password_file = "{state.password_file}"'] if state.password_file else []
    lines.append(f"Next: under [state] in {config.source or 'the config'}, add")
    lines += [f"  {key}" for key in [*keys, f'site = "{done.site}"']]
    lines.append("then `packsync run` (it finds nothing to do), and start the daemon again if it ran.")
    return lines


@_command(state, name="forget-site", epilog=_examples(
    "packsync state forget-site laptop --dry-run    # what would be forgotten",
    "packsync state forget-site laptop",
    "packsync state forget-site old-nas --force --json"))
@click.argument("name")
@click.option("--force", is_flag=True, help="Forget it even if it was heard from lately or holds a lease.")
@click.option("--dry-run", is_flag=True, help="Say what would be forgotten; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def state_forget_site(name: str, force: bool, dry_run: bool, as_json: bool) -> None:
    """Forget site NAME of the shared state ([state] url): a machine that left it for good (retired, or
    renamed: the default site is the host name).

    Its records go (its file cache, mappings, activity, ...), so the contents its files held hold the pack's
    images no longer, and the images it added become any mapping's: each site mapping into their pack may
    delete one its folder no longer holds (unless another site's holds it). All in one transaction. A site
    heard from in the last 15 minutes, or holding a lease, is refused unless --force; one connected now,
    always; this machine's own site, always.
    """
    import msgspec

    from packsync.errors import StateError
    from packsync.state.forget import forget_site
    from packsync.state.store import State
    from packsync.views.json import write_json

    config = _config()
    if config.shared_state() is None:
        raise StateError(f"{config.state_path} is the state of one machine alone (no [state] url): it has no "
                         "sites to forget.")
    opened = State.for_config(config, readonly=dry_run, holds_lock=False)
    try:
        done = forget_site(opened, name, force=force, dry_run=dry_run)
    finally:
        opened.close()
    if as_json:
        write_json(msgspec.to_builtins(done), sys.stdout)
        return
    for line in _forgetting_lines(done):
        click.echo(line)


def _forgetting_lines(done: Forgetting) -> list[str]:
    """What ``state forget-site`` prints: a line a table holding the site's rows, its leases and images, the sum."""
    from packsync.state.migrate import NOUNS

    verb = "to delete" if done.dry_run else "deleted"
    lines = [f"{count.table:<13}{count.rows:>10,}  {verb}" for count in done.tables if count.rows]
    if done.leases:
        lines.append(f"{'leases':<13}{done.leases:>10,}  left to run out (the others take the packs after "
                     "lease_s)")
    if done.images:
        lines.append(f"{'images':<13}{done.images:>10,}  {'to give up' if done.dry_run else 'given up'} "
                     "(now any mapping's into their pack)")
    parts = [f"{count.rows:,} {NOUNS.get(count.table, count.table + ' rows')}" for count in done.tables
             if count.rows and count.table not in ("daemon", "sites")]
    parts += [f"{done.images:,} images {'to give up' if done.dry_run else 'given up'}"] if done.images else []
    lines.append(f"{'would forget' if done.dry_run else 'forgot'} site {done.site} in {done.where}"
                 + (f": {', '.join(parts)}." if parts else "."))
    if done.dry_run:
        lines.append("Nothing was written (--dry-run).")
    return lines


@main.group(epilog=_examples("packsync notify test"))
def notify() -> None:
    """The daemon's notifications ([notify] urls in the config)."""


@_command(notify, name="test", epilog=_examples("NTFY_TOKEN=tk_... packsync notify test"))
def notify_test() -> None:
    """Send a test notification to each [notify] URL and say which failed (exit 1 when one did)."""
    from packsync.daemon.alerts import TEST, Notifier
    from packsync.errors import ExitCode

    config = _config()
    notifier = Notifier.open(config)
    if notifier is None:
        raise ConfigError(f"{config.source}: notify.urls: no URL to send to (see docs/notifications.md).")
    sent = notifier.each(TEST)
    for name, ok in sent:
        click.echo(f"{'sent  ' if ok else 'FAILED'}  {name}")
    sys.exit(ExitCode.OK if all(ok for _, ok in sent) else ExitCode.SOME_FAILED)


if __name__ == "__main__":
    main()
