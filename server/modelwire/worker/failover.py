"""One call's way through its target's candidates: which deployment to try next, when an attempt
gives way to the next one, and what the caller is told when none answers.

An attempt moves on when its upstream is unreachable or failing, limits the worker's account
(429, or a deployment's own quota rule), stays silent past `attempt_timeout_s` (or its own
`timeout_s`), refuses the worker's key, or cannot hold the prompt; when the deployment is full
here; never for the caller's own error, a tenant's limit or a cancel. A stream commits at its
first content: after that nothing moves on (docs/api.md#routes-and-fallbacks).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from modelwire.core import errors
from modelwire.core.balance import PickPolicy
from modelwire.core.deadline import remaining_s
from modelwire.core.types import ModelOutput, ResponseHeaders, Started
from modelwire.observe.call_record import note_attempt
from modelwire.observe.guard import never_fails
from modelwire.worker.breaker import BreakerState
from modelwire.worker.deployments import ServedModel, Target

# Why an attempt moved on, or was skipped (the access log's and the trailer's words).
ANSWERED = "answered"
FAILED_AFTER_CONTENT = "failed_after_content"
SKIPPED_FIELDS = "lacks_fields"
SKIPPED_OPEN = "circuit_open"


@dataclass(frozen=True, slots=True)
class Attempt:
    model: str
    deployment: str
    outcome: str

    def text(self) -> str:
        """`model/deployment=outcome`, names percent-encoded (the attempts trailer's items)."""
        model = urllib.parse.quote(self.model, safe="")
        deployment = urllib.parse.quote(self.deployment, safe="")
        return f"{model}/{deployment}={self.outcome}"


def move_on(error: BaseException) -> tuple[str, bool] | None:
    """Why `error` lets the call move on to its next candidate, and whether it counts against the
    deployment's breaker; None when the caller must get it."""
    if isinstance(error, errors.UpstreamRateLimited):
        return "rate_limited", True
    if isinstance(error, errors.Overloaded):
        return "overloaded", False
    if isinstance(error, errors.AccountLimited):
        return "account_limit", False
    if isinstance(error, errors.AttemptTimedOut):
        return "timeout", True
    if isinstance(error, errors.UpstreamUnavailable):
        return "unavailable", True
    if isinstance(error, errors.DeadlineExceeded):
        # The upstream's own silence bound (`timeout_s`), not the caller's deadline.
        left = remaining_s()
        return ("timeout", True) if left is None or left > 0 else None
    if isinstance(error, errors.ContextLengthExceeded | errors.UpstreamContextExceeded):
        return "context_length", False
    if isinstance(
        error,
        errors.UpstreamAuthFailed | errors.UpstreamAccountProblem | errors.UpstreamModelNotFound,
    ):
        return "upstream_refused", True
    return None


def has_content(chunk: ModelOutput) -> bool:
    """What commits a stream: anything the caller would see of an answer."""
    return bool(
        chunk.text
        or chunk.reasoning
        or chunk.tool_call_deltas
        or chunk.tool_calls
        or chunk.reasoning_signature
        or chunk.finish_reason is not None
    )


class Failover:
    """The attempts of one call to `target`."""

    def __init__(
        self,
        target: Target,
        policy: PickPolicy,
        started: Started | None,
        refusals: Callable[[ServedModel], list[errors.FieldViolation]],
        on_attempt: Callable[[str, str, str], None] | None = None,
    ) -> None:
        """`refusals(served)`: the request's fields that deployment cannot honour;
        `on_attempt(model, deployment, outcome)`: told each attempt (metrics)."""
        self.target = target
        self._policy = policy
        self._started = started
        self._refusals = refusals
        self._told_started = False
        # A call with a choice: its attempts are recorded, and its deployments' breakers are
        # consulted and fed. A model with one deployment called by its name has nowhere else to
        # go: its calls reach the upstream, whose own answer the caller gets.
        self._choice = not target.single
        # Every field a candidate refused, each with the reason it gave. Tuples: most calls add
        # nothing to them, and allocate nothing for them.
        self._refused: tuple[errors.FieldViolation, ...] = ()
        self._last_error: BaseException | None = None
        self._open_for: tuple[float, ...] = ()
        # The deployment whose half-open breaker let this call through as its one probe.
        self._probe: ServedModel | None = None
        self._on_attempt = on_attempt

    async def started(self, headers: ResponseHeaders) -> None:
        """Tells the edge the work began, once: at the first attempt that reached its provider
        (its response headers are that attempt's rate limits)."""
        if not self._told_started:
            self._told_started = True
            if self._started is not None:
                await self._started(headers)

    def _note(self, served: ServedModel, outcome: str) -> None:
        if self._choice:
            attempt = Attempt(served.model, served.label, outcome)
            note_attempt(attempt.text())
            if self._on_attempt is not None:
                never_fails(
                    "the attempt metrics", self._on_attempt, served.model, served.label, outcome
                )

    def candidates(self) -> Iterator[ServedModel]:
        """Each deployment to try, model by model in the target's order, chosen within a model
        by the policy; skipped: those that cannot honour the request's fields, and those whose
        circuit is open."""
        for _model, group in self.target.members:
            ready = [served for served in group if self._ready(served)]
            while ready:
                chosen = self._policy.pick(
                    ready, lambda s: s.admission.in_flight + s.admission.queued
                )
                ready.remove(chosen)
                if self._choice and not chosen.breaker.allows():  # a half-open probe is out
                    self._open_for += (chosen.breaker.retry_after_s(),)
                    self._note(chosen, SKIPPED_OPEN)
                    continue
                if self._choice and chosen.breaker.state is BreakerState.HALF_OPEN:
                    self._probe = chosen  # this attempt is the breaker's one probe
                yield chosen

    def _ready(self, served: ServedModel) -> bool:
        refused = self._refusals(served)
        if refused:
            self._refused += tuple(v for v in refused if v not in self._refused)
            self._note(served, SKIPPED_FIELDS)
            return False
        wait = served.breaker.retry_after_s() if self._choice else 0.0
        if wait > 0:
            self._open_for += (wait,)
            self._note(served, SKIPPED_OPEN)
            return False
        return True

    def failed(self, served: ServedModel, error: BaseException) -> None:
        """An attempt ended without an answer: returns when the call moves on, else raises."""
        reason = move_on(error)
        if reason is None:
            self.left(served)
            cancelled = isinstance(error, asyncio.CancelledError | GeneratorExit)
            self._note(served, "cancelled" if cancelled else "error")
            raise error
        outcome, counts = reason
        if counts:
            cooldown = (
                error.retry_after_s if isinstance(error, errors.UpstreamRateLimited) else None
            )
            self._breaker_failed(served, cooldown)
        else:
            self.left(served)
        self._note(served, outcome)
        self._last_error = error

    def left(self, served: ServedModel) -> None:
        """The attempt ended telling nothing of its upstream (the caller left, or its own
        request was refused): a probe it held goes to the next call."""
        if served is self._probe:
            served.breaker.released()

    def _breaker_failed(self, served: ServedModel, cooldown_s: float | None = None) -> None:
        if self._choice:
            served.breaker.failed(cooldown_s, probe=served is self._probe)

    def answered(self, served: ServedModel) -> None:
        if self._choice:
            served.breaker.succeeded(probe=served is self._probe)
        self._note(served, ANSWERED)

    def broke_after_content(
        self, served: ServedModel, error: errors.ModelwireError, delivered: int
    ) -> errors.ModelwireError:
        """A committed stream's upstream failed: the caller gets UNAVAILABLE saying how much it
        had, never a second answer."""
        if _upstream_failure(error):
            self._breaker_failed(served)
        else:
            self.left(served)
        self._note(served, FAILED_AFTER_CONTENT)
        if move_on(error) is None:
            return error
        # Counted as the provider gave them: coalescing may have sent them in fewer messages.
        deltas = "1 delta" if delivered == 1 else f"{delivered} deltas"
        deployment = f" ({served.deployment})" if served.deployment is not None else ""
        return errors.UpstreamUnavailable(
            f"model {served.model!r}{deployment} failed after {deltas} of its answer had been "
            f"passed on: {error}"
        )

    def exhausted(self) -> BaseException:
        """What the caller gets when no candidate answered: the last attempt's own error; when
        none was made, why (fields no candidate accepts, or every circuit open)."""
        error = self._last_error
        if error is not None:
            if isinstance(error, errors.Overloaded) and self._told_started:
                error.not_started = False  # an earlier attempt reached its provider
            return error
        if self._open_for:
            wait = errors.retry_delay(min(self._open_for))
            return errors.NotReady(
                f"{'route' if self.target.route else 'model'} {self.target.name!r}: every "
                "deployment that could take the call has its circuit open after upstream "
                f"failures; retry after {wait:.1f}s",
                wait,
                not_started=True,  # another worker's circuits may be closed
            )
        if not self._choice:
            return errors.InvalidRequest(list(self._refused))
        # One violation per field, with every candidate's reason for refusing it.
        reasons: dict[str, list[str]] = {}
        for violation in self._refused:
            reasons.setdefault(violation.field, []).append(violation.description)
        prefix = (
            f"route {self.target.name!r} has no model that accepts the request: "
            if self.target.route
            else ""
        )
        return errors.InvalidRequest(
            [
                errors.FieldViolation(field, prefix + "; ".join(texts))
                for field, texts in reasons.items()
            ]
        )


def _upstream_failure(error: errors.ModelwireError) -> bool:
    reason = move_on(error)
    return reason is not None and reason[1]


class AttemptClock:
    """A stream attempt's time to its first content, started when its provider is called."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._timer: asyncio.Timeout | None = None

    def start(self) -> None:
        if self._timer is not None and self.timeout_s is not None:
            self._timer.reschedule(asyncio.get_running_loop().time() + self.timeout_s)


async def first_content(
    chunks: AsyncIterator[ModelOutput], clock: AttemptClock
) -> list[ModelOutput]:
    """The stream's messages up to its first content (inclusive), within the clock's time once
    started; all of them when it ends before any. Running out raises AttemptTimedOut."""
    held: list[ModelOutput] = []
    try:
        async with asyncio.timeout(None) as clock._timer:
            async for chunk in chunks:
                held.append(chunk)
                if has_content(chunk):
                    return held
    except TimeoutError:
        raise errors.AttemptTimedOut(
            f"no content within attempt_timeout_s={clock.timeout_s:g}s"
        ) from None
    finally:
        clock._timer = None
    return held


def timed_out(error: BaseException, timeout_s: float | None) -> BaseException:
    """A unary attempt's TimeoutError as the typed error its breaker and its caller see."""
    if isinstance(error, TimeoutError) and timeout_s is not None:
        return errors.AttemptTimedOut(f"no answer within attempt_timeout_s={timeout_s:g}s")
    return error
