"""Never silently drop: every request field a model's capabilities do not cover is refused, by name.

The capabilities are the model's metadata (configuration, or the provider's defaults), the same list
ListModels shows, so what a caller reads there is exactly what the worker accepts. A provider's own
finer rules (`ProxyLLMClient.unsupported`) come on top of these.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.core.errors import FieldViolation
from modelwire.core.types import (
    Capability,
    EmbedRequest,
    GrammarFormat,
    ModelMessage,
    ModelMetadata,
    ModelRequest,
)


def _lacks(metadata: ModelMetadata, capability: Capability, field: str) -> FieldViolation | None:
    if capability in metadata.capabilities:
        return None
    return FieldViolation(
        field,
        f"model {metadata.model!r} does not accept it: it has no CAPABILITY_{capability.name} "
        "(ListModels lists what each model accepts)",
    )


def unsupported_fields(
    request: ModelRequest, metadata: ModelMetadata, streaming: bool
) -> list[FieldViolation]:
    """One violation per field the model cannot honour, each naming the field and the model."""
    wanted: list[tuple[Capability, str]] = [(Capability.CHAT, "model")]
    if streaming:
        wanted.append((Capability.STREAMING, "model"))
    if not request.plain:
        wanted += _request_fields(request)
    return _lacking(metadata, wanted + _messages_fields(request.messages))


def unsupported_message_fields(
    messages: Sequence[ModelMessage], metadata: ModelMetadata
) -> list[FieldViolation]:
    """CountToken's share of the rule: it takes the messages Generate takes, and refuses the
    same."""
    return _lacking(metadata, _messages_fields(messages))


def _lacking(metadata: ModelMetadata, wanted: list[tuple[Capability, str]]) -> list[FieldViolation]:
    violations = [_lacks(metadata, capability, field) for capability, field in wanted]
    return [violation for violation in violations if violation is not None]


def _messages_fields(messages: Sequence[ModelMessage]) -> list[tuple[Capability, str]]:
    wanted: list[tuple[Capability, str]] = []
    for index, message in enumerate(messages):
        if not message.plain:
            wanted += _message_fields(message, f"messages[{index}]")
    return wanted


def _request_fields(request: ModelRequest) -> list[tuple[Capability, str]]:
    wanted: list[tuple[Capability, str]] = []
    if request.tools:
        wanted.append((Capability.TOOLS, "tools"))
    if request.tool_choice is not None:
        wanted.append((Capability.TOOLS, "tool_choice"))
    if request.parallel_tool_calls is not None:
        wanted.append((Capability.TOOLS, "parallel_tool_calls"))
    if request.output_format is not None:
        grammar = isinstance(request.output_format, GrammarFormat)
        wanted.append(
            (Capability.GRAMMAR, "output_format.grammar")
            if grammar
            else (Capability.JSON_SCHEMA, "output_format")
        )
    if request.reasoning is not None:
        wanted.append((Capability.REASONING, "reasoning"))
    return wanted


def _message_fields(message: ModelMessage, field: str) -> list[tuple[Capability, str]]:
    wanted: list[tuple[Capability, str]] = []
    if message.tool_calls:
        wanted.append((Capability.TOOLS, f"{field}.tool_calls"))
    if message.tool_call_id:
        wanted.append((Capability.TOOLS, f"{field}.tool_call_id"))
    if message.reasoning is not None:
        wanted.append((Capability.REASONING, f"{field}.reasoning"))
    if message.reasoning_signature:
        wanted.append((Capability.REASONING, f"{field}.reasoning_signature"))
    if message.cache_breakpoint:
        wanted.append((Capability.PROMPT_CACHE, f"{field}.cache_breakpoint"))
    for number, part in enumerate(message.parts):
        if not isinstance(part, str):
            wanted.append((Capability.VISION, f"{field}.parts[{number}].image"))
    return wanted


def unsupported_embedding(request: EmbedRequest, metadata: ModelMetadata) -> list[FieldViolation]:
    violation = _lacks(metadata, Capability.EMBEDDINGS, "model")
    return [] if violation is None else [violation]
