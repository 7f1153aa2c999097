"""Which webhook URLs the server may POST to (server-side request forgery rules).

A webhook URL is a client's instruction to make a request from inside the server's network, so each one is
checked twice: when the job is submitted (400 naming the rule) and again as each delivery connects, on the
very addresses the connection will use (:class:`PolicyResolver` is the HTTP client's resolver), so a name
that resolves differently later (DNS rebinding) is still refused.

- Only ``http`` and ``https``; a host is required.
- Always refused, whatever ``--webhook-allow`` says: link-local addresses (169.254.0.0/16, fe80::/10), cloud
  metadata addresses and names (169.254.169.254, fd00:ec2::254, 100.100.100.200, 192.0.0.192,
  metadata.google.internal, ...), unspecified (0.0.0.0, ::), multicast and broadcast addresses.
- Without ``--webhook-allow``: public (globally routable) addresses only; loopback, private (10/8,
  172.16/12, 192.168/16, fc00::/7), shared and reserved addresses are refused.
- With ``--webhook-allow`` (host names, addresses, CIDRs): only targets it names. A host-name entry allows that
  name (exactly, case-insensitive) whatever it resolves to, except the always-refused addresses; an address
  or network entry allows the addresses inside it. Every address a name resolves to must be allowed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import tornado.netutil

from v2server.errors import InvalidRequest

__all__ = ["PolicyResolver", "TargetPolicy", "TargetRefused", "redact"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALWAYS_REFUSED: tuple[tuple[_Network, str], ...] = tuple(
    (ipaddress.ip_network(network), reason) for network, reason in (
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
        ("fd00:ec2::254/128", "a cloud metadata address"),
        ("100.100.100.200/32", "a cloud metadata address"),
        ("192.0.0.192/32", "a cloud metadata address"),
        ("0.0.0.0/8", "an unspecified address"),
        ("::/128", "an unspecified address"),
        ("224.0.0.0/4", "a multicast address"),
        ("ff00::/8", "a multicast address"),
        ("255.255.255.255/32", "a broadcast address"),
    )
)

#: host names of cloud metadata services (169.254.169.254 and the like behind a name)
_METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.com", "metadata.platformequinix.com",
})


class TargetRefused(InvalidRequest):
    """A webhook URL the rules refuse (400 at submit; a delivery that fails at once, not retried)."""


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """The rules, with ``--webhook-allow``'s entries (empty: public addresses only)."""

    names: frozenset[str] = frozenset()
    networks: tuple[_Network, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TargetPolicy:
        names: set[str] = set()
        networks: list[_Network] = []
        for entry in (entry.strip() for entry in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    @property
    def restricted(self) -> bool:
        return bool(self.names or self.networks)

    def parse(self, url: str) -> tuple[str, int]:
        """The host and port of a webhook URL, or ``TargetRefused``."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise TargetRefused(f"response_webhook '{redact(url)}' is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise TargetRefused(f"response_webhook '{redact(url)}': the URL must start with http:// or https://")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise TargetRefused(f"response_webhook '{redact(url)}' has no host")
        return host, port or (443 if parts.scheme == "https" else 80)

    def check_name(self, host: str) -> None:
        """Refuse a cloud metadata host name, before it is resolved."""
        if host.lower().rstrip(".") in _METADATA_NAMES:
            raise TargetRefused(f"webhook host '{host}' is a cloud metadata service, which is always refused")

    def check_address(self, host: str, address: str) -> None:
        """Refuse ``address`` (one that ``host`` resolved to) unless the rules allow it."""
        ip: _Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network, reason in _ALWAYS_REFUSED:
            if ip.version == network.version and ip in network:
                raise TargetRefused(f"webhook host '{host}' is {ip}, {reason}, which is always refused")
        if self.restricted:
            if host.lower().rstrip(".") in self.names:
                return
            if any(ip.version == network.version and ip in network for network in self.networks):
                return
            raise TargetRefused(f"webhook host '{host}' ({ip}) is not allowed by --webhook-allow")
        if not ip.is_global:
            raise TargetRefused(
                f"webhook host '{host}' is {ip}, not a public address: allow it with --webhook-allow"
            )

    async def check(self, url: str) -> None:
        """The submit-time check: parse, refuse by name, resolve, refuse by address."""
        host, port = self.parse(url)
        self.check_name(host)
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise TargetRefused(f"webhook host '{host}' cannot be resolved: {exc}") from None
        for _family, _type, _proto, _name, sockaddr in found:
            self.check_address(host, str(sockaddr[0]))


class PolicyResolver(tornado.netutil.Resolver):
    """The webhook client's resolver: the system's answer, each address checked against the policy before the
    client connects to it (so the addresses checked are the addresses used)."""

    def initialize(self, policy: TargetPolicy) -> None:  # type: ignore[override]
        self._policy = policy
        self._resolver = tornado.netutil.DefaultLoopResolver()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[Any]:
        self._policy.check_name(host)
        found = await self._resolver.resolve(host, port, family)
        for _family, address in found:
            self._policy.check_address(host, str(address[0]))
        return found

    def close(self) -> None:
        self._resolver.close()


def redact(url: str) -> str:
    """``url`` without a password (``user:pass@`` becomes ``user:***@``), for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))
