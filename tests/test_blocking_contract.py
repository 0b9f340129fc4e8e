"""The ProxyLLMClient contract with a blocking provider: async over sync, sync over stream,
cancel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest

from blocking_provider import PROVIDER, BlockingTestClient
from conftest import WorkerFactory, admission_reaches
from modelwire.app.config import Config
from modelwire.app.server import build_worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.core.cancellation import Cancellation
from modelwire.core.errors import StartupFailure
from modelwire.core.settings import ModelConfig, RequestLimits
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.core.types import ModelMessage, ModelRequest, Role, SamplingParams, merge_outputs
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker.admission import Admission
from modelwire.worker.deployments import ServedModel
from modelwire.worker.service import WorkerService
from modelwire.worker.servicer import ModelWorkerServicer

REQUEST = ModelRequest(model="slow", messages=(ModelMessage(Role.USER, "hi"),))


pytestmark = pytest.mark.usefixtures("blocking_provider")


def model_config(name: str = "slow", **options: object) -> ModelConfig:
    return ModelConfig(
        name=name,
        provider=PROVIDER,
        max_concurrency=4,
        max_queue=100,
        options=dict(options),
        source="<test>",
    )


def client_of(executor: ThreadPoolExecutor, **options: object) -> BlockingTestClient:
    return BlockingTestClient.new_client(model_config(**options), executor)


async def test_async_stream_over_sync_stream_yields_deltas_then_final_chunk() -> None:
    with ThreadPoolExecutor(2) as executor:
        client = client_of(executor, tokens=3)
        chunks = [chunk async for chunk in client.generate_stream(REQUEST)]

    assert [chunk.text for chunk in chunks] == ["w0 ", "w1 ", "w2 ", ""]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])


async def test_generate_is_the_merged_blocking_stream() -> None:
    with ThreadPoolExecutor(2) as executor:
        client = client_of(executor, tokens=4)
        unary = await client.generate(REQUEST)
        blocking = merge_outputs(list(client.sync_generate_stream(REQUEST, Cancellation())))

    assert unary.text == blocking.text == "w0 w1 w2 w3 "
    assert unary.usage == blocking.usage
    assert unary.finish_reason == blocking.finish_reason is not None


async def test_provider_error_reaches_the_consumer() -> None:
    class Failing(BlockingTestClient):
        def sync_generate_stream(
            self, request: ModelRequest, cancellation: Cancellation
        ) -> Iterator:  # type: ignore[type-arg]
            yield from super().sync_generate_stream(
                replace(request, sampling=SamplingParams(max_new_tokens=1)), cancellation
            )
            raise ValueError("boom")

    with ThreadPoolExecutor(2) as executor:
        client = Failing.new_client(model_config(tokens=5), executor)
        with pytest.raises(ValueError, match="boom"):
            [chunk async for chunk in client.generate_stream(REQUEST)]


def worker_config(threads: int, **options: object) -> Config:
    return Config(
        server=ServerConfig(grace_period_s=1.0, blocking_threads=threads),
        models=(model_config(**options),),
    )


async def test_cancelled_streams_stop_within_a_token_and_free_the_pool(
    worker_factory: WorkerFactory,
) -> None:
    """50 streams cancelled after their first chunk: each generator stops, the 4-thread pool is
    free."""
    async with worker_factory(
        worker_config(threads=4, tokens=10_000, token_delay_s=0.01)
    ) as worker:
        provider = BlockingTestClient.instances[-1]
        async with ModelWorkerClient(worker.address, timeout=30) as client:
            for _ in range(50):
                async for _chunk in client.stream("slow", "hi"):
                    break
            assert await asyncio.to_thread(provider.wait_idle, 5.0), (
                "a cancelled generation kept running"
            )
            # Each stream produced its first token, at most one more while the cancel travelled, and
            # no run went on: 10,000 tokens per stream would have been produced otherwise.
            assert provider.started == provider.closed == 50
            assert provider.produced <= 50 * 3

            after = await asyncio.wait_for(client.generate("slow", "hi", max_new_tokens=3), 5)
            assert after.text == "w0 w1 w2 "


async def test_deadline_stops_the_blocking_generation(worker_factory: WorkerFactory) -> None:
    async with worker_factory(
        worker_config(threads=2, tokens=10_000, token_delay_s=0.01)
    ) as worker:
        provider = BlockingTestClient.instances[-1]
        async with ModelWorkerClient(worker.address) as client:
            with pytest.raises(ModelwireCallError) as raised:
                await client.generate("slow", "hi", timeout=0.2)
            assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert await asyncio.to_thread(provider.wait_idle, 5.0)
            assert provider.produced < 1000


async def test_a_job_that_has_not_started_never_starts() -> None:
    """The one pool thread is busy; a stream whose consumer leaves while its job waits for a thread
    must never run, not even its first step."""
    with ThreadPoolExecutor(1) as executor:
        client = client_of(executor, tokens=3)
        busy = threading.Event()
        release = threading.Event()

        def occupy() -> None:
            busy.set()
            release.wait(10)

        executor.submit(occupy)
        assert await asyncio.to_thread(busy.wait, 5)
        consumer = asyncio.create_task(anext(aiter(client.generate_stream(REQUEST))))
        await asyncio.sleep(0)  # let the consumer submit its job behind `occupy`
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        release.set()
        await asyncio.to_thread(executor.submit(lambda: None).result, 5)
        assert client.started == 0


async def test_the_admission_slot_is_held_until_the_thread_has_stopped(
    worker_factory: WorkerFactory,
) -> None:
    """A generation slow to notice its cancel keeps its slot: admission then bounds the threads at
    work, and the in-flight gauge tells the truth."""
    async with worker_factory(
        worker_config(threads=2, tokens=10_000, token_delay_s=0.01)
    ) as worker:
        provider = BlockingTestClient.instances[-1]
        provider.hold = threading.Event()
        admission = worker.models[0].admission
        async with grpc.aio.insecure_channel(worker.address) as channel:
            call = pb_grpc.ModelWorkerStub(channel).GenerateStream(
                pb.ModelRequest(
                    model="slow", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
                ),
                timeout=30,
            )
            await call.read()
            call.cancel()
            assert await asyncio.to_thread(provider.cancel_seen.wait, 5)
            assert (admission.in_flight, provider.active) == (1, 1), (
                "the slot went back while its thread still ran"
            )
            provider.hold.set()
            assert await asyncio.to_thread(provider.wait_idle, 5.0)
            await admission_reaches(admission, in_flight=0, queued=0)


async def test_closing_the_stream_at_a_yield_waits_for_the_thread_before_the_slot_goes_back() -> (
    None
):
    """gRPC closes a handler's generator when a cancel arrives while it waits at a `yield`. Every
    layer must close the one inside it at once, down to the pump, which waits for the thread: the
    admission slot is released only after that (it went back at once, and the pump's cleanup ran
    whenever the garbage collector got to it)."""
    with ThreadPoolExecutor(2) as executor:
        provider = client_of(executor, tokens=10_000, token_delay_s=0.001)
        provider.hold = threading.Event()
        admission = Admission("slow", max_concurrency=1, max_queue=0)
        service = WorkerService(
            [ServedModel(provider.models()[0], provider, admission)], RequestLimits()
        )
        servicer = ModelWorkerServicer(service)
        context = IdleContext()
        stream = servicer.GenerateStream(
            pb.ModelRequest(
                model="slow", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
            ),
            context,
        )
        await anext(stream)  # the handler now waits at its yield
        closing = asyncio.create_task(stream.aclose())
        assert await asyncio.to_thread(provider.cancel_seen.wait, 5)
        assert not closing.done() and admission.in_flight == 1, (
            "the slot went back while the thread ran"
        )
        provider.hold.set()
        await asyncio.wait_for(closing, 5)
        assert (admission.in_flight, provider.active) == (0, 0)


class IdleContext:
    """The little of grpc.aio.ServicerContext the servicer touches on a call that succeeds."""

    def time_remaining(self) -> float | None:
        return None

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def test_a_failed_warm_up_stops_the_start() -> None:
    config = worker_config(threads=2, warm_up_error="weights are garbage")
    with pytest.raises(
        StartupFailure, match="model 'slow' failed its warm-up generation: weights are garbage"
    ):
        await build_worker(config)


def test_model_config_table_rejects_unknown_provider_keys() -> None:
    with (
        ThreadPoolExecutor(1) as executor,
        pytest.raises(Exception, match=r"models\[0\]\.tokenz: is not a known key"),
    ):
        client_of(executor, tokenz=3)
