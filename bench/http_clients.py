"""The HTTP client alone: httpx against aiohttp on bench/instant_upstream.py, no modelwire around
it.

Each client runs in its own process (so neither pays for the other's imports or garbage), posts
the body modelwire's openai provider posts, and reads the answer as the provider does: unary as
JSON, streams as server-sent events with one `json.loads` per event. The figure is the client
process's CPU time per request and per event (the upstream runs in a process of its own).
Rounds alternate the clients, so a machine that gets busier halfway penalises both alike.

    .venv/bin/python bench/http_clients.py [--requests 2000] [--concurrency 1,16,64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello in one word."}]}
CLIENTS = ("httpx", "aiohttp")


async def _sse_payloads(lines: AsyncIterator[bytes]) -> int:
    """Events decoded (one json.loads each) up to [DONE]: what the provider does per delta."""
    events = 0
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        json.loads(data)
        events += 1
    return events


def _httpx_calls(
    url: str, concurrency: int
) -> tuple[Callable[[bool], Awaitable[int]], Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=2 * concurrency + 2, max_keepalive_connections=concurrency
        )
    )

    async def call(stream: bool) -> int:
        if not stream:
            response = await client.post(url, json=BODY | {"stream": False})
            response.json()
            return 1

        async def lines() -> AsyncIterator[bytes]:
            async for line in response.aiter_lines():
                yield line.encode()

        async with client.stream("POST", url, json=BODY | {"stream": True}) as response:
            return await _sse_payloads(lines())

    return call, client.aclose


def _aiohttp_calls(
    url: str, concurrency: int
) -> tuple[Callable[[bool], Awaitable[int]], Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2 * concurrency + 2))

    async def call(stream: bool) -> int:
        async with session.post(url, json=BODY | {"stream": stream}) as response:
            if not stream:
                json.loads(await response.read())
                return 1
            return await _sse_payloads(response.content)

    return call, session.close


async def _drive(
    client: str, url: str, concurrency: int, requests: int, stream: bool
) -> dict[str, float]:
    call, close = (_httpx_calls if client == "httpx" else _aiohttp_calls)(url, concurrency)
    for _ in range(concurrency):  # connections open and warm before the clock starts
        await call(stream)
    left = requests
    units = 0

    async def worker() -> None:
        nonlocal left, units
        while left > 0:
            left -= 1
            got = await call(stream)  # not `units += await …`: that reads `units` before the await
            units += got

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return {"cpu_us_per_unit": cpu / units * 1e6, "units_per_s": units / wall}


def _child(args: argparse.Namespace) -> None:
    result = asyncio.run(
        _drive(args.client, args.url, args.concurrency_one, args.requests, args.stream)
    )
    print(json.dumps(result))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="unary requests per measurement (streams: a tenth)",
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    port = _free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "instant_upstream.py"), "--port", str(port), "--chunks", "100"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None
        upstream.stdout.readline()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(
            f"{'mode':<7} {'c':>3} {'client':<8} {'CPU µs/unit':>12} {'units/s':>10}   (unit: a "
            "request, or a stream event)"
        )
        for stream in (False, True):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                results: dict[str, list[dict[str, float]]] = {client: [] for client in CLIENTS}
                for _ in range(args.rounds):
                    for client in CLIENTS:
                        count = max(concurrency, args.requests // 10 if stream else args.requests)
                        command = [
                            sys.executable,
                            __file__,
                            "--child",
                            "--client",
                            client,
                            "--url",
                            url,
                            "--concurrency-one",
                            str(concurrency),
                            "--requests",
                            str(count),
                        ] + (["--stream"] if stream else [])
                        out = subprocess.run(
                            command, check=True, capture_output=True, text=True, env=os.environ
                        ).stdout
                        results[client].append(json.loads(out))
                for client, runs in results.items():
                    cpu = min(run["cpu_us_per_unit"] for run in runs)
                    rate = max(run["units_per_s"] for run in runs)
                    print(
                        f"{'stream' if stream else 'unary':<7} {concurrency:>3} {client:<8} "
                        f"{cpu:>12.1f} {rate:>10,.0f}"
                    )
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
