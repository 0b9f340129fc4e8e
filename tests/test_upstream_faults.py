"""Upstream failures, in both wire formats, map to faithful gRPC statuses; retries happen only for
retryable failures and only before the first token; cancellation and deadlines close the upstream
connection; no API key ever shows in a log line or an error message; the worker stays healthy."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    is_anthropic,
    load_toml_config,
    send_first_token,
    stream_prologue,
)
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient

WIRES = ("oa", "an")  # the model names of the openai and anthropic models without retries
SECRET = "sk-test-SECRET-1234"
SECRET_ENV = "MODELWIRE_TEST_SECRET_KEY"
Handler = Callable[[Exchange, Responder], Awaitable[None]]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _models_toml(fake: FakeUpstream, key_line: str = "") -> str:
    return f"""
[server]
grace_period_s = 1.0

[[models]]
name = "oa"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
timeout_s = 0.6
max_retries = 0
{key_line}

[[models]]
name = "an"
provider = "anthropic"
api_base = "{fake.url}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
timeout_s = 0.6
max_retries = 0
{key_line}

[[models]]
name = "oa-retry"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_retries = 2
retry_backoff_s = 0.01
{key_line}

[[models]]
name = "an-retry"
provider = "anthropic"
api_base = "{fake.url}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_retries = 2
retry_backoff_s = 0.01
{key_line}

[[models]]
name = "oa-down"
provider = "openai"
api_base = "http://127.0.0.1:{_closed_port()}/v1"
context_length = 128000
max_retries = 1
retry_backoff_s = 0.01
{key_line}
"""


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    config = load_toml_config(tmp_path_factory.mktemp("faults"), _models_toml(fake))
    async with running_worker(config) as worker:
        yield worker


@pytest.fixture
async def client(fake: FakeUpstream, worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    fake.reset_records()
    async with ModelWorkerClient(worker.address, timeout=10) as client:
        yield client
        # Whatever the test did, the worker is healthy afterwards: nothing leaked, calls succeed.
        fake.reset_records()
        for served in worker.models:
            assert (served.admission.in_flight, served.admission.queued) == (0, 0), (
                served.metadata.model
            )
        for model in ("oa", "an", "oa-retry", "an-retry"):
            assert (await client.generate(model, "Hi")).text == "Hello, world!"
            assert "".join([c.text async for c in client.stream(model, "Hi")]) == "Hello, world!"
        async with grpc.aio.insecure_channel(worker.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING


async def call(
    client: ModelWorkerClient, model: str, kind: str, **kwargs: Any
) -> tuple[list[str], ModelwireCallError | None]:
    """Texts received and the error that ended the call (None when it succeeded)."""
    texts: list[str] = []
    try:
        if kind == "unary":
            texts.append((await client.generate(model, "Hi", **kwargs)).text)
        else:
            async for chunk in client.stream(model, "Hi", **kwargs):
                texts.append(chunk.text)
    except ModelwireCallError as error:
        return texts, error
    return texts, None


def error_reply(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> Handler:
    """An error response in the wire format of the request's path."""

    async def reply(exchange: Exchange, respond: Responder) -> None:
        if is_anthropic(exchange):
            body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        await respond.json(status, body, headers)

    return reply


async def reset_before_first_token(exchange: Exchange, respond: Responder) -> None:
    await respond.reset()


# --- HTTP statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("model", WIRES)
@pytest.mark.parametrize(
    ("status", "error_type", "code", "in_message"),
    [
        (
            400,
            "invalid_request_error",
            grpc.StatusCode.INVALID_ARGUMENT,
            "'temperature' is out of range",
        ),
        (
            401,
            "authentication_error",
            grpc.StatusCode.FAILED_PRECONDITION,
            "upstream rejected the worker's credentials",
        ),
        (
            403,
            "permission_error",
            grpc.StatusCode.FAILED_PRECONDITION,
            "upstream rejected the worker's credentials",
        ),
        (404, "not_found_error", grpc.StatusCode.NOT_FOUND, "has no model"),
        (500, "api_error", grpc.StatusCode.UNAVAILABLE, "HTTP 500"),
        (503, "overloaded_error", grpc.StatusCode.UNAVAILABLE, "HTTP 503"),
    ],
)
async def test_http_status_maps_to_grpc_status(
    client: ModelWorkerClient,
    fake: FakeUpstream,
    model: str,
    kind: str,
    status: int,
    error_type: str,
    code: grpc.StatusCode,
    in_message: str,
) -> None:
    fake.script(error_reply(status, error_type, "'temperature' is out of range"))
    texts, error = await call(client, model, kind)

    assert error is not None and error.code == code, error
    assert in_message in error.message
    assert len(fake.exchanges) == 1


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("model", WIRES)
async def test_429_is_resource_exhausted_with_retry_info_from_retry_after(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, kind: str
) -> None:
    fake.script(error_reply(429, "rate_limit_error", "Rate limit reached", {"Retry-After": "7"}))
    _, error = await call(client, model, kind)

    assert error is not None and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retry_after_s == 7.0
    assert "Rate limit reached" in error.message


async def test_429_with_a_long_retry_after_is_passed_on_without_retrying(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    fake.script(error_reply(429, "rate_limit_error", "slow down", {"Retry-After": "30"}))
    _, error = await call(client, "oa-retry", "stream")

    assert (
        error is not None
        and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and error.retry_after_s == 30.0
    )
    assert len(fake.exchanges) == 1


# --- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("model", ["oa-retry", "an-retry"])
@pytest.mark.parametrize(
    "first",
    [
        error_reply(500, "api_error", "boom"),
        error_reply(529, "overloaded_error", "Overloaded"),
        error_reply(429, "rate_limit_error", "wait", {"retry-after-ms": "20"}),
        reset_before_first_token,
    ],
    ids=["500", "529", "429-retry-after-ms", "reset-before-first-byte"],
)
async def test_retryable_failure_before_the_first_token_is_retried(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, kind: str, first: Handler
) -> None:
    fake.script(first)
    texts, error = await call(client, model, kind)

    assert error is None
    assert "".join(texts) == "Hello, world!"
    assert len(fake.exchanges) == 2


@pytest.mark.parametrize("model", ["oa-retry", "an-retry"])
async def test_retries_are_bounded_by_max_retries(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    fake.script(*[error_reply(502, "api_error", "bad gateway")] * 3)
    _, error = await call(client, model, "stream")

    assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
    assert len(fake.exchanges) == 3  # the first try and max_retries = 2


@pytest.mark.parametrize("model", ["oa-retry", "an-retry"])
async def test_non_retryable_failures_are_not_retried(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    fake.script(
        error_reply(401, "authentication_error", "bad key"),
        error_reply(400, "invalid_request_error", "bad"),
    )
    _, unauthorised = await call(client, model, "stream")
    _, rejected = await call(client, model, "unary")

    assert unauthorised is not None and unauthorised.code == grpc.StatusCode.FAILED_PRECONDITION
    assert rejected is not None and rejected.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(fake.exchanges) == 2


@pytest.mark.parametrize("model", ["oa-retry", "an-retry"])
async def test_reset_after_tokens_ends_the_stream_without_repeating_them(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    async def reset_mid_stream(exchange: Exchange, respond: Responder) -> None:
        await stream_prologue(exchange, respond)
        await send_first_token(exchange, respond)
        await first_token_seen.wait()
        await respond.reset()

    first_token_seen = asyncio.Event()
    fake.script(reset_mid_stream)
    texts: list[str] = []
    with pytest.raises(ModelwireCallError) as caught:
        async for chunk in client.stream(model, "Hi"):
            texts.append(chunk.text)
            first_token_seen.set()

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert texts == ["Hello"]
    assert len(fake.exchanges) == 1


async def test_connection_refused_is_unavailable(client: ModelWorkerClient) -> None:
    _, error = await call(client, "oa-down", "stream")

    assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot connect" in error.message


# --- malformed streams ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", WIRES)
async def test_malformed_sse_is_unavailable(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    async def malformed(exchange: Exchange, respond: Responder) -> None:
        await stream_prologue(exchange, respond)
        await respond.raw(b'data: {"choices": [{"delta": {"content": "Hel\n\n')
        await respond.end()

    fake.script(malformed)
    _, error = await call(client, model, "stream")

    assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
    assert "malformed event stream" in error.message


@pytest.mark.parametrize("model", WIRES)
async def test_stream_cut_before_its_end_is_unavailable(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    async def cut(exchange: Exchange, respond: Responder) -> None:
        await stream_prologue(exchange, respond)
        await send_first_token(exchange, respond)
        await respond.end()

    fake.script(cut)
    texts, error = await call(client, model, "stream")

    assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
    assert texts == ["Hello"]


# --- deadlines, timeouts and cancellation ---------------------------------------------------------


async def hang_before_first_byte(exchange: Exchange, respond: Responder) -> None:
    await respond.hang()


async def hang_after_first_token(exchange: Exchange, respond: Responder) -> None:
    await stream_prologue(exchange, respond)
    await send_first_token(exchange, respond)
    await respond.hang()


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("model", WIRES)
async def test_caller_deadline_closes_an_upstream_that_never_answers(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, kind: str
) -> None:
    fake.script(hang_before_first_byte)
    started = time.monotonic()
    _, error = await call(client, model, kind, timeout=0.3)
    [exchange] = fake.exchanges
    closed_at = await exchange.wait_client_closed(2.0)

    assert error is not None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    print(
        f"\n{model} {kind}: upstream closed {1000 * (closed_at - started - 0.3):.1f} ms after the "
        "caller's deadline"
    )
    assert closed_at - started < 0.3 + 0.1


@pytest.mark.parametrize("model", WIRES)
async def test_timeout_s_bounds_a_unary_call_without_a_deadline(
    client: ModelWorkerClient, worker: Worker, fake: FakeUpstream, model: str
) -> None:
    fake.script(hang_before_first_byte)
    started = time.monotonic()
    async with ModelWorkerClient(worker.address, timeout=None) as no_deadline:
        _, error = await call(no_deadline, model, "unary")
    elapsed = time.monotonic() - started

    assert error is not None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timeout_s=0.6" in error.message
    assert 0.6 <= elapsed < 2.0
    await fake.exchanges[0].wait_client_closed(1.0)


@pytest.mark.parametrize("model", WIRES)
async def test_stream_that_hangs_between_chunks_times_out(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    fake.script(hang_after_first_token)
    texts, error = await call(client, model, "stream")

    # After content a stream never moves on: the caller learns the answer broke, and how far.
    assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE
    assert "after 1 delta of its answer had been passed on" in error.message
    assert "timeout_s=0.6" in error.message
    assert texts == ["Hello"]
    await fake.exchanges[0].wait_client_closed(1.0)


@pytest.mark.parametrize("model", WIRES)
async def test_cancelling_a_stream_closes_the_upstream_request_within_100ms(
    client: ModelWorkerClient, fake: FakeUpstream, model: str
) -> None:
    fake.script(hang_after_first_token)
    stream = client.stream(model, "Hi")
    first = await anext(stream)
    assert first.text == "Hello"
    [exchange] = fake.exchanges
    assert not exchange.client_closed.is_set()

    cancelled_at = time.monotonic()
    await stream.aclose()  # the client's stream cancels the gRPC call
    closed_at = await exchange.wait_client_closed(2.0)

    print(
        f"\n{model}: upstream closed {1000 * (closed_at - cancelled_at):.1f} ms after the gRPC "
        "cancel"
    )
    assert closed_at - cancelled_at < 0.1


# --- secrets --------------------------------------------------------------------------------------


async def test_api_key_never_appears_in_logs_or_errors(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "modelwire", "grpc"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    os.environ[SECRET_ENV] = SECRET
    fake.reset_records()
    messages: list[str] = []
    try:
        config = load_toml_config(
            tmp_path_factory.mktemp("secrets"), _models_toml(fake, f'api_key_env = "{SECRET_ENV}"')
        )
        async with (
            running_worker(config) as worker,
            ModelWorkerClient(worker.address, timeout=10) as client,
        ):
            messages += [repr(served.client) for served in worker.models]
            for model in ("oa", "an"):
                fake.script(
                    error_reply(
                        401, "authentication_error", f"Incorrect API key provided: {SECRET}"
                    ),
                    error_reply(
                        400, "invalid_request_error", f"key {SECRET} cannot use this model"
                    ),
                    error_reply(500, "api_error", f"internal error for Bearer {SECRET}"),
                    reset_before_first_token,
                    hang_after_first_token,
                )
                for kind in ("unary", "stream", "unary", "stream", "stream", "unary", "stream"):
                    _, error = await call(client, model, kind)
                    messages.append(str(error))
            for model in ("oa-retry", "an-retry"):
                fake.script(
                    error_reply(500, "api_error", f"internal error for Bearer {SECRET}"),
                    reset_before_first_token,
                )
                texts, error = await call(client, model, "stream")
                assert error is None and "".join(texts) == "Hello, world!"
            for kind in ("unary", "stream"):
                _, error = await call(client, "oa-down", kind)
                messages.append(str(error))
    finally:
        os.environ.pop(SECRET_ENV, None)
        for name in ("aiohttp", "modelwire", "grpc"):
            logging.getLogger(name).setLevel(logging.NOTSET)

    # The key did go upstream, in each provider's own header ...
    sent = [
        exchange.headers.get("authorization", exchange.headers.get("x-api-key", ""))
        for exchange in fake.exchanges
    ]
    assert f"Bearer {SECRET}" in sent and SECRET in sent
    # ... and nowhere else: not in any log record (message, arguments, traceback) nor any error.
    assert any(record.name.startswith("modelwire.providers") for record in caplog.records), (
        "the providers' logs were captured"
    )
    assert any("credentials" in message for message in messages)
    assert any("[redacted]" in message for message in messages)
    logged = caplog.text + "\n".join(repr(record.args) for record in caplog.records)
    for text in (logged, "\n".join(messages)):
        assert SECRET not in text
        assert "Bearer sk-" not in text


# --- the shared pieces, unit by unit --------------------------------------------------------------


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_sse_parser_follows_the_event_stream_rules() -> None:
    from modelwire.providers.http.sse import SSEEvent, iter_sse

    events = [
        event
        async for event in iter_sse(
            _lines(
                ": a comment",
                "event: message_start",
                'data: {"a":',
                "data: 1}",
                "id: 7",
                "retry: 100",
                "",
                "",
                "data:no-space",
                "",
                "event: ping",
                "",
                "data: cut off at the end",
            )
        )
    ]

    assert events == [SSEEvent("message_start", '{"a":\n1}'), SSEEvent("message", "no-space")]


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
async def test_event_stream_lines_split_by_every_ending_whatever_the_chunks(size: int) -> None:
    """\r\n, \r and \n all end a line (the SSE rules), also when a chunk boundary splits \r\n or
    a UTF-8 character; the last line without an ending still arrives."""
    from modelwire.providers.http.sse import iter_lines

    stream = "data: a\r\ndata: b\rdata: ü€\n\r\n\ndata: tail".encode()
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    lines = [line async for line in iter_lines(_chunks(*chunks))]
    assert lines == ["data: a", "data: b", "data: ü€", "", "", "data: tail"]


async def test_an_endless_event_stream_line_is_unavailable_not_memory() -> None:
    from modelwire.core import errors
    from modelwire.providers.http import sse

    mebibytes = sse.MAX_UPSTREAM_READ // (1024 * 1024)
    endless = (b"x" * (1024 * 1024) for _ in range(mebibytes + 2))
    with pytest.raises(errors.UpstreamUnavailable, match="line longer than"):
        async for _ in sse.iter_lines(_chunks(*endless)):
            pass


def test_the_proxy_comes_from_the_environment_once_and_no_proxy_exempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelwire.providers.http.client import _proxy_for

    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    assert _proxy_for("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    assert _proxy_for("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert _proxy_for("http://api.openai.com/v1") is None  # HTTPS_PROXY is for https only
    assert _proxy_for("https://llm.corp.example/v1") is None


def test_retry_after_parsing() -> None:
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from modelwire.providers.http.errors import parse_retry_after

    in_a_minute = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert 55 < (parse_retry_after({"Retry-After": in_a_minute}) or 0) <= 60
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_status_mapping_and_retry_policy() -> None:
    from modelwire.core import errors
    from modelwire.providers.http.errors import error_for_status
    from modelwire.providers.http.options import HttpParams
    from modelwire.providers.http.retry import RetryPolicy

    upstream = HttpParams("openai", "https://api.example", None, None, "gpt", 60.0, 0, 0.5, {})
    kinds = {
        status: type(error_for_status(status, "m", None, upstream))
        for status in (400, 401, 402, 403, 404, 408, 413, 422, 429, 500, 529)
    }
    assert kinds == {
        400: errors.UpstreamRejected,
        401: errors.UpstreamAuthFailed,
        402: errors.UpstreamAccountProblem,
        403: errors.UpstreamAuthFailed,
        404: errors.UpstreamModelNotFound,
        408: errors.UpstreamUnavailable,
        413: errors.UpstreamRejected,
        422: errors.UpstreamRejected,
        429: errors.UpstreamRateLimited,
        500: errors.UpstreamUnavailable,
        529: errors.UpstreamUnavailable,
    }
    policy = RetryPolicy(max_retries=2, backoff_s=0.5)
    unavailable = errors.UpstreamUnavailable("x")
    assert 0.25 <= (policy.wait_before_retry(0, unavailable) or 0) <= 0.5
    assert 0.5 <= (policy.wait_before_retry(1, unavailable) or 0) <= 1.0
    assert policy.wait_before_retry(2, unavailable) is None
    assert policy.wait_before_retry(0, errors.Overloaded("x", 3.0)) == 3.0
    assert policy.wait_before_retry(0, errors.Overloaded("x", 9.0)) is None
    assert policy.wait_before_retry(0, errors.DeadlineExceeded("x")) is None
    assert policy.wait_before_retry(0, errors.UpstreamRejected("x")) is None


def test_error_messages_come_from_the_providers_body() -> None:
    from modelwire.providers.http.errors import message_from_body
    from modelwire.providers.http.options import Secret

    secret = Secret("sk-abc")
    shown = lambda body: message_from_body(body, secret.redact)  # noqa: E731
    assert shown(b'{"error": {"message": "bad temperature", "type": "x"}}') == "bad temperature"
    assert shown(b'{"type": "error", "error": {"type": "x", "message": "claude"}}') == "claude"
    assert shown(b'{"detail": [{"loc": ["body"], "msg": "field required"}]}').startswith('[{"loc"')
    assert shown(b"<html>502 Bad Gateway</html>") == "<html>502 Bad Gateway</html>"
    assert shown(b'{"error": {"message": "key sk-abc is wrong"}}') == "key [redacted] is wrong"
    assert secret.redact("key sk-abc is wrong") == "key [redacted] is wrong"
    assert "sk-abc" not in repr(secret) and "sk-abc" not in str(secret)
