"""Processes: one unless asked; with `--processes 2` two workers share one port, both serve and
drain on SIGTERM, die with their parent, are replaced when they die, and a taken metrics port stops
the start before any of them runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import urllib.request
from pathlib import Path

import grpc

from cli_process import DEVNULL, PIPE, first_line, start_cli
from conftest import free_port
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

MODEL = "gemma-3-270m"
TOKENS = 20
REQUEST = pb.ModelRequest(
    model=MODEL,
    messages=[pb.ModelMessage(role=pb.ROLE_USER, content="Count to fifty.")],
    sampling=pb.SamplingParams(temperature=0, max_new_tokens=TOKENS),
)


async def stream_on_a_new_connection(
    address: str, started: asyncio.Event, all_started: asyncio.Event
) -> tuple[str, int]:
    """One stream on its own connection (SO_REUSEPORT spreads connections, not calls); returns
    the serving process id and the number of tokens the stream delivered."""
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
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
    config.write_text(
        f"[server]\nport = {port}\nprocesses = 2\ngrace_period_s = "
        f"30\n[observability]\nmetrics_port = {metrics_port}\n"
    )
    process = await start_cli("serve", "--config", str(config), stderr=DEVNULL)
    try:
        line = await first_line(process, 120)
        assert "(2 processes: " in line, line
        child_pids = set(line.rsplit(": ", 1)[1].rstrip(")\n").split(", "))

        address = f"127.0.0.1:{port}"
        streams = 12
        started = [asyncio.Event() for _ in range(streams)]
        all_started = asyncio.Event()
        tasks = [
            asyncio.create_task(stream_on_a_new_connection(address, s, all_started))
            for s in started
        ]
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 60)
        process.send_signal(signal.SIGTERM)
        all_started.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)

        served_by = {pid for pid, _ in results}
        assert served_by == child_pids, "both processes took connections"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
        ) as response:
            metrics = response.read().decode()
        # One endpoint, the sum of both processes (prometheus-client multiprocess mode).
        assert (
            'modelwire_requests_total{code="OK",method="GenerateStream",'
            f'model="{MODEL}",tenant="_none"}} '
            f"{streams}.0" in metrics
        )
        assert all(tokens == TOKENS for _, tokens in results), (
            "every stream in flight finished during the drain"
        )
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def process_exited(pid: int) -> asyncio.Future[None]:
    """Resolves when `pid` exits, whoever its parent is (a pidfd turns readable then)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        done.set_result(None)
        return done

    def readable() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        done.set_result(None)

    loop.add_reader(fd, readable)
    return done


async def start_supervisor(
    config: Path, *extra: str
) -> tuple[asyncio.subprocess.Process, list[int]]:
    process = await start_cli("serve", "--config", str(config), *extra, stderr=PIPE)
    line = await first_line(process, 120)
    assert "(2 processes: " in line, line
    return process, [int(pid) for pid in line.rsplit(": ", 1)[1].rstrip(")\n").split(", ")]


async def test_a_config_file_without_processes_serves_in_one_process(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "modelwire.toml"
    config.write_text(f"[server]\nport = {port}\n")
    process = await start_cli("serve", "--config", str(config), stderr=DEVNULL)
    try:
        line = await first_line(process, 120)
        assert line.startswith("modelwire serving") and "processes" not in line, line
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.ModelWorkerStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
            await call
            assert dict(await call.trailing_metadata())["modelwire-pid"] == str(process.pid)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigkill_of_the_parent_leaves_no_child(tmp_path: Path) -> None:
    config = tmp_path / "modelwire.toml"
    config.write_text(f"[server]\nport = {free_port()}\nprocesses = 2\ngrace_period_s = 1\n")
    process, children = await start_supervisor(config)
    exits = [process_exited(pid) for pid in children]
    process.kill()
    await process.wait()
    # The lifeline (each child's stdin) closed with the parent: every child drains and exits.
    await asyncio.wait_for(asyncio.gather(*exits), 60)


async def test_a_taken_metrics_port_fails_the_start_before_any_child(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        config = tmp_path / "modelwire.toml"
        config.write_text(
            f"[server]\nport = {port}\nprocesses = 2\n[observability]\nmetrics_port = "
            f"{metrics_port}\n"
        )
        result = await start_cli("serve", "--config", str(config), stderr=PIPE)
        stdout, stderr = await asyncio.wait_for(result.communicate(), 60)
    assert result.returncode == 1
    assert (
        f"cannot start: observability.metrics_port: cannot listen on 127.0.0.1:{metrics_port}"
        in stderr.decode()
    )
    assert "Traceback" not in stderr.decode() and not stdout
    # No child ever listened: the worker port is free to bind without SO_REUSEPORT.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


async def test_a_dead_child_is_replaced_and_its_gauges_dropped(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "modelwire.toml"
    config.write_text(
        f"[server]\nport = {port}\nprocesses = 2\ngrace_period_s = "
        f'1\n[observability]\nmetrics_port = {metrics_port}\nlog_format = "text"\n'
    )
    process, children = await start_supervisor(config)
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            probe = stub.ListModels(pb.ListModelsRequest(), timeout=10)
            await probe
            victim = int(dict(await probe.trailing_metadata())["modelwire-pid"])
            stream = stub.GenerateStream(replace_tokens(REQUEST, 1500), timeout=120)
            await stream.read()  # running: the victim's in-flight gauge is 1
            assert in_flight(metrics_port) == 1
            os.kill(victim, signal.SIGKILL)
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await stream.read() is not grpc.aio.EOF:
                    pass
        assert process.stderr is not None
        while f"worker process {victim} replaced by" not in (
            line := (await asyncio.wait_for(process.stderr.readline(), 120)).decode()
        ):
            pass
        replacement = int(line.rsplit(" ", 1)[1])
        assert replacement not in children
        assert in_flight(metrics_port) == 0, "the dead child's in-flight gauge still counts"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def replace_tokens(request: pb.ModelRequest, tokens: int) -> pb.ModelRequest:
    copy = pb.ModelRequest()
    copy.CopyFrom(request)
    copy.sampling.max_new_tokens = tokens
    return copy


def in_flight(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    lines = [
        line
        for line in metrics.splitlines()
        if line.startswith(f'modelwire_in_flight{{model="{MODEL}"}}')
    ]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


async def test_sigterm_during_the_start_stops_cleanly(tmp_path: Path) -> None:
    """Told to stop while its children still load their models: they stop, and so does the parent,
    with exit code 0 (it reported a failed start before)."""
    config = tmp_path / "modelwire.toml"
    config.write_text(
        f'[server]\nport = {free_port()}\nprocesses = 2\n[observability]\nlog_format = "text"\n'
    )
    process = await start_cli("serve", "--config", str(config), stderr=PIPE)
    try:
        assert process.stderr is not None
        while b"warming up" not in await asyncio.wait_for(process.stderr.readline(), 120):
            pass
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()[-2000:]
        assert b"cannot start" not in stderr and not stdout
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
