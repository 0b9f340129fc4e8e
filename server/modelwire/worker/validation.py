"""Checks on domain requests; each problem becomes one google.rpc.BadRequest field violation."""

from __future__ import annotations

from collections.abc import Sequence
from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.settings import RequestLimits
from modelwire.core.types import ModelMessage, ModelRequest


def message_count_violation(count: int, limits: RequestLimits, field: str = "messages") -> FieldViolation | None:
    """Checked by the edge before it converts anything, and again here on domain requests."""
    if count > limits.max_messages:
        return FieldViolation(field, f"at most {limits.max_messages} messages (limits.max_messages), got {count}")
    return None


def _check_range(violations: list[FieldViolation], name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        violations.append(FieldViolation(name, f"must be in [{low:g}, {high:g}], got {value:g}"))


def _check_messages(violations: list[FieldViolation], messages: Sequence[ModelMessage], limits: RequestLimits) -> None:
    too_many = message_count_violation(len(messages), limits)
    if too_many is not None:
        violations.append(too_many)
    chars = sum(len(message.content) + len(message.name) for message in messages)
    if chars > limits.max_request_chars:
        violations.append(
            FieldViolation("messages", f"at most {limits.max_request_chars} characters in all (limits.max_request_chars), got {chars}")
        )


def _check_model(violations: list[FieldViolation], model: str) -> None:
    if not model:
        violations.append(FieldViolation("model", "must name a served model (see ListModels)"))


def validate_count_input(model: str, prompt: str | Sequence[ModelMessage], limits: RequestLimits) -> None:
    violations: list[FieldViolation] = []
    _check_model(violations, model)
    if isinstance(prompt, str):
        if len(prompt) > limits.max_request_chars:
            violations.append(
                FieldViolation("prompt", f"at most {limits.max_request_chars} characters (limits.max_request_chars), got {len(prompt)}")
            )
    else:
        _check_messages(violations, prompt, limits)
    if violations:
        raise InvalidRequest(violations)


def validate_request(request: ModelRequest, limits: RequestLimits) -> None:
    violations: list[FieldViolation] = []
    _check_model(violations, request.model)
    if not request.messages:
        violations.append(FieldViolation("messages", "must contain at least one message"))
    _check_messages(violations, request.messages, limits)
    sampling = request.sampling
    _check_range(violations, "sampling.temperature", sampling.temperature, 0.0, 2.0)
    if sampling.top_p is not None and not 0.0 < sampling.top_p <= 1.0:
        violations.append(FieldViolation("sampling.top_p", f"must be in (0, 1], got {sampling.top_p:g}"))
    if sampling.max_new_tokens is not None and sampling.max_new_tokens <= 0:
        violations.append(FieldViolation("sampling.max_new_tokens", f"must be positive when set, got {sampling.max_new_tokens}"))
    _check_range(violations, "sampling.presence_penalty", sampling.presence_penalty, -2.0, 2.0)
    _check_range(violations, "sampling.frequency_penalty", sampling.frequency_penalty, -2.0, 2.0)
    if len(sampling.stop) > limits.max_stop_strings:
        violations.append(
            FieldViolation("sampling.stop", f"at most {limits.max_stop_strings} stop strings (limits.max_stop_strings), got {len(sampling.stop)}")
        )
    for index, stop in enumerate(sampling.stop[: limits.max_stop_strings]):
        if not stop:
            violations.append(FieldViolation(f"sampling.stop[{index}]", "must not be empty"))
        elif len(stop) > limits.max_stop_chars:
            violations.append(
                FieldViolation(f"sampling.stop[{index}]", f"at most {limits.max_stop_chars} characters (limits.max_stop_chars), got {len(stop)}")
            )
    if violations:
        raise InvalidRequest(violations)
