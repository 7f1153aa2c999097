"""Settings declared once: every field's flags, environment names, kinds and docs come from one declaration."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest

from v2server import cli
from v2server.cli import flag_table_markdown, option_values, with_flag_table
from v2server.settings import GROUPS, OPTIONS, Option, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "configuration.md"
KIND_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "path": Path}
#: fields no one flag sets: cli.py computes them from --model-dir/--model-name, --metrics-config, --trace-config
DERIVED = {"single_models", "latency_buckets_us", "trace", "workers"}


def test_the_flag_table_in_docs_is_current() -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    assert with_flag_table(text) == text, (
        "docs/configuration.md's flag table differs from v2server/settings.py: "
        "run `python scripts/update_flag_table.py` and commit the result"
    )


def test_the_flag_table_needs_its_markers() -> None:
    with pytest.raises(ValueError, match="flags:begin"):
        with_flag_table("# no table here\n")
    table = flag_table_markdown()
    for option in OPTIONS:
        assert f"`{option.flags[0]}" in table and f"`{option.env}`" in table
    for name in cli.IGNORED_TRITON_FLAGS:
        assert f"`--{name}`" in table


def test_every_field_is_declared_once() -> None:
    direct = {option.dest for option in OPTIONS if option.direct}
    fields = {name for name in Settings.__dataclass_fields__}
    assert fields - direct == DERIVED
    assert len(direct) == len([option for option in OPTIONS if option.direct])
    assert {option.group for option in OPTIONS} <= set(GROUPS)


def test_declared_defaults_are_the_settings_defaults() -> None:
    settings = Settings()
    for option in OPTIONS:
        if option.direct:
            assert option.default == getattr(settings, option.dest)
    values = option_values([], {})
    assert values == {option.dest: option.default for option in OPTIONS}


def test_kinds_match_the_field_types() -> None:
    hints = typing.get_type_hints(Settings)
    for option in OPTIONS:
        element = KIND_TYPES[option.kind]
        if not option.direct:
            continue
        hint = hints[option.dest]
        if option.repeatable:
            assert hint == tuple[element, ...], option.dest  # type: ignore[valid-type]
        elif option.choices:
            meant = {dict(option.synonyms).get(choice, choice) for choice in option.choices}
            assert hint is str or set(typing.get_args(hint)) == meant, option.dest
        elif option.kind == "path":
            assert hint == Path | None, option.dest
        else:
            assert hint is element, option.dest


def test_names_are_unique_and_environment_names_follow_the_primary_flag() -> None:
    flags = [flag for option in OPTIONS for flag in option.flags]
    envs = [name for option in OPTIONS for name in option.env_names]
    assert len(flags) == len(set(flags)) and len(envs) == len(set(envs))
    assert len({option.dest for option in OPTIONS}) == len(OPTIONS)
    for option in OPTIONS:
        assert option.env == "V2SERVER_" + option.flags[0].removeprefix("--").upper().replace("-", "_")
    assert {"--" + name for name in cli.IGNORED_TRITON_FLAGS}.isdisjoint(flags)


def _sample(option: Option) -> tuple[list[str], Any]:
    """Text for the option on a command line (one item per use) and the value it parses to, never the default."""
    if option.repeatable:
        texts = ["histogram_latency_buckets=1,2", "other=3"] if option.dest == "metrics_config" else ["/a", "/b"]
        return texts, tuple(KIND_TYPES[option.kind](text) for text in texts)
    if option.choices:
        synonyms = dict(option.synonyms)
        choice = next(c for c in option.choices if synonyms.get(c, c) != option.default)
        return [choice], synonyms.get(choice, choice)
    if option.kind == "bool":
        return ["false" if option.default else "true"], not option.default
    text = {"int": "7", "float": "2.5", "str": "abc", "path": "/x/y"}[option.kind]
    return [text], KIND_TYPES[option.kind](text)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.flags[0])
def test_every_flag_name_and_environment_name_sets_the_same_value(option: Option) -> None:
    texts, expected = _sample(option)
    assert expected != option.default
    for flag in option.flags:
        argv = [item for text in texts for item in (flag, text)] if option.repeatable else [f"{flag}={texts[0]}"]
        assert option_values(argv, {})[option.dest] == expected, flag
    for name in option.env_names:
        assert option_values([], {name: option.separator.join(texts)})[option.dest] == expected, name


def test_the_command_line_replaces_a_repeatable_flags_environment() -> None:
    env = {"V2SERVER_LOAD_MODEL": "a, b,", "V2SERVER_API_KEYS": "k1,k2"}
    assert option_values([], env)["load_models"] == ("a", "b")
    values = option_values(["--load-model", "c", "--api-key", "k3"], env)
    assert values["load_models"] == ("c",)
    assert values["api_keys"] == ("k3", "k1", "k2")  # keys add up: every configured key works


def test_both_environment_names_set_differently_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    same = {"V2SERVER_LOAD_MODEL": "a", "V2SERVER_LOAD_MODELS": "a"}
    assert option_values([], same)["load_models"] == ("a",)
    with pytest.raises(SystemExit):
        option_values([], {"V2SERVER_LOAD_MODEL": "a", "V2SERVER_LOAD_MODELS": "b"})
    assert "V2SERVER_LOAD_MODEL and V2SERVER_LOAD_MODELS are both set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("V2SERVER_MODEL_CONTROL_MODE", "auto", "V2SERVER_MODEL_CONTROL_MODE='auto': invalid choice: 'auto'"),
        ("V2SERVER_ALLOW_HTTP", "maybe", "V2SERVER_ALLOW_HTTP='maybe': expected true or false, got 'maybe'"),
        ("V2SERVER_REPOSITORY_POLL_SECS", "soon", "V2SERVER_REPOSITORY_POLL_SECS='soon'"),
    ],
)
def test_bad_environment_values_are_errors(name: str, raw: str, message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        option_values([], {name: raw})
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_every_environment_variable(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # so that argparse does not break the longest name
    with pytest.raises(SystemExit):
        option_values(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS:
        for name in option.env_names:
            assert name in text
