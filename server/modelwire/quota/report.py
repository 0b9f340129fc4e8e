"""What `GetUsage` and `modelwire usage` show: each rule's counters for a tenant, in domain terms
(the admin servicer turns them into protobuf)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class LimitKind(enum.Enum):
    """A rule's limits, by their configuration keys."""

    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    CONCURRENT_CALLS = "concurrent_calls"
    BUDGET_PER_DAY = "budget_per_day"
    BUDGET_PER_MONTH = "budget_per_month"


@dataclass(frozen=True, slots=True)
class LimitUsage:
    kind: LimitKind
    # Requests, tokens or calls; money for budgets (in the prices' currency).
    used: float
    limit: float
    # Until the window starts again; None for concurrent calls (they free as calls end).
    resets_in_s: float | None


@dataclass(frozen=True, slots=True)
class RuleUsage:
    # The rule's position in [[quota.rules]].
    rule: int
    # Whose calls count: a tenant, or "all" for a rule over every caller together.
    tenant: str
    # A model, or "*" for every model together.
    model: str
    limits: tuple[LimitUsage, ...]


@dataclass(frozen=True, slots=True)
class UsageReport:
    rules: tuple[RuleUsage, ...]
    # "memory" (this process), or the store's URL without its credentials.
    store: str
    # False while the store cannot be reached: `rules` is then empty (mode "refuse") or this
    # process's own share-mode counters (mode "share").
    store_available: bool
