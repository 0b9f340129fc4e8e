"""The ProxyLLMClient contract kept from DB-GPT, with streams of deltas and real cancellation.

A blocking provider implements only `sync_generate_stream`; the base class pumps it on the thread
pool (blocking.py), which also cancels it for real. A provider with a native async client
overrides `generate_stream` and never touches the pool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from functools import partial
from typing import Any, ClassVar, Self

from modelwire.core.cancellation import Cancellation
from modelwire.core.errors import FieldViolation
from modelwire.core.types import (
    Embeddings,
    EmbedRequest,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    TokenCount,
    merge_outputs,
)
from modelwire.providers.blocking import pump, run_blocking
from modelwire.tokenize.placement import counts_inline


class ProxyLLMClient(ABC):
    """One configured model behind one provider."""

    provider: ClassVar[str]
    # True for blocking providers: each running call occupies a pool thread until it ends.
    runs_on_pool: ClassVar[bool] = False
    # The output bound of a call that sets no max_new_tokens; None: the room left in the context.
    default_max_new_tokens: int | None = None
    # True when the provider says when a request reaches its upstream (core/dispatch.py); for the
    # others a call's request is with its provider as soon as the call starts.
    signals_dispatch: ClassVar[bool] = False

    def __init__(
        self,
        metadata: ModelMetadata,
        executor: Executor | None = None,
    ) -> None:
        self._metadata = metadata
        self._executor = executor

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

    async def warm_up(self) -> None:  # noqa: B027 an optional hook: nothing to warm by default
        """Called once at start, before the worker reports SERVING: a provider that can only fail
        on its first call (a local model, a native build) fails here instead."""

    async def close(self) -> None:  # noqa: B027 an optional hook: nothing to release by default
        """Releases connections or model memory; called once at shutdown."""

    async def generate(self, request: ModelRequest) -> ModelOutput:
        return merge_outputs([chunk async for chunk in self.generate_stream(request)])

    async def generate_stream(self, request: ModelRequest) -> AsyncGenerator[ModelOutput, None]:
        produce = partial(self.sync_generate_stream, request)
        async with aclosing(pump(self.pool(), produce)) as chunks:
            async for chunk in chunks:
                yield chunk

    def sync_generate_stream(
        self, request: ModelRequest, cancellation: Cancellation
    ) -> Iterator[ModelOutput]:
        """Blocking providers implement this; it runs on the executor, never on the event loop, and
        stops soon after `cancellation` is set (the base class also stops between two chunks)."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither sync nor async streaming"
        )

    def pool(self) -> Executor:
        """The executor blocking work runs on (blocking.py)."""
        if self._executor is None:
            raise RuntimeError(f"{type(self).__name__} is blocking but was given no executor")
        return self._executor

    async def count_with(
        self, prompt: str | Sequence[ModelMessage], count: Callable[[], TokenCount]
    ) -> TokenCount:
        """`count()` in place for a short prompt, on the pool for a long one
        (tokenize/placement.py)."""
        if self._executor is None or counts_inline(prompt):
            return count()
        return await run_blocking(self._executor, count)
