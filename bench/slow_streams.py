"""Many open streams: N concurrent slow GenerateStream calls (one chunk per second) held by one
worker.

The worker serves an `echo` model with `chunk_interval_s = 1`; admission is configured to admit
them all (`max_concurrency = N`, `max_queue = N`). A Python asyncio client opens all N calls over a
few HTTP/2 connections and reads every chunk. Reported: whether every stream completed with all its
chunks, the worker's RSS before, at peak (sampled every 100 ms, and VmHWM) and after, and the
peak's growth per stream.

    python bench/slow_streams.py [--streams 1000] [--chunks 10] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat  # noqa: E402
from modelwire.v1 import worker_pb2 as pb  # noqa: E402
from modelwire.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402

CHANNELS = 4


def _config(port: int, streams: int, chunks: int, interval: float) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
processes = 1
grace_period_s = 1

[[models]]
name = "slow"
provider = "echo"
chunks = {chunks}
chunk_text = "hello "
chunk_interval_s = {interval}
max_concurrency = {streams}
max_queue = {streams}
"""


def start_worker(
    modelwire: Path, config_text: str, workdir: Path
) -> tuple[subprocess.Popen[str], str]:
    config = workdir / "slow-streams.toml"
    config.write_text(config_text)
    log = open(workdir / "slow-streams-worker.log", "w")
    worker = subprocess.Popen(
        [str(modelwire), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if "modelwire serving" not in line:
        worker.kill()
        raise RuntimeError(f"worker did not start: {line!r}; see {log.name}")
    return worker, line.rsplit(" on ", 1)[1].split()[0]


async def _drive(
    address: str, streams: int, chunks: int, pid: int, interval: float
) -> dict[str, Any]:
    # A local subchannel pool per channel, so the channels are separate TCP connections.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    stubs = [pb_grpc.ModelWorkerStub(channel) for channel in channels]
    request = pb.ModelRequest(
        model="slow", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
    )
    open_now = 0
    peak_open = 0
    samples: list[float] = []
    received = [0] * streams
    finished = [False] * streams
    errors: dict[str, int] = {}

    async def one(index: int) -> None:
        nonlocal open_now, peak_open
        open_now += 1
        peak_open = max(peak_open, open_now)
        try:
            async for chunk in stubs[index % CHANNELS].GenerateStream(
                request, timeout=60 + chunks * interval * 3
            ):
                if chunk.text:
                    received[index] += 1
                if chunk.finish_reason:
                    finished[index] = True
        except grpc.aio.AioRpcError as error:
            errors[error.code().name] = errors.get(error.code().name, 0) + 1
        finally:
            open_now -= 1

    async def sample() -> None:
        while True:
            samples.append(procstat.rss_mib(pid))
            await asyncio.sleep(0.1)

    for channel in channels:
        await channel.channel_ready()
    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    await asyncio.gather(*(one(index) for index in range(streams)))
    elapsed = time.monotonic() - started
    sampler.cancel()
    for channel in channels:
        await channel.close()
    return {
        "completed": sum(
            1 for index in range(streams) if finished[index] and received[index] == chunks
        ),
        "chunks_received": sum(received),
        "peak_open": peak_open,
        "errors": errors,
        "elapsed_s": elapsed,
        "rss_peak_sampled_mib": max(samples) if samples else 0.0,
    }


def run(
    modelwire: Path, workdir: Path, streams: int = 1000, chunks: int = 10, interval: float = 1.0
) -> dict[str, Any]:
    worker, address = start_worker(modelwire, _config(0, streams, chunks, interval), workdir)
    try:
        pid = worker.pid
        # One warm-up stream so lazily built state (interpreter caches, first-call paths) is in
        # "before".
        asyncio.run(_warm(address))
        time.sleep(0.5)
        rss_before = procstat.rss_mib(pid)
        cpu_before = procstat.cpu_seconds(pid)
        result = asyncio.run(_drive(address, streams, chunks, pid, interval))
        time.sleep(1.0)
        result.update(
            streams=streams,
            chunks_per_stream=chunks,
            interval_s=interval,
            max_concurrency=streams,
            max_queue=streams,
            rss_before_mib=rss_before,
            rss_after_mib=procstat.rss_mib(pid),
            vm_hwm_mib=procstat.hwm_mib(pid),
            worker_cpu_s=procstat.cpu_seconds(pid) - cpu_before,
        )
        peak = max(result["rss_peak_sampled_mib"], result["vm_hwm_mib"])
        result["rss_peak_mib"] = peak
        result["rss_per_stream_kib"] = (peak - rss_before) * 1024 / streams
        return result
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()


async def _warm(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        await stub.CountToken(pb.CountTokenRequest(model="slow", prompt="warm up"), timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    modelwire = Path(sys.executable).with_name("modelwire")
    with tempfile.TemporaryDirectory() as workdir:
        print(
            json.dumps(
                run(modelwire, Path(workdir), args.streams, args.chunks, args.interval), indent=2
            )
        )


if __name__ == "__main__":
    main()
