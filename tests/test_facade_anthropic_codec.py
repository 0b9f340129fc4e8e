"""The Anthropic facade's codec (facade/anthropic_wire/) pinned both ways with golden pairs shaped
like the Messages API reference's examples, each refusal by its param, round trips of tool calls
and thinking signatures through a response and the next request, and what the installed anthropic
SDK makes of every output (its pydantic types, its stream accumulator, its client over a mock
transport). UPDATE_GOLDEN=1 rewrites the golden files from the code (then read the diff)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, MessageTokensCount, ModelInfo
from anthropic.types.shared import ErrorResponse

from modelwire.core.errors import InvalidRequest
from modelwire.core.types import (
    Capability,
    FinishReason,
    Image,
    JsonSchemaFormat,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    NamedTool,
    ReasoningEffort,
    ReasoningOptions,
    RequestContext,
    Role,
    SamplingParams,
    TokenCount,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    Usage,
    merge_outputs,
)
from modelwire.facade import anthropic_wire as wire
from modelwire.facade.calls import GenerationCall, HttpError
from modelwire.providers.anthropic.codec import (
    FINISH_REASONS,
    STOP_REASONS,
    message_blocks,
    signature_of,
    system_and_turns,
    usage_of,
)

GOLDEN = Path(__file__).parent / "golden" / "facade" / "anthropic"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

TOOL_ID = "toolu_01D7FLrfh4GYq7yT1ULFeyMV"
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
STOCK_SCHEMA = {
    "type": "object",
    "properties": {
        "ticker": {
            "type": "string",
            "description": "The stock ticker symbol, e.g. AAPL for Apple Inc.",
        }
    },
    "required": ["ticker"],
}


def golden_json(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def check_golden_bytes(name: str, produced: bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_bytes(produced)
    assert produced == path.read_bytes()


def check_golden_json(name: str, produced: Any) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(json.dumps(produced, indent=2, ensure_ascii=False) + "\n")
    assert produced == golden_json(name)


def refused(parse: Callable[[object], object], body: object) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as raised:
        parse(body)
    return {violation.field: violation.description for violation in raised.value.violations}


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not ...}


# --- requests ------------------------------------------------------------------------------------


def test_a_full_request_becomes_the_domain_request() -> None:
    call = wire.parse_messages(golden_json("messages_request.json"))
    arguments = '{"ticker": "^GSPC"}'
    assert call == GenerationCall(
        request=ModelRequest(
            model="claude-sonnet-4-5",
            messages=(
                ModelMessage(Role.SYSTEM, "You are a stock analyst."),
                ModelMessage(Role.SYSTEM, "Quote prices in USD.", cache_breakpoint=True),
                ModelMessage(
                    Role.USER,
                    "",
                    parts=(
                        "What is in this chart, and what's the S&P 500 at today?",
                        Image(data=base64.b64decode("iVBORw0KGgo="), mime_type="image/png"),
                        Image(url="https://upload.wikimedia.org/chart.jpg"),
                    ),
                ),
                ModelMessage(
                    Role.ASSISTANT,
                    "Let me look that up.",
                    tool_calls=(ToolCall(TOOL_ID, "get_stock_price", arguments),),
                    reasoning="The user wants the index level.",
                    reasoning_signature=SIGNATURE.encode(),
                ),
                ModelMessage(Role.TOOL, "259.75 USD", tool_call_id=TOOL_ID, cache_breakpoint=True),
                ModelMessage(Role.USER, "And in euros?"),
            ),
            sampling=SamplingParams(top_p=0.95, max_new_tokens=4096, stop=("\n\nHuman:",)),
            context=RequestContext(user="13803d75-b4b5-4c3e-b2a2-6f21399b021b"),
            tools=(
                Tool(
                    "get_stock_price",
                    "Get the current stock price for a given ticker symbol.",
                    json.dumps(STOCK_SCHEMA, ensure_ascii=False),
                    strict=True,
                ),
            ),
            tool_choice=ToolChoiceMode.AUTO,
            parallel_tool_calls=False,
            reasoning=ReasoningOptions(budget_tokens=2048),
        ),
        stream=True,
        origins=(
            "system[0]",
            "system[1]",
            "messages[0]",
            "messages[1]",
            "messages[2].content[0]",
            "messages[2].content[1]",
        ),
    )


def test_the_provider_sends_the_parsed_request_back_as_it_came() -> None:
    """The provider's codec (domain → Messages API) gives the caller's turns back: the facade
    and the provider agree on blocks, thinking, breakpoints and tool results."""
    sent = golden_json("messages_request.json")
    call = wire.parse_messages(sent)
    system, turns = system_and_turns(call.request.messages)
    assert system == sent["system"]
    assert turns[:2] == sent["messages"][:2]
    # A tool_result's breakpoint goes on the tool_result block, as the caller put it.
    assert turns[2]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert turns[2]["content"][1] == {"type": "text", "text": "And in euros?"}


def test_the_smallest_request_is_plain() -> None:
    call = wire.parse_messages(body())
    assert call.request == ModelRequest(
        model="claude-sonnet-4-5",
        messages=(ModelMessage(Role.USER, "Hello, Claude"),),
        sampling=SamplingParams(max_new_tokens=1024),
    )
    assert call.request.messages[0].plain and call.request.plain
    assert (call.stream, call.origins) == (False, ("messages[0]",))


def test_nulls_mean_the_defaults() -> None:
    nulls = {
        key: None
        for key in (
            "system",
            "stop_sequences",
            "temperature",
            "top_p",
            "top_k",
            "tools",
            "tool_choice",
            "thinking",
            "output_config",
            "metadata",
            "stream",
            "service_tier",
            "cache_control",
            "container",
            "mcp_servers",
            "inference_geo",
        )
    }
    assert wire.parse_messages(body(**nulls)) == wire.parse_messages(body())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"tool_choice": {"type": "any"}}, (ToolChoiceMode.REQUIRED, None)),
        ({"tool_choice": {"type": "none"}}, (ToolChoiceMode.NONE, None)),
        (
            {"tool_choice": {"type": "tool", "name": "get_stock_price"}},
            (NamedTool("get_stock_price"), None),
        ),
        (
            {"tool_choice": {"type": "any", "disable_parallel_tool_use": False}},
            (ToolChoiceMode.REQUIRED, None),
        ),
    ],
)
def test_tool_choices(fields: dict[str, Any], expected: tuple[object, object]) -> None:
    tools = [{"name": "get_stock_price", "input_schema": STOCK_SCHEMA}]
    request = wire.parse_messages(body(tools=tools, **fields)).request
    assert (request.tool_choice, request.parallel_tool_calls) == expected


def test_thinking_options() -> None:
    def reasoning(**fields: Any) -> ReasoningOptions | None:
        return wire.parse_messages(body(**fields)).request.reasoning

    assert reasoning(thinking={"type": "disabled"}) is None
    assert reasoning(thinking={"type": "adaptive"}) == ReasoningOptions()
    assert reasoning(
        thinking={"type": "adaptive"}, output_config={"effort": "low"}
    ) == ReasoningOptions(effort=ReasoningEffort.LOW)


def test_structured_output_is_a_strict_json_schema() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    request = wire.parse_messages(
        body(output_config={"format": {"type": "json_schema", "schema": schema}})
    ).request
    assert request.output_format == JsonSchemaFormat(
        wire.OUTPUT_SCHEMA_NAME, json.dumps(schema), strict=True
    )


def test_a_user_turn_splits_around_its_tool_results() -> None:
    turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Here are the results."},
            {"type": "tool_result", "tool_use_id": "a", "content": [{"type": "text", "text": "1"}]},
            {
                "type": "tool_result",
                "tool_use_id": "b",
                "content": [
                    {"type": "text", "text": "chart:"},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/c.png"}},
                ],
            },
            {"type": "text", "text": "Go on.", "cache_control": {"type": "ephemeral"}},
        ],
    }
    call = wire.parse_messages(body(messages=[turn]))
    assert call.request.messages == (
        ModelMessage(Role.USER, "Here are the results."),
        ModelMessage(Role.TOOL, "1", tool_call_id="a"),
        ModelMessage(
            Role.TOOL, "", parts=("chart:", Image(url="https://x.test/c.png")), tool_call_id="b"
        ),
        ModelMessage(Role.USER, "Go on.", cache_breakpoint=True),
    )
    assert call.origins == tuple(f"messages[0].content[{index}]" for index in range(4))


def test_top_level_cache_control_marks_the_last_message() -> None:
    request = wire.parse_messages(body(cache_control={"type": "ephemeral"})).request
    assert request.messages == (ModelMessage(Role.USER, "Hello, Claude", cache_breakpoint=True),)


def test_count_tokens_reads_the_conversation() -> None:
    request = wire.parse_count_tokens(
        {
            "model": "claude-sonnet-4-5",
            "system": "You are a scientist",
            "messages": [{"role": "user", "content": "Hello, Claude"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
    )
    assert request == ModelRequest(
        model="claude-sonnet-4-5",
        messages=(
            ModelMessage(Role.SYSTEM, "You are a scientist"),
            ModelMessage(Role.USER, "Hello, Claude"),
        ),
        reasoning=ReasoningOptions(budget_tokens=1024),
    )


def test_count_tokens_refuses_tools_rather_than_counting_without_them() -> None:
    problems = refused(
        wire.parse_count_tokens,
        {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"name": "get_stock_price", "input_schema": STOCK_SCHEMA}],
        },
    )
    assert list(problems) == ["tools"]
    assert "counting tools is not supported" in problems["tools"]
    assert "max_tokens" in refused(
        wire.parse_count_tokens,
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
    )


def _user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


def _assistant(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": list(blocks)}]


TEXT = {"type": "text", "text": "x"}
CACHED = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
TOOL_USE = {"type": "tool_use", "id": "t", "name": "f", "input": {}}

REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("no max_tokens", body(max_tokens=...), "max_tokens"),
    ("max_tokens not an integer", body(max_tokens=1.5), "max_tokens"),
    ("max_tokens past int32", body(max_tokens=2**31), "max_tokens"),
    ("no model", body(model=...), "model"),
    ("no messages", body(messages=...), "messages"),
    ("empty messages", body(messages=[]), "messages"),
    ("an unknown field", body(inference_geo="us"), "inference_geo"),
    ("container", body(container="container_1"), "container"),
    ("mcp_servers", body(mcp_servers=[{"type": "url"}]), "mcp_servers"),
    ("context_management", body(context_management={"edits": []}), "context_management"),
    ("beta output_format", body(output_format={"type": "json_schema"}), "output_format"),
    ("top_k", body(top_k=5), "top_k"),
    ("temperature over Anthropic's 1", body(temperature=1.5), "temperature"),
    ("temperature a string", body(temperature="hot"), "temperature"),
    ("stream not a boolean", body(stream="yes"), "stream"),
    ("a priority tier", body(service_tier="priority"), "service_tier"),
    ("a stop sequence not a string", body(stop_sequences=["a", 1]), "stop_sequences[1]"),
    ("metadata beyond user_id", body(metadata={"user_id": "u", "org": "o"}), "metadata.org"),
    ("a system role", body(messages=[{"role": "system", "content": "x"}]), "messages[0].role"),
    ("a message key", body(messages=[{"role": "user", "content": "x", "n": 1}]), "messages[0].n"),
    ("content a number", body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (
        "a system block not text",
        body(system=[{"type": "image", "source": {}}]),
        "system[0].type",
    ),
    (
        "a document block",
        body(messages=_user({"type": "document", "source": {"type": "text", "data": "d"}})),
        "messages[0].content[0].type",
    ),
    (
        "a search_result block",
        body(messages=_user({"type": "search_result", "source": "s", "title": "t"})),
        "messages[0].content[0].type",
    ),
    (
        "citations on text",
        body(messages=_user({"type": "text", "text": "x", "citations": [{}]})),
        "messages[0].content[0].citations",
    ),
    (
        "an unknown block key",
        body(messages=_user({"type": "text", "text": "x", "extra": 1})),
        "messages[0].content[0].extra",
    ),
    (
        "a file image",
        body(messages=_user({"type": "image", "source": {"type": "file", "file_id": "f"}})),
        "messages[0].content[0].source",
    ),
    (
        "bad base64",
        body(
            messages=_user(
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "@@"},
                }
            )
        ),
        "messages[0].content[0].source.data",
    ),
    (
        "an image type Anthropic refuses",
        body(
            messages=_user(
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/bmp", "data": ""},
                }
            )
        ),
        "messages[0].content[0].source.media_type",
    ),
    (
        "a tool_result that is an error",
        body(messages=_user({"type": "tool_result", "tool_use_id": "t", "is_error": True})),
        "messages[0].content[0].is_error",
    ),
    (
        "a document in a tool_result",
        body(
            messages=_user(
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}
            )
        ),
        "messages[0].content[0].content[0].type",
    ),
    (
        "cache_control inside a tool_result",
        body(messages=_user({"type": "tool_result", "tool_use_id": "t", "content": [CACHED]})),
        "messages[0].content[0].content[0].cache_control",
    ),
    (
        "a tool_use in a user turn",
        body(messages=_user(TOOL_USE)),
        "messages[0].content[0].type",
    ),
    (
        "a breakpoint before a turn's end",
        body(messages=_user(CACHED, TEXT)),
        "messages[0].content[0].cache_control",
    ),
    (
        "an hour-long breakpoint",
        body(messages=_user({**CACHED, "cache_control": {"type": "ephemeral", "ttl": "1h"}})),
        "messages[0].content[0].cache_control.ttl",
    ),
    (
        "text after a tool_use",
        body(messages=_assistant(TOOL_USE, TEXT)),
        "messages[1].content[1]",
    ),
    (
        "a tool_use input not an object",
        body(messages=_assistant({**TOOL_USE, "input": [1]})),
        "messages[1].content[0].input",
    ),
    (
        "a tool_result in an assistant turn",
        body(messages=_assistant({"type": "tool_result", "tool_use_id": "t"})),
        "messages[1].content[0].type",
    ),
    (
        "a thinking block without its signature",
        body(messages=_assistant({"type": "thinking", "thinking": "hm"})),
        "messages[1].content[0].signature",
    ),
    (
        "a server tool",
        body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        "tools[0].type",
    ),
    (
        "a bash tool",
        body(tools=[{"type": "bash_20250124", "name": "bash"}]),
        "tools[0].type",
    ),
    ("a tool without a schema", body(tools=[{"name": "f"}]), "tools[0].input_schema"),
    (
        "a tool's cache_control",
        body(tools=[{"name": "f", "input_schema": {}, "cache_control": {"type": "ephemeral"}}]),
        "tools[0].cache_control",
    ),
    (
        "a tool's input examples",
        body(tools=[{"name": "f", "input_schema": {}, "input_examples": [{}]}]),
        "tools[0].input_examples",
    ),
    ("an unknown tool choice", body(tool_choice={"type": "some"}), "tool_choice.type"),
    (
        "a name without type tool",
        body(tool_choice={"type": "auto", "name": "f"}),
        "tool_choice.name",
    ),
    (
        "parallel use with none",
        body(tool_choice={"type": "none", "disable_parallel_tool_use": True}),
        "tool_choice.disable_parallel_tool_use",
    ),
    ("thinking without a budget", body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (
        "thinking display",
        body(thinking={"type": "enabled", "budget_tokens": 2048, "display": "omitted"}),
        "thinking.display",
    ),
    ("thinking between tools", body(thinking={"type": "between_tools"}), "thinking.type"),
    (
        "an effort without adaptive thinking",
        body(output_config={"effort": "low"}),
        "output_config.effort",
    ),
    (
        "an effort the domain has not",
        body(thinking={"type": "adaptive"}, output_config={"effort": "max"}),
        "output_config.effort",
    ),
    (
        "a format not json_schema",
        body(output_config={"format": {"type": "text", "schema": {}}}),
        "output_config.format.type",
    ),
    (
        "a NaN in a schema",
        body(output_config={"format": {"type": "json_schema", "schema": {"x": float("nan")}}}),
        "output_config.format.schema",
    ),
]


@pytest.mark.parametrize(
    ("sent", "param"), [(sent, param) for _, sent, param in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_each_refusal_names_its_param(sent: dict[str, Any], param: str) -> None:
    assert param in refused(wire.parse_messages, sent)


@pytest.mark.parametrize("sent", [None, [], "text", 3])
def test_a_body_that_is_not_an_object_is_refused(sent: object) -> None:
    assert refused(wire.parse_messages, sent) == {"body": "must be a JSON object"}


def test_an_unknown_field_says_it_is_not_translated() -> None:
    assert refused(wire.parse_messages, body(speed="fast")) == {
        "speed": "is not a field this gateway translates"
    }


# --- error params --------------------------------------------------------------------------------


ORIGINS = GenerationCall(
    request=ModelRequest(model="m", messages=()),
    stream=False,
    origins=("system", "messages[0]", "messages[1]", "messages[2].content[0]"),
)


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("sampling.temperature", "temperature"),
        ("sampling.top_p", "top_p"),
        ("sampling.max_new_tokens", "max_tokens"),
        ("sampling.stop", "stop_sequences"),
        ("sampling.stop[1]", "stop_sequences[1]"),
        ("messages", "messages"),
        ("messages[0].content", "system"),
        ("messages[2].tool_calls[0].arguments_json", "messages[1]"),
        ("messages[3].tool_call_id", "messages[2].content[0].tool_use_id"),
        ("messages[3].parts[0].image", "messages[2].content[0]"),
        ("messages[9].content", "messages[9].content"),
        ("output_format", "output_config.format"),
        ("output_format.json_schema.schema_json", "output_config.format.schema"),
        ("tools", "tools"),
        ("tools[0].parameters_json_schema", "tools[0].input_schema"),
        ("tools[2].name", "tools[2].name"),
        ("tool_choice", "tool_choice"),
        ("tool_choice.tool_name", "tool_choice.name"),
        ("tool_choice.mode", "tool_choice.type"),
        ("reasoning", "thinking"),
        ("reasoning.budget_tokens", "thinking.budget_tokens"),
        ("reasoning.effort", "output_config.effort"),
        ("parallel_tool_calls", "tool_choice.disable_parallel_tool_use"),
        ("model", "model"),
        ("sampling.seed", "sampling.seed"),
    ],
)
def test_error_params_are_the_callers_fields(field: str, param: str) -> None:
    assert wire.error_param(field, ORIGINS) == param


def test_error_params_without_a_call_keep_message_indexes() -> None:
    assert wire.error_param("messages[1].content", None) == "messages[1].content"


# --- responses -----------------------------------------------------------------------------------

USAGE = Usage(
    prompt_tokens=2095,
    completion_tokens=503,
    cached_prompt_tokens=1800,
    cache_write_tokens=248,
    reasoning_tokens=120,
)


def test_a_unary_output_becomes_the_message() -> None:
    output = ModelOutput(
        text="The S&P 500 is at 5,000.",
        reasoning="The user wants the index level.",
        reasoning_signature=SIGNATURE.encode(),
        finish_reason=FinishReason.TOOL_CALLS,
        usage=USAGE,
        tool_calls=(ToolCall(TOOL_ID, "get_stock_price", '{"ticker": "^GSPC"}'),),
    )
    body_out = wire.message_body(output, "claude-sonnet-4-5", "msg_013Zva2CMHLNnXjNJJKqJ2EF")
    check_golden_json("message_response.json", body_out)
    message = Message.model_validate(body_out)
    assert message.usage.input_tokens == 47 and message.usage.cache_read_input_tokens == 1800
    assert usage_of(body_out["usage"]) == USAGE  # the provider reads it back as it was


@pytest.mark.parametrize(("finish", "stop"), list(STOP_REASONS.items()))
def test_stop_reasons_are_read_back_as_the_same_finish(finish: FinishReason, stop: str) -> None:
    output = ModelOutput(text="x", finish_reason=finish, usage=Usage(1, 1))
    assert wire.message_body(output, "m", "msg_1")["stop_reason"] == stop
    assert FINISH_REASONS[stop] is finish


def test_redacted_and_several_thinking_blocks_come_out_verbatim() -> None:
    blocks = [
        {"type": "thinking", "thinking": "First,", "signature": "sig-a"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
    ]
    output = ModelOutput(
        text="Done.",
        reasoning="First,",
        reasoning_signature=signature_of(blocks),
        finish_reason=FinishReason.STOP,
        usage=Usage(10, 5),
    )
    content = wire.message_body(output, "m", "msg_1")["content"]
    assert content == [*blocks, {"type": "text", "text": "Done."}]
    Message.model_validate(wire.message_body(output, "m", "msg_1"))


def test_reasoning_without_a_signature_is_a_thinking_block_with_an_empty_one() -> None:
    output = ModelOutput(text="4", reasoning="2 + 2", finish_reason=FinishReason.STOP)
    assert wire.message_body(output, "m", "msg_1")["content"][0] == {
        "type": "thinking",
        "thinking": "2 + 2",
        "signature": "",
    }


STREAM = [
    ModelOutput(reasoning="The user wants"),
    ModelOutput(reasoning=" the index level."),
    ModelOutput(text="Let me "),
    ModelOutput(text="look that up."),
    ModelOutput(tool_call_deltas=(ToolCallDelta(0, id=TOOL_ID, name="get_stock_price"),)),
    ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta='{"ticker":'),)),
    ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta=' "^GSPC"}'),)),
    ModelOutput(tool_call_deltas=(ToolCallDelta(1, id="toolu_02", name="get_stock_price"),)),
    ModelOutput(tool_call_deltas=(ToolCallDelta(1, arguments_delta='{"ticker": "AAPL"}'),)),
    ModelOutput(
        finish_reason=FinishReason.TOOL_CALLS,
        usage=USAGE,
        reasoning_signature=SIGNATURE.encode(),
    ),
]


def streamed(chunks: list[ModelOutput]) -> bytes:
    stream = wire.MessageStream("claude-sonnet-4-5", "msg_013Zva2CMHLNnXjNJJKqJ2EF")
    return b"".join(stream.chunk(chunk) for chunk in chunks) + stream.end()


def events_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in data.decode().split("\n\n")[:-1]:
        event, payload = frame.split("\n")
        assert event.startswith("event: ") and payload.startswith("data: ")
        parsed = json.loads(payload[len("data: ") :])
        assert parsed["type"] == event[len("event: ") :]
        events.append((parsed["type"], parsed))
    return events


def test_a_stream_becomes_the_events() -> None:
    data = streamed(STREAM)
    check_golden_bytes("stream_thinking_text_tools.sse", data)
    kinds = [kind for kind, _ in events_of(data)]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-2:] == ["message_delta", "message_stop"]


def accumulated(data: bytes) -> Message:
    snapshot = None
    buffers: dict[int, bytes] = {}
    for _, event in events_of(data):
        if event["type"] != "ping":
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    assert snapshot is not None
    return snapshot


def test_the_sdk_accumulates_the_stream_into_the_message() -> None:
    message = accumulated(streamed(STREAM))
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, first, second = message.content
    assert thinking.type == "thinking" and thinking.thinking == "The user wants the index level."
    assert thinking.signature == SIGNATURE
    assert text.type == "text" and text.text == "Let me look that up."
    assert first.type == "tool_use" and (first.id, first.input) == (TOOL_ID, {"ticker": "^GSPC"})
    assert second.type == "tool_use" and second.input == {"ticker": "AAPL"}
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (47, 503)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (1800, 248)
    # What it accumulated is what the unary answer says.
    unary = Message.model_validate(
        wire.message_body(merge_outputs(STREAM), "claude-sonnet-4-5", message.id)
    )
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        block.model_dump(exclude_none=True) for block in unary.content
    ]


def test_text_after_a_tool_call_opens_a_new_block_and_a_stream_ends_its_blocks() -> None:
    chunks = [
        ModelOutput(text="a"),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, id="t", name="f", arguments_delta="{}"),)),
        ModelOutput(text="b"),
    ]
    events = events_of(streamed(chunks))
    starts = [
        event["content_block"]["type"] for kind, event in events if kind == "content_block_start"
    ]
    stops = [event["index"] for kind, event in events if kind == "content_block_stop"]
    assert starts == ["text", "tool_use", "text"] and stops == [0, 1, 2]
    assert events[-1][0] == "message_stop"  # no last chunk: no message_delta is made up


def test_an_empty_stream_is_still_a_message() -> None:
    kinds = [kind for kind, _ in events_of(streamed([]))]
    assert kinds == ["message_start", "ping", "message_stop"]


def test_text_deltas_cost_one_event_each() -> None:
    stream = wire.MessageStream("m", "msg_1")
    stream.chunk(ModelOutput(text="a"))
    assert stream.chunk(ModelOutput(text="é\n")) == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"\xc3\xa9\\n"}}\n\n'
    )
    assert stream.chunk(ModelOutput()) == b""


def test_a_stream_error_is_the_error_event() -> None:
    stream = wire.MessageStream("m", "msg_1")
    assert stream.error(HttpError(529, "UNAVAILABLE", "Overloaded")) == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )


# --- round trips ---------------------------------------------------------------------------------


def next_turn(previous: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The caller's next request: the response's content as the assistant turn (what the SDK's
    Message.to_param() gives), then the tool's result."""
    assistant = Message.model_validate(previous).to_param()
    return body(
        messages=[
            {"role": "user", "content": "What's the S&P 500 at today?"},
            {
                "role": assistant["role"],
                "content": [block.model_dump(exclude_none=True) for block in assistant["content"]],
            },  # type: ignore[union-attr]
            {"role": "user", "content": [result]},
        ]
    )


def test_a_tool_conversation_round_trips() -> None:
    first = wire.parse_messages(
        body(
            messages=[{"role": "user", "content": "What's the S&P 500 at today?"}],
            tools=[{"name": "get_stock_price", "input_schema": STOCK_SCHEMA}],
        )
    )
    call = ToolCall(TOOL_ID, "get_stock_price", '{"ticker": "^GSPC"}')
    output = ModelOutput(
        text="Let me check.",
        finish_reason=FinishReason.TOOL_CALLS,
        usage=Usage(20, 10),
        tool_calls=(call,),
    )
    answered = wire.message_body(output, "claude-sonnet-4-5", "msg_1")
    result = {"type": "tool_result", "tool_use_id": TOOL_ID, "content": "259.75 USD"}
    second = wire.parse_messages(next_turn(answered, result))
    assert second.request.messages == (
        first.request.messages[0],
        ModelMessage(Role.ASSISTANT, "Let me check.", tool_calls=(call,)),
        ModelMessage(Role.TOOL, "259.75 USD", tool_call_id=TOOL_ID),
    )
    assert second.origins == ("messages[0]", "messages[1]", "messages[2].content[0]")


@pytest.mark.parametrize(
    "signature",
    [
        SIGNATURE.encode(),
        signature_of(
            [
                {"type": "thinking", "thinking": "The user wants", "signature": "sig-a"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "thinking", "thinking": " the index level.", "signature": "sig-b"},
            ]
        ),
    ],
    ids=["one block", "several blocks"],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_a_thinking_signature_round_trips(signature: bytes, streaming: bool) -> None:
    """Response → the caller's next request → the same domain reasoning and signature bytes,
    whether the response came whole or streamed (where several blocks travel as one block whose
    signature is the JSON array)."""
    chunks = [
        ModelOutput(reasoning="The user wants"),
        ModelOutput(reasoning=" the index level."),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, id=TOOL_ID, name="get_stock_price"),)),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta='{"ticker": "^GSPC"}'),)),
        ModelOutput(
            finish_reason=FinishReason.TOOL_CALLS,
            usage=Usage(20, 10),
            reasoning_signature=signature,
        ),
    ]
    merged = merge_outputs(chunks)
    if streaming:
        answered = accumulated(streamed(chunks)).model_dump(exclude_none=True)
    else:
        answered = wire.message_body(merged, "claude-sonnet-4-5", "msg_1")
    result = {"type": "tool_result", "tool_use_id": TOOL_ID, "content": "259.75 USD"}
    assistant = wire.parse_messages(next_turn(answered, result)).request.messages[1]
    assert assistant.reasoning_signature == signature
    assert assistant.reasoning == merged.reasoning
    assert assistant.tool_calls == merged.tool_calls
    # The provider sends the turn's thinking blocks as the upstream gave them.
    expected = message_blocks(
        ModelMessage(Role.ASSISTANT, "", reasoning=merged.reasoning, reasoning_signature=signature)
    )
    assert message_blocks(assistant)[: len(expected)] == expected


# --- through the SDK's client --------------------------------------------------------------------


def sdk_client(respond: Callable[[httpx.Request], httpx.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="k",
        base_url="http://facade.test",
        http_client=httpx.Client(transport=httpx.MockTransport(respond)),
        max_retries=0,
    )


def test_the_sdk_client_streams_and_sends_its_requests_back() -> None:
    """The SDK's own request is parsed, its stream helper builds the final message from the
    events, and that message as the next turn parses to the domain turn."""
    parsed: list[GenerationCall] = []

    def respond(request: httpx.Request) -> httpx.Response:
        call = wire.parse_messages(json.loads(request.content))
        parsed.append(call)
        if call.stream:
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=streamed(STREAM)
            )
        body_out = wire.message_body(merge_outputs(STREAM), call.request.model, "msg_2")
        return httpx.Response(200, json=body_out)

    client = sdk_client(respond)
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=4096,
        messages=[{"role": "user", "content": "What's the S&P 500 at today?"}],
        thinking={"type": "enabled", "budget_tokens": 2048},
    ) as stream:
        final = stream.get_final_message()
    assert parsed[0].request.reasoning == ReasoningOptions(budget_tokens=2048)
    assert final.content[0].type == "thinking" and final.content[0].signature == SIGNATURE
    assert final.usage.output_tokens == 503
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=4096,
        messages=[
            {"role": "user", "content": "What's the S&P 500 at today?"},
            final.to_param(),
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": TOOL_ID, "content": "259.75 USD"},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": "180 USD"},
                ],
            },
        ],
    )
    turn = parsed[1].request.messages[1]
    assert turn.reasoning_signature == SIGNATURE.encode()
    assert turn.text == "Let me look that up."
    assert [call.id for call in turn.tool_calls] == [TOOL_ID, "toolu_02"]


def test_the_sdk_reads_errors_counts_and_models() -> None:
    metadata = ModelMetadata(
        "claude-sonnet-4-5", "anthropic", 200000, 64000, (Capability.CHAT, Capability.REASONING)
    )

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=wire.model_list([metadata]))
        if request.url.path == "/v1/messages/count_tokens":
            wire.parse_count_tokens(json.loads(request.content))
            return httpx.Response(200, json=wire.count_tokens_body(TokenCount(14, "t", True)))
        error = HttpError(400, "INVALID_ARGUMENT", "must be in [0, 1], got 1.5", "temperature")
        return httpx.Response(400, json=wire.error_body(error, "req_011CSHoEeqs5C35K2UUqR7Fy"))

    client = sdk_client(respond)
    models = client.models.list()
    assert [model.id for model in models.data] == ["claude-sonnet-4-5"]
    assert models.data[0].max_input_tokens == 200000
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hello, Claude"}]
    )
    assert counted.input_tokens == 14
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "temperature: must be in [0, 1], got 1.5",
        },
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


def test_models_and_counts_in_anthropics_shape() -> None:
    metadata = ModelMetadata("claude-haiku-4-5", "anthropic", 200000, 64000)
    check_golden_json("models.json", wire.model_list([metadata]))
    ModelInfo.model_validate(wire.model_object(metadata))
    assert wire.model_list([]) == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    assert (
        MessageTokensCount.model_validate(
            wire.count_tokens_body(TokenCount(2095, "claude", True))
        ).input_tokens
        == 2095
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (405, "invalid_request_error"),
    ],
)
def test_error_types_by_status(status: int, kind: str) -> None:
    error_body = wire.error_body(HttpError(status, "X", "what happened"), None)
    assert error_body == {"type": "error", "error": {"type": kind, "message": "what happened"}}
    if kind != "request_too_large":  # in the errors reference, not in the SDK's union
        ErrorResponse.model_validate(error_body)


def test_an_error_message_names_its_param_once() -> None:
    named = HttpError(400, "INVALID_ARGUMENT", "max_tokens: is required", "max_tokens")
    assert wire.error_body(named, None)["error"]["message"] == "max_tokens: is required"


def test_a_signature_no_provider_gives_still_comes_out() -> None:
    """Not UTF-8: the API's string cannot hold its bytes, so they come out replaced."""
    output = ModelOutput(
        reasoning="hm", reasoning_signature=b"\xff", finish_reason=FinishReason.STOP
    )
    assert wire.message_body(output, "m", "msg_1")["content"] == [
        {"type": "thinking", "thinking": "hm", "signature": "\ufffd"}
    ]
