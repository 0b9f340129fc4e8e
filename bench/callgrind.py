"""`make bench-callgrind`: what modelwire's own code costs per call and per streamed delta, in
instructions, a count that stays the same run after run whatever else the machine does (its CPU
time moves by 20–30% on a shared VM). For comparing changes; the ratio runs of `make bench` stay
the verdict.

The process measured runs under `valgrind --tool=callgrind` (threads and all); everything else runs
natively. This harness drives it from outside with a fixed number of calls, one at a time: a
warm-up, then `callgrind_control --zero PID`, the measured calls, `callgrind_control --dump PID`.
Start-up, warm-up and shutdown are left out; what is counted is Ir (instructions executed) in the
window, divided by its calls. What the process does by the clock meanwhile (heartbeats, keepalive
pings) is counted too, and weighs more than at full speed: a few thousand Ir per call here.

  floor           bench/echo_floor.py, unary: grpc.aio's own cost of a call
  worker          `modelwire serve`, echo provider: unary Generate; GenerateStream of 100 deltas and
                  of 1, their difference / 99 is the cost of a streamed delta (a slowed worker
                  coalesces a stream's backlog: the messages per call say how many went)
  gateway         `modelwire gateway` (the worker and a controller outside): unary, and whole
                  streams of 100 and of 1 deltas
  gateway-worker  the worker behind a gateway (gateway and controller outside): unary; less the
                  worker's own unary, what gateway calls cost a worker (early headers, relay)
  forward-floor   bench/forward_floor.py in front of the floor (outside): unary
  gateway@V, gateway-worker@V   the same with one of the gateway's layers off (GATEWAY_VARIANTS)

The gateway's share of the ratio target: gateway + (gateway-worker − worker) against
forward-floor. Each scenario runs `--runs` times in fresh processes; the table gives the median and
the spread ((max − min) / median), and for each its top functions by inclusive Ir and its own Ir
by shared object (grpc's core, the interpreter, protobuf, libc).

    .venv/bin/python bench/callgrind.py [--only worker,gateway@no-orca,...] [--runs 3]
        [--calls 400] [--source DIR]    # DIR: another copy of server/, the other side of a change

Writes bench/results/<stamp>-callgrind.{json,md} and keeps the callgrind files beside them
(<stamp>-callgrind/).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from callgrind_control import control  # noqa: E402

# The worker serves the bench's model (100 deltas) and a one-delta model: the difference of their
# streams is the cost of 99 deltas.
ONE_DELTA_MODEL = f"{run.MODEL}-1"
WORKER_MODELS = (
    run.ECHO_MODEL
    + f"""
[[models]]
name = "{ONE_DELTA_MODEL}"
max_concurrency = 1024
max_queue = 4096
provider = "echo"
chunks = 1
chunk_text = "{run.CHUNK_TEXT}"
"""
)
VALGRIND = [
    "valgrind",
    "--tool=callgrind",
    "--dump-instr=no",
    "--collect-systime=no",
    "--fair-sched=yes",
]
# Same hash seed in every run: set and dict orders, and the work they cause, stay the same.
ENV = {"PYTHONHASHSEED": "0"}
START_TIMEOUT_S = 600.0
TOP_FUNCTIONS = 10


@dataclass
class Window:
    """One measured window: `calls` calls of one kind."""

    name: str
    kind: str  # "unary" or "stream"
    model: str
    calls: int


@dataclass
class Measured:
    window: Window
    ir: int
    seconds: float
    messages_per_call: float
    path: Path

    @property
    def per_call(self) -> float:
        return self.ir / self.window.calls


@dataclass
class Scenario:
    key: str
    label: str
    # Starts the processes; returns the address to call and the pid under callgrind.
    start: Callable[["Lab"], tuple[str, int]]
    windows: Callable[[argparse.Namespace], list[Window]]
    results: dict[str, list[Measured]] = field(default_factory=lambda: defaultdict(list))


class Lab:
    """The processes of one scenario's run, stopped on exit."""

    def __init__(
        self, workdir: Path, outdir: Path, stack: ExitStack, name: str, source: Path | None = None
    ) -> None:
        self.workdir, self.outdir, self._stack, self.name = workdir, outdir, stack, name
        # Another copy of modelwire's import package (its parent directory) ahead of the venv's.
        self.env = {**ENV, "PYTHONPATH": str(source)} if source is not None else ENV
        self.python = Path(sys.executable)
        self.modelwire = [str(self.python), str(self.python.with_name("modelwire"))]

    def proc(self, name: str, command: list[str], ready: str, measured: bool = False) -> run.Proc:
        if measured:
            out = self.outdir / f"{self.name}.%p"
            command = [*VALGRIND, f"--callgrind-out-file={out}", *command]
        proc = run.Proc(
            name,
            command,
            self.workdir,
            env=self.env,
            ready_text=ready,
            timeout_s=START_TIMEOUT_S if measured else 90.0,
        )
        self._stack.callback(proc.stop)
        return proc

    def worker(self, measured: bool = False, controller: str | None = None) -> run.Proc:
        port = run.free_port()
        config = self.workdir / f"{self.name}-worker.toml"
        config.write_text(run._worker_toml(port, 1, WORKER_MODELS))
        extra = ["--controller", controller] if controller else []
        command = [*self.modelwire, "serve", "--config", str(config), *extra]
        return self.proc("worker", command, "modelwire serving", measured)

    def controller(self) -> str:
        port = run.free_port()
        command = [*self.modelwire, "controller", "--host", "127.0.0.1", "--port", str(port)]
        self.proc("controller", command, "modelwire controller on")
        return f"127.0.0.1:{port}"

    def gateway(
        self, controller: str, measured: bool = False, variant: str = ""
    ) -> tuple[run.Proc, str]:
        port = run.free_port()
        # A variant runs through this script, which patches the gateway before it is built.
        entry = [str(self.python), __file__, "--serve", variant] if variant else self.modelwire
        command = [
            *entry,
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--controller",
            controller,
        ]
        return self.proc("gateway", command, "modelwire gateway on", measured), f"127.0.0.1:{port}"

    def floor(self, measured: bool = False) -> run.Proc:
        command = [
            str(self.python),
            str(HERE / "echo_floor.py"),
            "--port",
            "0",
            "--chunks",
            str(run.CHUNKS),
            "--chunk-text",
            run.CHUNK_TEXT,
            "--model",
            run.MODEL,
        ]
        return self.proc("floor", command, "echo floor on", measured)

    def forward_floor(self, upstream: str, measured: bool = False) -> run.Proc:
        command = [
            str(self.python),
            str(HERE / "forward_floor.py"),
            "--port",
            "0",
            "--upstream",
            upstream,
        ]
        return self.proc("forward-floor", command, "forward floor on", measured)


def _start_floor(lab: Lab) -> tuple[str, int]:
    floor = lab.floor(measured=True)
    return floor.address(), floor.pid


def _start_worker(lab: Lab) -> tuple[str, int]:
    worker = lab.worker(measured=True)
    return worker.address(), worker.pid


def _start_gateway(lab: Lab, variant: str = "") -> tuple[str, int]:
    controller = lab.controller()
    lab.worker(controller=controller)
    gateway, address = lab.gateway(controller, measured=True, variant=variant)
    return address, gateway.pid


def _start_gateway_worker(lab: Lab, variant: str = "") -> tuple[str, int]:
    controller = lab.controller()
    worker = lab.worker(measured=True, controller=controller)
    _, address = lab.gateway(controller, variant=variant)
    return address, worker.pid


def _start_forward_floor(lab: Lab) -> tuple[str, int]:
    floor = lab.floor()
    forwarder = lab.forward_floor(floor.address(), measured=True)
    return forwarder.address(), forwarder.pid


def _unary(args: argparse.Namespace) -> list[Window]:
    return [Window("unary", "unary", run.MODEL, args.calls)]


def _unary_and_deltas(args: argparse.Namespace) -> list[Window]:
    return [
        *_unary(args),
        Window("stream", "stream", run.MODEL, args.streams),
        Window("stream-1", "stream", ONE_DELTA_MODEL, args.streams),
    ]


SCENARIOS = [
    Scenario("floor", "bare grpc.aio echo floor", _start_floor, _unary),
    Scenario("worker", "modelwire worker, echo provider", _start_worker, _unary_and_deltas),
    Scenario("gateway", "modelwire gateway (worker outside)", _start_gateway, _unary_and_deltas),
    Scenario(
        "gateway-worker", "the worker, called through a gateway", _start_gateway_worker, _unary
    ),
    Scenario(
        "forward-floor", "bare grpc.aio forwarder (floor outside)", _start_forward_floor, _unary
    ),
]


# The gateway with one layer off (`--only gateway@VARIANT`, `gateway-worker@VARIANT`): the
# instructions a layer costs, with what it makes grpc and asyncio do.
GATEWAY_VARIANTS = {
    "no-access-log": "no access line",
    "no-metrics": "no Prometheus updates",
    "no-observer": "no call record, access line or metrics",
    "no-pipeline": "no call pipeline (no interceptor: no record, auth, log, metrics)",
    "no-label": "the metrics label without reading the request",
    "no-pick": "the first instance, without the router's pick",
    "no-orca": "the worker's load report not read",
    "plain-metadata": "only the gateway's via sent to the worker",
    "no-via": "nothing sent to the worker (it then sends no early headers)",
    "one-try": "no retry loop: pick, call, answer",
    "no-deadline-timer": "no asyncio timer for the caller's deadline (gRPC's own still ends it)",
    "plain-channel": "channels to workers without keepalive options",
    "no-bdp": "channels to workers without BDP pings",
}


def _variant(key: str) -> Scenario:
    base, variant = key.split("@", 1)
    start = {"gateway": _start_gateway, "gateway-worker": _start_gateway_worker}[base]
    label = f"{next(s.label for s in SCENARIOS if s.key == base)}: {GATEWAY_VARIANTS[variant]}"
    return Scenario(key, label, functools.partial(start, variant=variant), _unary)


def _patch_gateway(variant: str) -> None:
    """Switches `variant`'s layer off, in the gateway process, before the gateway is built."""
    import grpc

    from modelwire.gateway import router
    from modelwire.gateway import server as gateway
    from modelwire.observe import call_observer
    from modelwire.observe.call_record import CallRecord
    from modelwire.rpc.wire import VIA_KEY

    observer = call_observer.CallObserver
    if variant == "no-access-log":
        call_observer.log_call = lambda *args, **kwargs: None
    elif variant == "no-metrics":
        init = observer.__init__

        def without_metrics(self: Any, metrics: Any, *args: Any, **kwargs: Any) -> None:
            init(self, None, *args, **kwargs)

        observer.__init__ = without_metrics  # type: ignore[method-assign]
    elif variant == "no-observer":
        observer.begin = lambda self, method, *args: CallRecord(method, "")  # type: ignore[method-assign]
        observer.streamed = observer.answered = lambda self, *args: None  # type: ignore[method-assign]
        observer.failed = observer.finished = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    elif variant == "no-pipeline":
        original = grpc.aio.server

        def server(*args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
            return original(*args, interceptors=[], **kwargs)

        grpc.aio.server = server
    elif variant == "no-label":
        gateway.Gateway._model_label = lambda self, raw: run.MODEL  # type: ignore[method-assign]
    elif variant == "no-pick":
        router.Router.pick = lambda self, model, tried: next(iter(self.routes.values()))  # type: ignore[method-assign]
    elif variant == "no-orca":
        gateway.Gateway._observe = staticmethod(lambda *args: None)  # type: ignore[method-assign]
    elif variant == "plain-metadata":
        gateway.Gateway._metadata = lambda self, context: ((VIA_KEY, self._id),)  # type: ignore[method-assign]
    elif variant == "no-via":
        gateway.Gateway._metadata = lambda self, context: ()  # type: ignore[method-assign]
    elif variant in ("plain-channel", "no-bdp"):
        options = router.client_options

        def client_options(*args: Any) -> list[tuple[str, int | str]]:
            if variant == "plain-channel":
                return []
            return [*options(*args), ("grpc.http2.bdp_probe", 0)]

        router.client_options = client_options
    elif variant == "no-deadline-timer":

        class Scope(gateway.CallScope):
            def __init__(self, context: Any) -> None:
                super().__init__(context)
                self._timeout = None

        gateway.CallScope = Scope  # type: ignore[misc]
    elif variant == "one-try":

        async def forward_unary(self: Any, method: str, raw: bytes, context: Any) -> bytes:
            route = self.router.pick(gateway.model_field(raw), set())
            answer: bytes = await route.unary(method)(
                raw, timeout=context.time_remaining(), metadata=self._metadata(context)
            )
            return answer

        gateway.Gateway.forward_unary = forward_unary  # type: ignore[method-assign]


def serve(variant: str, argv: list[str]) -> int:
    _patch_gateway(variant)
    from modelwire.app.cli import main as modelwire

    return modelwire(argv)


# --------------------------------------------------------------------------------------------
# calls


async def _calls(address: str, window: Window, count: int, concurrency: int) -> float:
    """`count` calls, `concurrency` at a time, each checked; the messages per call."""
    import grpc

    from modelwire.v1 import worker_pb2 as pb
    from modelwire.v1 import worker_pb2_grpc as pb_grpc

    request = pb.ModelRequest(
        model=window.model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=run.PROMPT)]
    )
    expected = run.CHUNK_TEXT * (1 if window.model == ONE_DELTA_MODEL else run.CHUNKS)
    left, messages = count, 0

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)

        async def caller() -> None:
            nonlocal left, messages
            while left > 0:
                left -= 1
                if window.kind == "unary":
                    output = await stub.Generate(request, timeout=120)
                    text = output.text
                    messages += 1
                else:
                    parts = []
                    async for chunk in stub.GenerateStream(request, timeout=120):
                        parts.append(chunk.text)
                        messages += 1
                    text = "".join(parts)
                if text != expected:
                    raise RuntimeError(f"{window.name}: wrong answer {text[:60]!r}")

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return messages / max(count, 1)


def _measure(
    address: str, pid: int, outdir: Path, name: str, window: Window, args: argparse.Namespace
) -> Measured:
    warm = max(args.concurrency, window.calls // 5)
    asyncio.run(_calls(address, window, warm, args.concurrency))
    before = set(outdir.glob(f"{name}.{pid}.*"))
    control(pid, "--zero")
    started = time.monotonic()
    messages = asyncio.run(_calls(address, window, window.calls, args.concurrency))
    seconds = time.monotonic() - started
    control(pid, f"--dump={window.name}")
    (path,) = set(outdir.glob(f"{name}.{pid}.*")) - before
    return Measured(window, total_ir(path), seconds, messages, path)


# --------------------------------------------------------------------------------------------
# reading callgrind's files


def total_ir(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals")


_NAME = re.compile(r"^c?(ob|fn)=\((\d+)\)(?: (.*))?$")


def self_costs(path: Path) -> dict[tuple[str, str], int]:
    """Ir spent in each function's own code (callees' excluded), by (object, function): the
    callgrind format's cost lines, less the inclusive line after each `calls=`."""
    names: dict[tuple[str, str], str] = {}
    costs: dict[tuple[str, str], int] = defaultdict(int)
    current, function, skip = "?", "?", False
    for line in path.read_text(errors="replace").splitlines():
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            if skip:
                skip = False
                continue
            fields = line.split()
            if len(fields) > 1:
                costs[(current, function)] += int(fields[1])
            continue
        if line.startswith("calls="):
            skip = True
            continue
        match = _NAME.match(line)
        if match is None:
            continue
        family, number, name = match.groups()
        if name is not None:
            names[(family, number)] = name
        if line.startswith("ob="):
            current = names.get((family, number), "?")
        elif line.startswith("fn="):
            function = names.get((family, number), "?")
    return dict(costs)


def object_group(name: str) -> str:
    base = Path(name).name
    if "cygrpc" in base:
        return "grpc (C core + Cython)"
    if base.startswith(("python", "libpython")):
        return "Python interpreter"
    if "_upb" in base or "_message" in base or "protobuf" in name:
        return "protobuf (upb)"
    if base.startswith(("libc.", "libc-", "ld-linux", "libm.")):
        return "libc"
    return "other"


def top_inclusive(path: Path, count: int = TOP_FUNCTIONS) -> list[tuple[int, str]]:
    """The functions with the most Ir with their callees, as `function [object]`, less the entry
    points every call passes through (over 80% of the total) and the code callgrind cannot name
    (grpc's shared object is stripped)."""
    output = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = total_ir(path)
    rows: list[tuple[int, str]] = []
    for line in output.splitlines():
        match = re.match(r"^\s*([\d,]+)\s+(?:\([\d.]+%\)\s+)?\S*?:(.+?)(?: \[(.+)\])?$", line)
        if match is None:
            continue
        ir, function, obj = int(match.group(1).replace(",", "")), match.group(2), match.group(3)
        if function.startswith("0x") or ir > 0.8 * total:
            continue
        rows.append((ir, f"{function} [{Path(obj).name if obj else '?'}]"))
    return rows[:count]


# --------------------------------------------------------------------------------------------
# the report


@contextmanager
def _lab(workdir: Path, outdir: Path, name: str, source: Path | None) -> Iterator[Lab]:
    with ExitStack() as stack:
        yield Lab(workdir, outdir, stack, name, source)


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def summarize(scenarios: list[Scenario]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        for window, results in scenario.results.items():
            per_call = [m.per_call for m in results]
            rows[f"{scenario.key}/{window}"] = {
                "scenario": scenario.key,
                "window": window,
                "label": scenario.label,
                "calls": results[0].window.calls,
                "ir_per_call": statistics.median(per_call),
                "runs": per_call,
                "spread": _spread(per_call),
                "messages_per_call": results[0].messages_per_call,
            }
    derived: dict[str, float] = {}

    def ir(key: str) -> float | None:
        row = rows.get(key)
        return None if row is None else float(row["ir_per_call"])

    # The gateway passes on what the worker sends: its streams' difference is the worker's
    # coalescing, not a cost of the gateway's per delta.
    many, one = ir("worker/stream"), ir("worker/stream-1")
    if many is not None and one is not None:
        derived["worker per delta"] = (many - one) / (run.CHUNKS - 1)
    gateway, forwarder = ir("gateway/unary"), ir("forward-floor/unary")
    behind, alone = ir("gateway-worker/unary"), ir("worker/unary")
    if behind is not None and alone is not None:
        derived["worker's extra on gateway calls"] = behind - alone
    if gateway is not None and forwarder is not None:
        derived["gateway / forwarder"] = gateway / forwarder
        if behind is not None and alone is not None:
            derived["(gateway + worker's extra) / forwarder"] = (
                gateway + behind - alone
            ) / forwarder
    return {"rows": rows, "derived": derived}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Run `{report['stamp']}` ({report['settings']['source'] or report['commit']}): "
        f"{report['settings']['runs']} runs of each "
        f"scenario in fresh processes, {report['settings']['concurrency']} call(s) at a time; Ir "
        "(instructions) of the measured process per call.",
        "",
        "| scenario | window | calls | Ir per call (median) | spread of runs | messages per call |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"].values():
        lines.append(
            f"| {row['label']} | {row['window']} | {row['calls']} | {row['ir_per_call']:,.0f} | "
            f"{100 * row['spread']:.2f}% | {row['messages_per_call']:g} |"
        )
    if report["derived"]:
        lines += ["", "| derived | value |", "| --- | --- |"]
        for name, value in report["derived"].items():
            shown = f"{value:.2f}×" if "/" in name else f"{value:,.0f} Ir"
            lines.append(f"| {name} | {shown} |")
    for key, found in report["findings"].items():
        lines += [
            "",
            f"**{key}**: own Ir by object, per call: "
            + ", ".join(f"{group} {ir:,.0f}" for group, ir in found["objects"].items()),
        ]
        for kind in ("inclusive", "self"):
            lines += ["", f"| {kind} Ir per call | function |", "| --- | --- |"]
            lines += [f"| {ir:,.0f} | `{name}` |" for ir, name in found[kind]]
    return "\n".join(lines) + "\n"


def findings(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Where each window's instructions went, from its first run's file."""
    found: dict[str, dict[str, Any]] = {}
    for window, results in scenario.results.items():
        if window == "stream-1":
            continue
        first = results[0]
        calls = first.window.calls
        groups: dict[str, float] = defaultdict(float)
        own = self_costs(first.path)
        for (obj, _), ir in own.items():
            groups[object_group(obj)] += ir / calls
        ranked = sorted(own.items(), key=lambda item: -item[1])[:TOP_FUNCTIONS]
        found[f"{scenario.key}/{window}"] = {
            "objects": dict(sorted(groups.items(), key=lambda item: -item[1])),
            "inclusive": [(ir / calls, name) for ir, name in top_inclusive(first.path)],
            "self": [(ir / calls, f"{fn} [{Path(obj).name}]") for (obj, fn), ir in ranked],
        }
    return found


def commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "server", "bench"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head}{'+changes' if dirty else ''}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    keys = [s.key for s in SCENARIOS]
    parser.add_argument(
        "--only",
        default=",".join(keys),
        help=f"comma-separated: {keys}, or gateway@V, gateway-worker@V for V in "
        f"{list(GATEWAY_VARIANTS)}",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400, help="unary calls per window")
    parser.add_argument("--streams", type=int, default=60, help="streams per window")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--name", default="callgrind", help="results file suffix")
    parser.add_argument(
        "--source",
        type=Path,
        help="run the modelwire package under this directory (e.g. a `git archive` of another "
        "commit's server/) instead of the venv's: the other side of a comparison",
    )
    parser.add_argument("--serve", choices=list(GATEWAY_VARIANTS), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.serve:
        return serve(args.serve, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("valgrind not found: install it (Debian: apt-get install valgrind)")
    wanted = args.only.split(",")
    variants = {
        f"{base}@{variant}"
        for base in ("gateway", "gateway-worker")
        for variant in GATEWAY_VARIANTS
    }
    unknown = set(wanted) - set(keys) - variants
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scenarios = [
        next(s for s in SCENARIOS if s.key == key) if "@" not in key else _variant(key)
        for key in wanted
    ]

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run.RESULTS.mkdir(exist_ok=True)
    outdir = run.RESULTS / f"{stamp}-{args.name}"
    outdir.mkdir()
    workdir = Path(tempfile.mkdtemp(prefix="modelwire-callgrind-"))
    print(f"callgrind files in {outdir}, logs in {workdir}", flush=True)
    for number in range(args.runs):
        for scenario in scenarios:
            name = f"{scenario.key}-{number}"
            with _lab(workdir, outdir, name, args.source) as lab:
                address, pid = scenario.start(lab)
                run.wait_grpc(address, START_TIMEOUT_S)
                for window in scenario.windows(args):
                    measured = _measure(address, pid, outdir, name, window, args)
                    scenario.results[window.name].append(measured)
                    print(
                        f"run {number + 1}/{args.runs} {scenario.key} {window.name}: "
                        f"{measured.per_call:,.0f} Ir per call ({measured.seconds:.0f}s)",
                        flush=True,
                    )

    report: dict[str, Any] = {
        "stamp": stamp,
        "commit": commit(),
        "machine": run.machine(),
        "settings": {
            "source": str(args.source) if args.source else None,
            "runs": args.runs,
            "calls": args.calls,
            "streams": args.streams,
            "concurrency": args.concurrency,
            "valgrind": " ".join(VALGRIND),
        },
        **summarize(scenarios),
        "findings": {k: v for s in scenarios for k, v in findings(s).items()},
    }
    (run.RESULTS / f"{stamp}-{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (run.RESULTS / f"{stamp}-{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
