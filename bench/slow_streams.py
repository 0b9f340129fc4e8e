"""Many open streams: N concurrent slow GenerateStream calls (a delta every `--interval` seconds,
1 by default; `make bench` uses 3) held by one worker, and what each costs it in memory.

The worker serves an `echo` model with `chunk_interval_s` = the interval; admission is configured
to admit them all (`max_concurrency = N`, `max_queue = N`). With `--floor` the same streams are
held by the bare grpc.aio floor instead (bench/echo_floor.py with `--interval`: the same messages,
an asyncio.sleep between two), which is what gRPC Python itself needs per open stream.

The streams are opened by `--clients` processes (asyncio, grpc.aio), each over `--channels`
HTTP/2 connections, so that the client is not what limits them: one Python process reading 10,000
streams' messages takes a core. Each process keeps at most `--opening` streams waiting for their
first message: a burst of thousands of calls at once outruns the rate at which grpc.aio takes
new calls from its core, whose queue of calls not yet taken is bounded (past it, new calls are
cancelled), and what is measured is the streams held, not that burst.

Reported: whether every stream completed with all its deltas, the most open at once (`peak_open`:
when opening them all takes longer than a stream lasts, fewer than all), the server's RSS before,
at peak (sampled every 100 ms, and VmHWM) and after, and the peak's growth per stream open at
the peak.

    python bench/slow_streams.py [--streams 1000] [--chunks 10] [--interval 1.0] [--floor]
        [--clients 2] [--channels 8] [--opening 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import procstat  # noqa: E402
from modelwire.v1 import worker_pb2 as pb  # noqa: E402
from modelwire.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402

MODEL = "slow"
CHUNK_TEXT = "hello "


def _config(port: int, streams: int, chunks: int, interval: float) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
processes = 1
grace_period_s = 1

[[models]]
name = "{MODEL}"
provider = "echo"
chunks = {chunks}
chunk_text = "{CHUNK_TEXT}"
chunk_interval_s = {interval}
max_concurrency = {streams}
max_queue = {streams}
"""


def start_worker(
    modelwire: Path, config_text: str, workdir: Path
) -> tuple[subprocess.Popen[str], str]:
    config = workdir / "slow-streams.toml"
    config.write_text(config_text)
    return _start([str(modelwire), "serve", "--config", str(config)], workdir, "modelwire serving")


def start_floor(workdir: Path, chunks: int, interval: float) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, str(HERE / "echo_floor.py"), "--port", "0", "--model", MODEL]
    command += ["--chunks", str(chunks), "--chunk-text", CHUNK_TEXT, "--interval", str(interval)]
    return _start(command, workdir, "echo floor on")


def _start(command: list[str], workdir: Path, ready: str) -> tuple[subprocess.Popen[str], str]:
    log = open(workdir / "slow-streams-server.log", "w")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if ready not in line:
        server.kill()
        raise RuntimeError(f"the server did not start: {line!r}; see {log.name}")
    return server, line.rsplit(" on ", 1)[1].split()[0]


def _client(
    address: str, streams: int, chunks: int, interval: float, channels: int, opening: int
) -> dict[str, Any]:
    """One client process's share of the streams (run in a process of its own)."""
    return asyncio.run(_drive(address, streams, chunks, interval, channels, opening))


async def _drive(
    address: str, streams: int, chunks: int, interval: float, channels: int, opening: int
) -> dict[str, Any]:
    # A local subchannel pool per channel, so the channels are separate TCP connections.
    connections = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [pb_grpc.ModelWorkerStub(channel) for channel in connections]
    request = pb.ModelRequest(
        model=MODEL, messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
    )
    starting = asyncio.Semaphore(opening)
    completed = texts = 0
    errors: dict[str, int] = {}
    # When each stream opened (+1) and ended (-1): the parent counts the streams open at once
    # over every client.
    events: list[tuple[float, int]] = []

    async def one(index: int) -> None:
        nonlocal completed, texts
        await starting.acquire()
        waiting = True
        events.append((time.monotonic(), 1))
        received = ""
        finished = False
        try:
            call = stubs[index % channels].GenerateStream(
                request, timeout=60 + chunks * interval * 3
            )
            async for message in call:
                if waiting:
                    waiting = False
                    starting.release()
                received += message.text
                finished = finished or message.finish_reason != pb.FINISH_REASON_UNSPECIFIED
        except grpc.aio.AioRpcError as error:
            errors[error.code().name] = errors.get(error.code().name, 0) + 1
        finally:
            if waiting:
                starting.release()
            events.append((time.monotonic(), -1))
        # Deltas may be coalesced into fewer messages: the text is what must be whole.
        texts += received == CHUNK_TEXT * chunks
        completed += finished and received == CHUNK_TEXT * chunks

    for channel in connections:
        await channel.channel_ready()
    await asyncio.gather(*(one(index) for index in range(streams)))
    for channel in connections:
        await channel.close()
    return {"completed": completed, "whole_texts": texts, "events": events, "errors": errors}


def _most_at_once(events: list[tuple[float, int]]) -> int:
    """The most streams open at one time, from every client's opens and ends."""
    most = now = 0
    for _at, change in sorted(events):
        now += change
        most = max(most, now)
    return most


class _Sampler:
    """The server's RSS every 100 ms, on a thread of its own while the clients run."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(procstat.rss_mib(self._pid))
            self._stop.wait(0.1)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(
    modelwire: Path,
    workdir: Path,
    streams: int = 1000,
    chunks: int = 10,
    interval: float = 1.0,
    floor: bool = False,
    clients: int = 2,
    channels: int = 8,
    opening: int = 200,
) -> dict[str, Any]:
    server, address = (
        start_floor(workdir, chunks, interval)
        if floor
        else start_worker(modelwire, _config(0, streams, chunks, interval), workdir)
    )
    try:
        pid = server.pid
        # Warm-up calls, so lazily built state (interpreter caches, first-call paths) is in
        # "before".
        asyncio.run(_warm(address))
        time.sleep(0.5)
        rss_before = procstat.rss_mib(pid)
        cpu_before = procstat.cpu_seconds(pid)
        shares = [streams // clients + (index < streams % clients) for index in range(clients)]
        started = time.monotonic()
        with (
            _Sampler(pid) as sampler,
            ProcessPoolExecutor(clients, mp_context=get_context("spawn")) as pool,
        ):
            parts = [
                part.result()
                for part in [
                    pool.submit(_client, address, share, chunks, interval, channels, opening)
                    for share in shares
                    if share
                ]
            ]
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        errors: dict[str, int] = {}
        for part in parts:
            for code, count in part["errors"].items():
                errors[code] = errors.get(code, 0) + count
        result: dict[str, Any] = {
            "server": "floor" if floor else "modelwire",
            "completed": sum(part["completed"] for part in parts),
            "whole_texts": sum(part["whole_texts"] for part in parts),
            "peak_open": _most_at_once([event for part in parts for event in part["events"]]),
            "errors": errors,
            "elapsed_s": elapsed,
            "rss_peak_sampled_mib": max(sampler.samples, default=0.0),
            "streams": streams,
            "chunks_per_stream": chunks,
            "interval_s": interval,
            "max_concurrency": streams,
            "max_queue": streams,
            "clients": clients,
            "channels_per_client": channels,
            "rss_before_mib": rss_before,
            "rss_after_mib": procstat.rss_mib(pid),
            "vm_hwm_mib": procstat.hwm_mib(pid),
            "worker_cpu_s": procstat.cpu_seconds(pid) - cpu_before,
        }
        peak = max(result["rss_peak_sampled_mib"], result["vm_hwm_mib"])
        result["rss_peak_mib"] = peak
        # Per stream open at the peak: when the last opened after the first had ended (a slow
        # machine opens 10,000 slower than 10 s), the peak held fewer than all of them.
        result["rss_per_stream_kib"] = (peak - rss_before) * 1024 / max(result["peak_open"], 1)
        return result
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


async def _warm(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        await stub.CountToken(pb.CountTokenRequest(model=MODEL, prompt="warm up"), timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--floor", action="store_true", help="hold them in the bare grpc.aio floor")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--channels", type=int, default=8, help="connections per client process")
    parser.add_argument(
        "--opening", type=int, default=200, help="streams a client opens at once, at most"
    )
    args = parser.parse_args()
    modelwire = Path(sys.executable).with_name("modelwire")
    with tempfile.TemporaryDirectory() as workdir:
        result = run(
            modelwire,
            Path(workdir),
            args.streams,
            args.chunks,
            args.interval,
            args.floor,
            args.clients,
            args.channels,
            args.opening,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
