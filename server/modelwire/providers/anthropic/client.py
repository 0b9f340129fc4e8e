"""Anthropic's Messages API, natively async over aiohttp (proxy/http_upstream.py).

Requests. System messages go to `system`: one string (joined by blank lines), or text blocks when
one of them carries a cache breakpoint. Consecutive messages of one role are merged into one turn,
as the API wants user and assistant turns to alternate: plain texts joined by a blank line,
anything else as content blocks in order. A message that is more than plain text becomes blocks:
text and `image` (base64 or url source); for an assistant turn its earlier thinking first (sent
back as it came, see `_signature`), then its text, then one `tool_use` per tool call; a tool
message is a `tool_result` in a user turn, so consecutive results share one turn, as the API
requires. `cache_breakpoint` puts `cache_control` on the message's last block. Tools go as
`tools[].input_schema` (the schema text parsed, key order kept), the tool choice as
auto/any/tool/none with `disable_parallel_tool_use` for `parallel_tool_calls = false`, reasoning as
`thinking` (`enabled` with `budget_tokens`, or `adaptive` with `output_config.effort`, as the
model's `thinking` option says), structured output as a forced tool whose input is the answer
(`_output_tool` says why). Whatever the API cannot express is refused by field and model
(`AnthropicClient.unsupported`), never dropped: sampling seed and penalties, message names, a tool
message without tool_call_id, and the documented limits of thinking, images and cache_control.

Responses. Text blocks are text, thinking blocks reasoning (with the signature the next turn must
send back, `_signature`), `tool_use` blocks tool calls (their input as JSON text); usage counts
cache reads and writes into prompt tokens and also reports them apart, and thinking tokens as
reasoning tokens. Streams map `text_delta` to text, `thinking_delta` to reasoning, a `tool_use` block's start
to a tool-call delta with its id and name (indexed by the call's place among this turn's calls, not
the block's) and its `input_json_delta`s to argument deltas; prompt tokens come from
`message_start`, updated by `message_delta` with the output tokens, and `stop_reason` becomes
finish_reason. An `error` event inside the stream is mapped like the HTTP status it stands for.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Self

from pydantic import StrictStr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core import errors, strict_json
from modelwire.core.errors import FieldViolation
from modelwire.core.settings import SECTION, ModelConfig
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
    OutputFormat,
    ReasoningEffort,
    Role,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    Usage,
)
from modelwire.proxy.http_upstream import (
    HttpOptions,
    HttpParams,
    HttpProxyClient,
    clean_message,
    drain,
    http_error_from_code,
    message_from_payload,
    parse_json_event,
    read_http_params,
    remote_limits,
    wire_float,
)

DEFAULT_API_BASE = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Every Claude model since Claude 3 takes tools, images and cache_control; extended thinking only
# some, so reasoning is configured where it applies. Anthropic has no embeddings and no grammars.
DEFAULT_CAPABILITIES = (
    Capability.CHAT, Capability.STREAMING, Capability.TOOLS, Capability.JSON_SCHEMA, Capability.VISION, Capability.PROMPT_CACHE,
)
SUPPORTED_CAPABILITIES = frozenset(DEFAULT_CAPABILITIES) | {Capability.REASONING}

# Documented limits the API answers with a 400; the worker refuses them first, by field.
MIN_THINKING_BUDGET = 1024
MAX_CACHE_BREAKPOINTS = 4
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# The forced tool that carries `output_format = json_object`.
JSON_OBJECT_TOOL = "json_object"

_EFFORTS = {ReasoningEffort.LOW: "low", ReasoningEffort.MEDIUM: "medium", ReasoningEffort.HIGH: "high"}
_FINISH_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
# Anthropic's error types (in error bodies and stream `error` events) → the HTTP status they stand for.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

Thinking = Literal["enabled", "adaptive"]


@dataclass(frozen=True)
class AnthropicParams:
    http: HttpParams
    anthropic_version: str
    thinking: Thinking


@pydantic_dataclass(config=SECTION)
class AnthropicOptions(HttpOptions):
    anthropic_version: StrictStr = DEFAULT_ANTHROPIC_VERSION
    # How the model thinks: `enabled` takes reasoning.budget_tokens (Claude 3.7 to 4.6), `adaptive`
    # takes reasoning.effort (Opus 4.6, Sonnet 4.6 and later; Opus 4.7 refuses budgets).
    thinking: Thinking = "enabled"


def _parse_params(config: ModelConfig) -> AnthropicParams:
    options = config.options_as(AnthropicOptions)
    return AnthropicParams(
        http=read_http_params(config, options, DEFAULT_API_BASE),
        anthropic_version=options.anthropic_version,
        thinking=options.thinking,
    )


def _finish_reason(value: object) -> FinishReason | None:
    if not isinstance(value, str) or not value:
        return None
    return _FINISH_REASONS.get(value, FinishReason.STOP)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _usage(usage: dict[str, Any]) -> Usage:
    """Anthropic reports cache reads and writes apart from input_tokens: they are prompt tokens too."""
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    details = usage.get("output_tokens_details")
    return Usage(
        prompt_tokens=_int(usage.get("input_tokens")) + read + written,
        completion_tokens=_int(usage.get("output_tokens")),
        cached_prompt_tokens=read,
        cache_write_tokens=written,
        reasoning_tokens=_int(details.get("thinking_tokens")) if isinstance(details, dict) else 0,
    )


def _update_usage(usage: dict[str, Any], update: object) -> None:
    """message_delta's counts are cumulative: each one it has replaces message_start's."""
    if isinstance(update, dict):
        usage.update((key, value) for key, value in update.items() if value is not None)


# --- requests ------------------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    """A schema the edge already checked is a JSON object; parsed, it keeps its key order."""
    value: dict[str, Any] = json.loads(text)
    return value


@lru_cache(maxsize=256)
def _schema(text: str) -> dict[str, Any]:
    """A tool's or output format's schema, parsed once: an agent sends the same tools on every
    turn, and each is checked and then sent. Shared between requests, so never modified."""
    return _json_object(text)


def _is_object_schema(text: str) -> bool:
    return _schema(text).get("type") == "object"


def _is_plain(message: ModelMessage) -> bool:
    """A message the API takes as a plain string: the only kind before contract v1.1."""
    return not (message.parts or message.tool_calls or message.tool_call_id or message.reasoning_signature or message.cache_breakpoint)


def _cache_control() -> dict[str, str]:
    return {"type": "ephemeral"}


def _image_block(image: Image) -> dict[str, Any]:
    if image.data is not None:
        source = {"type": "base64", "media_type": image.mime_type, "data": base64.b64encode(image.data).decode("ascii")}
    elif image.url is not None and image.url.startswith("data:"):
        media_type, _, data = image.url[len("data:"):].partition(";base64,")
        source = {"type": "base64", "media_type": media_type, "data": data}
    else:
        source = {"type": "url", "url": image.url or ""}
    return {"type": "image", "source": source}


def _content_blocks(message: ModelMessage) -> list[dict[str, Any]]:
    """Text and images in order; the API refuses empty text blocks, so none is sent."""
    if not message.parts:
        return [{"type": "text", "text": message.content}] if message.content else []
    return [
        _image_block(part) if isinstance(part, Image) else {"type": "text", "text": part}
        for part in message.parts
        if part
    ]


def _reasoning_blocks(message: ModelMessage) -> list[dict[str, Any]] | None:
    """An earlier turn's thinking as the API must get it back (see `_signature`); None if the
    signature is not one this provider gave."""
    signature = message.reasoning_signature
    if signature.startswith(b"["):
        try:
            blocks = strict_json.loads(signature)
        except ValueError:
            return None
        return blocks if isinstance(blocks, list) and all(_is_reasoning_block(block) for block in blocks) else None
    try:
        text = signature.decode()
    except UnicodeDecodeError:
        return None
    return [{"type": "thinking", "thinking": message.reasoning or "", "signature": text}]


def _is_reasoning_block(block: object) -> bool:
    if not isinstance(block, dict):
        return False
    if block.get("type") == "thinking":
        return isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
    return block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str)


def _blocks(message: ModelMessage) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.parts:
            result["content"] = _content_blocks(message)
        elif message.content:
            result["content"] = message.content
        blocks = [result]
    else:
        blocks = (_reasoning_blocks(message) or []) if message.reasoning_signature else []
        blocks += _content_blocks(message)
        blocks += (
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _json_object(call.arguments_json or "{}")}
            for call in message.tool_calls
        )
    if message.cache_breakpoint and blocks:
        blocks[-1]["cache_control"] = _cache_control()
    return blocks


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _system(messages: Sequence[ModelMessage]) -> str | list[dict[str, Any]]:
    for message in messages:
        if message.cache_breakpoint:
            return _system_blocks(messages)
    return "\n\n".join([message.text for message in messages])


def _system_blocks(messages: Sequence[ModelMessage]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for message in messages:
        if not message.text:
            continue  # the API refuses empty text blocks
        block: dict[str, Any] = {"type": "text", "text": message.text}
        if message.cache_breakpoint:
            block["cache_control"] = _cache_control()
        blocks.append(block)
    return blocks


def _turns(messages: Sequence[ModelMessage]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[ModelMessage] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            system.append(message)
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        # `_is_plain`, inlined: this runs for every message of every call.
        plain = not (message.parts or message.tool_calls or message.tool_call_id or message.reasoning_signature or message.cache_breakpoint)
        content: str | list[dict[str, Any]] = message.content if plain else _blocks(message)
        if not turns or turns[-1]["role"] != role:
            turns.append({"role": role, "content": content})
        elif isinstance(content, str) and isinstance(turns[-1]["content"], str):
            turns[-1]["content"] += "\n\n" + content
        else:
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + _as_blocks(content)
    return _system(system), turns


def _budget_problem(budget: int | None, max_tokens: int) -> str | None:
    if budget is None:
        return f"its extended thinking needs a budget (at least {MIN_THINKING_BUDGET} tokens)"
    if budget < MIN_THINKING_BUDGET:
        return f"Anthropic's thinking budget is at least {MIN_THINKING_BUDGET} tokens, got {budget}"
    if budget >= max_tokens:
        return (f"the thinking budget must be below max_tokens, here {max_tokens} (max_new_tokens, bounded by max_output_tokens "
                f"and by the room the prompt leaves); got {budget}")
    return None


def _tool(tool: Tool) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": tool.name}
    if tool.description:
        wire["description"] = tool.description
    wire["input_schema"] = _schema(tool.schema_json)
    if tool.strict:
        wire["strict"] = True
    return wire


def _tool_choice(request: ModelRequest) -> dict[str, Any] | None:
    """None when Anthropic's default (auto, calls in parallel) is what the request asks."""
    choice = request.tool_choice
    if choice is ToolChoiceMode.NONE:
        return {"type": "none"}  # no calls at all, so none in parallel either
    if isinstance(choice, NamedTool):
        wire: dict[str, Any] = {"type": "tool", "name": choice.name}
    elif choice is ToolChoiceMode.REQUIRED:
        wire = {"type": "any"}
    elif choice is ToolChoiceMode.AUTO or request.parallel_tool_calls is False:
        wire = {"type": "auto"}
    else:
        return None
    if request.parallel_tool_calls is False:
        wire["disable_parallel_tool_use"] = True
    return wire


def _output_tool(output_format: OutputFormat) -> dict[str, Any]:
    """Structured output as the one tool the model must call, its input being the answer: the way
    Anthropic documents JSON output for every Claude model, and one that takes any JSON Schema and
    "any object". Native `output_config.format` exists only on Claude 4.5 and later and refuses
    common keywords (minimum, maxLength, open objects), so it would refuse schemas this takes."""
    if isinstance(output_format, JsonSchemaFormat):
        tool: dict[str, Any] = {
            "name": output_format.name,
            "description": "Give your answer as this tool's input: a JSON object matching its schema.",
            "input_schema": _schema(output_format.schema_json),
        }
        if output_format.strict:
            tool["strict"] = True
        return tool
    return {"name": JSON_OBJECT_TOOL, "description": "Give your answer as this tool's input: a JSON object.", "input_schema": {"type": "object"}}


# --- responses -----------------------------------------------------------------------------------


def _reasoning_block(block: dict[str, Any]) -> dict[str, Any]:
    """A thinking or redacted_thinking block with the keys a request takes back."""
    if block.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": str(block.get("data", ""))}
    return {"type": "thinking", "thinking": str(block.get("thinking", "")), "signature": str(block.get("signature", ""))}


def _signature(blocks: list[dict[str, Any]]) -> bytes:
    """What ModelOutput.reasoning_signature carries, for the next turn to send back verbatim, as
    the API requires: one thinking block's signature as is (UTF-8, its text being `reasoning`);
    several blocks, or redacted ones (thinking the API encrypted, which has no text to show), as a
    JSON array of the blocks themselves, so nothing is lost. A signature never starts with `[`."""
    if not blocks:
        return b""
    if len(blocks) == 1 and blocks[0]["type"] == "thinking":
        return str(blocks[0]["signature"]).encode()
    return json.dumps(blocks, ensure_ascii=False, separators=(",", ":")).encode()


def _input_json(value: object) -> str:
    """A tool_use block's input as arguments_json: always a JSON object."""
    return json.dumps(value if isinstance(value, dict) else {}, ensure_ascii=False)


@dataclass(slots=True)
class _Block:
    """One content block of a streamed message, from its start to its stop."""

    kind: str
    ordinal: int = 0  # a tool_use block: its place among the turn's calls
    start_input: Any = None
    sent_arguments: bool = False
    parts: list[str] = field(default_factory=list)
    signature: str = ""
    data: str = ""

    def reasoning(self) -> dict[str, Any]:
        return _reasoning_block({"type": self.kind, "thinking": "".join(self.parts), "signature": self.signature, "data": self.data})


class _Blocks:
    """The stream's content blocks other than text (which the loop handles inline, being most
    events): thinking with its signature, tool calls and their arguments. With structured output,
    the forced tool's arguments are the text."""

    __slots__ = ("_open", "_reasoning", "_calls", "_structured", "generated")

    def __init__(self, structured: bool, generated: list[str]) -> None:
        self._open: dict[object, _Block] = {}
        self._reasoning: list[_Block] = []
        self._calls = 0
        self._structured = structured
        self.generated = generated

    def start(self, index: object, block: dict[str, Any]) -> ModelOutput | None:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            return self._text(text) if isinstance(text, str) and text else None
        if kind == "tool_use":
            opened = self._open[index] = _Block("tool_use", ordinal=self._calls, start_input=block.get("input"))
            self._calls += 1
            if self._structured:
                return None
            return ModelOutput(tool_call_deltas=(ToolCallDelta(opened.ordinal, id=str(block.get("id", "")), name=str(block.get("name", ""))),))
        if kind in ("thinking", "redacted_thinking"):
            opened = self._open[index] = _Block(
                str(kind), signature=str(block.get("signature") or ""), data=str(block.get("data") or "")
            )
            self._reasoning.append(opened)
            thinking = block.get("thinking")
            return self._thought(opened, thinking) if isinstance(thinking, str) and thinking else None
        return None  # server tool blocks: never asked for

    def delta(self, index: object, delta: dict[str, Any]) -> ModelOutput | None:
        block = self._open.get(index)
        if block is None:
            return None
        kind = delta.get("type")
        if kind == "thinking_delta":
            thinking = delta.get("thinking")
            return self._thought(block, thinking) if isinstance(thinking, str) and thinking else None
        if kind == "signature_delta":
            block.signature = str(delta.get("signature", ""))
        elif kind == "input_json_delta":
            partial = delta.get("partial_json")
            if isinstance(partial, str) and partial:
                block.sent_arguments = True
                return self._arguments(block, partial)
        return None

    def stop(self, index: object) -> ModelOutput | None:
        """A call whose input came whole in its start, or as no deltas at all, still gets its
        arguments: deltas concatenate to valid JSON."""
        block = self._open.pop(index, None)
        if block is None or block.kind != "tool_use" or block.sent_arguments:
            return None
        return self._arguments(block, _input_json(block.start_input))

    def signature(self) -> bytes:
        return _signature([block.reasoning() for block in self._reasoning])

    def _text(self, text: str) -> ModelOutput:
        self.generated.append(text)
        return ModelOutput(text=text)

    def _thought(self, block: _Block, thinking: str) -> ModelOutput:
        block.parts.append(thinking)
        self.generated.append(thinking)
        return ModelOutput(reasoning=thinking)

    def _arguments(self, block: _Block, arguments: str) -> ModelOutput:
        if self._structured:
            return self._text(arguments)
        self.generated.append(arguments)
        return ModelOutput(tool_call_deltas=(ToolCallDelta(block.ordinal, arguments_delta=arguments),))


def _final_finish(finish: FinishReason | None, structured: bool) -> FinishReason:
    """Structured output arrives as a forced tool call, but the caller asked for text."""
    if finish is FinishReason.TOOL_CALLS and structured:
        return FinishReason.STOP
    return finish or FinishReason.STOP


# --- refusals ------------------------------------------------------------------------------------


def _needs_checks(message: ModelMessage) -> bool:
    return bool(message.name or message.reasoning is not None or message.role is Role.TOOL or not _is_plain(message))


def _nothing_to_check(request: ModelRequest) -> bool:
    """The plain request of contract v1.0, whose refusal check must cost next to nothing."""
    sampling = request.sampling
    if request.tools or request.output_format is not None or request.reasoning is not None or sampling.seed is not None:
        return False
    if sampling.presence_penalty is not None or sampling.frequency_penalty is not None:
        return False
    tool = Role.TOOL
    for message in request.messages:  # `_needs_checks`, inlined
        if (message.name or message.role is tool or message.reasoning is not None or message.parts or message.tool_calls
                or message.reasoning_signature or message.cache_breakpoint):
            return False
    return True


def _can_mark(message: ModelMessage) -> bool:
    """cache_control goes on a message's last block, which must exist and not be thinking."""
    blocks = _blocks(message)
    return bool(blocks) and blocks[-1]["type"] not in ("thinking", "redacted_thinking")


def _is_base64_image_url(url: str) -> bool:
    media_type, separator, _ = url[len("data:"):].partition(";base64,")
    return bool(separator) and media_type in IMAGE_MEDIA_TYPES


class _Refusals:
    """What the Messages API cannot express, each a violation naming the field and the model."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.violations: list[FieldViolation] = []

    def add(self, field_name: str, reason: str) -> None:
        self.violations.append(FieldViolation(field_name, f"model {self.model!r} cannot take it: {reason}"))


class AnthropicClient(HttpProxyClient):
    provider = "anthropic"

    def __init__(self, metadata: ModelMetadata, executor: Executor, params: AnthropicParams, max_concurrency: int) -> None:
        super().__init__(metadata, executor, params.http, max_concurrency)
        self._options = params
        self._url = f"{params.http.api_base}/v1/messages"

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
            metadata={"upstream_model": options.http.upstream_model},
        )
        return cls(metadata, executor, options, params.max_concurrency)

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self._options.anthropic_version}
        if self._params.api_key is not None:
            headers["x-api-key"] = self._params.api_key.reveal()
        return headers

    # --- refusals

    def unsupported(self, request: ModelRequest) -> list[FieldViolation]:
        return [] if _nothing_to_check(request) else self._refusals(request)

    def _refusals(self, request: ModelRequest) -> list[FieldViolation]:
        refusals = _Refusals(self.default_model)
        sampling = request.sampling
        for name, value in (("seed", sampling.seed), ("presence_penalty", sampling.presence_penalty), ("frequency_penalty", sampling.frequency_penalty)):
            if value is not None:
                refusals.add(f"sampling.{name}", f"the Messages API has no {name}")
        breakpoints = 0
        for index, message in enumerate(request.messages):
            if _needs_checks(message):
                self._refuse_message(refusals, index, message)
            if message.cache_breakpoint:
                breakpoints += 1
                if breakpoints > MAX_CACHE_BREAKPOINTS:
                    refusals.add(f"messages[{index}].cache_breakpoint", f"Anthropic takes at most {MAX_CACHE_BREAKPOINTS} cache breakpoints in a request")
        if request.tools:
            for index, tool in enumerate(request.tools):
                if not _is_object_schema(tool.schema_json):
                    refusals.add(f"tools[{index}].parameters_json_schema", 'Anthropic takes a tool\'s input schema only with "type": "object" at its root')
        if request.output_format is not None:
            self._refuse_output_format(refusals, request)
        if request.reasoning is not None:
            self._refuse_reasoning(refusals, request)
        return refusals.violations

    def _refuse_message(self, refusals: _Refusals, index: int, message: ModelMessage) -> None:
        where = f"messages[{index}]"
        if message.name:
            refusals.add(f"{where}.name", "the Messages API has no names on messages")
        if message.role is Role.TOOL and not message.tool_call_id:
            refusals.add(f"{where}.tool_call_id", "Anthropic takes a tool's answer only as a tool_result naming the tool_use it answers")
        for number, part in enumerate(message.parts):
            if not isinstance(part, Image):
                continue
            if message.role in (Role.SYSTEM, Role.ASSISTANT):
                refusals.add(f"{where}.parts[{number}].image", "Anthropic takes images only in user turns and tool results")
            elif part.url is not None and part.url.startswith("data:") and not _is_base64_image_url(part.url):
                refusals.add(f"{where}.parts[{number}].image.url", f"Anthropic takes a data: URL only as base64 of {', '.join(IMAGE_MEDIA_TYPES)}")
        if message.reasoning is not None and not message.reasoning_signature:
            refusals.add(f"{where}.reasoning_signature", "Anthropic takes an earlier turn's reasoning back only with the reasoning_signature it came with")
        elif message.reasoning_signature and _reasoning_blocks(message) is None:
            refusals.add(f"{where}.reasoning_signature", "it is not a signature this provider gave (send back the bytes a response carried, unchanged)")
        if message.cache_breakpoint and not _can_mark(message):
            refusals.add(f"{where}.cache_breakpoint", "the message has no text, image, tool call or result to put cache_control on")

    def _refuse_output_format(self, refusals: _Refusals, request: ModelRequest) -> None:
        """Structured output is a forced tool (`_output_tool`): nothing else may choose tools."""
        output_format = request.output_format
        clashes = [name for name, given in (
            ("tools", bool(request.tools)),
            ("tool_choice", request.tool_choice is not None),
            ("parallel_tool_calls", request.parallel_tool_calls is not None),
        ) if given]
        if clashes:
            refusals.add("output_format", f"Anthropic gives structured output as a forced tool call, which leaves no room for {' or '.join(clashes)}")
        if request.reasoning is not None:
            refusals.add("output_format", "Anthropic gives structured output as a forced tool call, which its extended thinking does not allow (drop reasoning or output_format)")
        if isinstance(output_format, JsonSchemaFormat) and not _is_object_schema(output_format.schema_json):
            refusals.add("output_format.json_schema.schema_json", 'Anthropic gives structured output as a tool\'s input, whose schema must have "type": "object" at its root')

    def _refuse_reasoning(self, refusals: _Refusals, request: ModelRequest) -> None:
        """Extended thinking's documented rules, checked here rather than answered by a 400."""
        reasoning = request.reasoning
        assert reasoning is not None
        if self._options.thinking == "adaptive":
            if reasoning.budget_tokens is not None:
                refusals.add("reasoning.budget_tokens", 'its thinking is adaptive (option thinking = "adaptive"), steered by reasoning.effort, not by a budget')
            if reasoning.effort is ReasoningEffort.MINIMAL:
                refusals.add("reasoning.effort", "Anthropic's efforts are low, medium and high; it has no minimal")
        else:
            if reasoning.effort is not None:
                refusals.add("reasoning.effort", f"its extended thinking takes a token budget, not an effort: set reasoning.budget_tokens (at least {MIN_THINKING_BUDGET}, below max_new_tokens); "
                             'models with adaptive thinking take an effort when configured with thinking = "adaptive"')
            max_tokens = min(request.sampling.max_new_tokens or self._metadata.max_output_tokens, self._metadata.max_output_tokens)
            problem = _budget_problem(reasoning.budget_tokens, max_tokens)
            if problem is not None and (reasoning.budget_tokens is not None or reasoning.effort is None):
                refusals.add("reasoning.budget_tokens", problem)
        sampling = request.sampling  # compared as sent: the contract's floats are 32-bit
        if sampling.temperature is not None and wire_float(sampling.temperature) != 1.0:
            refusals.add("sampling.temperature", "with thinking Anthropic takes no temperature but 1")
        if sampling.top_p is not None and (wire_float(sampling.top_p) or 0.0) < 0.95:
            refusals.add("sampling.top_p", "with thinking Anthropic takes top_p only from 0.95 to 1")
        if isinstance(request.tool_choice, NamedTool) or request.tool_choice is ToolChoiceMode.REQUIRED:
            refusals.add("tool_choice", "with thinking Anthropic takes only tool choices auto and none")
        self._refuse_unsigned_tool_turn(refusals, request.messages)

    def _refuse_unsigned_tool_turn(self, refusals: _Refusals, messages: Sequence[ModelMessage]) -> None:
        """Continuing a tool call with thinking on needs that turn's thinking back: without it the
        API refuses the request, or turns thinking off for it (dropping `reasoning` silently)."""
        last = next((index for index in range(len(messages) - 1, -1, -1) if messages[index].role is Role.ASSISTANT), None)
        if last is None or not messages[last].tool_calls or messages[last].reasoning_signature:
            return
        if any(message.role is Role.TOOL for message in messages[last + 1:]):
            refusals.add(f"messages[{last}].reasoning_signature", "with thinking on, the assistant turn whose tool calls are being answered must carry "
                         "the reasoning and reasoning_signature its response gave")

    # --- requests

    def _body(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        sampling = request.sampling
        system, turns = _turns(request.messages)
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "max_tokens": sampling.max_new_tokens or self._metadata.max_output_tokens,
            "messages": turns,
            "stream": stream,
        }
        if system:
            body["system"] = system
        if sampling.temperature is not None:
            body["temperature"] = wire_float(sampling.temperature)
        if sampling.top_p is not None:
            body["top_p"] = wire_float(sampling.top_p)
        if sampling.stop:
            body["stop_sequences"] = list(sampling.stop)
        if request.context.user:
            body["metadata"] = {"user_id": request.context.user}
        if request.tools or request.output_format is not None or request.reasoning is not None:
            self._add_v1_1_fields(request, body)
        return body

    def _add_v1_1_fields(self, request: ModelRequest, body: dict[str, Any]) -> None:
        """Tools, structured output and reasoning; kept off the path of requests without them."""
        if request.tools:
            body["tools"] = [_tool(tool) for tool in request.tools]
            choice = _tool_choice(request)
            if choice is not None:
                body["tool_choice"] = choice
        if request.output_format is not None:
            tool = _output_tool(request.output_format)
            body["tools"] = [tool]
            body["tool_choice"] = {"type": "tool", "name": tool["name"], "disable_parallel_tool_use": True}
        reasoning = request.reasoning
        if reasoning is None:
            return
        if self._options.thinking == "adaptive":
            body["thinking"] = {"type": "adaptive"}
            if reasoning.effort is not None:
                body["output_config"] = {"effort": _EFFORTS[reasoning.effort]}
            return
        # Checked again: the context check may have lowered max_tokens since `unsupported` ran.
        problem = _budget_problem(reasoning.budget_tokens, body["max_tokens"])
        if problem is not None:
            refusals = _Refusals(self.default_model)
            refusals.add("reasoning.budget_tokens", problem)
            raise errors.InvalidRequest(refusals.violations)
        body["thinking"] = {"type": "enabled", "budget_tokens": reasoning.budget_tokens}

    def _payload_error(self, payload: dict[str, Any]) -> errors.ModelwireError:
        error = payload.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        fallback = clean_message(str(kind or "unknown error"), self._redact)
        message = message_from_payload(payload, self._redact) or fallback
        return http_error_from_code(_ERROR_STATUS.get(str(kind)), message, self._params)

    # --- unary

    async def _completion(self, request: ModelRequest, payload: Any) -> ModelOutput:
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent a message that is not a JSON object")
        if payload.get("type") == "error":
            raise self._payload_error(payload)
        blocks = payload.get("content")
        if not isinstance(blocks, list):
            raise errors.UpstreamUnavailable("upstream sent a message without content")
        text: list[str] = []
        thinking: list[str] = []
        reasoning: list[dict[str, Any]] = []
        calls: list[ToolCall] = []
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text.append(str(block.get("text", "")))
            elif kind == "thinking" or kind == "redacted_thinking":
                thinking.append(str(block.get("thinking", "")))
                reasoning.append(_reasoning_block(block))
            elif kind == "tool_use":
                calls.append(ToolCall(id=str(block.get("id", "")), name=str(block.get("name", "")), arguments_json=_input_json(block.get("input"))))
        structured = request.output_format is not None
        if structured:
            text += (call.arguments_json for call in calls)
            calls = []
        usage_payload = payload.get("usage")
        if isinstance(usage_payload, dict) and isinstance(usage_payload.get("output_tokens"), int):
            usage = _usage(usage_payload)
        else:
            usage = await self.estimate_usage(request.messages, "".join(text + thinking + [call.arguments_json for call in calls]))
        return ModelOutput(
            text="".join(text),
            reasoning="".join(thinking) or None,
            finish_reason=_final_finish(_finish_reason(payload.get("stop_reason")), structured),
            usage=usage,
            tool_calls=tuple(calls),
            reasoning_signature=_signature(reasoning),
        )

    # --- streaming

    async def _stream_once(self, request: ModelRequest, body: dict[str, Any]) -> AsyncGenerator[ModelOutput, None]:
        finish: FinishReason | None = None
        usage: dict[str, Any] = {}
        generated: list[str] = []
        structured = request.output_format is not None
        blocks = _Blocks(structured, generated)
        async with aclosing(self.post_events(self._url, body, self._headers())) as events:
            done = False
            async for event in events:
                payload = parse_json_event(event)
                if not isinstance(payload, dict):
                    raise errors.UpstreamUnavailable("upstream sent a malformed event stream: an event is not a JSON object")
                kind = payload.get("type", event.event)
                output: ModelOutput | None = None
                if kind == "content_block_delta":
                    delta = payload.get("delta")
                    if not isinstance(delta, dict):
                        continue
                    if delta.get("type") == "text_delta":
                        text = delta.get("text")
                        if isinstance(text, str) and text:
                            generated.append(text)
                            output = ModelOutput(text=text)
                    else:
                        output = blocks.delta(payload.get("index"), delta)
                elif kind == "content_block_start":
                    block = payload.get("content_block")
                    if isinstance(block, dict):
                        output = blocks.start(payload.get("index"), block)
                elif kind == "content_block_stop":
                    output = blocks.stop(payload.get("index"))
                elif kind == "message_start":
                    message = payload.get("message")
                    if isinstance(message, dict):
                        _update_usage(usage, message.get("usage"))
                elif kind == "message_delta":
                    delta = payload.get("delta")
                    if isinstance(delta, dict):
                        finish = _finish_reason(delta.get("stop_reason")) or finish
                    _update_usage(usage, payload.get("usage"))
                elif kind == "message_stop":
                    done = True
                    break
                elif kind == "error":
                    raise self._payload_error(payload)
                # ping and event types added later are ignored, as Anthropic's versioning asks.
                if output is not None:
                    yield output
            if not done and finish is None:
                raise errors.UpstreamUnavailable("upstream stream ended before the message finished")
            if isinstance(usage.get("input_tokens"), int) and isinstance(usage.get("output_tokens"), int):
                usage_out = _usage(usage)
            else:
                usage_out = await self.estimate_usage(request.messages, "".join(generated))
            yield ModelOutput(finish_reason=_final_finish(finish, structured), usage=usage_out, reasoning_signature=blocks.signature())
            if done:
                await drain(events)
