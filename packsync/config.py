"""The TOML config: where it is, what it may say, and the secrets it points to (the API tokens, the shared
state's database password).

Validation is msgspec's (typed structs, quick to import): every table forbids unknown keys, and every
error is reported as one sentence naming the key, e.g. ``mappings[1].pack_id: ...``.
A secret itself is never in the config (a database URL holding a password is refused); the config only says
where to find it, and no error repeats one.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import stat
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

import msgspec
from msgspec import Meta, Struct, field

from packsync.errors import ConfigError
from packsync.files import read_regular
from packsync.recipe import Recipe
from packsync.remote.bandwidth import BandwidthLimit
from packsync.sources.base import MAX_POLL_S
from packsync.sources.kinds import KEYS, KINDS, RemoteSource
from packsync.sources.patterns import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE  # (said here, with the other defaults)
from packsync.sources.patterns import check as check_patterns

DEFAULT_BASE_URL = "https://www.genviral.io/api/partner/v1"
DEFAULT_INCLUDE = ["*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif", "*.heic", "*.heif"]
CONFIG_ENV = "PACKSYNC_CONFIG"
#: A config file, or a token's or password's file, larger than these is not one (and is not read whole).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TOKEN_BYTES = 64 * 1024
#: Where the token is looked for when the config names no variable, in this order.
TOKEN_ENVS = ("GENVIRAL_TOKEN", "GENVIRAL_API_KEY")
DEFAULT_ASTRIA_URL = "https://api.astria.ai"
ASTRIA_TOKEN_ENV = "ASTRIA_API_KEY"
DEFAULT_LISTEN = "127.0.0.1:8780"
#: The smallest ``max_edge``: a smaller one is a typo, not a slide.
MIN_EDGE = 256
#: Genviral's longest pack name, in UTF-16 code units (its schema is JavaScript's: that is what it counts).
MAX_PACK_NAME = 120
#: What JavaScript's ``trim`` strips (its WhiteSpace and LineTerminator characters): Genviral trims a pack's
#: name with it and stores it trimmed, so a name is compared, looked up and created trimmed alike.
_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
#: Mapping keys that describe a folder, and so mean nothing for a source read through an API.
FOLDER_ONLY = ("include", "exclude", "default_excludes", "follow_symlinks", "polling", "sidecars", "sidecar_name",
               "packs_from", "pack_prefix")


def default_config_path() -> Path:
    import platformdirs  # only where no path is given

    return platformdirs.user_config_path("packsync") / "config.toml"


def default_state_path() -> Path:
    import platformdirs

    return platformdirs.user_state_path("packsync") / "state.db"


class _Strict(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A config table: unknown keys are errors, and nothing changes it once read (each subclass says
    ``frozen`` again for type checkers)."""


class _ApiConfig(_Strict, frozen=True):
    """Where an API is and where its token is found: the token itself is never in the config."""

    base_url: str
    token_env: str | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        loopback = parts.scheme == "http" and _is_loopback(parts.hostname or "")
        if not (parts.hostname and (parts.scheme == "https" or loopback)):
            raise ValueError("base_url: must be an https:// URL (plain http is allowed only on a loopback address)")
        msgspec.structs.force_setattr(self, "base_url", self.base_url.rstrip("/"))


class GenviralConfig(_ApiConfig, frozen=True):
    base_url: str = DEFAULT_BASE_URL
    #: None: $GENVIRAL_TOKEN, else $GENVIRAL_API_KEY (the variable Genviral's own command-line client reads).
    token_env: str | None = None
    concurrency: Annotated[int, Meta(ge=1, le=10)] = 4
    #: The read timeout of every request (Genviral's, storage's, Astria's): an answer silent this long, or
    #: still arriving below 16 KiB/s after it, is given up.
    timeout_s: Annotated[float, Meta(gt=0, le=600)] = 30.0
    #: The longest pause between two tries of one request (pauses double from 1 s, randomised below it).
    retry_wait_max_s: Annotated[float, Meta(gt=0, le=600)] = 30.0
    #: The bytes a second uploads and downloads may use, together, in rclone's ``--bwlimit`` syntax
    #: (``remote/bandwidth.py``): ``"20M"``, ``"10M:100M"`` (up:down), ``"08:00,2M 19:00,off"``; "" or "off": none.
    bandwidth_limit: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        bandwidth_limit(self.bandwidth_limit)


def bandwidth_limit(text: str) -> BandwidthLimit:
    """``[genviral] bandwidth_limit`` (or ``--bwlimit``) read, or a ValueError naming the key."""
    try:
        return BandwidthLimit(text)
    except ValueError as exc:
        raise ValueError(f"bandwidth_limit: {exc}") from None


def with_bandwidth_limit(config: Config, text: str | None) -> Config:
    """``config`` with ``bandwidth_limit`` set to ``text`` (``--bwlimit``; None: as the file says)."""
    if text is None:
        return config
    return msgspec.structs.replace(config, genviral=msgspec.structs.replace(config.genviral, bandwidth_limit=text))


#: What a header's value given in the config may be: printable ASCII, no whitespace, not empty.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]{1,200}")


class AstriaConfig(_ApiConfig, frozen=True):
    base_url: str = DEFAULT_ASTRIA_URL
    #: None: $ASTRIA_API_KEY.
    token_env: str | None = None
    #: How often the daemon reads an Astria pack (a kind of source with no interval of its own).
    poll_interval_s: Annotated[float, Meta(ge=10, le=MAX_POLL_S)] = 3600.0
    #: Sent as ``X-Workspace-Id`` with every Astria API call: the key's workspace whose tunes and packs are
    #: read (None: the key's own, outside any workspace).
    workspace: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workspace is not None and not _HEADER_TOKEN.fullmatch(self.workspace):
            raise ValueError("workspace: a workspace's id is 1 to 200 printable ASCII characters without spaces, "
                             "sent as a header")


class StateConfig(_Strict, frozen=True):
    """Where the state is: a SQLite file (``path``), or a PostgreSQL database several machines share (``url``).

    The database's password is never in the config (nor in ``url``): ``password_env`` or ``password_file`` say
    where it is, and neither is needed by a server that trusts the connection (a Unix socket's peer, a
    ``.pgpass``). ``site`` names this machine among those sharing the state (None: its host name)."""

    path: Path | None = None
    #: ``postgresql+psycopg://USER@HOST:PORT/DATABASE`` (``postgresql://`` and ``postgres://`` are read as that).
    url: str | None = None
    password_env: Annotated[str, Meta(min_length=1)] | None = None
    password_file: Path | None = None
    site: str | None = None
    #: How long a site's hold on a pack lasts unless renewed: a killed site's pack is taken over after this long.
    lease_s: Annotated[float, Meta(ge=5, le=3600)] = 60.0

    def __post_init__(self) -> None:
        if self.url is not None:
            msgspec.structs.force_setattr(self, "url", postgres_url(self.url))
        elif self.password_env is not None or self.password_file is not None:
            key = "password_env" if self.password_env is not None else "password_file"
            raise ValueError(f"{key}: only used with state.url (the PostgreSQL state's password)")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("password_file: give password_env or password_file, not both")
        if self.site is not None and not is_site(self.site):
            raise ValueError(f"site: {SITE_RULE}, not {self.site!r}")


#: PostgreSQL's URL schemes packsync reads, and the one it writes (SQLAlchemy's, for psycopg 3).
POSTGRES_SCHEMES = ("postgresql+psycopg", "postgresql", "postgres")
#: What a URL's query may say that is a password all the same (libpq reads both from it).
_PASSWORD_PARAMETERS = {"password", "sslpassword"}
#: A user and a password, as SQLAlchemy's URL parser finds them: anything between the first ":" and an "@".
_USER_PASSWORD = re.compile(r"[^:/]*:[^@]*@")
#: A site's name: it qualifies the site's labels in the shared state (``nas:/srv/brand``), so no ":" — nor
#: is it a kind of source's name, which begins its labels (``astria:12``, as opposed to ``nas:astria:12``).
_SITE = re.compile(r"[A-Za-z0-9._-]{1,63}")
SITE_RULE = "a site's name is 1 to 63 letters, digits, '.', '_' or '-', and not " + \
    " or ".join(map(repr, KINDS))


def is_site(name: str) -> bool:
    """Whether ``name`` may name a site."""
    return bool(_SITE.fullmatch(name)) and name not in KINDS


def postgres_url(url: str) -> str:
    """``url`` as ``postgresql+psycopg://…``, or a ValueError naming ``url`` — that never repeats it, for a URL
    may hold a password, which packsync refuses: it would be in the config, and in any message naming the URL."""
    scheme, separator, rest = url.partition("://")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (a port that is not a number raises)
    except ValueError:
        parts = None
    if not separator or scheme.lower() not in POSTGRES_SCHEMES or parts is None:
        raise ValueError("url: not a PostgreSQL URL; write postgresql+psycopg://USER@HOST:PORT/DATABASE")
    # Read as SQLAlchemy reads it too (the state's engine does): a password may hold a "/" or a "#" that ends the
    # host or the query for urlsplit, not for SQLAlchemy.
    query = {name.lower() for name, _value in parse_qsl(rest.partition("?")[2], keep_blank_values=True)}
    if parts.password is not None or _USER_PASSWORD.match(rest) or query & _PASSWORD_PARAMETERS:
        raise ValueError("url: holds a password, which belongs in the environment or a file: remove it from the "
                         "URL and name it with state.password_env or state.password_file")
    return f"{POSTGRES_SCHEMES[0]}://{rest}"


class DaemonConfig(_Strict, frozen=True):
    debounce_s: Annotated[float, Meta(ge=0, le=3600)] = 2.0
    rescan_interval_s: Annotated[float, Meta(ge=10)] = 3600.0


class NotifyConfig(_Strict, frozen=True):
    """Where the daemon sends a word when something needs a person (``daemon/alerts.py``): apprise URLs.

    A URL may name environment variables (``${VAR}`` or ``$VAR``) for its secrets; they are read when the
    daemon starts (``read_notify_urls``), not here: a ``run`` from cron never sends and never needs them."""

    urls: list[Annotated[str, Meta(min_length=1)]] = field(default_factory=list)
    #: A mapping failing this long (seconds) is worth a word; a shorter failure retries unheard.
    after_s: Annotated[float, Meta(ge=0)] = 3600.0

    def __post_init__(self) -> None:
        for index, url in enumerate(self.urls):
            if not _SCHEME.match(url):
                raise ValueError(f"urls[{index}]: not a URL (an apprise URL starts with its service, like ntfy://)")


#: An apprise URL's start: its service's name, then ``://``.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: An environment variable a notification URL names: ``${VAR}`` or ``$VAR`` (``$$``: a ``$`` itself).
_VARIABLE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class HttpConfig(_Strict, frozen=True):
    """The daemon's local HTTP surface (health, metrics, the page): ``listen = ""`` turns it off."""

    listen: str = DEFAULT_LISTEN
    #: Required when ``listen`` is not a loopback address: the variable holding the basic-auth password.
    password_env: Annotated[str, Meta(min_length=1)] | None = None

    def __post_init__(self) -> None:
        if self.listen:
            host, _port = parse_listen(self.listen, "listen")
            if not _is_loopback(host) and self.password_env is None:
                raise ValueError(f"password_env: required to listen on {host}, which is not a loopback address "
                                 "(the page and its actions would be open to the network)")

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen, "listen") if self.listen else None


def parse_listen(value: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8780`` for IPv6) as a host and a port, or a ValueError naming ``key``."""
    host, colon, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key}: expected HOST:PORT, like 127.0.0.1:8780, not {value!r}")
    return host, int(port)


def pack_name(text: str) -> str:
    """``text`` as Genviral stores a pack's name: trimmed, and — a subfolder's long name — cut to the
    ``MAX_PACK_NAME`` UTF-16 code units it allows (never inside a character), then trimmed again. Asking
    for any other name makes a pack that a lookup by that name never finds. Empty: no name at all."""
    name, units = text.strip(_JS_SPACE), 0
    for end, char in enumerate(name):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > MAX_PACK_NAME:
            return name[:end].strip(_JS_SPACE)
    return name


class MappingConfig(_Strict, frozen=True):
    """One source mirrored into one pack: a folder (``path``), or a source read through an API (``source``:
    its kind's own keys, ``astria_pack = 260``, which ``parse_config`` lifts out of the mapping's table)."""

    path: Path | None = None
    source: RemoteSource | None = None
    pack: Annotated[str, Meta(min_length=1)] | None = None
    pack_id: Annotated[str, Meta(min_length=1)] | None = None
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    #: More exclude patterns, after ``DEFAULT_EXCLUDE`` (a "!" here takes one of those back).
    exclude: list[str] = field(default_factory=list)
    #: false: ``DEFAULT_EXCLUDE`` (hidden files, leftovers, NAS and desktop junk) is not excluded.
    default_excludes: bool = True
    delete: bool = True
    prune_foreign: bool = False
    adopt: bool = True
    max_delete: int | str = "50%"
    max_file_mb: Annotated[float, Meta(gt=0)] = 50.0
    follow_symlinks: bool = False
    polling: bool = False
    #: "xmp": write each image's AI description and keywords into an XMP sidecar next to its file.
    sidecars: Literal["none", "xmp"] = "none"
    #: "full": IMG_0001.jpg.xmp (darktable, Immich); "stem": IMG_0001.xmp (Lightroom, digiKam's option).
    sidecar_name: Literal["full", "stem"] = "full"
    #: "subfolders": each direct subfolder of ``path`` into a pack of its own, named after it (``pack_prefix`` first).
    packs_from: Literal["folder", "subfolders"] = "folder"
    pack_prefix: Annotated[str, Meta(max_length=60)] = ""
    #: What is removed from each file before upload: "location" (GPS and place tags), "serials" (camera and
    #: lens serial numbers), "people" (names, creators, face regions); [] uploads the bytes as they are.
    strip: list[str] = field(default_factory=lambda: list(Recipe().strip))
    #: Scale the long edge down to this many pixels before upload (0: never).
    max_edge: Annotated[int, Meta(ge=0)] = 0
    #: These formats are uploaded as JPEG ("heic", "heif", "avif", "png", "webp").
    convert_to_jpeg: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._check_source()
        self._check_pack()
        self._check_recipe()
        for key, lines in (("include", self.include), ("exclude", self.exclude)):
            if problem := check_patterns(lines):
                raise ValueError(f"{key}: {problem}")
        if not _count_or_percent(self.max_delete):
            raise ValueError("max_delete: must be a count >= 0 or a percentage like \"50%\"")

    def _check_source(self) -> None:
        if self.path is None and self.source is None:
            raise ValueError(f"path: required (or {_ID_KEYS})")
        if self.path is not None and self.source is not None:
            raise ValueError(f"{self.source.id_key}: give path or {self.source.id_key}, not both")

    def _check_pack(self) -> None:
        if self.packs_from == "subfolders":
            if self.pack is not None or self.pack_id is not None:
                raise ValueError("packs_from: each subfolder's pack is named after it: give no pack or pack_id")
        elif self.pack_prefix:
            raise ValueError('pack_prefix: applies to packs_from = "subfolders" only')
        elif (self.pack is None) == (self.pack_id is None):
            raise ValueError("give exactly one of pack or pack_id")
        if self.pack is not None:
            name = pack_name(self.pack)
            if not name:
                raise ValueError("pack: a pack's name cannot be only spaces")
            if name != self.pack.strip(_JS_SPACE):  # (cut to fit)
                raise ValueError(f"pack: Genviral takes at most {MAX_PACK_NAME} characters (an emoji counts as 2)")
            # The name the server will store: what is created, remembered and compared.
            msgspec.structs.force_setattr(self, "pack", name)

    def _check_recipe(self) -> None:
        self.recipe  # noqa: B018  (it refuses what it does not know, naming the key)
        if 0 < self.max_edge < MIN_EDGE:
            raise ValueError(f"max_edge: {self.max_edge} px is too small (0 for no resize, else at least {MIN_EDGE})")
        if "avif" in self.convert_to_jpeg and self.include == DEFAULT_INCLUDE:
            # (AVIF is not among Genviral's types: its files are included once they can be uploaded)
            msgspec.structs.force_setattr(self, "include", [*DEFAULT_INCLUDE, "*.avif"])

    @property
    def recipe(self) -> Recipe:
        """What is done to each file's bytes before upload."""
        return Recipe(tuple(self.strip), self.max_edge, tuple(self.convert_to_jpeg))

    @property
    def label(self) -> str:
        """How messages, the state and the views name this mapping's source."""
        return self.source.label if self.source is not None else str(self.path)

    @property
    def folder(self) -> Path:
        """The mapped folder (of a mapping whose source is one)."""
        assert self.path is not None, "not a folder mapping"
        return self.path

    @property
    def pack_label(self) -> str:
        """How messages name this mapping's pack before it has been read."""
        if self.packs_from == "subfolders":
            return f"{self.pack_prefix}<subfolder>"
        return self.pack if self.pack is not None else f"pack {self.pack_id}"


def max_delete_of(text: str) -> int | str | None:
    """``max_delete`` given as text (``pull --max-delete``): a count, a percentage, or None when it is neither."""
    value: int | str = int(text) if text.isascii() and text.isdigit() else text
    return value if _count_or_percent(value) else None


def _count_or_percent(value: int | str) -> bool:
    if isinstance(value, int):
        return value >= 0
    number = value.removesuffix("%")
    return value.endswith("%") and number.replace(".", "", 1).isdigit() and float(number) <= 100


class SharedState:
    """A state shared by several machines on PostgreSQL (``[state] url``), and who this machine is there.

    ``url`` names the server and database without a password (SQLAlchemy's form, ``postgresql+psycopg://
    user@host:port/db``); ``password`` comes from the environment or a file, and never shows in a repr.
    ``site`` names this machine among those sharing the state; ``lease_s`` is how long a site's hold on a
    pack lasts unless renewed (a site killed while syncing a pack lets it go after that long)."""

    __slots__ = ("url", "password", "site", "lease_s")

    def __init__(self, url: str, password: str | None, site: str, lease_s: float = 60.0) -> None:
        self.url, self.password, self.site, self.lease_s = url, password, site, lease_s

    def __repr__(self) -> str:
        return f"SharedState({self.url!r}, site={self.site!r}, lease_s={self.lease_s!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SharedState) and (self.url, self.password, self.site, self.lease_s) == \
            (other.url, other.password, other.site, other.lease_s)

    __hash__ = None  # type: ignore[assignment]


class _ConfigFile(_Strict, frozen=True):
    """What a config file may say."""

    genviral: GenviralConfig = field(default_factory=GenviralConfig)
    astria: AstriaConfig = field(default_factory=AstriaConfig)
    state: StateConfig = field(default_factory=StateConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    mappings: list[MappingConfig] = field(default_factory=list)


class Config(_ConfigFile, frozen=True):
    #: The file this config was read from, if any.
    source: Path | None = None

    @property
    def state_path(self) -> Path:
        """The state's file — or, for a shared state (``[state] url``), the local name its lock and the daemon's
        socket are kept beside: one per database and site, so two shared states on one machine never share
        a lock (nor one with a state file of its own)."""
        if self.state.path is not None:
            return self.state.path
        if self.state.url is None:
            return default_state_path()
        digest = hashlib.sha256(f"{self.state.url}\0{self.state.site}".encode()).hexdigest()[:12]
        return default_state_path().with_name(f"shared-{self.state.site}-{digest}.db")

    @property
    def spool_path(self) -> Path:
        """Where downloads and what recipes made wait for their upload: a private folder beside the state."""
        return self.state_path.parent / "spool"

    def token(self) -> str:
        """Read the API token from its file or environment variable; never from the config itself."""
        return read_token(self.genviral)

    def apis(self) -> set[str]:
        """The APIs the mappings' sources are read through (``"astria"``): whose clients and keys are needed."""
        return {mapping.source.api for mapping in self.mappings if mapping.source is not None}

    def api_table(self, name: str) -> AstriaConfig:
        """The table of the API ``name`` (a kind of source's ``api``): where it is, its key, how often it is read."""
        table = getattr(self, name)
        assert isinstance(table, AstriaConfig), f"no API table {name!r}"
        return table

    def poll_interval_s(self, mapping: MappingConfig) -> float:
        """How often the daemon reads ``mapping``'s source: its kind's own interval, else its API table's
        ``poll_interval_s``. A folder is watched, and read whole every ``[daemon] rescan_interval_s``."""
        if mapping.source is None:
            return self.daemon.rescan_interval_s
        own = mapping.source.poll_s
        return own if own is not None else self.api_table(mapping.source.api).poll_interval_s

    def shared_state(self) -> SharedState | None:
        """Where the state shared with other machines is, and who this machine is there (None: no ``[state]
        url``, a SQLite state of its own). Reads the database's password (registered as a secret at once)."""
        state = self.state
        if state.url is None:
            return None
        return SharedState(state.url, read_state_password(self), state.site or default_site(self.source),
                           state.lease_s)

    def require_mappings(self) -> None:
        """Syncing needs at least one folder: say so instead of silently doing nothing."""
        if not self.mappings:
            raise ConfigError(f"{_where(self.source)}mappings: no [[mappings]] table, so there is nothing to sync "
                              "(`packsync init` writes a config with one).")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: msgspec's names of TOML's kinds of value, in the words of a config file.
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false", "array": "a list",
          "object": "a table", "int | str": "an integer or a string", "null": "nothing", "int | null": "an integer",
          "str | null": "a string", "float | null": "a number", "array | null": "a list"}
_ERROR = re.compile(r"(?P<message>.*?)(?: - at `\$(?P<where>[^`]*)`)?", re.DOTALL)


def _sentence(error: msgspec.ValidationError) -> str:
    """msgspec's error as ``key: message``, e.g. ``mappings[0].colour: unknown key``."""
    found = _ERROR.fullmatch(str(error))
    assert found is not None  # the pattern matches any text
    key, message = (found["where"] or "").lstrip("."), found["message"]
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", message):
        near = [f'"{close}"' for close in difflib.get_close_matches(unknown[1], _keys_of(key), n=1, cutoff=0.6)] \
            or _elsewhere(unknown[1], key)
        key, message = f"{key}.{unknown[1]}".lstrip("."), "unknown key" + (f" (did you mean {' or '.join(near)}?)"
                                                                           if near else "")
    elif missing := re.fullmatch(r"Object missing required field `(.*)`", message):
        key, message = f"{key}.{missing[1]}".lstrip("."), "required"
    elif enum := re.fullmatch(r"Invalid enum value (.*)", message):
        choices = next((typing.get_args(f.type) for f in msgspec.structs.fields(MappingConfig)
                        if f.name == key.rpartition(".")[2]), ())
        message = f"{enum[1]} is not one of " + ", ".join(map(repr, choices)) if choices else f"{enum[1]} not allowed"
    elif own := re.fullmatch(r"(\w+(?:\[\d+\])?): (.*)", message):  # a check of one key, made with the whole table
        key, message = f"{key}.{own[1]}".lstrip("."), own[2]
    message = re.sub(r"`([^`]*)`", lambda kind: _KINDS.get(kind[1], kind[1]), message)
    key = re.sub(r"^(mappings\[\d+\])\.source(?=\.|$)", r"\1", key)  # (lifted by _lift_source: as written)
    return f"{key or 'config'}: {message[:1].lower()}{message[1:]}"


def _elsewhere(name: str, table: str) -> list[str]:
    """The key ``name`` of the other config tables that have it, as a config file writes them (``[genviral]
    base_url``, ``[[mappings]] path``): a key put under the wrong header (or under none)."""
    here, found = re.sub(r"\[\d+\]", "", table), []
    for table_ in msgspec.structs.fields(_ConfigFile):
        if (other := table_.encode_name) != here and name in _keys_of(other):
            found.append(f"{f'[[{other}]]' if typing.get_origin(table_.type) is list else f'[{other}]'} {name}")
    return found


def _keys_of(table: str) -> list[str]:
    """The keys the config table at ``table`` (``""``, ``genviral``, ``mappings[0]``…) may hold."""
    kind: Any = Config
    for name in filter(None, re.sub(r"\[\d+\]", "", table).split(".")):
        found = next((f.type for f in msgspec.structs.fields(kind) if f.encode_name == name), None)
        kind = (typing.get_args(found) or (found,))[0]
        if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            return []
    if kind is MappingConfig:  # its source's keys are written in its table (``_lift_source``)
        return [f.encode_name for f in msgspec.structs.fields(kind) if f.name != "source"] + list(KEYS)
    return [f.encode_name for f in msgspec.structs.fields(kind)]


def _path(kind: type, value: Any) -> Any:
    """msgspec's hook for the types it does not know: here, paths (strings in TOML)."""
    if kind is Path:
        if isinstance(value, str):
            return Path(value)
        raise ValueError(f"Expected a path, got `{type(value).__name__}`")
    raise NotImplementedError(kind)


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def find_config_path(explicit: Path | None) -> Path:
    """The config path: ``--config``, else ``$PACKSYNC_CONFIG``, else the user config dir."""
    if explicit is not None:
        return explicit
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return default_config_path()


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a config mapping; relative paths are taken relative to the config file's folder."""
    data = _lift_sources(data, source)
    try:
        read = msgspec.convert(data, _ConfigFile, dec_hook=_path)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{_where(source)}{_sentence(exc)}.") from None
    base = source.parent if source else Path.cwd()
    config = Config(
        source=source, daemon=read.daemon, http=read.http, notify=read.notify,
        mappings=[m if m.path is None else msgspec.structs.replace(m, path=_resolve(m.path, base))
                  for m in read.mappings],
        state=_resolve_state(read.state, base, source),
        genviral=_resolve_token_file(read.genviral, base), astria=_resolve_token_file(read.astria, base))
    _check_mappings(config)
    return config


A = TypeVar("A", bound=_ApiConfig)


def _resolve_token_file(api: A, base: Path) -> A:
    return api if api.token_file is None else msgspec.structs.replace(api, token_file=_resolve(api.token_file, base))


def _resolve_state(state: StateConfig, base: Path, source: Path | None) -> StateConfig:
    """The state's paths resolved against ``base``, and a shared state's site named (the host name by default)."""
    changes: dict[str, Any] = {key: _resolve(path, base) for key, path in (
        ("path", state.path), ("password_file", state.password_file)) if path is not None}
    if state.url is not None and state.site is None:
        changes["site"] = default_site(source)
    return msgspec.structs.replace(state, **changes) if changes else state


def default_site(source: Path | None = None) -> str:
    """This machine's site name when ``[state] site`` gives none: its host name's first label, in lower case."""
    import socket

    name = socket.gethostname().partition(".")[0].lower()
    if not is_site(name):
        raise ConfigError(f"{_where(source)}state.site: this machine's host name ({name!r}) is not a site's name "
                          f"({SITE_RULE}): give one.")
    return name


#: How a message names the keys that make a mapping's source one read through an API.
_ID_KEYS = ", ".join(f"{kind.id_key} for {kind.noun}" for kind in KINDS.values())


def _lift_sources(data: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """``data`` with each mapping's source lifted (``_lift_source``); an error names the config file."""
    mappings = data.get("mappings")
    if not isinstance(mappings, list):
        return data
    try:
        return {**data, "mappings": [_lift_source(raw, i) for i, raw in enumerate(mappings)]}
    except ValueError as exc:
        raise ConfigError(f"{_where(source)}{exc}.") from None


def _lift_source(raw: Any, i: int) -> Any:
    """A mapping's table as the user wrote it, with its kind of source's keys (``astria_pack``, ``classes``)
    moved into ``source`` (tagged with the kind, for msgspec): a ValueError naming the key when those keys
    are of two kinds, or come with a ``path``, or a key that describes a folder comes with them."""
    if not isinstance(raw, dict):
        return raw
    where = f"mappings[{i}]"
    if "source" in raw:  # (the lifted table's name, not a key of the file)
        raise ValueError(f"{where}.source: unknown key")
    present = [key for key in raw if key in KEYS]
    if not present:
        return raw
    kind = _kind_named(raw, present, where)
    for key in FOLDER_ONLY:
        if key in raw:
            raise ValueError(f"{where}.{key}: applies to folders only, not to {kind.noun}")
    lifted = {key: value for key, value in raw.items() if key not in KEYS}
    lifted["source"] = {"kind": kind.name, **{key: raw[key] for key in present}}
    return lifted


def _kind_named(raw: dict[str, Any], present: list[str], where: str) -> type[RemoteSource]:
    """The one kind of source whose keys (``present``) the mapping ``raw`` gives, with its id and no path."""
    named = [key for key in present if KEYS[key].id_key == key]
    if "path" in raw:
        key = named[0] if named else present[0]
        raise ValueError(f"{where}.{key}: give path or {key}, not both" if named
                         else f"{where}.{key}: applies to {KEYS[key].noun} only")
    if not named:
        kind = KEYS[present[0]]
        raise ValueError(f"{where}.{present[0]}: applies to {kind.noun} only, and no {kind.id_key} is given")
    if len(named) > 1:
        raise ValueError(f"{where}.{named[1]}: give {named[0]} or {named[1]}, not both")
    kind = KEYS[named[0]]
    for key in present:
        if KEYS[key] is not kind:
            raise ValueError(f"{where}.{key}: applies to {KEYS[key].noun} only, not to {kind.noun}")
    return kind


def _where(source: Path | None) -> str:
    return f"{source}: " if source else ""


def _check_mappings(config: Config) -> None:
    where = _where(config.source)
    for i, mapping in enumerate(config.mappings):
        for j, other in enumerate(config.mappings[:i]):
            if mapping.path is not None and other.path is not None and (
                    mapping.path == other.path or mapping.path.is_relative_to(other.path)
                    or other.path.is_relative_to(mapping.path)):
                raise ConfigError(f"{where}mappings[{i}].path: overlaps mappings[{j}].path ({other.path}).")
            if mapping.source is not None and mapping.label == other.label:
                thing = mapping.source.noun.rpartition(" ")[2]  # "an Astria pack": "pack"
                raise ConfigError(f"{where}mappings[{i}].{mapping.source.id_key}: mappings[{j}] already mirrors "
                                  f"that {thing}.")
            same_id = mapping.pack_id is not None and mapping.pack_id == other.pack_id
            same_name = mapping.pack is not None and mapping.pack == other.pack
            if same_id or same_name:
                key = "pack_id" if same_id else "pack"
                raise ConfigError(f"{where}mappings[{i}].{key}: mappings[{j}] already syncs into that pack.")


def load_config(path: Path) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        data = tomllib.loads(read_regular(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no config file here; `packsync init` writes one (or give --config PATH).") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror}).") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text at byte {exc.start}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}).") from None
    return parse_config(data, source=path)


def read_secret_file(path: Path, key: str, what: str = "token") -> str:
    """A secret (a token, a password) from the file ``path``, stripped: the config's ``key`` names the file in
    every error, and a file other users can read is used with a warning (chmod 600)."""
    from packsync.logs import get_logger

    try:
        secret = read_regular(path, MAX_TOKEN_BYTES).decode("utf-8").strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text.") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        get_logger().warning(f"{what} file is readable by other users; chmod 600 it", path=str(path))
    if not secret:
        raise ConfigError(f"{key}: {path} is empty.")
    return secret


def read_token(api: _ApiConfig, table: str = "genviral", defaults: tuple[str, ...] = TOKEN_ENVS) -> str:
    """An API token, from ``token_file`` or the environment; never from the config itself."""
    from packsync.logs import get_logger

    if api.token_file is not None:
        return read_secret_file(api.token_file, f"{table}.token_file")
    names = (api.token_env,) if api.token_env else defaults
    for name in names:
        token = os.environ.get(name, "").strip()
        if token:
            get_logger().debug("token read from the environment", variable=name)
            return token
    if api.token_env:
        raise ConfigError(f"{table}.token_env: the environment variable {api.token_env} is not set.")
    raise ConfigError(f"{table}.token_env: neither {' nor '.join(names)} is set in the environment."
                      if len(names) > 1 else f"{table}.token_env: {names[0]} is not set in the environment.")


def read_password(config: Config) -> str | None:
    """The web page's basic-auth password, from ``[http] password_env`` (None: no password asked for)."""
    name = config.http.password_env
    if name is None:
        return None
    password = os.environ.get(name, "")
    if not password:
        raise ConfigError(f"{_where(config.source)}http.password_env: the environment variable {name} is not set.")
    from packsync.logs import register_secret

    register_secret(password)
    return password


def read_state_password(config: Config) -> str | None:
    """The shared state's database password, from ``[state] password_file`` or ``password_env`` (None: neither,
    a server that trusts the connection), registered as a secret as soon as it is read."""
    from packsync.logs import register_secret

    state, where = config.state, _where(config.source)
    if state.password_file is not None:
        password = read_secret_file(state.password_file, f"{where}state.password_file", "password")
    elif state.password_env is not None:
        if not (password := os.environ.get(state.password_env, "")):
            raise ConfigError(f"{where}state.password_env: the environment variable {state.password_env} is not set.")
    else:
        return None
    register_secret(password)
    return password


#: A variable's value shorter than this is a port or a chat id, not a credential: starring out every "2" in every
#: log line would hide more than it protects (the whole URL is a secret all the same).
SECRET_MIN = 6


def read_notify_urls(config: Config, *, reload: bool = False) -> list[str]:
    """The notification URLs with the environment variables they name filled in, each registered as a secret
    (a URL carries its service's credentials). An unset variable is a config error naming the key and it
    (``reload``: the daemon's, whose environment is fixed at its start; only a restart gives it a new one)."""
    from packsync.logs import register_secret

    restart = (" in the daemon's environment, which a reload cannot change: set it where the daemon gets its "
               "environment (its EnvironmentFile=) and restart it (`systemctl [--user] restart packsync`)."
               if reload else ".")

    urls = []
    for index, url in enumerate(config.notify.urls):
        def value(found: re.Match[str], key: str = f"notify.urls[{index}]") -> str:
            if found["dollar"]:
                return "$"
            name = found["braced"] or found["bare"]
            if not (text := os.environ.get(name, "")):
                raise ConfigError(f"{_where(config.source)}{key}: the environment variable {name} is not set{restart}")
            if len(text) >= SECRET_MIN:
                register_secret(text)
            return text
        urls.append(_VARIABLE.sub(value, url))
        register_secret(urls[-1])
    return urls
