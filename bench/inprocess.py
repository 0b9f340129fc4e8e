"""modelwire's own Python per call, in instructions: the echo worker's real call pipeline,
servicer, service and provider called in-process with a stand-in ServicerContext (no gRPC), under
`valgrind --tool=callgrind`, with one layer switched off at a time.

bench/ablation.py switches layers off in whole workers under load and reads their CPU time, which
moves by 20–30% between runs on a shared VM; an instruction count does not, so this attributes
changes of a few percent. Each variant is patched into the one process in turn, warmed up, and
counted between `callgrind_control --zero` and `--dump`; each call runs in a task of its own, as
gRPC runs it.

  shipped         the call as `modelwire serve` makes it
  no-access-line  the access line off (logger modelwire.access above INFO)
  no-metrics      no Prometheus updates (a finished call, admission gauges, stream gaps)
  no-orca         the call pipeline without the ORCA load-report trailers
  no-count        the echo provider's prompt count (tiktoken) a constant
  no-pipeline     the servicer called without the call pipeline
  floor           the floor's servicer (bench/echo_floor.py), without the pipeline: what the
                  harness itself costs (a task, the stand-in context, decoding, serializing)
  floor-pipeline  the floor's servicer inside the call pipeline: the pipeline alone

    .venv/bin/python bench/inprocess.py [--mode unary|stream] [--calls 500] [--variants a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS = (
    "shipped",
    "no-access-line",
    "no-metrics",
    "no-orca",
    "no-count",
    "no-pipeline",
    "floor",
    "floor-pipeline",
)
MODEL = "gpt-4o"
CHUNKS = 100
CHUNK_TEXT = "hello "
CONFIG = f"""
[server]
host = "127.0.0.1"
port = 0

[[models]]
name = "{MODEL}"
max_concurrency = 1024
max_queue = 4096
provider = "echo"
chunks = {CHUNKS}
chunk_text = "{CHUNK_TEXT}"
"""
WARM_UP = 200
DEADLINE_S = 20.0  # what ghz sends by default: the call's deadline is armed, as under load


class StandInContext:
    """What the pipeline and the servicer ask of a grpc.aio.ServicerContext."""

    def __init__(self) -> None:
        self._trailers: tuple[Any, ...] = ()
        self._deadline = time.monotonic() + DEADLINE_S

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "grpc-go/1.70.0"),)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailers = tuple(metadata)

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailers

    def time_remaining(self) -> float:
        return self._deadline - time.monotonic()

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        import grpc

        raise grpc.aio.AbortError()

    def code(self) -> None:
        return None


async def _child(config_path: Path, mode: str, calls: int, variants: list[str]) -> None:
    """Runs under callgrind: each variant's calls between a zero and a dump named after it."""
    import grpc

    import echo_floor
    from callgrind_control import counted
    from modelwire.app.config import load_config
    from modelwire.app.server import _request_model_label, build_worker
    from modelwire.core.types import TokenCount
    from modelwire.observe.call_observer import CallObserver
    from modelwire.observe.logs import ACCESS_LOGGER, configure_logging
    from modelwire.observe.metrics import WorkerMetrics
    from modelwire.providers.echo import EchoClient
    from modelwire.rpc.call_pipeline import CallPipeline
    from modelwire.v1 import worker_pb2 as pb
    from modelwire.worker.orca import LoadReports
    from modelwire.worker.servicer import ModelWorkerServicer

    configure_logging("info", "json")
    worker = await build_worker(load_config(config_path))
    observer = CallObserver(
        worker.metrics, _request_model_label(worker.targets), worker.rpc.sampling
    )
    streamed = mode == "stream"
    method = "/modelwire.v1.ModelWorker/" + ("GenerateStream" if streamed else "Generate")
    raw = pb.ModelRequest(
        model=MODEL,
        messages=[pb.ModelMessage(role=pb.ROLE_USER, content="Say hello in one word.")],
    ).SerializeToString()

    def handler(servicer: Any) -> Any:
        if streamed:
            return grpc.unary_stream_rpc_method_handler(
                servicer.GenerateStream,
                pb.ModelRequest.FromString,
                pb.ModelOutput.SerializeToString,
            )
        return grpc.unary_unary_rpc_method_handler(
            servicer.Generate, pb.ModelRequest.FromString, pb.ModelOutput.SerializeToString
        )

    def behavior(servicer: Any, pipeline: bool, orca: bool = True) -> Callable[[], Awaitable[None]]:
        plain = handler(servicer)
        wrapped = (
            CallPipeline(observer, None, LoadReports(worker.targets) if orca else None)._wrap(
                method, plain
            )
            if pipeline
            else plain
        )
        decode = wrapped.request_deserializer

        async def call() -> None:
            request, context = decode(raw), StandInContext()
            if streamed:
                async for message in wrapped.unary_stream(request, context):
                    message.SerializeToString()
            else:
                (await wrapped.unary_unary(request, context)).SerializeToString()

        async def in_a_task() -> None:
            await asyncio.get_running_loop().create_task(call())

        return in_a_task

    servicer = ModelWorkerServicer(worker.service)
    floor = echo_floor.FloorServicer(MODEL, CHUNKS, CHUNK_TEXT)

    async def constant_count(self: Any, model: str, prompt: Any) -> TokenCount:
        return TokenCount(12, "none", False)

    @contextlib.contextmanager
    def variant(name: str) -> Iterator[Callable[[], Awaitable[None]]]:
        with contextlib.ExitStack() as patches:
            if name == "no-access-line":
                access = logging.getLogger(ACCESS_LOGGER)
                access.setLevel(logging.WARNING)
                patches.callback(access.setLevel, logging.NOTSET)
            if name == "no-metrics":
                for hook in ("finished", "admission_changed", "inter_token_gap"):
                    patches.enter_context(
                        mock.patch.object(WorkerMetrics, hook, lambda *args, **kwargs: None)
                    )
            if name == "no-count":
                patches.enter_context(mock.patch.object(EchoClient, "count_token", constant_count))
            yield {
                "no-orca": lambda: behavior(servicer, True, orca=False),
                "no-pipeline": lambda: behavior(servicer, False),
                "floor": lambda: behavior(floor, False),
                "floor-pipeline": lambda: behavior(floor, True),
            }.get(name, lambda: behavior(servicer, True))()

    for name in variants:
        with variant(name) as call:
            for _ in range(WARM_UP):
                await call()
            with counted("variant-" + name):
                for _ in range(calls):
                    await call()


def _counts(directory: Path) -> dict[str, int]:
    """Each dump's variant and total instructions."""
    found = {}
    for path in directory.glob("callgrind.out.*"):
        name, total = None, None
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("desc: Trigger: dump variant-"):
                name = line.rsplit("variant-", 1)[1]
            elif line.startswith("summary:"):
                total = int(line.split()[1])
        if name is not None and total is not None:
            found[name] = total
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    if args.child is not None:
        # grpc's and the asyncio loop's own threads stay idle: only this thread's work counts.
        asyncio.run(_child(args.child, args.mode, args.calls, variants))
        return
    with tempfile.TemporaryDirectory(prefix="modelwire-inprocess-") as workdir:
        directory = Path(workdir)
        config = directory / "worker.toml"
        config.write_text(CONFIG)
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--dump-instr=no",
            f"--callgrind-out-file={directory}/callgrind.out.%p",
            sys.executable,
            __file__,
            "--child",
            str(config),
            "--mode",
            args.mode,
            "--calls",
            str(args.calls),
            "--variants",
            args.variants,
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, check=True, capture_output=True, env=env)
        counts = _counts(directory)
    shipped = counts.get("shipped")
    print(f"{args.mode}, {args.calls} calls each: instructions per call")
    for name in variants:
        per_call = counts[name] / args.calls
        against = f"  ({per_call - shipped / args.calls:+,.0f} against shipped)" if shipped else ""
        print(f"  {name:15} {per_call:12,.0f}{against}")


if __name__ == "__main__":
    main()
