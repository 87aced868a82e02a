"""Address classification against IANA's special-purpose registries, name resolution under the
deadline, and every malformed URL or redirect getting its own code (never an exception).

The registry rows below are written out here from the registries themselves (not imported from
worker.fetch.egress), so a block missing from the code's table fails this test.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator

import pytest

from tests.http_server import LocalServer, Route, serve
from worker.errors import InputError
from worker.fetch.client import Fetcher, FetchPolicy, checked_url, parse_networks
from worker.fetch.egress import is_public

server = pytest.fixture(serve)

# (block, globally reachable per IANA) - IPv4 Special-Purpose Address Registry.
IANA_IPV4 = [
    ("0.0.0.0/8", False), ("0.0.0.0/32", False), ("10.0.0.0/8", False), ("100.64.0.0/10", False),
    ("127.0.0.0/8", False), ("169.254.0.0/16", False), ("172.16.0.0/12", False), ("192.0.0.0/24", False),
    ("192.0.0.0/29", False), ("192.0.0.8/32", False), ("192.0.0.9/32", True), ("192.0.0.10/32", True),
    ("192.0.0.170/32", False), ("192.0.0.171/32", False), ("192.0.2.0/24", False), ("192.31.196.0/24", True),
    ("192.52.193.0/24", True), ("192.88.99.0/24", False), ("192.168.0.0/16", False), ("192.175.48.0/24", True),
    ("198.18.0.0/15", False), ("198.51.100.0/24", False), ("203.0.113.0/24", False), ("240.0.0.0/4", False),
    ("255.255.255.255/32", False),
]
# IPv6 Special-Purpose Address Registry (2001::/32 Teredo and 2002::/16 6to4 are "N/A").
IANA_IPV6 = [
    ("::1/128", False), ("::/128", False), ("::ffff:0:0/96", False), ("64:ff9b:1::/48", False),
    ("100::/64", False), ("100:0:0:1::/64", False), ("2001::/23", False), ("2001::/32", None),
    ("2001:1::1/128", True), ("2001:1::2/128", True), ("2001:1::3/128", True), ("2001:2::/48", False),
    ("2001:3::/32", True), ("2001:4:112::/48", True), ("2001:10::/28", False), ("2001:20::/28", True),
    ("2001:30::/28", True), ("2001:db8::/32", False), ("2002::/16", None), ("2620:4f:8000::/48", True),
    ("3fff::/20", False), ("5f00::/16", False), ("fc00::/7", False), ("fe80::/10", False),
]
# Not in those registries but never a host: multicast, deprecated site-local, unallocated IPv6.
OTHER_BLOCKED = ["224.0.0.0/4", "ff00::/8", "fec0::/10", "4000::/3", "::/96", "::ffff:0:0:0/96"]
PRIVATE_V4 = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.1.1", "100.64.0.1", "0.0.0.0"]


def samples(block: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    net = ipaddress.ip_network(block)
    return [net.network_address, net.network_address + (net.num_addresses // 2), net.broadcast_address]


ROUTED = {"::ffff:0:0/96", "2002::/16"}  # judged by the IPv4 address they reach: see the next tests


@pytest.mark.parametrize("block", [b for b, _ in IANA_IPV4 + IANA_IPV6 if b not in ROUTED] + OTHER_BLOCKED)
def test_every_special_purpose_block_is_refused(block: str) -> None:
    """Also the anycast blocks IANA marks globally reachable: no image host lives there."""
    for address in samples(block):
        assert not is_public(address), address


@pytest.mark.parametrize("inner", PRIVATE_V4)
def test_every_ipv6_form_that_embeds_a_private_ipv4_is_refused(inner: str) -> None:
    v4 = int(ipaddress.IPv4Address(inner))
    forms = {
        "mapped": ipaddress.IPv6Address((0xFFFF << 32) | v4),
        "compatible": ipaddress.IPv6Address(v4),
        "siit": ipaddress.IPv6Address((0xFFFF << 48) | v4),
        "nat64": ipaddress.IPv6Address((0x0064FF9B << 96) | v4),
        "nat64-local": ipaddress.IPv6Address((0x0064FF9B0001 << 80) | v4),
        "6to4": ipaddress.IPv6Address((0x2002 << 112) | (v4 << 80)),
        "teredo": ipaddress.IPv6Address((0x20010000 << 96) | (v4 ^ 0xFFFFFFFF)),
    }
    for name, address in forms.items():
        assert not is_public(address), (name, address)


def test_public_addresses_and_their_routed_forms_pass() -> None:
    for text in ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001::200e",
                 "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]:
        assert is_public(ipaddress.ip_address(text)), text
    for text in ["::5db8:d822", "::ffff:0:5db8:d822", "2001:0:4136:e378:8000:63bf:a247:29dd"]:  # compatible, SIIT, Teredo
        assert not is_public(ipaddress.ip_address(text)), text


@pytest.mark.parametrize("url", ["http://[::127.0.0.1]/", "http://[::ffff:0:127.0.0.1]/", "http://[fec0::1]/",
                                 "http://[::ffff:169.254.169.254]/", "http://[64:ff9b::127.0.0.1]/", "http://[ff02::1]/"])
def test_blocked_forms_are_refused_by_the_fetcher_and_after_a_redirect(url: str, server: LocalServer) -> None:
    server.routes["/hop"] = Route(status=302, headers=(("Location", url),))
    fetcher = Fetcher(FetchPolicy(allow_networks=parse_networks("127.0.0.1/32"), total_timeout_s=5))
    try:
        for target in (url, f"{server.base}/hop"):
            with pytest.raises(InputError) as info:
                fetcher.get(target)
            assert info.value.code == "url_blocked", (target, info.value.message)
    finally:
        fetcher.close()


def test_slow_name_resolution_ends_at_the_deadline() -> None:
    release = threading.Event()

    def slow(host: str, port: int) -> list[str]:
        release.wait(8)
        return ["93.184.216.34"]

    fetcher = Fetcher(FetchPolicy(resolver=slow, total_timeout_s=1.0, retries=0))
    started = time.monotonic()
    try:
        with pytest.raises(InputError) as info:
            fetcher.get("http://slow.example.com/a.jpg")
        assert info.value.code == "fetch_timeout" and "resolving" in info.value.message
        assert time.monotonic() - started < 2.5
    finally:
        release.set()
        fetcher.close()


@pytest.fixture()
def fetcher() -> Iterator[Fetcher]:
    f = Fetcher(FetchPolicy(allow_networks=parse_networks("127.0.0.0/8"), total_timeout_s=5))
    yield f
    f.close()


@pytest.mark.parametrize(
    ("location", "code"),
    [("javascript:alert(1)", "url_invalid"), ("data:image/png;base64,iVBORw0KGgo=", "url_invalid"),
     ("file:///etc/passwd", "url_invalid"), ("http://[::1", "url_invalid"), ("http://a.example:99999/", "url_invalid"),
     ("http://" + "a" * 70000 + ".example/", "url_invalid")],
)
def test_redirects_to_unusable_urls_get_url_invalid(fetcher: Fetcher, server: LocalServer, location: str, code: str) -> None:
    server.routes["/r"] = Route(status=302, headers=(("Location", location),))
    with pytest.raises(InputError) as info:
        fetcher.get(f"{server.base}/r")
    assert info.value.code == code, info.value.message


def test_a_redirect_without_location_is_reported_once(fetcher: Fetcher, server: LocalServer) -> None:
    server.routes["/r"] = Route(status=302)
    with pytest.raises(InputError) as info:
        fetcher.get(f"{server.base}/r")
    assert info.value.code == "fetch_http_status" and "Location" in info.value.message
    assert server.routes["/r"].hits == 1


@pytest.mark.parametrize("url", ["http://a.example/\udcff", "http://a.example/?q=\ud800", "http://u\ud800@a.example/",
                                 "http://a\udcff.example/", "http://a.example:0/", "http://" + "x" * 70000])
def test_unencodable_or_out_of_range_urls_are_url_invalid(url: str) -> None:
    with pytest.raises(InputError) as info:
        checked_url(url)
    assert info.value.code == "url_invalid"
