"""Limits count clients: IPv4 addresses, and IPv6 peers by their /64."""

from __future__ import annotations

import pytest

from fanfare_grpc.interceptors.authentication import peer_host


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:203.0.113.7:5678", "203.0.113.7"),
        ("ipv6:[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff:ffff:ffff:ffff]:1", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:3::1]:443", "2001:db8:1:3::/64"),
        ("ipv6:[::ffff:203.0.113.7]:5678", "203.0.113.7"),
        ("ipv6:[::1]:50051", "::/64"),
        ("ipv6:[fe80::1%eth0]:1", "fe80::/64"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_peers_count_as_their_client_network(peer: str, client: str) -> None:
    assert peer_host(peer) == client


def test_one_ipv6_allocation_is_one_client() -> None:
    # An attacker with a /64 holds 2^64 addresses: they are one client to every limit.
    clients = {peer_host(f"ipv6:[2001:db8:aa:bb::{index:x}]:1") for index in range(1, 500)}
    assert clients == {"2001:db8:aa:bb::/64"}
