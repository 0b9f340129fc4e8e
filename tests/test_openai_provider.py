"""The `openai` provider: against a real OpenAI-compatible server (llama.cpp's), and its wire format
against the fake upstream (request body, auth, Azure, usage-only chunk, reasoning, config
errors)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from conftest import running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    answer_ok,
    load_toml_config,
    openai_chunk,
    openai_completion,
    openai_usage_chunk,
)
from llama_server import llama_server
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.core.settings import ConfigError
from modelwire.core.types import ModelMessage, Role
from modelwire.providers.llama.model_files import embedded_model_path
from modelwire.providers.openai.client import OpenAIClient
from modelwire.tokenize.tiktoken_counter import count_tokens
from modelwire.v1 import worker_pb2 as pb

MODEL = "gemma-remote"
CHAT = [("system", "You answer briefly."), ("user", "Name three colours.")]
DOMAIN_CHAT = (
    ModelMessage(Role.SYSTEM, "You answer briefly."),
    ModelMessage(Role.USER, "Name three colours."),
)
KEY_ENV = "MODELWIRE_TEST_OPENAI_KEY"
KEY = "sk-test-openai-wire-5678"


# --- against llama.cpp's OpenAI-compatible server -------------------------------------------------


@pytest.fixture(scope="session")
def llama_server_url() -> Iterator[str]:
    with llama_server(embedded_model_path()) as url:
        yield url


@pytest.fixture(scope="module")
async def llama_worker(
    llama_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    config = load_toml_config(
        tmp_path_factory.mktemp("openai-llama"),
        f"""
[server]
grace_period_s = 1.0

[[models]]
name = "{MODEL}"
provider = "openai"
api_base = "{llama_server_url}"
upstream_model = "gemma-3-270m"
context_length = 2048
timeout_s = 60
max_retries = 0
max_concurrency = 2
""",
    )
    async with running_worker(config) as worker:
        yield worker


@pytest.fixture
async def llama_client(llama_worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    async with ModelWorkerClient(llama_worker.address, timeout=60) as client:
        yield client


async def _warm_up(client: ModelWorkerClient) -> None:
    """llama.cpp reuses the cached prefix of the previous request, and this tiny quantised model's
    greedy pick can flip with the numerical path (whole prompt in one batch, or its last token
    re-evaluated after a previous request of another length). Running the very request the test
    compares first puts every compared call on the same path, so temperature 0 is reproducible."""
    await client.generate(MODEL, CHAT, temperature=0, max_new_tokens=16)


async def test_generate_reports_the_servers_own_usage(
    llama_client: ModelWorkerClient, llama_server_url: str
) -> None:
    await _warm_up(llama_client)
    output = await llama_client.generate(MODEL, CHAT, temperature=0, max_new_tokens=16)
    async with httpx.AsyncClient(timeout=60) as http:
        direct = (
            await http.post(
                f"{llama_server_url}/chat/completions",
                json={
                    "model": "gemma-3-270m",
                    "messages": [{"role": role, "content": content} for role, content in CHAT],
                    "temperature": 0,
                    "max_tokens": 16,
                },
            )
        ).json()

    assert output.text == direct["choices"][0]["message"]["content"] != ""
    assert output.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert output.usage.completion_tokens == direct["usage"]["completion_tokens"]
    assert output.usage.total_tokens == direct["usage"]["total_tokens"]
    assert not output.usage.estimated
    expected_finish = {"length": pb.FINISH_REASON_LENGTH, "stop": pb.FINISH_REASON_STOP}
    assert output.finish_reason == expected_finish[direct["choices"][0]["finish_reason"]]
    assert output.model == MODEL


async def test_stream_deltas_concatenate_to_unary_text_with_estimated_usage(
    llama_client: ModelWorkerClient,
) -> None:
    await _warm_up(llama_client)
    unary = await llama_client.generate(MODEL, CHAT, temperature=0, max_new_tokens=16)
    chunks = [
        chunk async for chunk in llama_client.stream(MODEL, CHAT, temperature=0, max_new_tokens=16)
    ]

    assert "".join(chunk.text for chunk in chunks) == unary.text
    assert len(chunks) > 3, "deltas, not one cumulative message"
    assert all(chunk.finish_reason == pb.FINISH_REASON_UNSPECIFIED for chunk in chunks[:-1])
    assert not any(chunk.HasField("usage") for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == unary.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    # llama.cpp's server ignores stream_options.include_usage: the worker counts and says so.
    assert last.usage.estimated
    assert last.usage.prompt_tokens == count_tokens("gemma-3-270m", DOMAIN_CHAT).count
    assert last.usage.completion_tokens == count_tokens("gemma-3-270m", unary.text).count > 0
    assert last.timing.time_to_first_token_seconds > 0


async def test_count_token_is_a_tiktoken_estimate_for_non_openai_models(
    llama_client: ModelWorkerClient,
) -> None:
    messages = await llama_client.count_tokens(MODEL, CHAT)
    prompt = await llama_client.count_tokens(MODEL, "Grüße aus Köln — 東京")

    assert messages.count == count_tokens("gemma-3-270m", DOMAIN_CHAT).count > 0
    assert messages.tokenizer == "tiktoken:cl100k_base" and not messages.exact
    assert prompt.count == count_tokens("gemma-3-270m", "Grüße aus Köln — 東京").count > 0
    assert not prompt.exact


async def test_list_models_describes_the_remote_model(llama_client: ModelWorkerClient) -> None:
    [model] = await llama_client.list_models()

    assert model.model == MODEL and model.provider == "openai"
    assert model.context_length == 2048 and model.max_output_tokens == 2048
    assert model.metadata["upstream_model"] == "gemma-3-270m"


async def test_a_unary_completion_longer_than_timeout_s_is_bounded_by_the_callers_deadline(
    llama_server_url: str, tmp_path: Path
) -> None:
    """timeout_s = 1 against llama.cpp's server generating 96 tokens on one thread (about 3 s): a
    unary answer comes all at once, so the caller's 60 s deadline bounds the wait, not timeout_s."""
    config = load_toml_config(
        tmp_path,
        f"""
[[models]]
name = "{MODEL}"
provider = "openai"
api_base = "{llama_server_url}"
upstream_model = "gemma-3-270m"
context_length = 2048
timeout_s = 1
max_retries = 0
""",
    )
    async with (
        running_worker(config) as worker,
        ModelWorkerClient(worker.address, timeout=60) as client,
    ):
        output = await client.generate(
            MODEL, "List the numbers from 1 to 100, one per line.", temperature=0, max_new_tokens=96
        )
    assert output.usage.completion_tokens == 96
    assert output.timing.total_seconds > 1.0, (
        "the completion must outlast timeout_s for this test to mean anything"
    )
    print(f"\n96 tokens in {output.timing.total_seconds:.2f} s with timeout_s = 1")


# --- wire format against the fake upstream --------------------------------------------------------


@pytest.fixture(scope="module")
async def fake_worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    os.environ[KEY_ENV] = KEY
    config = load_toml_config(
        tmp_path_factory.mktemp("openai-fake"),
        f"""
[server]
grace_period_s = 1.0

[[models]]
name = "gpt"
provider = "openai"
api_base = "{fake.url}/v1"
api_key_env = "{KEY_ENV}"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_output_tokens = 1000
max_retries = 0
headers = {{ "X-Team" = "search" }}

[[models]]
name = "azure-gpt"
provider = "openai"
api_type = "azure"
api_base = "{fake.url}"
api_version = "2024-10-21"
api_key_env = "{KEY_ENV}"
upstream_model = "my-deployment"
context_length = 128000
max_retries = 0

[[models]]
name = "reasoner"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "o3-mini"
context_length = 200000
max_tokens_param = "max_completion_tokens"
stream_usage = false
max_retries = 0
""",
    )
    try:
        async with running_worker(config) as worker:
            yield worker
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture
async def client(fake: FakeUpstream, fake_worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    fake.reset_records()
    async with ModelWorkerClient(fake_worker.address, timeout=10) as client:
        yield client


async def test_request_body_and_headers(client: ModelWorkerClient, fake: FakeUpstream) -> None:
    chunks = [
        chunk
        async for chunk in client.stream(
            "gpt",
            CHAT,
            temperature=0.5,
            top_p=0.9,
            max_new_tokens=20,
            stop=["\n\n"],
            seed=3,
            request_id="r1",
        )
    ]
    [exchange] = fake.exchanges
    body = exchange.json()

    assert exchange.method == "POST" and exchange.path == "/v1/chat/completions"
    assert exchange.headers["authorization"] == f"Bearer {KEY}"
    assert exchange.headers["x-team"] == "search"
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": role, "content": content} for role, content in CHAT]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["seed"]) == (
        0.5,
        0.9,
        20,
        ["\n\n"],
        3,
    )
    assert "".join(chunk.text for chunk in chunks) == "Hello, world!"


async def test_max_tokens_is_bounded_by_max_output_tokens(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    await client.generate("gpt", CHAT)
    assert fake.exchanges[0].json()["max_tokens"] == 1000
    assert fake.exchanges[0].json()["stream"] is False


async def test_usage_only_final_chunk_is_kept_and_finish_reason_set(
    client: ModelWorkerClient,
) -> None:
    chunks = [chunk async for chunk in client.stream("gpt", CHAT)]

    last = chunks[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        7,
        4,
        11,
    )
    assert not last.usage.estimated
    # The first delta alone, the rest as they were waiting behind it (coalesced).
    assert chunks[0].text == "Hello" and "".join(c.text for c in chunks) == "Hello, world!"


async def test_stream_without_usage_is_estimated(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    async def no_usage(exchange: Exchange, respond: Responder) -> None:
        await answer_ok(exchange, respond, usage=False)

    fake.script(no_usage)
    chunks = [chunk async for chunk in client.stream("gpt", CHAT)]

    usage = chunks[-1].usage
    assert usage.estimated
    assert usage.prompt_tokens == count_tokens("gpt-4o-mini", DOMAIN_CHAT).count
    assert usage.completion_tokens == count_tokens("gpt-4o-mini", "Hello, world!").count


async def test_reasoning_deltas_map_to_the_reasoning_field(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    async def reasoning(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        await respond.event(openai_chunk(reasoning="Let me think. "))
        await respond.event(openai_chunk(reasoning="Blue, red."))
        await respond.event(openai_chunk(content="Blue, red, green."))
        await respond.event(openai_chunk(finish_reason="length"))
        await respond.event(openai_usage_chunk(12, 30))
        await respond.event("[DONE]")
        await respond.end()

    async def reasoning_unary(exchange: Exchange, respond: Responder) -> None:
        completion = openai_completion("Blue, red, green.", 12, 30)
        completion["choices"][0]["message"]["reasoning_content"] = "Let me think. Blue, red."
        await respond.json(200, completion)

    fake.script(reasoning, reasoning_unary)
    chunks = [chunk async for chunk in client.stream("gpt", CHAT)]
    unary = await client.generate("gpt", CHAT)

    assert [c.reasoning for c in chunks if c.HasField("reasoning")] == [
        "Let me think. ",
        "Blue, red.",
    ]
    assert "".join(c.text for c in chunks) == "Blue, red, green."
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 30
    assert unary.reasoning == "Let me think. Blue, red." and unary.text == "Blue, red, green."
    assert (unary.usage.prompt_tokens, unary.usage.completion_tokens) == (12, 30)


async def test_azure_deployment_url_and_api_key_header(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    output = await client.generate("azure-gpt", CHAT)
    [exchange] = fake.exchanges

    assert (
        exchange.path == "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
    )
    assert exchange.headers["api-key"] == KEY
    assert "authorization" not in exchange.headers
    assert output.text == "Hello, world!"


async def test_max_completion_tokens_and_no_stream_options(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    chunks = [chunk async for chunk in client.stream("reasoner", CHAT, max_new_tokens=50)]
    body = fake.exchanges[0].json()

    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert "stream_options" not in body
    assert "authorization" not in fake.exchanges[0].headers
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_upstream_that_never_sends_a_finish_is_unavailable(
    client: ModelWorkerClient, fake: FakeUpstream
) -> None:
    async def truncated(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        await respond.event(openai_chunk("Hel"))
        await respond.end()

    fake.script(truncated)
    received = []
    with pytest.raises(ModelwireCallError) as caught:
        async for chunk in client.stream("gpt", CHAT):
            received.append(chunk.text)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert received == ["Hel"]


# --- configuration --------------------------------------------------------------------------------


def _new_client(tmp_path: Path, model_toml: str) -> OpenAIClient:
    config = load_toml_config(tmp_path, "[[models]]\n" + model_toml)
    with ThreadPoolExecutor(1) as executor:
        return OpenAIClient.new_client(config.models[0], executor)


@pytest.mark.parametrize(
    ("model_toml", "expected"),
    [
        ('name = "m"\nprovider = "openai"\n', "models[0].context_length: is required"),
        (
            'name = "m"\nprovider = "openai"\ncontext_length = 10\napi_key_env = '
            '"MODELWIRE_SURELY_UNSET"\n',
            "models[0].api_key_env: environment variable MODELWIRE_SURELY_UNSET is not set",
        ),
        (
            'name = "m"\nprovider = "openai"\ncontext_length = 10\napi_type = "azure"\napi_base = '
            '"https://x"\n',
            "models[0].api_version: is required",
        ),
        (
            'name = "m"\nprovider = "openai"\ncontext_length = 10\napi_bsae = "https://x"\n',
            "models[0].api_bsae: is not a known key",
        ),
        (
            'name = "m"\nprovider = "openai"\ncontext_length = 10\napi_base = "api.example.com"\n',
            "models[0].api_base: must start with",
        ),
        (
            'name = "m"\nprovider = "openai"\ncontext_length = 10\nmax_tokens_param = "n"\n',
            "models[0].max_tokens_param: must be one of",
        ),
    ],
)
def test_configuration_errors_name_the_key(tmp_path: Path, model_toml: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        _new_client(tmp_path, model_toml)


def test_defaults(tmp_path: Path) -> None:
    client = _new_client(
        tmp_path, 'name = "gpt-4o"\nprovider = "openai"\ncontext_length = 128000\n'
    )
    [metadata] = client.models()

    assert client.upstream_model == "gpt-4o"
    assert metadata.max_output_tokens == 4096
    assert "api.openai.com" in repr(client)


async def test_one_worker_serves_llama_server_and_anthropic_fake(
    llama_server_url: str, fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.reset_records()
    config = load_toml_config(
        tmp_path,
        f"""
[[models]]
name = "{MODEL}"
provider = "openai"
api_base = "{llama_server_url}"
upstream_model = "gemma-3-270m"
context_length = 2048

[[models]]
name = "claude"
provider = "anthropic"
api_base = "{fake.url}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
""",
    )
    async with (
        running_worker(config) as worker,
        ModelWorkerClient(worker.address, timeout=60) as client,
    ):
        models = {model.model: model.provider for model in await client.list_models()}
        gemma = [
            chunk async for chunk in client.stream(MODEL, CHAT, temperature=0, max_new_tokens=4)
        ]
        claude = await client.generate("claude", CHAT)

    assert models == {MODEL: "openai", "claude": "anthropic"}
    assert (
        gemma[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
        and gemma[-1].usage.completion_tokens > 0
    )
    assert claude.text == "Hello, world!" and claude.usage.prompt_tokens == 9
