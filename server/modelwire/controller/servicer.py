"""The ModelController gRPC edge: translate, call the registry, map errors to statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from modelwire.fleet import convert
from modelwire.fleet.registry import Registry
from modelwire.core.errors import ModelwireError
from modelwire.v1 import controller_pb2 as pb
from modelwire.v1 import controller_pb2_grpc as pb_grpc
from modelwire.rpc.status import to_status


class ModelControllerServicer(pb_grpc.ModelControllerServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def RegisterInstance(
        self, request: pb.RegisterInstanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterInstanceResponse:
        try:
            return convert.lease_to_pb(await self._registry.register(convert.spec_from_register(request)))
        except ModelwireError as error:
            await context.abort_with_status(to_status(error))
            raise

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        known = await self._registry.heartbeat(request.instance_id, convert.load_from_pb(request.load))
        return pb.HeartbeatResponse(
            status=pb.HEARTBEAT_STATUS_OK if known else pb.HEARTBEAT_STATUS_UNKNOWN_INSTANCE
        )

    async def DeregisterInstance(
        self, request: pb.DeregisterInstanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterInstanceResponse:
        return pb.DeregisterInstanceResponse(removed=await self._registry.deregister(request.instance_id))

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInstancesResponse:
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
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(lost))
