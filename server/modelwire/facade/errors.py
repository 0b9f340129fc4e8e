"""Every failure of a facade call as the HTTP error a caller gets: the status follows from the gRPC
status the same failure has on the gRPC API (core/errors.py names it on each error class), so
both APIs and the gRPC edge tell a caller the same thing."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from modelwire.core import errors
from modelwire.facade.calls import HttpError
from modelwire.rpc.status import PeerError, to_status

# The gRPC status → the HTTP status OpenAI's and Anthropic's APIs use for that kind of failure.
# FAILED_PRECONDITION is the request's fault (a prompt over the context) unless the class says
# otherwise (below); RESOURCE_EXHAUSTED is a limit (429) unless it is this server's own overload.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

# Failures that are the operator's, not the caller's, whatever their gRPC status: an upstream key
# that is refused, an upstream account without credit, a tokenizer that cannot load, a routing loop.
_OPERATORS = (
    errors.UpstreamAuthFailed,
    errors.UpstreamAccountProblem,
    errors.TokenizerUnavailable,
    errors.RoutingLoop,
)


class BodyTimeout(errors.ModelwireError):
    """A request whose body did not arrive whole within the receive bound (a stalled or
    slowloris peer): HTTP's 408, and DEADLINE_EXCEEDED in the access line."""

    code: ClassVar[str] = "DEADLINE_EXCEEDED"


def http_error(error: BaseException, param_of: Callable[[str], str]) -> HttpError:
    """`error` as an HTTP caller gets it, a request field it names as `param_of` names it in the
    API's terms; an unexpected error is logged with an incident id (as the gRPC edge logs it:
    rpc/status.to_status) and shown only as that id."""
    if isinstance(error, TimeoutError):
        error = errors.DeadlineExceeded("the call's deadline passed before generation finished")
    code = getattr(error, "code", None) if isinstance(error, errors.ModelwireError) else None
    if code is None:
        return HttpError(500, "INTERNAL", to_status(error).details)
    message = str(error)
    if isinstance(error, BodyTimeout):
        return HttpError(408, code, message)
    param = None
    if isinstance(error, errors.InvalidRequest) and error.violations:
        named = [(param_of(v.field) if v.field else "", v.description) for v in error.violations]
        param = named[0][0] or None
        message = "; ".join(f"{field}: {text}" if field else text for field, text in named)
    elif isinstance(error, errors.ModelNotFound):
        param = "model"
    elif isinstance(error, errors.ContextLengthExceeded | errors.UpstreamContextExceeded):
        param = "messages"  # what OpenAI names for a prompt over the context
    if isinstance(error, _OPERATORS) or (
        # A worker's FAILED_PRECONDITION behind a gateway that is not a prompt over the context
        # (which arrives typed): its upstream's key, account or tokenizer, a routing loop.
        isinstance(error, PeerError) and code == "FAILED_PRECONDITION"
    ):
        return HttpError(502, code, message)
    status = HTTP_STATUS.get(code, 500)
    retry_after = getattr(error, "retry_after_s", None)
    if isinstance(error, errors.Overloaded) and not isinstance(error, errors.UpstreamRateLimited):
        status = 503  # this server's queue is full: overloaded, not the caller's limit
    return HttpError(
        status,
        code,
        message,
        param=param,
        retry_after_s=retry_after if isinstance(retry_after, int | float) else None,
    )
