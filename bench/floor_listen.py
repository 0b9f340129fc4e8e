"""How the bench's bare grpc.aio servers (echo_floor.py, forward_floor.py, sse_floor.py) listen:
bound, started, "<name> on HOST:PORT" printed (the line bench/run.py's `Proc` waits for), served
until stopped."""

from __future__ import annotations

import grpc


async def listen(server: grpc.aio.Server, host: str, port: int, name: str) -> None:
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{name} on {host}:{bound}", flush=True)
    await server.wait_for_termination()
