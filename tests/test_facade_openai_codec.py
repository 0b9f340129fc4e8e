"""The OpenAI facade's codec (facade/openai_wire/): golden pairs from the API reference in both
directions, each refusal naming its param, and the installed openai SDK reading every answer (its
pydantic models, and the SDK itself over a mock transport), which is what compatibility means."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from modelwire.core.errors import InvalidRequest
from modelwire.core.types import (
    Embeddings,
    FinishReason,
    Image,
    JsonObjectFormat,
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
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    Usage,
    merge_outputs,
)
from modelwire.facade import openai_wire
from modelwire.facade.calls import HttpError
from modelwire.providers.openai.codec import FINISH_REASONS

GOLDEN = Path(__file__).parent / "golden" / "facade" / "openai"


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def golden_bytes(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def frames(sse: bytes) -> list[Any]:
    """The JSON of each `data:` frame, [DONE] left out."""
    events = [event for event in sse.split(b"\n\n") if event]
    assert all(event.startswith(b"data: ") for event in events), sse
    return [json.loads(event[6:]) for event in events if event != b"data: [DONE]"]


def refused(body: object) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequest) as caught:
        openai_wire.parse_chat(body)
    return [(violation.field, violation.description) for violation in caught.value.violations]


def user(text: str) -> ModelMessage:
    return ModelMessage(Role.USER, text)


WEATHER_SCHEMA = (
    '{"type":"object","properties":{"location":{"type":"string","description":"The city and '
    'state, e.g. San Francisco, CA"},"unit":{"type":"string","enum":["celsius","fahrenheit"]}},'
    '"required":["location"]}'
)
BOSTON = ToolCall("call_abc123", "get_current_weather", '{"location":"Boston, MA"}')


# --- requests: golden bodies -> domain ------------------------------------------------------------


def test_reference_default_request() -> None:
    call = openai_wire.parse_chat(golden("chat_request_reference.json"))
    assert call.request == ModelRequest(
        model="gpt-4o",
        messages=(ModelMessage(Role.SYSTEM, "You are a helpful assistant."), user("Hello!")),
    )
    assert (call.stream, call.include_usage, call.origins) == (
        False,
        False,
        ("messages[0]", "messages[1]"),
    )


def test_reference_vision_request() -> None:
    call = openai_wire.parse_chat(golden("chat_request_vision.json"))
    url = (
        "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/Gfp-wisconsin-madison-the-"
        "nature-boardwalk.jpg/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
    )
    assert call.request == ModelRequest(
        model="gpt-4o",
        messages=(
            ModelMessage(
                Role.USER,
                "",
                parts=(
                    "What's in this image?",
                    Image(url=url),
                    Image(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png"),
                ),
            ),
        ),
        sampling=SamplingParams(max_new_tokens=300),
    )
    assert openai_wire.error_param("sampling.max_new_tokens", call) == "max_tokens"


def test_reference_functions_request() -> None:
    call = openai_wire.parse_chat(golden("chat_request_functions.json"))
    assert call.request == ModelRequest(
        model="gpt-4o",
        messages=(user("What's the weather like in Boston today?"),),
        tools=(
            Tool(
                "get_current_weather",
                "Get the current weather in a given location",
                WEATHER_SCHEMA,
            ),
        ),
        tool_choice=ToolChoiceMode.AUTO,
    )


def test_a_conversation_with_every_translated_field() -> None:
    call = openai_wire.parse_chat(golden("chat_request_conversation.json"))
    assert call.request == ModelRequest(
        model="deepseek-reasoner",
        messages=(
            ModelMessage(Role.SYSTEM, "Answer in French.", name="house_rules"),
            ModelMessage(Role.USER, "What's the weather like in Boston today?", name="ada"),
            ModelMessage(
                Role.ASSISTANT,
                "",
                tool_calls=(BOSTON,),
                reasoning="The user wants Boston's weather: call the tool.",
                reasoning_signature=b"signed",
            ),
            ModelMessage(Role.TOOL, "", parts=("22C, sunny",), tool_call_id="call_abc123"),
            ModelMessage(Role.USER, "", parts=("And tomorrow?",), cache_breakpoint=True),
        ),
        sampling=SamplingParams(
            temperature=0.7,
            top_p=0.9,
            max_new_tokens=1024,
            stop=("\n\n", "END"),
            seed=42,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
        ),
        context=RequestContext(user="user-1234", metadata={"team": "weather"}),
        tools=(
            Tool(
                "get_current_weather",
                parameters_json_schema='{"type":"object","properties":{"location":{"type":'
                '"string"}},"required":["location"],"additionalProperties":false}',
                strict=True,
            ),
        ),
        tool_choice=NamedTool("get_current_weather"),
        parallel_tool_calls=False,
        output_format=JsonSchemaFormat(
            "forecast", '{"type":"object","properties":{"summary":{"type":"string"}}}', True
        ),
        reasoning=ReasoningOptions(effort=ReasoningEffort.LOW),
    )
    assert (call.stream, call.include_usage) == (True, True)
    assert call.origins == tuple(f"messages[{index}]" for index in range(5))


def test_small_forms() -> None:
    """A stop string, json_object, text format, an assistant's text parts, a null content."""
    call = openai_wire.parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                {"role": "assistant", "content": None},
            ],
            "stop": "END",
            "response_format": {"type": "json_object"},
            "tool_choice": "required",
            "stream": False,
            "temperature": 0,
            "max_completion_tokens": 5,
        }
    )
    request = call.request
    assert request.messages[1:] == (
        ModelMessage(Role.ASSISTANT, "", parts=("hello",)),
        ModelMessage(Role.ASSISTANT, ""),
    )
    assert request.sampling == SamplingParams(temperature=0.0, max_new_tokens=5, stop=("END",))
    assert request.output_format == JsonObjectFormat()
    assert request.tool_choice is ToolChoiceMode.REQUIRED
    assert openai_wire.error_param("sampling.stop[0]", call) == "stop"
    assert openai_wire.error_param("sampling.max_new_tokens", call) == "max_completion_tokens"
    text = openai_wire.parse_chat({**BASE, "response_format": {"type": "text"}})
    assert text.request.output_format is None


# --- requests: refusals ---------------------------------------------------------------------------

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def with_message(message: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "messages": [*BASE["messages"], message]}


def with_user_part(part: dict[str, Any]) -> dict[str, Any]:
    return with_message({"role": "user", "content": [part]})


TOOL = {"type": "function", "function": {"name": "f"}}

REFUSALS: list[tuple[object, str]] = [
    # Not translated, or asking for what cannot be done.
    ({**BASE, "n": 2}, "n"),
    ({**BASE, "n": True}, "n"),
    ({**BASE, "logprobs": True}, "logprobs"),
    ({**BASE, "top_logprobs": 0}, "top_logprobs"),
    ({**BASE, "logit_bias": {"50256": -100}}, "logit_bias"),
    ({**BASE, "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({**BASE, "modalities": ["text", "audio"]}, "modalities"),
    ({**BASE, "prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({**BASE, "web_search_options": {}}, "web_search_options"),
    ({**BASE, "service_tier": "flex"}, "service_tier"),
    ({**BASE, "store": True}, "store"),
    ({**BASE, "verbosity": "low"}, "verbosity"),
    ({**BASE, "function_call": "auto"}, "function_call"),
    ({**BASE, "functions": [{"name": "f"}]}, "functions"),
    ({**BASE, "prompt_cache_key": "k"}, "prompt_cache_key"),
    ({**BASE, "safety_identifier": "u"}, "safety_identifier"),
    ({**BASE, "moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({**BASE, "reasoning_effort": "none"}, "reasoning_effort"),
    ({**BASE, "reasoning_effort": "xhigh"}, "reasoning_effort"),
    ({**BASE, "frobnicate": 1}, "frobnicate"),
    (
        {**BASE, "stream": True, "stream_options": {"include_obfuscation": True}},
        "stream_options.include_obfuscation",
    ),
    ({**BASE, "stream_options": {"include_usage": True}}, "stream_options"),
    ({**BASE, "stream": True, "stream_options": {"chunk_size": 3}}, "stream_options.chunk_size"),
    ({**BASE, "max_tokens": 10, "max_completion_tokens": 20}, "max_tokens"),
    ({**BASE, "tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
    ({**BASE, "tools": [{**TOOL, "cache_control": {}}]}, "tools[0].cache_control"),
    (
        {**BASE, "tools": [{"type": "function", "function": {"name": "f", "examples": []}}]},
        "tools[0].function.examples",
    ),
    ({**BASE, "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice.type"),
    ({**BASE, "tool_choice": "any"}, "tool_choice"),
    (
        {
            **BASE,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "description": "d", "schema": {}},
            },
        },
        "response_format.json_schema.description",
    ),
    (
        {**BASE, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema.schema",
    ),
    ({**BASE, "response_format": {"type": "grammar"}}, "response_format.type"),
    # Messages and their parts.
    (with_message({"role": "function", "name": "f", "content": "x"}), "messages[1].role"),
    (
        with_message({"role": "user", "content": "x", "cache_control": {}}),
        "messages[1].cache_control",
    ),
    (
        with_message({"role": "tool", "content": "x", "tool_call_id": "c", "name": "f"}),
        "messages[1].name",
    ),
    (with_message({"role": "tool", "content": "x"}), "messages[1].tool_call_id"),
    (with_message({"role": "assistant", "content": "x", "refusal": "no"}), "messages[1].refusal"),
    (with_message({"role": "assistant", "audio": {"id": "audio_1"}}), "messages[1].audio"),
    (
        with_message({"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}),
        "messages[1].function_call",
    ),
    (
        with_message({"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}),
        "messages[1].content[0].type",
    ),
    (
        with_message({"role": "assistant", "reasoning_signature": "not base64!"}),
        "messages[1].reasoning_signature",
    ),
    (
        with_message(
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}
        ),
        "messages[1].tool_calls[0].type",
    ),
    (
        with_message(
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}
                ],
            }
        ),
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        with_message(
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/i.png"}}],
            }
        ),
        "messages[1].content[0].type",
    ),
    (
        with_user_part(
            {"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": "low"}}
        ),
        "messages[1].content[0].image_url.detail",
    ),
    (
        with_user_part({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}),
        "messages[1].content[0].image_url.url",
    ),
    (
        with_user_part({"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}),
        "messages[1].content[0].image_url.url",
    ),
    (
        with_user_part({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}),
        "messages[1].content[0].type",
    ),
    (
        with_user_part({"type": "file", "file": {"file_id": "file-1"}}),
        "messages[1].content[0].type",
    ),
    (
        with_user_part(
            {
                "type": "text",
                "text": "x",
                "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "12h"},
            }
        ),
        "messages[1].content[0].prompt_cache_breakpoint.ttl",
    ),
    (
        with_message(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a", "prompt_cache_breakpoint": {"mode": "explicit"}},
                    {"type": "text", "text": "b"},
                ],
            }
        ),
        "messages[1].content[0].prompt_cache_breakpoint",
    ),
    (with_message({"role": "user", "content": []}), "messages[1].content"),
    # Types.
    ([], ""),
    ({"messages": BASE["messages"]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": {"role": "user"}}, "messages"),
    ({**BASE, "temperature": "hot"}, "temperature"),
    ({**BASE, "temperature": True}, "temperature"),
    ({**BASE, "top_p": 10**400}, "top_p"),
    ({**BASE, "max_completion_tokens": 2.5}, "max_completion_tokens"),
    ({**BASE, "max_tokens": 2**31}, "max_tokens"),
    ({**BASE, "seed": 2**63}, "seed"),
    ({**BASE, "stop": ["a", 1]}, "stop[1]"),
    ({**BASE, "stream": "yes"}, "stream"),
    ({**BASE, "user": 7}, "user"),
    ({**BASE, "metadata": {"a": 1}}, "metadata.a"),
    ({**BASE, "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    (
        {**BASE, "tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
        "tools[0].function.parameters",
    ),
    (
        {**BASE, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        "tools[0].function.parameters",
    ),
    ({**BASE, "tools": {"type": "function"}}, "tools"),
    (
        {
            **BASE,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
        },
        "response_format.json_schema.schema",
    ),
    (with_message({"role": "user"}), "messages[1].content"),
    (with_message({"role": "user", "content": 5}), "messages[1].content"),
    (with_message({"role": ["user"], "content": "x"}), "messages[1].role"),
    (with_message({"role": "user", "content": "x", "name": 3}), "messages[1].name"),
    (with_message("hello"), "messages[1]"),
]


@pytest.mark.parametrize(("body", "param"), REFUSALS)
def test_refusals_name_their_param(body: object, param: str) -> None:
    assert [field for field, _ in refused(body)] == [param]


def test_refusals_are_all_named_at_once() -> None:
    fields = refused({**BASE, "n": 3, "temperature": "hot", "messages": [{"role": "x"}]})
    assert [field for field, _ in fields] == ["n", "messages[0].role", "temperature"]


def test_refusals_say_why() -> None:
    assert refused({**BASE, "frobnicate": 1}) == [
        ("frobnicate", "is not a field this gateway translates")
    ]
    (field, description), *_ = refused({**BASE, "functions": [{"name": "f"}]})
    assert "use tools" in description
    (field, description), *_ = refused(with_message({"role": "function", "content": "x"}))
    assert "tool messages" in description


DEFAULTS: list[dict[str, Any]] = [
    {"n": 1},
    {"logprobs": False},
    {"logit_bias": {}},
    {"store": False},
    {"service_tier": "auto"},
    {"service_tier": "default"},
    {"modalities": ["text"]},
    {"verbosity": "medium"},
    {"stream": True, "stream_options": {"include_usage": False, "include_obfuscation": False}},
    {key: None for key in ("n", "logprobs", "top_logprobs", "audio", "prediction", "seed")},
    {key: None for key in ("functions", "function_call", "web_search_options", "temperature")},
    {key: None for key in ("tools", "tool_choice", "response_format", "stop", "user", "metadata")},
]


@pytest.mark.parametrize("extra", DEFAULTS)
def test_values_meaning_the_default_are_taken(extra: dict[str, Any]) -> None:
    call = openai_wire.parse_chat({**BASE, **extra})
    assert call.request == ModelRequest("m", (user("hi"),))
    assert not call.include_usage


def test_equal_max_tokens_are_one() -> None:
    call = openai_wire.parse_chat({**BASE, "max_tokens": 7, "max_completion_tokens": 7})
    assert call.request.sampling.max_new_tokens == 7


# --- the contract's field names as params ---------------------------------------------------------

CALL = openai_wire.parse_chat(
    {
        **golden("chat_request_conversation.json"),
        "max_completion_tokens": None,
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/bmp;base64,AAAA"},
                        "prompt_cache_breakpoint": {"mode": "explicit"},
                    },
                ],
            },
        ],
    }
)

PARAMS = [
    ("sampling.temperature", "temperature"),
    ("sampling.top_p", "top_p"),
    ("sampling.max_new_tokens", "max_tokens"),
    ("sampling.seed", "seed"),
    ("sampling.presence_penalty", "presence_penalty"),
    ("sampling.frequency_penalty", "frequency_penalty"),
    ("sampling.stop", "stop"),
    ("sampling.stop[1]", "stop[1]"),
    ("model", "model"),
    ("messages", "messages"),
    ("messages[2]", "messages[2]"),
    ("messages[0].content", "messages[0].content"),
    ("messages[0].name", "messages[0].name"),
    ("messages[2].parts[1].image", "messages[2].content[1].image_url"),
    ("messages[2].parts[1].image.mime_type", "messages[2].content[1].image_url.url"),
    ("messages[2].parts[1].image.url", "messages[2].content[1].image_url.url"),
    ("messages[2].cache_breakpoint", "messages[2].content[1].prompt_cache_breakpoint"),
    ("messages[1].tool_calls", "messages[1].tool_calls"),
    ("messages[1].tool_calls[0].id", "messages[1].tool_calls[0].id"),
    ("messages[1].tool_calls[0].name", "messages[1].tool_calls[0].function.name"),
    ("messages[1].tool_calls[0].arguments_json", "messages[1].tool_calls[0].function.arguments"),
    ("messages[1].reasoning", "messages[1].reasoning_content"),
    ("messages[1].reasoning_signature", "messages[1].reasoning_signature"),
    ("messages[0].tool_call_id", "messages[0].tool_call_id"),
    ("tools", "tools"),
    ("tools[0].name", "tools[0].function.name"),
    ("tools[0].parameters_json_schema", "tools[0].function.parameters"),
    ("tool_choice", "tool_choice"),
    ("tool_choice.tool_name", "tool_choice"),
    ("tool_choice.mode", "tool_choice"),
    ("parallel_tool_calls", "parallel_tool_calls"),
    ("output_format", "response_format"),
    ("output_format.json_schema.name", "response_format.json_schema.name"),
    ("output_format.json_schema.schema_json", "response_format.json_schema.schema"),
    ("reasoning", "reasoning_effort"),
    ("reasoning.effort", "reasoning_effort"),
    ("reasoning.budget_tokens", "reasoning_effort"),
    ("metadata x-modelwire-tenant", "metadata x-modelwire-tenant"),
    ("", ""),
]


@pytest.mark.parametrize(("field", "param"), PARAMS)
def test_error_param(field: str, param: str) -> None:
    assert openai_wire.error_param(field, CALL) == param


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("sampling.max_new_tokens", "max_completion_tokens"),
        ("sampling.stop[0]", "stop[0]"),
        ("messages[4].reasoning", "messages[4].reasoning_content"),
        ("messages[4].cache_breakpoint", "messages[4].content"),
        ("inputs", "input"),
        ("inputs[2]", "input[2]"),
        ("dimensions", "dimensions"),
    ],
)
def test_error_param_without_a_call(field: str, param: str) -> None:
    assert openai_wire.error_param(field, None) == param


def test_error_param_follows_origins() -> None:
    """A message index is mapped through the call's origins, whatever they are."""
    call = openai_wire.ChatCall(
        ModelRequest("m", (user("a"), user("b"))), False, origins=("messages[0]", "messages[5]")
    )
    assert openai_wire.error_param("messages[1].content", call) == "messages[5].content"


# --- answers: domain -> golden JSON ---------------------------------------------------------------

TEXT_OUTPUT = ModelOutput(
    text="\n\nHello there, how may I assist you today?",
    finish_reason=FinishReason.STOP,
    usage=Usage(prompt_tokens=9, completion_tokens=12),
)
TOOL_OUTPUT = ModelOutput(
    reasoning="The user wants Boston's weather: call the tool.",
    reasoning_signature=b"signed",
    tool_calls=(BOSTON,),
    finish_reason=FinishReason.TOOL_CALLS,
    usage=Usage(82, 17, cached_prompt_tokens=64, reasoning_tokens=9),
)


def test_chat_completion_text() -> None:
    body = openai_wire.chat_completion(TEXT_OUTPUT, "gpt-4o", "chatcmpl-123", 1677652288)
    assert body == golden("chat_completion_text.json")
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == TEXT_OUTPUT.text
    assert parsed.usage is not None and parsed.usage.total_tokens == 21


def test_chat_completion_tool_calls_and_reasoning() -> None:
    body = openai_wire.chat_completion(
        TOOL_OUTPUT, "deepseek-reasoner", "chatcmpl-abc123", 1699896916
    )
    assert body == golden("chat_completion_tool_calls.json")
    parsed = ChatCompletion.model_validate(body)
    call = parsed.choices[0].message.tool_calls
    assert call is not None and call[0].function.name == "get_current_weather"  # type: ignore[union-attr]
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 64


def test_an_answers_turn_comes_back_as_it_went() -> None:
    """The assistant message of a response, sent back in the next request, is the same turn."""
    message = openai_wire.chat_completion(TOOL_OUTPUT, "m", "c", 0)["choices"][0]["message"]
    call = openai_wire.parse_chat(with_message(message))
    assert call.request.messages[1] == ModelMessage(
        Role.ASSISTANT,
        "",
        tool_calls=TOOL_OUTPUT.tool_calls,
        reasoning=TOOL_OUTPUT.reasoning,
        reasoning_signature=TOOL_OUTPUT.reasoning_signature,
    )


def test_finish_reasons_are_chat_completions_names() -> None:
    """`reason.value` is what the answer says: the provider codec reads each back as itself."""
    for reason in FinishReason:
        assert FINISH_REASONS[reason.value] is reason


# --- streams: domain deltas -> golden SSE bytes ---------------------------------------------------


def stream(
    outputs: list[ModelOutput], include_usage: bool, model: str, completion_id: str, created: int
) -> bytes:
    chat = openai_wire.ChatStream(model, completion_id, created, include_usage)
    return b"".join(chat.chunk(output) for output in outputs) + chat.end()


TEXT_DELTAS = [
    ModelOutput(text="Hello"),
    ModelOutput(text=' there, "ünïcode"\n'),
    ModelOutput(text=""),
    ModelOutput(timing=None, usage=Usage(9, 1)),
    ModelOutput(finish_reason=FinishReason.STOP, usage=Usage(9, 2)),
]
TOOL_DELTAS = [
    ModelOutput(reasoning="Call "),
    ModelOutput(reasoning="the tool.", reasoning_signature=b"sign"),
    ModelOutput(tool_call_deltas=(ToolCallDelta(0, "call_abc123", "get_current_weather"),)),
    ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta='{"location":'),)),
    ModelOutput(
        tool_call_deltas=(ToolCallDelta(0, arguments_delta='"Boston, MA"}'),),
        reasoning_signature=b"ed",
    ),
    ModelOutput(finish_reason=FinishReason.TOOL_CALLS, usage=Usage(82, 17)),
]


def test_text_stream() -> None:
    sse = stream(TEXT_DELTAS, True, "gpt-4o-mini", "chatcmpl-123", 1694268190)
    assert sse == golden_bytes("chat_stream_text.sse")
    chunks = [ChatCompletionChunk.model_validate(frame) for frame in frames(sse)]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == (
        'Hello there, "ünïcode"\n'
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_tool_call_stream() -> None:
    sse = stream(TOOL_DELTAS, False, "deepseek-reasoner", "chatcmpl-abc123", 1699896916)
    assert sse == golden_bytes("chat_stream_tool_calls.sse")
    for frame in frames(sse):
        ChatCompletionChunk.model_validate(frame)
    deltas = [frame["choices"][0]["delta"] for frame in frames(sse)]
    signature = "".join(delta.get("reasoning_signature", "") for delta in deltas)
    assert base64.b64decode(signature) == b"signed"


@pytest.mark.parametrize("sizes", [[1, 1, 1, 1], [2, 2, 2], [5, 1], [4], [1, 3, 2, 1]])
def test_a_streamed_signature_joins_into_the_whole(sizes: list[int]) -> None:
    """Whatever pieces the signature comes in, the base64 deltas join into its base64; the
    remainder goes with the finish, or in a chunk of its own at the end when none finishes."""
    whole = bytes(range(100, 100 + sum(sizes)))
    pieces, start = [], 0
    for size in sizes:
        pieces.append(ModelOutput(reasoning_signature=whole[start : start + size]))
        start += size
    for finish in (FinishReason.STOP, None):
        sse = stream([*pieces, ModelOutput(finish_reason=finish)], False, "m", "c", 0)
        deltas = [frame["choices"][0]["delta"] for frame in frames(sse)]
        joined = "".join(delta.get("reasoning_signature", "") for delta in deltas)
        assert base64.b64decode(joined, validate=True) == whole
        assert merge_outputs(pieces).reasoning_signature == whole


def test_stream_without_usage_reported_owes_none() -> None:
    sse = stream([ModelOutput(text="x", finish_reason=FinishReason.LENGTH)], True, "m", "c", 0)
    assert [frame["choices"][0]["finish_reason"] for frame in frames(sse)] == ["length"]
    assert sse.endswith(b"data: [DONE]\n\n")


def test_stream_error_frame() -> None:
    chat = openai_wire.ChatStream("m", "c", 0, True)
    error = HttpError(503, "UNAVAILABLE", "upstream is down", retry_after_s=1.0)
    assert chat.error(error) == (
        b'data: {"error":{"message":"upstream is down","type":"service_unavailable",'
        b'"param":null,"code":null}}\n\n'
    )


# --- embeddings, models, errors -------------------------------------------------------------------

VECTOR = (0.0023064255, -0.009327292, -0.0028842222)


def test_embeddings_reference_pair() -> None:
    request, encoding = openai_wire.parse_embeddings(golden("embeddings_request.json"))
    assert (request.model, request.inputs, request.dimensions, encoding) == (
        "text-embedding-ada-002",
        ("The food was delicious and the waiter...",),
        None,
        "float",
    )
    body = openai_wire.embeddings_body(Embeddings((VECTOR,), Usage(8)), request.model, encoding)
    assert body == golden("embeddings_float.json")
    CreateEmbeddingResponse.model_validate(body)


def test_embeddings_base64_is_little_endian_float32() -> None:
    request, encoding = openai_wire.parse_embeddings(
        {
            "model": "e",
            "input": ["a", "b"],
            "encoding_format": "base64",
            "dimensions": 3,
            "user": "",
        }
    )
    assert (request.inputs, request.dimensions, encoding) == (("a", "b"), 3, "base64")
    body = openai_wire.embeddings_body(
        Embeddings((VECTOR, (1.0, 0.5, -2.0)), Usage(2)), "e", encoding
    )
    encoded = body["data"][1]["embedding"]
    assert encoded == base64.b64encode(struct.pack("<3f", 1.0, 0.5, -2.0)).decode()
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "e", "input": [1, 2, 3]}, "input"),
        ({"model": "e", "input": [[1, 2]]}, "input"),
        ({"model": "e", "input": []}, "input"),
        ({"model": "e"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "e", "input": "x", "dimensions": "3"}, "dimensions"),
        ({"model": "e", "input": "x", "user": "u-1"}, "user"),
        ({"model": "e", "input": "x", "truncate": True}, "truncate"),
        ("x", ""),
    ],
)
def test_embedding_refusals(body: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        openai_wire.parse_embeddings(body)
    assert [violation.field for violation in caught.value.violations] == [param]


def test_models() -> None:
    metadata = ModelMetadata("gemma", "local", 8192, 1024)
    assert openai_wire.model_object(metadata) == {
        "id": "gemma",
        "object": "model",
        "created": 0,
        "owned_by": "local",
    }
    listed = openai_wire.model_list([metadata])
    assert listed == {"object": "list", "data": [openai_wire.model_object(metadata)]}
    Model.model_validate(listed["data"][0])


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (
            HttpError(400, "INVALID_ARGUMENT", "bad", param="temperature"),
            "invalid_request_error",
            None,
        ),
        (HttpError(401, "UNAUTHENTICATED", "no key"), "authentication_error", "invalid_api_key"),
        (HttpError(403, "PERMISSION_DENIED", "not yours"), "permission_error", None),
        (
            HttpError(404, "NOT_FOUND", "no model", param="model"),
            "not_found_error",
            "model_not_found",
        ),
        (HttpError(404, "NOT_FOUND", "no path"), "not_found_error", None),
        (
            HttpError(429, "RESOURCE_EXHAUSTED", "slow down", retry_after_s=2),
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        (HttpError(500, "INTERNAL", "incident 1"), "server_error", None),
        (HttpError(502, "FAILED_PRECONDITION", "upstream key"), "server_error", None),
        (HttpError(503, "UNAVAILABLE", "busy"), "service_unavailable", None),
        (HttpError(504, "DEADLINE_EXCEEDED", "late"), "server_error", None),
        (HttpError(405, "UNIMPLEMENTED", "no"), "invalid_request_error", None),
    ],
)
def test_error_body(error: HttpError, kind: str, code: str | None) -> None:
    assert openai_wire.error_body(error) == {
        "error": {"message": error.message, "type": kind, "param": error.param, "code": code}
    }


# --- the openai SDK itself, over a mock transport -------------------------------------------------


Handler = Callable[[httpx2.Request], httpx2.Response]


def sdk(handler: Handler) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://facade.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def serve_chat(outputs: list[ModelOutput], seen: list[openai_wire.ChatCall]) -> Handler:
    """A facade in miniature: the body through parse_chat, the outputs back as the API."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        call = openai_wire.parse_chat(json.loads(request.content))
        seen.append(call)
        if not call.stream:
            body = openai_wire.chat_completion(merge_outputs(outputs), call.request.model, "c", 1)
            return httpx2.Response(200, json=body)
        chat = openai_wire.ChatStream(call.request.model, "c", 1, call.include_usage)
        sse = b"".join(chat.chunk(output) for output in outputs) + chat.end()
        return httpx2.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    return handle


def test_sdk_unary_and_the_turn_sent_back() -> None:
    seen: list[openai_wire.ChatCall] = []
    client = sdk(serve_chat(TOOL_DELTAS, seen))
    messages: list[Any] = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    completion = client.chat.completions.create(
        model="deepseek-reasoner",
        messages=messages,
        tools=[{"type": "function", "function": {"name": "get_current_weather"}}],
        max_completion_tokens=100,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and message.tool_calls[0].id == "call_abc123"
    assert (message.model_extra or {})["reasoning_content"] == "Call the tool."
    # The SDK's own message object, appended as is: the reasoning and its signature come back.
    messages += [message, {"role": "tool", "tool_call_id": "call_abc123", "content": "22C"}]
    client.chat.completions.create(model="deepseek-reasoner", messages=messages)
    assert seen[1].request.messages[1] == ModelMessage(
        Role.ASSISTANT,
        "",
        tool_calls=(BOSTON,),
        reasoning="Call the tool.",
        reasoning_signature=b"signed",
    )


def test_sdk_stream_with_usage() -> None:
    seen: list[openai_wire.ChatCall] = []
    client = sdk(serve_chat(TEXT_DELTAS, seen))
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert seen[0].stream and seen[0].include_usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        'Hello there, "ünïcode"\n'
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_sdk_stream_accumulates_tool_calls() -> None:
    client = sdk(serve_chat(TOOL_DELTAS, []))
    with client.chat.completions.stream(
        model="m", messages=[{"role": "user", "content": "hi"}]
    ) as events:
        final = events.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.arguments == BOSTON.arguments_json  # type: ignore[union-attr]


def test_sdk_raises_the_error_frame() -> None:
    error = HttpError(503, "UNAVAILABLE", "upstream is down")

    def handle(_request: httpx2.Request) -> httpx2.Response:
        chat = openai_wire.ChatStream("m", "c", 1, False)
        sse = chat.chunk(ModelOutput(text="partial")) + chat.error(error)
        return httpx2.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    client = sdk(handle)
    texts: Iterator[Any] = iter(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert next(texts).choices[0].delta.content == "partial"
    with pytest.raises(openai.APIError) as caught:
        next(texts)
    assert caught.value.message == "upstream is down"
    assert caught.value.type == "service_unavailable"


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (503, openai.InternalServerError),
    ],
)
def test_sdk_error_statuses(status: int, exception: type[openai.APIStatusError]) -> None:
    error = HttpError(status, "X", "why", param="temperature")
    client = sdk(lambda _request: httpx2.Response(status, json=openai_wire.error_body(error)))
    with pytest.raises(exception) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.message == f"Error code: {status} - why"
    assert caught.value.param == "temperature"
    assert caught.value.type == openai_wire.error_body(error)["error"]["type"]


def test_sdk_embeddings_default_to_base64() -> None:
    vectors = ((0.25, -1.5, 3.0), (1e-3, 2.0, -0.125))
    formats: list[str] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        embed, encoding = openai_wire.parse_embeddings(json.loads(request.content))
        formats.append(encoding)
        body = openai_wire.embeddings_body(Embeddings(vectors, Usage(4)), embed.model, encoding)
        return httpx2.Response(200, json=body)

    client = sdk(handle)
    response = client.embeddings.create(model="e", input=["a", "b"])
    assert formats == ["base64"]
    decoded = tuple(tuple(item.embedding) for item in response.data)
    assert decoded == tuple(struct.unpack("<3f", struct.pack("<3f", *v)) for v in vectors)
    assert response.usage.total_tokens == 4


def test_sdk_models() -> None:
    listed = openai_wire.model_list([ModelMetadata("gemma", "local", 8192, 1024)])
    client = sdk(lambda _request: httpx2.Response(200, json=listed))
    assert [model.id for model in client.models.list()] == ["gemma"]
