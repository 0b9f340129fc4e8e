"""Any OpenAI-compatible Chat Completions API, natively async over aiohttp (proxy/http_upstream.py).

OpenAI, Azure OpenAI (`api_type = "azure"`), DeepSeek, Qwen/DashScope, Moonshot, Zhipu, Gemini's
OpenAI endpoint, vLLM, llama.cpp server, Ollama's /v1. Streams ask for
`stream_options.include_usage`, read usage from whichever chunk carries it (the usage-only chunk
with `choices: []` included), and always end with one chunk that has finish_reason and usage; when
the upstream sends no usage (llama.cpp server, old vLLM, some gateways) the worker counts it
itself, tool-call names and arguments included, and marks it estimated. `reasoning_content` /
`reasoning` deltas become the reasoning field.

Contract v1.1, field by field:
- `tools` → `tools: [{"type": "function", "function": {name, description, parameters, strict}}]`,
  `parameters` being the caller's JSON Schema parsed (key order kept); `tool_choice` → "auto",
  "none", "required" or `{"type": "function", "function": {"name"}}` (AUTO and NONE without tools
  are left out: OpenAI refuses a tool_choice without tools, and with none there is nothing to
  call either way); `parallel_tool_calls` as is.
- An assistant turn's `tool_calls` → `tool_calls: [{id, "type": "function", function: {name,
  arguments}}]` with `content` null when it has no text; a ROLE_TOOL message → `{"role": "tool",
  "tool_call_id", "content"}` (no `name`: the API defines none there, and the call id names the
  call; a name other than that call's is refused); `parts` → a content array of `text` and
  `image_url` parts (bytes as a `data:` URL). An earlier assistant turn's `reasoning` goes back
  only under the field the `reasoning_field` option names (DeepSeek's and Moonshot's thinking
  modes want `reasoning_content` on tool-call turns); unset, it is left out, as Chat Completions
  defines no field for it, so the turn `assistant_turn(output)` builds is always accepted.
- `output_format` → `response_format` json_object or json_schema {name, schema, strict};
  `reasoning.effort` → `reasoning_effort`.
- Answers: `message.tool_calls` → whole ToolCalls; streamed `delta.tool_calls` → ToolCallDeltas as
  they come, keyed by `index`, except that an id or name a call already has is not repeated (the
  contract gives them on a call's first delta; llama.cpp's server repeats both on every delta),
  and a new, different id on a known index opens a new call at the next free index (Gemini's
  endpoint streams parallel calls all at index 0); an id seen before continues its own call. TOOL_CALLS is the finish when, and only when,
  tool calls came: "stop" after calls (OpenAI's answer to a forced tool_choice) is TOOL_CALLS,
  "tool_calls" without any is STOP. A refusal (`message.refusal`, `delta.refusal`) is the
  answer's text, finishing CONTENT_FILTER, as Anthropic's `stop_reason: "refusal"`. Usage
  `prompt_tokens_details.cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`) →
  cached_prompt_tokens, `completion_tokens_details.reasoning_tokens` → reasoning_tokens.
- Embed → `POST /embeddings` (`encoding_format: "float"`, `dimensions`), vectors in `index` order;
  an answer of the wrong count or dimension is UNAVAILABLE, never passed on.

What Chat Completions cannot express is refused by `unsupported`, by field: a ROLE_TOOL message
without tool_call_id or named otherwise than its call, an image outside a user message,
`reasoning.budget_tokens`, and a `reasoning_signature` (none of these providers gives one). A
request with none of the new fields takes the path it took before them, plus a few attribute
checks per message and one lookup per streamed delta.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Self
from urllib.parse import quote, urlencode

from pydantic import StrictBool, StrictStr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core import errors
from modelwire.core.errors import FieldViolation
from modelwire.core.settings import SECTION, ModelConfig
from modelwire.core.types import (
    Capability,
    ContentPart,
    EmbedRequest,
    Embeddings,
    FinishReason,
    GrammarFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    NamedTool,
    Role,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from modelwire.proxy.http_upstream import (
    HttpOptions,
    HttpParams,
    HttpProxyClient,
    drain,
    error_codes,
    http_error_from_code,
    message_from_payload,
    parse_json_event,
    read_http_params,
    remote_limits,
    retrying_call,
    wire_float,
)
from modelwire.tokenize.tiktoken_counter import count_tokens

DEFAULT_API_BASE = "https://api.openai.com/v1"
API_TYPES = ("openai", "azure")
MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")
# Every OpenAI-compatible server chats, streams and (nearly all) takes tools and response_format;
# vision, reasoning and embeddings depend on the model, so they are configured where they apply.
DEFAULT_CAPABILITIES = (Capability.CHAT, Capability.STREAMING, Capability.TOOLS, Capability.JSON_SCHEMA)
SUPPORTED_CAPABILITIES = frozenset(DEFAULT_CAPABILITIES) | {Capability.VISION, Capability.REASONING, Capability.EMBEDDINGS}

# Enum members as module constants: `Role.TOOL` costs a class attribute lookup on every read.
_TOOL, _USER = Role.TOOL, Role.USER

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


@dataclass(frozen=True)
class OpenAIParams:
    http: HttpParams
    api_type: str
    api_version: str | None
    max_tokens_param: str
    stream_usage: bool
    reasoning_field: str | None


@pydantic_dataclass(config=SECTION)
class OpenAIOptions(HttpOptions):
    api_type: Literal["openai", "azure"] = "openai"
    api_version: StrictStr | None = None
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    stream_usage: StrictBool = True
    # The assistant message field that takes an earlier turn's reasoning back: Chat Completions has
    # none (unset: left out); DeepSeek's and Moonshot's thinking modes want `reasoning_content`
    # back on tool-call turns and answer 400 without it.
    reasoning_field: Literal["reasoning_content", "reasoning"] | None = None


def _parse_params(config: ModelConfig) -> OpenAIParams:
    options = config.options_as(OpenAIOptions)
    azure = options.api_type == "azure"
    http = read_http_params(config, options, None if azure else DEFAULT_API_BASE)
    if azure and not options.api_version:
        raise config.error("api_version", 'is required when api_type = "azure" (e.g. "2024-10-21")')
    if not azure and options.api_version is not None:
        raise config.error("api_version", 'is only used with api_type = "azure"')
    if azure and http.api_key is None:
        raise config.error("api_key_env", 'is required when api_type = "azure"')
    return OpenAIParams(
        http=http,
        api_type=options.api_type,
        api_version=options.api_version,
        max_tokens_param=options.max_tokens_param,
        stream_usage=options.stream_usage,
        reasoning_field=options.reasoning_field,
    )


def _finish_reason(value: object) -> FinishReason | None:
    if not isinstance(value, str) or not value:
        return None
    return _FINISH_REASONS.get(value, FinishReason.STOP)


def _finish(reason: FinishReason | None, called_tools: bool, refused: bool) -> FinishReason:
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


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=_detail(value, "prompt_tokens_details", "cached_tokens") or _count(value.get("prompt_cache_hit_tokens")),
        reasoning_tokens=_detail(value, "completion_tokens_details", "reasoning_tokens"),
    )


def _reasoning(message: dict[str, Any]) -> str | None:
    """DeepSeek, Qwen and older vLLM say `reasoning_content`; newer vLLM, Ollama, OpenRouter `reasoning`."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


# --- request translation


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
    # (a name other than that call's is refused, `_message_refusals`).
    if message.name and message.role is not _TOOL:
        wire["name"] = message.name
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
            for call in message.tool_calls
        ]
    if message.tool_call_id:
        wire["tool_call_id"] = message.tool_call_id
    return wire


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
    """The v1.1 request fields as Chat Completions names them; only requests that use one get here."""
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
            "json_schema": {"name": output_format.name, "schema": json.loads(output_format.schema_json), "strict": output_format.strict},
        }
    elif output_format is not None:
        fields["response_format"] = {"type": "json_object"}
    if request.reasoning is not None and request.reasoning.effort is not None:
        fields["reasoning_effort"] = request.reasoning.effort.value
    return fields


# --- answer translation


def _arguments(value: object) -> str | None:
    """A call's arguments as JSON text; a few servers send them as an object, which is the same JSON."""
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
        raise errors.UpstreamUnavailable("upstream sent a tool call without a function name and JSON arguments")
    call_id = call.get("id") if isinstance(call, dict) else None
    return ToolCall(id=call_id if isinstance(call_id, str) else "", name=name, arguments_json=arguments)


def _tool_calls(message: dict[str, Any]) -> tuple[ToolCall, ...]:
    calls = message.get("tool_calls")
    if not calls:
        return ()
    if not isinstance(calls, list):
        raise errors.UpstreamUnavailable("upstream sent message.tool_calls that is not a list")
    return tuple(_tool_call(call) for call in calls)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _refusal(message: dict[str, Any]) -> str:
    """The model's refusal (`message.refusal`, `delta.refusal`): the answer's text, finishing
    CONTENT_FILTER, never an empty success."""
    return _text(message.get("refusal"))


# ToolCallDelta.index is an int32; no upstream makes anywhere near this many calls in one turn.
_MAX_TOOL_CALL_INDEX = 2**16


class _StreamedCalls:
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
            raise errors.UpstreamUnavailable("upstream sent a tool call delta whose arguments are not JSON text")
        given_id, given_name = _text(call.get("id")), _text(function.get("name"))
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


def _vectors(payload: dict[str, Any], request: EmbedRequest) -> tuple[tuple[float, ...], ...]:
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
            raise errors.UpstreamUnavailable(f"upstream sent data[{position}] without a distinct index in [0, {count})")
        values = item.get("embedding")
        if not isinstance(values, list) or not values or not all(type(value) in (float, int) for value in values):
            raise errors.UpstreamUnavailable(
                f"upstream sent data[{position}].embedding that is not a list of numbers "
                "(per-token vectors from a model without pooling, or base64?)"
            )
        vectors[index] = tuple(float(value) for value in values)
    ordered = tuple(vectors[index] for index in range(count))
    dimensions = sorted({len(vector) for vector in ordered})
    if len(dimensions) != 1:
        raise errors.UpstreamUnavailable(f"upstream sent embeddings of mixed dimensions {dimensions}")
    if request.dimensions is not None and dimensions[0] != request.dimensions:
        raise errors.UpstreamUnavailable(
            f"upstream sent embeddings of dimension {dimensions[0]} where {request.dimensions} were asked for "
            "(a server that ignores `dimensions`?)"
        )
    return ordered


class OpenAIClient(HttpProxyClient):
    provider = "openai"

    def __init__(self, metadata: ModelMetadata, executor: Executor, params: OpenAIParams, max_concurrency: int) -> None:
        super().__init__(metadata, executor, params.http, max_concurrency)
        self._options = params
        self._url = self._endpoint("chat/completions")
        self._embeddings_url = self._endpoint("embeddings")

    def _endpoint(self, path: str) -> str:
        base = self._params.api_base
        if self._options.api_type == "azure":
            deployment = quote(self._params.upstream_model, safe="")
            query = urlencode({"api-version": self._options.api_version})
            return f"{base}/openai/deployments/{deployment}/{path}?{query}"
        return f"{base}/{path}"

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = _parse_params(params)
        context_length, max_output_tokens = remote_limits(params)
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=context_length,
            max_output_tokens=max_output_tokens,
            capabilities=params.capabilities_within(DEFAULT_CAPABILITIES, SUPPORTED_CAPABILITIES),
            metadata={"upstream_model": options.http.upstream_model, "api_type": options.api_type},
        )
        return cls(metadata, executor, options, params.max_concurrency)

    def _headers(self) -> dict[str, str]:
        key = self._params.api_key
        if key is None:
            return {}
        if self._options.api_type == "azure":
            return {"api-key": key.reveal()}
        return {"Authorization": f"Bearer {key.reveal()}"}

    # --- what Chat Completions cannot express

    def unsupported(self, request: ModelRequest) -> list[FieldViolation]:
        """A cheap scan first, on every request: nearly none has anything refused here."""
        reasoning = request.reasoning
        if reasoning is not None and reasoning.budget_tokens is not None:
            return self._refusals(request)
        for message in request.messages:
            if message.role is _TOOL or message.parts or message.reasoning_signature:
                return self._refusals(request)
        return []

    def _refusals(self, request: ModelRequest) -> list[FieldViolation]:
        violations: list[FieldViolation] = []
        if request.reasoning is not None and request.reasoning.budget_tokens is not None:
            violations.append(self._cannot("reasoning.budget_tokens", "take a reasoning budget in tokens; set reasoning.effort instead"))
        called = {call.id: call.name for message in request.messages for call in message.tool_calls}
        for index, message in enumerate(request.messages):
            violations += self._message_refusals(index, message, called)
        return violations

    def _message_refusals(
        self, index: int, message: ModelMessage, called: dict[str, str]
    ) -> list[FieldViolation]:
        """`called`: the name of each call of the conversation, by id."""
        field = f"messages[{index}]"
        violations: list[FieldViolation] = []
        if message.role is _TOOL and not message.tool_call_id:
            violations.append(self._cannot(f"{field}.tool_call_id", "take a ROLE_TOOL message without the id of the call it answers"))
        elif message.role is _TOOL and message.name not in ("", called.get(message.tool_call_id)):
            violations.append(self._cannot(
                f"{field}.name",
                "take a tool message's name (its tool_call_id names the call); "
                "leave it empty or give the called tool's name",
            ))
        if message.reasoning_signature:
            violations.append(self._cannot(f"{field}.reasoning_signature", "take a reasoning signature (no Chat Completions field)"))
        if message.role is not _USER:
            violations += [
                self._cannot(f"{field}.parts[{number}].image", f"take an image in a {message.role.value} message, only in user messages")
                for number, part in enumerate(message.parts)
                if not isinstance(part, str)
            ]
        return violations

    def _cannot(self, field: str, what: str) -> FieldViolation:
        return FieldViolation(field, f"model {self.default_model!r} (provider openai, Chat Completions) cannot {what}")

    # --- the request

    def _body(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        sampling = request.sampling
        messages = [_message(message) for message in request.messages]
        if self._options.reasoning_field is not None:
            _send_reasoning_back(messages, request.messages, self._options.reasoning_field)
        body: dict[str, Any] = {
            "model": self.upstream_model, "messages": messages, "stream": stream,
        }
        if stream and self._options.stream_usage:
            body["stream_options"] = {"include_usage": True}
        optional: dict[str, Any] = {
            "temperature": wire_float(sampling.temperature),
            "top_p": wire_float(sampling.top_p),
            self._options.max_tokens_param: sampling.max_new_tokens,
            "seed": sampling.seed,
            "presence_penalty": wire_float(sampling.presence_penalty),
            "frequency_penalty": wire_float(sampling.frequency_penalty),
            "stop": list(sampling.stop) or None,
            "user": request.context.user or None,
        }
        for key, value in optional.items():  # a loop: half the cost of update() with a generator
            if value is not None:
                body[key] = value
        if request.tools or request.output_format is not None or request.reasoning is not None:
            body.update(_contract_fields(request))
        return body

    def _payload_error(self, payload: dict[str, Any]) -> errors.ModelwireError:
        """An `{"error": ...}` object where a completion was expected (some servers send it mid-stream)."""
        error = payload.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        message = message_from_payload(payload, self._redact) or "unknown error"
        return http_error_from_code(code if isinstance(code, int) else None, message, self._params, error_codes(payload))

    # --- unary: one non-streaming request, so usage is the upstream's own

    async def _completion(self, request: ModelRequest, payload: Any) -> ModelOutput:
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent a completion that is not a JSON object")
        if payload.get("error"):
            raise self._payload_error(payload)
        choices = payload.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        message = choice.get("message") if choice is not None else None
        if choice is None or not isinstance(message, dict):
            raise errors.UpstreamUnavailable("upstream sent a completion without choices[0].message")
        refusal = _refusal(message)
        text = _text(message.get("content")) + refusal
        reasoning = _reasoning(message)
        tool_calls = _tool_calls(message)
        usage = _usage(payload.get("usage")) or await self.estimate_usage(
            request.messages, text + (reasoning or "") + "".join(call.name + call.arguments_json for call in tool_calls)
        )
        return ModelOutput(
            text=text,
            reasoning=reasoning,
            finish_reason=_finish(
                _finish_reason(choice.get("finish_reason")), bool(tool_calls), bool(refusal)
            ),
            usage=usage,
            tool_calls=tool_calls,
        )

    # --- streaming

    async def _stream_once(self, request: ModelRequest, body: dict[str, Any]) -> AsyncGenerator[ModelOutput, None]:
        finish: FinishReason | None = None
        usage: Usage | None = None
        generated: list[str] = []
        calls = _StreamedCalls()
        called = refused = False
        async with aclosing(self.post_events(self._url, body, self._headers())) as events:
            done = False
            async for event in events:
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                payload = parse_json_event(event)
                if not isinstance(payload, dict):
                    raise errors.UpstreamUnavailable("upstream sent a malformed event stream: a chunk is not a JSON object")
                if payload.get("error"):
                    raise self._payload_error(payload)
                # Any chunk may carry usage; with include_usage it is the last one, with `choices: []`.
                usage = _usage(payload.get("usage")) or usage
                choices = payload.get("choices")
                for choice in choices if isinstance(choices, list) else ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        content = delta.get("content")
                        text = content if isinstance(content, str) else ""
                        refusal = _refusal(delta)
                        if refusal:
                            refused = True
                            text += refusal
                        reasoning = _reasoning(delta)
                        wire_calls = delta.get("tool_calls")
                        if wire_calls:
                            deltas = calls.deltas(wire_calls)
                            called = called or bool(deltas)
                            # An estimate of usage counts the calls' names and arguments too.
                            generated.append(text + (reasoning or "") + "".join(d.name + d.arguments_delta for d in deltas))
                            if text or reasoning or deltas:
                                yield ModelOutput(text=text, reasoning=reasoning, tool_call_deltas=deltas)
                        elif text or reasoning:
                            generated.append(text + (reasoning or ""))
                            yield ModelOutput(text=text, reasoning=reasoning)
                    finish = _finish_reason(choice.get("finish_reason")) or finish
            if not done and finish is None:
                raise errors.UpstreamUnavailable("upstream stream ended before the completion finished")
            if usage is None:
                usage = await self.estimate_usage(request.messages, "".join(generated))
            yield ModelOutput(finish_reason=_finish(finish, called, refused), usage=usage)
            if done:
                await drain(events)

    # --- embeddings

    async def embed(self, request: EmbedRequest) -> Embeddings:
        body: dict[str, Any] = {"model": self.upstream_model, "input": list(request.inputs), "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        payload = await retrying_call(
            self._retry, self.default_model, lambda: self.post_json(self._embeddings_url, body, self._headers())
        )
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent embeddings that are not a JSON object")
        if payload.get("error"):
            raise self._payload_error(payload)
        vectors = _vectors(payload, request)
        return Embeddings(vectors=vectors, usage=_embedding_usage(payload.get("usage")) or await self._estimate_inputs(request.inputs))

    async def _estimate_inputs(self, inputs: Sequence[str]) -> Usage:
        """Usage the worker counted itself, for an upstream that reported none."""
        text = "\n".join(inputs)
        try:
            count = await self.count_with(text, partial(count_tokens, self.upstream_model, text))
        except errors.TokenizerUnavailable:
            return Usage(estimated=True)
        return Usage(prompt_tokens=count.count, estimated=True)


def _embedding_usage(value: object) -> Usage | None:
    prompt = value.get("prompt_tokens") if isinstance(value, dict) else None
    return Usage(prompt_tokens=prompt) if isinstance(prompt, int) else None
