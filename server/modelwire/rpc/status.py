"""Typed errors → gRPC status with google.rpc details: the one lookup from an error's `code`
(core/errors.py) to its grpc.StatusCode, and the one reader of the details a peer sent back."""

from __future__ import annotations

import asyncio
import logging
import traceback
import uuid
from collections.abc import Iterable
from types import TracebackType

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from modelwire.core import errors
from modelwire.core.deadline import set_deadline
from modelwire.core.redaction import MAX_SCRUBBED, scrub
from modelwire.observe.call_record import note_error_kind
from modelwire.rpc.wire import ERROR_DOMAIN, NOT_STARTED, STATUS_DETAILS_KEY

logger = logging.getLogger(__name__)


def grpc_code(error: errors.ModelwireError) -> grpc.StatusCode | None:
    """The status `error` names (its class's `code`); None for a bare ModelwireError."""
    name = getattr(error, "code", None)
    return grpc.StatusCode[name] if name is not None else None


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _error_info(reason: str) -> any_pb2.Any:
    return _packed(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))


def _details(error: errors.ModelwireError) -> list[any_pb2.Any]:
    if isinstance(error, errors.InvalidRequest):
        return [
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        ]
    if isinstance(error, errors.QuotaExceeded):
        details = [_packed(_quota_failure(error.violations))]
        if error.retry_after_s is not None:
            details.append(
                _packed(error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after_s)))
            )
        return details
    if isinstance(error, errors.QuotaStoreUnavailable):
        return [_packed(error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after_s)))]
    if isinstance(error, errors.Overloaded | errors.NotReady):
        details = [_packed(error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after_s)))]
        if isinstance(error, errors.Overloaded) and error.not_started:
            details.append(_error_info(NOT_STARTED))
        return details
    if isinstance(error, errors.PermissionDenied) and error.reason is not None:
        return [_error_info(error.reason)]
    if isinstance(error, errors.ContextLengthExceeded | errors.UpstreamContextExceeded):
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


def _duration(seconds: float) -> duration_pb2.Duration:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return delay


def _quota_failure(violations: list[errors.QuotaViolation]) -> error_details_pb2.QuotaFailure:
    """Each limit without room: `subject` whose calls ("tenant:NAME", or "all"), the limit as
    `quota_metric`, the rule as `quota_id`, tenant and model as `quota_dimensions`."""
    return error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject="all" if v.tenant == "all" else f"tenant:{v.tenant}",
                description=v.describe(),
                quota_metric=v.limit_name,
                quota_id=f"rule-{v.rule}",
                quota_dimensions={"tenant": v.tenant, "model": v.model},
                quota_value=int(v.limit) if float(v.limit).is_integer() else 0,
            )
            for v in violations
        ]
    )


def error_kind(error: BaseException) -> str:
    """A stable label for metrics and logs: the typed error's name in snake case, else
    `internal`."""
    if isinstance(error, TimeoutError):
        return "deadline_exceeded"
    if not isinstance(error, errors.ModelwireError):
        return "internal"
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def to_status(error: BaseException) -> grpc.Status:
    """The status a caller sees; an unexpected error is logged with an id and shown only as that
    id."""
    if isinstance(error, TimeoutError):
        error = errors.DeadlineExceeded("the call's deadline passed before generation finished")
    code = grpc_code(error) if isinstance(error, errors.ModelwireError) else None
    if code is None:
        incident = uuid.uuid4().hex[:12]
        # The traceback as text, scrubbed: an exception's message may quote the caller's prompt.
        # Its end (where the exception is) is kept when it is longer than the scrub takes.
        text = "".join(traceback.format_exception(error))
        if len(text) > MAX_SCRUBBED:
            text = "…" + text[-(MAX_SCRUBBED - 1) :]
        logger.error("internal error, incident %s\n%s", incident, scrub(text))
        code, message, details = (
            grpc.StatusCode.INTERNAL,
            f"internal error (incident {incident}); see the log of the server that answered",
            [],
        )
    else:
        assert isinstance(error, errors.ModelwireError)
        message, details = str(error), _details(error)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.Code.Value(code.name), message=message, details=details)
    )


async def refuse(context: grpc.aio.ServicerContext, error: errors.ModelwireError) -> None:
    """Ends the call with `error`'s status and message alone, and no error kind counted: the call
    pipeline's refusals before a method runs (a token, an undecodable body) and a held-open watch
    that ended, none of which has details to send."""
    code = grpc_code(error)
    assert code is not None, f"{type(error).__name__} names no status code"
    await context.abort(code, str(error))


def received_status(trailers: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    """The google.rpc.Status a peer sent in its trailers, if it sent one that decodes."""
    details = dict(trailers or ()).get(STATUS_DETAILS_KEY)
    if not isinstance(details, bytes):
        return None
    try:
        return status_pb2.Status.FromString(details)
    except DecodeError:
        return None


def error_reasons(status: status_pb2.Status | None) -> list[str]:
    """The reasons of the status's google.rpc.ErrorInfo details in modelwire's domain, in order."""
    reasons = []
    for packed in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if packed.Is(info.DESCRIPTOR) and packed.Unpack(info) and info.domain == ERROR_DOMAIN:
            reasons.append(info.reason)
    return reasons


class CallScope:
    """The caller's remaining time bounds all work; a typed error leaves as its status.

    A class rather than @asynccontextmanager so the type checker knows it never swallows an
    exception: `__aexit__` returns None, aborting replaces the error with the status.
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        remaining = context.time_remaining()
        self._timeout = asyncio.timeout(remaining)
        set_deadline(remaining)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, error, traceback)
        except TimeoutError as expired:
            error = expired
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            note_error_kind(error_kind(error))
            status = to_status(error)
            # Keep what the interceptors already put in the trailer (request id) next to the
            # details.
            trailer = tuple(self._context.trailing_metadata() or ()) + tuple(
                status.trailing_metadata
            )
            try:
                await self._context.abort(status.code, status.details, trailer)
            except grpc.aio.AbortError:
                raise
            except Exception:
                # The call already ended at the transport (its deadline passed the same instant,
                # the caller left): there is nobody to tell, and grpc refuses to send a status.
                raise asyncio.CancelledError from error
