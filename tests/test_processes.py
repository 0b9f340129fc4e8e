"""`--processes 2`: two worker processes share one port; both serve, both drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
import urllib.request
from pathlib import Path

import grpc

from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from conftest import free_port

MODEL = "gemma-3-270m"
TOKENS = 20
REQUEST = pb.ModelRequest(
    model=MODEL,
    messages=[pb.ModelMessage(role=pb.ROLE_USER, content="Count to fifty.")],
    sampling=pb.SamplingParams(temperature=0, max_new_tokens=TOKENS),
)


async def stream_on_a_new_connection(address: str, started: asyncio.Event, all_started: asyncio.Event) -> tuple[str, int]:
    """One stream on its own connection (SO_REUSEPORT spreads connections, not calls); returns
    the serving process id and the number of tokens the stream delivered."""
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = pb_grpc.ModelWorkerStub(channel).GenerateStream(REQUEST, timeout=60)
        chunks = [await call.read()]
        started.set()
        await all_started.wait()
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
        trailer = dict(await call.trailing_metadata())
    return str(trailer["modelwire-pid"]), chunks[-1].usage.completion_tokens


async def test_two_processes_serve_one_port_report_together_and_both_drain(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "modelwire.toml"
    config.write_text(f"[server]\nport = {port}\nprocesses = 2\ngrace_period_s = 30\n[observability]\nmetrics_port = {metrics_port}\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelwire.app.cli", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        assert "(2 processes: " in line, line
        child_pids = set(line.rsplit(": ", 1)[1].rstrip(")\n").split(", "))

        address = f"127.0.0.1:{port}"
        streams = 12
        started = [asyncio.Event() for _ in range(streams)]
        all_started = asyncio.Event()
        tasks = [asyncio.create_task(stream_on_a_new_connection(address, s, all_started)) for s in started]
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 60)
        process.send_signal(signal.SIGTERM)
        all_started.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)

        served_by = {pid for pid, _ in results}
        assert served_by == child_pids, "both processes took connections"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        # One endpoint, the sum of both processes (prometheus-client multiprocess mode).
        assert f'modelwire_requests_total{{code="OK",method="GenerateStream",model="{MODEL}"}} {streams}.0' in metrics
        assert all(tokens == TOKENS for _, tokens in results), "every stream in flight finished during the drain"
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

