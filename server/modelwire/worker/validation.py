"""Checks on domain requests; each problem becomes one google.rpc.BadRequest field violation."""

from __future__ import annotations

from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.types import ModelRequest


def _check_range(violations: list[FieldViolation], name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        violations.append(FieldViolation(name, f"must be in [{low:g}, {high:g}], got {value:g}"))


def validate_request(request: ModelRequest) -> None:
    violations: list[FieldViolation] = []
    if not request.model:
        violations.append(FieldViolation("model", "must name a served model (see ListModels)"))
    if not request.messages:
        violations.append(FieldViolation("messages", "must contain at least one message"))
    sampling = request.sampling
    _check_range(violations, "sampling.temperature", sampling.temperature, 0.0, 2.0)
    if sampling.top_p is not None and not 0.0 < sampling.top_p <= 1.0:
        violations.append(FieldViolation("sampling.top_p", f"must be in (0, 1], got {sampling.top_p:g}"))
    if sampling.max_new_tokens is not None and sampling.max_new_tokens <= 0:
        violations.append(FieldViolation("sampling.max_new_tokens", f"must be positive when set, got {sampling.max_new_tokens}"))
    _check_range(violations, "sampling.presence_penalty", sampling.presence_penalty, -2.0, 2.0)
    _check_range(violations, "sampling.frequency_penalty", sampling.frequency_penalty, -2.0, 2.0)
    for index, stop in enumerate(sampling.stop):
        if not stop:
            violations.append(FieldViolation(f"sampling.stop[{index}]", "must not be empty"))
    if violations:
        raise InvalidRequest(violations)
