"""Which counters a call is checked against: every `[[quota.rules]]` that applies to its tenant and
model, each limit of each rule a counter.

A counter is named by what it counts (its kind, the tenant or everyone, the model or every model),
not by the rule that set it: two rules over the same calls share a counter and the tighter limit
wins, and a reload that reorders the rules keeps every count.
"""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelwire.core.settings import ALL_TENANTS, ANY_MODEL, EACH_TENANT, QuotaRule
from modelwire.quota.pricing import NANO_PER_UNIT
from modelwire.quota.report import LimitKind


class Window(enum.Enum):
    """When a counter starts again, on the store's clock (UTC)."""

    MINUTE = "m"
    DAY = "d"
    MONTH = "M"
    # Concurrent calls: no window; a place frees when its call ends (or its lease runs out).
    NONE = "c"


# What each limit counts, and in which window: requests, tokens, calls, money (in nano-units).
_KINDS: dict[LimitKind, tuple[str, Window]] = {
    LimitKind.REQUESTS_PER_MINUTE: ("r", Window.MINUTE),
    LimitKind.TOKENS_PER_MINUTE: ("t", Window.MINUTE),
    LimitKind.CONCURRENT_CALLS: ("c", Window.NONE),
    LimitKind.BUDGET_PER_DAY: ("$", Window.DAY),
    LimitKind.BUDGET_PER_MONTH: ("$", Window.MONTH),
}
# The subject of a rule over every caller (a tenant's name is percent-encoded, so never this).
_EVERYONE = "@all"
_EVERY_MODEL = "@any"


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit of one rule, for one call's tenant: `key` names it in the store."""

    kind: LimitKind
    key: str
    # Requests, tokens or calls; money in nano-units (pricing.py).
    limit: int
    # Which rule set it, and the subject, for refusals and reports.
    rule: int
    tenant: str
    model: str
    # A deployment's account limit (its rule names the deployment): a refusal moves the call on.
    deployment: str | None = None
    # What it counts (`r` requests, `t` tokens, `c` calls, `$` money) and when it starts again:
    # from `kind`, kept as fields since every call reads them.
    unit: str = field(init=False)
    window: Window = field(init=False)

    def __post_init__(self) -> None:
        unit, window = _KINDS[self.kind]
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "window", window)

    @property
    def limit_value(self) -> float:
        """The limit as configured (money in its currency)."""
        return self.limit / NANO_PER_UNIT if self.unit == "$" else float(self.limit)

    def shared(self, replicas: int) -> Counter:
        """This counter as one of `replicas` enforces it alone (on_store_failure = "share"): its
        share of the limit, at least one of what it counts."""
        return Counter(
            self.kind,
            self.key,
            max(1, self.limit // replicas),
            self.rule,
            self.tenant,
            self.model,
            self.deployment,
        )


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def rule_counters(index: int, rule: QuotaRule, tenant: str | None) -> list[Counter]:
    """The counters of `rule` for calls of `tenant` (None: whoever called; a rule over each tenant
    then needs a tenant)."""
    if rule.tenant == ALL_TENANTS:
        subject, shown = _EVERYONE, ALL_TENANTS
    else:
        assert tenant is not None
        subject, shown = _quoted(tenant), tenant
    model = _EVERY_MODEL if rule.model == ANY_MODEL else _quoted(rule.model)
    if rule.deployment is not None:
        model += "@" + _quoted(rule.deployment)
    counters = []
    for name, value in rule.limits.items():
        kind = LimitKind(name)
        unit = _KINDS[kind][0]
        limit = round(value * NANO_PER_UNIT) if unit == "$" else int(value)
        counters.append(
            Counter(
                kind,
                f"{unit}:{subject}:{model}",
                limit,
                index,
                shown,
                rule.model,
                rule.deployment,
            )
        )
    return counters


def applies(rule: QuotaRule, tenant: str | None, model: str, deployment: str | None) -> bool:
    """Whether `rule` counts a call of `tenant` (None when no one authenticated) to `model`'s
    `deployment` (None: the model's only one)."""
    if rule.model not in (ANY_MODEL, model):
        return False
    if rule.deployment is not None and rule.deployment != deployment:
        return False
    if rule.tenant == ALL_TENANTS:
        return True
    return tenant is not None and rule.tenant in (EACH_TENANT, tenant)


def call_counters(
    rules: Sequence[QuotaRule], tenant: str | None, model: str, deployment: str | None = None
) -> tuple[Counter, ...]:
    """Every counter a call is checked against, one per (kind, key): where two rules count the
    same calls, the tighter limit."""
    tightest: dict[tuple[LimitKind, str], Counter] = {}
    for index, rule in enumerate(rules):
        if not applies(rule, tenant, model, deployment):
            continue
        for counter in rule_counters(index, rule, tenant):
            held = tightest.get((counter.kind, counter.key))
            if held is None or counter.limit < held.limit:
                tightest[(counter.kind, counter.key)] = counter
    return tuple(tightest.values())
