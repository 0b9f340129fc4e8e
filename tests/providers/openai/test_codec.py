"""Chat Completions JSON ⇄ domain, without a server: recorded request bodies, answers and streamed
chunks (tests/openai_wire.py) fed straight to the codec and the refusals."""

from __future__ import annotations

from typing import Any

import pytest

from modelwire.core import errors
from modelwire.core.errors import FieldViolation
from modelwire.core.types import (
    EmbedRequest,
    FinishReason,
    Image,
    JsonSchemaFormat,
    ModelMessage,
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
    Usage,
)
from modelwire.providers.http.options import HttpParams
from modelwire.providers.http.sse import finish_reason
from modelwire.providers.openai.codec import (
    FINISH_REASONS,
    OpenAIParams,
    StreamedCalls,
    body,
    contract_finish,
    reasoning_of,
    refusal_of,
    tool_calls_of,
    usage_of,
    vectors_of,
)
from modelwire.providers.openai.refusals import unsupported
from openai_wire import (
    arguments_delta,
    chunk,
    completion,
    embeddings,
    first_call_delta,
    tool_call_chunks,
    usage,
    wire_call,
)

MODEL = "gpt"
HTTP = HttpParams(
    provider="openai",
    api_base="https://api.openai.com/v1",
    api_key=None,
    api_key_env=None,
    upstream_model="gpt-4o-mini",
    timeout_s=60.0,
    max_retries=2,
    retry_backoff_s=0.5,
    headers={},
)


def options(reasoning_field: Any = None, stream_usage: bool = True) -> OpenAIParams:
    return OpenAIParams(
        http=HTTP,
        api_type="openai",
        api_version=None,
        max_tokens_param="max_completion_tokens",
        stream_usage=stream_usage,
        reasoning_field=reasoning_field,
    )


def request(*messages: ModelMessage, **fields: Any) -> ModelRequest:
    return ModelRequest(model=MODEL, messages=messages, **fields)


HI = ModelMessage(Role.USER, "Hi")
WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    '{"type":"object","properties":{"city":{"type":"string"}}}',
)
CALL = ToolCall("call_1", "get_weather", '{"city":"Paris"}')


# --- domain request → body ----------------------------------------------------------------------


def test_a_plain_streamed_request_is_the_body_openai_documents() -> None:
    sent = request(
        ModelMessage(Role.SYSTEM, "Be brief."),
        HI,
        sampling=SamplingParams(
            temperature=0.9, top_p=0.5, max_new_tokens=64, stop=("END",), seed=7
        ),
        context=RequestContext(user="user-42"),
    )
    assert body(sent, options(), "gpt-4o-mini", stream=True) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.9,
        "top_p": 0.5,
        "max_completion_tokens": 64,
        "seed": 7,
        "stop": ["END"],
        "user": "user-42",
    }


def test_a_unary_body_asks_for_no_stream_options_and_leaves_unset_sampling_out() -> None:
    assert body(request(HI), options(), "gpt-4o-mini", stream=False) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": False,
    }
    assert "stream_options" not in body(request(HI), options(stream_usage=False), "m", stream=True)


def test_tools_choice_structured_output_and_effort_take_their_chat_completions_names() -> None:
    sent = request(
        HI,
        tools=(WEATHER,),
        tool_choice=NamedTool("get_weather"),
        parallel_tool_calls=False,
        output_format=JsonSchemaFormat("answer", '{"type":"object"}', strict=True),
        reasoning=ReasoningOptions(effort=ReasoningEffort.LOW),
    )
    wire = body(sent, options(), "m", stream=False)
    assert wire["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    assert wire["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert wire["parallel_tool_calls"] is False
    assert wire["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    assert wire["reasoning_effort"] == "low"


def test_a_tool_turn_and_its_answer_and_an_image_part() -> None:
    sent = request(
        ModelMessage(
            Role.USER, "", parts=("What is this?", Image(data=b"\x89PNG", mime_type="image/png"))
        ),
        ModelMessage(Role.ASSISTANT, "", tool_calls=(CALL,)),
        ModelMessage(Role.TOOL, "18°C", tool_call_id="call_1"),
    )
    assert body(sent, options(), "m", stream=False)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
            ],
        },
        {"role": "tool", "content": "18°C", "tool_call_id": "call_1"},
    ]


def test_earlier_reasoning_goes_back_only_under_the_configured_field() -> None:
    thought = ModelMessage(Role.ASSISTANT, "4", reasoning="2 + 2")
    sent = request(HI, thought)
    assert body(sent, options(), "m", stream=False)["messages"][1] == {
        "role": "assistant",
        "content": "4",
    }
    assert body(sent, options("reasoning_content"), "m", stream=False)["messages"][1] == {
        "role": "assistant",
        "content": "4",
        "reasoning_content": "2 + 2",
    }


# --- JSON answer → domain -----------------------------------------------------------------------


def test_a_completion_message_reads_as_text_calls_usage_and_finish() -> None:
    payload = completion(
        {"content": None, "tool_calls": [wire_call("call_1", "get_weather", '{"city":"Paris"}')]},
        finish_reason="tool_calls",
        usage_=usage(19, 7, cached=3, reasoning=2),
    )
    choice = payload["choices"][0]
    message = choice["message"]
    assert tool_calls_of(message) == (CALL,)
    assert refusal_of(message) == ""
    assert reasoning_of(message) is None
    assert usage_of(payload["usage"]) == Usage(
        prompt_tokens=19, completion_tokens=7, cached_prompt_tokens=3, reasoning_tokens=2
    )
    reason = finish_reason(FINISH_REASONS, choice["finish_reason"])
    assert contract_finish(reason, called_tools=True, refused=False) is FinishReason.TOOL_CALLS


def test_arguments_sent_as_an_object_are_the_same_json_and_a_nameless_call_is_unavailable() -> None:
    message = {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}
    assert tool_calls_of(message) == (ToolCall("c", "f", '{"a": 1}'),)
    with pytest.raises(errors.UpstreamUnavailable):
        tool_calls_of({"tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]})


def test_usage_variants_deepseek_cache_hits_and_none_without_counts() -> None:
    assert usage_of(
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_cache_hit_tokens": 8}
    ) == Usage(
        prompt_tokens=10,
        completion_tokens=2,
        cached_prompt_tokens=8,
    )
    assert usage_of({"total_tokens": 12}) is None
    assert usage_of(None) is None


def test_reasoning_and_refusal_fields() -> None:
    assert reasoning_of({"reasoning_content": "hmm"}) == "hmm"
    assert reasoning_of({"reasoning": "vllm"}) == "vllm"
    assert refusal_of({"refusal": "I can't help with that."}) == "I can't help with that."


def test_the_contract_finish_follows_the_calls_that_came() -> None:
    stop, calls, length = FinishReason.STOP, FinishReason.TOOL_CALLS, FinishReason.LENGTH
    assert contract_finish(stop, called_tools=True, refused=False) is calls  # a forced tool_choice
    assert contract_finish(calls, called_tools=False, refused=False) is stop
    assert contract_finish(length, called_tools=True, refused=False) is length
    assert contract_finish(stop, called_tools=False, refused=True) is FinishReason.CONTENT_FILTER
    assert contract_finish(None, called_tools=False, refused=False) is stop
    assert finish_reason(FINISH_REASONS, "function_call") is calls
    assert finish_reason(FINISH_REASONS, "something_new") is stop
    assert finish_reason(FINISH_REASONS, None) is None


# --- streamed chunks → deltas -------------------------------------------------------------------


def stream_deltas(chunks: list[dict[str, Any]]) -> list[ToolCallDelta]:
    calls = StreamedCalls()
    deltas: list[ToolCallDelta] = []
    for payload in chunks:
        for choice in payload["choices"]:
            wire = choice["delta"].get("tool_calls")
            if wire:
                deltas += calls.deltas(wire)
    return deltas


def test_parallel_streamed_calls_become_deltas_by_index() -> None:
    chunks = tool_call_chunks(
        [("call_a", "get_weather", ['{"city":', '"Paris"}']), ("call_b", "get_time", ["{}"])]
    )
    assert stream_deltas(chunks) == [
        ToolCallDelta(0, id="call_a", name="get_weather"),
        ToolCallDelta(1, id="call_b", name="get_time"),
        ToolCallDelta(0, arguments_delta='{"city":'),
        ToolCallDelta(1, arguments_delta="{}"),
        ToolCallDelta(0, arguments_delta='"Paris"}'),
    ]


def test_an_id_and_name_repeated_on_every_delta_are_given_once() -> None:
    """llama.cpp's server repeats both on every delta."""
    repeat = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}
    assert stream_deltas([chunk({"tool_calls": [repeat]}), chunk({"tool_calls": [repeat]})]) == [
        ToolCallDelta(0, id="call_1", name="f", arguments_delta="{}"),
        ToolCallDelta(0, arguments_delta="{}"),
    ]


def test_a_new_id_on_a_known_index_is_a_new_call() -> None:
    """Gemini's OpenAI endpoint streams parallel calls all at index 0."""
    chunks = [
        chunk(first_call_delta(0, "call_a", "f")),
        chunk(arguments_delta(0, "{}")),
        chunk(first_call_delta(0, "call_b", "g")),
    ]
    assert stream_deltas(chunks) == [
        ToolCallDelta(0, id="call_a", name="f"),
        ToolCallDelta(0, arguments_delta="{}"),
        ToolCallDelta(1, id="call_b", name="g"),
    ]


def test_a_streamed_call_that_is_not_an_object_is_unavailable() -> None:
    with pytest.raises(errors.UpstreamUnavailable):
        StreamedCalls().deltas(["not a call"])
    with pytest.raises(errors.UpstreamUnavailable):
        StreamedCalls().deltas({"index": 0})


# --- embeddings ---------------------------------------------------------------------------------


def test_vectors_come_back_in_input_order_and_a_wrong_count_is_unavailable() -> None:
    asked = EmbedRequest(model=MODEL, inputs=("a", "b"))
    payload = embeddings([[1.0, 0.0], [0.0, 1.0]], order=[1, 0])
    assert vectors_of(payload, asked) == ((1.0, 0.0), (0.0, 1.0))
    with pytest.raises(errors.UpstreamUnavailable):
        vectors_of(embeddings([[1.0]]), asked)


# --- refusals -----------------------------------------------------------------------------------


def test_what_chat_completions_cannot_say_is_refused_by_field() -> None:
    sent = request(
        ModelMessage(
            Role.ASSISTANT,
            "",
            parts=(Image(url="https://example.com/a.png"),),
            reasoning_signature=b"sig",
        ),
        ModelMessage(Role.TOOL, "18°C"),
        reasoning=ReasoningOptions(budget_tokens=2048),
    )
    fields = [violation.field for violation in unsupported(MODEL, sent)]
    assert fields == [
        "reasoning.budget_tokens",
        "messages[0].reasoning_signature",
        "messages[0].parts[0].image",
        "messages[1].tool_call_id",
    ]
    assert unsupported(MODEL, request(HI)) == []


def test_a_tool_message_may_name_only_the_called_tool() -> None:
    called = ModelMessage(Role.ASSISTANT, "", tool_calls=(CALL,))
    right = ModelMessage(Role.TOOL, "18°C", name="get_weather", tool_call_id="call_1")
    wrong = ModelMessage(Role.TOOL, "18°C", name="other", tool_call_id="call_1")
    assert unsupported(MODEL, request(called, right)) == []
    refused = unsupported(MODEL, request(called, wrong))
    assert [violation.field for violation in refused] == ["messages[1].name"]
    assert isinstance(refused[0], FieldViolation) and repr(MODEL) in refused[0].description
