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
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402

RESULTS = HERE / "results"
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


def measure(
    args: argparse.Namespace,
    address: str,
    worker: procstat.ProcessGroup,
    redis_group: procstat.ProcessGroup | None,
    store: str | None,
    upstream: procstat.ProcessGroup,
    others: list[int],
    mode: str,
    concurrency: int,
) -> dict[str, Any]:
    """One measurement; with `store`, the requests it counted there must be at least the calls
    that succeeded (a minute's counter is kept 2 minutes past its window: the sum spans one)."""
    method = "Generate" if mode == "unary" else "GenerateStream"
    pilot = loadgen.ghz(
        args.ghz, address, method, run.GRPC_REQUEST, concurrency, args.pilot, args.connections
    )
    total = max(concurrency, round(pilot.rps * args.duration))
    procstat.wait_for_idle(0.35, args.idle_wait)
    counted0 = redis_counted(store) if store is not None else {}
    load1 = procstat.loadavg1()
    worker0 = worker.snapshot()
    redis0 = redis_group.snapshot() if redis_group is not None else None
    upstream0 = upstream.snapshot()
    started = time.monotonic()
    with run.OtherLoad(others) as other:
        result = loadgen.ghz(
            args.ghz,
            address,
            method,
            run.GRPC_REQUEST,
            concurrency,
            args.duration,
            args.connections,
            total=total,
        )
    wall = time.monotonic() - started
    cpu = worker.cpu_since(worker0)
    calls = max(result.ok, 1)
    redis_cpu = redis_group.cpu_since(redis0) if redis_group is not None and redis0 else None
    counted = counted_since(store, counted0) if store is not None else None
    if counted is not None and counted < result.ok:
        raise RuntimeError(f"Redis counted {counted} requests of {result.ok} calls")
    return {
        **result.to_json(),
        "redis_requests_counted": counted,
        "worker_cpu_us_per_call": 1e6 * cpu / calls,
        "worker_cores": cpu / wall,
        "redis_cpu_us_per_call": 1e6 * redis_cpu / calls if redis_cpu is not None else None,
        "upstream_cpu_us_per_call": 1e6 * upstream.cpu_since(upstream0) / calls,
        "loadavg1_at_start": load1,
        "other_busy_cores": other.cores,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (level, mode, variant): medians over the rounds, and against `none` of the same round
    (the ratio's median, low and high)."""
    summary = []
    keys = list(dict.fromkeys((row["concurrency"], row["mode"]) for row in rows))
    for concurrency, mode in keys:
        base = {
            row["round"]: row
            for row in rows
            if (row["concurrency"], row["mode"], row["variant"]) == (concurrency, mode, "none")
        }
        for variant in dict.fromkeys(row["variant"] for row in rows):
            mine = [
                row
                for row in rows
                if (row["concurrency"], row["mode"], row["variant"]) == (concurrency, mode, variant)
            ]
            if not mine:
                continue
            entry: dict[str, Any] = {"concurrency": concurrency, "mode": mode, "variant": variant}
            for key in (
                "rps",
                "p50_ms",
                "p99_ms",
                "worker_cpu_us_per_call",
                "redis_cpu_us_per_call",
                "upstream_cpu_us_per_call",
                "other_busy_cores",
                "loadavg1_at_start",
            ):
                entry[key] = _median(mine, key)
            entry["errors"] = sum(row["errors"] for row in mine)
            entry["rounds"] = len(mine)
            cpu_ratios = [
                row["worker_cpu_us_per_call"] / base[row["round"]]["worker_cpu_us_per_call"]
                for row in mine
                if row["round"] in base
            ]
            total_ratios = [
                (row["worker_cpu_us_per_call"] + (row["redis_cpu_us_per_call"] or 0.0))
                / base[row["round"]]["worker_cpu_us_per_call"]
                for row in mine
                if row["round"] in base
            ]
            p50_deltas = [
                row["p50_ms"] - base[row["round"]]["p50_ms"] for row in mine if row["round"] in base
            ]
            p99_ratios = [
                row["p99_ms"] / base[row["round"]]["p99_ms"] for row in mine if row["round"] in base
            ]
            entry["cpu_ratio"] = _spread(cpu_ratios)
            entry["cpu_with_redis_ratio"] = _spread(total_ratios)
            entry["p50_delta_ms"] = _spread(p50_deltas)
            entry["p99_ratio"] = _spread(p99_ratios)
            summary.append(entry)
    return summary


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def _x(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "—"
    return f"{spread['median']:.2f}× ({spread['low']:.2f}–{spread['high']:.2f})"


def _delta(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "—"
    return (
        f"{spread['median']:+.2f} ({spread['low']:+.2f} to {spread['high']:+.2f})"
        if abs(spread["median"]) < 10
        else f"{spread['median']:+.0f} ({spread['low']:+.0f} to {spread['high']:+.0f})"
    )


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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in report["summary"]:
        base = entry["variant"] == "none"
        redis_cpu = entry["redis_cpu_us_per_call"]
        cells = [
            LABELS[entry["variant"]],
            entry["mode"],
            str(entry["concurrency"]),
            f"{entry['rps']:,.0f}",
            f"{entry['p50_ms']:.2f}",
            f"{entry['p99_ms']:.2f}",
            f"{entry['worker_cpu_us_per_call']:,.0f}",
            "—" if redis_cpu is None else f"{redis_cpu:,.0f}",
            "1" if base else _x(entry["cpu_ratio"]),
            "—" if base or redis_cpu is None else _x(entry["cpu_with_redis_ratio"]),
            "0" if base else _delta(entry["p50_delta_ms"]),
            "1" if base else _x(entry["p99_ratio"]),
            f"{entry['loadavg1_at_start']:.2f} / {entry['other_busy_cores']:.2f}",
        ]
        if entry["errors"]:
            cells[0] += f" ({entry['errors']} errors)"
        lines.append("| " + " | ".join(cells) + " |")
    trips = report["round_trips"]
    machine = report["machine"]
    return (
        f"Run `{report['stamp']}` (bench/quota.py): {machine['cpus']} × {machine['cpu']}, "
        f"Python {machine['python']}, grpcio {machine['grpcio']}, redis-server "
        f"{report['redis_version']}. `openai` provider → instant HTTP upstream, one worker "
        f"process; ghz at c = {', '.join(map(str, report['settings']['levels']))}, "
        f"{report['settings']['rounds']} interleaved rounds of about "
        f"{report['settings']['duration_s']:g} s per variant; medians over the rounds, ratios "
        "against `none` of the same round (median, low–high). Load: 1-minute load average "
        f"{report['loadavg1_at_start']:.2f} at the start, {report['loadavg1_at_end']:.2f} at the "
        "end; the load column: the load average when the measurement started / the cores other "
        "processes used during it. One round trip to the store from the worker's client "
        f"(redis-py, sequential; median wall time, and the client's CPU per call): PING "
        f"{trips['ping_us']:.0f} µs ({trips['ping_client_cpu_us']:.0f} µs CPU), the reserve "
        f"script {trips['reserve_us']:.0f} µs ({trips['reserve_client_cpu_us']:.0f}), the settle "
        f"script {trips['settle_us']:.0f} µs ({trips['settle_client_cpu_us']:.0f}). Took "
        f"{report['elapsed_s'] / 60:.1f} min.\n\n" + "\n".join(lines) + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,64", help="comma-separated concurrency levels")
    parser.add_argument("--modes", default="unary,stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--pilot", type=float, default=1.5)
    parser.add_argument("--idle-wait", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--max-load", type=float, default=0.7)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, `none` first (also: {', '.join(EXTRA_VARIANTS)})",
    )
    parser.add_argument("--ghz", type=Path, default=ROOT / ".tools" / "bin" / "ghz")
    parser.add_argument("--serve", choices=EXTRA_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.config)
        return 0
    variants = tuple(args.variants.split(","))
    if variants[0] != "none" or not set(variants) <= set(VARIANTS + EXTRA_VARIANTS):
        parser.error(f"--variants: `none` first, then of {', '.join(VARIANTS + EXTRA_VARIANTS)}")
    if not args.ghz.exists():
        parser.error(f"ghz not found at {args.ghz} (make bench-tools)")
    levels = [int(level) for level in args.levels.split(",")]
    modes = args.modes.split(",")

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="modelwire-bench-quota-"))
    progress = run.Progress(len(levels) * len(modes) * args.rounds * len(variants))
    progress.say(f"bench/quota.py: logs in {workdir}")
    load_at_start = procstat.wait_for_load(args.max_load, 120, progress.say)
    python = Path(sys.executable)
    modelwire = python.with_name("modelwire")
    procs: list[run.Proc] = []
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "stamp": stamp,
        "machine": run.machine(),
        "uptime_at_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout,
        "loadavg1_at_start": load_at_start,
        "settings": {
            "levels": levels,
            "modes": modes,
            "variants": variants,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "pilot_s": args.pilot,
            "connections": args.connections,
            "rules": RULES.strip(),
            "prices": PRICES.strip(),
        },
    }
    try:
        upstream = run.Proc(
            "instant-upstream",
            [str(python), str(HERE / "instant_upstream.py"), "--port", "0"],
            workdir,
            ready_text="instant upstream on",
        )
        procs.append(upstream)
        upstream_url = "http://" + upstream.address()
        redis_proc, store = start_redis(workdir)
        procs.append(redis_proc)
        report["redis_version"] = (
            subprocess.run([redis_binary(), "--version"], capture_output=True, text=True)
            .stdout.split("v=")[1]
            .split()[0]
        )
        workers: dict[str, tuple[str, run.Proc]] = {}
        for variant in variants:
            port = run.free_port()
            config = workdir / f"quota-{variant}.toml"
            config.write_text(worker_config(port, upstream_url, variant, store))
            command = [str(modelwire), "serve", "--config", str(config)]
            if variant in EXTRA_VARIANTS:
                command = [str(python), __file__, "--serve", variant, "--config", str(config)]
            proc = run.Proc(
                f"worker-{variant}",
                command,
                workdir,
                ready_text="modelwire serving",
                timeout_s=90,
            )
            procs.append(proc)
            address = proc.address()
            running = run.Running("grpc", address, procstat.ProcessGroup([proc.pid]), [proc])
            run.wait_grpc(address, 30)
            run.verify(running)
            check_limited(address, variant in ("memory", "redis"))
            workers[variant] = (address, proc)
        progress.say("every worker checked; one round trip to the store:")
        config = workdir / "quota-trips.toml"
        config.write_text(worker_config(run.free_port(), upstream_url, "redis", store))
        report["round_trips"] = asyncio.run(_round_trips(store, config, args.round_trips))
        progress.say(
            ", ".join(f"{key} {value:.0f}" for key, value in report["round_trips"].items())
        )
        redis_group = procstat.ProcessGroup([redis_proc.pid])
        upstream_group = procstat.ProcessGroup([upstream.pid])
        others = [proc.pid for proc in procs]
        for concurrency in levels:
            for mode in modes:
                for index in range(args.rounds):
                    turn = index % len(variants)
                    order = variants[turn:] + variants[:turn]
                    for variant in order:
                        address, proc = workers[variant]
                        row = measure(
                            args,
                            address,
                            procstat.ProcessGroup([proc.pid]),
                            redis_group if variant.startswith("redis") else None,
                            store if variant.startswith("redis") else None,
                            upstream_group,
                            others,
                            mode,
                            concurrency,
                        )
                        row.update({"variant": variant, "mode": mode, "concurrency": concurrency})
                        row["round"] = index
                        rows.append(row)
                        redis_cpu = row["redis_cpu_us_per_call"]
                        progress.step(
                            f"c={concurrency} {mode} round {index + 1} {variant}: "
                            f"{row['rps']:,.0f} calls/s, p50 {row['p50_ms']:.2f} ms, p99 "
                            f"{row['p99_ms']:.2f} ms, worker {row['worker_cpu_us_per_call']:,.0f}"
                            " µs/call"
                            + (f", redis {redis_cpu:,.0f} µs/call" if redis_cpu is not None else "")
                            + f", {row['errors']} errors, other load "
                            f"{row['other_busy_cores']:.2f} cores"
                        )
    finally:
        for proc in reversed(procs):
            proc.stop()
    report["rows"] = rows
    report["summary"] = summarize(rows)
    report["loadavg1_at_end"] = procstat.loadavg1()
    report["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout
    report["elapsed_s"] = time.monotonic() - progress.started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}-quota.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (RESULTS / f"{stamp}-quota.md").write_text(text)
    print(text)
    progress.say(f"done: bench/results/{stamp}-quota.md")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
