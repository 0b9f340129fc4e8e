"""gRPC errors as one exception type that carries the code and the google.rpc details."""

from __future__ import annotations

from typing import NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class FieldViolation(NamedTuple):
    """One problem of a refused request: the request field (`tools`, `messages[0].parts[1].image`,
    `output_format.grammar`, …) and why; a refusal for a model's capabilities names the model."""

    field: str
    description: str


class ModelwireCallError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, details: list[object]) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @property
    def violations(self) -> list[FieldViolation]:
        """INVALID_ARGUMENT's google.rpc.BadRequest field violations, in the server's order (a
        field may appear more than once)."""
        return [
            FieldViolation(violation.field, violation.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.BadRequest)
            for violation in detail.field_violations
        ]

    @property
    def field_violations(self) -> dict[str, str]:
        """The violations as {field: description}; a field's several descriptions are joined by "; "."""
        joined: dict[str, str] = {}
        for field, description in self.violations:
            joined[field] = f"{joined[field]}; {description}" if field in joined else description
        return joined

    @property
    def retry_after_s(self) -> float | None:
        """RESOURCE_EXHAUSTED's google.rpc.RetryInfo delay, when the server sent one."""
        for detail in self.details:
            if isinstance(detail, error_details_pb2.RetryInfo):
                return float(detail.retry_delay.ToNanoseconds()) / 1e9
        return None


_DETAIL_TYPES = (
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ErrorInfo,
)


def from_rpc_error(error: grpc.RpcError) -> ModelwireCallError:
    """Works for sync and aio errors alike: both carry the rich status in trailing metadata."""
    details: list[object] = []
    for key, value in error.trailing_metadata() or ():
        if key != rpc_status.GRPC_DETAILS_METADATA_KEY:
            continue
        for packed in status_pb2.Status.FromString(value).details:
            for kind in _DETAIL_TYPES:
                if packed.Is(kind.DESCRIPTOR):
                    detail = kind()
                    packed.Unpack(detail)
                    details.append(detail)
    return ModelwireCallError(error.code(), error.details() or "", details)
