"""Adversarial review of issue 24 (tenants' limits and budgets): each test is one attack on the
quota, over real sockets and a real Redis where it matters. A test that FAILS is a confirmed
finding (its docstring says what was expected, what happens, and where the cause is); a test that
passes documents an attack that held up. Reproductions as scripts: /tmp/attack/*.py."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conftest import admission_reaches, running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    fake_upstream,
    load_toml_config,
    openai_chunk,
    openai_usage_chunk,
)
from modelwire.app.config import read_auth
from modelwire.app.reload import _needs_restart, changed_keys
from modelwire.app.server import Worker
from modelwire.core.errors import (
    InvalidRequest,
    QuotaExceeded,
    QuotaStoreUnavailable,
)
from modelwire.core.settings import (
    AuthSection,
    ClientTlsConfig,
    ConfigError,
    QuotaRule,
    QuotaSection,
    parse,
)
from modelwire.core.types import Usage
from modelwire.quota.counters import Counter, call_counters
from modelwire.quota.limiter import Limiter
from modelwire.quota.redis_store import RedisStore
from modelwire.quota.store import Amounts, MemoryStore, QuotaStore, Verdict
from modelwire.rpc.auth import relayed_claim
from modelwire.rpc.wire import CALLER_KEY, TENANT_KEY
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from redis_server import RedisServer
from test_quota_fleet import (
    ALICE_TOKEN,
    GATEWAY_TOKEN,
    TOKEN_ENV,
    bearer,
    request,
    running_fleet,
    tokens_file,
    worker_config,
)

PREFIX = "modelwire:quota:"
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "attack-alice-token-0123456789"
ALL_TOKEN = "attack-all-token-0123456789ab"

# Keeps Redis busy for ARGV[1] seconds (it queues every other client's commands meanwhile).
BUSY = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
"""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def admin(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with fake_upstream() as fake:
        yield fake


def one_worker(tmp_path: Path, api_base: str, quota: str, model: str = "") -> Any:
    """A worker serving "oa" (OpenAI at `api_base`) to alice (team-a) and svc (team-svc)."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "alice"\ntoken = "{TOKEN}"\ntenant = "team-a"\n\n'
        f'[[tokens]]\nname = "svc"\ntoken = "{ALL_TOKEN}"\ntenant = "team-svc"\n',
        encoding="utf-8",
    )
    return load_toml_config(
        tmp_path,
        f"""
[server]
grace_period_s = 0.5

[auth]
tokens_file = "{tokens}"

[[models]]
name = "oa"
provider = "openai"
api_base = "{api_base}"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_retries = 0
{model}

[quota]
{quota}
""",
    )


def ask(max_new_tokens: int | None = None) -> pb.ModelRequest:
    call = pb.ModelRequest(model="oa", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")])
    if max_new_tokens is not None:
        call.sampling.max_new_tokens = max_new_tokens
    return call


async def settled(worker: Worker) -> None:
    while worker.limiter._tasks:
        await asyncio.gather(*worker.limiter._tasks)


async def used(worker: Worker, tenant: str = "team-a") -> dict[str, float]:
    await settled(worker)
    report = await worker.limiter.usage(tenant, ())
    return {limit.kind.value: limit.used for rule in report.rules for limit in rule.limits}


# ---------------------------------------------------------------------------------------------
# Finding 1: a live call that outlasts call_lease_s


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_a_call_that_outlasts_its_lease_keeps_its_place_and_is_still_settled(
    kind: str, redis: RedisServer, admin: aioredis.Redis
) -> None:
    """FOUND (medium), fixed: a live call that ran longer than call_lease_s lost its
    concurrent_calls place, and in Redis its reservation record expired with the lease, so its
    settle found nothing. Now the limiter renews running calls' places (`store.renew`, below by
    hand) and a record is kept a day past the lease. Here: lease 1 s, renewed for 5 s at 0.5 s,
    the call runs 1.5 s and uses 5000 tokens: a second call is refused, and the counter is 5000."""
    now = [1_000_000.0]
    store: QuotaStore
    if kind == "redis":
        store = RedisStore(QuotaSection(store=redis.url), None)

        async def wait(seconds: float) -> None:
            await asyncio.sleep(seconds)

    else:
        store = MemoryStore(clock=lambda: now[0])

        async def wait(seconds: float) -> None:
            now[0] += seconds

    rule = QuotaRule(tenant="t", tokens_per_minute=10**6, concurrent_calls=1)
    held = call_counters((rule,), "t", "m")
    place = [(counter.key, "long") for counter in held if counter.unit == "c"]
    try:
        while kind == "redis" and 60 - time.time() % 60 < 5:
            await asyncio.sleep(0.5)
        assert (await store.reserve("long", held, Amounts(100, 0), 1.0)).admitted
        await wait(0.5)
        await store.renew(place, 5.0)
        await wait(1.0)
        second = await store.reserve("second", held, Amounts(1, 0), 1.0)
        if second.admitted:
            await store.settle("second", Amounts(0, 0), sent=False)
        await store.settle("long", Amounts(5000, 0), sent=True)
        tokens = (await store.read(held))[0].used
    finally:
        await store.close()
    assert (not second.admitted, tokens) == (True, 5000), (
        f"second call admitted while the first still ran: {second.admitted}; "
        f"tokens counted {tokens}, used 5000"
    )


class RenewingStore(MemoryStore):
    """A memory store on a hand-moved clock that says when the limiter renewed its places."""

    def __init__(self, now: list[float]) -> None:
        super().__init__(clock=lambda: now[0])
        self.renewed = asyncio.Event()

    async def renew(self, places: Sequence[tuple[str, str]], lease_s: float) -> None:
        await super().renew(places, lease_s)
        self.renewed.set()


async def test_the_limiter_renews_a_running_calls_place_before_its_lease_ends() -> None:
    now = [1_000_000.0]
    store = RenewingStore(now)
    rule = QuotaRule(tenant="all", concurrent_calls=1)
    limiter = Limiter(QuotaSection(rules=(rule,), call_lease_s=10.0), {}, store)
    running = await limiter.reserve(None, "m", 1, Usage(1, 0))
    assert running is not None
    now[0] += 9.0
    await asyncio.wait_for(store.renewed.wait(), 10)  # the limiter renews every lease / 3
    now[0] += 9.0  # 18 s after the reserve: past the first lease, within the renewed one
    with pytest.raises(QuotaExceeded):
        await limiter.reserve(None, "m", 1, Usage(1, 0))
    running.settle(Usage(1, 0), sent=True)
    await limiter.close()
    assert await limiter.reserve(None, "m", 1, Usage(1, 0)) is not None


# ---------------------------------------------------------------------------------------------
# Finding 2: a caller that leaves mid-reserve while the round trip then fails


async def test_a_caller_leaving_during_a_slow_reserve_does_not_hold_a_place_for_the_lease(
    redis: RedisServer, admin: aioredis.Redis
) -> None:
    """FINDING (high for concurrent_calls, medium otherwise). Redis is busy (a long script, a slow
    AOF fsync) while a call reserves; the caller's deadline passes before store_timeout_s, so the
    worker's task is cancelled; the round trip then times out; Redis runs the queued reservation
    once free. limiter.py Limiter._take_back (line ~213) returns when the reserve future ended in
    an exception, so the reservation is never given back, nothing is queued in _pending, and the
    store is not even marked unavailable. Effect here: concurrent_calls = 1 for everyone ("all")
    is held by a call that never ran, for the whole call_lease_s (900 s by default): every call
    is refused meanwhile. (The un-cancelled path, limiter.py ~200, does queue the give-back.)
    Expected: the next call, once the store answers, is admitted and no record is left.
    Fix: in _take_back, on a STORE_ERRORS exception, do what the uncancelled path does: queue
    (call_id, Amounts(0, 0), False) in _pending and call _went_away(error)."""
    rule = QuotaRule(tenant="all", requests_per_minute=1000, concurrent_calls=1)
    limiter = Limiter(QuotaSection(store=redis.url, store_timeout_s=0.3, rules=(rule,)), {})
    await limiter.start()
    try:
        warm = await limiter.reserve("t", "m", 1, Usage(1, 0))  # loads the script
        assert warm is not None
        warm.settle(Usage(), sent=False)
        await settled_limiter(limiter)
        busy = asyncio.create_task(keep_busy(admin, 1.2))
        await redis_busy(redis)
        call = asyncio.create_task(limiter.reserve("t", "m", 1, Usage(1, 0)))
        await asyncio.sleep(0.1)
        call.cancel()  # the caller's deadline, before store_timeout_s
        with pytest.raises(asyncio.CancelledError):
            await call
        await busy
        # Whatever the limiter does to give it back, it has had 3 probe intervals to do it.
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline and (
            not limiter.available or await admin.keys(PREFIX + "call:*")
        ):
            await asyncio.sleep(0.1)
        left = await admin.keys(PREFIX + "call:*")
        try:
            after = await limiter.reserve("t", "m", 1, Usage(1, 0))
            refused = None
        except Exception as error:  # noqa: BLE001 - the refusal is what this test reports
            after, refused = None, error
        if after is not None:
            after.settle(Usage(), sent=False)
            await settled_limiter(limiter)
    finally:
        await limiter.close()
    assert (left, refused) == ([], None), f"reservation left: {left}; next call: {refused!r}"


async def settled_limiter(limiter: Limiter) -> None:
    while limiter._tasks:
        await asyncio.gather(*limiter._tasks)


async def keep_busy(client: aioredis.Redis, seconds: float) -> None:
    await client.eval(BUSY, 0, str(seconds))


async def redis_busy(server: RedisServer) -> None:
    probe = aioredis.from_url(server.url, socket_timeout=0.05)
    try:
        for _ in range(200):
            try:
                await probe.ping()
            except RedisTimeoutError:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("Redis never got busy")
    finally:
        await probe.aclose()


# ---------------------------------------------------------------------------------------------
# Finding 3: a billed answer the worker rejects afterwards


def completion_with_broken_tool_call() -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": "{not json"},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 500, "completion_tokens": 800, "total_tokens": 1300},
    }


async def test_an_answer_the_provider_billed_is_charged_even_when_its_tool_call_is_broken(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """FINDING (medium: a tenant-triggerable money leak). The provider answers, and bills, 500
    prompt and 800 completion tokens, but its tool call's arguments are not JSON: the worker fails
    the call UNAVAILABLE and charges the tenant nothing but the request (0 tokens, 0 money).
    Cause: service.py generate() runs _check_tool_calls (line ~223) before meter.saw(output)
    (line ~224), so the meter never sees the provider's usage and metering.py CallMeter.used()
    takes "failed before any output" → Usage(). A tenant who can make the model emit malformed
    tool calls (prompting for it; weaker models do it by themselves) spends the operator's money
    without touching its own budget or token limit. The stream path has the same order
    (service.py ~249 before ~254): the final chunk's reported usage is lost and an estimate is
    charged instead.
    Expected: tokens 1300 and money 1300 × 1.0 / 1e6. Fix: meter.saw(output) before the check."""

    async def broken(exchange: Exchange, respond: Responder) -> None:
        await respond.json(200, completion_with_broken_tool_call())

    upstream.default = broken
    config = one_worker(
        tmp_path,
        f"{upstream.url}/v1",
        '[[quota.rules]]\ntenant = "team-a"\ntokens_per_minute = 100000\nbudget_per_day = 10.0',
        "price_per_million = { input = 1.0, output = 1.0 }",
    )
    async with running_worker(config) as worker, grpc.aio.insecure_channel(worker.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pb_grpc.ModelWorkerStub(ch).Generate(ask(900), metadata=bearer(TOKEN))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        counts = await used(worker)
    assert len(upstream.exchanges) == 1
    assert counts == {"tokens_per_minute": 1300, "budget_per_day": pytest.approx(0.0013)}


# ---------------------------------------------------------------------------------------------
# Finding 4: charged the whole output bound though nothing reached the provider


async def test_a_call_cut_off_while_connecting_to_its_provider_is_not_charged_its_output(
    tmp_path: Path,
) -> None:
    """FINDING (medium). The provider cannot be connected to (its accept queue is full: connect
    hangs, as with a provider outage or a firewall dropping SYNs). Each unary call is cut off by
    its caller's deadline before a single byte reached the provider, yet each is charged its
    prompt and its whole output bound (max_new_tokens 4000): 3 calls, 12,000+ tokens and
    0.12 of a 1.0 daily budget. The table in configuration.md#quota says a call that never
    reached its provider is charged nothing. Cause: service.py _metered sets meter.sent = True
    before the provider is called (line ~179) and metering.py CallMeter.used() charges a cut-off
    unary call `Usage(prompt, output_bound)` whatever stage it was cut at. During an outage every
    caller with a deadline burns its budget on calls that never ran.
    Fix: let the provider tell the meter when the request was written (e.g. an httpx request
    event hook / a flag set after the connection is made), and charge a cut-off call whose
    request was never sent as not sent."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue; later connects hang
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    config = one_worker(
        tmp_path,
        f"http://127.0.0.1:{port}/v1",
        '[[quota.rules]]\ntenant = "team-a"\ntokens_per_minute = 1000000\nbudget_per_day = 1.0',
        "timeout_s = 30\nprice_per_million = { input = 1.0, output = 10.0 }",
    )
    try:
        async with (
            running_worker(config) as worker,
            grpc.aio.insecure_channel(worker.address) as ch,
        ):
            stub = pb_grpc.ModelWorkerStub(ch)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as cut:
                    await stub.Generate(ask(4000), metadata=bearer(TOKEN), timeout=0.7)
                assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            counts = await used(worker)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert counts["budget_per_day"] == 0, f"charged {counts} for calls that never left"


async def test_a_unary_call_without_max_new_tokens_cut_off_is_charged_what_it_asked_for(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """FINDING (low). A unary call without max_new_tokens is sent to the provider with the whole
    room as max_tokens (4096 here), but when it is cut off (deadline, cancel) it is charged its
    prompt plus default_output_reservation (100 here), not "its whole output bound (what it
    generated cannot be seen; the provider may have generated all of it)" (configuration.md).
    service.py _admitted passes `output` (the reservation, line ~206) as the meter's output_bound
    instead of `bound`. A tenant can have the provider generate ~40× what it is charged by
    calling without max_new_tokens and a deadline just short of the answer.
    Fix: give CallMeter the bound sent to the provider as `output_bound`."""

    async def hang(exchange: Exchange, respond: Responder) -> None:
        await respond.hang(5)

    upstream.default = hang
    config = one_worker(
        tmp_path,
        f"{upstream.url}/v1",
        'default_output_reservation = 100\n[[quota.rules]]\ntenant = "team-a"\n'
        "tokens_per_minute = 1000000",
    )
    async with running_worker(config) as worker, grpc.aio.insecure_channel(worker.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.ModelWorkerStub(ch).Generate(ask(), metadata=bearer(TOKEN), timeout=0.5)
        # The caller's deadline ended the call at the caller first: the worker settles it before
        # its slot goes back.
        await admission_reaches(worker.models[0].admission, in_flight=0, queued=0)
        counts = await used(worker)
    body = upstream.exchanges[0].json()
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    assert isinstance(asked, int) and asked > 1000
    assert counts["tokens_per_minute"] >= asked


# ---------------------------------------------------------------------------------------------
# Finding 5: a reload applies the failure mode it says needs a restart


async def test_a_reload_does_not_switch_the_failure_mode_it_reports_as_needing_a_restart(
    redis: RedisServer,
) -> None:
    """FINDING (low-medium). operations.md: "The store and its failure mode need a restart", and
    the SIGHUP line lists quota.on_store_failure and quota.replicas under restart_needed. But
    when the same reload also edits a rule, Worker.reload_quota calls Limiter.replace(config.quota)
    (limiter.py ~146), which keeps the whole new QuotaSection: on_store_failure, replicas and
    call_lease_s take effect at once. An operator who flips "refuse" to "share" (planning a
    restart) gets every covered call admitted against local shares on the next outage, while the
    log said nothing changed. Without a rule edit, nothing is applied: the behaviour depends on
    an unrelated key. Fix: replace only rules and default_output_reservation (keep the running
    section's store, on_store_failure, replicas, call_lease_s, store_timeout_s)."""
    server = RedisServer()
    server.start()
    try:
        old = QuotaSection(
            store=server.url, rules=(QuotaRule(tenant="all", requests_per_minute=9),)
        )
        new = QuotaSection(
            store=server.url,
            on_store_failure="share",
            replicas=2,
            rules=(QuotaRule(tenant="all", requests_per_minute=10),),
        )

        class Running:
            auth: object | None = None
            tls: Any = None

        restart = [
            k for k in changed_keys(old, new, "quota") if _needs_restart(k, Running(), Running())
        ]
        assert restart == ["quota.on_store_failure", "quota.replicas"]
        limiter = Limiter(old, {})
        await limiter.start()
        limiter.replace(new, {})  # what Worker.reload_quota does on that SIGHUP
        server.kill()
        try:
            with pytest.raises(Exception) as refused:
                await limiter.reserve("t", "m", 1, Usage(1, 0))
            assert type(refused.value).__name__ == "QuotaStoreUnavailable"
        finally:
            await limiter.close()
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# Finding 6: a tenant named "all"


@pytest.mark.parametrize("tenant", ["all", "*"])
def test_a_tenant_named_as_a_rule_keyword_is_refused(tmp_path: Path, tenant: str) -> None:
    """FOUND (low), fixed: a token's tenant could be "all" or "*", which a rule's `tenant` reads
    as every caller together or each tenant, so its refusals said subject "all" and `modelwire
    usage` showed it as everyone. Both are refused, in a tokens file and relayed alike."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "svc"\ntoken = "{ALL_TOKEN}"\ntenant = "{tenant}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as refused:
        read_auth(parse(AuthSection, {"tokens_file": str(tokens)}, "<test>", "auth"), "<test>")
    assert f"tenant {tenant!r} is what a quota rule says for every tenant" in str(refused.value)
    with pytest.raises(InvalidRequest):
        relayed_claim(((CALLER_KEY, "svc"), (TENANT_KEY, urllib.parse.quote(tenant))))


# ---------------------------------------------------------------------------------------------
# Finding 7: a script error is reported as an unreachable store, and flaps


async def test_a_store_that_answers_with_a_script_error_does_not_flap_available(
    redis: RedisServer, admin: aioredis.Redis
) -> None:
    """FINDING (low-medium). An ACL user lacking one command the scripts run (ZADD here, with a
    concurrent_calls rule): Redis answers every reserve with a script error. STORE_ERRORS
    (redis_store.py, last line) includes RedisError and so ResponseError, contrary to its comment
    ("a script error is a bug, and is raised as one"): each call marks the store unreachable
    (WARNING, store_up 0, health NOT_SERVING), the probe's PING succeeds a second later (INFO
    "is back", SERVING), the next call fails again... Health and modelwire_quota_store_up flap
    with every call, each refusal says the store "cannot be reached", and in "share" mode the
    fleet runs on local shares for good. (The partial writes the failed script left — scripts are
    not rolled back — are given back by the queued settle: that part holds.)
    Expected: one change to unavailable, naming the permission error, and no flapping. Fix: treat
    ResponseError (other than BUSY/LOADING) as a configuration error: refuse with INTERNAL or
    FAILED_PRECONDITION naming it, and let the probe run the scripts, not only PING."""
    acl = (
        "~modelwire:quota:* -@all +ping +time +evalsha +eval +script|load +get +exists +incrby "
        "+expire +del +hset +hgetall +zrem +zcard +zremrangebyscore"
    ).split()
    await admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "lim", "reset", "on", ">lim-pw-0123456789", *acl
    )
    url = f"redis://lim:lim-pw-0123456789@127.0.0.1:{redis.port}/0"
    rule = QuotaRule(tenant="all", requests_per_minute=100, concurrent_calls=5)
    limiter = Limiter(QuotaSection(store=url, rules=(rule,)), {})
    await limiter.start()
    changes: list[bool] = []
    limiter.on_store_change = changes.append
    try:
        for _ in range(3):
            with pytest.raises(QuotaStoreUnavailable) as refused:
                await limiter.reserve("t", "m", 1, Usage(1, 0))
            assert "refused the quota's script" in str(refused.value)
            assert "can't run this command" in str(refused.value)
    finally:
        await limiter.close()
    # Fixed: a refusal is not an outage: no failure mode, no flapping health.
    assert changes == [], f"store availability changed {changes}"
    assert limiter.available


# ---------------------------------------------------------------------------------------------
# Finding 8: MemoryStore scans every key on every call past 65,536 keys


class CountingDict(dict):  # type: ignore[type-arg]
    scans = 0

    def items(self) -> Any:
        CountingDict.scans += 1
        return super().items()


async def test_the_memory_store_does_not_scan_every_counter_on_every_call() -> None:
    """FINDING (medium: a performance cliff). MemoryStore._forget_expired (store.py ~190) scans
    every reservation and every counter on *every* reserve once there are more than 4,096 open
    reservations or 65,536 counter keys, even when none has expired (month budgets live all
    month: 4,100 tenants × 4 models × 4 limits is enough). Measured
    (/tmp/attack/a8b_memory_scan.py):
    0.017 ms per reserve+settle at 60,000 keys, 35.7 ms at 66,000, 94.5 ms at 200,000 — the
    event loop of the whole worker is blocked that long per call. Expected: a bounded amount of
    sweeping per call (a sweep at most once per interval, or a heap of expiry times)."""
    store = MemoryStore(clock=lambda: 1000.0)
    store._counts = CountingDict((f"$:t{i}:@any:0", (1, 10.0**9)) for i in range(70_000))
    held = call_counters((QuotaRule(tenant="*", budget_per_day=10.0),), "x", "m")
    CountingDict.scans = 0
    for i in range(50):
        await store.reserve(f"c{i}", held, Amounts(1, 0), 30)
        await store.settle(f"c{i}", Amounts(1, 0), sent=True)
    assert CountingDict.scans <= 2, f"{CountingDict.scans} full scans of 70,000 keys in 50 calls"


async def test_the_memory_store_forgets_the_places_of_tenants_long_gone() -> None:
    """FINDING (low). MemoryStore._places (store.py ~113, _holders' setdefault) keeps an entry per
    (tenant, model) concurrent_calls key forever: never purged by _forget_expired, also created by
    every usage read. A month after 5,000 tenants' calls all ended, 5,001 entries remain.
    Fix: drop a key's dict when it empties."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    rules = (QuotaRule(tenant="*", concurrent_calls=4),)
    for i in range(5000):
        held = call_counters(rules, f"t{i}", "m")
        await store.reserve(f"c{i}", held, Amounts(1, 0), 30)
        await store.settle(f"c{i}", Amounts(1, 0), sent=True)
    now[0] += 30 * 86400
    await store.reserve("z", call_counters(rules, "z", "m"), Amounts(1, 0), 30)
    assert len(store._places) <= 10


# ---------------------------------------------------------------------------------------------
# Finding 9: store_tls.server_name turns certificate name checking off


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("attack-certs")
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(directory)], check=True, capture_output=True
    )
    return directory


async def test_store_tls_server_name_is_checked_not_switched_off(certs: Path) -> None:
    """FINDING (medium-high, security). configuration.md: a client TLS `server_name` is "the name
    the server's certificate must carry, when it is not the host dialled" (gRPC channels do that:
    rpc/channels.py, ssl_target_name_override). For the quota store, redis_store.py RedisStore
    (line ~209) turns it into `ssl_check_hostname = False`: any certificate the CA signed is
    accepted whatever name it carries, and with no `ca_file` (the system's CAs) any publicly
    trusted certificate for any domain. A man in the middle then gets the store password (AUTH)
    and can answer every reserve "admitted". Here the server's certificate names 127.0.0.1 and
    localhost; server_name = "redis.evil.example" must be refused at start, and is accepted.
    Fix: verify the peer certificate against server_name (an SSLConnection subclass passing
    server_hostname, or checking getpeercert() after connect), or refuse server_name for the
    store until it can be honoured."""
    # Fixed: refused in the configuration (redis-py can only check the host dialled).
    with pytest.raises(ValidationError, match="store_tls.server_name is not supported"):
        QuotaSection(
            store="rediss://127.0.0.1:6380/0",
            store_tls=ClientTlsConfig(ca_file=certs / "ca.pem", server_name="redis.evil.example"),
            rules=(QuotaRule(tenant="all", requests_per_minute=1),),
        )


# ---------------------------------------------------------------------------------------------
# Finding 10: a stream's excess over its reservation is charged to a window already gone


async def test_a_streams_excess_is_charged_where_it_still_limits_something() -> None:
    """FINDING (medium; the documented bound misleads). configuration.md "How far over a limit can
    go": a call without max_new_tokens may use more than default_output_reservation, "then the
    counter goes over by at most the difference, for each such call admitted in the window". True
    of the admitting window's counter only: store.py MemoryStore.settle and redis_store.py _SETTLE
    add the excess to the key recorded at reserve time, so a stream that outlasts its minute
    (any long answer) charges its excess to a minute that is over, and every new minute admits
    limit/reservation new streams. /tmp/attack/a13_sustained_overshoot.py: tokens_per_minute
    10,000, reservation 1,024, 90-second streams of 16,000 tokens: 144,000 tokens consumed per
    minute, sustained, 14.4× the limit. Here: one stream reserved at 0:59 ends at 1:01 having used
    16,000 tokens; the 1:00 minute's counter shows none of it and admits 9 more streams.
    Fix: settle the excess into the window current at settle time (or spread it), and say in the
    docs that without max_new_tokens the limit bounds admissions, not consumption."""
    now = [59.0]
    store = MemoryStore(clock=lambda: now[0])
    held = call_counters((QuotaRule(tenant="t", tokens_per_minute=10_000),), "t", "m")
    assert (await store.reserve("long", held, Amounts(1024, 0), 900)).admitted
    now[0] = 61.0
    await store.settle("long", Amounts(16_000, 0), sent=True)
    admitted = 0
    while (await store.reserve(f"c{admitted}", held, Amounts(1024, 0), 900)).admitted:
        admitted += 1
    assert admitted == 0, f"{admitted} streams admitted in the minute 16,000 tokens were used in"


# ---------------------------------------------------------------------------------------------
# Finding 11: settles pending at drain are dropped silently


async def test_a_worker_closing_with_settles_pending_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """FINDING (low-medium). operations.md: "Settles that could not reach the store are kept (up
    to 100,000) and sent when it is back, so no call is charged twice or lost." A worker drained
    (SIGTERM, a deploy) while the store is down drops them: Limiter.close (limiter.py ~317)
    cancels the probe and closes, with no attempt and no log line. The store, back with its
    append-only file, keeps each such call charged its whole reservation (here 5,000 tokens for a
    call that used 20) for its window, its record and concurrent place for call_lease_s. (The same
    silent drop happens when more than MAX_PENDING_SETTLES pile up: deque(maxlen) evicts.)
    Expected at least a WARNING naming how many settles were lost; better, a bounded attempt to
    send them within the grace period."""
    caplog.set_level(logging.INFO, "modelwire.quota.limiter")
    with RedisServer() as server:
        rule = QuotaRule(tenant="all", tokens_per_minute=100000)
        limiter = Limiter(QuotaSection(store=server.url, rules=(rule,)), {})
        await limiter.start()
        reservation = await limiter.reserve("t", "m", 5000, Usage(1000, 4000))
        assert reservation is not None
        server.kill()
        reservation.settle(Usage(10, 10), sent=True)
        await settled_limiter(limiter)
        assert len(limiter._pending) == 1
        caplog.clear()
        await limiter.close()
    lost = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "settle" in r.getMessage()
    ]
    assert lost, "closing dropped a pending settle without a word"


# ---------------------------------------------------------------------------------------------
# What held up


def test_odd_tenant_names_never_share_a_counter_with_another_tenant_or_with_everyone() -> None:
    """HELD. Percent-encoding in counter keys: "@all", "all", "*", "%40all", "a:b" vs "a%3Ab",
    case and Unicode normal forms, 128-character names: every name its own key, and none is the
    key of the rule over everyone (`@all`) or every model (`@any`)."""
    names = [
        "all",
        "@all",
        "%40all",
        "*",
        "%2A",
        "a:b",
        "a%3Ab",
        "a%253Ab",
        "Team-A",
        "team-a",
        "caf\u00e9",
        "cafe\u0301",
        "x" * 128,
        "\U0001f600" * 128,
        "@any",
        "t:@any",
    ]
    each = QuotaRule(tenant="*", requests_per_minute=1)
    everyone = QuotaRule(tenant="all", requests_per_minute=1)
    keys = [call_counters((each,), name, "m")[0].key for name in names]
    assert len(set(keys)) == len(names)
    assert call_counters((everyone,), "x", "m")[0].key not in keys
    for key in keys:
        unit, subject, model = key.split(":")
        assert (unit, model) == ("r", "@any") and subject not in ("@all", "@any")


async def test_a_timed_out_reserve_is_not_retried_by_redis_py_into_a_double_reservation(
    redis: RedisServer, admin: aioredis.Redis
) -> None:
    """HELD. redis-py 8 does not retry the EVALSHA whose reply timed out (a retry would run the
    reserve twice under one call id, and its settle would give back only one): the busy Redis
    runs it once, and the limiter's queued give-back removes that one."""
    store = RedisStore(QuotaSection(store=redis.url, store_timeout_s=0.3), None)
    held = call_counters((QuotaRule(tenant="all", requests_per_minute=100),), None, "m")
    try:
        while 60 - time.time() % 60 < 5:
            await asyncio.sleep(0.5)
        await store.reserve("warm", held, Amounts(1, 0), 30)
        await store.settle("warm", Amounts(1, 0), sent=False)
        busy = asyncio.create_task(keep_busy(admin, 1.0))
        await redis_busy(redis)
        with pytest.raises(RedisTimeoutError):
            await store.reserve("x", held, Amounts(1, 0), 30)
        await busy
        assert [s.used for s in await store.read(held)] == [1]
        await store.settle("x", Amounts(0, 0), sent=False)
        assert [s.used for s in await store.read(held)] == [0]
    finally:
        await store.close()


class StallingStore(MemoryStore):
    """Reserve waits for `release` (as a slow round trip does)."""

    in_process = False

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Amounts, lease_s: float
    ) -> Verdict:
        await self.release.wait()
        return await super().reserve(call_id, counters, amounts, lease_s)


async def test_a_reload_racing_a_settle_charges_the_call_once_at_its_reserved_prices() -> None:
    """HELD. A SIGHUP that rewrites the rules and prices between a call's reserve and its
    settle: the settle uses the call's id and its reserved counters, so the call is charged once,
    on the counter it reserved on, and a counter of the new rules starts from the kept count."""
    store = MemoryStore()
    old = QuotaSection(rules=(QuotaRule(tenant="t", tokens_per_minute=1000),))
    limiter = Limiter(old, {}, store)
    reservation = await limiter.reserve("t", "m", 500, Usage(400, 100))
    assert reservation is not None
    limiter.replace(QuotaSection(rules=(QuotaRule(tenant="t", tokens_per_minute=50),)), {})
    reservation.settle(Usage(prompt_tokens=30, completion_tokens=20), sent=True)
    reservation.settle(Usage(prompt_tokens=300, completion_tokens=200), sent=True)
    await settled_limiter(limiter)
    counter = call_counters(old.rules, "t", "m")
    assert [s.used for s in await store.read(counter)] == [50]
    with pytest.raises(Exception) as refused:
        await limiter.reserve("t", "m", 1, Usage(1, 0))  # 50 used of the new 50
    assert type(refused.value).__name__ == "QuotaExceeded"


async def test_the_gateway_passes_the_rate_limit_headers_on_before_a_streams_first_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELD. Through a gateway, a stream's x-ratelimit-* headers arrive before its first token
    (the upstream holds it until the caller has read the headers), and a unary call's come with
    its answer; the values are the worker's (remaining counts the stream's reservation)."""
    monkeypatch.setenv(TOKEN_ENV, GATEWAY_TOKEN)
    release = asyncio.Event()

    async def held_stream(exchange: Exchange, respond: Responder) -> None:
        if not exchange.json().get("stream"):
            from fake_upstream import openai_completion

            await respond.json(200, openai_completion("ok", prompt=5, completion=1))
            return
        await respond.head(200)
        await release.wait()
        await respond.event(openai_chunk("hi"))
        await respond.event(openai_chunk(finish_reason="stop"))
        await respond.event(openai_usage_chunk(5, 1))
        await respond.event("[DONE]")
        await respond.end()

    rules = '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 50\ntokens_per_minute = 9000'
    async with fake_upstream() as fake:
        fake.default = held_stream
        with RedisServer() as server:
            config = worker_config(tmp_path, fake, server.url, rules)
            async with running_fleet(config, tokens_file(tmp_path), workers=1) as fleet:
                assert fleet.gateway is not None
                while 60 - time.time() % 60 < 10:
                    await asyncio.sleep(0.5)
                async with grpc.aio.insecure_channel(fleet.gateway.address) as ch:
                    stub = pb_grpc.ModelWorkerStub(ch)
                    call = stub.GenerateStream(
                        request(max_new_tokens=100), metadata=bearer(ALICE_TOKEN), timeout=30
                    )
                    headers = dict(await asyncio.wait_for(call.initial_metadata(), 10))
                    assert not release.is_set()
                    release.set()
                    chunks = [chunk async for chunk in call]
                    unary = stub.Generate(
                        request(max_new_tokens=100), metadata=bearer(ALICE_TOKEN), timeout=30
                    )
                    await unary
                    unary_headers = dict(await unary.initial_metadata())
    assert chunks
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert headers["x-ratelimit-remaining-requests"] == "49"
    assert headers["x-ratelimit-limit-tokens"] == "9000"
    assert int(headers["x-ratelimit-remaining-tokens"]) <= 9000 - 100
    assert unary_headers["x-ratelimit-remaining-requests"] == "48"
