"""The request id a caller sends comes back in the trailers and names the call in every log line
(worker and gateway alike), but only when it can: an id gRPC would refuse to send back (a control
character, a byte above 0x7F) or one long enough to push the trailers past the client's metadata
limit would turn a call that ran into a failure at the caller. Such an id is replaced."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from conftest import running_worker
from fake_upstream import load_toml_config
from fleet import Joining, registered, registered_worker, running_controller, running_gateway
from modelwire.app.server import Worker
from modelwire.observe.logs import ACCESS_LOGGER
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from raw_h2 import unary_call

CONFIG = '[server]\ngrace_period_s = 1.0\n\n[[models]]\nname = "echo"\nprovider = "echo"\n'
REQUEST = pb.ModelRequest(model="echo", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")])
GENERATE = "/modelwire.v1.ModelWorker/Generate"
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
async def worker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Worker]:
    async with running_worker(load_toml_config(tmp_path_factory.mktemp("ids"), CONFIG)) as worker:
        yield worker


def logged_ids(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ids of the Generate calls logged so far (a fleet also logs its registration and health
    calls)."""
    return [
        r.request_id for r in caplog.records if r.name == ACCESS_LOGGER and r.method == GENERATE
    ]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "sent", [b"a\x7fb", b"a\tb", b"caf\xc3\xa9", b"r" * 129, b" abc", b"abc ", b"   "]
)
async def test_an_id_that_cannot_go_back_as_it_is_is_replaced(
    worker: Worker, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    _, trailers = await asyncio.to_thread(
        unary_call, worker.address, GENERATE, REQUEST.SerializeToString(), [(b"x-request-id", sent)]
    )
    assert trailers.get("grpc-status") == b"0", trailers
    returned = trailers["x-request-id"].decode()
    assert GENERATED.fullmatch(returned) and logged_ids(caplog) == [returned]
    assert "modelwire-load-bin" in trailers


async def test_an_id_of_printable_ascii_up_to_128_characters_comes_back_unchanged(
    worker: Worker,
) -> None:
    sent = "req " + "x" * 120 + "-~:/"
    async with grpc.aio.insecure_channel(worker.address) as channel:
        call = pb_grpc.ModelWorkerStub(channel).Generate(
            REQUEST, metadata=(("x-request-id", sent),)
        )
        await call
        assert dict(await call.trailing_metadata())["x-request-id"] == sent


async def test_a_huge_id_never_costs_the_caller_the_answer_of_a_call_that_ran(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """12,000 characters: gRPC may refuse the request outright (nothing ran: fine); a call that
    runs must reach the caller, under a generated id."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        for _ in range(10):
            caplog.clear()
            try:
                call = stub.Generate(REQUEST, metadata=(("x-request-id", "r" * 12000),), timeout=10)
                await call
            except grpc.aio.AioRpcError as error:
                assert (
                    error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and logged_ids(caplog) == []
                ), error
                continue
            returned = dict(await call.trailing_metadata())["x-request-id"]
            assert GENERATED.fullmatch(returned) and logged_ids(caplog) == [returned]


async def test_gateway_and_worker_log_a_call_under_one_id_and_refuse_a_header_they_cannot_pass_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    request = REQUEST.SerializeToString()
    async with running_controller() as controller:
        async with registered_worker(
            load_toml_config(tmp_path, CONFIG), Joining(controller=controller.address)
        ) as worker:
            await registered(worker)
            async with running_gateway(controller.address) as gateway:
                _, given = await asyncio.to_thread(
                    unary_call,
                    gateway.address,
                    GENERATE,
                    request,
                    [(b"x-request-id", b"req-through-1")],
                )
                _, replaced = await asyncio.to_thread(
                    unary_call, gateway.address, GENERATE, request, [(b"x-request-id", b"a\x7fb")]
                )
                ids_so_far = logged_ids(caplog)
                _, refused = await asyncio.to_thread(
                    unary_call, gateway.address, GENERATE, request, [(b"x-custom", b"a\x7fb")]
                )
                _, refused_via = await asyncio.to_thread(
                    unary_call, gateway.address, GENERATE, request, [(b"modelwire-via", b"a\x7fb")]
                )

    assert given["grpc-status"] == b"0" and given["x-request-id"] == b"req-through-1"
    assert replaced["grpc-status"] == b"0" and GENERATED.fullmatch(
        replaced["x-request-id"].decode()
    )
    # Each of the two calls is logged twice (gateway, then worker) under the id the caller got back.
    assert sorted(ids_so_far) == sorted(
        ["req-through-1"] * 2 + [replaced["x-request-id"].decode()] * 2
    )
    assert refused["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]).encode(), (
        refused
    )
    assert b"metadata x-custom" in refused["grpc-message"]
    assert (
        refused_via["grpc-status"] == refused["grpc-status"]
        and b"metadata modelwire-via" in refused_via["grpc-message"]
    )
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
