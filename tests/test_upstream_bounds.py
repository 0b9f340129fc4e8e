"""An upstream's answer is bounded and its malformations are the upstream's fault (issue 22, items
10 and 11): JSON nested too deeply for the parser (a unary body, a stream event, an error body)
is UNAVAILABLE, never INTERNAL; a unary body larger than MAX_UPSTREAM_READ is refused as soon as
its Content-Length or its bytes say so, without reading on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from conftest import running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    is_anthropic,
    load_toml_config,
    stream_prologue,
)
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.providers.http import client as http_client
from modelwire.providers.http import errors as http_errors
from modelwire.providers.http import sse as http_sse

# Deeper than the interpreter's recursion limit (1000 by default): json.loads raises RecursionError.
DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"error": ' + DEEP + "}"


def _toml(fake: FakeUpstream) -> str:
    return f"""
[server]
grace_period_s = 1.0

[[models]]
name = "oa"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
timeout_s = 5.0
max_retries = 0

[[models]]
name = "an"
provider = "anthropic"
api_base = "{fake.url}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
timeout_s = 5.0
max_retries = 0
"""


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    config = load_toml_config(tmp_path_factory.mktemp("bounds"), _toml(fake))
    async with running_worker(config) as worker:
        yield worker


@pytest.fixture
async def client(fake: FakeUpstream, worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    fake.reset_records()
    async with ModelWorkerClient(worker.address, timeout=10) as client:
        yield client
        # The worker serves on: a bad answer costs its call only.
        fake.reset_records()
        assert (await client.generate("oa", "Hi")).text == "Hello, world!"
        for served in worker.models:
            assert (served.admission.in_flight, served.admission.queued) == (0, 0)


async def _error(client: ModelWorkerClient, model: str, kind: str) -> ModelwireCallError:
    try:
        if kind == "unary":
            await client.generate(model, "Hi")
        else:
            async for _ in client.stream(model, "Hi"):
                pass
    except ModelwireCallError as error:
        return error
    raise AssertionError("the call succeeded")


async def _raw(respond: Responder, status: int, body: str) -> None:
    data = body.encode()
    await respond.head(
        status, {"Content-Length": str(len(data))}, chunked=False, content_type="application/json"
    )
    await respond.raw(data)


# --- item 10: deeply nested JSON ---------------------------------------------------------------


async def deep_unary_body(exchange: Exchange, respond: Responder) -> None:
    await _raw(respond, 200, DEEP)


async def deep_stream_event(exchange: Exchange, respond: Responder) -> None:
    await stream_prologue(exchange, respond)
    await respond.event(DEEP, event="content_block_delta" if is_anthropic(exchange) else None)
    await respond.end()


async def deep_error_body(exchange: Exchange, respond: Responder) -> None:
    await _raw(respond, 400, DEEP_OBJECT)


async def deep_json_instead_of_events(exchange: Exchange, respond: Responder) -> None:
    await _raw(respond, 200, DEEP_OBJECT)


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEEP_ANSWERS = {
    "a unary body": ("unary", deep_unary_body, UNAVAILABLE, "is not JSON (nested deeper"),
    "a stream event": ("stream", deep_stream_event, UNAVAILABLE, "malformed event stream"),
    # Not JSON, so the body's text is the message; the status is the 400's.
    "an error body": ("unary", deep_error_body, grpc.StatusCode.INVALID_ARGUMENT, "HTTP 400"),
    "JSON instead of events": (
        "stream",
        deep_json_instead_of_events,
        UNAVAILABLE,
        "instead of an event stream",
    ),
}


@pytest.mark.parametrize("answer", sorted(DEEP_ANSWERS))
@pytest.mark.parametrize("model", ["oa", "an"])
async def test_deeply_nested_upstream_json_is_unavailable_not_internal(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, answer: str
) -> None:
    kind, handler, code, said = DEEP_ANSWERS[answer]
    fake.script(handler)
    error = await _error(client, model, kind)
    assert error.code == code, error
    assert said in error.message, error.message


def test_a_deeply_nested_error_detail_is_described_not_internal() -> None:
    """A FastAPI `detail` that parsed but nests too deeply to serialise again."""
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    shown = http_errors.message_from_payload({"detail": nested}, lambda text: text)
    assert shown == "(an error detail nested too deeply to show)"


# --- item 11: a unary body's size is bounded ---------------------------------------------------

LIMIT = 64 * 1024  # the bound these tests set, instead of sending 16 MiB


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "MAX_UPSTREAM_READ", LIMIT)  # a unary body
    monkeypatch.setattr(http_sse, "MAX_UPSTREAM_READ", LIMIT)  # an event stream line


async def declared_too_long(exchange: Exchange, respond: Responder) -> None:
    """Declares a body past the bound, then sends nothing: only refusing at once ends the call."""
    await respond.head(
        200, {"Content-Length": str(LIMIT + 1)}, chunked=False, content_type="application/json"
    )
    await respond.hang()


async def endless_body(exchange: Exchange, respond: Responder) -> None:
    """A chunked body that goes on until the client leaves (bounded at 64 MiB for hygiene)."""
    await respond.head(200, content_type="application/json")
    piece = b"[" + b"0," * 8191 + b"0"
    for _ in range(64 * 1024 * 1024 // len(piece)):
        if exchange.client_closed.is_set():
            return
        await respond.raw(piece)


@pytest.mark.usefixtures("small_bound")
@pytest.mark.parametrize(
    "handler", [declared_too_long, endless_body], ids=["content-length", "chunked"]
)
@pytest.mark.parametrize("model", ["oa", "an"])
async def test_a_unary_body_past_the_bound_is_unavailable_naming_it(
    client: ModelWorkerClient, fake: FakeUpstream, model: str, handler: Any
) -> None:
    fake.script(handler)
    error = await _error(client, model, "unary")
    assert error.code == grpc.StatusCode.UNAVAILABLE, error
    assert f"larger than {LIMIT} bytes" in error.message, error.message
    await fake.exchanges[0].wait_client_closed(2.0)


class _Content:
    """A response body handed out in 16 KiB chunks, counting what was taken."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks
        self.taken = 0

    async def iter_any(self) -> AsyncIterator[bytes]:
        while self.left:
            self.left -= 1
            self.taken += 1
            yield b"x" * 16384
            await asyncio.sleep(0)


class _Response:
    def __init__(self, chunks: int, content_length: int | None = None) -> None:
        self.content = _Content(chunks)
        self.content_length = content_length
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.usefixtures("small_bound")
async def test_reading_stops_one_chunk_past_the_bound() -> None:
    endless = _Response(chunks=10_000)
    refused = http_client.errors.UpstreamUnavailable
    with pytest.raises(refused, match=f"larger than {LIMIT} bytes"):
        await http_client._read_answer(endless)  # type: ignore[arg-type]
    assert endless.content.taken == LIMIT // 16384 + 1 and endless.closed

    declared = _Response(chunks=10_000, content_length=LIMIT + 1)
    with pytest.raises(refused):
        await http_client._read_answer(declared)  # type: ignore[arg-type]
    assert declared.content.taken == 0 and declared.closed

    exact = _Response(chunks=LIMIT // 16384)
    assert len(await http_client._read_answer(exact)) == LIMIT  # type: ignore[arg-type]
