"""Where a webhook may send: the one check, made when an endpoint is registered and before every attempt.

A URL that anyone with an admin key can set is a way into the network the workers sit in
(server-side request forgery). So: https only in production (http also in development and
tests); no credentials in the URL; and every address the host resolves to must be a public
one: no private, loopback, link-local (cloud metadata lives at 169.254.169.254), shared,
multicast or reserved address, IPv4-mapped IPv6 included. `CONVEYOR_WEBHOOK_ALLOWED_HOSTS`
lets chosen host names or networks through. The check is made again at send time and the
connection goes to the addresses just checked, so a name that later resolves elsewhere
(DNS rebinding) does not get past it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from jobs.errors import InvalidRequest
from jobs.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL = 2000


class RefusedDestination(InvalidRequest):
    """A webhook URL that may not be called (422 at registration; a failed attempt at send time)."""


@dataclass(frozen=True)
class Destination:
    """A checked URL: its parts and the addresses a connection may use, in resolver order."""

    url: SplitResult
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def parse_url(url: str, settings: Settings) -> SplitResult:
    """The URL's parts, if its form is acceptable (scheme, host, no credentials)."""
    if len(url) > MAX_URL:
        raise RefusedDestination(f"The URL is {len(url)} characters; at most {MAX_URL}.")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError as exc:
        raise RefusedDestination(f"Not a valid URL ({exc}): {url!r}.") from None
    schemes = ("https",) if settings.environment == "production" else ("https", "http")
    if parts.scheme not in schemes:
        raise RefusedDestination(
            f"A webhook URL must start with {' or '.join(s + '://' for s in schemes)}; got {url!r}."
        )
    if not parts.hostname:
        raise RefusedDestination(f"The URL {url!r} names no host.")
    if parts.username or parts.password:
        raise RefusedDestination("Put no credentials in a webhook URL: deliveries are signed instead.")
    if parts.fragment:
        raise RefusedDestination("A webhook URL has no #fragment.")
    return parts


def _allowed(host: str, address: IPAddress | None, settings: Settings) -> bool:
    for entry in settings.webhook_allowed_hosts:
        if "/" in entry:
            if address is not None and address in ipaddress.ip_network(entry, strict=False):
                return True
        elif entry == host:
            return True
        elif address is not None:
            try:
                if ipaddress.ip_address(entry) == address:
                    return True
            except ValueError:
                pass
    return False


def public(address: IPAddress) -> bool:
    """Whether an address is on the public internet (an IPv4-mapped IPv6 one is judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedDestination(f"The host {host!r} does not resolve ({exc}).") from None
    seen: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in seen:
            seen.append(address)
    return seen


def check_destination(url: str, settings: Settings) -> Destination:
    """The URL, checked; raises `RefusedDestination` saying why it may not be called."""
    parts = parse_url(url, settings)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise RefusedDestination(f"The host {host!r} resolves to no address.")
    if not _allowed(host, None, settings):
        for address in addresses:
            if not public(address) and not _allowed(host, address, settings):
                raise RefusedDestination(
                    f"The host {host!r} resolves to {address}, which is not a public address "
                    "(private, loopback, link-local or reserved). Add it to "
                    "CONVEYOR_WEBHOOK_ALLOWED_HOSTS if receivers there are meant to be called."
                )
    return Destination(parts, host, port, tuple(addresses))
