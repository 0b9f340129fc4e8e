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


# What a connection refused at its TLS handshake most likely means (`connection_problem`), and
# what to change, in this client's terms (the CLI words its own flags).
TLS_REQUIRED = "tls_required"
CERTIFICATE_REQUIRED = "certificate_required"
SERVER_NOT_TLS = "server_not_tls"
_HINTS = {
    TLS_REQUIRED: "is the server using TLS? pass credentials=tls_credentials(ca_file)",
    CERTIFICATE_REQUIRED: (
        "does the server require a client certificate (mTLS)? pass "
        "credentials=tls_credentials(ca_file, cert_file, key_file) with one its client CA signed"
    ),
    SERVER_NOT_TLS: "is the server plaintext? pass no credentials",
}


class ModelwireCallError(Exception):
    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: list[object],
        connection_problem: str | None = None,
    ) -> None:
        hint = f" ({_HINTS[connection_problem]})" if connection_problem else ""
        super().__init__(f"{code.name}: {message}{hint}")
        self.code = code
        self.message = message
        self.details = details
        # TLS_REQUIRED, CERTIFICATE_REQUIRED, SERVER_NOT_TLS, or None.
        self.connection_problem = connection_problem

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
        """The violations as {field: description}; a field's several descriptions are
        joined by "; "."""
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


def connection_problem(code: grpc.StatusCode, message: str, secure: bool) -> str | None:
    """gRPC says "Socket closed" when a TLS server drops a plaintext client, or an mTLS server a
    client without an accepted certificate, and "Tls handshake failed … WRONG_VERSION_NUMBER"
    when a TLS client meets a plaintext server; `secure`: this client spoke TLS."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    if "Socket closed" in message:
        return CERTIFICATE_REQUIRED if secure else TLS_REQUIRED
    if secure and "WRONG_VERSION_NUMBER" in message:
        return SERVER_NOT_TLS
    return None


def from_rpc_error(error: grpc.RpcError, secure: bool | None = None) -> ModelwireCallError:
    """Works for sync and aio errors alike: both carry the rich status in trailing metadata.
    `secure` (whether the channel speaks TLS) lets a refused handshake say what to change."""
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
    code, message = error.code(), error.details() or ""
    problem = connection_problem(code, message, secure) if secure is not None else None
    return ModelwireCallError(code, message, details, problem)
