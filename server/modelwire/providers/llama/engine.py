"""llama.cpp driven through its C API (llama-cpp-python's ctypes bindings), not through `Llama`.

`llama_cpp.Llama` cannot do four things the worker needs: load a model without the extra weight
buffers (the AMX repack that segfaults on Sapphire Rapids, llama.cpp #20824), render a token
longer than 32 bytes (its detokenizer's buffer is fixed), sample each call with its own seed (the
seed sticks to the instance), and stop during prompt evaluation. The C API does all four, so this
module holds the few calls modelwire makes and nothing else.

One `LlamaModel` holds the weights and the vocabulary; each `LlamaSession` is a context (KV cache)
on it and runs one generation at a time. A session's abort flag is read by ggml between two graph
nodes without Python or the GIL: the abort callback is libc's `strlen` over a two-byte buffer, so
"aborted" is the flag byte being non-zero (`bool (*)(void *)` and `size_t strlen(const char *)`
agree in every x86-64 and arm64 calling convention for a result of 0 or 1).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from modelwire.core.cancellation import Cancellation
from modelwire.providers.llama.gbnf_check import GbnfSyntaxError, check_gbnf

logger = logging.getLogger(__name__)

# LLAMA_DEFAULT_SEED: a dist sampler given it draws a random seed of its own.
_RANDOM_SEED = 0xFFFFFFFF
_DECODE_OK = 0
_DECODE_ABORTED = 2
_LIBC = ctypes.CDLL(None)
_STRLEN_ADDRESS = ctypes.cast(_LIBC.strlen, ctypes.c_void_p).value
assert _STRLEN_ADDRESS is not None
_ABORT_WHEN_NONZERO_BYTE = llama_cpp.ggml_abort_callback(_STRLEN_ADDRESS)

_backend_ready = False
# Tokens per decode when embedding (module `LlamaSession.embed`).
EMBED_PIECE_TOKENS = 32


class LlamaFailure(RuntimeError):
    """llama.cpp refused an operation (load, context, decode): a bug or a broken build, not the
    caller's fault."""


class Aborted(Exception):
    """The call was cancelled while llama.cpp was evaluating; nothing more is computed for it."""


class GrammarError(ValueError):
    """llama.cpp refused a GBNF grammar; `reason` is what it said."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class GrammarSyntaxError(GrammarError):
    """The grammar does not parse (gbnf_check.py); `reason` names a line and column."""


class GrammarDeadEnd(Exception):
    """No token of the vocabulary continues the grammar (a grammar whose language this vocabulary
    cannot spell)."""


_GGML_LOG_ERROR = 4
_ERRORS_KEPT = 5
_errors = threading.local()
_GGML_LOG_CONTINUE = 5
_last_log_level = 0


def _log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log, into ours at debug level (a line per tensor at load); llama-cpp-python's own
    callback misreads ggml's levels and prints warnings to stderr."""
    global _last_log_level
    if level != _GGML_LOG_CONTINUE:
        _last_log_level = level
    message = text.decode("utf-8", errors="replace").rstrip()
    if not message:
        return
    logger.debug("llama.cpp: %s", message)
    if _last_log_level == _GGML_LOG_ERROR:
        errors = getattr(_errors, "lines", None)
        if errors is None:
            errors = _errors.lines = []
        errors.append(message)
        del errors[:-_ERRORS_KEPT]


def _last_errors() -> str:
    """llama.cpp's error lines logged on this thread since the last call, to explain a failure.
    They are not logged as errors: an abort (a cancelled call) makes llama.cpp log three of them."""
    lines: list[str] = getattr(_errors, "lines", None) or []
    _errors.lines = []
    return f" (llama.cpp: {'; '.join(lines)})" if lines else ""


_LOG_CALLBACK = llama_cpp.llama_log_callback(_log)  # kept referenced: C holds only its address


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True, slots=True)
class Sampling:
    """One call's sampler settings; `seed` is always set (a fresh one when the caller gave none)."""

    temperature: float
    top_p: float
    seed: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # llama-cpp-python's defaults, so texts match what its users know from `Llama.generate`.
    top_k: int = 40
    min_p: float = 0.05
    penalty_last_n: int = 64

    @staticmethod
    def fresh_seed() -> int:
        return secrets.randbelow(_RANDOM_SEED)

    @staticmethod
    def seed_from(seed: int) -> int:
        """A caller's int64 seed as llama.cpp's 32 bits, never the value llama.cpp reads as
        "random"."""
        return seed % _RANDOM_SEED


class LlamaModel:
    """Weights and vocabulary, loaded once and shared by every session and tokenization."""

    def __init__(self, path: Path, *, use_extra_buffers: bool, vocab_only: bool = False) -> None:
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = use_extra_buffers
        params.vocab_only = vocab_only
        self.use_extra_buffers = use_extra_buffers
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise LlamaFailure(f"llama.cpp could not load {path}{_last_errors()}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    @property
    def handle(self) -> Any:
        return self._model

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Tokens of `text` alone (no BOS); `special` lets marker text become control tokens, so it
        is True only for template markers, never for what a caller wrote."""
        data = text.encode("utf-8")
        capacity = len(data) + 1
        while True:
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, capacity, False, special
            )
            if count >= 0:
                return list(buffer[:count])
            capacity = -count

    def piece(self, token: int) -> bytes:
        """The token's whole byte sequence, however long (control tokens render as nothing)."""
        buffer = ctypes.create_string_buffer(64)
        length = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if length < 0:
            buffer = ctypes.create_string_buffer(-length)
            length = llama_cpp.llama_token_to_piece(
                self._vocab, token, buffer, len(buffer), 0, False
            )
        return buffer.raw[:length]

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def vocab_size(self) -> int:
        return int(llama_cpp.llama_vocab_n_tokens(self._vocab))

    @property
    def n_embd(self) -> int:
        return int(llama_cpp.llama_model_n_embd(self._model))

    @functools.cached_property
    def unsampleable(self) -> npt.NDArray[np.int64]:
        """Control tokens that do not end generation (<start_of_turn>, <unused…>…): they render as
        nothing, while a grammar would read their marker text, so constrained sampling masks
        them."""
        return np.array(
            [
                t
                for t in range(self.vocab_size())
                if llama_cpp.llama_vocab_is_control(self._vocab, t) and not self.is_end(t)
            ],
            dtype=np.int64,
        )

    def grammar_sampler(self, gbnf: str) -> Any:
        """A llama.cpp grammar sampler for `gbnf` (start symbol `root`); GrammarSyntaxError where it
        does not parse (checked first: llama.cpp would print it to stderr), GrammarError with
        llama.cpp's reason for what it refuses after parsing."""
        try:
            check_gbnf(gbnf, lambda text: len(self.tokenize(text, special=True)) == 1)
        except GbnfSyntaxError as error:
            raise GrammarSyntaxError(str(error)) from None
        _last_errors()  # forget what earlier calls on this thread left
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            reason = _last_errors().removeprefix(" (llama.cpp: ").removesuffix(")")
            raise GrammarError(reason or "llama.cpp could not parse the grammar")
        return sampler

    def check_grammar(self, gbnf: str) -> None:
        llama_cpp.llama_sampler_free(self.grammar_sampler(gbnf))

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None


@dataclass
class SessionStats:
    """What the session did, for tests and gauges: read under the owner's lock."""

    tokens_evaluated: int = 0
    decodes_aborted: int = 0
    last_abort_latency_s: float | None = None


class LlamaSession:
    """A context on a model: evaluates a prompt in `n_batch` pieces and samples tokens after it."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_batch: int, n_threads: int) -> None:
        self.model = model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self._ctx = llama_cpp.llama_init_from_model(model.handle, params)
        if not self._ctx:
            raise LlamaFailure(
                f"llama.cpp could not create a context of {n_ctx} tokens{_last_errors()}"
            )
        self._abort_flag = ctypes.create_string_buffer(2)
        self._abort_requested_at = 0.0
        llama_cpp.llama_set_abort_callback(
            self._ctx, _ABORT_WHEN_NONZERO_BYTE, ctypes.cast(self._abort_flag, ctypes.c_void_p)
        )
        self._one_token = (llama_cpp.llama_token * 1)()
        self._sampler: Any = None
        self._constrained: ConstrainedSampler | None = None
        self.stats = SessionStats()

    def abort(self) -> None:
        """Any thread: the running or next decode stops after the graph node in progress."""
        self._abort_requested_at = time.perf_counter()
        self._abort_flag[0] = b"\x01"

    def _aborted(self) -> bool:
        return self._abort_flag[0] == b"\x01"

    @contextmanager
    def call(
        self, sampling: Sampling, cancellation: Cancellation, grammar: str | None = None
    ) -> Iterator[None]:
        """One call on an empty cache with its own sampler; cancelling it aborts any decode inside.
        With a GBNF `grammar`, every sampled token keeps the text a sentence of it (GrammarError
        before anything runs if llama.cpp refuses the grammar).

        Nothing of an earlier call is kept: reusing a cached prefix changes how the rest of the
        prompt is split into batches, which changes the logits enough to flip a greedy choice, and
        a seeded or greedy call must give the same text every time."""
        self._abort_flag[0] = b"\x00"
        _last_errors()  # forget what earlier calls on this thread left
        if grammar is not None:
            self._constrained = ConstrainedSampler(
                self.model, sampling, self.model.grammar_sampler(grammar), self._aborted
            )
        else:
            self._sampler = _sampler_chain(self.model, sampling)
        _empty_cache(self._ctx)
        try:
            with cancellation.on_cancel(self.abort):
                yield
        finally:
            if self._constrained is not None:
                self._constrained.free()
                self._constrained = None
            else:
                llama_cpp.llama_sampler_free(self._sampler)
                self._sampler = None

    @contextmanager
    def embedding(self, cancellation: Cancellation) -> Iterator[None]:
        """Embedding calls (`embed`) on this context; cancelling aborts the decode in progress."""
        self._abort_flag[0] = b"\x00"
        _last_errors()
        llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            with cancellation.on_cancel(self.abort):
                yield
        finally:
            llama_cpp.llama_set_embeddings(self._ctx, False)

    def embed(self, tokens: list[int]) -> npt.NDArray[np.float64]:
        """The mean of the last layer's hidden states over `tokens` (llama.cpp's mean pooling), on
        an empty cache, with causal attention as in generation. In embedding mode llama.cpp computes
        the output layer for every token (262,144 logits each), so tokens go in pieces of
        EMBED_PIECE_TOKENS, which keeps its output buffer at that many rows."""
        _empty_cache(self._ctx)
        n_embd = self.model.n_embd
        total = np.zeros(n_embd, dtype=np.float64)
        for start in range(0, len(tokens), EMBED_PIECE_TOKENS):
            piece = tokens[start : start + EMBED_PIECE_TOKENS]
            self._decode((llama_cpp.llama_token * len(piece))(*piece), len(piece))
            pointer = llama_cpp.llama_get_embeddings(self._ctx)
            if not pointer:
                raise LlamaFailure(f"llama.cpp returned no embeddings{_last_errors()}")
            total += np.ctypeslib.as_array(pointer, shape=(len(piece), n_embd)).sum(axis=0)
        return total / len(tokens)

    def evaluate_prompt(self, prompt: list[int]) -> None:
        """Decodes the prompt in pieces of `n_batch`; raises Aborted when the call was cancelled."""
        for start in range(0, len(prompt), self.n_batch):
            piece = prompt[start : start + self.n_batch]
            self._decode((llama_cpp.llama_token * len(piece))(*piece), len(piece))

    def sample(self) -> int:
        if self._constrained is not None:
            return self._constrained.sample(self._ctx)
        return int(llama_cpp.llama_sampler_sample(self._sampler, self._ctx, -1))

    def feed(self, token: int) -> None:
        """Decodes one generated token, so the next `sample` continues after it."""
        self._one_token[0] = token
        self._decode(self._one_token, 1)

    def _decode(self, tokens: Any, count: int) -> None:
        if self._abort_flag[0] != b"\x00":
            raise Aborted
        status = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(tokens, count))
        if status == _DECODE_ABORTED:
            self.stats.decodes_aborted += 1
            self.stats.last_abort_latency_s = time.perf_counter() - self._abort_requested_at
            raise Aborted
        if status != _DECODE_OK:
            raise LlamaFailure(f"llama_decode returned {status} for {count} tokens{_last_errors()}")
        self.stats.tokens_evaluated += count

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None


def _empty_cache(ctx: Any) -> None:
    """Every cell of the KV cache marked free, the buffers left as they are: a free cell is never
    attended to, and zeroing the buffers (`data=True`) cost 1.8–2.7 ms of a call's time to first
    token with a 2,048-token context (AMD EPYC, 2 vCPU), more with a longer one."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), False)


def _sampler_chain(model: LlamaModel, sampling: Sampling) -> Any:
    """A fresh chain per call: nothing, the seed least of all, carries over to the next caller."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    add(
        chain,
        llama_cpp.llama_sampler_init_penalties(
            model.vocab_size(),
            sampling.penalty_last_n,
            1.0,
            sampling.frequency_penalty,
            sampling.presence_penalty,
        ),
    )
    if sampling.temperature == 0.0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
    add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
    add(chain, llama_cpp.llama_sampler_init_dist(sampling.seed))
    return chain


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


def _token_array(data: npt.NDArray[Any]) -> Any:
    """A llama_token_data_array over numpy memory (which must outlive it)."""
    return llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
        size=len(data),
        selected=-1,
        sorted=False,
    )


class ConstrainedSampler:
    """Sampling under a grammar, as if the grammar sampler came first in the chain (every token it
    returns is legal), without running the grammar over the whole vocabulary at every step.

    llama.cpp's grammar sampler costs about 0.6 µs per candidate: over gemma's 262,144 tokens,
    150–200 ms per token, ten times the decode. (llama.cpp's own `common_sampler` avoids that by
    sampling first and checking only the sampled token, which changes the distribution.) Here the
    grammar sees candidates in descending logit order, a few at a time, until nothing later can be
    chosen: the first legal one when greedy; otherwise top-k legal ones, or all legal ones within
    min-p of the best legal one (the rest min-p would drop). The chain after the grammar is
    top-k → min-p → top-p → temperature → dist: min-p before top-p, so the candidates it keeps do
    not depend on the ones never looked at, and the choice is exactly that of grammar-first.
    Penalties apply to the whole vocabulary first, as in the unconstrained chain."""

    FIRST = 32
    WIDE = 1024
    REST_CHUNK = 8192

    def __init__(
        self, model: LlamaModel, sampling: Sampling, grammar: Any, aborted: Callable[[], bool]
    ) -> None:
        self._model = model
        self._aborted = (
            aborted  # checked between chunks: one token can take a long walk of the vocabulary
        )
        self._n = model.vocab_size()
        self._grammar = grammar
        self._penalized = sampling.frequency_penalty != 0.0 or sampling.presence_penalty != 0.0
        self._penalties = llama_cpp.llama_sampler_init_penalties(
            self._n,
            sampling.penalty_last_n,
            1.0,
            sampling.frequency_penalty,
            sampling.presence_penalty,
        )
        self._greedy = sampling.temperature == 0.0
        self._top_k = 1 if self._greedy else sampling.top_k
        self._min_p_gap = (
            math.inf if self._greedy or sampling.min_p <= 0 else -math.log(sampling.min_p)
        )
        self._pick = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        add = llama_cpp.llama_sampler_chain_add
        if self._greedy:
            add(self._pick, llama_cpp.llama_sampler_init_greedy())
        else:
            add(self._pick, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            add(self._pick, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
            add(self._pick, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(self._pick, llama_cpp.llama_sampler_init_temp(sampling.temperature))
            add(self._pick, llama_cpp.llama_sampler_init_dist(sampling.seed))
        self._logits = np.empty(self._n, dtype=np.float32)
        self._whole = np.zeros(self._n, dtype=_TOKEN_DATA)
        self._whole["id"] = np.arange(self._n, dtype=np.int32)

    def free(self) -> None:
        for sampler in (self._grammar, self._penalties, self._pick):
            llama_cpp.llama_sampler_free(sampler)

    def sample(self, ctx: Any) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(self._n,))
        if self._penalized:
            self._whole["logit"] = logits
            llama_cpp.llama_sampler_apply(self._penalties, ctypes.byref(_token_array(self._whole)))
            np.copyto(self._logits, self._whole["logit"])
        else:
            np.copyto(self._logits, logits)
        self._logits[self._model.unsampleable] = -np.inf
        candidates = self._legal_candidates(self._logits)
        array = _token_array(candidates)
        llama_cpp.llama_sampler_apply(self._pick, ctypes.byref(array))
        token = int(array.data[array.selected].id)
        llama_cpp.llama_sampler_accept(self._penalties, token)
        llama_cpp.llama_sampler_accept(self._pick, token)
        if not self._model.is_end(token):
            llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def _allowed(
        self, ids: npt.NDArray[np.int64], logits: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """`logits` with -inf where the grammar forbids the token."""
        chunk = np.empty(len(ids), dtype=_TOKEN_DATA)
        chunk["id"] = ids
        chunk["logit"] = logits
        chunk["p"] = 0.0
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(_token_array(chunk)))
        allowed: npt.NDArray[np.float32] = chunk["logit"]
        return allowed

    def _descending(self, logits: npt.NDArray[np.float32]) -> Iterator[npt.NDArray[np.int64]]:
        """Token ids in descending logit order, in growing chunks, each id once."""
        if self._greedy:
            yield np.array([int(np.argmax(logits))])
        wide = min(self.WIDE, self._n)
        top = np.argpartition(-logits, wide - 1)[:wide]
        top = top[np.argsort(-logits[top], kind="stable")]
        yield top[: self.FIRST]
        yield top[self.FIRST :]
        rest = logits.copy()
        rest[top] = -np.inf
        order = np.argsort(-rest, kind="stable")
        for start in range(0, self._n - wide, self.REST_CHUNK):
            yield order[start : start + self.REST_CHUNK]

    def _legal_candidates(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        ids: list[int] = []
        kept: list[float] = []
        threshold = -math.inf
        seen_first = False
        for chunk in self._descending(logits):
            if self._aborted():
                raise Aborted
            if len(chunk) == 0:
                continue
            values = logits[chunk]
            if values[0] == -np.inf or values[0] < threshold:
                break
            allowed = self._allowed(chunk, values)
            done = False
            for i in np.flatnonzero(allowed != -np.inf):
                value = float(values[i])
                if value < threshold:
                    done = True
                    break
                ids.append(int(chunk[i]))
                kept.append(value)
                if not seen_first:
                    seen_first = True
                    threshold = value - self._min_p_gap
                if len(ids) >= self._top_k:
                    done = True
                    break
            if done:
                break
        if not ids:
            raise GrammarDeadEnd
        candidates = np.zeros(len(ids), dtype=_TOKEN_DATA)
        candidates["id"] = ids
        candidates["logit"] = kept
        return candidates
