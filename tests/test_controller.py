"""The embedded controller over real sockets: register, heartbeat, expiry, deregister, watch, the
worker's registration agent (including a controller restart), and the `modelwire controller`
command."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_status import rpc_status

from cli_process import DEVNULL, first_line, start_cli
from conftest import free_port
from fleet import (
    TTL_S,
    Joining,
    Watcher,
    agent_for,
    agent_of,
    blocking_config,
    blocking_model,
    has_event,
    registered,
    registered_worker,
    running_controller,
)
from modelwire.app.server import build_worker
from modelwire.client import ModelWorkerClient
from modelwire.controller.server import ControllerServer
from modelwire.fleet import convert
from modelwire.fleet.remote import RemoteController
from modelwire.fleet.types import InstanceModel, InstanceSpec, ModelLoad
from modelwire.v1 import controller_pb2 as cpb
from modelwire.v1 import controller_pb2_grpc as cpb_grpc

pytestmark = pytest.mark.usefixtures("blocking_provider")


@pytest.fixture
async def controller() -> AsyncIterator[ControllerServer]:
    """No active health probe here: these tests register addresses where nothing listens."""
    async with running_controller(probe_health=False) as server:
        yield server


@pytest.fixture
async def probing_controller() -> AsyncIterator[ControllerServer]:
    async with running_controller(probe_health=True) as server:
        yield server


@pytest.fixture
async def stub(controller: ControllerServer) -> AsyncIterator[cpb_grpc.ModelControllerStub]:
    async with grpc.aio.insecure_channel(controller.address) as channel:
        yield cpb_grpc.ModelControllerStub(channel)


def register_request(
    instance_id: str = "", model: str = "llama", address: str = "127.0.0.1:1"
) -> cpb.RegisterInstanceRequest:
    return cpb.RegisterInstanceRequest(
        instance_id=instance_id,
        address=address,
        models=[cpb.InstanceModel(model=model, capacity=4)],
        weight=2,
        labels={"zone": "a"},
    )


async def test_register_heartbeat_list_deregister(stub: cpb_grpc.ModelControllerStub) -> None:
    lease = await stub.RegisterInstance(register_request())
    assert lease.instance_id
    assert convert.seconds(lease.lease_ttl) == TTL_S
    assert 0 < convert.seconds(lease.heartbeat_interval) < TTL_S

    beat = await stub.Heartbeat(
        cpb.HeartbeatRequest(
            instance_id=lease.instance_id,
            load=[cpb.ModelLoad(model="llama", in_flight=3, queued=1)],
        )
    )
    assert beat.status == cpb.HEARTBEAT_STATUS_OK

    listed = (
        await stub.ListInstances(cpb.ListInstancesRequest(model="llama", healthy_only=True))
    ).instances
    assert [i.instance_id for i in listed] == [lease.instance_id]
    instance = listed[0]
    assert (instance.address, instance.weight, dict(instance.labels)) == (
        "127.0.0.1:1",
        2,
        {"zone": "a"},
    )
    assert [(m.model, m.capacity) for m in instance.models] == [("llama", 4)]
    assert [(load.model, load.in_flight, load.queued) for load in instance.load] == [
        ("llama", 3, 1)
    ]
    assert instance.HasField("last_heartbeat_time")
    assert not (await stub.ListInstances(cpb.ListInstancesRequest(model="other"))).instances

    assert (
        await stub.DeregisterInstance(cpb.DeregisterInstanceRequest(instance_id=lease.instance_id))
    ).removed
    assert not (
        await stub.DeregisterInstance(cpb.DeregisterInstanceRequest(instance_id=lease.instance_id))
    ).removed
    assert not (await stub.ListInstances(cpb.ListInstancesRequest())).instances
    beat = await stub.Heartbeat(cpb.HeartbeatRequest(instance_id=lease.instance_id))
    assert beat.status == cpb.HEARTBEAT_STATUS_UNKNOWN_INSTANCE


async def test_a_worker_may_serve_many_models(stub: cpb_grpc.ModelControllerStub) -> None:
    request = register_request(instance_id="multi")
    request.models.append(cpb.InstanceModel(model="llama-70b", capacity=1))
    await stub.RegisterInstance(request)

    for model in ("llama", "llama-70b"):
        listed = (await stub.ListInstances(cpb.ListInstancesRequest(model=model))).instances
        assert [i.instance_id for i in listed] == ["multi"]


async def test_registration_is_validated_with_field_violations(
    stub: cpb_grpc.ModelControllerStub,
) -> None:
    bad = cpb.RegisterInstanceRequest(instance_id="a/b", address="nohostport")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RegisterInstance(bad)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(raised.value)
    assert status is not None
    from google.rpc import error_details_pb2

    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert {v.field for v in detail.field_violations} == {"instance_id", "address", "models"}


async def test_lapsed_lease_removes_the_instance_and_tells_watchers(
    controller: ControllerServer, stub: cpb_grpc.ModelControllerStub
) -> None:
    watcher = Watcher(controller.address, model="llama")
    try:
        await watcher.wait_for(lambda b: b.snapshot and not b.events, timeout=5)
        registered_at = time.monotonic()
        lease = await stub.RegisterInstance(register_request())
        await watcher.wait_for(has_event("added", lease.instance_id), timeout=5)

        removed_at = await watcher.wait_for(
            has_event("removed", lease.instance_id), timeout=3 * TTL_S
        )
    finally:
        await watcher.close()

    lapse = removed_at - registered_at
    assert TTL_S <= lapse <= TTL_S + 1.0, (
        f"removed {lapse:.2f}s after the last heartbeat, TTL {TTL_S}s"
    )
    assert not (await stub.ListInstances(cpb.ListInstancesRequest())).instances
    beat = await stub.Heartbeat(cpb.HeartbeatRequest(instance_id=lease.instance_id))
    assert beat.status == cpb.HEARTBEAT_STATUS_UNKNOWN_INSTANCE


async def test_watch_sends_a_snapshot_then_deltas_for_its_model_only(
    controller: ControllerServer, stub: cpb_grpc.ModelControllerStub
) -> None:
    first = await stub.RegisterInstance(register_request(instance_id="one", model="llama"))
    watcher = Watcher(controller.address, model="llama")
    try:
        await watcher.wait_for(
            lambda b: b.snapshot and [e.instance.instance_id for e in b.events] == ["one"], 5
        )
        await stub.RegisterInstance(register_request(instance_id="big", model="llama-70b"))
        await stub.RegisterInstance(register_request(instance_id="two", model="llama"))
        await watcher.wait_for(has_event("added", "two"), 5)
        await stub.Heartbeat(
            cpb.HeartbeatRequest(
                instance_id="two", load=[cpb.ModelLoad(model="llama", in_flight=2)]
            )
        )
        await watcher.wait_for(
            lambda b: any(
                e.type.value == "updated" and e.instance.load_of("llama").in_flight == 2
                for e in b.events
            ),
            5,
        )
        await stub.DeregisterInstance(cpb.DeregisterInstanceRequest(instance_id=first.instance_id))
        await watcher.wait_for(has_event("removed", "one"), 5)
    finally:
        await watcher.close()

    seen = {e.instance.instance_id for _, batch in watcher.batches for e in batch.events}
    assert seen == {"one", "two"}, "llama-70b leaked into the watch of llama"


async def test_active_health_probe_marks_an_unreachable_instance_unhealthy(
    probing_controller: ControllerServer,
) -> None:
    """Health is not known only from heartbeats: nothing listens at this address, heartbeats are on
    time."""
    channel = grpc.aio.insecure_channel(probing_controller.address)
    stub = cpb_grpc.ModelControllerStub(channel)
    lease = await stub.RegisterInstance(register_request(address=f"127.0.0.1:{free_port()}"))
    deadline = time.monotonic() + 5
    while (await stub.ListInstances(cpb.ListInstancesRequest(healthy_only=True))).instances:
        assert time.monotonic() < deadline, "the unreachable instance stayed healthy"
        await stub.Heartbeat(cpb.HeartbeatRequest(instance_id=lease.instance_id))
        await asyncio.sleep(0.05)

    everything = (await stub.ListInstances(cpb.ListInstancesRequest())).instances
    await channel.close()
    assert [(i.instance_id, i.healthy) for i in everything] == [(lease.instance_id, False)]


async def test_worker_registers_reports_live_load_and_deregisters_before_its_port_closes(
    probing_controller: ControllerServer,
) -> None:
    controller = probing_controller
    settings = Joining(controller=controller.address, labels={"zone": "test"})
    config = blocking_config(blocking_model("slow", tokens=40, token_delay_s=0.05))
    watcher = Watcher(controller.address)
    remote = RemoteController(controller.address)
    worker = await build_worker(config)
    worker.registration = agent_for(worker, settings)
    await worker.start()
    try:
        instance_id = await registered(worker)
        await watcher.wait_for(has_event("added", instance_id), 5)
        listed = await remote.list("slow", healthy_only=True)
        assert [(i.instance_id, i.address, dict(i.labels)) for i in listed] == [
            (instance_id, worker.address, {"zone": "test"})
        ]
        assert [(m.model, m.capacity) for m in listed[0].models] == [("slow", 8)]

        async with ModelWorkerClient(worker.address, timeout=30) as client:
            stream = client.stream("slow", "hi")
            await anext(stream)
            await watcher.wait_for(
                lambda b: any(
                    e.instance.instance_id == instance_id
                    and e.instance.load_of("slow") == ModelLoad(1, 0)
                    for e in b.events
                ),
                5,
            )

            drain = asyncio.create_task(worker.drain())
            removed_at = await watcher.wait_for(has_event("removed", instance_id), 5)
            rest = [chunk async for chunk in stream]
            finished_at = time.monotonic()
            await drain
        assert rest[-1].usage.completion_tokens == 40, "the stream in flight was cut"
        assert removed_at < finished_at, "deregistered only after the port closed"
        assert not await remote.list()
    finally:
        await watcher.close()
        await remote.close()


async def test_agent_reregisters_after_a_controller_restart_and_serves_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="modelwire.worker.agent")
    port = free_port()
    config = blocking_config(blocking_model("slow", tokens=2))
    async with running_controller(port=port) as first:
        settings = Joining(controller=first.address)
        async with registered_worker(config, settings) as worker:
            instance_id = await registered(worker)
            agent = agent_of(worker)
            assert agent.registrations == 1

            await first.stop()
            agent.registered.clear()
            # The controller is gone: the worker keeps serving.
            async with ModelWorkerClient(worker.address, timeout=10) as client:
                assert (await client.generate("slow", "hi")).text == "w0 w1 "
            deadline = time.monotonic() + 10
            while not any("unreachable" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "no log line says the controller is unreachable"
                await asyncio.sleep(0.05)

            async with running_controller(port=port) as second:
                started = time.monotonic()
                await asyncio.wait_for(agent.registered.wait(), 10)
                took = time.monotonic() - started
                listed = await RemoteController(second.address).list("slow")
                assert [i.instance_id for i in listed] == [instance_id], (
                    "the id changed across the restart"
                )
                assert agent.registrations == 2
                assert took < TTL_S + 5.0
                assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_controller_command_with_a_registering_worker_process() -> None:
    """`modelwire controller --port N` and `modelwire serve --controller` as real processes
    (gemma)."""
    port = free_port()
    controller = await start_cli("controller", "--port", str(port), "--ttl", "3", stderr=DEVNULL)
    worker = None
    try:
        line = await first_line(controller, 30)
        assert line.startswith(f"modelwire controller on 127.0.0.1:{port}"), line
        address = f"127.0.0.1:{port}"
        watcher = Watcher(address)
        worker_port = free_port()
        worker = await start_cli(
            "serve", "--port", str(worker_port), "--controller", address, stderr=DEVNULL
        )
        try:
            added = await watcher.wait_for(
                lambda b: any(
                    e.type.value == "added" and e.instance.address == f"127.0.0.1:{worker_port}"
                    for e in b.events
                ),
                120,
            )
            instance = next(
                e.instance for _, b in watcher.batches for e in b.events if e.type.value == "added"
            )
            assert instance.spec.model_names == ("gemma-3-270m",)
            worker.send_signal(signal.SIGTERM)
            removed = await watcher.wait_for(has_event("removed", instance.instance_id), 30)
            assert removed > added
            assert await asyncio.wait_for(worker.wait(), 30) == 0
        finally:
            await watcher.close()
        controller.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(controller.wait(), 10) == 0
    finally:
        for process in (worker, controller):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()


def test_registration_id_rules() -> None:
    from modelwire.core.errors import InvalidRequest
    from modelwire.fleet.registry import check_spec

    spec = check_spec(InstanceSpec("", "h:1", (InstanceModel("m"),), weight=0))
    assert spec.instance_id and spec.weight == 1
    with pytest.raises(InvalidRequest):
        check_spec(InstanceSpec("x", "h:1", (InstanceModel("a/b"),)))
