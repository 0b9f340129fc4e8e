"""Each typed error names its gRPC status (rpc/status.py only looks it up), and the fleet acts on
google.rpc.ErrorInfo reasons, never on message text: a controller sends ID_TAKEN with the
PERMISSION_DENIED of a taken instance id, its client (fleet/remote.py) maps that to a typed
error, and the worker's agent registers again under a new id only on that reason."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import pytest

import modelwire.fleet.etcd  # noqa: F401  (defines a typed error of its own)
import modelwire.rpc.malformed  # noqa: F401  (defines a typed error of its own)
from modelwire.controller.memory import MemoryRegistry
from modelwire.controller.servicer import ModelControllerServicer, RegistrationPolicy
from modelwire.core import errors
from modelwire.fleet.remote import typed_error
from modelwire.fleet.types import InstanceModel, InstanceSpec, Lease, ModelLoad
from modelwire.rpc.auth import Unauthenticated
from modelwire.rpc.status import PeerError, error_reasons, grpc_code, received_status, to_status
from modelwire.rpc.wire import ID_TAKEN
from modelwire.worker.agent import RegistrationAgent

# The statuses callers have always seen for the errors of core/errors.py.
STATUS_OF = {
    errors.InvalidRequest: "INVALID_ARGUMENT",
    errors.UpstreamRejected: "INVALID_ARGUMENT",
    errors.ModelNotFound: "NOT_FOUND",
    errors.UpstreamModelNotFound: "NOT_FOUND",
    errors.ContextLengthExceeded: "FAILED_PRECONDITION",
    errors.UpstreamContextExceeded: "FAILED_PRECONDITION",
    errors.UpstreamAccountProblem: "FAILED_PRECONDITION",
    errors.RoutingLoop: "FAILED_PRECONDITION",
    errors.UpstreamAuthFailed: "FAILED_PRECONDITION",
    errors.TokenizerUnavailable: "FAILED_PRECONDITION",
    errors.Overloaded: "RESOURCE_EXHAUSTED",
    errors.UpstreamRateLimited: "RESOURCE_EXHAUSTED",
    errors.UpstreamUnavailable: "UNAVAILABLE",
    errors.RegistryUnavailable: "UNAVAILABLE",
    errors.NotReady: "UNAVAILABLE",
    errors.PermissionDenied: "PERMISSION_DENIED",
    errors.DeadlineExceeded: "DEADLINE_EXCEEDED",
}
TAKEN_TEXT = "instance 'w1' was registered by another identity"


def _subclasses(kind: type[errors.ModelwireError]) -> set[type[errors.ModelwireError]]:
    return set(kind.__subclasses__()).union(*(_subclasses(sub) for sub in kind.__subclasses__()))


def test_every_typed_error_names_a_real_grpc_status() -> None:
    """INTERNAL is for this process's bugs alone; a peer's failure relayed as it came
    (rpc/status.py PeerError, one class per status a failure can have) keeps the peer's code."""
    relayed = _subclasses(PeerError)
    assert {kind.code for kind in relayed} == {
        code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK
    }
    everyone = _subclasses(errors.ModelwireError) - relayed - {PeerError}
    assert set(STATUS_OF) <= everyone and Unauthenticated in everyone
    for kind in everyone:
        assert isinstance(kind.code, str), kind
        status = grpc.StatusCode[kind.code]
        assert status not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL), kind
        assert grpc_code(kind.__new__(kind)) is grpc.StatusCode[kind.code]
    assert {kind: kind.code for kind in STATUS_OF} == STATUS_OF


def test_a_bare_modelwire_error_is_internal_and_shows_only_an_incident() -> None:
    status = to_status(errors.ModelwireError("a secret"))
    assert status.code is grpc.StatusCode.INTERNAL and "secret" not in status.details


def _as_received(error: errors.ModelwireError) -> grpc.aio.AioRpcError:
    """`error` as a controller sends it (rpc/status.py) and its client receives it."""
    status = to_status(error)
    trailers = grpc.aio.Metadata(*status.trailing_metadata)
    return grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), trailers, status.details)


def test_a_taken_id_is_known_by_its_error_info_reason() -> None:
    sent = _as_received(errors.PermissionDenied(TAKEN_TEXT, reason=ID_TAKEN))
    assert error_reasons(received_status(sent.trailing_metadata())) == [ID_TAKEN]
    taken = typed_error(sent)
    assert isinstance(taken, errors.PermissionDenied) and taken.reason == ID_TAKEN
    assert str(taken) == TAKEN_TEXT  # the text stays, for people


def _refused(details: str, *trailers: tuple[str, bytes]) -> errors.ModelwireError:
    return typed_error(
        grpc.aio.AioRpcError(
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(*trailers),
            details,
        )
    )


def test_a_controller_from_before_the_reason_still_gets_a_new_id_taken() -> None:
    """A rolling upgrade meets workers newer than their controller: an older controller says a
    taken id only in words (no ErrorInfo), and a worker that ignored them stayed unregistered."""
    for trailers in ((), (("grpc-status-details-bin", b"\xff garbage"),)):
        refusal = _refused(TAKEN_TEXT, *trailers)
        assert isinstance(refusal, errors.PermissionDenied) and refusal.reason == ID_TAKEN
    other = _refused("token 'w' lacks the 'register' permission")
    assert isinstance(other, errors.PermissionDenied) and other.reason is None


def test_the_controller_client_maps_each_failure_once() -> None:
    invalid = errors.InvalidRequest([errors.FieldViolation("address", "nohostport: no port")])
    mapped = typed_error(_as_received(invalid))
    assert isinstance(mapped, errors.InvalidRequest) and mapped.violations == invalid.violations
    unknown = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no token"
    )
    assert isinstance(typed_error(unknown), Unauthenticated)
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused"
    )
    lost = typed_error(down)
    assert isinstance(lost, errors.RegistryUnavailable)
    assert str(lost) == "UNAVAILABLE: connection refused"


async def test_the_controller_refuses_a_taken_id_with_the_error_info() -> None:
    registry = MemoryRegistry(3)
    spec = InstanceSpec("w1", "10.0.0.1:1", (InstanceModel("m"),), owner="worker-b")
    await registry.register(spec)
    servicer = ModelControllerServicer(registry, RegistrationPolicy(True, 100))
    with pytest.raises(errors.PermissionDenied) as raised:
        servicer._owned("w1")  # the caller (no [auth]: identity "") is not worker-b
    assert raised.value.reason == ID_TAKEN and str(raised.value) == TAKEN_TEXT
    sent = _as_received(raised.value)
    assert (sent.code(), sent.details()) == (grpc.StatusCode.PERMISSION_DENIED, TAKEN_TEXT)
    assert error_reasons(received_status(sent.trailing_metadata())) == [ID_TAKEN]


class _RefusingOnce:
    """A registrar that refuses the first registration with `refusal`, then accepts."""

    def __init__(self, refusal: Exception) -> None:
        self.refusal = refusal
        self.ids: list[str] = []

    async def register(self, spec: InstanceSpec) -> Lease:
        self.ids.append(spec.instance_id)
        if len(self.ids) == 1:
            raise self.refusal
        return Lease(spec.instance_id, 60.0, 30.0)

    async def heartbeat(self, instance_id: str, load: Mapping[str, ModelLoad]) -> bool:
        return True

    async def deregister(self, instance_id: str) -> bool:
        return True

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("refusal", "new_id"),
    [
        (errors.PermissionDenied(TAKEN_TEXT, reason=ID_TAKEN), True),
        (errors.PermissionDenied(TAKEN_TEXT), False),
    ],
)
async def test_the_agent_takes_a_new_id_only_on_the_id_taken_reason(
    refusal: errors.PermissionDenied, new_id: bool, caplog: pytest.LogCaptureFixture
) -> None:
    registrar = _RefusingOnce(refusal)
    spec = InstanceSpec("w1", "10.0.0.1:1", (InstanceModel("m"),))
    agent = RegistrationAgent(registrar, spec, dict, max_backoff_s=0.05)  # type: ignore[arg-type]
    await agent.start()
    try:
        await asyncio.wait_for(agent.registered.wait(), 5)
    finally:
        await agent.stop()
    first, second = registrar.ids
    assert first == "w1" and (second != first) is new_id
    assert agent.instance_id == second
    # The log line names the status and the reason, as docs/operations.md says.
    assert f"refused w1: PERMISSION_DENIED: {refusal}" in caplog.text
