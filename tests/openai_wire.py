"""OpenAI's wire format as its API reference documents it, for scripting the fake upstream.

Chunks are written as OpenAI writes them: compact JSON, `"usage": null` on every chunk of a stream
that asked for usage, the usage itself on a last chunk with `choices: []`, then `data: [DONE]`.
Tool-call deltas follow the documented shape: a call's first delta has `index`, `id`, `type` and
`function.name` with empty arguments, the following ones only `index` and `function.arguments`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fake_upstream import Exchange, Handler, Responder, is_stream

MODEL = "gpt-4o-mini-2024-07-18"


def compact(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def usage_chunk(
    prompt: int, completion: int, cached: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    return {**chunk({}), "choices": [], "usage": usage(prompt, completion, cached, reasoning)}


def first_call_delta(index: int, call_id: str, name: str, role: bool = False) -> dict[str, Any]:
    """The delta that opens tool call `index`; the first call's also opens the message."""
    delta: dict[str, Any] = {"role": "assistant", "content": None} if role else {}
    delta["tool_calls"] = [
        {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
    ]
    if role:
        delta["refusal"] = None
    return delta


def arguments_delta(index: int, piece: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


def text_chunks(parts: Sequence[str], finish_reason: str = "stop") -> list[dict[str, Any]]:
    first = [chunk({"role": "assistant", "content": "", "refusal": None})]
    return first + [chunk({"content": part}) for part in parts] + [chunk({}, finish_reason)]


def tool_call_chunks(
    calls: Sequence[tuple[str, str, Sequence[str]]], finish_reason: str = "tool_calls"
) -> list[dict[str, Any]]:
    """Each call opened in turn, then their argument pieces interleaved by index, as OpenAI
    streams parallel calls; the pieces of one call concatenate to its arguments."""
    chunks = [
        chunk(first_call_delta(index, call_id, name, role=index == 0))
        for index, (call_id, name, _) in enumerate(calls)
    ]
    longest = max(len(pieces) for _, _, pieces in calls)
    for step in range(longest):
        chunks += [
            chunk(arguments_delta(index, pieces[step]))
            for index, (_, _, pieces) in enumerate(calls)
            if step < len(pieces)
        ]
    return chunks + [chunk({}, finish_reason)]


def completion(
    message: dict[str, Any], finish_reason: str = "stop", usage_: dict[str, Any] | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "refusal": None, "annotations": [], **message},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    if usage_ is not None:
        payload["usage"] = usage_
    return payload


def wire_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def embeddings(
    vectors: Sequence[Sequence[float]],
    order: Sequence[int] | None = None,
    prompt_tokens: int | None = 8,
) -> dict[str, Any]:
    """`order`: the positions in which the data items are listed (each keeps its own index)."""
    listed = order if order is not None else range(len(vectors))
    payload: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": list(vectors[index])}
            for index in listed
        ],
        "model": "text-embedding-3-small",
    }
    if prompt_tokens is not None:
        payload["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return payload


async def write_stream(
    respond: Responder, chunks: Sequence[dict[str, Any]], usage_: dict[str, Any] | None = None
) -> None:
    await respond.head(200)
    for payload in chunks:
        await respond.event(compact(payload))
    if usage_ is not None:
        await respond.event(compact(usage_))
    await respond.event("[DONE]")
    await respond.end()


def streamed(chunks: Sequence[dict[str, Any]], usage_: dict[str, Any] | None = None) -> Handler:
    async def handler(exchange: Exchange, respond: Responder) -> None:
        await write_stream(respond, chunks, usage_)

    return handler


def replied(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handler(exchange: Exchange, respond: Responder) -> None:
        await respond.json(status, payload, headers)

    return handler


def either(
    unary: dict[str, Any], chunks: Sequence[dict[str, Any]], usage_: dict[str, Any] | None = None
) -> Handler:
    """A completion answered the way the request asked: unary JSON, or the stream of `chunks`."""

    async def handler(exchange: Exchange, respond: Responder) -> None:
        if is_stream(exchange):
            await write_stream(respond, chunks, usage_)
        else:
            await respond.json(200, unary)

    return handler
