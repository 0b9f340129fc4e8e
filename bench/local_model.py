"""Local model through modelwire vs llama-cpp-python directly: time to first token and tokens/s.

Same GGUF, same prompt, same greedy sampling, same thread count; the worker runs as its own process
(as in production) and is called over gRPC on loopback. Prints a table; asserts nothing.

    .venv/bin/python bench/local_model.py [--runs 5] [--tokens 128] [--json]

`--json` prints one JSON object instead (bench/run.py reads it): per path, the median time to first
token (ms), median tokens/s and the tokens generated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import grpc

from modelwire.core.types import ModelMessage, Role
from modelwire.providers.llama.gemma_format import format_gemma_chat
from modelwire.providers.llama.model_files import embedded_model_path
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def direct(runs: int, tokens: int) -> list[tuple[float, float, int]]:
    from llama_cpp import Llama

    llama = Llama(
        model_path=str(embedded_model_path()), n_ctx=2048, n_threads=os.cpu_count(), verbose=False
    )
    prompt = "".join(piece.text for piece in format_gemma_chat([ModelMessage(Role.USER, PROMPT)]))
    results = []
    for _ in range(runs):
        llama.reset()  # the worker keeps nothing between calls; neither does this path
        started = time.perf_counter()
        first = None
        count = 0
        for chunk in llama.create_completion(
            prompt, max_tokens=tokens, temperature=0.0, stream=True
        ):
            if chunk["choices"][0]["text"]:
                first = first or time.perf_counter()
                count += 1
        results.append(
            (
                first - started if first else 0.0,
                (count - 1) / (time.perf_counter() - first) if first else 0.0,
                count,
            )
        )
    return results


def through_worker(runs: int, tokens: int, port: int) -> list[tuple[float, float, int]]:
    worker = subprocess.Popen(
        [sys.executable, "-m", "modelwire.app.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().startswith(
            "modelwire serving"
        )
        request = pb.ModelRequest(
            model="gemma-3-270m",
            messages=[pb.ModelMessage(role=pb.ROLE_USER, content=PROMPT)],
            sampling=pb.SamplingParams(temperature=0, max_new_tokens=tokens),
        )
        results = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            for _ in range(runs):
                started = time.perf_counter()
                first = None
                chunks = 0
                completion = 0
                for chunk in stub.GenerateStream(request, timeout=120):
                    if chunk.text:
                        first = first or time.perf_counter()
                        chunks += 1
                    if chunk.HasField("usage"):
                        completion = chunk.usage.completion_tokens
                elapsed = time.perf_counter() - (first or started)
                results.append(
                    (
                        first - started if first else 0.0,
                        (completion - 1) / elapsed if first else 0.0,
                        completion,
                    )
                )
        return results
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def summary(name: str, results: list[tuple[float, float, int]]) -> str:
    ttft = statistics.median(r[0] for r in results) * 1000
    rate = statistics.median(r[1] for r in results)
    return f"| {name} | {ttft:.1f} | {rate:.1f} | {results[0][2]} |"


def medians(results: list[tuple[float, float, int]]) -> dict[str, float]:
    return {
        "ttft_ms": statistics.median(r[0] for r in results) * 1000,
        "tokens_per_s": statistics.median(r[1] for r in results),
        "tokens": results[0][2],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--port", type=int, default=50091)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    args = parser.parse_args()
    if args.json:
        direct_runs = direct(args.runs + 1, args.tokens)[1:]
        worker_runs = through_worker(args.runs + 1, args.tokens, args.port)[1:]
        print(
            json.dumps(
                {
                    "model": "gemma-3-270m q4_k_m",
                    "cpus": os.cpu_count(),
                    "runs": args.runs,
                    "max_tokens": args.tokens,
                    "direct": medians(direct_runs),
                    "modelwire": medians(worker_runs),
                }
            )
        )
        return
    print(
        f"gemma-3-270m q4_k_m, {os.cpu_count()} CPUs, greedy, max {args.tokens} tokens, median of "
        f"{args.runs} runs (after 1 warm-up)"
    )
    print("| path | time to first token (ms) | tokens/s | tokens |")
    print("| --- | --- | --- | --- |")
    print(summary("llama-cpp-python directly", direct(args.runs + 1, args.tokens)[1:]))
    print(
        summary(
            "modelwire GenerateStream (gRPC, loopback)",
            through_worker(args.runs + 1, args.tokens, args.port)[1:],
        )
    )


if __name__ == "__main__":
    main()
