"""Where a modelwire call's CPU goes: the same echo worker with one layer switched off at a time.

py-spy shows where the time is (`--native` for grpc's Cython core), but the asyncio and gRPC
bookkeeping each layer causes is spread over grpc's own frames; switching a layer off and measuring
again gives its whole cost. Each variant runs as its own worker process (bench/ablation.py --serve),
patched before it is built, and is driven by ghz like bench/run.py drives the real one.

  shipped         the worker as `modelwire serve` runs it
  no-access-log   the per-call JSON log line off (logger modelwire.access above INFO)
  no-metrics      the observer without Prometheus updates
  no-observer     the call pipeline without its observer (log, metrics, request id)
  no-orca         the call pipeline without the ORCA load-report trailers
  no-interceptors without the call pipeline (no interceptor at all)
  no-count        without counting the prompt's tokens (the context-length check)
  bare-service    no interceptors and no count: servicer + service + admission + provider only
  floor-servicer  modelwire's server (options, interceptors, health, reflection) with the floor's
                  servicer (pre-built answers): the cost of the server around the servicer
  floor-servicer-bare   the same without interceptors: should cost what bench/echo_floor.py costs
  uvloop          the shipped worker on uvloop's event loop instead of asyncio's
                  (`pip install uvloop` first: it is not one of modelwire's dependencies,
                  docs/benchmarks.md says why)

With `--provider openai` the worker fronts bench/instant_upstream.py over HTTP instead, and the
variants peel the HTTP path's layers off one after the other, each keeping the ones below it:
  pool-count      every prompt counted on the thread pool, as HTTP providers did before short
                  prompts were counted in place (tokenize.tiktoken_counter.count_tokens_async)
  no-interceptors as above
  canned-http     no HTTP client: the instant upstream's exact body bytes handed to the same SSE
                  parser and json.loads in-process (shipped minus this: aiohttp, the sockets, the
                  kernel)
  canned-events   and no SSE parsing: pre-split events (minus canned-http: the SSE parser)
  canned-json     and no JSON decoding: pre-decoded payloads (minus canned-events: json.loads);
                  what is left is the request body, the conversion of each payload to a domain
                  output, and everything the echo worker also does

    .venv/bin/python bench/ablation.py [--duration 8] [--concurrency 16] [--mode unary|stream|both]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS = (
    "shipped",
    "no-access-log",
    "no-metrics",
    "no-observer",
    "no-orca",
    "no-interceptors",
    "no-count",
    "bare-service",
    "floor-servicer",
    "floor-servicer-bare",
    "uvloop",
)
HTTP_VARIANTS = (
    "shipped",
    "pool-count",
    "no-interceptors",
    "canned-http",
    "canned-events",
    "canned-json",
    "uvloop",
)


def _patch(variant: str) -> None:
    """Applied in the worker process before the server is built."""
    import grpc

    from modelwire.core.types import TokenCount

    no_interceptors = variant in ("no-interceptors", "bare-service", "floor-servicer-bare")
    if variant == "no-observer":
        from modelwire.observe.call_observer import CallObserver
        from modelwire.observe.call_record import CallRecord

        CallObserver.begin = (  # type: ignore[method-assign]
            lambda self, method, request, request_id: CallRecord(method, "")
        )
        CallObserver.streamed = CallObserver.answered = (  # type: ignore[method-assign]
            lambda self, *args: None
        )
        CallObserver.failed = CallObserver.finished = (  # type: ignore[method-assign]
            lambda self, *args, **kwargs: None
        )
    if variant == "no-orca":
        from modelwire.worker.orca import LoadReports

        LoadReports.applies = lambda self, method: False  # type: ignore[method-assign]
    if variant == "pool-count":
        import asyncio

        from modelwire.providers.http import client as http_client
        from modelwire.tokenize.tiktoken_counter import count_tokens

        async def pool_count(self: Any, model: str, prompt: Any) -> TokenCount:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, count_tokens, self.upstream_model, prompt
            )

        http_client.HttpProxyClient.count_token = pool_count  # type: ignore[method-assign]
    if variant.startswith("canned-"):
        _can_upstream(variant)
    if variant == "uvloop":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if variant.startswith("floor-servicer"):
        import echo_floor
        from modelwire.worker import servicer

        floor = echo_floor.FloorServicer("gpt-4o", 100, "hello ")

        async def generate(self: Any, request: Any, context: Any) -> Any:
            return await floor.Generate(request, context)

        async def generate_stream(self: Any, request: Any, context: Any) -> Any:
            async for message in floor.GenerateStream(request, context):
                yield message

        servicer.ModelWorkerServicer.Generate = generate  # type: ignore[method-assign]
        servicer.ModelWorkerServicer.GenerateStream = generate_stream  # type: ignore[method-assign]
    if no_interceptors:
        original = grpc.aio.server

        def server(*args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
            return original(*args, interceptors=[], **kwargs)

        grpc.aio.server = server  # type: ignore[assignment]
    if variant == "no-access-log":
        import modelwire.observe.logs as logs

        original_configure = logs.configure_logging

        def configure(*args: Any, **kwargs: Any) -> Any:
            result = original_configure(*args, **kwargs)
            logging.getLogger("modelwire.access").setLevel(logging.WARNING)
            return result

        logs.configure_logging = configure  # type: ignore[assignment]
        import modelwire.app.cli as cli

        cli.configure_logging = configure  # type: ignore[assignment]
    if variant == "no-metrics":
        from modelwire.observe.metrics import WorkerMetrics

        WorkerMetrics.finished = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
        WorkerMetrics.inter_token_gap = (  # type: ignore[method-assign]
            lambda self, *args, **kwargs: None
        )
        WorkerMetrics.admission_changed = (  # type: ignore[method-assign]
            lambda self, *args, **kwargs: None
        )
    if variant in ("no-count", "bare-service"):
        from modelwire.providers.echo import EchoClient

        async def count_token(self: Any, model: str, prompt: Any) -> TokenCount:
            return TokenCount(12, "none", False)

        EchoClient.count_token = count_token  # type: ignore[method-assign]


def _can_upstream(variant: str) -> None:
    """The openai provider answered from the instant upstream's bodies without HTTP, with the SSE
    parsing and the JSON decoding peeled off too as `variant` says (the module docstring)."""
    import json as json_module
    from collections.abc import AsyncIterator

    import instant_upstream
    from modelwire.providers.http import client as http_client
    from modelwire.providers.http import sse
    from modelwire.providers.openai import client as openai

    answers = instant_upstream.Answers(100, "hello ")
    completions: dict[str, Any] = {}  # by model
    events: dict[str, list[sse.SSEEvent]] = {}  # by model
    payloads: dict[str, Any] = {}  # by event data

    async def post_json(self: Any, url: str, body: dict[str, Any], headers: Any) -> Any:
        raw = answers.payloads(body["model"], False, False)[0]
        if variant != "canned-json":
            return json_module.loads(raw)
        if body["model"] not in completions:
            completions[body["model"]] = json_module.loads(raw)
        return completions[body["model"]]

    async def post_events(
        self: Any, url: str, body: dict[str, Any], headers: Any
    ) -> AsyncIterator[sse.SSEEvent]:
        raw = b"".join(answers.payloads(body["model"], True, "stream_options" in body))

        async def arrived() -> AsyncIterator[bytes]:
            yield raw

        if variant == "canned-http":
            async for event in sse.iter_sse(sse.iter_lines(arrived())):
                yield event
            return
        if body["model"] not in events:
            events[body["model"]] = [
                event async for event in sse.iter_sse(sse.iter_lines(arrived()))
            ]
        for event in events[body["model"]]:
            yield event

    def parse_json_event(event: sse.SSEEvent) -> Any:
        if event.data not in payloads:
            payloads[event.data] = json_module.loads(event.data)
        return payloads[event.data]

    http_client.HttpProxyClient.post_json = post_json  # type: ignore[method-assign]
    http_client.HttpProxyClient.post_events = post_events  # type: ignore[method-assign,assignment]
    if variant == "canned-json":
        openai.parse_json_event = parse_json_event  # type: ignore[assignment]


def serve(variant: str, config: str) -> None:
    _patch(variant)
    from modelwire.app.cli import main

    sys.exit(main(["serve", "--config", config]))


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import loadgen
    import procstat
    from run import ECHO_MODEL, GRPC_REQUEST, Proc, _worker_toml, free_port

    workdir = Path(tempfile.mkdtemp(prefix="modelwire-ablation-"))
    rows = []
    model_block = ECHO_MODEL
    upstream = None
    if args.provider == "openai":
        from run import _openai_model

        upstream = Proc(
            "instant-upstream",
            [sys.executable, str(HERE / "instant_upstream.py"), "--port", "0"],
            workdir,
            ready_text="instant upstream on",
        )
        model_block = _openai_model("http://" + upstream.address())
    modes = ("unary", "stream") if args.mode == "both" else (args.mode,)
    variants = args.variants or ",".join(HTTP_VARIANTS if args.provider == "openai" else VARIANTS)
    for variant in variants.split(","):
        port = free_port()
        config = workdir / f"{variant}.toml"
        config.write_text(_worker_toml(port, 1, model_block))
        proc = Proc(
            variant,
            [sys.executable, __file__, "--serve", variant, "--config", str(config)],
            workdir,
            ready_text="modelwire serving",
        )
        try:
            group = procstat.ProcessGroup([proc.pid])
            for mode in modes:
                method = "Generate" if mode == "unary" else "GenerateStream"
                loadgen.ghz(args.ghz, f"127.0.0.1:{port}", method, GRPC_REQUEST, 16, 1.0, 4)
                procstat.wait_for_idle(0.35, 20)
                before = group.snapshot()
                result = loadgen.ghz(
                    args.ghz,
                    f"127.0.0.1:{port}",
                    method,
                    GRPC_REQUEST,
                    args.concurrency,
                    args.duration,
                    4,
                )
                cpu = group.cpu_since(before)
                row = {
                    "variant": variant,
                    "mode": mode,
                    "rps": result.rps,
                    "p50_ms": result.p50_ms,
                    "p99_ms": result.p99_ms,
                    "cpu_us_per_call": 1e6 * cpu / max(result.ok, 1),
                    "errors": result.errors,
                    "loadavg1": procstat.loadavg1(),
                }
                rows.append(row)
                print(
                    f"{variant:16} {mode:6} {row['rps']:8,.0f} calls/s  "
                    f"{row['cpu_us_per_call']:7.0f} µs CPU/call  p50 {row['p50_ms']:.2f} ms  p99 "
                    f"{row['p99_ms']:.2f} ms  load {row['loadavg1']:.2f}",
                    flush=True,
                )
        finally:
            proc.stop()
    if upstream is not None:
        upstream.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", choices=("echo", "openai"), default="echo")
    parser.add_argument("--serve", choices=VARIANTS + HTTP_VARIANTS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--variants", help="comma-separated (default: all of the mode's)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", choices=("unary", "stream", "both"), default="both")
    parser.add_argument("--ghz", type=Path, default=HERE.parent / ".tools" / "bin" / "ghz")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.config)
        return
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
