"""The kinds of source (``sources/kinds.py``): each remote kind is the struct of its own mapping keys, and a
label's spelling is read from that table alone."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from packsync.config import FOLDER_ONLY, SITE_RULE, is_site, parse_config
from packsync.errors import ConfigError
from packsync.sources.astria import AstriaPackSettings
from packsync.sources.kinds import KEYS, KINDS, kind_of, owner_kind, settings_for


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_each_kind_is_tagged_and_labelled_by_its_name_and_owns_its_keys(kind: Any) -> None:
    assert kind.__struct_config__.tag == kind.name and kind.__struct_config__.tag_field == "kind"
    assert kind.id_key in kind.__struct_fields__ and kind.noun.startswith(("a ", "an "))
    assert {key for key, owner in KEYS.items() if owner is kind} == set(kind.__struct_fields__)
    settings = msgspec.convert({kind.id_key: 12}, kind)
    assert (settings.id, settings.label) == (12, f"{kind.name}:12")
    assert kind_of(settings.label) == owner_kind(settings.label) == owner_kind(f"nas:{settings.label}") == kind.name
    assert settings_for(settings.label) == settings
    assert not (set(kind.__struct_fields__) & {"path", "pack", "pack_id", "source", *FOLDER_ONLY})


def test_no_key_is_two_kinds_and_no_kind_is_a_folder() -> None:
    assert "folder" not in KINDS
    assert sum(len(kind.__struct_fields__) for kind in KINDS.values()) == len(KEYS)


@pytest.mark.parametrize(("label", "kind"), [
    ("/srv/brand", "folder"), ("/srv/astria:12", "folder"), ("astria:260", "astria"),
    ("3f2a-genviral-pack-id", "folder"), ("nokind:12", "folder"),
])
def test_kind_of_reads_the_prefix_of_a_label_from_the_table(label: str, kind: str) -> None:
    assert kind_of(label) == kind


@pytest.mark.parametrize(("owner", "kind"), [
    ("/srv/brand", "folder"), ("nas:/srv/brand", "folder"), ("astria:12", "astria"), ("nas:astria:12", "astria"),
    ("laptop.local:astria:12", "astria"),
])
def test_owner_kind_reads_past_one_site_qualifier(owner: str, kind: str) -> None:
    assert owner_kind(owner) == kind


def test_settings_for_a_pull_names_the_kind_and_takes_its_options_only() -> None:
    assert settings_for("astria:260", classes=["woman"]) == AstriaPackSettings(astria_pack=260, classes=["woman"])
    assert settings_for("astria:260", classes=None) == AstriaPackSettings(astria_pack=260)


@pytest.mark.parametrize(("label", "options", "message"), [
    ("genviral:abc", {}, "'genviral:abc' names no kind of source packsync reads (it knows astria"),
    ("astria:abc", {}, "'astria:abc': an Astria pack's id is a whole number from 1, not 'abc'"),
    ("astria:0", {}, "'astria:0': an Astria pack's id is a whole number from 1, not '0'"),
    ("astria:٣", {}, "'astria:٣': an Astria pack's id is a whole number from 1"),
    ("astria:260", {"colour": "red"}, "colour: an Astria pack takes no such option"),
    ("astria:260", {"astria_pack": 3}, "astria_pack: an Astria pack takes no such option"),
    ("astria:260", {"classes": []}, "classes: expected `array` of length >= 1"),
])
def test_settings_for_a_bad_pull_is_one_sentence(label: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        settings_for(label, **options)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_no_site_is_named_as_a_kind_of_source() -> None:
    """A site's name qualifies labels (``nas:astria:12``): one named as a kind would make ``astria:12`` ambiguous."""
    assert SITE_RULE.startswith("a site's name is 1 to 63 letters, digits, '.', '_' or '-', and not 'astria'")
    for name in KINDS:
        assert not is_site(name) and repr(name) in SITE_RULE
    assert is_site("nas") and is_site("astria2")


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
@pytest.mark.parametrize("key", FOLDER_ONLY)
def test_a_folder_s_key_is_refused_on_every_remote_kind(kind: Any, key: str) -> None:
    assert error({"mappings": [{kind.id_key: 12, "pack": "p", key: True}]}) == \
        f"mappings[0].{key}: applies to folders only, not to {kind.noun}."


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_a_kind_s_id_with_a_path_or_its_options_alone_are_refused_by_name(kind: Any) -> None:
    assert error({"mappings": [{"path": "/p", kind.id_key: 12, "pack": "p"}]}) == \
        f"mappings[0].{kind.id_key}: give path or {kind.id_key}, not both."
    for option in set(kind.__struct_fields__) - {kind.id_key}:
        assert error({"mappings": [{"path": "/p", option: ["x"], "pack": "p"}]}) == \
            f"mappings[0].{option}: applies to {kind.noun} only."
        assert error({"mappings": [{option: ["x"], "pack": "p"}]}).startswith(
            f"mappings[0].{option}: applies to {kind.noun} only, and no {kind.id_key} is given")


PAIRS = [(a, b) for a in KINDS.values() for b in KINDS.values() if a is not b]


@pytest.mark.parametrize(("kind", "other"), PAIRS, ids=[f"{a.name}+{b.name}" for a, b in PAIRS])
def test_keys_of_two_kinds_in_one_mapping_are_refused_naming_the_stray_key(kind: Any, other: Any) -> None:
    assert error({"mappings": [{kind.id_key: 12, other.id_key: 13, "pack": "p"}]}) == \
        f"mappings[0].{other.id_key}: give {kind.id_key} or {other.id_key}, not both."
    for option in set(other.__struct_fields__) - {other.id_key}:
        assert error({"mappings": [{kind.id_key: 12, option: "x", "pack": "p"}]}) == \
            f"mappings[0].{option}: applies to {other.noun} only, not to {kind.noun}."


@pytest.mark.skipif("astria-tune" not in KINDS, reason="the Astria tune kind joins the union at integration")
def test_a_tune_s_prompts_on_an_astria_pack_are_refused() -> None:
    assert error({"mappings": [{"astria_pack": 260, "prompts": "headshot", "pack": "p"}]}) == \
        "mappings[0].prompts: applies to an Astria tune only, not to an Astria pack."


def test_the_lifted_source_is_never_a_key_of_the_file() -> None:
    assert error({"mappings": [{"path": "/p", "pack": "p", "source": {"kind": "astria", "astria_pack": 1}}]}) == \
        "mappings[0].source: unknown key."
