"""What tests/test_failover.py and tests/test_attack_failover.py share: a worker whose route `chat`
tries `primary` (OpenAI wire) then `backup` (Anthropic wire), each a scripted fake upstream; one
call as a gRPC client makes it (its messages, status and the attempts trailer); what the tenant
was charged per model; the models' health; and the upstream faults both files script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import free_port, running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Handler,
    Responder,
    answer_ok,
    fake_upstream,
    is_stream,
    load_toml_config,
    openai_chunk,
    stream_prologue,
)
from modelwire.app.server import Worker
from modelwire.quota.report import LimitKind
from modelwire.quota.store import MemoryStore
from modelwire.rpc.wire import ATTEMPTS_TRAILER, model_health
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker import convert
from modelwire.worker.admission import Admission
from modelwire.worker.breaker import Breaker
from modelwire.worker.deployments import ServedModel

TOKEN = "team-a-token-0123456789abcdef"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
PROMPT = "Say hello to the fallback."


# --- configuration ----------------------------------------------------------------------------


class Raw(str):
    """A TOML value written as it is (an inline table)."""


def _toml_value(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def table(header: str, values: dict[str, Any]) -> str:
    """A TOML table; a value None is left out (the setting's default)."""
    lines = [header]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def openai_model(name: str, url: str, **overrides: Any) -> str:
    values: dict[str, Any] = {
        "name": name,
        "provider": "openai",
        "api_base": f"{url}/v1",
        "upstream_model": "gpt-4o-mini",
        "context_length": 128000,
        "timeout_s": 30.0,
        "max_retries": 0,
    }
    values.update(overrides)
    return table("[[models]]", values)


def anthropic_model(name: str, url: str, **overrides: Any) -> str:
    values: dict[str, Any] = {
        "name": name,
        "provider": "anthropic",
        "api_base": url,
        "upstream_model": "claude-sonnet-4-5",
        "context_length": 200000,
        "timeout_s": 30.0,
        "max_retries": 0,
    }
    values.update(overrides)
    return table("[[models]]", values)


# The breaker out of reach unless a test sets it.
NO_BREAKER = {"consecutive_failures": 1000, "min_calls": 1000}
TOKENS_RULES = table(
    "[[quota.rules]]", {"tenant": "*", "model": "primary", "tokens_per_minute": 10_000_000}
) + table("[[quota.rules]]", {"tenant": "*", "model": "backup", "tokens_per_minute": 10_000_000})


@dataclass
class World:
    worker: Worker
    primary: FakeUpstream
    backup: FakeUpstream
    stub: pb_grpc.ModelWorkerStub
    channel: grpc.aio.Channel

    def served(self, model: str, index: int = 0) -> ServedModel:
        return self.worker.service.target(model).deployments[index]

    def gate(self, model: str, index: int = 0) -> Admission:
        return self.served(model, index).admission

    def breaker(self, model: str, index: int = 0) -> Breaker:
        return self.served(model, index).breaker


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path,
    *,
    primary: dict[str, Any] | None = None,
    backup: dict[str, Any] | None = None,
    failover: dict[str, Any] | None = None,
    breaker: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    rules: str = TOKENS_RULES,
    extra: str = "",
    primary_refuses: bool = False,
) -> AsyncIterator[World]:
    """A worker whose route `chat` tries `primary` (OpenAI wire, fake A) then `backup` (Anthropic
    wire, fake B), with [auth] (tenant team-a) and per-tenant token counters for each model.
    `extra` may use {primary} and {backup} for the fakes' URLs; `primary_refuses`: the primary's
    URL is a closed port instead (a port bound, then released)."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "alice"\ntoken = "{TOKEN}"\ntenant = "team-a"\n')
    async with fake_upstream() as primary_fake, fake_upstream() as backup_fake:
        primary_url = f"http://127.0.0.1:{free_port()}" if primary_refuses else primary_fake.url
        text = (
            table("[server]", {"grace_period_s": 1.0})
            + table("[auth]", {"tokens_file": str(tokens)})
            + openai_model(
                "primary",
                primary_url,
                price_per_million=Raw("{ input = 1.0, output = 2.0 }"),
                **(primary or {}),
            )
            + anthropic_model(
                "backup",
                backup_fake.url,
                price_per_million=Raw("{ input = 3.0, output = 15.0 }"),
                **(backup or {}),
            )
            + table(
                "[[routes]]", {"name": "chat", "models": ["primary", "backup"], **(route or {})}
            )
            + table("[failover]", failover or {})
            + table("[failover.breaker]", breaker or NO_BREAKER)
            + rules
            + extra.replace("{primary}", primary_url).replace("{backup}", backup_fake.url)
        )
        config = load_toml_config(tmp_path, text)
        async with (
            running_worker(config) as worker,
            grpc.aio.insecure_channel(worker.address) as channel,
        ):
            store = worker.limiter._store
            if isinstance(store, MemoryStore):
                # The per-minute windows stay still: counts read after two attempts half a second
                # apart must not be split by a minute's turn.
                still = time.time()
                store._clock = lambda: still
            yield World(
                worker, primary_fake, backup_fake, pb_grpc.ModelWorkerStub(channel), channel
            )


class Clock:
    """A breaker's clock, moved by hand."""

    def __init__(self, breakers: list[Breaker], monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        for breaker in breakers:
            monkeypatch.setattr(breaker, "_clock", self)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- calls ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    texts: list[str]
    # ModelOutput.model of each message.
    models: list[str]
    usage: tuple[int, int] | None
    code: grpc.StatusCode
    message: str
    attempts: list[str]
    trailers: dict[str, Any]
    initial: dict[str, Any]
    elapsed_s: float


def request(
    model: str, max_new_tokens: int | None = None, tools: bool = False, **fields: Any
) -> pb.ModelRequest:
    message = pb.ModelRequest(
        model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=PROMPT)], **fields
    )
    if max_new_tokens is not None:
        message.sampling.max_new_tokens = max_new_tokens
    if tools:
        message.tools.append(pb.Tool(name="lookup", description="Looks a word up."))
    return message


def attempts_of(trailers: Any) -> list[str]:
    """The `modelwire-attempts` trailer's items."""
    for key, value in trailers or ():
        if key == ATTEMPTS_TRAILER:
            return str(value).split(",")
    return []


async def call(
    stub: pb_grpc.ModelWorkerStub,
    model: str | pb.ModelRequest,
    kind: str = "unary",
    *,
    timeout: float = 20.0,
    metadata: tuple[tuple[str, str], ...] = AUTH,
    **fields: Any,
) -> Outcome:
    """One call as a gRPC client makes it: its messages, status and the attempts trailer."""
    began = time.monotonic()
    message = model if isinstance(model, pb.ModelRequest) else request(model, **fields)
    texts: list[str] = []
    models: list[str] = []
    usage: tuple[int, int] | None = None
    code, details = grpc.StatusCode.OK, ""
    rpc: Any
    try:
        if kind == "unary":
            rpc = stub.Generate(message, metadata=metadata, timeout=timeout)
            answer = await rpc
            texts, models = [answer.text], [answer.model]
            usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens)
        else:
            rpc = stub.GenerateStream(message, metadata=metadata, timeout=timeout)
            async for chunk in rpc:
                if chunk.text:
                    texts.append(chunk.text)
                models.append(chunk.model)
                if chunk.HasField("usage"):
                    usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), error.details() or ""
    trailers = await rpc.trailing_metadata()
    initial = await rpc.initial_metadata()
    return Outcome(
        texts,
        models,
        usage,
        code,
        details,
        attempts_of(trailers),
        dict(trailers or ()),
        dict(initial or ()),
        time.monotonic() - began,
    )


async def used(worker: Worker, kind: LimitKind = LimitKind.TOKENS_PER_MINUTE) -> dict[str, float]:
    """What team-a used per model rule, of one kind of limit (requests, tokens, budget): by
    default the tokens it was charged per model."""
    report = await worker.limiter.usage("team-a", ())
    found: dict[str, float] = {}
    for rule in report.rules:
        for limit in rule.limits:
            if limit.kind is kind:
                found[rule.model] = found.get(rule.model, 0) + limit.used
    return found


async def prompt_tokens(w: World, model: str = "primary") -> int:
    """The model's count of the prompt (what a cut-off attempt is charged for its prompt)."""
    messages = convert.request_from_pb(request(model), w.worker.config.limits).messages
    return (await w.served(model).client.count_token(model, messages)).count


# --- health -----------------------------------------------------------------------------------

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(channel: grpc.aio.Channel, name: str) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=model_health(name)), metadata=AUTH
    )
    status: int = answer.status
    return status


async def health_reaches(channel: grpc.aio.Channel, name: str, status: int) -> None:
    """Waits on the health Watch stream (bounded) until `name` reports `status`."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=model_health(name)), metadata=AUTH, timeout=10
    )
    async for update in watch:
        if update.status == status:
            watch.cancel()
            return


# --- upstream faults --------------------------------------------------------------------------


async def answers_500(exchange: Exchange, respond: Responder) -> None:
    await respond.json(500, {"error": {"message": "upstream broke", "type": "server_error"}})


def answers_429(retry_after: str) -> Handler:
    """A 429 whose Retry-After header says `retry_after`."""

    async def handler(exchange: Exchange, respond: Responder) -> None:
        await respond.json(
            429,
            {"error": {"message": "slow down", "type": "rate_limit_error"}},
            headers={"Retry-After": retry_after},
        )

    return handler


async def stalls_before_first_token(exchange: Exchange, respond: Responder) -> None:
    if is_stream(exchange):
        await stream_prologue(exchange, respond)
    await respond.hang()


async def three_tokens(respond: Responder) -> None:
    """A stream's status and three OpenAI content chunks: "One", " two", " three"."""
    await respond.head(200)
    for part in ("One", " two", " three"):
        await respond.event(openai_chunk(part))


async def stalls_after_three_tokens(exchange: Exchange, respond: Responder) -> None:
    await three_tokens(respond)
    await respond.hang()


async def cut_after_three_tokens(exchange: Exchange, respond: Responder) -> None:
    """A stream reset after three tokens; a unary call a 500."""
    if not is_stream(exchange):
        await answers_500(exchange, respond)
        return
    await three_tokens(respond)
    await respond.reset()


def held(release: asyncio.Event, then: Handler = answer_ok) -> Handler:
    """Nothing until `release` is set; then `then`'s answer."""

    async def handler(exchange: Exchange, respond: Responder) -> None:
        await release.wait()
        await then(exchange, respond)

    return handler
