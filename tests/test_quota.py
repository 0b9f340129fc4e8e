"""Quota in one worker: the store's algorithm (in memory and in a real Redis, the same cases),
the calendar windows of the Redis scripts against Python's calendar, prices, and a worker whose
limits refuse before the provider is called, tell callers their limits before the first token,
charge cut-off calls, list prices and take new rules on reload. The fleet (several workers on one
Redis, a gateway, Redis failing) is tests/test_quota_fleet.py."""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    answer_ok,
    fake_upstream,
    load_toml_config,
    openai_chunk,
)
from modelwire.app.config import load_config
from modelwire.app.server import Worker
from modelwire.core.settings import ConfigError, Prices, QuotaRule, QuotaSection
from modelwire.core.types import ModelMessage, Role, Usage
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter
from modelwire.quota.counters import Counter, Window, call_counters
from modelwire.quota.limiter import Limiter, duration_text
from modelwire.quota.pricing import NANO_PER_UNIT, Tariff, cost_nano
from modelwire.quota.redis_store import _WINDOWS, RedisStore
from modelwire.quota.report import LimitKind
from modelwire.quota.store import Amounts, MemoryStore, QuotaStore, Verdict, window_bounds
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from redis_server import RedisServer


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis: RedisServer) -> AsyncIterator[QuotaStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    client = aioredis.from_url(redis.url)
    await client.flushdb()
    await client.aclose()
    shared = RedisStore(QuotaSection(store=redis.url), None)
    yield shared
    await shared.close()


def counters(*rules: QuotaRule, tenant: str = "team-a", model: str = "m") -> list[Counter]:
    return call_counters(rules, tenant, model)


# ---------------------------------------------------------------------------------------------
# The store's algorithm, in memory and in Redis alike


async def test_a_call_is_admitted_only_if_every_counter_has_room_and_a_refusal_changes_none(
    store: QuotaStore,
) -> None:
    rules = (
        QuotaRule(tenant="team-a", requests_per_minute=3),
        QuotaRule(tenant="all", tokens_per_minute=100),
    )
    held = counters(*rules)
    assert [c.kind for c in held] == [LimitKind.REQUESTS_PER_MINUTE, LimitKind.TOKENS_PER_MINUTE]
    first = await store.reserve("c1", held, Amounts(60, 0), 30)
    assert first.admitted and [s.used for s in first.standings] == [1, 60]
    # The token rule has no room for 50 more: refused, and the request rule is not charged.
    refused = await store.reserve("c2", held, Amounts(50, 0), 30)
    assert not refused.admitted and refused.refused == (1,)
    assert refused.retry_after_s is not None and 0 < refused.retry_after_s <= 60
    assert [s.used for s in await store.read(held)] == [1, 60]
    # A call that alone asks for more than a limit allows can never pass: no retry time.
    never = await store.reserve("c3", held, Amounts(101, 0), 30)
    assert not never.admitted and never.retry_after_s is None


async def test_settling_replaces_a_reservation_by_the_usage_once(store: QuotaStore) -> None:
    held = counters(QuotaRule(tenant="*", requests_per_minute=10, tokens_per_minute=1000))
    await store.reserve("call", held, Amounts(500, 0), 30)
    await store.settle("call", Amounts(120, 0), sent=True)
    assert [s.used for s in await store.read(held)] == [1, 120]
    await store.settle("call", Amounts(999, 0), sent=True)  # a second settle changes nothing
    assert [s.used for s in await store.read(held)] == [1, 120]
    # A call that never reached its provider costs nothing, not even its request.
    await store.reserve("unsent", held, Amounts(300, 0), 30)
    await store.settle("unsent", Amounts(0, 0), sent=False)
    assert [s.used for s in await store.read(held)] == [1, 120]


async def test_concurrent_places_free_when_calls_end(store: QuotaStore) -> None:
    held = counters(QuotaRule(tenant="team-a", model="m", concurrent_calls=2))
    assert (await store.reserve("a", held, Amounts(1, 0), 30)).admitted
    assert (await store.reserve("b", held, Amounts(1, 0), 30)).admitted
    third = await store.reserve("c", held, Amounts(1, 0), 30)
    assert not third.admitted and third.retry_after_s == 0  # frees when a call ends: unknown
    await store.settle("a", Amounts(1, 0), sent=True)
    assert (await store.reserve("c", held, Amounts(1, 0), 30)).admitted


async def test_money_counts_in_whole_nano_units(store: QuotaStore) -> None:
    held = counters(QuotaRule(tenant="team-a", budget_per_day=1.0, budget_per_month=2.0))
    assert held[0].limit == NANO_PER_UNIT
    half = NANO_PER_UNIT // 2
    assert (await store.reserve("a", held, Amounts(1, half), 30)).admitted
    assert (await store.reserve("b", held, Amounts(1, half), 30)).admitted
    assert not (await store.reserve("c", held, Amounts(1, 1), 30)).admitted
    await store.settle("b", Amounts(1, half - 7), sent=True)
    assert [s.used for s in await store.read(held)] == [2 * half - 7] * 2
    assert (await store.reserve("c", held, Amounts(1, 7), 30)).admitted


async def test_a_concurrent_burst_admits_exactly_the_limit(store: QuotaStore) -> None:
    held = counters(QuotaRule(tenant="all", requests_per_minute=25))
    verdicts = await asyncio.gather(
        *(store.reserve(f"c{i}", held, Amounts(1, 0), 30) for i in range(60))
    )
    assert sum(v.admitted for v in verdicts) == 25


async def test_a_lease_frees_the_place_of_a_call_whose_worker_died(redis: RedisServer) -> None:
    shared = RedisStore(QuotaSection(store=redis.url), None)
    held = counters(QuotaRule(tenant="team-a", model="lease", concurrent_calls=1), model="lease")
    try:
        assert (await shared.reserve("dead", held, Amounts(1, 0), 0.2)).admitted
        assert not (await shared.reserve("next", held, Amounts(1, 0), 30)).admitted
        # Never settled: the place comes back when the lease ends, on Redis's clock.
        for _ in range(200):
            if (await shared.reserve("next", held, Amounts(1, 0), 30)).admitted:
                break
            await asyncio.sleep(0.01)  # polling the store's clock: there is no event to wait on
        else:
            raise AssertionError("the lease never freed the place")
    finally:
        await shared.close()


async def test_the_scripts_calendar_months_are_pythons(redis: RedisServer) -> None:
    """The month window of the Redis scripts (days to a civil date and back, in Lua) against
    Python's calendar: every month start from 1970 to 2400, and the instants either side of it."""
    client = aioredis.from_url(redis.url)
    script = client.register_script(
        _WINDOWS
        + """
local answer = {}
for i = 1, #ARGV do
  local suffix, reset = window('M', tonumber(ARGV[i]))
  table.insert(answer, suffix .. ' ' .. string.format('%.3f', reset))
end
return answer
"""
    )
    instants = []
    for year in range(1970, 2401, 7):
        for month in range(1, 13):
            start = calendar.timegm((year, month, 1, 0, 0, 0))
            instants += [start, start + 0.5, start - 0.5, start + 86400 * 15]
    try:
        got = await script(args=instants)
    finally:
        await client.aclose()
    for instant, answer in zip(instants, got, strict=True):
        suffix, reset = window_bounds(Window.MONTH, instant)
        assert answer.decode() == f":{suffix} {reset:.3f}", instant


# ---------------------------------------------------------------------------------------------
# Prices, headers, configuration


def test_a_cost_is_usage_times_prices_rounded_once() -> None:
    prices = Prices(input=2.5, output=10.0, cached_input=1.25, cache_write=3.125)
    usage = Usage(
        prompt_tokens=1000, completion_tokens=200, cached_prompt_tokens=600, cache_write_tokens=100
    )
    # 300 fresh × 2.5 + 600 × 1.25 + 100 × 3.125 + 200 × 10, per million.
    expected = (300 * 2.5 + 600 * 1.25 + 100 * 3.125 + 200 * 10.0) / 1e6
    assert cost_nano(usage, Tariff.of(prices)) == round(expected * NANO_PER_UNIT)
    assert (
        cost_nano(Usage(prompt_tokens=3, completion_tokens=0), Tariff.of(Prices(input=0.1))) == 300
    )
    assert cost_nano(usage, None) == 0
    # Unpriced cache tokens cost what input costs.
    assert cost_nano(usage, Tariff.of(Prices(input=2.5, output=10.0))) == round(
        (1000 * 2.5 + 200 * 10.0) / 1e6 * NANO_PER_UNIT
    )


def test_reset_times_read_as_openai_writes_them() -> None:
    assert [duration_text(s) for s in (0.25, 1.0, 12.4, 59.6, 360.0, 3725.0)] == [
        "250ms",
        "1s",
        "12s",
        "60s",
        "6m0s",
        "62m5s",
    ]


@pytest.mark.parametrize(
    ("quota", "problem"),
    [
        ('store = "http://127.0.0.1:6379"', "quota.store: must be a redis://"),
        ('store = "redis://127.0.0.1/0"', "quota.store: names no port"),
        ('store = "redis://127.0.0.1:6379/x"', "quota.store: database must be a number"),
        (
            'store = "redis://127.0.0.1:6379/0"\non_store_failure = "share"',
            "needs `replicas`",
        ),
        ("replicas = 3", "have no effect without `store`"),
        ('[[quota.rules]]\ntenant = "all"', "sets no limit"),
        ('[[quota.rules]]\ntenant = "_other"\nrequests_per_minute = 1', "metrics label"),
        (
            '[[quota.rules]]\ntenant = "all"\nbudget_per_day = 2e6',
            "quota.rules[0].budget_per_day: must be at most 1000000",
        ),
        ('[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 1', "needs [auth]"),
    ],
)
def test_a_quota_mistake_names_its_key(tmp_path: Path, quota: str, problem: str) -> None:
    path = tmp_path / "w.toml"
    path.write_text(
        f'[[models]]\nname = "echo"\nprovider = "echo"\n\n[quota]\n{quota}\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert problem in str(refused.value)


def test_rules_over_the_same_calls_share_a_counter_and_the_tighter_limit_wins() -> None:
    held = counters(
        QuotaRule(tenant="team-a", requests_per_minute=600),
        QuotaRule(tenant="*", requests_per_minute=100),
        QuotaRule(tenant="*", model="other", requests_per_minute=1),
    )
    assert [(c.limit, c.rule) for c in held] == [(100, 1)]
    # Another tenant under the "*" rule counts on its own; "all" counts everyone together.
    assert counters(QuotaRule(tenant="*", requests_per_minute=1), tenant="b")[0].key != held[0].key
    everyone = QuotaRule(tenant="all", requests_per_minute=1)
    assert counters(everyone, tenant="a")[0].key == counters(everyone, tenant="b")[0].key
    assert call_counters((QuotaRule(tenant="*", requests_per_minute=1),), None, "m") == ()


# ---------------------------------------------------------------------------------------------
# A worker with limits (the store in its memory), its provider a fake OpenAI upstream

TOKEN = "alice-token-0123456789abcdef"
TOKENS = f"""
[[tokens]]
name = "alice"
token = "{TOKEN}"
tenant = "team-a"
"""


def worker_toml(fake: FakeUpstream, tokens: Path, rules: str) -> str:
    return f"""
[server]
grace_period_s = 1.0

[auth]
tokens_file = "{tokens}"

[[models]]
name = "oa"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
timeout_s = 5.0
max_retries = 0
price_per_million = {{ input = 2.5, cached_input = 1.25, output = 10.0 }}

[quota]
default_output_reservation = 100
{rules}
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with fake_upstream() as upstream:
        yield upstream


async def limited_worker(tmp_path: Path, fake: FakeUpstream, rules: str) -> Worker:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    return load_toml_config(tmp_path, worker_toml(fake, tokens, rules))  # type: ignore[return-value]


def stub(worker: Worker) -> tuple[grpc.aio.Channel, pb_grpc.ModelWorkerStub]:
    channel = grpc.aio.insecure_channel(worker.address)
    return channel, pb_grpc.ModelWorkerStub(channel)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def ask(prompt: str = "hello", max_new_tokens: int | None = None) -> pb.ModelRequest:
    request = pb.ModelRequest(
        model="oa", messages=[pb.ModelMessage(role=pb.ROLE_USER, content=prompt)]
    )
    if max_new_tokens is not None:
        request.sampling.max_new_tokens = max_new_tokens
    return request


async def prompt_tokens(worker: Worker) -> int:
    """What the worker counts for `ask()`'s prompt (the quota reserves it)."""
    messages = (ModelMessage(Role.USER, "hello"),)
    return (
        await worker.service.target("oa").deployments[0].client.count_token("oa", messages)
    ).count


def quota_details(
    error: grpc.aio.AioRpcError,
) -> tuple[list[error_details_pb2.QuotaFailure.Violation], float | None]:
    status = rpc_status.from_call(error)
    violations: list[error_details_pb2.QuotaFailure.Violation] = []
    delay = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            violations += failure.violations
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.ToNanoseconds() / 1e9
    return violations, delay


def charges(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == ACCESS_LOGGER]
    return [line for line in lines if "Generate" in str(line["method"])]


async def test_a_refused_call_never_reaches_the_provider_and_says_which_rule(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    config = await limited_worker(
        tmp_path, fake, '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 2'
    )
    async with running_worker(config) as worker:
        channel, worker_stub = stub(worker)
        async with channel:
            for _ in range(2):
                await worker_stub.Generate(ask(), metadata=AUTH)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await worker_stub.Generate(ask(), metadata=AUTH)
    assert len(fake.exchanges) == 2
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    violations, delay = quota_details(refused.value)
    assert [(v.subject, v.quota_metric, v.quota_id, v.quota_value) for v in violations] == [
        ("tenant:team-a", "requests_per_minute", "rule-0", 2)
    ]
    assert dict(violations[0].quota_dimensions) == {"tenant": "team-a", "model": "*"}
    assert delay is not None and 0.5 <= delay <= 60
    assert "rule 0 (tenant 'team-a', model '*'): requests_per_minute 2" in str(
        refused.value.details()
    )


async def test_a_stream_sees_its_limits_before_its_first_token(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    first_token_sent = asyncio.Event()
    release = asyncio.Event()

    async def slow(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        await release.wait()
        await respond.event(openai_chunk("hi"))
        first_token_sent.set()
        await respond.event(openai_chunk(finish_reason="stop"))
        await respond.event("[DONE]")
        await respond.end()

    fake.script(slow)
    config = await limited_worker(
        tmp_path,
        fake,
        '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 10\ntokens_per_minute = 5000',
    )
    async with running_worker(config) as worker:
        channel, worker_stub = stub(worker)
        async with channel:
            call = worker_stub.GenerateStream(ask(max_new_tokens=50), metadata=AUTH)
            headers = dict(await call.initial_metadata())
            assert not first_token_sent.is_set()
            release.set()
            async for _ in call:
                pass
            unary = worker_stub.Generate(ask(max_new_tokens=50), metadata=AUTH)
            await unary
            unary_headers = dict(await unary.initial_metadata())
    prompt = await prompt_tokens(worker)
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    assert int(headers["x-ratelimit-remaining-tokens"]) <= 5000 - 50
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert unary_headers["x-ratelimit-remaining-requests"] == "8"
    assert prompt > 0


async def test_list_models_shows_each_models_prices(tmp_path: Path, fake: FakeUpstream) -> None:
    config = await limited_worker(tmp_path, fake, "")
    async with running_worker(config) as worker:
        channel, worker_stub = stub(worker)
        async with channel:
            listed = await worker_stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)
    prices = listed.models[0].prices
    assert (prices.input, prices.cached_input, prices.cache_write, prices.output) == (
        2.5,
        1.25,
        2.5,
        10.0,
    )


async def test_a_cut_off_call_is_charged_what_it_may_have_used(
    tmp_path: Path, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A unary call out of time: its prompt and whole output bound (what it generated cannot be
    seen); a stream cancelled after two deltas: its prompt and the deltas delivered."""
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    delivered = asyncio.Event()

    async def never_answers(exchange: Exchange, respond: Responder) -> None:
        await respond.hang()

    async def two_deltas_then_stall(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        await respond.event(openai_chunk("one"))
        await respond.event(openai_chunk(" two"))
        delivered.set()
        await respond.hang()

    fake.script(never_answers, two_deltas_then_stall)
    config = await limited_worker(
        tmp_path, fake, '[[quota.rules]]\ntenant = "team-a"\ntokens_per_minute = 100000'
    )
    async with running_worker(config) as worker:
        channel, worker_stub = stub(worker)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await worker_stub.Generate(ask(max_new_tokens=40), metadata=AUTH, timeout=0.5)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            stream = worker_stub.GenerateStream(ask(max_new_tokens=40), metadata=AUTH)
            received = 0
            async for message in stream:
                received += bool(message.text)
                if received == 2:
                    break
            stream.cancel()
            await fake.exchanges[1].wait_client_closed()
        while worker.limiter._tasks:  # the settles run after the calls
            await asyncio.gather(*worker.limiter._tasks)
        standing = await worker.limiter.usage("team-a", ())
    prompt = await prompt_tokens(worker)
    lines = charges(caplog)
    assert [(line["prompt_tokens"], line["completion_tokens"]) for line in lines] == [
        (prompt, 40),
        (prompt, 2),
    ]
    assert all(line["usage_estimated"] for line in lines)
    used = standing.rules[0].limits[0].used
    assert used == 2 * prompt + 42


async def test_a_reload_lowers_a_limit_from_the_next_call(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    config = await limited_worker(
        tmp_path, fake, '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 100'
    )
    async with running_worker(config) as worker:
        channel, worker_stub = stub(worker)
        async with channel:
            for _ in range(3):
                await worker_stub.Generate(ask(), metadata=AUTH)
            lowered = replace(
                config,
                quota=replace(
                    config.quota, rules=(QuotaRule(tenant="team-a", requests_per_minute=3),)
                ),
            )
            assert worker.reload_quota(lowered) == ["quota"]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await worker_stub.Generate(ask(), metadata=AUTH)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(fake.exchanges) == 3


async def test_a_priced_call_costs_its_usage_in_the_access_line_and_metrics(
    tmp_path: Path, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    fake.script(answer_ok)  # usage 7 prompt tokens, 2 completion tokens (fake_upstream)
    config = await limited_worker(tmp_path, fake, "")
    async with running_worker(config) as worker:
        channel, worker_stub = stub(worker)
        async with channel:
            output = await worker_stub.Generate(ask(), metadata=AUTH)
        metric = worker.metrics.registry.get_sample_value(
            "modelwire_cost_total", {"model": "oa", "tenant": "team-a"}
        )
    usage = output.usage
    expected = (usage.prompt_tokens * 2.5 + usage.completion_tokens * 10.0) / 1e6
    [line] = charges(caplog)
    assert line["cost"] == pytest.approx(expected, abs=1e-12)
    assert metric == pytest.approx(expected, abs=1e-12)


class HeldStore(MemoryStore):
    """A store whose reserve waits for `release`, as a slow round trip does."""

    in_process = False

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.settled = asyncio.Event()

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Amounts, lease_s: float
    ) -> Verdict:
        self.entered.set()
        await self.release.wait()
        return await super().reserve(call_id, counters, amounts, lease_s)

    async def settle(self, call_id: str, used: Amounts, sent: bool) -> None:
        await super().settle(call_id, used, sent)
        self.settled.set()


async def test_a_caller_that_leaves_mid_reserve_leaves_no_reservation_behind() -> None:
    store = HeldStore()
    rule = QuotaRule(tenant="all", requests_per_minute=5, concurrent_calls=1)
    limiter = Limiter(QuotaSection(rules=(rule,)), {}, store)
    call = asyncio.ensure_future(limiter.reserve("t", "m", 10, Usage(10, 0)))
    await store.entered.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    store.release.set()  # the store makes the reservation after all; it is given back
    await asyncio.wait_for(store.settled.wait(), 5)
    assert [s.used for s in await store.read(counters(rule))] == [0, 0]


class SlowSettleStore(MemoryStore):
    """A store whose settle waits for `release`."""

    in_process = False

    def __init__(self) -> None:
        super().__init__()
        self.settling = asyncio.Event()
        self.release = asyncio.Event()

    async def settle(self, call_id: str, used: Amounts, sent: bool) -> None:
        self.settling.set()
        await self.release.wait()
        await super().settle(call_id, used, sent)


async def test_a_draining_worker_waits_for_its_settles() -> None:
    store = SlowSettleStore()
    rule = QuotaRule(tenant="all", tokens_per_minute=1000)
    limiter = Limiter(QuotaSection(rules=(rule,)), {}, store)
    reservation = await limiter.reserve("t", "m", 500, Usage(400, 100))
    assert reservation is not None
    reservation.settle(Usage(prompt_tokens=30, completion_tokens=20), sent=True)
    closing = asyncio.ensure_future(limiter.close())
    await store.settling.wait()
    # A close that did not wait would be done long before this (it has nothing else to await).
    await asyncio.wait({closing}, timeout=0.2)
    assert not closing.done()
    store.release.set()
    await closing
    assert [s.used for s in await store.read(counters(rule))] == [50]


class CountingStore(MemoryStore):
    """A store reached by round trips (as Redis is), counting its settle trips."""

    in_process = False

    def __init__(self) -> None:
        super().__init__()
        self.trips: list[int] = []

    async def settle_many(self, settles: Sequence[tuple[str, Amounts, bool]]) -> None:
        self.trips.append(len(settles))
        await asyncio.sleep(0)  # a round trip: others queue meanwhile
        await super().settle_many(settles)


async def test_settles_queued_during_a_round_trip_go_together() -> None:
    store = CountingStore()
    rule = QuotaRule(tenant="all", tokens_per_minute=100_000)
    limiter = Limiter(QuotaSection(rules=(rule,)), {}, store)
    reservations = [await limiter.reserve(None, "m", 100, Usage(100, 0)) for _ in range(50)]
    for reservation in reservations:
        assert reservation is not None
        reservation.settle(Usage(prompt_tokens=10, completion_tokens=0), sent=True)
    await limiter.close()
    assert store.trips == [50]  # queued while none was under way: one round trip
    assert [s.used for s in await store.read(counters(rule))] == [500]
