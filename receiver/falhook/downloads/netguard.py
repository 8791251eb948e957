"""Which addresses a file download may reach (SSRF guard): pure verdicts, plus a connector
that resolves a host itself, judges every address, and connects only to one it judged (no
second lookup, so DNS rebinding cannot swap the address in between)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = {
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
}
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


class RefusedAddress(OSError):
    """A download refused by the address policy (permanent); `address` is the address
    refused, None when the host resolved to none."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> str | None:
    """Why an address is not public, or None when it is."""
    if ip in _METADATA:
        return "cloud metadata"
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = classify(inner)
        return f"{reason}, embedded in IPv6" if reason else None
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared address space", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED),
        ("unique-local", isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL),
        ("reserved", ip.is_reserved),  # before private: Python counts 240/4 as private too
        ("private", ip.is_private),
        ("not globally routable", not ip.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


@dataclass(frozen=True)
class AddressGuard:
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def check(self, ip: IPAddress | str) -> str | None:
        """None when a download may connect to ip, else the reason it may not."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if self.allow_private or any(addr in net for net in self.allowed_networks):
            return None
        return classify(addr)

    def judge(self, host: str, addresses: Iterable[str]) -> list[str]:
        """All addresses, or RefusedAddress naming the first refused one."""
        result = list(addresses)
        for address in result:
            reason = self.check(address.split("%", 1)[0])
            if reason is not None:
                raise RefusedAddress(
                    f"refused address {address} ({reason}) for host {host}", address=address
                )
        if not result:
            raise RefusedAddress(f"host {host} resolves to no address")
        return result


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, in the system resolver's order (OSError when it has none)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    seen: list[str] = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(str(sockaddr[0]))
    return seen


def connect_guarded(
    host: str, port: int, timeout: float | None, guard: AddressGuard, resolver: Resolver = resolve
) -> socket.socket:
    """A TCP connection to host:port through an address the guard allowed.

    The host is resolved once here, every address is judged (RefusedAddress names the
    first refused one), and the connection goes to a judged address: there is no second
    lookup, so DNS rebinding cannot swap the address in between. The caller keeps using the
    host name for the Host header, SNI and the certificate check. OSError when the name does
    not resolve or no address answers (both worth a retry).
    """
    addresses = guard.judge(host, resolver(host, port))
    last: OSError | None = None
    for address in addresses:  # in the resolver's order, as a resolver-aware client would
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            last = exc
    assert last is not None
    raise last
