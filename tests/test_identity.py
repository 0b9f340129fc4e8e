"""Who called, in every record, over real sockets: a controller, a worker and a gateway. A call
through the gateway is named at the worker (its access line, its metrics) by the caller the gateway
authenticated, relayed with the gateway's `relay` token; a caller's own claim to be someone else is
refused at the worker and replaced at the gateway; a relayed name is a network peer's text, held
to the tokens file's rules; and the `tenant` label stays bounded whatever names arrive."""

from __future__ import annotations

import asyncio
import logging
import random
import string
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from conftest import running_worker
from fake_upstream import load_toml_config
from fleet import Joining, registered, registered_worker, running_controller, wait_until
from modelwire.app.config import read_auth
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.client.requests import build_request
from modelwire.core.settings import (
    AuthConfig,
    AuthSection,
    ConfigError,
    GatewaySection,
    ServerConfig,
    WorkerAccess,
    parse,
)
from modelwire.fleet.remote import RemoteController
from modelwire.gateway.server import Gateway
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter
from modelwire.rpc.wire import CALLER_KEY, TENANT_KEY
from modelwire.v1 import worker_pb2_grpc as pb_grpc

GATEWAY_TOKEN = "gateway-token-0123456789abcdef"
ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"
ZOE_TOKEN = "zoe-token-0123456789abcdef"
TOKEN_ENV = "IDENTITY_GATEWAY_TOKEN"

# The fleet's tokens file, read by the worker and the gateway alike: alice and bob share team-a.
TOKENS = f"""
[[tokens]]
name = "gateway"
token = "{GATEWAY_TOKEN}"
permissions = ["generate", "relay"]

[[tokens]]
name = "alice"
token = "{ALICE_TOKEN}"
tenant = "team-a"

[[tokens]]
name = "bob"
token = "{BOB_TOKEN}"
tenant = "team-a"

[[tokens]]
name = "zoé"
token = "{ZOE_TOKEN}"
"""

WORKER = """
[server]
grace_period_s = 0

[[models]]
name = "echo"
provider = "echo"
chunk_text = "hi "
"""


def auth_from(path: Path) -> AuthConfig:
    auth = read_auth(parse(AuthSection, {"tokens_file": str(path)}, "<test>", "auth"), "<test>")
    assert auth is not None
    return auth


@dataclass
class Fleet:
    worker: Worker
    gateway: Gateway


@asynccontextmanager
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    config = replace(load_toml_config(tmp_path, WORKER), auth=auth_from(tokens))
    async with running_controller() as controller, AsyncExitStack() as stack:
        joining = Joining(controller=controller.address)
        worker = await stack.enter_async_context(registered_worker(config, joining))
        await registered(worker)
        gateway = Gateway(
            RemoteController(controller.address),
            ServerConfig(port=0, grace_period_s=0),
            GatewaySection(
                settle_s=0,
                workers=WorkerAccess(token_env=TOKEN_ENV, allow_unverified_credentials=True),
            ),
            auth=auth_from(tokens),
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 1, 10)
        yield Fleet(worker, gateway)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The model calls' access lines as the JSON log writes them (not the fleet's own calls:
    registration, health)."""
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == ACCESS_LOGGER]
    return [line for line in lines if '"method": "/modelwire.v1.ModelWorker/' in line]


def at_worker(lines: list[str]) -> list[str]:
    """The worker's lines of relayed calls (the gateway's own lines relay nothing)."""
    return [line for line in lines if '"relayed_by": "gateway"' in line]


def requests(worker: Worker, tenant: str, code: str = "OK") -> float | None:
    return worker.metrics.registry.get_sample_value(
        "modelwire_requests_total",
        {"method": "Generate", "model": "echo", "code": code, "tenant": tenant},
    )


@pytest.fixture(autouse=True)
def gateway_token(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(TOKEN_ENV, GATEWAY_TOKEN)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)


async def test_the_worker_names_the_caller_the_gateway_authenticated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with fleet(tmp_path) as f:
        async with ModelWorkerClient(f.gateway.address, token=ALICE_TOKEN) as alice:
            await alice.generate("echo", "hi")
            assert [c async for c in alice.stream("echo", "hi")]
        async with ModelWorkerClient(f.gateway.address, token=ZOE_TOKEN) as zoe:
            await zoe.generate("echo", "hi")  # a name outside ASCII travels percent-encoded
        worker_lines = at_worker(access_lines(caplog))
        assert len(worker_lines) == 3
        for line in worker_lines[:2]:
            assert '"caller": "alice", "tenant": "team-a"' in line
        assert '"caller": "zo\\u00e9", "tenant": "zo\\u00e9"' in worker_lines[2]
        assert requests(f.worker, "team-a") == 1
        assert requests(f.worker, "zoé") == 1
        assert (
            f.worker.metrics.registry.get_sample_value(
                "modelwire_requests_total",
                {"method": "GenerateStream", "model": "echo", "code": "OK", "tenant": "team-a"},
            )
            == 1
        )
        # The gateway's own line and label name the same caller; nothing counts as the gateway.
        gateway_lines = [line for line in access_lines(caplog) if line not in worker_lines]
        assert any('"caller": "alice", "tenant": "team-a"' in line for line in gateway_lines)
        assert (
            f.gateway.rpc.metrics.registry.get_sample_value(
                "modelwire_requests_total",
                {"method": "Generate", "model": "echo", "code": "OK", "tenant": "team-a"},
            )
            == 1
        )
        assert requests(f.worker, "gateway") is None


async def test_a_callers_forged_identity_is_refused_at_the_gateway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller claiming another identity at the gateway hears it (a chained gateway whose token
    lacks `relay` there would otherwise see its callers counted as itself, silently); the claim
    never reaches a worker."""
    forged = ((CALLER_KEY, "mallory"), (TENANT_KEY, "team-b"))
    async with fleet(tmp_path) as f:
        async with ModelWorkerClient(
            f.gateway.address, token=ALICE_TOKEN, metadata=forged
        ) as alice:
            with pytest.raises(ModelwireCallError) as refused:
                await alice.generate("echo", "hi")
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "token 'alice' lacks the 'relay' permission" in str(refused.value)
        lines = access_lines(caplog)
        assert at_worker(lines) == []
        (line,) = lines
        assert '"caller": "alice", "tenant": "team-a", "code": "PERMISSION_DENIED"' in line
        assert not any("mallory" in line or "team-b" in line for line in lines)


async def test_an_open_method_ignores_a_relayed_identity(tmp_path: Path) -> None:
    """Health needs no identity: a claim on it is neither believed nor refused."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    config = replace(load_toml_config(tmp_path, WORKER), auth=auth_from(tokens))
    async with running_worker(config) as worker:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=((CALLER_KEY, "mallory"),)
            )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_direct_caller_claiming_another_identity_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with fleet(tmp_path) as f:
        async with ModelWorkerClient(
            f.worker.address, token=ALICE_TOKEN, metadata=((CALLER_KEY, "mallory"),)
        ) as alice:
            with pytest.raises(ModelwireCallError) as refused:
                await alice.generate("echo", "hi")
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "token 'alice' lacks the 'relay' permission" in str(refused.value)
        # The refusal's line names who tried.
        (line,) = access_lines(caplog)
        assert '"caller": "alice", "tenant": "team-a", "code": "PERMISSION_DENIED"' in line
        assert requests(f.worker, "team-a", "PERMISSION_DENIED") == 1
        # The relay token itself, relaying no one, is itself.
        async with ModelWorkerClient(f.worker.address, token=GATEWAY_TOKEN) as relay:
            await relay.generate("echo", "hi")
        assert '"caller": "gateway", "tenant": "gateway", "code": "OK"' in access_lines(caplog)[1]
        # A token the worker does not know is no one.
        async with ModelWorkerClient(f.worker.address, token="x" * 20) as stranger:
            with pytest.raises(ModelwireCallError):
                await stranger.generate("echo", "hi")
        assert (
            '"caller": null, "tenant": null, "code": "UNAUTHENTICATED"' in (access_lines(caplog)[2])
        )
        assert requests(f.worker, "_none", "UNAUTHENTICATED") == 1


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        (((CALLER_KEY, "alice"), (CALLER_KEY, "mallory")), "is sent 2 times"),
        (((TENANT_KEY, "team-a"),), "is relayed without modelwire-caller"),
        (((CALLER_KEY, "a" * 129),), "is longer than 128 characters"),
        (((CALLER_KEY, "%C3%A9" * 129),), "is longer than 128 characters"),
        (((CALLER_KEY, "a" * 5000),), "at most the encoded length"),
        (((CALLER_KEY, "bad%0Aname"),), "unprintable"),
        (((CALLER_KEY, "%1B[31mred"),), "unprintable"),
        (((CALLER_KEY, "%FF"),), "not percent-encoded UTF-8"),
        (((CALLER_KEY, "%61lice"),), "canonical"),
        (((CALLER_KEY, "alice"), (TENANT_KEY, " team-a")), "whitespace"),
        (((CALLER_KEY, ""),), "is empty"),
        (((CALLER_KEY, "alice"), (TENANT_KEY, "_none")), "outside every tenant"),
        (((CALLER_KEY, "_other"),), "outside every tenant"),
    ],
)
async def test_a_relayed_identity_is_a_name_or_refused(
    tmp_path: Path, metadata: tuple[tuple[str, str], ...], problem: str
) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    config = replace(load_toml_config(tmp_path, WORKER), auth=auth_from(tokens))
    async with (
        running_worker(config) as worker,
        ModelWorkerClient(worker.address, token=GATEWAY_TOKEN, metadata=metadata) as relay,
    ):
        with pytest.raises(ModelwireCallError) as refused:
            await relay.generate("echo", "hi")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in str(refused.value)


async def test_a_worker_without_auth_believes_no_relayed_identity(tmp_path: Path) -> None:
    async with (
        running_worker(load_toml_config(tmp_path, WORKER)) as worker,
        ModelWorkerClient(worker.address, metadata=((CALLER_KEY, "mallory"),)) as anyone,
    ):
        with pytest.raises(ModelwireCallError) as refused:
            await anyone.generate("echo", "hi")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "no [auth]" in str(refused.value)


async def test_a_thousand_random_names_leave_the_tenant_label_bounded(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS, encoding="utf-8")
    config = replace(load_toml_config(tmp_path, WORKER), auth=auth_from(tokens))
    rng = random.Random(24)

    def name() -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits + "-_.", k=12))

    request = build_request("echo", "hi")
    async with (
        running_worker(config) as worker,
        grpc.aio.insecure_channel(worker.address) as channel,
    ):
        generate = pb_grpc.ModelWorkerStub(channel).Generate

        async def relayed(caller: str, tenant: str) -> None:
            metadata = (
                ("authorization", f"Bearer {GATEWAY_TOKEN}"),
                (CALLER_KEY, caller),
                (TENANT_KEY, tenant),
            )
            await generate(request, metadata=metadata, timeout=30)

        async def stranger(token: str) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await generate(request, metadata=(("authorization", f"Bearer {token}"),))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        for start in range(0, 1000, 100):
            await asyncio.gather(*(relayed(name(), name()) for _ in range(start, start + 100)))
            await asyncio.gather(*(stranger(name() * 2) for _ in range(start, start + 100)))
        labels = {
            sample.labels["tenant"]
            for metric in worker.metrics.registry.collect()
            for sample in metric.samples
            if "tenant" in sample.labels
        }
        assert (
            worker.metrics.registry.get_sample_value(
                "modelwire_requests_total",
                {"method": "Generate", "model": "echo", "code": "OK", "tenant": "_other"},
            )
            == 1000
        )
    # Every relayed tenant unknown here is one label, every stranger another.
    assert labels == {"_other", "_none"}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('name = "a\\u0007b"', "tokens[0].name: has a control or other unprintable character"),
        ('name = "alice"\ntenant = "_other"', "tenant '_other' is the metrics label"),
        ('name = "_none"', "tenant '_none' is the metrics label"),
        (f'name = "{"n" * 129}"', "tokens[0].name: is longer than 128 characters"),
        ('name = "alice"\ntenant = ""', "tokens[0].tenant: is empty"),
        (
            'name = "bob"\ntoken = "' + "b" * 20 + '"\n[[tokens]]\nname = "alice"\ntenant = "bob"',
            "token 'bob' has no tenant, and its name is the tenant of token 'alice'",
        ),
    ],
)
def test_a_tokens_file_names_callers_and_tenants_a_log_can_show(
    tmp_path: Path, entry: str, problem: str
) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\n{entry}\ntoken = "{ALICE_TOKEN}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        auth_from(tokens)
    assert problem in str(refused.value)
