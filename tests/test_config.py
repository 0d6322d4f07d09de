"""The config file: defaults, one-sentence errors that name the key, paths, and where the token comes from."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import Env
from structlog.testing import capture_logs

from packsync.app import transport_for
from packsync.config import (
    CONFIG_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    SITE_RULE,
    GenviralConfig,
    default_state_path,
    find_config_path,
    load_config,
    parse_config,
    read_token,
    with_bandwidth_limit,
)
from packsync.errors import ConfigError, ExitCode
from packsync.logs import redact
from packsync.recipe import Recipe
from packsync.remote.transport import RetryPolicy, Transport
from packsync.sources.folder import filters_for


def config_error(data: dict[str, Any], source: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source)
    return str(caught.value)


def one_mapping(**options: Any) -> dict[str, Any]:
    return {"mappings": [{"path": "/photos", "pack": "Brand", **options}]}


def test_an_empty_config_takes_every_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    config = parse_config({})

    assert config.genviral.base_url == DEFAULT_BASE_URL
    assert (config.genviral.token_env, config.genviral.token_file, config.genviral.concurrency) == \
        (None, None, 4), "no variable named: $GENVIRAL_TOKEN, then $GENVIRAL_API_KEY"
    assert (config.daemon.debounce_s, config.daemon.rescan_interval_s) == (2.0, 3600.0)
    transport = transport_for(config)
    assert (transport.timeout, transport.retry) == (Transport().timeout, RetryPolicy()), \
        "the config's read timeout and retry pauses are the transport's own defaults"
    assert config.mappings == []
    assert config.state_path == tmp_path / "state" / "packsync" / "state.db"


def test_a_mapping_takes_every_default() -> None:
    (mapping,) = parse_config(one_mapping()).mappings

    assert (mapping.pack, mapping.pack_id) == ("Brand", None)
    assert (mapping.include, mapping.exclude, mapping.default_excludes) == (DEFAULT_INCLUDE, [], True)
    assert filters_for(mapping).exclude == DEFAULT_EXCLUDE
    assert (mapping.delete, mapping.prune_foreign, mapping.max_delete) == (True, False, "50%")
    assert (mapping.max_file_mb, mapping.follow_symlinks, mapping.polling) == (50.0, False, False)


def test_base_url_loses_its_trailing_slash() -> None:
    config = parse_config({"genviral": {"base_url": "https://api.example.com/v1/"}})

    assert config.genviral.base_url == "https://api.example.com/v1"


ERRORS = [
    pytest.param({"colour": "red"}, "colour: unknown key.", id="unknown top-level key"),
    pytest.param({"genviral": {"token": "gva_live_x"}}, 'genviral.token: unknown key (did you mean "token_env"?).',
                 id="the token itself is not a key: where it may come from is"),
    pytest.param(one_mapping(colour="red"), "mappings[0].colour: unknown key.", id="unknown mapping key"),
    pytest.param(one_mapping(deleet=True), 'mappings[0].deleet: unknown key (did you mean "delete"?).',
                 id="a misspelt key suggests the closest"),
    pytest.param({"mapings": []}, 'mapings: unknown key (did you mean "mappings"?).', id="a misspelt table too"),
    pytest.param({"genviral": {"timeout_sx": 3}}, 'genviral.timeout_sx: unknown key (did you mean "timeout_s"?).',
                 id="a misspelt key of a table"),
    pytest.param({"base_url": "https://api.example.com/v1"},
                 "base_url: unknown key (did you mean [genviral] base_url or [astria] base_url?).",
                 id="a key of a table written above every header: the tables that have it"),
    pytest.param({"astria": {"concurrency": 2}},
                 "astria.concurrency: unknown key (did you mean [genviral] concurrency?).",
                 id="a key under the wrong header"),
    pytest.param({"path": "/photos"}, "path: unknown key (did you mean [state] path or [[mappings]] path?).",
                 id="a key of an array of tables"),
    pytest.param({"genviral": {"concurrency": "four"}}, "genviral.concurrency: ", id="wrong type"),
    pytest.param(one_mapping(include="*.png"), "mappings[0].include: ", id="a string where a list belongs"),
    pytest.param({"mappings": {"path": "/photos"}}, "mappings: ", id="a table where a list belongs"),
    pytest.param({"state": {"path": 3}}, "state.path: ", id="a number where a path belongs"),
    pytest.param({"mappings": [{"pack": "Brand"}]}, "mappings[0].path: ", id="missing path"),
    pytest.param(one_mapping(pack_id="123"), "mappings[0]: give exactly one of pack or pack_id.",
                 id="both pack and pack_id"),
    pytest.param({"mappings": [{"path": "/photos"}]}, "mappings[0]: give exactly one of pack or pack_id.",
                 id="neither pack nor pack_id"),
    pytest.param(one_mapping(pack=""), "mappings[0].pack: ", id="empty pack name"),
    pytest.param({"genviral": {"concurrency": 0}}, "genviral.concurrency: ", id="concurrency 0"),
    pytest.param({"genviral": {"concurrency": 11}}, "genviral.concurrency: ", id="concurrency 11"),
    pytest.param({"genviral": {"timeout_s": 0}}, "genviral.timeout_s: ", id="timeout 0"),
    pytest.param({"genviral": {"retry_wait_max_s": -1}}, "genviral.retry_wait_max_s: ", id="retry wait below 0"),
    pytest.param({"genviral": {"base_url": "http://api.example.com/v1"}}, "genviral.base_url: must be an https://",
                 id="plain http off loopback"),
    pytest.param({"genviral": {"base_url": "http://localhost.example.com/v1"}}, "genviral.base_url: ",
                 id="plain http to a name that only starts like localhost"),
    pytest.param({"genviral": {"base_url": "ftp://127.0.0.1/v1"}}, "genviral.base_url: ", id="not http at all"),
    pytest.param({"genviral": {"base_url": "api.example.com"}}, "genviral.base_url: ", id="no scheme"),
    pytest.param({"genviral": {"bandwidth_limit": "20 M"}}, "genviral.bandwidth_limit: '20' is not a timetable entry",
                 id="a rate with a space"),
    pytest.param({"genviral": {"bandwidth_limit": "25:00,1M"}}, "genviral.bandwidth_limit: '25:00' is not a time",
                 id="a timetable's hour past 23"),
    pytest.param({"daemon": {"rescan_interval_s": 1}}, "daemon.rescan_interval_s: ", id="rescan too often"),
    pytest.param(one_mapping(max_file_mb=0), "mappings[0].max_file_mb: ", id="max_file_mb 0"),
    pytest.param({"astria": {"base_url": "http://api.astria.ai"}}, "astria.base_url: must be an https://",
                 id="astria over plain http off loopback"),
    pytest.param({"astria": {"poll_interval_s": 1}}, "astria.poll_interval_s: ", id="astria polled too often"),
    pytest.param(one_mapping(astria_pack=260), "mappings[0].astria_pack: give path or astria_pack, not both",
                 id="a folder and an Astria pack"),
    pytest.param(one_mapping(classes=["woman"]), "mappings[0].classes: applies to an Astria pack only",
                 id="classes on a folder"),
    pytest.param({"mappings": [{"astria_pack": 0, "pack": "p"}]}, "mappings[0].astria_pack: ", id="astria_pack 0"),
    pytest.param({"mappings": [{"astria_pack": "260", "pack": "p"}]}, "mappings[0].astria_pack: ",
                 id="astria_pack as a string"),
    pytest.param({"mappings": [{"astria_pack": 260, "pack": "p", "include": ["*.png"]}]},
                 "mappings[0].include: applies to folders only", id="a folder key on an Astria mapping"),
    pytest.param({"mappings": [{"astria_pack": 260, "pack": "a"}, {"astria_pack": 260, "pack": "b"}]},
                 "mappings[1].astria_pack: mappings[0] already mirrors that pack", id="one Astria pack twice"),
    pytest.param(one_mapping(strip=["gps"]), "mappings[0].strip: 'gps' is not one of", id="strip what is not a kind"),
    pytest.param(one_mapping(strip="location"), "mappings[0].strip: ", id="strip as a string"),
    pytest.param(one_mapping(max_edge=-1), "mappings[0].max_edge: ", id="max_edge below 0"),
    pytest.param(one_mapping(max_edge=100), "mappings[0].max_edge: 100 px is too small", id="max_edge too small"),
    pytest.param(one_mapping(max_edge="2160"), "mappings[0].max_edge: ", id="max_edge as a string"),
    pytest.param(one_mapping(convert_to_jpeg=["tiff"]), "mappings[0].convert_to_jpeg: 'tiff' is not one of",
                 id="convert what packsync cannot read"),
]


def test_the_recipe_defaults_strip_location_and_serials_and_nothing_else() -> None:
    mapping = parse_config(one_mapping()).mappings[0]

    assert mapping.recipe == Recipe(("location", "serials"), 0, ())
    assert parse_config(one_mapping(strip=[])).mappings[0].recipe.as_is
    converting = parse_config(one_mapping(convert_to_jpeg=["avif", "heic"], max_edge=2160)).mappings[0]
    assert "*.avif" in converting.include and converting.recipe.key == "strip=location,serials;max_edge=2160;" \
        "jpeg=avif,heic"


@pytest.mark.parametrize(("data", "message"), ERRORS)
def test_every_error_is_one_sentence_naming_its_key(data: dict[str, Any], message: str) -> None:
    error = config_error(data)

    assert error.startswith(message)
    assert error.endswith(".") and "\n" not in error


def test_errors_name_the_config_file_first(tmp_path: Path) -> None:
    source = tmp_path / "config.toml"

    assert config_error({"colour": "red"}, source) == f"{source}: colour: unknown key."


@pytest.mark.parametrize("base_url", [
    "https://api.example.com/v1",
    "http://127.0.0.1:8765/api/partner/v1",
    "http://127.5.5.5/v1",
    "http://localhost:8000/v1",
    "http://[::1]:8000/v1",
])
def test_base_url_is_https_or_plain_http_on_loopback(base_url: str) -> None:
    assert parse_config({"genviral": {"base_url": base_url}}).genviral.base_url == base_url


def test_the_read_timeout_and_the_longest_retry_pause_reach_the_transport() -> None:
    transport = transport_for(parse_config({"genviral": {"timeout_s": 5, "retry_wait_max_s": 0.5}}))

    assert transport.timeout == 5
    assert transport.retry == RetryPolicy().wait_at_most(0.5)
    assert transport.retry.backoff.delay(attempt=10) <= 0.5


@pytest.mark.parametrize("concurrency", [1, 10])
def test_concurrency_may_be_from_1_to_10(concurrency: int) -> None:
    assert parse_config({"genviral": {"concurrency": concurrency}}).genviral.concurrency == concurrency


@pytest.mark.parametrize("max_delete", [0, 7, "0%", "50%", "12.5%", "100%"])
def test_max_delete_is_a_count_or_a_percentage(max_delete: int | str) -> None:
    (mapping,) = parse_config(one_mapping(max_delete=max_delete)).mappings

    assert mapping.max_delete == max_delete


@pytest.mark.parametrize("max_delete", [-1, "50", "150%", "%", "abc%", "50 %", "-5%", 2.5, [1]], ids=repr)
def test_max_delete_rejects_anything_else_naming_the_key(max_delete: Any) -> None:
    error = config_error(one_mapping(max_delete=max_delete))

    assert error.startswith("mappings[0].max_delete: ")


def test_max_delete_true_is_not_a_count() -> None:
    """TOML ``max_delete = true`` is a mistake to report, not a limit of one delete."""
    assert config_error(one_mapping(max_delete=True)).startswith("mappings[0].max_delete: ")


@pytest.mark.parametrize(("first", "second"), [
    ("photos", "photos"),
    ("photos", "photos/brand"),
    ("photos/brand", "photos"),
    ("photos", "./photos/../photos"),
])
def test_overlapping_mappings_are_refused(tmp_path: Path, first: str, second: str) -> None:
    data = {"mappings": [{"path": first, "pack": "one"}, {"path": second, "pack": "two"}]}

    error = config_error(data, tmp_path / "config.toml")

    assert f"mappings[1].path: overlaps mappings[0].path ({tmp_path / first.split('/')[0]}" in error


def test_sibling_folders_with_a_common_name_prefix_do_not_overlap(tmp_path: Path) -> None:
    data = {"mappings": [{"path": "photos", "pack": "one"}, {"path": "photos-old", "pack": "two"}]}

    assert len(parse_config(data, tmp_path / "config.toml").mappings) == 2


@pytest.mark.parametrize(("key", "value"), [("pack", "Brand"), ("pack_id", "1234")])
def test_two_mappings_into_one_pack_are_refused(key: str, value: str) -> None:
    data = {"mappings": [{"path": "/a", key: value}, {"path": "/b", key: value}]}

    assert config_error(data) == f"mappings[1].{key}: mappings[0] already syncs into that pack."


def test_relative_paths_are_relative_to_the_config_files_folder(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    source = tmp_path / "etc" / "config.toml"
    data = {"genviral": {"token_file": "secret/token"}, "state": {"path": "../state.db"},
            "mappings": [{"path": "photos", "pack": "p"}, {"path": str(tmp_path / "abs"), "pack": "q"}]}

    config = parse_config(data, source)

    assert [m.path for m in config.mappings] == [tmp_path / "etc" / "photos", tmp_path / "abs"]
    assert config.state_path == tmp_path / "state.db"
    assert config.genviral.token_file == tmp_path / "etc" / "secret" / "token"
    assert config.source == source


def test_without_a_file_relative_paths_are_relative_to_the_working_folder(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    (mapping,) = parse_config({"mappings": [{"path": "photos", "pack": "p"}]}).mappings

    assert mapping.path == tmp_path / "photos"


def test_a_tilde_is_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    (mapping,) = parse_config({"mappings": [{"path": "~/Pictures", "pack": "p"}]}, Path("/etc/packsync.toml")).mappings

    assert mapping.path == tmp_path / "Pictures"


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[genviral]\nconcurrency = 7\n\n[[mappings]]\npath = "photos"\npack_id = "42"\n', encoding="utf-8")

    config = load_config(path)

    assert config.genviral.concurrency == 7
    assert [(m.path, m.pack_id) for m in config.mappings] == [(tmp_path / "photos", "42")]
    assert config.source == path


@pytest.mark.parametrize(("text", "message"), [
    ("[genviral\nconcurrency = 4\n", "not valid TOML"),
    ("concurrency = = 4\n", "not valid TOML"),
    ("[genviral]\ncolour = 'red'\n", "genviral.colour: unknown key."),
])
def test_load_config_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_load_config_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file here"):
        load_config(tmp_path / "missing.toml")


def test_load_config_of_a_folder_says_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path)


def test_config_errors_exit_with_the_usage_code() -> None:
    assert ConfigError("x").exit_code == ExitCode.USAGE


def test_config_path_given_on_the_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, "/from/env.toml")

    assert find_config_path(Path("/from/flag.toml")) == Path("/from/flag.toml")


def test_config_path_from_the_environment_comes_next(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, "/from/env.toml")

    assert find_config_path(None) == Path("/from/env.toml")


@pytest.mark.parametrize("variable", [None, ""])
def test_config_path_defaults_to_the_user_config_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         variable: str | None) -> None:
    if variable is None:
        monkeypatch.delenv(CONFIG_ENV, raising=False)
    else:
        monkeypatch.setenv(CONFIG_ENV, variable)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))

    assert find_config_path(None) == tmp_path / "packsync" / "config.toml"


def test_token_comes_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_GENVIRAL_KEY", "  gva_live_abc.def\n")

    assert read_token(GenviralConfig(token_env="MY_GENVIRAL_KEY")) == "gva_live_abc.def"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_or_empty_token_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                              value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("MY_GENVIRAL_KEY", raising=False)
    else:
        monkeypatch.setenv("MY_GENVIRAL_KEY", value)

    with pytest.raises(ConfigError) as caught:
        read_token(GenviralConfig(token_env="MY_GENVIRAL_KEY"))

    assert str(caught.value).startswith("genviral.token_env: ") and "MY_GENVIRAL_KEY" in str(caught.value)


@pytest.mark.parametrize(("environment", "expected"), [
    ({"GENVIRAL_API_KEY": "gva_live_cli.key"}, "gva_live_cli.key"),
    ({"GENVIRAL_TOKEN": "gva_live_tok.en", "GENVIRAL_API_KEY": "gva_live_cli.key"}, "gva_live_tok.en"),
    ({"GENVIRAL_TOKEN": " ", "GENVIRAL_API_KEY": "gva_live_cli.key"}, "gva_live_cli.key"),
], ids=["only Genviral's CLI variable", "GENVIRAL_TOKEN first", "an empty GENVIRAL_TOKEN is not a token"])
def test_without_token_env_the_key_of_genviral_s_own_cli_is_used(monkeypatch: pytest.MonkeyPatch,
                                                                  environment: dict[str, str], expected: str) -> None:
    for name in ("GENVIRAL_TOKEN", "GENVIRAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert read_token(GenviralConfig()) == expected


def test_without_token_env_or_any_variable_the_error_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GENVIRAL_TOKEN", "GENVIRAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(ConfigError, match="^genviral.token_env: neither GENVIRAL_TOKEN nor GENVIRAL_API_KEY is set"):
        read_token(GenviralConfig())


def test_a_named_token_env_is_the_only_variable_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_GENVIRAL_KEY", raising=False)
    monkeypatch.setenv("GENVIRAL_API_KEY", "gva_live_cli.key")

    with pytest.raises(ConfigError, match="MY_GENVIRAL_KEY is not set"):
        read_token(GenviralConfig(token_env="MY_GENVIRAL_KEY"))


def private_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_token_file_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENVIRAL_TOKEN", "from-env")
    token_file = private_file(tmp_path / "token", "from-file\n")
    config = parse_config({"genviral": {"token_file": "token"}}, tmp_path / "config.toml")

    with capture_logs() as logs:
        token = config.token()

    assert token == "from-file"
    assert logs == [], f"{token_file} is private: no warning expected"


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("\n  \n", "is empty")])
def test_an_empty_token_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = private_file(tmp_path / "token", text)

    with pytest.raises(ConfigError) as caught:
        read_token(GenviralConfig(token_file=path))

    assert str(caught.value).startswith("genviral.token_file: ") and message in str(caught.value)


def test_a_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_token(GenviralConfig(token_file=tmp_path / "missing"))

    assert str(caught.value).startswith("genviral.token_file: cannot read ")


def test_a_token_file_others_can_read_is_used_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("gva_live_abc.def\n", encoding="utf-8")
    os.chmod(path, 0o644)

    with capture_logs() as logs:
        token = read_token(GenviralConfig(token_file=path))

    assert token == "gva_live_abc.def"
    assert [(e["log_level"], e["path"]) for e in logs] == [("warning", str(path))]
    assert "gva_live_abc.def" not in repr(logs)


@pytest.mark.parametrize(("option", "value", "key"), [
    ("colour", "red", "mappings[0].colour"),
    ("max_delete", "lots", "mappings[0].max_delete"),
    ("pack_id", "also-given", "mappings[0]"),
])
def test_cli_run_with_a_bad_config_exits_2_with_one_line_naming_the_key(env: Env, option: str, value: str,
                                                                         key: str) -> None:
    env.map("brand", pack="Brand", **{option: value})

    result = env.cli("run")

    assert result.returncode == ExitCode.USAGE
    assert f"{key}: " in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert env.sandbox.calls == {}


def test_cli_run_with_invalid_toml_exits_2_without_a_traceback(env: Env) -> None:
    env.config_path.write_text("[genviral\n", encoding="utf-8")

    result = env.cli("run")

    assert result.returncode == ExitCode.USAGE
    assert "not valid TOML" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_without_any_mapping_says_there_is_nothing_to_sync(env: Env) -> None:
    env.write_config()

    result = env.cli("run")

    assert result.returncode == ExitCode.USAGE
    assert "mappings" in result.stderr and "nothing to sync" in result.stderr
    assert env.sandbox.calls == {}


def test_the_example_config_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "config.example.toml")

    assert [m.label for m in config.mappings] == [str(Path("~/Pictures/brand").expanduser()),
                                                    str(Path("~/Pictures/products").expanduser())]
    assert config.astria.poll_interval_s == 3600


@pytest.mark.parametrize(("options", "message"), [
    ({"sidecars": "yes"}, "mappings[0].sidecars: 'yes' is not one of 'none', 'xmp'."),
    ({"sidecar_name": "base"}, "mappings[0].sidecar_name: 'base' is not one of 'full', 'stem'."),
])
def test_a_choice_outside_its_list_names_the_choices(options: dict[str, Any], message: str) -> None:
    assert config_error(one_mapping(**options)) == message


@pytest.mark.parametrize(("http", "message"), [
    ({"listen": "0.0.0.0:8780"}, "http.password_env: required to listen on 0.0.0.0, which is not a loopback "
                                 "address (the page and its actions would be open to the network)."),
    ({"listen": "8780"}, "http.listen: expected HOST:PORT, like 127.0.0.1:8780, not '8780'."),
    ({"listen": "[::1]:99999"}, "http.listen: expected HOST:PORT, like 127.0.0.1:8780, not '[::1]:99999'."),
    ({"port": 1}, "http.port: unknown key."),
])
def test_a_bad_http_table_is_named(http: dict[str, Any], message: str) -> None:
    assert config_error({"http": http}) == message


# [state] url: a state shared by several machines on PostgreSQL.

URL = "postgresql+psycopg://packsync@db.example.com:5432/packsync"
#: A password written where it does not belong: no message may repeat it.
PASSWORD = "pw-Sh4red-s3cret"


def shared(**state: Any) -> dict[str, Any]:
    return {"state": {"url": URL, **state}}


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "postgresql", "postgres", "POSTGRES"])
def test_a_state_url_is_read_as_sqlalchemy_s_psycopg_url(scheme: str) -> None:
    config = parse_config({"state": {"url": f"{scheme}://packsync@db.example.com:5432/packsync"}})

    assert config.state.url == URL
    shared_state = config.shared_state()
    assert shared_state is not None
    assert (shared_state.url, shared_state.password, shared_state.lease_s) == (URL, None, 60.0), \
        "no password_env or password_file: a server that trusts the connection; a lease lasts 60 s by default"


@pytest.mark.parametrize("rest", ["/packsync?host=/run/postgresql", "packsync@[::1]:5432/packsync",
                                  "db.example.com:5432/packsync", "packsync@h/packsync?sslmode=require"])
def test_after_its_scheme_a_url_is_kept_as_written(rest: str) -> None:
    """A Unix socket's (no host), an IPv6 address, no user (libpq's default), libpq's own parameters."""
    assert parse_config({"state": {"url": f"postgres://{rest}"}}).state.url == f"postgresql+psycopg://{rest}"


def test_without_a_url_the_state_is_sqlite_s_and_site_and_lease_s_are_ignored() -> None:
    config = parse_config({"state": {"site": "nas", "lease_s": 30}})

    assert config.shared_state() is None
    assert (config.state.url, config.state.site, config.state.lease_s) == (None, "nas", 30.0)


def test_the_site_is_the_host_name_s_first_label_in_lower_case(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config(shared()).state.site == socket.gethostname().partition(".")[0].lower()

    monkeypatch.setattr(socket, "gethostname", lambda: "Studio-NAS.example.com")
    config = parse_config(shared())

    assert config.state.site == "studio-nas"
    shared_state = config.shared_state()
    assert shared_state is not None and shared_state.site == "studio-nas"
    assert parse_config({}).state.site is None, "no shared state: no site to name"


def test_a_host_name_that_is_no_site_s_name_asks_for_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Büro PC")

    assert config_error(shared(), tmp_path / "config.toml").startswith(
        f"{tmp_path / 'config.toml'}: state.site: this machine's host name ('büro pc') is not a site's name ")
    assert parse_config(shared(site="buero")).state.site == "buero", "a site given is used, the host name unread"


@pytest.mark.parametrize("site", ["nas", "NAS-1", "studio.nas_2", "a" * 63])
def test_a_site_is_1_to_63_letters_digits_dots_underscores_or_hyphens(site: str) -> None:
    shared_state = parse_config(shared(site=site, lease_s=5)).shared_state()

    assert shared_state is not None and (shared_state.site, shared_state.lease_s) == (site, 5.0)


STATE_ERRORS = [
    pytest.param({"url": "sqlite:///state.db"}, "state.url: not a PostgreSQL URL; write "
                 "postgresql+psycopg://USER@HOST:PORT/DATABASE.", id="another database"),
    pytest.param({"url": "db.example.com/packsync"}, "state.url: not a PostgreSQL URL; ", id="no scheme"),
    pytest.param({"url": "postgresql+psycopg2://u@h/db"}, "state.url: not a PostgreSQL URL; ",
                 id="another driver than psycopg 3"),
    pytest.param({"url": "postgresql://u@h:port/db"}, "state.url: not a PostgreSQL URL; ", id="a port not a number"),
    pytest.param({"url": 5432}, "state.url: expected a string, got an integer.", id="url as a number"),
    pytest.param({"ulr": URL}, 'state.ulr: unknown key (did you mean "url"?).', id="a misspelt url"),
    pytest.param({"password_env": "PGPASSWORD"}, "state.password_env: only used with state.url ",
                 id="password_env without a url"),
    pytest.param({"password_file": "pgpass"}, "state.password_file: only used with state.url ",
                 id="password_file without a url"),
    pytest.param({"url": URL, "password_env": "PGPASSWORD", "password_file": "pgpass"},
                 "state.password_file: give password_env or password_file, not both.", id="both"),
    pytest.param({"url": URL, "password_env": ""}, "state.password_env: ", id="an empty variable name"),
    pytest.param({"url": URL, "site": ""}, f"state.site: {SITE_RULE}, not ''.", id="an empty site"),
    pytest.param({"url": URL, "site": "astria"}, "state.site: ", id="a site named as Astria sources' labels begin"),
    pytest.param({"url": URL, "site": "studio nas"}, "state.site: ", id="a site with a space"),
    pytest.param({"url": URL, "site": "nas:1"}, "state.site: ", id="a site with a colon (it qualifies labels)"),
    pytest.param({"url": URL, "site": "a" * 64}, "state.site: ", id="a site too long"),
    pytest.param({"site": "studio nas"}, "state.site: ", id="a bad site is refused even without a url"),
    pytest.param({"url": URL, "lease_s": 4.9}, "state.lease_s: expected a number >= 5.0.", id="lease under 5 s"),
    pytest.param({"url": URL, "lease_s": 3601}, "state.lease_s: expected a number <= 3600.0.", id="lease over 1 h"),
    pytest.param({"url": URL, "lease_s": "60"}, "state.lease_s: expected a number, got a string.",
                 id="lease as a string"),
]


@pytest.mark.parametrize(("state", "message"), STATE_ERRORS)
def test_a_bad_state_table_is_one_sentence_naming_its_key(state: dict[str, Any], message: str) -> None:
    error = config_error({"state": state})

    assert error.startswith(message)
    assert error.endswith(".") and "\n" not in error


def test_a_url_key_above_every_header_is_said_to_be_state_s() -> None:
    assert config_error({"url": URL}) == "url: unknown key (did you mean [state] url?)."


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://packsync:{PASSWORD}@db.example.com/packsync",
    f"postgres://packsync:{PASSWORD}@db.example.com:5432/packsync",
    f"postgresql://packsync:{PASSWORD}@@db.example.com/packsync",
    f"postgresql://db.example.com/packsync?user=packsync&password={PASSWORD}",
    f"postgresql://packsync@db.example.com/packsync?sslpassword={PASSWORD}",
    pytest.param(f"postgresql://packsync:1/{PASSWORD}@db.example.com/packsync",
                 id="a password with a slash, after a port-like start (SQLAlchemy reads it as a password)"),
    pytest.param(f"postgresql://packsync@db.example.com/packsync?sslmode=require#&password={PASSWORD}",
                 id="a password after a '#' (SQLAlchemy's query runs to the end)"),
])
def test_a_url_holding_a_password_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"state": {"url": url}})

    error = str(caught.value)
    assert error == ("state.url: holds a password, which belongs in the environment or a file: remove it from the "
                     "URL and name it with state.password_env or state.password_file.")
    assert PASSWORD not in repr(caught.value) and caught.value.__suppress_context__


@pytest.mark.parametrize("state", [
    {"url": f"mysql://packsync:{PASSWORD}@db.example.com/packsync"},
    {"url": f"postgresql://packsync:{PASSWORD}@db.example.com:port/packsync"},
    {"url": [f"postgresql://packsync:{PASSWORD}@db.example.com/packsync"]},
    {"url": {"password": PASSWORD}},
    {"url": URL, "password_env": [PASSWORD]},
])
def test_no_error_about_a_url_repeats_a_password_it_holds(state: dict[str, Any]) -> None:
    """Not one refused for some other reason, nor msgspec's own word on a wrong type."""
    error = config_error({"state": state})

    assert error.startswith("state.") and PASSWORD not in error


def test_the_password_comes_from_the_named_variable_and_is_a_secret_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKSYNC_DB_PASSWORD", "pw-from-the-environment")
    config = parse_config(shared(password_env="PACKSYNC_DB_PASSWORD"))

    shared_state = config.shared_state()

    assert shared_state is not None and shared_state.password == "pw-from-the-environment"
    assert "pw-from-the-environment" not in repr(shared_state)
    assert redact("password=pw-from-the-environment") == "password=***", "registered with the log's redaction"


@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_password_variable_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("PACKSYNC_DB_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("PACKSYNC_DB_PASSWORD", value)
    source = tmp_path / "config.toml"
    config = parse_config(shared(password_env="PACKSYNC_DB_PASSWORD"), source)

    with pytest.raises(ConfigError) as caught:
        config.shared_state()

    assert str(caught.value) == \
        f"{source}: state.password_env: the environment variable PACKSYNC_DB_PASSWORD is not set."


def test_a_relative_password_file_is_relative_to_the_config_s_folder(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    path = private_file(tmp_path / "etc" / "db-password", "pw-from-a-file\n")
    config = parse_config(shared(password_file="db-password"), tmp_path / "etc" / "config.toml")

    with capture_logs() as logs:
        shared_state = config.shared_state()

    assert config.state.password_file == path
    assert shared_state is not None and shared_state.password == "pw-from-a-file", "stripped of its newline"
    assert logs == [], f"{path} is private: no warning expected"
    assert redact("pw-from-a-file") == "***"


def test_a_password_file_others_can_read_is_used_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "db-password"
    path.write_text("pw-readable-by-all\n", encoding="utf-8")
    path.chmod(0o640)

    with capture_logs() as logs:
        shared_state = parse_config(shared(password_file=str(path))).shared_state()

    assert shared_state is not None and shared_state.password == "pw-readable-by-all"
    assert [(e["log_level"], e["event"], e["path"]) for e in logs] == \
        [("warning", "password file is readable by other users; chmod 600 it", str(path))]
    assert "pw-readable-by-all" not in repr(logs)


@pytest.mark.parametrize(("text", "message"), [("", "is empty."), ("\n \n", "is empty."),
                                               (None, "cannot read ")])
def test_an_empty_or_missing_password_file_is_a_config_error_naming_the_key(tmp_path: Path, text: str | None,
                                                                             message: str) -> None:
    path = tmp_path / "db-password"
    if text is not None:
        private_file(path, text)
    source = tmp_path / "config.toml"
    config = parse_config(shared(password_file="db-password"), source)

    with pytest.raises(ConfigError) as caught:
        config.shared_state()

    assert str(caught.value).startswith(f"{source}: state.password_file: ")
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_shared_state_in_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKSYNC_DB_PASSWORD", "pw-of-the-file-config")
    path = tmp_path / "config.toml"
    path.write_text('[state]\nurl = "postgres://packsync@localhost/packsync"\npassword_env = "PACKSYNC_DB_PASSWORD"\n'
                    'site = "nas"\nlease_s = 30\n', encoding="utf-8")

    shared_state = load_config(path).shared_state()

    assert shared_state is not None
    assert (shared_state.url, shared_state.password, shared_state.site, shared_state.lease_s) == \
        ("postgresql+psycopg://packsync@localhost/packsync", "pw-of-the-file-config", "nas", 30.0)


def test_the_example_config_s_commented_shared_state_is_valid() -> None:
    """Its [state] keys uncommented (password_file left out: it is password_env's alternative) are a config."""
    text = (Path(__file__).parent.parent / "config.example.toml").read_text(encoding="utf-8")
    table = text.partition("\n[state]\n")[2].partition("\n[")[0]
    keys = [line.removeprefix("# ") for line in table.splitlines()
            if line.startswith("# ") and " = " in line and not line.startswith("# password_file")]

    config = parse_config(tomllib.loads("[state]\n" + "\n".join(keys)))

    assert [key.partition(" ")[0] for key in keys] == ["path", "url", "password_env", "site", "lease_s"]
    assert (config.state.url, config.state.site, config.state.lease_s) == \
        ("postgresql+psycopg://packsync@db.example.com:5432/packsync", "nas", 60.0)


def test_the_example_config_s_commented_tune_mapping_is_valid() -> None:
    """Its ``astria_tune`` mapping uncommented is a mapping of an Astria tune, read every ``astria_poll_s``."""
    text = (Path(__file__).parent.parent / "config.example.toml").read_text(encoding="utf-8")
    table = text.partition("\n# astria_tune = ")[2].partition("\n\n")[0]
    lines = ["astria_tune = " + table.splitlines()[0], *(line.removeprefix("# ") for line in table.splitlines()[1:])]

    config = parse_config(tomllib.loads("[[mappings]]\n" + "\n".join(lines)))

    (mapping,) = config.mappings
    assert (mapping.label, mapping.pack, config.poll_interval_s(mapping)) == ("astria-tune:690200", "Headshots", 600.0)


def test_cli_with_a_password_in_the_state_url_exits_2_without_showing_it(env: Env) -> None:
    env.write_config()
    text = env.config_path.read_text(encoding="utf-8")
    env.config_path.write_text(text.replace("[state]\n", f'[state]\nurl = "postgres://packsync:{PASSWORD}@db/ps"\n'),
                               encoding="utf-8")

    result = env.cli("-v", "run")

    assert result.returncode == ExitCode.USAGE
    assert result.stderr.strip() == f"packsync: {env.config_path}: state.url: holds a password, which belongs in the " \
        "environment or a file: remove it from the URL and name it with state.password_env or state.password_file."
    assert PASSWORD not in result.stdout + result.stderr
    assert env.sandbox.calls == {}


def test_each_shared_state_has_its_own_local_lock_beside_no_state_file(tmp_path: Path) -> None:
    """With ``[state] url`` and no ``path``, the lock and the daemon's socket are kept per database and site:
    two shared states on one machine (or one beside a state file of its own) never wait for each other."""
    def path(state: dict[str, str]) -> Path:
        data = {"state": state, "mappings": [{"path": "photos", "pack": "p"}]}
        return parse_config(data, tmp_path / "config.toml").state_path

    nas, laptop = path({"url": URL, "site": "nas"}), path({"url": URL, "site": "laptop"})
    other = path({"url": URL.replace("/packsync", "/other"), "site": "nas"})

    assert len({nas, laptop, other, default_state_path()}) == 4
    assert nas.parent == default_state_path().parent and nas == path({"url": URL, "site": "nas"})
    assert path({"url": URL, "site": "nas", "path": str(tmp_path / "s.db")}) == tmp_path / "s.db"


def test_no_bandwidth_limit_unless_one_is_set_and_the_transport_keeps_to_it() -> None:
    from packsync.remote.bandwidth import UNLIMITED, Limiter

    assert parse_config({}).genviral.bandwidth_limit == ""
    assert transport_for(parse_config({})).throttle is UNLIMITED
    assert transport_for(parse_config({"genviral": {"bandwidth_limit": "off"}})).throttle is UNLIMITED
    limited = transport_for(parse_config({"genviral": {"bandwidth_limit": "5M:100M"}})).throttle
    assert isinstance(limited, Limiter) and limited.rates() == (5 * 2**20, 100 * 2**20)


def test_bwlimit_is_over_the_config_s_limit() -> None:
    config = parse_config({"genviral": {"bandwidth_limit": "5M", "concurrency": 6}})

    assert with_bandwidth_limit(config, "off").genviral.bandwidth_limit == "off"
    assert with_bandwidth_limit(config, "off").genviral.concurrency == 6
    assert with_bandwidth_limit(config, None) is config


def test_how_often_each_mapping_s_source_is_read() -> None:
    """A source read through an API is read every ``[<api>] poll_interval_s`` unless its kind has an interval
    of its own; a folder is watched, and read whole every ``[daemon] rescan_interval_s``."""
    config = parse_config({"astria": {"poll_interval_s": 1800}, "daemon": {"rescan_interval_s": 7200},
                           "mappings": [{"astria_pack": 260, "pack": "A"}, {"path": "/photos", "pack": "B"}]})
    remote, folder = config.mappings

    assert remote.source is not None and remote.source.poll_s is None
    assert config.poll_interval_s(remote) == 1800
    assert config.poll_interval_s(folder) == 7200
    assert parse_config({"mappings": [{"astria_pack": 260, "pack": "A"}]}).poll_interval_s(remote) == 3600


def test_the_apis_a_config_reads_through_are_its_sources_apis_only() -> None:
    assert parse_config(one_mapping()).apis() == set()
    config = parse_config({"mappings": [{"astria_pack": 260, "pack": "A", "classes": ["woman"]}]})
    assert config.apis() == {"astria"}
    assert config.mappings[0].label == "astria:260" and config.api_table("astria") is config.astria


@pytest.mark.parametrize("workspace", ["ws_42", "9f1c-2b", "a"])
def test_an_astria_workspace_is_read(workspace: str) -> None:
    assert parse_config({"astria": {"workspace": workspace}}).astria.workspace == workspace
    assert parse_config({}).astria.workspace is None


@pytest.mark.parametrize("workspace", ["", "ws 42", "ws\t42", "ws\n42", "wś", "ws\x7f", 42])
def test_a_workspace_that_cannot_be_a_header_is_refused_naming_the_key(workspace: Any) -> None:
    message = config_error({"astria": {"workspace": workspace}})

    assert message.startswith("astria.workspace: ") and message.endswith(".") and "\n" not in message
