"""A local GGUF model in-process through llama.cpp (llama/engine.py).

llama.cpp blocks, so this provider implements `sync_generate_stream` and the base class runs it on
the thread pool. One model (weights loaded once) carries `max_concurrency` sessions, one per
admission slot, so a slot always finds a session free. Each call builds its prompt from template
markers (control tokens) and message text (never control tokens), samples with its own seed, and
stops within one graph node of llama.cpp once the caller leaves.

Constrained output (`output_format`, a forced tool call) samples under a llama.cpp grammar
(llama/grammar.py builds it; llama/engine.py's ConstrainedSampler applies it), so every
token keeps the text a sentence of the grammar and the turn ends when the grammar is complete. A
request without them takes the unconstrained path, unchanged. Embeddings are the mean of the last
layer's hidden states of the same model (`LlamaSession.embed`), L2-normalised.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import logging
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, StrictInt, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core.cancellation import Cancellation
from modelwire.core.errors import (
    ContextLengthExceeded,
    FieldViolation,
    InvalidRequest,
    StartupFailure,
)
from modelwire.core.settings import PROCESSES_ENV, SECTION, ModelConfig, existing_file
from modelwire.core.types import (
    Capability,
    Embeddings,
    EmbedRequest,
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
from modelwire.providers.base import ProxyLLMClient
from modelwire.providers.blocking import until_done
from modelwire.providers.llama.build import EXTRA_WEIGHT_BUFFERS, LlamaBuild, cpu_flags
from modelwire.providers.llama.constraints import (
    Constraint,
    combination_refusals,
    constraint_for,
    name_refusals,
)
from modelwire.providers.llama.engine import (
    Aborted,
    GrammarDeadEnd,
    GrammarError,
    LlamaFailure,
    LlamaModel,
    LlamaSession,
    Sampling,
)
from modelwire.providers.llama.gemma_format import END_OF_TURN, PromptPiece, format_gemma_chat
from modelwire.providers.llama.model_files import embedded_model_path
from modelwire.providers.llama.stop_strings import StopStringFilter

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_N_BATCH = 512
WARM_UP_TOKENS = 2
# The output bound of a call that sets no max_new_tokens: a small model left unbounded repeats
# itself until the context is full (about 2,000 tokens and a minute on two cores).
DEFAULT_MAX_NEW_TOKENS = 256
CLOSE_WAIT_S = 30.0
# llama.cpp's grammars enforce json_object, json_schema and GBNF; tools only when a call is forced.
DEFAULT_CAPABILITIES = (
    Capability.CHAT,
    Capability.STREAMING,
    Capability.TOOLS,
    Capability.JSON_SCHEMA,
    Capability.GRAMMAR,
    Capability.EMBEDDINGS,
)


def _default_threads() -> int:
    """All cores, shared out among the processes `--processes` starts: llama.cpp threads spin while
    they wait, so oversubscribing cores slows every process down."""
    processes = int(os.environ.get(PROCESSES_ENV, "1"))
    return max(1, (os.cpu_count() or 1) // processes)


@pydantic_dataclass(config=SECTION)
class LlamaCppOptions:
    model_path: Path | None = None
    n_threads: Annotated[StrictInt, Field(ge=1)] = dataclasses.field(
        default_factory=_default_threads
    )
    n_batch: Annotated[StrictInt, Field(ge=1)] = DEFAULT_N_BATCH
    default_max_new_tokens: Annotated[StrictInt, Field(ge=1)] = DEFAULT_MAX_NEW_TOKENS
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
    default_max_new_tokens: int

    def __init__(
        self,
        metadata: ModelMetadata,
        executor: Executor,
        model: LlamaModel,
        sessions: list[LlamaSession],
        *,
        default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        super().__init__(metadata, executor)
        self.default_max_new_tokens = min(default_max_new_tokens, metadata.max_output_tokens)
        self._model = model
        self.sessions = sessions
        self._idle: queue.SimpleQueue[LlamaSession] = queue.SimpleQueue()
        for session in sessions:
            self._idle.put(session)
        (self._end_of_turn,) = model.tokenize(END_OF_TURN, special=True)
        # A cached property, read here so its pass over the vocabulary runs once at start, not on
        # the first constrained call's time.
        _ = model.unsampleable
        self.activity = Activity()
        # The service counts a prompt (its context check) just before generating it: the tokens
        # counted last are kept, so a generation does not tokenize the same messages again. Keyed
        # by the messages' identity, which holding them keeps from being reused.
        self._counted: deque[tuple[Sequence[ModelMessage], list[int]]] = deque(
            maxlen=2 * len(sessions)
        )
        self._template_tokens: dict[PromptPiece, tuple[int, ...]] = {}

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = params.options_as(LlamaCppOptions)
        build = LlamaBuild.installed()
        build.check_runs_on(cpu_flags())
        model_path = options.model_path or embedded_model_path()
        context_length = params.context_length or 2048
        try:
            model = LlamaModel(model_path, use_extra_buffers=EXTRA_WEIGHT_BUFFERS)
            sessions = [
                LlamaSession(
                    model,
                    n_ctx=context_length,
                    n_batch=min(options.n_batch, context_length),
                    n_threads=options.n_threads,
                )
                for _ in range(params.max_concurrency)
            ]
        except LlamaFailure as error:
            raise StartupFailure(f"model {params.name!r}: {error}") from error
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=context_length,
            max_output_tokens=params.max_output_tokens or context_length,
            capabilities=params.capabilities_within(
                DEFAULT_CAPABILITIES, frozenset(DEFAULT_CAPABILITIES)
            ),
            metadata={
                "gguf": model_path.name,
                "chat_format": options.chat_format,
                "embedding_dimensions": str(model.n_embd),
                "embedding_pooling": "mean",
            },
        )
        logger.info(
            "model %s: %s, %d session(s), %d threads, extra buffers %s (llama.cpp build: %s)",
            params.name,
            model_path.name,
            len(sessions),
            options.n_threads,
            "on" if model.use_extra_buffers else "off",
            " ".join(sorted(build.features)),
        )
        bound = options.default_max_new_tokens
        return cls(metadata, executor, model, sessions, default_max_new_tokens=bound)

    @property
    def model(self) -> LlamaModel:
        return self._model

    def prompt_tokens(self, messages: Sequence[ModelMessage], instruction: str = "") -> list[int]:
        """Exactly what generation feeds the model: BOS, markers as control tokens, text as text.
        `instruction` describes a forced tool call (CountToken counts the messages alone)."""
        if not instruction:
            for counted, tokens in tuple(self._counted):
                if counted is messages:
                    return list(tokens)
        tokens = [self._model.bos] if self._model.adds_bos else []
        for piece in format_gemma_chat(messages, instruction):
            tokens += self._piece_tokens(piece)
        if not instruction:
            self._counted.append((messages, tokens))
            return list(tokens)
        return tokens

    def _piece_tokens(self, piece: PromptPiece) -> Sequence[int]:
        """A template piece's tokens are kept: llama.cpp's tokenizer walks all of gemma's 6,000-odd
        special tokens on every call, and with the model's weights streaming through the CPU's
        caches at every token that walk costs about 0.5 ms per call in a serving worker (py-spy);
        a prompt of one message is six pieces, five of them template."""
        if not piece.template:
            return self._model.tokenize(piece.text, special=piece.marker)
        tokens = self._template_tokens.get(piece)
        if tokens is None:
            tokens = self._template_tokens[piece] = tuple(
                self._model.tokenize(piece.text, special=piece.marker)
            )
        return tokens

    def unsupported(self, request: ModelRequest) -> list[FieldViolation]:
        """A message's name (gemma's turns have no place for one), a tool choice the model cannot
        make, and what would break constrained output (stop strings). What the grammars cannot
        enforce (a schema keyword, an unparsable GBNF) is found when the grammar is built, on the
        pool (`sync_generate_stream`): a big schema takes llama.cpp long enough to parse that the
        event loop must not wait for it."""
        named = f"model {self.default_model!r}"
        violations = name_refusals(request.messages, named)
        if request.output_format is not None or request.tools:
            combination_refusals(request, named, violations)
        return violations

    def unsupported_embedding(self, request: EmbedRequest) -> list[FieldViolation]:
        n_embd = self._model.n_embd
        if request.dimensions is not None and request.dimensions != n_embd:
            return [
                FieldViolation(
                    "dimensions",
                    f"model {self.default_model!r} makes {n_embd}-dimensional embeddings and "
                    "cannot shorten them (it is not Matryoshka-trained): leave dimensions unset "
                    f"or set it to {n_embd}",
                )
            ]
        return []

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """On the pool, under the caller's admission slot; a caller who leaves aborts the decode in
        progress, and the slot is released only once the thread has stopped."""
        cancellation = Cancellation()
        job = self.pool().submit(lambda: self._sync_embed(request, cancellation))
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            cancellation.cancel()
            if not job.cancel():
                await until_done(job)
            raise

    def _sync_embed(self, request: EmbedRequest, cancellation: Cancellation) -> Embeddings:
        context_length = self._metadata.context_length
        inputs = [
            [self._model.bos, *self._model.tokenize(text, special=False)] for text in request.inputs
        ]
        too_long = [
            FieldViolation(
                f"inputs[{index}]",
                f"{len(tokens)} tokens, more than the {context_length} of model "
                f"{self.default_model!r}'s context; shorten it",
            )
            for index, tokens in enumerate(inputs)
            if len(tokens) > context_length
        ]
        if too_long:
            raise InvalidRequest(too_long)
        vectors: list[tuple[float, ...]] = []
        with (
            self.activity.generation(),
            self._session() as session,
            session.embedding(cancellation),
        ):
            for tokens in inputs:
                if cancellation.cancelled:
                    raise Aborted
                vector = session.embed(tokens)
                norm = float(math.sqrt(float(vector @ vector)))
                vectors.append(tuple((vector / norm if norm > 0 else vector).tolist()))
        return Embeddings(
            vectors=tuple(vectors), usage=Usage(prompt_tokens=sum(len(tokens) for tokens in inputs))
        )

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        def count() -> TokenCount:
            if isinstance(prompt, str):
                tokens = self._model.tokenize(prompt, special=False)
            else:
                tokens = self.prompt_tokens(prompt)
            return TokenCount(
                count=len(tokens), tokenizer=f"gguf:{self._metadata.metadata['gguf']}", exact=True
            )

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
        if not await asyncio.to_thread(
            self.activity.wait_for, lambda activity: activity.running == 0, CLOSE_WAIT_S
        ):
            logger.error(
                "model %s: a generation did not stop within %.0fs; its memory is not freed",
                self.default_model,
                CLOSE_WAIT_S,
            )
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

    def _prepared(
        self, request: ModelRequest, instruction: str = ""
    ) -> tuple[list[int], int, Sampling]:
        """The prompt's tokens, the tokens it leaves room for, and the call's sampler settings."""
        prompt = self.prompt_tokens(request.messages, instruction)
        if len(prompt) >= self._metadata.context_length:
            raise ContextLengthExceeded(request.model, len(prompt), self._metadata.context_length)
        sampling = request.sampling
        room = self._metadata.context_length - len(prompt)
        max_new_tokens = min(sampling.max_new_tokens or self.default_max_new_tokens, room)
        call_sampling = Sampling(
            temperature=DEFAULT_TEMPERATURE
            if sampling.temperature is None
            else sampling.temperature,
            top_p=DEFAULT_TOP_P if sampling.top_p is None else sampling.top_p,
            seed=Sampling.fresh_seed()
            if sampling.seed is None
            else Sampling.seed_from(sampling.seed),
            presence_penalty=sampling.presence_penalty or 0.0,
            frequency_penalty=sampling.frequency_penalty or 0.0,
        )
        return prompt, max_new_tokens, call_sampling

    def sync_generate_stream(
        self, request: ModelRequest, cancellation: Cancellation
    ) -> Iterator[ModelOutput]:
        if request.output_format is not None or request.tools:
            constraint, refused = constraint_for(request, self._model, self.default_model)
            if refused:
                raise InvalidRequest(refused)
            if constraint is not None:
                yield from self._constrained_stream(request, constraint, cancellation)
                return
        prompt, max_new_tokens, call_sampling = self._prepared(request)
        stops = StopStringFilter(request.sampling.stop)
        decoder = TokenDecoder(self._model)
        run = _Run()
        with (
            self.activity.generation(),
            self._session() as session,
            session.call(call_sampling, cancellation),
        ):
            try:
                for token in self._tokens(session, prompt, max_new_tokens, cancellation, run):
                    text = stops.feed(decoder.decode(token))
                    if text:
                        yield ModelOutput(text=text)
                    if stops.stopped:
                        run.finish_reason = FinishReason.STOP
                        break
            except Aborted:
                return
        if cancellation.cancelled:
            return
        tail = stops.feed(decoder.flush()) + stops.flush()
        yield ModelOutput(
            text=tail,
            finish_reason=run.finish_reason,
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=run.completion_tokens),
        )

    def _tokens(
        self,
        session: LlamaSession,
        prompt: list[int],
        max_new_tokens: int,
        cancellation: Cancellation,
        run: _Run,
    ) -> Iterator[int]:
        """The prompt evaluated, then each generated token until the turn ends (`run` says STOP),
        `max_new_tokens` or a cancel; a token is fed back only when the consumer asks for the
        next."""
        with self.activity.prompt_evaluation():
            session.evaluate_prompt(prompt)
        while not cancellation.cancelled:
            token = session.sample()
            if token == self._end_of_turn or self._model.is_end(token):
                run.finish_reason = FinishReason.STOP
                return
            run.completion_tokens += 1
            yield token
            if run.completion_tokens >= max_new_tokens:
                return
            session.feed(token)

    def _constrained_stream(
        self, request: ModelRequest, constraint: Constraint, cancellation: Cancellation
    ) -> Iterator[ModelOutput]:
        """Generation under the constraint's grammar: text for an output format, the deltas of one
        tool call for a forced tool (finish_reason TOOL_CALLS once its grammar is complete)."""
        prompt, max_new_tokens, call_sampling = self._prepared(request, constraint.instruction)
        decoder = TokenDecoder(self._model)
        call = constraint.call_stream()
        run = _Run()
        try:
            with (
                self.activity.generation(),
                self._session() as session,
                session.call(call_sampling, cancellation, constraint.grammar),
            ):
                try:
                    for token in self._tokens(session, prompt, max_new_tokens, cancellation, run):
                        text = decoder.decode(token)
                        if text:
                            if call is None:
                                yield ModelOutput(text=text)
                            else:
                                deltas = call.feed(text)
                                if deltas:
                                    yield ModelOutput(tool_call_deltas=deltas)
                except Aborted:
                    return
        except (
            GrammarError
        ) as error:  # `constraint_for` checked the grammar just before: a bug if here
            refused = f"model {self.default_model!r}: the grammar was refused: {error.reason}"
            raise InvalidRequest([FieldViolation(constraint.field, refused)]) from None
        except GrammarDeadEnd:
            raise InvalidRequest(
                [
                    FieldViolation(
                        constraint.field,
                        f"model {self.default_model!r}: no token of its vocabulary continues the "
                        f"grammar after {run.completion_tokens} tokens",
                    )
                ]
            ) from None
        if cancellation.cancelled:
            return
        tail = decoder.flush()
        usage = Usage(prompt_tokens=len(prompt), completion_tokens=run.completion_tokens)
        if call is None:
            yield ModelOutput(text=tail, finish_reason=run.finish_reason, usage=usage)
            return
        complete = run.finish_reason is FinishReason.STOP
        yield ModelOutput(
            tool_call_deltas=call.finish(tail, complete),
            finish_reason=FinishReason.TOOL_CALLS if complete else run.finish_reason,
            usage=usage,
        )


@dataclasses.dataclass(slots=True)
class _Run:
    """How a generation went, told by `LlamaCppClient._tokens` to the loop that consumes it."""

    completion_tokens: int = 0
    finish_reason: FinishReason = FinishReason.LENGTH
