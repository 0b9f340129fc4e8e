"""The circuit breaker of one deployment (worker/breaker.py), on a clock the tests move by hand:
when it opens (failures in a row, a failure rate over a sliding window, an upstream's cooldown),
how long it stays open, the single half-open probe and what each of its outcomes does, and what
its observer is told."""

from __future__ import annotations

import pytest

from modelwire.core.settings import BreakerConfig
from modelwire.worker.breaker import Breaker, BreakerState


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Thresholds far out of reach, for tests about one way of opening only.
NEVER = 1_000_000


def breaker(
    clock: FakeClock,
    *,
    consecutive_failures: int = NEVER,
    failure_rate: float = 0.5,
    min_calls: int = NEVER,
    window_s: float = 60.0,
    open_s: float = 30.0,
) -> Breaker:
    return Breaker(
        BreakerConfig(
            consecutive_failures=consecutive_failures,
            failure_rate=failure_rate,
            min_calls=min_calls,
            window_s=window_s,
            open_s=open_s,
        ),
        clock=clock,
    )


def state(subject: Breaker) -> BreakerState:
    """Its state now (read through a call, so a type checker does not pin it between calls)."""
    return subject.state


def opened_until_half_open(subject: Breaker, clock: FakeClock, seconds: float) -> None:
    """`subject` is open for exactly `seconds`: refusing just before, taking a probe at the end."""
    assert state(subject) is BreakerState.OPEN
    assert subject.retry_after_s() == pytest.approx(seconds)
    clock.advance(seconds - 0.25)  # binary fractions: the clock's sums are exact
    assert not subject.allows()
    assert state(subject) is BreakerState.OPEN
    assert subject.retry_after_s() == 0.25
    clock.advance(0.25)
    assert subject.retry_after_s() == 0.0
    assert subject.allows()
    assert state(subject) is BreakerState.HALF_OPEN


def test_a_new_breaker_is_closed_and_lets_every_call_through() -> None:
    subject = breaker(FakeClock(), consecutive_failures=1, min_calls=1)
    assert state(subject) is BreakerState.CLOSED
    assert all(subject.allows() for _ in range(10))
    assert subject.retry_after_s() == 0.0


def test_consecutive_failures_open_it_at_the_threshold() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=3, open_s=30.0)
    subject.failed()
    subject.failed()
    assert state(subject) is BreakerState.CLOSED
    assert subject.allows()
    subject.failed()
    assert state(subject) is BreakerState.OPEN
    assert not subject.allows()
    assert subject.retry_after_s() == 30.0


def test_a_success_between_failures_starts_the_count_again() -> None:
    subject = breaker(FakeClock(), consecutive_failures=3)
    for _ in range(5):
        subject.failed()
        subject.failed()
        subject.succeeded()
    assert state(subject) is BreakerState.CLOSED
    subject.failed()
    subject.failed()
    assert state(subject) is BreakerState.CLOSED
    subject.failed()
    assert state(subject) is BreakerState.OPEN


def test_the_failure_rate_opens_it_once_min_calls_ended_in_the_window() -> None:
    clock = FakeClock()
    subject = breaker(clock, failure_rate=0.5, min_calls=4, window_s=10.0, open_s=20.0)
    # Two of three failed (more than half), but three calls are fewer than min_calls.
    subject.failed()
    subject.succeeded()
    subject.failed()
    assert state(subject) is BreakerState.CLOSED
    # The fourth: two failures of four, the rate reached.
    subject.succeeded()
    assert state(subject) is BreakerState.CLOSED  # a success never opens it
    subject.failed()
    assert state(subject) is BreakerState.OPEN
    assert subject.retry_after_s() == 20.0


def test_a_failure_rate_below_the_threshold_keeps_it_closed() -> None:
    subject = breaker(FakeClock(), failure_rate=0.5, min_calls=4)
    for _ in range(10):
        subject.succeeded()
        subject.succeeded()
        subject.failed()  # one in three
    assert state(subject) is BreakerState.CLOSED


def test_outcomes_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock()
    subject = breaker(clock, failure_rate=0.5, min_calls=4, window_s=10.0)
    subject.failed()
    subject.failed()
    subject.succeeded()
    clock.advance(10.5)  # those three ended more than window_s ago
    subject.succeeded()
    subject.failed()
    # Counted over all five it would be three failures of five; in the window, two calls.
    assert state(subject) is BreakerState.CLOSED
    clock.advance(1.0)
    subject.failed()
    assert state(subject) is BreakerState.CLOSED  # three calls in the window
    subject.succeeded()
    subject.failed()
    # Five in the window (the old three slid out), three failed.
    assert state(subject) is BreakerState.OPEN


def test_exactly_the_failure_rate_opens_it() -> None:
    clock = FakeClock()
    subject = breaker(clock, failure_rate=0.75, min_calls=4, window_s=10.0)
    subject.succeeded()  # at 0
    clock.advance(4.0)
    subject.failed()  # at 4
    subject.failed()
    assert state(subject) is BreakerState.CLOSED
    clock.advance(4.0)
    subject.failed()  # at 8: three of four failed, exactly the rate
    assert state(subject) is BreakerState.OPEN


def test_the_window_slides_one_outcome_at_a_time() -> None:
    clock = FakeClock()
    subject = breaker(clock, failure_rate=0.75, min_calls=3, window_s=10.0)
    subject.succeeded()  # at 0
    subject.succeeded()  # at 0
    clock.advance(5.0)
    subject.failed()  # at 5: one of three
    assert state(subject) is BreakerState.CLOSED
    clock.advance(5.5)
    subject.failed()  # at 10.5: both successes slid out; two of two, fewer than min_calls
    assert state(subject) is BreakerState.CLOSED
    subject.failed()  # three of three
    assert state(subject) is BreakerState.OPEN


def test_a_cooldown_opens_it_below_the_thresholds_for_the_cooldown_not_open_s() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=5, min_calls=20, open_s=30.0)
    subject.failed(cooldown_s=7.0)  # an upstream's 429 with Retry-After: 7
    opened_until_half_open(subject, clock, 7.0)


def test_a_cooldown_longer_than_open_s_is_kept_when_the_thresholds_trip() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=2, open_s=30.0)
    subject.failed()
    subject.failed(cooldown_s=100.0)
    opened_until_half_open(subject, clock, 100.0)


def test_a_cooldown_shorter_than_open_s_gives_open_s_when_the_thresholds_trip() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=2, open_s=30.0)
    subject.failed()
    subject.failed(cooldown_s=5.0)
    opened_until_half_open(subject, clock, 30.0)


def test_a_failure_without_cooldown_below_the_thresholds_keeps_it_closed() -> None:
    subject = breaker(FakeClock(), consecutive_failures=5, min_calls=20)
    for _ in range(4):
        subject.failed()
    assert state(subject) is BreakerState.CLOSED
    assert subject.allows()


def test_a_zero_cooldown_below_the_thresholds_lets_a_probe_through_at_once() -> None:
    clock = FakeClock()
    subject = breaker(clock, open_s=30.0)
    subject.failed(cooldown_s=0.0)
    assert state(subject) is BreakerState.OPEN
    assert subject.retry_after_s() == 0.0
    assert subject.allows()
    assert state(subject) is BreakerState.HALF_OPEN


def test_open_for_open_s_then_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=1, open_s=30.0)
    subject.failed()
    opened_until_half_open(subject, clock, 30.0)  # the first allows() took the probe
    assert subject.retry_after_s() == 0.0  # half-open: nothing to wait for, only the probe
    assert not subject.allows()
    clock.advance(1000.0)
    assert not subject.allows()  # however long the probe takes
    assert state(subject) is BreakerState.HALF_OPEN


def test_the_probes_success_closes_it_and_clears_the_window() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=NEVER, failure_rate=0.5, min_calls=4)
    for _ in range(4):
        subject.failed()
    assert state(subject) is BreakerState.OPEN
    clock.advance(30.0)
    assert subject.allows()
    subject.succeeded(probe=True)
    assert state(subject) is BreakerState.CLOSED
    assert all(subject.allows() for _ in range(5))
    assert subject.retry_after_s() == 0.0
    # The four failures before (and the probe's success) are forgotten: three more failures are
    # fewer than min_calls; remembered, seven of eight would have opened it at the first.
    for _ in range(3):
        subject.failed(probe=True)
    assert state(subject) is BreakerState.CLOSED
    subject.failed(probe=True)  # four of four
    assert state(subject) is BreakerState.OPEN


def test_the_probes_success_starts_the_consecutive_count_again() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=2)
    subject.failed()
    subject.failed()
    clock.advance(30.0)
    assert subject.allows()
    subject.succeeded(probe=True)
    subject.failed(probe=True)
    assert state(subject) is BreakerState.CLOSED
    subject.failed(probe=True)
    assert state(subject) is BreakerState.OPEN


def test_the_probes_failure_opens_it_again_for_open_s() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=3, open_s=30.0)
    for _ in range(3):
        subject.failed()
    clock.advance(30.0)
    assert subject.allows()
    subject.failed(
        probe=True
    )  # one failure, below every threshold: the probe's failure alone opens it
    opened_until_half_open(subject, clock, 30.0)


def test_the_probes_429_opens_it_again_for_the_longer_of_open_s_and_the_cooldown() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=1, open_s=30.0)
    subject.failed()
    clock.advance(30.0)
    assert subject.allows()
    subject.failed(cooldown_s=45.0, probe=True)
    opened_until_half_open(subject, clock, 45.0)
    subject.failed(cooldown_s=2.0, probe=True)
    opened_until_half_open(subject, clock, 30.0)


def test_a_released_probe_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=1, open_s=30.0)
    subject.failed()
    clock.advance(30.0)
    assert subject.allows()
    assert not subject.allows()
    subject.released()  # the probe's caller left: nothing learned
    assert state(subject) is BreakerState.HALF_OPEN
    assert subject.allows()  # the next call is the probe
    assert not subject.allows()  # and only it
    subject.succeeded(probe=True)
    assert state(subject) is BreakerState.CLOSED


def test_released_while_closed_changes_nothing() -> None:
    subject = breaker(FakeClock(), consecutive_failures=2)
    subject.failed()
    subject.released()
    assert state(subject) is BreakerState.CLOSED
    subject.failed()  # the count went on: two in a row
    assert state(subject) is BreakerState.OPEN


def test_retry_after_counts_down_while_open_and_is_zero_otherwise() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=1, open_s=30.0)
    assert subject.retry_after_s() == 0.0
    subject.failed()
    assert subject.retry_after_s() == 30.0
    clock.advance(12.5)
    assert subject.retry_after_s() == pytest.approx(17.5)
    clock.advance(17.5)
    assert subject.retry_after_s() == 0.0
    clock.advance(5.0)  # past its time, still OPEN until a call asks: never negative
    assert state(subject) is BreakerState.OPEN
    assert subject.retry_after_s() == 0.0
    assert subject.allows()
    assert subject.retry_after_s() == 0.0  # half-open
    subject.succeeded(probe=True)
    assert subject.retry_after_s() == 0.0  # closed


def test_the_observer_sees_each_change_in_order() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=2, open_s=30.0)
    seen: list[BreakerState] = []
    subject.observer = seen.append
    subject.failed()
    subject.succeeded()  # closed to closed: no change to tell
    subject.failed()
    subject.failed()
    assert seen == [BreakerState.OPEN]
    clock.advance(30.0)
    assert not seen[1:]  # time alone changes nothing: the next call's allows() does
    assert subject.allows()
    assert not subject.allows()
    subject.succeeded(probe=True)
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_the_observer_sees_a_failed_probe_reopen_it() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=1, open_s=30.0)
    seen: list[BreakerState] = []
    subject.observer = seen.append
    subject.failed()
    clock.advance(30.0)
    assert subject.allows()
    subject.failed(probe=True)
    clock.advance(30.0)
    assert subject.allows()
    subject.released()
    assert subject.allows()
    subject.succeeded(probe=True)
    assert seen == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_failures_reported_while_open_do_not_shorten_the_open_time() -> None:
    """Calls already under way when it opened report their failures while it is open: below the
    thresholds they leave its time alone, and a cooldown only ever makes it longer."""
    clock = FakeClock()
    subject = breaker(clock, open_s=30.0)
    subject.failed(cooldown_s=20.0)
    clock.advance(5.0)
    subject.failed()  # a call in flight, below the thresholds
    assert subject.retry_after_s() == 15.0
    subject.failed(cooldown_s=4.0)  # a late 429 asking for less than is left: no shorter
    assert subject.retry_after_s() == 15.0
    subject.failed(cooldown_s=40.0)  # one asking for more: longer
    assert subject.retry_after_s() == 40.0


def test_a_success_of_a_call_already_in_flight_does_not_close_it_while_open() -> None:
    """BUG (worker/breaker.py `succeeded`: it closes from any state): a call that went out before
    the breaker opened and succeeds while it is open closes it at once, cutting short the open
    time, an upstream 429's Retry-After included. Only the half-open probe's success may close it
    (docs/configuration.md: "Open, it is skipped for `open_s` (or the Retry-After, when longer).
    Then half-open: ... the probe's success closes the circuit")."""
    clock = FakeClock()
    subject = breaker(clock, open_s=30.0)
    subject.failed(cooldown_s=20.0)  # an upstream 429: Retry-After 20
    clock.advance(1.0)
    subject.succeeded()  # a call the upstream had taken before its rate limit answers fine
    assert state(subject) is BreakerState.OPEN
    assert subject.retry_after_s() == 19.0
    assert not subject.allows()


def test_only_the_probes_outcome_decides_while_half_open() -> None:
    """Calls that began before the breaker opened end while its probe is out: their success does
    not close it, their failure does not reopen it or free the probe."""
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=1, open_s=30.0)
    subject.failed()
    clock.advance(30.0)
    assert subject.allows()  # the probe
    subject.succeeded()
    subject.failed()
    assert state(subject) is BreakerState.HALF_OPEN
    assert not subject.allows()  # the probe is still out
    subject.failed(probe=True)
    assert state(subject) is BreakerState.OPEN


def test_a_day_long_retry_after_is_capped_at_max_cooldown_s() -> None:
    clock = FakeClock()
    subject = breaker(clock, consecutive_failures=NEVER, open_s=30.0)
    subject.failed(cooldown_s=86400.0)
    assert subject.retry_after_s() == 300.0
