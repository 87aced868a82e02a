"""Fetch image bytes from untrusted URLs without reaching private networks.

Every hop (the first URL and each redirect) is resolved here and refused unless all of
its addresses are public or inside an explicitly allowed network; bodies are streamed
under a byte cap that holds whatever Content-Length says; proxy variables are ignored.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Sequence

import httpx

from worker.errors import (
    FETCH_FAILED,
    FETCH_HTTP_STATUS,
    FETCH_TIMEOUT,
    FETCH_TOO_LARGE,
    URL_BLOCKED,
    URL_INVALID,
    InputError,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 5
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    allow_networks: tuple[IPNetwork, ...] = field(default=())


def parse_networks(spec: str | Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDRs from a comma-separated string or a list; a clear ValueError on a bad one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    networks = []
    for item in (i.strip() for i in items):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ValueError(f"bad network {item!r} in the fetch allow-list: {exc}") from exc
    return tuple(networks)


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast only; IPv4-mapped/NAT64 forms are judged by the IPv4 inside."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in ipaddress.ip_network("64:ff9b::/96") else None
        )
        if embedded is not None:
            return is_public(embedded)
    return address.is_global and not address.is_multicast


def check_host(host: str, port: int, policy: FetchPolicy) -> None:
    """Resolve `host` and refuse it unless every address is public or allow-listed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(FETCH_FAILED, f"cannot resolve host {host!r}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        allowed = any(address in net for net in policy.allow_networks)
        if not allowed and not is_public(address):
            raise InputError(URL_BLOCKED, f"host {host!r} resolves to non-public address {address}")


def _checked_url(raw: str | httpx.URL, policy: FetchPolicy) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InputError(URL_INVALID, f"not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise InputError(URL_INVALID, f"scheme {url.scheme!r} is not allowed (http and https only)")
    if not url.host:
        raise InputError(URL_INVALID, "URL has no host")
    check_host(url.host, url.port or (443 if url.scheme == "https" else 80), policy)
    return url


def fetch(client: httpx.Client, raw_url: str, policy: FetchPolicy) -> bytes:
    """The body of `raw_url`, following checked redirects, or InputError with a specific code."""
    deadline = time.monotonic() + policy.total_timeout_s
    url = _checked_url(raw_url, policy)
    for _hop in range(policy.max_redirects + 1):
        try:
            with client.stream("GET", url) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    url = _checked_url(url.join(location), policy)
                    continue
                if response.status_code != 200:
                    raise InputError(FETCH_HTTP_STATUS, f"HTTP {response.status_code} from {url.host}")
                return _read_capped(response, policy, deadline)
        except httpx.TimeoutException as exc:
            raise InputError(FETCH_TIMEOUT, f"timed out fetching from {url.host}: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise InputError(FETCH_FAILED, f"fetch from {url.host} failed: {exc}") from exc
    raise InputError(FETCH_FAILED, f"more than {policy.max_redirects} redirects")


def _read_capped(response: httpx.Response, policy: FetchPolicy, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise InputError(FETCH_TOO_LARGE, f"Content-Length {declared} is over the cap of {policy.max_bytes} bytes")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > policy.max_bytes:
            raise InputError(FETCH_TOO_LARGE, f"body is over the cap of {policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise InputError(FETCH_TIMEOUT, f"whole-request deadline of {policy.total_timeout_s} s passed")
    return bytes(body)


def make_client(policy: FetchPolicy) -> httpx.Client:
    timeout = httpx.Timeout(policy.read_timeout_s, connect=policy.connect_timeout_s)
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
