"""What kind of host an address names; used to refuse addresses nobody else can dial."""

from __future__ import annotations

import ipaddress


def host_of(address: str) -> str:
    """The host of `host:port` (IPv6 in brackets or not)."""
    return address.rpartition(":")[0].strip("[]")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_private_to_host(host: str) -> bool:
    """Loopback, link-local, unspecified (0.0.0.0) or a unix socket: reachable from this machine only."""
    if host.startswith("unix") or is_loopback(host):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast
