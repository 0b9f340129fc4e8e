"""Anthropic's Messages API responses as its documentation shows them, for the scripted fake
upstream (fake_upstream.py): whole messages with text, thinking, redacted_thinking and tool_use
blocks, and event streams block by block — `content_block_start` with the block's empty form,
its deltas (`text_delta`, `thinking_delta` then one `signature_delta`, an empty
`input_json_delta` then the pieces), `content_block_stop` — framed as server-sent events exactly
as the API writes them (`event:` and `data:` lines), and sent in byte chunks that may cut an
event anywhere.

`answer_as_claude` plays the model for the conformance cases: it reads the request like Claude
does (a forced tool gets a call with input matching that tool, anything else a text answer).
"""

from __future__ import annotations

import json
from typing import Any

from fake_upstream import Exchange, Responder

Event = tuple[str, dict[str, Any]]


# --- whole messages ------------------------------------------------------------------------------


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def thinking_block(thinking: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": thinking, "signature": signature}


def redacted_block(data: str) -> dict[str, Any]:
    return {"type": "redacted_thinking", "data": data}


def tool_use_block(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def usage(input_tokens: int = 9, output_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, **extra}


def message(
    content: list[dict[str, Any]],
    stop_reason: str = "end_turn",
    counts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": counts or usage(),
    }


# --- event streams -------------------------------------------------------------------------------


def message_start(counts: dict[str, Any] | None = None) -> Event:
    body = message([], counts=counts or usage(output_tokens=1))
    body["stop_reason"] = None
    return "message_start", {"type": "message_start", "message": body}


PING: Event = ("ping", {"type": "ping"})
MESSAGE_STOP: Event = ("message_stop", {"type": "message_stop"})


def message_delta(stop_reason: str, counts: dict[str, Any]) -> Event:
    return "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": counts,
    }


def _block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[Event]:
    return [
        (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        *(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def text_events(index: int, pieces: list[str]) -> list[Event]:
    return _block(
        index,
        {"type": "text", "text": ""},
        [{"type": "text_delta", "text": piece} for piece in pieces],
    )


def thinking_events(index: int, pieces: list[str], signature: str) -> list[Event]:
    deltas = [{"type": "thinking_delta", "thinking": piece} for piece in pieces]
    return _block(
        index,
        {"type": "thinking", "thinking": "", "signature": ""},
        [*deltas, {"type": "signature_delta", "signature": signature}],
    )


def redacted_events(index: int, data: str) -> list[Event]:
    return _block(index, redacted_block(data), [])


def tool_use_events(index: int, call_id: str, name: str, pieces: list[str]) -> list[Event]:
    """The API opens with an empty `partial_json` when the input has any; a call without input
    may come with no delta at all."""
    deltas = [
        {"type": "input_json_delta", "partial_json": piece}
        for piece in ([""] + pieces if pieces else [])
    ]
    return _block(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}}, deltas)


def sse(events: list[Event]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode() for name, payload in events
    )


async def send_stream(respond: Responder, events: list[Event], chunk_bytes: int = 0) -> None:
    """200 and the events; with `chunk_bytes`, in chunks of that size, cutting events anywhere."""
    await respond.head(200)
    raw = sse(events)
    size = chunk_bytes or len(raw)
    for start in range(0, len(raw), size):
        await respond.raw(raw[start : start + size])
    await respond.end()


def streamed(content: list[dict[str, Any]], stop_reason: str, piece_chars: int = 7) -> list[Event]:
    """A whole message's blocks as the stream that carries them, text and arguments cut into
    pieces of `piece_chars` characters."""
    events = [message_start()]
    for index, block in enumerate(content):
        if block["type"] == "tool_use":
            arguments = json.dumps(block["input"])
            pieces = [
                arguments[at : at + piece_chars] for at in range(0, len(arguments), piece_chars)
            ]
            events += tool_use_events(index, block["id"], block["name"], pieces)
        else:
            text = block["text"]
            events += text_events(
                index, [text[at : at + piece_chars] for at in range(0, len(text), piece_chars)]
            )
        if index == 0:
            events.append(PING)
    return [*events, message_delta(stop_reason, {"output_tokens": 25}), MESSAGE_STOP]


# --- the model, for the conformance cases --------------------------------------------------------

# What the model gives each tool it is made to call; each matches its schema in conformance.py.
CANNED_INPUTS: dict[str, dict[str, Any]] = {
    "get_weather": {"city": "Paris", "unit": "celsius"},
    "person": {"name": "Ada Lovelace", "age": 36, "languages": ["English", "French"]},
    "json_object": {"name": "Ada Lovelace", "age": 36},
}
ANSWER = "It is clear and 21 °C in Paris."


async def answer_as_claude(exchange: Exchange, respond: Responder) -> None:
    body = exchange.json()
    choice = body.get("tool_choice", {})
    if choice.get("type") == "tool":
        content = [
            tool_use_block(
                "toolu_01A09q90qw90lq917835lq9", choice["name"], CANNED_INPUTS[choice["name"]]
            )
        ]
        stop_reason = "tool_use"
    else:
        content = [text_block(ANSWER)]
        stop_reason = "end_turn"
    if body["stream"]:
        await send_stream(respond, streamed(content, stop_reason), chunk_bytes=97)
    else:
        await respond.json(200, message(content, stop_reason, usage(output_tokens=25)))
