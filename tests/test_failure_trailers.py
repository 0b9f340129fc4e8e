"""A failed call's trailers: its request id, and one load report made when it failed
(rpc/call_pipeline.py sets a report once a call answers; rpc/status.py CallScope adds one to a
failure's status), next to the status details."""

from __future__ import annotations

import grpc
import pytest
from xds.data.orca.v3 import orca_load_report_pb2

from conftest import running_worker
from fleet import blocking_config, blocking_model
from modelwire.client.requests import build_request
from modelwire.rpc.wire import LOAD_TRAILER, ORCA_TRAILER, REQUEST_ID_KEY, STATUS_DETAILS_KEY
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

pytestmark = pytest.mark.usefixtures("blocking_provider")


def keys(trailers: object) -> list[str]:
    return [key for key, _ in trailers]  # type: ignore[attr-defined]


async def failure(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        if isinstance(call, grpc.aio.UnaryUnaryCall):
            await call
        else:
            async for _ in call:  # type: ignore[attr-defined]
                pass
    return failed.value


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (build_request("nope", "hi"), grpc.StatusCode.NOT_FOUND),
        (pb.ModelRequest(model="slow"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_a_failed_call_carries_one_load_report_with_its_status(
    request_: pb.ModelRequest, code: grpc.StatusCode
) -> None:
    config = blocking_config(blocking_model("slow", max_concurrency=4, tokens=1))
    async with running_worker(config) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            for call in (stub.Generate(request_, timeout=10), stub.GenerateStream(request_)):
                error = await failure(call)
                assert error.code() == code
                trailers = error.trailing_metadata()
                names = keys(trailers)
                # gRPC Python's C core keeps ORCA_TRAILER for itself: LOAD_TRAILER is the same.
                assert ORCA_TRAILER not in names
                assert names.count(LOAD_TRAILER) == 1, names
                assert names.count(REQUEST_ID_KEY) == 1, names
                assert STATUS_DETAILS_KEY in names or code == grpc.StatusCode.NOT_FOUND
                report = orca_load_report_pb2.OrcaLoadReport.FromString(
                    dict(trailers)[LOAD_TRAILER]
                )
                assert report.named_metrics["capacity"] == 4.0
                assert report.named_metrics["in_flight"] == 0.0
