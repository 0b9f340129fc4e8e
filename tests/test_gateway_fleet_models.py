"""A gateway's HTTP facade backend (gateway/fleet_models.py) over real sockets: a controller, an
echo worker (plus an embedding model on the scripted upstream) registered with it, and a gateway.
Every call goes through the gateway's own forwarding, as a gRPC call would: the answers come back
as domain types, a worker's refusal as the typed error it was sent for, the worker's rate limits
reach `started` before the first chunk, a refused connection is retried on another instance, and a
caller that leaves cancels the worker's call (asserted on the worker's admission, not on timing)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from conftest import admission_reaches, free_port, running_worker
from fake_upstream import Exchange, FakeUpstream, Responder, load_toml_config
from fleet import running_controller, running_gateway, wait_until
from modelwire.app.server import Worker
from modelwire.controller.server import ControllerServer
from modelwire.core import errors
from modelwire.core.settings import (
    AuthConfig,
    GatewaySection,
    ServerConfig,
    TokenGrant,
    WorkerAccess,
)
from modelwire.core.types import (
    EmbedRequest,
    ModelMessage,
    ModelOutput,
    ModelRequest,
    ResponseHeaders,
    Role,
    SamplingParams,
)
from modelwire.fleet.remote import RemoteController
from modelwire.fleet.types import InstanceModel, InstanceSpec
from modelwire.gateway.fleet_models import FleetModels
from modelwire.gateway.server import Gateway
from modelwire.rpc.auth import BearerAuth, model_calls
from modelwire.rpc.status import PeerError, received_error, received_status, to_status
from modelwire.worker.admission import Admission
from openai_wire import embeddings

WORKER_TOML = """
[server]
grace_period_s = 0

[[models]]
name = "echo"
provider = "echo"
chunks = 3
chunk_text = "hi "

[[models]]
name = "slow"
provider = "echo"
chunks = 1000000
chunk_interval_s = 0.01

[[models]]
name = "limited"
provider = "echo"

[[models]]
name = "emb"
provider = "openai"
api_base = "{url}/v1"
upstream_model = "text-embedding-3-small"
context_length = 8191
max_retries = 0
capabilities = ["embeddings"]

[[quota.rules]]
tenant = "all"
model = "echo"
requests_per_minute = 100000

[[quota.rules]]
tenant = "all"
model = "limited"
requests_per_minute = 1
"""
MODELS = ("echo", "emb", "limited", "slow")
ALICE_TOKEN = "fleet-models-alice-token-0123456789"


@dataclass
class Fleet:
    controller: ControllerServer
    worker: Worker
    gateway: Gateway
    models: FleetModels

    def admission(self, model: str) -> Admission:
        return next(m.admission for m in self.worker.models if m.metadata.model == model)


async def answer_embeddings(exchange: Exchange, respond: Responder) -> None:
    await respond.json(200, embeddings([[0.5, 0.25]] * len(exchange.json()["input"])))


async def registered_at(controller: ControllerServer, instance_id: str, worker: Worker) -> None:
    await controller.registry.register(
        InstanceSpec(
            instance_id,
            worker.address,
            tuple(InstanceModel(m.metadata.model) for m in worker.models),
        )
    )


@pytest.fixture(scope="module")
async def fleet(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    fake.default = answer_embeddings
    config = load_toml_config(
        tmp_path_factory.mktemp("fleet-models"), WORKER_TOML.format(url=fake.url)
    )
    async with AsyncExitStack() as stack:
        controller = await stack.enter_async_context(running_controller(ttl_s=60))
        worker = await stack.enter_async_context(running_worker(config))
        await registered_at(controller, "w-0", worker)
        gateway = await stack.enter_async_context(running_gateway(controller.address))
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 1, 5)
        yield Fleet(controller, worker, gateway, FleetModels(gateway))


def ask(model: str, temperature: float | None = None) -> ModelRequest:
    return ModelRequest(
        model=model,
        messages=(ModelMessage(Role.USER, "hello"),),
        sampling=SamplingParams(temperature=temperature),
    )


class Started:
    """A `started` callback that records what it was told, in order with the chunks."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ResponseHeaders | ModelOutput]] = []

    async def __call__(self, headers: ResponseHeaders) -> None:
        self.events.append(("started", headers))

    @property
    def headers(self) -> dict[str, str]:
        told = [event for kind, event in self.events if kind == "started"]
        assert len(told) == 1, f"started was called {len(told)} times"
        assert isinstance(told[0], tuple)
        return dict(told[0])


def admit(grant: TokenGrant) -> None:
    """What the facade's key check does for a valid key (BearerAuth.admit): the grant and the
    identity of the caller, in the context variables the gRPC edge sets, for the rest of this test's
    task."""
    BearerAuth(AuthConfig(grants=(grant,)), model_calls).admit(grant.token, "generate")


async def test_every_call_reaches_the_fleet_and_comes_back_in_domain_types(fleet: Fleet) -> None:
    models = fleet.models
    started = Started()
    output = await models.generate(ask("echo"), started, None)
    assert output.text == "hi hi hi "
    assert output.finish_reason is not None and output.usage is not None
    assert output.usage.completion_tokens > 0

    chunks = [chunk async for chunk in models.generate_stream(ask("echo"), Started(), None)]
    assert "".join(chunk.text for chunk in chunks) == "hi hi hi "
    assert chunks[-1].finish_reason is not None

    vectors = await models.embed(EmbedRequest("emb", ("a", "b")), Started(), None)
    assert vectors.vectors == ((0.5, 0.25), (0.5, 0.25))
    assert vectors.usage.prompt_tokens == 8

    count = await models.count_token("echo", (ModelMessage(Role.USER, "one two three"),))
    assert count.count > 0 and count.tokenizer

    listed = await models.list_models()
    assert [m.model for m in listed] == list(MODELS)
    assert listed[0].provider == "echo" and listed[0].context_length > 0


async def test_a_workers_refusal_arrives_as_the_typed_error_it_was_sent_for(
    fleet: Fleet,
) -> None:
    started = Started()
    with pytest.raises(errors.InvalidRequest) as refused:
        await fleet.models.generate(ask("echo", temperature=5.0), started, None)
    assert "sampling.temperature" in [v.field for v in refused.value.violations]
    with pytest.raises(errors.InvalidRequest) as refused:
        await anext(fleet.models.generate_stream(ask("echo", temperature=5.0), started, None))
    assert "sampling.temperature" in [v.field for v in refused.value.violations]
    assert started.events == [], "a refused call never began"

    with pytest.raises(errors.ModelNotFound) as missing:  # the gateway's own refusal
        await fleet.models.generate(ask("nope"), started, None)
    assert "echo" in missing.value.served


async def test_a_quota_refusal_arrives_as_quota_exceeded_with_its_retry(fleet: Fleet) -> None:
    """One request a minute: the second call (or, across a minute's turn, the third) is refused."""
    with pytest.raises(errors.QuotaExceeded) as refused:
        for _ in range(3):
            await fleet.models.generate(ask("limited"), Started(), None)
    error = refused.value
    assert error.retry_after_s is not None and 0 < error.retry_after_s <= 60
    assert error.violations == [
        errors.QuotaViolation(
            rule=1, tenant="all", model="limited", limit_name="requests_per_minute", limit=1
        )
    ]


async def test_the_callers_allow_list_refuses_before_any_worker_is_called(fleet: Fleet) -> None:
    alice = TokenGrant(name="alice", token=ALICE_TOKEN, models=frozenset({"echo"}))
    started = Started()
    admit(alice)
    with pytest.raises(errors.PermissionDenied, match="token 'alice' may not use model 'slow'"):
        await fleet.models.generate(ask("slow"), started, None)
    with pytest.raises(errors.PermissionDenied):
        await anext(fleet.models.generate_stream(ask("slow"), started, None))
    with pytest.raises(errors.PermissionDenied):
        await fleet.models.count_token("slow", (ModelMessage(Role.USER, "hi"),))
    listed = [m.model for m in await fleet.models.list_models()]
    assert started.events == []
    assert fleet.admission("slow").in_flight == 0
    assert listed == ["echo"]


async def test_started_hears_the_workers_rate_limits_before_the_first_chunk(fleet: Fleet) -> None:
    started = Started()
    async for chunk in fleet.models.generate_stream(ask("echo"), started, None):
        started.events.append(("chunk", chunk))
    assert started.events[0][0] == "started", started.events
    headers = started.headers
    assert headers["x-ratelimit-limit-requests"] == "100000"
    assert int(headers["x-ratelimit-remaining-requests"]) < 100000
    assert all(name.startswith("x-ratelimit-") for name in headers), headers

    unary = Started()
    await fleet.models.generate(ask("echo"), unary, None)
    assert unary.headers["x-ratelimit-limit-requests"] == "100000"


async def test_leaving_a_stream_cancels_the_workers_call(fleet: Fleet) -> None:
    admission = fleet.admission("slow")
    stream = fleet.models.generate_stream(ask("slow"), Started(), None)
    await anext(stream)
    assert admission.in_flight == 1
    await stream.aclose()
    await admission_reaches(admission, 0, 0)


async def test_cancelling_a_unary_call_cancels_the_workers_call(fleet: Fleet) -> None:
    admission = fleet.admission("slow")
    call = asyncio.create_task(fleet.models.generate(ask("slow"), Started(), None))
    await admission_reaches(admission, 1, 0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await admission_reaches(admission, 0, 0)


async def test_a_refused_connection_is_retried_on_another_worker(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Without health probes (which would mark it down first), the instance where nothing
    listens gets its turn, and the call goes on to the worker."""
    async with running_controller(ttl_s=60, probe_health=False) as controller:
        await controller.registry.register(
            InstanceSpec("refusing", f"127.0.0.1:{free_port()}", (InstanceModel("echo"),))
        )
        await registered_at(controller, "w-0", fleet.worker)
        async with running_gateway(controller.address, probe_health=False) as gateway:
            await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 2, 5)
            models = FleetModels(gateway)
            with caplog.at_level(logging.INFO, logger="modelwire.gateway"):
                texts = [
                    (await models.generate(ask("echo"), Started(), None)).text for _ in range(6)
                ]
    assert texts == ["hi hi hi "] * 6
    assert "instance refusing did not take the call" in caplog.text


async def test_the_callers_token_goes_on_when_the_gateway_forwards_authorization(
    tmp_path: Path,
) -> None:
    """A worker with [auth] that knows alice's token: through a gateway that forwards callers'
    credentials, the facade's caller is authenticated by the worker itself."""
    alice = TokenGrant(name="alice", token=ALICE_TOKEN)
    config = load_toml_config(
        tmp_path, '[server]\ngrace_period_s = 0\n\n[[models]]\nname = "echo"\nprovider = "echo"\n'
    )
    config = replace(config, auth=AuthConfig(grants=(alice,)))
    section = GatewaySection(
        settle_s=0,
        workers=WorkerAccess(forward_authorization=True, allow_unverified_credentials=True),
    )
    async with (
        running_controller(ttl_s=60) as controller,
        running_worker(config) as worker,
    ):
        await registered_at(controller, "w-auth", worker)
        gateway = Gateway(
            RemoteController(controller.address), ServerConfig(port=0, grace_period_s=0), section
        )
        await gateway.start()
        try:
            await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 1, 5)
            models = FleetModels(gateway)
            with pytest.raises(PeerError) as refused:
                await models.generate(ask("echo"), Started(), None)
            admit(alice)
            assert (await models.generate(ask("echo"), Started(), None)).text == "hello"
        finally:
            await gateway.stop()
    assert refused.value.code == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "sent",
    [
        errors.InvalidRequest([errors.FieldViolation("sampling.temperature", "at most 2")]),
        errors.QuotaExceeded(
            [
                errors.QuotaViolation(3, "team-a", "*", "budget_per_day", 12.5),
                errors.QuotaViolation(0, "all", "gpt", "requests_per_minute", 60),
            ],
            4.0,
        ),
        errors.QuotaExceeded([errors.QuotaViolation(1, "t", "m", "tokens_per_minute", 10)], None),
        errors.Overloaded("full", 2.0, not_started=True),
        errors.UpstreamRateLimited("the provider limits us", 3.0),
        errors.NotReady("no instance yet", 1.0),
        errors.PermissionDenied("taken", reason="ID_TAKEN"),
        errors.UpstreamContextExceeded("the provider says: too long"),
        errors.DeadlineExceeded("too late"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_typed_error_a_worker_sends_is_received_as_itself(sent: errors.ModelwireError) -> None:
    status = to_status(sent)
    received = received_error(
        status.code, status.details, received_status(status.trailing_metadata)
    )
    assert type(received) is type(sent)
    assert str(received) == str(sent)
    for name in ("violations", "retry_after_s", "not_started", "reason"):
        assert getattr(received, name, None) == getattr(sent, name, None), name


def test_any_other_status_is_received_with_its_code_and_message() -> None:
    status = to_status(errors.ModelNotFound("nope", ["echo"]))
    received = received_error(
        status.code, status.details, received_status(status.trailing_metadata)
    )
    assert isinstance(received, PeerError)
    assert received.code == "NOT_FOUND" and str(received) == str(
        errors.ModelNotFound("nope", ["echo"])
    )
    bare = received_error(grpc.StatusCode.UNAVAILABLE, "lost mid-stream", None)
    assert isinstance(bare, PeerError) and bare.code == "UNAVAILABLE"
    assert type(bare).__name__ == "PeerUnavailable"
