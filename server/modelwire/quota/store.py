"""Where the counters live, and the one algorithm every store applies (docs/configuration.md#quota).

`reserve` checks a call against all its counters at once and, only if every one has room, adds the
call's reservation to each (a request, its reserved tokens, its reserved cost, a place among the
concurrent calls); `settle` replaces the reservation by what the call really used, once: the
reservation is a record under the call's id that settling deletes. Windows are fixed and follow the
store's clock in UTC: the minute, the day, the calendar month.

`MemoryStore` keeps them in this process (no `[quota] store`, or a replica's share while the shared
store is away); quota/redis_store.py runs the same algorithm inside Redis, atomically, for every
replica.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from modelwire.quota.counters import Counter, Window

# How long after its window a counter is kept, so a late settle still finds it.
WINDOW_GRACE_S = 120
# How long a call's reservation is kept past its lease for its settle: a call may run for long
# after its concurrent-call place would have expired (its renewals keep it), a day is plenty.
RECORD_KEPT_S = 86400
# How often the memory store forgets what has expired.
SWEEP_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class Standing:
    """A counter as a call left it: what it holds, and seconds until its window starts again
    (None for concurrent calls)."""

    used: int
    resets_in_s: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Admitted: `standings` (one per counter, in order) include the call's reservation. Refused:
    `refused` lists the indices of the counters without room; `retry_after_s` is when all of them
    have room again, None when the call alone asks for more than a limit allows."""

    admitted: bool
    standings: tuple[Standing, ...] = ()
    refused: tuple[int, ...] = ()
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Amounts:
    """What a call adds: one request, tokens, money (nano-units), one place."""

    tokens: int
    cost: int

    def of(self, counter: Counter) -> int:
        return {"r": 1, "t": self.tokens, "$": self.cost, "c": 1}[counter.unit]


class QuotaStore(Protocol):
    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Amounts, lease_s: float
    ) -> Verdict: ...

    async def settle(self, call_id: str, used: Amounts, sent: bool) -> None:
        """`used`: what the call really used; `sent` False: it never reached its provider, so its
        request does not count either. A second settle of the same call changes nothing."""

    async def settle_many(self, settles: Sequence[tuple[str, Amounts, bool]]) -> None:
        """`settle` for each of several calls, at once (one round trip)."""

    async def read(self, counters: Sequence[Counter]) -> list[Standing]: ...

    async def renew(self, places: Sequence[tuple[str, str]], lease_s: float) -> None:
        """Running calls (each (key, call id) a concurrent-call place) hold their places for
        `lease_s` more."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def window_bounds(window: Window, now: float) -> tuple[str, float]:
    """The window `now` falls in, as a key suffix, and the seconds until the next one begins."""
    if window is Window.MINUTE:
        minute = int(now // 60)
        return str(minute), (minute + 1) * 60 - now
    day = int(now // 86400)
    if window is Window.DAY:
        return str(day), (day + 1) * 86400 - now
    year, month = time.gmtime(now)[:2]
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    starts = calendar.timegm((next_year, next_month, 1, 0, 0, 0))
    return f"{year * 100 + month}", starts - now


def counter_key(counter: Counter, now: float) -> tuple[str, float | None]:
    """The store key of `counter`'s current window, and when that window ends."""
    if counter.window is Window.NONE:
        return counter.key, None
    suffix, resets_in = window_bounds(counter.window, now)
    return f"{counter.key}:{suffix}", resets_in


class MemoryStore:
    """The counters of this process alone. Its work never waits: the limiter calls `reserve_now`
    and `settle_now` directly (no task per call) while `in_process` says so."""

    in_process: ClassVar[bool] = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # key → (amount, expires at); concurrent calls: key → {call id: lease end}.
        self._counts: dict[str, tuple[int, float]] = {}
        self._places: dict[str, dict[str, float]] = {}
        # call id → ([(key, reserved, counter)], kept until), until settled.
        self._reservations: dict[str, tuple[list[tuple[str, int, Counter]], float]] = {}
        self._next_sweep = 0.0

    def _count(self, key: str, now: float) -> int:
        held = self._counts.get(key)
        if held is None or held[1] <= now:
            self._counts.pop(key, None)
            return 0
        return held[0]

    def _holders(self, key: str, now: float) -> dict[str, float]:
        holders = self._places.setdefault(key, {})
        for call, ends in list(holders.items()):
            if ends <= now:
                del holders[call]
        return holders

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Amounts, lease_s: float
    ) -> Verdict:
        return self.reserve_now(call_id, counters, amounts, lease_s)

    async def settle(self, call_id: str, used: Amounts, sent: bool) -> None:
        self.settle_now(call_id, used, sent)

    async def settle_many(self, settles: Sequence[tuple[str, Amounts, bool]]) -> None:
        for call_id, used, sent in settles:
            await self.settle(call_id, used, sent)

    def reserve_now(
        self, call_id: str, counters: Sequence[Counter], amounts: Amounts, lease_s: float
    ) -> Verdict:
        now = self._clock()
        self._forget_expired(now)
        keys = [counter_key(counter, now) for counter in counters]
        current = [
            len(self._holders(key, now)) if counter.unit == "c" else self._count(key, now)
            for counter, (key, _ends) in zip(counters, keys, strict=True)
        ]
        refused = [
            index
            for index, counter in enumerate(counters)
            if current[index] + amounts.of(counter) > counter.limit
        ]
        if refused:
            return refusal(counters, refused, keys, amounts)
        standings = []
        reserved = []
        for counter, (key, resets_in), held in zip(counters, keys, current, strict=True):
            amount = amounts.of(counter)
            if counter.unit == "c":
                self._holders(key, now)[call_id] = now + lease_s
            else:
                assert resets_in is not None
                self._counts[key] = (held + amount, now + resets_in + WINDOW_GRACE_S)
            reserved.append((key, amount, counter))
            standings.append(Standing(held + amount, resets_in))
        self._reservations[call_id] = (reserved, now + lease_s + RECORD_KEPT_S)
        return Verdict(True, tuple(standings))

    def settle_now(self, call_id: str, used: Amounts, sent: bool) -> None:
        now = self._clock()
        entry = self._reservations.pop(call_id, None)
        if entry is None:
            return
        for key, reserved, counter in entry[0]:
            if counter.unit == "c":
                self._places.get(key, {}).pop(call_id, None)
            elif counter.unit == "r":
                if not sent:
                    self._add(key, -1, now)
            else:
                actual = used.tokens if counter.unit == "t" else used.cost
                self._add(key, -(reserved - min(actual, reserved)), now)
                if actual > reserved:  # the excess counts where it is used: the current window
                    current, resets_in = counter_key(counter, now)
                    assert resets_in is not None
                    held = self._count(current, now)
                    self._counts[current] = (
                        held + actual - reserved,
                        now + resets_in + WINDOW_GRACE_S,
                    )

    def _add(self, key: str, amount: int, now: float) -> None:
        """Adds to a counter still kept (a window long gone is not brought back)."""
        held = self._counts.get(key)
        if amount and held is not None and held[1] > now:
            self._counts[key] = (held[0] + amount, held[1])

    async def renew(self, places: Sequence[tuple[str, str]], lease_s: float) -> None:
        """Running calls keep their places (and their reservations) past their lease."""
        now = self._clock()
        for key, call_id in places:
            holders = self._places.get(key)
            if holders is not None and call_id in holders:
                holders[call_id] = now + lease_s
            entry = self._reservations.get(call_id)
            if entry is not None:
                self._reservations[call_id] = (entry[0], now + lease_s + RECORD_KEPT_S)

    async def read(self, counters: Sequence[Counter]) -> list[Standing]:
        now = self._clock()
        standings = []
        for counter in counters:
            key, resets_in = counter_key(counter, now)
            used = len(self._holders(key, now)) if counter.unit == "c" else self._count(key, now)
            standings.append(Standing(used, resets_in))
        return standings

    def _forget_expired(self, now: float) -> None:
        """Windows past, places whose call ended or whose lease ran out, and reservations never
        settled (only a bug leaves one), swept at most once a SWEEP_INTERVAL_S, so memory follows
        the tenants active lately and no call pays for a scan of every counter."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_S
        self._counts = {key: held for key, held in self._counts.items() if held[1] > now}
        for key in list(self._places):
            if not self._holders(key, now):
                del self._places[key]
        self._reservations = {
            call: entry for call, entry in self._reservations.items() if entry[1] > now
        }

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def refusal(
    counters: Sequence[Counter],
    refused: Sequence[int],
    keys: Sequence[tuple[str, float | None]],
    amounts: Amounts,
) -> Verdict:
    """The verdict on a call refused by `refused`: it may pass once every one of them has begun a
    new window (a concurrent place: soon, MIN of a retry), never if it alone exceeds a limit."""
    if any(amounts.of(counters[index]) > counters[index].limit for index in refused):
        return Verdict(False, refused=tuple(refused), retry_after_s=None)
    waits = [keys[index][1] or 0.0 for index in refused]
    return Verdict(False, refused=tuple(refused), retry_after_s=max(waits))
