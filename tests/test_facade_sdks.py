"""The HTTP facades end to end with the official SDKs as clients: OpenAI's `openai` and Anthropic's
`anthropic`, against a worker started in-process with `[http] port = 0`, its remote models behind
the scripted fake upstream (fake_upstream.py) and the embedded gemma-3-270m.

Each API reaches a model behind the provider of its own kind and one of the other kind (Anthropic's
SDK → the `openai` provider, OpenAI's SDK → the `anthropic` provider). Asserted on what the SDKs
parse, on what the upstream received, on the worker's access lines, metrics and admission counters,
and on each SDK's own exception types; never on timing (a disconnect's delay is printed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from anthropic_wire import (
    MESSAGE_STOP,
    PING,
    message,
    message_delta,
    message_start,
    send_stream,
    text_block,
    text_events,
    thinking_events,
    tool_use_block,
    tool_use_events,
)
from anthropic_wire import usage as anthropic_usage
from conformance import PNG
from conftest import admission_reaches, hold_quota_clock, running_worker
from facade_clients import NO_OPENAI_KEY, Seen, anthropic_client, openai_client
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Handler,
    Responder,
    load_toml_config,
    send_first_token,
    stream_prologue,
)
from modelwire.app.config import embedded_default
from modelwire.app.server import Worker
from modelwire.core.settings import HttpConfig, ModelConfig
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.core.types import ModelMessage, Role
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter
from modelwire.providers.llama.client import LlamaCppClient
from openai_wire import (
    completion,
    embeddings,
    replied,
    streamed,
    text_chunks,
    tool_call_chunks,
    usage,
    usage_chunk,
    wire_call,
)

ALICE = "sk-alice-0123456789abcdef"  # tenant team-a, every model; a generous quota rule
BOB = "sk-bob-0123456789abcdef"  # may use "gpt" only
QUINN = "sk-quinn-0123456789abcdef"  # tenant team-q: one request a minute
RITA = "sk-rita-0123456789abcdef"  # tenant team-r: 100 requests a minute, 100,000 tokens
TOKENS = f"""
[[tokens]]
name = "alice"
token = "{ALICE}"
tenant = "team-a"

[[tokens]]
name = "bob"
token = "{BOB}"
models = ["gpt"]

[[tokens]]
name = "quinn"
token = "{QUINN}"
tenant = "team-q"

[[tokens]]
name = "rita"
token = "{RITA}"
tenant = "team-r"
"""
CAPABILITIES = '["chat", "streaming", "tools", "json_schema", "vision", "reasoning"]'
CONFIG = """
[server]
grace_period_s = 1.0

[http]
port = 0

[auth]
tokens_file = "{tokens}"

[[models]]
name = "gpt"
provider = "openai"
api_base = "{url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_output_tokens = 1000
max_retries = 0
capabilities = {capabilities}

[[models]]
name = "embed"
provider = "openai"
api_base = "{url}/v1"
upstream_model = "text-embedding-3-small"
context_length = 8191
max_retries = 0
capabilities = ["embeddings"]

[[models]]
name = "claude"
provider = "anthropic"
api_base = "{url}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 8192
max_retries = 0
capabilities = {capabilities}

[quota]
default_output_reservation = 100

[[quota.rules]]
tenant = "team-a"
requests_per_minute = 100000

[[quota.rules]]
tenant = "team-q"
requests_per_minute = 1

[[quota.rules]]
tenant = "team-r"
requests_per_minute = 100
tokens_per_minute = 100000
"""
# Anthropic signatures are base64: `+`, `/` and `=` must survive the round trip untouched.
SIGNATURE = (
    "EqQBCkYIBxgCKkDq+/2mZ3xvVQ0c9wYp1uOTe/FZ3ukDA1ZJ+Wq0Hh8XsbTm7p5wfuHNLhY3K0o9nZrZ2l/dxQ=="
)
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
OPENAI_WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": WEATHER_SCHEMA,
        "strict": True,
    },
}
ANTHROPIC_WEATHER: Any = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": WEATHER_SCHEMA,
}
PARIS: dict[str, object] = {"city": "Paris", "unit": "celsius"}
PARIS_ARGS = '{"city":"Paris","unit":"celsius"}'
PARIS_PIECES = ['{"city":', '"Paris",', '"unit":"cel', 'sius"}']
ROME_ARGS = '{"city":"Rome","unit":"celsius"}'
ROME_PIECES = ['{"city":"Ro', 'me","unit":', '"celsius"}']


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    directory = tmp_path_factory.mktemp("facade-sdks")
    tokens = directory / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    text = CONFIG.format(url=fake.url, tokens=tokens, capabilities=CAPABILITIES)
    async with running_worker(load_toml_config(directory, text)) as worker:
        yield worker


@pytest.fixture(autouse=True)
def fresh(fake: FakeUpstream) -> None:
    fake.reset_records()


def port(worker: Worker) -> int:
    assert worker.facade is not None, "[http] port is set: the worker has a facade"
    assert worker.facade.port != 0, "the facade reports the port it bound"
    return worker.facade.port


@pytest.fixture
async def oai(worker: Worker) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(port(worker), ALICE) as client:
        yield client


@pytest.fixture
async def claude(worker: Worker) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic_client(port(worker), ALICE) as client:
        yield client


def sent(fake: FakeUpstream, index: int = -1) -> dict[str, Any]:
    """The JSON body the upstream received (the last request by default)."""
    body: dict[str, Any] = fake.exchanges[index].json()
    return body


def anthropic_answer(payload: dict[str, Any], status: int = 200) -> Handler:
    async def handler(exchange: Exchange, respond: Responder) -> None:
        await respond.json(status, payload)

    return handler


def anthropic_stream(events: list[tuple[str, dict[str, Any]]]) -> Handler:
    async def handler(exchange: Exchange, respond: Responder) -> None:
        await send_stream(respond, events, chunk_bytes=61)

    return handler


def user(text: str) -> ChatCompletionMessageParam:
    return {"role": "user", "content": text}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == ACCESS_LOGGER
    ]


def calls_counted(worker: Worker, model: str, tenant: str, code: str = "OK") -> float:
    """Every call of `model` by `tenant` that ended with `code`, whatever its method label."""
    total = 0.0
    for metric in worker.metrics.registry.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name == "modelwire_requests_total"
                and labels.get("model") == model
                and labels.get("tenant") == tenant
                and labels.get("code") == code
            ):
                total += sample.value
    return total


# --- 1. OpenAI's SDK → the `openai` provider ------------------------------------------------------


async def test_openai_unary_chat(oai: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    fake.script(
        replied(completion({"content": "Bonjour !"}, "stop", usage(11, 4, cached=2))),
    )
    answer = await oai.chat.completions.create(
        model="gpt",
        messages=[{"role": "system", "content": "Be brief."}, user("Say hello in French.")],
        max_completion_tokens=50,
        temperature=0.5,
    )

    assert answer.object == "chat.completion" and answer.model == "gpt"
    [choice] = answer.choices
    assert (choice.message.role, choice.message.content) == ("assistant", "Bonjour !")
    assert choice.finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 4)
    assert answer.usage.total_tokens == 15
    body = sent(fake)
    assert fake.exchanges[-1].path == "/v1/chat/completions"
    assert body["model"] == "gpt-4o-mini" and body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello in French."},
    ]
    assert body["temperature"] == 0.5
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 50


async def test_openai_streamed_chat_with_usage(oai: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    fake.script(streamed(text_chunks(["Hel", "lo", ", world"]), usage_chunk(12, 3)))
    stream = await oai.chat.completions.create(
        model="gpt",
        messages=[user("Hi")],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks: list[ChatCompletionChunk] = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f is not None] == ["stop"]
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt" for c in chunks)
    assert len({c.id for c in chunks}) == 1, "every chunk of a completion has its id"
    # The usage comes last, on a chunk without choices, as include_usage asks.
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 3)
    assert all(c.usage is None for c in chunks[:-1])
    assert sent(fake)["stream"] is True


async def test_openai_stream_without_include_usage_has_no_usage_chunk(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(streamed(text_chunks(["Hi"]), usage_chunk(12, 1)))
    stream = await oai.chat.completions.create(model="gpt", messages=[user("Hi")], stream=True)
    chunks = [chunk async for chunk in stream]

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    assert all(c.usage is None and c.choices for c in chunks)


async def test_openai_stream_helper_final_completion(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(streamed(text_chunks(["A ", "short ", "answer."]), usage_chunk(9, 3)))
    async with oai.chat.completions.stream(
        model="gpt", messages=[user("Hi")], stream_options={"include_usage": True}
    ) as stream:
        final = await stream.get_final_completion()

    assert final.choices[0].message.content == "A short answer."
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == 3


async def test_openai_unary_tool_calls(oai: openai.AsyncOpenAI, fake: FakeUpstream) -> None:
    calls = [
        wire_call("call_p", "get_weather", PARIS_ARGS),
        wire_call("call_r", "get_weather", ROME_ARGS),
    ]
    fake.script(replied(completion({"content": None, "tool_calls": calls}, "tool_calls")))
    answer = await oai.chat.completions.create(
        model="gpt",
        messages=[user("Weather in Paris and Rome?")],
        tools=[OPENAI_WEATHER],
        tool_choice="auto",
    )

    [choice] = answer.choices
    assert choice.finish_reason == "tool_calls"
    got = choice.message.tool_calls or []
    assert [(c.id, c.type) for c in got] == [("call_p", "function"), ("call_r", "function")]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in got] == [  # type: ignore[union-attr]
        ("get_weather", PARIS),
        ("get_weather", {"city": "Rome", "unit": "celsius"}),
    ]
    body = sent(fake)
    assert body["tools"] == [OPENAI_WEATHER]
    assert body["tool_choice"] == "auto"


async def test_openai_streamed_tool_calls_concatenate_to_the_arguments(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(
        streamed(
            tool_call_chunks(
                [("call_p", "get_weather", PARIS_PIECES), ("call_r", "get_weather", ROME_PIECES)]
            ),
            usage_chunk(30, 20),
        )
    )
    stream = await oai.chat.completions.create(
        model="gpt",
        messages=[user("Weather in Paris and Rome?")],
        tools=[OPENAI_WEATHER],
        stream=True,
        stream_options={"include_usage": True},
    )
    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                if delta.id:
                    assert delta.index not in ids, "a call's id comes once"
                    ids[delta.index] = delta.id
                if delta.function is not None:
                    if delta.function.name:
                        names[delta.index] = delta.function.name
                    arguments[delta.index] = arguments.get(delta.index, "") + (
                        delta.function.arguments or ""
                    )

    assert ids == {0: "call_p", 1: "call_r"}
    assert names == {0: "get_weather", 1: "get_weather"}
    assert arguments == {0: PARIS_ARGS, 1: ROME_ARGS}
    assert finish == "tool_calls"


async def test_openai_stream_helper_assembles_tool_calls(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(streamed(tool_call_chunks([("call_p", "get_weather", PARIS_PIECES)])))
    done: list[str] = []
    async with oai.chat.completions.stream(
        model="gpt", messages=[user("Weather in Paris?")], tools=[OPENAI_WEATHER]
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append(event.arguments)
        final = await stream.get_final_completion()

    assert done == [PARIS_ARGS]
    [call] = final.choices[0].message.tool_calls or []
    assert call.id == "call_p" and call.function.name == "get_weather"
    assert call.function.parsed_arguments == PARIS
    assert final.choices[0].finish_reason == "tool_calls"


async def test_openai_two_turn_tool_conversation(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(replied(completion({"content": "21 °C in Paris."})))
    answer = await oai.chat.completions.create(
        model="gpt",
        messages=[
            user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_p",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": PARIS_ARGS},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_p", "content": '{"temperature": 21}'},
        ],
        tools=[OPENAI_WEATHER],
    )

    assert answer.choices[0].message.content == "21 °C in Paris."
    assert sent(fake)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [wire_call("call_p", "get_weather", PARIS_ARGS)],
        },
        {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call_p"},
    ]


class Weather(pydantic.BaseModel):
    city: str
    unit: str


async def test_openai_structured_output_reaches_the_upstream_and_parses(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(replied(completion({"content": PARIS_ARGS})))
    answer = await oai.chat.completions.parse(
        model="gpt", messages=[user("Weather in Paris, as JSON.")], response_format=Weather
    )

    assert answer.choices[0].message.parsed == Weather(city="Paris", unit="celsius")
    format_ = sent(fake)["response_format"]
    assert format_["type"] == "json_schema"
    assert format_["json_schema"]["name"] == "Weather"
    assert format_["json_schema"]["strict"] is True
    schema = format_["json_schema"]["schema"]
    assert schema["required"] == ["city", "unit"] and schema["additionalProperties"] is False


async def test_openai_json_schema_response_format_as_written(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(replied(completion({"content": PARIS_ARGS})))
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
    }
    await oai.chat.completions.create(
        model="gpt", messages=[user("Weather?")], response_format=response_format
    )

    assert sent(fake)["response_format"] == response_format


async def test_openai_image_part_reaches_the_upstream(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    await oai.chat.completions.create(
        model="gpt",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )

    assert sent(fake)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


VECTORS = [[0.5, -0.25, 1.0, 0.125], [0.0, 2.0, -1.5, 0.375]]  # exact in float32


@pytest.mark.parametrize("encoding", ["sdk default (base64)", "float"])
async def test_openai_embeddings(
    oai: openai.AsyncOpenAI, fake: FakeUpstream, encoding: str
) -> None:
    fake.script(replied(embeddings(VECTORS, prompt_tokens=6)))
    if encoding == "float":
        answer = await oai.embeddings.create(
            model="embed", input=["a cat", "a mat"], encoding_format="float"
        )
    else:
        answer = await oai.embeddings.create(model="embed", input=["a cat", "a mat"])

    assert [item.index for item in answer.data] == [0, 1]
    assert [item.embedding for item in answer.data] == VECTORS
    assert answer.model == "embed"
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (6, 6)
    assert fake.exchanges[-1].path == "/v1/embeddings"
    assert sent(fake)["input"] == ["a cat", "a mat"]


async def test_openai_models_list_and_retrieve(oai: openai.AsyncOpenAI, worker: Worker) -> None:
    page = await oai.models.list()
    assert sorted(model.id for model in page.data) == ["claude", "embed", "gpt"]
    assert all(model.object == "model" for model in page.data)

    model = await oai.models.retrieve("claude")
    assert model.id == "claude" and model.object == "model"

    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("no-such-model")
    # A token with an allow-list sees only its models, and may not retrieve the others.
    async with openai_client(port(worker), BOB) as bob:
        assert [model.id for model in (await bob.models.list()).data] == ["gpt"]
        with pytest.raises(openai.NotFoundError):
            await bob.models.retrieve("claude")


# --- 2. Anthropic's SDK, and the crossings --------------------------------------------------------


async def test_anthropic_unary_message(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    fake.script(anthropic_answer(message([text_block("Bonjour !")], counts=anthropic_usage(12, 5))))
    answer = await claude.messages.create(
        model="claude",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello in French."}],
        # This SDK's version has no `temperature` argument; the API still takes the field.
        extra_body={"temperature": 0.3},
    )

    assert answer.type == "message" and answer.role == "assistant" and answer.model == "claude"
    assert [(b.type, getattr(b, "text", None)) for b in answer.content] == [("text", "Bonjour !")]
    assert answer.stop_reason == "end_turn"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (12, 5)
    body = sent(fake)
    assert fake.exchanges[-1].path == "/v1/messages"
    assert body["model"] == "claude-sonnet-4-5"
    assert body["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert body["messages"] == [{"role": "user", "content": "Say hello in French."}]
    assert (body["max_tokens"], body["temperature"]) == (100, 0.3)


async def test_anthropic_streamed_message(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    fake.script(
        anthropic_stream(
            [
                message_start(anthropic_usage(21, 1)),
                *text_events(0, ["Hel", "lo, ", "world"]),
                PING,
                message_delta("max_tokens", {"output_tokens": 3}),
                MESSAGE_STOP,
            ]
        )
    )
    texts: list[str] = []
    async with claude.messages.stream(
        model="claude", max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        async for text in stream.text_stream:
            texts.append(text)
        final = await stream.get_final_message()

    assert "".join(texts) == "Hello, world"
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "Hello, world")]
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 3)
    assert sent(fake)["stream"] is True


async def test_anthropic_unary_tool_use(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    fake.script(
        anthropic_answer(
            message(
                [text_block("Checking."), tool_use_block("toolu_01", "get_weather", PARIS)],
                stop_reason="tool_use",
            )
        )
    )
    answer = await claude.messages.create(
        model="claude",
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER],
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )

    assert answer.stop_reason == "tool_use"
    text, call = answer.content
    assert text.type == "text" and text.text == "Checking."
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("toolu_01", "get_weather", PARIS)
    body = sent(fake)
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"] == WEATHER_SCHEMA


async def test_anthropic_streamed_tool_use(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    pieces = ['{"city": ', '"Paris", "un', 'it": "celsius"}']
    fake.script(
        anthropic_stream(
            [
                message_start(),
                *tool_use_events(0, "toolu_01", "get_weather", pieces),
                message_delta("tool_use", {"output_tokens": 17}),
                MESSAGE_STOP,
            ]
        )
    )
    partial: list[str] = []
    async with claude.messages.stream(
        model="claude",
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        async for event in stream:
            if event.type == "input_json":
                partial.append(event.partial_json)
        final = await stream.get_final_message()

    assert json.loads("".join(partial)) == PARIS
    [call] = final.content
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("toolu_01", "get_weather", PARIS)
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 17


async def test_anthropic_two_turn_tool_conversation(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    fake.script(anthropic_answer(message([text_block("21 °C in Paris.")])))
    answer = await claude.messages.create(
        model="claude",
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": PARIS}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "21 °C"}],
            },
        ],
    )

    assert answer.content[0].type == "text" and answer.content[0].text == "21 °C in Paris."
    assert sent(fake)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": PARIS}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "21 °C"}],
        },
    ]


async def test_anthropic_thinking_signature_round_trip(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    """The upstream's thinking block and signature reach the SDK; the SDK's next turn, built from
    the message as it came, reaches the upstream with the same signature, byte for byte."""
    fake.script(
        anthropic_stream(
            [
                message_start(),
                *thinking_events(0, ["Paris, ", "so celsius."], SIGNATURE),
                *tool_use_events(
                    1, "toolu_01", "get_weather", ['{"city": "Paris", ', '"unit": "celsius"}']
                ),
                message_delta("tool_use", {"output_tokens": 30}),
                MESSAGE_STOP,
            ]
        ),
        anthropic_answer(message([text_block("21 °C in Paris.")])),
    )
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    async with claude.messages.stream(
        model="claude",
        max_tokens=2048,
        thinking=thinking,
        tools=[ANTHROPIC_WEATHER],
        messages=[question],
    ) as stream:
        first = await stream.get_final_message()

    assert sent(fake)["thinking"] == thinking
    thought, call = first.content
    assert thought.type == "thinking"
    assert (thought.thinking, thought.signature) == ("Paris, so celsius.", SIGNATURE)
    assert call.type == "tool_use" and call.input == PARIS

    await claude.messages.create(
        model="claude",
        max_tokens=2048,
        thinking=thinking,
        tools=[ANTHROPIC_WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 °C"}],
            },
        ],
    )

    assistant_turn = sent(fake)["messages"][1]["content"]
    assert assistant_turn[0] == {
        "type": "thinking",
        "thinking": "Paris, so celsius.",
        "signature": SIGNATURE,
    }
    assert assistant_turn[1]["type"] == "tool_use" and assistant_turn[1]["id"] == "toolu_01"
    assert json.dumps(SIGNATURE).encode() in fake.exchanges[-1].body


async def test_anthropic_count_tokens(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream, worker: Worker
) -> None:
    text = "How many tokens is this sentence, counted by the worker?"
    counted = await claude.messages.count_tokens(
        model="claude", messages=[{"role": "user", "content": text}]
    )

    expected = await worker.service.count_token("claude", (ModelMessage(Role.USER, text),))
    assert counted.input_tokens == expected.count > 0
    assert fake.exchanges == [], "counting is the worker's"


async def test_anthropic_models_list(claude: anthropic.AsyncAnthropic, worker: Worker) -> None:
    page = await claude.models.list()
    assert sorted(model.id for model in page.data) == ["claude", "embed", "gpt"]
    assert all(model.type == "model" for model in page.data)
    async with anthropic_client(port(worker), BOB) as bob:
        assert [model.id for model in (await bob.models.list()).data] == ["gpt"]


async def test_anthropic_sdk_to_the_openai_provider(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    answer = await claude.messages.create(
        model="gpt",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert [(b.type, getattr(b, "text", None)) for b in answer.content] == [
        ("text", "Hello, world!")
    ]
    assert answer.stop_reason == "end_turn"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (7, 3)
    body = sent(fake)
    assert fake.exchanges[-1].path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 100

    async with claude.messages.stream(
        model="gpt", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        final = await stream.get_final_message()
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [
        ("text", "Hello, world!")
    ]
    assert final.stop_reason == "end_turn"
    # The upstream's usage (fake_upstream.answer_ok: 7 prompt tokens, one per part).
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 4)


async def test_anthropic_sdk_tool_use_through_the_openai_provider(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    fake.script(
        streamed(tool_call_chunks([("call_p", "get_weather", PARIS_PIECES)]), usage_chunk(30, 12)),
        replied(completion({"content": "21 °C in Paris."})),
    )
    async with claude.messages.stream(
        model="gpt",
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        first = await stream.get_final_message()

    [call] = first.content
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("call_p", "get_weather", PARIS)
    assert first.stop_reason == "tool_use"
    tool = sent(fake)["tools"][0]
    assert tool["type"] == "function" and tool["function"]["name"] == "get_weather"
    assert tool["function"]["parameters"] == WEATHER_SCHEMA

    await claude.messages.create(
        model="gpt",
        max_tokens=200,
        tools=[ANTHROPIC_WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_p", "content": "21 °C"}],
            },
        ],
    )
    messages = sent(fake)["messages"]
    assert messages[0] == {"role": "user", "content": "Weather in Paris?"}
    assert messages[1]["role"] == "assistant"
    [wire] = messages[1]["tool_calls"]
    assert (wire["id"], wire["function"]["name"]) == ("call_p", "get_weather")
    assert json.loads(wire["function"]["arguments"]) == PARIS
    assert messages[2] == {"role": "tool", "content": "21 °C", "tool_call_id": "call_p"}


async def test_openai_sdk_to_the_anthropic_provider(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    answer = await oai.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, user("Hi")],
        max_completion_tokens=100,
    )
    assert answer.choices[0].message.content == "Hello, world!"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (9, 4)
    body = sent(fake)
    assert fake.exchanges[-1].path == "/v1/messages"
    assert body["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 100

    stream = await oai.chat.completions.create(
        model="claude",
        messages=[user("Hi")],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello, world!"
    )
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["stop"]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 4)


async def test_openai_sdk_tool_calls_through_the_anthropic_provider(
    oai: openai.AsyncOpenAI, fake: FakeUpstream
) -> None:
    fake.script(
        anthropic_stream(
            [
                message_start(),
                *tool_use_events(
                    0, "toolu_01", "get_weather", ['{"city": "Pa', 'ris", "unit": "celsius"}']
                ),
                message_delta("tool_use", {"output_tokens": 17}),
                MESSAGE_STOP,
            ]
        ),
        anthropic_answer(message([text_block("21 °C in Paris.")])),
    )
    stream = await oai.chat.completions.create(
        model="claude", messages=[user("Weather in Paris?")], tools=[OPENAI_WEATHER], stream=True
    )
    arguments = ""
    ids: list[str] = []
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                if delta.id:
                    ids.append(delta.id)
                if delta.function is not None:
                    arguments += delta.function.arguments or ""
    assert ids == ["toolu_01"]
    assert json.loads(arguments) == PARIS
    assert finish == "tool_calls"
    tool = sent(fake)["tools"][0]
    assert (tool["name"], tool["input_schema"]) == ("get_weather", WEATHER_SCHEMA)

    answer = await oai.chat.completions.create(
        model="claude",
        tools=[OPENAI_WEATHER],
        messages=[
            user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "21 °C"},
        ],
    )
    assert answer.choices[0].message.content == "21 °C in Paris."
    assert sent(fake)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": PARIS}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "21 °C"}],
        },
    ]


# --- 3. errors as each SDK's own exception types --------------------------------------------------


async def test_401_without_a_valid_key(worker: Worker, fake: FakeUpstream) -> None:
    seen = Seen()
    async with openai_client(port(worker), "sk-wrong", seen=seen) as client:
        with pytest.raises(openai.AuthenticationError) as wrong:
            await client.chat.completions.create(model="gpt", messages=[user("Hi")])
        with pytest.raises(openai.AuthenticationError) as missing:
            await client.chat.completions.create(
                model="gpt", messages=[user("Hi")], extra_headers=NO_OPENAI_KEY
            )
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    assert "authorization" not in seen.requests[1]
    for error in (wrong.value, missing.value):
        assert error.status_code == 401 and "API key" in error.message
    for key in (None, "sk-wrong"):
        seen = Seen()
        async with anthropic_client(port(worker), key, seen=seen) as other:
            with pytest.raises(anthropic.AuthenticationError):
                await other.messages.create(
                    model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
                )
        sent_key = seen.requests[0].get("authorization") or seen.requests[0].get("x-api-key")
        assert sent_key == (f"Bearer {key}" if key is not None else None)
    assert fake.exchanges == []


async def test_the_key_in_x_api_key(worker: Worker, fake: FakeUpstream) -> None:
    """Anthropic's own header: this SDK version sends `Authorization: Bearer`, older ones and
    curl examples `x-api-key`."""
    seen = Seen()
    async with anthropic_client(port(worker), None, seen=seen, headers={"x-api-key": ALICE}) as c:
        answer = await c.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert answer.content[0].type == "text"
    assert "authorization" not in seen.requests[0] and seen.requests[0]["x-api-key"] == ALICE
    async with anthropic_client(port(worker), None, headers={"x-api-key": "sk-wrong"}) as c:
        with pytest.raises(anthropic.AuthenticationError):
            await c.messages.create(
                model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
            )


async def test_403_for_a_model_outside_the_allow_list(worker: Worker, fake: FakeUpstream) -> None:
    async with openai_client(port(worker), BOB) as client:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await client.chat.completions.create(model="claude", messages=[user("Hi")])
        assert "claude" in refused.value.message
        await client.chat.completions.create(model="gpt", messages=[user("Hi")])  # allowed
    async with anthropic_client(port(worker), BOB) as other:
        with pytest.raises(anthropic.PermissionDeniedError):
            await other.messages.create(
                model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
            )
        with pytest.raises(anthropic.PermissionDeniedError):
            await other.messages.count_tokens(
                model="claude", messages=[{"role": "user", "content": "Hi"}]
            )
    assert len(fake.exchanges) == 1, "only the allowed call reached the upstream"


async def test_404_for_an_unknown_model(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.chat.completions.create(model="no-such-model", messages=[user("Hi")])
    assert "no-such-model" in missing.value.message
    with pytest.raises(anthropic.NotFoundError) as other:
        await claude.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert "no-such-model" in other.value.message
    assert fake.exchanges == []


@pytest.mark.parametrize(
    ("param", "fields"),
    [
        ("n", {"n": 2}),
        ("logprobs", {"logprobs": True}),
        ("logit_bias", {"logit_bias": {"50256": -100}}),
    ],
)
async def test_400_an_unsupported_openai_parameter_names_itself(
    oai: openai.AsyncOpenAI, fake: FakeUpstream, param: str, fields: dict[str, Any]
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await oai.chat.completions.create(model="gpt", messages=[user("Hi")], **fields)

    assert refused.value.status_code == 400
    assert refused.value.param == param, refused.value.body
    assert param in refused.value.message
    assert fake.exchanges == []


@pytest.mark.parametrize(
    ("param", "fields"),
    [("top_k", {"top_k": 5}), ("frobnicate", {"frobnicate": True})],
)
async def test_400_an_unsupported_anthropic_parameter_names_itself(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream, param: str, fields: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(
            model="claude",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body=fields,  # neither is an argument of this SDK's version
        )

    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert param in body["error"]["message"]
    assert fake.exchanges == []


async def test_429_from_a_quota_with_retry_after_and_rate_limit_headers(
    worker: Worker, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold_quota_clock(worker, monkeypatch)
    async with (
        openai_client(port(worker), QUINN) as client,
        anthropic_client(port(worker), QUINN) as other,
    ):
        await client.chat.completions.create(model="gpt", messages=[user("Hi")])
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="gpt", messages=[user("Hi")])
        with pytest.raises(anthropic.RateLimitError) as also:
            await other.messages.create(
                model="gpt", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
            )

    for error in (refused.value, also.value):
        headers = error.response.headers
        assert error.status_code == 429
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-limit-requests"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert "requests_per_minute" in error.message
    assert len(fake.exchanges) == 1, "a refused call never reaches the upstream"


def rate_limited_upstream(anthropic_format: bool) -> Handler:
    body = (
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        if anthropic_format
        else {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}
    )
    return replied(body, status=429, headers={"retry-after": "1"})


async def test_the_openai_sdk_retry_honours_retry_after(worker: Worker, fake: FakeUpstream) -> None:
    fake.script(rate_limited_upstream(False))
    seen = Seen()
    async with openai_client(port(worker), ALICE, max_retries=1, seen=seen) as client:
        answer = await client.chat.completions.create(model="gpt", messages=[user("Hi")])

    assert answer.choices[0].message.content == "Hello, world!"
    assert seen.statuses == [429, 200]
    assert seen.responses[0][1]["retry-after"] == "1"
    assert len(fake.exchanges) == 2
    print(
        f"the retry came {fake.exchanges[1].started_at - fake.exchanges[0].started_at:.3f}s later"
    )


async def test_an_upstream_429_before_the_first_token_is_a_429_a_stream_retries(
    worker: Worker, fake: FakeUpstream
) -> None:
    """A stream's status waits for its first message: the upstream's 429 before it is the
    response's status, which the SDK retries, not an error event inside a 200."""
    fake.script(rate_limited_upstream(False))
    seen = Seen()
    async with openai_client(port(worker), ALICE, max_retries=1, seen=seen) as client:
        stream = await client.chat.completions.create(
            model="gpt", messages=[user("Hi")], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    assert text == "Hello, world!"
    assert seen.statuses == [429, 200]
    assert seen.responses[0][1]["retry-after"] == "1"
    assert len(fake.exchanges) == 2


async def test_the_anthropic_sdk_retry_honours_retry_after(
    worker: Worker, fake: FakeUpstream
) -> None:
    fake.script(rate_limited_upstream(True))
    seen = Seen()
    async with anthropic_client(port(worker), ALICE, max_retries=1, seen=seen) as client:
        answer = await client.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )

    assert answer.content[0].type == "text" and answer.content[0].text == "Hello, world!"
    assert seen.statuses == [429, 200]
    assert seen.responses[0][1]["retry-after"] == "1"
    assert len(fake.exchanges) == 2


async def test_an_upstream_failure_is_a_5xx_without_a_stack_trace(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeUpstream
) -> None:
    fake.script(
        replied({"error": {"message": "boom", "type": "server_error"}}, status=500),
        anthropic_answer({"type": "error", "error": {"type": "api_error", "message": "x"}}, 500),
    )
    with pytest.raises(openai.APIStatusError) as failed:
        await oai.chat.completions.create(model="gpt", messages=[user("Hi")])
    with pytest.raises(anthropic.APIStatusError) as other:
        await claude.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )

    for error in (failed.value, other.value):
        assert error.status_code >= 500
        text = error.response.text
        assert "Traceback" not in text and 'File "' not in text and ".py" not in text


async def test_an_internal_error_is_a_500_naming_only_an_incident(
    oai: openai.AsyncOpenAI,
    claude: anthropic.AsyncAnthropic,
    worker: Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a secret detail in /srv/modelwire/secret.py")

    assert worker.facade is not None
    backend = worker.facade._backend  # noqa: SLF001 — the one way to make the worker fail inside
    monkeypatch.setattr(backend, "generate", broken)
    with pytest.raises(openai.InternalServerError) as failed:
        await oai.chat.completions.create(model="gpt", messages=[user("Hi")])
    with pytest.raises(anthropic.InternalServerError) as other:
        await claude.messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )

    for error in (failed.value, other.value):
        assert error.status_code == 500
        text = error.response.text
        assert "incident" in text
        assert "secret" not in text and "Traceback" not in text and "RuntimeError" not in text


# --- 4. rate-limit headers on a successful call ---------------------------------------------------


async def test_a_successful_call_carries_its_rate_limits(
    worker: Worker, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold_quota_clock(worker, monkeypatch)
    async with (
        openai_client(port(worker), RITA) as client,
        anthropic_client(port(worker), RITA) as other,
    ):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt", messages=[user("Hi")], max_completion_tokens=50
        )
        assert raw.parse().choices[0].message.content == "Hello, world!"
        async with client.chat.completions.with_streaming_response.create(
            model="gpt", messages=[user("Hi")], max_completion_tokens=50, stream=True
        ) as streaming:
            streamed_headers = streaming.headers
            chunks = [chunk async for chunk in await streaming.parse()]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Hello, world!"
        )
        anthropic_raw = await other.messages.with_raw_response.create(
            model="claude", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        )

    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(headers["x-ratelimit-remaining-tokens"]) <= 100000 - 50
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["x-request-id"]
    assert streamed_headers["x-ratelimit-remaining-requests"] == "98"
    assert anthropic_raw.headers["x-ratelimit-remaining-requests"] == "97"
    assert anthropic_raw.headers["request-id"]


# --- 5. a caller that leaves mid-stream -----------------------------------------------------------


async def test_closing_an_openai_stream_closes_the_upstream_request(
    oai: openai.AsyncOpenAI, fake: FakeUpstream, worker: Worker
) -> None:
    async def first_token_then_hang(exchange: Exchange, respond: Responder) -> None:
        await stream_prologue(exchange, respond)
        await send_first_token(exchange, respond)
        await respond.hang()

    fake.script(first_token_then_hang)
    stream = await oai.chat.completions.create(model="gpt", messages=[user("Hi")], stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    [exchange] = await fake.wait_for_requests(1)
    assert not exchange.client_closed.is_set()
    closing = time.monotonic()
    await stream.close()

    closed_at = await exchange.wait_client_closed(timeout=10)  # a bound, not the measure
    assert closed_at >= closing
    print(f"the upstream saw its client close {(closed_at - closing) * 1000:.1f} ms after the SDK")
    await admission_reaches(
        worker.service.target("gpt").deployments[0].admission, in_flight=0, queued=0
    )


async def test_closing_an_anthropic_stream_closes_the_upstream_request(
    claude: anthropic.AsyncAnthropic, fake: FakeUpstream, worker: Worker
) -> None:
    async def first_token_then_hang(exchange: Exchange, respond: Responder) -> None:
        await stream_prologue(exchange, respond)
        await send_first_token(exchange, respond)
        await respond.hang()

    fake.script(first_token_then_hang)
    async with claude.messages.stream(
        model="claude", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        async for text in stream.text_stream:
            assert text == "Hello"
            break
        [exchange] = await fake.wait_for_requests(1)
        assert not exchange.client_closed.is_set()
        closing = time.monotonic()
    # Leaving the block closed the SDK's response.
    closed_at = await exchange.wait_client_closed(timeout=10)  # a bound, not the measure
    assert closed_at >= closing
    print(f"the upstream saw its client close {(closed_at - closing) * 1000:.1f} ms after the SDK")
    await admission_reaches(
        worker.service.target("claude").deployments[0].admission, in_flight=0, queued=0
    )


# --- 6. who called: the access line and the metrics -----------------------------------------------


async def test_an_http_call_is_logged_and_counted_for_its_caller_and_tenant(
    oai: openai.AsyncOpenAI,
    claude: anthropic.AsyncAnthropic,
    worker: Worker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    before_gpt = calls_counted(worker, "gpt", "team-a")
    before_claude = calls_counted(worker, "claude", "team-a")

    await oai.chat.completions.create(
        model="gpt", messages=[user("Hi")], extra_headers={"x-request-id": "sdk-call-1"}
    )
    stream = await oai.chat.completions.create(model="gpt", messages=[user("Hi")], stream=True)
    async for _ in stream:
        pass
    await claude.messages.create(
        model="claude", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
    )

    lines = [line for line in access_lines(caplog) if line["model"] in ("gpt", "claude")]
    assert [(line["method"], line["model"]) for line in lines] == [
        ("POST /v1/chat/completions", "gpt"),
        ("POST /v1/chat/completions", "gpt"),
        ("POST /v1/messages", "claude"),
    ]
    for line in lines:
        assert (line["caller"], line["tenant"], line["code"]) == ("alice", "team-a", "OK")
        assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert lines[0]["request_id"] == "sdk-call-1"
    assert lines[1]["messages"] >= 1, "a streamed call's line counts its messages"
    assert calls_counted(worker, "gpt", "team-a") == before_gpt + 2
    assert calls_counted(worker, "claude", "team-a") == before_claude + 1


async def test_a_refused_http_call_is_logged_under_its_caller(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with openai_client(port(worker), BOB) as client:
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="claude", messages=[user("Hi")])
    [line] = [line for line in access_lines(caplog) if line["model"] == "claude"]
    assert (line["caller"], line["code"]) == ("bob", "PERMISSION_DENIED")


# --- 7. the embedded model ------------------------------------------------------------------------

LOCAL = "gemma-3-270m"


@pytest.fixture(scope="module")
async def local_worker() -> AsyncIterator[Worker]:
    """One session and a batch as large as the context, as tests/test_local_cancellation.py: a
    prompt is one llama_decode call, so only llama.cpp's abort can stop it midway."""
    model = ModelConfig(
        name=LOCAL,
        provider="llamacpp",
        context_length=4096,
        max_concurrency=1,
        max_queue=8,
        options={"n_batch": 4096},
    )
    config = replace(
        embedded_default(),
        server=ServerConfig(grace_period_s=1.0),
        http=HttpConfig(port=0),
        models=(model,),
    )
    async with running_worker(config) as worker:
        yield worker


def llama(worker: Worker) -> LlamaCppClient:
    client = worker.models[0].client
    assert isinstance(client, LlamaCppClient)
    return client


async def test_the_local_model_streams_to_both_sdks(local_worker: Worker) -> None:
    async with openai_client(port(local_worker), "unused") as client:
        stream = await client.chat.completions.create(
            model=LOCAL,
            messages=[user("Name a colour.")],
            max_completion_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8

    async with anthropic_client(port(local_worker), "unused") as other:
        async with other.messages.stream(
            model=LOCAL, max_tokens=8, messages=[{"role": "user", "content": "Name a colour."}]
        ) as answer:
            final = await answer.get_final_message()
    assert final.content and final.content[0].type == "text" and final.content[0].text.strip()
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 8


def long_prompt(client: LlamaCppClient, tag: str) -> str:
    """A user message of about 2,000 tokens, different for every `tag` (no cache reuse)."""
    text = f"Request {tag}. " + " ".join(
        f"Line {n}: the keeper wrote down the weather." for n in range(150)
    )
    tokens = len(client.prompt_tokens([ModelMessage(Role.USER, text)]))
    assert 1800 <= tokens <= 2200, tokens
    return text


async def until(client: LlamaCppClient, predicate: str) -> None:
    condition = {
        "evaluating a prompt": lambda a: a.decoding_prompt == 1,
        "idle": lambda a: a.running == 0,
    }[predicate]
    assert await asyncio.to_thread(client.activity.wait_for, condition, 60), (
        f"the model never became {predicate}"
    )


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_leaving_a_local_stream_stops_the_model(local_worker: Worker, sdk: str) -> None:
    """The SDK waits for the stream's first message while llama.cpp evaluates a long prompt; the
    caller giving up then (its request task cancelled: the SDK closes the connection) aborts the
    evaluation: the tokens evaluated do not grow."""
    client = llama(local_worker)
    session = client.sessions[0]
    evaluated = session.stats.tokens_evaluated
    prompt = long_prompt(client, sdk)
    if sdk == "openai":
        async with openai_client(port(local_worker), "unused") as sdk_client:
            waiting = asyncio.ensure_future(
                sdk_client.chat.completions.create(
                    model=LOCAL, messages=[user(prompt)], max_completion_tokens=64, stream=True
                )
            )
            await until(client, "evaluating a prompt")
            waiting.cancel()
            await until(client, "idle")
    else:
        async with anthropic_client(port(local_worker), "unused") as other:
            waiting = asyncio.ensure_future(
                other.messages.create(
                    model=LOCAL,
                    max_tokens=64,
                    messages=[{"role": "user", "content": prompt}],
                    stream=True,
                )
            )
            await until(client, "evaluating a prompt")
            waiting.cancel()
            await until(client, "idle")
    with contextlib.suppress(asyncio.CancelledError):
        await waiting

    assert session.stats.tokens_evaluated == evaluated, (
        "llama.cpp finished evaluating a prompt nobody waits for"
    )
    await admission_reaches(local_worker.models[0].admission, in_flight=0, queued=0)


def test_the_facade_port_is_chosen_by_the_os(worker: Worker) -> None:
    """`[http] port = 0` binds a free port, and the worker reports it."""
    assert worker.facade is not None
    assert worker.facade.port > 0
    assert worker.facade.address == f"http://127.0.0.1:{worker.facade.port}"
