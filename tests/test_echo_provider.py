"""The `echo` provider over a real worker: chunks, usage, finish_reason, max_new_tokens, the pause
between chunks (checked against a lower bound, never an upper timing), cancellation, CountToken and
its configuration errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from conftest import running_worker
from fake_upstream import load_toml_config
from modelwire.app.server import Worker
from modelwire.core.settings import ConfigError
from modelwire.tokenize.tiktoken_counter import count_tokens
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

INTERVAL_S = 0.2

CONFIG = f"""
[server]
grace_period_s = 1.0

[[models]]
name = "gpt-4o"
provider = "echo"
chunks = 5
chunk_text = "hello "

[[models]]
name = "echo-default"
provider = "echo"

[[models]]
name = "echo-slow"
provider = "echo"
chunks = 3
chunk_interval_s = {INTERVAL_S}
"""


@pytest.fixture(scope="module")
async def worker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Worker]:
    async with running_worker(load_toml_config(tmp_path_factory.mktemp("echo"), CONFIG)) as worker:
        yield worker


@pytest.fixture
async def stub(worker: Worker) -> AsyncIterator[pb_grpc.ModelWorkerStub]:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        yield pb_grpc.ModelWorkerStub(channel)


def request(
    model: str, text: str = "Say hello.", max_new_tokens: int | None = None
) -> pb.ModelRequest:
    sampling = (
        pb.SamplingParams(max_new_tokens=max_new_tokens)
        if max_new_tokens is not None
        else pb.SamplingParams()
    )
    return pb.ModelRequest(
        model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=text)], sampling=sampling
    )


def prompt_tokens(model: str, text: str) -> int:
    from modelwire.core.types import ModelMessage, Role

    return count_tokens(model, [ModelMessage(Role.USER, text)]).count


async def test_stream_sends_the_configured_chunks_then_finish_and_usage(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    chunks = [chunk async for chunk in stub.GenerateStream(request("gpt-4o"), timeout=10)]
    # The echo's deltas are all there at once: the first goes alone, the rest waiting behind it
    # are coalesced (core/coalesce.py), finish and usage on the last message.
    assert chunks[0].text == "hello " and 2 <= len(chunks) < 6
    assert "".join(chunk.text for chunk in chunks) == "hello " * 5
    assert all(chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED for chunk in chunks[:-1])
    assert all(not chunk.HasField("usage") for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert last.model == "gpt-4o"
    assert last.usage.completion_tokens == 5 * count_tokens("gpt-4o", "hello ").count
    assert last.usage.prompt_tokens == prompt_tokens("gpt-4o", "Say hello.")
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert not last.usage.estimated


async def test_unary_returns_the_whole_text_with_usage(stub: pb_grpc.ModelWorkerStub) -> None:
    output = await stub.Generate(request("gpt-4o"), timeout=10)
    assert output.text == "hello " * 5
    assert output.finish_reason == pb.FINISH_REASON_STOP
    assert output.usage.completion_tokens == 5 * count_tokens("gpt-4o", "hello ").count
    assert output.usage.prompt_tokens == prompt_tokens("gpt-4o", "Say hello.")


async def test_defaults_are_one_chunk_of_hello(stub: pb_grpc.ModelWorkerStub) -> None:
    chunks = [chunk async for chunk in stub.GenerateStream(request("echo-default"), timeout=10)]
    assert [chunk.text for chunk in chunks] == ["hello", ""]
    models = {
        model.model: model
        for model in (await stub.ListModels(pb.ListModelsRequest(), timeout=10)).models
    }
    assert models["echo-default"].provider == "echo"
    assert models["echo-default"].context_length == 131072


async def test_max_new_tokens_cuts_the_reply_with_finish_length(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    per_chunk = count_tokens("gpt-4o", "hello ").count
    budget = 2 * per_chunk
    chunks = [
        chunk
        async for chunk in stub.GenerateStream(request("gpt-4o", max_new_tokens=budget), timeout=10)
    ]
    assert "".join(chunk.text for chunk in chunks) == "hello " * 2
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == budget
    output = await stub.Generate(request("gpt-4o", max_new_tokens=budget), timeout=10)
    assert output.text == "hello " * 2 and output.finish_reason == pb.FINISH_REASON_LENGTH


async def test_chunk_interval_is_honoured_between_chunks(stub: pb_grpc.ModelWorkerStub) -> None:
    arrivals: list[float] = []
    texts: list[str] = []
    async for chunk in stub.GenerateStream(request("echo-slow"), timeout=10):
        arrivals.append(time.monotonic())
        texts.append(chunk.text)
    # The finish comes with the last delta (it was waiting behind it: coalesced).
    assert texts == ["hello", "hello", "hello"]
    gaps = [later - earlier for earlier, later in zip(arrivals[:2], arrivals[1:3], strict=True)]
    # A lower bound only: the pause is at least the interval (less a clock-granularity margin).
    assert all(gap >= INTERVAL_S * 0.9 for gap in gaps), gaps
    started = time.monotonic()
    output = await stub.Generate(request("echo-slow"), timeout=10)
    assert time.monotonic() - started >= 2 * INTERVAL_S * 0.9
    assert output.text == "hello" * 3


async def test_a_cancelled_slow_stream_ends_and_the_slot_is_freed(
    worker: Worker, stub: pb_grpc.ModelWorkerStub
) -> None:
    call = stub.GenerateStream(request("echo-slow"), timeout=10)
    first = await call.read()
    assert first.text == "hello"
    call.cancel()
    admission = next(
        served.admission for served in worker.models if served.metadata.model == "echo-slow"
    )
    for _ in range(200):
        if admission.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert admission.in_flight == 0


async def test_count_token_uses_the_models_tiktoken_encoding(stub: pb_grpc.ModelWorkerStub) -> None:
    short = "How many tokens is this?"
    long = "lorem ipsum dolor sit amet " * 2000  # counted on the thread pool
    for text in (short, long):
        response = await stub.CountToken(
            pb.CountTokenRequest(model="gpt-4o", prompt=text), timeout=10
        )
        assert response.count == count_tokens("gpt-4o", text).count
        assert response.tokenizer == "tiktoken:o200k_base"
        assert response.exact
    fallback = await stub.CountToken(
        pb.CountTokenRequest(model="echo-default", prompt=short), timeout=10
    )
    assert fallback.tokenizer == "tiktoken:cl100k_base" and not fallback.exact


def test_configuration_errors_name_the_key(tmp_path: Path) -> None:
    from modelwire.providers.echo import EchoClient

    for bad, key in (
        ("chunks = -1", "chunks"),
        ('chunk_interval_s = "1"', "chunk_interval_s"),
        ("chunk = 3", "chunk"),
    ):
        config = load_toml_config(tmp_path, f'[[models]]\nname = "e"\nprovider = "echo"\n{bad}\n')
        with pytest.raises(ConfigError, match=rf"models\[0\]\.{key}"):
            EchoClient.new_client(config.models[0], executor=None)  # type: ignore[arg-type]


async def test_a_unary_call_tokenizes_its_prompt_once_and_reports_the_same_count(
    stub: pb_grpc.ModelWorkerStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The context check and the usage count the same messages: the second reuses the first."""
    from modelwire.providers import echo

    counted: list[object] = []

    def counting(model: str, prompt: object) -> object:
        counted.append(prompt)
        return count_tokens(model, prompt)  # type: ignore[arg-type]

    monkeypatch.setattr(echo, "count_tokens", counting)
    first = await stub.Generate(request("gpt-4o", "Count me once."))
    second = await stub.Generate(request("gpt-4o", "Count me once."))
    assert len(counted) == 2  # once per call, not once per use
    assert (
        first.usage.prompt_tokens
        == second.usage.prompt_tokens
        > count_tokens("gpt-4o", "Count me once.").count
    )
