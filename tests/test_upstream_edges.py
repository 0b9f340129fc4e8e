"""Remote providers at their edges (review findings 14, 15, 19-21): the caller's deadline governs a
unary upstream wait, retry waits that cannot fit are not slept, estimated counts keep a margin, the
upstream's own context and billing refusals are FAILED_PRECONDITION, delays are clamped and
floored, bookkeeping never fails a call, and request text never reaches a log or an error
message."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from conftest import admission_reaches, running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    answer_ok,
    is_anthropic,
    load_toml_config,
    send_first_token,
    stream_prologue,
)
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.core.types import ModelMessage, Role
from modelwire.tokenize.tiktoken_counter import count_tokens
from test_upstream_faults import call, error_reply

WIRES = ("oa", "an")
CONTEXT = 1000  # of the "qwen" model, whose counts are cl100k estimates, taken as ±10%


def _toml(fake: FakeUpstream) -> str:
    models = ""
    for name, provider, base, retries in (
        ("oa", "openai", f"{fake.url}/v1", 0),
        ("an", "anthropic", fake.url, 0),
        ("oa-retry", "openai", f"{fake.url}/v1", 2),
        ("an-retry", "anthropic", fake.url, 2),
    ):
        models += f"""
[[models]]
name = "{name}"
provider = "{provider}"
api_base = "{base}"
upstream_model = "{"gpt-4o-mini" if provider == "openai" else "claude-sonnet-4-5"}"
api_key_env = "MODELWIRE_EDGE_KEY"
context_length = 128000
timeout_s = 0.6
max_retries = {retries}
retry_backoff_s = 0.01
"""
    return f"""
[server]
grace_period_s = 1.0
{models}
[[models]]
name = "qwen"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "qwen2.5-7b-instruct"
context_length = {CONTEXT}
max_output_tokens = {CONTEXT}
estimate_margin = 0.1
max_retries = 0

[[models]]
name = "held"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_concurrency = 1
max_queue = 2
max_retries = 0
"""


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MODELWIRE_EDGE_KEY", "sk-edge-SECRET-0042")
    config = load_toml_config(tmp_path_factory.mktemp("edges"), _toml(fake))
    async with running_worker(config) as worker:
        yield worker
    monkeypatch.undo()


@pytest.fixture
async def client(fake: FakeUpstream, worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    fake.reset_records()
    async with ModelWorkerClient(worker.address, timeout=10) as client:
        yield client
    fake.reset_records()


def _precondition(error: ModelwireCallError) -> list[str]:
    return [
        v.type
        for d in error.details
        if isinstance(d, error_details_pb2.PreconditionFailure)
        for v in d.violations
    ]


# --- 1. the caller's deadline governs ----------------------------------------------------------


async def slow_answer(exchange: Exchange, respond: Responder) -> None:
    """The upstream computes for 1.5 s, well past timeout_s = 0.6, then answers."""
    await asyncio.sleep(1.5)
    await answer_ok(exchange, respond)


@pytest.mark.parametrize("model", WIRES)
async def test_unary_answer_slower_than_timeout_s_arrives_within_the_callers_deadline(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    fake.script(slow_answer)
    output = await client.generate(model, "Hi", timeout=10)
    assert output.text == "Hello, world!"
    assert output.timing.total_seconds > 1.5


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("model", ["oa-retry", "an-retry"])
async def test_a_retry_after_that_does_not_fit_the_deadline_is_passed_on_at_once(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, kind: str
) -> None:
    fake.script(error_reply(429, "rate_limit_error", "Rate limit reached", {"Retry-After": "5"}))
    started = time.monotonic()
    _, error = await call(client, model, kind, timeout=1.0)
    elapsed = time.monotonic() - started

    assert error is not None and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert error.retry_after_s == 5.0
    assert len(fake.exchanges) == 1, "no retry was attempted"
    print(f"\n{model} {kind}: RESOURCE_EXHAUSTED after {1000 * elapsed:.0f} ms of a 1 s deadline")


@pytest.mark.parametrize("model", ["oa-retry", "an-retry"])
async def test_a_retry_that_fits_the_deadline_is_made(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    fake.script(error_reply(429, "rate_limit_error", "Rate limit reached", {"Retry-After": "0.5"}))
    output = await client.generate(model, "Hi", timeout=5)
    assert output.text == "Hello, world!"
    assert len(fake.exchanges) == 2


# --- 3, 4. delays clamped and floored, 402, empty model -------------------------------------------


@pytest.mark.parametrize(
    ("headers", "delay"),
    [
        ({"Retry-After": "inf"}, 86400.0),
        ({"retry-after-ms": "inf"}, 86400.0),
        ({"Retry-After": "1e308"}, 86400.0),
        ({"retry-after-ms": "1e400"}, 86400.0),
        ({"Retry-After": "nan"}, 1.0),
        ({"Retry-After": "0"}, 0.5),
        ({"retry-after-ms": "0"}, 0.5),
    ],
)
@pytest.mark.parametrize("model", WIRES)
async def test_retry_after_is_clamped_and_floored(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, headers: dict[str, str], delay: float
) -> None:
    fake.script(error_reply(429, "rate_limit_error", "slow down", headers))
    _, error = await call(client, model, "unary")
    assert error is not None and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert error.retry_after_s == delay


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("model", WIRES)
async def test_402_is_failed_precondition_naming_the_workers_account(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, kind: str
) -> None:
    fake.script(error_reply(402, "billing_error", "Your credit balance is too low"))
    _, error = await call(client, model, kind)
    assert error is not None and error.code == grpc.StatusCode.FAILED_PRECONDITION, error
    provider = "anthropic" if model == "an" else "openai"
    assert (
        f"the worker's {provider} account at 127.0.0.1, key from $MODELWIRE_EDGE_KEY"
        in error.message
    )
    assert "Your credit balance is too low" in error.message
    assert "sk-edge-SECRET" not in error.message


async def test_an_empty_model_is_invalid_argument_on_every_rpc(client: ModelWorkerClient) -> None:
    for method in (
        lambda: client.generate("", "Hi"),
        lambda: client.count_tokens("", "Hi"),
        lambda: client.count_tokens("", [("user", "Hi")]),
    ):
        with pytest.raises(ModelwireCallError) as raised:
            await method()
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "model" in raised.value.field_violations
    _, error = await call(client, "", "stream")
    assert (
        error is not None
        and error.code == grpc.StatusCode.INVALID_ARGUMENT
        and "model" in error.field_violations
    )


async def hold_until_closed(exchange: Exchange, respond: Responder) -> None:
    await respond.hang()


async def test_admission_retry_info_follows_the_queue(
    client: ModelWorkerClient, fake: FakeUpstream, worker: Worker
) -> None:
    """max_concurrency 1, max_queue 2, calls held at the upstream: the newcomer waits behind three,
    each holding a slot about INITIAL_HOLD_S (no call of this model has finished yet)."""
    fake.default = hold_until_closed
    [held] = [m for m in worker.models if m.metadata.model == "held"]
    calls = [asyncio.create_task(client.generate("held", "Hi", timeout=30)) for _ in range(3)]
    try:
        await admission_reaches(held.admission, in_flight=1, queued=2)
        _, error = await call(client, "held", "unary")
        assert error is not None and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.retry_after_s == 3.0
        assert "retry after 3.0s" in error.message
    finally:
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        fake.default = answer_ok


# --- 2. context checks honest about estimates ---------------------------------------------------


def _prompt_estimated_at(tokens: int) -> str:
    """A user message whose cl100k estimate with OpenAI's framing is exactly `tokens`."""
    framing = count_tokens("qwen2.5-7b-instruct", [ModelMessage(Role.USER, "")]).count
    text = " hello" * (tokens - framing)
    assert count_tokens("qwen2.5-7b-instruct", [ModelMessage(Role.USER, text)]).count == tokens
    return text


@pytest.mark.parametrize(
    ("estimate", "max_tokens_sent"),
    [
        (500, CONTEXT - 550),  # far from the limit: the room left if the estimate is 10% low
        (950, CONTEXT - 855),  # near it: the upstream judges; the most that could fit
        (1050, CONTEXT - 945),  # over it, but within the estimate's error: not refused here
    ],
)
async def test_estimated_counts_keep_a_margin(
    client: ModelWorkerClient, fake: FakeUpstream, estimate: int, max_tokens_sent: int
) -> None:
    await client.generate("qwen", _prompt_estimated_at(estimate))
    [exchange] = fake.exchanges
    assert exchange.json()["max_tokens"] == max_tokens_sent


async def test_a_caller_max_new_tokens_is_kept_near_the_limit(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    await client.generate("qwen", _prompt_estimated_at(950), max_new_tokens=20)
    assert fake.exchanges[0].json()["max_tokens"] == 20


async def test_a_prompt_too_long_even_for_the_margin_is_refused_before_the_upstream(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    with pytest.raises(ModelwireCallError) as raised:
        await client.generate("qwen", _prompt_estimated_at(1200))
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "an estimate" in raised.value.message
    assert _precondition(raised.value) == ["CONTEXT_LENGTH"]
    assert fake.exchanges == []


CONTEXT_REFUSALS = {
    "openai": {
        "error": {
            "message": "This model's maximum context length is 128000 tokens. However, your "
            "messages resulted in 130412 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    "vllm": {
        "object": "error",
        "message": "This model's maximum context length is 32768 tokens. However, you requested "
        "33668 tokens (30900 in the messages, 2768 in the completion). Please reduce the "
        "length of the messages or completion.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    },
    "llama.cpp": {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 5000,
            "n_ctx": 4096,
        }
    },
    "anthropic": {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 201234 tokens > 200000 maximum",
        },
    },
    "anthropic-max-tokens": {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "input length and `max_tokens` exceed context limit: 180000 + 30000 > "
            "200000, decrease input length or `max_tokens` and try again",
        },
    },
}


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("server", sorted(CONTEXT_REFUSALS))
async def test_the_upstreams_context_refusal_is_failed_precondition(
    client: ModelWorkerClient, fake: FakeUpstream, server: str, kind: str
) -> None:
    async def refuse(exchange: Exchange, respond: Responder) -> None:
        await respond.json(400, CONTEXT_REFUSALS[server])

    fake.script(refuse)
    _, error = await call(client, "an" if server.startswith("anthropic") else "oa", kind)
    assert error is not None and error.code == grpc.StatusCode.FAILED_PRECONDITION, error
    assert _precondition(error) == ["CONTEXT_LENGTH"]
    assert "lower max_new_tokens" in error.message


# A 400 that merely mentions a context, a size or a length (a quoted schema property, a
# parameter) is the generic rejection, not a context refusal: only the machine codes and the
# known sentences are.
NOT_CONTEXT_REFUSALS = {
    "a quoted schema property": {
        "error": {
            "message": "Invalid schema for function 'setup': 'context_size' is not of type "
            "'integer'",
            "type": "invalid_request_error",
            "param": "tools[0].function.parameters",
            "code": "invalid_function_parameters",
        }
    },
    "a parameter's name": {
        "error": {
            "message": "Unrecognized request argument supplied: context_length",
            "type": "invalid_request_error",
            "code": None,
        }
    },
    "anthropic mentioning a context window": {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "tools.0.input_schema: property 'context_window' is invalid",
        },
    },
}


@pytest.mark.parametrize("body", sorted(NOT_CONTEXT_REFUSALS))
async def test_a_400_that_only_mentions_a_context_stays_invalid_argument(
    client: ModelWorkerClient, fake: FakeUpstream, body: str
) -> None:
    async def reject(exchange: Exchange, respond: Responder) -> None:
        await respond.json(400, NOT_CONTEXT_REFUSALS[body])

    fake.script(reject)
    _, error = await call(client, "an" if body.startswith("anthropic") else "oa", "unary")
    assert error is not None and error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert _precondition(error) == []
    assert "upstream rejected the request (HTTP 400)" in error.message


# --- 3. bookkeeping never fails a call ------------------------------------------------------------


async def test_failing_metrics_and_call_log_never_fail_a_call(
    client: ModelWorkerClient, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise OSError("the metrics directory is gone")

    monkeypatch.setattr(worker.metrics, "finished", broken)
    monkeypatch.setattr(worker.metrics, "inter_token_gap", broken)
    monkeypatch.setattr(worker.metrics, "admission_changed", broken)
    monkeypatch.setattr("modelwire.observe.call_observer.log_call", broken)
    for served in worker.models:
        monkeypatch.setattr(served.admission, "observer", broken)

    assert (await client.generate("oa", "Hi")).text == "Hello, world!"
    assert "".join([c.text async for c in client.stream("an", "Hi")]) == "Hello, world!"
    assert all((m.admission.in_flight, m.admission.queued) == (0, 0) for m in worker.models)


# --- 5. request text never reaches a log or an error message --------------------------------------

MARKER = "ZEBRA-7731-QUOKKA"
# The markers sit between characters JSON encoders escape (Go: < > &, PHP: /), in runs too short
# to be recognised unless the escaped form of the prompt is looked for too.
PROMPT = (
    f"Summarise <a>{MARKER}</a> & <b>Lisbon/Porto</b> & <i>the quarterly figures</i>, line by line."
)
COMPLETION_MARKER = "PELICAN-5150-TAPIR"


def _echoing(status: int, template: str) -> Any:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        if is_anthropic(exchange):
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": template.format(PROMPT)},
            }
        else:
            body = {
                "error": {
                    "message": template.format(PROMPT),
                    "type": "invalid_request_error",
                    "code": None,
                }
            }
        await respond.json(status, body)

    return reply


async def fastapi_422(exchange: Exchange, respond: Responder) -> None:
    await respond.json(
        422,
        {
            "detail": [
                {
                    "type": "string_too_long",
                    "loc": ["body", "messages", 0, "content"],
                    "msg": "String should have at most 10 characters",
                    "input": PROMPT,
                    "ctx": {"max_length": 10, "value": PROMPT},
                }
            ]
        },
    )


async def partial_echo(exchange: Exchange, respond: Responder) -> None:
    await respond.json(
        400,
        {
            "error": {
                "message": f"cannot parse near '…{PROMPT[9:50]}…'",
                "type": "invalid_request_error",
            }
        },
    )


async def mid_stream_echo(exchange: Exchange, respond: Responder) -> None:
    await stream_prologue(exchange, respond)
    await send_first_token(exchange, respond)
    if is_anthropic(exchange):
        await respond.event(
            {"type": "error", "error": {"type": "api_error", "message": f"failed on {PROMPT}"}},
            event="error",
        )
    else:
        await respond.event({"error": {"message": f"failed on {PROMPT}", "code": 500}})
    await respond.end()


async def malformed_event_with_completion(exchange: Exchange, respond: Responder) -> None:
    await stream_prologue(exchange, respond)
    await respond.event(
        f'{{"choices": [{{"delta": {{"content": "{COMPLETION_MARKER} says',
        event="content_block_delta" if is_anthropic(exchange) else None,
    )
    await respond.end()


async def non_json_with_completion(exchange: Exchange, respond: Responder) -> None:
    body = f"{COMPLETION_MARKER}: {PROMPT}".encode()
    await respond.head(
        200, {"Content-Length": str(len(body))}, chunked=False, content_type="text/plain"
    )
    await respond.raw(body)


async def echo_500(exchange: Exchange, respond: Responder) -> None:
    await respond.json(
        500, {"error": {"message": f"server fault while reading {PROMPT}", "type": "server_error"}}
    )


def _quoted_body(exchange: Exchange) -> str:
    """The request as a JSON string inside the error message (the message quotes the body it
    got)."""
    return json.dumps(exchange.body.decode(), ensure_ascii=False)[1:-1]


async def go_escaped_echo(exchange: Exchange, respond: Responder) -> None:
    """Go's encoding/json (Ollama and other Go servers) writes <, > and & as \\u003c…"""
    go = (
        _quoted_body(exchange)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    await respond.json(
        400, {"error": {"message": f"rejected '{go}'", "type": "invalid_request_error"}}
    )


async def php_escaped_echo(exchange: Exchange, respond: Responder) -> None:
    """PHP's json_encode writes / as \\/."""
    await respond.json(
        400, {"error": {"message": "rejected " + _quoted_body(exchange).replace("/", "\\/")}}
    )


async def completion_instead_of_a_stream(exchange: Exchange, respond: Responder) -> None:
    """A server that ignores stream=true and sends its whole completion as JSON."""
    await respond.json(
        200, {"choices": [{"message": {"content": f"{COMPLETION_MARKER} is the answer"}}]}
    )


INVALID, UNAVAILABLE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE
# kind, the upstream's answer, the status it must give, words the message must keep (so a handler
# that crashed cannot pass for one that echoed).
FAILURES = {
    "400 quoting it as Go escapes": ("unary", go_escaped_echo, INVALID, "rejected '{"),
    "400 quoting it as PHP escapes": ("unary", php_escaped_echo, INVALID, "rejected {"),
    "a whole completion where a stream was asked for": (
        "stream",
        completion_instead_of_a_stream,
        UNAVAILABLE,
        "instead of an event stream",
    ),
    "400 quoting the message": (
        "unary",
        _echoing(400, "Invalid 'messages[0].content': {0!r} is not allowed"),
        INVALID,
        "Invalid 'messages[0].content'",
    ),
    "400 quoting it in a stream": (
        "stream",
        _echoing(400, "content {0} rejected"),
        INVALID,
        "content [request text] rejected",
    ),
    "FastAPI 422 with input and ctx": (
        "unary",
        fastapi_422,
        INVALID,
        "String should have at most 10 characters",
    ),
    "400 quoting a piece of it": ("unary", partial_echo, INVALID, "cannot parse near"),
    "an error event quoting it mid-stream": (
        "stream",
        mid_stream_echo,
        UNAVAILABLE,
        "failed on [request text]",
    ),
    "a malformed event holding completion text": (
        "stream",
        malformed_event_with_completion,
        UNAVAILABLE,
        "is not JSON",
    ),
    "a body that is not JSON": ("unary", non_json_with_completion, UNAVAILABLE, "not JSON"),
}


@pytest.mark.parametrize("model", WIRES)
@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_request_text_never_reaches_the_logs_or_the_error(
    client: ModelWorkerClient,
    fake: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    model: str,
    failure: str,
) -> None:
    kind, handler, code, kept = FAILURES[failure]
    fake.script(handler)
    with caplog.at_level(logging.DEBUG):
        _, error = await _call_with(client, model, kind)
    assert error is not None and error.code == code, error
    assert kept in error.message, error.message
    for text in (error.message, caplog.text):
        assert MARKER not in text and "Lisbon" not in text and COMPLETION_MARKER not in text, text
    assert MARKER in fake.exchanges[0].body.decode(), "the prompt did reach the upstream"


async def test_retried_echoes_and_internal_errors_keep_the_prompt_out_of_the_logs(
    client: ModelWorkerClient,
    fake: FakeUpstream,
    worker: Worker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.script(echo_500, echo_500, echo_500)
    with caplog.at_level(logging.DEBUG):
        _, retried = await _call_with(client, "oa-retry", "unary")
        [oa] = [m.client for m in worker.models if m.metadata.model == "oa"]

        async def crash(*_: Any) -> Any:
            raise RuntimeError(f"unexpected shape of {PROMPT}")

        monkeypatch.setattr(oa, "_completion", crash)
        _, internal = await _call_with(client, "oa", "unary")
    assert retried is not None and retried.code == grpc.StatusCode.UNAVAILABLE
    assert internal is not None and internal.code == grpc.StatusCode.INTERNAL
    assert "retry 2 of 2" in caplog.text and "internal error, incident" in caplog.text
    assert "RuntimeError: unexpected shape of [request text]" in caplog.text
    for text in (retried.message, internal.message, caplog.text):
        assert MARKER not in text and "Lisbon" not in text, text


async def _call_with(
    client: ModelWorkerClient, model: str, kind: str
) -> tuple[list[str], ModelwireCallError | None]:
    texts: list[str] = []
    try:
        if kind == "unary":
            texts.append((await client.generate(model, PROMPT)).text)
        else:
            async for chunk in client.stream(model, PROMPT):
                texts.append(chunk.text)
    except ModelwireCallError as error:
        return texts, error
    return texts, None


@pytest.mark.parametrize("where", ["a 200 body", "a stream event"])
async def test_an_openai_context_error_inside_a_successful_response_is_failed_precondition(
    client: ModelWorkerClient, fake: FakeUpstream, where: str
) -> None:
    """OpenAI's shape, with a string code, where a completion was expected."""
    refusal = CONTEXT_REFUSALS["openai"]

    async def in_body(exchange: Exchange, respond: Responder) -> None:
        await respond.json(200, refusal)

    async def in_stream(exchange: Exchange, respond: Responder) -> None:
        await stream_prologue(exchange, respond)
        await respond.event(refusal)
        await respond.end()

    fake.script(in_body if where == "a 200 body" else in_stream)
    _, error = await call(client, "oa", "unary" if where == "a 200 body" else "stream")
    assert error is not None and error.code == grpc.StatusCode.FAILED_PRECONDITION, error
    assert _precondition(error) == ["CONTEXT_LENGTH"]


@pytest.mark.timeout(60)
def test_the_scrub_is_bounded_for_huge_and_repetitive_echoes() -> None:
    """A 1 MiB prompt echoed 64 KiB long (random, and one phrase repeated) or not at all: the
    message is cut to MAX_SCRUBBED before the search, and a run is widened only over unmasked
    text, so repeated text costs no more than random text (an attack froze the worker 43 s)."""
    import random
    import string

    from modelwire.core.redaction import MASK, MAX_SCRUBBED, remember_request_text, scrub

    randomly = random.Random(7)
    prompts = {
        "random": "".join(randomly.choice(string.ascii_letters + " ") for _ in range(1 << 20)),
        "repetitive": "abcdefghijk " * ((1 << 20) // 12),
    }
    for name, prompt in prompts.items():
        remember_request_text([prompt])
        started = time.perf_counter()
        out = scrub("error: " + prompt[: 64 * 1024])
        assert out.startswith("error: " + MASK) and len(out) <= MAX_SCRUBBED, (name, out[:100])
        clean = scrub("a message sharing nothing with the prompt, at a normal length" * 10)
        assert MASK not in clean
        print(
            f"\n{name}: 1 MiB prompt, 64 KiB echo scrubbed in "
            f"{1000 * (time.perf_counter() - started):.0f} ms"
        )
    remember_request_text([" " * (1 << 20)])
    assert scrub("x" + " " * 200 + "y") == "x" + " " * 200 + "y", "whitespace is no request text"
