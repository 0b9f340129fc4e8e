"""Operating a worker: metrics, tracing, call logs, auth, TLS, message limits — over real
sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import WorkerFactory
from fake_upstream import fake_upstream, load_toml_config
from modelwire.app.config import load_config
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter
from modelwire.observe.metrics import serve_metrics
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

pytestmark = pytest.mark.usefixtures("blocking_provider")

ROOT = Path(__file__).resolve().parent.parent
TWO_MODELS = """
[[models]]
name = "slow"
provider = "blocking-test"
tokens = 4

[[models]]
name = "other"
provider = "blocking-test"
tokens = 2
"""


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "modelwire.toml"
    path.write_text(f"[server]\ngrace_period_s = 1\nprocesses = 1\n{extra}\n{TWO_MODELS}")
    return path


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelwire_")
    }


async def scrape_after(port: int, calls: int, timeout_s: float = 5.0) -> dict[str, float]:
    """The metrics once `calls` calls are counted: a call is counted after its status left, so a
    caller can see an error before the server has recorded it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        metrics = await asyncio.to_thread(scrape, port)
        counted = sum(
            value for key, value in metrics.items() if key.startswith("modelwire_requests_total{")
        )
        if counted >= calls or asyncio.get_running_loop().time() > deadline:
            return metrics
        await asyncio.sleep(0.01)


async def test_metrics_show_exactly_the_traffic_sent(
    tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    async with worker_factory(load_config(config_file(tmp_path))) as worker:
        port = serve_metrics(worker.metrics, "127.0.0.1", 0)
        async with ModelWorkerClient(worker.address) as client:
            for _ in range(3):
                await client.generate("slow", "hi")
            gaps = 0  # between the messages of a stream: their count depends on coalescing
            for _ in range(2):
                chunks = [chunk async for chunk in client.stream("slow", "hi")]
                assert "".join(chunk.text for chunk in chunks) == "w0 w1 w2 w3 "
                gaps += len(chunks) - 1
            with pytest.raises(ModelwireCallError):
                await client.generate("missing", "hi")
            with pytest.raises(ModelwireCallError):
                await client.generate("other", "hi", temperature=9)
        metrics = await scrape_after(port, calls=7)

    assert (
        metrics['modelwire_requests_total{code="OK",method="Generate",model="slow",tenant="_none"}']
        == 3
    )
    assert (
        metrics[
            'modelwire_requests_total{code="OK",method="GenerateStream",'
            'model="slow",tenant="_none"}'
        ]
        == 2
    )
    assert (
        metrics[
            'modelwire_requests_total{code="NOT_FOUND",method="Generate",'
            'model="_unknown",tenant="_none"}'
        ]
        == 1
    )
    assert (
        metrics[
            'modelwire_requests_total{code="INVALID_ARGUMENT",method="Generate",'
            'model="other",tenant="_none"}'
        ]
        == 1
    )
    assert (
        metrics['modelwire_errors_total{kind="model_not_found",model="_unknown",tenant="_none"}']
        == 1
    )
    assert (
        metrics['modelwire_errors_total{kind="invalid_request",model="other",tenant="_none"}'] == 1
    )
    assert metrics['modelwire_request_duration_seconds_count{method="Generate",model="slow"}'] == 3
    assert metrics['modelwire_time_to_first_token_seconds_count{model="slow"}'] == 2
    assert metrics['modelwire_inter_token_latency_seconds_count{model="slow"}'] == gaps
    assert metrics['modelwire_completion_tokens_total{model="slow",tenant="_none"}'] == 5 * 4
    assert metrics['modelwire_prompt_tokens_total{model="slow",tenant="_none"}'] == 5 * 1
    assert metrics['modelwire_in_flight{model="slow"}'] == 0
    assert metrics['modelwire_queued{model="slow"}'] == 0


async def test_in_flight_gauge_counts_a_running_stream(
    tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    # Its next token a second after the first: a stream of instant tokens may be over (read
    # ahead to its end, core/coalesce.py) by the time its first message is read.
    held = (
        '[[models]]\nname = "held"\nprovider = "blocking-test"\ntokens = 3\ntoken_delay_s = 1.0\n'
    )
    async with worker_factory(load_config(config_file(tmp_path, held))) as worker:
        port = serve_metrics(worker.metrics, "127.0.0.1", 0)
        async with ModelWorkerClient(worker.address) as client:
            stream = client.stream("held", "hi")
            await anext(stream)
            assert scrape(port)['modelwire_in_flight{model="held"}'] == 1
            await stream.aclose()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The process-wide tracer provider, exporting to memory (set once: OpenTelemetry allows no
    reset)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # another test module may have set it already
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_trace_has_the_upstream_span_as_child_of_the_server_span(
    tmp_path: Path, worker_factory: WorkerFactory, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    async with worker_factory(
        load_config(config_file(tmp_path, "[observability]\ntracing = true\n"))
    ) as worker:
        async with ModelWorkerClient(worker.address) as client:
            await client.generate("slow", "hi")
    finished = spans.get_finished_spans()
    server = [s for s in finished if s.name == "/modelwire.v1.ModelWorker/Generate"]
    upstream = [s for s in finished if s.name == "upstream blocking-test"]

    assert len(server) == 1 and len(upstream) == 1
    assert server[0].kind == trace.SpanKind.SERVER and upstream[0].kind == trace.SpanKind.CLIENT
    assert (
        upstream[0].parent is not None and upstream[0].parent.span_id == server[0].context.span_id
    )
    assert upstream[0].context.trace_id == server[0].context.trace_id
    assert (
        upstream[0].attributes is not None and upstream[0].attributes["modelwire.model"] == "slow"
    )


async def test_http_provider_forwards_the_upstream_spans_traceparent(
    tmp_path: Path, worker_factory: WorkerFactory, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    async with fake_upstream() as upstream:
        config = f"""
[server]
processes = 1
[observability]
tracing = true
[[models]]
name = "remote"
provider = "openai"
api_base = "{upstream.url}/v1"
context_length = 4096
"""
        async with worker_factory(load_toml_config(tmp_path, config)) as worker:
            async with ModelWorkerClient(worker.address) as client:
                await client.generate("remote", "hi")
        (exchange,) = await upstream.wait_for_requests(1)
    (upstream_span,) = [s for s in spans.get_finished_spans() if s.name == "upstream openai"]
    version, trace_id, span_id, flags = exchange.headers["traceparent"].split("-")
    assert int(trace_id, 16) == upstream_span.context.trace_id
    assert int(span_id, 16) == upstream_span.context.span_id


async def test_one_json_call_line_with_the_request_id_and_no_prompt_text(
    tmp_path: Path, worker_factory: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    secret_prompt = "PROMPT-MARKER-7f3a"
    caplog.set_level(logging.DEBUG)
    async with worker_factory(load_config(config_file(tmp_path))) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            request = pb.ModelRequest(
                model="slow", messages=[pb.ModelMessage(role=pb.ROLE_USER, content=secret_prompt)]
            )
            call = stub.Generate(request, metadata=(("x-request-id", "req-given-1"),))
            await call
            given_trailer = dict(await call.trailing_metadata())
            call = stub.Generate(request)
            await call
            generated_trailer = dict(await call.trailing_metadata())

    lines = [
        json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == ACCESS_LOGGER
    ]
    assert [line["request_id"] for line in lines] == [
        "req-given-1",
        generated_trailer["x-request-id"],
    ]
    assert given_trailer["x-request-id"] == "req-given-1"
    assert re.fullmatch(r"[0-9a-f]{32}", generated_trailer["x-request-id"])
    assert (
        lines[0]["method"] == "/modelwire.v1.ModelWorker/Generate" and lines[0]["model"] == "slow"
    )
    assert (
        lines[0]["code"] == "OK"
        and lines[0]["completion_tokens"] == 4
        and lines[0]["latency_ms"] > 0
    )
    rendered = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert secret_prompt not in rendered


async def test_request_id_survives_an_error_status(
    tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    async with worker_factory(load_config(config_file(tmp_path))) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            call = pb_grpc.ModelWorkerStub(channel).Generate(
                pb.ModelRequest(model="nope"), metadata=(("x-request-id", "req-err"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
    trailer = dict(raised.value.trailing_metadata() or ())
    assert trailer["x-request-id"] == "req-err"
    assert "grpc-status-details-bin" in trailer


TOKENS = """
[[tokens]]
name = "ops"
token = "tok-all-models-0001"

[[tokens]]
name = "team-a"
token = "tok-only-slow-0002"
models = ["slow"]
"""


@pytest.fixture
async def auth_worker(tmp_path: Path, worker_factory: WorkerFactory) -> AsyncIterator[Worker]:
    (tmp_path / "tokens.toml").write_text(TOKENS)
    async with worker_factory(
        load_config(config_file(tmp_path, '[auth]\ntokens_file = "tokens.toml"\n'))
    ) as worker:
        yield worker


async def call_with(address: str, token: str | None, model: str = "slow") -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)
        request = pb.ModelRequest(
            model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
        )
        try:
            await stub.Generate(request, metadata=metadata, timeout=10)
            chunks = [c async for c in stub.GenerateStream(request, metadata=metadata, timeout=10)]
            assert chunks
        except grpc.aio.AioRpcError as error:
            assert "tok-" not in (error.details() or "")
            return error.code()
    return grpc.StatusCode.OK


async def test_auth_refuses_missing_and_wrong_tokens_and_enforces_allow_lists(
    auth_worker: Worker,
) -> None:
    address = auth_worker.address
    assert await call_with(address, None) == grpc.StatusCode.UNAUTHENTICATED
    assert await call_with(address, "tok-all-models-0000") == grpc.StatusCode.UNAUTHENTICATED
    assert await call_with(address, "tok-all-models-0001") == grpc.StatusCode.OK
    assert await call_with(address, "tok-all-models-0001", model="other") == grpc.StatusCode.OK
    assert await call_with(address, "tok-only-slow-0002") == grpc.StatusCode.OK
    assert (
        await call_with(address, "tok-only-slow-0002", model="other")
        == grpc.StatusCode.PERMISSION_DENIED
    )


async def test_health_stays_open_under_auth_unless_protected(
    auth_worker: Worker, tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    async with grpc.aio.insecure_channel(auth_worker.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING

    extra = '[auth]\ntokens_file = "tokens.toml"\nprotect_health = true\n'
    async with worker_factory(load_config(config_file(tmp_path, extra))) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(directory)], check=True, capture_output=True
    )
    return directory


async def tls_call(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (
        grpc.aio.secure_channel(address, credentials)
        if credentials
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            await pb_grpc.ModelWorkerStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_tls_and_mtls(certs: Path, tmp_path: Path, worker_factory: WorkerFactory) -> None:
    ca = (certs / "ca.pem").read_bytes()
    server_only = grpc.ssl_channel_credentials(root_certificates=ca)
    with_client_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(certs / "client.key").read_bytes(),
        certificate_chain=(certs / "client.pem").read_bytes(),
    )
    tls = f'[tls]\ncert_file = "{certs}/server.pem"\nkey_file = "{certs}/server.key"\n'
    async with worker_factory(load_config(config_file(tmp_path, tls))) as worker:
        assert await tls_call(worker.address, None) == grpc.StatusCode.UNAVAILABLE
        assert await tls_call(worker.address, server_only) == grpc.StatusCode.OK

    mtls = tls + f'client_ca_file = "{certs}/ca.pem"\n'
    async with worker_factory(load_config(config_file(tmp_path, mtls))) as worker:
        assert await tls_call(worker.address, None) == grpc.StatusCode.UNAVAILABLE
        assert await tls_call(worker.address, server_only) == grpc.StatusCode.UNAVAILABLE
        assert await tls_call(worker.address, with_client_cert) == grpc.StatusCode.OK


async def test_oversized_request_is_refused_and_the_next_is_served(
    tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    async with worker_factory(load_config(config_file(tmp_path))) as worker:
        async with ModelWorkerClient(worker.address) as client:
            with pytest.raises(ModelwireCallError) as raised:
                await client.generate("slow", "x" * (10 * 1024 * 1024))
            assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (
                await asyncio.wait_for(client.generate("slow", "hi"), 10)
            ).text == "w0 w1 w2 w3 "
