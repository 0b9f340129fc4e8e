"""The ModelController gRPC edge: translate, guard registrations, call the registry, map errors.

Registrations are checked here, where the caller is known: an instance id belongs to the identity
(token name) that registered it, addresses only this machine can dial are refused unless the fleet
is on one machine, a cloud metadata service's always, a name the controller cannot resolve (in time)
always, and a weight has a ceiling (a weight of a million would win every pick).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

import grpc

from modelwire.core.addresses import host_of, ip_literal, is_metadata_service, private_kind
from modelwire.core.errors import (
    FieldViolation,
    InvalidRequest,
    PermissionDenied,
    RegistryUnavailable,
)
from modelwire.fleet import convert
from modelwire.fleet.registry import Registry, check_spec
from modelwire.fleet.types import InstanceSpec
from modelwire.rpc.auth import caller_identity
from modelwire.rpc.status import CallScope, refuse
from modelwire.rpc.wire import ID_TAKEN
from modelwire.v1 import controller_pb2 as pb
from modelwire.v1 import controller_pb2_grpc as pb_grpc

# Instances one identity may hold: registrations beyond it are refused, so one token cannot flood
# the fleet (and every watcher's snapshot) with instances.
MAX_INSTANCES_PER_IDENTITY = 256
# How long a registered name may take to resolve at the controller; slower is refused.
RESOLVE_TIMEOUT_S = 2.0
# The addresses a name resolves to (IP literals, as text).
Resolver = Callable[[str], Awaitable[Sequence[str]]]
_UNCHECKABLE = (
    "so where it leads cannot be checked; register an IP address, or a name the controller resolves"
)


async def system_resolver(host: str) -> list[str]:
    """The controller's own resolver, off the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]).split("%")[0] for info in infos]


class RegistrationPolicy:
    """Fails closed: an address is accepted only when the controller can tell where it leads."""

    def __init__(
        self,
        allow_private_addresses: bool,
        max_weight: int,
        resolve: Resolver = system_resolver,
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
    ) -> None:
        self.allow_private_addresses = allow_private_addresses
        self.max_weight = max_weight
        self._resolve = resolve
        self._resolve_timeout_s = resolve_timeout_s

    async def check(self, spec: InstanceSpec) -> None:
        violations = []
        refusal = await self._address_refusal(host_of(spec.address))
        if refusal is not None:
            violations.append(FieldViolation("address", f"{spec.address}: {refusal}"))
        if spec.weight > self.max_weight:
            violations.append(
                FieldViolation("weight", f"at most {self.max_weight}, got {spec.weight}")
            )
        if violations:
            raise InvalidRequest(violations)

    async def _address_refusal(self, host: str) -> str | None:
        """Why `host` may not be registered, or None. A name is judged by every address it
        resolves to here; one that does not resolve, or not within the bound, cannot be judged and
        is refused (it may resolve elsewhere, or later, to an address that would be)."""
        refusal = _refusal(host, "it", self.allow_private_addresses)
        if refusal is not None or self.allow_private_addresses or ip_literal(host):
            return refusal
        try:
            resolved = await asyncio.wait_for(self._resolve(host), self._resolve_timeout_s)
        except TimeoutError:
            within = f"{self._resolve_timeout_s:g} s"
            return f"the name did not resolve at the controller within {within}, {_UNCHECKABLE}"
        except (OSError, UnicodeError) as failed:
            return f"the name does not resolve at the controller ({failed}), {_UNCHECKABLE}"
        if not resolved:
            return f"the name resolves to no address at the controller, {_UNCHECKABLE}"
        for address in resolved:
            refusal = _refusal(address, f"it resolves to {address}, which", allow_private=False)
            if refusal is not None:
                return refusal
        return None


def _refusal(host: str, subject: str, allow_private: bool) -> str | None:
    """Why the address `host` (`subject` in the message) may not be registered, by its form."""
    if is_metadata_service(host):
        return f"{subject} is a cloud metadata service's address, never a worker's"
    kind = None if allow_private else private_kind(host)
    if kind is None:
        return None
    return (
        f"{subject} is {kind}: only its own machine can dial it; register an address callers "
        "can reach, or set [controller] allow_private_addresses for a fleet on one machine"
    )


class ModelControllerServicer(pb_grpc.ModelControllerServicer):
    def __init__(self, registry: Registry, policy: RegistrationPolicy) -> None:
        self._registry = registry
        self._policy = policy

    def _owned(self, instance_id: str) -> None:
        """Refuses a caller that is not the identity which registered `instance_id`: ErrorInfo
        ID_TAKEN tells a worker's agent to register under a new id; the text is for people."""
        owner = self._registry.owner_of(instance_id)
        if owner is not None and owner != (caller_identity() or ""):
            taken = f"instance {instance_id!r} was registered by another identity"
            raise PermissionDenied(taken, reason=ID_TAKEN)

    def _room_for(self, spec: InstanceSpec) -> None:
        caller = caller_identity()
        if not caller or self._registry.owner_of(spec.instance_id) is not None:
            return
        held = sum(1 for instance in self._registry.instances() if instance.spec.owner == caller)
        if held >= MAX_INSTANCES_PER_IDENTITY:
            raise PermissionDenied(
                f"identity {caller!r} already holds {held} instances, the most one identity may "
                "register"
            )

    async def RegisterInstance(
        self, request: pb.RegisterInstanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterInstanceResponse:
        async with CallScope(context):
            spec = check_spec(convert.spec_from_register(request))
            await self._policy.check(spec)
            self._owned(spec.instance_id)
            self._room_for(spec)
            spec = replace(spec, owner=caller_identity() or "")
            return convert.lease_to_pb(await self._registry.register(spec))

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        async with CallScope(context):
            self._owned(request.instance_id)
            known = await self._registry.heartbeat(
                request.instance_id, convert.load_from_pb(request.load)
            )
            return pb.HeartbeatResponse(
                status=pb.HEARTBEAT_STATUS_OK if known else pb.HEARTBEAT_STATUS_UNKNOWN_INSTANCE
            )

    async def DeregisterInstance(
        self, request: pb.DeregisterInstanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterInstanceResponse:
        async with CallScope(context):
            self._owned(request.instance_id)
            return pb.DeregisterInstanceResponse(
                removed=await self._registry.deregister(request.instance_id)
            )

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInstancesResponse:
        async with CallScope(context):
            instances = self._registry.instances(request.model, request.healthy_only)
            return pb.ListInstancesResponse(
                instances=[convert.instance_to_pb(i) for i in instances]
            )

    async def WatchInstances(
        self, request: pb.WatchInstancesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchInstancesResponse]:
        try:
            async for batch in self._registry.watch(request.model):
                yield convert.batch_to_pb(batch)
        except ConnectionError as lost:
            # The watcher fell behind or the backing store went away: the caller watches again.
            await refuse(context, RegistryUnavailable(f"{lost}; watch again"))
