"""The domain → OpenAI's answers for a caller: chat completions, their SSE chunks (built from
precomputed bytes: a text delta costs under a microsecond), embeddings, models and error
bodies, with no I/O."""

from __future__ import annotations

import base64
import struct
from dataclasses import replace
from json.encoder import encode_basestring
from typing import Any

from modelwire.core import strict_json
from modelwire.core.types import (
    Embeddings,
    FinishReason,
    ModelMetadata,
    ModelOutput,
    ToolCallDelta,
    Usage,
)
from modelwire.facade.calls import HttpError
from modelwire.providers.openai.codec import wire_tool_call

# --- answers --------------------------------------------------------------------------------------


def _base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_prompt_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _finish(reason: FinishReason | None) -> str:
    """The domain's reasons are named as Chat Completions names them (codec.FINISH_REASONS reads
    them back); a whole answer without one ended normally."""
    return "stop" if reason is None else reason.value


def chat_completion(
    output: ModelOutput, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """The chat completion object of a whole answer."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": output.text if output.text or not output.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if output.tool_calls:
        message["tool_calls"] = [wire_tool_call(call) for call in output.tool_calls]
    if output.reasoning is not None:
        message["reasoning_content"] = output.reasoning
    if output.reasoning_signature:
        message["reasoning_signature"] = _base64_text(output.reasoning_signature)
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish(output.finish_reason),
            }
        ],
    }
    if output.usage is not None:
        body["usage"] = _usage(output.usage)
    return body


def _delta_call(delta: ToolCallDelta) -> dict[str, Any]:
    """A piece of a streamed call: its first carries the id, the type and the name."""
    function: dict[str, Any] = {"arguments": delta.arguments_delta}
    if delta.name:
        function = {"name": delta.name, **function}
    if not delta.id:
        return {"index": delta.index, "function": function}
    return {"index": delta.index, "id": delta.id, "type": "function", "function": function}


class ChatStream:
    """One streamed chat completion as SSE frames, OpenAI's way: `usage` null on every chunk and
    the usage in a last chunk with no choices when the caller asked for it, then `[DONE]`.

    `chunk` runs once per token: the frame's constant parts are bytes made once, and a delta of
    text alone (nearly all of them) costs one json.dumps of its text. A reasoning signature goes
    out in pieces whose base64 texts concatenate to the whole one's (three bytes at a time; the
    rest with the finish), so a client that joins the deltas can send the signature back."""

    __slots__ = (
        "_envelope",
        "_head",
        "_text_head",
        "_text_tail",
        "_tail",
        "_include_usage",
        "_started",
        "_usage",
        "_signature",
    )

    def __init__(self, model: str, completion_id: str, created: int, include_usage: bool) -> None:
        envelope = strict_json.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )[:-1]
        self._envelope = f"data: {envelope}".encode()
        self._head = self._envelope + b',"choices":[{"index":0,"delta":'
        self._text_head = self._head + b'{"content":'
        self._tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        self._text_tail = b'},"logprobs":null,"finish_reason":null' + self._tail
        self._include_usage = include_usage
        self._started = False
        self._usage: Usage | None = None
        self._signature = b""

    def _frame(self, delta: dict[str, Any], finish: FinishReason | None) -> bytes:
        if not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        finish_reason = b"null" if finish is None else b'"' + finish.value.encode() + b'"'
        return (
            self._head
            + strict_json.dumps(delta).encode()
            + b',"logprobs":null,"finish_reason":'
            + finish_reason
            + self._tail
        )

    def chunk(self, output: ModelOutput) -> bytes:
        if output.reasoning and (output.text or output.tool_call_deltas):
            # Reasoning in a chunk of its own: DeepSeek, vLLM and SGLang never send both, and their
            # clients read a chunk as reasoning or as content (a coalesced message may hold both).
            reasoning = self.chunk(ModelOutput(reasoning=output.reasoning))
            return reasoning + self.chunk(replace(output, reasoning=None))
        if output.usage is not None:
            self._usage = output.usage
        finish = output.finish_reason
        if (
            self._started
            and finish is None
            and not output.reasoning
            and not output.tool_call_deltas
            and not output.reasoning_signature
        ):
            if not output.text:
                return b""
            return self._text_head + encode_basestring(output.text).encode() + self._text_tail
        delta: dict[str, Any] = {}
        if output.text:
            delta["content"] = output.text
        if output.reasoning:
            delta["reasoning_content"] = output.reasoning
        if output.tool_call_deltas:
            delta["tool_calls"] = [_delta_call(call) for call in output.tool_call_deltas]
        self._signature += output.reasoning_signature
        whole = len(self._signature) if finish is not None else len(self._signature) // 3 * 3
        if whole:
            delta["reasoning_signature"] = _base64_text(self._signature[:whole])
            self._signature = self._signature[whole:]
        if not delta and finish is None:
            return b""
        return self._frame(delta, finish)

    def end(self) -> bytes:
        """What a finished stream still owes: a signature's last bytes if no chunk finished it,
        the usage if asked for (and reported), and `[DONE]`."""
        frames = b""
        if self._signature:
            frames = self._frame({"reasoning_signature": _base64_text(self._signature)}, None)
            self._signature = b""
        if self._include_usage and self._usage is not None:
            usage = strict_json.dumps(_usage(self._usage)).encode()
            frames += self._envelope + b',"choices":[],"usage":' + usage + b"}\n\n"
        return frames + b"data: [DONE]\n\n"

    def error(self, error: HttpError) -> bytes:
        """The error as the openai SDK reads one mid-stream: a data frame with an `error` object
        (it raises APIError with its message)."""
        return b"data: " + strict_json.dumps(error_body(error)).encode() + b"\n\n"


def embeddings_body(embeddings: Embeddings, model: str, encoding_format: str) -> dict[str, Any]:
    """The embeddings list; base64 is each vector's little-endian float32 bytes, as OpenAI's."""
    base64_encoded = encoding_format == "base64"
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": (
                _base64_text(struct.pack(f"<{len(vector)}f", *vector))
                if base64_encoded
                else list(vector)
            ),
        }
        for index, vector in enumerate(embeddings.vectors)
    ]
    usage = embeddings.usage
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
    }


def model_object(metadata: ModelMetadata) -> dict[str, Any]:
    """A model as GET /v1/models lists it; `created` is 0, a model here having no release date."""
    return {"id": metadata.model, "object": "model", "created": 0, "owned_by": metadata.provider}


def model_list(models: list[ModelMetadata]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(metadata) for metadata in models]}


# The error `type` of each status (the openai SDK picks its exception class by the status alone).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def _error_code(error: HttpError) -> str | None:
    if error.status == 401:
        return "invalid_api_key"
    if error.status == 404 and error.param == "model":
        return "model_not_found"
    if error.status == 429:
        return "rate_limit_exceeded"
    if error.status == 400 and error.code == "FAILED_PRECONDITION":
        return "context_length_exceeded"  # the one failed precondition that is the caller's
    return None


def error_body(error: HttpError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(error.status) or (
        "server_error" if error.status >= 500 else "invalid_request_error"
    )
    return {
        "error": {
            "message": error.message,
            "type": kind,
            "param": error.param,
            "code": _error_code(error),
        }
    }
