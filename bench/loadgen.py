"""The load generators, behind one result type: ghz for gRPC, oha for HTTP.

Both run closed-loop here: `c` workers each send their next request when the previous one has
answered. That is ghz's only model; oha runs the same way (no `-q`), so the two sides of every
comparison are driven identically. A closed loop under-reports tail latency when a server stalls
(coordinated omission): read p99 as "latency at this concurrency", not as "latency at this arrival
rate".

No call is cut off at the end of a run, because cutting them off keeps only the fast ones from the
last seconds (the slow calls in flight are dropped, which flatters a slow server's percentiles):
ghz runs a fixed number of calls (`total`, sized from a pilot run to last about the duration), and
oha waits for the requests in flight at its deadline (`-w`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
WORKER_PROTO = PROTO_ROOT / "modelwire" / "v1" / "worker.proto"


_GHZ_END_OF_RUN = (
    "the client connection is closing",
    "use of closed network connection",
    "context canceled",
)


@dataclass
class LoadResult:
    ok: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(command: list[str], timeout_s: float) -> tuple[str, float]:
    """Runs the generator; returns its stdout and the CPU seconds it used."""
    before = _children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    cpu = _children_cpu() - before
    if done.returncode != 0 and not done.stdout.strip():
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return done.stdout, cpu


def ghz(
    binary: Path,
    address: str,
    method: str,
    data: dict[str, Any],
    concurrency: int,
    duration_s: float,
    connections: int,
    total: int | None = None,
) -> LoadResult:
    """`method` is "Generate" or "GenerateStream" of modelwire.v1.ModelWorker. With `total`, runs
    exactly that many calls (every one completes); otherwise for `duration_s`, cancelling the
    rest."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(data, handle)
        data_file = handle.name
    command = [
        str(binary),
        "--insecure",
        "--proto",
        str(WORKER_PROTO),
        "--import-paths",
        str(PROTO_ROOT),
        "--call",
        f"modelwire.v1.ModelWorker.{method}",
        "--data-file",
        data_file,
        "-c",
        str(concurrency),
        "--connections",
        str(max(1, min(connections, concurrency))),
        *(["-n", str(total)] if total else ["-z", f"{duration_s:g}s", "-n", "0"]),
        "--timeout",
        "30s",
        "-O",
        "json",
        address,
    ]
    try:
        out, cpu = _run(command, 10 * duration_s + 120)
    finally:
        Path(data_file).unlink(missing_ok=True)
    report = json.loads(out)
    codes: dict[str, int] = report.get("statusCodeDistribution") or {}
    ok = int(codes.get("OK", 0))
    errors: dict[str, int] = {}
    for message, count in (report.get("errorDistribution") or {}).items():
        # ghz ends a -z run by closing its connections under the calls in flight; those are the
        # run's end, not the server's errors.
        if any(marker in message for marker in _GHZ_END_OF_RUN):
            continue
        errors[message] = int(count)
    total_s = report.get("total", 0) / 1e9 or duration_s
    percentiles = {
        int(item["percentage"]): item["latency"] / 1e6
        for item in report.get("latencyDistribution") or []
    }
    return LoadResult(
        ok=ok,
        errors=sum(errors.values()),
        duration_s=total_s,
        rps=ok / total_s if total_s else 0.0,
        p50_ms=percentiles.get(50, 0.0),
        p90_ms=percentiles.get(90, 0.0),
        p99_ms=percentiles.get(99, 0.0),
        error_kinds=errors,
        loadgen_cpu_s=cpu,
    )


def oha(
    binary: Path, url: str, body: dict[str, Any], concurrency: int, duration_s: float
) -> LoadResult:
    command = [
        str(binary),
        "--no-tui",
        "--output-format",
        "json",
        "-c",
        str(concurrency),
        "-z",
        f"{duration_s:g}s",
        "-w",
        "-m",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer dummy",
        "-d",
        json.dumps(body),
        "-t",
        "30s",
        url,
    ]
    out, cpu = _run(command, duration_s + 120)
    report = json.loads(out)
    summary = report["summary"]
    codes = {str(k): int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}
    ok = codes.get("200", 0)
    errors = {f"HTTP {code}": count for code, count in codes.items() if code != "200"}
    for kind, count in (report.get("errorDistribution") or {}).items():
        # oha ends a -z run by aborting the requests in flight; those are the deadline's.
        if "deadline" not in kind.lower():
            errors[kind] = int(count)
    total_s = float(summary.get("total") or duration_s)
    latency = report.get("latencyPercentiles") or {}
    return LoadResult(
        ok=ok,
        errors=sum(errors.values()),
        duration_s=total_s,
        rps=ok / total_s if total_s else 0.0,
        p50_ms=float(latency.get("p50") or 0) * 1000,
        p90_ms=float(latency.get("p90") or 0) * 1000,
        p99_ms=float(latency.get("p99") or 0) * 1000,
        error_kinds=errors,
        loadgen_cpu_s=cpu,
    )
