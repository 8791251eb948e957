"""Which addresses downloads may reach: the verdict for each kind, IPv4 and IPv6."""

from __future__ import annotations

import ipaddress

import pytest

from falhook.downloads.netguard import AddressGuard, RefusedAddress, classify

REFUSED = {
    "127.0.0.1": "loopback",
    "127.0.0.2": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "fc00::1": "unique-local",
    "fd12:3456::1": "unique-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "100.64.0.1": "shared address space",
    "240.0.0.1": "reserved",
    "169.254.169.254": "cloud metadata",
    "fd00:ec2::254": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "::ffff:127.0.0.1": "loopback, embedded in IPv6",
    "::ffff:10.0.0.1": "private, embedded in IPv6",
    "64:ff9b::a00:1": "private, embedded in IPv6",
    "2002:7f00:1::": "loopback, embedded in IPv6",
}
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "34.120.1.1"]


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_non_public_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    assert classify(ipaddress.ip_address(address)) == reason
    assert AddressGuard().check(address) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert AddressGuard().check(address) is None


def test_allow_private_hosts_allows_everything() -> None:
    assert all(AddressGuard(allow_private=True).check(a) is None for a in REFUSED)


def test_allowed_networks_open_only_their_range() -> None:
    guard = AddressGuard(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    assert guard.check("10.9.9.9") is None
    assert guard.check("192.168.0.1") == "private"


def test_a_host_is_refused_when_any_of_its_addresses_is() -> None:
    with pytest.raises(RefusedAddress, match=r"refused address 10\.0\.0\.1 \(private\) for host h"):
        AddressGuard().judge("h", ["8.8.8.8", "10.0.0.1"])
    assert AddressGuard().judge("h", ["8.8.8.8", "1.1.1.1"]) == ["8.8.8.8", "1.1.1.1"]
    with pytest.raises(RefusedAddress, match="no address"):
        AddressGuard().judge("h", [])
