"""A blocking test provider: implements only sync_generate_stream, like a provider whose SDK blocks.

It records what the base class did to it (threads in use, chunks produced after a cancel, closes),
so tests can check the contract rather than trust it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from typing import Annotated, Self

from pydantic import Field, StrictFloat, StrictInt, StrictStr
from pydantic.dataclasses import dataclass

from modelwire.core.cancellation import Cancellation
from modelwire.core.settings import SECTION, ModelConfig
from modelwire.core.types import (
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

PROVIDER = "blocking-test"


@dataclass(config=SECTION)
class BlockingOptions:
    tokens: Annotated[StrictInt, Field(ge=0)] = 20
    token_delay_s: Annotated[StrictFloat, Field(ge=0)] = 0.0
    warm_up_error: StrictStr | None = None


class BlockingTestClient(ProxyLLMClient):
    """Yields `tokens` words "w0 w1 …", each after `token_delay_s`; counts tokens as gpt-4 does."""

    provider = PROVIDER
    runs_on_pool = True
    instances: list[BlockingTestClient] = []

    def __init__(
        self,
        metadata: ModelMetadata,
        executor: Executor,
        tokens: int,
        token_delay_s: float,
        warm_up_error: str | None,
    ) -> None:
        super().__init__(metadata, executor)
        self.tokens = tokens
        self.token_delay_s = token_delay_s
        self.warm_up_error = warm_up_error
        # Set when a generation sees its cancellation; while `hold` is set up and not released, that
        # generation then keeps its thread (a provider slow to stop).
        self.cancel_seen = threading.Event()
        self.hold: threading.Event | None = None
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.started = 0
        self.closed = 0
        self.produced = 0
        self.all_closed = threading.Condition(self.lock)
        BlockingTestClient.instances.append(self)

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = params.options_as(BlockingOptions)
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=params.context_length or 8192,
            max_output_tokens=params.max_output_tokens or 4096,
        )
        return cls(metadata, executor, options.tokens, options.token_delay_s, options.warm_up_error)

    async def warm_up(self) -> None:
        if self.warm_up_error is not None:
            raise RuntimeError(self.warm_up_error)

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        return count_tokens("gpt-4", prompt)

    def sync_generate_stream(
        self, request: ModelRequest, cancellation: Cancellation
    ) -> Iterator[ModelOutput]:
        with self.lock:
            self.active += 1
            self.started += 1
            self.max_active = max(self.max_active, self.active)
        try:
            limit = min(self.tokens, request.sampling.max_new_tokens or self.tokens)
            for index in range(limit):
                if cancellation.cancelled:
                    return
                time.sleep(self.token_delay_s)
                with self.lock:
                    self.produced += 1
                yield ModelOutput(text=f"w{index} ")
            yield ModelOutput(
                finish_reason=FinishReason.LENGTH if limit < self.tokens else FinishReason.STOP,
                usage=Usage(prompt_tokens=1, completion_tokens=limit),
            )
        finally:
            if cancellation.cancelled:
                self.cancel_seen.set()
                if self.hold is not None:
                    self.hold.wait(30)
            with self.lock:
                self.active -= 1
                self.closed += 1
                self.all_closed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once no generation runs any more (every started generator was closed)."""
        with self.lock:
            return self.all_closed.wait_for(lambda: self.active == 0, timeout)
