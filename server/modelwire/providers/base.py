"""The ProxyLLMClient contract kept from DB-GPT, with streams of deltas and real cancellation.

A blocking provider implements only `sync_generate_stream`; the base class pumps it on the thread
pool. When the async consumer goes away (cancel, deadline, disconnect), a job that has not started
is dropped, a running one is told through its `Cancellation` and waited for: the consumer returns
only once the thread has stopped, so whatever bounds the consumer (the model's admission slot)
bounds the thread too. A provider with a native async client overrides `generate_stream` and never
touches the pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import replace
from typing import Any, ClassVar, Self, TypeVar

from modelwire.core.cancellation import Cancellation
from modelwire.core.errors import FieldViolation
from modelwire.tokenize.placement import counts_inline
from modelwire.core.types import (
    EmbedRequest,
    Embeddings,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    TokenCount,
    merge_outputs,
)

MessageConverter = Callable[[Sequence[ModelMessage]], Sequence[ModelMessage]]
T = TypeVar("T")

_END = object()


async def _until_done(job: concurrent.futures.Future[Any]) -> None:
    """Waits for a started job even if the waiting task is cancelled meanwhile; that cancel is
    re-raised once the job is done. The job's own outcome is the caller's to read, not ours."""
    waiter = asyncio.wrap_future(job)
    interrupted = False
    while not waiter.done():
        try:
            await asyncio.wait([waiter])
        except asyncio.CancelledError:
            interrupted = True
    if not waiter.cancelled():
        waiter.exception()  # retrieved, so asyncio does not warn about it
    if interrupted:
        raise asyncio.CancelledError


class ProxyLLMClient(ABC):
    """One configured model behind one provider."""

    provider: ClassVar[str]
    # True for blocking providers: each running call occupies a pool thread until it ends.
    runs_on_pool: ClassVar[bool] = False
    # The output bound of a call that sets no max_new_tokens; None: the room left in the context.
    default_max_new_tokens: int | None = None

    def __init__(
        self,
        metadata: ModelMetadata,
        executor: Executor | None = None,
        message_converter: MessageConverter | None = None,
    ) -> None:
        self._metadata = metadata
        self._executor = executor
        self._message_converter = message_converter

    @classmethod
    @abstractmethod
    def new_client(cls, params: Any, executor: Executor) -> Self:
        """Builds a client from its model's configuration; `executor` runs blocking work."""

    @property
    def default_model(self) -> str:
        return self._metadata.model

    def models(self) -> list[ModelMetadata]:
        return [self._metadata]

    @abstractmethod
    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        """Counts a plain prompt as is, or chat messages as the model will see them."""

    def unsupported(self, request: ModelRequest) -> list[FieldViolation]:
        """The provider's own refusals beyond the model's capabilities (worker/capabilities.py):
        a field combination its upstream cannot express. Each names the field and the model."""
        return []

    def unsupported_embedding(self, request: EmbedRequest) -> list[FieldViolation]:
        return []

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Only called for a model with CAPABILITY_EMBEDDINGS, which a provider grants only if it
        overrides this."""
        raise NotImplementedError(f"{type(self).__name__} has no embeddings")

    async def warm_up(self) -> None:
        """Called once at start, before the worker reports SERVING: a provider that can only fail
        on its first call (a local model, a native build) fails here instead."""

    async def close(self) -> None:
        """Releases connections or model memory; called once at shutdown."""

    def apply_converter(
        self, request: ModelRequest, message_converter: MessageConverter | None = None
    ) -> ModelRequest:
        converter = message_converter or self._message_converter
        if converter is None:
            return request
        return replace(request, messages=tuple(converter(request.messages)))

    async def generate(
        self, request: ModelRequest, message_converter: MessageConverter | None = None
    ) -> ModelOutput:
        return merge_outputs([chunk async for chunk in self.generate_stream(request, message_converter)])

    async def generate_stream(
        self, request: ModelRequest, message_converter: MessageConverter | None = None
    ) -> AsyncGenerator[ModelOutput, None]:
        request = self.apply_converter(request, message_converter)
        async with aclosing(self._pump(lambda cancellation: self.sync_generate_stream(request, cancellation))) as chunks:
            async for chunk in chunks:
                yield chunk

    def sync_generate_stream(self, request: ModelRequest, cancellation: Cancellation) -> Iterator[ModelOutput]:
        """Blocking providers implement this; it runs on the executor, never on the event loop, and
        stops soon after `cancellation` is set (the base class also stops between two chunks)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither sync nor async streaming")

    def sync_generate(self, request: ModelRequest) -> ModelOutput:
        return merge_outputs(list(self.sync_generate_stream(self.apply_converter(request), Cancellation())))

    def _submit(self, work: Callable[[], T]) -> concurrent.futures.Future[T]:
        if self._executor is None:
            raise RuntimeError(f"{type(self).__name__} is blocking but was given no executor")
        return self._executor.submit(work)

    async def run_blocking(self, work: Callable[[], T]) -> T:
        """`work()` on the executor. If the caller leaves first, work not yet started never starts and
        started work is waited for, so the caller never outlives the thread it occupies."""
        job = self._submit(work)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if not job.cancel():
                await _until_done(job)
            raise

    async def count_with(self, prompt: str | Sequence[ModelMessage], count: Callable[[], TokenCount]) -> TokenCount:
        """`count()` in place for a short prompt, on the pool for a long one (tokenize/placement.py)."""
        if self._executor is None or counts_inline(prompt):
            return count()
        return await self.run_blocking(count)

    async def _pump(self, produce: Callable[[Cancellation], Iterator[ModelOutput]]) -> AsyncGenerator[ModelOutput, None]:
        """Runs a blocking iterator on the executor and hands its chunks to the event loop.

        The thread wakes the loop only when the loop has taken everything handed over before: a
        loop that lags behind (a busy worker) then takes the chunks in batches, one wake-up for
        several, instead of one cross-thread wake-up per token."""
        loop = asyncio.get_running_loop()
        handed: deque[object] = deque()
        lock = threading.Lock()
        ready = asyncio.Event()
        wake_pending = False
        cancellation = Cancellation()

        def hand_over(item: object) -> None:
            nonlocal wake_pending
            # Once the consumer has left nobody reads the chunks, and its loop may be closing.
            if cancellation.cancelled:
                return
            with lock:
                handed.append(item)
                if wake_pending:
                    return
                wake_pending = True
            loop.call_soon_threadsafe(ready.set)

        def run() -> None:
            if cancellation.cancelled:  # left while this job waited for a thread
                return
            chunks = produce(cancellation)
            try:
                for chunk in chunks:
                    if cancellation.cancelled:
                        break
                    hand_over(chunk)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                hand_over(exc)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
                hand_over(_END)

        job = self._submit(run)
        try:
            while True:
                await ready.wait()
                with lock:
                    batch = list(handed)
                    handed.clear()
                    wake_pending = False
                    ready.clear()
                for item in batch:
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, ModelOutput)
                    yield item
        finally:
            cancellation.cancel()
            if not job.cancel():
                await _until_done(job)
