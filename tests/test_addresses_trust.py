"""The controller's registration address check fails closed: a name it cannot resolve, or not in
time, is refused (never judged public); IPv6 forms are judged by the IPv4 they carry; cloud
metadata services are refused even where private addresses are allowed. The resolver is injected:
no DNS, no sleeps."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from modelwire.controller.servicer import RegistrationPolicy, Resolver
from modelwire.core.errors import InvalidRequest
from modelwire.fleet.types import InstanceModel, InstanceSpec


def resolving_to(*addresses: str) -> Resolver:
    async def resolve(host: str) -> Sequence[str]:
        return addresses

    return resolve


async def never_asked(host: str) -> Sequence[str]:
    raise AssertionError(f"{host} is an IP address: nothing to resolve")


def policy(
    resolve: Resolver = never_asked, allow_private: bool = False, timeout_s: float = 2.0
) -> RegistrationPolicy:
    return RegistrationPolicy(
        allow_private, max_weight=100, resolve=resolve, resolve_timeout_s=timeout_s
    )


async def refusal(checked: RegistrationPolicy, address: str) -> str | None:
    """The `address` violation's description, or None when the address is accepted."""
    try:
        await checked.check(InstanceSpec("w", address, (InstanceModel("m"),)))
    except InvalidRequest as refused:
        [violation] = refused.violations
        assert violation.field == "address"
        return violation.description
    return None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("[::127.0.0.1]:1", "it is loopback"),  # IPv4-compatible IPv6
        ("[::ffff:0:127.0.0.1]:1", "it is loopback"),  # SIIT
        ("[::ffff:0:169.254.1.1]:1", "it is link-local"),
        ("[2002:7f00:1::]:1", "it is loopback"),  # 6to4
        ("0.1.2.3:1", "it is unspecified"),
        ("100.100.100.200:1", "it is a cloud metadata service's address"),  # Alibaba Cloud
        ("[fd00:ec2::254]:1", "it is a cloud metadata service's address"),  # AWS over IPv6
        ("169.254.169.254:1", "it is a cloud metadata service's address"),
        ("[::ffff:169.254.169.254]:1", "it is a cloud metadata service's address"),
    ],
)
async def test_embedded_ipv4_and_metadata_addresses_are_refused(address: str, why: str) -> None:
    described = await refusal(policy(), address)
    assert described is not None and described.startswith(f"{address}: {why}"), described


@pytest.mark.parametrize(
    "address", ["203.0.113.7:50051", "[2001:db8::7]:50051", "[::203.0.113.7]:1", "100.64.0.7:1"]
)
async def test_public_and_fleet_addresses_are_accepted_without_resolving(address: str) -> None:
    assert await refusal(policy(), address) is None


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    async def unknown(host: str) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    described = await refusal(policy(unknown), "metadata.google.internal:80")
    assert described == (
        "metadata.google.internal:80: the name does not resolve at the controller ([Errno -2] "
        "Name or service not known), so where it leads cannot be checked; register an IP "
        "address, or a name the controller resolves"
    )
    described = await refusal(policy(resolving_to()), "w1.example:1")
    assert described is not None and "resolves to no address at the controller" in described


async def test_a_name_that_resolves_too_slowly_is_refused() -> None:
    """A resolver that never answers: the configured bound refuses the name."""
    pending: asyncio.Future[Sequence[str]] = asyncio.get_running_loop().create_future()

    async def slow(host: str) -> Sequence[str]:
        return await pending

    described = await refusal(policy(slow, timeout_s=0.01), "127.0.0.1.nip.io:1")
    assert described is not None and described.startswith(
        "127.0.0.1.nip.io:1: the name did not resolve at the controller within 0.01 s"
    ), described
    assert pending.cancelled(), "the resolution was left running"


@pytest.mark.parametrize(
    ("resolved", "why"),
    [
        (("203.0.113.7", "127.0.0.1"), "it resolves to 127.0.0.1, which is loopback"),
        (("::ffff:0:127.0.0.1",), "it resolves to ::ffff:0:127.0.0.1, which is loopback"),
        (
            ("100.100.100.200",),
            "it resolves to 100.100.100.200, which is a cloud metadata service's",
        ),
    ],
)
async def test_a_name_is_judged_by_every_address_it_resolves_to(
    resolved: tuple[str, ...], why: str
) -> None:
    described = await refusal(policy(resolving_to(*resolved)), "w1.example:1")
    assert described is not None and described.startswith(f"w1.example:1: {why}"), described


async def test_a_name_resolving_to_public_addresses_is_accepted() -> None:
    assert await refusal(policy(resolving_to("203.0.113.7", "2001:db8::7")), "w1.example:1") is None


async def test_a_one_machine_fleet_registers_private_addresses_but_no_metadata_service() -> None:
    """`allow_private_addresses` (the default on a loopback controller) keeps loopback and
    unresolved names as before; a metadata service is never a worker."""
    allowing = policy(allow_private=True)
    for address in (
        "127.0.0.1:50051",
        "[::1]:1",
        "[::127.0.0.1]:1",
        "localhost:1",
        "my-laptop:50051",
        "169.254.10.1:1",
    ):
        assert await refusal(allowing, address) is None, address
    for address in ("169.254.169.254:80", "100.100.100.200:80", "[fd00:ec2::254]:80"):
        described = await refusal(allowing, address)
        assert described is not None and "cloud metadata service" in described, address
