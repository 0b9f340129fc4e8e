"""The `anthropic` provider against the fake upstream speaking the Messages API."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from conftest import running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    anthropic_events,
    anthropic_message,
    load_toml_config,
)
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.core.settings import ConfigError
from modelwire.providers.anthropic.client import AnthropicClient
from modelwire.v1 import worker_pb2 as pb

KEY_ENV = "MODELWIRE_TEST_ANTHROPIC_KEY"
KEY = "sk-ant-test-wire-9876"
CHAT = [
    ("system", "You answer briefly."),
    ("user", "Name three colours."),
    ("assistant", "Red, green, blue."),
    ("system", "Use British spelling."),
    ("user", "Two more?"),
    ("user", "Quickly."),
]


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    os.environ[KEY_ENV] = KEY
    config = load_toml_config(
        tmp_path_factory.mktemp("anthropic"),
        f"""
[server]
grace_period_s = 1.0

[[models]]
name = "claude"
provider = "anthropic"
api_base = "{fake.url}"
api_key_env = "{KEY_ENV}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 8192
max_retries = 0
""",
    )
    try:
        async with running_worker(config) as worker:
            yield worker
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture
async def client(fake: FakeUpstream, worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    fake.reset_records()
    async with ModelWorkerClient(worker.address, timeout=10) as client:
        yield client


async def test_request_splits_out_the_system_prompt(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    [
        chunk
        async for chunk in client.stream(
            "claude", CHAT, temperature=0.25, top_p=0.5, max_new_tokens=64, stop=["END"]
        )
    ]
    [exchange] = fake.exchanges
    body = exchange.json()

    assert exchange.path == "/v1/messages"
    assert exchange.headers["x-api-key"] == KEY
    assert exchange.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in exchange.headers
    assert body["model"] == "claude-sonnet-4-5"
    assert body["system"] == "You answer briefly.\n\nUse British spelling."
    assert body["messages"] == [
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "Two more?\n\nQuickly."},
    ]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop_sequences"]) == (
        64,
        0.25,
        0.5,
        ["END"],
    )
    assert body["stream"] is True


async def test_max_tokens_defaults_to_max_output_tokens(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    await client.generate("claude", "Hi")
    body = fake.exchanges[0].json()

    assert body["max_tokens"] == 8192 and body["stream"] is False
    assert "system" not in body


async def test_stream_events_become_deltas_with_usage_and_finish(client: ModelWorkerClient) -> None:
    chunks = [chunk async for chunk in client.stream("claude", "Hi")]

    # The first delta alone, the rest as they were waiting behind it (coalesced).
    assert chunks[0].text == "Hello" and "".join(c.text for c in chunks) == "Hello, world!"
    last = chunks[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        9,
        4,
        13,
    )
    assert not last.usage.estimated
    assert all(chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED for chunk in chunks[:-1])


async def test_unary_message(client: ModelWorkerClient, fake: FakeUpstream) -> None:
    async def long_answer(exchange: Exchange, respond: Responder) -> None:
        message = anthropic_message(
            "Cut sh", input_tokens=5, output_tokens=2, stop_reason="max_tokens"
        )
        message["usage"]["cache_read_input_tokens"] = 100
        message["content"].insert(0, {"type": "thinking", "thinking": "Hmm.", "signature": "x"})
        await respond.json(200, message)

    fake.script(long_answer)
    output = await client.generate("claude", "Hi")

    assert output.text == "Cut sh" and output.reasoning == "Hmm."
    assert output.finish_reason == pb.FINISH_REASON_LENGTH
    assert (output.usage.prompt_tokens, output.usage.completion_tokens) == (105, 2)
    assert not output.usage.estimated


async def test_thinking_deltas_map_to_reasoning_and_stop_reason_to_finish(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    async def thinking(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        for name, payload in anthropic_events(
            ["Blue."],
            input_tokens=3,
            output_tokens=20,
            stop_reason="max_tokens",
            thinking=("Let me ", "think."),
        ):
            await respond.event(payload, event=name)
        await respond.end()

    fake.script(thinking)
    chunks = [chunk async for chunk in client.stream("claude", "Hi")]

    assert [c.reasoning for c in chunks if c.HasField("reasoning")] == ["Let me ", "think."]
    assert "".join(c.text for c in chunks) == "Blue."
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 20


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("overloaded_error", grpc.StatusCode.UNAVAILABLE),
        ("rate_limit_error", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT),
        ("api_error", grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_error_event_in_the_stream(
    client: ModelWorkerClient, fake: FakeUpstream, error_type: str, code: grpc.StatusCode
) -> None:
    async def error_event(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        for name, payload in anthropic_events([])[:2]:
            await respond.event(payload, event=name)
        await respond.event(
            {
                "type": "error",
                "error": {"type": error_type, "message": f"upstream says {error_type}"},
            },
            event="error",
        )
        await respond.end()

    fake.script(error_event)
    with pytest.raises(ModelwireCallError) as caught:
        [chunk async for chunk in client.stream("claude", "Hi")]

    assert caught.value.code == code
    assert f"upstream says {error_type}" in caught.value.message


async def test_529_overloaded_is_unavailable(client: ModelWorkerClient, fake: FakeUpstream) -> None:
    async def overloaded(exchange: Exchange, respond: Responder) -> None:
        await respond.json(
            529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )

    fake.script(overloaded)
    with pytest.raises(ModelwireCallError) as caught:
        await client.generate("claude", "Hi")

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "Overloaded" in caught.value.message


def test_defaults_and_unknown_keys(tmp_path: Path) -> None:
    config = load_toml_config(
        tmp_path,
        '[[models]]\nname = "claude-haiku-4-5"\nprovider = "anthropic"\ncontext_length = 200000\n',
    )
    with ThreadPoolExecutor(1) as executor:
        client = AnthropicClient.new_client(config.models[0], executor)
        [metadata] = client.models()
        assert metadata.max_output_tokens == 4096 and metadata.provider == "anthropic"
        assert "api.anthropic.com" in repr(client)

        bad = load_toml_config(
            tmp_path,
            '[[models]]\nname = "c"\nprovider = "anthropic"\ncontext_length = 1\napi_type = '
            '"azure"\n',
        )
        with pytest.raises(ConfigError, match=r"models\[0\]\.api_type: is not a known key"):
            AnthropicClient.new_client(bad.models[0], executor)
