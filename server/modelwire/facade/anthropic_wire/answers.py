"""The domain → Anthropic's answers for a caller: messages, their streamed events (built from
precomputed bytes), token counts, models and error bodies, with no I/O."""

from __future__ import annotations

import json
from typing import Any

from modelwire.core import strict_json
from modelwire.core.types import (
    FinishReason,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    Role,
    TokenCount,
    Usage,
)
from modelwire.facade.calls import HttpError
from modelwire.providers.anthropic.codec import (
    ERROR_STATUS,
    STOP_REASONS,
    reasoning_blocks,
    usage_body,
)


def _json(value: object) -> bytes:
    return strict_json.dumps(value).encode()


def _signature_text(signature: bytes) -> str:
    """A signature as the API's string; only a signature no provider gives (not UTF-8) loses
    bytes."""
    return signature.decode(errors="replace")


def _thinking_blocks(reasoning: str | None, signature: bytes) -> list[dict[str, Any]]:
    """An output's thinking as the blocks the next request sends back (`reasoning_blocks`): one
    thinking block with its signature, or the verbatim blocks a JSON-array signature holds."""
    if reasoning is None and not signature:
        return []
    turn = ModelMessage(
        role=Role.ASSISTANT, content="", reasoning=reasoning, reasoning_signature=signature
    )
    blocks = reasoning_blocks(turn)
    if blocks is None:
        return [
            {
                "type": "thinking",
                "thinking": reasoning or "",
                "signature": _signature_text(signature),
            }
        ]
    return blocks


def _stop_reason(finish: FinishReason | None) -> str | None:
    return None if finish is None else STOP_REASONS[finish]


def message_body(output: ModelOutput, model: str, message_id: str) -> dict[str, Any]:
    """The unary Message: thinking, text, then tool_use blocks. `stop_sequence` is always null:
    the domain says a turn stopped (STOP) but not on which stop sequence, so `stop_reason` is
    end_turn then too."""
    content = _thinking_blocks(output.reasoning, output.reasoning_signature)
    if output.text:
        content.append({"type": "text", "text": output.text})
    content += (
        {
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": json.loads(call.arguments_json or "{}"),
        }
        for call in output.tool_calls
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(output.finish_reason),
        "stop_sequence": None,
        "usage": usage_body(output.usage or Usage()),
    }


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _json(payload) + b"\n\n"


_PING = _event("ping", {"type": "ping"})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})
_DELTA_END = b"}}\n\n"
_TEXT = "text"  # the open block's kind when it is text; a tool call's is its index


def _delta_prefix(index: int, kind: str, key: str) -> bytes:
    """A content_block_delta event up to its value, which the block's deltas complete."""
    head = f'{{"type":"content_block_delta","index":{index},"delta":{{"type":"{kind}","{key}":'
    return b"event: content_block_delta\ndata: " + head.encode()


def _block_stop(index: int) -> bytes:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


class MessageStream:
    """A domain stream as the Messages API's events: message_start and a ping, then content
    blocks (one per run of text, one per tool call index), message_delta with the stop reason
    and every count on the last chunk, and message_stop at the end.

    The domain gives a thinking block's signature only with the stream's last chunk, so the
    thinking block stays open until then, while the text and tool_use blocks after it stream at
    their own indexes (each event names its block's index, which is how the SDKs accumulate
    them); it is closed first, so it is done first. A signature standing for several blocks (a
    JSON array, `signature_of`) is that block's signature as is, and comes back as the same
    bytes (`parse_messages`)."""

    __slots__ = (
        "_start",
        "_started",
        "_blocks",
        "_open",
        "_open_kind",
        "_text_prefix",
        "_thinking",
        "_thinking_prefix",
        "_tools",
    )

    def __init__(self, model: str, message_id: str) -> None:
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        self._start = _event("message_start", {"type": "message_start", "message": message})
        self._start += _PING
        self._started = False
        self._blocks = 0
        self._open: int | None = None  # the open text or tool_use block
        self._open_kind: object = None
        self._text_prefix = b""
        self._thinking: int | None = None
        self._thinking_prefix = b""
        self._tools: dict[int, bytes] = {}  # a tool call's index → its blocks' delta prefix

    def chunk(self, output: ModelOutput) -> bytes:
        if (
            self._open_kind is _TEXT
            and not output.reasoning
            and not output.reasoning_signature
            and not output.tool_call_deltas
            and output.finish_reason is None
        ):  # the common delta: more of the open text block
            return self._text_prefix + _json(output.text) + _DELTA_END if output.text else b""
        events: list[bytes] = []
        if not self._started:
            self._started = True
            events.append(self._start)
        if output.reasoning:
            self._open_thinking(events)
            events.append(self._thinking_prefix + _json(output.reasoning) + _DELTA_END)
        if output.reasoning_signature:
            self._open_thinking(events)
            signature = _signature_text(output.reasoning_signature)
            signed = {"type": "signature_delta", "signature": signature}
            events.append(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": self._thinking, "delta": signed},
                )
            )
        if output.text:
            if self._open_kind is not _TEXT:
                index = self._switch(events, _TEXT, {"type": "text", "text": ""})
                self._text_prefix = _delta_prefix(index, "text_delta", "text")
            events.append(self._text_prefix + _json(output.text) + _DELTA_END)
        for piece in output.tool_call_deltas:
            prefix = self._tools.get(piece.index)
            if prefix is None:
                block = {"type": "tool_use", "id": piece.id, "name": piece.name, "input": {}}
                index = self._switch(events, piece.index, block)
                prefix = self._tools[piece.index] = _delta_prefix(
                    index, "input_json_delta", "partial_json"
                )
            # A piece of a call whose block closed already goes to its block by index all the
            # same (no provider sends one), rather than being lost.
            if piece.arguments_delta:
                events.append(prefix + _json(piece.arguments_delta) + _DELTA_END)
        if output.finish_reason is not None:
            self._close(events)
            stop = _stop_reason(output.finish_reason)
            delta: dict[str, Any] = {"stop_reason": stop, "stop_sequence": None}
            events.append(
                _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": delta,
                        "usage": usage_body(output.usage or Usage()),
                    },
                )
            )
        return b"".join(events)

    def end(self) -> bytes:
        """message_stop, after what a stream without a last chunk still owes (its start, the
        stops of its open blocks)."""
        events = [] if self._started else [self._start]
        self._started = True
        self._close(events)
        events.append(_MESSAGE_STOP)
        return b"".join(events)

    def error(self, error: HttpError) -> bytes:
        return _event("error", {"type": "error", "error": _error_object(error)})

    def _new_block(self, events: list[bytes], block: dict[str, Any]) -> int:
        index = self._blocks
        self._blocks += 1
        events.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        return index

    def _open_thinking(self, events: list[bytes]) -> None:
        if self._thinking is None:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            self._thinking = self._new_block(events, block)
            self._thinking_prefix = _delta_prefix(self._thinking, "thinking_delta", "thinking")

    def _switch(self, events: list[bytes], kind: object, block: dict[str, Any]) -> int:
        """Closes the open text or tool_use block and opens `block`."""
        if self._open is not None:
            events.append(_block_stop(self._open))
        self._open = self._new_block(events, block)
        self._open_kind = kind
        return self._open

    def _close(self, events: list[bytes]) -> None:
        if self._thinking is not None:
            events.append(_block_stop(self._thinking))
            self._thinking = None
        if self._open is not None:
            events.append(_block_stop(self._open))
            self._open = None
            self._open_kind = None


def count_tokens_body(count: TokenCount) -> dict[str, Any]:
    return {"input_tokens": count.count}


# Models have no release date here; the epoch says so rather than inventing one.
_CREATED_AT = "1970-01-01T00:00:00Z"


def model_object(metadata: ModelMetadata) -> dict[str, Any]:
    """A model as GET /v1/models/{id} gives it; `lifecycle` is one the SDK's ModelInfo requires
    (a served model is active), and the two limits are the model's own."""
    return {
        "type": "model",
        "id": metadata.model,
        "display_name": metadata.model,
        "created_at": _CREATED_AT,
        "lifecycle": "active",
        "max_input_tokens": metadata.context_length,
        "max_tokens": metadata.max_output_tokens,
    }


def model_list(models: list[ModelMetadata]) -> dict[str, Any]:
    """GET /v1/models: every model on one page."""
    data = [model_object(metadata) for metadata in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# An HTTP status → Anthropic's error type for it (the provider's table, reversed).
_ERROR_TYPES = {status: kind for kind, status in ERROR_STATUS.items()} | {503: "overloaded_error"}


def _error_object(error: HttpError) -> dict[str, str]:
    """Anthropic's errors have no param: it leads the message, unless the message already
    starts with it (facade/errors.py writes a refusal's fields into its message)."""
    kind = _ERROR_TYPES.get(error.status)
    if kind is None:
        kind = "invalid_request_error" if error.status < 500 else "api_error"
    message = error.message
    if error.param and not message.startswith(f"{error.param}:"):
        message = f"{error.param}: {message}"
    return {"type": kind, "message": message}


def error_body(error: HttpError, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": _error_object(error)}
    if request_id is not None:
        body["request_id"] = request_id
    return body
