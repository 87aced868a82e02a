"""Which IP addresses a fetch may connect to: globally routable unicast, nothing else.

The tables are IANA's special-purpose address registries (IPv4 and IPv6), every entry, plus
the blocks those registries leave to others (multicast, the IPv6 space outside 2000::/3 and
deprecated site-local). Entries the registries mark globally reachable (anycast services
such as PCP, TURN or AS112) are blocked too: no image host lives there, and a moderation
worker has no reason to talk to them. IPv6 forms through which a connection reaches an IPv4
address (mapped, NAT64, 6to4) are judged by that address, so `::ffff:127.0.0.1` and
`64:ff9b::10.0.0.1` are as private as what they point to; the other embedding forms
(IPv4-compatible, SIIT, Teredo) are blocked whatever they carry.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 Special-Purpose Address Registry, plus multicast (224/4, its own registry).
IPV4_SPECIAL = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24",
    "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
))

# IANA IPv6 Special-Purpose Address Registry entries inside the global unicast space 2000::/3;
# everything outside 2000::/3 (loopback, unspecified, mapped, compatible, ULA, link-local,
# site-local, multicast, discard, the 64:ff9b::/96 translation prefixes) is not global unicast.
IPV6_SPECIAL = tuple(ipaddress.IPv6Network(n) for n in (
    "2001::/23", "2001:db8::/32", "2002::/16", "2620:4f:8000::/48", "3fff::/20", "5f00::/16",
))
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def routed_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a connection to `address` really reaches: IPv4-mapped (the kernel uses
    IPv4), NAT64's well-known prefix (the translator does) and 6to4 (a relay does)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in SIX_TO_FOUR:
        return address.sixtofour
    return None


def is_public(address: IPAddress) -> bool:
    """True only for a globally routable unicast address.

    IPv4-compatible (::a.b.c.d), SIIT (::ffff:0:a.b.c.d) and Teredo forms are never public:
    the first two lie outside 2000::/3, Teredo inside 2001::/23."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        inner = routed_ipv4(address)
        if inner is not None:
            return is_public(inner)
        return address in IPV6_GLOBAL_UNICAST and not any(address in net for net in IPV6_SPECIAL)
    return not any(address in net for net in IPV4_SPECIAL)
