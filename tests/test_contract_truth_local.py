"""A tool without parameters on the embedded gemma-3-270m (issue 22, item 6): "no arguments" is a
closed object, so the grammar the call is sampled under admits `{}` alone, whatever the seed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest

from conformance import collect, user
from modelwire.app.server import Worker
from modelwire.client import tool
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

MODEL = "gemma-3-270m"
PING = tool("ping", description="Checks that the service is up.")


@pytest.fixture
async def stub(embedded_worker: Worker) -> AsyncIterator[pb_grpc.ModelWorkerStub]:
    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        yield pb_grpc.ModelWorkerStub(channel)


def ping(seed: int) -> pb.ModelRequest:
    return pb.ModelRequest(
        model=MODEL,
        messages=[user("Is the service up? Call ping with an id and a name.")],
        tools=[PING],
        tool_choice=pb.ToolChoice(tool_name="ping"),
        sampling=pb.SamplingParams(temperature=1.0, seed=seed, max_new_tokens=48),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_forced_call_of_a_tool_without_parameters_has_no_arguments(
    stub: pb_grpc.ModelWorkerStub, seed: int
) -> None:
    unary = await stub.Generate(ping(seed))
    messages = await collect(stub.GenerateStream(ping(seed)))

    (call,) = unary.tool_calls
    assert (call.name, json.loads(call.arguments_json)) == ("ping", {})
    assert unary.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    streamed = "".join(d.arguments_delta for message in messages for d in message.tool_call_deltas)
    assert json.loads(streamed) == {} and messages[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
