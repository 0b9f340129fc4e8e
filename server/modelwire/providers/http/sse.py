"""Reading an upstream's answer, with no I/O of its own: server-sent events (lines split by the SSE
rules, `\r\n`, `\r` or `\n`; events by the WHATWG rules), JSON whose parser failure is the
upstream's fault, and a provider's finish reasons."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from modelwire.core import errors
from modelwire.core.types import FinishReason

# The most of one upstream answer held in memory: a unary response body, or one line of an event
# stream while waiting for its end. More is a broken (or hostile) upstream or proxy: UNAVAILABLE.
MAX_UPSTREAM_READ = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of a byte stream, each ended by `\r\n`, `\r` or `\n` (as SSE allows), also when a
    chunk boundary splits a `\r\n`; a last line without an ending is yielded at the end."""
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk if pending else chunk).splitlines(keepends=True)
        pending = b""
        if not lines:
            continue
        if not lines[-1].endswith(b"\n"):  # unfinished, or a \r whose \n may open the next chunk
            pending = lines.pop()
            if len(pending) > MAX_UPSTREAM_READ:
                raise errors.UpstreamUnavailable(
                    f"upstream sent an event stream line longer than {MAX_UPSTREAM_READ} bytes"
                )
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r\n").decode("utf-8", errors="replace")


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Events of a text/event-stream, by the WHATWG rules (comments and `id`/`retry` ignored).

    An event is dispatched at its blank line; an event cut off by the end of the stream is
    dropped, as the standard says, so a truncated stream shows as a stream without its end.
    """
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value


async def drain(events: AsyncIterator[SSEEvent], limit_s: float = 0.5) -> None:
    """Reads what follows a stream's end marker, so that its connection can go back to the pool.

    Bounded and silent: the completion was already delivered, a slow or broken tail only costs
    the connection (it is closed instead of reused).
    """
    try:
        async with asyncio.timeout(limit_s):
            async for _ in events:
                pass
    except (TimeoutError, errors.ModelwireError):
        pass


def upstream_json(data: str | bytes) -> Any:
    """`json.loads` of an upstream's text, where nesting too deep for the parser (RecursionError)
    is a ValueError like any other malformed JSON: the upstream's fault, never INTERNAL."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested deeper than the parser's limit") from None


def parse_json_event(event: SSEEvent) -> Any:
    try:
        return upstream_json(event.data)
    except ValueError as error:
        # The event may hold completion text: its size and the parser's reason (which quotes no
        # text) are told, never its content.
        raise errors.UpstreamUnavailable(
            f"upstream sent a malformed event stream: a {event.event!r} event of {len(event.data)} "
            f"characters is not JSON ({error})"
        ) from None


def finish_reason(table: dict[str, FinishReason], value: object) -> FinishReason | None:
    """A provider's finish or stop reason by its `table`; one the table lacks (added after this
    was written) is STOP, a missing or empty one None."""
    if not isinstance(value, str) or not value:
        return None
    return table.get(value, FinishReason.STOP)
