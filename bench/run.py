"""`make bench`: modelwire's overhead against the floor and against LiteLLM, side by side, in one
run.

Every target fronts the same instant upstream and is driven by a load generator on this machine at
fixed concurrency levels for a fixed duration (ghz for gRPC, oha for HTTP, both closed-loop):

  floor          a bare grpc.aio server answering modelwire's messages (bench/echo_floor.py)
  modelwire      `provider = "echo"`, the in-process instant provider, one process
  modelwire ×2   the same with `--processes 2` (SO_REUSEPORT)
  gateway        modelwire's gateway in front of that worker (controller + gateway + worker)
  forward floor  a bare grpc.aio byte forwarder in front of the floor (bench/forward_floor.py):
                 the least the gateway's extra hop can cost
  modelwire→HTTP `provider = "openai"` against the instant HTTP upstream
                 (bench/instant_upstream.py), with one process and with one per CPU (as many
                 as LiteLLM gets workers)
  facade         the same one-process worker called through its HTTP facade (`[http] port`):
                 OpenAI's POST /v1/chat/completions, unary and SSE, driven by oha as LiteLLM is
  LiteLLM        `litellm --config` (openai/ against the same upstream), --num_workers = CPUs
  HTTP floor     the instant upstream itself, called directly

Then CountToken against tiktoken in-process, 1,000 slow streams held by one worker, and the local
model through modelwire against llama-cpp-python directly. Results: bench/results/<stamp>.{json,md};
a full run also writes bench/results/latest.{json,md}, docs/benchmarks.png and the generated part
of docs/benchmarks.md.

    .venv/bin/python bench/run.py [--quick] [--only floor,modelwire,...] [--duration 10]
        [--name facade]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import procstat  # noqa: E402

RESULTS = HERE / "results"
CHUNKS = 100
CHUNK_TEXT = "hello "
MODEL = "gpt-4o"
PROMPT = "Say hello in one word."
CPUS = os.cpu_count() or 1

GRPC_REQUEST = {"model": MODEL, "messages": [{"role": "ROLE_USER", "content": PROMPT}]}
HTTP_UNARY = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False}
HTTP_STREAM = {**HTTP_UNARY, "stream": True, "stream_options": {"include_usage": True}}


# --------------------------------------------------------------------------------------------
# progress


class Progress:
    """One line per step on stderr, with elapsed time and what is left."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{self.done:>3}/{self.total} {elapsed:5.0f}s] {text}", file=sys.stderr, flush=True)

    def step(self, text: str) -> None:
        self.done += 1
        self.say(text)


# --------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Proc:
    """A process this harness started; stopped (its whole tree) on exit."""

    def __init__(
        self,
        name: str,
        command: list[str],
        logdir: Path,
        env: dict[str, str] | None = None,
        ready_text: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.popen = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.ready_line = ""
        if ready_text is not None:
            self.ready_line = self._wait_line(ready_text, timeout_s)
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_line(self, text: str, timeout_s: float) -> str:
        assert self.popen.stdout is not None
        found: list[str] = []

        def read() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                self._log.write(line)
                if text in line:
                    found.append(line.strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not found:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not print {text!r} within {timeout_s:.0f}s; see {self.log_path}"
            )
        return found[0]

    def _drain(self) -> None:
        if self.popen.stdout is None:
            return
        with contextlib.suppress(ValueError, OSError):
            for line in self.popen.stdout:
                self._log.write(line)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def address(self) -> str:
        """HOST:PORT from a ready line such as "modelwire serving gpt-4o on 127.0.0.1:5000 (…)"."""
        return self.ready_line.rsplit(" on ", 1)[1].split()[0]

    def stop(self) -> None:
        pids = procstat.tree([self.pid])
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # Whatever of its tree is left (LiteLLM's workers, --processes children) is ours to end.
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        self._log.close()


def wait_http(url: str, timeout_s: float, body: dict[str, Any] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(
                url,
                data=data,
                headers={"content-type": "application/json", "authorization": "Bearer dummy"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return
        except Exception as error:  # noqa: BLE001 - polling until ready
            last = str(error)
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s: {last}")


def wait_grpc(address: str, timeout_s: float, model: str = MODEL) -> None:
    """Until the worker answers a Generate of `model`."""
    import grpc

    from modelwire.v1 import worker_pb2 as pb
    from modelwire.v1 import worker_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout_s
    last = ""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        while time.monotonic() < deadline:
            try:
                stub.Generate(
                    pb.ModelRequest(
                        model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=PROMPT)]
                    ),
                    timeout=5,
                )
                return
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
            time.sleep(0.3)
    raise RuntimeError(f"{address} did not answer Generate within {timeout_s:.0f}s: {last}")


# --------------------------------------------------------------------------------------------
# targets


@dataclass
class Running:
    protocol: str  # "grpc" or "http"
    address: str  # HOST:PORT (grpc) or http://HOST:PORT (http)
    group: procstat.ProcessGroup
    procs: list[Proc]
    note: str = ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


MODES = ("unary", "stream")


@dataclass
class Target:
    key: str
    label: str
    protocol: str
    start: Callable[["Context"], Running]
    note: str = ""
    modes: tuple[str, ...] = MODES
    # Deltas paced apart: the check wants each delta in a message of its own.
    paced: bool = False


@dataclass
class Context:
    workdir: Path
    modelwire: Path
    python: Path
    upstream: str = ""  # http://127.0.0.1:PORT
    litellm: Path | None = None


def _worker_toml(
    port: int,
    processes: int,
    model_block: str,
    http_port: int | None = None,
    max_concurrency: int = 1024,
) -> str:
    # [http] port: the worker's HTTP facade (OpenAI's and Anthropic's APIs) on a port of its own.
    # Admission admits every call of the benchmark (bench/paced.py raises max_concurrency to its
    # stream count): a call queued in the worker would be measured as the worker's latency.
    http = f"\n[http]\nport = {http_port}\n" if http_port is not None else ""
    return f"""
[server]
host = "127.0.0.1"
port = {port}
processes = {processes}
grace_period_s = 1
{http}
[[models]]
name = "{MODEL}"
max_concurrency = {max_concurrency}
max_queue = {4 * max_concurrency}
{model_block}
"""


ECHO_MODEL = f'provider = "echo"\nchunks = {CHUNKS}\nchunk_text = "{CHUNK_TEXT}"\n'
# The echo rows paced apart: a delta every PACE_S, as a model decodes (if faster than any does), so
# each delta goes as its own message; the floor's paced row pauses the same way.
PACE_S = 0.001
ECHO_PACED_MODEL = ECHO_MODEL + f"chunk_interval_s = {PACE_S}\n"


def _openai_model(upstream: str) -> str:
    return f'provider = "openai"\napi_base = "{upstream}/v1"\ncontext_length = 128000\n'


def start_worker(
    ctx: Context,
    name: str,
    model_block: str,
    processes: int = 1,
    extra: list[str] | None = None,
    http_port: int | None = None,
    max_concurrency: int = 1024,
) -> Proc:
    port = free_port()
    config = ctx.workdir / f"{name}.toml"
    config.write_text(_worker_toml(port, processes, model_block, http_port, max_concurrency))
    command = [str(ctx.modelwire), "serve", "--config", str(config), *(extra or [])]
    return Proc(name, command, ctx.workdir, ready_text="modelwire serving", timeout_s=90)


def _grpc_running(procs: list[Proc], address: str) -> Running:
    try:
        wait_grpc(address, 30)
    except BaseException:  # a server that never answered is not left running behind the harness
        for proc in procs:
            proc.stop()
        raise
    return Running("grpc", address, procstat.ProcessGroup([proc.pid for proc in procs]), procs)


def start_floor(ctx: Context, name: str = "floor", interval_s: float = 0.0) -> Running:
    proc = Proc(
        name,
        [
            str(ctx.python),
            str(HERE / "echo_floor.py"),
            "--port",
            "0",
            "--chunks",
            str(CHUNKS),
            "--chunk-text",
            CHUNK_TEXT,
            "--model",
            MODEL,
            "--interval",
            str(interval_s),
        ],
        ctx.workdir,
        ready_text="echo floor on",
    )
    return _grpc_running([proc], proc.address())


def start_floor_paced(ctx: Context) -> Running:
    return start_floor(ctx, "floor-paced", PACE_S)


def start_forward_floor(ctx: Context) -> Running:
    floor = start_floor(ctx).procs[0]
    try:
        proc = Proc(
            "forward-floor",
            [
                str(ctx.python),
                str(HERE / "forward_floor.py"),
                "--port",
                "0",
                "--upstream",
                floor.address(),
            ],
            ctx.workdir,
            ready_text="forward floor on",
        )
    except BaseException:
        floor.stop()
        raise
    return _grpc_running([floor, proc], proc.address())


def start_modelwire(ctx: Context) -> Running:
    proc = start_worker(ctx, "modelwire-echo", ECHO_MODEL)
    return _grpc_running([proc], proc.address())


def start_modelwire_paced(ctx: Context) -> Running:
    proc = start_worker(ctx, "modelwire-echo-paced", ECHO_PACED_MODEL)
    return _grpc_running([proc], proc.address())


def start_modelwire_p2(ctx: Context) -> Running:
    proc = start_worker(ctx, "modelwire-echo-p2", ECHO_MODEL, processes=2)
    return _grpc_running([proc], proc.address())


def start_gateway(ctx: Context) -> Running:
    controller_port, gateway_port = free_port(), free_port()
    controller = Proc(
        "controller",
        [str(ctx.modelwire), "controller", "--host", "127.0.0.1", "--port", str(controller_port)],
        ctx.workdir,
        ready_text="modelwire controller on",
    )
    procs = [controller]
    try:
        procs.append(
            start_worker(
                ctx,
                "gateway-worker",
                ECHO_MODEL,
                extra=["--controller", f"127.0.0.1:{controller_port}"],
            )
        )
        procs.append(
            Proc(
                "gateway",
                [
                    str(ctx.modelwire),
                    "gateway",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(gateway_port),
                    "--controller",
                    f"127.0.0.1:{controller_port}",
                ],
                ctx.workdir,
                ready_text="modelwire gateway on",
            )
        )
        return _grpc_running(procs, f"127.0.0.1:{gateway_port}")
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        raise


def start_modelwire_http(ctx: Context) -> Running:
    proc = start_worker(ctx, "modelwire-openai", _openai_model(ctx.upstream))
    return _grpc_running([proc], proc.address())


def start_modelwire_http_p2(ctx: Context) -> Running:
    # As many processes as LiteLLM gets workers: the like-for-like comparison.
    proc = start_worker(ctx, "modelwire-openai-p2", _openai_model(ctx.upstream), processes=CPUS)
    return _grpc_running([proc], proc.address())


def start_modelwire_facade(ctx: Context) -> Running:
    # The worker of "modelwire → HTTP upstream" (one process, `provider = "openai"` on the same
    # instant upstream), called through its HTTP facade instead of gRPC: the same body, the same
    # load generator (oha) and the same streamed workload as LiteLLM's rows.
    http_port = free_port()
    proc = start_worker(ctx, "modelwire-facade", _openai_model(ctx.upstream), http_port=http_port)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_http(f"{url}/v1/chat/completions", 30, HTTP_UNARY)
    except BaseException:
        proc.stop()
        raise
    return Running("http", url, procstat.ProcessGroup([proc.pid]), [proc], note="one process")


LITELLM_ENV = {
    # Offline and quiet, as its docs describe: no telemetry, the bundled model cost map, errors
    # only.
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    # No auth on either side of the comparison (the modelwire workers here run without tokens too).
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "NO_DOCS": "True",
}


def start_litellm(ctx: Context) -> Running:
    if ctx.litellm is None or not ctx.litellm.exists():
        raise RuntimeError(
            "LiteLLM is not installed (make bench-tools installs it into .tools/litellm-venv)"
        )
    port = free_port()
    config = ctx.workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {ctx.upstream}/v1\n"
        "      api_key: dummy\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    proc = Proc(
        "litellm",
        [
            str(ctx.litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(CPUS),
            # uvicorn's supervisor kills a worker that does not answer its health check within
            # 5 s: on a busy machine LiteLLM's import alone takes longer, and the workers were
            # killed and restarted without end. Only its patience changes.
            "--timeout_worker_healthcheck",
            "120",
        ],
        ctx.workdir,
        env=LITELLM_ENV,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v1/chat/completions", 120, HTTP_UNARY)
    except BaseException:
        proc.stop()
        raise
    return Running(
        "http", url, procstat.ProcessGroup([proc.pid]), [proc], note=f"--num_workers {CPUS}"
    )


def start_http_floor(ctx: Context) -> Running:
    # The shared upstream itself: its process group is measured as the server here.
    return Running("http", ctx.upstream, procstat.ProcessGroup([UPSTREAM_PID[0]]), [])


UPSTREAM_PID = [0]

TARGETS = [
    Target("floor", "floor: bare grpc.aio", "grpc", start_floor),
    Target("modelwire", "modelwire (echo provider)", "grpc", start_modelwire),
    Target(
        "floor-paced",
        f"floor, deltas {PACE_S * 1000:g} ms apart",
        "grpc",
        start_floor_paced,
        modes=("stream",),
        paced=True,
    ),
    Target(
        "modelwire-paced",
        f"modelwire (echo provider), deltas {PACE_S * 1000:g} ms apart",
        "grpc",
        start_modelwire_paced,
        modes=("stream",),
        paced=True,
    ),
    Target("modelwire-p2", "modelwire --processes 2", "grpc", start_modelwire_p2),
    Target("gateway", "modelwire gateway → worker", "grpc", start_gateway),
    Target("forward-floor", "bare grpc.aio forwarder → floor", "grpc", start_forward_floor),
    Target("modelwire-http", "modelwire → HTTP upstream", "grpc", start_modelwire_http),
    Target(
        "modelwire-http-p2",
        f"modelwire --processes {CPUS} → HTTP upstream",
        "grpc",
        start_modelwire_http_p2,
    ),
    Target(
        "facade",
        "modelwire HTTP facade (OpenAI API) → HTTP upstream",
        "http",
        start_modelwire_facade,
    ),
    Target("litellm", "LiteLLM proxy → HTTP upstream", "http", start_litellm),
    Target("http-floor", "HTTP upstream directly", "http", start_http_floor),
]


# --------------------------------------------------------------------------------------------
# checks: each target answers what the benchmark claims it answers
#
# Deltas may be coalesced (several waiting deltas go as one message), so a stream is checked by
# its concatenated text, and finish reason and usage on its last message, not by its message
# count; "chunks/s" counts deltas of content delivered, 100 per call. Paced targets must still send
# each delta in a message of its own (nothing is waiting when the next is sent).


def verify(running: Running, paced: bool = False) -> str:
    if running.protocol == "grpc":
        import grpc

        from modelwire.v1 import worker_pb2 as pb
        from modelwire.v1 import worker_pb2_grpc as pb_grpc

        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            request = pb.ModelRequest(
                model=MODEL, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=PROMPT)]
            )
            unary = stub.Generate(request, timeout=10)
            chunks = list(stub.GenerateStream(request, timeout=10))
        text_messages = sum(1 for chunk in chunks if chunk.text)
        ok = (
            unary.text == CHUNK_TEXT * CHUNKS
            and "".join(chunk.text for chunk in chunks) == CHUNK_TEXT * CHUNKS
            and (text_messages == CHUNKS or not paced)
            and chunks[-1].HasField("usage")
            and chunks[-1].finish_reason == pb.FINISH_REASON_STOP
        )
        sizes = (
            f"unary {unary.ByteSize()} B, stream {len(chunks)} messages ({text_messages} with "
            f"text), {sum(c.ByteSize() for c in chunks)} B"
        )
        if not ok:
            raise RuntimeError(f"{running.address} answered unexpectedly: {sizes}")
        return sizes
    url = f"{running.address}/v1/chat/completions"
    with urllib.request.urlopen(
        urllib.request.Request(
            url, json.dumps(HTTP_UNARY).encode(), {"content-type": "application/json"}
        ),
        timeout=10,
    ) as response:
        unary_body = response.read()
        unary = json.loads(unary_body)
    with urllib.request.urlopen(
        urllib.request.Request(
            url, json.dumps(HTTP_STREAM).encode(), {"content-type": "application/json"}
        ),
        timeout=10,
    ) as response:
        stream_body = response.read()
    events = [
        line[6:]
        for line in stream_body.decode().split("\n")
        if line.startswith("data: ") and line[6:] != "[DONE]"
    ]
    deltas = [json.loads(event) for event in events]
    texts = [
        choice["delta"].get("content")
        for event in deltas
        for choice in event.get("choices") or []
        if choice.get("delta", {}).get("content")
    ]
    usage = bool(deltas) and bool(deltas[-1].get("usage"))
    if (
        unary["choices"][0]["message"]["content"] != CHUNK_TEXT * CHUNKS
        or "".join(texts) != CHUNK_TEXT * CHUNKS
        or not usage
    ):
        raise RuntimeError(f"{url} answered unexpectedly")
    return (
        f"unary {len(unary_body)} B, stream {len(deltas)} events ({len(texts)} with text), "
        f"{len(stream_body)} B"
    )


# --------------------------------------------------------------------------------------------
# one measurement


@dataclass
class Settings:
    quick: bool
    duration_s: float
    levels: tuple[int, ...]
    pilot_s: float
    idle_wait_s: float
    connections: int
    ghz: Path
    oha: Path | None


def _drive(
    settings: Settings,
    running: Running,
    mode: str,
    concurrency: int,
    duration_s: float,
    total: int | None = None,
) -> loadgen.LoadResult:
    if running.protocol == "grpc":
        return loadgen.ghz(
            settings.ghz,
            running.address,
            "Generate" if mode == "unary" else "GenerateStream",
            GRPC_REQUEST,
            concurrency,
            duration_s,
            settings.connections,
            total=total,
        )
    assert settings.oha is not None
    return loadgen.oha(
        settings.oha,
        f"{running.address}/v1/chat/completions",
        HTTP_UNARY if mode == "unary" else HTTP_STREAM,
        concurrency,
        duration_s,
    )


def measure(
    settings: Settings,
    target: Target,
    running: Running,
    mode: str,
    concurrency: int,
    upstream: procstat.ProcessGroup | None,
) -> dict[str, Any]:
    # A pilot at the same concurrency warms the server up and sizes ghz's run: a fixed number of
    # calls lasting about the duration, so no call is cut off at the end (see loadgen).
    pilot = _drive(settings, running, mode, concurrency, settings.pilot_s)
    total = (
        max(concurrency, round(pilot.rps * settings.duration_s))
        if running.protocol == "grpc"
        else None
    )
    other_before_wait = procstat.wait_for_idle(0.35, settings.idle_wait_s)
    load1 = procstat.loadavg1()
    server0 = running.group.snapshot()
    upstream0 = upstream.snapshot() if upstream is not None and target.key != "http-floor" else None
    busy0, _ = procstat.machine_busy_seconds()
    self0 = time.process_time()
    started = time.monotonic()
    result = _drive(settings, running, mode, concurrency, settings.duration_s, total)
    wall = time.monotonic() - started
    server_cpu = running.group.cpu_since(server0)
    upstream_cpu = (
        upstream.cpu_since(upstream0) if upstream is not None and upstream0 is not None else 0.0
    )
    busy1, _ = procstat.machine_busy_seconds()
    self_cpu = time.process_time() - self0
    other = (
        max(0.0, (busy1 - busy0) - server_cpu - upstream_cpu - result.loadgen_cpu_s - self_cpu)
        / wall
    )
    calls = max(result.ok, 1)
    row: dict[str, Any] = {
        "target": target.key,
        "label": target.label,
        "protocol": running.protocol,
        "mode": mode,
        "concurrency": concurrency,
        **result.to_json(),
        "server_cpu_s": server_cpu,
        "server_cores": server_cpu / wall,
        "cpu_s_per_1k": 1000 * server_cpu / calls,
        "upstream_cpu_s_per_1k": 1000 * upstream_cpu / calls if upstream0 is not None else None,
        "rss_mib": running.group.rss_mib(),
        "peak_rss_mib": running.group.hwm_mib(),
        "server_processes": len(running.group.pids()),
        "loadavg1_at_start": load1,
        "other_busy_cores_before": other_before_wait,
        "other_busy_cores": other,
    }
    if mode == "stream":
        row["chunks_per_s"] = result.rps * CHUNKS
        row["cpu_us_per_chunk"] = 1e6 * server_cpu / (calls * CHUNKS)
    return row


class OtherLoad:
    """Cores used during a block by everything but the given processes, this harness and the
    children it waited for (a load generator, a benchmark subprocess and its own children)."""

    def __init__(self, pids: list[int]) -> None:
        self._group = procstat.ProcessGroup(pids)
        self.cores = 0.0

    def __enter__(self) -> "OtherLoad":
        import resource

        self._ours = self._group.snapshot()
        self._busy, _ = procstat.machine_busy_seconds()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children = usage.ru_utime + usage.ru_stime
        self._self = time.process_time()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        import resource

        wall = time.monotonic() - self._started
        ours = self._group.cpu_since(self._ours)
        busy, _ = procstat.machine_busy_seconds()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        children = usage.ru_utime + usage.ru_stime - self._children
        mine = time.process_time() - self._self
        self.cores = max(0.0, (busy - self._busy) - ours - children - mine) / wall if wall else 0.0


# --------------------------------------------------------------------------------------------
# the machine


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    import grpc

    return {
        "cpu": model,
        "cpus": CPUS,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


def tool_versions(args: argparse.Namespace) -> dict[str, str]:
    versions = {"ghz": args.ghz_version, "oha": args.oha_version}
    if args.litellm and Path(args.litellm).exists():
        out = subprocess.run(
            [
                str(Path(args.litellm).with_name("python")),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
        )
        versions["litellm"] = out.stdout.strip() or "?"
    return versions


# --------------------------------------------------------------------------------------------
# main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI-sized run: short levels, fewer of them (< 3 minutes)",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measurement (default 10, quick 2)"
    )
    parser.add_argument(
        "--levels", help="comma-separated concurrency levels (default 1,16,64,256; quick 1,64)"
    )
    parser.add_argument(
        "--only",
        help="comma-separated parts: "
        + ",".join(t.key for t in TARGETS)
        + ",count,streams,local,paced (paced: not in --quick unless named here)",
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out")
    parser.add_argument("--ghz", type=Path, default=ROOT / ".tools" / "bin" / "ghz")
    parser.add_argument("--ghz-version", default="?")
    parser.add_argument("--oha", type=Path, default=ROOT / ".tools" / "bin" / "oha")
    parser.add_argument("--oha-version", default="?")
    parser.add_argument(
        "--pacedload", type=Path, default=ROOT / ".tools" / "pacedload", help="bench/pacedload"
    )
    parser.add_argument(
        "--litellm", type=Path, default=ROOT / ".tools" / "litellm-venv" / "bin" / "litellm"
    )
    parser.add_argument(
        "--connections", type=int, default=4, help="ghz connections (≤ concurrency)"
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=0.7,
        help="wait for a 1-minute load average below this first",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="also for --quick: write latest.* and docs/"
    )
    parser.add_argument(
        "--name",
        help="a partial run's name: writes bench/results/<stamp>-<name>.{json,md,png} (not "
        "latest.* or docs/ unless --write-docs), e.g. `make bench-facade`",
    )
    args = parser.parse_args()

    quick = args.quick
    settings = Settings(
        quick=quick,
        duration_s=args.duration or (1.5 if quick else 10.0),
        levels=tuple(int(level) for level in args.levels.split(","))
        if args.levels
        else ((1, 64) if quick else (1, 16, 64, 256)),
        pilot_s=0.5 if quick else 1.5,
        idle_wait_s=1.0 if quick else 20.0,
        connections=args.connections,
        ghz=args.ghz,
        oha=args.oha if args.oha.exists() else None,
    )
    parts = [t.key for t in TARGETS] + ["count", "streams", "local", "paced"]
    default_parts = [p for p in parts if p != "paced"] if quick else parts
    wanted = [
        p
        for p in (args.only.split(",") if args.only else default_parts)
        if p and p not in args.skip.split(",")
    ]
    unknown = set(wanted) - set(parts)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not settings.ghz.exists():
        parser.error(f"ghz not found at {settings.ghz} (make bench-tools)")
    if "paced" in wanted and not args.pacedload.exists():
        parser.error(f"pacedload not found at {args.pacedload} (make bench-paced builds it)")
    targets = [t for t in TARGETS if t.key in wanted]
    if settings.oha is None:
        skipped = [t.key for t in targets if t.protocol == "http"]
        print(f"oha not found at {args.oha}: skipping {', '.join(skipped)}", file=sys.stderr)
        targets = [t for t in targets if t.protocol == "grpc"]
    import paced

    paced_settings = paced.Settings(
        pacedload=args.pacedload,
        counts=(500,) if quick else paced.COUNTS,
        window_s=3.0 if quick else 10.0,
        warmup_s=2.0 if quick else 3.0,
        idle_wait_s=settings.idle_wait_s,
    )
    steps = sum(len(t.modes) * len(settings.levels) for t in targets) + len(targets)
    steps += ("count" in wanted) + ("streams" in wanted) + ("local" in wanted)
    steps += len(paced.TARGETS) * len(paced_settings.counts) if "paced" in wanted else 0
    progress = Progress(steps)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="modelwire-bench-"))
    python = Path(sys.executable)
    ctx = Context(
        workdir=workdir,
        modelwire=python.with_name("modelwire"),
        python=python,
        litellm=args.litellm,
    )

    progress.say(
        f"modelwire bench ({'quick' if quick else 'full'}): {len(targets)} targets × "
        f"{'/'.join(MODES)} calls × concurrency {','.join(map(str, settings.levels))}, "
        f"{settings.duration_s:g}s each; logs in {workdir}"
    )
    load_at_start = procstat.wait_for_load(args.max_load, 10 if quick else 120, progress.say)
    report: dict[str, Any] = {
        "stamp": stamp,
        "quick": quick,
        "name": args.name,
        "machine": machine(),
        "tools": tool_versions(args),
        "settings": {
            "duration_s": settings.duration_s,
            "levels": settings.levels,
            "pilot_s": settings.pilot_s,
            "connections": settings.connections,
            "chunks": CHUNKS,
            "chunk_text": CHUNK_TEXT,
            "model": MODEL,
        },
        "loadavg1_at_start": load_at_start,
        "rows": [],
        "verified": {},
        "failures": {},
    }

    upstream_proc = Proc(
        "instant-upstream",
        [
            str(python),
            str(HERE / "instant_upstream.py"),
            "--port",
            "0",
            "--chunks",
            str(CHUNKS),
            "--chunk-text",
            CHUNK_TEXT,
        ],
        workdir,
        ready_text="instant upstream on",
    )
    UPSTREAM_PID[0] = upstream_proc.pid
    ctx.upstream = "http://" + upstream_proc.address()
    upstream_group = procstat.ProcessGroup([upstream_proc.pid])
    try:
        for target in targets:
            progress.step(f"{target.label}: starting")
            try:
                running = target.start(ctx)
            except Exception as error:  # noqa: BLE001 - one target failing must not lose the others
                report["failures"][target.key] = str(error)
                progress.say(f"{target.label}: FAILED to start: {error}")
                progress.done += len(target.modes) * len(settings.levels)
                continue
            try:
                report["verified"][target.key] = verify(running, target.paced)
                for mode in target.modes:
                    for level in settings.levels:
                        row = measure(settings, target, running, mode, level, upstream_group)
                        report["rows"].append(row)
                        rate = f"{row['rps']:,.0f} calls/s" + (
                            f" ({row['chunks_per_s']:,.0f} chunks/s)" if mode == "stream" else ""
                        )
                        progress.step(
                            f"{target.label} {mode} c={level}: {rate}, p99 {row['p99_ms']:.1f} ms, "
                            f"{row['cpu_s_per_1k']:.2f} CPU s/1k, {row['errors']} errors, other "
                            f"load {row['other_busy_cores']:.2f} cores"
                        )
            except Exception as error:  # noqa: BLE001
                report["failures"][target.key] = str(error)
                progress.say(f"{target.label}: FAILED: {error}")
            finally:
                running.stop()

        if "count" in wanted:
            import count_tokens

            proc = start_worker(ctx, "count-tokens", ECHO_MODEL)
            floor = Proc(
                "count-floor",
                [str(ctx.python), str(HERE / "echo_floor.py"), "--port", "0"],
                ctx.workdir,
                ready_text="echo floor on",
            )
            try:
                procstat.wait_for_idle(0.35, settings.idle_wait_s)
                load1 = procstat.loadavg1()
                with OtherLoad([proc.pid, floor.pid]) as other:
                    rows = count_tokens.run(
                        proc.address(), seconds=1.0 if quick else 3.0, floor=floor.address()
                    )
                report["count_tokens"] = {
                    "rows": rows,
                    "loadavg1_at_start": load1,
                    "other_busy_cores": other.cores,
                }
                progress.step(
                    "CountToken: "
                    + ", ".join(f"{r['tokens']:,} tokens {r['ratio']:.2f}× direct" for r in rows)
                )
            except Exception as error:  # noqa: BLE001
                report["failures"]["count"] = str(error)
                progress.step(f"CountToken: FAILED: {error}")
            finally:
                floor.stop()
                proc.stop()

        if "streams" in wanted:
            streams, chunks = (1000, 3) if quick else (10_000, 10)
            try:
                procstat.wait_for_idle(0.35, settings.idle_wait_s)
                load1 = procstat.loadavg1()
                # Its own process (it starts its worker and holds the streams itself); the
                # harness reads the JSON it prints.
                with OtherLoad([]) as other:
                    out = subprocess.run(
                        [
                            str(python),
                            str(HERE / "slow_streams.py"),
                            "--streams",
                            str(streams),
                            "--chunks",
                            str(chunks),
                            "--interval",
                            # 3 s apart, so a stream is still open when the last is opened (with
                            # 1 s, this 2-vCPU VM held only about 3,600 of 10,000 at once)
                            "3.0",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                if out.returncode != 0:
                    raise RuntimeError(out.stderr.strip()[-1500:])
                result = json.loads(out.stdout)
                result["loadavg1_at_start"] = load1
                result["other_busy_cores"] = other.cores
                report["slow_streams"] = result
                progress.step(
                    f"{streams:,} slow streams: {result['completed']:,} completed, peak RSS "
                    f"{result['rss_peak_mib']:.0f} MiB ({result['rss_per_stream_kib']:.1f} KiB per "
                    "stream)"
                )
            except Exception as error:  # noqa: BLE001
                report["failures"]["streams"] = str(error)
                progress.step(f"{streams:,} slow streams: FAILED: {error}")

        if "paced" in wanted:
            # Behind an upstream of its own (paced), as `make bench-paced` runs it.
            try:
                report["paced"] = paced.run_paced(
                    ctx, paced_settings, progress, list(paced.TARGETS)
                )
            except Exception as error:  # noqa: BLE001
                report["failures"]["paced"] = str(error)
                progress.say(f"paced streams: FAILED: {error}")
    finally:
        upstream_proc.stop()

    if "local" in wanted:
        load1 = procstat.wait_for_load(args.max_load, 10 if quick else 120, progress.say)
        try:
            runs, tokens = (1, 32) if quick else (5, 128)
            with OtherLoad([]) as other:
                out = subprocess.run(
                    [
                        str(python),
                        str(HERE / "local_model.py"),
                        "--json",
                        "--runs",
                        str(runs),
                        "--tokens",
                        str(tokens),
                        "--port",
                        str(free_port()),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            if out.returncode != 0:
                raise RuntimeError(out.stderr.strip()[-1500:])
            local = json.loads(out.stdout.strip().splitlines()[-1])
            local["loadavg1_at_start"] = load1
            local["other_busy_cores"] = other.cores
            report["local_model"] = local
            progress.step(
                f"local model: {local['modelwire']['tokens_per_s']:.1f} vs "
                f"{local['direct']['tokens_per_s']:.1f} tokens/s direct, TTFT "
                f"{local['modelwire']['ttft_ms']:.0f} vs {local['direct']['ttft_ms']:.0f} ms"
            )
        except Exception as error:  # noqa: BLE001
            report["failures"]["local"] = str(error)
            progress.step(f"local model: FAILED: {error}")

    report["loadavg1_at_end"] = procstat.loadavg1()
    report["elapsed_s"] = time.monotonic() - progress.started

    import report as render

    suffix = f"-{args.name}" if args.name else "-quick" if quick else ""
    json_path = RESULTS / f"{stamp}{suffix}.json"
    md_path = RESULTS / f"{stamp}{suffix}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    png = RESULTS / f"{stamp}{suffix}.png"
    drew = render.draw(report, png)
    markdown = render.markdown(report, png_name=None)
    md_path.write_text(markdown)
    print(render.console_table(report))
    if (not quick and not args.name) or args.write_docs:
        shutil.copyfile(json_path, RESULTS / "latest.json")
        (RESULTS / "latest.md").write_text(markdown)
        if drew:
            shutil.copyfile(png, ROOT / "docs" / "benchmarks.png")
        render.update_docs(
            ROOT / "docs" / "benchmarks.md", render.markdown(report, png_name="benchmarks.png")
        )
    progress.say(
        f"done in {report['elapsed_s']:.0f}s: {md_path.relative_to(ROOT)}"
        + (f", {png.relative_to(ROOT)}" if drew else "")
    )
    if report["failures"]:
        progress.say(f"failures: {', '.join(report['failures'])}; logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
