"""What Chat Completions cannot express, refused by field before any call (client.py's docstring
lists it)."""

from __future__ import annotations

from modelwire.core.errors import FieldViolation
from modelwire.core.types import ModelMessage, ModelRequest
from modelwire.providers.openai.codec import TOOL, USER


def unsupported(model: str, request: ModelRequest) -> list[FieldViolation]:
    """A cheap scan first, on every request: nearly none has anything refused here."""
    reasoning = request.reasoning
    if reasoning is not None and reasoning.budget_tokens is not None:
        return _refusals(model, request)
    for message in request.messages:
        if message.role is TOOL or message.parts or message.reasoning_signature:
            return _refusals(model, request)
    return []


def _refusals(model: str, request: ModelRequest) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if request.reasoning is not None and request.reasoning.budget_tokens is not None:
        violations.append(
            _cannot(
                model,
                "reasoning.budget_tokens",
                "take a reasoning budget in tokens; set reasoning.effort instead",
            )
        )
    called = {call.id: call.name for message in request.messages for call in message.tool_calls}
    for index, message in enumerate(request.messages):
        violations += _message_refusals(model, index, message, called)
    return violations


def _message_refusals(
    model: str, index: int, message: ModelMessage, called: dict[str, str]
) -> list[FieldViolation]:
    """`called`: the name of each call of the conversation, by id."""
    field = f"messages[{index}]"
    violations: list[FieldViolation] = []
    if message.role is TOOL and not message.tool_call_id:
        violations.append(
            _cannot(
                model,
                f"{field}.tool_call_id",
                "take a ROLE_TOOL message without the id of the call it answers",
            )
        )
    elif message.role is TOOL and message.name not in ("", called.get(message.tool_call_id)):
        violations.append(
            _cannot(
                model,
                f"{field}.name",
                "take a tool message's name (its tool_call_id names the call); "
                "leave it empty or give the called tool's name",
            )
        )
    if message.reasoning_signature:
        violations.append(
            _cannot(
                model,
                f"{field}.reasoning_signature",
                "take a reasoning signature (no Chat Completions field)",
            )
        )
    if message.role is not USER:
        violations += [
            _cannot(
                model,
                f"{field}.parts[{number}].image",
                f"take an image in a {message.role.value} message, only in user messages",
            )
            for number, part in enumerate(message.parts)
            if not isinstance(part, str)
        ]
    return violations


def _cannot(model: str, field: str, what: str) -> FieldViolation:
    return FieldViolation(
        field, f"model {model!r} (provider openai, Chat Completions) cannot {what}"
    )
