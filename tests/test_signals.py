"""SIGHUP on real processes: a worker (alone and under `--processes 2`) and a controller reload
their tokens and TLS certificates, say in one JSON log line what they reloaded and which changed
keys need a restart, keep the running configuration when the new one is invalid, and keep serving.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli_process import PIPE, first_line, start_cli
from conftest import free_port
from modelwire.v1 import controller_pb2, controller_pb2_grpc
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
T1 = "tok-first-000000001"
T2 = "tok-second-00000002"
ECHO = '[[models]]\nname = "echo"\nprovider = "echo"\n'
Line = dict[str, Any]


def tokens(token: str, permissions: str = '"generate"') -> str:
    return f'[[tokens]]\nname = "caller"\ntoken = "{token}"\npermissions = [{permissions}]\n'


class Server:
    """A modelwire process whose stderr is its JSON log, read line by line as the test waits."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[Line] = []

    async def line(self, wanted: Callable[[Line], bool], timeout_s: float = 30) -> Line:
        """The next log line `wanted` accepts; every line read must be JSON."""
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.process.stderr.readline()
                assert raw, (
                    f"the process ended (exit {await self.process.wait()}); its log: {self.lines}"
                )
                line: Line = json.loads(raw)
                self.lines.append(line)
                if wanted(line):
                    return line

    def alive(self) -> bool:
        return self.process.returncode is None


def reload_line(line: Line) -> bool:
    return "reloaded" in line


async def start(*args: str, announcement: str) -> Server:
    process = await start_cli(*args, stderr=PIPE)
    line = await first_line(process, 60)
    assert announcement in line, line
    return Server(process)


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    """Processes a test started; killed if the test left them running."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.alive():
            server.process.kill()
            await server.process.wait()


async def generate(
    address: str, token: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.StatusCode:
    """One call on a new connection (under SO_REUSEPORT each may reach another process)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channel = (
        grpc.aio.secure_channel(address, credentials, options)
        if credentials
        else grpc.aio.insecure_channel(address, options)
    )
    async with channel:
        request = pb.ModelRequest(
            model="echo", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
        )
        try:
            await pb_grpc.ModelWorkerStub(channel).Generate(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def worker_config(tmp_path: Path, port: int, server: str = "", extra: str = "") -> Path:
    config = tmp_path / "modelwire.toml"
    config.write_text(
        f"[server]\nport = {port}\ngrace_period_s = 1\n{server}\n"
        f'[auth]\ntokens_file = "tokens.toml"\n{extra}\n{ECHO}'
    )
    return config


async def test_sighup_swaps_the_tokens_names_restart_keys_and_keeps_serving(
    tmp_path: Path, servers: list[Server]
) -> None:
    port = free_port()
    (tmp_path / "tokens.toml").write_text(tokens(T1))
    config = worker_config(tmp_path, port)
    worker = await start("serve", "--config", str(config), announcement="modelwire serving echo")
    servers.append(worker)
    address = f"127.0.0.1:{port}"
    assert await generate(address, T1) == grpc.StatusCode.OK

    (tmp_path / "tokens.toml").write_text(tokens(T2))
    worker_config(tmp_path, port, server="max_receive_message_bytes = 8192")  # needs a restart
    worker.process.send_signal(signal.SIGHUP)
    line = await worker.line(reload_line)

    assert line["level"] == "INFO" and line["reloaded"] == ["auth"]
    assert line["restart_needed"] == ["server.max_receive_message_bytes"]
    assert T1 not in json.dumps(worker.lines) and T2 not in json.dumps(worker.lines)
    assert await generate(address, T1) == grpc.StatusCode.UNAUTHENTICATED
    assert await generate(address, T2) == grpc.StatusCode.OK
    assert worker.alive()

    worker.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.process.wait(), 30) == 0


async def test_sighup_lowers_a_quota_limit_live(tmp_path: Path, servers: list[Server]) -> None:
    """The new rule applies from the next call. Lowered below what one call reserves (its prompt
    and 1,024 tokens of output), it refuses every call whatever the minute, so no window can make
    this pass or fail by the clock."""
    port = free_port()
    (tmp_path / "tokens.toml").write_text(tokens(T1))
    rule = '[quota]\n[[quota.rules]]\ntenant = "caller"\ntokens_per_minute = {}\n'
    config = worker_config(tmp_path, port, extra=rule.format(1_000_000))
    worker = await start("serve", "--config", str(config), announcement="modelwire serving echo")
    servers.append(worker)
    address = f"127.0.0.1:{port}"
    assert await generate(address, T1) == grpc.StatusCode.OK

    worker_config(tmp_path, port, extra=rule.format(5))
    worker.process.send_signal(signal.SIGHUP)
    line = await worker.line(reload_line)
    assert line["reloaded"] == ["auth", "quota"] and line["restart_needed"] == []
    assert await generate(address, T1) == grpc.StatusCode.RESOURCE_EXHAUSTED

    worker.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.process.wait(), 30) == 0


async def test_a_reload_of_an_invalid_configuration_keeps_the_running_one(
    tmp_path: Path, servers: list[Server]
) -> None:
    port = free_port()
    (tmp_path / "tokens.toml").write_text(tokens(T1))
    worker = await start(
        "serve",
        "--config",
        str(worker_config(tmp_path, port)),
        announcement="modelwire serving echo",
    )
    servers.append(worker)
    address = f"127.0.0.1:{port}"

    (tmp_path / "tokens.toml").write_text(tokens("short"))  # a token must have 16 characters
    worker.process.send_signal(signal.SIGHUP)
    line = await worker.line(reload_line)

    assert line["level"] == "ERROR" and line["reloaded"] == []
    assert "tokens.toml" in line["msg"] and "at least 16 characters" in line["msg"]
    assert await generate(address, T1) == grpc.StatusCode.OK
    assert worker.alive()


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = []
    for name in ("a", "b"):
        directory = tmp_path_factory.mktemp(f"certs-{name}")
        subprocess.run(
            [str(ROOT / "scripts" / "make_certs.sh"), str(directory)],
            check=True,
            capture_output=True,
        )
        made.append(directory)
    return made[0], made[1]


async def test_sighup_reloads_the_tls_certificate_for_new_connections(
    tmp_path: Path, servers: list[Server], two_cas: tuple[Path, Path]
) -> None:
    first, second = two_cas
    for name in ("server.pem", "server.key"):
        shutil.copy(first / name, tmp_path / name)
    port = free_port()
    (tmp_path / "tokens.toml").write_text(tokens(T1))
    tls = '[tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n'
    worker = await start(
        "serve",
        "--config",
        str(worker_config(tmp_path, port, extra=tls)),
        announcement="modelwire serving echo",
    )
    servers.append(worker)
    address = f"127.0.0.1:{port}"
    trusts_first = grpc.ssl_channel_credentials((first / "ca.pem").read_bytes())
    trusts_second = grpc.ssl_channel_credentials((second / "ca.pem").read_bytes())
    assert await generate(address, T1, trusts_first) == grpc.StatusCode.OK
    assert await generate(address, T1, trusts_second) == grpc.StatusCode.UNAVAILABLE

    for name in ("server.pem", "server.key"):
        shutil.copy(second / name, tmp_path / name)
    worker.process.send_signal(signal.SIGHUP)
    line = await worker.line(reload_line)

    assert line["reloaded"] == ["tls", "auth"] and line["restart_needed"] == []
    assert await generate(address, T1, trusts_second) == grpc.StatusCode.OK
    assert await generate(address, T1, trusts_first) == grpc.StatusCode.UNAVAILABLE
    assert worker.alive()


async def test_the_supervisor_forwards_sighup_to_every_process(
    tmp_path: Path, servers: list[Server]
) -> None:
    port = free_port()
    (tmp_path / "tokens.toml").write_text(tokens(T1))
    config = worker_config(tmp_path, port, server="processes = 2")
    supervisor = await start("serve", "--config", str(config), announcement="(2 processes: ")
    servers.append(supervisor)
    address = f"127.0.0.1:{port}"

    (tmp_path / "tokens.toml").write_text(tokens(T2))
    supervisor.process.send_signal(signal.SIGHUP)
    await supervisor.line(
        lambda line: line["msg"].startswith("SIGHUP: forwarded to worker processes")
    )
    await supervisor.line(reload_line)
    await supervisor.line(reload_line)  # the children share the parent's stderr

    # Six connections: the kernel spreads them over both processes.
    assert set(await asyncio.gather(*(generate(address, T1) for _ in range(6)))) == {
        grpc.StatusCode.UNAUTHENTICATED
    }
    assert set(await asyncio.gather(*(generate(address, T2) for _ in range(6)))) == {
        grpc.StatusCode.OK
    }
    supervisor.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(supervisor.process.wait(), 30) == 0


async def test_a_controller_reloads_its_tokens_on_sighup(
    tmp_path: Path, servers: list[Server]
) -> None:
    port = free_port()
    (tmp_path / "tokens.toml").write_text(tokens(T1, '"read_fleet"'))
    config = tmp_path / "controller.toml"
    config.write_text(f'[server]\nport = {port}\n[auth]\ntokens_file = "tokens.toml"\n')
    controller = await start(
        "controller", "--config", str(config), announcement="modelwire controller on"
    )
    servers.append(controller)

    async def list_instances(token: str) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await controller_pb2_grpc.ModelControllerStub(channel).ListInstances(
                    controller_pb2.ListInstancesRequest(),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    assert await list_instances(T1) == grpc.StatusCode.OK
    (tmp_path / "tokens.toml").write_text(tokens(T2, '"read_fleet"'))
    controller.process.send_signal(signal.SIGHUP)
    line = await controller.line(reload_line)

    assert line["reloaded"] == ["auth"] and line["restart_needed"] == []
    assert await list_instances(T1) == grpc.StatusCode.UNAUTHENTICATED
    assert await list_instances(T2) == grpc.StatusCode.OK
    assert controller.alive()
