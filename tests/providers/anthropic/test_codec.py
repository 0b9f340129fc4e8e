"""Messages API JSON and events ⇄ domain, without a server: recorded messages and event streams
(tests/anthropic_wire.py) fed straight to the codec and the refusals."""

from __future__ import annotations

import json
from typing import Any

from anthropic_wire import (
    Event,
    message,
    message_delta,
    message_start,
    redacted_events,
    text_events,
    thinking_events,
    tool_use_events,
    usage,
)
from modelwire.core.types import (
    FinishReason,
    Image,
    JsonObjectFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    NamedTool,
    ReasoningOptions,
    Role,
    SamplingParams,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    Usage,
)
from modelwire.providers.anthropic.codec import (
    FINISH_REASONS,
    JSON_OBJECT_TOOL,
    StreamBlocks,
    final_finish,
    input_json,
    output_tool,
    reasoning_blocks,
    signature_of,
    system_and_turns,
    update_usage,
    usage_of,
    wire_tool,
    wire_tool_choice,
)
from modelwire.providers.anthropic.refusals import unsupported
from modelwire.providers.http.sse import finish_reason

MODEL = ModelMetadata(
    model="claude", provider="anthropic", context_length=200_000, max_output_tokens=8192
)
CALL = ToolCall("toolu_01", "get_weather", '{"city": "Paris"}')


def request(*messages: ModelMessage, **fields: Any) -> ModelRequest:
    return ModelRequest(model="claude", messages=messages, **fields)


def stream(events: list[Event], structured: bool = False) -> tuple[list[ModelOutput], bytes]:
    """The outputs the stream's content blocks give, as the client's loop makes them (text
    deltas inline, the rest through StreamBlocks), and the signature at the end."""
    generated: list[str] = []
    blocks = StreamBlocks(structured, generated)
    outputs: list[ModelOutput | None] = []
    for _, payload in events:
        kind = payload["type"]
        if kind == "content_block_start":
            outputs.append(blocks.start(payload["index"], payload["content_block"]))
        elif kind == "content_block_delta" and payload["delta"]["type"] == "text_delta":
            outputs.append(ModelOutput(text=payload["delta"]["text"]))
        elif kind == "content_block_delta":
            outputs.append(blocks.delta(payload["index"], payload["delta"]))
        elif kind == "content_block_stop":
            outputs.append(blocks.stop(payload["index"]))
    return [output for output in outputs if output is not None], blocks.signature()


# --- domain request → body ----------------------------------------------------------------------


def test_system_goes_apart_and_same_role_messages_merge_into_one_turn() -> None:
    system, turns = system_and_turns(
        (
            ModelMessage(Role.SYSTEM, "Be brief."),
            ModelMessage(Role.SYSTEM, "Use French."),
            ModelMessage(Role.USER, "Hi"),
            ModelMessage(Role.USER, "Weather?"),
            ModelMessage(Role.ASSISTANT, "Bonjour"),
        )
    )
    assert system == "Be brief.\n\nUse French."
    assert turns == [
        {"role": "user", "content": "Hi\n\nWeather?"},
        {"role": "assistant", "content": "Bonjour"},
    ]


def test_tool_calls_and_results_become_blocks_results_sharing_one_user_turn() -> None:
    _, turns = system_and_turns(
        (
            ModelMessage(Role.USER, "Weather in Paris and Rome?"),
            ModelMessage(
                Role.ASSISTANT,
                "Looking.",
                tool_calls=(CALL, ToolCall("toolu_02", "get_weather", '{"city": "Rome"}')),
            ),
            ModelMessage(Role.TOOL, "18°C", tool_call_id="toolu_01"),
            ModelMessage(Role.TOOL, "21°C", tool_call_id="toolu_02"),
        )
    )
    assert turns[1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "21°C"},
            ],
        },
    ]


def test_images_cache_breakpoints_and_a_signed_thought_sent_back() -> None:
    system, turns = system_and_turns(
        (
            ModelMessage(Role.SYSTEM, "Long rules", cache_breakpoint=True),
            ModelMessage(
                Role.USER, "", parts=("What is it?", Image(data=b"GIF89a", mime_type="image/gif"))
            ),
            ModelMessage(
                Role.ASSISTANT, "A cat.", reasoning="Whiskers.", reasoning_signature=b"EqQBCgIYAh"
            ),
        )
    )
    assert system == [
        {"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}
    ]
    assert turns == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Whiskers.", "signature": "EqQBCgIYAh"},
                {"type": "text", "text": "A cat."},
            ],
        },
    ]


def test_tools_and_tool_choices_in_the_messages_api_shapes() -> None:
    tool = Tool(
        "get_weather",
        "The weather",
        '{"type":"object","properties":{"city":{"type":"string"}}}',
        strict=True,
    )
    assert wire_tool(tool) == {
        "name": "get_weather",
        "description": "The weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    }
    hi = ModelMessage(Role.USER, "Hi")
    assert wire_tool_choice(request(hi, tool_choice=ToolChoiceMode.NONE)) == {"type": "none"}
    assert wire_tool_choice(request(hi, tool_choice=ToolChoiceMode.REQUIRED)) == {"type": "any"}
    assert wire_tool_choice(
        request(hi, tool_choice=NamedTool("get_weather"), parallel_tool_calls=False)
    ) == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    assert wire_tool_choice(request(hi, parallel_tool_calls=False)) == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert wire_tool_choice(request(hi)) is None


def test_structured_output_is_a_forced_tool() -> None:
    assert output_tool(JsonSchemaFormat("answer", '{"type":"object"}', strict=True)) == {
        "name": "answer",
        "description": "Give your answer as this tool's input: a JSON object matching its schema.",
        "input_schema": {"type": "object"},
        "strict": True,
    }
    assert output_tool(JsonObjectFormat())["name"] == JSON_OBJECT_TOOL


# --- JSON answer → domain -----------------------------------------------------------------------


def test_usage_counts_cache_reads_and_writes_into_prompt_tokens() -> None:
    counts = usage(
        9,
        4,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
        output_tokens_details={"thinking_tokens": 3},
    )
    assert usage_of(counts) == Usage(
        prompt_tokens=129,
        completion_tokens=4,
        cached_prompt_tokens=100,
        cache_write_tokens=20,
        reasoning_tokens=3,
    )
    assert usage_of(message([])["usage"]) == Usage(prompt_tokens=9, completion_tokens=4)


def test_message_delta_counts_replace_message_start_ones() -> None:
    counts: dict[str, Any] = {}
    update_usage(counts, message_start(usage(25, 1))[1]["message"]["usage"])
    update_usage(
        counts, message_delta("end_turn", {"output_tokens": 15, "input_tokens": None})[1]["usage"]
    )
    assert usage_of(counts) == Usage(prompt_tokens=25, completion_tokens=15)


def test_stop_reasons_and_structured_output_finishing() -> None:
    assert finish_reason(FINISH_REASONS, "max_tokens") is FinishReason.LENGTH
    assert finish_reason(FINISH_REASONS, "refusal") is FinishReason.CONTENT_FILTER
    assert finish_reason(FINISH_REASONS, "tool_use") is FinishReason.TOOL_CALLS
    assert final_finish(FinishReason.TOOL_CALLS, structured=True) is FinishReason.STOP
    assert final_finish(FinishReason.TOOL_CALLS, structured=False) is FinishReason.TOOL_CALLS
    assert final_finish(None, structured=False) is FinishReason.STOP
    assert input_json({"city": "Paris"}) == '{"city": "Paris"}'
    assert input_json("not an object") == "{}"


def test_one_thought_signs_as_its_signature_several_as_their_blocks() -> None:
    thought = {"type": "thinking", "thinking": "Hmm.", "signature": "EqQB"}
    hidden = {"type": "redacted_thinking", "data": "EmwKAhgB"}
    assert signature_of([thought]) == b"EqQB"
    assert signature_of([]) == b""
    both = signature_of([thought, hidden])
    assert json.loads(both) == [thought, hidden]
    echoed = ModelMessage(Role.ASSISTANT, "", reasoning_signature=both)
    assert reasoning_blocks(echoed) == [thought, hidden]
    assert reasoning_blocks(ModelMessage(Role.ASSISTANT, "", reasoning_signature=b"[1]")) is None


# --- streamed events → deltas -------------------------------------------------------------------


def test_a_stream_of_thinking_text_and_a_call_becomes_deltas_and_a_signature() -> None:
    events = [
        message_start(),
        *thinking_events(0, ["Let me ", "check."], "EqQBsig"),
        *text_events(1, ["Checking ", "now."]),
        *tool_use_events(2, "toolu_01", "get_weather", ['{"city": ', '"Paris"}']),
    ]
    outputs, signature = stream(events)
    assert outputs == [
        ModelOutput(reasoning="Let me "),
        ModelOutput(reasoning="check."),
        ModelOutput(text="Checking "),
        ModelOutput(text="now."),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, id="toolu_01", name="get_weather"),)),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta='{"city": '),)),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta='"Paris"}'),)),
    ]
    assert signature == b"EqQBsig"


def test_a_call_without_input_deltas_gets_its_start_input_and_calls_are_numbered_among_calls() -> (
    None
):
    events = [
        *text_events(0, ["Hi"]),
        *tool_use_events(1, "toolu_a", "ping", []),
        *redacted_events(2, "EmwK"),
    ]
    outputs, signature = stream(events)
    assert outputs == [
        ModelOutput(text="Hi"),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, id="toolu_a", name="ping"),)),
        ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta="{}"),)),
    ]
    assert json.loads(signature) == [{"type": "redacted_thinking", "data": "EmwK"}]


def test_with_structured_output_the_forced_calls_arguments_are_the_text() -> None:
    outputs, _ = stream(tool_use_events(0, "toolu_x", "answer", ['{"a":', " 1}"]), structured=True)
    assert outputs == [ModelOutput(text='{"a":'), ModelOutput(text=" 1}")]


# --- refusals -----------------------------------------------------------------------------------


def test_what_the_messages_api_cannot_say_is_refused_by_field() -> None:
    sent = request(
        ModelMessage(Role.USER, "Hi", name="ann"),
        ModelMessage(Role.TOOL, "18°C"),
        sampling=SamplingParams(seed=7, presence_penalty=0.5),
    )
    assert [violation.field for violation in unsupported(MODEL, "enabled", sent)] == [
        "sampling.seed",
        "sampling.presence_penalty",
        "messages[0].name",
        "messages[1].tool_call_id",
    ]
    assert unsupported(MODEL, "enabled", request(ModelMessage(Role.USER, "Hi"))) == []


def test_thinking_rules_are_checked_before_the_call() -> None:
    hi = ModelMessage(Role.USER, "Hi")
    small = request(
        hi,
        reasoning=ReasoningOptions(budget_tokens=512),
        sampling=SamplingParams(temperature=0.5, top_p=0.9),
    )
    assert [violation.field for violation in unsupported(MODEL, "enabled", small)] == [
        "reasoning.budget_tokens",
        "sampling.temperature",
        "sampling.top_p",
    ]
    budget = request(
        hi, reasoning=ReasoningOptions(budget_tokens=2048), sampling=SamplingParams(temperature=1.0)
    )
    assert unsupported(MODEL, "enabled", budget) == []
    assert [violation.field for violation in unsupported(MODEL, "adaptive", budget)] == [
        "reasoning.budget_tokens"
    ]
