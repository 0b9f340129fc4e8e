"""Access lines may be sampled (`[observability] access_log_sample_rate`): every refused, failed
or slow call is logged, successful fast calls at the rate, and metrics count every call."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import openai
import pytest
from prometheus_client import CollectorRegistry

from conftest import free_port, running_worker
from facade_clients import openai_client
from fake_upstream import load_toml_config
from modelwire.app.server import Worker
from modelwire.observe.call_record import CallRecord, begin_call
from modelwire.observe.logs import ACCESS_LOGGER, AccessSampling
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc


def _record(code: str = "OK", waited_s: float = 0.0, streamed: bool = False) -> CallRecord:
    record = begin_call("/modelwire.v1.ModelWorker/Generate", None)
    record.code = code
    record.started = time.perf_counter() - waited_s - (5.0 if streamed else 0.0)
    if streamed:  # its first message came `waited_s` after it began; the stream went on after
        record.first_chunk_at = record.started + waited_s
    return record


def test_every_call_is_logged_by_default() -> None:
    never = AccessSampling(draw=lambda: 1.0)
    assert never.verdict(_record()) == 1.0


def test_refused_failed_and_slow_calls_are_always_logged() -> None:
    sampling = AccessSampling(rate=0.0, slow_s=1.0, draw=lambda: 0.999)
    assert sampling.verdict(_record()) is None
    for code in ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "CANCELLED"):
        assert sampling.verdict(_record(code)) == 1.0
    assert sampling.verdict(_record(waited_s=1.5)) == 1.0
    # A stream is slow by its first message, not by how long it then streamed.
    assert sampling.verdict(_record(waited_s=0.2, streamed=True)) is None
    assert sampling.verdict(_record(waited_s=1.2, streamed=True)) == 1.0


def test_successful_calls_are_kept_at_the_rate() -> None:
    draw = random.Random(7).random
    sampling = AccessSampling(rate=0.25, slow_s=60.0, draw=draw)
    verdicts = [sampling.verdict(_record()) for _ in range(10_000)]
    kept = [verdict for verdict in verdicts if verdict is not None]
    assert abs(len(kept) - 2_500) <= 150  # ± 3 binomial standard deviations (43)
    assert set(kept) == {0.25}  # a drawn line says its rate


def _config_text(port: int, rate: float, slow_s: float) -> str:
    return f"""
[server]
grace_period_s = 1.0

[observability]
access_log_sample_rate = {rate}
access_log_slow_s = {slow_s}

[http]
port = {port}

[[models]]
name = "echo"
provider = "echo"
"""


@pytest.fixture
async def sampled_worker(tmp_path: Path) -> AsyncIterator[Worker]:
    """A worker that logs no successful fast call."""
    config = load_toml_config(tmp_path, _config_text(free_port(), 0.0, 60.0))
    async with running_worker(config) as worker:
        yield worker


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS_LOGGER]


def _requests(registry: CollectorRegistry) -> float:
    total = 0.0
    for metric in registry.collect():
        if metric.name == "modelwire_requests":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def test_a_worker_logs_only_what_fails_and_counts_every_call(
    sampled_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    request = pb.ModelRequest(
        model="echo", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
    )
    async with grpc.aio.insecure_channel(sampled_worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        for _ in range(20):
            await stub.Generate(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Generate(
                pb.ModelRequest(model="nobody", messages=request.messages), timeout=10
            )
    assert sampled_worker.facade is not None
    client = openai_client(sampled_worker.facade.port, "unused-key-0123456789")
    await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="nobody", messages=[{"role": "user", "content": "hi"}]
        )

    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    lines = _lines(caplog)
    assert sorted(line.code for line in lines) == ["NOT_FOUND", "NOT_FOUND"]
    # Metrics are never sampled: every call of both doors is counted.
    assert _requests(sampled_worker.metrics.registry) == 23


async def test_a_slow_successful_call_is_always_logged_and_not_marked_sampled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    config = load_toml_config(tmp_path, _config_text(free_port(), 0.5, 1e-6))
    async with (
        running_worker(config) as worker,
        grpc.aio.insecure_channel(worker.address) as channel,
    ):
        request = pb.ModelRequest(
            model="echo", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
        )
        for _ in range(5):
            await pb_grpc.ModelWorkerStub(channel).Generate(request, timeout=10)

    lines = _lines(caplog)
    assert len(lines) == 5  # every call is slower than a microsecond
    # Written whatever the rate: scaling these lines by 1/rate would count each call twice.
    assert not any(hasattr(line, "sampled") for line in lines)
