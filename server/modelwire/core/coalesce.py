"""Coalesced deltas (issue 27's decision): when a stream's next message may be sent and several
deltas are already waiting, they go as one message; a delta is never held back to wait for more.

`coalesced` reads a stream ahead into a bounded buffer in a task of its own, so what arrived while
the caller's side was busy writing is there to be taken; the stream's first item is read by the
caller's task itself (a stream that fails before its first item, or has one, never starts a task,
and what the first read sets in the call's context — request texts, the dispatch hook — is the
caller's). `coalesce_outputs` says how deltas merge without changing what they mean.

Hand-written: no library reads an async iterator ahead and merges its items only when its consumer
is late; `asyncio.Queue` would not let the reader's end or error follow the items it read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Generic, TypeVar

from modelwire.core.cancellation import outlive_cancels
from modelwire.core.types import ModelOutput, join_tool_call_deltas

T = TypeVar("T")

# The most items read ahead of a late consumer: past it the reader waits, so a caller that stops
# reading stops the upstream through its flow control as it did before.
READ_AHEAD = 256

_DONE = StopAsyncIteration()


class _ReadAhead(Generic[T]):
    """What the reader task has read and the consumer not yet taken, and how the stream ended."""

    __slots__ = ("waiting", "end", "_limit", "_wake", "_room")

    def __init__(self, limit: int) -> None:
        self.waiting: list[T] = []
        self.end: BaseException | None = None
        self._limit = limit
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    async def read(self, items: AsyncIterator[T]) -> None:
        try:
            async for item in items:
                self.waiting.append(item)
                self._notify()
                if len(self.waiting) >= self._limit:
                    self._room = asyncio.get_running_loop().create_future()
                    await self._room
        except BaseException as error:  # handed to the consumer, which raises it in its task
            self.end = error
        else:
            self.end = _DONE
        finally:
            self._notify()

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def take(self) -> list[T]:
        """Everything waiting, at once; the reader may go on if it was held at the bound."""
        taken, self.waiting = self.waiting, []
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)
        return taken

    def wake(self) -> asyncio.Future[None] | None:
        """A future done when an item or the end is there; None when one is already."""
        if self.waiting or self.end is not None:
            return None
        wake = self._wake = asyncio.get_running_loop().create_future()
        return wake


async def coalesced(
    items: AsyncIterator[T],
    merge: Callable[[list[T]], Sequence[T]],
    limit: int = READ_AHEAD,
) -> AsyncGenerator[T, None]:
    """`items`, with the ones waiting together when the next is asked for passed through `merge`.

    An error of `items` comes after the items read before it. Closing this generator cancels the
    reader and waits for it; the caller then closes `items` itself (`aclosing`), since a reader
    held at the bound is not inside `items` and its cancel does not close them. `items` must not be
    closed by anyone else while this runs.
    """
    try:
        first = await anext(items)
    except StopAsyncIteration:
        return
    ahead: _ReadAhead[T] = _ReadAhead(limit)
    reader = asyncio.get_running_loop().create_task(ahead.read(items))
    try:
        yield first
        while True:
            wake = ahead.wake()  # not a coroutine: one fewer object per delta
            if wake is not None:
                await wake
            batch = ahead.take()
            if len(batch) == 1:
                yield batch[0]
            elif batch:
                for item in merge(batch):
                    yield item
            if ahead.end is not None and not ahead.waiting:
                if ahead.end is _DONE:
                    return
                raise ahead.end
    finally:
        if not reader.done():
            reader.cancel()
            # Its cleanup (an admission slot, a thread to wait for) is done before the call ends,
            # however often the caller's task is cancelled meanwhile.
            await outlive_cancels(reader)


# --- how ModelOutput deltas merge

# The most characters of content one merged message gathers (under 1 MiB in UTF-8): past it the next
# delta starts a message of its own, so a merged message stays far below gRPC's default 4 MiB
# receive limit that every client has unless it raises it, as each delta was.
MAX_MERGED_CHARS = 256 * 1024

# A message holds one run of each kind in this order; a delta of an earlier kind after a later one
# starts a new message, so reasoning, its signature, text and tool-call deltas keep their order.
_REASONING, _SIGNATURE, _TEXT, _TOOLS, _LAST = range(5)


def _kinds(output: ModelOutput) -> tuple[int, int] | None:
    """The first and last kind an output holds (a finish or usage is last of all); None when it
    holds nothing."""
    kinds = [
        kind
        for kind, present in (
            (_REASONING, output.reasoning),
            (_SIGNATURE, output.reasoning_signature),
            (_TEXT, output.text),
            (_TOOLS, output.tool_call_deltas),
            (_LAST, output.finish_reason or output.usage or output.timing or output.tool_calls),
        )
        if present
    ]
    return (kinds[0], kinds[-1]) if kinds else None


def coalesce_outputs(outputs: list[ModelOutput]) -> list[ModelOutput]:
    """Consecutive deltas as few messages as their order allows: texts and reasonings
    concatenated, tool-call deltas of one index joined, finish reason and usage on the last."""
    merged: list[ModelOutput] = []
    run: list[ModelOutput] = []
    reached = _REASONING  # the latest kind in `run`
    size = 0  # the characters of content in `run`
    for output in outputs:
        kinds = _kinds(output)
        grown = size + _size(output)
        if run and (
            reached == _LAST
            or grown > MAX_MERGED_CHARS
            or (kinds is not None and _goes_back(kinds[0], reached))
        ):
            merged.append(_joined(run))
            run, reached, grown = [], _REASONING, _size(output)
        if kinds is not None:
            reached = max(reached, kinds[1])
        run.append(output)
        size = grown
    if run:
        merged.append(_joined(run))
    return merged


def _size(output: ModelOutput) -> int:
    return (
        len(output.text)
        + len(output.reasoning or "")
        + len(output.reasoning_signature)
        + sum(len(d.arguments_delta) + len(d.id) + len(d.name) for d in output.tool_call_deltas)
    )


def _goes_back(first: int, reached: int) -> bool:
    """Whether a delta starting with kind `first` would put it before what the run holds (a
    second signature would merge two)."""
    return first < reached or first == reached == _SIGNATURE


def _joined(run: list[ModelOutput]) -> ModelOutput:
    if len(run) == 1:
        return run[0]
    reasoning = [o.reasoning for o in run if o.reasoning is not None]
    last = run[-1]
    return ModelOutput(
        text="".join(o.text for o in run),
        reasoning="".join(reasoning) if reasoning else None,
        finish_reason=last.finish_reason,
        usage=last.usage,
        timing=last.timing,
        tool_calls=last.tool_calls,
        tool_call_deltas=join_tool_call_deltas([d for o in run for d in o.tool_call_deltas]),
        reasoning_signature=b"".join(o.reasoning_signature for o in run),
    )
