"""Typed errors → gRPC status with google.rpc details; the only place that picks a status code."""

from __future__ import annotations

import logging
import uuid

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from modelwire.core import errors

logger = logging.getLogger(__name__)

_CODES: dict[type[errors.ModelwireError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UpstreamRejected: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.UpstreamModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ContextLengthExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UpstreamAuthFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.TokenizerUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _details(error: errors.ModelwireError) -> list[any_pb2.Any]:
    if isinstance(error, errors.InvalidRequest):
        return [
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.violations
                    ]
                )
            )
        ]
    if isinstance(error, errors.Overloaded):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        return [_packed(error_details_pb2.RetryInfo(retry_delay=delay))]
    if isinstance(error, errors.ContextLengthExceeded):
        return [
            _packed(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type="CONTEXT_LENGTH", subject="messages", description=str(error)
                        )
                    ]
                )
            )
        ]
    return []


def error_kind(error: BaseException) -> str:
    """A stable label for metrics and logs: the typed error's name in snake case, else `internal`."""
    if isinstance(error, TimeoutError):
        return "deadline_exceeded"
    if not isinstance(error, errors.ModelwireError):
        return "internal"
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def to_status(error: BaseException) -> grpc.Status:
    """The status a caller sees; an unexpected error is logged with an id and shown only as that id."""
    if isinstance(error, TimeoutError):
        error = errors.DeadlineExceeded("the call's deadline passed before generation finished")
    code = next((code for kind, code in _CODES.items() if isinstance(error, kind)), None)
    if code is None:
        incident = uuid.uuid4().hex[:12]
        logger.error("internal error, incident %s", incident, exc_info=error)
        code, message, details = grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the worker's log", []
    else:
        assert isinstance(error, errors.ModelwireError)
        message, details = str(error), _details(error)
    return rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    )
