"""Reading responses: a stream's deltas folded into the output Generate would have returned, and a
call's rate-limit headers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from modelwire.v1 import worker_pb2 as pb

# The response headers (initial metadata) a worker sends on Generate and GenerateStream when
# [quota] rules apply to the call: OpenAI's names and formats.
LIMIT_REQUESTS_KEY = "x-ratelimit-limit-requests"
REMAINING_REQUESTS_KEY = "x-ratelimit-remaining-requests"
RESET_REQUESTS_KEY = "x-ratelimit-reset-requests"
LIMIT_TOKENS_KEY = "x-ratelimit-limit-tokens"
REMAINING_TOKENS_KEY = "x-ratelimit-remaining-tokens"
RESET_TOKENS_KEY = "x-ratelimit-reset-tokens"

_COUNT = re.compile(r"[0-9]+")
_NUMBER = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """Seconds from a duration in OpenAI's (Go's) style: "1s", "6m0s", "250ms", "1h2m3.5s"; a bare
    number is seconds. None when the text is none of these."""
    text = text.strip()
    if re.fullmatch(_NUMBER, text):
        return float(text)
    seconds, position = 0.0, 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            return None
        seconds += float(part[1]) * _UNIT_SECONDS[part[2]]
        position = part.end()
    return seconds if text and position == len(text) else None


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A call's rate-limit headers, as the worker sent them (OpenAI's `x-ratelimit-*`): the limit
    and what remains of it, in requests and in tokens, and the seconds until it is whole again. A
    field is None when its header is absent (the call met no [quota] rule with that limit) or not
    readable; every field is None for a worker without [quota]."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def from_metadata(cls, metadata: Iterable[tuple[str, str | bytes]] | None) -> RateLimits:
        """From a call's initial metadata (grpc.aio's `await call.initial_metadata()` or the sync
        `call.initial_metadata()`); the first value of a repeated key counts."""
        headers: dict[str, str] = {}
        for key, value in metadata or ():
            if isinstance(value, str):
                headers.setdefault(key.lower(), value)

        def count(key: str) -> int | None:
            text = headers.get(key, "").strip()
            return int(text) if _COUNT.fullmatch(text) else None

        def reset(key: str) -> float | None:
            return parse_duration(headers[key]) if key in headers else None

        return cls(
            limit_requests=count(LIMIT_REQUESTS_KEY),
            remaining_requests=count(REMAINING_REQUESTS_KEY),
            reset_requests_s=reset(RESET_REQUESTS_KEY),
            limit_tokens=count(LIMIT_TOKENS_KEY),
            remaining_tokens=count(REMAINING_TOKENS_KEY),
            reset_tokens_s=reset(RESET_TOKENS_KEY),
        )


class OutputCollector:
    """Feed it every GenerateStream message (`add`); `output()` is then the whole answer: text and
    reasoning joined, tool-call deltas joined by index into complete `tool_calls` (id and name from
    a call's first delta, arguments concatenated), the signature joined, and the last message's
    finish_reason, usage, timing and model.

        collector = OutputCollector()
        async for chunk in client.stream(model, prompt, tools=[...]):
            print(chunk.text, end="")
            collector.add(chunk)
        calls = collector.output().tool_calls
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] | None = None
        self._signature: list[bytes] = []
        self._calls: dict[int, tuple[pb.ToolCall, list[str]]] = {}
        self._whole_calls: list[pb.ToolCall] = []
        self._last = pb.ModelOutput()

    def add(self, chunk: pb.ModelOutput) -> None:
        self._text.append(chunk.text)
        if chunk.HasField("reasoning"):
            if self._reasoning is None:
                self._reasoning = []
            self._reasoning.append(chunk.reasoning)
        if chunk.reasoning_signature:
            self._signature.append(chunk.reasoning_signature)
        for delta in chunk.tool_call_deltas:
            call, arguments = self._calls.setdefault(delta.index, (pb.ToolCall(), []))
            call.id = call.id or delta.id
            call.name = call.name or delta.name
            arguments.append(delta.arguments_delta)
        # A stream carries deltas; whole calls are kept too, should a server send them.
        self._whole_calls.extend(chunk.tool_calls)
        self._last = chunk

    def output(self) -> pb.ModelOutput:
        last = self._last
        output = pb.ModelOutput(
            text="".join(self._text),
            finish_reason=last.finish_reason,
            model=last.model,
            tool_calls=self._whole_calls
            + [
                pb.ToolCall(id=call.id, name=call.name, arguments_json="".join(arguments))
                for call, arguments in (self._calls[index] for index in sorted(self._calls))
            ],
            reasoning_signature=b"".join(self._signature),
        )
        if self._reasoning is not None:
            output.reasoning = "".join(self._reasoning)
        if last.HasField("usage"):
            output.usage.CopyFrom(last.usage)
        if last.HasField("timing"):
            output.timing.CopyFrom(last.timing)
        return output
