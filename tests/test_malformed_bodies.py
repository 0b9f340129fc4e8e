"""A body that is not a protobuf message of the method's request type is the caller's error:
INVALID_ARGUMENT with a message that says so, from a worker and from a gateway alike, for every
ModelWorker method (never UNKNOWN, never a traceback, never OK)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from fake_upstream import load_toml_config
from fleet import Joining, registered, registered_worker, running_controller, running_gateway

CONFIG = '[server]\ngrace_period_s = 1.0\n\n[[models]]\nname = "echo"\nprovider = "echo"\n'
GARBAGE = b"\xff\xff\xff"  # a field number 0x1fff... with a truncated varint: no message decodes it
METHODS = ("Generate", "GenerateStream", "CountToken", "Embed", "ListModels")


async def refusals(address: str) -> dict[str, tuple[grpc.StatusCode, str]]:
    found = {}
    async with grpc.aio.insecure_channel(address) as channel:
        for method in METHODS:
            path = f"/modelwire.v1.ModelWorker/{method}"
            call = (
                channel.unary_stream(path)
                if method == "GenerateStream"
                else channel.unary_unary(path)
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                answer = call(GARBAGE, timeout=10)
                if method == "GenerateStream":
                    _ = [chunk async for chunk in answer]
                else:
                    await answer
            found[method] = (refused.value.code(), refused.value.details() or "")
    return found


async def test_a_worker_and_a_gateway_refuse_an_undecodable_body_on_every_method(
    tmp_path: Path,
) -> None:
    async with running_controller() as controller:
        async with registered_worker(
            load_toml_config(tmp_path, CONFIG), Joining(controller=controller.address)
        ) as worker:
            await registered(worker)
            async with running_gateway(controller.address) as gateway:
                direct = await refusals(worker.address)
                through = await refusals(gateway.address)
    for found in (direct, through):
        assert {method: code for method, (code, _) in found.items()} == {
            m: grpc.StatusCode.INVALID_ARGUMENT for m in METHODS
        }, found
        assert all("not a valid protobuf message" in details for _, details in found.values()), (
            found
        )
