"""The pick policies of core/balance.py, on plain candidates with a load the test sets; and the
gateway's router, which picks through them."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import cast

import grpc
import pytest

from modelwire.core.balance import (
    FixedOrder,
    LeastLoaded,
    PickPolicy,
    PolicyName,
    Weighted,
    pick_policy,
)
from modelwire.fleet.registry import RegistryClient
from modelwire.fleet.types import Instance, InstanceModel, InstanceSpec
from modelwire.gateway.router import Route, Router


@dataclass(eq=False)
class Candidate:
    name: str
    weight: int = 1
    load: float = 0.0
    picked_at: float = 0.0


def load_of(c: Candidate) -> float:
    return c.load


def test_least_loaded_picks_the_lower_load_relative_to_weight() -> None:
    # 3 calls on weight 4 (0.75 each) is less loaded than 1 call on weight 1.
    light, heavy = Candidate("light", weight=4, load=3), Candidate("heavy", weight=1, load=1)
    policy = LeastLoaded()
    for _ in range(5):
        assert policy.pick([heavy, light], load_of) is light
    assert light.picked_at > 0.0
    assert heavy.picked_at == 0.0


def test_least_loaded_ties_go_to_the_least_recently_picked() -> None:
    a, b = Candidate("a"), Candidate("b")
    a.picked_at = 2.0  # picked more recently than b (1.0): b is next
    b.picked_at = 1.0
    policy = LeastLoaded()
    picks = [policy.pick([a, b], load_of).name for _ in range(6)]
    assert picks == ["b", "a", "b", "a", "b", "a"]


def test_least_loaded_compares_only_two_of_three_or_more() -> None:
    # The idlest candidate wins only when sampled; with all of them compared it would win every
    # time. Each candidate is in the sample 2/3 of the time, so the idlest wins about 2/3 of picks.
    idle = Candidate("idle", load=0)
    busy = [Candidate(f"busy{i}", load=10) for i in range(2)]
    policy = LeastLoaded(random.Random(7))
    wins = Counter(policy.pick([busy[0], idle, busy[1]], load_of).name for _ in range(3000))
    assert 0.62 < wins["idle"] / 3000 < 0.72
    assert wins["busy0"] > 0 and wins["busy1"] > 0


def test_least_loaded_reads_the_load_of_two_candidates_only() -> None:
    candidates = [Candidate(str(i), load=float(i)) for i in range(5)]
    policy = LeastLoaded(random.Random(5))
    read: list[Candidate] = []

    def recording(c: Candidate) -> float:
        read.append(c)
        return c.load

    for _ in range(20):
        read.clear()
        chosen = policy.pick(candidates, recording)
        assert len({id(c) for c in read}) == 2
        assert chosen in read


def test_least_loaded_shares_accumulating_load_by_weight() -> None:
    big, small = Candidate("big", weight=3), Candidate("small", weight=1)
    policy = LeastLoaded(random.Random(1))
    for _ in range(40):
        policy.pick([big, small], load_of).load += 1
    assert (big.load, small.load) == (30, 10)


def test_weighted_shares_picks_by_weight() -> None:
    big, small = Candidate("big", weight=3), Candidate("small", weight=1)
    # Load is ignored: the busy one is still picked its share.
    big.load = 1000
    policy = Weighted(random.Random(11))
    picks = Counter(policy.pick([big, small], load_of).name for _ in range(10_000))
    assert abs(picks["big"] / 10_000 - 0.75) <= 0.03
    assert big.picked_at > 0.0 and small.picked_at > 0.0


def test_fixed_order_always_picks_the_first() -> None:
    primary, standby = Candidate("primary", load=50), Candidate("standby")
    policy = FixedOrder()
    for _ in range(5):
        assert policy.pick([primary, standby], load_of) is primary
    assert policy.pick([standby], load_of) is standby
    assert primary.picked_at > 0.0


@pytest.mark.parametrize(
    ("name", "cls"),
    [("least_loaded", LeastLoaded), ("weighted", Weighted), ("fixed_order", FixedOrder)],
)
def test_pick_policy_by_name(name: PolicyName, cls: type[PickPolicy]) -> None:
    policy = pick_policy(name)
    assert type(policy) is cls
    assert policy.name == name
    assert pick_policy(name) is not policy


def test_pick_policy_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="least_loaded"):
        pick_policy("round_robin")  # type: ignore[arg-type]


def router(weights: list[int], policy: PickPolicy | None = None) -> Router:
    """A router whose table holds one instance of model "m" per weight, with no source or probe."""
    table = Router(cast(RegistryClient, object()), probe_health=False, policy=policy)
    for i, weight in enumerate(weights):
        spec = InstanceSpec(f"i{i}", f"h:{i}", (InstanceModel("m"),), weight=weight)
        table.routes[spec.instance_id] = Route(Instance(spec), cast(grpc.aio.Channel, None))
    return table


def picked_before(routes: list[Route], model: str) -> Route:
    """Router.pick's choice before the policies: the reference the default policy must match."""
    now = time.monotonic()
    candidates = routes
    if len(candidates) > 2:
        candidates = random.sample(candidates, 2)
    chosen = min(
        candidates,
        key=lambda r: (
            (r.open.get(model, 0) + r.others_load(model, now)) / max(1, r.instance.spec.weight),
            r.picked_at,
        ),
    )
    chosen.picked_at = now
    return chosen


@pytest.mark.parametrize("weights", [[1], [1, 1], [3, 1], [1, 3, 2, 1, 5], [2, 2, 2, 2]])
def test_router_default_policy_picks_as_before(weights: list[int]) -> None:
    # The same seed for both, and the same opening and closing of calls: the same choices.
    sequences = []
    for new in (True, False):
        table = router(weights)
        random.seed(17)
        calls = random.Random(23)
        chosen = []
        for _ in range(400):
            if new:
                route = table.pick("m", set())
            else:
                route = picked_before(list(table.routes.values()), "m")
            chosen.append(route.instance_id)
            route.open["m"] = route.open.get("m", 0) + 1
            for other in table.routes.values():
                if other.open.get("m", 0) and calls.random() < 0.3:
                    other.open["m"] -= 1
        sequences.append(chosen)
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) == len(weights)


def test_router_picks_through_the_policy_it_is_given() -> None:
    table = router([1, 5, 5], policy=FixedOrder())
    table.routes["i0"].open["m"] = 100
    assert table.pick("m", set()).instance_id == "i0"
    assert table.pick("m", {"i0"}).instance_id == "i1"
    assert isinstance(router([1]).policy, LeastLoaded)


def test_a_route_loads_undivided_and_weighs_at_least_one() -> None:
    table = router([4, 0])
    heavy, zero = table.routes["i0"], table.routes["i1"]
    heavy.open["m"] = 6
    assert (heavy.load("m", time.monotonic()), heavy.weight) == (6, 4)
    assert zero.weight == 1
