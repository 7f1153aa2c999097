"""Webhook target rules (SSRF): refused at submit and again on the addresses a delivery connects to."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from v2server.jobs.targets import PolicyResolver, TargetPolicy, TargetRefused, redact

OPEN = TargetPolicy()
LOCAL = TargetPolicy.from_entries(["127.0.0.1", "hooks.internal", "10.1.0.0/16"])


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("169.254.169.254", "link-local"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("::ffff:169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_always_refused_even_when_allowed(address: str, words: str) -> None:
    everything = TargetPolicy.from_entries(["0.0.0.0/0", "::/0", "h"])
    for policy in (OPEN, LOCAL, everything):
        with pytest.raises(TargetRefused, match=words):
            policy.check_address("h", address)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.1.1", "172.16.0.1", "::1", "fc00::1", "100.64.0.1"])
def test_private_and_loopback_need_webhook_allow(address: str) -> None:
    with pytest.raises(TargetRefused, match="--webhook-allow"):
        OPEN.check_address("example.test", address)


def test_public_addresses_pass_without_an_allow_list_and_only_listed_ones_with_it() -> None:
    OPEN.check_address("example.com", "93.184.216.34")
    OPEN.check_address("example.com", "2606:2800:220:1:248:1893:25c8:1946")
    LOCAL.check_address("127.0.0.1", "127.0.0.1")
    LOCAL.check_address("x", "10.1.2.3")  # inside 10.1.0.0/16
    LOCAL.check_address("hooks.internal", "10.9.9.9")  # the name is allowed, whatever it resolves to
    with pytest.raises(TargetRefused, match="not allowed by --webhook-allow"):
        LOCAL.check_address("example.com", "93.184.216.34")
    with pytest.raises(TargetRefused, match="not allowed"):
        LOCAL.check_address("x", "10.2.0.1")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://127.0.0.1/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http:///nohost", "no host"),
        ("http://127.0.0.1:99999/", "not a URL"),
    ],
)
def test_urls_that_are_not_http_targets(url: str, words: str) -> None:
    with pytest.raises(TargetRefused, match=words):
        LOCAL.parse(url)


def test_metadata_names_are_refused_before_resolution() -> None:
    for name in ("metadata.google.internal", "METADATA.google.internal.", "metadata"):
        with pytest.raises(TargetRefused, match="metadata"):
            OPEN.check_name(name)


def _fake_getaddrinfo(answers: dict[str, list[str]]) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    return getaddrinfo


def test_submit_check_resolves_and_refuses_a_name_pointing_at_link_local(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"evil.example": ["93.184.216.34", "169.254.169.254"], "good.example": ["93.184.216.34"]}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "getaddrinfo", _fake_getaddrinfo(answers))
        await OPEN.check("https://good.example/hook")
        with pytest.raises(TargetRefused, match="169.254.169.254, a link-local"):
            await OPEN.check("https://evil.example/hook")
        with pytest.raises(TargetRefused, match="cannot be resolved"):
            await OPEN.check("https://nowhere.example/hook")
        with pytest.raises(TargetRefused, match="metadata"):
            await OPEN.check("http://metadata.google.internal/computeMetadata/v1/")

    asyncio.run(main())


def test_the_delivery_resolver_checks_the_addresses_it_returns() -> None:
    async def main() -> None:
        refusing = PolicyResolver(policy=OPEN)
        with pytest.raises(TargetRefused, match="not a public address"):
            await refusing.resolve("localhost", 80)
        with pytest.raises(TargetRefused, match="link-local"):
            await refusing.resolve("169.254.169.254", 80)
        refusing.close()
        allowing = PolicyResolver(policy=TargetPolicy.from_entries(["127.0.0.1"]))
        found = await allowing.resolve("127.0.0.1", 8080)
        assert found[0][1][0] == "127.0.0.1"
        allowing.close()

    asyncio.run(main())


def test_messages_never_show_a_password() -> None:
    assert redact("https://user:secret@example.com/x") == "https://user:***@example.com/x"
    assert redact("https://example.com/x") == "https://example.com/x"
    with pytest.raises(TargetRefused) as refused:
        LOCAL.parse("ftp://user:secret@example.com/")
    assert "secret" not in refused.value.message
