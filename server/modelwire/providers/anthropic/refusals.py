"""What the Messages API cannot express, refused by field and model before any call: sampling seed
and penalties, message names, a tool message without tool_call_id, and the documented limits of
thinking, images and cache_control."""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.core.errors import FieldViolation
from modelwire.core.types import (
    Image,
    JsonSchemaFormat,
    ModelMessage,
    ModelMetadata,
    ModelRequest,
    NamedTool,
    ReasoningEffort,
    Role,
    ToolChoiceMode,
)
from modelwire.providers.anthropic.codec import (
    Thinking,
    is_object_schema,
    is_plain,
    message_blocks,
    reasoning_blocks,
)

# Documented limits the API answers with a 400; the worker refuses them first, by field.
MIN_THINKING_BUDGET = 1024


MAX_CACHE_BREAKPOINTS = 4


IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def budget_problem(budget: int | None, max_tokens: int) -> str | None:
    if budget is None:
        return f"its extended thinking needs a budget (at least {MIN_THINKING_BUDGET} tokens)"
    if budget < MIN_THINKING_BUDGET:
        return f"Anthropic's thinking budget is at least {MIN_THINKING_BUDGET} tokens, got {budget}"
    if budget >= max_tokens:
        return (
            f"the thinking budget must be below max_tokens, here {max_tokens} (max_new_tokens, "
            f"bounded by max_output_tokens and by the room the prompt leaves); got {budget}"
        )
    return None


def _needs_checks(message: ModelMessage) -> bool:
    return bool(
        message.name
        or message.reasoning is not None
        or message.role is Role.TOOL
        or not is_plain(message)
    )


def _nothing_to_check(request: ModelRequest) -> bool:
    """The plain request of contract v1.0, whose refusal check must cost next to nothing."""
    sampling = request.sampling
    if (
        request.tools
        or request.output_format is not None
        or request.reasoning is not None
        or sampling.seed is not None
    ):
        return False
    if sampling.presence_penalty is not None or sampling.frequency_penalty is not None:
        return False
    tool = Role.TOOL
    for message in request.messages:  # `_needs_checks`, inlined
        if (
            message.name
            or message.role is tool
            or message.reasoning is not None
            or message.parts
            or message.tool_calls
            or message.reasoning_signature
            or message.cache_breakpoint
        ):
            return False
    return True


def _can_mark(message: ModelMessage) -> bool:
    """cache_control goes on a message's last block, which must exist and not be thinking."""
    blocks = message_blocks(message)
    return bool(blocks) and blocks[-1]["type"] not in ("thinking", "redacted_thinking")


def _is_base64_image_url(url: str) -> bool:
    media_type, separator, _ = url[len("data:") :].partition(";base64,")
    return bool(separator) and media_type in IMAGE_MEDIA_TYPES


class Refusals:
    """What the Messages API cannot express, each a violation naming the field and the model."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.violations: list[FieldViolation] = []

    def add(self, field_name: str, reason: str) -> None:
        self.violations.append(
            FieldViolation(field_name, f"model {self.model!r} cannot take it: {reason}")
        )


def unsupported(
    model: ModelMetadata, thinking: Thinking, request: ModelRequest
) -> list[FieldViolation]:
    """`model`'s refusals of `request`, whose extended thinking is configured as `thinking`."""
    return [] if _nothing_to_check(request) else _refusals(model, thinking, request)


def _refusals(
    model: ModelMetadata, thinking: Thinking, request: ModelRequest
) -> list[FieldViolation]:
    refusals = Refusals(model.model)
    sampling = request.sampling
    for name, value in (
        ("seed", sampling.seed),
        ("presence_penalty", sampling.presence_penalty),
        ("frequency_penalty", sampling.frequency_penalty),
    ):
        if value is not None:
            refusals.add(f"sampling.{name}", f"the Messages API has no {name}")
    breakpoints = 0
    for index, message in enumerate(request.messages):
        if _needs_checks(message):
            _refuse_message(refusals, index, message)
        if message.cache_breakpoint:
            breakpoints += 1
            if breakpoints > MAX_CACHE_BREAKPOINTS:
                refusals.add(
                    f"messages[{index}].cache_breakpoint",
                    f"Anthropic takes at most {MAX_CACHE_BREAKPOINTS} cache breakpoints in a "
                    "request",
                )
    if request.tools:
        for index, tool in enumerate(request.tools):
            if not is_object_schema(tool.schema_json):
                refusals.add(
                    f"tools[{index}].parameters_json_schema",
                    'Anthropic takes a tool\'s input schema only with "type": "object" at its root',
                )
    if request.output_format is not None:
        _refuse_output_format(refusals, request)
    if request.reasoning is not None:
        _refuse_reasoning(refusals, request, thinking, model.max_output_tokens)
    return refusals.violations


def _refuse_message(refusals: Refusals, index: int, message: ModelMessage) -> None:
    where = f"messages[{index}]"
    if message.name:
        refusals.add(f"{where}.name", "the Messages API has no names on messages")
    if message.role is Role.TOOL and not message.tool_call_id:
        refusals.add(
            f"{where}.tool_call_id",
            "Anthropic takes a tool's answer only as a tool_result naming the tool_use it answers",
        )
    for number, part in enumerate(message.parts):
        if not isinstance(part, Image):
            continue
        if message.role in (Role.SYSTEM, Role.ASSISTANT):
            refusals.add(
                f"{where}.parts[{number}].image",
                "Anthropic takes images only in user turns and tool results",
            )
        elif (
            part.url is not None
            and part.url.startswith("data:")
            and not _is_base64_image_url(part.url)
        ):
            refusals.add(
                f"{where}.parts[{number}].image.url",
                f"Anthropic takes a data: URL only as base64 of {', '.join(IMAGE_MEDIA_TYPES)}",
            )
    if message.reasoning is not None and not message.reasoning_signature:
        refusals.add(
            f"{where}.reasoning_signature",
            "Anthropic takes an earlier turn's reasoning back only with the reasoning_signature "
            "it came with",
        )
    elif message.reasoning_signature and reasoning_blocks(message) is None:
        refusals.add(
            f"{where}.reasoning_signature",
            "it is not a signature this provider gave (send back the bytes a response carried, "
            "unchanged)",
        )
    if message.cache_breakpoint and not _can_mark(message):
        refusals.add(
            f"{where}.cache_breakpoint",
            "the message has no text, image, tool call or result to put cache_control on",
        )


def _refuse_output_format(refusals: Refusals, request: ModelRequest) -> None:
    """Structured output is a forced tool (`output_tool`): nothing else may choose tools."""
    output_format = request.output_format
    clashes = [
        name
        for name, given in (
            ("tools", bool(request.tools)),
            ("tool_choice", request.tool_choice is not None),
            ("parallel_tool_calls", request.parallel_tool_calls is not None),
        )
        if given
    ]
    if clashes:
        refusals.add(
            "output_format",
            "Anthropic gives structured output as a forced tool call, which leaves no room for "
            f"{' or '.join(clashes)}",
        )
    if request.reasoning is not None:
        refusals.add(
            "output_format",
            "Anthropic gives structured output as a forced tool call, which its extended thinking "
            "does not allow (drop reasoning or output_format)",
        )
    if isinstance(output_format, JsonSchemaFormat) and not is_object_schema(
        output_format.schema_json
    ):
        refusals.add(
            "output_format.json_schema.schema_json",
            'Anthropic gives structured output as a tool\'s input, whose schema must have "type": '
            '"object" at its root',
        )


def _refuse_reasoning(
    refusals: Refusals, request: ModelRequest, thinking: Thinking, max_output_tokens: int
) -> None:
    """Extended thinking's documented rules, checked here rather than answered by a 400."""
    reasoning = request.reasoning
    assert reasoning is not None
    if thinking == "adaptive":
        if reasoning.budget_tokens is not None:
            refusals.add(
                "reasoning.budget_tokens",
                'its thinking is adaptive (option thinking = "adaptive"), steered by '
                "reasoning.effort, not by a budget",
            )
        if reasoning.effort is ReasoningEffort.MINIMAL:
            refusals.add(
                "reasoning.effort",
                "Anthropic's efforts are low, medium and high; it has no minimal",
            )
    else:
        if reasoning.effort is not None:
            refusals.add(
                "reasoning.effort",
                "its extended thinking takes a token budget, not an effort: set "
                f"reasoning.budget_tokens (at least {MIN_THINKING_BUDGET}, below max_new_tokens); "
                "models with adaptive thinking take an effort when configured with "
                'thinking = "adaptive"',
            )
        max_tokens = min(request.sampling.max_new_tokens or max_output_tokens, max_output_tokens)
        problem = budget_problem(reasoning.budget_tokens, max_tokens)
        if problem is not None and (
            reasoning.budget_tokens is not None or reasoning.effort is None
        ):
            refusals.add("reasoning.budget_tokens", problem)
    sampling = request.sampling  # rounded at the edge (worker/convert.py), as sent
    if sampling.temperature is not None and sampling.temperature != 1.0:
        refusals.add("sampling.temperature", "with thinking Anthropic takes no temperature but 1")
    if sampling.top_p is not None and sampling.top_p < 0.95:
        refusals.add("sampling.top_p", "with thinking Anthropic takes top_p only from 0.95 to 1")
    if isinstance(request.tool_choice, NamedTool) or request.tool_choice is ToolChoiceMode.REQUIRED:
        refusals.add("tool_choice", "with thinking Anthropic takes only tool choices auto and none")
    _refuse_unsigned_tool_turn(refusals, request.messages)


def _refuse_unsigned_tool_turn(refusals: Refusals, messages: Sequence[ModelMessage]) -> None:
    """Continuing a tool call with thinking on needs that turn's thinking back: without it the
    API refuses the request, or turns thinking off for it (dropping `reasoning` silently)."""
    last = next(
        (
            index
            for index in range(len(messages) - 1, -1, -1)
            if messages[index].role is Role.ASSISTANT
        ),
        None,
    )
    if last is None or not messages[last].tool_calls or messages[last].reasoning_signature:
        return
    if any(message.role is Role.TOOL for message in messages[last + 1 :]):
        refusals.add(
            f"messages[{last}].reasoning_signature",
            "with thinking on, the assistant turn whose tool calls are being answered must carry "
            "the reasoning and reasoning_signature its response gave",
        )
