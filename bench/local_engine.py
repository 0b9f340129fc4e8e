"""The llama.cpp options the worker could load the local model with, measured on this machine.

In one process, for the installed llama-cpp-python build: modelwire's engine
(providers/llama/engine.py) with and without the extra weight buffers (ggml's repacking; AMX kernels
when the build has them), and llama-cpp-python's `Llama` for reference, all greedy on the same
tokens and threads. Per option: time to first token for a short chat prompt (on an empty cache: the
engine keeps nothing between calls, and `Llama` is reset), decode tokens/s over 128 tokens, prompt
evaluation tokens/s over a ~2,000-token prompt, and for the engine the time from an abort to
llama.cpp returning during that evaluation. Prints a table; asserts nothing. Run it under each build
to compare builds.

    .venv/bin/python bench/local_engine.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

from modelwire.core.cancellation import Cancellation
from modelwire.core.types import ModelMessage, Role
from modelwire.providers.llama.build import LlamaBuild
from modelwire.providers.llama.engine import Aborted, LlamaModel, LlamaSession, Sampling
from modelwire.providers.llama.gemma_format import format_gemma_chat
from modelwire.providers.llama.model_files import embedded_model_path

SHORT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
LONG = " ".join(
    f"Item {n}: the keeper logged the weather, the ships and the light." for n in range(118)
)
TOKENS = 128
GREEDY = Sampling(temperature=0.0, top_p=1.0, seed=0)


def chat_tokens(model: LlamaModel, text: str) -> list[int]:
    tokens = [model.bos]
    for piece in format_gemma_chat([ModelMessage(Role.USER, text)]):
        tokens += model.tokenize(piece.text, special=piece.marker)
    return tokens


def engine_first_token(session: LlamaSession, prompt: list[int]) -> float:
    started = time.perf_counter()
    with session.call(GREEDY, Cancellation()):
        session.evaluate_prompt(prompt)
        session.sample()
    return time.perf_counter() - started


def engine_decode_rate(session: LlamaSession, prompt: list[int]) -> float:
    with session.call(GREEDY, Cancellation()):
        session.evaluate_prompt(prompt)
        token = session.sample()
        started = time.perf_counter()
        for _ in range(TOKENS - 1):
            session.feed(token)
            token = session.sample()
        return (TOKENS - 1) / (time.perf_counter() - started)


def engine_prefill_rate(session: LlamaSession, prompt: list[int]) -> float:
    started = time.perf_counter()
    with session.call(GREEDY, Cancellation()):
        session.evaluate_prompt(prompt)
    return len(prompt) / (time.perf_counter() - started)


def engine_abort_latency(session: LlamaSession, prompt: list[int], prefill_rate: float) -> float:
    """Aborts 40% into the evaluation of `prompt`; seconds from the abort to llama.cpp returning."""
    session.stats.last_abort_latency_s = None
    cancellation = Cancellation()
    timer = threading.Timer(0.4 * len(prompt) / prefill_rate, cancellation.cancel)
    with session.call(GREEDY, cancellation):
        timer.start()
        try:
            session.evaluate_prompt(prompt)
        except Aborted:
            pass
    timer.join()
    latency = session.stats.last_abort_latency_s
    return latency if latency is not None else float("nan")


def median(measure: Callable[[], float], runs: int) -> float:
    measure()
    return statistics.median(measure() for _ in range(runs))


def engine_row(path: str, extra: bool, runs: int, threads: int) -> str:
    model = LlamaModel(embedded_model_path(), use_extra_buffers=extra)
    prompt, long_prompt = chat_tokens(model, SHORT), chat_tokens(model, LONG)
    session = LlamaSession(model, n_ctx=2048, n_batch=512, n_threads=threads)
    first = median(lambda: engine_first_token(session, prompt), runs)
    rate = median(lambda: engine_decode_rate(session, prompt), runs)
    prefill = median(lambda: engine_prefill_rate(session, long_prompt), runs)
    abort = median(lambda: engine_abort_latency(session, long_prompt, prefill), runs)
    session.close()
    model.close()
    return (
        f"| modelwire engine, extra buffers {'on' if extra else 'off'} | {first * 1000:.1f} | "
        f"{rate:.1f} | {prefill:.0f} | {abort * 1000:.1f} |"
    )


def llama_row(path: str, runs: int, threads: int) -> str:
    from llama_cpp import Llama

    vocab = LlamaModel(embedded_model_path(), use_extra_buffers=False, vocab_only=True)
    prompt, long_prompt = chat_tokens(vocab, SHORT), chat_tokens(vocab, LONG)
    llama = Llama(
        model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def first_token() -> float:
        llama.reset()
        started = time.perf_counter()
        next(llama.generate(prompt, temp=0.0, reset=True))
        return time.perf_counter() - started

    def decode_rate() -> float:
        llama.reset()
        tokens = llama.generate(prompt, temp=0.0, reset=True)
        next(tokens)
        started = time.perf_counter()
        for _ in range(TOKENS - 1):
            next(tokens)
        return (TOKENS - 1) / (time.perf_counter() - started)

    def prefill_rate() -> float:
        llama.reset()
        started = time.perf_counter()
        llama.eval(long_prompt)
        return len(long_prompt) / (time.perf_counter() - started)

    first = median(first_token, runs)
    rate = median(decode_rate, runs)
    prefill = median(prefill_rate, runs)
    return (
        f"| llama-cpp-python `Llama` (extra buffers on) | {first * 1000:.1f} | {rate:.1f} | "
        f"{prefill:.0f} | cannot abort |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    path = str(embedded_model_path())
    threads = os.cpu_count() or 1
    build = LlamaBuild.installed()
    print(
        f"gemma-3-270m q4_k_m, {threads} threads, llama.cpp build: "
        f"{' '.join(sorted(build.features))}"
    )
    print(f"greedy, {TOKENS} decode tokens, median of {args.runs} runs after one warm-up")
    print(
        "| option | first token (ms) | decode tokens/s | prompt eval tokens/s | abort → return "
        "(ms) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for extra in (True, False):
        print(engine_row(path, extra, args.runs, threads), flush=True)
    print(llama_row(path, args.runs, threads), flush=True)


if __name__ == "__main__":
    main()
