"""The Python client's rate-limit headers (`RateLimits`) and `usage()`, against a tiny grpc.aio
server of this file's own: a worker with [quota] sends OpenAI's `x-ratelimit-*` headers as the
initial metadata of Generate and GenerateStream, and the client hands them out per call (a stream
before its first message), never as state of the shared client. The existing call signatures and
return types stay as they were."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from modelwire.client import (
    ModelwireCallError,
    ModelWorkerClient,
    ModelWorkerSyncClient,
    OutputStream,
    RateLimits,
    SyncOutputStream,
    parse_duration,
)
from modelwire.v1 import usage_pb2, usage_pb2_grpc
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

TOKEN = "rate-limits-test-token"


def headers(remaining_requests: str) -> tuple[tuple[str, str], ...]:
    return (
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", remaining_requests),
        ("x-ratelimit-reset-requests", "1s"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-tokens", "149984"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    )


def limits(remaining_requests: int) -> RateLimits:
    return RateLimits(
        limit_requests=60,
        remaining_requests=remaining_requests,
        reset_requests_s=1.0,
        limit_tokens=150000,
        remaining_tokens=149984,
        reset_tokens_s=360.0,
    )


class Worker(pb_grpc.ModelWorkerServicer):  # type: ignore[misc]
    """Behaves by the request's model; a call's request_id (a number) is its remaining requests,
    so that concurrent calls get different headers. "gated" sends its headers, then waits for the
    test to open its gate before the first message; "endless" streams until cancelled."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.ended: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.tokens: list[str] = []

    async def Generate(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelOutput:
        self.tokens.append(dict(context.invocation_metadata() or ()).get("authorization", ""))
        if request.model == "plain":
            return pb.ModelOutput(text="whole", model=request.model)
        await context.send_initial_metadata(headers(request.context.request_id))
        if request.model == "refused":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")
        return pb.ModelOutput(text="whole", model=request.model)

    async def GenerateStream(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelOutput]:
        request_id = request.context.request_id
        try:
            if request.model != "plain":
                await context.send_initial_metadata(headers(request_id))
            if request.model == "refused":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")
            if request.model == "gated":
                await self.gates[request_id].wait()
            if request.model == "endless":
                while True:
                    yield pb.ModelOutput(text=".")
                    await asyncio.sleep(0.01)
            yield pb.ModelOutput(text="Hel")
            yield pb.ModelOutput(text="lo", finish_reason=pb.FINISH_REASON_STOP)
        finally:
            self.ended[request_id].set()


class Usage(usage_pb2_grpc.UsageAdminServicer):  # type: ignore[misc]
    async def GetUsage(
        self, request: usage_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.GetUsageResponse:
        token = dict(context.invocation_metadata() or ()).get("authorization")
        if token != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")
        return usage_pb2.GetUsageResponse(
            rules=[
                usage_pb2.RuleUsage(
                    rule=0,
                    tenant=request.tenant or "all",
                    model="*",
                    limits=[
                        usage_pb2.LimitUsage(
                            kind=usage_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE,
                            used=3,
                            limit=60,
                            resets_in=Duration(seconds=42),
                        ),
                        usage_pb2.LimitUsage(
                            kind=usage_pb2.LIMIT_KIND_CONCURRENT_CALLS, used=1, limit=4
                        ),
                    ],
                )
            ],
            store="memory",
            store_available=True,
        )


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[tuple[str, Worker]]:
    worker = Worker()
    server = grpc.aio.server()
    pb_grpc.add_ModelWorkerServicer_to_server(worker, server)
    usage_pb2_grpc.add_UsageAdminServicer_to_server(Usage(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", worker
    finally:
        await server.stop(None)


@pytest.fixture
async def client(server: tuple[str, Worker]) -> AsyncIterator[ModelWorkerClient]:
    async with ModelWorkerClient(server[0], timeout=10, token=TOKEN) as client:
        yield client


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("20µs", 20e-6),
        ("2", 2.0),
        (" 6m0s ", 360.0),
        ("", None),
        ("s", None),
        ("-1s", None),
        ("1s2", None),
        ("1m 2s", None),
        ("soon", None),
    ],
)
def test_durations_in_openais_style(text: str, seconds: float | None) -> None:
    parsed = parse_duration(text)
    if seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(seconds)


def test_headers_absent_or_unreadable_are_none() -> None:
    assert RateLimits.from_metadata(None) == RateLimits()
    assert RateLimits.from_metadata([("modelwire-pid", "12")]) == RateLimits()
    read = RateLimits.from_metadata(
        [
            ("x-ratelimit-limit-requests", "many"),
            ("x-ratelimit-remaining-requests", "-1"),
            ("X-RateLimit-Remaining-Tokens", " 7 "),
            ("x-ratelimit-reset-tokens", "whenever"),
            ("x-ratelimit-reset-requests", "250ms"),
            ("x-ratelimit-reset-requests", "9s"),
        ]
    )
    assert read == RateLimits(remaining_tokens=7, reset_requests_s=0.25)


async def test_generate_returns_the_output_alone_unless_asked(client: ModelWorkerClient) -> None:
    output = await client.generate("limited", "hi", request_id="59")
    assert isinstance(output, pb.ModelOutput) and output.text == "whole"

    output, rate_limits = await client.generate(
        "limited", "hi", request_id="58", with_rate_limits=True
    )
    assert output.text == "whole"
    assert rate_limits == limits(58)

    _, none = await client.generate("plain", "hi", with_rate_limits=True)
    assert none == RateLimits()


async def test_a_refused_generate_raises_as_before(client: ModelWorkerClient) -> None:
    with pytest.raises(ModelwireCallError) as raised:
        await client.generate("refused", "hi", request_id="0", with_rate_limits=True)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_streams_rate_limits_come_before_its_first_message(
    client: ModelWorkerClient, server: tuple[str, Worker]
) -> None:
    worker = server[1]
    stream = client.stream("gated", "hi", request_id="41")
    assert isinstance(stream, OutputStream)
    # The worker holds the first message back until the gate opens: the headers came alone.
    assert await asyncio.wait_for(stream.rate_limits(), 5) == limits(41)
    worker.gates["41"].set()
    assert [chunk.text async for chunk in stream] == ["Hel", "lo"]
    assert await stream.rate_limits() == limits(41), "the same after the loop"


async def test_concurrent_streams_each_get_their_own_headers(
    client: ModelWorkerClient, server: tuple[str, Worker]
) -> None:
    worker = server[1]
    streams = {str(n): client.stream("gated", "hi", request_id=str(n)) for n in range(10, 20)}
    read = await asyncio.gather(*(stream.rate_limits() for stream in streams.values()))
    assert read == [limits(int(n)) for n in streams]
    for n in streams:
        worker.gates[n].set()
    texts = await asyncio.gather(*(collect(stream) for stream in streams.values()))
    assert texts == ["Hello"] * len(streams)


async def collect(stream: OutputStream) -> str:
    return "".join([chunk.text async for chunk in stream])


async def test_a_stream_without_headers_and_the_old_ways_of_reading_one(
    client: ModelWorkerClient,
) -> None:
    stream = client.stream("plain", "hi", request_id="1")
    first = await anext(stream)
    assert first.text == "Hel"
    assert await stream.rate_limits() == RateLimits()
    assert [chunk.text async for chunk in stream] == ["lo"]
    assert [chunk.text async for chunk in client.stream("plain", "hi")] == ["Hel", "lo"]


async def test_a_refused_stream_has_its_headers_and_the_loop_raises(
    client: ModelWorkerClient,
) -> None:
    stream = client.stream("refused", "hi", request_id="0")
    assert await stream.rate_limits() == limits(0)
    with pytest.raises(ModelwireCallError) as raised:
        async for _ in stream:
            raise AssertionError("a refused stream sends nothing")
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_nothing_is_sent_until_the_stream_is_read(
    client: ModelWorkerClient, server: tuple[str, Worker]
) -> None:
    """As when `stream` was an async generator function."""
    worker = server[1]
    stream = client.stream("plain", "hi", request_id="later")
    await client.generate("plain", "hi")
    await asyncio.sleep(0.2)
    assert "later" not in worker.ended, "the call ran before the stream was read"
    assert [chunk.text async for chunk in stream] == ["Hel", "lo"]
    assert worker.ended["later"].is_set()


async def test_leaving_the_loop_early_or_aclose_cancels_the_call(
    client: ModelWorkerClient, server: tuple[str, Worker]
) -> None:
    worker = server[1]

    async def leave_early() -> None:
        async for _ in client.stream("endless", "hi", request_id="left"):
            break

    await leave_early()
    await asyncio.wait_for(worker.ended["left"].wait(), 5)

    stream = client.stream("endless", "hi", request_id="closed")
    await anext(stream)
    await stream.aclose()
    await asyncio.wait_for(worker.ended["closed"].wait(), 5)

    stream = client.stream("endless", "hi", request_id="headers-only")
    assert await stream.rate_limits() == RateLimits(
        limit_requests=60,
        remaining_requests=None,  # "headers-only" is not a number
        reset_requests_s=1.0,
        limit_tokens=150000,
        remaining_tokens=149984,
        reset_tokens_s=360.0,
    )
    await stream.aclose()
    await asyncio.wait_for(worker.ended["headers-only"].wait(), 5)


async def test_usage(client: ModelWorkerClient, server: tuple[str, Worker]) -> None:
    every = await client.usage()
    assert (every.store, every.store_available) == ("memory", True)
    [rule] = every.rules
    assert (rule.rule, rule.tenant, rule.model) == (0, "all", "*")
    assert [(u.kind, u.used, u.limit) for u in rule.limits] == [
        (usage_pb2.LIMIT_KIND_REQUESTS_PER_MINUTE, 3, 60),
        (usage_pb2.LIMIT_KIND_CONCURRENT_CALLS, 1, 4),
    ]
    assert rule.limits[0].resets_in.ToSeconds() == 42
    assert not rule.limits[1].HasField("resets_in")
    assert (await client.usage("acme")).rules[0].tenant == "acme"

    async with ModelWorkerClient(server[0], timeout=10) as anonymous:
        with pytest.raises(ModelwireCallError) as raised:
            await anonymous.usage()
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_sync_client_mirrors_it(server: tuple[str, Worker]) -> None:
    address, worker = server
    loop = asyncio.get_running_loop()

    def calls() -> None:
        with ModelWorkerSyncClient(address, timeout=10, token=TOKEN) as client:
            output = client.generate("limited", "hi", request_id="7")
            assert isinstance(output, pb.ModelOutput) and output.text == "whole"
            output, rate_limits = client.generate(
                "limited", "hi", request_id="6", with_rate_limits=True
            )
            assert (output.text, rate_limits) == ("whole", limits(6))

            stream = client.stream("gated", "hi", request_id="5")
            assert isinstance(stream, SyncOutputStream)
            assert stream.rate_limits() == limits(5)
            loop.call_soon_threadsafe(lambda: worker.gates["5"].set())
            assert [chunk.text for chunk in stream] == ["Hel", "lo"]

            assert [chunk.text for chunk in client.stream("plain", "hi")] == ["Hel", "lo"]
            assert client.stream("plain", "hi").rate_limits() == RateLimits()

            with pytest.raises(ModelwireCallError) as raised:
                list(client.stream("refused", "hi", request_id="0"))
            assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

            endless = client.stream("endless", "hi", request_id="sync-closed")
            next(endless)
            endless.close()

            for _ in client.stream("endless", "hi", request_id="sync-left"):
                break

            assert client.usage("acme").rules[0].tenant == "acme"

    await asyncio.to_thread(calls)
    await asyncio.wait_for(worker.ended["sync-closed"].wait(), 5)
    await asyncio.wait_for(worker.ended["sync-left"].wait(), 5)
