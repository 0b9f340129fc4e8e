"""A circuit breaker per deployment: stop sending calls to an upstream that keeps failing, then
let one call find out whether it is back.

Closed: calls pass; it opens after `consecutive_failures` in a row, or when at least `min_calls`
ended within `window_s` and `failure_rate` of them failed. Open: calls skip the deployment for
`open_s`; an upstream's 429 opens it for its Retry-After (a cooldown), whatever the counts.
Half-open: the next call is the single probe; the others keep skipping it. The probe's success
closes the breaker, its failure opens it again. Only the upstream's failures count (unreachable,
5xx, 429, silent, the worker's own key refused): a caller's bad request or a cancel says nothing
about the upstream's health.

Hand-written: the breaker libraries on PyPI (pybreaker, aiobreaker, circuitbreaker) wrap a
function call and count every exception; this one must be told which outcomes count, must take
a cooldown from a 429, and must expose its state to metrics and health.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

from modelwire.core.settings import BreakerConfig


class BreakerState(enum.IntEnum):
    """The values of the `modelwire_breaker_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Breaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        # When each call of the window ended, and whether it failed.
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        # Told the new state at each change (metrics, health).
        self.observer: Callable[[BreakerState], None] | None = None

    def allows(self) -> bool:
        """Whether a call may go to the deployment now; a half-open breaker lets exactly one
        through (the caller must then report its outcome)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                return False
            self._change(BreakerState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_after_s(self) -> float:
        """How long until the breaker lets a probe through (0 when it does now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def succeeded(self, probe: bool = False) -> None:
        """A call answered; `probe`: it was the half-open breaker's one probe, whose outcome
        alone decides (a call that began before the breaker opened proves nothing against the
        failures, or the 429, that opened it)."""
        self._consecutive = 0
        self._record(False)
        if probe and self.state is BreakerState.HALF_OPEN:
            self._probing = False
            self._outcomes.clear()
            self._failures = 0
            self._change(BreakerState.CLOSED)

    def failed(self, cooldown_s: float | None = None, probe: bool = False) -> None:
        """An upstream failure; `cooldown_s`: the upstream asked not to be called for this long
        (a 429's Retry-After, at most `max_cooldown_s`): the breaker opens for that long even
        below its thresholds. `probe`: the half-open breaker's probe, which opens it again."""
        self._consecutive += 1
        self._record(True)
        config = self._config
        cooldown = None if cooldown_s is None else min(cooldown_s, config.max_cooldown_s)
        if self.state is BreakerState.HALF_OPEN:
            if probe:
                self._probing = False
                self._open(max(config.open_s, cooldown or 0.0))
        elif self.state is BreakerState.CLOSED and (
            self._consecutive >= config.consecutive_failures
            or (
                len(self._outcomes) >= config.min_calls
                and self._failures >= config.failure_rate * len(self._outcomes)
            )
        ):
            self._open(max(config.open_s, cooldown or 0.0))
        elif cooldown is not None:
            self._open(cooldown)

    def released(self) -> None:
        """The call that held the half-open probe ended telling nothing (the caller left, or its
        own request was refused): the next call probes."""
        self._probing = False

    def _open(self, seconds: float) -> None:
        self._open_until = max(self._open_until, self._clock() + seconds)
        self._consecutive = 0
        if self.state is not BreakerState.OPEN:
            self._change(BreakerState.OPEN)

    def _record(self, failed: bool) -> None:
        now = self._clock()
        self._outcomes.append((now, failed))
        self._failures += failed
        horizon = now - self._config.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._failures -= self._outcomes.popleft()[1]

    def _change(self, state: BreakerState) -> None:
        self.state = state
        if self.observer is not None:
            self.observer(state)
