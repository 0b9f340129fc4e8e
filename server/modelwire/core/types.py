"""Protocol-free domain types shared by the edge (servicer) and the providers."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


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
    CHAT = "chat"
    STREAMING = "streaming"
    REASONING = "reasoning"
    VISION = "vision"
    TOOLS = "tools"


@dataclass(frozen=True, slots=True)
class ModelMessage:
    role: Role
    content: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """None means "the model's default", which differs from zero (temperature 0 is greedy)."""

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str = ""
    user: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelRequest:
    model: str
    messages: tuple[ModelMessage, ...]
    sampling: SamplingParams = SamplingParams()
    context: RequestContext = RequestContext()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timing:
    time_to_first_token_s: float = 0.0
    tokens_per_second: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """A whole completion, or one delta of a stream; only a stream's last chunk has finish_reason."""

    text: str = ""
    reasoning: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timing: Timing | None = None


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    model: str
    provider: str
    context_length: int
    max_output_tokens: int
    capabilities: tuple[Capability, ...] = (Capability.CHAT, Capability.STREAMING)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
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


def merge_outputs(chunks: list[ModelOutput]) -> ModelOutput:
    """Folds stream deltas into one output: the single place where unary is derived from streaming."""
    text = "".join(chunk.text for chunk in chunks)
    reasoning_parts = [chunk.reasoning for chunk in chunks if chunk.reasoning is not None]
    last = chunks[-1] if chunks else ModelOutput()
    return ModelOutput(
        text=text,
        reasoning="".join(reasoning_parts) if reasoning_parts else None,
        finish_reason=last.finish_reason,
        usage=last.usage,
        timing=last.timing,
    )
