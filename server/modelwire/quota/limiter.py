"""The worker's quota check: before a call reaches its provider, reserve it against every counter
its tenant's rules set (quota/counters.py) in one store round trip; after it, settle the
reservation to what the call really used, off the call's path.

The store is Redis (`[quota] store`, shared by every replica) or this process's memory. When Redis
cannot be reached, `on_store_failure` decides: "refuse" refuses every call a rule covers
(UNAVAILABLE naming the store), "share" enforces 1/`replicas` of each limit in this process until
the store answers again. Either way the change is logged once each way, counted in metrics and
shown in health (app/server.py), and settles that could not reach the store are replayed when it
is back, so a call is charged once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeGuard

from modelwire.core.errors import (
    AccountLimited,
    QuotaExceeded,
    QuotaStoreUnavailable,
    QuotaViolation,
    StartupFailure,
)
from modelwire.core.settings import ALL_TENANTS, EACH_TENANT, Prices, QuotaRule, QuotaSection
from modelwire.core.types import Usage
from modelwire.quota.counters import Counter, call_counters, rule_counters
from modelwire.quota.pricing import Tariff, cost_nano, in_units
from modelwire.quota.redis_store import STORE_ERRORS, RedisStore, unreachable
from modelwire.quota.report import LimitUsage, RuleUsage, UsageReport
from modelwire.quota.store import Amounts, MemoryStore, QuotaStore, Standing, Verdict

logger = logging.getLogger(__name__)

# While the store is away: how often it is tried again, and what a refused caller is told.
PROBE_INTERVAL_S = 1.0
# Settles kept for the store's return, at most (a day of 1 call/s would be 86,400).
MAX_PENDING_SETTLES = 100_000
# Settles sent to the store in one round trip, at most.
MAX_SETTLES_PER_TRIP = 256
# (tenant, model) pairs whose counters are kept worked out; past this the list starts again, so
# relayed tenants without end cannot grow it.
MAX_CACHED_SUBJECTS = 4096

# OpenAI's response headers, as initial metadata.
RATE_LIMIT_KEYS = {
    "r": (
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    "t": ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
}


# The limits of a refusal (QuotaViolation.limit_name) that OpenAI's headers name.
_HEADER_UNITS = {"requests_per_minute": "r", "tokens_per_minute": "t"}


def refusal_headers(error: QuotaExceeded) -> tuple[tuple[str, str], ...]:
    """A refused call's x-ratelimit-* headers (an HTTP 429's, as OpenAI sends them): each
    per-minute limit without room, nothing remaining, reset when the call may be retried."""
    headers: list[tuple[str, str]] = []
    reset = duration_text(error.retry_after_s or 0.0)
    named = set()
    for violation in error.violations:
        unit = _HEADER_UNITS.get(violation.limit_name)
        if unit is None or unit in named:
            continue
        named.add(unit)
        keys = RATE_LIMIT_KEYS[unit]
        headers += ((keys[0], f"{violation.limit:g}"), (keys[1], "0"), (keys[2], reset))
    return tuple(headers)


def duration_text(seconds: float) -> str:
    """A reset time as OpenAI writes it: "250ms", "12.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{round(seconds)}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass
class Reservation:
    """One admitted call's hold on its counters, settled once (`settle`)."""

    limiter: Limiter
    call_id: str
    store: QuotaStore
    counters: Sequence[Counter]
    standings: Sequence[Standing]
    tariff: Tariff | None
    settled: bool = field(default=False)

    def headers(self) -> tuple[tuple[str, str], ...]:
        """The tightest request and token counters as OpenAI's x-ratelimit-* metadata."""
        tightest: dict[str, tuple[int, int, float | None]] = {}
        for counter, standing in zip(self.counters, self.standings, strict=True):
            unit = counter.unit
            if unit in RATE_LIMIT_KEYS:
                remaining = counter.limit - standing.used
                held = tightest.get(unit)
                if held is None or remaining < held[0]:
                    tightest[unit] = (remaining, counter.limit, standing.resets_in_s)
        headers: list[tuple[str, str]] = []
        for unit, (remaining, limit, resets_in_s) in tightest.items():
            keys = RATE_LIMIT_KEYS[unit]
            headers += (
                (keys[0], str(limit)),
                (keys[1], str(max(0, remaining))),
                (keys[2], duration_text(resets_in_s or 0.0)),
            )
        return tuple(headers)

    def settle(self, usage: Usage, sent: bool) -> int:
        """Replaces the reservation by `usage` (`sent` False: the call never reached its
        provider, and then costs nothing, not even its request); returns the call's cost in
        nano-units. The store is told in the background; a second settle does nothing."""
        if self.settled:
            return 0
        self.settled = True
        cost = cost_nano(usage, self.tariff) if sent else 0
        used = Amounts(usage.total_tokens if sent else 0, cost)
        self.limiter.settle_later(self.store, self.call_id, used, sent)
        return cost


class Limiter:
    def __init__(
        self,
        config: QuotaSection,
        prices: Mapping[str, Prices | None],
        store: QuotaStore | None = None,
    ) -> None:
        """`store`: the shared counters (None: built from `config.store`, or memory)."""
        self._config = config
        self._rules: tuple[QuotaRule, ...] = config.rules
        self._prices = dict(prices)
        self._tariffs = {model: Tariff.of(price) for model, price in self._prices.items()}
        # Each (tenant, model)'s counters, worked out once per set of rules (at most this many).
        self._counters: dict[tuple[str | None, str, str | None], tuple[Counter, ...]] = {}
        self.shared = config.store is not None
        if store is None:
            store = (
                RedisStore(config, _password(config)) if config.store is not None else MemoryStore()
            )
        self._store = store
        self.store_name = store.url if isinstance(store, RedisStore) else "memory"
        self._fallback = MemoryStore()
        self.available = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: deque[tuple[str, Amounts, bool]] = deque(maxlen=MAX_PENDING_SETTLES)
        self._probe: asyncio.Task[None] | None = None
        self._lost = 0
        # Settles waiting for a round trip to their store, and the stores one is under way to.
        self._queued: dict[int, tuple[QuotaStore, list[tuple[str, Amounts, bool]]]] = {}
        self._sending: set[int] = set()
        # Running calls holding concurrent-call places, and the task renewing their leases.
        self._open: dict[str, tuple[QuotaStore, list[tuple[str, str]]]] = {}
        self._renewing: asyncio.Task[None] | None = None
        # Told True/False when the shared store comes back or goes away (metrics, health).
        self.on_store_change: Callable[[bool], None] | None = None

    @property
    def rules(self) -> tuple[QuotaRule, ...]:
        return self._rules

    def prices(self, model: str) -> Prices | None:
        return self._prices.get(model)

    def all_prices(self) -> dict[str, Prices | None]:
        return dict(self._prices)

    def tariff(self, model: str) -> Tariff | None:
        return self._tariffs.get(model)

    def replace(self, config: QuotaSection, prices: Mapping[str, Prices | None]) -> None:
        """SIGHUP: new rules and prices from the next call on (the store and its mode need a
        restart); the counts stay, since counters are named by what they count."""
        self._config = dataclasses.replace(
            self._config,
            rules=config.rules,
            default_output_reservation=config.default_output_reservation,
        )
        self._rules, self._prices = config.rules, dict(prices)
        self._tariffs = {model: Tariff.of(price) for model, price in self._prices.items()}
        self._counters = {}

    def tenants(self) -> set[str]:
        """The tenants the rules name."""
        return {rule.tenant for rule in self._rules} - {EACH_TENANT, ALL_TENANTS}

    async def start(self) -> None:
        """A store that cannot be reached stops the start, unless each replica may enforce its
        share meanwhile."""
        try:
            await self._store.ping()
        except STORE_ERRORS as error:
            if self._config.on_store_failure == "refuse":
                raise StartupFailure(
                    f"quota.store: cannot reach {self.store_name}: {_reason(error)} (set "
                    'on_store_failure = "share" to start anyway, each replica enforcing its share)'
                ) from None
            self._went_away(error)

    async def reserve(
        self,
        tenant: str | None,
        model: str,
        tokens: int,
        reserved_usage: Usage,
        deployment: str | None = None,
    ) -> Reservation | None:
        """Reserves a call of `tenant` to `model` (its `deployment`) that may use up to `tokens`
        and `reserved_usage`'s cost, or raises QuotaExceeded (AccountLimited when only the
        deployment's own limits refused it); None when no rule limits it."""
        subject = (tenant, model, deployment)
        counters = self._counters.get(subject)
        if counters is None:
            if len(self._counters) >= MAX_CACHED_SUBJECTS:
                self._counters.clear()
            counters = self._counters[subject] = call_counters(
                self._rules, tenant, model, deployment
            )
        if not counters:
            return None
        tariff = self._tariffs.get(model)
        amounts = Amounts(
            max(1, tokens),
            tariff.most_cost_nano(reserved_usage.prompt_tokens, reserved_usage.completion_tokens)
            if tariff is not None
            else 0,
        )
        call_id = uuid.uuid4().hex
        store: QuotaStore = self._store
        if not self.available:
            if self._config.on_store_failure == "refuse":
                raise QuotaStoreUnavailable(self.store_name, PROBE_INTERVAL_S)
            store = self._fallback
        enforced = self._as_enforced(counters, store)
        lease = self._config.call_lease_s
        if _immediate(store):  # no wait: no task, no shield
            verdict = store.reserve_now(call_id, enforced, amounts, lease)
        else:
            reserving = asyncio.ensure_future(store.reserve(call_id, enforced, amounts, lease))
            try:
                # A caller that leaves mid-reserve must not leave a reservation in the store.
                verdict = await asyncio.shield(reserving)
            except asyncio.CancelledError:
                reserving.add_done_callback(partial(self._take_back, store, call_id))
                raise
            except STORE_ERRORS as error:
                # The store may have run the script before the round trip failed: given back
                # once it answers again (settling a reservation it never made changes nothing).
                refusal = self._store_failed(error, [(call_id, Amounts(0, 0), False)])
                if refusal is not None:
                    raise refusal from None
                return await self.reserve(tenant, model, tokens, reserved_usage, deployment)
        if not verdict.admitted:
            refused = [enforced[index] for index in verdict.refused]
            violations = [_violation(counter) for counter in refused]
            if all(counter.deployment is not None for counter in refused):
                raise AccountLimited(violations, verdict.retry_after_s)
            raise QuotaExceeded(violations, verdict.retry_after_s)
        places = [(counter.key, call_id) for counter in enforced if counter.unit == "c"]
        if places:
            self._hold_places(call_id, store, places)
        return Reservation(self, call_id, store, enforced, verdict.standings, tariff)

    def _hold_places(self, call_id: str, store: QuotaStore, places: list[tuple[str, str]]) -> None:
        """A running call keeps its concurrent-call places past `call_lease_s`: every third of
        the lease, every running call's places are renewed (one round trip for all)."""
        self._open[call_id] = (store, places)
        if self._renewing is None:
            self._renewing = asyncio.get_running_loop().create_task(self._renew_places())

    async def _renew_places(self) -> None:
        while True:
            await asyncio.sleep(self._config.call_lease_s / 3)
            stores: dict[int, tuple[QuotaStore, list[tuple[str, str]]]] = {}
            for store, places in self._open.values():
                stores.setdefault(id(store), (store, []))[1].extend(places)
            for store, places in stores.values():
                try:
                    await store.renew(places, self._config.call_lease_s)
                except STORE_ERRORS as error:
                    logger.warning(
                        "quota store %s: running calls' places not renewed (%s)",
                        self.store_name,
                        _reason(error),
                    )

    def _take_back(
        self, store: QuotaStore, call_id: str, reserving: asyncio.Future[Verdict]
    ) -> None:
        """The reservation of a call whose caller left while it was made, given back: at once
        when the store made it, when the store answers again when its round trip failed (the
        script may have run)."""
        if reserving.cancelled():
            return
        error = reserving.exception()
        if error is None:
            if reserving.result().admitted:
                self.settle_later(store, call_id, Amounts(0, 0), sent=False)
        elif isinstance(error, STORE_ERRORS):
            self._store_failed(error, [(call_id, Amounts(0, 0), False)])

    def _as_enforced(self, counters: Sequence[Counter], store: QuotaStore) -> Sequence[Counter]:
        if store is self._fallback and self.shared:
            replicas = self._config.replicas or 1
            return [counter.shared(replicas) for counter in counters]
        return counters

    def settle_later(self, store: QuotaStore, call_id: str, used: Amounts, sent: bool) -> None:
        """Settles in the background (in this process's memory: at once). The settles of a
        shared store wait in a queue while one round trip is under way and then go together, so
        under load a call costs the store less than one round trip after it."""
        self._open.pop(call_id, None)
        if _immediate(store):
            store.settle_now(call_id, used, sent)
            return
        queue = self._queued.setdefault(id(store), (store, []))[1]
        queue.append((call_id, used, sent))
        if len(queue) == 1 and id(store) not in self._sending:
            self._sending.add(id(store))
            task = asyncio.get_running_loop().create_task(self._send_settles(store))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_settles(self, store: QuotaStore) -> None:
        """Sends `store`'s queued settles, at most MAX_SETTLES_PER_TRIP a round trip, until none
        are left; what cannot reach it waits for its return."""
        try:
            queue = self._queued[id(store)][1]
            while queue:
                batch = queue[:MAX_SETTLES_PER_TRIP]
                del queue[:MAX_SETTLES_PER_TRIP]
                try:
                    await store.settle_many(batch)
                except STORE_ERRORS as error:
                    self._store_failed(error, batch)
        finally:
            self._sending.discard(id(store))

    def _store_failed(
        self, error: BaseException, settles: Sequence[tuple[str, Amounts, bool]] = ()
    ) -> QuotaStoreUnavailable | None:
        """How a round trip to the shared store failed. Away: `settles` wait for its return and
        the limiter goes to its unavailable state (None). Refused (an ACL, a script error): said
        at ERROR, and the refusal to raise is returned."""
        if not unreachable(error):
            return self._refused(error)
        for settle in settles:
            self._keep(settle)
        self._went_away(error)
        return None

    def _keep(self, settle: tuple[str, Amounts, bool]) -> None:
        """A settle for the store's return; past MAX_PENDING_SETTLES the oldest is lost, said."""
        if len(self._pending) == self._pending.maxlen:
            self._lost += 1
            if self._lost % 1000 == 1:
                logger.error(
                    "quota store %s: %d settles waiting for it, the most kept: %d lost so far "
                    "(their calls stay charged what they reserved)",
                    self.store_name,
                    MAX_PENDING_SETTLES,
                    self._lost,
                )
        self._pending.append(settle)

    def _refused(self, error: BaseException) -> QuotaStoreUnavailable:
        """The store answered but refused the scripts (an ACL without a command they run, a
        script error): the operator's to fix, said at ERROR; not an outage, so no failure mode
        and no flapping health."""
        logger.error(
            "quota store %s refused the quota's script: %s",
            self.store_name,
            _reason(error),
            extra={"quota_store": "refused"},
        )
        return QuotaStoreUnavailable(self.store_name, PROBE_INTERVAL_S, _reason(error))

    def _went_away(self, error: BaseException) -> None:
        if self.available:
            self.available = False
            logger.warning(
                "quota store %s cannot be reached (%s): %s",
                self.store_name,
                _reason(error),
                "calls its limits cover are refused until it is back"
                if self._config.on_store_failure == "refuse"
                else f"each replica enforces 1/{self._config.replicas} of every limit meanwhile",
                extra={"quota_store": "unavailable"},
            )
            if self.on_store_change is not None:
                self.on_store_change(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_store())

    async def _wait_for_store(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                await self._store.ping()
                await self._replay()
            except STORE_ERRORS:
                continue
            self.available = True
            logger.info(
                "quota store %s is back: its counters are enforced again",
                self.store_name,
                extra={"quota_store": "available"},
            )
            if self.on_store_change is not None:
                self.on_store_change(True)
            return

    async def usage(self, tenant: str | None, known: Iterable[str]) -> UsageReport:
        """Each rule's counters for `tenant` (None: every tenant in `known` and the rules)."""
        tenants = sorted({tenant} if tenant else set(known) | self.tenants())
        entries: list[tuple[int, QuotaRule, str, list[Counter]]] = []
        for index, rule in enumerate(self._rules):
            if rule.tenant == ALL_TENANTS:
                entries.append((index, rule, ALL_TENANTS, rule_counters(index, rule, None)))
                continue
            for name in tenants:
                if rule.tenant in (EACH_TENANT, name):
                    entries.append((index, rule, name, rule_counters(index, rule, name)))
        if not self.available and self._config.on_store_failure == "refuse":
            return UsageReport((), self.store_name, False)
        store: QuotaStore = self._store if self.available else self._fallback
        counters = [counter for *_, group in entries for counter in group]
        enforced = self._as_enforced(counters, store)
        try:
            standings = iter(await store.read(enforced))
        except STORE_ERRORS as error:
            refusal = self._store_failed(error)
            raise refusal or QuotaStoreUnavailable(self.store_name, PROBE_INTERVAL_S) from None
        by_key = iter(enforced)
        rules = []
        for index, rule, name, group in entries:
            limits = []
            for _ in group:
                counter, standing = next(by_key), next(standings)
                money = counter.unit == "$"
                limits.append(
                    LimitUsage(
                        counter.kind,
                        in_units(standing.used) if money else float(standing.used),
                        counter.limit_value,
                        standing.resets_in_s,
                    )
                )
            rules.append(RuleUsage(index, name, rule.model, tuple(limits)))
        return UsageReport(tuple(rules), self.store_name, self.available)

    async def close(self) -> None:
        """Waits for the settles under way (a drained worker's calls are charged), then closes
        the store."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in (self._probe, self._renewing):
            if task is not None:
                task.cancel()
        if self._pending:
            await self._flush_pending()
        await self._store.close()

    async def _replay(self) -> None:
        """Sends the settles that waited for the store, in order; one the store refuses (not an
        outage) is said and dropped. Raises what says the store is away again."""
        while self._pending:
            call_id, used, sent = self._pending[0]
            try:
                await self._store.settle(call_id, used, sent)
            except STORE_ERRORS as error:
                if unreachable(error):
                    raise
                self._refused(error)
            self._pending.popleft()

    async def _flush_pending(self) -> None:
        """The settles still waiting for the store, once more; what cannot reach it is said."""
        try:
            await self._replay()
        except STORE_ERRORS as error:
            logger.error(
                "quota store %s cannot be reached at shutdown (%s): %d settles are lost, their "
                "calls stay charged what they reserved until their windows end",
                self.store_name,
                _reason(error),
                len(self._pending),
            )


def _immediate(store: QuotaStore) -> TypeGuard[MemoryStore]:
    """A store in this process's memory, whose work never waits: called directly, no task."""
    return isinstance(store, MemoryStore) and store.in_process


def _password(config: QuotaSection) -> str | None:
    return os.environ.get(config.store_password_env) if config.store_password_env else None


def _violation(counter: Counter) -> QuotaViolation:
    return QuotaViolation(
        counter.rule,
        counter.tenant,
        counter.model,
        counter.kind.value,
        counter.limit_value,
        counter.deployment,
    )


def _reason(error: BaseException) -> str:
    """An error's kind and text; a Redis URL's password never appears in redis-py's messages."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
