"""Tenants' quotas across a fleet, over real sockets and a real Redis: workers sharing one store,
a gateway in front (a controller registers them, as in test_identity.py), and one scripted
OpenAI-compatible upstream (fake_upstream.py) as every worker's provider, so what reached the
provider is counted there. Each test asserts on state: the counters in Redis (read with redis-py),
the requests the upstream received, the refusals' google.rpc details, the access lines' charges,
health and metrics; never on how long anything took.

Windows are fixed minutes and UTC days on the store's clock. A test whose counts must all land in
one window first waits, on Redis's own TIME, until enough of it is left (`window_with_room`), so a
boundary never splits its counts; tests that only need "counted once more" sum every window's key.

Counter keys are written out here as the store names them (quota/counters.py, redis_store.PREFIX):
`modelwire:quota:<unit>:<tenant>:<model or @any>:<window>`, units r (requests), t (tokens), $
(money, nano-units), and `modelwire:quota:call:<id>` for a reservation not yet settled."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from redis.exceptions import TimeoutError as RedisTimeoutError

from conftest import free_port, running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    fake_upstream,
    load_toml_config,
    openai_chunk,
    openai_completion,
    openai_usage_chunk,
)
from fleet import Joining, registered, registered_worker, running_controller, wait_until
from modelwire.app.config import Config, read_auth
from modelwire.app.server import Worker
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import (
    AuthConfig,
    AuthSection,
    GatewaySection,
    ServerConfig,
    WorkerAccess,
    parse,
)
from modelwire.fleet.remote import RemoteController
from modelwire.gateway.server import Gateway
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter
from modelwire.rpc.wire import CALLER_KEY, QUOTA_STORE_HEALTH, TENANT_KEY
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from redis_server import RedisServer, redis_server

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt"
PREFIX = "modelwire:quota:"
NANO = 1_000_000_000

GATEWAY_TOKEN = "quota-gateway-token-0123456789"
ALICE_TOKEN = "quota-alice-token-0123456789"
BOB_TOKEN = "quota-bob-token-0123456789"
CAROL_TOKEN = "quota-carol-token-0123456789"
ZOE_TOKEN = "quota-zoe-token-0123456789"
TOKEN_ENV = "QUOTA_FLEET_GATEWAY_TOKEN"
PASSWORD_ENV = "QUOTA_FLEET_STORE_PASSWORD"

# alice and bob share team-a; carol is team-b; zoe is her own tenant. Only the gateway relays.
TOKENS = f"""
[[tokens]]
name = "gateway"
token = "{GATEWAY_TOKEN}"
permissions = ["generate", "relay"]

[[tokens]]
name = "alice"
token = "{ALICE_TOKEN}"
tenant = "team-a"

[[tokens]]
name = "bob"
token = "{BOB_TOKEN}"
tenant = "team-a"

[[tokens]]
name = "carol"
token = "{CAROL_TOKEN}"
tenant = "team-b"

[[tokens]]
name = "zoe"
token = "{ZOE_TOKEN}"
"""


@pytest.fixture(autouse=True)
def gateway_token(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(TOKEN_ENV, GATEWAY_TOKEN)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("quota-certs")
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(directory)], check=True, capture_output=True
    )
    return directory


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A fresh upstream per test: its exchanges are this test's alone."""
    async with fake_upstream() as fake:
        yield fake


# --- configuration --------------------------------------------------------------------------------


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens.toml"
    path.write_text(TOKENS, encoding="utf-8")
    return path


def auth_from(path: Path) -> AuthConfig:
    auth = read_auth(parse(AuthSection, {"tokens_file": str(path)}, "<test>", "auth"), "<test>")
    assert auth is not None
    return auth


def worker_config(
    directory: Path,
    upstream: FakeUpstream,
    store: str,
    rules: str,
    settings: str = "",
    model: str = "",
) -> Config:
    """A worker serving MODEL through `upstream`, with the tokens above, `[quota] store` and
    `settings`, then the `[[quota.rules]]` tables in `rules`; `model`: more keys of the model."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = tokens_file(directory)
    return load_toml_config(
        directory,
        f"""
[server]
grace_period_s = 0

[auth]
tokens_file = "{tokens}"

[quota]
store = "{store}"
{settings}

{rules}

[[models]]
name = "{MODEL}"
provider = "openai"
api_base = "{upstream.url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_retries = 0
max_concurrency = 128
max_queue = 128
{model}
""",
    )


# --- the fleet ------------------------------------------------------------------------------------


@dataclass
class Fleet:
    workers: list[Worker]
    gateway: Gateway | None

    @property
    def entrances(self) -> list[str]:
        """Where a caller may call: the gateway (when there is one), then each worker."""
        front = [self.gateway.address] if self.gateway is not None else []
        return front + [worker.address for worker in self.workers]


@asynccontextmanager
async def running_fleet(
    config: Config, tokens: Path, workers: int = 2, gateway: bool = True
) -> AsyncIterator[Fleet]:
    """A controller, `workers` workers registered with it (all from `config`) and, with `gateway`,
    a gateway routing to all of them; every process stopped (workers drained) on exit."""
    async with running_controller() as controller, AsyncExitStack() as stack:
        joining = Joining(controller=controller.address)
        started = [
            await stack.enter_async_context(registered_worker(config, joining))
            for _ in range(workers)
        ]
        for worker in started:
            await registered(worker)
        front = None
        if gateway:
            front = Gateway(
                RemoteController(controller.address),
                ServerConfig(port=0, grace_period_s=0),
                GatewaySection(
                    settle_s=0,
                    workers=WorkerAccess(token_env=TOKEN_ENV, allow_unverified_credentials=True),
                ),
                auth=auth_from(tokens),
            )
            await front.start()
            stack.push_async_callback(front.stop)
            await wait_until(front.router.changed, lambda: len(front.router.routes) == workers, 10)
        yield Fleet(started, front)


# --- calls ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    message: str = ""
    quota_failure: error_details_pb2.QuotaFailure | None = None
    retry_s: float | None = None
    output: pb.ModelOutput | None = None
    # Where the call went (an entrance's address).
    address: str = ""


def request(
    user: str = "", max_new_tokens: int | None = None, prompt: str = "Say hello."
) -> pb.ModelRequest:
    return pb.ModelRequest(
        model=MODEL,
        messages=[pb.ModelMessage(role=pb.ROLE_USER, content=prompt)],
        sampling=pb.SamplingParams(max_new_tokens=max_new_tokens),
        context=pb.RequestContext(user=user),
    )


def bearer(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra)


def refusal(error: grpc.aio.AioRpcError, address: str = "") -> Outcome:
    """The status and its google.rpc details, decoded from the grpc-status-details-bin trailer."""
    status = rpc_status.from_call(error)
    failure, retry = None, None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToNanoseconds() / 1e9
    return Outcome(error.code(), error.details() or "", failure, retry, address=address)


class Callers:
    """One channel per address for the whole test."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> pb_grpc.ModelWorkerStub:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address)
        return pb_grpc.ModelWorkerStub(self._channels[address])

    async def generate(
        self,
        address: str,
        token: str,
        call: pb.ModelRequest | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Outcome:
        try:
            output = await self.stub(address).Generate(
                call or request(), metadata=bearer(token, *metadata), timeout=60
            )
        except grpc.aio.AioRpcError as error:
            return refusal(error, address)
        return Outcome(grpc.StatusCode.OK, output=output, address=address)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


@pytest.fixture
async def callers() -> AsyncIterator[Callers]:
    held = Callers()
    try:
        yield held
    finally:
        await held.close()


def codes(outcomes: Sequence[Outcome]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for outcome in outcomes:
        tally[outcome.code.name] = tally.get(outcome.code.name, 0) + 1
    return tally


# --- state: the store, health, metrics, logs ------------------------------------------------------


@asynccontextmanager
async def store_client(server: RedisServer, **options: object) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(server.url, **options)
    try:
        yield client
    finally:
        await client.aclose()


async def store_now(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


async def window_with_room(client: aioredis.Redis | None, length_s: int, need_s: float) -> int:
    """The number of the current window (minute: `length_s` 60; UTC day: 86400) on the store's
    clock, once at least `need_s` of it is left. Windows are fixed: a test whose counts must all
    land in one window would see them split if it straddled a boundary, so when less is left it
    waits for the next window, polling Redis's TIME (the clock the store's scripts use; None: this
    host's clock, which a replica's share-mode counters use)."""
    while True:
        now = await store_now(client) if client is not None else time.time()
        left = length_s - now % length_s
        if left >= need_s:
            return int(now // length_s)
        await asyncio.sleep(min(left + 0.01, 0.5))


async def counted(client: aioredis.Redis, pattern: str) -> int:
    """The sum of every counter whose key matches `pattern` (after PREFIX): its windows together."""
    total = 0
    for key in await client.keys(PREFIX + pattern):
        total += int(await client.get(key) or 0)
    return total


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def reservations(client: aioredis.Redis) -> list[dict[str, str]]:
    """The reservations not settled yet: for each, counter key → `unit:amount`."""
    held = []
    for key in await client.keys(PREFIX + "call:*"):
        fields = await client.hgetall(key)
        held.append({_text(k): _text(v) for k, v in fields.items()})
    return held


def reserved(spec: str, unit: str) -> int:
    """What a reservation record's field holds for a counter of `unit`: `unit|window|amount|key`
    (quota/redis_store.py)."""
    kind, _window, amount, _key = spec.split("|", 3)
    assert kind == unit, spec
    return int(amount)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0
) -> None:
    """Polls `check` until it holds (a state change with no event to wait on), bounded."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def all_settled(workers: Sequence[Worker], client: aioredis.Redis | None = None) -> None:
    """Waits until every worker's settles have run and (with `client`) no reservation is left."""

    async def done() -> bool:
        if any(worker.limiter._tasks for worker in workers):
            return False
        return client is None or not await reservations(client)

    await eventually(done, "every call settled")


async def store_health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=QUOTA_STORE_HEALTH), timeout=10
        )
    return int(answer.status)


async def health_becomes(workers: Sequence[Worker], status: int) -> None:
    async def reached() -> bool:
        return all([await store_health(worker.address) == status for worker in workers])

    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    await eventually(reached, f"{QUOTA_STORE_HEALTH} {name} on every worker")


def store_up(worker: Worker) -> float | None:
    return worker.metrics.registry.get_sample_value("modelwire_quota_store_up")


def store_failures(worker: Worker) -> float | None:
    return worker.metrics.registry.get_sample_value("modelwire_quota_store_failures_total")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """Every process's access lines of model calls, as the JSON log writes them."""
    formatter = JsonFormatter()
    lines = [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == ACCESS_LOGGER
    ]
    return [line for line in lines if str(line["method"]).startswith("/modelwire.v1.ModelWorker/")]


def charged(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The workers' lines of calls that were charged (a gateway's lines carry no charge)."""
    return [line for line in access_lines(caplog) if "cost" in line]


def line_tokens(line: dict[str, object]) -> int:
    prompt, completion = line["prompt_tokens"], line["completion_tokens"]
    assert isinstance(prompt, int) and isinstance(completion, int)
    return prompt + completion


def line_nano(line: dict[str, object]) -> int:
    cost = line["cost"]
    assert isinstance(cost, float | int)
    return round(Decimal(repr(cost)) * NANO)


def assert_quota_failure(
    outcome: Outcome, rule: int, tenant: str, limit_name: str, limit: int
) -> None:
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
    assert outcome.quota_failure is not None, f"no QuotaFailure in {outcome}"
    (violation,) = outcome.quota_failure.violations
    assert violation.subject == f"tenant:{tenant}"
    assert violation.quota_metric == limit_name
    assert violation.quota_id == f"rule-{rule}"
    assert dict(violation.quota_dimensions) == {"tenant": tenant, "model": "*"}
    assert violation.quota_value == limit
    assert f"{limit_name} {limit}" in violation.description


# --- 1. one limit, two workers and a gateway ------------------------------------------------------


async def test_two_workers_and_a_gateway_admit_exactly_the_limit_together(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers, caplog: pytest.LogCaptureFixture
) -> None:
    """100 concurrent calls of team-a (alice and bob), a third through the gateway and a third
    straight to each worker: one shared requests_per_minute of 60 admits exactly 60 in all, each
    refusal names the rule and says when to retry (through the gateway too), and the provider saw
    exactly the 60."""
    rules = '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 60'
    with redis_server() as server:
        config = worker_config(tmp_path, upstream, server.url, rules)
        async with (
            running_fleet(config, tokens_file(tmp_path)) as fleet,
            store_client(server) as store,
        ):
            # 100 calls take well under 15 s; a minute boundary inside them would split the count.
            minute = await window_with_room(store, 60, 15)
            outcomes = await asyncio.gather(
                *(
                    callers.generate(
                        fleet.entrances[i % 3], (ALICE_TOKEN, BOB_TOKEN)[i % 2], request()
                    )
                    for i in range(100)
                )
            )
            # Refusals reach callers of the gateway with their details too.
            assert fleet.gateway is not None
            late = await callers.generate(fleet.gateway.address, ALICE_TOKEN)
            await all_settled(fleet.workers, store)
            assert int(await store_now(store) // 60) == minute, "the calls outlasted their minute"
            assert codes(outcomes) == {"OK": 60, "RESOURCE_EXHAUSTED": 40}
            refused = [o for o in outcomes if o.code != grpc.StatusCode.OK]
            for outcome in refused:
                assert_quota_failure(outcome, 0, "team-a", "requests_per_minute", 60)
                assert outcome.retry_s is not None and 0.5 <= outcome.retry_s <= 60
            assert_quota_failure(late, 0, "team-a", "requests_per_minute", 60)
            assert late.retry_s is not None
            assert len(upstream.exchanges) == 60
            assert int(await store.get(f"{PREFIX}r:team-a:@any:{minute}") or 0) == 60
            # Every admitted call was charged once, by the worker that ran it.
            lines = charged(caplog)
            assert len(lines) == 60
            assert {line["tenant"] for line in lines} == {"team-a"}
            assert {line["caller"] for line in lines} == {"alice", "bob"}


# --- 2. forged identities -------------------------------------------------------------------------


async def test_a_forged_identity_never_spends_another_tenants_budget(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers
) -> None:
    """alice (team-a) and zoe, whose tokens may not relay, claim to be carol of team-b, at each
    worker and at the gateway: PERMISSION_DENIED, and carol's counter stays where her own call left
    it (nobody else's counter moves either, nothing reaches the provider)."""
    rules = '[[quota.rules]]\ntenant = "*"\nrequests_per_minute = 100'
    forged = ((CALLER_KEY, "carol"), (TENANT_KEY, "team-b"))
    with redis_server() as server:
        config = worker_config(tmp_path, upstream, server.url, rules)
        async with (
            running_fleet(config, tokens_file(tmp_path)) as fleet,
            store_client(server) as store,
        ):
            own = await callers.generate(fleet.entrances[0], CAROL_TOKEN)
            assert own.code == grpc.StatusCode.OK
            await all_settled(fleet.workers, store)
            assert await counted(store, "r:team-b:*") == 1
            keys_before = sorted(await store.keys(PREFIX + "*"))
            attempts = [
                callers.generate(address, token, request(), forged)
                for address in fleet.entrances
                for token in (ALICE_TOKEN, ZOE_TOKEN)
                for _ in range(3)
            ]
            outcomes = await asyncio.gather(*attempts)
            assert codes(outcomes) == {"PERMISSION_DENIED": len(attempts)}
            for outcome in outcomes:
                assert "lacks the 'relay' permission" in outcome.message
            await all_settled(fleet.workers, store)
            assert await counted(store, "r:team-b:*") == 1
            assert sorted(await store.keys(PREFIX + "*")) == keys_before
            assert len(upstream.exchanges) == 1


# --- 3. tokens under concurrent streams, some cancelled -------------------------------------------

STREAM_BOUND = 100  # max_new_tokens of each stream: its output reservation
TOKENS_LIMIT = 1000
STREAMS = 24
# What the upstream reports for a stream that runs to its end (not what the worker counted).
USED_PROMPT, USED_COMPLETION = 9, 5


class StreamScript:
    """The upstream's streams, told apart by the request's `user`: each sends its first delta at
    once, then waits for the test's decision: "complete" (the rest, finish, a usage chunk) or
    "cancel" (one more delta, then nothing until the caller is gone)."""

    def __init__(self) -> None:
        self.decisions: dict[str, asyncio.Future[str]] = {}

    def decision(self, user: str) -> asyncio.Future[str]:
        if user not in self.decisions:
            self.decisions[user] = asyncio.get_running_loop().create_future()
        return self.decisions[user]

    async def __call__(self, exchange: Exchange, respond: Responder) -> None:
        user = exchange.json()["user"]
        await respond.head(200)
        await respond.event(openai_chunk("Hello"))
        if await self.decision(user) == "complete":
            for part in (", ", "world", "!"):
                await respond.event(openai_chunk(part))
            await respond.event(openai_chunk(finish_reason="stop"))
            await respond.event(openai_usage_chunk(USED_PROMPT, USED_COMPLETION))
            await respond.event("[DONE]")
            await respond.end()
        else:
            await respond.event(openai_chunk(", there"))
            await respond.hang()


@dataclass
class StreamRun:
    """The test's side of the streams: who was admitted or refused, then how each ended."""

    admitted: list[str] = field(default_factory=list)
    refused: dict[str, Outcome] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def _note(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def resolved(self, count: int) -> None:
        """Returns once `count` streams are admitted (their first delta in) or refused."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.admitted) + len(self.refused) >= count)

    async def stream(self, script: StreamScript, stub: pb_grpc.ModelWorkerStub, user: str) -> None:
        token = ALICE_TOKEN if int(user[1:]) % 2 else BOB_TOKEN
        call = stub.GenerateStream(
            request(user=user, max_new_tokens=STREAM_BOUND), metadata=bearer(token), timeout=60
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            self.refused[user] = refusal(error)
            self._note()
            return
        assert isinstance(first, pb.ModelOutput) and first.text == "Hello"
        self.admitted.append(user)
        self._note()
        if await script.decision(user) == "complete":
            last = first
            while (message := await call.read()) is not grpc.aio.EOF:
                assert isinstance(message, pb.ModelOutput)
                last = message
            assert last.usage.prompt_tokens == USED_PROMPT
            self.ended[user] = "complete"
        else:
            second = await call.read()  # mid-stream: two deltas in, the upstream holds the rest
            assert isinstance(second, pb.ModelOutput) and second.text == ", there"
            call.cancel()
            self.ended[user] = "cancelled"


async def test_token_limit_under_concurrent_streams_with_cancels_charges_each_call_once(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers, caplog: pytest.LogCaptureFixture
) -> None:
    """24 streams at once through the gateway and both workers against tokens_per_minute 1000:
    every admitted stream holds its reservation (prompt + max_new_tokens) until all are admitted
    or refused, so the store then holds exactly the admitted reservations, within the limit and
    without room for one more. Then half the admitted run to their end and half are cancelled
    mid-stream; once every settle is done, the token counter is exactly what the access lines
    charged (the upstream's usage for the complete ones, the prompt and delivered output for the
    cancelled ones), each call charged once and no reservation left behind."""
    rules = f'[[quota.rules]]\ntenant = "team-a"\ntokens_per_minute = {TOKENS_LIMIT}'
    script = StreamScript()
    upstream.default = script
    run = StreamRun()
    with redis_server() as server:
        config = worker_config(tmp_path, upstream, server.url, rules)
        async with (
            running_fleet(config, tokens_file(tmp_path)) as fleet,
            store_client(server) as store,
        ):
            minute = await window_with_room(store, 60, 15)
            # A first wave of 4 through the gateway, which all fit, so streams relayed by the
            # gateway are among the admitted (and among the cancelled); then 20 at once through
            # the gateway and both workers, most of which do not fit.
            first_wave = [f"s{i:02d}" for i in range(4)]
            tasks = [
                asyncio.create_task(run.stream(script, callers.stub(fleet.entrances[0]), user))
                for user in first_wave
            ]
            await asyncio.wait_for(run.resolved(len(first_wave)), 30)
            assert sorted(run.admitted) == first_wave
            tasks += [
                asyncio.create_task(
                    run.stream(script, callers.stub(fleet.entrances[i % 3]), f"s{i:02d}")
                )
                for i in range(len(first_wave), STREAMS)
            ]
            await asyncio.wait_for(run.resolved(STREAMS), 30)
            # Every stream is admitted (holding its reservation) or refused: nothing has settled.
            held = await reservations(store)
            amounts = [reserved(spec, "t") for entry in held for spec in entry.values()]
            assert len(held) == len(amounts) == len(run.admitted)
            assert len(set(amounts)) == 1, "same prompt, same bound: the same reservation"
            reservation = amounts[0]
            in_store = int(await store.get(f"{PREFIX}t:team-a:@any:{minute}") or 0)
            assert in_store == sum(amounts) <= TOKENS_LIMIT
            assert in_store + reservation > TOKENS_LIMIT, "a refused stream would have fit"
            assert len(run.admitted) == TOKENS_LIMIT // reservation
            for outcome in run.refused.values():
                assert_quota_failure(outcome, 0, "team-a", "tokens_per_minute", TOKENS_LIMIT)
                assert outcome.retry_s is not None
            await upstream.wait_for_requests(len(run.admitted))
            assert len(upstream.exchanges) == len(run.admitted)

            for index, user in enumerate(sorted(run.admitted)):
                script.decision(user).set_result("complete" if index % 2 else "cancel")
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            cancelled = {user for user, how in run.ended.items() if how == "cancelled"}
            assert len(cancelled) == len(run.admitted) // 2
            # The worker stopped the upstream of every cancelled stream.
            for exchange in upstream.exchanges:
                if exchange.json()["user"] in cancelled:
                    await exchange.wait_client_closed(10)

            async def all_charged() -> bool:
                return len(charged(caplog)) >= len(run.admitted)

            await eventually(all_charged, "an access line for every admitted stream")
            await all_settled(fleet.workers, store)
            assert int(await store_now(store) // 60) == minute, "the streams outlasted the minute"
            lines = charged(caplog)
            # Each admitted stream charged exactly once (its access line names its `user`).
            by_user: dict[str, list[dict[str, object]]] = {}
            for line in lines:
                context = line["context"]
                assert isinstance(context, dict)
                by_user.setdefault(context["user"], []).append(line)
            assert sorted(by_user) == sorted(run.admitted)
            assert [len(charges) for charges in by_user.values()] == [1] * len(run.admitted)
            for user, (line,) in by_user.items():
                if user not in cancelled:
                    assert line["code"] == "OK"
                    assert (line["prompt_tokens"], line["completion_tokens"]) == (
                        USED_PROMPT,
                        USED_COMPLETION,
                    )
                    continue
                assert line["code"] == "CANCELLED"
                assert line.get("usage_estimated") is True
                # Its prompt as counted: at most the estimate's high end it reserved.
                assert 0 < line["prompt_tokens"] <= reservation - STREAM_BOUND  # type: ignore[operator]
                assert isinstance(line["completion_tokens"], int)
                assert line["completion_tokens"] >= 2  # at least the two delivered deltas
            # s00 and s02 came through the gateway and were cancelled there.
            assert {"s00", "s02"} <= cancelled
            assert [by_user[user][0].get("relayed_by") for user in ("s00", "s02")] == [
                "gateway",
                "gateway",
            ]
            total = int(await store.get(f"{PREFIX}t:team-a:@any:{minute}") or 0)
            assert total == sum(line_tokens(line) for line in lines)
            assert total <= TOKENS_LIMIT + reservation


# --- 4. a daily budget and a priced model ---------------------------------------------------------

PRICES = "price_per_million = { input = 3.0, output = 15.0, cache_write = 3.75 }"
BUDGET = 0.0035
BUDGET_BOUND = 200
BILLED_PROMPT, BILLED_COMPLETION = 11, 5


def nano_cost(prompt: int, completion: int, prompt_price: str, output_price: str) -> int:
    """Tokens at prices per million, in nano-units, computed here independently of pricing.py."""
    total = prompt * Decimal(prompt_price) + completion * Decimal(output_price)
    return int((total * NANO / Decimal(1_000_000)).to_integral_value())


async def billed(exchange: Exchange, respond: Responder) -> None:
    """A unary answer reporting fixed usage."""
    await respond.json(
        200, openai_completion("Hello", prompt=BILLED_PROMPT, completion=BILLED_COMPLETION)
    )


class HeldFirstCall:
    """`billed`, holding the first request until released, so the test can read its reservation
    in the store."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, exchange: Exchange, respond: Responder) -> None:
        if not self.first.is_set():
            self.first.set()
            await self.release.wait()
        await billed(exchange, respond)


async def test_a_daily_budget_refuses_the_first_call_whose_reservation_would_not_fit(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers, caplog: pytest.LogCaptureFixture
) -> None:
    """A priced model and budget_per_day: each call reserves its prompt at the dearest prompt price
    (cache_write here) and its max_new_tokens at the output price; calls pass while what was spent
    plus that reservation fits the budget, and the first that would not fit is refused before the
    provider. The money counter is exactly the sum of the access lines' costs."""
    # A generous token rule on the same tenant only to see the token reservation (prompt + bound).
    rules = (
        f'[[quota.rules]]\ntenant = "team-a"\nbudget_per_day = {BUDGET}\n'
        "tokens_per_minute = 1000000"
    )
    held = HeldFirstCall()
    upstream.default = held
    with redis_server() as server:
        config = worker_config(tmp_path, upstream, server.url, rules, model=PRICES)
        async with (
            running_fleet(config, tokens_file(tmp_path)) as fleet,
            store_client(server) as store,
        ):
            day = await window_with_room(store, 86400, 120)
            money_key = f"{PREFIX}$:team-a:@any:{day}"
            first = asyncio.create_task(
                callers.generate(
                    fleet.entrances[0], ALICE_TOKEN, request(max_new_tokens=BUDGET_BOUND)
                )
            )
            await asyncio.wait_for(held.first.wait(), 10)
            (record,) = await reservations(store)
            (money,) = [reserved(v, "$") for v in record.values() if v.startswith("$|")]
            (tokens,) = [reserved(v, "t") for v in record.values() if v.startswith("t|")]
            prompt = tokens - BUDGET_BOUND
            assert money == nano_cost(prompt, BUDGET_BOUND, "3.75", "15.0")
            assert int(await store.get(money_key) or 0) == money
            held.release.set()
            outcomes = [await first]
            budget = round(Decimal(repr(BUDGET)) * NANO)
            spent_before = [0]
            while outcomes[-1].code == grpc.StatusCode.OK and len(outcomes) < 50:
                await all_settled(fleet.workers, store)
                spent_before.append(int(await store.get(money_key) or 0))
                address = fleet.entrances[len(outcomes) % 3]
                outcomes.append(
                    await callers.generate(
                        address, ALICE_TOKEN, request(max_new_tokens=BUDGET_BOUND)
                    )
                )
            *passed, last = outcomes
            assert passed and all(o.code == grpc.StatusCode.OK for o in passed)
            assert_quota_failure(last, 0, "team-a", "budget_per_day", 0)
            assert "budget_per_day 0.0035" in last.quota_failure.violations[0].description  # type: ignore[union-attr]
            # Until the next UTC day on the store's clock.
            assert last.retry_s is not None
            assert abs(last.retry_s - (86400 - await store_now(store) % 86400)) < 60
            # The refusal came at the first call whose reservation would not fit.
            for spent in spent_before[:-1]:
                assert spent + money <= budget
            assert spent_before[-1] + money > budget
            assert len(upstream.exchanges) == len(passed)
            await all_settled(fleet.workers, store)
            lines = charged(caplog)
            assert len(lines) == len(passed)
            each = nano_cost(BILLED_PROMPT, BILLED_COMPLETION, "3.0", "15.0")
            assert {line_nano(line) for line in lines} == {each}
            assert int(await store.get(money_key) or 0) == sum(line_nano(line) for line in lines)
            assert int(await store.get(money_key) or 0) == spent_before[-1]


# --- 5. the store killed under load ---------------------------------------------------------------


async def test_with_refuse_a_killed_store_refuses_covered_calls_until_it_is_back(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers
) -> None:
    """Redis is killed while team-a's calls run on both workers: every call ends OK or UNAVAILABLE
    naming the store (its URL, never its password) with a RetryInfo; zoe, whom no rule covers, is
    still served; health for the store says NOT_SERVING and modelwire_quota_store_up 0. Restarted
    (empty: no append-only file), the probe sees it, health says SERVING again and the next calls
    are counted in it."""
    rules = '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 100000'
    password = "refuse-mode-secret-42"
    with redis_server(password=password) as server:
        shown = f"redis://127.0.0.1:{server.port}/0"
        config = worker_config(tmp_path, upstream, server.url, rules)
        async with running_fleet(config, tokens_file(tmp_path), gateway=False) as fleet:
            workers = fleet.workers
            await health_becomes(workers, health_pb2.HealthCheckResponse.SERVING)
            assert [store_up(worker) for worker in workers] == [1, 1]
            outcomes: list[Outcome] = []
            stop = asyncio.Event()

            async def load(lane: int) -> None:
                for i in range(2000):
                    if stop.is_set():
                        return
                    address = workers[(lane + i) % 2].address
                    outcomes.append(await callers.generate(address, ALICE_TOKEN))

            lanes = [asyncio.create_task(load(lane)) for lane in range(4)]

            async def some_served() -> bool:
                served = [o for o in outcomes if o.code == grpc.StatusCode.OK]
                return len(served) >= 20

            await eventually(some_served, "calls served before the kill")
            server.kill()
            await health_becomes(workers, health_pb2.HealthCheckResponse.NOT_SERVING)
            stop.set()
            await asyncio.gather(*lanes)

            tally = codes(outcomes)
            assert set(tally) == {"OK", "UNAVAILABLE"}, tally
            for outcome in outcomes:
                if outcome.code == grpc.StatusCode.UNAVAILABLE:
                    assert f"the quota store {shown} cannot be reached" in outcome.message
                    assert password not in outcome.message
                    assert outcome.retry_s is not None
            served = tally["OK"]
            for worker in workers:
                covered = await callers.generate(worker.address, ALICE_TOKEN)
                assert covered.code == grpc.StatusCode.UNAVAILABLE
                assert f"the quota store {shown} cannot be reached" in covered.message
                assert password not in covered.message
                assert covered.retry_s is not None
                free = await callers.generate(worker.address, ZOE_TOKEN)
                assert free.code == grpc.StatusCode.OK, free
            # Only the served calls, and zoe's two, reached the provider.
            assert len(upstream.exchanges) == served + 2
            assert [store_up(worker) for worker in workers] == [0, 0]
            assert [store_failures(worker) for worker in workers] == [1, 1]

            server.restart()
            await health_becomes(workers, health_pb2.HealthCheckResponse.SERVING)
            assert [store_up(worker) for worker in workers] == [1, 1]
            for worker in workers:
                back = await callers.generate(worker.address, ALICE_TOKEN)
                assert back.code == grpc.StatusCode.OK, back
            await all_settled(workers)
            async with store_client(server) as store:
                assert await counted(store, "r:team-a:*") == 2
                assert await reservations(store) == []


async def test_with_share_each_worker_admits_its_share_while_the_store_is_down(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers
) -> None:
    """on_store_failure = "share", replicas = 2, requests_per_minute 10: with Redis killed each of
    the two workers admits exactly 5 of team-a's calls in the minute and refuses the rest naming
    its share; once Redis is back the next call is counted in it."""
    rules = '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 10'
    settings = 'on_store_failure = "share"\nreplicas = 2'
    with redis_server() as server:
        config = worker_config(tmp_path, upstream, server.url, rules, settings)
        async with running_fleet(config, tokens_file(tmp_path), gateway=False) as fleet:
            workers = fleet.workers
            async with store_client(server) as store:
                # A replica's share lives in its memory, windowed on this host's clock (the store's
                # too): the whole test must fit in one minute of it.
                minute = await window_with_room(store, 60, 20)
                before = await callers.generate(workers[0].address, ALICE_TOKEN)
                assert before.code == grpc.StatusCode.OK
                await all_settled(workers, store)
                assert await counted(store, "r:team-a:*") == 1
            server.kill()
            outcomes = await asyncio.gather(
                *(
                    callers.generate(worker.address, ALICE_TOKEN)
                    for worker in workers
                    for _ in range(8)
                )
            )
            assert int(time.time() // 60) == minute, "the calls outlasted their minute"
            for worker in workers:
                mine = [o for o in outcomes if o.address == worker.address]
                assert codes(mine) == {"OK": 5, "RESOURCE_EXHAUSTED": 3}
                for outcome in mine:
                    if outcome.code != grpc.StatusCode.OK:
                        assert_quota_failure(outcome, 0, "team-a", "requests_per_minute", 5)
            assert len(upstream.exchanges) == 1 + 10
            await health_becomes(workers, health_pb2.HealthCheckResponse.NOT_SERVING)
            assert [store_up(worker) for worker in workers] == [0, 0]

            server.restart()
            await health_becomes(workers, health_pb2.HealthCheckResponse.SERVING)
            for worker in workers:
                back = await callers.generate(worker.address, ALICE_TOKEN)
                assert back.code == grpc.StatusCode.OK, back
            await all_settled(workers)
            async with store_client(server) as store:
                # Restarted empty: only the two calls since.
                assert await counted(store, "r:team-a:*") == 2


# --- 6. restarts ----------------------------------------------------------------------------------


async def held_or_billed(exchange: Exchange, respond: Responder) -> None:
    """`billed`, except a request whose `user` is "held": no answer until its caller is gone."""
    if exchange.json().get("user") == "held":
        await respond.hang()
        return
    await billed(exchange, respond)


async def test_a_spent_budget_survives_restarting_every_process_and_redis_with_appendonly(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers, caplog: pytest.LogCaptureFixture
) -> None:
    """team-a spends its day's budget; the whole fleet (controller, workers, gateway) is stopped
    while one of carol's calls is still running, the workers drained (that call is cut off and its
    settle reaches the store before they stop) and everything started again: team-a's next call is
    refused and both counters are intact. Redis itself, with its append-only file, killed and
    restarted under the running fleet: the same."""
    rules = f'[[quota.rules]]\ntenant = "*"\nbudget_per_day = {BUDGET}'
    upstream.default = held_or_billed
    with redis_server(appendonly=True) as server:
        config = worker_config(tmp_path, upstream, server.url, rules, model=PRICES)
        async with store_client(server) as store:
            day = await window_with_room(store, 86400, 120)
        team_a, team_b = f"{PREFIX}$:team-a:@any:{day}", f"{PREFIX}$:team-b:@any:{day}"
        async with running_fleet(config, tokens_file(tmp_path)) as fleet:
            outcomes: list[Outcome] = []
            while not outcomes or outcomes[-1].code == grpc.StatusCode.OK:
                assert len(outcomes) < 50
                address = fleet.entrances[len(outcomes) % 3]
                outcomes.append(
                    await callers.generate(
                        address, ALICE_TOKEN, request(max_new_tokens=BUDGET_BOUND)
                    )
                )
            assert_quota_failure(outcomes[-1], 0, "team-a", "budget_per_day", 0)
            running = asyncio.create_task(
                callers.generate(
                    fleet.workers[0].address,
                    CAROL_TOKEN,
                    request(user="held", max_new_tokens=BUDGET_BOUND),
                )
            )
            await upstream.wait_for_requests(len(outcomes))
        cut_off = await running
        assert cut_off.code != grpc.StatusCode.OK
        # Drained: every settle, the cut-off call's too, reached the store before the workers
        # stopped.
        lines = charged(caplog)
        async with store_client(server) as store:
            assert await reservations(store) == []
            spent = int(await store.get(team_a) or 0)
            carol = int(await store.get(team_b) or 0)
        assert spent == sum(line_nano(line) for line in lines if line["tenant"] == "team-a") > 0
        (carols,) = [line for line in lines if line["tenant"] == "team-b"]
        assert carol == line_nano(carols) > 0
        exchanges = len(upstream.exchanges)
        assert exchanges == len(outcomes)  # team-a's admitted calls and carol's

        async with running_fleet(config, tokens_file(tmp_path)) as fleet:
            for address in fleet.entrances:
                again = await callers.generate(
                    address, ALICE_TOKEN, request(max_new_tokens=BUDGET_BOUND)
                )
                assert_quota_failure(again, 0, "team-a", "budget_per_day", 0)
            server.restart()
            async with store_client(server) as store:
                assert int(await store.get(team_a) or 0) == spent
                assert int(await store.get(team_b) or 0) == carol
            for address in fleet.entrances:
                again = await callers.generate(
                    address, ALICE_TOKEN, request(max_new_tokens=BUDGET_BOUND)
                )
                assert_quota_failure(again, 0, "team-a", "budget_per_day", 0)
        assert len(upstream.exchanges) == exchanges
        async with store_client(server) as store:
            assert int(await store.get(team_a) or 0) == spent
            assert int(await store.get(team_b) or 0) == carol


# --- 7. starting without the store ----------------------------------------------------------------


async def test_a_worker_without_its_store_fails_to_start_or_starts_sharing(
    tmp_path: Path,
    upstream: FakeUpstream,
    callers: Callers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens at the store's address. "refuse": the start fails with a StartupFailure
    naming quota.store and the store (without its password); "share": the worker starts, says
    NOT_SERVING for the store in health and 0 in modelwire_quota_store_up, and admits its share."""
    password = "startup-secret-77"
    monkeypatch.setenv(PASSWORD_ENV, password)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    rules = '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 4'
    refuse = worker_config(
        tmp_path / "refuse",
        upstream,
        nowhere,
        rules,
        f'store_password_env = "{PASSWORD_ENV}"',
    )
    with pytest.raises(StartupFailure) as failed:
        async with running_worker(refuse):
            pass
    message = str(failed.value)
    assert message.startswith(f"quota.store: cannot reach {nowhere}: ")
    assert 'on_store_failure = "share"' in message
    assert password not in message

    share = worker_config(
        tmp_path / "share",
        upstream,
        nowhere,
        rules,
        f'store_password_env = "{PASSWORD_ENV}"\non_store_failure = "share"\nreplicas = 2',
    )
    # The share lives in the worker's memory, windowed on this host's clock.
    minute = await window_with_room(None, 60, 15)
    async with running_worker(share) as worker:
        assert not worker.limiter.available
        assert await store_health(worker.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert store_up(worker) == 0
        outcomes = [await callers.generate(worker.address, ALICE_TOKEN) for _ in range(3)]
        assert codes(outcomes) == {"OK": 2, "RESOURCE_EXHAUSTED": 1}
        assert_quota_failure(outcomes[-1], 0, "team-a", "requests_per_minute", 2)
        assert int(time.time() // 60) == minute, "the calls outlasted their minute"
    assert len(upstream.exchanges) == 2
    assert password not in caplog.text


# --- 8. TLS and an ACL user -----------------------------------------------------------------------


async def test_a_tls_store_with_an_acl_user_counts_calls_and_never_shows_its_password(
    tmp_path: Path,
    certs: Path,
    upstream: FakeUpstream,
    callers: Callers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rediss:// with the throwaway CA, an ACL user named in the URL and its password from
    store_password_env: calls are counted in it. The password appears in no log record (at DEBUG,
    every logger, as text and as the JSON log) and in no error: a refused call once the store is
    gone, or a start with a wrong password."""
    caplog.set_level(logging.DEBUG)
    password = "tls-acl-secret-3141"
    monkeypatch.setenv(PASSWORD_ENV, password)
    rules = '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 100'
    with redis_server(certs=certs, username="quota", password=password) as server:
        store_url = f"rediss://quota@127.0.0.1:{server.port}/0"
        settings = (
            f'store_password_env = "{PASSWORD_ENV}"\n'
            f'store_tls = {{ ca_file = "{certs / "ca.pem"}" }}'
        )
        config = worker_config(tmp_path, upstream, store_url, rules, settings)
        async with (
            running_fleet(config, tokens_file(tmp_path)) as fleet,
            store_client(server, ssl_ca_certs=str(certs / "ca.pem")) as store,
        ):
            for address in fleet.entrances:
                served = await callers.generate(address, ALICE_TOKEN)
                assert served.code == grpc.StatusCode.OK, served
            await all_settled(fleet.workers, store)
            assert await counted(store, "r:team-a:*") == 3
            assert await store.acl_whoami() == "quota"
            server.kill()
            gone = await callers.generate(fleet.workers[0].address, ALICE_TOKEN)
            assert gone.code == grpc.StatusCode.UNAVAILABLE
            assert f"rediss://127.0.0.1:{server.port}/0 cannot be reached" in gone.message
            assert password not in gone.message
        server.start()
        monkeypatch.setenv(PASSWORD_ENV, "wrong-" + password)
        wrong = worker_config(tmp_path / "wrong", upstream, store_url, rules, settings)
        with pytest.raises(StartupFailure) as failed:
            async with running_worker(wrong):
                pass
        assert str(failed.value).startswith("quota.store: cannot reach rediss://127.0.0.1:")
        assert password not in str(failed.value)
    formatter = JsonFormatter()
    assert caplog.records
    assert password not in caplog.text
    for record in caplog.records:
        assert password not in formatter.format(record)


# --- 9. a store that is slow, not gone ------------------------------------------------------------

# Keeps Redis busy for ARGV[1] seconds: it serves no other client meanwhile, but queues their
# commands and runs them once the script ends.
BUSY = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
"""


async def test_a_reserve_that_timed_out_is_released_once_the_store_answers(
    tmp_path: Path, upstream: FakeUpstream, callers: Callers
) -> None:
    """Redis is busy (a long script) past store_timeout_s while one of team-a's calls reserves:
    the call is refused UNAVAILABLE and never reaches the provider, yet Redis runs its queued
    reservation once free. When the store answers again that reservation must be released, as
    one a cancelled caller abandons is, not left counting against team-a for the rest of its
    window (and its record for the whole call lease)."""
    rules = '[[quota.rules]]\ntenant = "team-a"\nrequests_per_minute = 100'
    with redis_server() as server:
        config = worker_config(tmp_path, upstream, server.url, rules, "store_timeout_s = 0.2")
        async with (
            running_fleet(config, tokens_file(tmp_path), workers=1, gateway=False) as fleet,
            store_client(server) as store,
            store_client(server, socket_timeout=0.05) as probe,
        ):
            (worker,) = fleet.workers
            # The first call loads the scripts and opens the worker's connection.
            assert (await callers.generate(worker.address, ALICE_TOKEN)).code == grpc.StatusCode.OK
            await all_settled([worker], store)
            assert await counted(store, "r:team-a:*") == 1

            async def keep_busy() -> None:
                await store.eval(BUSY, 0, "2.0")

            busy = asyncio.create_task(keep_busy())

            async def redis_is_busy() -> bool:
                try:
                    await probe.ping()
                except RedisTimeoutError:
                    return True
                return False

            await eventually(redis_is_busy, "Redis busy running the long script")
            slow = await callers.generate(worker.address, ALICE_TOKEN)
            assert slow.code == grpc.StatusCode.UNAVAILABLE, slow
            assert not worker.limiter.available
            await asyncio.wait_for(busy, 30)

            async def back() -> bool:
                return worker.limiter.available

            await eventually(back, "the probe sees the store again")
            await health_becomes([worker], health_pb2.HealthCheckResponse.SERVING)
            await all_settled([worker])
            assert store_failures(worker) == 1
            assert len(upstream.exchanges) == 1
            assert await reservations(store) == [], "the refused call's reservation is left"
            assert await counted(store, "r:team-a:*") == 1, "the refused call still counts"
