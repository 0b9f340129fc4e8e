"""A scripted HTTP/1.1 upstream on 127.0.0.1 speaking the OpenAI and Anthropic wire formats.

Raw asyncio streams, so a test controls every byte: status lines, chunked SSE, a reset socket, a
first byte that never comes. Each request is one exchange (the fake answers `Connection: close`)
and records its headers, body, when it started and when the client closed its side — an
asyncio.Event plus a monotonic timestamp, so tests wait on events with a bounded timeout instead
of sleeping. It also counts concurrent requests to check admission from the upstream's side.

Usage: `fake.script(handler, ...)` queues handlers for the next requests; when the queue is empty
the default handler answers (a short successful completion in the path's wire format).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelwire.app.config import Config, load_config

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    529: "Overloaded",
}


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    started_at: float = field(default_factory=time.monotonic)
    client_closed_at: float | None = None
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body)

    async def wait_client_closed(self, timeout: float = 5.0) -> float:
        """Returns the monotonic time the client closed the connection."""
        await asyncio.wait_for(self.client_closed.wait(), timeout)
        assert self.client_closed_at is not None
        return self.client_closed_at


class Responder:
    """Writes one HTTP response; chunked transfer encoding for streams."""

    def __init__(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        self.exchange = exchange
        self._writer = writer
        self._chunked = False

    async def head(
        self,
        status: int,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = True,
        content_type: str = "text/event-stream",
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"Content-Type: {content_type}",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            self._chunked = True
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        await self.head(
            status,
            {**(headers or {}), "Content-Length": str(len(body))},
            chunked=False,
            content_type="application/json",
        )
        self._writer.write(body)
        await self._writer.drain()

    async def raw(self, data: bytes) -> None:
        """Body bytes, framed as one chunk when the response is chunked."""
        if self._chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        self._writer.write(data)
        await self._writer.drain()

    async def event(self, data: Any, event: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        await self.raw(
            (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()
        )

    async def end(self) -> None:
        if self._chunked:
            self._writer.write(b"0\r\n\r\n")
            await self._writer.drain()

    async def reset(self) -> None:
        """Closes with RST (SO_LINGER 0): the client sees a connection reset."""
        sock = self._writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()

    async def hang(self, timeout: float = 30.0) -> None:
        """Sends nothing more until the client goes away (bounded, for test hygiene)."""
        try:
            await asyncio.wait_for(self.exchange.client_closed.wait(), timeout)
        except TimeoutError:
            pass


Handler = Callable[[Exchange, Responder], Awaitable[None]]


# --- wire formats ------------------------------------------------------------------------------


def openai_chunk(
    content: str | None = None, finish_reason: str | None = None, reasoning: str | None = None
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def openai_usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": "fake",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def openai_completion(
    text: str, prompt: int = 7, completion: int = 3, finish_reason: str = "stop"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def anthropic_message(
    text: str, input_tokens: int = 9, output_tokens: int = 4, stop_reason: str = "end_turn"
) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "fake",
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def anthropic_events(
    parts: list[str],
    input_tokens: int = 9,
    output_tokens: int = 4,
    stop_reason: str = "end_turn",
    thinking: tuple[str, ...] = (),
) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": "fake",
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        ),
    ]
    index = 0
    if thinking:
        events.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": ""},
                },
            )
        )
        events += [
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "thinking_delta", "thinking": t},
                },
            )
            for t in thinking
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    events.append(
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    events.append(("ping", {"type": "ping"}))
    events += [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": part},
            },
        )
        for part in parts
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def is_anthropic(exchange: Exchange) -> bool:
    return exchange.path.startswith("/v1/messages")


def received_credential(exchange: Exchange) -> str:
    """The credential header as the upstream got it: `Bearer <key>` (OpenAI) or the bare key
    (Anthropic's x-api-key), for fakes that echo it."""
    return exchange.headers.get("authorization") or exchange.headers.get("x-api-key", "")


def is_stream(exchange: Exchange) -> bool:
    return bool(exchange.json().get("stream"))


DEFAULT_PARTS = ["Hello", ", ", "world", "!"]


async def answer_ok(
    exchange: Exchange, respond: Responder, parts: list[str] = DEFAULT_PARTS, usage: bool = True
) -> None:
    """A successful completion in the wire format the path asks for, streamed or not."""
    if is_anthropic(exchange):
        if not is_stream(exchange):
            await respond.json(200, anthropic_message("".join(parts)))
            return
        await respond.head(200)
        for name, payload in anthropic_events(parts):
            await respond.event(payload, event=name)
        await respond.end()
        return
    if not is_stream(exchange):
        await respond.json(200, openai_completion("".join(parts)))
        return
    await respond.head(200)
    for part in parts:
        await respond.event(openai_chunk(part))
    await respond.event(openai_chunk(finish_reason="stop"))
    if usage:
        await respond.event(openai_usage_chunk(7, len(parts)))
    await respond.event("[DONE]")
    await respond.end()


def first_token(exchange: Exchange) -> tuple[str, dict[str, Any]]:
    """The first content event of a stream in the exchange's wire format (event name, payload)."""
    if is_anthropic(exchange):
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"},
        }
    return "", openai_chunk("Hello")


async def stream_prologue(exchange: Exchange, respond: Responder) -> None:
    """Status 200 and, for Anthropic, message_start and the text block's start."""
    await respond.head(200)
    if is_anthropic(exchange):
        for name, payload in anthropic_events([])[:2]:
            await respond.event(payload, event=name)


async def send_first_token(exchange: Exchange, respond: Responder) -> None:
    name, payload = first_token(exchange)
    await respond.event(payload, event=name or None)


# --- the server --------------------------------------------------------------------------------


class FakeUpstream:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.default: Handler = answer_ok
        self._script: deque[Handler] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._arrived = asyncio.Condition()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *handlers: Handler) -> None:
        self._script.extend(handlers)

    def reset_records(self) -> None:
        self._script.clear()
        self.exchanges.clear()
        self.max_in_flight = self.in_flight
        self.default = answer_ok

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Exchange]:
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.exchanges) >= count)
        return self.exchanges[:count]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            exchange = await self._read_request(reader)
            if exchange is None:
                return
            await self._handle(exchange, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Exchange | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Exchange(method, path, headers, body)

    async def _handle(
        self, exchange: Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def watch_client() -> None:
            # The client sends nothing more on this connection: EOF or an error means it closed.
            try:
                while await reader.read(1024):
                    pass
            except ConnectionError:
                pass
            exchange.client_closed_at = time.monotonic()
            exchange.client_closed.set()

        watcher = asyncio.create_task(watch_client())
        handler = self._script.popleft() if self._script else self.default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        async with self._arrived:
            self.exchanges.append(exchange)
            self._arrived.notify_all()
        try:
            try:
                await handler(exchange, Responder(exchange, writer))
            finally:
                self.in_flight -= 1
            # Let the client close first (it reads to the end), so its close is recorded.
            try:
                await asyncio.wait_for(exchange.client_closed.wait(), 2.0)
            except TimeoutError:
                pass
        finally:
            watcher.cancel()


@asynccontextmanager
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def load_toml_config(tmp_dir: Path, text: str) -> Config:
    """Writes a worker TOML file and loads it through the real configuration path."""
    path = tmp_dir / "modelwire.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)
