"""API keys: where they come from (flags, environment, file) and the one check both transports apply."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from v2server._proto import grpc_service_pb2 as pb
from v2server.auth import ENV_KEYS, OPEN_RPCS, ApiKeys, read_keys
from v2server.errors import Unauthenticated

MISSING = "missing API key: send 'Authorization: Bearer <key>'"
INVALID = "invalid API key"


# -- check ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "BeArEr s3cret",
        "s3cret",  # the bare key
        "  Bearer   s3cret  ",
        "\ts3cret\n",
        "Bearer other-key",  # any of several keys
        "other-key",
    ],
)
def test_a_configured_key_is_accepted(authorization: str) -> None:
    ApiKeys(["s3cret", "other-key"]).check(authorization)


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, MISSING),
        ("", MISSING),
        ("wrong", INVALID),
        ("Bearer wrong", INVALID),
        ("Bearer", INVALID),
        ("Bearer ", INVALID),
        ("   ", INVALID),
        ("Basic s3cret", INVALID),
        ("Bearer s3cret2", INVALID),  # a key's prefix or extension is not the key
        ("Bearer s3cre", INVALID),
        ("Bearer S3CRET", INVALID),  # keys are case-sensitive, the scheme is not
        ("Bearer\ts3cret", INVALID),  # the scheme is separated by a space
        ("Bearer Bearer s3cret", INVALID),
        ("Bearer s3cret other-key", INVALID),
        ("Bearer s\u00e9cret", INVALID),  # non-ASCII is compared as UTF-8, not refused with a crash
    ],
)
def test_anything_else_is_unauthenticated(authorization: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        ApiKeys(["s3cret", "other-key"]).check(authorization)
    assert info.value.message == message


@pytest.mark.parametrize("authorization", [None, "", "anything", "Bearer whatever"])
def test_without_keys_every_request_passes(authorization: str | None) -> None:
    keys = ApiKeys([])
    assert not keys.enabled
    keys.check(authorization)
    assert not ApiKeys(read_keys(environ={})).enabled


def test_enabled_with_any_key() -> None:
    assert ApiKeys(["k"]).enabled


def test_announce_says_whether_the_server_is_open_and_never_logs_a_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="v2server.auth"):
        ApiKeys(["s3cret", "other-key"]).announce()
        ApiKeys([]).announce()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "API keys required on every route but health (2 key(s) configured)"),
        (logging.WARNING, "no API key configured: the server is open to anyone who can reach it"),
    ]
    assert "s3cret" not in caplog.text and "other-key" not in caplog.text


def test_the_open_rpcs_are_the_health_probes_and_exist() -> None:
    inference = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    methods = {f"/{service.full_name}/{method.name}" for service in (inference, health) for method in service.methods}
    assert OPEN_RPCS <= methods
    names = {path.rsplit("/", 1)[1] for path in OPEN_RPCS}
    assert names == {"ServerLive", "ServerReady", "ModelReady", "Check", "Watch"}


# -- read_keys ------------------------------------------------------------------------------------------------


def test_keys_from_flags_are_stripped_and_blanks_dropped() -> None:
    assert read_keys([" a ", "", "b", "   "], environ={}) == ("a", "b")


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        ("a,b,c", ("a", "b", "c")),
        (" a , b ,, c ,", ("a", "b", "c")),
        ("single", ("single",)),
        ("", ()),
        (",,,", ()),
    ],
)
def test_keys_from_the_environment_are_comma_separated(value: str, keys: tuple[str, ...]) -> None:
    assert read_keys(environ={ENV_KEYS: value}) == keys


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KEYS, "from-env")
    assert ENV_KEYS == "V2SERVER_API_KEYS"
    assert read_keys() == ("from-env",)
    monkeypatch.delenv(ENV_KEYS)
    assert read_keys() == ()


def test_keys_from_a_file_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        "# API keys, one a line\n\nfirst\n   second   \n\n  # indented comment\nthird # trailing\n\t\n"
    )
    assert read_keys(keys_file=keys_file, environ={}) == ("first", "second", "third")


def test_every_source_together_in_order_without_duplicates(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("e\nb\n# a\nf\ne\n")
    keys = read_keys(["a", "b", "a"], keys_file, {ENV_KEYS: "c,b,d,c"})
    assert keys == ("a", "b", "c", "d", "e", "f")  # flags, then environment, then file; first sighting wins
    checker = ApiKeys(keys)
    for key in keys:
        checker.check(f"Bearer {key}")


def test_an_empty_file_gives_no_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# nothing yet\n\n")
    assert read_keys(keys_file=keys_file, environ={}) == ()
