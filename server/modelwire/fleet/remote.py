"""A ModelController over gRPC, as a Registrar (for a worker's agent) and an InstanceSource (for a gateway)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc

from modelwire.fleet import convert
from modelwire.fleet.types import InstanceSpec, Lease, ModelLoad, WatchBatch
from modelwire.core.settings import RegistryAccess
from modelwire.rpc.channels import client_options, dial
from modelwire.v1 import controller_pb2 as pb
from modelwire.v1 import controller_pb2_grpc as pb_grpc

SNAPSHOT_LIMIT = 64 * 1024 * 1024


class RemoteController:
    """Calls a `modelwire controller`; every unary call is bounded by `timeout_s`."""

    def __init__(self, address: str, access: RegistryAccess | None = None, timeout_s: float = 3.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        access = access or RegistryAccess()
        # A fleet's snapshot is one message: registrations are bounded (fleet/registry.py), and
        # the limit here leaves room for thousands of instances beyond gRPC's 4 MiB default.
        self._channel = dial(address, access.tls, access.token, [*client_options(), ("grpc.max_receive_message_length", SNAPSHOT_LIMIT)])
        self._stub = pb_grpc.ModelControllerStub(self._channel)

    def __str__(self) -> str:
        return f"controller {self.address}"

    async def close(self) -> None:
        await self._channel.close()

    async def register(self, spec: InstanceSpec) -> Lease:
        response: pb.RegisterInstanceResponse = await self._stub.RegisterInstance(
            convert.register_request(spec), timeout=self.timeout_s
        )
        return convert.lease_from_pb(response)

    async def heartbeat(self, instance_id: str, load: Mapping[str, ModelLoad]) -> bool:
        response: pb.HeartbeatResponse = await self._stub.Heartbeat(
            pb.HeartbeatRequest(instance_id=instance_id, load=convert.load_to_pb(load)), timeout=self.timeout_s
        )
        return bool(response.status == pb.HEARTBEAT_STATUS_OK)

    async def deregister(self, instance_id: str) -> bool:
        response: pb.DeregisterInstanceResponse = await self._stub.DeregisterInstance(
            pb.DeregisterInstanceRequest(instance_id=instance_id), timeout=self.timeout_s
        )
        return bool(response.removed)

    async def list(self, model: str = "", healthy_only: bool = False) -> list[pb.Instance]:
        response: pb.ListInstancesResponse = await self._stub.ListInstances(
            pb.ListInstancesRequest(model=model, healthy_only=healthy_only), timeout=self.timeout_s
        )
        return list(response.instances)

    async def watch(self, model: str = "") -> AsyncIterator[WatchBatch]:
        call = self._stub.WatchInstances(pb.WatchInstancesRequest(model=model))
        try:
            async for message in call:
                yield convert.batch_from_pb(message)
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(f"watch on {self} ended: {error.code().name} {error.details()}") from error
        finally:
            call.cancel()
        raise ConnectionError(f"watch on {self} ended")
