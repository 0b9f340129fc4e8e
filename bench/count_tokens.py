"""CountToken over gRPC against tiktoken called directly in-process, in tokens per second.

Prompts of exactly 100, 10,000 and 100,000 o200k tokens (a model named gpt-4o), sent one call at a
time (concurrency 1: the number that matters is the per-call cost on top of tiktoken's own). The
direct side calls `len(encode(prompt, disallowed_special=()))`, what a program counting with
tiktoken writes, on the same offline encoding and the same str object every time, on the thread
that owns the encoding's regex caches (tiktoken is about 20% slower on any other thread; in this
process that is modelwire's counting thread, tokenize/placement.py). "Direct from bytes" decodes the
prompt's UTF-8 first, as any server that receives it must (tiktoken then converts a fresh str back
to UTF-8). With `--floor`, the same CountToken requests also go to the bare grpc.aio floor
(bench/echo_floor.py), which answers without reading the prompt: what gRPC itself costs to carry
it.

The machine's other load moves both sides, so they are interleaved: `--rounds` rounds per size,
each timing direct, from bytes and gRPC for its share of `--seconds` (the order rotating); the
ratio is taken within a round, and its median, min and max over the rounds are reported.

    python bench/count_tokens.py --address 127.0.0.1:50051 [--floor 127.0.0.1:8901] [--seconds 3]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import grpc

from modelwire.tokenize.placement import on_counting_thread
from modelwire.tokenize.tiktoken_counter import encoding_for_model
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

MODEL = "gpt-4o"
SIZES = (100, 10_000, 100_000)
_WORDS = (
    "the quick brown fox jumps over lazy dog gRPC worker streams tokens model provider latency "
    "throughput request response context deadline cancel budget queue admission interceptor "
    "lighthouse keeper bottle message ocean wave harbour 2024 3.14 naïve café 東京 données"
).split()


def prompt_of(tokens: int, seed: int = 7) -> str:
    """Deterministic prose-like text of exactly `tokens` o200k tokens."""
    encoding, _ = encoding_for_model(MODEL)
    rng = random.Random(seed)
    words: list[str] = []
    while True:
        words += [rng.choice(_WORDS) + ("." if rng.random() < 0.08 else "") for _ in range(tokens)]
        ids = encoding.encode(" ".join(words), disallowed_special=())
        if len(ids) >= tokens:
            break
    text = encoding.decode(ids[:tokens])
    # Decoding a cut can re-tokenize differently at the edge; adjust the end until it counts
    # exactly.
    for _ in range(100):
        count = len(encoding.encode(text, disallowed_special=()))
        if count == tokens:
            return text
        text = text[:-1] if count > tokens else text + " a"
    raise RuntimeError(f"could not build a prompt of exactly {tokens} tokens")


def _timed(call: Callable[[], object], seconds: float, min_calls: int = 3) -> tuple[int, float]:
    calls = 0
    started = time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= min_calls:
            return calls, elapsed


def _ms_per_call(call: Callable[[], object], seconds: float) -> float:
    calls, elapsed = _timed(call, seconds)
    return 1000 * elapsed / calls


def run(
    address: str,
    seconds: float = 3.0,
    sizes: tuple[int, ...] = SIZES,
    floor: str | None = None,
    rounds: int = 3,
) -> list[dict[str, Any]]:
    encoding, _ = encoding_for_model(MODEL)
    rows = []
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    share = seconds / rounds
    floor_channel = grpc.insecure_channel(floor, options=options) if floor else None
    floor_stub = pb_grpc.ModelWorkerStub(floor_channel) if floor_channel else None
    with grpc.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        for size in sizes:
            prompt = prompt_of(size)
            wire = prompt.encode()
            request = pb.CountTokenRequest(model=MODEL, prompt=prompt)
            answered = stub.CountToken(request, timeout=60)
            assert answered.count == size, (answered.count, size)

            # Each closure binds this size's values (called only within this iteration anyway).
            def direct(prompt: str = prompt) -> float:
                return on_counting_thread(
                    lambda: _ms_per_call(
                        lambda: len(encoding.encode(prompt, disallowed_special=())), share
                    )
                )

            def from_bytes(wire: bytes = wire) -> float:
                return on_counting_thread(
                    lambda: _ms_per_call(
                        lambda: len(encoding.encode(wire.decode(), disallowed_special=())), share
                    )
                )

            def over_grpc(request: pb.CountTokenRequest = request) -> float:
                return _ms_per_call(lambda: stub.CountToken(request, timeout=60), share)

            sides = {"direct": direct, "from_bytes": from_bytes, "grpc": over_grpc}
            for measure in sides.values():
                measure()  # warm
            measured: dict[str, list[float]] = {name: [] for name in sides}
            order = list(sides)
            for index in range(rounds):
                for name in order[index % 3 :] + order[: index % 3]:
                    measured[name].append(sides[name]())
            ratios = [d / g for d, g in zip(measured["direct"], measured["grpc"], strict=True)]
            from_bytes_ratios = [
                b / g for b, g in zip(measured["from_bytes"], measured["grpc"], strict=True)
            ]
            direct_ms = statistics.median(measured["direct"])
            grpc_ms = statistics.median(measured["grpc"])
            row = {
                "tokens": size,
                "prompt_bytes": len(wire),
                "rounds": rounds,
                "direct_tokens_per_s": 1000 * size / direct_ms,
                "direct_ms_per_call": direct_ms,
                "direct_from_bytes_ms_per_call": statistics.median(measured["from_bytes"]),
                "grpc_tokens_per_s": 1000 * size / grpc_ms,
                "grpc_ms_per_call": grpc_ms,
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratio_from_bytes": statistics.median(from_bytes_ratios),
            }
            if floor_stub is not None:
                floor_stub.CountToken(request, timeout=60)
                floor_calls, floor_s = _timed(
                    lambda request=request: floor_stub.CountToken(request, timeout=60),
                    min(seconds, 1.0),
                    min_calls=20,
                )
                row["floor_ms_per_call"] = 1000 * floor_s / floor_calls
            rows.append(row)
    if floor_channel is not None:
        floor_channel.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument(
        "--floor", help="address of bench/echo_floor.py, to measure gRPC's own cost of the request"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per size and side, in all")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        "| tokens | direct tiktoken (tokens/s) | CountToken over gRPC (tokens/s) | ratio: median "
        "(min–max) | ms per call: direct / from bytes / gRPC floor / modelwire |"
    )
    print("| --- | --- | --- | --- | --- |")
    for row in run(args.address, args.seconds, floor=args.floor, rounds=args.rounds):
        print(
            f"| {row['tokens']:,} | {row['direct_tokens_per_s']:,.0f} | "
            f"{row['grpc_tokens_per_s']:,.0f} | {row['ratio']:.2f} ({row['ratio_min']:.2f}–"
            f"{row['ratio_max']:.2f}) | "
            f"{row['direct_ms_per_call']:.3f} / {row['direct_from_bytes_ms_per_call']:.3f} / "
            f"{row.get('floor_ms_per_call', float('nan')):.3f} / {row['grpc_ms_per_call']:.3f} |"
        )


if __name__ == "__main__":
    main()
