"""Local model through modelwire vs llama-cpp-python directly: time to first token and tokens/s.

Three paths, same GGUF, same prompt, same greedy sampling, same thread count:

  direct     llama-cpp-python's `Llama` in this process, no server at all
  floor      the same `Llama` behind a bare grpc.aio server (this script with `--serve-floor`):
             a thread runs the generation and hands each chunk to the event loop, the handler
             sends it as a message; no interceptor, conversion, admission or logging. What it
             costs beyond `direct` is what streaming the tokens over gRPC costs on this machine
  modelwire  `modelwire serve` (the embedded default model), as in production

Both servers run as their own processes and are called over gRPC on loopback by this process with
the same client. The machine's other load moves every path, so the calls are interleaved: after a
warm-up call on each path, every round calls each path once (the order rotates), and the ratios
are taken within a round; the table gives their medians and their spread over the rounds. Prints a
table; asserts nothing.

    .venv/bin/python bench/local_model.py [--runs 5] [--tokens 128] [--json]

`--json` prints one JSON object instead (bench/run.py reads it): per path the median time to first
token (ms), median tokens/s and the tokens generated; per ratio its median, min and max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from modelwire.core.types import ModelMessage, Role
from modelwire.providers.llama.gemma_format import format_gemma_chat
from modelwire.providers.llama.model_files import embedded_model_path
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
MODEL = "gemma-3-270m"
PATHS = ("direct", "floor", "modelwire")


@dataclass(frozen=True)
class Run:
    ttft_s: float
    tokens_per_s: float
    tokens: int


def _llama() -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(embedded_model_path()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False
    )


def _chat_prompt() -> str:
    return "".join(piece.text for piece in format_gemma_chat([ModelMessage(Role.USER, PROMPT)]))


def _stream(llama: Any, prompt: str, tokens: int) -> Iterator[str]:
    """One greedy generation on an empty cache (the worker keeps nothing between calls)."""
    llama.reset()
    for chunk in llama.create_completion(prompt, max_tokens=tokens, temperature=0.0, stream=True):
        yield chunk["choices"][0]["text"]


def direct_call(llama: Any, prompt: str, tokens: int) -> Run:
    started = time.perf_counter()
    first = None
    count = 0
    for text in _stream(llama, prompt, tokens):
        if text:
            first = first or time.perf_counter()
            count += 1
    return _run(started, first, count)


def grpc_call(stub: Any, tokens: int) -> Run:
    request = pb.ModelRequest(
        model=MODEL,
        messages=[pb.ModelMessage(role=pb.ROLE_USER, content=PROMPT)],
        sampling=pb.SamplingParams(temperature=0, max_new_tokens=tokens),
    )
    started = time.perf_counter()
    first = None
    completion = 0
    for chunk in stub.GenerateStream(request, timeout=300):
        if chunk.text:
            first = first or time.perf_counter()
        if chunk.HasField("usage"):
            completion = chunk.usage.completion_tokens
    return _run(started, first, completion)


def _run(started: float, first: float | None, tokens: int) -> Run:
    if first is None:
        return Run(0.0, 0.0, tokens)
    return Run(first - started, (tokens - 1) / (time.perf_counter() - first), tokens)


class FloorServicer(pb_grpc.ModelWorkerServicer):  # type: ignore[misc]
    """GenerateStream only: the request's sampling bound, everything else as `direct`."""

    def __init__(self) -> None:
        self._llama = _llama()
        self._prompt = _chat_prompt()

    async def GenerateStream(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelOutput]:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str | None] = asyncio.Queue()

        def generate() -> None:
            try:
                for text in _stream(self._llama, self._prompt, request.sampling.max_new_tokens):
                    loop.call_soon_threadsafe(chunks.put_nowait, text)
            finally:
                loop.call_soon_threadsafe(chunks.put_nowait, None)

        job = loop.run_in_executor(None, generate)
        count = 0
        while (text := await chunks.get()) is not None:
            if text:
                count += 1
                yield pb.ModelOutput(text=text)
        await job
        yield pb.ModelOutput(
            finish_reason=pb.FINISH_REASON_LENGTH, usage=pb.Usage(completion_tokens=count)
        )


async def serve_floor(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ModelWorkerServicer_to_server(FloorServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"local floor on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start(command: list[str], ready: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if ready not in line:
        process.kill()
        raise RuntimeError(f"{command[2:]} did not start: {line!r}")
    return process


def measure(rounds: int, tokens: int, worker_port: int | None = None) -> dict[str, list[Run]]:
    """Warm-up, then `rounds` rounds of one call per path, the order rotating."""
    floor_port, worker_port = _free_port(), worker_port or _free_port()
    floor = _start([sys.executable, __file__, "--serve-floor", str(floor_port)], "local floor on")
    worker = _start(
        [sys.executable, "-m", "modelwire.app.cli", "serve", "--port", str(worker_port)],
        "modelwire serving",
    )
    try:
        llama, prompt = _llama(), _chat_prompt()
        with (
            grpc.insecure_channel(f"127.0.0.1:{floor_port}") as floor_channel,
            grpc.insecure_channel(f"127.0.0.1:{worker_port}") as worker_channel,
        ):
            floor_stub = pb_grpc.ModelWorkerStub(floor_channel)
            worker_stub = pb_grpc.ModelWorkerStub(worker_channel)
            calls: dict[str, Callable[[], Run]] = {
                "direct": lambda: direct_call(llama, prompt, tokens),
                "floor": lambda: grpc_call(floor_stub, tokens),
                "modelwire": lambda: grpc_call(worker_stub, tokens),
            }
            for call in calls.values():
                call()
            results: dict[str, list[Run]] = {path: [] for path in PATHS}
            for index in range(rounds):
                for path in PATHS[index % 3 :] + PATHS[: index % 3]:
                    results[path].append(calls[path]())
            return results
    finally:
        for process in (floor, worker):
            process.terminate()
            process.wait(timeout=30)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summary(results: dict[str, list[Run]]) -> dict[str, Any]:
    """Medians per path; per-round ratios (tokens/s) and differences (time to first token, ms)."""
    paths = {
        path: {
            "ttft_ms": statistics.median(run.ttft_s for run in runs) * 1000,
            "tokens_per_s": statistics.median(run.tokens_per_s for run in runs),
            "tokens": runs[0].tokens,
        }
        for path, runs in results.items()
    }

    def rate(over: str, under: str) -> dict[str, float]:
        pairs = zip(results[over], results[under], strict=True)
        return _spread([a.tokens_per_s / b.tokens_per_s for a, b in pairs])

    def extra_ms(over: str, under: str) -> dict[str, float]:
        pairs = zip(results[over], results[under], strict=True)
        return _spread([(a.ttft_s - b.ttft_s) * 1000 for a, b in pairs])

    return {
        **paths,
        "ratios": {
            "modelwire_vs_direct": {
                "tokens_per_s": rate("modelwire", "direct"),
                "ttft_extra_ms": extra_ms("modelwire", "direct"),
            },
            "floor_vs_direct": {
                "tokens_per_s": rate("floor", "direct"),
                "ttft_extra_ms": extra_ms("floor", "direct"),
            },
            "modelwire_vs_floor": {
                "tokens_per_s": rate("modelwire", "floor"),
                "ttft_extra_ms": extra_ms("modelwire", "floor"),
            },
        },
    }


def _table(report: dict[str, Any], rounds: int, tokens: int) -> str:
    names = {
        "direct": "llama-cpp-python directly",
        "floor": "llama-cpp-python behind bare grpc.aio (floor)",
        "modelwire": "modelwire GenerateStream",
    }
    lines = [
        f"gemma-3-270m q4_k_m, {os.cpu_count()} CPUs, greedy, max {tokens} tokens, {rounds} "
        "interleaved rounds after a warm-up",
        "| path | time to first token (ms) | tokens/s | tokens |",
        "| --- | --- | --- | --- |",
    ]
    for path in PATHS:
        row = report[path]
        lines.append(
            f"| {names[path]} | {row['ttft_ms']:.1f} | {row['tokens_per_s']:.1f} | "
            f"{row['tokens']} |"
        )
    lines += [
        "",
        "| per round | tokens/s ratio: median (min–max) | extra time to first token, ms: median "
        "(min–max) |",
        "| --- | --- | --- |",
    ]
    for name, ratio in report["ratios"].items():
        rate, extra = ratio["tokens_per_s"], ratio["ttft_extra_ms"]
        lines.append(
            f"| {name.replace('_', ' ')} | {rate['median']:.3f} ({rate['min']:.3f}–"
            f"{rate['max']:.3f}) | {extra['median']:+.1f} ({extra['min']:+.1f}–"
            f"{extra['max']:+.1f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--port", type=int, help="the worker's port (default: a free one)")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    args = parser.parse_args()
    if args.serve_floor is not None:
        asyncio.run(serve_floor(args.serve_floor))
        return
    report = summary(measure(args.runs, args.tokens, args.port))
    if args.json:
        print(
            json.dumps(
                {
                    "model": "gemma-3-270m q4_k_m",
                    "cpus": os.cpu_count(),
                    "runs": args.runs,
                    "max_tokens": args.tokens,
                    **report,
                }
            )
        )
        return
    print(_table(report, args.runs, args.tokens))


if __name__ == "__main__":
    main()
