"""The harness bench/quota.py and bench/route.py share: one kind of worker, several ways (the
variants, the first of them the baseline), each its own process, against bench/instant_upstream.py.

A script takes the options `arguments` makes, opens a `Harness` (the report's frame, a work
directory, the processes it starts, stopped when the `with` block ends), starts and checks its
workers, then calls `Harness.rounds`: at each concurrency level and call mode, every round
measures every variant once, one after the other, in an order rotated from round to round. Each
measurement (`measure`) is ghz at the concurrency, closed loop, after a pilot at the same
concurrency that sizes a run of about `--duration` (so no call is cut off); CPU per call is the
worker's, from /proc, and that of the processes beside it (the upstream, a store) apart.
`summarize` gives each figure's median over the rounds and the spread of its ratio (or
difference) to the baseline of the same round; `table` and the sentences `machine`, `method`
and `took` lay them out in markdown; `Harness.finish` writes bench/results/<stamp>-<name>.json
and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import loadgen
import procstat
import run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

Row = dict[str, Any]
Spread = dict[str, float]
# What `measure` calls just before the run; what that returns, it calls after the run with the
# calls that succeeded, for fields of the script's own in the row.
Tally = Callable[[], Callable[[int], Row]]
Compare = Callable[[Row, Row], float]


def arguments(
    doc: str | None,
    duration: float,
    variants: Sequence[str],
    extra: Sequence[str],
    own: Callable[[argparse.ArgumentParser], object] | None = None,
) -> argparse.ArgumentParser:
    """The options every such script takes (`own` adds the script's, after --connections):
    `variants`, those run by default, the baseline first; `extra`, those only on request."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,64", help="comma-separated concurrency levels")
    parser.add_argument("--modes", default="unary,stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=duration, help="seconds per measurement")
    parser.add_argument("--pilot", type=float, default=1.5)
    parser.add_argument("--idle-wait", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=4)
    if own is not None:
        own(parser)
    parser.add_argument("--max-load", type=float, default=0.7)
    parser.add_argument(
        "--variants",
        default=",".join(variants),
        help=f"comma-separated, `{variants[0]}` first (also: {', '.join(extra)})",
    )
    parser.add_argument("--ghz", type=Path, default=ROOT / ".tools" / "bin" / "ghz")
    return parser


def chosen_variants(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    variants: Sequence[str],
    extra: Sequence[str],
) -> tuple[str, ...]:
    """--variants, checked (the baseline first, each a known one), and ghz where --ghz says."""
    chosen = tuple(args.variants.split(","))
    known = (*variants, *extra)
    if chosen[0] != variants[0] or not set(chosen) <= set(known):
        parser.error(f"--variants: `{variants[0]}` first, then of {', '.join(known)}")
    if not args.ghz.exists():
        parser.error(f"ghz not found at {args.ghz} (make bench-tools)")
    return chosen


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout


class Harness:
    """One run of bench/<name>.py: waits for the machine's load to settle, then holds the
    report (`settings`: the script's own, after the shared ones), the work directory (the
    processes' logs), the processes started, the rows measured."""

    def __init__(
        self,
        name: str,
        args: argparse.Namespace,
        variants: tuple[str, ...],
        settings: dict[str, Any],
    ) -> None:
        self.name = name
        self.args = args
        self.variants = variants
        self.levels = [int(level) for level in args.levels.split(",")]
        self.modes: list[str] = args.modes.split(",")
        self.stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"modelwire-bench-{name}-"))
        steps = len(self.levels) * len(self.modes) * args.rounds * len(variants)
        self.progress = run.Progress(steps)
        self.progress.say(f"bench/{name}.py: logs in {self.workdir}")
        load_at_start = procstat.wait_for_load(args.max_load, 120, self.progress.say)
        self.python = Path(sys.executable)
        self.modelwire = self.python.with_name("modelwire")
        self.procs: list[run.Proc] = []
        self.rows: list[Row] = []
        self.report: dict[str, Any] = {
            "stamp": self.stamp,
            "machine": run.machine(),
            "uptime_at_start": _uptime(),
            "loadavg1_at_start": load_at_start,
            "settings": {
                "levels": self.levels,
                "modes": self.modes,
                "variants": variants,
                "rounds": args.rounds,
                "duration_s": args.duration,
                "pilot_s": args.pilot,
                "connections": args.connections,
                **settings,
            },
        }

    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def start(self, proc: run.Proc) -> run.Proc:
        """`proc` is stopped with the others, last started first."""
        self.procs.append(proc)
        return proc

    def start_upstream(self) -> run.Proc:
        """bench/instant_upstream.py, on a port of its own."""
        return self.start(
            run.Proc(
                "instant-upstream",
                [str(self.python), str(HERE / "instant_upstream.py"), "--port", "0"],
                self.workdir,
                ready_text="instant upstream on",
            )
        )

    def start_worker(self, variant: str, command: list[str]) -> run.Proc:
        """A variant's worker, up when it says it is serving."""
        return self.start(
            run.Proc(
                f"worker-{variant}",
                command,
                self.workdir,
                ready_text="modelwire serving",
                timeout_s=90,
            )
        )

    def others(self) -> list[int]:
        """The processes started here: what the other load of a measurement leaves out."""
        return [proc.pid for proc in self.procs]

    def rounds(
        self,
        measure: Callable[[str, str, int], Row],
        note: Callable[[Row], str] | None = None,
    ) -> None:
        """At each level and mode, --rounds rounds of `measure(variant, mode, concurrency)`, the
        variants in an order rotated from round to round; each row is told its variant, mode,
        concurrency and round, and said in a line (`note` adds to it, after the worker's CPU)."""
        for concurrency in self.levels:
            for mode in self.modes:
                for index in range(self.args.rounds):
                    turn = index % len(self.variants)
                    for variant in self.variants[turn:] + self.variants[:turn]:
                        row = measure(variant, mode, concurrency)
                        row.update({"variant": variant, "mode": mode, "concurrency": concurrency})
                        row["round"] = index
                        self.rows.append(row)
                        self.progress.step(
                            f"c={concurrency} {mode} round {index + 1} {variant}: "
                            f"{row['rps']:,.0f} calls/s, p50 {row['p50_ms']:.2f} ms, p99 "
                            f"{row['p99_ms']:.2f} ms, worker {row['worker_cpu_us_per_call']:,.0f}"
                            " µs/call"
                            + (note(row) if note is not None else "")
                            + f", {row['errors']} errors, other load "
                            f"{row['other_busy_cores']:.2f} cores"
                        )

    def finish(
        self,
        summarize: Callable[[list[Row]], list[Row]],
        markdown: Callable[[dict[str, Any]], str],
    ) -> None:
        """The report completed (the rows, their summary, the load at the end), written to
        bench/results/<stamp>-<name>.json and, as `markdown` lays it out, .md (also printed);
        the work directory removed."""
        report = self.report
        report["rows"] = self.rows
        report["summary"] = summarize(self.rows)
        report["loadavg1_at_end"] = procstat.loadavg1()
        report["uptime_at_end"] = _uptime()
        report["elapsed_s"] = time.monotonic() - self.progress.started
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{self.stamp}-{self.name}.json").write_text(json.dumps(report, indent=1) + "\n")
        text = markdown(report)
        (RESULTS / f"{self.stamp}-{self.name}.md").write_text(text)
        print(text)
        self.progress.say(f"done: bench/results/{self.stamp}-{self.name}.md")
        shutil.rmtree(self.workdir, ignore_errors=True)


def measure(
    args: argparse.Namespace,
    address: str,
    request: dict[str, Any],
    worker: procstat.ProcessGroup,
    sides: dict[str, procstat.ProcessGroup | None],
    others: list[int],
    mode: str,
    concurrency: int,
    tally: Tally | None = None,
) -> Row:
    """One measurement of one worker: a pilot sizing the run, then the run. CPU per call: the
    worker's, and each of `sides`' apart (`<side>_cpu_us_per_call`, None for a side this worker
    has not); `tally`'s fields (see Tally) come right after ghz's."""
    method = "Generate" if mode == "unary" else "GenerateStream"
    pilot = loadgen.ghz(
        args.ghz, address, method, request, concurrency, args.pilot, args.connections
    )
    total = max(concurrency, round(pilot.rps * args.duration))
    procstat.wait_for_idle(0.35, args.idle_wait)
    tallied = tally() if tally is not None else None
    load1 = procstat.loadavg1()
    worker0 = worker.snapshot()
    sides0 = {side: group.snapshot() for side, group in sides.items() if group is not None}
    started = time.monotonic()
    with run.OtherLoad(others) as other:
        result = loadgen.ghz(
            args.ghz,
            address,
            method,
            request,
            concurrency,
            args.duration,
            args.connections,
            total=total,
        )
    wall = time.monotonic() - started
    cpu = worker.cpu_since(worker0)
    calls = max(result.ok, 1)
    beside = {
        f"{side}_cpu_us_per_call": (
            1e6 * group.cpu_since(sides0[side]) / calls if group is not None else None
        )
        for side, group in sides.items()
    }
    return {
        **result.to_json(),
        **(tallied(result.ok) if tallied is not None else {}),
        "worker_cpu_us_per_call": 1e6 * cpu / calls,
        "worker_cores": cpu / wall,
        **beside,
        "loadavg1_at_start": load1,
        "other_busy_cores": other.cores,
    }


def _median(rows: list[Row], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def spread(values: list[float]) -> Spread | None:
    """Median, low and high; None for no values."""
    if not values:
        return None
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def ratio(key: str) -> Compare:
    """A row's `key` over the baseline's."""
    return lambda row, base: float(row[key] / base[key])


def difference(key: str) -> Compare:
    """A row's `key` less the baseline's."""
    return lambda row, base: float(row[key] - base[key])


def summarize(
    rows: list[Row], base: str, sides: Sequence[str], against: dict[str, Compare]
) -> list[Row]:
    """Per (level, mode, variant): the medians over the rounds (the worker's figures and each
    side's CPU per call), the errors and rounds; and each of `against` taken for every round
    against the `base` variant's row of the same round: its spread (median, low, high)."""
    figures = (
        "rps",
        "p50_ms",
        "p99_ms",
        "worker_cpu_us_per_call",
        *(f"{side}_cpu_us_per_call" for side in sides),
        "other_busy_cores",
        "loadavg1_at_start",
    )
    summary = []
    keys = list(dict.fromkeys((row["concurrency"], row["mode"]) for row in rows))
    for concurrency, mode in keys:
        here = [row for row in rows if (row["concurrency"], row["mode"]) == (concurrency, mode)]
        baseline = {row["round"]: row for row in here if row["variant"] == base}
        for variant in dict.fromkeys(row["variant"] for row in rows):
            mine = [row for row in here if row["variant"] == variant]
            if not mine:
                continue
            paired = [(row, baseline[row["round"]]) for row in mine if row["round"] in baseline]
            entry: Row = {"concurrency": concurrency, "mode": mode, "variant": variant}
            for key in figures:
                entry[key] = _median(mine, key)
            entry["errors"] = sum(row["errors"] for row in mine)
            entry["rounds"] = len(mine)
            for name, compare in against.items():
                entry[name] = spread([compare(row, base_row) for row, base_row in paired])
            summary.append(entry)
    return summary


def times(spread: Spread | None) -> str:
    """A ratio's spread: `1.04× (0.98–1.12)`."""
    if spread is None:
        return "—"
    return f"{spread['median']:.2f}× ({spread['low']:.2f}–{spread['high']:.2f})"


def delta(spread: Spread | None, digits: int | None = 2) -> str:
    """A difference's spread: `+0.05 (-0.01 to +0.12)`; `digits` None: two below ±10, else
    none."""
    if spread is None:
        return "—"
    if digits is None:
        digits = 2 if abs(spread["median"]) < 10 else 0
    median, low, high = spread["median"], spread["low"], spread["high"]
    return f"{median:+.{digits}f} ({low:+.{digits}f} to {high:+.{digits}f})"


def measured(entry: Row) -> list[str]:
    """The cells every table has after its first: the call, c, calls/s, p50 ms, p99 ms."""
    return [
        entry["mode"],
        str(entry["concurrency"]),
        f"{entry['rps']:,.0f}",
        f"{entry['p50_ms']:.2f}",
        f"{entry['p99_ms']:.2f}",
    ]


def load(entry: Row) -> str:
    """The load cell: the load average when the measurement started / other processes' cores."""
    return f"{entry['loadavg1_at_start']:.2f} / {entry['other_busy_cores']:.2f}"


def table(header: list[str], summary: list[Row], cells: Callable[[Row], list[str]]) -> str:
    """A markdown table, a row per summary entry; a variant's errors follow its first cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        row = cells(entry)
        if entry["errors"]:
            row[0] += f" ({entry['errors']} errors)"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine(report: dict[str, Any]) -> str:
    """`2 × <cpu>, Python <version>, grpcio <version>`."""
    facts = report["machine"]
    return f"{facts['cpus']} × {facts['cpu']}, Python {facts['python']}, grpcio {facts['grpcio']}"


def method(report: dict[str, Any], compared: str) -> str:
    """The sentences on the rounds and the load; `compared`: what the table sets against the
    baseline (`ratios against `none``)."""
    settings = report["settings"]
    return (
        f"ghz at c = {', '.join(map(str, settings['levels']))}, {settings['rounds']} interleaved "
        f"rounds of about {settings['duration_s']:g} s per variant; medians over the rounds, "
        f"{compared} of the same round (median, low–high). Load: 1-minute load average "
        f"{report['loadavg1_at_start']:.2f} at the start, {report['loadavg1_at_end']:.2f} at the "
        "end; the load column: the load average when the measurement started / the cores other "
        "processes used during it."
    )


def took(report: dict[str, Any]) -> str:
    return f"Took {report['elapsed_s'] / 60:.1f} min."
