"""A gateway's HTTP facades end to end (app/gateway_http.py, gateway/fleet_models.py): the official
OpenAI and Anthropic SDKs call a real gateway's `[http]` port; a controller and two echo workers
registered with it serve the calls. The gateway and the workers share one tokens file: the callers'
tokens, and the gateway's own token (`relay`) with which it calls the workers on its callers'
behalf, as tests/test_identity.py sets it up.

Asserted on what the SDKs parse and raise, on the workers' access lines, metrics and admission
counters; never on timing."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from conftest import admission_reaches, free_port, hold_quota_clock
from fake_upstream import load_toml_config
from fleet import Joining, registered, registered_worker, running_controller, wait_until
from modelwire.app.config import read_auth
from modelwire.app.gateway_http import gateway_facade
from modelwire.app.server import Worker
from modelwire.core.settings import (
    AuthConfig,
    AuthSection,
    GatewayFile,
    GatewaySection,
    HttpConfig,
    ServerConfig,
    WorkerAccess,
    parse,
)
from modelwire.facade.server import HttpFacade
from modelwire.fleet.remote import RemoteController
from modelwire.fleet.types import InstanceModel, InstanceSpec
from modelwire.gateway.server import Gateway
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter
from modelwire.worker.admission import Admission

GATEWAY_TOKEN = "facade-gateway-relay-token-0123456789"
ALICE = "sk-facade-alice-0123456789abcdef"  # tenant team-a, every model
BOB = "sk-facade-bob-0123456789abcdef"  # may use "echo" only
TOKEN_ENV = "FACADE_GATEWAY_RELAY_TOKEN"
TOKENS = f"""
[[tokens]]
name = "gateway"
token = "{GATEWAY_TOKEN}"
permissions = ["generate", "relay"]

[[tokens]]
name = "alice"
token = "{ALICE}"
tenant = "team-a"

[[tokens]]
name = "bob"
token = "{BOB}"
models = ["echo"]
"""

CONTEXT_LENGTH = 1000
WORKER = f"""
[server]
grace_period_s = 0

[auth]
tokens_file = "{{tokens}}"

[[models]]
name = "echo"
provider = "echo"
chunks = 3
chunk_text = "hi "
context_length = {CONTEXT_LENGTH}

[[models]]
name = "slow"
provider = "echo"
chunks = 50
chunk_interval_s = 0.2

[[models]]
name = "limited"
provider = "echo"

[[quota.rules]]
tenant = "all"
model = "echo"
requests_per_minute = 100000

[[quota.rules]]
tenant = "all"
model = "limited"
requests_per_minute = 1
"""
MODELS = ["echo", "limited", "slow"]
GENERATE = "/modelwire.v1.ModelWorker/Generate"
GENERATE_STREAM = "/modelwire.v1.ModelWorker/GenerateStream"

E = TypeVar("E", bound=Exception)


def auth_from(path: Path) -> AuthConfig:
    auth = read_auth(parse(AuthSection, {"tokens_file": str(path)}, "<test>", "auth"), "<test>")
    assert auth is not None
    return auth


@dataclass
class Fleet:
    workers: tuple[Worker, Worker]
    gateway: Gateway
    facade: HttpFacade
    auth: AuthConfig

    @property
    def port(self) -> int:
        assert self.facade.port != 0, "the facade reports the port it bound"
        return self.facade.port


def admission(worker: Worker, model: str) -> Admission:
    return next(m.admission for m in worker.models if m.metadata.model == model)


@asynccontextmanager
async def gateway_with_facade(
    controller_address: str, auth: AuthConfig, routes: int, *, probe_health: bool = True
) -> AsyncIterator[tuple[Gateway, HttpFacade]]:
    """A gateway with [auth] and `[http] port = 0`, calling workers with its own relay token,
    started as `modelwire gateway` starts one; once it routes to `routes` instances."""
    config = GatewayFile(
        server=ServerConfig(host="127.0.0.1", port=0, grace_period_s=0),
        gateway=GatewaySection(
            settle_s=0,
            workers=WorkerAccess(token_env=TOKEN_ENV, allow_unverified_credentials=True),
        ),
        http=HttpConfig(port=0),
    )
    gateway = Gateway(
        RemoteController(controller_address),
        config.server,
        config.gateway,
        auth=auth,
        probe_health=probe_health,
    )
    facade = gateway_facade(gateway, config, auth)
    assert facade is not None, "[http] port is set: the gateway has a facade"
    await gateway.start()
    await facade.start()
    try:
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == routes, 10)
        yield gateway, facade
    finally:
        await gateway.stop(facade.stop)


@pytest.fixture(scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    directory = tmp_path_factory.mktemp("facade-gateway")
    tokens = directory / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    auth = auth_from(tokens)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, GATEWAY_TOKEN)
        async with running_controller() as controller, AsyncExitStack() as stack:
            joining = Joining(controller=controller.address)
            workers = []
            for index in range(2):
                config = load_toml_config(
                    tmp_path_factory.mktemp(f"worker-{index}"), WORKER.format(tokens=tokens)
                )
                worker = await stack.enter_async_context(registered_worker(config, joining))
                await registered(worker)
                workers.append(worker)
            gateway, facade = await stack.enter_async_context(
                gateway_with_facade(controller.address, auth, 2)
            )
            yield Fleet((workers[0], workers[1]), gateway, facade, auth)


@pytest.fixture(autouse=True)
def access_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)


def openai_client(port: int, key: str) -> openai.AsyncOpenAI:
    """No retries of its own: a retried 429 or 5xx would hide what the gateway answered."""
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
    )


def anthropic_client(port: int, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=key,
        base_url=f"http://127.0.0.1:{port}",
        max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(trust_env=False),
    )


def user(text: str) -> ChatCompletionMessageParam:
    return {"role": "user", "content": text}


HI: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == ACCESS_LOGGER
    ]


def worker_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The workers' lines of model calls (the gateway's own lines relay no one; the fleet's own
    calls, registration and health, are no model calls)."""
    return [
        line
        for line in access_lines(caplog)
        if line["method"].startswith("/modelwire.v1.ModelWorker/") and "relayed_by" in line
    ]


async def counted(workers: list[Worker], model: str, code: str, expected: float) -> float:
    """The workers' count of `model`'s calls with `code` once it reaches `expected` (bounded): a
    worker counts a call as it ends, which may be just after the caller has its answer."""
    changed = asyncio.Event()
    restore = []
    for worker in workers:
        original = worker.metrics.finished

        def finished(record: Any, streamed: bool, original: Any = original) -> None:
            original(record, streamed)
            changed.set()

        worker.metrics.finished = finished  # type: ignore[method-assign]
        restore.append((worker, original))
    try:
        async with asyncio.timeout(10):
            while (total := sum(calls_of(w, model, code) for w in workers)) < expected:
                changed.clear()
                await changed.wait()
        return total
    finally:
        for worker, original in restore:
            worker.metrics.finished = original  # type: ignore[method-assign]


def calls_of(worker: Worker, model: str, code: str = "OK") -> float:
    """Every call of `model` the worker counted with `code`, whatever its method and tenant."""
    total = 0.0
    for metric in worker.metrics.registry.collect():
        for sample in metric.samples:
            if (
                sample.name == "modelwire_requests_total"
                and sample.labels.get("model") == model
                and sample.labels.get("code") == code
            ):
                total += sample.value
    return total


async def logged(caplog: pytest.LogCaptureFixture, request_id: str, method: str) -> dict[str, Any]:
    """The worker's access line of the call `request_id` (a line is written once the call's
    handler has returned, which may be just after the caller heard its end)."""

    async def found() -> dict[str, Any]:
        while True:
            for line in worker_lines(caplog):
                if line["request_id"] == request_id and line["method"] == method:
                    return line
            await asyncio.sleep(0.02)

    try:
        return await asyncio.wait_for(found(), 10)
    except TimeoutError:
        raise AssertionError(
            f"no worker logged {method} {request_id!r} as a relayed call: {worker_lines(caplog)}"
        ) from None


async def refused_within(calls: int, call: Callable[[], Awaitable[object]], error: type[E]) -> E:
    """The `error` one of `calls` calls raises: each worker admits one a minute (two if a minute
    turns), and the gateway spreads the calls over both."""
    for _ in range(calls):
        try:
            await call()
        except error as refused:
            return refused
    raise AssertionError(f"none of {calls} calls was refused")


# --- 1. Both SDKs through the gateway -------------------------------------------------------------


async def test_openai_unary_and_streamed_chat(fleet: Fleet) -> None:
    async with openai_client(fleet.port, ALICE) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="echo", messages=[user("Hello")]
        )
        answer = raw.parse()
        stream = await client.chat.completions.create(
            model="echo",
            messages=[user("Hello")],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]

    assert answer.object == "chat.completion" and answer.model == "echo"
    [choice] = answer.choices
    assert (choice.message.role, choice.message.content) == ("assistant", "hi hi hi ")
    assert choice.finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    # The worker's rate limits travel back through the gateway to the HTTP caller.
    assert raw.headers["x-ratelimit-limit-requests"] == "100000"

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hi hi hi "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f is not None] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


async def test_anthropic_unary_and_streamed_message(fleet: Fleet) -> None:
    async with anthropic_client(fleet.port, ALICE) as client:
        answer = await client.messages.create(model="echo", max_tokens=100, messages=HI)
        async with client.messages.stream(model="echo", max_tokens=100, messages=HI) as stream:
            deltas = [text async for text in stream.text_stream]
            final = await stream.get_final_message()

    assert answer.type == "message" and answer.role == "assistant" and answer.model == "echo"
    assert [(b.type, getattr(b, "text", None)) for b in answer.content] == [("text", "hi hi hi ")]
    assert answer.stop_reason == "end_turn"
    assert answer.usage.output_tokens > 0

    assert "".join(deltas) == "hi hi hi "
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "hi hi hi ")]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


async def test_models_list_is_the_fleets_within_the_tokens_allow_list(fleet: Fleet) -> None:
    async with openai_client(fleet.port, ALICE) as alice, openai_client(fleet.port, BOB) as bob:
        assert sorted(m.id for m in (await alice.models.list()).data) == MODELS
        assert [m.id for m in (await bob.models.list()).data] == ["echo"]
        assert (await alice.models.retrieve("slow")).id == "slow"
        with pytest.raises(openai.NotFoundError):
            await bob.models.retrieve("slow")
    async with anthropic_client(fleet.port, ALICE) as alice, anthropic_client(fleet.port, BOB) as b:
        assert sorted(m.id for m in (await alice.models.list()).data) == MODELS
        assert [m.id for m in (await b.models.list()).data] == ["echo"]


# --- 2. Who called, at the worker -----------------------------------------------------------------


async def test_the_workers_access_line_names_the_http_caller_relayed_by_the_gateway(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    async with openai_client(fleet.port, ALICE) as oai, anthropic_client(fleet.port, ALICE) as ant:
        await oai.chat.completions.create(
            model="echo", messages=[user("Hi")], extra_headers={"x-request-id": "http-unary-1"}
        )
        async with ant.messages.stream(
            model="echo",
            max_tokens=100,
            messages=HI,
            extra_headers={"x-request-id": "http-stream-1"},
        ) as stream:
            await stream.get_final_message()

    unary = await logged(caplog, "http-unary-1", GENERATE)
    streamed = await logged(caplog, "http-stream-1", GENERATE_STREAM)
    for line in (unary, streamed):
        assert (line["caller"], line["tenant"]) == ("alice", "team-a"), line
        assert line["relayed_by"] == "gateway", line
        assert (line["model"], line["code"]) == ("echo", "OK"), line
    # The gateway's own lines: the HTTP calls, under the same ids and caller, relaying no one.
    gateway_lines = {
        line["request_id"]: line
        for line in access_lines(caplog)
        if line["method"].startswith("POST")
    }
    assert gateway_lines["http-unary-1"]["method"] == "POST /v1/chat/completions"
    assert gateway_lines["http-stream-1"]["method"] == "POST /v1/messages"
    for request_id in ("http-unary-1", "http-stream-1"):
        line = gateway_lines[request_id]
        assert (line["caller"], line["tenant"], line["code"]) == ("alice", "team-a", "OK"), line
        assert "relayed_by" not in line
    # Nothing at the workers counted as the gateway itself.
    for worker in fleet.workers:
        assert (
            worker.metrics.registry.get_sample_value(
                "modelwire_requests_total",
                {"method": "Generate", "model": "echo", "code": "OK", "tenant": "gateway"},
            )
            is None
        )


# --- 3. A worker's refusals, as the SDKs raise them -----------------------------------------------


async def test_a_workers_quota_refusal_is_a_429_with_retry_after_and_rate_limit_headers(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    for worker in fleet.workers:
        hold_quota_clock(worker, monkeypatch)
    async with openai_client(fleet.port, ALICE) as oai, anthropic_client(fleet.port, ALICE) as ant:
        refused = await refused_within(
            5,
            lambda: oai.chat.completions.create(model="limited", messages=[user("Hi")]),
            openai.RateLimitError,
        )
        also = await refused_within(
            5,
            lambda: ant.messages.create(model="limited", max_tokens=10, messages=HI),
            anthropic.RateLimitError,
        )

    for error in (refused, also):
        headers = error.response.headers
        assert error.status_code == 429
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-limit-requests"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert "requests_per_minute" in error.message
    assert isinstance(refused.body, dict) and refused.body.get("type") == "rate_limit_error"
    assert sum(calls_of(w, "limited", "RESOURCE_EXHAUSTED") for w in fleet.workers) >= 2, (
        "the workers refused the calls"
    )


async def test_a_workers_capability_refusal_is_a_400_naming_the_param(fleet: Fleet) -> None:
    """The echo model has no CAPABILITY_TOOLS: only the worker knows it (the codec translates
    tools, and the gateway forwards them)."""
    tool: Any = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    before = sum(calls_of(w, "echo", "INVALID_ARGUMENT") for w in fleet.workers)
    async with openai_client(fleet.port, ALICE) as oai, anthropic_client(fleet.port, ALICE) as ant:
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(model="echo", messages=[user("Hi")], tools=[tool])
        with pytest.raises(openai.BadRequestError) as streamed:
            await oai.chat.completions.create(
                model="echo", messages=[user("Hi")], tools=[tool], stream=True
            )
        with pytest.raises(anthropic.BadRequestError) as other:
            await ant.messages.create(
                model="echo",
                max_tokens=10,
                messages=HI,
                tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
            )

    for error in (refused.value, streamed.value):
        assert error.status_code == 400
        assert error.param == "tools", error.body
        assert "tools" in error.message and "echo" in error.message
    body = other.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("tools"), body
    after = await counted(fleet.workers, "echo", "INVALID_ARGUMENT", before + 3)
    assert after - before == 3, "the workers refused the three calls"
    kinds = [
        sample.labels["kind"]
        for metric in fleet.gateway.rpc.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "modelwire_errors_total"
    ]
    assert "invalid_request" not in kinds, "the worker counted its refusal; the gateway does not"


async def test_a_prompt_over_the_context_is_a_400_from_the_worker(fleet: Fleet) -> None:
    long_prompt = "word " * (CONTEXT_LENGTH * 2)
    before = sum(calls_of(w, "echo", "FAILED_PRECONDITION") for w in fleet.workers)
    async with openai_client(fleet.port, ALICE) as oai, anthropic_client(fleet.port, ALICE) as ant:
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(model="echo", messages=[user(long_prompt)])
        with pytest.raises(anthropic.BadRequestError) as other:
            await ant.messages.create(
                model="echo", max_tokens=10, messages=[{"role": "user", "content": long_prompt}]
            )

    assert refused.value.status_code == 400
    assert isinstance(refused.value.body, dict)
    assert refused.value.body.get("type") == "invalid_request_error", refused.value.body
    assert refused.value.body.get("param") == "messages", refused.value.body
    assert refused.value.body.get("code") == "context_length_exceeded", refused.value.body
    assert str(CONTEXT_LENGTH) in refused.value.message
    assert "word word" not in refused.value.message, "no error quotes the request's text"
    body = other.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    after = await counted(fleet.workers, "echo", "FAILED_PRECONDITION", before + 2)
    assert after - before == 2, "the workers refused both calls"


# --- 4. The allow-list ----------------------------------------------------------------------------


async def test_a_model_outside_the_allow_list_is_a_403_and_reaches_no_worker(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    before = [calls_of(w, "slow") + calls_of(w, "slow", "PERMISSION_DENIED") for w in fleet.workers]
    async with openai_client(fleet.port, BOB) as oai, anthropic_client(fleet.port, BOB) as ant:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await oai.chat.completions.create(model="slow", messages=[user("Hi")])
        with pytest.raises(openai.PermissionDeniedError):
            await oai.chat.completions.create(model="slow", messages=[user("Hi")], stream=True)
        with pytest.raises(anthropic.PermissionDeniedError) as other:
            await ant.messages.create(model="slow", max_tokens=10, messages=HI)
        await oai.chat.completions.create(model="echo", messages=[user("Hi")])  # allowed

    for error in (refused.value, other.value):
        assert error.status_code == 403
        assert "token 'bob' may not use model 'slow'" in error.message
    after = [calls_of(w, "slow") + calls_of(w, "slow", "PERMISSION_DENIED") for w in fleet.workers]
    assert after == before
    assert [line["model"] for line in worker_lines(caplog)] == ["echo"], (
        "only the allowed call reached a worker"
    )
    assert all(admission(w, "slow").in_flight == 0 for w in fleet.workers)


# --- 5. Load spreads ------------------------------------------------------------------------------


async def test_twenty_calls_through_the_gateway_reach_both_workers(fleet: Fleet) -> None:
    before = [calls_of(w, "echo") for w in fleet.workers]
    async with openai_client(fleet.port, ALICE) as client:
        texts = [
            (await client.chat.completions.create(model="echo", messages=[user("Hi")]))
            .choices[0]
            .message.content
            for _ in range(20)
        ]
    assert texts == ["hi hi hi "] * 20
    await counted(fleet.workers, "echo", "OK", sum(before) + 20)
    served = [calls_of(w, "echo") - b for w, b in zip(fleet.workers, before, strict=True)]
    print(f"calls per worker: {served}")
    assert sum(served) == 20
    assert all(count > 0 for count in served), served


# --- 6. A caller that leaves ----------------------------------------------------------------------


async def test_closing_a_slow_stream_cancels_the_workers_call(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    async with openai_client(fleet.port, ALICE) as client:
        stream = await client.chat.completions.create(
            model="slow",
            messages=[user("Hi")],
            stream=True,
            extra_headers={"x-request-id": "leaves-mid-stream"},
        )
        first = await anext(stream)
        assert first.choices[0].delta.content == "hello"
        [busy] = [w for w in fleet.workers if admission(w, "slow").in_flight == 1]
        await stream.close()

    await admission_reaches(admission(busy, "slow"), 0, 0)
    line = await logged(caplog, "leaves-mid-stream", GENERATE_STREAM)
    assert line["code"] == "CANCELLED", line
    assert line["messages"] < 50, "the worker stopped before the end of the stream"
    assert all(admission(w, "slow").in_flight == 0 for w in fleet.workers)


# --- 7. A retry the caller never sees -------------------------------------------------------------


async def test_a_refused_connection_is_retried_and_the_caller_gets_one_answer(
    fleet: Fleet, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet of a dead address and one worker, without health probes (which would mark the
    dead one down first): the dead instance gets its turn, and the call goes on to the worker."""
    monkeypatch.setenv(TOKEN_ENV, GATEWAY_TOKEN)
    worker = fleet.workers[0]
    statuses: list[int] = []

    async def received(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with running_controller(ttl_s=60, probe_health=False) as controller:
        await controller.registry.register(
            InstanceSpec("refusing", f"127.0.0.1:{free_port()}", (InstanceModel("echo"),))
        )
        await controller.registry.register(
            InstanceSpec(
                "w-0", worker.address, tuple(InstanceModel(m.metadata.model) for m in worker.models)
            )
        )
        async with gateway_with_facade(controller.address, fleet.auth, 2, probe_health=False) as (
            _gateway,
            facade,
        ):
            client = openai.AsyncOpenAI(
                api_key=ALICE,
                base_url=f"http://127.0.0.1:{facade.port}/v1",
                max_retries=0,
                http_client=openai.DefaultAsyncHttpxClient(
                    trust_env=False, event_hooks={"response": [received]}
                ),
            )
            with caplog.at_level(logging.INFO, logger="modelwire.gateway"):
                async with client:
                    texts = []
                    for _ in range(10):
                        answer = await client.chat.completions.create(
                            model="echo", messages=[user("Hi")]
                        )
                        texts.append(answer.choices[0].message.content)
                        if "instance refusing did not take the call" in caplog.text:
                            break

    assert "instance refusing did not take the call" in caplog.text, "the dead one was never tried"
    assert texts == ["hi hi hi "] * len(texts)
    assert statuses == [200] * len(texts), "one clean answer per call"
