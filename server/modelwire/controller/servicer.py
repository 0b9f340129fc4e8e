"""The ModelController gRPC edge: translate, guard registrations, call the registry, map errors.

Registrations are checked here, where the caller is known: an instance id belongs to the identity
(token name) that registered it, addresses only this machine can dial are refused unless the fleet
is on one machine, and a weight has a ceiling (a weight of a million would win every pick).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from modelwire.core.addresses import host_of, is_private_to_host
from modelwire.core.errors import FieldViolation, InvalidRequest, PermissionDenied
from modelwire.fleet import convert
from modelwire.fleet.registry import Registry
from modelwire.fleet.types import InstanceSpec
from modelwire.rpc.auth import caller_identity
from modelwire.rpc.status import CallScope
from modelwire.v1 import controller_pb2 as pb
from modelwire.v1 import controller_pb2_grpc as pb_grpc


class RegistrationPolicy:
    def __init__(self, allow_private_addresses: bool, max_weight: int) -> None:
        self.allow_private_addresses = allow_private_addresses
        self.max_weight = max_weight

    def check(self, spec: InstanceSpec) -> None:
        violations = []
        host = host_of(spec.address)
        if not self.allow_private_addresses and (spec.address.startswith("unix") or is_private_to_host(host)):
            violations.append(FieldViolation(
                "address", f"{spec.address} can be dialled from its own machine only; register an address callers can reach"
            ))
        if spec.weight > self.max_weight:
            violations.append(FieldViolation("weight", f"at most {self.max_weight}, got {spec.weight}"))
        if violations:
            raise InvalidRequest(violations)


class ModelControllerServicer(pb_grpc.ModelControllerServicer):
    def __init__(self, registry: Registry, policy: RegistrationPolicy) -> None:
        self._registry = registry
        self._policy = policy

    def _owned(self, instance_id: str) -> None:
        """Refuses a caller that is not the identity which registered `instance_id`."""
        caller = caller_identity() or ""
        for instance in self._registry.instances():
            if instance.instance_id == instance_id and instance.spec.owner != caller:
                raise PermissionDenied(f"instance {instance_id!r} was registered by another identity")

    async def RegisterInstance(
        self, request: pb.RegisterInstanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterInstanceResponse:
        async with CallScope(context):
            spec = convert.spec_from_register(request)
            self._policy.check(spec)
            if spec.instance_id:
                self._owned(spec.instance_id)
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
