"""The etcd registry against a real etcd server: the endpoints.Manager key format, lease expiry
after a kill -9, graceful deregistration, gateway routing, etcd restarts, and prefix isolation of
models."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import aetcd
import grpc
import pytest

from blocking_provider import BlockingTestClient
from cli_process import DEVNULL, first_line, start_cli
from conftest import free_port
from etcd_server import EtcdServer
from fleet import Joining, blocking_config, blocking_model, registered, registered_worker
from modelwire.app.server import Worker, build_worker
from modelwire.client import ModelWorkerClient
from modelwire.controller.server import ControllerServer
from modelwire.core.addresses import EtcdTarget
from modelwire.core.settings import (
    ClientTlsConfig,
    ControllerSection,
    RegistrationConfig,
    RegistryAccess,
    ServerConfig,
)
from modelwire.fleet.etcd import EtcdRegistry, endpoint_value, parse_endpoint
from modelwire.fleet.remote import RemoteController
from modelwire.fleet.types import InstanceModel, InstanceSpec, ModelLoad, WatchBatch
from modelwire.gateway.server import Gateway
from modelwire.v1 import controller_pb2, controller_pb2_grpc
from modelwire.worker.agent import worker_agent

TTL_S = 2

pytestmark = pytest.mark.usefixtures("blocking_provider")


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def url(etcd: EtcdServer, prefix: str = "mw") -> str:
    return f"{etcd.url(prefix)}?ttl={TTL_S}"


async def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Polls external state (etcd's keys) until `condition` holds; returns when it did
    (monotonic)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
    return time.monotonic()


def keys_under(etcd: EtcdServer, prefix: str) -> dict[str, bytes]:
    return etcd.keys(prefix)


async def test_keys_are_what_etcds_endpoints_manager_writes_and_go_before_the_port_closes(
    etcd: EtcdServer,
) -> None:
    config = blocking_config(
        blocking_model("llama", tokens=40, token_delay_s=0.05), blocking_model("llama-70b")
    )
    settings = Joining(registry=url(etcd), weight=3, labels={"zone": "a"})
    async with registered_worker(config, settings) as worker:
        instance_id = await registered(worker)
        keys = keys_under(etcd, "mw/")
        assert sorted(keys) == [f"mw/llama-70b/{instance_id}", f"mw/llama/{instance_id}"]
        value = json.loads(keys[f"mw/llama/{instance_id}"])
        assert list(value) == ["Op", "Addr", "Metadata"] and value["Op"] == 0
        assert value["Addr"] == worker.address
        # A JSON string, so grpc-go can compare resolver.Address.Metadata with == (a map would
        # panic).
        assert isinstance(value["Metadata"], str)
        assert json.loads(value["Metadata"]) == {
            "instance_id": instance_id,
            "weight": 3,
            "capacity": 8,
            "labels": {"zone": "a"},
            "owner": "",
        }

        async with ModelWorkerClient(worker.address, timeout=30) as client:
            stream = client.stream("llama", "hi")
            await anext(stream)
            drain = asyncio.create_task(worker.drain())
            gone_at = await poll(lambda: not keys_under(etcd, "mw/"), 5)
            rest = [chunk async for chunk in stream]
            finished_at = time.monotonic()
            await drain
        worker.registration = None
        assert rest[-1].usage.completion_tokens == 40
        assert gone_at < finished_at, "the keys outlived the port"
        # The context manager drains again on exit; a drained worker's second drain is harmless.


def test_endpoint_value_round_trip_and_url() -> None:
    spec = InstanceSpec(
        "i-1", "10.0.0.5:50051", (InstanceModel("m", 4),), weight=2, labels={"k": "v"}
    )
    value = endpoint_value(spec, "m")
    assert value.startswith(b'{"Op":0,"Addr":"10.0.0.5:50051","Metadata":"')
    assert parse_endpoint(value) == (
        "10.0.0.5:50051",
        {"instance_id": "i-1", "weight": 2, "capacity": 4, "labels": {"k": "v"}, "owner": ""},
    )
    # Values written by others (an object, or no metadata) are read too.
    assert parse_endpoint(b'{"Op":0,"Addr":"h:1","Metadata":{"a":1}}') == ("h:1", {"a": 1})
    assert parse_endpoint(b'{"Addr":"h:1"}') == ("h:1", {})
    assert parse_endpoint(b"not json") is None
    target = EtcdTarget.parse("etcd://10.0.0.1:2379,10.0.0.2:2379/fleet/prod?ttl=5")
    assert target.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2379))
    assert (target.prefix, target.ttl_s) == ("fleet/prod", 5.0)


async def test_lease_lapses_after_the_worker_is_killed(etcd: EtcdServer) -> None:
    """A gemma worker process registered in etcd; after SIGKILL its key is gone within its TTL."""
    port = free_port()
    process = await start_cli("serve", "--port", str(port), "--registry", url(etcd), stderr=DEVNULL)
    try:
        line = await first_line(process, 120)
        assert line.startswith(f"modelwire serving gemma-3-270m on 127.0.0.1:{port}"), line
        await poll(lambda: len(keys_under(etcd, "mw/gemma-3-270m/")) == 1, 10)
        await asyncio.sleep(TTL_S)  # survives more than one TTL: the keep-alive works
        assert len(keys_under(etcd, "mw/gemma-3-270m/")) == 1
        process.kill()
        killed_at = time.monotonic()
        gone_at = await poll(lambda: not keys_under(etcd, "mw/"), TTL_S + 3)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    lapse = gone_at - killed_at
    print(f"key gone {lapse:.2f}s after SIGKILL (TTL {TTL_S}s)")
    assert lapse <= TTL_S + 1.0


async def test_gateway_routes_through_the_etcd_registry(etcd: EtcdServer) -> None:
    config = blocking_config(blocking_model("slow", tokens=2))
    settings = Joining(registry=url(etcd))
    async with AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(registered_worker(config, settings)) for _ in range(2)
        ]
        for worker in workers:
            await registered(worker)
        gateway = Gateway(
            EtcdRegistry.from_url(url(etcd)), ServerConfig(port=0, grace_period_s=1.0)
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        await asyncio.wait_for(gateway.router.synced.wait(), 10)
        assert len(gateway.router.routes) == 2
        async with ModelWorkerClient(gateway.address, timeout=10) as client:
            outputs = await asyncio.gather(*(client.generate("slow", "hi") for _ in range(40)))
            models = await client.list_models()
        counts = [client_of(w).started for w in workers]
    assert all(o.text == "w0 w1 " for o in outputs)
    assert min(counts) >= 16, counts
    assert [m.model for m in models] == ["slow"]


def client_of(worker: Worker) -> BlockingTestClient:
    client = worker.models[0].client
    assert isinstance(client, BlockingTestClient)
    return client


async def test_keys_are_back_within_one_ttl_after_etcd_restarts(etcd: EtcdServer) -> None:
    config = blocking_config(blocking_model("slow", tokens=1))
    settings = Joining(registry=url(etcd))
    async with AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(registered_worker(config, settings)) for _ in range(2)
        ]
        ids = sorted([await registered(w) for w in workers])
        expected = sorted(f"mw/slow/{i}" for i in ids)
        assert sorted(keys_under(etcd, "mw/")) == expected

        # etcd is down for a second (the outage being simulated), during which the workers serve,
        # and comes back without its data (a new member, a restore): the leases are gone.
        await asyncio.to_thread(etcd.kill)
        down_at = time.monotonic()
        async with ModelWorkerClient(workers[0].address, timeout=5) as client:
            assert (await client.generate("slow", "hi")).text == "w0 "
        await asyncio.sleep(1.0)
        await asyncio.to_thread(etcd.restart, True)
        up_at = time.monotonic()
        back_at = await poll(lambda: sorted(keys_under(etcd, "mw/")) == expected, TTL_S + 5)
        print(
            f"keys back {back_at - up_at:.2f}s after etcd answered again ({back_at - down_at:.2f}s "
            f"after it died; TTL {TTL_S}s)"
        )
        assert back_at - up_at <= TTL_S
        assert [w.registration.registrations for w in workers if w.registration] == [2, 2], (
            "not re-registered"
        )

        # A plain restart keeps the data and the leases: the keys stay and keep being renewed.
        await asyncio.to_thread(etcd.restart, False)
        await asyncio.sleep(TTL_S + 0.5)
        assert sorted(keys_under(etcd, "mw/")) == expected
        # The workers served throughout.
        async with ModelWorkerClient(workers[0].address, timeout=5) as client:
            assert (await client.generate("slow", "hi")).text == "w0 "


async def test_llama_and_llama_70b_never_show_up_in_each_others_resolution(
    etcd: EtcdServer,
) -> None:
    settings = Joining(registry=url(etcd))
    async with AsyncExitStack() as stack:
        small = await stack.enter_async_context(
            registered_worker(blocking_config(blocking_model("llama", tokens=1)), settings)
        )
        big = await stack.enter_async_context(
            registered_worker(blocking_config(blocking_model("llama-70b", tokens=1)), settings)
        )
        small_id, big_id = await registered(small), await registered(big)

        # What etcd's resolver lists for etcd:///mw/llama is the prefix "mw/llama/".
        assert list(keys_under(etcd, "mw/llama/")) == [f"mw/llama/{small_id}"]
        assert list(keys_under(etcd, "mw/llama-70b/")) == [f"mw/llama-70b/{big_id}"]

        registry = EtcdRegistry.from_url(url(etcd))
        stack.push_async_callback(registry.close)
        seen: dict[str, WatchBatch] = {}
        for model in ("llama", "llama-70b"):
            watch = registry.watch(model)
            seen[model] = await anext(watch)
            await watch.aclose()
        assert [e.instance.instance_id for e in seen["llama"].events] == [small_id]
        assert [e.instance.instance_id for e in seen["llama-70b"].events] == [big_id]

        # The controller on etcd lists them apart too, with the load its heartbeats report.
        controller = ControllerServer(
            EtcdRegistry.from_url(url(etcd)),
            ServerConfig(port=0, grace_period_s=0),
            ControllerSection(probe_health=False),
        )
        await controller.start()
        stack.push_async_callback(controller.stop)
        remote = RemoteController(controller.address)
        stack.push_async_callback(remote.close)
        await poll_async(
            lambda: remote.list("llama"),
            lambda listed: [i.instance_id for i in listed] == [small_id],
            5,
        )
        assert [i.instance_id for i in await remote.list("llama-70b")] == [big_id]

        # A worker registering through that controller lands in etcd under the same lease rules.
        lease = await remote.register(
            InstanceSpec("via-controller", "127.0.0.1:1", (InstanceModel("llama"),))
        )
        assert lease.ttl_s == TTL_S
        assert await remote.heartbeat("via-controller", {"llama": ModelLoad(2, 1)})
        assert sorted(keys_under(etcd, "mw/llama/")) == sorted(
            [f"mw/llama/{small_id}", "mw/llama/via-controller"]
        )
        listed = await poll_async(lambda: remote.list("llama"), lambda listed: len(listed) == 2, 5)
        assert {
            i.instance_id: [(load.model, load.in_flight, load.queued) for load in i.load]
            for i in listed
        }["via-controller"] == [("llama", 2, 1)]
        assert await remote.deregister("via-controller")
        assert list(keys_under(etcd, "mw/llama/")) == [f"mw/llama/{small_id}"]


async def test_a_controller_whose_etcd_is_down_answers_unavailable(etcd: EtcdServer) -> None:
    """Registration calls through a controller on a dead etcd: UNAVAILABLE naming etcd (the agents
    back off and retry), never UNKNOWN with a Python exception's text."""
    async with AsyncExitStack() as stack:
        controller = ControllerServer(
            EtcdRegistry.from_url(url(etcd)),
            ServerConfig(port=0, grace_period_s=0),
            ControllerSection(probe_health=False),
        )
        await controller.start()
        stack.push_async_callback(controller.stop)
        remote = RemoteController(controller.address)
        stack.push_async_callback(remote.close)
        await remote.register(InstanceSpec("i-down", "10.0.0.9:50051", (InstanceModel("m"),)))
        await asyncio.to_thread(etcd.kill)
        async with grpc.aio.insecure_channel(controller.address) as channel:
            stub = controller_pb2_grpc.ModelControllerStub(channel)
            calls = {
                "register": lambda: stub.RegisterInstance(
                    controller_pb2.RegisterInstanceRequest(
                        instance_id="i-2",
                        address="10.0.0.9:50052",
                        models=[controller_pb2.InstanceModel(model="m")],
                    ),
                    timeout=15,
                ),
                "heartbeat": lambda: stub.Heartbeat(
                    controller_pb2.HeartbeatRequest(instance_id="i-down"), timeout=15
                ),
                "deregister": lambda: stub.DeregisterInstance(
                    controller_pb2.DeregisterInstanceRequest(instance_id="i-down"), timeout=15
                ),
            }
            for name, method in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await method()
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, (name, raised.value)
                assert "etcd" in (raised.value.details() or ""), name
                assert "Unexpected" not in (raised.value.details() or "")


async def poll_async(
    fetch: Callable[[], object], done: Callable[[object], bool], timeout: float
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()  # type: ignore[misc]
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(0.05)


GO_TEST_DIR = Path(__file__).resolve().parent.parent / "client_stub" / "go" / "etcdinterop"


async def test_go_client_round_robins_through_etcds_resolver(etcd: EtcdServer) -> None:
    """client_stub/go/etcdinterop: a Go client dials etcd:///mw/gemma-3-270m with etcd's resolver
    and round_robin, sees both workers' instance ids, and SIGTERMs one: no call fails, calls leave
    it."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is not installed: `make test` needs it (the Go stubs and clients; README, 'Test')"
        )
    ports = [free_port() for _ in range(2)]
    processes = await asyncio.gather(
        *(
            start_cli("serve", "--port", str(port), "--registry", url(etcd), stderr=DEVNULL)
            for port in ports
        )
    )
    try:
        for process, port in zip(processes, ports, strict=True):
            line = await first_line(process, 120)
            assert line.startswith(f"modelwire serving gemma-3-270m on 127.0.0.1:{port}"), line
        await poll(lambda: len(keys_under(etcd, "mw/gemma-3-270m/")) == 2, 10)
        env = {
            **os.environ,
            "MODELWIRE_ETCD_ENDPOINTS": etcd.endpoint,
            "MODELWIRE_ETCD_TARGET": "mw/gemma-3-270m",
            "MODELWIRE_WORKERS": ",".join(
                f"{p.pid}@127.0.0.1:{port}" for p, port in zip(processes, ports, strict=True)
            ),
            "MODELWIRE_MODEL": "gemma-3-270m",
        }
        go = await asyncio.create_subprocess_exec(
            go,
            "test",
            "-count=1",
            "-v",
            "-run",
            "TestEtcdResolver",
            "./...",
            cwd=GO_TEST_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(go.communicate(), 300)
        text = output.decode(errors="replace")
        print(text)
        assert go.returncode == 0, text
        assert "--- PASS: TestEtcdResolverRoundRobinsAndLeavesADrainingWorker" in text, text
        assert await asyncio.wait_for(processes[0].wait(), 30) == 0, (
            "the SIGTERMed worker did not drain cleanly"
        )
        assert [k.rsplit("/", 1)[0] for k in keys_under(etcd, "mw/")] == ["mw/gemma-3-270m"], (
            "the drained worker's key stayed"
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def test_a_worker_and_a_gateway_use_etcd_over_tls_with_etcd_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd as the multi-machine recipe runs it: TLS to its clients, its own authentication on.
    A worker registers with the password, a gateway routes from it; without the password the
    registration is refused and nothing is written."""
    certs = tmp_path / "certs"
    subprocess.run(
        [str(Path(__file__).resolve().parent.parent / "scripts" / "make_certs.sh"), str(certs)],
        check=True,
        capture_output=True,
    )
    server = EtcdServer(certs)
    server.start()
    try:
        server.enable_auth("etcd-root-password")
        monkeypatch.setenv("ETCD_PASSWORD", "etcd-root-password")
        tls = ClientTlsConfig(ca_file=certs / "ca.pem")
        access = RegistryAccess(
            etcd=url(server), etcd_username="root", etcd_password_env="ETCD_PASSWORD", tls=tls
        )
        config = replace(blocking_config(blocking_model("slow", tokens=2)), registry=access)
        worker = await build_worker(config)
        worker.registration = worker_agent(
            access, RegistrationConfig(), worker.targets, "127.0.0.1", worker.port
        )
        await worker.start()
        try:
            await asyncio.wait_for(worker.registration.registered.wait(), 10)
            gateway = Gateway(
                EtcdRegistry.from_url(url(server), access=access),
                ServerConfig(port=0, grace_period_s=0),
            )
            await gateway.start()
            try:
                await asyncio.wait_for(gateway.router.synced.wait(), 10)
                async with ModelWorkerClient(gateway.address, timeout=10) as client:
                    assert (await client.generate("slow", "hi")).text == "w0 w1 "
            finally:
                await gateway.stop()
            intruder = EtcdRegistry.from_url(
                url(server), access=replace(access, etcd_username=None, etcd_password_env=None)
            )
            # etcd refuses a call without a user once its auth is on.
            with pytest.raises(aetcd.exceptions.InvalidArgumentError, match="user name is empty"):
                await intruder.register(
                    InstanceSpec("intruder", "10.0.0.9:1", (InstanceModel("slow"),))
                )
            await intruder.close()
        finally:
            await worker.drain()
    finally:
        server.close()
