"""Contract v1.1 on the `anthropic` provider, against the fake upstream speaking the Messages API:
the exact bodies the new fields become (tools, tool choices, tool turns, images, cache_control,
thinking, structured output), the response side (tool calls whole and streamed, split mid-JSON;
reasoning signatures sent back byte for byte; cache and reasoning usage), every refusal by field
and model before anything reaches the upstream, and the shared conformance cases."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from anthropic_wire import (
    MESSAGE_STOP,
    PING,
    answer_as_claude,
    message,
    message_delta,
    message_start,
    redacted_block,
    redacted_events,
    send_stream,
    streamed,
    text_block,
    text_events,
    thinking_block,
    thinking_events,
    tool_use_block,
    tool_use_events,
    usage,
)
from conformance import (
    PERSON_SCHEMA,
    PNG,
    WEATHER_TOOL,
    Case,
    Target,
    assert_refused,
    cases_for,
    collect,
    fold_stream,
    run_case,
    stream_view,
)
from conftest import running_worker
from fake_upstream import Exchange, FakeUpstream, Responder, load_toml_config
from modelwire.app.server import Worker
from modelwire.core.settings import ConfigError
from modelwire.providers.anthropic.client import AnthropicClient
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

KEY_ENV = "MODELWIRE_TEST_ANTHROPIC_CONTRACT_KEY"
REASONING_CAPABILITIES = (
    '["chat", "streaming", "tools", "json_schema", "vision", "prompt_cache", "reasoning"]'
)
CONFIG = """
[server]
grace_period_s = 1.0

[[models]]
name = "claude"
provider = "anthropic"
api_base = "{url}"
api_key_env = "{key_env}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 8192
max_retries = 0
capabilities = {capabilities}

[[models]]
name = "claude-adaptive"
provider = "anthropic"
api_base = "{url}"
upstream_model = "claude-opus-4-7"
context_length = 200000
max_retries = 0
capabilities = {capabilities}
thinking = "adaptive"

[[models]]
name = "claude-small"
provider = "anthropic"
api_base = "{url}"
upstream_model = "claude-haiku-4-5"
context_length = 4096
max_retries = 0
capabilities = {capabilities}

[[models]]
name = "claude-defaults"
provider = "anthropic"
api_base = "{url}"
context_length = 200000
max_retries = 0
"""
# Anthropic signatures are base64: `+`, `/` and `=` must survive the round trip untouched.
SIGNATURE = (
    "EqQBCkYIBxgCKkDq+/2mZ3xvVQ0c9wYp1uOTe/FZ3ukDA1ZJ+Wq0Hh8XsbTm7p5wfuHNLhY3K0o9nZrZ2l/dxQ=="
)
SIGNATURE_2 = "ErUBCkYIBRgCIkBG1pJ1sQbxRcC4JZRoj2+Pd1eZ6/8+ZlYt0kV3wmA9XdF2tFfHqO6=="
REDACTED = (
    "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB4URj"
    "2fsD1pn6tGuO2HwXrFXyQ"
)
WEATHER_CALL = pb.ToolCall(
    id="toolu_01A09q90qw90lq917835lq9",
    name="get_weather",
    arguments_json='{"city": "Paris", "unit": "celsius"}',
)
TIME_TOOL_SCHEMA = (
    '{"type": "object", "properties": {"city": {"type": "string", "maxLength": 64}}, "required": '
    '["city"]}'
)


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    os.environ[KEY_ENV] = "sk-ant-contract"
    text = CONFIG.format(url=fake.url, key_env=KEY_ENV, capabilities=REASONING_CAPABILITIES)
    config = load_toml_config(tmp_path_factory.mktemp("anthropic-contract"), text)
    try:
        async with running_worker(config) as worker:
            yield worker
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
async def stub(worker: Worker) -> AsyncIterator[pb_grpc.ModelWorkerStub]:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        yield pb_grpc.ModelWorkerStub(channel)


@pytest.fixture(autouse=True)
def fresh(fake: FakeUpstream) -> None:
    fake.reset_records()


def user(text: str) -> pb.ModelMessage:
    return pb.ModelMessage(role=pb.ROLE_USER, content=text)


def ask(*messages: pb.ModelMessage, model: str = "claude", **fields: Any) -> pb.ModelRequest:
    return pb.ModelRequest(model=model, messages=list(messages) or [user("Hi")], **fields)


def body(fake: FakeUpstream) -> dict[str, Any]:
    [exchange] = fake.exchanges
    result: dict[str, Any] = exchange.json()
    return result


def answer(payload: dict[str, Any]) -> Any:
    async def handler(exchange: Exchange, respond: Responder) -> None:
        await respond.json(200, payload)

    return handler


def stream_of(events: list[tuple[str, dict[str, Any]]], chunk_bytes: int = 0) -> Any:
    async def handler(exchange: Exchange, respond: Responder) -> None:
        await send_stream(respond, events, chunk_bytes)

    return handler


def time_tool(**fields: Any) -> pb.Tool:
    return pb.Tool(
        name="get_time",
        description="The local time in a city.",
        parameters_json_schema=TIME_TOOL_SCHEMA,
        **fields,
    )


# --- tools and tool choice -----------------------------------------------------------------------


async def test_tools_keep_their_schema_text_order_and_numbers(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    # Keys out of alphabetical order, an integer and floats: a Struct would lose all three.
    schema = (
        '{"type": "object", "required": ["n"], "properties": {"n": {"type": "number", "maximum": '
        '150, "multipleOf": 0.5, "default": 1.0}}}'
    )
    tools = [
        pb.Tool(
            name="scale", description="Scales a number.", parameters_json_schema=schema, strict=True
        ),
        pb.Tool(name="ping"),
    ]
    await stub.Generate(ask(tools=tools))

    sent = body(fake)
    assert sent["tools"] == [
        {
            "name": "scale",
            "description": "Scales a number.",
            "input_schema": json.loads(schema),
            "strict": True,
        },
        {
            "name": "ping",
            "input_schema": {
                "type": "object",
                "properties": {},
                "additionalProperties": False,
            },
        },
    ]
    assert "tool_choice" not in sent, "no tool_choice is Anthropic's auto, with parallel calls"
    number = sent["tools"][0]["input_schema"]["properties"]["n"]
    assert list(sent["tools"][0]["input_schema"]) == ["type", "required", "properties"]
    assert (
        number["maximum"],
        type(number["maximum"]),
        number["default"],
        type(number["default"]),
    ) == (150, int, 1.0, float)


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), None, {"type": "auto"}),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), None, {"type": "any"}),
        (pb.ToolChoice(tool_name="get_time"), None, {"type": "tool", "name": "get_time"}),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), None, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (
            pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO),
            False,
            {"type": "auto", "disable_parallel_tool_use": True},
        ),
        (
            pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED),
            False,
            {"type": "any", "disable_parallel_tool_use": True},
        ),
        (
            pb.ToolChoice(tool_name="get_time"),
            False,
            {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        ),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), False, {"type": "none"}),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), True, {"type": "auto"}),
        (None, True, None),
    ],
)
async def test_tool_choice_and_parallel_calls(
    stub: pb_grpc.ModelWorkerStub,
    fake: FakeUpstream,
    choice: pb.ToolChoice | None,
    parallel: bool | None,
    expected: dict[str, Any] | None,
) -> None:
    request = ask(tools=[WEATHER_TOOL, time_tool()])
    if choice is not None:
        request.tool_choice.CopyFrom(choice)
    if parallel is not None:
        request.parallel_tool_calls = parallel
    await stub.Generate(request)

    sent = body(fake)
    assert sent.get("tool_choice") == expected
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]


async def test_two_turn_tool_conversation(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    """An assistant turn with thinking, text and two calls, then both results in one user turn."""
    time_call = pb.ToolCall(id="toolu_02", name="get_time", arguments_json='{"city": "Tokyo"}')
    fake.script(answer(message([text_block("21 °C in Paris; 09:30 in Tokyo.")])))
    output = await stub.Generate(
        ask(
            user("Weather in Paris, time in Tokyo?"),
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT,
                content="Let me check both.",
                tool_calls=[WEATHER_CALL, time_call],
                reasoning="Two tools, in parallel.",
                reasoning_signature=SIGNATURE.encode(),
            ),
            pb.ModelMessage(
                role=pb.ROLE_TOOL, tool_call_id=WEATHER_CALL.id, content='{"temperature": 21}'
            ),
            pb.ModelMessage(role=pb.ROLE_TOOL, tool_call_id="toolu_02", content="09:30"),
            tools=[WEATHER_TOOL, time_tool()],
        )
    )

    assert body(fake)["messages"] == [
        {"role": "user", "content": "Weather in Paris, time in Tokyo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two tools, in parallel.", "signature": SIGNATURE},
                {"type": "text", "text": "Let me check both."},
                {
                    "type": "tool_use",
                    "id": WEATHER_CALL.id,
                    "name": "get_weather",
                    "input": {"city": "Paris", "unit": "celsius"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_time",
                    "input": {"city": "Tokyo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": WEATHER_CALL.id,
                    "content": '{"temperature": 21}',
                },
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "09:30"},
            ],
        },
    ]
    assert output.text == "21 °C in Paris; 09:30 in Tokyo." and not output.tool_calls
    assert output.finish_reason == pb.FINISH_REASON_STOP


async def test_tool_calls_of_a_unary_answer(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    fake.script(
        answer(
            message(
                [
                    text_block("Checking."),
                    tool_use_block("toolu_01", "get_weather", {"city": "Paris", "unit": "celsius"}),
                    tool_use_block("toolu_02", "get_time", {"city": "Tōkyō"}),
                ],
                stop_reason="tool_use",
            )
        )
    )
    output = await stub.Generate(ask(tools=[WEATHER_TOOL, time_tool()]))

    assert [
        (call.id, call.name, json.loads(call.arguments_json)) for call in output.tool_calls
    ] == [
        ("toolu_01", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("toolu_02", "get_time", {"city": "Tōkyō"}),
    ]
    assert list(json.loads(output.tool_calls[0].arguments_json)) == ["city", "unit"]
    assert output.text == "Checking." and output.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert not output.tool_call_deltas


# --- images and cache breakpoints ----------------------------------------------------------------


async def test_images_as_base64_and_url_sources(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    data_url = "data:image/webp;base64,UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA=="
    await stub.Generate(
        ask(
            pb.ModelMessage(
                role=pb.ROLE_USER,
                parts=[
                    pb.ContentPart(text="Compare these."),
                    pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/png")),
                    pb.ContentPart(image=pb.Image(url="https://example.com/cat.jpg")),
                    pb.ContentPart(image=pb.Image(url=data_url)),
                ],
            ),
            pb.ModelMessage(role=pb.ROLE_ASSISTANT, tool_calls=[WEATHER_CALL]),
            pb.ModelMessage(
                role=pb.ROLE_TOOL,
                tool_call_id=WEATHER_CALL.id,
                parts=[
                    pb.ContentPart(text="Radar:"),
                    pb.ContentPart(image=pb.Image(data=b"GIF89a", mime_type="image/gif")),
                ],
            ),
            tools=[WEATHER_TOOL],
        )
    )

    messages = body(fake)["messages"]
    assert messages[0] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Compare these."},
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP4z8DwHwAFA"
                    "AIB/6K99bEAAAAASUVORK5CYII=",
                },
            },
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": "image/webp",
                    "data": "UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==",
                },
            },
        ],
    }
    assert messages[2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": WEATHER_CALL.id,
                "content": [
                    {"type": "text", "text": "Radar:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh"},
                    },
                ],
            }
        ],
    }


async def test_cache_breakpoints_mark_the_last_block_of_their_message(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    ephemeral = {"type": "ephemeral"}
    await stub.Generate(
        ask(
            pb.ModelMessage(
                role=pb.ROLE_SYSTEM, content="A long, stable system prompt.", cache_breakpoint=True
            ),
            pb.ModelMessage(role=pb.ROLE_SYSTEM, content="Today is Tuesday."),
            user("Here is a document."),
            pb.ModelMessage(
                role=pb.ROLE_USER,
                parts=[
                    pb.ContentPart(text="And a chart:"),
                    pb.ContentPart(image=pb.Image(url="https://example.com/c.png")),
                ],
                cache_breakpoint=True,
            ),
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT, tool_calls=[WEATHER_CALL], cache_breakpoint=True
            ),
            pb.ModelMessage(
                role=pb.ROLE_TOOL,
                tool_call_id=WEATHER_CALL.id,
                content="21 °C",
                cache_breakpoint=True,
            ),
            user("Summarise."),
            tools=[WEATHER_TOOL],
        )
    )

    sent = body(fake)
    assert sent["system"] == [
        {"type": "text", "text": "A long, stable system prompt.", "cache_control": ephemeral},
        {"type": "text", "text": "Today is Tuesday."},
    ]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here is a document."},
                {"type": "text", "text": "And a chart:"},
                {
                    "type": "image",
                    "source": {"type": "url", "url": "https://example.com/c.png"},
                    "cache_control": ephemeral,
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": WEATHER_CALL.id,
                    "name": "get_weather",
                    "input": {"city": "Paris", "unit": "celsius"},
                    "cache_control": ephemeral,
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": WEATHER_CALL.id,
                    "content": "21 °C",
                    "cache_control": ephemeral,
                },
                {"type": "text", "text": "Summarise."},
            ],
        },
    ]


async def test_plain_messages_stay_strings(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    await stub.Generate(
        ask(
            pb.ModelMessage(role=pb.ROLE_SYSTEM, content="Be brief."),
            user("Hi"),
            user("Still there?"),
        )
    )

    sent = body(fake)
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [{"role": "user", "content": "Hi\n\nStill there?"}]
    assert not {"tools", "tool_choice", "thinking", "output_config"} & set(sent)


# --- usage ---------------------------------------------------------------------------------------

CACHE_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 2000,
    "output_tokens": 40,
    "output_tokens_details": {"thinking_tokens": 31},
}


def assert_cache_usage(counts: pb.Usage) -> None:
    assert (counts.prompt_tokens, counts.cached_prompt_tokens, counts.cache_write_tokens) == (
        2312,
        2000,
        300,
    )
    assert (counts.completion_tokens, counts.reasoning_tokens, counts.total_tokens) == (
        40,
        31,
        2352,
    )
    assert not counts.estimated


async def test_cache_and_reasoning_usage_unary(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    fake.script(answer(message([text_block("Cached.")], counts=dict(CACHE_USAGE))))
    assert_cache_usage((await stub.Generate(ask())).usage)


async def test_cache_usage_streamed_survives_a_delta_without_it(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    """message_delta's counts replace message_start's one by one: a delta that repeats
    input_tokens but not the cache counts keeps the cache counts."""
    start = usage(12, 1, cache_creation_input_tokens=300, cache_read_input_tokens=2000)
    fake.script(
        stream_of(
            [
                message_start(start),
                *text_events(0, ["Cached."]),
                message_delta(
                    "end_turn",
                    {
                        "input_tokens": 12,
                        "output_tokens": 40,
                        "output_tokens_details": {"thinking_tokens": 31},
                    },
                ),
                MESSAGE_STOP,
            ]
        )
    )
    messages = await collect(stub.GenerateStream(ask()))

    assert_cache_usage(messages[-1].usage)


# --- thinking ------------------------------------------------------------------------------------


async def test_thinking_with_a_budget(stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream) -> None:
    await stub.Generate(
        ask(
            reasoning=pb.ReasoningOptions(budget_tokens=2048),
            sampling=pb.SamplingParams(max_new_tokens=4096, top_p=0.95),
        )
    )

    sent = body(fake)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert (sent["max_tokens"], sent["top_p"]) == (4096, 0.95)
    assert "output_config" not in sent and "temperature" not in sent


@pytest.mark.parametrize(
    ("effort", "wire"),
    [
        (pb.REASONING_EFFORT_LOW, "low"),
        (pb.REASONING_EFFORT_MEDIUM, "medium"),
        (pb.REASONING_EFFORT_HIGH, "high"),
    ],
)
async def test_adaptive_thinking_takes_an_effort(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream, effort: pb.ReasoningEffort, wire: str
) -> None:
    await stub.Generate(ask(model="claude-adaptive", reasoning=pb.ReasoningOptions(effort=effort)))

    sent = body(fake)
    assert (sent["thinking"], sent["output_config"]) == ({"type": "adaptive"}, {"effort": wire})


async def test_adaptive_thinking_without_an_effort(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    await stub.Generate(ask(model="claude-adaptive", reasoning=pb.ReasoningOptions()))

    sent = body(fake)
    assert sent["thinking"] == {"type": "adaptive"} and "output_config" not in sent


def next_turn(output: pb.ModelOutput, result: str) -> list[pb.ModelMessage]:
    """The conversation continued as a caller does: the answer as the assistant's turn, as it
    came."""
    turn = pb.ModelMessage(
        role=pb.ROLE_ASSISTANT,
        content=output.text,
        tool_calls=output.tool_calls,
        reasoning_signature=output.reasoning_signature,
    )
    if output.HasField("reasoning"):
        turn.reasoning = output.reasoning
    return [
        user("Weather in Paris?"),
        turn,
        pb.ModelMessage(role=pb.ROLE_TOOL, tool_call_id=output.tool_calls[0].id, content=result),
    ]


def sent_assistant_turn(fake: FakeUpstream) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = fake.exchanges[-1].json()["messages"][1]["content"]
    return content


async def test_signature_round_trip_unary(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    fake.script(
        answer(
            message(
                [
                    thinking_block("Paris, so celsius.", SIGNATURE),
                    tool_use_block(
                        WEATHER_CALL.id, "get_weather", {"city": "Paris", "unit": "celsius"}
                    ),
                ],
                stop_reason="tool_use",
            )
        )
    )
    thinking = pb.ReasoningOptions(budget_tokens=1024)
    output = await stub.Generate(
        ask(user("Weather in Paris?"), tools=[WEATHER_TOOL], reasoning=thinking)
    )

    assert (output.reasoning, output.reasoning_signature) == (
        "Paris, so celsius.",
        SIGNATURE.encode(),
    )
    await stub.Generate(ask(*next_turn(output, "21 °C"), tools=[WEATHER_TOOL], reasoning=thinking))

    assert sent_assistant_turn(fake)[0] == {
        "type": "thinking",
        "thinking": "Paris, so celsius.",
        "signature": SIGNATURE,
    }
    assert json.dumps(SIGNATURE).encode() in fake.exchanges[-1].body, (
        "the signature goes back byte for byte"
    )


async def test_signature_round_trip_streamed(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    fake.script(
        stream_of(
            [
                message_start(),
                *thinking_events(0, ["Paris, ", "so celsius."], SIGNATURE),
                PING,
                *tool_use_events(
                    1, WEATHER_CALL.id, "get_weather", ['{"city": "Paris", ', '"unit": "celsius"}']
                ),
                message_delta("tool_use", {"output_tokens": 30}),
                MESSAGE_STOP,
            ]
        )
    )
    thinking = pb.ReasoningOptions(budget_tokens=1024)
    messages = await collect(
        stub.GenerateStream(
            ask(user("Weather in Paris?"), tools=[WEATHER_TOOL], reasoning=thinking)
        )
    )

    assert b"".join(m.reasoning_signature for m in messages) == SIGNATURE.encode()
    merged = pb.ModelOutput(
        reasoning="".join(m.reasoning for m in messages),
        reasoning_signature=SIGNATURE.encode(),
        tool_calls=[
            pb.ToolCall(
                id=WEATHER_CALL.id,
                name="get_weather",
                arguments_json='{"city": "Paris", "unit": "celsius"}',
            )
        ],
    )
    await stub.Generate(ask(*next_turn(merged, "21 °C"), tools=[WEATHER_TOOL], reasoning=thinking))

    assert sent_assistant_turn(fake)[0] == {
        "type": "thinking",
        "thinking": "Paris, so celsius.",
        "signature": SIGNATURE,
    }


async def test_redacted_thinking_is_kept_and_sent_back(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    """Thinking the API encrypted has no text to show: reasoning_signature carries the blocks
    themselves, so the next turn sends back exactly what came."""
    blocks = [thinking_block("Paris, so celsius.", SIGNATURE), redacted_block(REDACTED)]
    fake.script(
        answer(
            message(
                [
                    *blocks,
                    tool_use_block(
                        WEATHER_CALL.id, "get_weather", {"city": "Paris", "unit": "celsius"}
                    ),
                ],
                stop_reason="tool_use",
            )
        )
    )
    thinking = pb.ReasoningOptions(budget_tokens=1024)
    output = await stub.Generate(
        ask(user("Weather in Paris?"), tools=[WEATHER_TOOL], reasoning=thinking)
    )

    assert output.reasoning == "Paris, so celsius."
    assert json.loads(output.reasoning_signature) == blocks
    await stub.Generate(ask(*next_turn(output, "21 °C"), tools=[WEATHER_TOOL], reasoning=thinking))

    assert sent_assistant_turn(fake)[:2] == blocks


# --- streamed tool calls -------------------------------------------------------------------------


def parallel_calls_stream() -> list[tuple[str, dict[str, Any]]]:
    """Thinking (one block readable, one redacted), text, and three calls with text between them;
    the arguments cut mid-key, mid-string and inside a \\u escape, the last call with no input at
    all."""
    return [
        message_start(usage(20, 1, cache_read_input_tokens=1800)),
        *thinking_events(0, ["Two cities, ", "three tools."], SIGNATURE),
        PING,
        *redacted_events(1, REDACTED),
        *text_events(2, ["I'll look ", "these up."]),
        *tool_use_events(
            3, "toolu_01", "get_weather", ['{"ci', 'ty": "Par', 'is", "unit": "cel', 'sius"}']
        ),
        *text_events(4, [" And the time:"]),
        *tool_use_events(5, "toolu_02", "get_time", ['{"city": "T\\u00f', '6ky\\u00f6"}']),
        *tool_use_events(6, "toolu_03", "ping", []),
        message_delta("tool_use", {"output_tokens": 88}),
        MESSAGE_STOP,
    ]


async def test_parallel_tool_calls_streamed_split_mid_json(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    fake.script(stream_of(parallel_calls_stream(), chunk_bytes=61))
    request = ask(
        tools=[WEATHER_TOOL, time_tool(), pb.Tool(name="ping")],
        reasoning=pb.ReasoningOptions(budget_tokens=1024),
    )
    messages = await collect(stub.GenerateStream(request))

    assert fold_stream(stream_view(messages)) == fold_stream(
        [
            ("reasoning", "Two cities, "),
            ("reasoning", "three tools."),
            ("text", "I'll look "),
            ("text", "these up."),
            ("call", 0, "toolu_01", "get_weather", ""),
            ("call", 0, "", "", '{"ci'),
            ("call", 0, "", "", 'ty": "Par'),
            ("call", 0, "", "", 'is", "unit": "cel'),
            ("call", 0, "", "", 'sius"}'),
            ("text", " And the time:"),
            ("call", 1, "toolu_02", "get_time", ""),
            ("call", 1, "", "", '{"city": "T\\u00f'),
            ("call", 1, "", "", '6ky\\u00f6"}'),
            ("call", 2, "toolu_03", "ping", ""),
            ("call", 2, "", "", "{}"),
        ]
    )
    arguments: dict[int, str] = {}
    for output in messages:
        for delta in output.tool_call_deltas:
            arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments_delta
    assert {index: json.loads(text) for index, text in arguments.items()} == {
        0: {"city": "Paris", "unit": "celsius"},
        1: {"city": "Tökyö"},
        2: {},
    }
    last = messages[-1]
    assert last.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert (
        last.usage.prompt_tokens,
        last.usage.cached_prompt_tokens,
        last.usage.completion_tokens,
    ) == (1820, 1800, 88)
    assert json.loads(b"".join(m.reasoning_signature for m in messages)) == [
        thinking_block("Two cities, three tools.", SIGNATURE),
        redacted_block(REDACTED),
    ]
    assert all(not m.tool_calls for m in messages)


# --- structured output ---------------------------------------------------------------------------

PERSON = {"name": "Ada Lovelace", "age": 36, "languages": ["English", "French"]}


def person_request(output_format: pb.OutputFormat) -> pb.ModelRequest:
    return ask(user("Describe Ada Lovelace."), output_format=output_format)


async def test_json_schema_is_a_forced_tool_whose_input_is_the_text(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    schema = pb.JsonSchema(name="person", schema_json=json.dumps(PERSON_SCHEMA), strict=True)
    fake.script(
        answer(message([tool_use_block("toolu_01", "person", PERSON)], stop_reason="tool_use"))
    )
    output = await stub.Generate(person_request(pb.OutputFormat(json_schema=schema)))

    sent = body(fake)
    assert sent["tools"] == [
        {
            "name": "person",
            "description": "Give your answer as this tool's input: a JSON object matching its "
            "schema.",
            "input_schema": PERSON_SCHEMA,
            "strict": True,
        }
    ]
    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "person",
        "disable_parallel_tool_use": True,
    }
    assert json.loads(output.text) == PERSON and not output.tool_calls
    jsonschema.validate(json.loads(output.text), PERSON_SCHEMA)
    assert output.finish_reason == pb.FINISH_REASON_STOP


async def test_json_schema_streams_as_text(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    schema = pb.JsonSchema(name="person", schema_json=json.dumps(PERSON_SCHEMA))
    fake.script(
        stream_of(
            streamed([tool_use_block("toolu_01", "person", PERSON)], "tool_use", piece_chars=5)
        )
    )
    messages = await collect(
        stub.GenerateStream(person_request(pb.OutputFormat(json_schema=schema)))
    )

    assert "".join(m.text for m in messages) == json.dumps(PERSON)
    assert messages[0].text  # streamed as it came (the rest may come coalesced), not at the end
    assert all(not m.tool_call_deltas for m in messages)
    assert messages[-1].finish_reason == pb.FINISH_REASON_STOP
    assert "strict" not in body(fake)["tools"][0]


async def test_json_object_is_a_forced_tool_taking_any_object(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    fake.script(
        stream_of(
            [
                message_start(),
                *tool_use_events(0, "toolu_01", "json_object", []),
                message_delta("tool_use", usage(0, 3)),
                MESSAGE_STOP,
            ]
        )
    )
    messages = await collect(stub.GenerateStream(person_request(pb.OutputFormat(json_object=True))))

    sent = body(fake)
    assert sent["tools"] == [
        {
            "name": "json_object",
            "description": "Give your answer as this tool's input: a JSON object.",
            "input_schema": {"type": "object"},
        }
    ]
    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "json_object",
        "disable_parallel_tool_use": True,
    }
    assert "".join(m.text for m in messages) == "{}", (
        "an answer with no input deltas is still a JSON object"
    )


# --- refusals ------------------------------------------------------------------------------------


def thinking(**fields: Any) -> dict[str, Any]:
    return {"reasoning": pb.ReasoningOptions(**fields)}


SIGNED_TOOL_TURN = pb.ModelMessage(role=pb.ROLE_ASSISTANT, tool_calls=[WEATHER_CALL])
REFUSALS = [
    (
        "tool message without tool_call_id",
        "messages[1].tool_call_id",
        ask(user("Weather?"), pb.ModelMessage(role=pb.ROLE_TOOL, content="sunny")),
    ),
    (
        "image from the assistant",
        "messages[1].parts[0].image",
        ask(
            user("Draw."),
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT,
                parts=[pb.ContentPart(image=pb.Image(url="https://example.com/a.png"))],
            ),
        ),
    ),
    (
        "image in the system prompt",
        "messages[0].parts[1].image",
        ask(
            pb.ModelMessage(
                role=pb.ROLE_SYSTEM,
                parts=[
                    pb.ContentPart(text="Style:"),
                    pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/png")),
                ],
            ),
            user("Hi"),
        ),
    ),
    (
        "data URL not in base64",
        "messages[0].parts[0].image.url",
        ask(
            pb.ModelMessage(
                role=pb.ROLE_USER,
                parts=[pb.ContentPart(image=pb.Image(url="data:image/png,%89PNG"))],
            )
        ),
    ),
    (
        "data URL of a type Anthropic lacks",
        "messages[0].parts[0].image.url",
        ask(
            pb.ModelMessage(
                role=pb.ROLE_USER,
                parts=[pb.ContentPart(image=pb.Image(url="data:image/svg+xml;base64,PHN2Zy8+"))],
            )
        ),
    ),
    (
        "reasoning without its signature",
        "messages[1].reasoning_signature",
        ask(
            user("Hi"),
            pb.ModelMessage(role=pb.ROLE_ASSISTANT, content="Hello.", reasoning="Greet back."),
            user("Again?"),
        ),
    ),
    (
        "a signature that is not UTF-8",
        "messages[1].reasoning_signature",
        ask(
            user("Hi"),
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT, content="Hello.", reasoning_signature=b"\xff\xfe"
            ),
            user("Again?"),
        ),
    ),
    (
        "a signature array that is not thinking blocks",
        "messages[1].reasoning_signature",
        ask(
            user("Hi"),
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT, content="Hello.", reasoning_signature=b'[{"type": "text"}]'
            ),
            user("Again?"),
        ),
    ),
    (
        "cache breakpoint on an empty message",
        "messages[0].cache_breakpoint",
        ask(pb.ModelMessage(role=pb.ROLE_USER, content="", cache_breakpoint=True)),
    ),
    (
        "cache breakpoint on thinking alone",
        "messages[1].cache_breakpoint",
        ask(
            user("Hi"),
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT,
                reasoning="Hm.",
                reasoning_signature=SIGNATURE.encode(),
                cache_breakpoint=True,
            ),
            user("Go on."),
        ),
    ),
    (
        "five cache breakpoints",
        "messages[4].cache_breakpoint",
        ask(
            *(
                pb.ModelMessage(
                    role=pb.ROLE_USER if n % 2 == 0 else pb.ROLE_ASSISTANT,
                    content=f"part {n}",
                    cache_breakpoint=True,
                )
                for n in range(5)
            )
        ),
    ),
    (
        "a tool schema that is not an object",
        "tools[0].parameters_json_schema",
        ask(
            tools=[
                pb.Tool(
                    name="pick",
                    parameters_json_schema='{"type": "array", "items": {"type": "string"}}',
                )
            ]
        ),
    ),
    (
        "output_format with tools",
        "output_format",
        ask(output_format=pb.OutputFormat(json_object=True), tools=[WEATHER_TOOL]),
    ),
    (
        "output_format with a tool choice",
        "output_format",
        ask(
            output_format=pb.OutputFormat(json_object=True),
            tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE),
        ),
    ),
    (
        "output_format with reasoning",
        "output_format",
        ask(output_format=pb.OutputFormat(json_object=True), **thinking(budget_tokens=1024)),
    ),
    (
        "a structured output schema that is not an object",
        "output_format.json_schema.schema_json",
        ask(
            output_format=pb.OutputFormat(
                json_schema=pb.JsonSchema(
                    name="names", schema_json='{"type": "array", "items": {"type": "string"}}'
                )
            )
        ),
    ),
    (
        "an effort to a budget model",
        "reasoning.effort",
        ask(**thinking(effort=pb.REASONING_EFFORT_HIGH, budget_tokens=2048)),
    ),
    ("thinking without a budget", "reasoning.budget_tokens", ask(**thinking())),
    ("a budget below 1024", "reasoning.budget_tokens", ask(**thinking(budget_tokens=512))),
    (
        "a budget not below max_new_tokens",
        "reasoning.budget_tokens",
        ask(sampling=pb.SamplingParams(max_new_tokens=2048), **thinking(budget_tokens=2048)),
    ),
    (
        "a budget not below max_output_tokens",
        "reasoning.budget_tokens",
        ask(**thinking(budget_tokens=8192)),
    ),
    (
        "a budget to adaptive thinking",
        "reasoning.budget_tokens",
        ask(model="claude-adaptive", **thinking(budget_tokens=2048)),
    ),
    (
        "a minimal effort",
        "reasoning.effort",
        ask(model="claude-adaptive", **thinking(effort=pb.REASONING_EFFORT_MINIMAL)),
    ),
    (
        "temperature with thinking",
        "sampling.temperature",
        ask(sampling=pb.SamplingParams(temperature=0.2), **thinking(budget_tokens=1024)),
    ),
    (
        "top_p below 0.95 with thinking",
        "sampling.top_p",
        ask(sampling=pb.SamplingParams(top_p=0.9), **thinking(budget_tokens=1024)),
    ),
    (
        "a forced tool with thinking",
        "tool_choice",
        ask(
            tools=[WEATHER_TOOL],
            tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED),
            **thinking(budget_tokens=1024),
        ),
    ),
    (
        "thinking on, answering a turn whose thinking is missing",
        "messages[1].reasoning_signature",
        ask(
            user("Weather?"),
            SIGNED_TOOL_TURN,
            pb.ModelMessage(role=pb.ROLE_TOOL, tool_call_id=WEATHER_CALL.id, content="sunny"),
            tools=[WEATHER_TOOL],
            **thinking(budget_tokens=1024),
        ),
    ),
    ("a seed", "sampling.seed", ask(sampling=pb.SamplingParams(seed=7))),
    (
        "a presence penalty",
        "sampling.presence_penalty",
        ask(sampling=pb.SamplingParams(presence_penalty=0.5)),
    ),
    (
        "a frequency penalty",
        "sampling.frequency_penalty",
        ask(sampling=pb.SamplingParams(frequency_penalty=0.5)),
    ),
    (
        "a message name",
        "messages[0].name",
        ask(pb.ModelMessage(role=pb.ROLE_USER, content="Hi", name="ada")),
    ),
    (
        "reasoning to a model configured without it",
        "reasoning",
        ask(model="claude-defaults", **thinking(budget_tokens=1024)),
    ),
    (
        "a grammar",
        "output_format.grammar",
        ask(output_format=pb.OutputFormat(grammar='root ::= "yes"')),
    ),
]


@pytest.mark.parametrize(
    ("case", "field_name", "request_"), REFUSALS, ids=[case for case, _, _ in REFUSALS]
)
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_refused_by_field_and_model_before_the_upstream(
    stub: pb_grpc.ModelWorkerStub,
    fake: FakeUpstream,
    case: str,
    field_name: str,
    request_: pb.ModelRequest,
    streaming: bool,
) -> None:
    call = collect(stub.GenerateStream(request_)) if streaming else stub.Generate(request_)
    await assert_refused(call, field_name, request_.model)
    assert not fake.exchanges


async def test_a_budget_the_prompt_leaves_no_room_for_is_refused(
    stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream
) -> None:
    """max_new_tokens is bounded by the room the prompt leaves, after the provider's first check:
    a budget that fitted the model's max_output_tokens may no longer fit."""
    long_prompt = user("word " * 2500)
    await assert_refused(
        stub.Generate(ask(long_prompt, model="claude-small", **thinking(budget_tokens=2000))),
        "reasoning.budget_tokens",
        "claude-small",
    )
    assert not fake.exchanges


async def test_embed_is_refused(stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream) -> None:
    await assert_refused(
        stub.Embed(pb.EmbedRequest(model="claude", inputs=["hello"])), "model", "claude"
    )
    assert not fake.exchanges


async def test_default_capabilities(stub: pb_grpc.ModelWorkerStub) -> None:
    listed = {
        model.model: list(model.capabilities)
        for model in (await stub.ListModels(pb.ListModelsRequest())).models
    }
    assert listed["claude-defaults"] == [
        pb.CAPABILITY_CHAT,
        pb.CAPABILITY_STREAMING,
        pb.CAPABILITY_TOOLS,
        pb.CAPABILITY_JSON_SCHEMA,
        pb.CAPABILITY_VISION,
        pb.CAPABILITY_PROMPT_CACHE,
    ]


def test_thinking_option_is_checked(tmp_path: Path) -> None:
    config = load_toml_config(
        tmp_path,
        '[[models]]\nname = "c"\nprovider = "anthropic"\ncontext_length = 1000\nthinking = '
        '"sometimes"\n',
    )
    with (
        ThreadPoolExecutor(1) as executor,
        pytest.raises(ConfigError, match=r"models\[0\]\.thinking"),
    ):
        AnthropicClient.new_client(config.models[0], executor)


# --- the shared conformance cases ----------------------------------------------------------------

HONOURS = frozenset(
    {
        Case.TOOLS_UNARY,
        Case.TOOLS_STREAM,
        Case.TOOLS_TWO_TURN,
        Case.JSON_SCHEMA,
        Case.JSON_OBJECT,
        Case.IMAGE,
        Case.REASONING,
        Case.PROMPT_CACHE,
    }
)


@pytest.mark.parametrize("case", cases_for(HONOURS), ids=lambda case: case.value)
async def test_conformance(stub: pb_grpc.ModelWorkerStub, fake: FakeUpstream, case: Case) -> None:
    async def prepare(case: Case) -> None:
        fake.script(answer_as_claude)

    target = Target(
        name="anthropic",
        stub=stub,
        model="claude",
        honours=HONOURS,
        prepare=prepare,
        upstream_body=lambda: dict(fake.exchanges[-1].json()),
    )
    await run_case(target, case)
    assert bool(fake.exchanges) == (case in HONOURS), (
        "honoured cases reach the upstream, refused ones never do"
    )
