"""Which URLs and addresses a server-side import may fetch: the SSRF policy, with no network I/O.

The URL comes from an API caller, so the server must not become a proxy into its own network:

* only ``http``/``https``; no userinfo (:func:`check_url_syntax`, cheap enough for request time);
* every address the host resolves to must pass :func:`denied_reason`: private, loopback, link-local,
  metadata, documentation, multicast and other special-purpose ranges are refused, as are IPv6 forms that
  reach such an IPv4 address (mapped, compatible, NAT64, 6to4); an operator admits a network with
  ``STRATUS_IMPORT_URL_ALLOW`` (config ``import.url_allow``).

storage/fetch.py is the transport that applies this policy to every hop of a download.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import httpx

__all__ = [
    "FetchError",
    "FetchRefused",
    "check_addresses",
    "check_parsed",
    "check_url_syntax",
    "denied_reason",
    "is_address_allowed",
    "parse_url",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_ENV = "STRATUS_IMPORT_URL_ALLOW"
DEFAULT_PORTS = {"http": 80, "https": 443}


class FetchError(Exception):
    """Base class. ``reason`` is a short machine name; ``str(e)`` says what to do about it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FetchRefused(FetchError):
    """Refused by policy: scheme, no_host, userinfo, invalid_url, address_not_allowed,
    too_many_redirects, dns."""


# --------------------------------------------------------------------------------------------
# Address policy

_V4_DENIED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), what)
    for net, what in (
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
        ("10.0.0.0/8", "a private (RFC 1918) address"),
        ("100.64.0.0/10", "a carrier-grade NAT shared address (100.64.0.0/10)"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private (RFC 1918) address"),
        ("192.0.0.0/24", "an IETF protocol-assignment address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.168.0.0/16", "a private (RFC 1918) address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),  # includes the 255.255.255.255 broadcast
    )
)

_V6_DENIED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), what)
    for net, what in (
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/23", "an IETF protocol-assignment address (e.g. Teredo)"),
        ("2001:db8::/32", "a documentation address"),
        ("fc00::/7", "a unique-local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

_V4_COMPAT = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_METADATA = ipaddress.IPv4Address("169.254.169.254")


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 form would actually reach (mapped, compatible, NAT64, 6to4)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "an IPv4-mapped form of"
    if ip in _V4_COMPAT and int(ip) > 1:  # :: and ::1 are their own thing
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "an IPv4-compatible form of"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "a NAT64 form of"
    if ip.sixtofour is not None:
        return ip.sixtofour, "a 6to4 form of"
    return None


def _classify(ip: Address) -> str | None:
    """Why ``ip`` is denied by default (an indefinite noun phrase), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        if int(ip) == 0:
            return "the unspecified address"
        if int(ip) == 1:
            return "a loopback address"
        embedded = _embedded_v4(ip)
        if embedded is not None:
            # The embedded address decides: these forms reach it on a dual-stack/NAT64 host.
            v4, form = embedded
            inner = _classify(v4)
            return f"{form} {v4}, {inner}" if inner else None
        table: Sequence[tuple[Network, str]] = _V6_DENIED
    else:
        if int(ip) == 0:
            return "the unspecified address"
        if ip == _METADATA:
            return "the link-local cloud metadata address"
        table = _V4_DENIED
    for net, what in table:
        if ip in net:
            return what
    # Backstop for anything the tables miss (Python's IANA special-purpose registry).
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a special-purpose (non-public) address"
    return None


def _operator_allows(ip: Address, allow: Sequence[Network]) -> bool:
    candidates: list[Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            candidates.append(embedded[0])  # allowing 127.0.0.2/32 also admits ::ffff:127.0.0.2
    # `in` is simply False across IP versions.
    return any(c in net for c in candidates for net in allow)


def denied_reason(address: Address | str, allow: Sequence[Network] = ()) -> str | None:
    """Why fetching from ``address`` is refused (e.g. "a loopback address"), or None if permitted.

    Pure function, no network traffic. An address inside an ``allow`` network is always permitted.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if _operator_allows(ip, allow):
        return None
    return _classify(ip)


def is_address_allowed(address: Address | str, allow: Sequence[Network] = ()) -> bool:
    return denied_reason(address, allow) is None


def _admit_hint(ip: Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_v4(ip)
        if embedded is not None:
            return f"{embedded[0]}/32"
        return f"{ip}/128"
    return f"{ip}/32"


# --------------------------------------------------------------------------------------------
# URL checks


def parse_url(url: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchRefused(
            "invalid_url", f"The import URL {url!r} cannot be parsed ({exc}); check it and try again."
        ) from None


def check_parsed(url: httpx.URL, shown: str) -> None:
    if url.scheme not in DEFAULT_PORTS:
        scheme = f"{url.scheme}:" if url.scheme else "a URL without a scheme"
        raise FetchRefused(
            "scheme",
            f"Only http:// and https:// URLs can be imported, and {shown!r} uses {scheme}; "
            "serve the image over HTTP(S) or upload it instead.",
        )
    if not url.raw_host:
        raise FetchRefused("no_host", f"The import URL {shown!r} has no host; give a full http(s):// URL.")
    if url.userinfo:
        raise FetchRefused(
            "userinfo",
            "The import URL contains a user name or password, which is not accepted; "
            "use a URL that is readable without credentials (for example a pre-signed URL).",
        )


def check_url_syntax(url: str) -> None:
    """Cheap request-time check (no DNS): http/https only, a host present, no userinfo."""
    check_parsed(parse_url(url), url)


def check_addresses(host: str, addrs: Sequence[Address], allow: Sequence[Network], prefix: str) -> None:
    for ip in addrs:  # EVERY address: a name mixing public and internal answers is refused
        why = denied_reason(ip, allow)
        if why is None:
            continue
        subject = f"{ip} is" if host == str(ip) else f"{host} resolves to {ip},"
        raise FetchRefused(
            "address_not_allowed",
            f"{prefix}{subject} {why}; URL imports from it are refused. "
            f"An operator can admit it with {ALLOW_ENV}={_admit_hint(ip)}",
        )
