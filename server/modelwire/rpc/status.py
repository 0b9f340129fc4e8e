"""Typed errors → gRPC status with google.rpc details: the one lookup from an error's `code`
(core/errors.py) to its grpc.StatusCode, and the one reader of the details a peer sent back (and
of a peer's status as a typed error again: `received_error`)."""

from __future__ import annotations

import asyncio
import contextlib
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
from modelwire.observe.call_record import current_call, note_error_kind
from modelwire.rpc.wire import ERROR_DOMAIN, NOT_STARTED, STATUS_DETAILS_KEY, attempts_trailer

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
        if error.not_started:
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
                quota_dimensions={"tenant": v.tenant, "model": v.model}
                | ({"deployment": v.deployment} if v.deployment is not None else {}),
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


class PeerError(errors.ModelwireError):
    """A peer's failure (a worker's, behind a gateway) that no typed error here stands for: the
    peer's message, and its status code as the class's `code`, as every typed error names it (one
    subclass per code)."""


def _peer_error_class(code: grpc.StatusCode) -> type[PeerError]:
    name = "Peer" + "".join(word.capitalize() for word in code.name.split("_"))
    return type(name, (PeerError,), {"code": code.name, "__module__": __name__})


# Every status a failure can have (a peer's OK is no failure).
_PEER_ERRORS = {code: _peer_error_class(code) for code in grpc.StatusCode if code.value[0] != 0}


def received_error(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> errors.ModelwireError:
    """A peer's status (its code, message and the google.rpc.Status of its trailers) as the typed
    error it was sent for, so an edge that is not gRPC (the HTTP facade on a gateway) answers a
    worker's failure as it answers its own: its field violations, quota, retry delay and reasons
    rebuilt from the details; any other status as a PeerError of its code. It is `relayed`: the
    peer counted it by kind already."""
    error = _typed_error(code, message, status)
    error.relayed = True
    return error


def _typed_error(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> errors.ModelwireError:
    details = _unpacked(status)
    retry = details.get(error_details_pb2.RetryInfo.DESCRIPTOR.full_name)
    retry_after_s = (
        retry.retry_delay.ToNanoseconds() / 1e9
        if isinstance(retry, error_details_pb2.RetryInfo)
        else None
    )
    reasons = error_reasons(status)
    bad = details.get(error_details_pb2.BadRequest.DESCRIPTOR.full_name)
    quota = details.get(error_details_pb2.QuotaFailure.DESCRIPTOR.full_name)
    precondition = details.get(error_details_pb2.PreconditionFailure.DESCRIPTOR.full_name)
    if code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(bad, error_details_pb2.BadRequest):
        return errors.InvalidRequest(
            [errors.FieldViolation(v.field, v.description) for v in bad.field_violations]
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if isinstance(quota, error_details_pb2.QuotaFailure):
            return errors.QuotaExceeded(
                [_quota_violation(v) for v in quota.violations], retry_after_s
            )
        if retry_after_s is not None:
            if NOT_STARTED in reasons:
                return errors.Overloaded(message, retry_after_s, not_started=True)
            return errors.UpstreamRateLimited(message, retry_after_s)
    if code == grpc.StatusCode.UNAVAILABLE and retry_after_s is not None:
        return errors.NotReady(message, retry_after_s)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(message, reasons[0] if reasons else None)
    if (
        code == grpc.StatusCode.FAILED_PRECONDITION
        and isinstance(precondition, error_details_pb2.PreconditionFailure)
        and any(v.type == "CONTEXT_LENGTH" for v in precondition.violations)
    ):
        return errors.UpstreamContextExceeded(message)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(message)
    return _PEER_ERRORS[code](message)


def _unpacked(status: status_pb2.Status | None) -> dict[str, Message]:
    """The first detail of each kind this reader knows, by its type's full name."""
    found: dict[str, Message] = {}
    for packed in status.details if status is not None else ():
        for kind in _DETAIL_KINDS:
            if packed.Is(kind.DESCRIPTOR) and kind.DESCRIPTOR.full_name not in found:
                detail = kind()
                if packed.Unpack(detail):
                    found[kind.DESCRIPTOR.full_name] = detail
    return found


_DETAIL_KINDS: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
)


def _quota_violation(violation: error_details_pb2.QuotaFailure.Violation) -> errors.QuotaViolation:
    """`_quota_failure`'s violation read back: a limit that is not a whole number travels only in
    the description's last word (`QuotaViolation.describe`)."""
    rule = violation.quota_id.removeprefix("rule-")
    limit = float(violation.quota_value)
    if not limit:
        with contextlib.suppress(ValueError):
            limit = float(violation.description.rsplit(" ", 1)[-1])
    dimensions = violation.quota_dimensions
    return errors.QuotaViolation(
        rule=int(rule) if rule.isdigit() else 0,
        tenant=dimensions.get("tenant", ""),
        model=dimensions.get("model", ""),
        limit_name=violation.quota_metric,
        limit=limit,
    )


class CallScope:
    """The caller's remaining time bounds all work; a typed error leaves as its status.

    A class rather than @asynccontextmanager so the type checker knows it never swallows an
    exception: `__aexit__` returns None, aborting replaces the error with the status.
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        remaining = context.time_remaining()
        # No deadline, no timer (an unarmed asyncio.timeout costs a call as much as half an armed
        # one).
        self._timeout = asyncio.timeout(remaining) if remaining is not None else None
        set_deadline(remaining)

    async def __aenter__(self) -> None:
        if self._timeout is not None:
            await self._timeout.__aenter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._timeout is not None:
            try:
                await self._timeout.__aexit__(kind, error, traceback)
            except TimeoutError as expired:
                error = expired
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            note_error_kind(error_kind(error))
            status = to_status(error)
            # Keep what the call pipeline already put in the trailer (request id) next to the
            # details, with the server's own trailers as they are now (a worker's load report).
            trailer = tuple(self._context.trailing_metadata() or ())
            record = current_call()
            if record is not None:
                if record.server_trailers is not None:
                    trailer += record.server_trailers()
                trailer += attempts_trailer(record.attempts)
            trailer += tuple(status.trailing_metadata)
            try:
                await self._context.abort(status.code, status.details, trailer)
            except grpc.aio.AbortError:
                raise
            except Exception:
                # The call already ended at the transport (its deadline passed the same instant,
                # the caller left): there is nobody to tell, and grpc refuses to send a status.
                raise asyncio.CancelledError from error
