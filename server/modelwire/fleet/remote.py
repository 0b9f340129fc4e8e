"""A ModelController over gRPC, as a Registrar (for a worker's agent) and an InstanceSource (for a
gateway). A failed unary call leaves as a typed error (`typed_error`), so its callers know neither
grpc nor the controller's wording; a watch that ends is a ConnectionError, the InstanceSource's
contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from modelwire.core.errors import (
    FieldViolation,
    InvalidRequest,
    ModelwireError,
    PermissionDenied,
    RegistryUnavailable,
)
from modelwire.core.settings import RegistryAccess
from modelwire.fleet import convert
from modelwire.fleet.types import InstanceSpec, Lease, ModelLoad, WatchBatch
from modelwire.rpc.auth import Unauthenticated
from modelwire.rpc.channels import client_options, dial
from modelwire.rpc.status import error_reasons, received_status
from modelwire.rpc.wire import ID_TAKEN
from modelwire.v1 import controller_pb2 as pb
from modelwire.v1 import controller_pb2_grpc as pb_grpc

SNAPSHOT_LIMIT = 64 * 1024 * 1024
# How controllers before the ErrorInfo reason said an id was taken (controller/servicer.py keeps
# the words): a worker upgraded before its controller must still take a new id. Remove once no
# controller of that age can be running.
_LEGACY_ID_TAKEN = "was registered by another identity"


def typed_error(error: grpc.aio.AioRpcError) -> ModelwireError:
    """The controller's refusal as the typed error it raised (a taken id is PermissionDenied with
    ErrorInfo reason ID_TAKEN); any other failure is RegistryUnavailable: the caller retries."""
    code, message = error.code(), error.details() or ""
    status = received_status(error.trailing_metadata())
    if code == grpc.StatusCode.PERMISSION_DENIED:
        reasons = error_reasons(status)
        if not reasons and _LEGACY_ID_TAKEN in message:
            reasons = [ID_TAKEN]
        return PermissionDenied(message, reason=reasons[0] if reasons else None)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(_violations(status) or [FieldViolation("request", message)])
    return RegistryUnavailable(f"{code.name}: {message}")


def _violations(status: status_pb2.Status | None) -> list[FieldViolation]:
    """The field violations of a google.rpc.Status's BadRequest details."""
    found = []
    for packed in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if packed.Is(bad.DESCRIPTOR) and packed.Unpack(bad):
            found += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return found


class RemoteController:
    """Calls a `modelwire controller`; every unary call is bounded by `timeout_s`."""

    def __init__(
        self, address: str, access: RegistryAccess | None = None, timeout_s: float = 3.0
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        access = access or RegistryAccess()
        # A fleet's snapshot is one message: registrations are bounded (fleet/registry.py), and
        # the limit here leaves room for thousands of instances beyond gRPC's 4 MiB default.
        self._channel = dial(
            address,
            access.tls,
            access.token,
            [*client_options(), ("grpc.max_receive_message_length", SNAPSHOT_LIMIT)],
        )
        self._stub = pb_grpc.ModelControllerStub(self._channel)

    def __str__(self) -> str:
        return f"controller {self.address}"

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: Any, request: Message) -> Any:
        """One bounded unary call; its failure as a typed error."""
        try:
            return await method(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            raise typed_error(error) from error

    async def register(self, spec: InstanceSpec) -> Lease:
        response: pb.RegisterInstanceResponse = await self._unary(
            self._stub.RegisterInstance, convert.register_request(spec)
        )
        return convert.lease_from_pb(response)

    async def heartbeat(self, instance_id: str, load: Mapping[str, ModelLoad]) -> bool:
        request = pb.HeartbeatRequest(instance_id=instance_id, load=convert.load_to_pb(load))
        response: pb.HeartbeatResponse = await self._unary(self._stub.Heartbeat, request)
        return bool(response.status == pb.HEARTBEAT_STATUS_OK)

    async def deregister(self, instance_id: str) -> bool:
        response: pb.DeregisterInstanceResponse = await self._unary(
            self._stub.DeregisterInstance, pb.DeregisterInstanceRequest(instance_id=instance_id)
        )
        return bool(response.removed)

    async def list(self, model: str = "", healthy_only: bool = False) -> list[pb.Instance]:
        request = pb.ListInstancesRequest(model=model, healthy_only=healthy_only)
        response: pb.ListInstancesResponse = await self._unary(self._stub.ListInstances, request)
        return list(response.instances)

    async def watch(self, model: str = "") -> AsyncIterator[WatchBatch]:
        call = self._stub.WatchInstances(pb.WatchInstancesRequest(model=model))
        try:
            async for message in call:
                yield convert.batch_from_pb(message)
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(
                f"watch on {self} ended: {error.code().name} {error.details()}"
            ) from error
        finally:
            call.cancel()
        raise ConnectionError(f"watch on {self} ended")
