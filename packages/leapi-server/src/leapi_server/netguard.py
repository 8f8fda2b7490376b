"""SSRF policy: which addresses the server may connect to for sources and webhooks.

The check happens where the socket is opened (an httpcore network backend): the host is resolved once,
every resolved address is checked, and the connection goes to a checked address. So a DNS answer
cannot change between check and use (rebinding), and every redirect hop is checked the same way.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud metadata endpoints: refused even with ``--allow-private-sources`` (only an explicit
#: ``--allow-source-network`` lets them through). Credentials live there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "169.254.169.123")
)
METADATA_REASON = "a cloud metadata address"


class BlockedAddressError(Exception):
    """The destination resolves to an address the policy refuses; the message is user-facing."""


@dataclass(frozen=True)
class AddressPolicy:
    """``allow_private``: loopback/private/link-local allowed (local use); ``allowed_networks``: CIDRs
    always allowed."""

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()

    def _networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or ``None`` when it is allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in self._networks()):
            return None
        if address in METADATA_ADDRESSES:
            return METADATA_REASON
        if address.is_global and not address.is_multicast:
            return None
        if self.allow_private:
            return None
        for label, flag in (  # most specific first: 0.0.0.0 and 127.0.0.1 are also "private"
            ("an unspecified", address.is_unspecified),
            ("a loopback", address.is_loopback),
            ("a link-local", address.is_link_local),
            ("a multicast", address.is_multicast),
            ("a private", address.is_private),
        ):
            if flag:
                return f"{label} address"
        return "a non-public address"

    def check_literal_host(self, host: str) -> None:
        """Refuse a URL whose host is a literal refused IP (checked at submit; names are checked at
        connect time, after resolution)."""
        address = literal_address(host)
        if address is None:
            return
        reason = self.refusal(address)
        if reason is not None:
            spelled = host if str(address) == host.strip("[]") else f"{host} ({address})"
            raise BlockedAddressError(f"{spelled} is {reason}{_how_to_allow(reason)}")

    def check_resolved(self, host: str, addresses: Iterable[str]) -> list[str]:
        """Every resolved address must be allowed (one bad answer refuses the host)."""
        result = []
        for raw in addresses:
            address = ipaddress.ip_address(raw.split("%", 1)[0])
            reason = self.refusal(address)
            if reason is not None:
                raise BlockedAddressError(f"{host} resolves to {address}, {reason}{_how_to_allow(reason)}")
            result.append(raw)
        if not result:
            raise BlockedAddressError(f"{host} does not resolve to any address")
        return result


def _how_to_allow(reason: str) -> str:
    """The refusal's remedy, naming the server flag that lifts it (the one who reads it may only see a
    failed image in a DAG's result table, far from the server's ``--help``)."""
    if reason == METADATA_REASON:
        return (
            " (refused on this server even with --allow-private-sources; "
            "only --allow-source-network CIDR naming it lets it through)"
        )
    return (
        " (private addresses are not allowed on this server: start leapi-server with "
        "--allow-private-sources for local use, or --allow-source-network CIDR for one network)"
    )


_NUMERIC_HOST = re.compile(r"^[0-9a-fA-FxX.]+$")
_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")


def literal_address(host: str) -> IPAddress | None:
    """The IP address a host spells, in any form the system resolver reads as an address: besides dotted
    quads and IPv6, the legacy IPv4 forms ``2130706433``, ``0x7f.1``, ``0177.0.0.1`` and ``127.1``
    (``inet_aton``), which would otherwise pass as names and only be caught at connect time."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _host_problem(host: str) -> str:
    """Why ``host`` (urlsplit's lower-cased hostname) is not a usable host, or ''."""
    if literal_address(host) is not None:
        return ""
    try:
        ascii_host = host.encode("idna").decode("ascii")  # internationalised names are fine
    except UnicodeError:
        return "has an invalid host name"
    if not _HOST_NAME.match(ascii_host):
        return "has an invalid host name"
    return ""


def check_http_url(url: str, policy: AddressPolicy) -> str:
    """Validate an http(s) URL with a host, and refuse literal blocked IPs. Returns a reason or ''."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http or https URL"
    if not host:
        return "has no host"
    problem = _host_problem(host)
    if problem:
        return problem
    try:
        policy.check_literal_host(host)
    except BlockedAddressError as exc:
        return f"is refused: {exc}"
    return ""


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedSyncBackend(httpcore.SyncBackend):
    """Blocking network backend that resolves, checks and connects to a checked address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.policy.check_resolved(host, _resolve(host, port))
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


class GuardedAsyncBackend(httpcore.AnyIOBackend):
    """Async counterpart of :class:`GuardedSyncBackend` (webhook deliveries)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = self.policy.check_resolved(host, await anyio.to_thread.run_sync(_resolve, host, port))
        last: Exception | None = None
        for address in addresses:
            try:
                return await super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last
