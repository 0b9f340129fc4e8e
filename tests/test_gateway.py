"""The gateway over real sockets: balance, shifting away from load, retry before the first chunk,
deadline/cancellation/metadata propagation, error details, and a kill -9 under load (gemma
workers)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from blocking_provider import BlockingTestClient
from cli_process import DEVNULL, first_line, start_cli
from conftest import free_port, running_worker
from fleet import (
    Joining,
    Watcher,
    blocking_config,
    blocking_model,
    has_event,
    registered,
    registered_worker,
    running_controller,
    running_gateway,
    serving,
    wait_until,
)
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.client.requests import build_request
from modelwire.controller.server import ControllerServer
from modelwire.core.errors import InvalidRequest
from modelwire.fleet.types import InstanceModel, InstanceSpec
from modelwire.gateway.server import Gateway, model_field, not_started
from modelwire.rpc.wire import INSTANCE_TRAILER
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

TTL_S = 2.0


def client_of(worker: Worker) -> BlockingTestClient:
    client = worker.models[0].client
    assert isinstance(client, BlockingTestClient)
    return client


@pytest.fixture
async def fleet(
    blocking_provider: None,
) -> AsyncIterator[tuple[ControllerServer, list[Worker], Gateway]]:
    """A controller, two registered workers serving `slow` (blocking provider), a gateway."""
    model = blocking_model("slow", max_concurrency=8, tokens=1000, token_delay_s=0.005)
    config = blocking_config(model)
    config = replace(config, server=replace(config.server, blocking_threads=16))
    async with AsyncExitStack() as stack:
        controller = await stack.enter_async_context(running_controller(TTL_S))
        settings = Joining(controller=controller.address)
        workers = [
            await stack.enter_async_context(registered_worker(config, settings)) for _ in range(2)
        ]
        for worker in workers:
            await registered(worker)
        gateway = await stack.enter_async_context(running_gateway(controller.address))
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 2, 5)
        yield controller, workers, gateway


async def test_two_workers_share_200_calls_within_60_40(
    fleet: tuple[ControllerServer, list[Worker], Gateway],
) -> None:
    _, workers, gateway = fleet
    served_by: dict[str, int] = {}
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        request = build_request("slow", "hi", max_new_tokens=2)
        gate = asyncio.Semaphore(8)

        async def one() -> None:
            async with gate:
                call = stub.Generate(request, timeout=10)
                output = await call
                assert output.text == "w0 w1 "
                instance = dict(await call.trailing_metadata())[INSTANCE_TRAILER]
                served_by[instance] = served_by.get(instance, 0) + 1

        await asyncio.gather(*(one() for _ in range(200)))
        models = await stub.ListModels(pb.ListModelsRequest(), timeout=5)

    counts = [client_of(w).started for w in workers]
    print(f"200 calls split {counts}")
    assert sum(counts) == 200
    assert min(counts) >= 80, f"split {counts} is worse than 60/40"
    assert sorted(served_by.values()) == sorted(counts), (
        "trailer instance ids disagree with the workers' counts"
    )
    assert [m.model for m in models.models] == ["slow"]


async def test_calls_shift_away_from_an_artificially_loaded_worker(
    fleet: tuple[ControllerServer, list[Worker], Gateway],
) -> None:
    _, (busy, idle), gateway = fleet
    busy_id = busy.registration.instance_id if busy.registration else ""
    route = gateway.router.routes[busy_id]
    async with (
        ModelWorkerClient(busy.address, timeout=30) as direct,
        ModelWorkerClient(gateway.address, timeout=10) as via,
    ):
        # Six long streams straight to one worker, behind the gateway's back: only its heartbeats
        # tell.
        streams = [direct.stream("slow", "load") for _ in range(6)]
        for stream in streams:
            await anext(stream)
        await wait_until(
            gateway.router.changed, lambda: route.others_load("slow", time.monotonic()) >= 5.9, 5
        )

        before = [client_of(w).started for w in (busy, idle)]
        gate = asyncio.Semaphore(4)

        async def one() -> None:
            async with gate:
                await via.generate("slow", "hi", max_new_tokens=2)

        await asyncio.gather(*(one() for _ in range(100)))
        to_busy, to_idle = (
            client_of(w).started - b for w, b in zip((busy, idle), before, strict=True)
        )
        print(f"with 6 streams on one worker: {to_busy} calls to it, {to_idle} to the other")
        assert to_idle >= 95, f"{to_busy} of 100 calls went to the loaded worker"

        for stream in streams:
            await stream.aclose()
        await wait_until(
            gateway.router.changed, lambda: route.others_load("slow", time.monotonic()) == 0, 5
        )
        before = [client_of(w).started for w in (busy, idle)]
        await asyncio.gather(*(one() for _ in range(40)))
        to_busy = client_of(busy).started - before[0]
        print(f"after the load ended: {to_busy} of 40 calls to the formerly loaded worker")
        assert to_busy >= 12, f"only {to_busy} of 40 calls went back to the unloaded worker"


async def test_deadline_cancellation_and_error_details_cross_the_gateway(
    fleet: tuple[ControllerServer, list[Worker], Gateway],
) -> None:
    _, workers, gateway = fleet
    clients = [client_of(w) for w in workers]
    async with ModelWorkerClient(gateway.address, timeout=10) as via:
        # Deadline: the worker stops generating when the caller's deadline passes.
        with pytest.raises(ModelwireCallError) as raised:
            async for _ in via.stream("slow", "hi", timeout=0.3):
                pass
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(await asyncio.gather(*(asyncio.to_thread(c.wait_idle, 2.0) for c in clients)))
        produced = sum(c.produced for c in clients)
        assert produced < 1000, "the upstream generation ran to its end"

        # Cancellation: leaving the stream early stops the worker.
        stream = via.stream("slow", "hi")
        await anext(stream)
        await stream.aclose()
        assert all(await asyncio.gather(*(asyncio.to_thread(c.wait_idle, 2.0) for c in clients)))

        # The worker's rich error details reach the caller unchanged.
        with pytest.raises(ModelwireCallError) as raised:
            await via.generate("slow", "hi", temperature=5.0)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "sampling.temperature" in raised.value.field_violations

        with pytest.raises(ModelwireCallError) as raised:
            await via.generate("nope", "hi")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        assert "slow" in raised.value.message

        count = await via.count_tokens("slow", "one two three")
        assert count.count > 0


async def test_a_unary_call_s_deadline_crosses_the_gateway(
    fleet: tuple[ControllerServer, list[Worker], Gateway],
) -> None:
    """The caller's deadline ends a unary call at the gateway and the worker's generation behind
    it: gRPC ends the gateway's handler at the deadline, and the worker's call carries what was
    left of it."""
    _, workers, gateway = fleet
    clients = [client_of(w) for w in workers]
    produced = sum(c.produced for c in clients)
    async with ModelWorkerClient(gateway.address, timeout=10) as via:
        with pytest.raises(ModelwireCallError) as raised:
            await via.generate("slow", "hi", timeout=0.3)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(await asyncio.gather(*(asyncio.to_thread(c.wait_idle, 2.0) for c in clients)))
        assert sum(c.produced for c in clients) - produced < 1000, "the generation ran to its end"


class FakeWorker(pb_grpc.ModelWorkerServicer):  # type: ignore[misc]
    """A scripted upstream: records what arrived; `mode` says how it answers."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self.time_remaining: list[float | None] = []
        self.cancelled = asyncio.Event()

    async def GenerateStream(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelOutput]:
        self.calls += 1
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        self.time_remaining.append(context.time_remaining())
        if self.mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: down")
        if self.mode == "started-then-unavailable":
            await context.send_initial_metadata(
                (("modelwire-pid", "1"),)
            )  # as a worker does when work begins
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: lost after starting")
        yield pb.ModelOutput(text="a")
        if self.mode == "one-then-unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: died mid-stream")
        try:
            for _ in range(1000 if self.mode == "slow" else 2):
                await asyncio.sleep(0.02 if self.mode == "slow" else 0)
                yield pb.ModelOutput(text="b")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield pb.ModelOutput(finish_reason=pb.FINISH_REASON_STOP)


@asynccontextmanager
async def fake_fleet(
    *modes: str, probe_health: bool = True
) -> AsyncIterator[tuple[list[FakeWorker], Gateway]]:
    """Fake upstreams registered straight into a controller's registry (no health service:
    unknown)."""
    async with AsyncExitStack() as stack:
        controller = await stack.enter_async_context(
            running_controller(ttl_s=60, probe_health=False)
        )
        fakes = []
        for index, mode in enumerate(modes):
            fake = FakeWorker(mode)
            if mode == "refused":
                port = free_port()  # nothing listens there: every connection is refused
            else:
                server = grpc.aio.server()
                pb_grpc.add_ModelWorkerServicer_to_server(fake, server)
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                stack.push_async_callback(server.stop, 0)
            await controller.registry.register(
                InstanceSpec(f"fake-{index}", f"127.0.0.1:{port}", (InstanceModel("m"),))
            )
            fakes.append(fake)
        gateway = await stack.enter_async_context(running_gateway(controller.address, probe_health))
        await wait_until(
            gateway.router.changed, lambda: len(gateway.router.routes) == len(modes), 5
        )
        yield fakes, gateway


async def collect(stub: pb_grpc.ModelWorkerStub, **kwargs: object) -> str:
    return "".join(
        [chunk.text async for chunk in stub.GenerateStream(build_request("m", "hi"), **kwargs)]
    )


async def test_a_refused_connection_is_retried_on_another_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without health probes (which would mark it down first), the refused instance gets its
    turn."""
    with caplog.at_level(logging.INFO, logger="modelwire.gateway"):
        async with fake_fleet("refused", "ok", probe_health=False) as ((_, up), gateway):
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = pb_grpc.ModelWorkerStub(channel)
                texts = [await collect(stub, timeout=5) for _ in range(10)]

    assert texts == ["abb"] * 10
    assert up.calls == 10
    assert "instance fake-0 did not take the call" in caplog.text, (
        "the refused instance was never tried"
    )


def test_only_a_call_no_worker_began_counts_as_not_started() -> None:
    def error(
        details: str,
        trailers: tuple[tuple[str, str | bytes], ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
    ) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(*headers),
            grpc.aio.Metadata(*trailers),
            details,
        )

    refused = status_pb2.Status(code=8, message="full")
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(domain="modelwire", reason="NOT_STARTED"))
    refused.details.append(info)
    pid = ("modelwire-pid", "123")
    assert not_started(
        error("failed to connect to all addresses; last error: UNKNOWN: Connection refused")
    )
    assert not_started(error("Socket closed"))  # lost while queued: no headers yet
    assert not not_started(error("Socket closed", headers=(pid,)))  # lost after the work began
    assert not not_started(error("draining", (pid,)))
    assert not_started(
        error("full", (pid, ("grpc-status-details-bin", refused.SerializeToString())))
    )
    assert not not_started(error("full", (pid, ("grpc-status-details-bin", b"\xff\xff garbage"))))


async def test_unavailable_before_the_first_chunk_is_retried_on_another_instance() -> None:
    async with fake_fleet("unavailable", "ok") as ((down, up), gateway):
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            texts = [await collect(stub, timeout=5) for _ in range(10)]

    assert texts == ["abb"] * 10
    assert down.calls >= 3, "the unavailable instance was never tried, so nothing was retried"
    assert up.calls == 10


async def test_a_call_lost_after_the_worker_began_it_is_not_replayed() -> None:
    """The worker's headers came (its work had begun), then UNAVAILABLE without its trailer, as
    when it is killed mid-call: the upstream may have been called, so no other instance repeats
    it."""
    async with fake_fleet("started-then-unavailable", "started-then-unavailable") as (
        fakes,
        gateway,
    ):
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await collect(pb_grpc.ModelWorkerStub(channel), timeout=5)

    assert (
        raised.value.code() == grpc.StatusCode.UNAVAILABLE
        and raised.value.details() == "scripted: lost after starting"
    )
    assert sum(f.calls for f in fakes) == 1


async def test_a_call_routed_back_to_the_gateway_stops_at_once() -> None:
    """An instance registered at the gateway's own address: one hop, then FAILED_PRECONDITION."""
    async with (
        running_controller(ttl_s=60, probe_health=False) as controller,
        running_gateway(controller.address) as gateway,
    ):
        await controller.registry.register(
            InstanceSpec("loop", gateway.address, (InstanceModel("m"),))
        )
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 1, 5)
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await collect(pb_grpc.ModelWorkerStub(channel), timeout=5)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "came back to gateway" in (raised.value.details() or "")


async def test_unavailable_after_the_first_chunk_is_not_retried() -> None:
    async with fake_fleet("one-then-unavailable", "one-then-unavailable") as (fakes, gateway):
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            call = pb_grpc.ModelWorkerStub(channel).GenerateStream(
                build_request("m", "hi"), timeout=5
            )
            chunks = []
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for chunk in call:
                    chunks.append(chunk.text)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert chunks == ["a"], "the caller must see the first chunk once, then the error"
    assert sum(f.calls for f in fakes) == 1, "a stream that had started was replayed"


async def test_deadline_metadata_and_cancellation_reach_the_upstream() -> None:
    async with fake_fleet("slow") as ((fake,), gateway):
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            call = stub.GenerateStream(
                build_request("m", "hi"), timeout=5, metadata=(("x-trace", "t-42"),)
            )
            assert (await call.read()).text == "a"
            assert dict(await call.initial_metadata())[INSTANCE_TRAILER] == "fake-0"
            call.cancel()
            await asyncio.wait_for(fake.cancelled.wait(), 2)

    assert fake.metadata[0]["x-trace"] == "t-42"
    remaining = fake.time_remaining[0]
    # The caller gave 5 s; the upstream sees a deadline, not later than that (grpc-timeout rounds up
    # a little).
    assert remaining is not None and 3.5 < remaining <= 5.05, remaining


def test_model_field_reads_only_the_model() -> None:
    request = build_request("llama-70b", [("system", "s" * 300), ("user", "hi")], temperature=0.5)
    assert model_field(request.SerializeToString()) == "llama-70b"
    assert model_field(pb.CountTokenRequest(model="m", prompt="x").SerializeToString()) == "m"
    for empty in (b"", pb.CountTokenRequest(prompt="x").SerializeToString()):
        with pytest.raises(InvalidRequest, match="model: must name a served model"):
            model_field(empty)
    for garbage in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x0b"):
        with pytest.raises(InvalidRequest, match="not a valid protobuf message"):
            model_field(garbage)


def test_the_label_model_costs_the_same_whatever_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """`leading_model` runs before authentication (for the metrics label): an unterminated varint as
    long as the receive limit is read for 10 bytes, a body of many small fields for 16 fields, never
    to the end."""
    import modelwire.gateway.router as router

    calls = 0
    real = router._varint

    def counted(raw: bytes, position: int) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        return real(raw, position)

    monkeypatch.setattr(router, "_varint", counted)
    for hostile in (b"\xff" * 4_000_000, b"\x10\x01" * 2_000_000, b"\x12\x00" * 2_000_000):
        calls = 0
        with pytest.raises(InvalidRequest):
            router.leading_model(hostile)
        assert calls <= 2 * router.MAX_FIELDS_BEFORE_MODEL, calls
    with pytest.raises(InvalidRequest, match="model: at most 1024 bytes"):
        router.leading_model(pb.CountTokenRequest(model="m" * 2000).SerializeToString())


async def start_process(
    *args: str, expect: str, timeout: float = 120
) -> asyncio.subprocess.Process:
    process = await start_cli(*args, stderr=DEVNULL)
    line = await first_line(process, timeout)
    assert line.startswith(expect), line
    return process


STREAM_TOKENS = 150


async def test_kill_9_under_load_with_gemma_workers() -> None:
    """Two gemma workers, the `modelwire gateway` command, six streams; one worker is killed with
    SIGKILL. Calls not yet streaming complete on the other worker; the dead one leaves the registry
    within its TTL."""
    processes: list[asyncio.subprocess.Process] = []
    async with running_controller(TTL_S) as controller:
        watcher = Watcher(controller.address)
        try:
            ports = [free_port() for _ in range(2)]
            processes += await asyncio.gather(
                *(
                    start_process(
                        "serve",
                        "--port",
                        str(port),
                        "--controller",
                        controller.address,
                        expect=f"modelwire serving gemma-3-270m on 127.0.0.1:{port}",
                    )
                    for port in ports
                )
            )
            gateway_port = free_port()
            processes.append(
                await start_process(
                    "gateway",
                    "--controller",
                    controller.address,
                    "--port",
                    str(gateway_port),
                    expect=f"modelwire gateway on 127.0.0.1:{gateway_port}",
                    timeout=30,
                )
            )
            await serving(f"127.0.0.1:{gateway_port}")
            for port in ports:
                await watcher.wait_for(
                    lambda b, p=port: any(  # type: ignore[misc]
                        e.instance.address == f"127.0.0.1:{p}" and e.instance.healthy
                        for e in b.events
                    ),
                    30,
                )
            address_of = {
                e.instance.instance_id: e.instance.address
                for _, b in watcher.batches
                for e in b.events
            }

            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
                stub = pb_grpc.ModelWorkerStub(channel)
                # Long enough that a stream under way at the kill is still under way when it lands.
                request = build_request(
                    "gemma-3-270m",
                    "Count from one to fifty.",
                    temperature=0,
                    max_new_tokens=STREAM_TOKENS,
                )
                started: dict[int, str] = {}  # call index -> instance id, once streaming
                first_chunk = asyncio.Event()

                async def one(index: int) -> str:
                    call = stub.GenerateStream(request, timeout=120)
                    chunks = []
                    async for chunk in call:
                        if index not in started:
                            started[index] = dict(await call.initial_metadata())[INSTANCE_TRAILER]
                            if len(set(started.values())) == 2:
                                first_chunk.set()
                        chunks.append(chunk)
                    assert chunks[-1].usage.completion_tokens == STREAM_TOKENS
                    return started[index]

                tasks = [asyncio.create_task(one(i)) for i in range(6)]
                await asyncio.wait_for(first_chunk.wait(), 60)
                victim_id = next(iter(started.values()))
                victim = processes[[f"127.0.0.1:{p}" for p in ports].index(address_of[victim_id])]
                streaming_on_victim = {i for i, s in started.items() if s == victim_id}
                at_kill = dict(started)
                victim.kill()
                killed_at = time.monotonic()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                print(
                    f"streaming at the kill: {at_kill}; victim {victim_id}; results "
                    f"{[r if isinstance(r, str) else r.code() for r in results]}"
                )

                for index, result in enumerate(results):
                    if index in streaming_on_victim:
                        assert isinstance(result, grpc.aio.AioRpcError), result
                        assert result.code() == grpc.StatusCode.UNAVAILABLE
                    else:
                        assert result != victim_id and isinstance(result, str), (
                            f"call {index}: {result!r}"
                        )
                # New calls keep working.
                assert "".join([c.text async for c in stub.GenerateStream(request, timeout=60)])

            removed_at = await watcher.wait_for(has_event("removed", victim_id), TTL_S + 5)
            print(
                f"the killed instance left the registry {removed_at - killed_at:.2f}s after "
                f"SIGKILL (TTL {TTL_S}s)"
            )
            assert removed_at - killed_at <= TTL_S + 0.6, (
                f"left the registry {removed_at - killed_at:.2f}s after the kill"
            )
        finally:
            await watcher.close()
            for process in processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def test_gateway_keeps_routing_through_a_controller_restart(blocking_provider: None) -> None:
    """The gateway routes on its last known instances while the controller is away, and a fresh
    controller's first (still empty) snapshot does not make it drop workers that are
    re-registering."""
    port = free_port()
    config = blocking_config(blocking_model("slow", tokens=1))
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_controller(TTL_S, port=port))
        worker = await stack.enter_async_context(
            registered_worker(config, Joining(controller=first.address))
        )
        await registered(worker)
        gateway = await stack.enter_async_context(running_gateway(first.address))
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 1, 5)
        async with ModelWorkerClient(gateway.address, timeout=5) as via:
            failures: list[str] = []
            calls = 0
            stop = asyncio.Event()

            async def keep_calling() -> None:
                nonlocal calls
                while not stop.is_set():
                    try:
                        assert (await via.generate("slow", "hi")).text == "w0 "
                    except ModelwireCallError as error:
                        failures.append(error.code.name)
                    calls += 1
                    await asyncio.sleep(0.01)

            caller = asyncio.create_task(keep_calling())
            await first.stop()
            agent = worker.registration
            assert agent is not None
            agent.registered.clear()
            async with running_controller(TTL_S, port=port):
                await asyncio.wait_for(agent.registered.wait(), 10)
                await wait_until(gateway.router.changed, lambda: not gateway.router._stale, 5)
            stop.set()
            await caller
    print(f"{calls} calls through the gateway across a controller restart, failures: {failures}")
    assert calls > 20 and not failures


async def test_garbage_from_one_instance_costs_only_its_own_answer() -> None:
    """A registrant answering ListModels with bytes that are not a ListModelsResponse, and Generate
    with a load trailer that is not an ORCA report: the others' models are listed, the call is
    OK."""
    garbage_port = free_port()

    async def list_garbage(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"\xff\xff\xff"

    async def generate_with_bad_trailer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        context.set_trailing_metadata(
            (("endpoint-load-metrics-bin", b"\xff\xff"), ("modelwire-load-bin", b"\xff"))
        )
        return pb.ModelOutput(text="fine", finish_reason=pb.FINISH_REASON_STOP).SerializeToString()

    evil = grpc.aio.server()
    evil.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "modelwire.v1.ModelWorker",
                {
                    "ListModels": grpc.unary_unary_rpc_method_handler(list_garbage),
                    "Generate": grpc.unary_unary_rpc_method_handler(generate_with_bad_trailer),
                },
            ),
        )
    )
    evil.add_insecure_port(f"127.0.0.1:{garbage_port}")
    await evil.start()
    try:
        async with fake_fleet("ok") as ((_,), gateway):
            await gateway.router.source.register(
                InstanceSpec("evil", f"127.0.0.1:{garbage_port}", (InstanceModel("evil"),))
            )  # type: ignore[attr-defined]
            await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 2, 5)
            async with ModelWorkerClient(gateway.address, timeout=5) as client:
                models = await client.list_models()
                assert (await client.generate("evil", "hi")).text == "fine"
    finally:
        await evil.stop(0)
    assert [
        m.model for m in models
    ] == []  # the fake "ok" worker has no ListModels either: nothing, no UNKNOWN


async def test_a_worker_sends_early_headers_only_to_gateways(blocking_provider: None) -> None:
    """A call forwarded by a gateway (it carries modelwire-via) gets the worker's headers when its
    work begins; a direct caller is spared the extra frame and gets them with the first message."""
    async with running_worker(blocking_config(blocking_model("slow", tokens=1))) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            for metadata, early in (((("modelwire-via", "g1"),), True), ((), False)):
                call = stub.Generate(build_request("slow", "hi"), metadata=metadata, timeout=10)
                await call
                headers = dict(await call.initial_metadata())
                assert ("modelwire-pid" in headers) is early, (metadata, headers)
