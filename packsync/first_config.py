"""``packsync init``: the first config, written with its comments, and the steps that follow it.

It owns the short config a newcomer starts from (``config.example.toml`` is the full reference). It
writes a config and creates folders; it never writes, reads or asks for the API token: it only says where
the token goes (the service's environment file, whose place ``service_unit.env_file_for`` decides). What
it writes is read back through ``parse_config`` before it lands, so a written config always loads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packsync.config import DEFAULT_BASE_URL, TOKEN_ENVS, default_state_path, parse_config
from packsync.errors import ConfigError
from packsync.service_unit import env_file_for

#: The short config; ``{...}`` are TOML values. Its comments are the user's first documentation.
TEMPLATE = """\
# packsync configuration, written by `packsync init`. Every key is described in packsync's
# config.example.toml and docs/. Unknown keys are errors, so a typo never goes unnoticed.

[genviral]
base_url = {base_url}
# The API token is never written here. packsync reads it from the environment: {token_envs}.
# `packsync run` reads your shell's; the service reads {env_file} (chmod 600).
{token_env_line}
# token_file = "~/.config/packsync/token"   # or a file readable by you only (chmod 600)

[state]
# The state database (what was uploaded, hashes, images). Default: {state_path}
# path = "{state_path}"

[http]
# The daemon's page, /healthz and /metrics, at 127.0.0.1:8780 unless listen says otherwise ("" turns them
# off). The daemon of a second config needs a port of its own:
# listen = "127.0.0.1:8781"

# Be told when something needs you (a safety stop, a refused key, a folder failing): docs/notifications.md.
# [notify]
# urls = ["ntfys://ntfy.sh/${{NTFY_TOPIC}}"]

# One [[mappings]] table per folder: the folder is mirrored, recursively, into the pack.
[[mappings]]
# The pack is found by its exact name among your packs, and created if missing.
path = {folder}
pack = {pack}
# delete = true                    # delete pack images whose files were removed
# max_delete = "50%"               # most deletes per run (a count or a share); more stops the run (exit 4)
# include = ["*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif", "*.heic", "*.heif"]
# exclude = ["**/Raw/**"]          # gitignore patterns; a .packsyncignore file in the folder adds more
# strip = ["location", "serials"]  # removed from what is uploaded (the file on disk never changes)
# max_edge = 2160                  # scale the long edge down before upload (0: never)
# sidecars = "xmp"                 # write each image's AI description and keywords beside it

# Another folder:
# [[mappings]]
# path = "~/Pictures/products"
# pack = "Product Shots"
"""


#: A name a shell can give an environment variable (and so the service's environment file).
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The config keys ``init`` fills, and the options that give them.
OPTIONS = {"mappings[0].path": "--folder", "mappings[0].pack": "--pack", "genviral.token_env": "--token-env",
           "genviral.base_url": "--base-url"}


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's, but for DEL, which TOML wants escaped)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


@dataclass(frozen=True)
class Written:
    """What ``init`` did, for the words that follow it."""

    config_path: Path
    folder: Path
    folder_created: bool
    token_env: str | None


def render(path: Path, folder: Path, pack: str, token_env: str | None, base_url: str) -> str:
    """The config text, to be written at ``path``, for one mapping of ``folder`` into ``pack``."""
    names = (token_env,) if token_env else TOKEN_ENVS
    token_env_line = f"token_env = {toml_string(token_env)}" if token_env else f'# token_env = "{TOKEN_ENVS[0]}"'
    return TEMPLATE.format(base_url=toml_string(base_url), token_envs=" or ".join(f"${n}" for n in names),
                           env_file=env_file_for(path), token_env_line=token_env_line, state_path=default_state_path(),
                           folder=toml_string(str(folder)), pack=toml_string(pack))


def write_config(path: Path, folder: Path, pack: str, token_env: str | None = None,
                 base_url: str = DEFAULT_BASE_URL) -> Written:
    """Write the config for one mapping at ``path`` (never over an existing one), creating its folder and
    the mapped folder. The text is validated before anything is written."""
    path, folder = Path(os.path.abspath(path.expanduser())), Path(os.path.abspath(folder.expanduser()))
    _check(path, folder, pack, token_env)
    text = render(path, folder, pack, token_env, base_url)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a name that is bytes only, never UTF-8 text (an old card's Latin-1, say)
        raise ConfigError(f"{path}: a path it would name (its own, the state's) is not UTF-8 text, which a config "
                          "cannot hold; give --config a UTF-8 path.") from None
    try:
        parse_config(tomllib.loads(text))
    except ConfigError as exc:  # the options' fault, not the file's (which is not written)
        key, _, why = str(exc).partition(": ")
        raise ConfigError(f"{OPTIONS.get(key, key)}: {why}") from None
    created = not folder.exists()
    for needed in (path.parent, folder):
        try:
            needed.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # (a file in the way too: mkdir's FileExistsError)
            raise ConfigError(f"{needed}: cannot create this folder ({exc.strerror}).") from None
    try:
        with path.open("xb") as file:  # "x": a config written meanwhile is not replaced
            try:
                file.write(data)
            except OSError:
                path.unlink()  # half a config is worse than none: the next init would refuse to replace it
                raise
    except FileExistsError:
        raise ConfigError(f"{path}: a config is already there: edit it, or give --config PATH.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the config ({exc.strerror}).") from None
    return Written(path, folder, created, token_env)


def _check(path: Path, folder: Path, pack: str, token_env: str | None) -> None:
    """Refuse what the options say before anything is rendered: a config is never replaced (an edit is
    what a working config needs, and its state is keyed by its mappings)."""
    if token_env is not None and not VARIABLE.fullmatch(token_env):
        raise ConfigError(f"--token-env: {token_env!r} cannot be an environment variable's name; name one like "
                          "GENVIRAL_TOKEN (letters, digits and _, not starting with a digit).")
    if not _is_utf8(str(folder)):
        raise ConfigError(f"--folder: {folder!r}: its name is not UTF-8 text, which a config cannot hold; rename "
                          "the folder.")
    if not _is_utf8(pack):
        raise ConfigError(f"--pack: {pack!r} is not UTF-8 text (your terminal's encoding?); a config holds only that.")
    if not pack.strip():
        raise ConfigError("--pack: name the pack to mirror the folder into.")
    if path.is_dir():
        raise ConfigError(f"--config: {path} is a folder; name the config file, like {path / 'config.toml'}.")
    if path.exists() or path.is_symlink():
        raise ConfigError(f"{path}: a config is already there: edit it (config.example.toml lists every key), "
                          "or give --config PATH to write another.")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--folder: {folder} is not a folder.")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def next_steps(written: Written, config_given: bool) -> list[str]:
    """What ``init`` says once the config is written: where the token goes, then the three commands."""
    lines = [f"wrote {written.config_path}"]
    if written.folder_created:
        lines.append(f"created the folder {written.folder}")
    names = (written.token_env,) if written.token_env else TOKEN_ENVS
    variable = names[0]
    if not any(os.environ.get(name, "").strip() for name in names):
        lines.append(f"{names[0]} is not set in this shell." if len(names) == 1 else
                     f"Neither {' nor '.join(names)} is set in this shell.")
    env_file = env_file_for(written.config_path)
    quoted = shlex.quote(str(env_file))
    lines += ["", "The API token never goes into the config. Give it to packsync:",
              f"  export {variable}=...        # for `packsync run` in this shell",
              f"  touch {quoted} && chmod 600 {quoted} && ${{EDITOR:-nano}} {quoted}",
              f"                               # for the service: one line, {variable}=...", "", "Next:"]
    config = f" --config {shlex.quote(str(written.config_path))}" if config_given else ""
    lines += [f"  packsync{config} run --dry-run      # what would be uploaded; changes nothing",
              f"  packsync{config} run                # sync once",
              f"  packsync{config} service install    # keep syncing in the background (systemd user unit)"]
    return lines
