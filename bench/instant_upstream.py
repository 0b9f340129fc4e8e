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

    python bench/instant_upstream.py --port 8900 [--chunks 100] [--chunk-text "hello "]

Prints "instant upstream on HOST:PORT" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

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
        framed = (
            b"".join(b"%x\r\n%s\r\n" % (len(payload), payload) for payload in payloads)
            + b"0\r\n\r\n"
        )
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        return head + framed


class InstantProtocol(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

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
            self._answer(lines[0], body)

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
        self._transport.write(
            self._answers.get(
                str(request.get("model", "")), stream, bool(options.get("include_usage"))
            )
        )


async def serve(host: str, port: int, answers: Answers) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: InstantProtocol(answers), host, port, backlog=4096, reuse_address=True
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
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, Answers(args.chunks, args.chunk_text)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
