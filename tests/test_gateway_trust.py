"""Trust at the gateway, over real sockets: a caller's token `models` allow-list holds through a
gateway (which calls workers with a token of its own) for every model call, ListModels lists only
what the caller may call, a controller refuses at start an allow-list it could never honour, and
an Embed a worker had begun is never replayed on another worker."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from cli_process import DEVNULL, PIPE, first_line, start_cli
from conftest import free_port, running_worker
from fake_upstream import Exchange, FakeUpstream, Responder, fake_upstream, load_toml_config
from fleet import Joining, registered, registered_worker, running_controller, wait_until
from modelwire.app.config import read_auth
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.controller.memory import MemoryRegistry
from modelwire.controller.server import ControllerServer
from modelwire.core.settings import (
    AuthConfig,
    AuthSection,
    ConfigError,
    GatewaySection,
    ServerConfig,
    TokenGrant,
    WorkerAccess,
    parse,
)
from modelwire.fleet.remote import RemoteController
from modelwire.gateway.server import Gateway
from modelwire.v1 import controller_pb2 as cpb
from modelwire.v1 import controller_pb2_grpc as cpb_grpc
from openai_wire import embeddings

GATEWAY_TOKEN = "gateway-token-0123456789abcdef"
ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"
CHEAP = ("echo", "emb")
ALL_MODELS = ["echo", "echo-expensive", "emb", "emb-expensive"]


def worker_toml(upstream_url: str) -> str:
    embedding_models = "".join(
        f"""
[[models]]
name = "{name}"
provider = "openai"
api_base = "{upstream_url}/v1"
upstream_model = "text-embedding-3-small"
context_length = 8191
max_retries = 0
capabilities = ["embeddings"]
"""
        for name in ("emb", "emb-expensive")
    )
    return (
        """
[server]
grace_period_s = 0

[[models]]
name = "echo"
provider = "echo"
chunk_text = "cheap "

[[models]]
name = "echo-expensive"
provider = "echo"
chunk_text = "EXPENSIVE "
"""
        + embedding_models
    )


def grants(*grant: TokenGrant) -> AuthConfig:
    return AuthConfig(grants=grant)


@asynccontextmanager
async def guarded_fleet(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[Gateway]:
    """A worker that trusts the gateway's token (every model; it relays its callers) and alice's
    (cheap models only), and a gateway that takes alice's (cheap models only) and bob's (every
    model)."""
    alice = TokenGrant(name="alice", token=ALICE_TOKEN, models=frozenset(CHEAP))
    config = load_toml_config(tmp_path, worker_toml(upstream.url))
    relay = TokenGrant(
        name="gateway", token=GATEWAY_TOKEN, permissions=frozenset({"generate", "relay"})
    )
    config = replace(config, auth=grants(relay, alice))
    async with running_controller() as controller, AsyncExitStack() as stack:
        joining = Joining(controller=controller.address)
        await registered(await stack.enter_async_context(registered_worker(config, joining)))
        workers = WorkerAccess(token_env="TRUST_GATEWAY_TOKEN", allow_unverified_credentials=True)
        gateway = Gateway(
            RemoteController(controller.address),
            ServerConfig(port=0, grace_period_s=0),
            GatewaySection(settle_s=0, workers=workers),
            auth=grants(alice, TokenGrant(name="bob", token=BOB_TOKEN)),
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 1, 10)
        yield gateway


async def test_a_gateway_holds_each_caller_to_its_models_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice may call `echo` and `emb` only: through the gateway, every model call naming another
    model is PERMISSION_DENIED naming her token and the model, and never reaches a worker (the
    gateway's own token, which the worker checks, may call every model)."""
    monkeypatch.setenv("TRUST_GATEWAY_TOKEN", GATEWAY_TOKEN)
    async with fake_upstream() as upstream, guarded_fleet(tmp_path, upstream) as gateway:
        upstream.default = answer_embeddings
        async with AsyncExitStack() as stack:
            alice, bob = [
                await stack.enter_async_context(ModelWorkerClient(gateway.address, token=t))
                for t in (ALICE_TOKEN, BOB_TOKEN)
            ]

            async def stream(model: str) -> str:
                return "".join([chunk.text async for chunk in alice.stream(model, "hi")])

            assert (await alice.generate("echo", "hi")).text == "cheap "
            assert await stream("echo") == "cheap "
            assert (await alice.count_tokens("echo", "hi")).count > 0
            assert len((await alice.embed("emb", ["hi"])).embeddings) == 1

            refused_calls: dict[str, Callable[[], Awaitable[object]]] = {
                "Generate": lambda: alice.generate("echo-expensive", "hi"),
                "GenerateStream": lambda: stream("echo-expensive"),
                "CountToken": lambda: alice.count_tokens("echo-expensive", "hi"),
                "Embed": lambda: alice.embed("emb-expensive", ["hi"]),
            }
            for method, call in refused_calls.items():
                with pytest.raises(ModelwireCallError) as raised:
                    await call()
                model = "emb-expensive" if method == "Embed" else "echo-expensive"
                assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED, method
                assert raised.value.message == f"token 'alice' may not use model '{model}'", method
            paths = [e.path for e in upstream.exchanges]
            assert paths == ["/v1/embeddings"], "a refused Embed reached the upstream"

            # Bob's token has no allow-list: every model.
            assert (await bob.generate("echo-expensive", "hi")).text == "EXPENSIVE "
            listed = {
                name: [m.model for m in await caller.list_models()]
                for name, caller in (("alice", alice), ("bob", bob))
            }
        assert listed == {"alice": list(CHEAP), "bob": ALL_MODELS}


async def test_a_worker_lists_only_the_models_a_token_may_call(tmp_path: Path) -> None:
    """At a worker, called directly: alice's token sees her models, the gateway's every model."""
    async with fake_upstream() as upstream:
        config = load_toml_config(tmp_path, worker_toml(upstream.url))
        config = replace(
            config,
            auth=grants(
                TokenGrant(name="gateway", token=GATEWAY_TOKEN),
                TokenGrant(name="alice", token=ALICE_TOKEN, models=frozenset(CHEAP)),
            ),
        )
        async with running_worker(config) as worker:
            listed = {}
            for name, token in (("alice", ALICE_TOKEN), ("gateway", GATEWAY_TOKEN)):
                async with ModelWorkerClient(worker.address, token=token, timeout=10) as client:
                    listed[name] = sorted(m.model for m in await client.list_models())
                    if name == "alice":
                        with pytest.raises(ModelwireCallError) as raised:
                            await client.generate("echo-expensive", "hi")
                        assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert listed == {"alice": list(CHEAP), "gateway": ALL_MODELS}


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    return path


def test_a_controller_refuses_a_models_allow_list_it_could_never_honour(tmp_path: Path) -> None:
    path = tokens_file(
        tmp_path,
        f"""
[[tokens]]
name = "worker-a"
token = "{GATEWAY_TOKEN}"
permissions = ["register"]

[[tokens]]
name = "team-a"
token = "{ALICE_TOKEN}"
permissions = ["generate", "read_fleet"]
models = ["echo"]
""",
    )
    auth = read_auth(parse(AuthSection, {"tokens_file": str(path)}, "<test>", "auth"), "<test>")
    with pytest.raises(ConfigError) as raised:
        ControllerServer(MemoryRegistry(30), ServerConfig(port=0), auth=auth)
    assert str(raised.value).startswith(
        f"{path}: tokens[1].models: token 'team-a' has a model allow-list, which a controller "
        "cannot honour"
    )


async def test_a_controller_reload_refuses_a_models_allow_list(tmp_path: Path) -> None:
    """SIGHUP with a tokens file that gained `models`: the reload is refused, saying why, and the
    controller keeps its running tokens."""
    port = free_port()
    tokens = tmp_path / "tokens.toml"
    grant = (
        f'[[tokens]]\nname = "team-a"\ntoken = "{ALICE_TOKEN}"\n'
        'permissions = ["generate", "read_fleet"]\n'
    )
    tokens.write_text(grant)
    config = tmp_path / "controller.toml"
    config.write_text(f'[server]\nport = {port}\n[auth]\ntokens_file = "tokens.toml"\n')
    process = await start_cli("controller", "--config", str(config), stderr=PIPE)

    async def list_instances() -> list[cpb.Instance]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            listed = await cpb_grpc.ModelControllerStub(channel).ListInstances(
                cpb.ListInstancesRequest(),
                metadata=(("authorization", f"Bearer {ALICE_TOKEN}"),),
                timeout=10,
            )
        return list(listed.instances)

    try:
        assert process.stderr is not None
        announced = await first_line(process, 60)
        assert announced.startswith("modelwire controller on"), announced
        # A call answered: the controller serves, and handles SIGHUP from its announcement on.
        assert await list_instances() == []
        tokens.write_text(grant + 'models = ["echo"]\n')
        process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):
            while "reloaded" not in (line := json.loads(await process.stderr.readline())):
                pass
        assert line["reloaded"] == [] and line["level"] == "ERROR", line
        refusal = f"{tokens}: tokens[0].models: token 'team-a' has a model allow-list"
        assert refusal in line["msg"], line
        assert await list_instances() == [] and process.returncode is None
    finally:
        await _kill(process)


def test_a_models_allow_list_on_a_token_that_calls_no_model_is_refused(tmp_path: Path) -> None:
    path = tokens_file(
        tmp_path,
        f"""
[[tokens]]
name = "worker-a"
token = "{GATEWAY_TOKEN}"
permissions = ["register"]
models = ["echo"]
""",
    )
    with pytest.raises(ConfigError) as raised:
        read_auth(parse(AuthSection, {"tokens_file": str(path)}, "<test>", "auth"), "<test>")
    assert str(raised.value).startswith(
        f"{path}: tokens[0]: token 'worker-a': `models` has no effect without the \"generate\" "
        "permission"
    )


async def answer_embeddings(exchange: Exchange, respond: Responder) -> None:
    await respond.json(200, embeddings([[0.1, 0.2]] * len(exchange.json()["input"])))


EMBED_WORKER = """
[server]
port = {port}
grace_period_s = 0

[[models]]
name = "emb"
provider = "openai"
api_base = "{url}/v1"
upstream_model = "text-embedding-3-small"
context_length = 8191
max_retries = 0
capabilities = ["embeddings"]
"""


async def test_an_embed_a_worker_began_is_never_replayed_on_another(tmp_path: Path) -> None:
    """Two workers in front of one upstream; the worker holding an Embed is SIGKILLed once the
    upstream has the request. The worker had sent its "work began" headers, so the gateway gives
    the caller UNAVAILABLE instead of calling (and billing) the upstream a second time."""
    async with AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(fake_upstream())
        controller = await stack.enter_async_context(running_controller(ttl_s=60))
        workers: dict[str, asyncio.subprocess.Process] = {}
        for index in range(2):
            port = free_port()
            path = tmp_path / f"embed-{index}.toml"
            path.write_text(EMBED_WORKER.format(port=port, url=upstream.url))
            process = await start_cli(
                "serve", "--config", str(path), "--controller", controller.address, stderr=DEVNULL
            )
            stack.push_async_callback(_kill, process)
            line = await first_line(process, 60)
            assert line.startswith("modelwire serving"), line
            workers[f"127.0.0.1:{port}"] = process
        gateway = Gateway(
            RemoteController(controller.address),
            ServerConfig(port=0, grace_period_s=0),
            GatewaySection(settle_s=0),
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        routes = gateway.router.routes
        both_healthy = lambda: sum(r.probe is True for r in routes.values()) == 2  # noqa: E731
        await wait_until(gateway.router.changed, both_healthy, 30)

        held = asyncio.Event()  # never set: the first request is held until its worker dies

        async def hold(exchange: Exchange, respond: Responder) -> None:
            await held.wait()

        upstream.script(hold)
        upstream.default = answer_embeddings  # what a replay would get: a silent success
        async with ModelWorkerClient(gateway.address, timeout=20) as client:
            call = asyncio.create_task(client.embed("emb", ["hi"]))
            await upstream.wait_for_requests(1, timeout=10)
            [busy] = [r for r in routes.values() if r.open.get("emb")]
            workers[busy.instance.address].kill()
            with pytest.raises(ModelwireCallError) as raised:
                await call
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE, raised.value
        paths = [e.path for e in upstream.exchanges]
        assert paths == ["/v1/embeddings"], "the gateway replayed an Embed that had begun"


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
        await process.wait()
