"""Whether a tenant-supplied URL may be dialled (SSRF rules), and to which addresses.

`check_url()` refuses, with a reason a tenant can act on: schemes other than http and https,
credentials in the URL, names that mean this machine or a cloud's metadata service, and any
address that is not globally routable (loopback, private, link-local, carrier-grade NAT, reserved,
multicast), including IPv4 written in decimal, hex, octal or short form, IPv4-mapped IPv6, and
IPv4 embedded in NAT64 or 6to4 addresses. A name is resolved and every address it resolves to must
pass. OUTBOUND_ALLOWED_NETWORKS lets an operator allow some networks (an internal MCP server).

The result carries the addresses that passed: a client connects to one of those, not to whatever a
second lookup returns (DNS rebinding), and checks again on every redirect.
"""

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

ALLOWED_SCHEMES = ("http", "https")
BLOCKED_NAMES = {
    "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback",
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
}  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$")
_MAX_URL = 2048


class OutboundURLRefused(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple  # of ipaddress.IPv4Address | IPv6Address, every one allowed


def _embedded_ipv4(address):
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), if any."""
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _allowed_networks():
    return settings.OUTBOUND_ALLOWED_NETWORKS


def check_address(address) -> None:
    """Raise OutboundURLRefused unless the address may be dialled."""
    candidates = [address] + [a for a in [_embedded_ipv4(address)] if a is not None]
    if any(
        candidate in network
        for candidate in candidates
        for network in _allowed_networks()
        if candidate.version == network.version
    ):
        return
    for candidate in candidates:
        if not candidate.is_global or candidate.is_multicast:
            raise OutboundURLRefused(
                "private_address",
                f"The URL points to {candidate}, which is not a public address (loopback, private, "
                "link-local, carrier-grade NAT, metadata or reserved). An operator can allow it with "
                "OUTBOUND_ALLOWED_NETWORKS.",
            )


def _literal_address(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # What inet_aton accepts, a C resolver would dial: 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise OutboundURLRefused("invalid_host", "The URL's host is not a valid address or name.") from None
    return None


def _resolve(host: str, port: int, resolver) -> tuple:
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OutboundURLRefused("unresolvable", f"The host {host!r} could not be resolved.") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundURLRefused("unresolvable", f"The host {host!r} could not be resolved.")
    return tuple(addresses)


def _split(url: str):
    if not isinstance(url, str) or not url or len(url) > _MAX_URL:
        raise OutboundURLRefused("invalid_url", f"A URL of at most {_MAX_URL} characters is needed.")
    if any(ord(char) < 0x21 or char == "\\" for char in url):
        raise OutboundURLRefused("invalid_url", "The URL contains spaces, control characters or backslashes.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundURLRefused("invalid_url", "The URL is not well formed.") from None
    return parts, port


def check_url(url: str, *, resolver=socket.getaddrinfo) -> CheckedURL:
    """Check a URL before it is saved and again before it is dialled. Raises OutboundURLRefused."""
    parts, port = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise OutboundURLRefused("scheme_not_allowed", "Only http and https URLs are allowed.")
    if "@" in parts.netloc:
        raise OutboundURLRefused(
            "credentials_in_url", "Credentials do not belong in the URL; use the authentication fields."
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise OutboundURLRefused("invalid_url", "The URL has no host.")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise OutboundURLRefused("invalid_host", "The URL's host is not a valid name.") from None
    if host in BLOCKED_NAMES or host.endswith(".localhost"):
        raise OutboundURLRefused("private_address", f"The host {host!r} names this machine or a metadata service.")
    port = port or (443 if scheme == "https" else 80)
    literal = _literal_address(host)
    addresses = (literal,) if literal is not None else _resolve(host, port, resolver)
    for address in addresses:
        check_address(address)
    return CheckedURL(url=url, scheme=scheme, host=host, port=port, addresses=addresses)
