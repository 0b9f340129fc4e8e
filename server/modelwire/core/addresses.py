"""Addresses: what kind of host an address names (to refuse addresses nobody else can dial), and
the `HOST:PORT` and `etcd://` forms the configuration and the flags accept, checked at start."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

# etcd leases shorter than this expire between two heartbeats of a loaded machine.
MIN_TTL_S = 2
MAX_TTL_S = 3600


def check_host_port(address: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) as (host, port); ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (a port from 1 to 65535)")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class EtcdTarget:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str
    ttl_s: float | None = None

    @classmethod
    def parse(cls, url: str) -> EtcdTarget:
        """`etcd://HOST:PORT[,HOST:PORT]/PREFIX[?ttl=SECONDS]`; the prefix has no leading or
        trailing '/'. ValueError naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != "etcd" or not parts.netloc:
            raise ValueError(f"{url!r}: expected etcd://HOST:PORT[,HOST:PORT]/PREFIX")
        endpoints = tuple(check_host_port(item) for item in parts.netloc.split(","))
        prefix = parts.path.strip("/")
        if not prefix:
            raise ValueError(f"{url!r}: name a key prefix, e.g. etcd://127.0.0.1:2379/modelwire")
        ttls = parse_qs(parts.query).get("ttl")
        if not ttls:
            return cls(endpoints, prefix)
        ttl = ttls[-1]
        try:
            ttl_s = float(ttl)
        except ValueError:
            raise ValueError(f"{url!r}: ttl must be a number of seconds") from None
        if not (math.isfinite(ttl_s) and MIN_TTL_S <= ttl_s <= MAX_TTL_S):
            raise ValueError(f"{url!r}: ttl must be from {MIN_TTL_S} to {MAX_TTL_S} seconds, got {ttl!r}")
        return cls(endpoints, prefix, ttl_s)

    def __str__(self) -> str:
        return "etcd://" + ",".join(f"{h}:{p}" for h, p in self.endpoints) + "/" + self.prefix


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
