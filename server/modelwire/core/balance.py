"""Which of several candidates to call next: one interface for the gateway's choice of instance and
the worker's choice of deployment, so a new policy is a new class rather than an edit of a caller.

A policy sees only what `Balanced` declares (a weight, when it was last picked) and the caller's
reading of each candidate's load; it knows nothing of instances, deployments or gRPC.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, Protocol, TypeVar


class Balanced(Protocol):
    """What a policy needs of a candidate."""

    # Monotonic time it was last picked (0.0: never); policies set it, so ties can go in turn.
    picked_at: float

    @property
    def weight(self) -> int:
        """Its relative share of calls (>= 1)."""
        ...


C = TypeVar("C", bound=Balanced)


class PickPolicy(ABC):
    """A way to choose among candidates; one instance per caller, as a policy may keep state."""

    name: ClassVar[str]

    def pick(self, candidates: Sequence[C], load: Callable[[C], float]) -> C:
        """One of `candidates` (non-empty, in their configured order); `load(c)` is its current
        load (calls open on it, not divided by weight). Sets the chosen one's picked_at. A sole
        candidate is the pick of every policy: it is taken without reading a load or a random
        number (the gateway's and a worker's usual case, one instance or deployment)."""
        if len(candidates) == 1:
            return _picked(candidates[0])
        return self._choose(candidates, load)

    @abstractmethod
    def _choose(self, candidates: Sequence[C], load: Callable[[C], float]) -> C:
        """The policy's choice among two candidates or more."""


def _picked(chosen: C) -> C:
    chosen.picked_at = time.monotonic()
    return chosen


class LeastLoaded(PickPolicy):
    """The power of two choices on load relative to weight: two random candidates, not all, so
    callers that each see a stale load do not all pile onto the one that looked idlest. Ties go to
    the one picked least recently, so an idle set is served in turn."""

    name = "least_loaded"

    def __init__(self, rng: random.Random | None = None) -> None:
        # The module's generator by default: one seeding (a test's) governs every caller.
        self._sample = rng.sample if rng is not None else random.sample

    def _choose(self, candidates: Sequence[C], load: Callable[[C], float]) -> C:
        pool = self._sample(list(candidates), 2) if len(candidates) > 2 else candidates
        return _picked(min(pool, key=lambda c: (load(c) / c.weight, c.picked_at)))


class Weighted(PickPolicy):
    """Random, each candidate with probability weight / sum of weights, load ignored: for
    candidates whose load the caller cannot see."""

    name = "weighted"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._choices = rng.choices if rng is not None else random.choices

    def _choose(self, candidates: Sequence[C], load: Callable[[C], float]) -> C:
        return _picked(self._choices(candidates, weights=[c.weight for c in candidates])[0])


class FixedOrder(PickPolicy):
    """Always the first candidate: a primary and its standbys, the caller passing only the untried
    ones in configured order, so a standby is called only once those before it failed."""

    name = "fixed_order"

    def __init__(self, rng: random.Random | None = None) -> None:
        """`rng` is accepted, and unused, so every policy is built the same way."""

    def _choose(self, candidates: Sequence[C], load: Callable[[C], float]) -> C:
        return _picked(candidates[0])


PolicyName = Literal["least_loaded", "weighted", "fixed_order"]

_POLICIES: dict[str, type[PickPolicy]] = {
    policy.name: policy for policy in (LeastLoaded, Weighted, FixedOrder)
}


def pick_policy(name: PolicyName) -> PickPolicy:
    """A new policy of that name: a new instance per call, as a policy may keep state."""
    try:
        return _POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown pick policy {name!r}; one of {', '.join(sorted(_POLICIES))}"
        ) from None
