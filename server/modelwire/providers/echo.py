"""An instant provider for load tests and smoke tests: no upstream, no model, no network.

It answers every request at once with `chunks` deltas of `chunk_text` (optionally `chunk_interval_s`
apart), then a final chunk with finish_reason and usage, through the same service, admission,
deadline and interceptor path as any other provider. Benchmarks use it to measure what modelwire
itself costs; smoke tests use it to check a deployment (auth, TLS, balancers, clients) without a
provider behind it. Natively async: it never touches the thread pool, except to count a long prompt.

    [[models]]
    name = "echo"
    provider = "echo"
    chunks = 100            # deltas per stream (default 1)
    chunk_text = "hello"    # text of each delta (default "hello")
    chunk_interval_s = 0    # pause between deltas (default 0); 1 gives one delta per second

Token counts come from tiktoken (offline), with the model's name choosing the encoding as for
`openai` (an unknown name counts with cl100k_base, `exact = false`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Annotated, Self

from pydantic import Field, StrictFloat, StrictInt, StrictStr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core.settings import SECTION, ModelConfig
from modelwire.core.types import (
    Capability,
    FinishReason,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    TokenCount,
    Usage,
)
from modelwire.providers.base import ProxyLLMClient
from modelwire.tokenize.tiktoken_counter import count_tokens

DEFAULT_CONTEXT_LENGTH = 131072
DEFAULT_MAX_OUTPUT_TOKENS = 4096
DEFAULT_CHUNK_TEXT = "hello"
# A stand-in upstream for tests and benchmarks: it chats and streams, and refuses everything else.
DEFAULT_CAPABILITIES = (Capability.CHAT, Capability.STREAMING)


@pydantic_dataclass(config=SECTION)
class EchoOptions:
    chunks: Annotated[StrictInt, Field(ge=0)] = 1
    chunk_text: StrictStr = DEFAULT_CHUNK_TEXT
    chunk_interval_s: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] = 0.0


class EchoClient(ProxyLLMClient):
    provider = "echo"

    def __init__(
        self,
        metadata: ModelMetadata,
        executor: Executor | None,
        chunks: int,
        chunk_text: str,
        chunk_interval_s: float,
    ) -> None:
        super().__init__(metadata, executor)
        self.chunks = chunks
        self.chunk_text = chunk_text
        self.chunk_interval_s = chunk_interval_s
        self._chunk_tokens = count_tokens(metadata.model, chunk_text).count if chunk_text else 0
        # The service counts a prompt (its context check) just before the generation, whose usage
        # counts it again: the last count is kept, by the messages' identity (holding them keeps
        # it from being reused), so a unary call counts once.
        self._last_count: tuple[Sequence[ModelMessage], TokenCount] | None = None

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = params.options_as(EchoOptions)
        chunks, chunk_text, chunk_interval_s = (
            options.chunks,
            options.chunk_text,
            options.chunk_interval_s,
        )
        context_length = params.context_length or DEFAULT_CONTEXT_LENGTH
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=context_length,
            max_output_tokens=min(
                params.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS, context_length
            ),
            capabilities=params.capabilities_within(
                DEFAULT_CAPABILITIES, frozenset(DEFAULT_CAPABILITIES)
            ),
            metadata={"chunks": str(chunks), "chunk_interval_s": f"{chunk_interval_s:g}"},
        )
        return cls(metadata, executor, chunks, chunk_text, chunk_interval_s)

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        if isinstance(prompt, str):
            return await self.count_with(prompt, partial(count_tokens, self.default_model, prompt))
        last = self._last_count
        if last is not None and last[0] is prompt:
            return last[1]
        count = await self.count_with(prompt, partial(count_tokens, self.default_model, prompt))
        self._last_count = (prompt, count)
        return count

    def _plan(self, request: ModelRequest) -> tuple[int, FinishReason]:
        """How many chunks fit in max_new_tokens (the service always bounds it), and why it ends."""
        budget = request.sampling.max_new_tokens
        if budget is None or self._chunk_tokens == 0 or self.chunks * self._chunk_tokens <= budget:
            return self.chunks, FinishReason.STOP
        return budget // self._chunk_tokens, FinishReason.LENGTH

    async def _usage(self, request: ModelRequest, chunks: int) -> Usage:
        prompt = await self.count_token(self.default_model, request.messages)
        return Usage(prompt_tokens=prompt.count, completion_tokens=chunks * self._chunk_tokens)

    async def generate(self, request: ModelRequest) -> ModelOutput:
        chunks, finish = self._plan(request)
        if self.chunk_interval_s and chunks > 1:
            await asyncio.sleep(self.chunk_interval_s * (chunks - 1))
        return ModelOutput(
            text=self.chunk_text * chunks,
            finish_reason=finish,
            usage=await self._usage(request, chunks),
        )

    async def generate_stream(self, request: ModelRequest) -> AsyncGenerator[ModelOutput, None]:
        chunks, finish = self._plan(request)
        interval = self.chunk_interval_s
        text = self.chunk_text
        for index in range(chunks):
            if interval and index:
                await asyncio.sleep(interval)
            yield ModelOutput(text=text)
        yield ModelOutput(finish_reason=finish, usage=await self._usage(request, chunks))
