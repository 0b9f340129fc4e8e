"""ORCA load reports: every ModelWorker response carries xds.data.orca.v3.OrcaLoadReport in the
`endpoint-load-metrics-bin` trailer, and its utilisation rises under load.

gRPC Python's C core keeps `endpoint-load-metrics-bin` for itself, so the report is read off the
wire with a bare HTTP/2 client here; through gRPC Python the same report is read from
`modelwire-load-bin`."""

from __future__ import annotations

import asyncio
import base64

import grpc
import pytest
from xds.data.orca.v3 import orca_load_report_pb2

from conftest import running_worker
from fleet import (
    Joining,
    blocking_config,
    blocking_model,
    registered,
    registered_worker,
    running_controller,
)
from modelwire.client import ModelWorkerClient
from modelwire.client.requests import build_request, count_request
from modelwire.rpc.wire import INSTANCE_TRAILER, LOAD_TRAILER, ORCA_TRAILER
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from raw_h2 import unary_call

pytestmark = pytest.mark.usefixtures("blocking_provider")


def report_of(
    trailers: object,
) -> tuple[orca_load_report_pb2.OrcaLoadReport, dict[str, str | bytes]]:
    metadata = dict(trailers)  # type: ignore[call-overload]
    return orca_load_report_pb2.OrcaLoadReport.FromString(metadata[LOAD_TRAILER]), metadata


async def test_the_orca_trailer_reports_utilisation_that_rises_under_load() -> None:
    config = blocking_config(
        blocking_model("slow", max_concurrency=4, tokens=400, token_delay_s=0.01)
    )
    async with running_controller() as controller:
        async with registered_worker(config, Joining(controller=controller.address)) as worker:
            instance_id = await registered(worker)
            async with grpc.aio.insecure_channel(worker.address) as channel:
                stub = pb_grpc.ModelWorkerStub(channel)
                quick = build_request("slow", "hi", max_new_tokens=1)

                idle_call = stub.Generate(quick, timeout=10)
                await idle_call
                idle, metadata = report_of(await idle_call.trailing_metadata())
                assert metadata[INSTANCE_TRAILER] == instance_id
                assert idle.application_utilization == 0.0
                assert dict(idle.named_metrics) == {
                    "in_flight": 0.0,
                    "queued": 0.0,
                    "capacity": 4.0,
                }
                assert idle.rps_fractional > 0
                assert 0.0 <= idle.cpu_utilization <= 1.0

                # Three long streams hold three of the four slots.
                async with ModelWorkerClient(worker.address, timeout=30) as direct:
                    streams = [direct.stream("slow", "load") for _ in range(3)]
                    for stream in streams:
                        await anext(stream)
                    loaded_call = stub.Generate(quick, timeout=10)
                    await loaded_call
                    loaded, _ = report_of(await loaded_call.trailing_metadata())
                    count_call = stub.CountToken(count_request("slow", "one two"), timeout=10)
                    await count_call
                    counted, _ = report_of(await count_call.trailing_metadata())
                    for stream in streams:
                        await stream.aclose()

                # A stream's report comes with its end.
                stream_call = stub.GenerateStream(quick, timeout=10)
                chunks = [chunk async for chunk in stream_call]
                streamed, _ = report_of(await stream_call.trailing_metadata())
                models_call = stub.ListModels(pb.ListModelsRequest(), timeout=10)
                await models_call
                listed, _ = report_of(await models_call.trailing_metadata())

    print(
        f"application_utilization idle {idle.application_utilization}, with 3 of 4 slots busy "
        f"{loaded.application_utilization}"
    )
    assert loaded.application_utilization == pytest.approx(0.75)
    assert loaded.named_metrics["in_flight"] == 3.0
    assert loaded.application_utilization > idle.application_utilization
    assert counted.application_utilization == pytest.approx(0.75)
    assert chunks[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert streamed.named_metrics["capacity"] == 4.0
    assert loaded.rps_fractional >= idle.rps_fractional
    assert listed.named_metrics["capacity"] == 4.0


async def test_a_worker_without_registration_still_reports_load() -> None:
    config = blocking_config(blocking_model("slow", tokens=1))
    async with running_worker(config) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            call = pb_grpc.ModelWorkerStub(channel).Generate(
                build_request("slow", "hi"), timeout=10
            )
            await call
            report, metadata = report_of(await call.trailing_metadata())
    assert INSTANCE_TRAILER not in metadata
    assert report.named_metrics["capacity"] == 8.0


def unbase64(value: bytes) -> bytes:
    """gRPC sends -bin metadata as base64, padding optional."""
    return base64.b64decode(value + b"=" * (-len(value) % 4))


async def test_the_orca_trailer_is_on_the_wire_and_rises_under_load() -> None:
    config = blocking_config(
        blocking_model("slow", max_concurrency=4, tokens=400, token_delay_s=0.01)
    )
    request = build_request("slow", "hi", max_new_tokens=1).SerializeToString()
    async with running_worker(config) as worker:
        method = "/modelwire.v1.ModelWorker/Generate"
        body, idle_trailers = await asyncio.to_thread(unary_call, worker.address, method, request)
        assert pb.ModelOutput.FromString(body).text == "w0 "
        assert idle_trailers["grpc-status"] == b"0"
        async with ModelWorkerClient(worker.address, timeout=30) as direct:
            streams = [direct.stream("slow", "load") for _ in range(2)]
            for stream in streams:
                await anext(stream)
            _, loaded_trailers = await asyncio.to_thread(
                unary_call, worker.address, method, request
            )
            for stream in streams:
                await stream.aclose()

    idle = orca_load_report_pb2.OrcaLoadReport.FromString(unbase64(idle_trailers[ORCA_TRAILER]))
    loaded = orca_load_report_pb2.OrcaLoadReport.FromString(unbase64(loaded_trailers[ORCA_TRAILER]))
    print(
        f"on the wire: application_utilization idle {idle.application_utilization}, loaded "
        f"{loaded.application_utilization}"
    )
    assert idle.application_utilization == 0.0
    assert loaded.application_utilization == pytest.approx(0.5)
    assert loaded.named_metrics["in_flight"] == 2.0
    assert loaded.rps_fractional > 0
    assert unbase64(loaded_trailers[LOAD_TRAILER]) == unbase64(loaded_trailers[ORCA_TRAILER])


def test_the_call_rate_forgets_calls_older_than_its_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate keeps its buckets' sum as they change: each second that passes takes its bucket's
    calls out of the sum, and a gap longer than the window empties it."""
    from modelwire.worker import orca

    now = [1000.0]
    monkeypatch.setattr(orca.time, "monotonic", lambda: now[0])
    rate = orca._Rate()
    for second, calls in ((0, 3), (1, 2), (4, 5)):
        now[0] = 1000.0 + second
        for _ in range(calls):
            rate.add()
    assert rate.per_second() == pytest.approx(10 / orca.RATE_WINDOW_S)
    now[0] = 1000.0 + orca.RATE_WINDOW_S  # the first second's 3 calls leave the window
    assert rate.per_second() == pytest.approx(7 / orca.RATE_WINDOW_S)
    now[0] = 1000.0 + orca.RATE_WINDOW_S + 4  # so do the next two seconds' (and 4 s idle)
    assert rate.per_second() == pytest.approx(0 / orca.RATE_WINDOW_S)
    now[0] = 1000.0 + 3 * orca.RATE_WINDOW_S  # a long gap, then one call
    rate.add()
    assert rate.per_second() == pytest.approx(1 / orca.RATE_WINDOW_S)
