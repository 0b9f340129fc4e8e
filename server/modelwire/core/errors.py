"""Typed errors: providers and the worker raise these, the edge maps each to one gRPC status.

Each error names its gRPC status as the class attribute `code` (a string, so core/ stays free of
grpc); rpc/status.py turns it into the status and adds the google.rpc details shown below.

    Exception
    ├── StartupFailure                  (the worker cannot start; never a caller's error)
    └── ModelwireError
        ├── InvalidRequest              INVALID_ARGUMENT     BadRequest
        ├── UpstreamRejected            INVALID_ARGUMENT
        ├── ModelNotFound               NOT_FOUND
        ├── UpstreamModelNotFound       NOT_FOUND
        ├── ContextLengthExceeded       FAILED_PRECONDITION  PreconditionFailure
        ├── UpstreamContextExceeded     FAILED_PRECONDITION  PreconditionFailure
        ├── UpstreamAccountProblem      FAILED_PRECONDITION
        ├── UpstreamAuthFailed          FAILED_PRECONDITION
        ├── RoutingLoop                 FAILED_PRECONDITION
        ├── TokenizerUnavailable        FAILED_PRECONDITION
        ├── Overloaded                  RESOURCE_EXHAUSTED   RetryInfo, ErrorInfo NOT_STARTED
        │   └── UpstreamRateLimited     RESOURCE_EXHAUSTED   RetryInfo
        ├── QuotaExceeded               RESOURCE_EXHAUSTED   QuotaFailure, RetryInfo
        │   └── AccountLimited          RESOURCE_EXHAUSTED   QuotaFailure, RetryInfo
        ├── NotReady                    UNAVAILABLE          RetryInfo, ErrorInfo NOT_STARTED
        ├── QuotaStoreUnavailable       UNAVAILABLE          RetryInfo
        ├── UpstreamUnavailable         UNAVAILABLE
        │   └── AttemptTimedOut         UNAVAILABLE
        ├── RegistryUnavailable         UNAVAILABLE
        ├── PermissionDenied            PERMISSION_DENIED    ErrorInfo `reason` (ID_TAKEN)
        └── DeadlineExceeded            DEADLINE_EXCEEDED

The call pipeline's own refusals are typed too, where they are made: `Unauthenticated`
(rpc/auth.py) and `MalformedRequest` (rpc/malformed.py). Any other exception is INTERNAL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

# Bounds of every retry delay a caller is told (google.rpc.RetryInfo): at least half a second, so a
# "retry now" never turns into a hot loop, and at most a day, so a huge or infinite Retry-After
# stays a number a client can hold.
MIN_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 86400.0


def retry_delay(seconds: float) -> float:
    """`seconds` within [MIN_RETRY_DELAY_S, MAX_RETRY_DELAY_S]; not a number counts as the
    maximum."""
    if math.isnan(seconds):
        return MAX_RETRY_DELAY_S
    return min(max(seconds, MIN_RETRY_DELAY_S), MAX_RETRY_DELAY_S)


class StartupFailure(Exception):
    """The worker cannot start (a model fails its warm-up, a build does not fit the CPU); never a
    caller's error."""


class ModelwireError(Exception):
    """Base of every error a caller may see; its message must be safe to show (no secrets).
    Each subclass sets `code`, the name of its grpc.StatusCode."""

    code: ClassVar[str]
    # A peer's failure passed on (a worker's, by a gateway's HTTP facade: rpc/status.py
    # received_error): counted by kind where it happened, not again by the one passing it on.
    relayed: bool = False


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidRequest(ModelwireError):
    """At most MAX_VIOLATIONS problems are named: the status travels in a header, and a request with
    thousands of bad messages would otherwise get a trailer no client accepts."""

    code: ClassVar[str] = "INVALID_ARGUMENT"

    MAX_VIOLATIONS = 10

    def __init__(self, violations: list[FieldViolation]) -> None:
        if len(violations) > self.MAX_VIOLATIONS:
            more = len(violations) - self.MAX_VIOLATIONS + 1
            violations = violations[: self.MAX_VIOLATIONS - 1] + [
                FieldViolation(
                    violations[self.MAX_VIOLATIONS - 1].field,
                    f"and {more} more problems like the above",
                )
            ]
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class ModelNotFound(ModelwireError):
    code: ClassVar[str] = "NOT_FOUND"

    def __init__(self, model: str, served: list[str]) -> None:
        self.model = model
        self.served = served
        super().__init__(f"model {model!r} is not served here; served models: {', '.join(served)}")


class ContextLengthExceeded(ModelwireError):
    code: ClassVar[str] = "FAILED_PRECONDITION"

    def __init__(
        self,
        model: str,
        prompt_tokens: int,
        context_length: int,
        estimate_margin: float | None = None,
    ) -> None:
        """`estimate_margin`: the count is an estimate that may be off by this fraction."""
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        count = (
            f"{prompt_tokens} tokens"
            if estimate_margin is None
            else f"about {prompt_tokens} tokens (an estimate, too long even if "
            f"{estimate_margin:.0%} high)"
        )
        super().__init__(
            f"prompt has {count} but model {model!r} has a context of {context_length} tokens; "
            "shorten the messages"
        )


class Overloaded(ModelwireError):
    """The worker or the upstream cannot take the call now; retry after `retry_after_s`.
    `not_started`: refused before any work (admission), so another instance may take it at once."""

    code: ClassVar[str] = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float, not_started: bool = False) -> None:
        self.retry_after_s = retry_delay(retry_after_s)
        self.not_started = not_started
        super().__init__(message)


class UpstreamRateLimited(Overloaded):
    """The provider is limiting this worker's account (its HTTP 429): RESOURCE_EXHAUSTED like the
    worker's own refusal, but a kind of its own in logs and metrics, since "the provider limits
    us" and "we are full" call for different alerts."""


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One limit a call found without room: which rule, whose calls (a tenant, or "all"), which
    model ("*": every model), which limit and its value."""

    rule: int
    tenant: str
    model: str
    limit_name: str
    limit: float
    # The deployment whose account limit it is (a rule naming one), if any.
    deployment: str | None = None

    def describe(self) -> str:
        deployment = f", deployment {self.deployment!r}" if self.deployment is not None else ""
        return (
            f"rule {self.rule} (tenant {self.tenant!r}, model {self.model!r}{deployment}): "
            f"{self.limit_name} {self.limit:g}"
        )


class QuotaExceeded(ModelwireError):
    """A tenant's limit or budget has no room for the call (`[quota]`); it never reached the
    provider. `retry_after_s` None: the call alone asks for more than the limit allows."""

    code: ClassVar[str] = "RESOURCE_EXHAUSTED"

    def __init__(self, violations: list[QuotaViolation], retry_after_s: float | None) -> None:
        self.violations = violations
        self.retry_after_s = None if retry_after_s is None else retry_delay(retry_after_s)
        limits = "; ".join(violation.describe() for violation in violations)
        advice = (
            "this call alone reserves more than the limit allows: lower max_new_tokens or "
            "shorten the prompt"
            if self.retry_after_s is None
            else f"retry after {self.retry_after_s:.1f}s"
        )
        super().__init__(f"over quota: {limits}; {advice}")


class AccountLimited(QuotaExceeded):
    """Only a deployment's own limits (its provider account's, a rule naming the deployment) had
    no room: the call moves on to another deployment or route member, and is refused with this
    only when none is left."""


class QuotaStoreUnavailable(ModelwireError):
    """The store of the fleet's quota counters cannot be reached and `on_store_failure` is
    "refuse": a call a rule limits is refused rather than let through unlimited."""

    code: ClassVar[str] = "UNAVAILABLE"

    def __init__(self, store: str, retry_after_s: float, refusal: str | None = None) -> None:
        """`refusal`: the store answered, but refused the quota's scripts (its reply)."""
        self.retry_after_s = retry_delay(retry_after_s)
        super().__init__(
            f"the quota store {store} cannot be reached, and calls its limits cover are refused "
            f'until it is back ([quota] on_store_failure = "refuse"); retry after '
            f"{self.retry_after_s:.1f}s"
            if refusal is None
            else f"the quota store {store} refused the quota's script ({refusal}): calls its "
            "limits cover are refused until its operator fixes it"
        )


class NotReady(ModelwireError):
    """Nothing can serve the call right now, but something should soon (a gateway without its
    instance table yet, a model whose only worker restarts, every circuit open); retry after
    `retry_after_s`. `not_started`: refused before any work, so another instance may take it."""

    code: ClassVar[str] = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float, not_started: bool = False) -> None:
        self.retry_after_s = retry_delay(retry_after_s)
        self.not_started = not_started
        super().__init__(message)


class UpstreamUnavailable(ModelwireError):
    """The provider could not be reached or failed on its side (connection error, 5xx)."""

    code: ClassVar[str] = "UNAVAILABLE"


class AttemptTimedOut(UpstreamUnavailable):
    """An attempt gave no first content (a stream) or no answer (unary) within its
    `attempt_timeout_s`: the call moved on, or, with nothing left to try, ends with this."""


class UpstreamRejected(ModelwireError):
    """The provider refused the request as malformed (its 400); the message is the provider's."""

    code: ClassVar[str] = "INVALID_ARGUMENT"


class UpstreamContextExceeded(ModelwireError):
    """The provider itself said the prompt and max_new_tokens do not fit its context; the
    message is the provider's (a worker's count is an estimate for most remote models)."""

    code: ClassVar[str] = "FAILED_PRECONDITION"


class UpstreamAccountProblem(ModelwireError):
    """The worker's account with the provider cannot pay or is suspended (HTTP 402): not the
    caller's fault, nothing the caller can change, and not worth an immediate retry."""

    code: ClassVar[str] = "FAILED_PRECONDITION"


class UpstreamAuthFailed(ModelwireError):
    code: ClassVar[str] = "FAILED_PRECONDITION"

    def __init__(self) -> None:
        super().__init__(
            "upstream rejected the worker's credentials; check the worker's API key configuration"
        )


class UpstreamModelNotFound(ModelwireError):
    """The provider does not know the configured upstream model."""

    code: ClassVar[str] = "NOT_FOUND"


class DeadlineExceeded(ModelwireError):
    """The caller's deadline or the configured timeout passed before the work finished."""

    code: ClassVar[str] = "DEADLINE_EXCEEDED"


class PermissionDenied(ModelwireError):
    """An authenticated caller asked for what its token does not allow (another's instance id).
    `reason`: a google.rpc.ErrorInfo reason for the caller's code to act on (rpc/wire.py's
    ID_TAKEN), so no caller matches message text."""

    code: ClassVar[str] = "PERMISSION_DENIED"

    def __init__(self, message: str, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(message)


class RoutingLoop(ModelwireError):
    """A gateway received a call it had forwarded itself (an instance registered at a gateway's
    address): the fleet's registrations must change, retrying cannot help."""

    code: ClassVar[str] = "FAILED_PRECONDITION"


class RegistryUnavailable(ModelwireError):
    """The fleet's registry (etcd, or a controller) cannot be reached; the caller retries."""

    code: ClassVar[str] = "UNAVAILABLE"


class TokenizerUnavailable(ModelwireError):
    """No tokenizer data could be loaded offline for this model."""

    code: ClassVar[str] = "FAILED_PRECONDITION"
