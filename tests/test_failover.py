"""Routes, deployments and breakers end to end: a real worker over gRPC (and its HTTP facade with
the OpenAI SDK), its providers fake upstreams that misbehave on cue. For each fault: what the
caller gets, which upstreams were called and how often, the attempts the trailer lists, and what
the tenant was charged per model (the quota counters in the store)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import admission_reaches, free_port, hold_quota_clock, running_worker
from facade_clients import openai_client
from failover_calls import (
    AUTH,
    NO_BREAKER,
    NOT_SERVING,
    PROMPT,
    SERVING,
    TOKEN,
    Clock,
    World,
    answers_429,
    answers_500,
    call,
    cut_after_three_tokens,
    health,
    health_reaches,
    held,
    prompt_tokens,
    request,
    stalls_after_three_tokens,
    stalls_before_first_token,
    three_tokens,
    used,
    world,
)
from fake_upstream import (
    Exchange,
    Handler,
    Responder,
    fake_upstream,
    is_stream,
    load_toml_config,
    openai_chunk,
)
from fleet import (
    Joining,
    registered,
    registered_worker,
    running_controller,
    running_gateway,
    wait_until,
)
from modelwire.core.types import Usage
from modelwire.observe.call_record import begin_call, note_charge
from modelwire.observe.metrics import WorkerMetrics
from modelwire.rpc.status import error_reasons, received_status
from modelwire.rpc.wire import NOT_STARTED
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker.breaker import BreakerState
from modelwire.worker.failover import Attempt

# The backup's answer as the fake Anthropic upstream reports it (fake_upstream.anthropic_events).
BACKUP_USAGE = (9, 4)


def fleet(
    tmp_path: Path,
    *,
    primary_refuses: bool = False,
    breaker: dict[str, Any] = NO_BREAKER,
    extra: str = "",
) -> contextlib.AbstractAsyncContextManager[World]:
    """A worker whose route `chat` tries `primary` (OpenAI wire, fake A, timeout_s 1.0) then
    `backup` (Anthropic wire, fake B, timeout_s 5.0), each attempt bounded at 0.5 s; each model's
    tokens counted per tenant in the in-process store (failover_calls.world)."""
    return world(
        tmp_path,
        primary={"timeout_s": 1.0},
        backup={"timeout_s": 5.0},
        failover={"attempt_timeout_s": 0.5},
        breaker=breaker,
        extra=extra,
        primary_refuses=primary_refuses,
    )


# --- the faults (the primary's upstream) ------------------------------------------------------


async def malformed_before_content(exchange: Exchange, respond: Responder) -> None:
    if not is_stream(exchange):
        body = b'{"choices": [{"message": '
        await respond.head(
            200, {"Content-Length": str(len(body))}, chunked=False, content_type="application/json"
        )
        await respond.raw(body)
        return
    await respond.head(200)
    await respond.event(openai_chunk())  # a preamble without content
    await respond.raw(b"data: {not json\n\n")
    await respond.end()


async def malformed_after_three_tokens(exchange: Exchange, respond: Responder) -> None:
    await three_tokens(respond)
    await respond.raw(b"data: {not json\n\n")
    await respond.end()


BEFORE_CONTENT: list[tuple[str, Handler | None, str]] = [
    ("refuses-to-connect", None, "unavailable"),
    ("answers-500", answers_500, "unavailable"),
    ("answers-429-with-retry-after", answers_429("7"), "rate_limited"),
    ("stalls-before-the-first-token", stalls_before_first_token, "timeout"),
    ("malformed-before-any-content", malformed_before_content, "unavailable"),
]
AFTER_CONTENT: list[tuple[str, Handler]] = [
    ("stalls-after-three-tokens", stalls_after_three_tokens),
    ("cuts-the-stream-after-three-tokens", cut_after_three_tokens),
    ("malformed-after-three-tokens", malformed_after_three_tokens),
]


@pytest.mark.parametrize("kind", ["stream", "unary"])
@pytest.mark.parametrize(
    ("fault", "handler", "reason"), BEFORE_CONTENT, ids=[f for f, _, _ in BEFORE_CONTENT]
)
async def test_before_content_the_next_model_answers_once(
    tmp_path: Path, kind: str, fault: str, handler: Handler | None, reason: str
) -> None:
    async with fleet(tmp_path, primary_refuses=handler is None) as f:
        if handler is not None:
            f.primary.script(handler)
        prompt = await prompt_tokens(f)
        outcome = await call(f.stub, "chat", kind, max_new_tokens=16)
        spent = await used(f.worker)
        primary_calls, backup_calls = len(f.primary.exchanges), len(f.backup.exchanges)
        # Time to fail over: from the primary's request (the call's start when it was refused)
        # to the backup's.
        since = f.primary.exchanges[0].started_at if f.primary.exchanges else None
        backup_at = f.backup.exchanges[0].started_at if f.backup.exchanges else None

    assert outcome.code == grpc.StatusCode.OK, outcome.message
    assert "".join(outcome.texts) == "Hello, world!"  # the backup's answer, whole and once
    assert set(outcome.models) == {"backup"}
    assert outcome.attempts == [f"primary/primary={reason}", "backup/backup=answered"]
    assert (primary_calls, backup_calls) == (0 if handler is None else 1, 1)
    # The backup is charged its usage; the primary nothing, unless the attempt was abandoned at
    # its timeout: then as a call cut off there (its prompt; a unary attempt its whole output
    # bound too, since its answer may have been generated whole).
    cut = reason == "timeout"
    primary_charge = (prompt + (16 if kind == "unary" else 0)) if cut else 0
    assert spent == {"primary": primary_charge, "backup": sum(BACKUP_USAGE)}
    failover_ms = f"{1000 * (backup_at - since):.1f} ms" if since and backup_at else "n/a"
    print(
        f"\n{fault} ({kind}): the backup called {failover_ms} after the primary; answered "
        f"{1000 * outcome.elapsed_s:.0f} ms after the call began"
    )


@pytest.mark.parametrize(("fault", "handler"), AFTER_CONTENT, ids=[f for f, _ in AFTER_CONTENT])
async def test_after_content_the_caller_gets_the_error_and_no_second_answer(
    tmp_path: Path, fault: str, handler: Handler
) -> None:
    async with fleet(tmp_path) as f:
        f.primary.script(handler)
        prompt = await prompt_tokens(f)
        outcome = await call(f.stub, "chat", "stream")
        spent = await used(f.worker)
        primary_calls, backup_calls = len(f.primary.exchanges), len(f.backup.exchanges)

    assert outcome.code == grpc.StatusCode.UNAVAILABLE, outcome.message
    assert "after 3 deltas of its answer had been passed on" in outcome.message
    assert "".join(outcome.texts) == "One two three"  # in 1-3 messages: coalesced
    assert set(outcome.models) == {"primary"}
    assert outcome.attempts == ["primary/primary=failed_after_content"]
    assert (primary_calls, backup_calls) == (1, 0)
    # The partial answer is charged: the prompt and the output delivered, counted as a cancelled
    # stream's is (worker/metering.py): at least a token per message, at least 4 characters a
    # token ("One two three" is 13 characters: 4 tokens).
    assert spent == {"primary": prompt + max(3, math.ceil(len("One two three") / 4)), "backup": 0}


# --- what never moves on ----------------------------------------------------------------------


async def answers_400(exchange: Exchange, respond: Responder) -> None:
    await respond.json(
        400, {"error": {"message": "messages is malformed", "type": "invalid_request_error"}}
    )


async def test_the_callers_own_bad_request_never_moves_on(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        f.primary.script(answers_400)
        outcome = await call(f.stub, "chat", "stream")
        backup_calls = len(f.backup.exchanges)

    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.attempts == ["primary/primary=error"]
    assert backup_calls == 0


async def test_a_tenants_quota_refusal_never_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = '[[quota.rules]]\ntenant = "*"\nmodel = "primary"\nrequests_per_minute = 1\n'
    async with fleet(tmp_path, extra=rule) as f:
        hold_quota_clock(f.worker, monkeypatch)
        first = await call(f.stub, "chat", "unary")
        second = await call(f.stub, "chat", "unary")
        calls = (len(f.primary.exchanges), len(f.backup.exchanges))

    assert first.code == grpc.StatusCode.OK and first.models == ["primary"]
    assert second.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requests_per_minute 1" in second.message
    assert second.attempts == ["primary/primary=error"]
    assert calls == (1, 0)


# --- choosing what can serve ------------------------------------------------------------------

SMALL_AND_TOOLLESS = """
[[models]]
name = "small"
provider = "openai"
api_base = "{primary}/v1"
upstream_model = "gpt-4o-mini"
context_length = 8
max_retries = 0

[[models]]
name = "toolless"
provider = "openai"
api_base = "{primary}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
capabilities = ["chat", "streaming"]
max_retries = 0

[[routes]]
name = "long"
models = ["small", "backup"]

[[routes]]
name = "tooled"
models = ["toolless", "backup"]
"""


async def test_a_tool_request_skips_a_member_without_tools(tmp_path: Path) -> None:
    async with fleet(tmp_path, extra=SMALL_AND_TOOLLESS) as f:
        outcome = await call(f.stub, "tooled", "unary", tools=True)
        plain = await call(f.stub, "tooled", "unary")
        calls = (len(f.primary.exchanges), len(f.backup.exchanges))

    assert outcome.code == grpc.StatusCode.OK, outcome.message
    assert outcome.models == ["backup"]
    assert outcome.attempts == ["toolless/toolless=lacks_fields", "backup/backup=answered"]
    # Without tools the first member serves: the skip was the request's fields, not the member.
    assert plain.models == ["toolless"]
    assert calls == (1, 1)


async def test_a_prompt_too_long_for_a_member_moves_to_a_longer_context(tmp_path: Path) -> None:
    async with fleet(tmp_path, extra=SMALL_AND_TOOLLESS) as f:
        outcome = await call(f.stub, "long", "stream")
        calls = (len(f.primary.exchanges), len(f.backup.exchanges))

    assert outcome.code == grpc.StatusCode.OK, outcome.message
    assert outcome.attempts == ["small/small=context_length", "backup/backup=answered"]
    assert calls == (0, 1)


async def test_list_models_shows_routes_with_what_every_member_accepts(tmp_path: Path) -> None:
    async with fleet(tmp_path, extra=SMALL_AND_TOOLLESS) as f:
        listed = await f.stub.ListModels(pb.ListModelsRequest(), metadata=AUTH)

    models = {m.model: m for m in listed.models}
    assert set(models) == {"primary", "backup", "small", "toolless", "chat", "long", "tooled"}
    tooled = models["tooled"]
    assert tooled.provider == "route"
    assert dict(tooled.metadata) == {"route": "toolless,backup"}
    assert pb.CAPABILITY_TOOLS not in tooled.capabilities
    assert pb.CAPABILITY_TOOLS in models["chat"].capabilities
    # A longer prompt moves on to a member that holds it: the route holds the longest.
    assert models["long"].context_length == 200000


# --- breakers ---------------------------------------------------------------------------------


async def test_a_breaker_opens_probes_once_half_open_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    breaker = {"consecutive_failures": 2, "open_s": 30.0}
    async with fleet(tmp_path, breaker=breaker) as f:
        served = f.served("primary")
        clock = Clock([served.breaker], monkeypatch)
        f.primary.script(answers_500, answers_500)
        for _ in range(2):
            assert (await call(f.stub, "chat", "unary")).models == ["backup"]
        assert served.breaker.state is BreakerState.OPEN
        await health_reaches(f.channel, "primary", NOT_SERVING)
        # The route still has a member whose circuit is closed.
        assert await health(f.channel, "chat") == SERVING

        # Open: calls go to the backup at once, the primary's upstream hears nothing.
        skipped = await call(f.stub, "chat", "stream")
        assert skipped.attempts == ["primary/primary=circuit_open", "backup/backup=answered"]
        assert len(f.primary.exchanges) == 2

        # Past open_s: one probe goes to the primary; a call meanwhile goes to the backup.
        clock.advance(31)
        release = asyncio.Event()
        f.primary.script(held(release))
        probe = asyncio.ensure_future(call(f.stub, "chat", "unary"))
        await f.primary.wait_for_requests(3)
        assert served.breaker.state is BreakerState.HALF_OPEN
        meanwhile = await call(f.stub, "chat", "unary")
        assert meanwhile.attempts == ["primary/primary=circuit_open", "backup/backup=answered"]
        release.set()
        probed = await probe
        assert probed.models == ["primary"] and probed.attempts == ["primary/primary=answered"]
        assert served.breaker.state is BreakerState.CLOSED
        assert len(f.primary.exchanges) == 3
        await health_reaches(f.channel, "primary", SERVING)


async def test_a_429s_retry_after_becomes_the_deployments_cooldown(tmp_path: Path) -> None:
    breaker = {"consecutive_failures": 1000, "open_s": 1.0}
    async with fleet(tmp_path, breaker=breaker) as f:
        served = f.served("primary")
        f.primary.script(answers_429("7"))
        await call(f.stub, "chat", "unary")
        cooldown = served.breaker.retry_after_s()
        second = await call(f.stub, "chat", "unary")
        primary_calls = len(f.primary.exchanges)

    assert 6.0 < cooldown <= 7.0  # the upstream's Retry-After: 7, not open_s
    assert second.attempts == ["primary/primary=circuit_open", "backup/backup=answered"]
    assert primary_calls == 1


async def test_every_circuit_open_is_unavailable_with_a_retry_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fleet(tmp_path, breaker={"consecutive_failures": 1, "open_s": 20.0}) as f:
        f.primary.script(answers_500)
        f.backup.script(answers_500)
        failed = await call(f.stub, "chat", "unary")
        rpc = f.stub.Generate(request("chat"), metadata=AUTH, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await rpc
        reasons = error_reasons(received_status(tuple(await rpc.trailing_metadata())))
        refused = await call(f.stub, "chat", "unary")
        calls = (len(f.primary.exchanges), len(f.backup.exchanges))

    assert failed.code == grpc.StatusCode.UNAVAILABLE  # the last attempt's own error
    assert failed.attempts == ["primary/primary=unavailable", "backup/backup=unavailable"]
    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert "circuit open" in refused.message and "retry after" in refused.message
    assert refused.attempts == ["primary/primary=circuit_open", "backup/backup=circuit_open"]
    assert calls == (1, 1)
    # Nothing started: a gateway may try another worker, whose circuits may be closed.
    assert NOT_STARTED in reasons


# --- deployments of one model -----------------------------------------------------------------


def _deployments_text(east: str, west: str, extra: str = "") -> str:
    return f"""
[server]
grace_period_s = 1.0

[[models]]
name = "shared"
deployment = "east"
weight = 3
provider = "openai"
api_base = "{east}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_retries = 0
max_concurrency = 64

[[models]]
name = "shared"
deployment = "west"
provider = "openai"
api_base = "{west}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_retries = 0
max_concurrency = 64
{extra}
"""


async def test_two_deployments_under_concurrent_load_share_it_by_weight(tmp_path: Path) -> None:
    """40 streams held open at once: the least-loaded pick keeps in-flight calls at 3:1, the
    deployments' weights (stated tolerance: ±2 calls of 30/10)."""
    release = asyncio.Event()
    async with fake_upstream() as east, fake_upstream() as west:
        east.script(*[held(release)] * 40)
        west.script(*[held(release)] * 40)
        config = load_toml_config(tmp_path, _deployments_text(east.url, west.url))
        async with (
            running_worker(config) as worker,
            grpc.aio.insecure_channel(worker.address) as channel,
        ):
            stub = pb_grpc.ModelWorkerStub(channel)
            calls = [asyncio.ensure_future(call(stub, "shared", "stream")) for _ in range(40)]
            while len(east.exchanges) + len(west.exchanges) < 40:
                waits = [
                    asyncio.ensure_future(east.wait_for_requests(len(east.exchanges) + 1)),
                    asyncio.ensure_future(west.wait_for_requests(len(west.exchanges) + 1)),
                ]
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for waiting in pending:
                    waiting.cancel()
            shares = (len(east.exchanges), len(west.exchanges))
            # The model's gauge counts both deployments' calls.
            in_flight = worker.metrics.registry.get_sample_value(
                "modelwire_in_flight", {"model": "shared"}
            )
            release.set()
            outcomes = await asyncio.gather(*calls)

    print(f"\n40 concurrent streams over weights 3:1: east {shares[0]}, west {shares[1]}")
    assert all(o.code == grpc.StatusCode.OK for o in outcomes)
    assert abs(shares[0] - 30) <= 2 and sum(shares) == 40
    assert in_flight == 40
    attempts = sorted({o.attempts[0] for o in outcomes})
    assert attempts == ["shared/east=answered", "shared/west=answered"]


async def test_a_deployment_at_its_account_limit_gives_way_to_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = (
        '[[quota.rules]]\ntenant = "all"\nmodel = "shared"\ndeployment = "east"\n'
        "requests_per_minute = 1\n"
    )
    async with fake_upstream() as east, fake_upstream() as west:
        config = load_toml_config(tmp_path, _deployments_text(east.url, west.url, rule))
        async with (
            running_worker(config) as worker,
            grpc.aio.insecure_channel(worker.address) as channel,
        ):
            hold_quota_clock(worker, monkeypatch)
            stub = pb_grpc.ModelWorkerStub(channel)
            outcomes = [await call(stub, "shared", "unary") for _ in range(4)]
            calls = (len(east.exchanges), len(west.exchanges))

    assert all(o.code == grpc.StatusCode.OK for o in outcomes)
    assert outcomes[0].attempts == ["shared/east=answered"]
    assert ["shared/east=account_limit", "shared/west=answered"] in [o.attempts for o in outcomes]
    assert calls == (1, 3)


# --- HTTP callers -----------------------------------------------------------------------------


async def test_the_openai_sdk_gets_the_fallbacks_answer_named_by_its_model(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with fleet(tmp_path, extra=f"[http]\nport = {port}\n") as f:
        f.primary.script(answers_500)
        client = openai_client(port, TOKEN)
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": PROMPT}]
        )
        completion = raw.parse()
        spent = await used(f.worker)

    assert completion.model == "backup"
    assert completion.choices[0].message.content == "Hello, world!"
    assert raw.headers["x-modelwire-attempts"] == (
        "primary/primary=unavailable,backup/backup=answered"
    )
    assert spent == {"primary": 0, "backup": sum(BACKUP_USAGE)}


def test_spend_metrics_are_labelled_by_each_model_that_ran() -> None:
    """A route's call charged for two attempts: each model's tokens and cost under its own name,
    the call's request under the name the caller used."""
    metrics = WorkerMetrics()
    record = begin_call("/modelwire.v1.ModelWorker/Generate", None)
    record.model, record.tenant_label = "chat", "team-a"
    note_charge("primary", Usage(prompt_tokens=12), 0.25)
    note_charge("backup", Usage(prompt_tokens=9, completion_tokens=4), 0.5)
    metrics.finished(record, streamed=False)

    def sample(name: str, model: str) -> float | None:
        value: float | None = metrics.registry.get_sample_value(
            name, {"model": model, "tenant": "team-a"}
        )
        return value

    assert (record.prompt_tokens, record.completion_tokens, record.cost) == (21, 4, 0.75)
    assert sample("modelwire_prompt_tokens_total", "primary") == 12
    assert sample("modelwire_prompt_tokens_total", "backup") == 9
    assert sample("modelwire_completion_tokens_total", "backup") == 4
    assert sample("modelwire_cost_total", "primary") == 0.25
    assert sample("modelwire_cost_total", "backup") == 0.5
    assert sample("modelwire_prompt_tokens_total", "chat") is None


# --- through a gateway ------------------------------------------------------------------------


async def test_a_gateway_forwards_a_route_and_passes_its_attempts_on(tmp_path: Path) -> None:
    """A worker registers its routes with its models; the gateway forwards a call to the route
    as to any model, and the caller sees the member that answered and every attempt."""
    async with fake_upstream() as primary, fake_upstream() as backup:
        config = load_toml_config(
            tmp_path,
            f"""
[server]
grace_period_s = 1.0

[[models]]
name = "primary"
provider = "openai"
api_base = "{primary.url}/v1"
context_length = 128000
max_retries = 0

[[models]]
name = "backup"
provider = "anthropic"
api_base = "{backup.url}"
context_length = 200000
max_retries = 0

[[routes]]
name = "chat"
models = ["primary", "backup"]
""",
        )
        primary.script(answers_500)
        async with AsyncExitStack() as stack:
            controller = await stack.enter_async_context(running_controller())
            worker = await stack.enter_async_context(
                registered_worker(config, Joining(controller=controller.address))
            )
            await registered(worker)
            gateway = await stack.enter_async_context(running_gateway(controller.address))
            await wait_until(
                gateway.router.changed, lambda: "chat" in gateway.router.known_models(), 5
            )
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(gateway.address))
            outcome = await call(pb_grpc.ModelWorkerStub(channel), "chat", "stream")

    assert outcome.code == grpc.StatusCode.OK, outcome.message
    assert "".join(outcome.texts) == "Hello, world!"
    assert set(outcome.models) == {"backup"}
    assert outcome.attempts == ["primary/primary=unavailable", "backup/backup=answered"]


async def test_only_the_probe_itself_hands_the_probe_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream begun before the breaker opened, cancelled while the probe is out, must not let a
    second call through as another probe."""
    release = asyncio.Event()

    async def first_token_then_hold(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        await respond.event(openai_chunk("early"))
        await respond.hang()

    async with fleet(tmp_path, breaker={"consecutive_failures": 2, "open_s": 30.0}) as f:
        served = f.served("primary")
        clock = Clock([served.breaker], monkeypatch)
        f.primary.script(first_token_then_hold, answers_500, answers_500, held(release))
        early = f.stub.GenerateStream(request("chat"), metadata=AUTH, timeout=10)
        assert (await early.read()).text == "early"
        for _ in range(2):
            await call(f.stub, "chat", "unary")
        assert served.breaker.state is BreakerState.OPEN
        clock.advance(31)
        probe = asyncio.ensure_future(call(f.stub, "chat", "unary"))
        await f.primary.wait_for_requests(4)
        early.cancel()
        await f.primary.exchanges[0].wait_client_closed()
        await admission_reaches(served.admission, in_flight=1, queued=0)
        meanwhile = await call(f.stub, "chat", "unary")
        release.set()
        probed = await probe

    assert meanwhile.attempts == ["primary/primary=circuit_open", "backup/backup=answered"]
    assert probed.attempts == ["primary/primary=answered"]
    assert len(f.primary.exchanges) == 4


def test_attempt_names_are_percent_encoded_in_the_trailer() -> None:
    """Model names may hold "/" (vLLM's, OpenRouter's) and deployments any printable text: the
    trailer's separators stay unambiguous and its value printable ASCII."""
    attempt = Attempt("meta-llama/Llama-3", "east,1=ü", "answered")
    assert attempt.text() == "meta-llama%2FLlama-3/east%2C1%3D%C3%BC=answered"


async def test_a_wait_for_a_slot_is_not_the_upstreams_slowness(tmp_path: Path) -> None:
    """The attempt timeout starts when the provider is called: a call that queued for the
    primary's only slot longer than attempt_timeout_s still gets the primary's answer."""
    release = asyncio.Event()

    async def committed_then_held(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        await respond.event(openai_chunk("Hello"))
        await release.wait()
        await respond.event(openai_chunk(finish_reason="stop"))
        await respond.event("[DONE]")
        await respond.end()

    extra = """
[[models]]
name = "narrow"
provider = "openai"
api_base = "{primary}/v1"
context_length = 128000
max_retries = 0
max_concurrency = 1
max_queue = 4

[[routes]]
name = "narrow-first"
models = ["narrow", "backup"]
"""
    async with fleet(tmp_path, extra=extra) as f:
        served = f.served("narrow")
        f.primary.script(committed_then_held)
        first = asyncio.ensure_future(call(f.stub, "narrow-first", "stream"))
        await f.primary.wait_for_requests(1)
        second = asyncio.ensure_future(call(f.stub, "narrow-first", "stream"))
        await admission_reaches(served.admission, in_flight=1, queued=1)
        await asyncio.sleep(0.7)  # the scenario: queued longer than attempt_timeout_s = 0.5
        release.set()
        outcomes = [await first, await second]
        backup_calls = len(f.backup.exchanges)

    assert [o.models[0] for o in outcomes] == ["narrow", "narrow"]
    assert backup_calls == 0
