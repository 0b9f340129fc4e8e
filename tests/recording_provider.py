"""A test provider that accepts every field of the contract and records what reached it.

It answers with a fixed tool call (whole for Generate, in pieces for GenerateStream), a reasoning
signature and cache/reasoning usage, so tests can follow each new field from caller to provider
and back — directly and through a gateway — without an upstream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Executor
from typing import Self

from modelwire.core.settings import ModelConfig
from modelwire.core.types import (
    Capability,
    Embeddings,
    EmbedRequest,
    FinishReason,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    TokenCount,
    ToolCallDelta,
    Usage,
)
from modelwire.providers.base import ProxyLLMClient
from modelwire.tokenize.tiktoken_counter import count_tokens

PROVIDER = "recording-test"
ARGUMENT_PIECES = ('{"ci', 'ty": "Pa', 'ris", "unit"', ': "celsius"}')
SIGNATURE = b"sig-\x00\xff-bytes"
USAGE = Usage(
    prompt_tokens=40,
    completion_tokens=12,
    cached_prompt_tokens=32,
    cache_write_tokens=8,
    reasoning_tokens=5,
)


class RecordingClient(ProxyLLMClient):
    provider = PROVIDER
    requests: list[ModelRequest] = []
    embeds: list[EmbedRequest] = []

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=params.context_length or 8192,
            max_output_tokens=params.max_output_tokens or 1024,
            capabilities=params.capabilities_within(tuple(Capability), frozenset(Capability)),
        )
        return cls(metadata, executor)

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        return count_tokens("gpt-4o", prompt)

    async def generate_stream(self, request: ModelRequest) -> AsyncGenerator[ModelOutput, None]:
        RecordingClient.requests.append(request)
        yield ModelOutput(reasoning="thinking", reasoning_signature=SIGNATURE)
        yield ModelOutput(
            tool_call_deltas=(
                ToolCallDelta(
                    index=0, id="call_1", name="get_weather", arguments_delta=ARGUMENT_PIECES[0]
                ),
            )
        )
        for piece in ARGUMENT_PIECES[1:]:
            yield ModelOutput(tool_call_deltas=(ToolCallDelta(index=0, arguments_delta=piece),))
        yield ModelOutput(finish_reason=FinishReason.TOOL_CALLS, usage=USAGE)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        RecordingClient.embeds.append(request)
        vectors = tuple((float(len(text)), 1.0, -0.5) for text in request.inputs)
        return Embeddings(vectors=vectors, usage=Usage(prompt_tokens=len(request.inputs)))
