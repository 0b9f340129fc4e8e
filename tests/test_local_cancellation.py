"""A caller that leaves stops the embedded model: during a 2,000-token prompt evaluation, while
queued behind a busy model, and twenty times over. Asserted on the provider's own state (tokens
llama.cpp evaluated, generations started and running) and on the admission counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from conftest import admission_reaches, running_worker
from modelwire.app.config import embedded_default
from modelwire.app.server import Worker
from modelwire.core.settings import ModelConfig
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.core.types import ModelMessage, Role
from modelwire.providers.llama.client import LlamaCppClient
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker.admission import Admission

MODEL = "gemma-3-270m"
PROMPT_TOKENS = 2000


@pytest.fixture(scope="module")
async def worker() -> AsyncIterator[Worker]:
    """One session, and a batch as large as the context: a prompt is one llama_decode call, so
    only llama.cpp's abort can stop it midway (evaluating in pieces would stop between them)."""
    model = ModelConfig(
        name=MODEL,
        provider="llamacpp",
        context_length=4096,
        max_concurrency=1,
        max_queue=32,
        options={"n_batch": 4096},
    )
    config = replace(embedded_default(), server=ServerConfig(grace_period_s=1.0), models=(model,))
    async with running_worker(config) as worker:
        yield worker


def provider(worker: Worker) -> LlamaCppClient:
    client = worker.models[0].client
    assert isinstance(client, LlamaCppClient)
    return client


def admission(worker: Worker) -> Admission:
    return worker.models[0].admission


def long_prompt(client: LlamaCppClient, tag: int) -> str:
    """A user message of about PROMPT_TOKENS tokens, different for every `tag` (no cache reuse)."""
    text = f"Request {tag}. " + " ".join(
        f"Line {n}: the keeper wrote down the weather." for n in range(150)
    )
    tokens = len(client.prompt_tokens([ModelMessage(Role.USER, text)]))
    assert 1800 <= tokens <= 2200, tokens
    return text


def request(text: str, max_new_tokens: int = 64) -> pb.ModelRequest:
    return pb.ModelRequest(
        model=MODEL,
        messages=[pb.ModelMessage(role=pb.ROLE_USER, content=text)],
        sampling=pb.SamplingParams(temperature=0, max_new_tokens=max_new_tokens),
    )


async def until(client: LlamaCppClient, predicate: str) -> None:
    condition = {
        "evaluating a prompt": lambda a: a.decoding_prompt == 1,
        "idle": lambda a: a.running == 0,
    }[predicate]
    assert await asyncio.to_thread(client.activity.wait_for, condition, 60), (
        f"the model never became {predicate}"
    )


async def test_cancel_during_prompt_evaluation_stops_llama_cpp(worker: Worker) -> None:
    client = provider(worker)
    session = client.sessions[0]
    evaluated = session.stats.tokens_evaluated
    async with grpc.aio.insecure_channel(worker.address) as channel:
        call = pb_grpc.ModelWorkerStub(channel).GenerateStream(
            request(long_prompt(client, 1)), timeout=120
        )
        await until(client, "evaluating a prompt")
        call.cancel()
        await until(client, "idle")

    assert session.stats.tokens_evaluated == evaluated, (
        "llama.cpp finished evaluating a prompt nobody waits for"
    )
    await admission_reaches(admission(worker), in_flight=0, queued=0)


async def test_a_call_cancelled_while_queued_never_starts(worker: Worker) -> None:
    client = provider(worker)
    started = client.activity.started
    gate = admission(worker)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        busy = stub.GenerateStream(request(long_prompt(client, 2)), timeout=120)
        await until(client, "evaluating a prompt")
        queued = stub.GenerateStream(request("Say hi."), timeout=120)
        await admission_reaches(gate, in_flight=1, queued=1)
        queued.cancel()
        await admission_reaches(gate, in_flight=1, queued=0)
        busy.cancel()
        await until(client, "idle")

    assert client.activity.started == started + 1, "the cancelled queued call ran"
    await admission_reaches(gate, in_flight=0, queued=0)


async def test_twenty_abandoned_long_prompts_leave_the_model_free(worker: Worker) -> None:
    client = provider(worker)
    session = client.sessions[0]
    evaluated = session.stats.tokens_evaluated
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)

        async def abandoned(tag: int) -> grpc.StatusCode:
            try:
                async for _ in stub.GenerateStream(
                    request(long_prompt(client, 100 + tag)), timeout=0.5
                ):
                    pass
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(abandoned(tag) for tag in range(20)))
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
        await until(client, "idle")
        await admission_reaches(admission(worker), in_flight=0, queued=0)
        assert session.stats.tokens_evaluated == evaluated, (
            "an abandoned prompt was evaluated to its end"
        )

        short = await stub.Generate(request("Say hi.", max_new_tokens=4), timeout=60)
    assert short.usage.completion_tokens == 4
