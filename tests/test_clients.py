"""Client addresses: forwarding headers count only from trusted proxies."""

from __future__ import annotations

import pytest

from quaylock.policy.clients import UNKNOWN, ClientAddresses, networks

TRUSTED = networks(["10.0.0.0/8", "2001:db8:ffff::/48"])
PROXIES = ClientAddresses(TRUSTED)  # X-Forwarded-For, the default
RFC_PROXIES = ClientAddresses(TRUSTED, "forwarded")


@pytest.mark.parametrize(
    "peer, headers, client",
    [
        # No trusted proxy in the way: the headers are the client's own words.
        ("192.0.2.7", {"x-forwarded-for": "198.51.100.1"}, "192.0.2.7"),
        ("192.0.2.7", {"forwarded": "for=198.51.100.1"}, "192.0.2.7"),
        # One trusted proxy: the address it saw.
        ("10.1.1.1", {"x-forwarded-for": "198.51.100.1"}, "198.51.100.1"),
        # The client wrote its own X-Forwarded-For; the proxy appended the
        # real address: only the rightmost untrusted entry counts.
        ("10.1.1.1", {"x-forwarded-for": "6.6.6.6, 198.51.100.1"}, "198.51.100.1"),
        # Two trusted proxies in a row.
        ("10.1.1.1", {"x-forwarded-for": "198.51.100.1, 10.2.2.2"}, "198.51.100.1"),
        # Garbage where an address should be: nothing left of it is believed,
        # and the client is not taken for the proxy.
        ("10.1.1.1", {"x-forwarded-for": "198.51.100.1, unknown"}, UNKNOWN),
        # The client's own Forwarded header is not what this proxy sets.
        (
            "10.1.1.1",
            {"x-forwarded-for": "198.51.100.1", "forwarded": "for=127.0.0.1"},
            "198.51.100.1",
        ),  # fmt: skip
        # A trusted proxy that forwarded nothing.
        ("10.1.1.1", {}, "10.1.1.1"),
        # IPv4 seen as IPv4-mapped IPv6 is still the trusted proxy.
        ("::ffff:10.1.1.1", {"x-forwarded-for": "198.51.100.1"}, "198.51.100.1"),
        ("2001:db8:ffff::1", {"x-forwarded-for": "2001:db8:1::9"}, "2001:db8:1::9"),
    ],
)
def test_the_client_is_the_nearest_untrusted_hop(peer, headers, client):
    assert PROXIES.resolve(peer, headers) == client


def test_without_trusted_proxies_headers_are_never_read():
    none = ClientAddresses([])
    assert not none.trusts("10.1.1.1")
    assert none.resolve("10.1.1.1", {"x-forwarded-for": "1.2.3.4"}) == "10.1.1.1"


@pytest.mark.parametrize(
    "headers, client",
    [
        # Ports and quotes go; the client's X-Forwarded-For is ignored.
        (
            {
                "forwarded": 'for="[2001:db8::5]:4711";proto=https, for=10.3.3.3',
                "x-forwarded-for": "6.6.6.6",
            },
            "2001:db8::5",
        ),  # fmt: skip
        ({"forwarded": "for=198.51.100.9:8080"}, "198.51.100.9"),
        ({"forwarded": "for=_hidden"}, UNKNOWN),
        ({"x-forwarded-for": "198.51.100.1"}, "10.1.1.1"),
    ],
)
def test_a_proxy_that_sets_forwarded_is_read_from_that_header_only(headers, client):
    assert RFC_PROXIES.resolve("10.1.1.1", headers) == client


@pytest.mark.parametrize("name", ["x-forwarded-for", "forwarded"])
def test_a_forwarding_header_on_several_lines_is_one_list(name):
    # A proxy that adds its own line instead of appending to the client's.
    from quaylock.api.http import Request

    first, second = (
        ("198.51.100.6", "10.2.2.2")
        if name == "x-forwarded-for"
        else ("for=198.51.100.6", "for=10.2.2.2")
    )
    scope = {"headers": [(name.encode(), first.encode()), (b"accept", b"*/*"),
                         (name.encode(), second.encode())]}  # fmt: skip
    headers = Request(scope, None, {}).headers
    proxies = PROXIES if name == "x-forwarded-for" else RFC_PROXIES
    assert proxies.resolve("10.1.1.1", headers) == "198.51.100.6"
