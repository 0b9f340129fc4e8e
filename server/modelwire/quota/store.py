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
from typing import Protocol

from modelwire.quota.counters import Counter, Window

# How long after its window a counter is kept, so a late settle still finds it.
WINDOW_GRACE_S = 120


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

    async def read(self, counters: Sequence[Counter]) -> list[Standing]: ...

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
    """The counters of this process alone."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # key → (amount, expires at); concurrent calls: key → {call id: lease end}.
        self._counts: dict[str, tuple[int, float]] = {}
        self._places: dict[str, dict[str, float]] = {}
        # call id → [(key, unit, reserved)], until settled or its lease ends.
        self._reservations: dict[str, tuple[list[tuple[str, str, int]], float]] = {}

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
            reserved.append((key, counter.unit, amount))
            standings.append(Standing(held + amount, resets_in))
        self._reservations[call_id] = (reserved, now + lease_s)
        return Verdict(True, tuple(standings))

    async def settle(self, call_id: str, used: Amounts, sent: bool) -> None:
        now = self._clock()
        entry = self._reservations.pop(call_id, None)
        if entry is None:
            return
        for key, unit, reserved in entry[0]:
            if unit == "c":
                self._places.get(key, {}).pop(call_id, None)
                continue
            actual = int(sent) if unit == "r" else used.tokens if unit == "t" else used.cost
            held = self._counts.get(key)
            if held is not None and held[1] > now and actual != reserved:
                self._counts[key] = (held[0] + actual - reserved, held[1])

    async def read(self, counters: Sequence[Counter]) -> list[Standing]:
        now = self._clock()
        standings = []
        for counter in counters:
            key, resets_in = counter_key(counter, now)
            used = len(self._holders(key, now)) if counter.unit == "c" else self._count(key, now)
            standings.append(Standing(used, resets_in))
        return standings

    def _forget_expired(self, now: float) -> None:
        """Reservations never settled (only a bug leaves one: kept until their lease ends, as the
        store keeps them) and windows long past, so memory stays bounded."""
        if len(self._reservations) > 4096 or len(self._counts) > 65536:
            for call, (_reserved, ends) in list(self._reservations.items()):
                if ends <= now:
                    del self._reservations[call]
            for key, (_amount, expires) in list(self._counts.items()):
                if expires <= now:
                    del self._counts[key]

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
