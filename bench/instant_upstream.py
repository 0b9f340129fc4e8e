"""A tiny OpenAI-compatible Chat Completions server that answers at once, for benchmarks.

Raw asyncio (HTTP/1.1, keep-alive, pipelining), so the upstream costs as little as possible and
every gateway in front of it is measured, not the upstream. Both gateways (modelwire's `openai`
provider and LiteLLM) talk to the same instance, run as its own process so its CPU is never
counted as theirs.

  POST /v1/chat/completions  {"stream": false}  one completion: `--chunks` × `--chunk-text`,
                                                with usage
  POST /v1/chat/completions  {"stream": true}   `--chunks` SSE deltas, a finish chunk, a usage chunk
                                                (when stream_options.include_usage), then [DONE]
  GET  /health                                  200

With `--pace R` a streamed answer is paced instead (bench/paced.py): R tokens per second per
stream, as a model decodes, `max_tokens` of them (else `--chunks`), each delta's content the
upstream's wall-clock send time, "t<unix-ns> ", so the caller (on the same machine, the same clock)
can tell the gap the upstream put between two tokens from the gap it saw. Unary answers stay
instant.

    python bench/instant_upstream.py --port 8900 [--chunks 100] [--chunk-text "hello "] [--pace 20]

Prints "instant upstream on HOST:PORT" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
    b'Content-Length: 21\r\n\r\n{"error":"not found"}'
)
_HEALTH = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b'Content-Length: 15\r\n\r\n{"status":"ok"}'
)
_BAD = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 33\r\n"
    b'Connection: close\r\n\r\n{"error":{"message":"bad json"}}'
)


class Answers:
    """Pre-rendered responses per (model, stream, include_usage): answering costs one dict
    lookup."""

    def __init__(self, chunks: int, chunk_text: str) -> None:
        self.chunks = chunks
        self.chunk_text = chunk_text
        self._cache: dict[tuple[str, bool, bool], bytes] = {}

    def get(self, model: str, stream: bool, include_usage: bool) -> bytes:
        key = (model, stream, include_usage)
        answer = self._cache.get(key)
        if answer is None:
            answer = self._render(*key)
            if len(self._cache) < 64:
                self._cache[key] = answer
        return answer

    def _usage(self) -> dict[str, int]:
        # A fixed count: counting here would make the upstream the thing being measured.
        return {
            "prompt_tokens": 12,
            "completion_tokens": self.chunks,
            "total_tokens": 12 + self.chunks,
        }

    def payloads(self, model: str, stream: bool, include_usage: bool) -> list[bytes]:
        """The body unframed: the one JSON document of a unary answer, or each SSE event of a stream
        (bench/ablation.py feeds them to the worker without HTTP, to attribute the client's
        cost)."""
        base: dict[str, Any] = {"id": "chatcmpl-instant", "created": 1700000000, "model": model}
        if not stream:
            return [
                json.dumps(
                    {
                        **base,
                        "object": "chat.completion",
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": self.chunk_text * self.chunks,
                                },
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": self._usage(),
                    },
                    separators=(",", ":"),
                ).encode()
            ]
        events = []
        chunk = {**base, "object": "chat.completion.chunk"}
        first = {
            **chunk,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
        events.append(first)
        for _ in range(self.chunks):
            events.append(
                {
                    **chunk,
                    "choices": [
                        {"index": 0, "delta": {"content": self.chunk_text}, "finish_reason": None}
                    ],
                }
            )
        events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:
            events.append({**chunk, "choices": [], "usage": self._usage()})
        payloads = [
            f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode() for event in events
        ]
        payloads.append(b"data: [DONE]\n\n")
        return payloads

    def _render(self, model: str, stream: bool, include_usage: bool) -> bytes:
        payloads = self.payloads(model, stream, include_usage)
        if not stream:
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payloads[0])}\r\n\r\n"
            )
            return head.encode() + payloads[0]
        # Each event is its own HTTP chunk, as a streaming server sends them; written in one go.
        return _STREAM_HEAD + b"".join(map(_frame, payloads)) + _LAST_FRAME


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_LAST_FRAME = b"0\r\n\r\n"


def _frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_STAMP = "@stamp@"


class PacedFrames(NamedTuple):
    """A paced stream's bytes around the one part that changes: the stamp in each token's event."""

    head: bytes  # the HTTP head and the role event
    before: bytes  # a token's event up to its stamp
    after: bytes  # and after it
    tail: bytes  # the finish event, the usage event (when asked for), [DONE], the last chunk


def stamp_text(unix_ns: int) -> str:
    """A token's content in a paced stream: the upstream's send time."""
    return f"t{unix_ns} "


class Paced:
    """Paced mode: `rate` tokens per second per stream, each a stamped delta (`stamp_text`)."""

    def __init__(self, rate: float, default_tokens: int) -> None:
        self.interval_s = 1 / rate
        self.default_tokens = default_tokens
        self._cache: dict[tuple[str, int, bool], PacedFrames] = {}

    def frames(self, model: str, tokens: int, include_usage: bool) -> PacedFrames:
        key = (model, tokens, include_usage)
        frames = self._cache.get(key)
        if frames is None:
            # The instant answer's events with a marker for each token's text, cut around it.
            payloads = Answers(tokens, _STAMP).payloads(model, True, include_usage)
            before, after = payloads[1].split(_STAMP.encode())
            text_before, text_after = stamp_text(0).encode().split(b"0")
            frames = PacedFrames(
                head=_STREAM_HEAD + _frame(payloads[0]),
                before=before + text_before,
                after=text_after + after,
                tail=b"".join(map(_frame, payloads[1 + tokens :])) + _LAST_FRAME,
            )
            if len(self._cache) < 64:
                self._cache[key] = frames
        return frames


class PacedStream:
    """One paced answer on a connection. Token i is due at start + i × interval (drift-free: a late
    token does not delay the next ones' schedule); its stamp is taken when it is written."""

    def __init__(
        self,
        transport: asyncio.Transport,
        frames: PacedFrames,
        tokens: int,
        interval_s: float,
        done: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._frames = frames
        self._fixed = len(frames.before) + len(frames.after)
        self._tokens = tokens
        self._interval_s = interval_s
        self._done = done
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._sent = 0
        self._timer: asyncio.TimerHandle | None = None
        transport.write(frames.head)
        self._send()

    def _send(self) -> None:
        if self._transport.is_closing():
            return
        frames = self._frames
        stamp = b"%d" % time.time_ns()
        self._transport.write(
            b"%x\r\n%s%s%s\r\n" % (self._fixed + len(stamp), frames.before, stamp, frames.after)
        )
        self._sent += 1
        if self._sent < self._tokens:
            self._timer = self._loop.call_at(
                self._start + self._sent * self._interval_s, self._send
            )
            return
        self._transport.write(frames.tail)
        self._done()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class InstantProtocol(asyncio.Protocol):
    def __init__(self, answers: Answers, paced: Paced | None = None) -> None:
        self._answers = answers
        self._paced = paced
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._stream: PacedStream | None = None
        # Requests pipelined behind a paced stream wait for it: HTTP/1.1 answers in order.
        self._waiting: list[tuple[str, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            if self._stream is not None:
                self._waiting.append((lines[0], body))
            else:
                self._answer(lines[0], body)

    def _stream_done(self) -> None:
        self._stream = None
        while self._waiting and self._stream is None:
            self._answer(*self._waiting.pop(0))

    def _answer(self, request_line: str, body: bytes) -> None:
        assert self._transport is not None
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0]
        if method == "GET" and path in ("/health", "/v1/health"):
            self._transport.write(_HEALTH)
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self._transport.write(_NOT_FOUND)
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._transport.write(_BAD)
            self._transport.close()
            return
        stream = bool(request.get("stream"))
        options = request.get("stream_options") or {}
        model, include_usage = str(request.get("model", "")), bool(options.get("include_usage"))
        if stream and self._paced is not None:
            tokens = int(
                request.get("max_tokens")
                or request.get("max_completion_tokens")
                or self._paced.default_tokens
            )
            self._stream = PacedStream(
                self._transport,
                self._paced.frames(model, tokens, include_usage),
                tokens,
                self._paced.interval_s,
                self._stream_done,
            )
            return
        self._transport.write(self._answers.get(model, stream, include_usage))


async def serve(host: str, port: int, answers: Answers, paced: Paced | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: InstantProtocol(answers, paced), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()
    print(f"instant upstream on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--chunk-text", default="hello ")
    parser.add_argument(
        "--pace", type=float, help="stream R stamped tokens per second per stream (paced mode)"
    )
    args = parser.parse_args()
    paced = Paced(args.pace, args.chunks) if args.pace else None
    try:
        asyncio.run(serve(args.host, args.port, Answers(args.chunks, args.chunk_text), paced))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
