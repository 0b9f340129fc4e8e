"""Routing that survives hangs and never mis-answers: a frozen worker is left within keepalive
time, a gateway without its table says UNAVAILABLE (not NOT_FOUND), a call a worker started is
never replayed elsewhere, one its admission refused is, load reports age, labels stay bounded,
and a draining server keeps serving for `drain_delay_s` after it says NOT_SERVING."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli_process import DEVNULL, first_line, start_cli
from conftest import admission_reaches, free_port, running_worker
from fake_upstream import Exchange, Responder, fake_upstream, load_toml_config
from fleet import (
    Joining,
    blocking_config,
    blocking_model,
    registered,
    registered_worker,
    running_controller,
    wait_until,
)
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.client.errors import from_rpc_error
from modelwire.core.settings import GatewaySection, ServerConfig
from modelwire.fleet.remote import RemoteController
from modelwire.fleet.types import Instance, InstanceModel, InstanceSpec
from modelwire.gateway.router import Route
from modelwire.gateway.server import Gateway, not_started
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc


async def test_a_gateway_without_its_registry_is_not_serving_and_says_unavailable() -> None:
    gateway = Gateway(
        RemoteController(f"127.0.0.1:{free_port()}"), ServerConfig(port=0, grace_period_s=0)
    )
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await pb_grpc.ModelWorkerStub(channel).Generate(
                    pb.ModelRequest(
                        model="m", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
                    ),
                    timeout=5,
                )
        error = from_rpc_error(raised.value)
        assert error.code == grpc.StatusCode.UNAVAILABLE, "NOT_FOUND would be permanent to SDKs"
        assert error.retry_after_s is not None and error.retry_after_s > 0
        assert "no instance table" in error.message
    finally:
        await gateway.stop()


async def test_a_model_whose_only_worker_restarts_is_unavailable_not_unknown(
    blocking_provider: None,
) -> None:
    async with running_controller() as controller, AsyncExitStack() as stack:
        worker = await stack.enter_async_context(
            registered_worker(
                blocking_config(blocking_model("slow", tokens=1)),
                Joining(controller=controller.address),
            )
        )
        await registered(worker)
        settling = Gateway(
            RemoteController(controller.address), ServerConfig(port=0, grace_period_s=0)
        )
        gateway = Gateway(
            RemoteController(controller.address),
            ServerConfig(port=0, grace_period_s=0),
            GatewaySection(settle_s=0),
        )
        for started in (settling, gateway):
            await started.start()
            stack.push_async_callback(started.stop)
            await wait_until(
                started.router.changed, lambda started=started: len(started.router.routes) == 1, 10
            )
        await worker.drain()  # gone from the registry
        await wait_until(gateway.router.changed, lambda: not gateway.router.routes, 10)
        async with ModelWorkerClient(gateway.address, timeout=5) as client:
            for model, code in (
                ("slow", grpc.StatusCode.UNAVAILABLE),
                ("never-served", grpc.StatusCode.NOT_FOUND),
            ):
                with pytest.raises(ModelwireCallError) as raised:
                    await client.generate(model, "hi")
                assert raised.value.code == code, (model, raised.value)
        # Right after its snapshot (a start, a registry restart) workers may still be registering:
        # a model nobody serves is UNAVAILABLE for settle_s, not yet NOT_FOUND.
        async with ModelWorkerClient(settling.address, timeout=5) as client:
            with pytest.raises(ModelwireCallError) as raised:
                await client.generate("never-served", "hi")
            assert (
                raised.value.code == grpc.StatusCode.UNAVAILABLE
                and "may still be registering" in raised.value.message
            )


def flaky_upstream_config(tmp_path: Path, url: str, name: str) -> object:
    return load_toml_config(
        tmp_path / name,
        f"""
[server]
grace_period_s = 0
[[models]]
name = "m"
provider = "openai"
api_base = "{url}/v1"
context_length = 8192
max_retries = 0
max_concurrency = 1
max_queue = 0
""",
    )


async def test_a_call_a_worker_started_is_never_replayed_but_an_admission_refusal_is(
    tmp_path: Path,
) -> None:
    """The upstream answers 503: the worker reports UNAVAILABLE after calling it, so the gateway
    must not call it again through another worker (it may have billed). A worker whose admission
    is full refuses before any work, and says so: that call moves to the other worker."""
    async with (
        fake_upstream() as upstream,
        running_controller() as controller,
        AsyncExitStack() as stack,
    ):
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        workers = []
        for name in ("a", "b"):
            config = flaky_upstream_config(tmp_path, upstream.url, name)
            workers.append(
                await stack.enter_async_context(
                    registered_worker(config, Joining(controller=controller.address))
                )
            )  # type: ignore[arg-type]
        for worker in workers:
            await registered(worker)
        gateway = Gateway(
            RemoteController(controller.address), ServerConfig(port=0, grace_period_s=0)
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 2, 10)

        async def down(exchange: Exchange, respond: Responder) -> None:
            await respond.json(503, {"error": {"message": "upstream down", "type": "server_error"}})

        upstream.default = down
        async with ModelWorkerClient(gateway.address, timeout=10) as client:
            with pytest.raises(ModelwireCallError) as raised:
                await client.generate("m", "hi")
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        assert len(upstream.exchanges) == 1, (
            "the gateway replayed a call the worker had already sent upstream"
        )

        # Admission: one worker's only slot is taken by a call straight to it; through the gateway,
        # a call that lands there is refused NOT_STARTED and moves to the other worker.
        upstream.reset_records()
        release = asyncio.Event()

        async def slow(exchange: Exchange, respond: Responder) -> None:
            await release.wait()
            await respond.json(
                200, {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}
            )

        upstream.default = slow
        busy = workers[0]
        direct = asyncio.create_task(_generate(busy.address))
        await admission_reaches(busy.models[0].admission, in_flight=1, queued=0)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _generate(busy.address)
        assert not_started(refused.value), "admission's refusal must say it did not start"
        async with ModelWorkerClient(gateway.address, timeout=10) as client:
            calls = [asyncio.create_task(client.generate("m", "hi")) for _ in range(4)]
            await upstream.wait_for_requests(2)
            release.set()
            outputs = await asyncio.gather(*calls, return_exceptions=True)
        await direct
        served = [o for o in outputs if not isinstance(o, BaseException)]
        assert served, outputs
        assert all(
            isinstance(o, ModelwireCallError) and o.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            for o in outputs
            if isinstance(o, BaseException)
        ), outputs


async def _generate(address: str) -> pb.ModelOutput:
    async with grpc.aio.insecure_channel(address) as channel:
        output: pb.ModelOutput = await pb_grpc.ModelWorkerStub(channel).Generate(
            pb.ModelRequest(model="m", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]),
            timeout=10,
        )
        return output


def test_reported_load_ages_so_a_quiet_instance_is_tried_again() -> None:
    route = Route(
        Instance(InstanceSpec("i", "h:1", (InstanceModel("m"),))),
        channel=None,  # type: ignore[arg-type]
    )
    route.reported("m", 6.0)
    now = route.others["m"][1]
    assert route.others_load("m", now) == 6.0
    assert route.others_load("m", now + 5.0) == pytest.approx(3.0)
    assert route.others_load("m", now + 60.0) < 0.01


async def test_random_model_names_leave_the_label_set_bounded(blocking_provider: None) -> None:
    async with running_worker(blocking_config(blocking_model("slow", tokens=1))) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            for _ in range(1000):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.CountToken(
                        pb.CountTokenRequest(model=uuid.uuid4().hex, prompt="hi"), timeout=5
                    )
        labels = {
            sample.labels.get("model")
            for metric in worker.metrics.registry.collect()
            for sample in metric.samples
            if "model" in sample.labels
        }
    assert labels <= {"slow", "_unknown"}, sorted(labels)[:5]


async def test_a_draining_worker_serves_during_its_drain_delay(blocking_provider: None) -> None:
    config = blocking_config(blocking_model("slow", tokens=1))
    config = replace(config, server=replace(config.server, drain_delay_s=5.0, grace_period_s=0))
    async with running_worker(config) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            draining = asyncio.create_task(worker.drain())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            output = await pb_grpc.ModelWorkerStub(channel).Generate(
                pb.ModelRequest(
                    model="slow", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
                ),
                timeout=5,
            )
            assert output.text == "w0 ", "a call arriving within the drain delay is still served"
            watch.cancel()
        await draining
        await worker.drain()  # the fixture drains again on exit: a second drain must be harmless


ECHO_WORKER = """
[server]
port = {port}
grace_period_s = 0
[[models]]
name = "echo"
provider = "echo"
chunks = 1
"""


async def test_a_frozen_worker_is_left_within_keepalive_time(tmp_path: Path) -> None:
    """SIGSTOP: the host keeps the TCP connection open and answers nothing. Client keepalive (1 s
    + 1 s here) closes the gateway's connection to it; calls meanwhile are moved to the other
    worker, since none of them reached a worker. Nothing waits for the frozen one's lease."""
    async with running_controller(ttl_s=60) as controller, AsyncExitStack() as stack:
        processes = []
        for index in range(2):
            port = free_port()
            path = tmp_path / f"echo-{index}.toml"
            path.write_text(ECHO_WORKER.format(port=port))
            process = await start_cli(
                "serve", "--config", str(path), "--controller", controller.address, stderr=DEVNULL
            )
            stack.push_async_callback(_kill, process)
            assert (await first_line(process, 60)).startswith("modelwire serving")
            processes.append((process, f"127.0.0.1:{port}"))
        settings = GatewaySection(
            keepalive_time_s=1.0, keepalive_timeout_s=1.0, connect_timeout_s=1.0
        )
        gateway = Gateway(
            RemoteController(controller.address), ServerConfig(port=0, grace_period_s=0), settings
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        await wait_until(
            gateway.router.changed,
            lambda: sum(r.probe is True for r in gateway.router.routes.values()) == 2,
            20,
        )

        frozen, frozen_address = processes[0]
        route = next(
            r for r in gateway.router.routes.values() if r.instance.address == frozen_address
        )
        frozen.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            async with ModelWorkerClient(gateway.address, timeout=10) as client:
                outputs = await asyncio.gather(*(client.generate("echo", "hi") for _ in range(10)))
            await wait_until(gateway.router.changed, lambda: route.probe is False, 10)
            left_after = time.monotonic() - stopped_at
            async with ModelWorkerClient(gateway.address, timeout=10) as client:
                after = [await client.generate("echo", "hi") for _ in range(10)]
        finally:
            frozen.send_signal(signal.SIGCONT)
        print(f"the frozen worker was left {left_after:.2f}s after SIGSTOP (keepalive 1 s + 1 s)")
        assert all(o.text for o in outputs + after)
        assert all(o.model == "echo" for o in after)


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
        await process.wait()
