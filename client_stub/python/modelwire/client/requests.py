"""Building requests from plain Python values, shared by the async and the sync client."""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.v1 import worker_pb2 as pb

# A prompt string (one user message) or (role, content) pairs with role in system/user/assistant/tool.
Messages = str | Sequence[tuple[str, str]]

_ROLES = {"system": pb.ROLE_SYSTEM, "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT, "tool": pb.ROLE_TOOL}


def to_messages(messages: Messages) -> list[pb.ModelMessage]:
    if isinstance(messages, str):
        return [pb.ModelMessage(role=pb.ROLE_USER, content=messages)]
    return [pb.ModelMessage(role=_ROLES.get(role, pb.ROLE_UNSPECIFIED), content=content) for role, content in messages]


def build_request(
    model: str,
    messages: Messages,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    request_id: str = "",
) -> pb.ModelRequest:
    sampling = pb.SamplingParams(stop=list(stop))
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if max_new_tokens is not None:
        sampling.max_new_tokens = max_new_tokens
    if seed is not None:
        sampling.seed = seed
    return pb.ModelRequest(
        model=model,
        messages=to_messages(messages),
        sampling=sampling,
        context=pb.RequestContext(request_id=request_id),
    )


def count_request(model: str, messages: Messages) -> pb.CountTokenRequest:
    if isinstance(messages, str):
        return pb.CountTokenRequest(model=model, prompt=messages)
    return pb.CountTokenRequest(model=model, messages=to_messages(messages))
