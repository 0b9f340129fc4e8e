"""How far a token limit can be overshot under concurrency, measured against a real Redis
(docs/configuration.md, "How far over a limit can go"; docs/benchmarks.md#limits).

A worker runs in this process (as tests/conftest.py's running_worker does) with the echo provider,
each stream `CHUNKS` deltas of `CHUNK_TEXT` (2,048 output tokens, usage on the last message)
`--chunk-interval` apart (0.02 s: a stream lasts about 1.3 s, as a model's does, so every call of
a burst has reserved before the first one ends and settles; 0 makes them instant, and then the
first calls' settles, above their reservations, leave less room for the last ones), and one rule
over every caller: `tokens_per_minute` on a redis-server started here. N streams are fired at
once, over gRPC, in two ways:

  no max_new_tokens   each call reserves its prompt and `default_output_reservation` R = 1,024
                      output tokens, and really produces 2,048: every admitted call is settled
                      to more than it reserved, so the counter may end above the limit, by at
                      most (calls admitted) × (2,048 − R)
  max_new_tokens      each caller sets max_new_tokens = 2,048, its real use: the reservation holds
                      the most it can use, so the counter never ends above the limit

The limit is 1,024 × N tokens, so about N − 1 reservations fit. After every stream has ended and
every settle has reached Redis (the worker drained), the script reads the counter and checks it
equals what the admitted calls were charged (their usage). What each call reserved is read off
the first call's own rate-limit headers (limit − remaining, alone in a fresh window).

Then two workers on the one Redis share `requests_per_minute = 60`; a burst of 200 unary calls,
100 to each at once, must admit exactly 60, and the counter must read 60.

Every scenario starts on an empty Redis and waits, on Redis's own clock, until enough of the
current minute is left that its counts land in one window.

    .venv/bin/python bench/quota_overshoot.py [--streams 16,64] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quota  # noqa: E402  (bench/quota.py: the redis-server this starts)
import run  # noqa: E402

MODEL = "gpt-4o"  # o200k_base: a delta's tokens are counted exactly
CHUNK_TEXT = " hello" * 32  # 32 tokens
CHUNKS = 64  # 2,048 output tokens per call
OUTPUT_TOKENS = 2048
RESERVATION = 1024  # default_output_reservation
PROMPT = "Say hello in one word."
PREFIX = "modelwire:quota:"
# A scenario's counts must land in one minute of the store's clock.
ROOM_S = 20.0


def worker_toml(store: str, rule: str, reservation: int, interval: float = 0.0) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 50051
grace_period_s = 5

[[models]]
name = "{MODEL}"
provider = "echo"
chunks = {CHUNKS}
chunk_text = "{CHUNK_TEXT}"
chunk_interval_s = {float(interval)}
max_concurrency = 1024
max_queue = 4096

[quota]
store = "{store}"
default_output_reservation = {reservation}

[[quota.rules]]
tenant = "all"
{rule}
"""


@asynccontextmanager
async def running_worker(workdir: Path, name: str, text: str) -> AsyncIterator[Any]:
    """A worker in this process on a free port, drained on exit: every settle has then reached
    the store (Worker.drain waits for them)."""
    from modelwire.app.config import load_config
    from modelwire.app.server import build_worker

    path = workdir / f"{name}.toml"
    path.write_text(text)
    config = load_config(path)
    config = replace(config, server=replace(config.server, host="127.0.0.1", port=0))
    worker = await build_worker(config)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.drain()


def request(max_new_tokens: int | None) -> Any:
    from modelwire.v1 import worker_pb2 as pb

    message = pb.ModelRequest(
        model=MODEL, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=PROMPT)]
    )
    if max_new_tokens is not None:
        message.sampling.max_new_tokens = max_new_tokens
    return message


@dataclass
class Outcome:
    admitted: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] | None = None


async def stream(stub: Any, max_new_tokens: int | None) -> Outcome:
    import grpc

    call = stub.GenerateStream(request(max_new_tokens), timeout=120)
    try:
        headers = dict(await call.initial_metadata())
        usage = None
        async for chunk in call:
            if chunk.HasField("usage"):
                usage = chunk.usage
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Outcome(False)
        raise
    assert usage is not None, "a stream ended without usage"
    return Outcome(True, usage.prompt_tokens, usage.completion_tokens, headers)


async def unary(stub: Any) -> bool:
    import grpc

    try:
        await stub.Generate(request(None), timeout=60)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return False
        raise
    return True


class Store:
    """The bench's own view of the Redis the workers share."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(url)

    async def fresh_window(self) -> None:
        """Empty, and with at least ROOM_S of the store's minute left."""
        await self.client.flushdb()
        while True:
            seconds, micros = await self.client.time()
            left = 60 - (seconds % 60 + micros / 1e6)
            if left >= ROOM_S:
                return
            await asyncio.sleep(left + 0.05)

    async def counted(self, unit: str) -> int:
        """Every window's counter of `unit` (t tokens, r requests) for everyone and every model."""
        keys = [key async for key in self.client.scan_iter(match=f"{PREFIX}{unit}:@all:@any:*")]
        return sum([int(await self.client.get(key) or 0) for key in keys])

    async def open_reservations(self) -> int:
        return len([key async for key in self.client.scan_iter(match=f"{PREFIX}call:*")])

    async def close(self) -> None:
        await self.client.aclose()


async def overshoot(
    store: Store,
    url: str,
    workdir: Path,
    streams: int,
    max_new_tokens: int | None,
    interval: float,
) -> dict[str, Any]:
    import grpc

    from modelwire.v1 import worker_pb2_grpc as pb_grpc

    limit = 1024 * streams
    rule = f"tokens_per_minute = {limit}"
    name = f"overshoot-{streams}-{max_new_tokens or 'none'}"
    text = worker_toml(url, rule, RESERVATION, interval)
    async with running_worker(workdir, name, text) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            # What one call reserves, from its own headers, alone in a fresh window.
            await store.fresh_window()
            probe = await stream(stub, max_new_tokens)
            assert probe.headers is not None
            reserved = int(probe.headers["x-ratelimit-limit-tokens"]) - int(
                probe.headers["x-ratelimit-remaining-tokens"]
            )
            while await store.open_reservations():
                await asyncio.sleep(0.01)
            await store.fresh_window()
            started = time.monotonic()
            outcomes = await asyncio.gather(*(stream(stub, max_new_tokens) for _ in range(streams)))
            elapsed = time.monotonic() - started
    # Drained: every settle has reached Redis.
    admitted = [outcome for outcome in outcomes if outcome.admitted]
    counter = await store.counted("t")
    charged = sum(o.prompt_tokens + o.completion_tokens for o in admitted)
    used = {o.prompt_tokens + o.completion_tokens for o in admitted}
    output = {o.completion_tokens for o in admitted}
    assert len(used) <= 1 and len(output) <= 1, "the calls used different amounts"
    used_per_call = used.pop() if used else 0
    output_per_call = output.pop() if output else 0
    output_reserved = max_new_tokens if max_new_tokens is not None else RESERVATION
    return {
        "scenario": "max_new_tokens = 2048" if max_new_tokens else "no max_new_tokens",
        "streams": streams,
        "limit": limit,
        "output_reserved": output_reserved,
        "reserved_per_call": reserved,
        "output_per_call": output_per_call,
        "used_per_call": used_per_call,
        "admitted": len(admitted),
        "refused": streams - len(admitted),
        "counter": counter,
        "charged": charged,
        "open_reservations": await store.open_reservations(),
        "overshoot": counter - limit,
        "bound": len(admitted) * (output_per_call - output_reserved),
        "chunk_interval_s": interval,
        "seconds": elapsed,
    }


async def shared_requests(
    store: Store, url: str, workdir: Path, burst: int, limit: int
) -> dict[str, Any]:
    import grpc

    from modelwire.v1 import worker_pb2_grpc as pb_grpc

    rule = f"requests_per_minute = {limit}"
    text = worker_toml(url, rule, RESERVATION)
    async with (
        running_worker(workdir, "shared-a", text) as first,
        running_worker(workdir, "shared-b", text) as second,
    ):
        async with (
            grpc.aio.insecure_channel(first.address) as channel_a,
            grpc.aio.insecure_channel(second.address) as channel_b,
        ):
            stubs = [pb_grpc.ModelWorkerStub(channel_a), pb_grpc.ModelWorkerStub(channel_b)]
            await store.fresh_window()
            results = await asyncio.gather(*(unary(stubs[i % 2]) for i in range(burst)))
    by_worker = [sum(results[i::2]) for i in range(2)]
    return {
        "limit": limit,
        "burst": burst,
        "workers": 2,
        "admitted": sum(results),
        "admitted_by_worker": by_worker,
        "refused": burst - sum(results),
        "counter": await store.counted("r"),
        "open_reservations": await store.open_reservations(),
    }


def table(report: dict[str, Any]) -> str:
    header = [
        "callers",
        "N streams",
        "limit (tokens/min)",
        "reserved per call",
        "used per call",
        "admitted",
        "counter after every settle",
        "overshoot",
        "bound: admitted × (output − output reserved)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["overshoot"]:
        bound = row["bound"]
        lines.append(
            "| "
            + " | ".join(
                [
                    row["scenario"],
                    str(row["streams"]),
                    f"{row['limit']:,}",
                    f"{row['reserved_per_call']:,} ({row['output_reserved']:,} output)",
                    f"{row['used_per_call']:,} ({row['output_per_call']:,} output)",
                    f"{row['admitted']} of {row['streams']}",
                    f"{row['counter']:,}",
                    f"{row['overshoot']:+,}",
                    f"{row['admitted']} × {row['output_per_call'] - row['output_reserved']:,} = "
                    f"{bound:,}"
                    if bound > 0
                    else f"≤ 0 ({bound:,})",
                ]
            )
            + " |"
        )
    shared = report["shared_requests"]
    interval = report["overshoot"][0]["chunk_interval_s"] if report["overshoot"] else 0.0
    lines[0:0] = [
        f"Echo streams of {CHUNKS} deltas of {OUTPUT_TOKENS // CHUNKS} tokens, {interval:g} s "
        f"apart; `default_output_reservation = {RESERVATION}`; one redis-server on loopback.",
        "",
    ]
    lines += [
        "",
        f"Two workers on one Redis, `requests_per_minute = {shared['limit']}`, a burst of "
        f"{shared['burst']} unary calls (half to each, at once): {shared['admitted']} admitted "
        f"({' + '.join(map(str, shared['admitted_by_worker']))}), {shared['refused']} refused "
        f"(RESOURCE_EXHAUSTED), the counter reads {shared['counter']}.",
    ]
    return "\n".join(lines) + "\n"


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    redis_proc, url = quota.start_redis(workdir)
    store = Store(url)
    report: dict[str, Any] = {"overshoot": []}
    try:
        for streams in args.streams:
            for max_new_tokens in (None, OUTPUT_TOKENS):
                row = await overshoot(
                    store, url, workdir, streams, max_new_tokens, args.chunk_interval
                )
                problems = []
                if row["counter"] != row["charged"]:
                    problems.append(f"counter {row['counter']} ≠ charged {row['charged']}")
                if row["open_reservations"]:
                    problems.append(f"{row['open_reservations']} reservations left open")
                if row["overshoot"] > max(row["bound"], 0):
                    problems.append("over the bound")
                row["problems"] = problems
                report["overshoot"].append(row)
                print(
                    f"{row['scenario']}, {streams} streams: {row['admitted']} admitted, counter "
                    f"{row['counter']:,} against {row['limit']:,} ({row['overshoot']:+,}; bound "
                    f"{row['bound']:,}) {'; '.join(problems)}",
                    file=sys.stderr,
                    flush=True,
                )
        report["shared_requests"] = await shared_requests(store, url, workdir, 200, 60)
    finally:
        await store.close()
        redis_proc.stop()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--streams",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[16, 64],
        help="comma-separated numbers of concurrent streams",
    )
    parser.add_argument(
        "--chunk-interval", type=float, default=0.02, help="seconds between a stream's deltas"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="modelwire-overshoot-"))
    try:
        report = asyncio.run(measure(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.update({"stamp": stamp, "machine": run.machine()})
    text = table(report)
    print(text)
    run.RESULTS.mkdir(exist_ok=True)
    (run.RESULTS / f"{stamp}-overshoot.json").write_text(json.dumps(report, indent=1) + "\n")
    (run.RESULTS / f"{stamp}-overshoot.md").write_text(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    shared = report["shared_requests"]
    failed = [row for row in report["overshoot"] if row["problems"]]
    if shared["admitted"] != shared["limit"] or shared["counter"] != shared["limit"]:
        print(f"shared requests: {shared['admitted']} admitted, not {shared['limit']}")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
