"""`make bench-paced`: many concurrent streams at a model's pace, the workload a gateway's cores are
really spent on (100 deltas sent at once, the streamed rows of bench/run.py, is not).

bench/instant_upstream.py --pace 20 streams every answer at 20 tokens per second, each token's
text its wall-clock send time ("t<unix-ns> "). Called directly (the measurement's own floor: what
the upstream and the load generator add on these cores), then with in front of it, each in turn:

  grpc-floor     bench/echo_floor.py --stamp pacing its own tokens, no upstream: what grpc.aio
                 alone costs per paced token
  sse-floor      bench/sse_floor.py: a bare grpc.aio server relaying the upstream's events with
                 aiohttp, one message per event: what grpc.aio and aiohttp alone cost, the least
                 a Python gateway built on them can
  modelwire      `provider = "openai"` on that upstream, one process, called over gRPC
  modelwire ×N   the same with `--processes` = CPUs (as many as LiteLLM gets workers)
  LiteLLM        bench/run.py's LiteLLM (--num_workers = CPUs) on that upstream, called over SSE

The load generator bench/pacedload (Go: Python on two cores cannot read 2,000 streams × 20 tokens/s
without becoming what is measured) holds 500, 1,000 and 2,000 streams open, opened over a ramp,
back to back, 200 tokens each (10 s), and after a warm-up records over a fixed window: tokens
delivered, and for each consecutive pair of tokens of a stream the gap at the caller minus the gap
at the upstream ("added inter-token latency"; a message carrying several tokens gives each its
arrival time). Per row: the server process tree's CPU (utime + stime from /proc, over the window)
per delivered token, tokens/s, added gap p50/p99, errors; per target, the stream count where the
added p99 passes 10 ms. Every worker admits all streams (`max_concurrency` = the most streams).

    .venv/bin/python bench/paced.py [--streams 500,1000,2000] [--window 10]
        [--targets upstream,grpc-floor,sse-floor,modelwire,modelwire-pN,litellm]
        [--pacedload PATH] [--litellm PATH]

Alone it writes bench/results/<stamp>-paced.{json,md}; `make bench` runs it as its `paced` part.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import procstat  # noqa: E402
import run  # noqa: E402

RATE = 20  # tokens per second per stream
TOKENS = 200  # tokens per stream: 10 s at RATE
COUNTS = (500, 1000, 2000)
THRESHOLD_MS = 10.0  # the added p99 whose stream count is reported
PACEDLOAD = ROOT / ".tools" / "pacedload"

Row = dict[str, Any]


@dataclass
class Settings:
    pacedload: Path
    counts: tuple[int, ...] = COUNTS
    window_s: float = 10.0
    warmup_s: float = 3.0
    idle_wait_s: float = 20.0

    def ramp_s(self, streams: int) -> float:
        """Opening 2,000 streams (and LiteLLM's 2,000 connections) takes a moment: 1 s per 400."""
        return max(2.0, streams / 400)


def _start_modelwire(ctx: run.Context, processes: int, most: int) -> run.Running:
    proc = run.start_worker(
        ctx,
        f"paced-modelwire-p{processes}",
        run._openai_model(ctx.upstream),
        processes=processes,
        max_concurrency=most,
    )
    return run._grpc_running([proc], proc.address())


def _grpc_floor(ctx: run.Context) -> run.Running:
    """bench/echo_floor.py pacing its own stamped tokens: what grpc.aio alone costs per token."""
    proc = run.Proc(
        "paced-grpc-floor",
        [
            str(ctx.python),
            str(HERE / "echo_floor.py"),
            "--port",
            "0",
            "--model",
            run.MODEL,
            "--chunks",
            str(TOKENS),
            "--interval",
            str(1 / RATE),
            "--stamp",
        ],
        ctx.workdir,
        ready_text="echo floor on",
    )
    return run._grpc_running([proc], proc.address())


def _sse_floor(ctx: run.Context) -> run.Running:
    """bench/sse_floor.py on the paced upstream: what grpc.aio and aiohttp alone cost per token."""
    proc = run.Proc(
        "paced-sse-floor",
        [str(ctx.python), str(HERE / "sse_floor.py"), "--port", "0", "--upstream", ctx.upstream],
        ctx.workdir,
        ready_text="sse floor on",
    )
    return run._grpc_running([proc], proc.address())


def _direct(ctx: run.Context, upstream: run.Proc) -> run.Running:
    # The upstream itself: its process is measured as the server here, as in run.py's HTTP floor.
    return run.Running("http", ctx.upstream, procstat.ProcessGroup([upstream.pid]), [])


# key: (label, start(ctx, the most streams it must admit, the paced upstream))
TARGETS: dict[str, tuple[str, Callable[[run.Context, int, run.Proc], run.Running]]] = {
    "upstream": ("paced upstream directly", lambda ctx, most, upstream: _direct(ctx, upstream)),
    "grpc-floor": (
        "bare grpc.aio, pacing its own tokens",
        lambda ctx, most, upstream: _grpc_floor(ctx),
    ),
    "sse-floor": (
        "bare grpc.aio + aiohttp relay → paced upstream",
        lambda ctx, most, upstream: _sse_floor(ctx),
    ),
    "modelwire": (
        "modelwire → paced upstream",
        lambda ctx, most, upstream: _start_modelwire(ctx, 1, most),
    ),
    "modelwire-pN": (
        f"modelwire --processes {run.CPUS} → paced upstream",
        lambda ctx, most, upstream: _start_modelwire(ctx, run.CPUS, most),
    ),
    "litellm": (
        f"LiteLLM (--num_workers {run.CPUS}) → paced upstream",
        lambda ctx, most, upstream: run.start_litellm(ctx),
    ),
}


def first_over(rows: Sequence[Row], threshold_ms: float = THRESHOLD_MS) -> int | None:
    """The smallest stream count whose added p99 is above `threshold_ms` (a row that delivered no
    gap at all counts as above); None when every count held it."""
    for row in sorted(rows, key=lambda row: row["streams"]):
        p99 = (row.get("added_gap_ms") or {}).get("p99")
        if p99 is None or p99 > threshold_ms:
            return int(row["streams"])
    return None


def _lines_until(stream: Any, text: str, seen: list[str]) -> None:
    for line in stream:
        seen.append(line)
        if line.strip() == text:
            return
    raise RuntimeError(f"pacedload ended before {text!r}: {''.join(seen)[-2000:]}")


def measure(
    settings: Settings,
    key: str,
    running: run.Running,
    upstream: procstat.ProcessGroup,
    streams: int,
) -> Row:
    """One row: `streams` paced streams through `running`; the CPU read where pacedload says its
    window starts and ends."""
    ramp_s = settings.ramp_s(streams)
    command = [
        str(settings.pacedload),
        "-proto",
        running.protocol,
        "-addr",
        running.address,
        "-model",
        run.MODEL,
        "-streams",
        str(streams),
        "-tokens",
        str(TOKENS),
        "-ramp",
        f"{ramp_s:g}s",
        "-warmup",
        f"{settings.warmup_s:g}s",
        "-window",
        f"{settings.window_s:g}s",
    ]
    other_before = procstat.wait_for_idle(0.35, settings.idle_wait_s)
    load1 = procstat.loadavg1()
    loadgen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A stuck generator is ended, not waited for.
    watchdog = threading.Timer(ramp_s + settings.warmup_s + settings.window_s + 120, loadgen.kill)
    watchdog.start()
    seen: list[str] = []
    try:
        assert loadgen.stderr is not None
        _lines_until(loadgen.stderr, "window start", seen)
        server0, upstream0 = running.group.snapshot(), upstream.snapshot()
        loadgen0 = procstat.cpu_seconds(loadgen.pid)
        ours = [*running.group.roots, *upstream.roots, loadgen.pid]
        with run.OtherLoad(ours) as other:
            _lines_until(loadgen.stderr, "window end", seen)
            server_cpu = running.group.cpu_since(server0)
            upstream_cpu = upstream.cpu_since(upstream0)
            loadgen_cpu = procstat.cpu_seconds(loadgen.pid) - loadgen0
            rss = running.group.rss_mib()
        out, err = loadgen.communicate()
    finally:
        watchdog.cancel()
        if loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
    if loadgen.returncode != 0:
        raise RuntimeError(f"pacedload failed ({loadgen.returncode}): {err.strip()[-2000:]}")
    result: Row = json.loads(out)
    window = settings.window_s
    tokens = result["tokens"]
    return {
        "target": key,
        "label": TARGETS[key][0],
        "rate": RATE,
        **result,
        "offered_tokens_per_s": streams * RATE,
        "server_cpu_s": server_cpu,
        "server_cores": server_cpu / window,
        "cpu_us_per_token": 1e6 * server_cpu / tokens if tokens else None,
        "upstream_cores": upstream_cpu / window,
        "loadgen_cores": loadgen_cpu / window,
        "rss_mib": rss,
        "server_processes": len(running.group.pids()),
        "loadavg1_at_start": load1,
        "other_busy_cores_before": other_before,
        "other_busy_cores": other.cores,
    }


def run_paced(
    ctx: run.Context, settings: Settings, progress: run.Progress, targets: Sequence[str]
) -> dict[str, Any]:
    """Every target at every stream count (a step each), behind its own paced upstream; the
    report's `paced` part."""
    result: dict[str, Any] = {
        "rate": RATE,
        "tokens_per_stream": TOKENS,
        "counts": list(settings.counts),
        "window_s": settings.window_s,
        "warmup_s": settings.warmup_s,
        "threshold_ms": THRESHOLD_MS,
        "rows": [],
        "failures": {},
    }
    upstream = run.Proc(
        "paced-upstream",
        [
            str(ctx.python),
            str(HERE / "instant_upstream.py"),
            "--port",
            "0",
            "--pace",
            str(RATE),
            "--chunks",
            str(TOKENS),
        ],
        ctx.workdir,
        ready_text="instant upstream on",
    )
    paced_ctx = dataclasses.replace(ctx, upstream="http://" + upstream.address())
    group = procstat.ProcessGroup([upstream.pid])
    try:
        for key in targets:
            label, start = TARGETS[key]
            progress.say(f"{label}: starting")
            try:
                running = start(paced_ctx, max(settings.counts), upstream)
            except Exception as error:  # noqa: BLE001 - one target failing must not lose the others
                result["failures"][key] = f"start: {error}"
                progress.done += len(settings.counts)
                progress.say(f"{label}: FAILED to start: {error}")
                continue
            try:
                for streams in settings.counts:
                    row = measure(settings, key, running, group, streams)
                    result["rows"].append(row)
                    gaps = row["added_gap_ms"] or {}
                    progress.step(
                        f"{label}, {streams:,} streams at {RATE}/s: "
                        f"{row['tokens_per_s']:,.0f} of {row['offered_tokens_per_s']:,} tokens/s, "
                        f"added gap p50 {gaps.get('p50', float('nan')):.2f} ms, p99 "
                        f"{gaps.get('p99', float('nan')):.2f} ms, "
                        f"{row['cpu_us_per_token'] or 0:.0f} CPU-µs per token, {row['errors']} "
                        f"errors, other load {row['other_busy_cores']:.2f} cores"
                    )
            except Exception as error:  # noqa: BLE001
                result["failures"][key] = str(error)
                progress.say(f"{label}: FAILED: {error}")
            finally:
                running.stop()
    finally:
        upstream.stop()
    result["first_over"] = {
        key: first_over([row for row in result["rows"] if row["target"] == key])
        for key in targets
        if any(row["target"] == key for row in result["rows"])
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default=",".join(map(str, COUNTS)), help="stream counts")
    parser.add_argument("--window", type=float, default=10.0, help="measured seconds per row")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--pacedload", type=Path, default=PACEDLOAD)
    parser.add_argument(
        "--litellm", type=Path, default=ROOT / ".tools" / "litellm-venv" / "bin" / "litellm"
    )
    parser.add_argument("--max-load", type=float, default=0.7)
    args = parser.parse_args()
    targets = [key for key in args.targets.split(",") if key]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if not args.pacedload.exists():
        parser.error(f"{args.pacedload} not found (make bench-paced builds it)")
    settings = Settings(
        pacedload=args.pacedload,
        counts=tuple(int(count) for count in args.streams.split(",")),
        window_s=args.window,
    )
    progress = run.Progress(len(targets) * len(settings.counts))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="modelwire-bench-paced-"))
    progress.say(f"bench/paced.py: logs in {workdir}")
    load = procstat.wait_for_load(args.max_load, 120, progress.say)
    python = Path(sys.executable)
    ctx = run.Context(
        workdir=workdir,
        modelwire=python.with_name("modelwire"),
        python=python,
        litellm=args.litellm,
    )
    report: dict[str, Any] = {
        "stamp": stamp,
        "machine": run.machine(),
        "loadavg1_at_start": load,
        "paced": run_paced(ctx, settings, progress, targets),
        "loadavg1_at_end": procstat.loadavg1(),
        "elapsed_s": time.monotonic() - progress.started,
    }
    import report as render

    run.RESULTS.mkdir(exist_ok=True)
    (run.RESULTS / f"{stamp}-paced.json").write_text(json.dumps(report, indent=1) + "\n")
    text = render.paced_markdown(report)
    (run.RESULTS / f"{stamp}-paced.md").write_text(text)
    print(text)
    progress.say(f"done: bench/results/{stamp}-paced.md (logs in {workdir})")
    return 1 if report["paced"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
