"""The gateway's floor: a bare grpc.aio server that forwards every ModelWorker call, as bytes, to
one upstream server, with none of the gateway's layers (no routing, retries, auth, observation).

What it costs next to the server behind it is what the extra grpc.aio hop itself costs, the least a
Python gateway that forwards calls can cost; `bench/run.py` puts it in front of the floor
(bench/echo_floor.py) and compares it with `modelwire gateway` in front of a worker.

    python bench/forward_floor.py --port 8902 --upstream 127.0.0.1:8901

Prints "forward floor on HOST:PORT" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc

from floor_listen import listen

SERVICE = "modelwire.v1.ModelWorker"
UNARY = ("Generate", "CountToken", "Embed", "ListModels")
STREAMS = ("GenerateStream",)


def _handlers(channel: grpc.aio.Channel) -> grpc.GenericRpcHandler:
    def unary(method: str) -> grpc.RpcMethodHandler:
        call = channel.unary_unary(f"/{SERVICE}/{method}")

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            response: bytes = await call(request, timeout=context.time_remaining())
            return response

        return grpc.unary_unary_rpc_method_handler(forward)

    def stream(method: str) -> grpc.RpcMethodHandler:
        call = channel.unary_stream(f"/{SERVICE}/{method}")

        async def forward(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            async for message in call(request, timeout=context.time_remaining()):
                yield message

        return grpc.unary_stream_rpc_method_handler(forward)

    methods = {name: unary(name) for name in UNARY} | {name: stream(name) for name in STREAMS}
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def serve(host: str, port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(channel),))
    await listen(server, host, port, "forward floor")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8902)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
