"""SIGTERM on a real worker process: NOT_SERVING at once, new calls refused, the stream in flight
completes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli_process import DEVNULL, PIPE, first_line, start_cli
from conftest import free_port
from modelwire.client import ModelwireCallError, ModelWorkerClient

MODEL = "gemma-3-270m"


@pytest.fixture
async def worker_process(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    config = tmp_path / "modelwire.toml"
    config.write_text(f"[server]\nport = {port}\nprocesses = 1\ngrace_period_s = 30\n")
    process = await start_cli("serve", "--config", str(config), stderr=DEVNULL)
    line = await first_line(process, 120)
    assert line.startswith(f"modelwire serving {MODEL} on 127.0.0.1:{port}"), line
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def refused_within(client: ModelWorkerClient, attempts: int) -> grpc.StatusCode | None:
    """NOT_SERVING is announced just before the port stops accepting; a call may slip in between."""
    for _ in range(attempts):
        try:
            await client.generate(MODEL, "hi", max_new_tokens=1)
        except ModelwireCallError as error:
            return error.code
    return None


async def test_sigterm_drains_the_stream_in_flight(
    worker_process: tuple[asyncio.subprocess.Process, str],
) -> None:
    process, address = worker_process
    async with (
        grpc.aio.insecure_channel(address) as channel,
        ModelWorkerClient(address, timeout=60) as client,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

        stream = client.stream(
            MODEL, "Count from one to a hundred.", temperature=0, max_new_tokens=200
        )
        chunks = [await anext(stream)]
        process.send_signal(signal.SIGTERM)

        assert (
            await asyncio.wait_for(watch.read(), 10)
        ).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await refused_within(client, attempts=50) == grpc.StatusCode.UNAVAILABLE

        chunks += [chunk async for chunk in stream]
        last = chunks[-1]
        assert last.usage.completion_tokens == 200, "the call in flight was cut short"
        assert last.finish_reason != 0

    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_a_generation_cut_by_the_grace_period_stops_before_the_model_is_freed(
    tmp_path: Path,
) -> None:
    """Grace of 1 s, a stream of 2,000 tokens: the stream is cancelled at the end of the grace, its
    llama.cpp thread is waited for, and only then is the model freed (freeing it under a running
    decode crashed the worker with SIGSEGV)."""
    port = free_port()
    config = tmp_path / "modelwire.toml"
    config.write_text(f"[server]\nport = {port}\ngrace_period_s = 1\n")
    process = await start_cli("serve", "--config", str(config), stderr=PIPE)
    try:
        assert process.stderr is not None
        assert (await first_line(process, 120)).startswith("modelwire serving")
        async with ModelWorkerClient(f"127.0.0.1:{port}", timeout=60) as client:
            stream = client.stream(
                MODEL, "Count to ten thousand.", temperature=0, max_new_tokens=2000
            )
            await anext(stream)
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ModelwireCallError) as cut:
                async for _ in stream:
                    pass
            assert cut.value.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        code = await asyncio.wait_for(process.wait(), 60)
        stderr = (await process.stderr.read()).decode()
        assert code == 0, stderr[-2000:]
        assert "Segmentation fault" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
