"""The ModelController gRPC edge: translate, guard registrations, call the registry, map errors.

Registrations are checked here, where the caller is known: an instance id belongs to the identity
(token name) that registered it, addresses only this machine can dial are refused unless the fleet
is on one machine, and a weight has a ceiling (a weight of a million would win every pick).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from modelwire.core.addresses import host_of, ip_literal, is_private_to_host
from modelwire.core.errors import FieldViolation, InvalidRequest, PermissionDenied
from modelwire.fleet import convert
from modelwire.fleet.registry import Registry, check_spec
from modelwire.fleet.types import ID_TAKEN, InstanceSpec
from modelwire.rpc.auth import caller_identity
from modelwire.rpc.status import CallScope
from modelwire.v1 import controller_pb2 as pb
from modelwire.v1 import controller_pb2_grpc as pb_grpc


# Instances one identity may hold: registrations beyond it are refused, so one token cannot flood
# the fleet (and every watcher's snapshot) with instances.
MAX_INSTANCES_PER_IDENTITY = 256
# How long a registered name may take to resolve before it is judged by its form alone.
RESOLVE_TIMEOUT_S = 2.0


class RegistrationPolicy:
    def __init__(self, allow_private_addresses: bool, max_weight: int) -> None:
        self.allow_private_addresses = allow_private_addresses
        self.max_weight = max_weight

    async def check(self, spec: InstanceSpec) -> None:
        violations = []
        if not self.allow_private_addresses and await _private(host_of(spec.address)):
            violations.append(FieldViolation(
                "address", f"{spec.address} can be dialled from its own machine only; register an address callers can reach"
            ))
        if spec.weight > self.max_weight:
            violations.append(FieldViolation("weight", f"at most {self.max_weight}, got {spec.weight}"))
        if violations:
            raise InvalidRequest(violations)


async def _private(host: str) -> bool:
    """The host, or any address a name resolves to here, is private to its machine. Resolved off
    the loop and bounded; a name that does not resolve here is judged by its form."""
    if is_private_to_host(host):
        return True
    if ip_literal(host):
        return False
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP), RESOLVE_TIMEOUT_S
        )
    except (OSError, UnicodeError, TimeoutError):
        return False
    return any(is_private_to_host(str(info[4][0]).split("%")[0]) for info in infos)


class ModelControllerServicer(pb_grpc.ModelControllerServicer):
    def __init__(self, registry: Registry, policy: RegistrationPolicy) -> None:
        self._registry = registry
        self._policy = policy

    def _owned(self, instance_id: str) -> None:
        """Refuses a caller that is not the identity which registered `instance_id`."""
        owner = self._registry.owner_of(instance_id)
        if owner is not None and owner != (caller_identity() or ""):
            raise PermissionDenied(f"instance {instance_id!r} {ID_TAKEN}")

    def _room_for(self, spec: InstanceSpec) -> None:
        caller = caller_identity()
        if not caller or self._registry.owner_of(spec.instance_id) is not None:
            return
        held = sum(1 for instance in self._registry.instances() if instance.spec.owner == caller)
        if held >= MAX_INSTANCES_PER_IDENTITY:
            raise PermissionDenied(f"identity {caller!r} already holds {held} instances, the most one identity may register")

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

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        async with CallScope(context):
            self._owned(request.instance_id)
            known = await self._registry.heartbeat(request.instance_id, convert.load_from_pb(request.load))
            return pb.HeartbeatResponse(
                status=pb.HEARTBEAT_STATUS_OK if known else pb.HEARTBEAT_STATUS_UNKNOWN_INSTANCE
            )

    async def DeregisterInstance(
        self, request: pb.DeregisterInstanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterInstanceResponse:
        async with CallScope(context):
            self._owned(request.instance_id)
            return pb.DeregisterInstanceResponse(removed=await self._registry.deregister(request.instance_id))

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInstancesResponse:
        async with CallScope(context):
            instances = self._registry.instances(request.model, request.healthy_only)
            return pb.ListInstancesResponse(instances=[convert.instance_to_pb(i) for i in instances])

    async def WatchInstances(
        self, request: pb.WatchInstancesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchInstancesResponse]:
        try:
            async for batch in self._registry.watch(request.model):
                yield convert.batch_to_pb(batch)
        except ConnectionError as lost:
            # The watcher fell behind or the backing store went away: the caller watches again.
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{lost}; watch again")
