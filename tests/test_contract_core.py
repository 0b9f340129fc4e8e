"""The contract's new fields at the edge and in the service, whatever the provider: each field
reaches the provider as the caller sent it and comes back as the provider gave it (directly and
through a gateway, which forwards bytes), malformed fields are refused by name, a model refuses
what its capabilities do not cover, and capabilities are configured and listed exactly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest

from conformance import (
    Case,
    Target,
    assert_refused,
    collect,
    field_violations,
    fold_stream,
    run_case,
    stream_view,
)
from conftest import running_worker
from fake_upstream import load_toml_config
from fleet import (
    Joining,
    registered,
    registered_worker,
    running_controller,
    running_gateway,
    wait_until,
)
from modelwire.app.config import Config
from modelwire.app.server import Worker
from modelwire.core.settings import ConfigError
from modelwire.core.types import (
    Image,
    JsonSchemaFormat,
    ModelMessage,
    NamedTool,
    ReasoningEffort,
    ReasoningOptions,
    Role,
    Tool,
    ToolCall,
)
from modelwire.providers import registry
from modelwire.tokenize.tiktoken_counter import IMAGE_TOKENS_ESTIMATE
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from recording_provider import ARGUMENT_PIECES, PROVIDER, SIGNATURE, USAGE, RecordingClient

CONFIG = f"""
[server]
grace_period_s = 1.0

[[models]]
name = "echo"
provider = "echo"

[[models]]
name = "everything"
provider = "{PROVIDER}"

[[models]]
name = "text-only"
provider = "{PROVIDER}"
capabilities = ["chat", "streaming"]
"""

PICTURE_QUESTION = pb.ModelMessage(
    role=pb.ROLE_USER,
    parts=[
        pb.ContentPart(text="What is in the picture?"),
        pb.ContentPart(image=pb.Image(url="https://example.com/a.png")),
    ],
)
SCHEMA = (
    '{"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", '
    '"fahrenheit"]}}, "required": ["city"]}'
)


@pytest.fixture(scope="module")
def recording_provider() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry.PROVIDERS, PROVIDER, RecordingClient)
        yield


@pytest.fixture(scope="module")
def config(recording_provider: None, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_toml_config(tmp_path_factory.mktemp("contract"), CONFIG)


@pytest.fixture(scope="module")
async def worker(config: Config) -> AsyncIterator[Worker]:
    async with running_worker(config) as worker:
        yield worker


@pytest.fixture
async def stub(worker: Worker) -> AsyncIterator[pb_grpc.ModelWorkerStub]:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        yield pb_grpc.ModelWorkerStub(channel)


def full_request(model: str = "everything") -> pb.ModelRequest:
    """Every new field of the contract at once."""
    return pb.ModelRequest(
        model=model,
        messages=[
            pb.ModelMessage(role=pb.ROLE_SYSTEM, content="Be brief.", cache_breakpoint=True),
            pb.ModelMessage(
                role=pb.ROLE_USER,
                parts=[
                    pb.ContentPart(text="Weather where this is?"),
                    pb.ContentPart(image=pb.Image(data=b"\x89PNG\r\n", mime_type="image/png")),
                    pb.ContentPart(image=pb.Image(url="https://example.com/a.jpg")),
                ],
            ),
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT,
                reasoning="It is Paris.",
                reasoning_signature=SIGNATURE,
                tool_calls=[
                    pb.ToolCall(id="call_0", name="get_weather", arguments_json='{"city": "Paris"}')
                ],
            ),
            pb.ModelMessage(
                role=pb.ROLE_TOOL, tool_call_id="call_0", content='{"temperature": 21}'
            ),
        ],
        tools=[
            pb.Tool(
                name="get_weather",
                description="Weather.",
                parameters_json_schema=SCHEMA,
                strict=True,
            )
        ],
        tool_choice=pb.ToolChoice(tool_name="get_weather"),
        parallel_tool_calls=False,
        output_format=pb.OutputFormat(
            json_schema=pb.JsonSchema(name="answer", schema_json=SCHEMA, strict=True)
        ),
        reasoning=pb.ReasoningOptions(effort=pb.REASONING_EFFORT_HIGH, budget_tokens=2048),
    )


def assert_reached_the_provider_as_sent() -> None:
    request = RecordingClient.requests[-1]
    system, user, assistant, tool = request.messages
    assert system == ModelMessage(role=Role.SYSTEM, content="Be brief.", cache_breakpoint=True)
    assert user.parts == (
        "Weather where this is?",
        Image(data=b"\x89PNG\r\n", mime_type="image/png"),
        Image(url="https://example.com/a.jpg"),
    )
    assert user.content == ""
    assert assistant.reasoning == "It is Paris." and assistant.reasoning_signature == SIGNATURE
    assert assistant.tool_calls == (
        ToolCall(id="call_0", name="get_weather", arguments_json='{"city": "Paris"}'),
    )
    assert (tool.role, tool.tool_call_id, tool.content) == (
        Role.TOOL,
        "call_0",
        '{"temperature": 21}',
    )
    assert request.tools == (
        Tool(
            name="get_weather", description="Weather.", parameters_json_schema=SCHEMA, strict=True
        ),
    )
    assert request.tool_choice == NamedTool("get_weather")
    assert request.parallel_tool_calls is False
    assert request.output_format == JsonSchemaFormat(name="answer", schema_json=SCHEMA, strict=True)
    assert request.reasoning == ReasoningOptions(effort=ReasoningEffort.HIGH, budget_tokens=2048)


def assert_usage(usage: pb.Usage) -> None:
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (40, 12, 52)
    assert (usage.cached_prompt_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (
        USAGE.cached_prompt_tokens,
        USAGE.cache_write_tokens,
        USAGE.reasoning_tokens,
    )


async def test_every_new_field_reaches_the_provider_and_the_answer_comes_back_whole(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    output = await stub.Generate(full_request())
    assert_reached_the_provider_as_sent()
    assert output.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert list(output.tool_calls) == [
        pb.ToolCall(id="call_1", name="get_weather", arguments_json="".join(ARGUMENT_PIECES))
    ]
    assert not output.tool_call_deltas
    assert output.reasoning == "thinking" and output.reasoning_signature == SIGNATURE
    assert_usage(output.usage)


async def test_a_stream_carries_the_deltas_as_the_provider_gave_them(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    """In order and whole; those waiting together may come as one message (coalesced)."""
    messages = await collect(stub.GenerateStream(full_request()))
    assert_reached_the_provider_as_sent()
    calls = [item for item in stream_view(messages) if item[0] == "call"]
    assert fold_stream(calls) == fold_stream(
        [
            ("call", 0, "call_1", "get_weather", ARGUMENT_PIECES[0]),
            *(("call", 0, "", "", piece) for piece in ARGUMENT_PIECES[1:]),
        ]
    )
    assert messages[0].reasoning_signature == SIGNATURE
    assert messages[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert_usage(messages[-1].usage)
    assert messages[-1].timing.time_to_first_token_seconds > 0


async def test_the_gateway_forwards_every_new_field_unchanged(
    config: Config, stub: pb_grpc.ModelWorkerStub
) -> None:
    """The same call directly and through a gateway: the provider sees equal requests and the
    caller gets equal answers (timing aside, which is measured per call)."""
    direct = await stub.Generate(full_request())
    direct_request = RecordingClient.requests[-1]
    direct_stream = await collect(stub.GenerateStream(full_request()))
    direct_embed = await stub.Embed(
        pb.EmbedRequest(model="everything", inputs=["a", "bb"], dimensions=3)
    )
    async with AsyncExitStack() as stack:
        controller = await stack.enter_async_context(running_controller())
        fleet_worker = await stack.enter_async_context(
            registered_worker(config, Joining(controller=controller.address))
        )
        await registered(fleet_worker)
        gateway = await stack.enter_async_context(running_gateway(controller.address))
        await wait_until(gateway.router.changed, lambda: len(gateway.router.routes) == 1, 5)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(gateway.address))
        through = pb_grpc.ModelWorkerStub(channel)
        forwarded = await through.Generate(full_request())
        assert RecordingClient.requests[-1] == direct_request
        forwarded_stream = await collect(through.GenerateStream(full_request()))
        forwarded_embed = await through.Embed(
            pb.EmbedRequest(model="everything", inputs=["a", "bb"], dimensions=3)
        )
    for one, two in [(direct, forwarded), *zip(direct_stream, forwarded_stream, strict=True)]:
        one.ClearField("timing")
        two.ClearField("timing")
        assert one.SerializeToString(deterministic=True) == two.SerializeToString(
            deterministic=True
        )
    assert direct_embed == forwarded_embed
    assert RecordingClient.embeds[-1].dimensions == 3


async def test_embed_returns_one_vector_per_input_in_order(stub: pb_grpc.ModelWorkerStub) -> None:
    response = await stub.Embed(pb.EmbedRequest(model="everything", inputs=["a", "bbb"]))
    assert [list(e.values) for e in response.embeddings] == [[1.0, 1.0, -0.5], [3.0, 1.0, -0.5]]
    assert response.model == "everything" and response.usage.prompt_tokens == 2
    assert RecordingClient.embeds[-1].dimensions is None


@pytest.mark.parametrize("case", list(Case), ids=lambda case: case.value)
async def test_a_model_without_capabilities_refuses_each_new_field_by_name(
    stub: pb_grpc.ModelWorkerStub, case: Case
) -> None:
    """The shared conformance refusals, against a chat-only echo model."""
    await run_case(Target(name="echo", stub=stub, model="echo", honours=frozenset()), case)


async def test_a_refusal_lists_every_field_the_model_cannot_honour(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(full_request("text-only"))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    # Twelve fields; a status names at most InvalidRequest.MAX_VIOLATIONS, the last saying how many
    # more.
    assert [name for name, _ in violations] == [
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "output_format",
        "reasoning",
        "messages[0].cache_breakpoint",
        "messages[1].parts[1].image",
        "messages[1].parts[2].image",
        "messages[2].tool_calls",
        "messages[2].reasoning",
    ]
    assert all(
        "'text-only'" in description and "CAPABILITY_" in description
        for _, description in violations[:-1]
    )
    assert violations[-1][1] == "and 3 more problems like the above"


Mutation = Callable[[pb.ModelRequest], None]


def _message(request: pb.ModelRequest, index: int = 0) -> pb.ModelMessage:
    while len(request.messages) <= index:
        request.messages.add(role=pb.ROLE_USER, content="hi")
    return request.messages[index]


MALFORMED: list[tuple[str, Mutation, str]] = [
    ("content and parts", lambda r: _message(r).parts.add(text="x"), "messages[0].content"),
    ("empty part", lambda r: _message(r).parts.add(), "messages[0].parts[0]"),
    (
        "image without source",
        lambda r: _message(r).parts.add(image=pb.Image(mime_type="image/png")),
        "messages[0].parts[0].image",
    ),
    (
        "image bytes without type",
        lambda r: _message(r).parts.add(image=pb.Image(data=b"x")),
        "messages[0].parts[0].image.mime_type",
    ),
    (
        "image of no image type",
        lambda r: _message(r).parts.add(image=pb.Image(data=b"x", mime_type="text/html")),
        "messages[0].parts[0].image.mime_type",
    ),
    (
        "image url of a file",
        lambda r: _message(r).parts.add(image=pb.Image(url="file:///etc/passwd")),
        "messages[0].parts[0].image.url",
    ),
    (
        "image url with a type",
        lambda r: _message(r).parts.add(
            image=pb.Image(url="https://a.example/x.png", mime_type="image/png")
        ),
        "messages[0].parts[0].image.mime_type",
    ),
    (
        "tool calls on a user turn",
        lambda r: _message(r).tool_calls.add(id="c", name="f", arguments_json="{}"),
        "messages[0].tool_calls",
    ),
    (
        "tool call without id",
        lambda r: _message(r, 1).MergeFrom(
            pb.ModelMessage(role=pb.ROLE_ASSISTANT, content="", tool_calls=[pb.ToolCall(name="f")])
        ),
        "messages[1].tool_calls[0].id",
    ),
    (
        "tool call arguments not an object",
        lambda r: _message(r, 1).MergeFrom(
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT,
                tool_calls=[pb.ToolCall(id="c", name="f", arguments_json="[1]")],
            )
        ),
        "messages[1].tool_calls[0].arguments_json",
    ),
    (
        "tool_call_id on a user turn",
        lambda r: setattr(_message(r), "tool_call_id", "c"),
        "messages[0].tool_call_id",
    ),
    (
        "reasoning on a user turn",
        lambda r: setattr(_message(r), "reasoning", "x"),
        "messages[0].reasoning",
    ),
    (
        "tool result answering no call",
        lambda r: _message(r, 1).MergeFrom(
            pb.ModelMessage(role=pb.ROLE_TOOL, tool_call_id="c", content="21")
        ),
        "messages[1].tool_call_id",
    ),
    (
        "tool result before its call",
        lambda r: (
            _message(r, 1).MergeFrom(
                pb.ModelMessage(role=pb.ROLE_TOOL, tool_call_id="c", content="21")
            ),
            _message(r, 2).MergeFrom(
                pb.ModelMessage(role=pb.ROLE_ASSISTANT, tool_calls=[pb.ToolCall(id="c", name="f")])
            ),
        ),
        "messages[1].tool_call_id",
    ),
    ("tool name", lambda r: r.tools.add(name="get weather"), "tools[0].name"),
    (
        "tool twice",
        lambda r: r.tools.extend([pb.Tool(name="f"), pb.Tool(name="f")]),
        "tools[1].name",
    ),
    (
        "tool schema not JSON",
        lambda r: r.tools.add(name="f", parameters_json_schema="{type: object}"),
        "tools[0].parameters_json_schema",
    ),
    (
        "tool choice of no tool",
        lambda r: (r.tools.add(name="f"), r.tool_choice.MergeFrom(pb.ToolChoice(tool_name="g"))),
        "tool_choice.tool_name",
    ),
    (
        "required without tools",
        lambda r: r.tool_choice.MergeFrom(pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)),
        "tool_choice.mode",
    ),
    ("tool choice empty", lambda r: r.tool_choice.SetInParent(), "tool_choice"),
    (
        "parallel without tools",
        lambda r: setattr(r, "parallel_tool_calls", True),
        "parallel_tool_calls",
    ),
    ("output format empty", lambda r: r.output_format.SetInParent(), "output_format"),
    (
        "json_object false",
        lambda r: setattr(r.output_format, "json_object", False),
        "output_format",
    ),
    (
        "schema name",
        lambda r: r.output_format.json_schema.MergeFrom(pb.JsonSchema(name="", schema_json="{}")),
        "output_format.json_schema.name",
    ),
    (
        "schema not an object",
        lambda r: r.output_format.json_schema.MergeFrom(
            pb.JsonSchema(name="s", schema_json="true")
        ),
        "output_format.json_schema.schema_json",
    ),
    ("grammar blank", lambda r: setattr(r.output_format, "grammar", "  "), "output_format.grammar"),
    (
        "budget not positive",
        lambda r: setattr(r.reasoning, "budget_tokens", 0),
        "reasoning.budget_tokens",
    ),
    ("effort of no known value", lambda r: setattr(r.reasoning, "effort", 99), "reasoning.effort"),
    (
        "grammar with a NUL",
        lambda r: setattr(r.output_format, "grammar", 'root ::= "a"\x00 "b"'),
        "output_format.grammar",
    ),
    (
        "schema with NaN",
        lambda r: r.output_format.json_schema.MergeFrom(
            pb.JsonSchema(name="s", schema_json='{"const": NaN}')
        ),
        "output_format.json_schema.schema_json",
    ),
    (
        "schema with a number beyond doubles",
        lambda r: r.output_format.json_schema.MergeFrom(
            pb.JsonSchema(name="s", schema_json='{"const": 1e400}')
        ),
        "output_format.json_schema.schema_json",
    ),
    (
        "schema nested past the recursion limit",
        lambda r: r.tools.add(
            name="f", parameters_json_schema='{"a":' * 100_000 + "1" + "}" * 100_000
        ),
        "tools[0].parameters_json_schema",
    ),
    (
        "tool arguments with Infinity",
        lambda r: _message(r, 1).MergeFrom(
            pb.ModelMessage(
                role=pb.ROLE_ASSISTANT,
                tool_calls=[pb.ToolCall(id="c", name="f", arguments_json='{"x": Infinity}')],
            )
        ),
        "messages[1].tool_calls[0].arguments_json",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [(mutate, field) for _, mutate, field in MALFORMED],
    ids=[name for name, _, _ in MALFORMED],
)
async def test_a_malformed_new_field_is_refused_by_name(
    stub: pb_grpc.ModelWorkerStub, mutate: Mutation, field: str
) -> None:
    request = pb.ModelRequest(
        model="everything", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
    )
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert field in {name for name, _ in field_violations(refused.value)}, field_violations(
        refused.value
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.EmbedRequest(model="everything"), "inputs"),
        (pb.EmbedRequest(model="everything", inputs=["a", ""]), "inputs[1]"),
        (pb.EmbedRequest(model="everything", inputs=["a"], dimensions=0), "dimensions"),
        (pb.EmbedRequest(model="everything", inputs=["a"] * 2049), "inputs"),
        (pb.EmbedRequest(inputs=["a"]), "model"),
    ],
    ids=["no inputs", "empty input", "dimensions", "too many inputs", "no model"],
)
async def test_a_malformed_embed_request_is_refused_by_name(
    stub: pb_grpc.ModelWorkerStub, request_: pb.EmbedRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Embed(request_)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in {name for name, _ in field_violations(refused.value)}


async def test_embed_of_an_unknown_model_is_not_found(stub: pb_grpc.ModelWorkerStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Embed(pb.EmbedRequest(model="nope", inputs=["a"]))
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


async def test_list_models_says_exactly_what_each_model_accepts(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    models = {
        m.model: list(m.capabilities)
        for m in (await stub.ListModels(pb.ListModelsRequest())).models
    }
    assert models["echo"] == [pb.CAPABILITY_CHAT, pb.CAPABILITY_STREAMING]
    assert models["text-only"] == [pb.CAPABILITY_CHAT, pb.CAPABILITY_STREAMING]
    assert set(models["everything"]) == set(pb.Capability.values()) - {pb.CAPABILITY_UNSPECIFIED}


async def test_count_token_counts_parts_images_and_tool_calls(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    async def count(*messages: pb.ModelMessage) -> int:
        return (
            await stub.CountToken(pb.CountTokenRequest(model="everything", messages=list(messages)))
        ).count

    text = await count(pb.ModelMessage(role=pb.ROLE_USER, content="What is in the picture?"))
    parts = await count(
        pb.ModelMessage(role=pb.ROLE_USER, parts=[pb.ContentPart(text="What is in the picture?")])
    )
    with_image = await count(PICTURE_QUESTION)
    assert parts == text and with_image == text + IMAGE_TOKENS_ESTIMATE
    arguments = json.dumps({"city": "Paris", "unit": "celsius", "days": list(range(20))})
    bare = await count(pb.ModelMessage(role=pb.ROLE_ASSISTANT))
    called = await count(
        pb.ModelMessage(
            role=pb.ROLE_ASSISTANT,
            tool_calls=[pb.ToolCall(id="c1", name="get_weather", arguments_json=arguments)],
        )
    )
    assert called - bare >= 20


async def test_count_token_refuses_what_the_model_cannot_take_as_generate_does(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    """A count of a prompt the model would refuse is no count: the image is refused by name."""
    await assert_refused(
        stub.CountToken(pb.CountTokenRequest(model="text-only", messages=[PICTURE_QUESTION])),
        "messages[0].parts[1].image",
        "text-only",
    )


async def test_count_token_refuses_malformed_new_fields_by_name(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    await assert_refused(
        stub.CountToken(
            pb.CountTokenRequest(
                model="echo",
                messages=[
                    pb.ModelMessage(
                        role=pb.ROLE_USER, content="x", parts=[pb.ContentPart(text="y")]
                    )
                ],
            )
        ),
        "messages[0].content",
        "",
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('capabilities = ["chat", "telepathy"]', "unknown capability 'telepathy'"),
        ('capabilities = ["chat", "chat"]', "names a capability twice"),
        ('capabilities = ["chat", "grammar"]', "provider 'openai' cannot honour grammar"),
        ('capabilities = "chat"', "capabilities"),
    ],
)
def test_configured_capabilities_are_checked_against_the_provider(
    tmp_path: Path, line: str, reason: str
) -> None:
    text = (
        '[[models]]\nname = "m"\nprovider = "openai"\napi_base = '
        f'"http://127.0.0.1:9"\ncontext_length = 8192\n{line}\n'
    )
    with pytest.raises(ConfigError) as error, ThreadPoolExecutor(1) as executor:
        model = load_toml_config(tmp_path, text).models[0]
        registry.PROVIDERS["openai"].new_client(model, executor)
    assert reason in str(error.value) and "models[0].capabilities" in str(error.value), str(
        error.value
    )
