"""Addresses: what kind of host an address names (to refuse addresses nobody else can dial), and
the `HOST:PORT` and `etcd://` forms the configuration and the flags accept, checked at start."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

# etcd leases shorter than this expire between two heartbeats of a loaded machine.
MIN_TTL_S = 2
MAX_TTL_S = 3600


def check_host_port(address: str) -> tuple[str, int]:
    """A configured `HOST:PORT` (a controller, an etcd endpoint), in the same strict form as a
    registered address; ValueError naming what is wrong."""
    try:
        return instance_address(address)
    except ValueError as bad:
        raise ValueError(f"{address[:80]!r} is not HOST:PORT: {bad}") from None


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
            raise ValueError(
                f"{url!r}: ttl must be from {MIN_TTL_S} to {MAX_TTL_S} seconds, got {ttl!r}"
            )
        return cls(endpoints, prefix, ttl_s)

    def __str__(self) -> str:
        return "etcd://" + ",".join(f"{h}:{p}" for h, p in self.endpoints) + "/" + self.prefix


# A DNS name as callers' resolvers read it: letters, digits and hyphens in dot-separated labels.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def instance_address(address: str) -> tuple[str, int]:
    """A registered address as (host, port), in the one form every caller dials the same way:
    `HOST:PORT` with a DNS name, a dotted-quad IPv4 address or a bracketed IPv6 address, and an
    ASCII port from 1 to 65535. gRPC target schemes (`unix:`, `dns:///`, `ipv4:`), numeric IPv4
    spellings that resolvers widen (`127.1`, `0x7f000001`, `2130706433`, `127.000.000.001`) and
    zone ids are refused, so the host checked is the host dialled. ValueError says why."""
    host, sep, port = address.rpartition(":")
    if (
        not sep
        or len(port) > 5
        or not port.isascii()
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
    ):
        raise ValueError("must be HOST:PORT with a port from 1 to 65535")
    shown = host if len(host) <= 80 else host[:79] + "…"
    if host.startswith("[") and host.endswith("]"):
        try:
            if "%" in host:
                raise ValueError
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(
                f"{shown} is not an IPv6 address (zone ids are not accepted)"
            ) from None
        return host[1:-1], int(port)
    name = host.removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{shown!r} is not a DNS name, an IPv4 address or a bracketed IPv6 address"
        )
    if labels[-1].isdigit() or labels[-1].lower().startswith("0x"):
        # All-numeric: only the four-decimal form, which every resolver reads alike.
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise ValueError(f"{shown!r} is not a dotted-quad IPv4 address") from None
    return name.lower(), int(port)


def host_of(address: str) -> str:
    """The host of `host:port` (IPv6 in brackets or not)."""
    return address.rpartition(":")[0].strip("[]")


# IPv6 forms that carry an IPv4 address in their last 32 bits, judged by the IPv4 they carry:
# SIIT's IPv4-translated ::ffff:0:a.b.c.d (RFC 2765), NAT64's well-known prefix (RFC 6052), and the
# deprecated IPv4-compatible ::a.b.c.d (RFC 4291), which some stacks still route to IPv4.
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# 0.0.0.0/8, "this network": 0.0.0.0 reaches this machine, the rest nothing.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
# Cloud instance metadata and credential services: never a worker, whatever the fleet's shape.
METADATA_ADDRESSES = frozenset(
    map(
        ipaddress.ip_address,
        (
            "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
            "169.254.170.2",  # AWS ECS task credentials
            "169.254.170.23",  # AWS EKS Pod Identity
            "fd00:ec2::254",  # AWS instance metadata over IPv6
            "fd00:ec2::23",  # AWS EKS Pod Identity over IPv6
            "100.100.100.200",  # Alibaba Cloud
        ),
    )
)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `host` names: for the IPv6 forms that embed an IPv4 address (mapped, SIIT,
    NAT64, IPv4-compatible, 6to4, Teredo's client), the IPv4 address they carry."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if not isinstance(ip, ipaddress.IPv6Address) or ip in METADATA_ADDRESSES:
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _SIIT or ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return ip


def ip_literal(host: str) -> bool:
    """`host` is an IP address, not a name."""
    return _ip(host) is not None


def is_loopback(host: str) -> bool:
    name = host.lower().removesuffix(".")
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    ip = _ip(name)
    return ip is not None and ip.is_loopback


def is_metadata_service(host: str) -> bool:
    """A cloud metadata or credential service's address (also inside an IPv6 form)."""
    return _ip(host) in METADATA_ADDRESSES


def private_kind(host: str) -> str | None:
    """What makes `host` reachable from its own machine only (or from nobody), judged by its form:
    loopback (localhost's names included), link-local, unspecified or "this network"
    (0.0.0.0/8), or multicast, also inside the IPv6 forms that embed an IPv4 address; None for
    anything else. Names other than localhost's are not resolved here (controller/servicer.py)."""
    if is_loopback(host):
        return "loopback"
    ip = _ip(host)
    if ip is None:
        return None
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified (0.0.0.0/8, ::)"
    if ip.is_multicast:
        return "multicast"
    return None
