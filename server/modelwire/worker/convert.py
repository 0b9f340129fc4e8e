"""Protobuf ⇄ domain types, both ways: the one place that translates, so nothing behind it (nor
the HTTP facade in front of a gateway) sees protobuf."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.settings import Prices, RequestLimits
from modelwire.core.types import (
    Capability,
    ContentPart,
    Embeddings,
    EmbedRequest,
    FinishReason,
    GrammarFormat,
    Image,
    JsonObjectFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    NamedTool,
    OutputFormat,
    ReasoningEffort,
    ReasoningOptions,
    RequestContext,
    Role,
    SamplingParams,
    Timing,
    TokenCount,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)
from modelwire.observe.call_record import note_context
from modelwire.v1 import worker_pb2 as pb
from modelwire.worker.validation import message_count_violation

# A 32-bit IEEE float, the contract's `float`.
_FLOAT32 = struct.Struct("<f")

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
    Capability.JSON_SCHEMA: pb.CAPABILITY_JSON_SCHEMA,
    Capability.GRAMMAR: pb.CAPABILITY_GRAMMAR,
    Capability.EMBEDDINGS: pb.CAPABILITY_EMBEDDINGS,
    Capability.PROMPT_CACHE: pb.CAPABILITY_PROMPT_CACHE,
}
_TOOL_CHOICE_FROM_PB = {
    pb.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED,
}
_EFFORT_FROM_PB = {
    pb.REASONING_EFFORT_MINIMAL: ReasoningEffort.MINIMAL,
    pb.REASONING_EFFORT_LOW: ReasoningEffort.LOW,
    pb.REASONING_EFFORT_MEDIUM: ReasoningEffort.MEDIUM,
    pb.REASONING_EFFORT_HIGH: ReasoningEffort.HIGH,
}


def messages_from_pb(
    messages: Sequence[pb.ModelMessage], limits: RequestLimits, field: str = "messages"
) -> tuple[ModelMessage, ...]:
    """Refuses too many messages before converting any: a 4 MiB request can hold a million of
    them."""
    too_many = message_count_violation(len(messages), limits, field)
    if too_many is not None:
        raise InvalidRequest([too_many])
    converted: list[ModelMessage] = []
    violations: list[FieldViolation] = []
    for index, message in enumerate(messages):
        role = _ROLE_FROM_PB.get(message.role)
        if role is None:
            violations.append(
                FieldViolation(
                    f"{field}[{index}].role",
                    "must be one of ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL",
                )
            )
            continue
        if (
            message.parts
            or message.tool_calls
            or message.tool_call_id
            or message.reasoning_signature
            or message.cache_breakpoint
            or message.HasField("reasoning")
        ):
            converted.append(_rich_message_from_pb(message, role, f"{field}[{index}]", violations))
        else:  # the common case, at the cost it had before the contract grew (measured: 3x less)
            converted.append(ModelMessage(role=role, content=message.content, name=message.name))
    if violations:
        raise InvalidRequest(violations)
    return tuple(converted)


def _rich_message_from_pb(
    message: pb.ModelMessage, role: Role, field: str, violations: list[FieldViolation]
) -> ModelMessage:
    return ModelMessage(
        role=role,
        content=message.content,
        name=message.name,
        parts=tuple(
            _part_from_pb(part, f"{field}.parts[{number}]", violations)
            for number, part in enumerate(message.parts)
        ),
        tool_calls=tuple(_tool_call_from_pb(call) for call in message.tool_calls),
        tool_call_id=message.tool_call_id,
        reasoning=message.reasoning if message.HasField("reasoning") else None,
        reasoning_signature=message.reasoning_signature,
        cache_breakpoint=message.cache_breakpoint,
    )


def _part_from_pb(
    part: pb.ContentPart, field: str, violations: list[FieldViolation]
) -> ContentPart:
    kind = part.WhichOneof("part")
    if kind == "text":
        return part.text
    if kind == "image":
        image = part.image
        source = image.WhichOneof("source")
        if source is None:
            violations.append(FieldViolation(f"{field}.image", "set data or url"))
        return Image(
            data=image.data if source == "data" else None,
            url=image.url if source == "url" else None,
            mime_type=image.mime_type,
        )
    violations.append(FieldViolation(field, "set text or image"))
    return ""


def _tool_call_from_pb(call: pb.ToolCall) -> ToolCall:
    return ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_json)


def _tool_choice_from_pb(request: pb.ModelRequest) -> ToolChoice:
    choice = request.tool_choice
    kind = choice.WhichOneof("choice")
    if kind == "tool_name":
        return NamedTool(choice.tool_name)
    mode = _TOOL_CHOICE_FROM_PB.get(choice.mode) if kind == "mode" else None
    if mode is None:
        raise InvalidRequest(
            [FieldViolation("tool_choice", "set mode (AUTO, NONE or REQUIRED) or tool_name")]
        )
    return mode


def _output_format_from_pb(request: pb.ModelRequest) -> OutputFormat:
    output_format = request.output_format
    kind = output_format.WhichOneof("format")
    if kind == "json_object" and output_format.json_object:
        return JsonObjectFormat()
    if kind == "json_schema":
        schema = output_format.json_schema
        return JsonSchemaFormat(
            name=schema.name, schema_json=schema.schema_json, strict=schema.strict
        )
    if kind == "grammar":
        return GrammarFormat(output_format.grammar)
    raise InvalidRequest(
        [FieldViolation("output_format", "set json_object = true, json_schema or grammar")]
    )


def _reasoning_from_pb(request: pb.ModelRequest) -> ReasoningOptions:
    reasoning = request.reasoning
    if (
        reasoning.effort not in _EFFORT_FROM_PB
        and reasoning.effort != pb.REASONING_EFFORT_UNSPECIFIED
    ):
        raise InvalidRequest(
            [
                FieldViolation(
                    "reasoning.effort",
                    f"unknown value {reasoning.effort}: use MINIMAL, LOW, MEDIUM or HIGH",
                )
            ]
        )
    return ReasoningOptions(
        effort=_EFFORT_FROM_PB.get(reasoning.effort),
        budget_tokens=reasoning.budget_tokens if reasoning.HasField("budget_tokens") else None,
    )


def _float(sampling: pb.SamplingParams, name: str) -> float | None:
    """A sampling value as the caller wrote it, read once here at the edge: the contract's 32-bit
    floats arrive as 0.8999999761… for 0.9, so the value is the shortest decimal that is the same
    float32 (0.9). Never another float32: range checks judge, and the local model samples with,
    exactly what was sent (2.0000002 stays above 2)."""
    if not sampling.HasField(name):
        return None
    value: float = getattr(sampling, name)
    return shortest_float32(value)


def shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 as `value` (nine digits always
    do)."""
    try:
        exact = _FLOAT32.pack(value)
        for digits in range(1, 10):
            shortest = float(f"{value:.{digits}g}")
            if _FLOAT32.pack(shortest) == exact:
                return shortest
    except OverflowError:  # no float32 at all: validation refuses it as sent
        pass
    return value


# What a request without sampling parameters or a RequestContext gets: the defaults, made once
# (a frozen dataclass costs its every field to build: the common request pays for none).
_NO_SAMPLING = SamplingParams()
_NO_CONTEXT = RequestContext()


def request_from_pb(request: pb.ModelRequest, limits: RequestLimits) -> ModelRequest:
    context = _NO_CONTEXT
    if request.HasField("context"):
        given = request.context
        note_context(given.request_id, given.user, given.metadata)
        context = RequestContext(
            request_id=given.request_id, user=given.user, metadata=dict(given.metadata)
        )
    messages = messages_from_pb(request.messages, limits)
    sampling = _sampling_from_pb(request.sampling) if request.HasField("sampling") else _NO_SAMPLING
    if not (
        request.tools
        or request.HasField("tool_choice")
        or request.HasField("parallel_tool_calls")
        or request.HasField("output_format")
        or request.HasField("reasoning")
    ):  # the common case: the fields left out keep their defaults
        return ModelRequest(
            model=request.model, messages=messages, sampling=sampling, context=context
        )
    return ModelRequest(
        model=request.model,
        messages=messages,
        sampling=sampling,
        context=context,
        tools=tuple(
            Tool(
                name=tool.name,
                description=tool.description,
                parameters_json_schema=tool.parameters_json_schema,
                strict=tool.strict,
            )
            for tool in request.tools
        ),
        tool_choice=_tool_choice_from_pb(request) if request.HasField("tool_choice") else None,
        parallel_tool_calls=request.parallel_tool_calls
        if request.HasField("parallel_tool_calls")
        else None,
        output_format=_output_format_from_pb(request)
        if request.HasField("output_format")
        else None,
        reasoning=_reasoning_from_pb(request) if request.HasField("reasoning") else None,
    )


def _sampling_from_pb(sampling: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        temperature=_float(sampling, "temperature"),
        top_p=_float(sampling, "top_p"),
        max_new_tokens=sampling.max_new_tokens if sampling.HasField("max_new_tokens") else None,
        stop=tuple(sampling.stop),
        seed=sampling.seed if sampling.HasField("seed") else None,
        presence_penalty=_float(sampling, "presence_penalty"),
        frequency_penalty=_float(sampling, "frequency_penalty"),
    )


def output_to_pb(output: ModelOutput, model: str) -> pb.ModelOutput:
    """`model` names the answering model on every message, whatever the domain output carries."""
    message = pb.ModelOutput(text=output.text, model=model)
    if output.finish_reason is not None:  # a stream's deltas have none
        message.finish_reason = _FINISH_TO_PB[output.finish_reason]
    if output.reasoning is not None:
        message.reasoning = output.reasoning
    if output.usage is not None:
        _usage_to_pb(output.usage, message.usage)
    if output.tool_calls:
        message.tool_calls.extend(
            pb.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_json)
            for call in output.tool_calls
        )
    if output.tool_call_deltas:
        message.tool_call_deltas.extend(
            pb.ToolCallDelta(
                index=delta.index,
                id=delta.id,
                name=delta.name,
                arguments_delta=delta.arguments_delta,
            )
            for delta in output.tool_call_deltas
        )
    if output.reasoning_signature:
        message.reasoning_signature = output.reasoning_signature
    if output.timing is not None:
        timing = output.timing
        message.timing.time_to_first_token_seconds = timing.time_to_first_token_s
        message.timing.tokens_per_second = timing.tokens_per_second
        message.timing.total_seconds = timing.total_s
    return message


def _usage_to_pb(usage: Usage, message: pb.Usage) -> None:
    """The counts are always written (the message is then present); the optional parts only
    when set, as a zero is not sent anyway."""
    message.prompt_tokens = usage.prompt_tokens
    message.completion_tokens = usage.completion_tokens
    message.total_tokens = usage.total_tokens
    if usage.estimated:
        message.estimated = True
    if usage.cached_prompt_tokens:
        message.cached_prompt_tokens = usage.cached_prompt_tokens
    if usage.cache_write_tokens:
        message.cache_write_tokens = usage.cache_write_tokens
    if usage.reasoning_tokens:
        message.reasoning_tokens = usage.reasoning_tokens


def embeddings_to_pb(embeddings: Embeddings, model: str) -> pb.EmbedResponse:
    response = pb.EmbedResponse(
        model=model, embeddings=[pb.Embedding(values=vector) for vector in embeddings.vectors]
    )
    _usage_to_pb(embeddings.usage, response.usage)
    return response


def metadata_to_pb(metadata: ModelMetadata) -> pb.ModelMetadata:
    """A model as ListModels describes it; its unset cache prices are what input costs."""
    prices = metadata.prices
    return pb.ModelMetadata(
        model=metadata.model,
        provider=metadata.provider,
        context_length=metadata.context_length,
        max_output_tokens=metadata.max_output_tokens,
        capabilities=[_CAPABILITY_TO_PB[capability] for capability in metadata.capabilities],
        metadata=metadata.metadata,
        prices=None
        if prices is None
        else pb.Prices(
            input=prices.input,
            cached_input=prices.input if prices.cached_input is None else prices.cached_input,
            cache_write=prices.input if prices.cache_write is None else prices.cache_write,
            output=prices.output,
        ),
    )


def count_input_from_pb(
    request: pb.CountTokenRequest, limits: RequestLimits
) -> str | tuple[ModelMessage, ...]:
    """Exactly one of prompt or messages; both or neither is the caller's mistake."""
    if bool(request.prompt) == bool(request.messages):
        raise InvalidRequest([FieldViolation("prompt", "set exactly one of prompt or messages")])
    if request.prompt:
        return request.prompt
    return messages_from_pb(request.messages, limits)


def embed_request_from_pb(request: pb.EmbedRequest) -> EmbedRequest:
    return EmbedRequest(
        model=request.model,
        inputs=tuple(request.inputs),
        dimensions=request.dimensions if request.HasField("dimensions") else None,
    )


def token_count_to_pb(count: TokenCount) -> pb.CountTokenResponse:
    return pb.CountTokenResponse(count=count.count, tokenizer=count.tokenizer, exact=count.exact)


# The other direction, domain → protobuf → domain: a gateway's HTTP facade calls its fleet in the
# contract's messages (gateway/fleet_models.py).

_ROLE_TO_PB = {role: number for number, role in _ROLE_FROM_PB.items()}
_FINISH_FROM_PB = {number: reason for reason, number in _FINISH_TO_PB.items()}
_CAPABILITY_FROM_PB = {number: capability for capability, number in _CAPABILITY_TO_PB.items()}
_TOOL_CHOICE_TO_PB = {mode: number for number, mode in _TOOL_CHOICE_FROM_PB.items()}
_EFFORT_TO_PB: dict[ReasoningEffort | None, pb.ReasoningEffort] = {
    None: pb.REASONING_EFFORT_UNSPECIFIED
} | {effort: number for number, effort in _EFFORT_FROM_PB.items()}


def messages_to_pb(messages: Sequence[ModelMessage]) -> list[pb.ModelMessage]:
    return [_message_to_pb(message) for message in messages]


def _message_to_pb(message: ModelMessage) -> pb.ModelMessage:
    converted = pb.ModelMessage(
        role=_ROLE_TO_PB[message.role], content=message.content, name=message.name
    )
    if message.plain:
        return converted
    converted.parts.extend(_part_to_pb(part) for part in message.parts)
    converted.tool_calls.extend(
        pb.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_json)
        for call in message.tool_calls
    )
    converted.tool_call_id = message.tool_call_id
    if message.reasoning is not None:
        converted.reasoning = message.reasoning
    converted.reasoning_signature = message.reasoning_signature
    converted.cache_breakpoint = message.cache_breakpoint
    return converted


def _part_to_pb(part: ContentPart) -> pb.ContentPart:
    if isinstance(part, str):
        return pb.ContentPart(text=part)
    image = pb.Image(mime_type=part.mime_type)
    if part.url is not None:
        image.url = part.url
    else:
        image.data = part.data or b""
    return pb.ContentPart(image=image)


def request_to_pb(request: ModelRequest) -> pb.ModelRequest:
    sampling = request.sampling
    converted = pb.ModelRequest(
        model=request.model,
        messages=messages_to_pb(request.messages),
        sampling=pb.SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            stop=sampling.stop,
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
        ),
        context=pb.RequestContext(
            request_id=request.context.request_id,
            user=request.context.user,
            metadata=request.context.metadata,
        ),
        tools=[
            pb.Tool(
                name=tool.name,
                description=tool.description,
                parameters_json_schema=tool.parameters_json_schema,
                strict=tool.strict,
            )
            for tool in request.tools
        ],
        parallel_tool_calls=request.parallel_tool_calls,
    )
    choice = request.tool_choice
    if isinstance(choice, NamedTool):
        converted.tool_choice.tool_name = choice.name
    elif choice is not None:
        converted.tool_choice.mode = _TOOL_CHOICE_TO_PB[choice]
    output_format = request.output_format
    if isinstance(output_format, JsonObjectFormat):
        converted.output_format.json_object = True
    elif isinstance(output_format, JsonSchemaFormat):
        converted.output_format.json_schema.CopyFrom(
            pb.JsonSchema(
                name=output_format.name,
                schema_json=output_format.schema_json,
                strict=output_format.strict,
            )
        )
    elif isinstance(output_format, GrammarFormat):
        converted.output_format.grammar = output_format.gbnf
    reasoning = request.reasoning
    if reasoning is not None:
        converted.reasoning.CopyFrom(
            pb.ReasoningOptions(
                effort=_EFFORT_TO_PB[reasoning.effort],
                budget_tokens=reasoning.budget_tokens,
            )
        )
    return converted


def output_from_pb(output: pb.ModelOutput) -> ModelOutput:
    """A finish reason this side does not know reads as none."""
    return ModelOutput(
        text=output.text,
        reasoning=output.reasoning if output.HasField("reasoning") else None,
        finish_reason=_FINISH_FROM_PB.get(output.finish_reason),
        usage=_usage_from_pb(output.usage) if output.HasField("usage") else None,
        timing=Timing(
            time_to_first_token_s=output.timing.time_to_first_token_seconds,
            tokens_per_second=output.timing.tokens_per_second,
            total_s=output.timing.total_seconds,
        )
        if output.HasField("timing")
        else None,
        tool_calls=tuple(_tool_call_from_pb(call) for call in output.tool_calls),
        tool_call_deltas=tuple(
            ToolCallDelta(
                index=delta.index,
                id=delta.id,
                name=delta.name,
                arguments_delta=delta.arguments_delta,
            )
            for delta in output.tool_call_deltas
        ),
        reasoning_signature=output.reasoning_signature,
    )


def _usage_from_pb(usage: pb.Usage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        estimated=usage.estimated,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


def embed_request_to_pb(request: EmbedRequest) -> pb.EmbedRequest:
    return pb.EmbedRequest(
        model=request.model, inputs=request.inputs, dimensions=request.dimensions
    )


def embeddings_from_pb(response: pb.EmbedResponse) -> Embeddings:
    return Embeddings(
        vectors=tuple(tuple(embedding.values) for embedding in response.embeddings),
        usage=_usage_from_pb(response.usage),
    )


def count_request_to_pb(model: str, messages: Sequence[ModelMessage]) -> pb.CountTokenRequest:
    return pb.CountTokenRequest(model=model, messages=messages_to_pb(messages))


def token_count_from_pb(count: pb.CountTokenResponse) -> TokenCount:
    return TokenCount(count=count.count, tokenizer=count.tokenizer, exact=count.exact)


def metadata_from_pb(metadata: pb.ModelMetadata) -> ModelMetadata:
    """A model as a worker's ListModels describes it; capabilities this side does not know are
    left out. ValueError: prices no configuration could hold (a peer's garbage)."""
    prices = metadata.prices
    return ModelMetadata(
        model=metadata.model,
        provider=metadata.provider,
        context_length=metadata.context_length,
        max_output_tokens=metadata.max_output_tokens,
        capabilities=tuple(
            _CAPABILITY_FROM_PB[number]
            for number in metadata.capabilities
            if number in _CAPABILITY_FROM_PB
        ),
        metadata=dict(metadata.metadata),
        prices=Prices(
            input=prices.input,
            output=prices.output,
            cached_input=prices.cached_input,
            cache_write=prices.cache_write,
        )
        if metadata.HasField("prices")
        else None,
    )
