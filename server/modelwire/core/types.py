"""Protocol-free domain types shared by the edge (servicer) and the providers."""

from __future__ import annotations

import base64
import enum
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, dataclass_transform

if TYPE_CHECKING:  # the configuration's type; settings imports this module
    from modelwire.core.settings import Prices


# A call's response headers once its work has begun (its rate limits), as (name, value) pairs;
# `Started` is told them then (worker/service.py: after admission and the quota), so an edge can
# send them before the first token, and a gateway knows a call it then loses may have run (and been
# billed) and must not replay it.
ResponseHeaders = tuple[tuple[str, str], ...]
Started = Callable[[ResponseHeaders], Awaitable[None]]

_Value = TypeVar("_Value")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[_Value]) -> type[_Value]:
    """A value type: immutable to the type checker, which refuses any assignment to a field, but
    built as a plain slotted dataclass at run time. `frozen=True` makes `__init__` set each field
    through `object.__setattr__`, about 15k instructions per object, and a unary call builds a
    handful (about 72k per call, docs/benchmarks.md); hashing stays as frozen's."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


class Role(enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"


class Capability(enum.Enum):
    """What a model accepts; configuration names them by these values (docs/configuration.md)."""

    CHAT = "chat"
    STREAMING = "streaming"
    REASONING = "reasoning"
    VISION = "vision"
    TOOLS = "tools"
    JSON_SCHEMA = "json_schema"
    GRAMMAR = "grammar"
    EMBEDDINGS = "embeddings"
    PROMPT_CACHE = "prompt_cache"


@value
class Image:
    """Exactly one of `data` (with `mime_type`) or `url`."""

    data: bytes | None = None
    url: str | None = None
    mime_type: str = ""

    def data_url(self) -> str:
        """The image as a URL: its own, or a base64 `data:` URL of its bytes."""
        if self.url is not None:
            return self.url
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data or b'').decode('ascii')}"


# A part of a message's content: text, or an image.
ContentPart = str | Image


@value
class ToolCall:
    id: str
    name: str
    arguments_json: str


@value
class ToolCallDelta:
    """A piece of a streamed tool call; `id` and `name` come on a call's first piece."""

    index: int
    id: str = ""
    name: str = ""
    arguments_delta: str = ""


@value
class ModelMessage:
    role: Role
    content: str
    name: str = ""
    # When set, the message's content in order (then `content` is empty).
    parts: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    reasoning: str | None = None
    reasoning_signature: bytes = b""
    cache_breakpoint: bool = False

    @property
    def plain(self) -> bool:
        """Only role, content and name: the common case, which every layer keeps as cheap as it was
        before the contract grew."""
        return not (
            self.parts
            or self.tool_calls
            or self.tool_call_id
            or self.reasoning is not None
            or self.reasoning_signature
            or self.cache_breakpoint
        )

    @property
    def text(self) -> str:
        """The message's text: `content`, or its text parts joined (images left out)."""
        if not self.parts:
            return self.content
        return "".join(part for part in self.parts if isinstance(part, str))

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(part for part in self.parts if isinstance(part, Image))

    @property
    def char_count(self) -> int:
        """What the message weighs in characters (limits, and whether a count runs inline): its
        text, tool calls, reasoning and image URLs; image bytes are bounded by the receive limit."""
        chars = (
            len(self.content) + len(self.name) + len(self.tool_call_id) + len(self.reasoning or "")
        )
        for part in self.parts:
            chars += len(part) if isinstance(part, str) else len(part.url or "")
        for call in self.tool_calls:
            chars += len(call.id) + len(call.name) + len(call.arguments_json)
        return chars


@value
class Tool:
    name: str
    description: str = ""
    # JSON text of a JSON Schema object; empty means no arguments.
    parameters_json_schema: str = ""
    strict: bool = False

    @property
    def schema_json(self) -> str:
        return self.parameters_json_schema or NO_ARGUMENTS_SCHEMA


# "No arguments": an object with no members at all. Without additionalProperties false the schema
# would take any members (a local model's grammar lets it invent some; strict upstream tools
# refuse an open object).
NO_ARGUMENTS_SCHEMA = '{"type": "object", "properties": {}, "additionalProperties": false}'


class ToolChoiceMode(enum.Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


@value
class NamedTool:
    """A tool choice that forces one tool by name."""

    name: str


# Unset (None) is the provider's default: auto when tools are given.
ToolChoice = ToolChoiceMode | NamedTool


@value
class JsonObjectFormat:
    """Any JSON object."""


@value
class JsonSchemaFormat:
    name: str
    schema_json: str
    strict: bool = False


@value
class GrammarFormat:
    """A GBNF grammar (llama.cpp's)."""

    gbnf: str


OutputFormat = JsonObjectFormat | JsonSchemaFormat | GrammarFormat


class ReasoningEffort(enum.Enum):
    MINIMAL = "minimal"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@value
class ReasoningOptions:
    effort: ReasoningEffort | None = None
    budget_tokens: int | None = None


@value
class SamplingParams:
    """None means "the model's default", which differs from zero (temperature 0 is greedy)."""

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@value
class RequestContext:
    request_id: str = ""
    user: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@value
class ModelRequest:
    model: str
    messages: tuple[ModelMessage, ...]
    sampling: SamplingParams = SamplingParams()
    context: RequestContext = RequestContext()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    output_format: OutputFormat | None = None
    reasoning: ReasoningOptions | None = None

    @property
    def plain(self) -> bool:
        """No tools, output format or reasoning options (messages aside)."""
        return not (
            self.tools
            or self.tool_choice is not None
            or self.parallel_tool_calls is not None
            or self.output_format is not None
            or self.reasoning is not None
        )


@value
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    # Each is a part of prompt_tokens or completion_tokens, never added to them.
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@value
class Timing:
    time_to_first_token_s: float = 0.0
    tokens_per_second: float = 0.0
    total_s: float = 0.0


@value
class ModelOutput:
    """A whole completion, or one delta of a stream; only a stream's last chunk has
    finish_reason."""

    text: str = ""
    reasoning: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timing: Timing | None = None
    # Unary outputs carry whole calls, stream deltas carry pieces of them.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_deltas: tuple[ToolCallDelta, ...] = ()
    reasoning_signature: bytes = b""


@value
class ModelMetadata:
    model: str
    provider: str
    context_length: int
    max_output_tokens: int
    capabilities: tuple[Capability, ...] = (Capability.CHAT, Capability.STREAMING)
    metadata: dict[str, str] = field(default_factory=dict)
    # Per million tokens, from the model's configuration (`price_per_million`); None: unpriced.
    prices: Prices | None = None


@value
class TokenCount:
    count: int
    tokenizer: str
    exact: bool

    def bounds(self, margin: float) -> tuple[int, int]:
        """(fewest, most) tokens this count may stand for, when an estimate may be off by `margin`
        either way (another model's tokenizer standing in, OpenAI's framing for any template)."""
        if self.exact:
            return self.count, self.count
        return math.floor(self.count * (1 - margin)), math.ceil(self.count * (1 + margin))


@value
class EmbedRequest:
    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None


@value
class Embeddings:
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage


def join_tool_call_deltas(deltas: Sequence[ToolCallDelta]) -> tuple[ToolCallDelta, ...]:
    """One piece per call, in the order the calls came: its id and name from the first piece that
    has them, its arguments concatenated."""
    calls: dict[int, tuple[str, str, list[str]]] = {}
    for delta in deltas:
        call_id, name, arguments = calls.setdefault(delta.index, ("", "", []))
        calls[delta.index] = (call_id or delta.id, name or delta.name, arguments)
        arguments.append(delta.arguments_delta)
    return tuple(
        ToolCallDelta(index, call_id, name, "".join(arguments))
        for index, (call_id, name, arguments) in calls.items()
    )


def merge_tool_call_deltas(deltas: list[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """Whole calls from their pieces, in index order."""
    return tuple(
        ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_delta)
        for call in sorted(join_tool_call_deltas(deltas), key=lambda call: call.index)
    )


def merge_outputs(chunks: list[ModelOutput]) -> ModelOutput:
    """Folds stream deltas into one output: the single place where unary is derived from
    streaming."""
    text = "".join(chunk.text for chunk in chunks)
    reasoning_parts = [chunk.reasoning for chunk in chunks if chunk.reasoning is not None]
    deltas = [delta for chunk in chunks for delta in chunk.tool_call_deltas]
    last = chunks[-1] if chunks else ModelOutput()
    return ModelOutput(
        text=text,
        reasoning="".join(reasoning_parts) if reasoning_parts else None,
        finish_reason=last.finish_reason,
        usage=last.usage,
        timing=last.timing,
        tool_calls=tuple(call for chunk in chunks for call in chunk.tool_calls)
        + merge_tool_call_deltas(deltas),
        reasoning_signature=b"".join(chunk.reasoning_signature for chunk in chunks),
    )
