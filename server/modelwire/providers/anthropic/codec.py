"""Messages API JSON and events ⇄ the domain types, with no I/O: system and turns, content
blocks, tools, structured output as a forced tool, usage, and a streamed message's blocks (the
client, client.py, sends them; refusals.py refuses what they cannot say)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from modelwire.core import strict_json
from modelwire.core.types import (
    FinishReason,
    Image,
    JsonSchemaFormat,
    ModelMessage,
    ModelOutput,
    ModelRequest,
    NamedTool,
    OutputFormat,
    ReasoningEffort,
    Role,
    Tool,
    ToolCallDelta,
    ToolChoiceMode,
    Usage,
)

# The forced tool that carries `output_format = json_object`.
JSON_OBJECT_TOOL = "json_object"


EFFORTS = {
    ReasoningEffort.LOW: "low",
    ReasoningEffort.MEDIUM: "medium",
    ReasoningEffort.HIGH: "high",
}


FINISH_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


# A finish as the API says it (the facade's direction): the first stop reason above for each.
STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}


# Anthropic's error types (in error bodies and stream `error` events) → the HTTP status they stand
# for.
ERROR_STATUS = {
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


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def usage_of(usage: dict[str, Any]) -> Usage:
    """Anthropic reports cache reads and writes apart from input_tokens: they are prompt tokens
    too."""
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


def usage_body(usage: Usage) -> dict[str, Any]:
    """`usage_of` reversed, for the facade: cache reads and writes apart from input_tokens again
    (clamped at 0 for a provider whose cached count exceeds its prompt count)."""
    read, written = usage.cached_prompt_tokens, usage.cache_write_tokens
    body: dict[str, Any] = {
        "input_tokens": max(usage.prompt_tokens - read - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": usage.completion_tokens,
    }
    if usage.reasoning_tokens:
        body["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return body


def update_usage(usage: dict[str, Any], update: object) -> None:
    """message_delta's counts are cumulative: each one it has replaces message_start's."""
    if isinstance(update, dict):
        usage.update((key, value) for key, value in update.items() if value is not None)


def _json_object(text: str) -> dict[str, Any]:
    """A schema the edge already checked is a JSON object; parsed, it keeps its key order."""
    value: dict[str, Any] = json.loads(text)
    return value


@lru_cache(maxsize=256)
def _schema(text: str) -> dict[str, Any]:
    """A tool's or output format's schema, parsed once: an agent sends the same tools on every
    turn, and each is checked and then sent. Shared between requests, so never modified."""
    return _json_object(text)


def is_object_schema(text: str) -> bool:
    return _schema(text).get("type") == "object"


def is_plain(message: ModelMessage) -> bool:
    """A message the API takes as a plain string: the only kind before contract v1.1."""
    return not (
        message.parts
        or message.tool_calls
        or message.tool_call_id
        or message.reasoning_signature
        or message.cache_breakpoint
    )


def _cache_control() -> dict[str, str]:
    return {"type": "ephemeral"}


def _image_block(image: Image) -> dict[str, Any]:
    if image.data is not None:
        source = {
            "type": "base64",
            "media_type": image.mime_type,
            "data": base64.b64encode(image.data).decode("ascii"),
        }
    elif image.url is not None and image.url.startswith("data:"):
        media_type, _, data = image.url[len("data:") :].partition(";base64,")
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


def reasoning_blocks(message: ModelMessage) -> list[dict[str, Any]] | None:
    """An earlier turn's thinking as the API must get it back (see `signature_of`); None if the
    signature is not one this provider gave."""
    signature = message.reasoning_signature
    if signature.startswith(b"["):
        try:
            blocks = strict_json.loads(signature)
        except ValueError:
            return None
        return (
            blocks
            if isinstance(blocks, list) and all(_is_reasoning_block(block) for block in blocks)
            else None
        )
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


def message_blocks(message: ModelMessage) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.parts:
            result["content"] = _content_blocks(message)
        elif message.content:
            result["content"] = message.content
        blocks = [result]
    else:
        blocks = (reasoning_blocks(message) or []) if message.reasoning_signature else []
        blocks += _content_blocks(message)
        blocks += (
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": _json_object(call.arguments_json or "{}"),
            }
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


def system_and_turns(
    messages: Sequence[ModelMessage],
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[ModelMessage] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            system.append(message)
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        # `is_plain`, inlined: this runs for every message of every call.
        plain = not (
            message.parts
            or message.tool_calls
            or message.tool_call_id
            or message.reasoning_signature
            or message.cache_breakpoint
        )
        content: str | list[dict[str, Any]] = message.content if plain else message_blocks(message)
        if not turns or turns[-1]["role"] != role:
            turns.append({"role": role, "content": content})
        elif isinstance(content, str) and isinstance(turns[-1]["content"], str):
            turns[-1]["content"] += "\n\n" + content
        else:
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + _as_blocks(content)
    return _system(system), turns


def wire_tool(tool: Tool) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": tool.name}
    if tool.description:
        wire["description"] = tool.description
    wire["input_schema"] = _schema(tool.schema_json)
    if tool.strict:
        wire["strict"] = True
    return wire


def wire_tool_choice(request: ModelRequest) -> dict[str, Any] | None:
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


def output_tool(output_format: OutputFormat) -> dict[str, Any]:
    """Structured output as the one tool the model must call, its input being the answer: the way
    Anthropic documents JSON output for every Claude model, and one that takes any JSON Schema and
    "any object". Native `output_config.format` exists only on Claude 4.5 and later and refuses
    common keywords (minimum, maxLength, open objects), so it would refuse schemas this takes."""
    if isinstance(output_format, JsonSchemaFormat):
        tool: dict[str, Any] = {
            "name": output_format.name,
            "description": "Give your answer as this tool's input: a JSON object matching its "
            "schema.",
            "input_schema": _schema(output_format.schema_json),
        }
        if output_format.strict:
            tool["strict"] = True
        return tool
    return {
        "name": JSON_OBJECT_TOOL,
        "description": "Give your answer as this tool's input: a JSON object.",
        "input_schema": {"type": "object"},
    }


def reasoning_block(block: dict[str, Any]) -> dict[str, Any]:
    """A thinking or redacted_thinking block with the keys a request takes back."""
    if block.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": str(block.get("data", ""))}
    return {
        "type": "thinking",
        "thinking": str(block.get("thinking", "")),
        "signature": str(block.get("signature", "")),
    }


def signature_of(blocks: list[dict[str, Any]]) -> bytes:
    """What ModelOutput.reasoning_signature carries, for the next turn to send back verbatim, as
    the API requires: one thinking block's signature as is (UTF-8, its text being `reasoning`);
    several blocks, or redacted ones (thinking the API encrypted, which has no text to show), as a
    JSON array of the blocks themselves, so nothing is lost. A signature never starts with `[`."""
    if not blocks:
        return b""
    if len(blocks) == 1 and blocks[0]["type"] == "thinking":
        return str(blocks[0]["signature"]).encode()
    return json.dumps(blocks, ensure_ascii=False, separators=(",", ":")).encode()


def input_json(value: object) -> str:
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
        return reasoning_block(
            {
                "type": self.kind,
                "thinking": "".join(self.parts),
                "signature": self.signature,
                "data": self.data,
            }
        )


class StreamBlocks:
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
            opened = self._open[index] = _Block(
                "tool_use", ordinal=self._calls, start_input=block.get("input")
            )
            self._calls += 1
            if self._structured:
                return None
            return ModelOutput(
                tool_call_deltas=(
                    ToolCallDelta(
                        opened.ordinal, id=str(block.get("id", "")), name=str(block.get("name", ""))
                    ),
                )
            )
        if kind in ("thinking", "redacted_thinking"):
            opened = self._open[index] = _Block(
                str(kind),
                signature=str(block.get("signature") or ""),
                data=str(block.get("data") or ""),
            )
            self._reasoning.append(opened)
            thinking = block.get("thinking")
            return (
                self._thought(opened, thinking) if isinstance(thinking, str) and thinking else None
            )
        return None  # server tool blocks: never asked for

    def delta(self, index: object, delta: dict[str, Any]) -> ModelOutput | None:
        block = self._open.get(index)
        if block is None:
            return None
        kind = delta.get("type")
        if kind == "thinking_delta":
            thinking = delta.get("thinking")
            return (
                self._thought(block, thinking) if isinstance(thinking, str) and thinking else None
            )
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
        return self._arguments(block, input_json(block.start_input))

    def signature(self) -> bytes:
        return signature_of([block.reasoning() for block in self._reasoning])

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
        return ModelOutput(
            tool_call_deltas=(ToolCallDelta(block.ordinal, arguments_delta=arguments),)
        )


def final_finish(finish: FinishReason | None, structured: bool) -> FinishReason:
    """Structured output arrives as a forced tool call, but the caller asked for text."""
    if finish is FinishReason.TOOL_CALLS and structured:
        return FinishReason.STOP
    return finish or FinishReason.STOP
