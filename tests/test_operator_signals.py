"""What operators read: an upstream 429 has an error kind of its own; a watch its client ends is no
failed call; a taken port and a refused TLS handshake say what to change; gRPC core's own lines
stay out of the JSON log; the operations guide lists every error kind and permission as the code
has them."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli_process import PIPE, first_line, run_cli, start_cli
from conftest import free_port, running_worker
from fake_upstream import Exchange, Responder, fake_upstream, load_toml_config
from modelwire.client import ModelwireCallError, ModelWorkerClient, tls_credentials
from modelwire.core import errors
from modelwire.observe.call_observer import SUBSCRIPTIONS
from modelwire.observe.logs import ACCESS_LOGGER
from modelwire.rpc.status import error_kind
from modelwire.v1 import worker_pb2

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
ECHO = '[[models]]\nname = "echo"\nprovider = "echo"\n'
WATCH = "/grpc.health.v1.Health/Watch"


async def rate_limited(exchange: Exchange, respond: Responder) -> None:
    await respond.json(
        429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, {"Retry-After": "3"}
    )


async def test_an_upstream_429_is_counted_and_logged_as_upstream_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with fake_upstream() as fake:
        config = load_toml_config(
            tmp_path,
            f"""
[[models]]
name = "remote"
provider = "openai"
api_base = "{fake.url}/v1"
context_length = 4096
max_retries = 0
""",
        )
        fake.script(rate_limited)
        async with running_worker(config) as worker:
            async with ModelWorkerClient(worker.address) as client:
                with pytest.raises(ModelwireCallError) as raised:
                    await client.generate("remote", "hi")

    assert (
        raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and raised.value.retry_after_s == 3.0
    )
    registry = worker.metrics.registry
    assert (
        registry.get_sample_value(
            "modelwire_errors_total",
            {"model": "remote", "kind": "upstream_rate_limited", "tenant": "_none"},
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "modelwire_errors_total", {"model": "remote", "kind": "overloaded", "tenant": "_none"}
        )
        is None
    )
    (line,) = [record for record in caplog.records if record.name == ACCESS_LOGGER]
    assert (
        line.__dict__["error"] == "upstream_rate_limited"
        and line.__dict__["code"] == "RESOURCE_EXHAUSTED"
    )


async def test_a_watch_its_client_cancels_is_neither_an_access_line_nor_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS_LOGGER)
    async with running_worker(load_toml_config(tmp_path, ECHO)) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            # A call after the cancel, on the same connection: its line follows the Watch's end.
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
    # Draining the worker ended every call: the Watch's record is complete.

    watch_lines = [
        r for r in caplog.records if r.name == ACCESS_LOGGER and r.__dict__.get("method") == WATCH
    ]
    assert [(r.levelno, r.__dict__["code"]) for r in watch_lines] == [(logging.DEBUG, "CANCELLED")]
    samples = [
        sample
        for metric in worker.metrics.registry.collect()
        for sample in metric.samples
        if sample.labels.get("method") == "Watch"
    ]
    assert samples == []
    assert (
        worker.metrics.registry.get_sample_value(
            "modelwire_requests_total",
            {"method": "Check", "model": "_unknown", "code": "OK", "tenant": "_none"},
        )
        == 1
    )


def test_subscriptions_name_real_methods() -> None:
    from modelwire.v1 import controller_pb2

    names = {
        f"/{service.full_name}/{method.name}"
        for descriptor in (health_pb2.DESCRIPTOR, controller_pb2.DESCRIPTOR)
        for service in descriptor.services_by_name.values()
        for method in service.methods
        if method.server_streaming
    }
    assert SUBSCRIPTIONS <= names


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, timeout=60)


def test_a_taken_port_says_it_is_in_use_and_which_option_changes_it(tmp_path: Path) -> None:
    (tmp_path / "modelwire.toml").write_text(ECHO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--config", str(tmp_path / "modelwire.toml"), "--port", str(port))

    assert result.returncode == 1
    assert (
        f"the worker cannot listen on 127.0.0.1:{port}: "
        f"port {port} is already in use on 127.0.0.1; "
        "choose another with --port (or [server] port)"
    ) in result.stderr
    assert not re.search(r"^[IWE]\d{4} ", result.stderr, re.MULTILINE), result.stderr


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [str(ROOT / "scripts" / "make_certs.sh"), str(directory)], check=True, capture_output=True
    )
    return directory


async def test_refused_tls_handshakes_get_a_hint_and_the_worker_log_stays_json(
    certs: Path, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = tmp_path / "modelwire.toml"
    config.write_text(
        f'[server]\nport = {port}\ngrace_period_s = 1\n[tls]\ncert_file = "{certs}/server.pem"\n'
        f'key_file = "{certs}/server.key"\nclient_ca_file = "{certs}/ca.pem"\n{ECHO}'
    )
    worker = await start_cli("serve", "--config", str(config), stderr=PIPE)
    try:
        assert worker.stderr is not None
        assert "modelwire serving echo" in await first_line(worker, 60)

        plaintext = await asyncio.to_thread(cli, "models", "--address", address, "--timeout", "10")
        no_certificate = await asyncio.to_thread(
            cli, "models", "--address", address, "--ca-file", str(certs / "ca.pem")
        )
        async with ModelWorkerClient(address, timeout=10) as client:
            with pytest.raises(ModelwireCallError) as from_python:
                await client.list_models()
        secure = tls_credentials(
            str(certs / "ca.pem"), str(certs / "client.pem"), str(certs / "client.key")
        )
        async with ModelWorkerClient(address, timeout=10, credentials=secure) as client:
            assert [model.model for model in await client.list_models()] == ["echo"]

        worker.send_signal(signal.SIGTERM)
        log = (await worker.stderr.read()).decode()
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    assert plaintext.returncode == 1
    assert "modelwire: is the server using TLS? pass --ca-file CA.pem" in plaintext.stderr
    assert no_certificate.returncode == 1
    assert (
        "modelwire: the server may require a client certificate (mTLS): "
        "pass --cert-file and --key-file" in no_certificate.stderr
    )
    assert "pass credentials=tls_credentials(ca_file)" in str(from_python.value)
    lines = log.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), log


def _documented(row_start: str) -> set[str]:
    (row,) = [line for line in OPERATIONS.read_text().splitlines() if line.startswith(row_start)]
    return set(re.findall(r"`([a-z_]+)`", row.split("|")[-2]))


def _kinds(kind: type[errors.ModelwireError]) -> set[str]:
    own = {error_kind(kind.__new__(kind))} if kind.__module__ == errors.__name__ else set()
    return own.union(*(_kinds(sub) for sub in kind.__subclasses__()))


def test_the_operations_guide_lists_every_error_kind() -> None:
    kinds = _kinds(errors.ModelwireError) - {"modelwire_error"} | {"internal", "deadline_exceeded"}
    assert _documented("| `modelwire_errors_total`") == kinds


def test_the_permission_table_names_every_model_worker_method() -> None:
    methods = {
        method.name for method in worker_pb2.DESCRIPTOR.services_by_name["ModelWorker"].methods
    }
    (row,) = [
        line for line in OPERATIONS.read_text().splitlines() if line.startswith("| `generate` |")
    ]
    assert methods <= set(re.findall(r"\b([A-Z][A-Za-z]+)\b", row.split("|")[2]))


def test_the_operations_guide_runs_the_installed_cli_with_bounded_generations() -> None:
    commands = [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", OPERATIONS.read_text(), re.DOTALL)
        for line in block.splitlines()
        if "modelwire " in line and not line.strip().startswith("#")
    ]
    assert commands
    assert [c for c in commands if re.match(r"modelwire ", c)] == [], (
        "not on PATH: use .venv/bin/modelwire"
    )
    assert [c for c in commands if " generate " in c and "--max-new-tokens" not in c] == []
