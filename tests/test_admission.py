"""Admission per model against a slow upstream: max_concurrency run, max_queue wait, the rest get
RESOURCE_EXHAUSTED with RetryInfo; queued time counts against the deadline; a cancelled waiter
leaves the queue; the upstream never sees more than max_concurrency requests at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from conftest import running_worker
from fake_upstream import Exchange, FakeUpstream, Responder, answer_ok, load_toml_config
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.worker.admission import Admission

MAX_CONCURRENCY = 2
MAX_QUEUE = 2


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    config = load_toml_config(
        tmp_path_factory.mktemp("admission"),
        f"""
[server]
grace_period_s = 1.0

[[models]]
name = "slow-openai"
provider = "openai"
api_base = "{fake.url}/v1"
context_length = 8192
max_concurrency = {MAX_CONCURRENCY}
max_queue = {MAX_QUEUE}
max_retries = 0

[[models]]
name = "slow-anthropic"
provider = "anthropic"
api_base = "{fake.url}"
context_length = 8192
max_concurrency = {MAX_CONCURRENCY}
max_queue = {MAX_QUEUE}
max_retries = 0

[[models]]
name = "single"
provider = "openai"
api_base = "{fake.url}/v1"
context_length = 8192
max_concurrency = 1
max_queue = 1
max_retries = 0
""",
    )
    async with running_worker(config) as worker:
        yield worker


@pytest.fixture
async def client(fake: FakeUpstream, worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    fake.reset_records()
    async with ModelWorkerClient(worker.address, timeout=10) as client:
        yield client


@pytest.fixture
def release(fake: FakeUpstream) -> asyncio.Event:
    """Every upstream response is held until the test sets this event."""
    event = asyncio.Event()

    async def held(exchange: Exchange, respond: Responder) -> None:
        await asyncio.wait_for(event.wait(), 10)
        await answer_ok(exchange, respond)

    fake.default = held
    return event


def admission(worker: Worker, model: str) -> Admission:
    return next(served.admission for served in worker.models if served.metadata.model == model)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waits for worker-side state that has no event of its own (bounded; yields to the loop)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def outcome(
    client: ModelWorkerClient, model: str, stream: bool, timeout: float = 10
) -> str | ModelwireCallError:
    try:
        if stream:
            return "".join(
                [chunk.text async for chunk in client.stream(model, "Hi", timeout=timeout)]
            )
        return (await client.generate(model, "Hi", timeout=timeout)).text
    except ModelwireCallError as error:
        return error


@pytest.mark.parametrize("model", ["slow-openai", "slow-anthropic"])
async def test_overload_refuses_exactly_the_excess(
    client: ModelWorkerClient,
    fake: FakeUpstream,
    worker: Worker,
    release: asyncio.Event,
    model: str,
) -> None:
    capacity = MAX_CONCURRENCY + MAX_QUEUE
    calls = [
        asyncio.create_task(outcome(client, model, stream=i % 2 == 0)) for i in range(3 * capacity)
    ]
    refused_count = 3 * capacity - capacity

    # The excess is refused at once, while the admitted calls are still held upstream.
    await fake.wait_for_requests(MAX_CONCURRENCY)
    await until(lambda: sum(task.done() for task in calls) >= refused_count)
    refused = [task.result() for task in calls if task.done()]
    assert len(refused) == refused_count
    assert admission(worker, model).in_flight == MAX_CONCURRENCY
    assert admission(worker, model).queued == MAX_QUEUE
    for error in refused:
        assert (
            isinstance(error, ModelwireCallError)
            and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert error.retry_after_s is not None and error.retry_after_s > 0

    release.set()
    results = await asyncio.gather(*calls)
    succeeded = [result for result in results if result == "Hello, world!"]
    exhausted = [
        r
        for r in results
        if isinstance(r, ModelwireCallError) and r.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    ]
    assert (len(succeeded), len(exhausted)) == (capacity, refused_count)
    assert len(fake.exchanges) == capacity
    assert fake.max_in_flight <= MAX_CONCURRENCY
    assert (admission(worker, model).in_flight, admission(worker, model).queued) == (0, 0)


async def test_time_spent_queued_counts_against_the_deadline(
    client: ModelWorkerClient, fake: FakeUpstream, worker: Worker, release: asyncio.Event
) -> None:
    running = asyncio.create_task(outcome(client, "single", stream=True))
    await fake.wait_for_requests(1)

    queued = await outcome(client, "single", stream=False, timeout=0.3)

    assert (
        isinstance(queued, ModelwireCallError) and queued.code == grpc.StatusCode.DEADLINE_EXCEEDED
    )
    await until(lambda: admission(worker, "single").queued == 0)
    release.set()
    assert await running == "Hello, world!"
    assert len(fake.exchanges) == 1, (
        "the call that timed out in the queue never reached the upstream"
    )


async def test_a_cancelled_waiter_leaves_the_queue(
    client: ModelWorkerClient, fake: FakeUpstream, worker: Worker, release: asyncio.Event
) -> None:
    single = admission(worker, "single")
    running = asyncio.create_task(outcome(client, "single", stream=True))
    await fake.wait_for_requests(1)

    async def wait_for_first_chunk() -> object:
        return await anext(client.stream("single", "Hi"))

    waiting = asyncio.create_task(wait_for_first_chunk())
    await until(lambda: single.queued == 1)

    waiting.cancel()  # the client's stream generator cancels its gRPC call on the way out
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await until(lambda: single.queued == 0)
    # The queue (max_queue = 1) has room again: the next caller waits instead of being refused.
    later = asyncio.create_task(outcome(client, "single", stream=False))
    await until(lambda: single.queued == 1)
    release.set()

    assert await running == "Hello, world!"
    assert await later == "Hello, world!"
    assert len(fake.exchanges) == 2, "the cancelled waiter never reached the upstream"
