"""The fleet's front door, secured: tokens with permissions on the controller, instance ids owned
by their registrant, addresses and weights checked, TLS everywhere, the gateway calling workers
with its own credential, and no listener beyond loopback without auth. Every process listens on
this machine's routable address (not loopback), as in a multi-machine fleet."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from blocking_provider import BlockingTestClient
from cli_process import run_cli
from conftest import free_port
from fleet import blocking_config, blocking_model, wait_until
from modelwire.app.config import read_auth
from modelwire.app.server import build_worker
from modelwire.client import ModelwireCallError, ModelWorkerClient, tls_credentials
from modelwire.controller.memory import MemoryRegistry
from modelwire.controller.server import ControllerServer
from modelwire.controller.servicer import MAX_INSTANCES_PER_IDENTITY
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import (
    AuthConfig,
    AuthSection,
    ClientTlsConfig,
    ControllerSection,
    GatewaySection,
    RegistrationConfig,
    RegistryAccess,
    ServerConfig,
    TlsConfig,
    WorkerAccess,
    parse,
)
from modelwire.fleet.connect import connect
from modelwire.fleet.types import InstanceModel, InstanceSpec
from modelwire.gateway.server import Gateway
from modelwire.v1 import controller_pb2 as cpb
from modelwire.v1 import controller_pb2_grpc as cpb_grpc
from modelwire.worker.agent import RegistrationAgent, worker_agent

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {
    "worker-a": ("register", "generate"),
    "worker-b": ("register",),
    "caller": ("generate",),
    "reader": ("read_fleet",),
    "gateway": ("generate", "read_fleet", "relay"),
}

pytestmark = pytest.mark.usefixtures("blocking_provider")


def token(name: str) -> str:
    return f"{name}-token-0123456789abcdef"


def routable_ip() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address: str = probe.getsockname()[0]
    assert address != "127.0.0.1", "the tests need an address beyond loopback"
    return address


@pytest.fixture(scope="module")
def ip() -> str:
    return routable_ip()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory, ip: str) -> Path:
    directory = tmp_path_factory.mktemp("fleet-certs")
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(directory), ip],
        check=True,
        capture_output=True,
    )
    return directory


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> AuthConfig:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.toml"
    tokens.write_text(
        "".join(
            f'[[tokens]]\nname = "{name}"\ntoken = "{token(name)}"\npermissions = '
            f"{list(permissions)!r}\n".replace("'", '"')
            for name, permissions in TOKENS.items()
        )
    )
    config = read_auth(
        parse(AuthSection, {"tokens_file": str(tokens), "protect_health": True}, "<test>", "auth"),
        "<test>",
    )
    assert config is not None
    return config


def server_tls(certs: Path) -> TlsConfig:
    return TlsConfig(cert_file=certs / "server.pem", key_file=certs / "server.key")


def client_tls(certs: Path) -> ClientTlsConfig:
    return ClientTlsConfig(ca_file=certs / "ca.pem")


@asynccontextmanager
async def controller(ip: str, auth: AuthConfig, certs: Path) -> AsyncIterator[ControllerServer]:
    server = ControllerServer(
        MemoryRegistry(30),
        ServerConfig(host=ip, port=0, grace_period_s=0),
        ControllerSection(probe_health=False),
        auth=auth,
        tls=server_tls(certs),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def stub(address: str, certs: Path) -> tuple[grpc.aio.Channel, cpb_grpc.ModelControllerStub]:
    channel = grpc.aio.secure_channel(address, tls_credentials(certs / "ca.pem"))
    return channel, cpb_grpc.ModelControllerStub(channel)


def bearer(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token(name)}"),)


def registration(instance_id: str, address: str, weight: int = 1) -> cpb.RegisterInstanceRequest:
    return cpb.RegisterInstanceRequest(
        instance_id=instance_id,
        address=address,
        models=[cpb.InstanceModel(model="m")],
        weight=weight,
    )


async def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == code, raised.value
    return raised.value.details() or ""


async def test_the_control_plane_refuses_every_hijack(
    ip: str, auth: AuthConfig, certs: Path
) -> None:
    async with controller(ip, auth, certs) as server:
        channel, control = stub(server.address, certs)
        async with channel:
            mine = registration("w1", f"{ip}:5001")
            await refused(
                control.RegisterInstance(mine, timeout=5), grpc.StatusCode.UNAUTHENTICATED
            )
            assert "lacks the 'register' permission" in await refused(
                control.RegisterInstance(mine, metadata=bearer("caller"), timeout=5),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            await control.RegisterInstance(mine, metadata=bearer("worker-a"), timeout=5)

            # Another identity cannot take, renew or remove what worker-a registered.
            stolen = registration("w1", f"{ip}:6666")
            for call in (
                control.RegisterInstance(stolen, metadata=bearer("worker-b"), timeout=5),
                control.Heartbeat(
                    cpb.HeartbeatRequest(instance_id="w1"), metadata=bearer("worker-b"), timeout=5
                ),
                control.DeregisterInstance(
                    cpb.DeregisterInstanceRequest(instance_id="w1"),
                    metadata=bearer("worker-b"),
                    timeout=5,
                ),
            ):
                assert "registered by another identity" in await refused(
                    call, grpc.StatusCode.PERMISSION_DENIED
                )
            [instance] = server.registry.instances()
            assert (instance.address, instance.spec.owner) == (f"{ip}:5001", "worker-a")

            # Addresses only this machine can dial, and a weight that would win every pick.
            for address in (
                "unix:/tmp/worker.sock:1",
                "UNIX:/tmp/w.sock:1",
                "vsock:1:2",
                "127.0.0.1:50051",
                "localhost:50051",
                "LOCALHOST:50051",
                "localhost.:1",
                "ip6-loopback:1",
                "a.localhost:1",
                "169.254.10.1:1",
                "0.0.0.0:1",
                "[::1]:1",
                # forms resolvers and gRPC widen to loopback (found by an attack on this code)
                "[::ffff:127.0.0.1]:1",
                "[::ffff:7f00:1]:1",
                "[64:ff9b::7f00:1]:1",
                "[::ffff:169.254.1.1]:1",
                # IPv4 inside other IPv6 forms (IPv4-compatible, SIIT), cloud metadata services
                "[::127.0.0.1]:1",
                "[::ffff:0:127.0.0.1]:1",
                "100.100.100.200:1",
                "[fd00:ec2::254]:1",
                "127.000.000.001:1",
                "127.1:1",
                "0x7f000001:1",
                "2130706433:1",
                "0:1",
                "ipv4:127.0.0.1:1",
                "dns:///127.0.0.1:1",
                "dns:///localhost:1",
                "127.0.0.1 :1",
                "[fe80::1%eth0]:1",
                "[]:1",
                f"{ip}:70000",
                f"{ip}:\u0665\u0660\u0660\u0660",
                f"{ip}:99999999999999999999",
                "x" * 300 + ":1",
            ):
                details = await refused(
                    control.RegisterInstance(
                        registration("w2", address), metadata=bearer("worker-a"), timeout=5
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
                assert "address" in details, (address, details)
            details = await refused(
                control.RegisterInstance(
                    registration("w2", f"{ip}:5002", weight=1_000_000),
                    metadata=bearer("worker-a"),
                    timeout=5,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "weight: at most 100" in details

            # What a registration may hold is bounded (the fleet goes to every watcher in one
            # message) and printable (names end up in log lines).
            for field, bad in (
                (
                    "labels",
                    cpb.RegisterInstanceRequest(
                        instance_id="w3",
                        address=f"{ip}:5003",
                        models=[cpb.InstanceModel(model="m")],
                        labels={f"k{i}": "v" * 10 for i in range(33)},
                    ),
                ),
                (
                    "labels",
                    cpb.RegisterInstanceRequest(
                        instance_id="w3",
                        address=f"{ip}:5003",
                        models=[cpb.InstanceModel(model="m")],
                        labels={"k": "v" * 100_000},
                    ),
                ),
                (
                    "models",
                    cpb.RegisterInstanceRequest(
                        instance_id="w3",
                        address=f"{ip}:5003",
                        models=[cpb.InstanceModel(model=f"m{i}") for i in range(65)],
                    ),
                ),
                (
                    "models[0].model",
                    cpb.RegisterInstanceRequest(
                        instance_id="w3",
                        address=f"{ip}:5003",
                        models=[cpb.InstanceModel(model='m\n{"forged": 1}')],
                    ),
                ),
                (
                    "models[0].model",
                    cpb.RegisterInstanceRequest(
                        instance_id="w3",
                        address=f"{ip}:5003",
                        models=[cpb.InstanceModel(model="m" * 300)],
                    ),
                ),
                ("instance_id", registration("w3\n", f"{ip}:5003")),
            ):
                details = await refused(
                    control.RegisterInstance(bad, metadata=bearer("worker-a"), timeout=5),
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
                assert details.startswith(field), (field, details[:200])

            # One identity holds at most MAX_INSTANCES_PER_IDENTITY instances.
            for index in range(1, MAX_INSTANCES_PER_IDENTITY):
                await control.RegisterInstance(
                    registration(f"flood-{index}", f"{ip}:{6000 + index}"),
                    metadata=bearer("worker-b"),
                    timeout=5,
                )
            await control.RegisterInstance(
                registration("flood-last", f"{ip}:5999"), metadata=bearer("worker-b"), timeout=5
            )
            assert f"already holds {MAX_INSTANCES_PER_IDENTITY} instances" in await refused(
                control.RegisterInstance(
                    registration("flood-over", f"{ip}:5998"), metadata=bearer("worker-b"), timeout=5
                ),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            for instance in server.registry.instances():
                if instance.spec.owner == "worker-b":
                    await server.registry.deregister(instance.instance_id)

            # Reading the fleet (addresses) needs its own permission.
            await refused(
                control.ListInstances(
                    cpb.ListInstancesRequest(), metadata=bearer("caller"), timeout=5
                ),
                grpc.StatusCode.PERMISSION_DENIED,
            )
            listed = await control.ListInstances(
                cpb.ListInstancesRequest(), metadata=bearer("reader"), timeout=5
            )
            assert [i.instance_id for i in listed.instances] == ["w1"]


@pytest.mark.parametrize(
    "command", [["serve"], ["controller"], ["gateway", "--controller", "127.0.0.1:1"]]
)
def test_nothing_listens_beyond_loopback_without_auth(ip: str, command: list[str]) -> None:
    result = run_cli(*command, "--host", ip, "--port", str(free_port()), timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"would listen on {ip}:" in result.stderr and "without authentication" in result.stderr
    assert "allow_unauthenticated" in result.stderr and "Traceback" not in result.stderr


async def test_the_waiver_lets_a_trusted_network_listen_without_auth(ip: str) -> None:
    server = ControllerServer(
        MemoryRegistry(30),
        ServerConfig(host=ip, port=0, grace_period_s=0, allow_unauthenticated=True),
    )
    await server.start()
    await server.stop()
    with pytest.raises(StartupFailure, match="without authentication"):
        ControllerServer(MemoryRegistry(30), ServerConfig(host=ip, port=0))


@pytest.fixture
def tokens_in_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in TOKENS:
        monkeypatch.setenv(f"TOKEN_{name.replace('-', '_').upper()}", token(name))
    yield


@pytest.mark.usefixtures("tokens_in_env")
async def test_a_tls_and_auth_worker_behind_a_tls_and_auth_gateway(
    ip: str, auth: AuthConfig, certs: Path
) -> None:
    """Callers authenticate to the gateway; the gateway calls the worker with its own token (the
    caller's is not valid at the worker, so a forwarded one would be refused); health is protected
    and the gateway's probe still sees it; everything runs over TLS on a routable address."""
    ca = client_tls(certs)
    worker_only = replace(
        auth, grants=tuple(g for g in auth.grants if g.name in ("gateway", "worker-a"))
    )
    async with AsyncExitStack() as stack:
        control = await stack.enter_async_context(controller(ip, auth, certs))
        config = replace(
            blocking_config(blocking_model("slow", tokens=3)),
            server=replace(blocking_config().server, host=ip),
            auth=worker_only,
            tls=server_tls(certs),
            registry=RegistryAccess(controller=control.address, token_env="TOKEN_WORKER_A", tls=ca),
            registration=RegistrationConfig(),
        )
        worker = await build_worker(config)
        worker.registration = worker_agent(
            config.registry, config.registration, worker.targets, ip, worker.port
        )
        await worker.start()
        stack.push_async_callback(worker.drain)
        await asyncio.wait_for(worker.registration.registered.wait(), 10)

        gateway = Gateway(
            connect(RegistryAccess(controller=control.address, token_env="TOKEN_GATEWAY", tls=ca)),
            ServerConfig(host=ip, port=0, grace_period_s=1),
            GatewaySection(workers=WorkerAccess(token_env="TOKEN_GATEWAY", tls=ca)),
            auth=auth,
            tls=server_tls(certs),
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        await asyncio.wait_for(gateway.router.synced.wait(), 10)
        route = next(iter(gateway.router.routes.values()))
        # The protected health Watch answers the gateway's token.
        await wait_until(gateway.router.changed, lambda: route.probe is True, 10)

        credentials = tls_credentials(certs / "ca.pem")
        async with ModelWorkerClient(
            gateway.address, credentials=credentials, token=token("caller"), timeout=10
        ) as client:
            output = await client.generate("slow", "hi")
            models = await client.list_models()
        assert output.text == "w0 w1 w2 "
        assert [m.model for m in models] == ["slow"]
        async with ModelWorkerClient(
            gateway.address, credentials=credentials, timeout=10
        ) as anonymous:
            with pytest.raises(ModelwireCallError) as raised:
                await anonymous.generate("slow", "hi")
        assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
        provider = worker.models[0].client
        assert isinstance(provider, BlockingTestClient) and provider.started == 1


@pytest.mark.usefixtures("tokens_in_env")
async def test_a_worker_whose_id_was_squatted_after_a_controller_restart_comes_back_under_a_new_one(
    ip: str, auth: AuthConfig, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The controller restarts and forgets who owns what; another identity registers the worker's id
    first (ids are visible to every caller in the gateway's trailer). The worker is refused, says
    so at WARNING, and registers again under a new id instead of being locked out."""
    port = free_port()
    access = RegistryAccess(
        controller=f"{ip}:{port}", token_env="TOKEN_WORKER_A", tls=client_tls(certs)
    )
    section = ControllerSection(probe_health=False)

    def fresh_controller() -> ControllerServer:
        return ControllerServer(
            MemoryRegistry(3),
            ServerConfig(host=ip, port=port, grace_period_s=0),
            section,
            auth=auth,
            tls=server_tls(certs),
        )

    first = fresh_controller()
    await first.start()
    agent = RegistrationAgent(
        connect(access), InstanceSpec("", f"{ip}:5101", (InstanceModel("m"),)), dict
    )
    await agent.start()
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        squatted = agent.instance_id
        await first.stop()
        second = fresh_controller()
        await second.start()
        try:
            channel, control = stub(second.address, certs)
            async with channel:
                await control.RegisterInstance(
                    registration(squatted, f"{ip}:6666"), metadata=bearer("worker-b"), timeout=5
                )
            with caplog.at_level(logging.WARNING, logger="modelwire.worker.agent"):
                await wait_until_owned(second, "worker-a", timeout=15)
            [mine] = [i for i in second.registry.instances() if i.spec.owner == "worker-a"]
            assert mine.instance_id == agent.instance_id != squatted
            assert mine.address == f"{ip}:5101"
            assert (
                "registered by another identity" in caplog.text
                and f"registering again as {agent.instance_id}" in caplog.text
            )
        finally:
            await agent.stop()
            await second.stop()
    finally:
        await agent.stop()


async def wait_until_owned(server: ControllerServer, owner: str, timeout: float) -> None:
    """Follows the registry's own watch until an instance of `owner` shows up."""
    async with asyncio.timeout(timeout):
        async for _ in server.registry.watch():
            if any(i.spec.owner == owner for i in server.registry.instances()):
                return
