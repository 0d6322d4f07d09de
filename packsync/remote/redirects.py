"""Where a download may be redirected: never from the internet into this machine or its network.

Image URLs come from strangers (an Astria gallery pack, an image added to a shared Genviral pack), and
a download's bytes are uploaded where the pack's members see them: a redirect to ``127.0.0.1``, to
``169.254.169.254`` (a cloud's metadata service) or to a host on the local network would publish what
only this machine can read. So a redirect is followed only to an ``http(s)`` host every address of
which is public, or of a kind the first URL's host already was (a download from a local server may be
redirected within it: the sandbox, a NAS). Hosts are judged by the addresses they resolve to, not by
how they are written (``localhost``, ``2130706433``, ``[::ffff:127.0.0.1]``, a name pointing home).
A host that does not resolve here is left to the connection (or the proxy) to fail.

It knows no HTTP library: the transport hands it a URL's scheme, host and port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Literal

from packsync.logs import untrusted

#: What an address may be, besides public (None).
Kind = Literal["loopback", "link-local", "private"]


def kind_of(address: str) -> Kind | None:
    """The kind of an IP address; None for a public one. An address that is neither global nor one of the
    named kinds (reserved, shared, unspecified: ``0.0.0.0`` reaches this machine) counts as private, or
    loopback for the unspecified one."""
    ip = _embedded(ipaddress.ip_address(address.split("%", 1)[0]))
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    return None if ip.is_global and not ip.is_multicast else "private"


#: IPv6 addresses that carry an IPv4 address in their last 32 bits (the bits above it, shifted down):
#: IPv4-compatible ``::a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d`` and NAT64's ``64:ff9b::a.b.c.d``, which
#: a NAT64 gateway forwards to that IPv4 address. (IPv4-mapped and 6to4 have ``ipaddress`` properties.)
_CARRIERS = (0, 0xFFFF0000, 0x64FF9B << 64)
#: NAT64's local-use prefix (RFC 8215): where in it the IPv4 address sits is the network's choice.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def _embedded(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address an IPv6 address leads to, judged in its place (``[64:ff9b::a9fe:a9fe]`` reaches
    169.254.169.254 through a NAT64 gateway); ``ip`` itself otherwise, ``::`` and ``::1`` included."""
    if not isinstance(ip, ipaddress.IPv6Address) or ip.is_loopback or ip.is_unspecified:
        return ip
    if ip in _LOCAL_NAT64:
        return ipaddress.IPv4Address("10.0.0.0")  # (private: any address of this machine's network)
    carried = ip.ipv4_mapped or ip.sixtofour
    if carried is None and int(ip) >> 32 in _CARRIERS:
        carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return carried or ip


async def kinds_of(host: str, port: int | None) -> frozenset[Kind | None]:
    """The kinds of the addresses ``host`` resolves to (none when it does not resolve here)."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host.strip("[]"), port or 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return frozenset()
    return frozenset(kind_of(str(info[4][0])) for info in found)


async def refused(scheme: str, host: str, port: int | None, first: frozenset[Kind | None]) -> str | None:
    """Why a download first sent to a host of the kinds ``first`` may not follow a redirect to
    ``scheme://host:port``; None when it may."""
    if scheme not in ("http", "https"):
        return f"not following a redirect to a {untrusted(scheme, 20)}: URL (only http and https are followed)"
    inner = sorted(kind for kind in await kinds_of(host, port) if kind is not None and kind not in first)
    if not inner:
        return None
    return f"not following a redirect to {untrusted(host, 60)}, a {inner[0]} address, from a URL that was not one"
