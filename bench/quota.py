"""`make bench-quota`: what tenants' limits ([quota]) cost a call on the HTTP-provider path.

The worker of bench/run.py's "modelwire → HTTP upstream" row (`provider = "openai"` against
bench/instant_upstream.py, one process), three ways, each its own `modelwire serve`:

  none     no [quota] (the baseline, as in `make bench`)
  memory   [quota] rules for everyone (requests and tokens per minute, limits no call reaches) and
           the model priced, counters in the worker's memory: one reserve before each call, one
           settle after it, in the background
  redis    the same rules with `store` on a redis-server on loopback, started here: the reserve and
           the settle are each one Lua script call (quota/redis_store.py)

Each is driven by ghz like bench/run.py drives its targets (closed loop, a pilot at the same
concurrency sizing a run of about `--duration`, so no call is cut off), unary and streamed, at
each concurrency level. The variants are interleaved: every round measures all three, one after
the other, in an order rotated from round to round, and the tables give each figure's median
over the rounds with the spread of the ratios (this VM spreads repeated runs of one variant by
±15-30%). CPU per call is the worker's, from /proc (utime + stime); redis-server's and the
upstream's are reported apart, never in the worker's. Before the runs: one round trip to the
store as the worker makes it (redis-py's PING, the reserve script, the settle script; median of
sequential calls), the yardstick for the added p50.

Every worker is checked first: the right answer, and the rate-limit headers on a limited call
(and none without [quota]); after each measurement of the Redis worker, its counters in Redis must
have counted every call that succeeded.

For attribution, `--variants none,memory,memory-no-headers,...` adds workers whose limited calls
send no rate-limit headers (patched in their own process, as bench/ablation.py does): a limited
call sends its response headers at once, before its first token, an early frame of its own.

    .venv/bin/python bench/quota.py [--levels 1,64] [--rounds 3] [--duration 8] [--ghz PATH]

Results: bench/results/<stamp>-quota.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import interleaved  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402

VARIANTS = ("none", "memory", "redis")
# Attribution, on request (--variants): the limited workers without their rate-limit headers (a
# limited call sends its response headers at once, before its first token: an early frame).
EXTRA_VARIANTS = ("memory-no-headers", "redis-no-headers")
LABELS = {
    "none": "no [quota]",
    "memory": "limits, in-process counters",
    "redis": "limits, Redis on loopback",
    "memory-no-headers": "limits in-process, no rate-limit headers",
    "redis-no-headers": "limits in Redis, no rate-limit headers",
}
PRICES = "price_per_million = { input = 2.5, output = 10.0 }\n"
RULES = """
[[quota.rules]]
tenant = "all"
requests_per_minute = 100000000
tokens_per_minute = 100000000000
"""
REDIS_PREFIX = "modelwire:quota:"
# The processes whose CPU per call is reported apart from the worker's.
SIDES = ("redis", "upstream")


def redis_binary() -> str:
    """$MODELWIRE_REDIS (mk/redis.mk names it), else redis-server on PATH, else Debian's."""
    found = os.environ.get("MODELWIRE_REDIS") or shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").exists():
        found = "/usr/bin/redis-server"
    if found is None:
        raise SystemExit("redis-server not found: `make redis` installs Debian's package")
    return found


def start_redis(workdir: Path) -> tuple[run.Proc, str]:
    port = run.free_port()
    proc = run.Proc(
        "redis-server",
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        workdir,
        ready_text="Ready to accept connections",
    )
    return proc, f"redis://127.0.0.1:{port}/0"


def worker_config(port: int, upstream: str, variant: str, store: str) -> str:
    model = run._openai_model(upstream)
    if variant == "none":
        return run._worker_toml(port, 1, model)
    shared = variant.startswith("redis")
    quota = "\n[quota]\n" + (f'store = "{store}"\n' if shared else "") + RULES
    return run._worker_toml(port, 1, model + PRICES) + quota


def serve(variant: str, config: str) -> None:
    """An attribution variant's worker: patched, then `modelwire serve`."""
    if variant.endswith("-no-headers"):
        from modelwire.worker import servicer

        original = servicer._headers_when_started

        def without_limits(context: Any) -> Any:
            started = original(context)

            async def no_headers(headers: Any) -> None:
                await started(())

            return no_headers

        servicer._headers_when_started = without_limits  # type: ignore[assignment]
    from modelwire.app.cli import main

    sys.exit(main(["serve", "--config", config]))


def check_limited(address: str, limited: bool) -> None:
    """The worker answers right (run.verify), and its calls carry the rate-limit headers exactly
    when it has limits: proof the variant is what it says."""
    import grpc

    from modelwire.v1 import worker_pb2 as pb
    from modelwire.v1 import worker_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        request = pb.ModelRequest(
            model=run.MODEL, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=run.PROMPT)]
        )
        _, call = stub.Generate.with_call(request, timeout=10)
        headers = dict(call.initial_metadata())
    has = "x-ratelimit-limit-requests" in headers
    if has != limited:
        raise RuntimeError(
            f"{address}: rate-limit headers {'present' if has else 'absent'} "
            f"({'with' if limited else 'without'} [quota])"
        )


async def _round_trips(store_url: str, config_path: Path, calls: int) -> dict[str, float]:
    """Median µs of one round trip as the worker makes it, sequential, from this process; and the
    CPU this process (redis-py and asyncio) spent per round trip, on average."""
    from modelwire.app.config import load_config
    from modelwire.quota.counters import call_counters
    from modelwire.quota.redis_store import RedisStore
    from modelwire.quota.store import Amounts

    config = load_config(config_path)
    store = RedisStore(config.quota, None)
    counters = call_counters(config.quota.rules, None, run.MODEL)
    timings: dict[str, list[float]] = {"ping": [], "reserve": [], "settle": []}
    cpu = dict.fromkeys(timings, 0.0)
    clock, process = time.perf_counter, time.process_time
    try:
        for index in range(calls + 100):  # the first 100 warm the connection and the scripts up
            call_id = f"bench-{index}"
            started, started_cpu = clock(), process()
            await store.ping()
            pinged, pinged_cpu = clock(), process()
            await store.reserve(call_id, counters, Amounts(1034, 0), 900.0)
            reserved, reserved_cpu = clock(), process()
            await store.settle(call_id, Amounts(112, 0), True)
            settled, settled_cpu = clock(), process()
            if index >= 100:
                timings["ping"].append(pinged - started)
                timings["reserve"].append(reserved - pinged)
                timings["settle"].append(settled - reserved)
                cpu["ping"] += pinged_cpu - started_cpu
                cpu["reserve"] += reserved_cpu - pinged_cpu
                cpu["settle"] += settled_cpu - reserved_cpu
    finally:
        await store.close()
    trips = {f"{key}_us": 1e6 * statistics.median(values) for key, values in timings.items()}
    trips.update({f"{key}_client_cpu_us": 1e6 * spent / calls for key, spent in cpu.items()})
    return trips


def redis_counted(store_url: str) -> dict[bytes, int]:
    """The requests each minute's counter in Redis holds, by key."""
    import redis

    client = redis.Redis.from_url(store_url)
    try:
        return {
            key: int(client.get(key) or 0) for key in client.scan_iter(match=f"{REDIS_PREFIX}r:*")
        }
    finally:
        client.close()


def counted_since(store_url: str, before: dict[bytes, int]) -> int:
    """Requests counted since `before`: a minute's counter is kept two minutes past its window
    (a key gone since was not written to)."""
    return sum(value - before.get(key, 0) for key, value in redis_counted(store_url).items())


def counting(store: str | None) -> interleaved.Tally:
    """A measurement's tally: with `store`, the requests it counted there, which must be at
    least the calls that succeeded (a minute's counter is kept 2 minutes past its window: the sum
    spans one); without, None."""

    def before() -> Callable[[int], dict[str, Any]]:
        counted0 = redis_counted(store) if store is not None else {}

        def after(ok: int) -> dict[str, Any]:
            counted = counted_since(store, counted0) if store is not None else None
            if counted is not None and counted < ok:
                raise RuntimeError(f"Redis counted {counted} requests of {ok} calls")
            return {"redis_requests_counted": counted}

        return after

    return before


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (level, mode, variant): medians over the rounds, and against `none` of the same round
    (the ratio's median, low and high)."""
    cpu = "worker_cpu_us_per_call"
    return interleaved.summarize(
        rows,
        "none",
        SIDES,
        {
            "cpu_ratio": interleaved.ratio(cpu),
            "cpu_with_redis_ratio": lambda row, none: (
                (row[cpu] + (row["redis_cpu_us_per_call"] or 0.0)) / none[cpu]
            ),
            "p50_delta_ms": interleaved.difference("p50_ms"),
            "p99_ratio": interleaved.ratio("p99_ms"),
        },
    )


def cells(entry: dict[str, Any]) -> list[str]:
    base = entry["variant"] == "none"
    redis_cpu = entry["redis_cpu_us_per_call"]
    return [
        LABELS[entry["variant"]],
        *interleaved.measured(entry),
        f"{entry['worker_cpu_us_per_call']:,.0f}",
        "—" if redis_cpu is None else f"{redis_cpu:,.0f}",
        "1" if base else interleaved.times(entry["cpu_ratio"]),
        "—" if base or redis_cpu is None else interleaved.times(entry["cpu_with_redis_ratio"]),
        "0" if base else interleaved.delta(entry["p50_delta_ms"], digits=None),
        "1" if base else interleaved.times(entry["p99_ratio"]),
        interleaved.load(entry),
    ]


def markdown(report: dict[str, Any]) -> str:
    header = [
        "quota",
        "call",
        "c",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "worker CPU µs / call",
        "redis-server CPU µs / call",
        "worker CPU × none",
        "worker + redis CPU × none",
        "p50 − none, ms",
        "p99 × none",
        "load",
    ]
    trips = report["round_trips"]
    return (
        f"Run `{report['stamp']}` (bench/quota.py): {interleaved.machine(report)}, redis-server "
        f"{report['redis_version']}. `openai` provider → instant HTTP upstream, one worker "
        f"process; {interleaved.method(report, 'ratios against `none`')} One round trip to the "
        "store from the worker's client (redis-py, sequential; median wall time, and the "
        f"client's CPU per call): PING {trips['ping_us']:.0f} µs "
        f"({trips['ping_client_cpu_us']:.0f} µs CPU), the reserve script "
        f"{trips['reserve_us']:.0f} µs ({trips['reserve_client_cpu_us']:.0f}), the settle script "
        f"{trips['settle_us']:.0f} µs ({trips['settle_client_cpu_us']:.0f}). "
        f"{interleaved.took(report)}\n\n"
        + interleaved.table(header, report["summary"], cells)
        + "\n"
    )


def main() -> int:
    parser = interleaved.arguments(
        __doc__,
        8.0,
        VARIANTS,
        EXTRA_VARIANTS,
        lambda parser: parser.add_argument("--round-trips", type=int, default=2000),
    )
    parser.add_argument("--serve", choices=EXTRA_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.config)
        return 0
    variants = interleaved.chosen_variants(parser, args, VARIANTS, EXTRA_VARIANTS)
    settings = {"rules": RULES.strip(), "prices": PRICES.strip()}
    with interleaved.Harness("quota", args, variants, settings) as harness:
        report = harness.report
        upstream = harness.start_upstream()
        upstream_url = "http://" + upstream.address()
        redis_proc, store = start_redis(harness.workdir)
        harness.start(redis_proc)
        report["redis_version"] = (
            subprocess.run([redis_binary(), "--version"], capture_output=True, text=True)
            .stdout.split("v=")[1]
            .split()[0]
        )
        workers: dict[str, tuple[str, run.Proc]] = {}
        for variant in variants:
            port = run.free_port()
            config = harness.workdir / f"quota-{variant}.toml"
            config.write_text(worker_config(port, upstream_url, variant, store))
            command = [str(harness.modelwire), "serve"]
            if variant in EXTRA_VARIANTS:
                command = [str(harness.python), __file__, "--serve", variant]
            proc = harness.start_worker(variant, [*command, "--config", str(config)])
            address = proc.address()
            running = run.Running("grpc", address, procstat.ProcessGroup([proc.pid]), [proc])
            run.wait_grpc(address, 30)
            run.verify(running)
            check_limited(address, variant in ("memory", "redis"))
            workers[variant] = (address, proc)
        harness.progress.say("every worker checked; one round trip to the store:")
        config = harness.workdir / "quota-trips.toml"
        config.write_text(worker_config(run.free_port(), upstream_url, "redis", store))
        report["round_trips"] = asyncio.run(_round_trips(store, config, args.round_trips))
        harness.progress.say(
            ", ".join(f"{key} {value:.0f}" for key, value in report["round_trips"].items())
        )
        redis_group = procstat.ProcessGroup([redis_proc.pid])
        upstream_group = procstat.ProcessGroup([upstream.pid])
        others = harness.others()

        def measure(variant: str, mode: str, concurrency: int) -> dict[str, Any]:
            address, proc = workers[variant]
            shared = variant.startswith("redis")
            return interleaved.measure(
                args,
                address,
                run.GRPC_REQUEST,
                procstat.ProcessGroup([proc.pid]),
                {"redis": redis_group if shared else None, "upstream": upstream_group},
                others,
                mode,
                concurrency,
                counting(store if shared else None),
            )

        def note(row: dict[str, Any]) -> str:
            redis_cpu = row["redis_cpu_us_per_call"]
            return f", redis {redis_cpu:,.0f} µs/call" if redis_cpu is not None else ""

        harness.rounds(measure, note)
    harness.finish(summarize, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
