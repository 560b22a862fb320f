"""Who the client is: its address, as far as the server can trust it.

Behind a reverse proxy every connection comes from the proxy, and the
client's own address is in ``X-Forwarded-For`` or ``Forwarded``. Those
headers are only as true as the hop that wrote them, so they are read only
when the connection comes from a configured trusted proxy
(`server.trusted_proxies`); anyone else could send a new address with every
request and be a new client each time (to rate limits, session limits and
login lockouts). Through a chain of proxies, the client is the nearest
address, reading from the right, that is not itself a trusted proxy: the
entries left of it were written by the client and prove nothing.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(patterns: Iterable[str]) -> list[Network]:
    """Parse addresses and CIDR ranges.

    Raises:
        ValueError: one is neither.
    """
    return [ipaddress.ip_network(p, strict=False) for p in patterns]


@functools.lru_cache(maxsize=65536)
def address_key(address: str) -> str:
    """The key an address counts under (rate limits, login lockouts,
    sessions): itself, its IPv4 form when mapped, or its /64 for IPv6,
    since one host usually holds a whole /64 and could rotate through it.
    Cached: every request asks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# What a client is called when the forwarded chain cannot be read: one
# name for all of them, never the proxy's (which may be allowed more).
UNKNOWN = "unknown"


class ClientAddresses:
    """Args:
    trusted: the proxies whose forwarding header is believed.
    header: that header, ``x-forwarded-for`` or ``forwarded``; the other is
        ignored (a proxy passes it through from the client).
    """

    def __init__(self, trusted: list[Network], header: str = "x-forwarded-for"):
        self.trusted = trusted
        self.header = header

    def trusts(self, peer: str) -> bool:
        """Whether `peer` is a trusted proxy (whose headers `resolve` reads)."""
        return bool(self.trusted) and self._is_trusted(peer)

    def resolve(self, peer: str, headers: dict[str, str]) -> str:
        """The client's address, given the connection's `peer` address and
        the request's (lower-cased) headers."""
        if not self.trusts(peer):
            return peer
        return self.forwarded(peer, headers)

    def forwarded(self, peer: str, headers: dict[str, str]) -> str:
        """`resolve` for a `peer` the caller knows to be trusted (`trusts`),
        without asking again."""
        chain = _forwarded_for(headers, self.header)
        for hop in reversed(chain):
            if hop is None:
                # Unreadable: nothing left of it can be believed either, and
                # the client must not pass for the proxy.
                return UNKNOWN
            if not self._is_trusted(hop):
                return hop
        # Every hop is a trusted proxy: the first is as near as we get.
        return chain[0] if chain else peer

    def _is_trusted(self, address: str) -> bool:
        return address_in(address, self.trusted)


def address_in(address: str, nets: list[Network]) -> bool:
    """Whether `address` (IPv4-mapped IPv6 as IPv4) is in one of `nets`."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in nets)


def _forwarded_for(headers: dict[str, str], header: str) -> list[str | None]:
    """The addresses a request passed through, nearest last, from `header`
    (``forwarded`` as RFC 7239 writes it, or ``x-forwarded-for``). An entry
    that is no IP address is None."""
    if header == "forwarded":
        forwarded = headers.get("forwarded")
        if forwarded is None:
            return []
        found = []
        for element in forwarded.split(","):
            value = None
            for pair in element.split(";"):
                name, _, raw = pair.strip().partition("=")
                if name.lower() == "for":
                    value = _address(raw.strip().strip('"'))
            found.append(value)
        return found
    listed = headers.get("x-forwarded-for")
    if listed is None:
        return []
    return [_address(part.strip()) for part in listed.split(",")]


def _address(text: str) -> str | None:
    """An IP address from a forwarding header entry, which may carry a port
    (``192.0.2.1:4711``, ``[2001:db8::1]:4711``); None when it is none."""
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
