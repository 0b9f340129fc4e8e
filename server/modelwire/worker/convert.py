"""Protobuf ⇄ domain types: the one place that translates, so nothing behind it sees protobuf."""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.types import (
    Capability,
    FinishReason,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    RequestContext,
    Role,
    SamplingParams,
    TokenCount,
)
from modelwire.v1 import worker_pb2 as pb
from modelwire.core.settings import RequestLimits
from modelwire.worker.validation import message_count_violation

_ROLE_FROM_PB = {
    pb.ROLE_SYSTEM: Role.SYSTEM,
    pb.ROLE_USER: Role.USER,
    pb.ROLE_ASSISTANT: Role.ASSISTANT,
    pb.ROLE_TOOL: Role.TOOL,
}
_FINISH_TO_PB = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_CAPABILITY_TO_PB = {
    Capability.CHAT: pb.CAPABILITY_CHAT,
    Capability.STREAMING: pb.CAPABILITY_STREAMING,
    Capability.REASONING: pb.CAPABILITY_REASONING,
    Capability.VISION: pb.CAPABILITY_VISION,
    Capability.TOOLS: pb.CAPABILITY_TOOLS,
}


def messages_from_pb(messages: Sequence[pb.ModelMessage], limits: RequestLimits, field: str = "messages") -> tuple[ModelMessage, ...]:
    """Refuses too many messages before converting any: a 4 MiB request can hold a million of them."""
    too_many = message_count_violation(len(messages), limits, field)
    if too_many is not None:
        raise InvalidRequest([too_many])
    converted: list[ModelMessage] = []
    violations: list[FieldViolation] = []
    for index, message in enumerate(messages):
        role = _ROLE_FROM_PB.get(message.role)
        if role is None:
            violations.append(
                FieldViolation(f"{field}[{index}].role", "must be one of ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL")
            )
            continue
        converted.append(ModelMessage(role=role, content=message.content, name=message.name))
    if violations:
        raise InvalidRequest(violations)
    return tuple(converted)


def request_from_pb(request: pb.ModelRequest, limits: RequestLimits) -> ModelRequest:
    sampling = request.sampling
    return ModelRequest(
        model=request.model,
        messages=messages_from_pb(request.messages, limits),
        sampling=SamplingParams(
            temperature=sampling.temperature if sampling.HasField("temperature") else None,
            top_p=sampling.top_p if sampling.HasField("top_p") else None,
            max_new_tokens=sampling.max_new_tokens if sampling.HasField("max_new_tokens") else None,
            stop=tuple(sampling.stop),
            seed=sampling.seed if sampling.HasField("seed") else None,
            presence_penalty=sampling.presence_penalty if sampling.HasField("presence_penalty") else None,
            frequency_penalty=sampling.frequency_penalty if sampling.HasField("frequency_penalty") else None,
        ),
        context=RequestContext(
            request_id=request.context.request_id,
            user=request.context.user,
            metadata=dict(request.context.metadata),
        ),
    )


def output_to_pb(output: ModelOutput, model: str) -> pb.ModelOutput:
    """`model` names the answering model on every message, whatever the domain output carries."""
    message = pb.ModelOutput(text=output.text, finish_reason=_FINISH_TO_PB[output.finish_reason], model=model)
    if output.reasoning is not None:
        message.reasoning = output.reasoning
    if output.usage is not None:
        usage = output.usage
        message.usage.prompt_tokens = usage.prompt_tokens
        message.usage.completion_tokens = usage.completion_tokens
        message.usage.total_tokens = usage.total_tokens
        message.usage.estimated = usage.estimated
    if output.timing is not None:
        timing = output.timing
        message.timing.time_to_first_token_seconds = timing.time_to_first_token_s
        message.timing.tokens_per_second = timing.tokens_per_second
        message.timing.total_seconds = timing.total_s
    return message


def metadata_to_pb(metadata: ModelMetadata) -> pb.ModelMetadata:
    return pb.ModelMetadata(
        model=metadata.model,
        provider=metadata.provider,
        context_length=metadata.context_length,
        max_output_tokens=metadata.max_output_tokens,
        capabilities=[_CAPABILITY_TO_PB[capability] for capability in metadata.capabilities],
        metadata=metadata.metadata,
    )


def count_input_from_pb(request: pb.CountTokenRequest, limits: RequestLimits) -> str | tuple[ModelMessage, ...]:
    """Exactly one of prompt or messages; both or neither is the caller's mistake."""
    if bool(request.prompt) == bool(request.messages):
        raise InvalidRequest([FieldViolation("prompt", "set exactly one of prompt or messages")])
    if request.prompt:
        return request.prompt
    return messages_from_pb(request.messages, limits)


def token_count_to_pb(count: TokenCount) -> pb.CountTokenResponse:
    return pb.CountTokenResponse(count=count.count, tokenizer=count.tokenizer, exact=count.exact)
