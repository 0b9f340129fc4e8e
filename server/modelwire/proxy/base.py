"""The ProxyLLMClient contract kept from DB-GPT, with streams of deltas and real cancellation.

A blocking provider implements only `sync_generate_stream`; the base class pumps it on a bounded
thread pool and stops it between two chunks once the async consumer goes away (cancel, deadline,
disconnect), so a cancelled stream frees its thread within one token. A provider with a native
async client overrides `generate_stream` and never touches the pool.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any, ClassVar, Self

from modelwire.core.types import (
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    TokenCount,
    merge_outputs,
)

MessageConverter = Callable[[Sequence[ModelMessage]], Sequence[ModelMessage]]

_END = object()


class ProxyLLMClient(ABC):
    """One configured model behind one provider."""

    provider: ClassVar[str]

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
    ) -> AsyncIterator[ModelOutput]:
        request = self.apply_converter(request, message_converter)
        async for chunk in self._pump(self.sync_generate_stream(request)):
            yield chunk

    def sync_generate_stream(self, request: ModelRequest) -> Iterator[ModelOutput]:
        """Blocking providers implement this; it runs on the executor, never on the event loop."""
        raise NotImplementedError(f"{type(self).__name__} implements neither sync nor async streaming")

    def sync_generate(self, request: ModelRequest) -> ModelOutput:
        return merge_outputs(list(self.sync_generate_stream(self.apply_converter(request))))

    async def _pump(self, chunks: Iterator[ModelOutput]) -> AsyncIterator[ModelOutput]:
        """Runs a blocking iterator on the executor and hands its chunks to the event loop."""
        if self._executor is None:
            raise RuntimeError(f"{type(self).__name__} is blocking but was given no executor")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def hand_over(item: object) -> None:
            # Once the consumer has left (cancel, deadline, shutdown) nobody reads the queue, and
            # its loop may already be closed: hand nothing more over.
            if not stop.is_set():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break
                    hand_over(chunk)
                    if stop.is_set():
                        break
            except BaseException as exc:  # handed to the consumer, which re-raises it
                hand_over(exc)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
                hand_over(_END)

        loop.run_in_executor(self._executor, run)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, ModelOutput)
                yield item
        finally:
            stop.set()
