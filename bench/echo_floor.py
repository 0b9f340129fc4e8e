"""The floor: a bare grpc.aio server answering modelwire's own messages, with none of its layers.

It implements `modelwire.v1.ModelWorker` from the generated stubs and answers every call with
pre-built messages of the same size as the `echo` provider's (the same text, usage, timing and
model fields): no interceptor, no conversion, no admission, no token counting, no logging. What it
costs is what Python gRPC itself costs for these messages, so the load generator calls it exactly
as it calls modelwire.

    python bench/echo_floor.py --port 8901 [--chunks 100] [--chunk-text "hello "] [--interval 0.001]
        [--stamp]

`--interval S` paces a stream's deltas S seconds apart, as the echo provider's `chunk_interval_s`
does (an asyncio.sleep between two deltas), so each goes as a message of its own on both sides.
`--stamp` makes each delta's text its send time, "t<unix-ns> ", as bench/instant_upstream.py's
paced mode does, and a stream as long as the request's `max_new_tokens`: with `--interval 0.05`
it is the gRPC side's floor of bench/paced.py (bench/pacedload reads the stamps).

Prints "echo floor on HOST:PORT" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from floor_listen import listen
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc


def _final(model: str, completion_tokens: int, text: str = "") -> pb.ModelOutput:
    return pb.ModelOutput(
        text=text,
        finish_reason=pb.FINISH_REASON_STOP,
        usage=pb.Usage(
            prompt_tokens=12,
            completion_tokens=completion_tokens,
            total_tokens=12 + completion_tokens,
        ),
        timing=pb.Timing(
            time_to_first_token_seconds=0.000123, tokens_per_second=123456.7, total_seconds=0.000456
        ),
        model=model,
    )


class FloorServicer(pb_grpc.ModelWorkerServicer):  # type: ignore[misc]
    def __init__(
        self,
        model: str,
        chunks: int,
        chunk_text: str,
        interval_s: float = 0.0,
        stamp: bool = False,
    ) -> None:
        self._model = model
        self._stamp = stamp
        self._unary = _final(model, chunks, chunk_text * chunks)
        self._chunk = pb.ModelOutput(text=chunk_text, model=model)
        self._last = _final(model, chunks)
        self._chunks = chunks
        self._interval_s = interval_s
        self._count = pb.CountTokenResponse(count=12, tokenizer="tiktoken:o200k_base", exact=True)
        self._models = pb.ListModelsResponse(
            models=[
                pb.ModelMetadata(
                    model=model, provider="floor", context_length=131072, max_output_tokens=4096
                )
            ]
        )

    async def Generate(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelOutput:
        return self._unary

    async def GenerateStream(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelOutput]:
        if self._stamp:
            async for message in self._stamped(request):
                yield message
            return
        chunk = self._chunk
        interval = self._interval_s
        for index in range(self._chunks):
            if interval and index:
                await asyncio.sleep(interval)
            yield chunk
        yield self._last

    async def _stamped(self, request: pb.ModelRequest) -> AsyncIterator[pb.ModelOutput]:
        sampling = request.sampling
        tokens = sampling.max_new_tokens if sampling.HasField("max_new_tokens") else self._chunks
        model, interval = self._model, self._interval_s
        for index in range(tokens):
            if interval and index:
                await asyncio.sleep(interval)
            yield pb.ModelOutput(text=f"t{time.time_ns()} ", model=model)
        yield _final(model, tokens)

    async def CountToken(
        self, request: pb.CountTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokenResponse:
        return self._count

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return self._models


async def serve(
    host: str,
    port: int,
    model: str,
    chunks: int,
    chunk_text: str,
    interval_s: float = 0.0,
    stamp: bool = False,
) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ModelWorkerServicer_to_server(
        FloorServicer(model, chunks, chunk_text, interval_s, stamp), server
    )
    await listen(server, host, port, "echo floor")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--chunk-text", default="hello ")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--stamp", action="store_true", help="each delta's text its send time")
    args = parser.parse_args()
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                args.model,
                args.chunks,
                args.chunk_text,
                args.interval,
                args.stamp,
            )
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
