"""Chat Completions JSON ⇄ the domain types, with no I/O: request bodies, answers, streamed deltas
and embeddings (the client, client.py, sends them; refusals.py refuses what they cannot say)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelwire.core import errors
from modelwire.core.types import (
    ContentPart,
    EmbedRequest,
    FinishReason,
    GrammarFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelRequest,
    NamedTool,
    Role,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from modelwire.providers.http.options import HttpParams

# Enum members as module constants: `Role.TOOL` costs a class attribute lookup on every read.
TOOL, USER = Role.TOOL, Role.USER


FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


def contract_finish(reason: FinishReason | None, called_tools: bool, refused: bool) -> FinishReason:
    """The contract's finish: TOOL_CALLS when, and only when, the model called tools (OpenAI ends
    a forced tool_choice with "stop"; some servers say "tool_calls" with no call at all); a
    refusal is CONTENT_FILTER, as Anthropic's `stop_reason: "refusal"`; a LENGTH cut stays LENGTH
    (its arguments are incomplete)."""
    if refused:
        return FinishReason.CONTENT_FILTER
    reason = reason or FinishReason.STOP
    if reason is FinishReason.STOP and called_tools:
        return FinishReason.TOOL_CALLS
    if reason is FinishReason.TOOL_CALLS and not called_tools:
        return FinishReason.STOP
    return reason


def _count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _detail(usage: dict[str, Any], group: str, key: str) -> int:
    details = usage.get(group)
    return _count(details.get(key)) if isinstance(details, dict) else 0


def usage_of(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=_detail(value, "prompt_tokens_details", "cached_tokens")
        or _count(value.get("prompt_cache_hit_tokens")),
        reasoning_tokens=_detail(value, "completion_tokens_details", "reasoning_tokens"),
    )


def reasoning_of(message: dict[str, Any]) -> str | None:
    """DeepSeek, Qwen and older vLLM say `reasoning_content`; newer vLLM, Ollama, OpenRouter
    `reasoning`."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _message(message: ModelMessage) -> dict[str, Any]:
    if message.parts or message.tool_calls or message.tool_call_id:
        return _structured_message(message)
    wire = {"role": message.role.value, "content": message.content}
    if message.name:
        wire["name"] = message.name
    return wire


def _structured_message(message: ModelMessage) -> dict[str, Any]:
    """A message with content parts, tool calls or a tool call id (a tool's answer)."""
    content: str | list[dict[str, Any]] | None = message.content
    if message.parts:
        content = [_part(part) for part in message.parts]
    elif message.tool_calls and not message.content:
        content = None
    wire: dict[str, Any] = {"role": message.role.value, "content": content}
    # A tool message has no name in Chat Completions: its tool_call_id names the call it answers
    # (a name other than that call's is refused, refusals.py).
    if message.name and message.role is not TOOL:
        wire["name"] = message.name
    if message.tool_calls:
        wire["tool_calls"] = [wire_tool_call(call) for call in message.tool_calls]
    if message.tool_call_id:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def wire_tool_call(call: ToolCall) -> dict[str, Any]:
    """A whole tool call as Chat Completions writes it, in an assistant message (sent upstream, or
    answered by the HTTP facade)."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments_json},
    }


def _send_reasoning_back(
    wire: list[dict[str, Any]], messages: Sequence[ModelMessage], field: str
) -> None:
    """Earlier assistant turns' reasoning under the field the configured server takes it in."""
    for sent, message in zip(wire, messages, strict=True):
        if message.reasoning is not None:
            sent[field] = message.reasoning


def _part(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    return {"type": "image_url", "image_url": {"url": part.data_url()}}


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = json.loads(tool.schema_json)
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _contract_fields(request: ModelRequest) -> dict[str, Any]:
    """The v1.1 request fields as Chat Completions names them; only requests that use one get
    here."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [_tool(tool) for tool in request.tools]
        choice = request.tool_choice
        if isinstance(choice, NamedTool):
            fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice is not None:
            fields["tool_choice"] = choice.value
        if request.parallel_tool_calls is not None:
            fields["parallel_tool_calls"] = request.parallel_tool_calls
    output_format = request.output_format
    # A grammar never gets here: the provider grants no CAPABILITY_GRAMMAR, so it is refused before.
    assert not isinstance(output_format, GrammarFormat), "grammar is refused by capability"
    if isinstance(output_format, JsonSchemaFormat):
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": output_format.name,
                "schema": json.loads(output_format.schema_json),
                "strict": output_format.strict,
            },
        }
    elif output_format is not None:
        fields["response_format"] = {"type": "json_object"}
    if request.reasoning is not None and request.reasoning.effort is not None:
        fields["reasoning_effort"] = request.reasoning.effort.value
    return fields


def _arguments(value: object) -> str | None:
    """A call's arguments as JSON text; a few servers send them as an object, which is the same
    JSON."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return value if isinstance(value, str) else None


def _tool_call(call: object) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    arguments = _arguments(function.get("arguments")) if isinstance(function, dict) else None
    if not isinstance(name, str) or arguments is None:
        raise errors.UpstreamUnavailable(
            "upstream sent a tool call without a function name and JSON arguments"
        )
    call_id = call.get("id") if isinstance(call, dict) else None
    return ToolCall(
        id=call_id if isinstance(call_id, str) else "", name=name, arguments_json=arguments
    )


def tool_calls_of(message: dict[str, Any]) -> tuple[ToolCall, ...]:
    calls = message.get("tool_calls")
    if not calls:
        return ()
    if not isinstance(calls, list):
        raise errors.UpstreamUnavailable("upstream sent message.tool_calls that is not a list")
    return tuple(_tool_call(call) for call in calls)


def text_of(value: object) -> str:
    return value if isinstance(value, str) else ""


def refusal_of(message: dict[str, Any]) -> str:
    """The model's refusal (`message.refusal`, `delta.refusal`): the answer's text, finishing
    CONTENT_FILTER, never an empty success."""
    return text_of(message.get("refusal"))


# ToolCallDelta.index is an int32; no upstream makes anywhere near this many calls in one turn.
_MAX_TOOL_CALL_INDEX = 2**16


class StreamedCalls:
    """The tool calls of one stream so far: each call's id and name by its index towards the
    caller, which index each upstream `index` now feeds, and each id's call. An id or name a call
    has is never repeated (llama.cpp's server repeats both on every delta). A new, different id on
    a known index is a new call at the next free index (Gemini's OpenAI endpoint streams parallel
    calls all at index 0); an id seen before continues its own call, never a second one with the
    same id."""

    __slots__ = ("_calls", "_ids", "_wire")

    def __init__(self) -> None:
        self._calls: dict[int, tuple[str, str]] = {}
        self._ids: dict[str, int] = {}
        self._wire: dict[int, int] = {}

    def deltas(self, calls: object) -> tuple[ToolCallDelta, ...]:
        """One chunk's `delta.tool_calls` as they come, keyed by `index` (its position in the list
        if a server leaves it out)."""
        if not isinstance(calls, list):
            raise errors.UpstreamUnavailable("upstream sent delta.tool_calls that is not a list")
        deltas: list[ToolCallDelta] = []
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                raise errors.UpstreamUnavailable(
                    "upstream sent a tool call delta that is not a JSON object"
                )
            delta = self._delta(call, position)
            if delta.id or delta.name or delta.arguments_delta:
                deltas.append(delta)
        return tuple(deltas)

    def _delta(self, call: dict[str, Any], position: int) -> ToolCallDelta:
        wire_index = call.get("index")
        wire_index = wire_index if isinstance(wire_index, int) else position
        if not 0 <= wire_index < _MAX_TOOL_CALL_INDEX:
            raise errors.UpstreamUnavailable(
                f"upstream sent a tool call delta with index {wire_index}, not a call's position"
            )
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = _arguments(function.get("arguments"))
        if arguments is None:
            raise errors.UpstreamUnavailable(
                "upstream sent a tool call delta whose arguments are not JSON text"
            )
        given_id, given_name = text_of(call.get("id")), text_of(function.get("name"))
        index = self._wire.get(wire_index)
        if given_id in self._ids:
            index = self._ids[given_id]
        elif index is None or (given_id and self._calls[index][0] not in ("", given_id)):
            index = self._open(wire_index if index is None else None)
        known_id, known_name = self._calls[index]
        call_id = "" if known_id else given_id
        name = "" if known_name else given_name
        self._calls[index] = (known_id or call_id, known_name or name)
        if call_id:
            self._ids[call_id] = index
        self._wire[wire_index] = index
        return ToolCallDelta(index=index, id=call_id, name=name, arguments_delta=arguments)

    def _open(self, wanted: int | None) -> int:
        """A new call's index: the upstream's own when it is free, else the next free one."""
        if wanted is not None and wanted not in self._calls:
            index = wanted
        else:
            index = max(self._calls, default=-1) + 1
        if index >= _MAX_TOOL_CALL_INDEX:
            raise errors.UpstreamUnavailable(
                f"upstream sent more than {_MAX_TOOL_CALL_INDEX} tool calls in one turn"
            )
        self._calls[index] = ("", "")
        return index


def vectors_of(payload: dict[str, Any], request: EmbedRequest) -> tuple[tuple[float, ...], ...]:
    """`data` in `index` order, one vector of numbers per input, all of one dimension (the one asked
    for, if any): anything else is a broken answer, never passed on."""
    data = payload.get("data")
    count = len(request.inputs)
    if not isinstance(data, list) or len(data) != count:
        got = f"{len(data)} embeddings" if isinstance(data, list) else "no data list"
        raise errors.UpstreamUnavailable(f"upstream answered {count} inputs with {got}")
    vectors: dict[int, tuple[float, ...]] = {}
    for position, item in enumerate(data):
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or index in vectors:
            raise errors.UpstreamUnavailable(
                f"upstream sent data[{position}] without a distinct index in [0, {count})"
            )
        values = item.get("embedding")
        if (
            not isinstance(values, list)
            or not values
            or not all(type(value) in (float, int) for value in values)
        ):
            raise errors.UpstreamUnavailable(
                f"upstream sent data[{position}].embedding that is not a list of numbers "
                "(per-token vectors from a model without pooling, or base64?)"
            )
        vectors[index] = tuple(float(value) for value in values)
    ordered = tuple(vectors[index] for index in range(count))
    dimensions = sorted({len(vector) for vector in ordered})
    if len(dimensions) != 1:
        raise errors.UpstreamUnavailable(
            f"upstream sent embeddings of mixed dimensions {dimensions}"
        )
    if request.dimensions is not None and dimensions[0] != request.dimensions:
        raise errors.UpstreamUnavailable(
            f"upstream sent embeddings of dimension {dimensions[0]} where {request.dimensions} "
            "were asked for (a server that ignores `dimensions`?)"
        )
    return ordered


def embedding_usage(value: object) -> Usage | None:
    prompt = value.get("prompt_tokens") if isinstance(value, dict) else None
    return Usage(prompt_tokens=prompt) if isinstance(prompt, int) else None


def body(
    request: ModelRequest, options: OpenAIParams, upstream_model: str, stream: bool
) -> dict[str, Any]:
    """The Chat Completions request body of `request`."""
    sampling = request.sampling
    messages = [_message(message) for message in request.messages]
    if options.reasoning_field is not None:
        _send_reasoning_back(messages, request.messages, options.reasoning_field)
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "stream": stream,
    }
    if stream and options.stream_usage:
        body["stream_options"] = {"include_usage": True}
    optional: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        options.max_tokens_param: sampling.max_new_tokens,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "stop": list(sampling.stop) or None,
        "user": request.context.user or None,
    }
    for key, value in optional.items():  # a loop: half the cost of update() with a generator
        if value is not None:
            body[key] = value
    if request.tools or request.output_format is not None or request.reasoning is not None:
        body.update(_contract_fields(request))
    return body


@dataclass(frozen=True)
class OpenAIParams:
    http: HttpParams
    api_type: str
    api_version: str | None
    max_tokens_param: str
    stream_usage: bool
    reasoning_field: str | None
