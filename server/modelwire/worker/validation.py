"""Checks on domain requests; each problem becomes one google.rpc.BadRequest field violation."""

from __future__ import annotations

import re
from collections.abc import Sequence

from modelwire.core import strict_json
from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.settings import RequestLimits
from modelwire.core.types import (
    EmbedRequest,
    GrammarFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelRequest,
    NamedTool,
    Role,
    SamplingParams,
    ToolCall,
    ToolChoiceMode,
)

# The tool and schema names OpenAI and Anthropic both accept.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
IMAGE_MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_IMAGE_URL_SCHEMES = ("https://", "http://", "data:image/")


def message_count_violation(
    count: int, limits: RequestLimits, field: str = "messages"
) -> FieldViolation | None:
    """Checked by the edge before it converts anything, and again here on domain requests."""
    if count > limits.max_messages:
        return FieldViolation(
            field, f"at most {limits.max_messages} messages (limits.max_messages), got {count}"
        )
    return None


def broken_tool_call(calls: Sequence[ToolCall]) -> str | None:
    """What is wrong with the first malformed tool call a model answered with, or None. Calls are
    checked as callers' are (an id, a name, arguments that are a JSON object), so a caller can rely
    on every call it gets; the text is never quoted (it is the model's output)."""
    for number, call in enumerate(calls):
        if not call.id:
            return f"tool call {number} has no id"
        if not _NAME.fullmatch(call.name):
            return (
                f"tool call {number} has a name that is not 1 to 64 of [A-Za-z0-9_-] "
                f"({len(call.name)} characters)"
            )
        if _not_a_json_object(call.arguments_json or "{}", "a JSON object") is not None:
            return (
                f"the arguments of tool call {number} ({call.name}) are not a JSON object "
                f"({len(call.arguments_json)} characters)"
            )
    return None


def _check_range(
    violations: list[FieldViolation], name: str, value: float | None, low: float, high: float
) -> None:
    if value is not None and not low <= value <= high:
        violations.append(FieldViolation(name, f"must be in [{low:g}, {high:g}], got {value:g}"))


def _not_a_json_object(text: str, what: str) -> str | None:
    """Why `text` is not a JSON object (strict JSON: no NaN, no overflowing number), or None."""
    try:
        value = strict_json.loads(text)
    except ValueError as error:
        return f"must be {what}, as JSON text: {str(error)[:200]}"
    return (
        None
        if isinstance(value, dict)
        else f"must be {what}, as JSON text, not a {type(value).__name__}"
    )


def _check_message_shape(
    violations: list[FieldViolation], index: int, message: ModelMessage
) -> None:
    field = f"messages[{index}]"
    if message.parts and message.content:
        violations.append(FieldViolation(f"{field}.content", "must be empty when parts is set"))
    for number, part in enumerate(message.parts):
        if isinstance(part, str):
            continue
        where = f"{field}.parts[{number}].image"
        if part.data is not None:
            if part.mime_type not in IMAGE_MIME_TYPES:
                violations.append(
                    FieldViolation(
                        f"{where}.mime_type",
                        f"must be one of {', '.join(IMAGE_MIME_TYPES)} for data, got "
                        f"{part.mime_type!r}",
                    )
                )
            if not part.data:
                violations.append(FieldViolation(f"{where}.data", "must not be empty"))
        elif part.url is not None:
            if not part.url.startswith(_IMAGE_URL_SCHEMES):
                violations.append(
                    FieldViolation(f"{where}.url", "must be an https:, http: or data:image/ URL")
                )
            if part.mime_type:
                violations.append(
                    FieldViolation(
                        f"{where}.mime_type",
                        "only goes with data: no provider takes a type for a URL (its server "
                        "gives it)",
                    )
                )
    if message.tool_calls and message.role is not Role.ASSISTANT:
        violations.append(
            FieldViolation(
                f"{field}.tool_calls", "only a ROLE_ASSISTANT message carries tool calls"
            )
        )
    for number, call in enumerate(message.tool_calls):
        where = f"{field}.tool_calls[{number}]"
        if not call.id:
            violations.append(
                FieldViolation(f"{where}.id", "must not be empty (the id the model gave the call)")
            )
        if not _NAME.fullmatch(call.name):
            violations.append(FieldViolation(f"{where}.name", "must be 1 to 64 of [A-Za-z0-9_-]"))
        problem = _not_a_json_object(call.arguments_json or "{}", "a JSON object")
        if problem is not None:
            violations.append(FieldViolation(f"{where}.arguments_json", problem))
    if message.tool_call_id and message.role is not Role.TOOL:
        violations.append(
            FieldViolation(f"{field}.tool_call_id", "only a ROLE_TOOL message answers a tool call")
        )
    if (
        message.reasoning is not None or message.reasoning_signature
    ) and message.role is not Role.ASSISTANT:
        violations.append(
            FieldViolation(f"{field}.reasoning", "only a ROLE_ASSISTANT message carries reasoning")
        )


def _check_messages(
    violations: list[FieldViolation], messages: Sequence[ModelMessage], limits: RequestLimits
) -> int:
    """Returns the characters the messages weigh, for the request's total."""
    too_many = message_count_violation(len(messages), limits)
    if too_many is not None:
        violations.append(too_many)
    called: set[str] = set()
    for index, message in enumerate(messages):
        if message.plain:
            continue
        _check_message_shape(violations, index, message)
        called.update(call.id for call in message.tool_calls)
        if message.tool_call_id and message.tool_call_id not in called:
            violations.append(
                FieldViolation(
                    f"messages[{index}].tool_call_id",
                    f"{message.tool_call_id!r} answers no tool call of an earlier assistant "
                    "message; send the turn that made the call",
                )
            )
    return sum(message.char_count for message in messages)


def _check_chars(violations: list[FieldViolation], chars: int, limits: RequestLimits) -> None:
    if chars > limits.max_request_chars:
        violations.append(
            FieldViolation(
                "messages",
                f"at most {limits.max_request_chars} characters in all "
                f"(limits.max_request_chars), got {chars}",
            )
        )


def _check_tools(
    violations: list[FieldViolation], request: ModelRequest, limits: RequestLimits
) -> int:
    """Returns the characters the tools and the output format weigh."""
    chars = 0
    if len(request.tools) > limits.max_tools:
        violations.append(
            FieldViolation(
                "tools",
                f"at most {limits.max_tools} tools (limits.max_tools), got {len(request.tools)}",
            )
        )
    names: set[str] = set()
    for index, tool in enumerate(request.tools[: limits.max_tools]):
        chars += len(tool.name) + len(tool.description) + len(tool.parameters_json_schema)
        if not _NAME.fullmatch(tool.name):
            violations.append(
                FieldViolation(f"tools[{index}].name", "must be 1 to 64 of [A-Za-z0-9_-]")
            )
        elif tool.name in names:
            violations.append(
                FieldViolation(f"tools[{index}].name", f"{tool.name!r} is given twice")
            )
        names.add(tool.name)
        problem = (
            _not_a_json_object(tool.parameters_json_schema, "a JSON Schema object")
            if tool.parameters_json_schema
            else None
        )
        if problem is not None:
            violations.append(FieldViolation(f"tools[{index}].parameters_json_schema", problem))
    choice = request.tool_choice
    if isinstance(choice, NamedTool) and choice.name not in names:
        violations.append(
            FieldViolation("tool_choice.tool_name", f"{choice.name!r} is not one of tools")
        )
    elif choice is ToolChoiceMode.REQUIRED and not request.tools:
        violations.append(FieldViolation("tool_choice.mode", "REQUIRED needs tools"))
    if request.parallel_tool_calls is not None and not request.tools:
        violations.append(FieldViolation("parallel_tool_calls", "only applies with tools"))
    output_format = request.output_format
    if isinstance(output_format, JsonSchemaFormat):
        chars += len(output_format.name) + len(output_format.schema_json)
        if not _NAME.fullmatch(output_format.name):
            violations.append(
                FieldViolation("output_format.json_schema.name", "must be 1 to 64 of [A-Za-z0-9_-]")
            )
        problem = _not_a_json_object(output_format.schema_json, "a JSON Schema object")
        if problem is not None:
            violations.append(FieldViolation("output_format.json_schema.schema_json", problem))
    elif isinstance(output_format, GrammarFormat):
        chars += len(output_format.gbnf)
        if not output_format.gbnf.strip():
            violations.append(FieldViolation("output_format.grammar", "must not be empty"))
        elif "\x00" in output_format.gbnf:
            # llama.cpp reads the grammar as a C string: it would end at the NUL, unnoticed.
            violations.append(
                FieldViolation(
                    "output_format.grammar",
                    "must not contain a NUL character (write it as \\x00 in a literal)",
                )
            )
    reasoning = request.reasoning
    if (
        reasoning is not None
        and reasoning.budget_tokens is not None
        and reasoning.budget_tokens <= 0
    ):
        violations.append(
            FieldViolation(
                "reasoning.budget_tokens",
                f"must be positive when set, got {reasoning.budget_tokens}",
            )
        )
    return chars


def _check_model(violations: list[FieldViolation], model: str) -> None:
    if not model:
        violations.append(FieldViolation("model", "must name a served model (see ListModels)"))


def validate_count_input(
    model: str, prompt: str | Sequence[ModelMessage], limits: RequestLimits
) -> None:
    violations: list[FieldViolation] = []
    _check_model(violations, model)
    if isinstance(prompt, str):
        if len(prompt) > limits.max_request_chars:
            violations.append(
                FieldViolation(
                    "prompt",
                    f"at most {limits.max_request_chars} characters (limits.max_request_chars), "
                    f"got {len(prompt)}",
                )
            )
    else:
        _check_chars(violations, _check_messages(violations, prompt, limits), limits)
    if violations:
        raise InvalidRequest(violations)


def validate_embed_request(request: EmbedRequest, limits: RequestLimits) -> None:
    violations: list[FieldViolation] = []
    _check_model(violations, request.model)
    if not request.inputs:
        violations.append(FieldViolation("inputs", "must contain at least one text"))
    if len(request.inputs) > limits.max_embed_inputs:
        violations.append(
            FieldViolation(
                "inputs",
                f"at most {limits.max_embed_inputs} texts (limits.max_embed_inputs), got "
                f"{len(request.inputs)}",
            )
        )
    for index, text in enumerate(request.inputs[: limits.max_embed_inputs]):
        if not text:
            violations.append(FieldViolation(f"inputs[{index}]", "must not be empty"))
    chars = sum(len(text) for text in request.inputs)
    if chars > limits.max_request_chars:
        violations.append(
            FieldViolation(
                "inputs",
                f"at most {limits.max_request_chars} characters in all "
                f"(limits.max_request_chars), got {chars}",
            )
        )
    if request.dimensions is not None and request.dimensions <= 0:
        violations.append(
            FieldViolation("dimensions", f"must be positive when set, got {request.dimensions}")
        )
    if violations:
        raise InvalidRequest(violations)


def validate_request(request: ModelRequest, limits: RequestLimits) -> None:
    violations: list[FieldViolation] = []
    _check_model(violations, request.model)
    if not request.messages:
        violations.append(FieldViolation("messages", "must contain at least one message"))
    chars = _check_messages(violations, request.messages, limits)
    if not request.plain:
        chars += _check_tools(violations, request, limits)
    _check_chars(violations, chars, limits)
    _check_sampling(violations, request.sampling, limits)
    if violations:
        raise InvalidRequest(violations)


def _check_sampling(
    violations: list[FieldViolation], sampling: SamplingParams, limits: RequestLimits
) -> None:
    """Each value the caller set (most set none: each is looked at only when set)."""
    if sampling.temperature is not None:
        _check_range(violations, "sampling.temperature", sampling.temperature, 0.0, 2.0)
    if sampling.top_p is not None and not 0.0 < sampling.top_p <= 1.0:
        violations.append(
            FieldViolation("sampling.top_p", f"must be in (0, 1], got {sampling.top_p:g}")
        )
    if sampling.max_new_tokens is not None and sampling.max_new_tokens <= 0:
        violations.append(
            FieldViolation(
                "sampling.max_new_tokens",
                f"must be positive when set, got {sampling.max_new_tokens}",
            )
        )
    if sampling.presence_penalty is not None:
        _check_range(violations, "sampling.presence_penalty", sampling.presence_penalty, -2.0, 2.0)
    if sampling.frequency_penalty is not None:
        _check_range(
            violations, "sampling.frequency_penalty", sampling.frequency_penalty, -2.0, 2.0
        )
    if not sampling.stop:
        return
    if len(sampling.stop) > limits.max_stop_strings:
        violations.append(
            FieldViolation(
                "sampling.stop",
                f"at most {limits.max_stop_strings} stop strings (limits.max_stop_strings), got "
                f"{len(sampling.stop)}",
            )
        )
    for index, stop in enumerate(sampling.stop[: limits.max_stop_strings]):
        if not stop:
            violations.append(FieldViolation(f"sampling.stop[{index}]", "must not be empty"))
        elif len(stop) > limits.max_stop_chars:
            violations.append(
                FieldViolation(
                    f"sampling.stop[{index}]",
                    f"at most {limits.max_stop_chars} characters (limits.max_stop_chars), got "
                    f"{len(stop)}",
                )
            )
